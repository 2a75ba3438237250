"""The score_fn wrapper every solver calls: it counts evaluations and checks what comes back."""
from __future__ import annotations

import torch

from scoresde.sde_lib import batch_time
from scoresde.utils import UsageError

Tensor = torch.Tensor

# Adaptive and library-driven integrators compute stage times as t0 + c * dt, which can land a few ulps outside
# [eps, T]; anything further out is a solver bug and is reported instead of silently clamped.
_ROUND_OFF = 1e-9


class CountingScore:
    """score_fn(x, t) that counts calls (nfe), keeps t in [t_min, t_max], and rejects wrong shapes and NaN/inf."""

    def __init__(self, score_fn, t_min: float, t_max: float):
        if not callable(score_fn):
            raise TypeError("score_fn must be a callable score_fn(x, t) -> tensor like x, "
                            f"got {type(score_fn).__name__}")
        self.score_fn = score_fn
        self.t_min = float(t_min)
        self.t_max = float(t_max)
        self.nfe = 0

    def __call__(self, x: Tensor, t) -> Tensor:
        t = batch_time(t, x)
        slack = _ROUND_OFF * self.t_max
        if (t < self.t_min - slack).any() or (t > self.t_max + slack).any():
            raise RuntimeError(f"solver asked for the score at t in [{float(t.min()):.17g}, {float(t.max()):.17g}], "
                               f"outside [eps, T] = [{self.t_min}, {self.t_max}]")
        t = t.clamp(self.t_min, self.t_max)
        score = self.score_fn(x, t.to(x.dtype))
        self.nfe += 1
        if not isinstance(score, Tensor) or score.shape != x.shape:
            got = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
            raise UsageError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}; got {got}")
        if not torch.isfinite(score).all():
            raise UsageError(f"score_fn returned NaN or inf at t={float(t[0].detach()):.6g} "
                             f"(score evaluation {self.nfe}); "
                             f"check the model and the time range [eps, T] = [{self.t_min}, {self.t_max}]")
        return score
