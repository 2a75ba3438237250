"""Exact log-likelihood through the probability-flow ODE, and decoding latents back to data.

log p_eps(x) = log p_T(z) + int_eps^T div F(x(t), t) dt, with z = x(T) and p_T replaced by the prior.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from scoresde import solvers
from scoresde.sde_lib import SDE
from scoresde.solvers.adaptive import integrate_adaptive

from .divergence import DIVERGENCES
from .multistep import FIXED_METHODS, integrate_multistep
from .ode import LikelihoodDynamics
from scoresde.utils import UsageError

Tensor = torch.Tensor

# The first adaptive step as a fraction of [eps, T] (the sampler's rk45 uses 1e-2). Both the encoder and decode
# use it, and the likelihoods and latents the tests and README quote were computed with it.
FIRST_STEP = 1e-3


class LikelihoodResult(NamedTuple):
    """logp: log p_eps(x) in nats, shape (N,), float64; z: the latent x(T), like x; nfe: score_fn calls."""

    logp: Tensor
    z: Tensor
    nfe: int


def _check_common(sde: SDE, x: Tensor, eps: float, n_probes: int = 1, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise UsageError(f"{name} must be a floating-point tensor of shape (N, ...) with a batch dimension first, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).nonzero().flatten().tolist()
        raise UsageError(f"{name} contains NaN or inf (samples {bad[:10]}); clean the input before integrating the ODE")
    if not 0.0 < eps < sde.T:
        raise UsageError(f"eps must be in (0, T={sde.T:g}), got eps={eps}")
    if not (isinstance(n_probes, int) and n_probes >= 1):
        raise UsageError(f"n_probes must be a positive integer, got {n_probes!r}")


def state_dtype_for(x: Tensor, state_dtype) -> torch.dtype:
    """The dtype the ODE state is integrated in: state_dtype if given, else float64 on CPU and x's dtype elsewhere."""
    if state_dtype is not None:
        return state_dtype
    return torch.float64 if x.device.type == "cpu" else x.dtype


def log_likelihood(sde: SDE, score_fn, x: Tensor, *, divergence: str = "rademacher", n_probes: int = 1,
                   rtol: float = 1e-5, atol: float = 1e-5, method: str = "rk45", eps: float = 1e-5,
                   generator: torch.Generator | None = None, state_dtype: torch.dtype | None = None,
                   max_steps: int = 10_000, steps: int | None = None, probes: Tensor | None = None
                   ) -> LikelihoodResult:
    """log p_eps(x) = prior_logp(x(T)) + int div F dt along the probability-flow ODE from t = eps to T.

    divergence: "exact" (D vector-Jacobian products), "rademacher" or "gaussian" (Hutchinson-Skilling, the
    probes fixed along the trajectory and averaged over n_probes; pass `probes` (n_probes, *x.shape) to reuse
    those of another solve). method: an adaptive one from solvers.adaptive.METHODS (rtol, atol, max_steps) or a
    fixed-grid one from FIXED_METHODS ("eab4": `steps` exponential Adams-Bashforth steps, one network call each).
    The state (x, int div) is integrated in state_dtype (float64 on CPU, x's dtype elsewhere by default);
    score_fn sees x in x's dtype. nfe counts the calls of score_fn.
    """
    _check_common(sde, x, eps, n_probes)
    estimator = DIVERGENCES[divergence]
    dtype = state_dtype_for(x, state_dtype)
    x_state = x.detach().to(dtype)
    if probes is None and estimator.probes is not None:
        probes = estimator.probes(n_probes, x_state, generator)
    score = solvers.CountingScore(score_fn, eps, sde.T)
    if method in FIXED_METHODS:
        z, delta = integrate_multistep(sde, score, x, estimator.estimate, probes, steps=steps,
                                       order=FIXED_METHODS[method], eps=eps, state_dtype=dtype)
        logp = sde.prior_logp(z.to(torch.float64)) + delta
        return LikelihoodResult(logp, z.to(x.dtype), score.nfe)
    dynamics = LikelihoodDynamics(sde, score, x.shape, estimator.estimate, probes, x.dtype)
    state0 = torch.cat([x_state.reshape(x.shape[0], -1), x_state.new_zeros(x.shape[0], 1)], 1)
    with torch.no_grad():
        state1 = integrate_adaptive(dynamics, state0, eps, sde.T, method=method, rtol=rtol, atol=atol,
                                    first_step=FIRST_STEP, max_steps=max_steps)
    z = state1[:, :-1].reshape(x.shape)
    logp = sde.prior_logp(z.to(torch.float64)) + state1[:, -1].to(torch.float64)
    return LikelihoodResult(logp, z.to(x.dtype), score.nfe)


def decode(sde: SDE, score_fn, z: Tensor, *, rtol: float = 1e-5, atol: float = 1e-5, method: str = "rk45",
           eps: float = 1e-5, max_steps: int = 10_000) -> Tensor:
    """x(eps) from x(T) = z along the probability-flow ODE (inverse of the encoder): the rk45 sampler from z.

    The state is integrated in float64, as the sampler does; the result has z's dtype.
    """
    _check_common(sde, z, eps, name="z")
    return solvers.sample(sde, score_fn, None, "rk45", x_T=z, eps=eps, rtol=rtol, atol=atol, method=method,
                          first_step=FIRST_STEP, max_steps=max_steps).x
