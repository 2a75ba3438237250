"""Denoising score matching: E_t w(t) ||beta_bar s_theta(x_t, t) + eps||^2, summed over dimensions.

In the notation of MATH.md this is E_t lambda(t) E||s_theta(x_t, t) + eps/beta_bar||^2 with lambda = w beta_bar^2.
A weighting says how t is drawn and what w(t) is; the importance-sampled one draws t from another density and
carries the ratio of densities in w, so that its expectation is exactly that of the uniform-t version.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from sde_lib import SDE, as_time, expand_as

from .parameterization import ScoreFn, as_labels, network_attr

Tensor = torch.Tensor


def _uniform(n: int, generator, device) -> Tensor:
    return torch.rand(n, dtype=torch.float64, generator=generator, device=device)


def _stratified(n: int, generator, device) -> Tensor:
    """One u in each of the n strata [i/n, (i+1)/n), assigned to the batch in random order."""
    strata = torch.randperm(n, generator=generator, device=device).to(torch.float64)
    return (strata + _uniform(n, generator, device)) / n


def _antithetic(n: int, generator, device) -> Tensor:
    """Pairs (u, 1 - u)."""
    u = _uniform((n + 1) // 2, generator, device)
    return torch.cat([u, 1.0 - u])[:n]


# Uniform variates u in [0, 1) for the batch; each weighting maps u to t by its inverse CDF, so the variance
# reduction of stratified/antithetic u carries over to every weighting.
T_SAMPLINGS = {
    "uniform": _uniform,
    "stratified": _stratified,
    "antithetic": _antithetic,
}


class EpsWeighting:
    """lambda = beta_bar^2 (w = 1): the plain eps-MSE ||eps_hat - eps||^2 with t ~ U(eps, T)."""

    def sample(self, sde: SDE, u: Tensor, eps: float, **_) -> tuple[Tensor, Tensor]:
        t = eps + u * (sde.T - eps)
        return t, torch.ones_like(t)


class LikelihoodWeighting:
    """lambda = g^2 (w = g^2/beta_bar^2), t ~ U(eps, T): (T - eps)/2 E[loss] + const bounds -log p_theta(x_0) (Song et al. 2021b)."""

    def sample(self, sde: SDE, u: Tensor, eps: float, **_) -> tuple[Tensor, Tensor]:
        t = eps + u * (sde.T - eps)
        return t, sde.g2(t) / sde.beta_bar(t) ** 2


class ImportanceLikelihoodWeighting:
    """The likelihood-weighted loss with t ~ p(t) proportional to g^2/beta_bar^2 = -2 d log-SNR/dt on [eps, T].

    Then t is uniform in log-SNR lambda = log(alpha_bar/beta_bar) (sampled via sde.t_of_log_snr), and
    w = (g^2/beta_bar^2) p_uniform(t)/p(t) = 2 (lambda(eps) - lambda(T)) / (T - eps) is constant: the estimator is
    unbiased for the same expectation as LikelihoodWeighting, without its 1/t spike near t = 0.
    """

    def sample(self, sde: SDE, u: Tensor, eps: float, **_) -> tuple[Tensor, Tensor]:
        lam_hi, lam_lo = sde.log_snr(as_time(eps, u.device)), sde.log_snr(as_time(sde.T, u.device))
        t = sde.t_of_log_snr(lam_hi - u * (lam_hi - lam_lo)).clamp(eps, sde.T)
        # Kept a tensor: float() would copy it to the host, a GPU synchronisation on every training step.
        return t, (2.0 * (lam_hi - lam_lo) / (sde.T - eps)).expand_as(t)


class EDMWeighting:
    """EDM (Karras et al. 2022): log sigma ~ N(p_mean, p_std^2), sigma = beta_bar/alpha_bar, loss lambda(sigma) ||D - x_0||^2.

    lambda(sigma) = (sigma^2 + s_d^2)/(sigma s_d)^2 and ||D - x_0||^2 = sigma^2 beta_bar^2 ||s + eps/beta_bar||^2, so
    w = (sigma^2 + s_d^2)/s_d^2. t comes from sde.t_of_log_snr(-log sigma), clamped to [eps, T] (for the VE SDE
    with sigma_min = 0.01 this moves 0.2% of the draws to t = eps).
    """

    def sample(self, sde: SDE, u: Tensor, eps: float, *, sigma_data: float, p_mean: float, p_std: float,
               **_) -> tuple[Tensor, Tensor]:
        z = math.sqrt(2.0) * torch.erfinv(2.0 * u.clamp(1e-12, 1.0 - 1e-12) - 1.0)
        t = sde.t_of_log_snr(-(p_mean + p_std * z)).clamp(eps, sde.T)
        sigma2 = (sde.beta_bar(t) / sde.alpha_bar(t)) ** 2
        return t, (sigma2 + sigma_data**2) / sigma_data**2


WEIGHTINGS = {
    "eps": EpsWeighting,
    "likelihood": LikelihoodWeighting,
    "likelihood_is": ImportanceLikelihoodWeighting,
    "edm": EDMWeighting,
}

REDUCTIONS = ("mean", "none")


def _lookup(table, kind: str, name: str):
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"unknown {kind} {name!r}; available: {', '.join(sorted(table))}")
    return table[name]


def _drop_labels(model: nn.Module, y: Tensor | None, p: float, generator) -> Tensor | None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"label_dropout must be in [0, 1), got {p}")
    if p == 0.0:
        return y
    num_classes = network_attr(model, "num_classes")
    if y is None or num_classes is None:
        raise ValueError("label_dropout > 0 needs class_labels and a network built with num_classes")
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, num_classes), y)


def dsm_loss(model: nn.Module, sde: SDE, x0: Tensor, *, parameterization: str = "eps", weighting: str = "eps",
             eps: float = 1e-5, reduce: str = "mean", t_sampling: str = "uniform", class_labels=None,
             generator: torch.Generator | None = None, noise_input: str | None = None, sigma_data: float = 0.5,
             scale_by_sigma: bool = False, p_mean: float = -1.2, p_std: float = 1.2,
             label_dropout: float = 0.0) -> Tensor:
    """w(t) ||beta_bar(t) s_theta(x_t, t) + eps||^2 summed over dimensions, x_t = alpha_bar x0 + beta_bar eps.

    Returns the batch mean (reduce="mean") or the per-sample losses of shape (N,) (reduce="none").
    parameterization / noise_input / sigma_data / scale_by_sigma are those of ScoreFn; p_mean, p_std set
    EDM's log-normal sigma. label_dropout replaces each class label by the null label `model.num_classes` with
    that probability (training for classifier-free guidance).
    """
    weight = _lookup(WEIGHTINGS, "weighting", weighting)()
    draw_u = _lookup(T_SAMPLINGS, "t_sampling", t_sampling)
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; available: {', '.join(REDUCTIONS)}")
    if not 0.0 <= eps < sde.T:
        raise ValueError(f"eps (the smallest training time) must be in [0, T={sde.T}), got {eps}")
    if eps == 0.0 and weighting == "likelihood_is":
        raise ValueError("weighting='likelihood_is' needs eps > 0 (the log-SNR is infinite at t = 0 for VP SDEs)")
    score_fn = ScoreFn(model, sde, parameterization, noise_input=noise_input, sigma_data=sigma_data,
                       scale_by_sigma=scale_by_sigma)
    n = x0.shape[0]
    labels = _drop_labels(model, as_labels(class_labels, n, x0.device), label_dropout, generator)
    u = draw_u(n, generator, x0.device)
    t, w = weight.sample(sde, u, float(eps), sigma_data=float(sigma_data), p_mean=float(p_mean), p_std=float(p_std))
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    a, b = expand_as(sde.alpha_bar(t), x0), expand_as(sde.beta_bar(t), x0)
    xt = a * x0 + b * noise
    residual = b * score_fn.score(xt, t, labels) + noise
    losses = w.to(x0.dtype) * residual.reshape(n, -1).square().sum(1)
    return losses.mean() if reduce == "mean" else losses
