"""Reading what --mode inpaint completes: observations x and a 0/1 mask from .npy/.npz files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scoresde.utils import UsageError

ACCEPTED = ("an .npy array, or an .npz with the observations under 'x' (and optionally the mask under 'mask'); "
            "the mask (1 = observed, 0 = to sample) comes from --mask, the 'mask' key, or the NaN entries of x")


def _load(path: Path, key: str) -> tuple[np.ndarray, dict]:
    """(the array under `key` (or the only one), all arrays) of an .npy/.npz file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected {ACCEPTED}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and magic[:4] != b"PK\x03\x04":
        # numpy would take it for a pickle and refuse that, in words that invite loading it unsafely.
        raise ValueError(f"{path} is not an .npy array or .npz archive (no NumPy header); expected {ACCEPTED}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises several types for damaged files
        raise ValueError(f"{path} is not readable as .npy/.npz ({type(e).__name__}: {e}); "
                         f"expected {ACCEPTED}") from None
    if isinstance(loaded, np.ndarray):
        return loaded, {}
    arrays = {k: loaded[k] for k in loaded.files}
    if key in arrays:
        return arrays[key], arrays
    if len(arrays) == 1:
        return next(iter(arrays.values())), arrays
    raise ValueError(f"{path} holds {', '.join(arrays) or 'nothing'}; name the array {key!r}. Expected {ACCEPTED}")


def read_observation(input_path, mask_path=None, shape=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (N, *shape) float32 with NaN at missing entries allowed, mask 0/1 broadcastable to x) from the files.

    A single item of the data shape is accepted as a batch of one.
    """
    x, arrays = _load(Path(input_path), "x")
    if mask_path:
        mask, _ = _load(Path(mask_path), "mask")
    elif "mask" in arrays:
        mask = arrays["mask"]
    else:
        mask = ~np.isnan(x.astype(np.float64))
    x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    mask = torch.from_numpy(np.asarray(mask, dtype=np.float32))
    if shape is not None:
        shape = tuple(shape)
        if tuple(x.shape) == shape:
            x = x[None]
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"the observations in {input_path} have shape {tuple(x.shape)}; this model's data are "
                             f"(N, {', '.join(map(str, shape))})")
    try:
        fits = torch.broadcast_shapes(mask.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise UsageError(f"the mask in {mask_path or input_path} has shape {tuple(mask.shape)}, which does not fit the "
                         f"observations' {tuple(x.shape)}; give one mask per observation, or one of shape "
                         f"{tuple(x.shape[1:])} for all")
    if bool((mask == 1).all()):
        raise ValueError("every entry is observed (the mask is all ones): nothing to inpaint; "
                         "mark missing entries with 0 in the mask or NaN in x")
    return x, mask
