"""Noise that depends only on (seed, sample index): the same samples for any batch size or number of processes."""
from __future__ import annotations

import torch

from scoresde.utils import UsageError, derived_seed

Tensor = torch.Tensor


class SampleGenerators:
    """One torch.Generator per sample (as EDM's StackedRandomGenerator): draws stack one draw per sample.

    Pass it wherever a solver takes a `generator`: the prior noise and every step's noise of sample i then come
    from generator i alone. Noise of one per-sample shape is drawn `block` draws at a time per generator and
    served in order, which keeps the per-draw cost of a 1000-step sampler small; a sample's stream still
    depends only on its own generator.
    """

    def __init__(self, seed: int, indices, device=None, block: int = 64):
        self.device = torch.device(device if device is not None else "cpu")
        self.generators = [torch.Generator(self.device).manual_seed(derived_seed(seed, i)) for i in indices]
        self.block = int(block)
        self._key, self._buffer, self._next = None, None, 0

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape, dtype=torch.float32) -> Tensor:
        """Standard normal noise of shape (len(self), *shape[1:]), row i from generator i."""
        if shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} per-sample generators cannot draw a batch of {shape[0]}")
        key = (tuple(shape[1:]), dtype)
        if key != self._key or self._next == self.block:
            if key != self._key and self._key is not None:
                raise UsageError(f"per-sample noise of shape {key[0]} and dtype {dtype} after {self._key}: one "
                                 "SampleGenerators serves one shape and dtype (make one per sampling run)")
            self._key, self._next = key, 0
            self._buffer = torch.stack([torch.randn((self.block, *key[0]), generator=g, device=self.device,
                                                    dtype=dtype) for g in self.generators])
        self._next += 1
        return self._buffer[:, self._next - 1]

    def seed_integers(self) -> list[int]:
        """One integer per sample from its generator (e.g. the entropy of a Brownian path)."""
        return [int(torch.randint(0, 2**62, (), generator=g, device=self.device)) for g in self.generators]


def randn_like(x: Tensor, generator) -> Tensor:
    """Standard normal noise like x from a torch.Generator (on x's device) or a SampleGenerators."""
    if isinstance(generator, SampleGenerators):
        return generator.randn(x.shape, x.dtype).to(x.device)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def fresh_generator(device) -> torch.Generator:
    """A generator seeded non-deterministically on `device`; torch.seed() would reseed the global RNG instead."""
    generator = torch.Generator(device=device)
    generator.seed()
    return generator
