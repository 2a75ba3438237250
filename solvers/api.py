"""sample (prior -> data) and encode (data -> latent, ODE solvers only): argument checks, NFE counting, denoising."""
from __future__ import annotations

import torch

from sde_lib import SDE

from .base import SampleResult, Solver, fresh_generator
from .counting import CountingScore
from .registry import get_solver, solver_options

Tensor = torch.Tensor


def _build(sde: SDE, score_fn, solver: str, eps: float, options: dict) -> Solver:
    cls = get_solver(solver)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sde_lib.SDE (e.g. sde_lib.get_sde('vpsde')), got {type(sde).__name__}")
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, T) = (0, {sde.T}), got eps={eps}")
    valid = solver_options(solver)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for solver {solver!r}; "
                         f"valid options: {', '.join(valid) or 'none'}")
    return cls(sde, CountingScore(score_fn, eps, sde.T), **options)


def _check_steps(solver: Solver, name: str, steps) -> int | None:
    if solver.adaptive:
        if steps is not None:
            raise ValueError(f"{name} is adaptive and takes no `steps`; set its accuracy with rtol and atol")
        return None
    steps = solver.default_steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got steps={steps!r}")
    return steps


def sample(sde: SDE, score_fn, shape, solver: str = "heun", *, steps: int | None = None, eps: float = 1e-3,
           x_T: Tensor | None = None, generator: torch.Generator | None = None, denoise: bool | None = None,
           progress: bool = False, device=None, dtype=torch.float32, **solver_options) -> SampleResult:
    """Integrate the reverse dynamics of `sde` from the prior at T to eps; returns SampleResult(x, nfe).

    steps: grid steps (default per solver; rk45 is adaptive and takes none). x_T: the prior noise (default: drawn
    with `generator` on `device` in `dtype`; shape is then ignored). generator: pass one for reproducible samples;
    without it x_T comes from the global RNG and an SDE solver's noise from a fresh, randomly seeded generator, so
    the global RNG is never advanced or reseeded by the solver. denoise (default: True for the stochastic
    solvers, whose last step then returns its mean; False for the ODE solvers, where True adds one Tweedie step
    x_0 = (x + beta_bar^2 score)/alpha_bar at eps, costing one NFE). solver_options: e.g. grid="logsnr",
    order=2, eta=0.5, snr=0.16 (see `solvers.solver_options(name)`).
    """
    s = _build(sde, score_fn, solver, eps, solver_options)
    steps = _check_steps(s, solver, steps)
    if x_T is None:
        if device is None and generator is not None:
            device = generator.device
        x_T = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    if x_T.ndim < 1 or x_T.shape[0] < 1:
        raise ValueError(f"samples must have shape (N, ...) with N >= 1, got {tuple(x_T.shape)}")
    if s.stochastic and generator is None:
        generator = fresh_generator(x_T.device)
    ts = (torch.tensor([sde.T, eps], dtype=torch.float64) if steps is None else s.timesteps(steps, eps))
    denoise = s.stochastic if denoise is None else bool(denoise)
    with torch.no_grad():
        x = s.integrate(x_T, ts, generator=generator, denoise=denoise, progress=progress)
        if denoise and not s.stochastic:
            x = s.denoised(x, ts[-1])
    return SampleResult(x, s.score.nfe)


def encode(sde: SDE, score_fn, x: Tensor, solver: str = "rk45", *, steps: int | None = None, eps: float = 1e-3,
           progress: bool = False, **solver_options) -> SampleResult:
    """Map data x at t = eps to its latent at T along the probability-flow ODE (the inverse of `sample`)."""
    s = _build(sde, score_fn, solver, eps, solver_options)
    if s.stochastic:
        raise ValueError(f"encode needs a deterministic (probability-flow ODE) solver, not {solver!r}; "
                         f"use one of euler, heun, rk45, ddim, dpm_solver")
    steps = _check_steps(s, solver, steps)
    ts = (torch.tensor([sde.T, eps], dtype=torch.float64) if steps is None else s.timesteps(steps, eps))
    with torch.no_grad():
        z = s.integrate(x, ts.flip(0), progress=progress)
    return SampleResult(z, s.score.nfe)
