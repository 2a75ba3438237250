"""Noise that depends only on (seed, sample index): the same samples for any batch size or number of processes."""
from __future__ import annotations

import numpy as np
import torch

Tensor = torch.Tensor


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample `index` of a run seeded with `seed` (numpy SeedSequence, so seeds never collide)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


class SampleGenerators:
    """One torch.Generator per sample (as EDM's StackedRandomGenerator): draws stack one draw per sample.

    Pass it wherever a solver takes a `generator`: the prior noise and every step's noise of sample i then come
    from generator i alone.
    """

    def __init__(self, seed: int, indices, device=None):
        self.device = torch.device(device if device is not None else "cpu")
        self.generators = [torch.Generator(self.device).manual_seed(sample_seed(seed, i)) for i in indices]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape, dtype=torch.float32) -> Tensor:
        """Standard normal noise of shape (len(self), *shape[1:]), row i from generator i."""
        if shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} per-sample generators cannot draw a batch of {shape[0]}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=self.device, dtype=dtype)
                            for g in self.generators])

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
