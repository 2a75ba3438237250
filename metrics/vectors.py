"""Sample quality for vector data (2-D toys, arrays) against held-out data: energy distance and sliced
Wasserstein-2, both consistent tests of equality in distribution that need no feature network."""
from __future__ import annotations

import numpy as np

from .manifold import sq_dists
from scoresde.utils import UsageError

_CHUNK = 2048  # rows per block of pairwise distances: memory stays O(chunk x N) for large sets


def _mean_pairwise(a: np.ndarray, b: np.ndarray, same: bool) -> float:
    total = 0.0
    for i in range(0, len(a), _CHUNK):
        total += np.sqrt(sq_dists(a[i:i + _CHUNK], b)).sum()
    # The diagonal of a set against itself is zero, so the U-statistic only changes the divisor.
    return total / (len(a) * (len(b) - 1) if same else len(a) * len(b))


def energy_distance(x, y) -> float:
    """2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (Székely & Rizzo), within-set means over distinct pairs: the
    estimate is unbiased, zero in expectation when both sets come from one distribution."""
    x, y = _vectors(x, y)
    return float(2.0 * _mean_pairwise(x, y, False) - _mean_pairwise(x, x, True) - _mean_pairwise(y, y, True))


def sliced_wasserstein(x, y, projections: int = 256, seed: int = 0) -> float:
    """√(mean over random unit directions θ of W2²(θᵀX, θᵀY)); each 1-D W2² compares the two empirical quantile
    functions on a common grid of max(m, n) levels, which is exact for empirical measures of those sizes when
    m = n and the usual discretisation otherwise."""
    x, y = _vectors(x, y)
    theta = np.random.default_rng(seed).standard_normal((x.shape[1], projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    px, py = np.sort(x @ theta, axis=0), np.sort(y @ theta, axis=0)
    k = max(len(x), len(y))
    levels = (np.arange(k) + 0.5) / k
    qx = px[np.minimum((levels * len(x)).astype(int), len(x) - 1)]
    qy = py[np.minimum((levels * len(y)).astype(int), len(y) - 1)]
    return float(np.sqrt(((qx - qy) ** 2).mean()))


def _vectors(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    if x.shape[1] != y.shape[1]:
        raise UsageError(f"samples have {x.shape[1]} dimensions but the reference has {y.shape[1]}")
    if len(x) < 2 or len(y) < 2:
        raise UsageError(f"need at least 2 samples per set, got {len(x)} and {len(y)}")
    return x, y
