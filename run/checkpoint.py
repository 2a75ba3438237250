"""Checkpoints: written atomically, the last k kept, loaded strictly with errors a user can act on."""
from __future__ import annotations

import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from scoresde.utils import atomic_write

CHECKPOINT_DIR = "checkpoints"
_PATTERN = re.compile(r"^checkpoint_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not match the configured network."""


def checkpoint_dir(workdir) -> Path:
    return Path(workdir) / CHECKPOINT_DIR


def list_checkpoints(workdir) -> list[Path]:
    """Checkpoints in the workdir, oldest first (by step)."""
    d = checkpoint_dir(workdir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(workdir) -> Path | None:
    """The newest checkpoint in the workdir, or None."""
    found = list_checkpoints(workdir)
    return found[-1] if found else None


def rng_state() -> dict:
    """Every random-number state that training consumes: python, numpy, torch CPU and CUDA."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(workdir, step: int, state: dict, keep: int = 3) -> Path:
    """Write checkpoint_<step>.pt atomically and delete all but the newest `keep` checkpoints."""
    path = checkpoint_dir(workdir) / f"checkpoint_{step}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    if keep > 0:
        for old in list_checkpoints(workdir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint file, with a clear error if it is missing or unreadable."""
    path = Path(path)
    _check_file(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":
        raise CheckpointError(f"{path} is not a checkpoint (not a file written by torch.save); pass a "
                              "checkpoint_<step>.pt of a run, or a step number")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} holds Python objects other than tensors, numbers and dicts, so it was not "
                              "written by this framework and is not loaded (loading it would run its code)") from None
    except Exception as e:  # torch raises several types for truncated or foreign files
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"checkpoint {path} is not readable ({type(e).__name__}: {message}); "
                              "delete it to fall back to the previous one") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint (a dict written by "
                              "training); pass a checkpoint_<step>.pt of a run, or a step number")
    return state


def _check_file(path: Path, workdir=None) -> None:
    """A CheckpointError unless `path` is a file, saying what is there instead and which checkpoints there are."""
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; pass one of its checkpoint_<step>.pt "
                              "files (--checkpoint=PATH), or a step number")
    if not path.is_file():
        steps = [p.stem.split("_")[1] for p in list_checkpoints(workdir)] if workdir is not None else []
        there = f"steps in {checkpoint_dir(workdir)}: {', '.join(steps)}" if steps else "or a step number"
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a checkpoint_<step>.pt file "
                              f"({there})")


def find_checkpoint(workdir, checkpoint=None) -> Path:
    """The checkpoint to use: `checkpoint` (a path or a step number) if given, else the latest in the workdir."""
    if checkpoint not in (None, ""):
        p = Path(str(checkpoint))
        if str(checkpoint).isdigit():
            p = checkpoint_dir(workdir) / f"checkpoint_{int(checkpoint)}.pt"
        _check_file(p, workdir)
        return p
    latest = latest_checkpoint(workdir)
    if latest is None:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir(workdir)}; train this run first, or name the run "
                              "directory or the checkpoint file that holds one")
    return latest


def load_module_state(module: torch.nn.Module, state_dict: dict, what: str, path) -> None:
    """load_state_dict(strict=True), turning a mismatch into a CheckpointError that names the differences."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        details = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                ("shape differs", shapes)) if keys)
        raise CheckpointError(f"the {what} in {path} does not match the configured network ({details}); "
                              "use the config it was trained with, or another --workdir")
    # Weights are never legitimately NaN: every result of such a network would be NaN, so refuse it here.
    bad = [name for name, _ in module.named_parameters() if not torch.isfinite(state_dict[name]).all()]
    if bad:
        raise CheckpointError(f"{path} has NaN or infinite weights in its {what} ({len(bad)} tensors, e.g. {bad[0]}); "
                              "use an earlier checkpoint (--checkpoint=STEP) or train again")
    module.load_state_dict(state_dict, strict=True)
