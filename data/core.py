"""What every loader returns: in-memory datasets of (x, y) pairs and the DataInfo describing them."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import Dataset

from scoresde.sde_lib import GaussianMixture
from scoresde.utils import UsageError, derived_seed

NO_LABEL = -1  # y of every item of a dataset without labels (num_classes is None then)


class AffineMap:
    """x -> scale * x + shift (picklable, unlike a lambda); the data <-> model-space scalers."""

    def __init__(self, scale: float, shift: float):
        self.scale = float(scale)
        self.shift = float(shift)

    def __call__(self, x):
        return x * self.scale + self.shift

    def __repr__(self) -> str:
        return f"AffineMap(scale={self.scale}, shift={self.shift})"


class ArrayDataset(Dataset):
    """Items (x[i], y[i]) held in memory; discrete data are stored as levels k, returned as lo + (hi - lo) k/(n_bins-1).

    Random horizontal flips (random_flip=True, image tensors (N, C, H, W) only) are drawn from torch's global RNG,
    unless `set_epoch(epoch)` has been called: then item i of that epoch is flipped iff a bit drawn from
    (flip_seed, epoch) says so, which makes the augmentation a pure function of (flip_seed, epoch, i).
    """

    def __init__(self, data: torch.Tensor, labels: torch.Tensor, n_bins: int | None = None,
                 data_range: tuple[float, float] = (0.0, 1.0), random_flip: bool = False, flip_seed: int = 0):
        if len(data) != len(labels):
            raise UsageError(f"got {len(data)} items but {len(labels)} labels")
        if random_flip and data.ndim != 4:
            raise UsageError(f"random_flip needs images of shape (N, C, H, W), got data of shape {tuple(data.shape)}")
        self.data = data
        self.labels = labels.to(torch.int64)
        self.n_bins = n_bins
        self.random_flip = random_flip
        self.flip_seed = flip_seed
        self.epoch: int | None = None
        self._flips: torch.Tensor | None = None
        if n_bins is None:
            self.data = data.to(torch.float32)
            self._table = None
        else:
            if data.dtype.is_floating_point:
                raise UsageError("discrete data must be stored as integer levels 0..n_bins-1")
            lo, hi = data_range
            levels = torch.arange(n_bins, dtype=torch.float64) / (n_bins - 1)
            self._table = (lo + (hi - lo) * levels).to(torch.float32)

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        """Make the flips of this epoch deterministic: a pure function of (flip_seed, epoch, index)."""
        self.epoch = int(epoch)
        if self.random_flip:
            gen = torch.Generator().manual_seed(derived_seed(self.flip_seed, self.epoch))
            self._flips = torch.rand(len(self), generator=gen) < 0.5

    def _flips_of(self, idx: torch.Tensor) -> torch.Tensor:
        """Which of the items idx to mirror: this epoch's bits after set_epoch, else the global torch RNG."""
        if not self.random_flip:
            return torch.zeros(len(idx), dtype=torch.bool)
        if self._flips is not None:
            return self._flips[idx]
        return torch.rand(len(idx)) < 0.5

    def _values(self, x: torch.Tensor) -> torch.Tensor:
        if self._table is None:
            return x
        # index_select on the flat levels: advanced indexing with a (C, H, W) index is far slower on CPU.
        return self._table.index_select(0, x.flatten().long()).view(x.shape)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self._values(self.data[i])
        if self._flips_of(torch.tensor([i]))[0]:
            x = x.flip(-1)
        return x, int(self.labels[i])

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The items idx as one batch (x, y); the same values as stacking __getitem__ (once set_epoch was called)."""
        x = self._values(self.data[idx])
        flip = self._flips_of(idx)
        if flip.any():
            x = torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)
        return x, self.labels[idx]


@dataclasses.dataclass
class DataInfo:
    """A dataset ready for training: train/test items (x, y) in model space and what samplers and likelihoods need.

    Discrete data (n_bins levels) map level k to lo + (hi - lo) k/(n_bins - 1), (lo, hi) = data_range; continuous
    data (n_bins None) are used as they are and data_range is the training set's (min, max).
    scaler / inverse_scaler map [0, 1] data to model space and back (the identity for continuous data).
    `mixture` is the exact sde_lib.GaussianMixture the data were drawn from, when there is one (gmm8);
    `classes` the class names, label i being classes[i], when the data name them (image_folder).
    """

    name: str
    train: ArrayDataset
    test: ArrayDataset
    shape: tuple[int, ...]
    n_bins: int | None
    data_range: tuple[float, float]
    num_classes: int | None
    is_image: bool
    scaler: AffineMap
    inverse_scaler: AffineMap
    mixture: GaussianMixture | None = None
    classes: list[str] | None = None

    @property
    def data_space(self) -> tuple[float, float]:
        """(lo, hi) of the data as samples are written and inputs read: [0, 1] for discrete data (images), the
        training set's (min, max) for continuous data."""
        return (0.0, 1.0) if self.n_bins is not None else self.data_range


