"""What every sampler shares: the result type, the score and velocity, the time grid options, the step loop."""
from __future__ import annotations

import math

from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from scoresde.sde_lib import SDE

from .counting import CountingScore
from .grids import as_times, check_grid_name, check_times, time_grid
from scoresde.utils import UsageError

Tensor = torch.Tensor


class SampleResult(NamedTuple):
    """x: the samples; nfe: the exact number of score_fn calls (one per forward pass over the batch)."""
    x: Tensor
    nfe: int


class Solver:
    """Integrates the reverse dynamics from x at ts[0] along the float64 times ts (adaptive solvers: from ts[0]
    to ts[-1], choosing their own steps in between).

    Step coefficients are 0-d float64 tensors (on the CPU, as ts is): type promotion lets a 0-d tensor scale a
    batch of the same category without up-casting it, and torch accepts a 0-d CPU tensor as a scalar next to a
    tensor on any device, so `c * x` keeps x's dtype and device. A coefficient of shape (1,) would do neither.

    Options are the keyword-only parameters of the __init__s along the class hierarchy (solvers/options.py): each
    class declares its own, typed and with a default, and passes the rest on.
    """

    stochastic = False      # True: integrates the reverse SDE and needs a generator
    adaptive = False        # True: chooses its own steps (no grid, no `steps`)
    default_steps = 100

    def __init__(self, sde: SDE, score: CountingScore):
        self.sde = sde
        self.score = score
        self.flow = sde.reverse(score, eta=0.0)     # the probability-flow ODE, built once for velocity()

    @property
    def denoises(self) -> bool:
        """sample()'s default `denoise`: the SDE samplers end on their mean, the ODE solvers on the ODE's value."""
        return self.stochastic

    def integrate(self, x: Tensor, ts: Tensor, *, generator=None, denoise: bool = False,
                  progress: bool = False) -> Tensor:
        raise NotImplementedError

    # --- shared pieces ---------------------------------------------------------------------------
    def score_at(self, x: Tensor, t: Tensor) -> Tensor:
        """The (counted) score at a scalar float64 time t."""
        return self.score(x, t.expand(x.shape[0]))

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """The probability-flow ODE's dx/dt = f(t) x - g(t)^2/2 score(x, t) at a scalar float64 t."""
        return self.flow.drift(x, t, score=self.score_at(x, t))

    def denoised(self, x: Tensor, t: Tensor, score: Tensor | None = None) -> Tensor:
        """Tweedie's estimate E[x_0 | x_t] = (x + beta_bar^2 score) / alpha_bar."""
        return self.sde.denoise(x, self.score_at(x, t) if score is None else score, t)


def by_steps(table, steps: int):
    """The value of the first (most steps, value) pair of `table` (increasing) that covers `steps`."""
    return next(value for most, value in table if steps <= most)


class FixedStepSolver(Solver):
    """A solver on a time grid: `grid` names one of grids.GRIDS (with EDM's `rho`) or gives the times; `shift`
    offsets the log-SNR of a named grid's inner times by -log(shift) (grids.shift_times; 1: none).

    Without a grid the solver takes its default for the number of steps: default_grids holds (most steps, grid)
    pairs in increasing order, the first that covers `steps` applying (solvers.default_grid).
    """

    default_grids: tuple[tuple[float, str], ...] = ((math.inf, "uniform"),)

    @classmethod
    def grid_for(cls, steps: int) -> str:
        """The default grid at `steps` steps."""
        return by_steps(cls.default_grids, steps)

    def __init__(self, sde: SDE, score: CountingScore, *, grid=None, rho: float = 7.0, shift: float = 1.0):
        super().__init__(sde, score)
        # grid: a name from grids.GRIDS, or the times themselves (then `steps` defaults to theirs).
        self.times = None
        if grid is None or isinstance(grid, str):
            self.grid = None if grid is None else check_grid_name(grid)     # None: grid_for(steps)
        else:
            self.times = as_times(grid)
            self.grid = "given"
            self.default_steps = len(self.times) - 1
        if not rho > 0:
            raise UsageError(f"rho must be positive, got rho={rho}")
        self.rho = float(rho)
        if not (math.isfinite(shift) and shift > 0):
            raise UsageError(f"shift must be a positive number (1: no shift), got shift={shift}")
        if self.times is not None and shift != 1.0:
            raise UsageError("shift moves the times of a named grid; a given or calibrated grid is used as it is, so "
                             "drop the shift")
        self.shift = float(shift)

    def timesteps(self, steps: int, eps: float) -> Tensor:
        """The grid T = t_0 > ... > t_steps = eps."""
        if self.times is not None:
            return check_times(self.times, self.sde, steps, eps)
        grid = self.grid if self.grid is not None else self.grid_for(steps)
        return time_grid(self.sde, steps, eps, grid, self.rho, self.shift)


def steps_of(ts: Tensor, progress: bool, desc: str):
    """Indices 0 .. len(ts) - 2 of the steps ts[i] -> ts[i + 1], with an optional progress bar."""
    steps = range(len(ts) - 1)
    return tqdm(steps, desc=desc, leave=False) if progress else steps
