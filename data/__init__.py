"""Datasets for training and evaluation: `get_dataset(config)` -> DataInfo, and a resumable `infinite_loader`."""
from .core import NO_LABEL, AffineMap, ArrayDataset, DataInfo, check_data_space
from .loader import InfiniteLoader, epoch_permutation, infinite_loader
from .options import DEFAULTS, DataOptions
from .registry import DATASETS, available, get_dataset, image_shape_only
from .toys import GMM8_RADIUS, GMM8_STD, gmm8_mixture

__all__ = [
    "get_dataset", "image_shape_only", "available", "DATASETS", "DEFAULTS", "DataOptions", "DataInfo", "ArrayDataset",
    "AffineMap", "NO_LABEL", "check_data_space", "infinite_loader", "InfiniteLoader", "epoch_permutation",
    "gmm8_mixture", "GMM8_RADIUS", "GMM8_STD",
]
