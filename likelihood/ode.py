"""The probability-flow ODE dx/dt = F(x, t) = f(t) x - g(t)^2 score(x, t) / 2, with its divergence, for torchdiffeq.

The ODE can be integrated in t or in another clock u(t) (dx/du = F dt/du); the log-SNR clock
u = -lambda(t) = log(beta_bar/alpha_bar) spreads the steps where the marginals change fastest.
"""
from __future__ import annotations

import torch
from torchdiffeq import odeint

from sde_lib import SDE, batch_time

Tensor = torch.Tensor

# Adaptive torchdiffeq solvers by name; "rk45" and "rk23" are scipy's names for dopri5 and bosh3.
METHODS: dict[str, str] = {
    "rk45": "dopri5",
    "dopri5": "dopri5",
    "rk23": "bosh3",
    "bosh3": "bosh3",
    "dopri8": "dopri8",
    "adaptive_heun": "adaptive_heun",
}


class TimeClock:
    """Integrate in u = t on [eps, T]."""

    def __init__(self, sde: SDE, eps: float):
        self.sde = sde
        self.eps = eps
        self.bounds = (eps, sde.T)

    def t(self, u: Tensor) -> Tensor:
        """t(u) = u."""
        return u.to(torch.float64)

    def dt_du(self, t: Tensor, g2: Tensor) -> Tensor:
        """dt/du = 1."""
        return torch.ones_like(t)


class LogSNRClock:
    """Integrate in u = -lambda(t) = log(beta_bar/alpha_bar), increasing in t: dt/du = 2 beta_bar^2 / g^2."""

    def __init__(self, sde: SDE, eps: float):
        self.sde = sde
        self.eps = eps
        ends = torch.tensor([eps, sde.T], dtype=torch.float64)
        self.bounds = tuple(float(u) for u in -sde.log_snr(ends))

    def t(self, u: Tensor) -> Tensor:
        """t(u) = t_of_log_snr(-u), clamped to [eps, T] against the inverse's round-off at the ends."""
        return self.sde.t_of_log_snr(-u.to(torch.float64)).clamp(self.eps, self.sde.T)

    def dt_du(self, t: Tensor, g2: Tensor) -> Tensor:
        """dt/du = -1 / (d lambda/dt) with d lambda/dt = -g^2 / (2 beta_bar^2); g2 = g(t)^2, already at hand."""
        return 2.0 * self.sde.beta_bar(t) ** 2 / g2


CLOCKS = {"t": TimeClock, "log_snr": LogSNRClock}


def get_clock(name: str, sde: SDE, eps: float):
    """The integration variable registered under `name`, for `sde` on [eps, T]."""
    if name not in CLOCKS:
        raise ValueError(f"unknown time_variable {name!r}; available: {', '.join(CLOCKS)}")
    return CLOCKS[name](sde, eps)


def checked_score(score_fn, x: Tensor, t: Tensor) -> Tensor:
    """score_fn(x, t) with t of shape (N,), checked to be shaped like x and finite."""
    score = score_fn(x, batch_time(t, x).to(x.dtype))
    if not isinstance(score, Tensor) or score.shape != x.shape:
        got = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
        raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}, got {got}")
    if not torch.isfinite(score).all():
        raise ValueError(f"score_fn returned non-finite values at t={float(t):.6g}; check the model "
                         "(and its dtype) near this time")
    return score


def flow_velocity(x: Tensor, score: Tensor, f: Tensor, g2: Tensor) -> Tensor:
    """F = f x - g^2 score / 2 at one time (f, g2 scalars), in x's dtype."""
    return f.to(x.dtype) * x - (0.5 * g2).to(x.dtype) * score.to(x.dtype)


