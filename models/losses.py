"""Denoising score matching: E_t w(t) ||beta_bar s_theta(x_t, t) + eps||^2, summed over dimensions.

This is E_t lambda(t) E||s_theta(x_t, t) + eps/beta_bar||^2 with lambda = w beta_bar^2 (Song et al. 2021, eq. 7;
notation of docs/math.md, section Notation). A weighting is an object holding its own hyper-parameters: it says how
t is drawn on [eps, T] and what w(t) is. The importance-sampled one draws t from another density and carries the
ratio of densities in w, so that its expectation is exactly that of the uniform-t version.
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from scoresde.sde_lib import SDE, as_time, expand_as
from scoresde.utils import Registry, UsageError

from .parameterization import Precond, ScoreFn, as_labels, network_attr

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
T_SAMPLINGS = Registry("t_sampling", {
    "uniform": _uniform,
    "stratified": _stratified,
    "antithetic": _antithetic,
})


class Weighting:
    """A DSM weighting on [eps, T]: t_of_u maps uniform variates u to its distribution of t, w(t) weights the loss.

    lambda(t) = w(t) beta_bar(t)^2 is the weight of ||s_theta + eps/beta_bar||^2 under that distribution of t.
    eps is the smallest training time; subclasses add their own hyper-parameters.
    """

    def __init__(self, eps: float = 1e-5):
        eps = float(eps)
        if not eps >= 0.0:
            raise UsageError(f"eps (the smallest training time) must be in [0, T), got {eps}")
        self.eps = eps

    def check(self, sde: SDE) -> None:
        """Raise ValueError unless [eps, T] is an interval of `sde`'s time range."""
        if not self.eps < sde.T:
            raise UsageError(f"eps (the smallest training time) must be in [0, T={sde.T}), got {self.eps}")

    def t_of_u(self, sde: SDE, u: Tensor) -> Tensor:
        """t ~ U(eps, T); a weighting drawing t from another density overrides this with its inverse CDF."""
        return self.eps + u * (sde.T - self.eps)

    def weight(self, sde: SDE, t: Tensor) -> Tensor:
        """w(t), the weight of ||beta_bar s_theta + eps||^2 for t drawn by t_of_u."""
        raise NotImplementedError

    def lam(self, sde: SDE, t: Tensor) -> Tensor:
        """lambda(t) = w(t) beta_bar(t)^2."""
        return self.weight(sde, t) * sde.beta_bar(t) ** 2

    def sample(self, sde: SDE, u: Tensor) -> tuple[Tensor, Tensor]:
        """(t, w(t)) for uniform variates u of shape (N,), in float64 on u's device."""
        t = self.t_of_u(sde, u)
        return t, self.weight(sde, t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class NoiseMSEWeighting(Weighting):
    """Weighting "eps": lambda = beta_bar^2 (w = 1), the plain MSE of the predicted noise ||eps_hat - eps||^2 with
    t ~ U(eps, T)."""

    def weight(self, sde: SDE, t: Tensor) -> Tensor:
        return torch.ones_like(t)


class LikelihoodWeighting(Weighting):
    """lambda = g^2 (w = g^2/beta_bar^2), t ~ U(eps, T): (T - eps)/2 E[loss] + const bounds -log p_theta(x_0)
    (Song et al. 2021b)."""

    def weight(self, sde: SDE, t: Tensor) -> Tensor:
        return sde.g2(t) / sde.beta_bar(t) ** 2


class ImportanceLikelihoodWeighting(Weighting):
    """The likelihood-weighted loss with t ~ p(t) proportional to g^2/beta_bar^2 = -2 d log-SNR/dt on [eps, T].

    Then t is uniform in log-SNR lambda = log(alpha_bar/beta_bar) (sampled via sde.t_of_log_snr), and
    w = (g^2/beta_bar^2) p_uniform(t)/p(t) = 2 (lambda(eps) - lambda(T)) / (T - eps) is constant: the estimator is
    unbiased for the same expectation as LikelihoodWeighting, without its 1/t spike near t = 0. eps must be
    positive, as the log-SNR is infinite at t = 0 for VP SDEs.
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__(eps)
        if self.eps == 0.0:
            raise UsageError("weighting='likelihood_is' needs eps > 0 (the log-SNR is infinite at t = 0 for VP SDEs)")

    def _log_snr_range(self, sde: SDE, device) -> tuple[Tensor, Tensor]:
        return sde.log_snr(as_time(self.eps, device)), sde.log_snr(as_time(sde.T, device))

    def t_of_u(self, sde: SDE, u: Tensor) -> Tensor:
        lam_hi, lam_lo = self._log_snr_range(sde, u.device)
        return sde.t_of_log_snr(lam_hi - u * (lam_hi - lam_lo)).clamp(self.eps, sde.T)

    def density(self, sde: SDE, t: Tensor) -> Tensor:
        """p(t) = (g^2/beta_bar^2) / (2 (lambda(eps) - lambda(T))) on [eps, T], the density t_of_u draws from."""
        lam_hi, lam_lo = self._log_snr_range(sde, t.device)
        return sde.g2(t) / sde.beta_bar(t) ** 2 / (2.0 * (lam_hi - lam_lo))

    def weight(self, sde: SDE, t: Tensor) -> Tensor:
        lam_hi, lam_lo = self._log_snr_range(sde, t.device)
        # Kept a tensor: float() would copy it to the host, a GPU synchronisation on every training step.
        return (2.0 * (lam_hi - lam_lo) / (sde.T - self.eps)).expand_as(t)


class EDMWeighting(Weighting):
    """EDM (Karras et al. 2022): log sigma ~ N(p_mean, p_std^2), sigma = beta_bar/alpha_bar, loss
    lambda(sigma) ||D - x_0||^2.

    lambda(sigma) = (sigma^2 + s_d^2)/(sigma s_d)^2 and ||D - x_0||^2 = sigma^2 beta_bar^2 ||s + eps/beta_bar||^2, so
    w = (sigma^2 + s_d^2)/s_d^2 with s_d = sigma_data. t comes from sde.t_of_log_snr(-log sigma), clamped to
    [eps, T] (for the VE SDE with sigma_min = 0.01 this moves 0.2% of the draws to t = eps).
    """

    def __init__(self, eps: float = 1e-5, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2):
        super().__init__(eps)
        if not sigma_data > 0:
            raise UsageError(f"sigma_data must be positive (the data standard deviation), got {sigma_data}")
        if not p_std > 0:
            raise UsageError(f"p_std (the standard deviation of log sigma) must be positive, got {p_std}")
        self.sigma_data, self.p_mean, self.p_std = float(sigma_data), float(p_mean), float(p_std)

    def t_of_u(self, sde: SDE, u: Tensor) -> Tensor:
        z = math.sqrt(2.0) * torch.erfinv(2.0 * u.clamp(1e-12, 1.0 - 1e-12) - 1.0)
        return sde.t_of_log_snr(-(self.p_mean + self.p_std * z)).clamp(self.eps, sde.T)

    def weight(self, sde: SDE, t: Tensor) -> Tensor:
        sigma2 = (sde.beta_bar(t) / sde.alpha_bar(t)) ** 2
        return (sigma2 + self.sigma_data**2) / self.sigma_data**2


WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting", {
    "eps": NoiseMSEWeighting,
    "likelihood": LikelihoodWeighting,
    "likelihood_is": ImportanceLikelihoodWeighting,
    "edm": EDMWeighting,
})


def get_weighting(weighting: str | Weighting, **hyper) -> Weighting:
    """A Weighting as is, or the one registered under the name `weighting` built with the hyper-parameters `hyper`."""
    if isinstance(weighting, Weighting):
        if hyper:
            raise UsageError(f"hyper-parameters {sorted(hyper)} are for a weighting given by name; {weighting!r} "
                             "holds its own")
        return weighting
    cls = WEIGHTINGS[weighting]
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(hyper) - accepted)
    if unknown:
        raise UsageError(f"unknown arguments {unknown} for weighting {weighting!r}; it accepts: "
                         f"{', '.join(sorted(accepted))}")
    return cls(**hyper)


REDUCTIONS = Registry("reduce", {
    "mean": Tensor.mean,
    "none": lambda losses: losses,
})


def _drop_labels(model: nn.Module, y: Tensor | None, p: float, generator) -> Tensor | None:
    if not 0.0 <= p < 1.0:
        raise UsageError(f"label_dropout must be in [0, 1), got {p}")
    if p == 0.0:
        return y
    num_classes = network_attr(model, "num_classes")
    if y is None or num_classes is None:
        raise UsageError("label_dropout > 0 needs class_labels and a network built with num_classes")
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, num_classes), y)


def _weighting_for(weighting: str | Weighting, precond: Precond) -> Weighting:
    """`weighting`, built by name with the preconditioning's sigma_data where it takes one; a Weighting whose
    sigma_data differs from the preconditioning's is a UsageError (the loss would weight another data scale)."""
    if not isinstance(weighting, Weighting):
        takes_sigma_data = "sigma_data" in inspect.signature(WEIGHTINGS[weighting]).parameters
        return get_weighting(weighting, **({"sigma_data": precond.sigma_data} if takes_sigma_data else {}))
    sigma_data = getattr(weighting, "sigma_data", precond.sigma_data)
    if sigma_data != precond.sigma_data:
        raise UsageError(f"the weighting has sigma_data={sigma_data} but the preconditioning {precond.sigma_data}; "
                         "build both from the same value (run.builders.build_weighting does)")
    return weighting


def dsm_loss(model: nn.Module, sde: SDE, x0: Tensor, *, precond: Precond | str = "eps",
             weighting: str | Weighting = "eps", t_sampling: str = "uniform", class_labels=None,
             label_dropout: float = 0.0, generator: torch.Generator | None = None, reduce: str = "mean") -> Tensor:
    """w(t) ||beta_bar(t) s_theta(x_t, t) + eps||^2 summed over dimensions, x_t = alpha_bar x0 + beta_bar eps.

    precond: the Precond of the network (or a parameterisation name: Precond.for_network(model, name)).
    weighting: a Weighting (which holds eps, the smallest training time, and its other hyper-parameters) or the
    name of one, built with its defaults and the preconditioning's sigma_data (get_weighting). Returns the batch
    mean (reduce="mean") or the per-sample losses of shape (N,) (reduce="none"). label_dropout replaces each class
    label by the null label `model.num_classes` with that probability (training for classifier-free guidance).
    """
    score_fn = ScoreFn(model, sde, precond)
    weighting = _weighting_for(weighting, score_fn.precond)
    draw_u = T_SAMPLINGS[t_sampling]
    reduction = REDUCTIONS[reduce]
    weighting.check(sde)
    n = x0.shape[0]
    labels = _drop_labels(model, as_labels(class_labels, n, x0.device), label_dropout, generator)
    u = draw_u(n, generator, x0.device)
    t, w = weighting.sample(sde, u)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = sde.perturb(x0, noise, t)
    residual = expand_as(sde.beta_bar(t), x0) * score_fn.score(xt, t, labels) + noise
    losses = w.to(x0.dtype) * residual.reshape(n, -1).square().sum(1)
    return reduction(losses)
