"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased MMD² estimate with
the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³, averaged over random subsets."""
from __future__ import annotations

import numpy as np
from scoresde.utils import UsageError


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x_i, y_j) = (x_iᵀ y_j / d + 1)³ for all pairs, d the feature dimension."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
    """Unbiased MMD² of samples x (m, d) and y (n, d): the within-set means leave out k(x_i, x_i) and k(y_j, y_j),
    the cross mean keeps all m n pairs (x and y are independent, so every pair is an unbiased draw of E k(x, y))."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise UsageError(f"the unbiased MMD² needs at least 2 samples per set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid(feats1, feats2, subsets: int = 100, subset_size: int = 1000, seed: int = 2020) -> tuple[float, float]:
    """(mean, std) of mmd2_unbiased over `subsets` pairs of subsets drawn without replacement.

    subset_size is capped at the smaller set: the estimator is unbiased at any size, a smaller subset only adds
    variance. The subsets are drawn as torch-fidelity draws them (one RandomState(seed), feats1's indices then
    feats2's), so with the same seed both give the same number; the std is numpy's (ddof 0), as there.
    """
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise UsageError(f"features must be (N, D) with the same D, got {f1.shape} and {f2.shape}")
    if subsets < 1:
        raise UsageError(f"subsets must be at least 1, got {subsets}")
    size = min(subset_size, len(f1), len(f2))
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        a = f1[rng.choice(len(f1), size, replace=False)]
        b = f2[rng.choice(len(f2), size, replace=False)]
        mmds[i] = mmd2_unbiased(a, b)
    return float(mmds.mean()), float(mmds.std())
