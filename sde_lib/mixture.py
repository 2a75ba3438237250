"""Gaussian mixtures: data whose marginal density and score are known exactly under every SDE.

If x_0 ~ sum_k w_k N(mu_k, Sigma_k), then x_t ~ sum_k w_k N(alpha_bar mu_k, alpha_bar^2 Sigma_k + beta_bar^2 I).
Each Sigma_k is diagonalised once (Sigma_k = U_k diag(lam_k) U_k^T), so the time-t covariance is
U_k diag(alpha_bar^2 lam_k + beta_bar^2) U_k^T and per-sample times cost no matrix inversions.
This is the oracle the tests and benchmarks use for samplers, likelihoods and losses.
"""
from __future__ import annotations

import math

import torch

from .base import SDE, Tensor, batch_time
from scoresde.utils import UsageError


class GaussianMixture:
    """sum_k weights[k] N(means[k], covs[k]) on R^D; samples and inputs may have any shape (N, ...) with D elements."""

    def __init__(self, weights, means, covs, event_shape=None):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        k, d = self.means.shape
        if covs.ndim == 0:
            covs = covs * torch.eye(d, dtype=torch.float64).expand(k, d, d)
        elif covs.ndim == 1:
            covs = covs[:, None, None] * torch.eye(d, dtype=torch.float64)
        if self.weights.shape != (k,) or covs.shape != (k, d, d):
            raise UsageError(f"expected weights ({k},) and covs ({k}, {d}, {d}) for means ({k}, {d}); got "
                             f"{tuple(self.weights.shape)} and {tuple(covs.shape)}")
        if (self.weights <= 0).any():
            raise UsageError("mixture weights must be positive")
        self.weights = self.weights / self.weights.sum()
        self.covs = 0.5 * (covs + covs.transpose(1, 2))
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.covs)
        if (self.eigvals < 0).any():
            raise UsageError("mixture covariances must be positive semi-definite")
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise UsageError(f"event_shape {self.event_shape} does not have {d} elements")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples from the mixture (float64), shape (n, *event_shape)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        root = self.eigvecs * self.eigvals.clamp(min=0).sqrt()[:, None, :]
        x = self.means[comp] + torch.einsum("nij,nj->ni", root[comp], z)
        return x.reshape(n, *self.event_shape)

    def _components(self, x: Tensor, alpha: Tensor, beta: Tensor):
        """Per-component log N(x; alpha mu_k, alpha^2 Sigma_k + beta^2 I) and scores, for per-sample alpha, beta
        (N,)."""
        x = x.reshape(x.shape[0], -1).to(torch.float64)
        u = self.eigvecs.to(x.device)
        var = alpha[:, None, None] ** 2 * self.eigvals.to(x.device) + beta[:, None, None] ** 2   # (N, K, D)
        diff = x[:, None, :] - alpha[:, None, None] * self.means.to(x.device)                   # (N, K, D)
        y = torch.einsum("kji,nkj->nki", u, diff)                                                # U^T diff
        logn = -0.5 * ((y**2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi))
        scores = -torch.einsum("kij,nkj->nki", u, y / var)
        return logn + torch.log(self.weights.to(x.device)), scores

    def _coefficients(self, x: Tensor, sde: SDE | None, t):
        if sde is None:
            one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
            return one, torch.zeros_like(one)
        t = batch_time(t, x)
        return sde.alpha_bar(t), sde.beta_bar(t)

    def log_prob(self, x: Tensor, sde: SDE | None = None, t=None) -> Tensor:
        """log p_t(x) per sample (float64, shape (N,)); the data density itself when sde is None."""
        logw, _ = self._components(x, *self._coefficients(x, sde, t))
        return torch.logsumexp(logw, dim=1)

    def score(self, x: Tensor, sde: SDE | None = None, t=None) -> Tensor:
        """grad_x log p_t(x), shaped and typed like x."""
        logw, scores = self._components(x, *self._coefficients(x, sde, t))
        resp = torch.softmax(logw, dim=1)
        return (resp[:, :, None] * scores).sum(1).reshape(x.shape).to(x.dtype)

    def score_fn(self, sde: SDE):
        """The exact score_fn(x, t) of the marginals under `sde`."""
        return _ExactScore(self, sde)

    def responsibilities(self, x: Tensor, sde: SDE | None = None, t=None) -> Tensor:
        """p_t(k | x), shape (N, K): the exact noise-conditional classifier when components are classes."""
        logw, _ = self._components(x, *self._coefficients(x, sde, t))
        return torch.softmax(logw, dim=1)


class _ExactScore:
    """Callable score_fn(x, t) = grad log p_t(x) of a GaussianMixture under an SDE."""

    def __init__(self, mixture: GaussianMixture, sde: SDE):
        self.mixture = mixture
        self.sde = sde

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.mixture.score(x, self.sde, t)
