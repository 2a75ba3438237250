"""Reverse-SDE samplers on a time grid: Euler-Maruyama, predictor-corrector, and ancestral (DDPM / DDIM-eta).

All take `eta` in [0, 1], the noise scale of MATH.md's family dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dw_bar
(eta = 1: the reverse SDE, eta = 0: the probability-flow ODE). With `denoise` the last step returns its mean.
"""
from __future__ import annotations

import torch

from sde_lib import expand_as

from .base import Solver, randn_like, steps_of
from .ode import ddim_coefficients

Tensor = torch.Tensor


class StochasticSolver(Solver):
    """A sampler of the reverse SDE with noise scale eta * g(t)."""

    stochastic = True
    default_steps = 1000

    def __init__(self, sde, score, *, eta: float = 1.0, grid=None, rho=7.0):
        super().__init__(sde, score, grid=grid, rho=rho)
        self.reverse = sde.reverse(score, eta)     # validates eta
        self.eta = float(eta)


def euler_maruyama_step(solver: StochasticSolver, x: Tensor, score: Tensor, t: Tensor, t_next: Tensor):
    """(mean, std) of x_next = x - drift(x, t) dt + eta g(t) sqrt(dt) z, dt = t - t_next (MATH.md, sign corrected)."""
    dt = t - t_next
    mean = x - solver.coef(dt, x) * solver.reverse.drift(x, t, score=score)
    return mean, solver.eta * solver.sde.g(t) * dt.sqrt()


def reverse_diffusion_step(solver: StochasticSolver, x: Tensor, score: Tensor, t: Tensor, t_next: Tensor):
    """Song et al.'s reverse diffusion: invert x_t = a x_s + sqrt(v) z, (a, v) = sde.transition(t_next, t).

    mean = x - (a - 1) x + (1 + eta^2)/2 v score, std = eta sqrt(v): valid for every SDE (sub-VP, user schedules)
    because (a, v) come from the marginals on the chosen grid, not from a per-SDE discretisation.
    """
    a, v = solver.sde.transition(t_next, t)
    mean = solver.coef(2.0 - a, x) * x + solver.coef(0.5 * (1.0 + solver.eta**2) * v, x) * score
    return mean, solver.eta * v.clamp(min=0.0).sqrt()


PREDICTORS = {"euler_maruyama": euler_maruyama_step, "reverse_diffusion": reverse_diffusion_step}


def langevin_step(solver: StochasticSolver, x: Tensor, t: Tensor, snr: float, generator,
                  step_size: str = "batch") -> Tensor:
    """x + delta score + sqrt(2 delta) z, delta = 2 (snr ||z|| / ||score||)^2 (Song et al. 2021, Alg. 4-5).

    Their per-step alpha_i (1 for VE, 1 - beta_i -> 1 for VP) is 1 in continuous time. step_size "batch" (as in
    their code): ||z|| and ||score|| are per-sample norms averaged over the batch, so delta is one number per step,
    an estimate of a function of t alone, and the chain targets p_t. "per_sample": delta = 2 (snr sqrt(D) /
    ||score(x)||)^2 from the sample's own score norm (and the noise's typical norm sqrt(D): its own ||z|| would
    couple the step to the noise it scales, giving heavy tails), so a sample's path does not depend on the rest of
    the batch. But Langevin with a step delta(x) that depends on the position targets p_t(x) / delta(x), here
    p_t(x) ||score(x)||^2: for Gaussian p_t a variance (D + 2)/D too large (25% for D = 8, 3% for D = 64, 0.07% for
    a 32x32x3 image, where the norms concentrate and both rules agree). In 2-D it is worse than the 2x this
    predicts: near the zeros of the score the steps are huge and the tails heavy (a variance of 6.5 for N(0, I)).
    """
    score = solver.score_at(x, t)
    z = randn_like(x, generator)
    # sqrt(D) / beta_bar is the score norm of the noise kernel, an upper bound on that of p_t. A norm below a
    # thousandth of it is a zero score (e.g. an untrained network), not data: it would otherwise give an infinite step.
    root_d = x[0].numel() ** 0.5
    floor = 1e-3 * root_d / solver.sde.beta_bar(t).to(x)
    score_norm = score.flatten(1).norm(dim=1)
    if step_size == "batch":
        delta = 2.0 * (snr * z.flatten(1).norm(dim=1).mean() / torch.maximum(score_norm.mean(), floor)) ** 2
    else:
        delta = expand_as(2.0 * (snr * root_d / torch.maximum(score_norm, floor)) ** 2, x)
    return x + delta * score + (2.0 * delta).sqrt() * z


