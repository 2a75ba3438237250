"""Resolve a config name (configs/NAME.py) or a path to a config file."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

from sde_lib import Registry

CONFIG_DIR = Path(__file__).resolve().parent
_NOT_CONFIGS = {"__init__", "registry", "default", "cifar10_base"}


def bundled() -> Registry[Path]:
    """The bundled configs, name -> file, listed afresh from CONFIG_DIR."""
    return Registry("config", {p.stem: p for p in sorted(CONFIG_DIR.glob("*.py")) if p.stem not in _NOT_CONFIGS})


def available() -> list[str]:
    """Names of the bundled configs."""
    return bundled().names()


def config_path(name_or_path: str) -> Path:
    """configs/<name>.py for a bundled name, else the given path; ValueError listing names if neither exists."""
    p = Path(name_or_path)
    if p.suffix == ".py" or p.parent != Path("."):
        if not p.is_file():
            raise ValueError(f"config file {name_or_path} does not exist")
        return p
    try:
        return bundled()[name_or_path]
    except ValueError as e:
        raise ValueError(f"{e} (or pass a path to a .py file defining get_config())") from None


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
    """The ConfigDict returned by get_config() of a bundled config name or a config file path."""
    path = config_path(name_or_path)
    spec = importlib.util.spec_from_file_location(f"scoresde_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} does not define get_config()")
    return module.get_config()


def resolve_argument(argv: list[str], default: str = "vpsde") -> tuple[list[str], str]:
    """argv with `--config NAME` (or --config=NAME) rewritten to its file, and the config's name (its file stem)."""
    argv, name = list(argv), default
    for k, arg in enumerate(argv):
        if arg == "--config" and k + 1 < len(argv):
            name = argv[k + 1]
            argv[k + 1] = str(config_path(name))
        elif arg.startswith("--config="):
            name = arg.split("=", 1)[1]
            argv[k] = f"--config={config_path(name)}"
    return argv, Path(name).stem
