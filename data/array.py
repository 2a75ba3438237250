"""A user's .npy / .npz array of shape (N, ...): float arrays are continuous data, uint8 arrays 8-bit images."""
from __future__ import annotations

import numpy as np
import torch

from scoresde.utils import UsageError, read_array

from .core import DataInfo, continuous_info, discrete_info, holdout_split, labels_or_none
from .images import fit_images

ACCEPTED = ("a .npy array, or a .npz with key 'x' (or a single array) and optional 'y' labels (N,); "
            "float (N, ...) = continuous data used as they are, uint8 (N, H, W), (N, H, W, C) or (N, C, H, W) "
            "with C in {1, 3} = 8-bit images")


def as_nchw(x: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3} as (N, C, H, W); channels-last wins
    ties."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x
    raise UsageError(f"array: uint8 data are 8-bit images and must have shape (N, H, W), (N, H, W, C) or "
                     f"(N, C, H, W) with C in {{1, 3}}, got {x.shape}; store continuous data as float")


def load_array(options) -> DataInfo:
    """DataInfo for config.data.path; a fixed permutation holds out test_fraction of the items (see holdout_split)."""
    if options.path is None:
        raise UsageError(f"array needs config.data.path: {ACCEPTED}")
    x, arrays = read_array(options.path, "x", expected=ACCEPTED)
    y = arrays.get("y") if "x" in arrays else None
    if x.ndim < 2 or len(x) < 2:
        raise UsageError(f"array: need shape (N, ...) with N >= 2 items, got {x.shape}")
    labels, num_classes = labels_or_none(y, len(x))
    train, test = holdout_split(len(x), options.test_fraction)
    if x.dtype == np.uint8:
        nchw = as_nchw(x)
        if nchw.shape[2] != nchw.shape[3] and options.image_size is None:
            raise UsageError(f"array: the images are {nchw.shape[2]}x{nchw.shape[3]}, not square; set "
                             f"--config.data.image_size=N to resize and centre-crop them to NxN")
        images = torch.from_numpy(fit_images(nchw, options.image_size, options.num_channels))
        return discrete_info("array", images[train], labels[train], images[test], labels[test], 256,
                             num_classes, options)
    if x.dtype.kind != "f":
        raise UsageError(f"array: dtype {x.dtype} is neither float (continuous data) nor uint8 (8-bit images); "
                         f"convert it with x.astype(np.float32) or x.astype(np.uint8)")
    if not np.isfinite(x).all():
        raise UsageError(f"array: {options.path} contains NaN or inf values")
    values = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return continuous_info("array", values[train], labels[train], values[test], labels[test], num_classes, options)
