"""Name -> loader registry and `get_dataset(config)`."""
from __future__ import annotations

from typing import Callable

from sde_lib import Registry

from .array import load_array
from .core import DataInfo
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
