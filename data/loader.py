"""An endless, resumable stream of training batches: batch `step` is a pure function of (seed, step).

Epoch e = step // steps_per_epoch visits the dataset in the order torch.randperm(N) under a generator seeded from
(seed, e) and drops the last incomplete batch, so resuming at step k yields exactly the batches of an unbroken run.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, default_collate

from scoresde.utils import UsageError, derived_seed


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch `epoch` visits n items."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, epoch)))


class InfiniteLoader:
    """Iterator over (x, y) batches from `start_step` on; `step` is the index of the next batch (checkpoint it).

    Datasets with `set_epoch` (ArrayDataset) are told each epoch, making their random flips a function of the
    epoch too. Batches are fetched in this process (the datasets live in memory), in one call to
    `dataset.get_batch(indices)` where the dataset has it, else item by item and collated.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, start_step: int = 0):
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise UsageError(f"batch_size must be a positive int, got {batch_size!r}")
        if not (isinstance(start_step, int) and start_step >= 0):
            raise UsageError(f"start_step must be a non-negative int, got {start_step!r}")
        if batch_size > len(dataset):
            raise UsageError(f"batch_size {batch_size} exceeds the {len(dataset)} training items; use at most "
                             f"{len(dataset)} (the last incomplete batch of each epoch is dropped)")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = int(seed)
        self.step = start_step
        self.steps_per_epoch = len(dataset) // batch_size
        self._epoch: int | None = None
        self._perm: torch.Tensor | None = None

    def indices(self, step: int) -> torch.Tensor:
        """The dataset indices of batch `step`."""
        epoch, b = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._perm = epoch_permutation(len(self.dataset), self.seed, epoch)
            self._epoch = epoch
        return self._perm[b * self.batch_size:(b + 1) * self.batch_size]

    def batch(self, step: int):
        """Batch `step` as collated (x, y)."""
        idx = self.indices(step)
        # Another user of the dataset may have moved its epoch, so check on every batch (cheap when unchanged).
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != self._epoch:
            self.dataset.set_epoch(self._epoch)
        if hasattr(self.dataset, "get_batch"):
            return self.dataset.get_batch(idx)
        return default_collate([self.dataset[int(i)] for i in idx])

    def __iter__(self) -> "InfiniteLoader":
        return self

    def __next__(self):
        batch = self.batch(self.step)
        self.step += 1
        return batch


def infinite_loader(dataset: Dataset, batch_size: int, seed: int, start_step: int = 0) -> InfiniteLoader:
    """Endless (x, y) batches of `dataset`; batch k depends only on (seed, k), so start_step=k resumes exactly."""
    return InfiniteLoader(dataset, batch_size, seed, start_step)
