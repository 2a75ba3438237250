"""The dataset options read from `config.data` (and `config.seed`), with every default in one place."""
from __future__ import annotations

import dataclasses
from scoresde.utils import UsageError

# Defaults for every optional field. `None` for image_size / num_channels means "the dataset's own"
# (digits 8x1, mnist 28x1, cifar10 32x3, an array's shape); image_folder needs image_size.
DEFAULTS = {
    "image_size": None,          # square side in pixels; images are resized (shorter side) and centre-cropped
    "num_channels": None,        # 1 (grey) or 3 (RGB); images are converted with Pillow
    "path": None,                # mnist/cifar10: root dir; image_folder: a directory; array: a .npy/.npz file
    "random_flip": False,        # random horizontal flips of the training images (never of the test set)
    "centered": True,            # discrete data: True maps [0, 1] to [-1, 1], False keeps [0, 1]
    "download": False,           # mnist/cifar10: fetch missing files with torchvision (needs network)
    "num_samples": 10000,        # 2-D toys: size of the generated training set
    "num_test_samples": 2000,    # 2-D toys: size of the test set (drawn from a seed-independent stream)
    "test_fraction": 0.1,        # image_folder / array: share of the items held out as the test set
}


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """The resolved data options; `from_config` fills in DEFAULTS and checks types."""

    dataset: str
    image_size: int | None = DEFAULTS["image_size"]
    num_channels: int | None = DEFAULTS["num_channels"]
    path: str | None = DEFAULTS["path"]
    random_flip: bool = DEFAULTS["random_flip"]
    centered: bool = DEFAULTS["centered"]
    download: bool = DEFAULTS["download"]
    num_samples: int = DEFAULTS["num_samples"]
    num_test_samples: int = DEFAULTS["num_test_samples"]
    test_fraction: float = DEFAULTS["test_fraction"]
    seed: int = 0

    def __post_init__(self):
        if self.image_size is not None and not (_is_int(self.image_size) and self.image_size > 0):
            raise UsageError(f"config.data.image_size must be a positive int (or None for the dataset's own), "
                             f"got {self.image_size!r}")
        if self.num_channels not in (None, 1, 3):
            raise UsageError(f"config.data.num_channels must be 1 (grey) or 3 (RGB), got {self.num_channels!r}")
        for name in ("num_samples", "num_test_samples"):
            value = getattr(self, name)
            if not (_is_int(value) and value > 0):
                raise UsageError(f"config.data.{name} must be a positive int, got {value!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise UsageError(f"config.data.test_fraction must be in (0, 1), got {self.test_fraction!r}")
        if not _is_int(self.seed):
            raise UsageError(f"config.seed must be an int, got {self.seed!r}")

    @classmethod
    def from_config(cls, config) -> "DataOptions":
        """Options from an ml_collections ConfigDict with `config.data.dataset`; missing fields take DEFAULTS."""
        data = getattr(config, "data", None)
        if data is None or data.get("dataset") is None:
            raise UsageError("the config needs config.data.dataset (see data.available() for the names)")
        values = {name: data.get(name, default) for name, default in DEFAULTS.items()}
        path = values["path"]
        values["path"] = str(path) if path else None
        seed = config.get("seed", 0) if hasattr(config, "get") else getattr(config, "seed", 0)
        return cls(dataset=str(data.dataset).lower(), seed=seed, **values)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
