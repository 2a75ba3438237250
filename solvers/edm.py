"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) for every SDE, in sigma = beta_bar/alpha_bar.

With y = x/alpha_bar the probability-flow ODE is dy/dsigma = eps_hat = -beta_bar score (docs/math.md, section "DDIM
as exponential Euler"), which for VE is Karras et al.'s dx/dsigma = (x - D)/sigma; the sampler runs on y, so any
member of sde_lib works, not only VE.
"""
from __future__ import annotations

import math

import torch

from .base import FixedStepSolver, steps_of
from .random import randn_like
from scoresde.utils import UsageError

Tensor = torch.Tensor


class EDM(FixedStepSolver):
    """Heun in sigma with stochastic churn (Karras et al. 2022, Algorithm 2; s_churn = 0 is their Algorithm 1).

    Step i first raises the noise level to sigma_hat = sigma_i (1 + gamma), gamma = min(s_churn/n, sqrt(2) - 1) for
    sigma_i in [s_tmin, s_tmax] (noise levels of x/alpha_bar), by adding fresh noise of std s_noise
    sqrt(sigma_hat^2 - sigma_i^2), then takes a Heun step from sigma_hat to sigma_(i+1). sigma_hat is clamped to
    sigma(T): the score is not defined beyond T. The last step, into eps, is plain Euler as Algorithm 2's step into
    sigma = 0, so n steps cost 2n - 1 NFE. The churn noise of each step comes from the solver's generator.
    """

    stochastic = True
    default_grids = ((math.inf, "edm"),)
    default_steps = 18

    def __init__(self, sde, score, *, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                 s_noise: float = 1.0, **options):
        super().__init__(sde, score, **options)
        if not (s_churn >= 0 and s_noise >= 0 and 0 <= s_tmin <= s_tmax):
            raise UsageError(f"edm needs s_churn >= 0, s_noise >= 0 and 0 <= s_tmin <= s_tmax, got s_churn={s_churn}, "
                             f"s_noise={s_noise}, s_tmin={s_tmin}, s_tmax={s_tmax}")
        self.s_churn, self.s_tmin = float(s_churn), float(s_tmin)
        self.s_tmax, self.s_noise = float(s_tmax), float(s_noise)

    def slope(self, y: Tensor, t: Tensor) -> Tensor:
        """dy/dsigma = eps_hat at (alpha_bar(t) y, t)."""
        return -self.sde.beta_bar(t) * self.score_at(self.sde.alpha_bar(t) * y, t)

    def integrate(self, x, ts, *, generator=None, denoise=True, progress=False):
        n = len(ts) - 1
        sigma = torch.exp(-self.sde.log_snr(ts))
        gamma_max = min(self.s_churn / n, math.sqrt(2) - 1)
        y = x / self.sde.alpha_bar(ts[0])
        for i in steps_of(ts, progress, "edm"):
            t_hat, sigma_hat = ts[i], sigma[i]
            gamma = gamma_max if self.s_tmin <= float(sigma[i]) <= self.s_tmax else 0.0
            if gamma > 0 and sigma[i] < sigma[0]:
                sigma_hat = torch.minimum(sigma[i] * (1 + gamma), sigma[0])
                t_hat = self.sde.t_of_log_snr(-torch.log(sigma_hat)).clamp(max=ts[0])
                y = y + (self.s_noise * (sigma_hat**2 - sigma[i] ** 2).sqrt()) * randn_like(y, generator)
            d = self.slope(y, t_hat)
            y_next = y + (sigma[i + 1] - sigma_hat) * d
            if i < n - 1:
                y_next = y + (0.5 * (sigma[i + 1] - sigma_hat)) * (d + self.slope(y_next, ts[i + 1]))
            y = y_next
        return self.sde.alpha_bar(ts[-1]) * y
