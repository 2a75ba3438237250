"""Guidance at the score level (Dhariwal & Nichol 2021; Ho & Salimans 2022): score_fn(x, t) wrappers for any solver."""
from __future__ import annotations

from typing import Callable

import torch

from .labels import batch_labels
from scoresde.utils import UsageError

Tensor = torch.Tensor
ConditionalScore = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
LogitsFn = Callable[[Tensor, Tensor], Tensor]


def _check_scale(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise UsageError(f"{name} must be a non-negative number (0: no guidance), got {value!r}")
    return float(value)


class ClassifierFreeGuidance:
    """score = (1 + omega) s(x, y, t) - omega s(x, null, t) (Ho & Salimans); omega = 0 is the conditional score.

    `conditional_score(x, t, y)` is the score of class y, and of the null label for y=None: for a network,
    `models.get_score_fn(net, sde, parameterization).score`. The score is affine in eps_hat at fixed t, so this is
    Ho & Salimans' eps = (1 + omega) eps(x, y) - omega eps(x, null) for every parameterisation.
    `labels`: an int, or a list/tensor cycled over the batch.
    """

    def __init__(self, conditional_score: ConditionalScore, labels, omega: float = 0.0):
        if not callable(conditional_score):
            raise TypeError("conditional_score must be a callable (x, t, y) -> score, e.g. models.ScoreFn.score")
        self.conditional_score = conditional_score
        self.labels = labels
        self.omega = _check_scale(omega, "the classifier-free guidance weight omega")
        batch_labels(labels, 1, "cpu")

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        y = batch_labels(self.labels, x.shape[0], x.device)
        score = self.conditional_score(x, t, y)
        if self.omega == 0.0:
            return score
        return (1.0 + self.omega) * score - self.omega * self.conditional_score(x, t, None)


class ClassifierGuidance:
    """score = s(x, t) + gamma grad_x log p_t(y | x) (Dhariwal & Nichol); gamma = 1, exact classifier: p_t(x | y).

    `logits_fn(x, t)` returns (N, K) logits (or log-probabilities) of the noise-conditional classifier p_t(y | x);
    they are normalised with log_softmax, so any per-sample constant drops out. The gradient is taken by autograd
    even when the solver runs under torch.no_grad().
    """

    def __init__(self, score_fn: Callable[[Tensor, Tensor], Tensor], logits_fn: LogitsFn, labels,
                 scale: float = 1.0):
        if not callable(score_fn) or not callable(logits_fn):
            raise TypeError("score_fn and logits_fn must be callables (x, t) -> tensor")
        self.score_fn = score_fn
        self.logits_fn = logits_fn
        self.labels = labels
        self.scale = _check_scale(scale, "the classifier guidance scale gamma")
        batch_labels(labels, 1, "cpu")

    def log_prob_grad(self, x: Tensor, t: Tensor) -> Tensor:
        """grad_x log p_t(y | x) for the configured labels, shaped like x."""
        y = batch_labels(self.labels, x.shape[0], x.device)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = self.logits_fn(x_in, t)
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise UsageError(f"logits_fn must return logits of shape (N, num_classes) = ({x.shape[0]}, K); "
                                 f"got {tuple(logits.shape)}")
            if int(y.max()) >= logits.shape[1]:
                raise UsageError(f"class label {int(y.max())} out of range for a classifier of "
                                 f"{logits.shape[1]} classes")
            log_p = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
            grad, = torch.autograd.grad(log_p, x_in)
        return grad.to(x.dtype)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        score = self.score_fn(x, t)
        if self.scale == 0.0:
            return score
        return score + self.scale * self.log_prob_grad(x, t)
