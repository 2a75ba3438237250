"""Reading what --mode inpaint completes: observations x and a 0/1 mask from .npy/.npz files."""
from __future__ import annotations

import numpy as np
import torch

from scoresde.utils import UsageError, read_array

ACCEPTED = ("an .npy array, or an .npz with the observations under 'x' (and optionally the mask under 'mask'); "
            "the mask (1 = observed, 0 = to sample) comes from --mask, the 'mask' key, or the NaN entries of x")


def read_observation(input_path, mask_path=None, shape=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (N, *shape) float32 with NaN at missing entries allowed, mask 0/1 broadcastable to x) from the files.

    A single item of the data shape is accepted as a batch of one.
    """
    x, arrays = read_array(input_path, "x", expected=ACCEPTED)
    if mask_path:
        mask, _ = read_array(mask_path, "mask", expected=ACCEPTED)
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
            raise UsageError(f"the observations in {input_path} have shape {tuple(x.shape)}; this model's data are "
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
        raise UsageError("every entry is observed (the mask is all ones): nothing to inpaint; "
                         "mark missing entries with 0 in the mask or NaN in x")
    return x, mask
