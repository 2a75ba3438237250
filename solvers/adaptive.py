"""Adaptive torchdiffeq integration that never evaluates the right-hand side outside [t0, t1].

Both the rk45 sampler and the likelihood ODE go through `integrate_adaptive`; the score (and its t-range
check) is only as safe as the times the solver asks for, so the guards live here once.
"""
from __future__ import annotations

import torch
from torchdiffeq import odeint

from scoresde.utils import Registry

Tensor = torch.Tensor

# Embedded Runge-Kutta pairs by name; "rk45" and "rk23" are scipy's names for dopri5 and bosh3.
METHODS: Registry[str] = Registry("adaptive method", {
    "rk45": "dopri5",
    "dopri5": "dopri5",
    "rk23": "bosh3",
    "bosh3": "bosh3",
    "dopri8": "dopri8",
    "adaptive_heun": "adaptive_heun",
})


def integrate_adaptive(func, y0: Tensor, t0, t1, *, method: str = "dopri5", rtol: float, atol: float,
                       first_step: float, max_steps: int | None = None) -> Tensor:
    """y(t1) for dy/dt = func(t, y), y(t0) = y0, with t0 > t1 allowed; times are float64 on y0's device.

    first_step is a fraction of the span |t1 - t0|: left to itself torchdiffeq sizes the first step by probing
    func at t0 + h0 with h0 unbounded, which can land outside the interval. step_t = [t1] clips every step at
    t1, where dopri5 would otherwise step past it and interpolate back. max_steps None means no limit.
    """
    grid = torch.tensor([float(t0), float(t1)], dtype=torch.float64, device=y0.device)
    options = {"step_t": grid[1:], "first_step": first_step * float(abs(grid[1] - grid[0]))}
    if max_steps is not None:
        options["max_num_steps"] = max_steps
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
