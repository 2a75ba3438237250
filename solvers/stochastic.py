"""Reverse-SDE samplers on a time grid: Euler-Maruyama, predictor-corrector, and ancestral (DDPM / DDIM-eta).

All take `eta` in [0, 1], the noise scale of the family dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dw_bar
(eta = 1: the reverse SDE, eta = 0: the probability-flow ODE; docs/math.md, section "The eta family of reverse
processes"). With `denoise` the last step returns its mean. The steps themselves are in solvers/steps.py.
"""
from __future__ import annotations

import torch

from .analytic import as_eps_moments
from .base import FixedStepSolver, steps_of
from .random import randn_like
from .steps import (ANCESTRAL_VARIANCES, CORRECTORS, LANGEVIN_STEP_SIZES, PREDICTORS, ancestral_std,
                    ddim_coefficients, euler_maruyama_step)
from scoresde.utils import UsageError

Tensor = torch.Tensor


class StochasticSolver(FixedStepSolver):
    """A sampler of the reverse SDE with noise scale eta * g(t)."""

    stochastic = True
    default_steps = 1000

    def __init__(self, sde, score, *, eta: float = 1.0, **options):
        super().__init__(sde, score, **options)
        self.reverse = sde.reverse(score, eta)     # validates eta
        self.eta = float(eta)


class EulerMaruyama(StochasticSolver):
    """Euler-Maruyama on the reverse SDE: x_next = x - drift dt + eta g sqrt(dt) z."""

    def integrate(self, x, ts, *, generator=None, denoise=True, progress=False):
        n = len(ts) - 1
        for i in steps_of(ts, progress, "euler_maruyama"):
            mean, std = euler_maruyama_step(self.sde, self.eta, x, self.score_at(x, ts[i]), ts[i], ts[i + 1])
            x = mean if denoise and i == n - 1 else mean + std * randn_like(x, generator)
        return x


class PredictorCorrector(StochasticSolver):
    """Song et al.'s PC sampler (2021, Alg. 1): `corrector_steps` Langevin corrections at t_i, then one predictor
    step to t_{i+1}."""

    def __init__(self, sde, score, *, predictor: str = "reverse_diffusion", corrector: str = "langevin",
                 snr: float = 0.16, corrector_steps: int = 1, step_size: str = "batch", **options):
        super().__init__(sde, score, **options)
        self.step_size = LANGEVIN_STEP_SIZES.canonical(step_size)
        self.predictor = PREDICTORS[predictor]
        self.corrector = CORRECTORS[corrector]
        if not snr > 0:
            raise UsageError(f"snr must be positive (0.16 for VE, 0.01-0.17 for VP), got snr={snr}")
        if not (isinstance(corrector_steps, int) and corrector_steps >= 0):
            raise UsageError(f"corrector_steps must be a non-negative integer, got {corrector_steps!r}")
        self.snr = float(snr)
        self.corrector_steps = corrector_steps if self.corrector is not None else 0

    def integrate(self, x, ts, *, generator=None, denoise=True, progress=False):
        n = len(ts) - 1
        for i in steps_of(ts, progress, "pc"):
            t = ts[i]
            for _ in range(self.corrector_steps):
                score = self.score_at(x, t)
                x = self.corrector(self.sde, x, score, randn_like(x, generator), t, self.snr, self.step_size)
            mean, std = self.predictor(self.sde, self.eta, x, self.score_at(x, t), t, ts[i + 1])
            x = mean if denoise and i == n - 1 else mean + std * randn_like(x, generator)
        return x


class Ancestral(StochasticSolver):
    """DDPM ancestral sampling on any subsequence of times: x_s ~ q(x_s | x_t, x0_hat) with its std scaled by eta.

    One DDIM step (Song, Meng & Ermon 2021) with sigma = eta beta_bar_s sqrt(v) / beta_bar_t, v the transition
    variance (docs/math.md, section "Ancestral sampling"); eta = 1 is DDPM (Ho et al. 2020), eta = 0 is DDIM.
    variance: the std of the noise the step adds, for that step's mean: "ddpm" is sigma itself, "large" is sqrt(v)
    (Ho et al.'s other choice, sigma^2 = beta_t), "analytic" is Analytic-DPM's optimal sigma_* (Bao et al. 2022),
    which needs eps_moments: the E||eps_hat||^2/D table of solvers.estimate_eps_moments, or the path of its .json.
    """

    def __init__(self, sde, score, *, variance: str = "ddpm", eps_moments=None, **options):
        super().__init__(sde, score, **options)
        self.variance = ANCESTRAL_VARIANCES.canonical(variance)
        self.noise_std = ANCESTRAL_VARIANCES[variance]
        if self.variance == "analytic" and eps_moments is None:
            raise UsageError("variance='analytic' needs eps_moments: a table from solvers.estimate_eps_moments or "
                             "the path of the .json that save_eps_moments wrote")
        self.eps_moments = None if eps_moments is None else as_eps_moments(eps_moments)

    @property
    def denoises(self) -> bool:
        # The optimal variance is that of x_s given x_t, down to eps: a mean-only last step would drop the small,
        # exactly sized noise of x_eps that the analytic variance exists to get right.
        return self.variance != "analytic"

    def integrate(self, x, ts, *, generator=None, denoise=True, progress=False):
        n = len(ts) - 1
        for i in steps_of(ts, progress, "ancestral"):
            t, s = ts[i], ts[i + 1]
            sigma = ancestral_std(self.sde, self.eta, t, s)
            c_x, c_score = ddim_coefficients(self.sde, t, s, sigma)
            x = c_x * x + c_score * self.score_at(x, t)
            if not (denoise and i == n - 1):
                moment = None if self.eps_moments is None else self.eps_moments.at(self.sde, t)
                x = x + self.noise_std(self.sde, sigma, t, s, moment) * randn_like(x, generator)
        return x