class FlowDynamics:
    """dx/du = F(x, t(u)) dt/du on a flattened batch (N, D): the probability-flow ODE alone (decoding)."""

    def __init__(self, sde: SDE, score_fn, clock, shape, score_dtype: torch.dtype):
        self.sde = sde
        self.score_fn = score_fn
        self.clock = clock
        self.shape = tuple(shape)
        self.score_dtype = score_dtype
        self.nfe = 0

    def __call__(self, u: Tensor, state: Tensor) -> Tensor:
        self.nfe += 1
        t = self.clock.t(u)
        x = state.reshape(self.shape)
        score = checked_score(self.score_fn, x.to(self.score_dtype), t)
        f, g2 = self.sde.f_and_g2(t)
        return flow_velocity(x, score, f, g2).reshape(state.shape) * self.clock.dt_du(t, g2).to(state.dtype)


class LikelihoodDynamics:
    """d/du (x, Delta) = (F, div F) dt/du on a state (N, D + 1), div F = D f - g^2 div(score) / 2.

    F and the divergence estimate come from one forward pass of score_fn and one vector-Jacobian
    product per probe; the linear part f x contributes D f exactly, so probes only see the score.
    """

    def __init__(self, sde: SDE, score_fn, clock, shape, divergence, probes: Tensor | None,
                 score_dtype: torch.dtype):
        self.sde = sde
        self.score_fn = score_fn
        self.clock = clock
        self.shape = tuple(shape)
        self.dim = int(torch.Size(self.shape[1:]).numel())
        self.divergence = divergence
        self.probes = probes
        self.score_dtype = score_dtype
        self.nfe = 0

    def __call__(self, u: Tensor, state: Tensor) -> Tensor:
        self.nfe += 1
        t = self.clock.t(u)
        with torch.enable_grad():
            x = state[:, :-1].reshape(self.shape).detach().requires_grad_(True)
            score = checked_score(self.score_fn, x.to(self.score_dtype), t)
            if not score.requires_grad:
                raise ValueError("score_fn output does not depend differentiably on x (was it computed under "
                                 "torch.no_grad() or detached?); the likelihood needs its divergence")
            div_score = self.divergence(score, x, self.probes)
        x = x.detach()
        f, g2 = self.sde.f_and_g2(t)
        drift = flow_velocity(x, score.detach(), f, g2)
        div = self.dim * f - 0.5 * g2 * div_score
        speed = self.clock.dt_du(t, g2).to(state.dtype)
        return torch.cat([drift.reshape(x.shape[0], -1), div.to(state.dtype)[:, None]], 1) * speed


def integrate(func, y0: Tensor, u0: float, u1: float, *, method: str, rtol: float, atol: float,
              max_steps: int) -> Tensor:
    """y(u1) for dy/du = func(u, y), y(u0) = y0, with an adaptive torchdiffeq solver that stays inside [u0, u1]."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    grid = torch.tensor([u0, u1], dtype=torch.float64, device=y0.device)
    # step_t clips every step at u1 (dopri5 would otherwise step past it and interpolate back), and an
    # explicit first step keeps the initial-step heuristic's trial evaluation inside the interval.
    options = {"step_t": grid[1:], "first_step": 1e-3 * abs(u1 - u0), "max_num_steps": max_steps}
    try:
        return odeint(func, y0, grid, rtol=rtol, atol=atol, method=METHODS[method], options=options)[-1]
    except AssertionError as e:
        message = str(e)
        if message.startswith("max_num_steps exceeded"):
            raise RuntimeError(f"the ODE solver hit its step limit (max_steps={max_steps}) before reaching the end "
                               f"of the interval; relax the tolerances (rtol={rtol:g}, atol={atol:g}, e.g. to "
                               f"{10 * rtol:g}) or raise max_steps") from None
        if message.startswith("underflow in dt"):
            raise RuntimeError(f"the ODE solver's step size underflowed (rtol={rtol:g}, atol={atol:g}); the score "
                               "is probably singular on the interval, or the tolerances are below round-off: "
                               "relax rtol/atol") from None
        raise
