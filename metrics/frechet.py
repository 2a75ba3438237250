"""Fréchet distance between Gaussians fitted to features (FID: Heusel et al. 2017, "GANs trained by a two
time-scale update rule converge to a local Nash equilibrium")."""
from __future__ import annotations

import numpy as np
from scoresde.utils import UsageError


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of features (N, D) in float64; the covariance is the unbiased one (ddof 1), as in the
    reference TF implementation and torch-fidelity."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise UsageError(f"features must be (N, D), got shape {x.shape}")
    if len(x) < 2:
        raise UsageError(f"a covariance needs at least 2 samples, got {len(x)}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), the squared 2-Wasserstein distance between the two Gaussians.

    Tr((Σ1 Σ2)^½) is taken as Σ √λ over the eigenvalues λ of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½, which has the
    same spectrum as Σ1 Σ2: with fewer samples than dimensions the covariances are singular, and a general-matrix
    sqrtm of Σ1 Σ2 then returns complex values or blows up, while a symmetric eigendecomposition only rounds zero
    eigenvalues to tiny ± numbers, which are clipped.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise UsageError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(a)):
            raise UsageError(f"{name} has NaN or infinite entries")
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    # A squared distance: a negative value can only be rounding (e.g. FD(x, x)).
    return float(max(fd, 0.0))
