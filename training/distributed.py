"""Data parallelism with torch.distributed: launched by torchrun (NCCL on CUDA, gloo on CPU), one process per device.

Training splits every global batch of B examples into contiguous slices of B / world_size, one per rank, and
DistributedDataParallel averages the gradients. The random t, noise and label dropout of the loss are drawn for
the whole global batch from a generator seeded by (seed, step), identically on every rank, and each rank keeps
the rows of its slice: example i of step k sees the same numbers for any world size, so 2 ranks x B/2 and
1 rank x B give the same update (up to the order of floating-point sums); the exception is training.coupling="ot",
which pairs each rank's examples with their noise among themselves, so its pairs depend on the world size.
Sampling and likelihood evaluation give each rank a contiguous shard of the samples or test points and gather the
results on rank 0.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from absl import logging
from torch import nn

from scoresde.utils import UsageError, derived_seed
from scoresde.data.loader import InfiniteLoader

from scoresde.run.builders import get_device

BACKENDS = ("auto", "nccl", "gloo")
# Stream tags in derived_seed keys, so the loss noise and the per-rank streams never share a seed.
_LOSS_STREAM, _RANK_STREAM = 1, 2


def launched() -> bool:
    """True in a process started by torchrun (or anything else that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among world_size processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This rank's contiguous part of range(n); shard sizes differ by at most one."""
        return range(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def seed(self, seed: int) -> int:
        """This rank's seed for sampling/evaluation: `seed` itself in a single process."""
        return seed if self.world_size == 1 else derived_seed(seed, _RANK_STREAM, self.rank)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks of a few numbers."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list | None:
        """Every rank's picklable `obj` as a list on rank 0 (in rank order), None on the others."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        """Rank 0's picklable `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup(config) -> Context:
    """Join the process group when launched by torchrun (once per process), else a single-process Context.

    Each rank uses cuda:LOCAL_RANK when config.device resolves to CUDA, else the CPU; backend "auto" is NCCL on
    CUDA and gloo on CPU. Ranks other than 0 log warnings only.
    """
    device = get_device(config.device)
    if not launched():
        return Context(0, 1, 0, device, False)
    backend = config.distributed.backend
    if backend not in BACKENDS:
        raise UsageError(f"unknown distributed.backend {backend!r}; available: {', '.join(BACKENDS)}")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise UsageError("distributed.backend='nccl' needs CUDA; use 'gloo' (or 'auto') on CPU")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=config.distributed.timeout_minutes))
    rank = dist.get_rank()
    if rank != 0:
        logging.set_verbosity(logging.WARNING)
    return Context(rank, dist.get_world_size(), local_rank, device, True)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_batch_size(batch_size: int, ctx: Context) -> int:
    """B / world_size, with an error when the global batch does not split evenly."""
    if batch_size % ctx.world_size:
        raise UsageError(f"training.batch_size={batch_size} does not split over {ctx.world_size} processes; "
                         f"use a multiple of {ctx.world_size} (it is the global batch)")
    return batch_size // ctx.world_size


class ShardedLoader(InfiniteLoader):
    """The InfiniteLoader of the global batch, fetching only this rank's contiguous slice of each batch."""

    def __init__(self, dataset, batch_size: int, seed: int, ctx: Context, start_step: int = 0):
        super().__init__(dataset, batch_size, seed, start_step)
        b = local_batch_size(batch_size, ctx)
        self.rows = slice(ctx.rank * b, (ctx.rank + 1) * b)

    def indices(self, step: int) -> torch.Tensor:
        return super().indices(step)[self.rows]


def loss_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of the loss's random numbers for global batch `step`, the same on every rank."""
    return torch.Generator(device).manual_seed(derived_seed(seed, _LOSS_STREAM, step))


def seed_rank_step(seed: int, step: int, rank: int) -> None:
    """Seed the global generators (dropout) from (seed, step, rank): different per rank, exact on resume."""
    torch.manual_seed(derived_seed(seed, _RANK_STREAM, step, rank))


class LocalRows(nn.Module):
    """network(x, noise_input, y) evaluated on rows [lo, hi) of a global batch; the other rows come back as zeros.

    The loss is computed on the global batch shape, so that it draws the global batch's random numbers, and the
    caller keeps the per-example losses of rows [lo, hi): the zero rows carry no gradient and are discarded.
    """

    def __init__(self, module: nn.Module, lo: int, hi: int):
        super().__init__()
        self.module = module
        self.lo, self.hi = lo, hi

    def forward(self, x, noise_input, y=None):
        n, rows = x.shape[0], slice(self.lo, self.hi)
        if noise_input.ndim > 0 and noise_input.shape[0] == n:
            noise_input = noise_input[rows]
        out = self.module(x[rows], noise_input=noise_input, y=None if y is None else y[rows])
        before = out.new_zeros((self.lo, *out.shape[1:]))
        after = out.new_zeros((n - self.hi, *out.shape[1:]))
        return torch.cat([before, out, after])


def pad_rows(x: torch.Tensor, lo: int, n: int) -> torch.Tensor:
    """x placed at rows [lo, lo + len(x)) of a zero tensor with n rows."""
    full = x.new_zeros((n, *x.shape[1:]))
    full[lo:lo + x.shape[0]] = x
    return full
