"""The probability-flow ODE dx/dt = F(x, t) = f(t) x - g(t)^2 score(x, t) / 2 with its divergence, for torchdiffeq."""
from __future__ import annotations

import torch

from scoresde.sde_lib import SDE
from scoresde.solvers import CountingScore
from scoresde.utils import UsageError

Tensor = torch.Tensor


def flow_velocity(x: Tensor, score: Tensor, f: Tensor, g2: Tensor) -> Tensor:
    """F = f x - g^2 score / 2 at one time (f, g2 scalars), in x's dtype."""
    return f.to(x.dtype) * x - (0.5 * g2).to(x.dtype) * score.to(x.dtype)


def differentiable(score: Tensor) -> Tensor:
    """score, checked to be still attached to the graph of its input (the divergence differentiates it)."""
    if not score.requires_grad:
        raise UsageError("score_fn output does not depend differentiably on x (was it computed under "
                         "torch.no_grad() or detached?); the likelihood needs its divergence")
    return score


class LikelihoodDynamics:
    """d/dt (x, Delta) = (F, div F) on a state (N, D + 1), div F = D f - g^2 div(score) / 2.

    F and the divergence estimate come from one forward pass of the score and one vector-Jacobian product per
    probe; the linear part f x contributes D f exactly, so probes only see the score. The score is a
    CountingScore, which keeps t in [eps, T], checks what comes back and counts the evaluations (nfe).
    """

    def __init__(self, sde: SDE, score: CountingScore, shape, divergence, probes: Tensor | None,
                 score_dtype: torch.dtype):
        self.sde = sde
        self.score = score
        self.shape = tuple(shape)
        self.dim = int(torch.Size(self.shape[1:]).numel())
        self.divergence = divergence
        self.probes = probes
        self.score_dtype = score_dtype

    def __call__(self, t: Tensor, state: Tensor) -> Tensor:
        with torch.enable_grad():
            x = state[:, :-1].reshape(self.shape).detach().requires_grad_(True)
            score = differentiable(self.score(x.to(self.score_dtype), t))
            div_score = self.divergence(score, x, self.probes)
        x = x.detach()
        f, g2 = self.sde.f_and_g2(t)
        drift = flow_velocity(x, score.detach(), f, g2)
        div = self.dim * f - 0.5 * g2 * div_score
        return torch.cat([drift.reshape(x.shape[0], -1), div.to(state.dtype)[:, None]], 1)
