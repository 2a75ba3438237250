"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1).

The model's denoised estimate D(x_t, t) = (x_t + beta_bar^2 score)/alpha_bar is taken as the consistency function
f: the endpoint at eps of the probability-flow ODE through x_t (for a consistency student, training.consistency,
exactly so by construction; for an ordinary score model, only its one-step denoiser). One step maps the prior
sample to f(x_T, T); each further time t_n of the grid re-noises that estimate to x_(t_n) = alpha_bar x + beta_bar
z with fresh noise z and maps it back, x = f(x_(t_n), t_n). So n steps cost n NFE, and the grid's last time, eps,
is where f's estimate lives and is not evaluated.

The default grid is uniform in log-SNR: for 2 steps its inner time is the geometric mean of sigma(T) and
sigma(eps) in sigma = beta_bar/alpha_bar, e.g. 1.2 for the VP-SDE with eps = 1e-3, about twice the data's standard
deviation on [-1, 1] images; Song et al.'s 2-step CIFAR-10 choice, found by search, is sigma = 0.821 (docs/math.md,
"Consistency distillation").
"""
from __future__ import annotations

import math

from .base import FixedStepSolver, steps_of
from .random import randn_like


class Consistency(FixedStepSolver):
    """Algorithm 1 of Song et al. (2023) on the grid T = t_0 > t_1 > ... > t_n = eps: x = f(x_T, T), then
    x = f(alpha_bar(t_i) x + beta_bar(t_i) z, t_i) for i = 1 .. n - 1, with z from the sampler's generator."""

    stochastic = True
    default_grids = ((math.inf, "logsnr"),)
    default_steps = 1

    def integrate(self, x, ts, *, generator=None, denoise=True, progress=False):
        # Every step ends on a denoised estimate, so `denoise` has nothing to change.
        y = self.denoised(x, ts[0])
        for i in steps_of(ts[1:], progress, "consistency"):
            t = ts[i + 1]
            y = self.denoised(self.sde.perturb(y, randn_like(y, generator), t), t)
        # A sample at eps, as the other samplers return: alpha_bar(eps) times the data estimate.
        return self.sde.alpha_bar(ts[-1]).to(y.dtype) * y
