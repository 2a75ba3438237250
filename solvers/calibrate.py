"""Time grids calibrated to a model: the fixed-step grid on which a solver best follows the exact ODE paths.

A few-step solver's error depends on where its steps fall: where E[x_0 | x_t] changes quickly along the path
they must be dense, where it barely changes (near the prior, and near the data for the exponential integrators)
one long step is exact enough. Which is which depends on the data, so the grid is fitted once per model and
solver (as in Align Your Steps, GITS and "Optimal Stepsize for Diffusion Sampling"): pilot paths from the
prior are solved once to high accuracy, and the step widths are fitted by gradient descent through the solver
to minimise its RMS distance to those reference endpoints. The fit costs score evaluations and their backward
passes (`Calibration.nfe` counts the forward ones), spent once; sampling on the fitted grid costs `steps`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from scoresde.sde_lib import SDE

from .api import check_calibratable, sample
from .counting import CountingScore
from .grids import check_grid_name, time_grid
from .options import check_options
from .registry import get_solver
from scoresde.utils import UsageError

Tensor = torch.Tensor


class Calibration(NamedTuple):
    """times: the fitted grid T = t_0 > ... > t_steps = eps (float64); error, initial_error: the solver's pathwise
    RMSE on the pilot paths on the fitted and on the starting grid; nfe: score evaluations spent fitting."""

    times: Tensor
    error: float
    initial_error: float
    nfe: int


class _DifferentiableScore:
    """score_fn, checked to carry gradients: a detached score would leave its dependence on t out of the fit."""

    def __init__(self, score_fn):
        self.score_fn = score_fn

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        score = self.score_fn(x, t)
        if isinstance(score, Tensor) and not score.requires_grad:
            raise UsageError("calibrate_grid differentiates the solver through score_fn: score_fn must be "
                             "differentiable in x and t (no torch.no_grad() or .detach() inside it)")
        return score


def times_of(p: Tensor, T: float, eps: float, min_width: float = 0.0) -> Tensor:
    """The grid whose step widths in t are min_width + softmax(p) (T - eps - n min_width), n = len(p): decreasing
    from T to eps for any p, no two nodes closer than min_width (a near-duplicate node wastes an evaluation)."""
    widths = min_width + torch.softmax(p, 0) * (T - eps - len(p) * min_width)
    t = T - torch.cat([widths.new_zeros(1), torch.cumsum(widths, 0)])
    return torch.cat([t[:-1], t.new_full((1,), eps)])


def _parameters_of(times: Tensor, min_width: float) -> Tensor:
    """p with times_of(p, min_width) = times where every width exceeds min_width (narrower ones become min_width)."""
    return torch.log((times[:-1] - times[1:] - min_width).clamp(min=1e-12))


def _fit(solver, name: str, x_T: Tensor, ref: Tensor, start: Tensor, iterations: int, lr: float, min_width: float,
         bar):
    """(best error, its grid, the start's error): Adam on the step widths of `solver` from the grid `start`."""
    sde, eps = solver.sde, float(start[-1])
    p = _parameters_of(start, min_width).requires_grad_(True)
    optimizer = torch.optim.Adam([p], lr=lr)
    best, initial = (math.inf, start), None
    for _ in range(iterations):
        bar.update(1)
        times = times_of(p, sde.T, eps, min_width)
        try:
            error = (solver.integrate(x_T, times) - ref).double().pow(2).mean().sqrt()
            if not torch.isfinite(error):
                raise UsageError("non-finite samples")
        except ValueError as e:     # CountingScore's NaN/inf report, or the samples themselves
            if initial is None:
                raise UsageError(f"{name} with {len(start) - 1} steps fails on the grid it starts from ({e}); "
                                 "check the model, or calibrate with more steps") from None
            break                   # the fit stepped too far: keep the best grid so far
        value = error.item()
        initial = value if initial is None else initial
        if value < best[0]:
            best = (value, times.detach())
        optimizer.zero_grad()
        # Only the step widths: a network's own parameters keep whatever gradients they had.
        p.grad, = torch.autograd.grad(torch.log(error), p)
        optimizer.step()
    return best[0], best[1], initial


def calibrate_grid(sde: SDE, score_fn, shape, solver: str = "unipc", *, steps: int = 10, eps: float = 1e-3,
                   generator: torch.Generator | None = None, device=None, dtype=torch.float32,
                   reference_tol: float = 1e-7, iterations: int = 300, lr: float = 0.05,
                   starts: tuple[str, ...] = ("logsnr", "edm"), min_spacing: float = 0.01, progress: bool = False,
                   **solver_options) -> Calibration:
    """Fit the `steps`-step grid of a deterministic fixed-step solver to score_fn on pilot paths of `shape`.

    shape: (n_pilot, ...) prior samples drawn with `generator`; the fit follows the worst paths, so use several
    hundred for 2-D data (a few dozen images suffice for a network's smoother paths). reference_tol: rtol = atol
    of the rk45 solve that gives the reference endpoints. iterations, lr: Adam on the step widths from each of the
    named `starts` grids (the fit finds a local optimum: on the mixture of the benchmark, starting from "edm" as
    well as "logsnr" lowered the 10-step error from 6.5e-3 to 4.5e-3); the best grid over all starts is kept.
    Each iteration runs the solver on the pilot batch and back-propagates through it (score_fn must be
    differentiable in x and t, as networks and GaussianMixture.score_fn are). initial_error is the first start's.
    min_spacing: no two nodes of the fitted grid are closer in t than min_spacing (T - eps)/steps, a fraction of
    the mean step (a fitted 10-step dpm_solver grid once had two nodes 3e-4 apart, one evaluation wasted).
    Use the result with sample(..., solver, grid=calibration.times) at the same eps.
    """
    check_calibratable(solver)
    cls = get_solver(solver)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise UsageError(f"steps must be an integer >= 2 (one step has no grid to fit), got steps={steps!r}")
    if not (isinstance(iterations, int) and iterations >= 1):
        raise UsageError(f"iterations must be a positive integer, got {iterations!r}")
    if not 0 <= min_spacing < 1:
        raise UsageError(f"min_spacing must be in [0, 1) (a fraction of the mean step), got {min_spacing!r}")
    if isinstance(starts, str) or not starts:
        raise UsageError(f"starts must be a non-empty tuple of grid names, got {starts!r}")
    for name in starts:
        check_grid_name(name)
    for option in ("grid", "shift"):
        if option in solver_options:
            raise UsageError(f"calibrate_grid chooses the grid itself; drop the {option} option")
    solver_options = check_options(solver, solver_options)
    if device is None and generator is not None:
        device = generator.device
    x_T = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    ref = sample(sde, score_fn, None, "rk45", x_T=x_T, eps=eps, rtol=reference_tol, atol=reference_tol)
    score = CountingScore(_DifferentiableScore(score_fn), eps, sde.T)
    # integrate() takes the grid it is given. Built on a named grid, the fitter is in the mode sampling on the fitted
    # times will be in (a given grid: e.g. third order for the multistep solvers, not their few-step default).
    fitter = cls(sde, score, grid=starts[0], **solver_options)
    min_width = min_spacing * (sde.T - eps) / steps
    best, initial = (math.inf, None), None
    with tqdm(total=iterations * len(starts), desc=f"calibrating {solver} grid", disable=not progress,
              leave=False) as bar:
        for k, name in enumerate(starts):
            start = time_grid(sde, steps, eps, name)
            try:
                error, times, start_error = _fit(fitter, solver, x_T, ref.x, start, iterations, lr, min_width, bar)
            except ValueError:
                if k == 0:
                    raise
                continue            # a later start that fails at once cannot beat the grids already found
            initial = start_error if initial is None else initial
            if error < best[0]:
                best = (error, times)
    return Calibration(best[1], best[0], initial, ref.nfe + score.nfe)