LANGEVIN_STEP_SIZES = ("batch", "per_sample")


CORRECTORS = {"langevin": langevin_step, "none": None}


def _lookup(kind: str, name: str, table: dict):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; available: {', '.join(table)}")
    return table[name]


class EulerMaruyama(StochasticSolver):
    """Euler-Maruyama on the reverse SDE: x_next = x - drift dt + eta g sqrt(dt) z."""

    def integrate(self, x, ts, *, generator=None, denoise=True, progress=False):
        n = len(ts) - 1
        for i in steps_of(ts, progress, "euler_maruyama"):
            mean, std = euler_maruyama_step(self, x, self.score_at(x, ts[i]), ts[i], ts[i + 1])
            x = mean if denoise and i == n - 1 else mean + self.coef(std, x) * randn_like(x, generator)
        return x


class PredictorCorrector(StochasticSolver):
    """Song et al.'s PC sampler: `corrector_steps` Langevin corrections at t_i, then one predictor step to t_{i+1}."""

    def __init__(self, sde, score, *, predictor: str = "reverse_diffusion", corrector: str = "langevin",
                 snr: float = 0.16, corrector_steps: int = 1, step_size: str = "batch", eta: float = 1.0,
                 grid=None, rho=7.0):
        super().__init__(sde, score, eta=eta, grid=grid, rho=rho)
        if step_size not in LANGEVIN_STEP_SIZES:
            raise ValueError(f"unknown Langevin step_size {step_size!r}; available: {', '.join(LANGEVIN_STEP_SIZES)}")
        self.step_size = step_size
        self.predictor = _lookup("predictor", predictor, PREDICTORS)
        self.corrector = _lookup("corrector", corrector, CORRECTORS)
        if not snr > 0:
            raise ValueError(f"snr must be positive (0.16 for VE, 0.01-0.17 for VP), got snr={snr}")
        if not (isinstance(corrector_steps, int) and corrector_steps >= 0):
            raise ValueError(f"corrector_steps must be a non-negative integer, got {corrector_steps!r}")
        self.snr = float(snr)
        self.corrector_steps = corrector_steps if self.corrector is not None else 0

    def integrate(self, x, ts, *, generator=None, denoise=True, progress=False):
        n = len(ts) - 1
        for i in steps_of(ts, progress, "pc"):
            for _ in range(self.corrector_steps):
                x = self.corrector(self, x, ts[i], self.snr, generator, self.step_size)
            mean, std = self.predictor(self, x, self.score_at(x, ts[i]), ts[i], ts[i + 1])
            x = mean if denoise and i == n - 1 else mean + self.coef(std, x) * randn_like(x, generator)
        return x


class Ancestral(StochasticSolver):
    """DDPM ancestral sampling on any subsequence of times: x_s ~ q(x_s | x_t, x0_hat) with its std scaled by eta.

    sigma^2 = eta^2 beta_bar_s^2 v / beta_bar_t^2, v = beta_bar_t^2 - (alpha_bar_t/alpha_bar_s)^2 beta_bar_s^2 the
    transition variance (seed 000 eq. 4.14, written with alpha_bar ratios between the chosen times); eta = 0 is DDIM.
    """

    def integrate(self, x, ts, *, generator=None, denoise=True, progress=False):
        n = len(ts) - 1
        for i in steps_of(ts, progress, "ancestral"):
            t, s = ts[i], ts[i + 1]
            _, v = self.sde.transition(s, t)
            sigma = self.eta * self.sde.beta_bar(s) * v.clamp(min=0.0).sqrt() / self.sde.beta_bar(t)
            c_x, c_s = ddim_coefficients(self.sde, t, s, sigma)
            x = self.coef(c_x, x) * x + self.coef(c_s, x) * self.score_at(x, t)
            if not (denoise and i == n - 1):
                x = x + self.coef(sigma, x) * randn_like(x, generator)
        return x
