"""scikit-learn's bundled 8x8 handwritten digits: 1797 grey images with 17 levels (0..16), labels 0..9."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits as sklearn_digits

from .core import DataInfo, discrete_info
from scoresde.utils import UsageError

N_TRAIN = 1500   # the first 1500 images train, the last 297 test (fixed, whatever config.seed)
N_BINS = 17


def load_digits(options) -> DataInfo:
    """DataInfo for digits: shape (1, 8, 8), n_bins 17, level k -> lo + (hi - lo) k/16."""
    if options.image_size not in (None, 8) or options.num_channels not in (None, 1):
        raise UsageError(f"digits are 8x8 grey images with 17 levels and are not resized (that would leave the "
                         f"level grid); set config.data.image_size = 8 and num_channels = 1 (got "
                         f"{options.image_size} and {options.num_channels})")
    bunch = sklearn_digits()
    levels = torch.from_numpy(bunch.images.astype(np.uint8)[:, None])
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return discrete_info("digits", levels[:N_TRAIN], labels[:N_TRAIN], levels[N_TRAIN:], labels[N_TRAIN:],
                         N_BINS, 10, options)
