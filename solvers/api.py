"""sample (prior -> data) and encode (data -> latent, ODE solvers only), and Sampler: a solver with its settings."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scoresde.sde_lib import SDE, VPSDE

from .base import SampleResult, Solver
from .counting import CountingScore
from .grids import resolve_grid
from .options import check_options, solver_options
from .random import SampleGenerators, fresh_generator
from .registry import SOLVERS, deterministic, get_solver
from scoresde.utils import UsageError

Tensor = torch.Tensor


def calibratable() -> list[str]:
    """The solvers a grid can be fitted for: the deterministic ones with a fixed grid."""
    return [name for name, cls in SOLVERS.items() if not (cls.stochastic or cls.adaptive)]


def check_calibratable(solver: str) -> None:
    """A ValueError unless a grid can be fitted for `solver` (it must be deterministic and use a fixed grid)."""
    if SOLVERS.canonical(solver) not in calibratable():
        get_solver(solver)      # an unknown name gets the registry's error, which lists every solver
        raise UsageError(f"calibration fits the grid of a deterministic fixed-step solver, not {solver!r}: "
                         f"calibrated grids are fitted for the deterministic solvers {', '.join(calibratable())}")


def check_steps(solver: str, steps) -> int | None:
    """steps for solver `solver`: None for an adaptive solver (which takes none), else an integer >= 1."""
    cls = get_solver(solver)
    if cls.adaptive:
        if steps is not None:
            raise UsageError(f"{solver} is adaptive and takes no `steps`; set its accuracy with rtol and atol")
        return None
    steps = cls.default_steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be an integer >= 1, got steps={steps!r}")
    return steps


def check_option_values(solver: str, options: dict) -> None:
    """A ValueError if an option of `solver` is out of its range (order in 1..3, eta in [0, 1], snr > 0, ...).

    The ranges are the solver's constructor's own checks: it is built once, on a reference SDE and a score that
    is never called, so that a bad value stops a command before any model is loaded.
    """
    _build(VPSDE(), lambda x, t: x, solver, 1e-3, options)


def _build(sde: SDE, score_fn, solver: str, eps: float, options: dict) -> Solver:
    cls = get_solver(solver)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sde_lib.SDE (e.g. sde_lib.get_sde('vpsde')), got {type(sde).__name__}")
    if not 0.0 < eps < sde.T:
        raise UsageError(f"eps must be in (0, T) = (0, {sde.T}), got eps={eps}")
    return cls(sde, CountingScore(score_fn, eps, sde.T), **check_options(solver, options))


def _times(s: Solver, steps: int | None, sde: SDE, eps: float) -> Tensor:
    if steps is None and s.adaptive:
        return torch.tensor([sde.T, eps], dtype=torch.float64)
    return s.timesteps(s.default_steps if steps is None else steps, eps)


def sample(sde: SDE, score_fn, shape, solver: str = "heun", *, steps: int | None = None, eps: float = 1e-3,
           x_T: Tensor | None = None, generator: torch.Generator | SampleGenerators | None = None,
           denoise: bool | None = None, progress: bool = False, device=None, dtype=torch.float32,
           **solver_options) -> SampleResult:
    """Integrate the reverse dynamics of `sde` from the prior at T to eps; returns SampleResult(x, nfe).

    steps: grid steps (default per solver; rk45 is adaptive and takes none). x_T: the prior noise (default: drawn
    with `generator` on `device` in `dtype`; shape is then ignored). generator: a torch.Generator, or a
    solvers.SampleGenerators (one per sample: sample i then depends only on its own generator, whatever the
    batch); without one, x_T comes from the global RNG and an SDE solver's noise from a fresh, randomly seeded
    generator, so the global RNG is never advanced or reseeded by the solver. denoise (default: True for the
    stochastic solvers, whose last step then returns its mean, except ancestral with variance="analytic";
    False for the ODE solvers, where True adds one
    Tweedie step x_0 = (x + beta_bar^2 score)/alpha_bar at eps, costing one NFE). solver_options: e.g.
    grid="logsnr", order=2, eta=0.5, snr=0.16 (see `solvers.solver_options(name)`).
    """
    check_steps(solver, steps)
    s = _build(sde, score_fn, solver, eps, solver_options)
    if x_T is None:
        if isinstance(generator, SampleGenerators):
            x_T = generator.randn(tuple(shape), dtype) * sde.prior_std
        else:
            if device is None and generator is not None:
                device = generator.device
            x_T = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    if x_T.ndim < 1 or x_T.shape[0] < 1:
        raise UsageError(f"samples must have shape (N, ...) with N >= 1, got {tuple(x_T.shape)}")
    if s.stochastic and generator is None:
        generator = fresh_generator(x_T.device)
    ts = _times(s, steps, sde, eps)
    denoise = s.denoises if denoise is None else bool(denoise)
    with torch.no_grad():
        x = s.integrate(x_T, ts, generator=generator, denoise=denoise, progress=progress)
        if denoise and not s.stochastic:
            x = s.denoised(x, ts[-1])
    return SampleResult(x, s.score.nfe)


def encode(sde: SDE, score_fn, x: Tensor, solver: str = "rk45", *, steps: int | None = None, eps: float = 1e-3,
           progress: bool = False, **solver_options) -> SampleResult:
    """Map data x at t = eps to its latent at T along the probability-flow ODE (the inverse of `sample`)."""
    if SOLVERS.canonical(solver) not in deterministic():
        raise UsageError(f"encode needs a deterministic (probability-flow ODE) solver, not {solver!r}; "
                         f"use one of {', '.join(deterministic())}")
    check_steps(solver, steps)
    s = _build(sde, score_fn, solver, eps, solver_options)
    with torch.no_grad():
        z = s.integrate(x, _times(s, steps, sde, eps).flip(0), progress=progress)
    return SampleResult(z, s.score.nfe)


@dataclass(frozen=True)
class Sampler:
    """A solver with its steps, eps and checked options: everything one sampling run needs but the model.

    Made by `sampler(...)`, which checks everything before any work starts; `label` tells runs apart in file
    names, e.g. "unipc_10_calibrated" or "rk45_adaptive".
    """

    solver: str
    steps: int | None
    eps: float
    options: dict = field(default_factory=dict)
    grid_label: str = ""

    @property
    def label(self) -> str:
        steps = "adaptive" if self.steps is None else str(self.steps)
        return "_".join(p for p in (self.solver, steps, self.grid_label) if p)

    @property
    def stochastic(self) -> bool:
        return get_solver(self.solver).stochastic

    def sample(self, sde: SDE, score_fn, shape, **kwargs) -> SampleResult:
        """solvers.sample with this solver and its settings; kwargs: x_T, generator, device, dtype, progress."""
        return sample(sde, score_fn, shape, self.solver, steps=self.steps, eps=self.eps, **self.options, **kwargs)

    def describe(self) -> str:
        """E.g. 'unipc 10 steps, grid calibrated, order=2'."""
        parts = [self.solver, "adaptive" if self.steps is None else f"{self.steps} steps"]
        if self.grid_label:
            parts.append(f"grid {self.grid_label}")
        parts += [f"{k}={v}" for k, v in self.options.items() if k != "grid"]
        return ", ".join(parts)


def sampler(solver: str, steps: int | None = None, *, eps: float = 1e-3, grid=None, grid_label: str | None = None,
            default_steps: int | None = None, **options) -> Sampler:
    """A checked Sampler: the solver name, its steps (adaptive solvers take none), its grid ("" or None: the
    solver's own, a grid name, a .json path, or times) and its options (strings from the command line are
    converted). Without `steps`, a grid file or given times set them, else default_steps, else the solver's
    default. grid_label: the grid's name in the Sampler's label (default: from the grid)."""
    solver = SOLVERS.canonical(solver)
    steps_given = steps is not None
    if steps is None and not get_solver(solver).adaptive:
        steps = default_steps
    steps = check_steps(solver, steps)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise UsageError(f"eps must be a positive number, got eps={eps!r}")
    options = check_options(solver, options)
    check_option_values(solver, options)
    label = ""
    if grid not in (None, ""):
        if "grid" not in solver_options(solver):
            raise UsageError(f"solver {solver!r} takes no grid (it is adaptive); drop the grid setting")
        resolved = resolve_grid(grid, steps, steps_given=steps_given, label=grid_label)
        options["grid"], steps, label = resolved.grid, resolved.steps, resolved.label
    return Sampler(solver, steps, float(eps), options, label)
