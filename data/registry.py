"""Name -> loader registry and `get_dataset(config)`."""
from __future__ import annotations

from typing import Callable

import torch

from scoresde.utils import Registry, UsageError

from .array import load_array
from .core import DataInfo, discrete_info
from .digits import load_digits
from .image_folder import load_image_folder
from .options import DataOptions
from .torchvision_format import load_cifar10, load_mnist
from .toys import TOYS, load_toy

DATASETS: Registry[Callable[[DataOptions], DataInfo]] = Registry("dataset", {
    "digits": load_digits,
    **{name: load_toy for name in TOYS},
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "image_folder": load_image_folder,
    "array": load_array,
})


def available() -> list[str]:
    """The dataset names get_dataset accepts."""
    return sorted(DATASETS)


def get_dataset(config) -> DataInfo:
    """The dataset named by config.data.dataset (case-insensitive), with the options of config.data (see DEFAULTS)."""
    options = DataOptions.from_config(config)
    return DATASETS[options.dataset](options)


def image_shape_only(config) -> DataInfo:
    """A DataInfo with the shape, scaling and 256 levels of config.data's images but no items: what sampling needs
    from a dataset that is not on this machine (config.data.image_size and num_channels must be set)."""
    options = DataOptions.from_config(config)
    if options.image_size is None or options.num_channels is None:
        raise UsageError("config.data.image_size and config.data.num_channels are needed without the dataset")
    empty = torch.zeros((0, options.num_channels, options.image_size, options.image_size), dtype=torch.uint8)
    labels = torch.zeros(0, dtype=torch.long)
    return discrete_info(options.dataset, empty, labels, empty, labels, 256, None, options)
