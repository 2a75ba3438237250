"""What every sampler shares: the result type, the time grid options, and the step loop with its progress bar."""
from __future__ import annotations

from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from sde_lib import SDE, expand_as

from .counting import CountingScore
from .grids import as_times, check_grid_name, check_times, time_grid

Tensor = torch.Tensor


class SampleResult(NamedTuple):
    """x: the samples; nfe: the exact number of score_fn calls (one per forward pass over the batch)."""
    x: Tensor
    nfe: int


class Solver:
    """Integrates the reverse dynamics from x at ts[0] along the float64 time grid ts."""

    stochastic = False      # True: integrates the reverse SDE and needs a generator
    adaptive = False        # True: chooses its own steps (no grid, no `steps`)
    default_steps = 100
    default_grid = "uniform"

    def __init__(self, sde: SDE, score: CountingScore, *, grid=None, rho: float = 7.0):
        self.sde = sde
        self.score = score
        # grid: a name from grids.GRIDS, or the times themselves (then `steps` defaults to theirs).
        self.times = None
        if grid is None or isinstance(grid, str):
            self.grid = check_grid_name(grid if grid is not None else self.default_grid)
        else:
            self.times = as_times(grid)
            self.grid = "given"
            self.default_steps = len(self.times) - 1
        if not rho > 0:
            raise ValueError(f"rho must be positive, got rho={rho}")
        self.rho = float(rho)

    def timesteps(self, steps: int, eps: float) -> Tensor:
        """The grid T = t_0 > ... > t_steps = eps."""
        if self.times is not None:
            return check_times(self.times, self.sde, steps, eps)
        return time_grid(self.sde, steps, eps, self.grid, self.rho)

    def integrate(self, x: Tensor, ts: Tensor, *, generator=None, denoise: bool = False,
                  progress: bool = False) -> Tensor:
        raise NotImplementedError

    # --- shared pieces ---------------------------------------------------------------------------
    def score_at(self, x: Tensor, t: Tensor) -> Tensor:
        """The (counted) score at a scalar float64 time t."""
        return self.score(x, t.expand(x.shape[0]))

    def coef(self, c: Tensor, x: Tensor) -> Tensor:
        """A scalar float64 coefficient, cast to x's dtype and device for broadcasting."""
        return expand_as(c.to(x.device).expand(x.shape[0]), x)

    def denoised(self, x: Tensor, t: Tensor, score: Tensor | None = None) -> Tensor:
        """Tweedie's estimate E[x_0 | x_t] = (x + beta_bar^2 score) / alpha_bar."""
        if score is None:
            score = self.score_at(x, t)
        a, b = self.sde.alpha_bar(t), self.sde.beta_bar(t)
        return self.coef(1 / a, x) * x + self.coef(b**2 / a, x) * score


def steps_of(ts: Tensor, progress: bool, desc: str):
    """Indices 0 .. len(ts) - 2 of the steps ts[i] -> ts[i + 1], with an optional progress bar."""
    steps = range(len(ts) - 1)
    return tqdm(steps, desc=desc, leave=False) if progress else steps


def fresh_generator(device) -> torch.Generator:
    """A generator seeded non-deterministically on `device`; torch.seed() would reseed the global RNG instead."""
    generator = torch.Generator(device=device)
    generator.seed()
    return generator


def randn_like(x: Tensor, generator) -> Tensor:
    """Standard normal noise like x, drawn from `generator` (which must live on x's device)."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
