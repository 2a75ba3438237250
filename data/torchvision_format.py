"""MNIST and CIFAR-10 read with numpy from torchvision's on-disk layout under a root directory.

<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] and <root>/cifar-10-batches-py/{data_batch_1..5,
test_batch}. torchvision (the `vision` extra) is only imported to download missing files when config.data.download.
"""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import torch

from .core import DataInfo, discrete_info, labels_or_none
from .images import fit_images
from scoresde.utils import MissingFileError, UsageError

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_IDX_UBYTE = 0x08


def read_idx(path: str) -> np.ndarray:
    """An idx file (the MNIST format; gzip allowed) of unsigned bytes as a uint8 array of its stored shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise UsageError(f"{path} is not an idx file of unsigned bytes "
                         "(it must start with bytes 0x00 0x00 0x08 <ndim>)")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UsageError(f"{path} is truncated or corrupt: header says shape {dims}, found {data.size} bytes of data")
    return data.reshape(dims).copy()  # frombuffer's view is read-only; torch wants writable arrays


def load_mnist(options) -> DataInfo:
    """DataInfo for MNIST (60000 / 10000 grey 28x28 images, 256 levels, labels 0..9), resized if image_size says so."""
    raw_dir = os.path.join(_root(options, "mnist", "MNIST/raw/"), "MNIST", "raw")

    def find(name):
        for candidate in (name, name + ".gz"):
            if os.path.isfile(os.path.join(raw_dir, candidate)):
                return os.path.join(raw_dir, candidate)
        return None

    names = [name for pair in MNIST_FILES.values() for name in pair]
    if any(find(n) is None for n in names):
        _download_or_fail("MNIST", options, raw_dir, [n for n in names if find(n) is None], "(optionally .gz)")
    splits = {}
    for split, (images, labels) in MNIST_FILES.items():
        x, y = read_idx(find(images)), read_idx(find(labels))
        if x.ndim != 3 or y.shape != (len(x),):
            raise UsageError(f"{raw_dir}: expected images (N, H, W) and labels (N,), got {x.shape} and {y.shape}")
        splits[split] = (x[:, None], y)
    return _info("mnist", splits, options)


def load_cifar10(options) -> DataInfo:
    """DataInfo for CIFAR-10 (50000 / 10000 RGB 32x32 images, 256 levels, labels 0..9), resized if image_size says
    so."""
    batch_dir = os.path.join(_root(options, "cifar10", "cifar-10-batches-py/"), "cifar-10-batches-py")
    names = [name for files in CIFAR10_FILES.values() for name in files]
    missing = [n for n in names if not os.path.isfile(os.path.join(batch_dir, n))]
    if missing:
        _download_or_fail("CIFAR10", options, batch_dir, missing, "(the python pickles)")
    splits = {}
    for split, files in CIFAR10_FILES.items():
        xs, ys = zip(*(_read_cifar_batch(os.path.join(batch_dir, n)) for n in files))
        splits[split] = (np.concatenate(xs), np.concatenate(ys))
    return _info("cifar10", splits, options)


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    # These pickles are the dataset's official format (torchvision reads them the same way); only load trusted files.
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise UsageError(f"{path} is not a CIFAR-10 python batch (a dict with 'data' and 'labels')")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch["labels"]) != len(data):
        raise UsageError(f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {len(batch['labels'])}")
    return data.reshape(-1, 3, 32, 32), np.asarray(batch["labels"], dtype=np.int64)


def _info(name: str, splits: dict, options) -> DataInfo:
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    train_y, _ = labels_or_none(train_y, len(train_x))
    test_y, _ = labels_or_none(test_y, len(test_x))
    train = torch.from_numpy(fit_images(train_x, options.image_size, options.num_channels))
    test = torch.from_numpy(fit_images(test_x, options.image_size, options.num_channels))
    return discrete_info(name, train, train_y, test, test_y, 256, 10, options)


def _root(options, name: str, layout: str) -> str:
    if not options.path:
        raise UsageError(f"{name} needs config.data.path: the root directory that contains {layout} "
                         f"(torchvision's layout; set config.data.download = True to fetch it there)")
    return options.path


def _download_or_fail(tv_name: str, options, folder: str, missing: list[str], note: str) -> None:
    where = f"put {', '.join(missing)} {note} in {folder}"
    if not options.download:
        raise MissingFileError(f"{tv_name} files missing: {where}, or set config.data.download = True "
                                f"(needs torchvision and network access)")
    try:
        import torchvision
    except ImportError:
        raise MissingFileError(f"{tv_name} files missing and download needs torchvision "
                                f"(pip install 'scoresde[vision]'); or {where}") from None
    try:
        for train in (True, False):
            getattr(torchvision.datasets, tv_name)(options.path, train=train, download=True)
    except Exception as e:  # network errors come in many types; all mean the same to the user
        raise MissingFileError(f"downloading {tv_name} to {options.path} failed ({e}); offline, {where}") from e
