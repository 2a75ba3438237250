"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved precision and recall metric for assessing
generative models"): each set's manifold is the union of balls reaching each point's k-th nearest neighbour."""
from __future__ import annotations

import numpy as np
from scoresde.utils import UsageError


def sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a_i - b_j||^2 for all pairs, clipped at 0 against round-off."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    # Column 0 of each sorted row is the point itself (distance 0), so the k-th neighbour is column k.
    return np.sort(sq_dists(x, x), axis=1)[:, k]


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    return float((sq_dists(points, centres) <= radii[None, :]).any(axis=1).mean())


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """(precision, recall): the fraction of fake samples inside the real manifold, and of real ones inside the
    fake manifold. k = 3 is the paper's choice."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise UsageError(f"features must be (N, D) with the same D, got {real.shape} and {fake.shape}")
    if min(len(real), len(fake)) <= k:
        raise UsageError(f"k = {k} nearest neighbours need more than {k} samples per set, got {len(real)} and "
                         f"{len(fake)}")
    return _coverage(fake, real, _radii(real, k)), _coverage(real, fake, _radii(fake, k))
