"""Resolve a config name (configs/NAME.py) or a path to a config file."""
from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import ml_collections

from scoresde.utils import Registry, UsageError

CONFIG_DIR = Path(__file__).resolve().parent
_NOT_CONFIGS = {"__init__", "registry", "validate", "default", "cifar10_base"}


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
            raise UsageError(f"config file {name_or_path} does not exist")
        return p
    try:
        return bundled()[name_or_path]
    except ValueError as e:
        raise UsageError(f"{e} (or pass a path to a .py file defining get_config())") from None


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
    """The ConfigDict returned by get_config() of a bundled config name or a config file path."""
    path = config_path(name_or_path)
    spec = importlib.util.spec_from_file_location(f"scoresde_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UsageError(f"config file {path}:{e.lineno}: {e.msg}") from None
    except Exception as e:  # whatever the user's file raises while it is imported
        raise UsageError(f"config file {path} fails to load: {type(e).__name__}: {e}") from None
    if not callable(getattr(module, "get_config", None)):
        raise UsageError(f"config file {path} does not define get_config(); a config file is a Python module "
                         "whose get_config() returns an ml_collections.ConfigDict (see configs/vpsde.py)")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(f"get_config() in {path} returned a {type(config).__name__}, not an "
                         "ml_collections.ConfigDict")
    return config


def check_overrides(config: ml_collections.ConfigDict, argv: list[str]) -> None:
    """A ValueError naming the first --config.a.b[=value] in argv whose field `config` does not have, with the
    closest field names as suggestions."""
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        node, walked = config, []
        for part in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                close = difflib.get_close_matches(part, fields, n=1)
                where = ".".join(walked)
                hint = f" (did you mean {'.'.join([*walked, close[0]])}?)" if close else \
                    (f"; {where or 'the config'} has {', '.join(fields)}" if fields else "")
                raise UsageError(f"unknown config field {key!r} in {arg.split('=', 1)[0]}{hint}; "
                                 "see configs/default.py for the fields")
            node = node[part]
            walked.append(part)


def resolve_argument(argv: list[str], default: str = "vpsde") -> tuple[list[str], str, Path]:
    """argv with `--config NAME` (or --config=NAME) rewritten to its file, the config's name (its file stem) and
    its file."""
    argv, name = list(argv), default
    for k, arg in enumerate(argv):
        if arg == "--config" and k + 1 < len(argv):
            name = argv[k + 1]
            argv[k + 1] = str(config_path(name))
        elif arg.startswith("--config="):
            name = arg.split("=", 1)[1]
            argv[k] = f"--config={config_path(name)}"
    return argv, Path(name).stem, config_path(name)
