"""Stochastic DPM-Solver++ (Lu et al. 2022b, SDE-DPM-Solver++ with the multistep 2M and 3M updates).

The eta family dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dw_bar (docs/math.md, section "The eta family of
reverse processes") with score = (alpha_bar D - x)/beta_bar^2 is linear in x with the integrating factor
beta_bar e^(-nu lambda), nu = eta^2. From t to s, h = lambda_s - lambda_t > 0, exactly:

    x_s = (beta_bar_s/beta_bar_t) e^(-nu h) x_t + alpha_bar_s int_0^h (1 + nu) e^((1 + nu)(u - h)) D(lambda_t + u) du
          + beta_bar_s sqrt(1 - e^(-2 nu h)) z,

the noise's variance being the integral of eta^2 g^2 against the squared factor. The multistep solver replaces D by
the polynomial through its last `order` values, whose integral is sum_k phi_k(H)/(1 + nu)^k D^(k) with H = (1 + nu) h
(DPMSolver.step). k-diffusion's and diffusers' 3M SDE weigh D^(2) by phi_2(H)/(2 (1 + nu)^2), half of this, and so
are second order; their eta is our nu (the two agree at 0 and 1).
"""
from __future__ import annotations

import math

from .ode import DPMSolver


class DPMSolverSDE(DPMSolver):
    """DPM-Solver++(2M SDE / 3M SDE) with noise scale eta in [0, 1]: eta = 0 is DPM-Solver++(2M/3M) (dpm_solver),
    eta = 1 the reverse SDE. Each step's noise z is drawn from the solver's generator; with `denoise` the last step
    returns its mean."""

    name = "dpm_solver_sde"
    stochastic = True
    # The ODE solver's few-step defaults were measured on its ODE paths; the SDE keeps DPM-Solver++'s log-SNR grid
    # and third order.
    default_grids = ((math.inf, "logsnr"),)
    default_orders = ((math.inf, 3),)
    default_steps = 50

    def __init__(self, sde, score, *, eta: float = 1.0, **options):
        super().__init__(sde, score, **options)
        sde.reverse(score, eta)     # validates eta
        self.nu = float(eta) ** 2
