"""The likelihood ODE on a fixed grid by exponential Adams-Bashforth steps, one score evaluation per step.

In y = x / alpha_bar and u = log sigma, sigma = beta_bar / alpha_bar = exp(-lambda), the probability-flow ODE and
its divergence integral lose their linear parts (docs/math.md, "The likelihood ODE and bits/dim"):

    dy/du = e^u eps_hat(alpha_bar y, t),    dDelta_y/du = e^u alpha_bar div_x eps_hat,
    log p_eps(x) = log pi(alpha_bar(T) y(T)) + D log(alpha_bar(T) / alpha_bar(eps)) + Delta_y(T),

with eps_hat = -beta_bar s. Each step integrates e^u times the polynomial through the last `order` values of
(eps_hat, div) exactly (the exponential multistep of DPM-Solver, Lu et al. 2022a, on the augmented state), so
f x and D f are exact and the network is called once per step. The grid is uniform in sigma^(1/7) (Karras et al.
2022): at 48 steps on a trained digits U-Net its mean error per point was 5x or more below that of grids
uniform in log-SNR, t^2 or t^3.
"""
from __future__ import annotations

import math

import torch

from scoresde.sde_lib import SDE
from scoresde.utils import Registry, UsageError
from scoresde.solvers.grids import edm_rho

from .ode import differentiable

Tensor = torch.Tensor

# name -> order; the first order - 1 steps use the orders the history allows (1, 2, ...).
FIXED_METHODS: Registry[int] = Registry("fixed-grid likelihood method", {"eab2": 2, "eab3": 3, "eab4": 4})
RHO = 7.0


def sigma_grid(sde: SDE, eps: float, steps: int) -> tuple[Tensor, Tensor]:
    """(t, u = log sigma) at steps + 1 nodes from eps to T: the sampler's EDM grid (uniform in sigma^(1/RHO))
    reversed; float64, ends exact."""
    t = edm_rho(sde, steps, eps, RHO).flip(0)
    return t, -sde.log_snr(t)


def _moments(h: float, k: int) -> list[float]:
    """int_0^h e^s s^j ds for j < k, by parts: J_0 = e^h - 1, J_j = h^j e^h - j J_(j-1)."""
    moments = [math.expm1(h)]
    for j in range(1, k):
        moments.append(h**j * math.exp(h) - j * moments[-1])
    return moments


def step_weights(nodes: list[float], u0: float, u1: float) -> list[float]:
    """w with int_u0^u1 e^u P(u) du = sum_m w_m P(nodes[m]) for every polynomial P of degree < len(nodes)."""
    k = len(nodes)
    s = torch.tensor([v - u0 for v in nodes], dtype=torch.float64)
    vander = torch.stack([s**j for j in range(k)])
    moments = torch.tensor(_moments(u1 - u0, k), dtype=torch.float64)
    return (torch.linalg.solve(vander, moments) * math.exp(u0)).tolist()


def integrate_multistep(sde: SDE, score, x: Tensor, divergence, probes, *, steps: int, order: int, eps: float,
                        state_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(z = x(T), int_eps^T div F dt) per sample; score is a CountingScore, divergence(score_out, x, probes)."""
    if not (isinstance(steps, int) and steps >= 1):
        raise UsageError(f"steps must be a positive integer for a fixed-grid method, got {steps!r}")
    t, u = sigma_grid(sde, eps, steps)
    alpha = sde.alpha_bar(t)
    beta = sde.beta_bar(t)
    n = x.shape[0]
    y = x.detach().to(state_dtype).reshape(n, -1) / alpha[0].to(state_dtype)
    delta = torch.zeros(n, dtype=torch.float64, device=x.device)
    history: list[tuple[float, Tensor, Tensor]] = []
    for i in range(steps):
        with torch.enable_grad():
            xi = (alpha[i].to(state_dtype) * y).reshape(x.shape).to(x.dtype).requires_grad_(True)
            s = differentiable(score(xi, t[i].to(x.device)))
            div_s = divergence(s, xi, probes)
        eps_hat = -(beta[i].to(state_dtype) * s.detach().to(state_dtype)).reshape(n, -1)
        div_y = -(alpha[i] * beta[i]).to(torch.float64) * div_s.to(torch.float64)
        history = (history + [(float(u[i]), eps_hat, div_y)])[-order:]
        w = step_weights([h[0] for h in history], float(u[i]), float(u[i + 1]))
        y = y + sum(wm * h[1] for wm, h in zip(w, history))
        delta = delta + sum(wm * h[2] for wm, h in zip(w, history))
    d = y.shape[1]
    delta = delta + d * float(torch.log(alpha[-1] / alpha[0]))
    return (alpha[-1].to(state_dtype) * y).reshape(x.shape), delta
