"""Inception Score (Salimans et al. 2016, "Improved techniques for training GANs"): exp(E_x KL(p(y|x) ‖ p(y)))."""
from __future__ import annotations

import numpy as np
from scipy.special import softmax, xlogy
from scoresde.utils import UsageError


def inception_score(probs, splits: int = 10, seed: int | None = None) -> tuple[float, float]:
    """(mean, std) over `splits` contiguous chunks of exp(mean_x KL(p(y|x) ‖ p̂(y))), p̂ the chunk's mean.

    probs: (N, K) class probabilities, rows summing to 1. With a seed the rows are first permuted by
    RandomState(seed), as torch-fidelity does (seed 2020 there), so that a sorted input does not put one class per
    chunk. The std is numpy's (ddof 0), as in the reference implementation.
    """
    p = np.asarray(probs, np.float64)
    if p.ndim != 2:
        raise UsageError(f"probs must be (N, K), got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        raise UsageError("probs must be finite, non-negative, and each row must sum to 1")
    n = len(p)
    if not 1 <= splits <= n:
        raise UsageError(f"splits must be between 1 and the number of samples ({n}), got {splits}")
    if seed is not None:
        p = p[np.random.RandomState(seed).permutation(n)]
    scores = []
    for i in range(splits):
        chunk = p[i * n // splits:(i + 1) * n // splits]
        marginal = chunk.mean(axis=0, keepdims=True)
        # xlogy: 0 log 0 = 0, so a class with zero probability adds nothing instead of NaN.
        kl = (xlogy(chunk, chunk) - xlogy(chunk, marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def softmax_probs(logits) -> np.ndarray:
    """Class probabilities from logits (N, K), in float64 so that confident rows keep their small entries."""
    return softmax(np.asarray(logits, np.float64), axis=1)