def check_data_space(x: torch.Tensor, bounds: tuple[float, float], what: str) -> None:
    """A UsageError unless the finite values of x lie within bounds widened by half their width on each side.

    A model's samples overshoot the data a little; data in another scale (8-bit levels for [0, 1], [-1, 1] for
    [0, 1]) fall far outside, and a model given them would return garbage without a word.
    """
    values = x[torch.isfinite(x)]
    if values.numel() == 0:
        return
    lo, hi = bounds
    margin = (hi - lo) / 2
    low, high = float(values.min()), float(values.max())
    if low < lo - margin or high > hi + margin:
        hint = "divide 8-bit images by 255" if (lo, hi) == (0.0, 1.0) else "rescale them to the training data's range"
        raise UsageError(f"{what} span {low:.4g}..{high:.4g}, outside this run's data range {lo:g}..{hi:g}; give them "
                         f"in data space ({hint})")


def discrete_info(name: str, train_levels: torch.Tensor, train_labels: torch.Tensor, test_levels: torch.Tensor,
                  test_labels: torch.Tensor, n_bins: int, num_classes: int | None, options) -> DataInfo:
    """DataInfo for integer images (N, C, H, W) with levels 0..n_bins-1 in [-1, 1] or [0, 1] (options.centered)."""
    lo, hi = (-1.0, 1.0) if options.centered else (0.0, 1.0)
    train = ArrayDataset(train_levels, train_labels, n_bins, (lo, hi), options.random_flip, options.seed)
    test = ArrayDataset(test_levels, test_labels, n_bins, (lo, hi))
    return DataInfo(name=name, train=train, test=test, shape=tuple(train_levels.shape[1:]), n_bins=n_bins,
                    data_range=(lo, hi), num_classes=num_classes, is_image=True,
                    scaler=AffineMap(hi - lo, lo), inverse_scaler=AffineMap(1.0 / (hi - lo), -lo / (hi - lo)))


def continuous_info(name: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                    test_y: torch.Tensor, num_classes: int | None, options, mixture=None) -> DataInfo:
    """DataInfo for real-valued data used as they are; images (N, C, H, W) may be flipped, vectors never."""
    is_image = train_x.ndim == 4
    flip = options.random_flip and is_image
    train = ArrayDataset(train_x, train_y, random_flip=flip, flip_seed=options.seed)
    test = ArrayDataset(test_x, test_y)
    data_range = (float(train.data.min()), float(train.data.max()))
    return DataInfo(name=name, train=train, test=test, shape=tuple(train_x.shape[1:]), n_bins=None,
                    data_range=data_range, num_classes=num_classes, is_image=is_image,
                    scaler=AffineMap(1.0, 0.0), inverse_scaler=AffineMap(1.0, 0.0), mixture=mixture)


def holdout_split(n: int, test_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices: a fixed permutation (seed 0, whatever config.seed) holds out round(n test_fraction) items.

    The split never depends on config.seed, so test losses of different runs are comparable.
    """
    if n < 2:
        raise UsageError(f"need at least 2 items to hold out a test set, got {n}")
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def labels_or_none(labels, n: int) -> tuple[torch.Tensor, int | None]:
    """(labels as int64, num_classes) from non-negative integer labels; (all NO_LABEL, None) when labels is None."""
    if labels is None:
        return torch.full((n,), NO_LABEL, dtype=torch.int64), None
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise UsageError(f"labels must have shape ({n},) to match the {n} items, got {labels.shape}")
    if labels.dtype.kind not in "iu" or (n and labels.min() < 0):
        raise UsageError(f"labels must be non-negative integers (class indices), got dtype {labels.dtype}"
                         + (f" with minimum {labels.min()}" if labels.dtype.kind in "iu" else ""))
    return torch.from_numpy(labels.astype(np.int64)), int(labels.max()) + 1 if n else None
