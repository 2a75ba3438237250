"""Denoising score matching: E_t w(t) ||beta_bar s_theta(x_t, t) + eps||^2, summed over dimensions.

Conditional flow matching ||u_hat - u||^2 is the member w = (beta_bar' - f beta_bar)^2 (FlowMatchingWeighting).

This is E_t lambda(t) E||s_theta(x_t, t) + eps/beta_bar||^2 with lambda = w beta_bar^2 (Song et al. 2021, eq. 7;
notation of docs/math.md, section Notation). A weighting is an object holding its own hyper-parameters: it says how
t is drawn on [eps, T] and what w(t) is. The importance-sampled one draws t from another density and carries the
ratio of densities in w, so that its expectation is exactly that of the uniform-t version.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import scipy.optimize
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


class LogitNormal:
    """u = sigmoid(mean + std z), z ~ N(0, 1), independently per example (Esser et al. 2024, SD3's "lognorm").

    Weightings with uniform t (eps, likelihood, flow) map u to t = eps + u (T - eps), so t is logit-normal on
    [eps, T]: the loss then weights time by that density, which with mean 0, std 1 concentrates on the middle of
    the rectified path, where the velocity is hardest to predict (SD3's best setting).
    """

    uniform = False

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise UsageError(f"the logit-normal t-sampling needs a finite mean and a positive std, got mean={mean!r}, "
                             f"std={std!r}")
        self.mean, self.std = float(mean), float(std)

    def __call__(self, n: int, generator, device) -> Tensor:
        z = torch.randn(n, dtype=torch.float64, generator=generator, device=device)
        return torch.sigmoid(self.mean + self.std * z)

    def __repr__(self) -> str:
        return f"LogitNormal(mean={self.mean!r}, std={self.std!r})"


# Variates u in [0, 1) for the batch; each weighting maps u to t by its inverse CDF. uniform, stratified and
# antithetic draw u uniformly (the last two with less variance across the batch), so their weighted expectation is
# the weighting's own; logit_normal draws u from another law, which changes the objective (LogitNormal).
T_SAMPLINGS = Registry("t_sampling", {
    "uniform": _uniform,
    "stratified": _stratified,
    "antithetic": _antithetic,
    "logit_normal": LogitNormal,
})


def get_t_sampling(t_sampling, **hyper):
    """The draw (n, generator, device) -> u of a T_SAMPLINGS name (logit_normal built with `hyper`: mean, std), or
    a draw as is."""
    if not isinstance(t_sampling, str):
        return t_sampling
    draw = T_SAMPLINGS[t_sampling]
    if isinstance(draw, type):
        return draw(**hyper)
    if hyper:
        raise UsageError(f"t_sampling {t_sampling!r} takes no hyper-parameters, got {sorted(hyper)}")
    return draw


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


class FlowMatchingWeighting(Weighting):
    """Conditional flow matching: w = (beta_bar' - f beta_bar)^2, t ~ U(eps, T), so that the loss is ||u_hat - u||^2.

    With the flow parameterisation u_hat = f x + (beta_bar' - f beta_bar) eps_hat (docs/math.md, Flow matching), and
    the target u = alpha_bar' x0 + beta_bar' eps = f x + (beta_bar' - f beta_bar) eps, so u_hat - u is
    (beta_bar' - f beta_bar)(eps_hat - eps) for any parameterisation: lambda = w beta_bar^2 = g^4/4. Computed as
    ((alpha_bar beta_bar' - alpha_bar' beta_bar)/alpha_bar)^2, finite where f is not; 1/(1 - t)^2 for rectified flow.
    """

    def weight(self, sde: SDE, t: Tensor) -> Tensor:
        da, db = sde.velocity_coefficients(t)
        a = sde.alpha_bar(t)
        return ((a * db - da * sde.beta_bar(t)) / a) ** 2


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
    "flow": FlowMatchingWeighting,
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


def ot_permutation(x0: Tensor, noise: Tensor) -> Tensor:
    """The permutation p (a long tensor (N,)) minimising sum_i ||x0_i - noise_p(i)||^2: the exact optimal transport
    plan between the two empirical measures (scipy's linear_sum_assignment, O(N^3) on the host)."""
    a, b = x0.reshape(len(x0), -1).double(), noise.reshape(len(noise), -1).double()
    # ||a_i||^2 + ||b_j||^2 - 2 a_i.b_j in float64: no (N, N, D) tensor of differences.
    cost = a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2.0 * a @ b.T
    rows, cols = scipy.optimize.linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(cols[np.argsort(rows)], device=x0.device)


def _independent(x0: Tensor, noise: Tensor) -> Tensor:
    return noise


def _ot(x0: Tensor, noise: Tensor) -> Tensor:
    return noise[ot_permutation(x0, noise)]


# How each example's noise is paired with its data: as drawn, or re-paired within the batch by the exact minibatch
# optimal-transport plan (Tong et al. 2023, OT-CFM; Pooladian et al. 2023), which straightens the learned paths.
COUPLINGS = Registry("coupling", {
    "independent": _independent,
    "ot": _ot,
})


def dsm_loss(model: nn.Module, sde: SDE, x0: Tensor, *, precond: Precond | str = "eps",
             weighting: str | Weighting = "eps", t_sampling: str = "uniform", class_labels=None,
             label_dropout: float = 0.0, generator: torch.Generator | None = None, reduce: str = "mean",
             coupling: str = "independent", coupling_rows: tuple[int, int] | None = None,
             noise: Tensor | None = None) -> Tensor:
    """w(t) ||beta_bar(t) s_theta(x_t, t) + eps||^2 summed over dimensions, x_t = alpha_bar x0 + beta_bar eps.

    precond: the Precond of the network (or a parameterisation name: Precond.for_network(model, name)).
    weighting: a Weighting (which holds eps, the smallest training time, and its other hyper-parameters) or the
    name of one, built with its defaults and the preconditioning's sigma_data (get_weighting). Returns the batch
    mean (reduce="mean") or the per-sample losses of shape (N,) (reduce="none"). label_dropout replaces each class
    label by the null label `model.num_classes` with that probability (training for classifier-free guidance).
    t_sampling: a T_SAMPLINGS name or a draw from get_t_sampling. coupling: a COUPLINGS name; "ot" pairs the rows
    [coupling_rows[0], coupling_rows[1]) of x0 with the noise drawn for them by the exact minimising assignment
    (default: the whole batch; a rank under torchrun pairs its own rows). noise: the noise each x0 is paired with
    (reflow's pairs, training.reflow) instead of fresh draws; it takes no coupling.
    """
    score_fn = ScoreFn(model, sde, precond)
    weighting = _weighting_for(weighting, score_fn.precond)
    draw_u = get_t_sampling(t_sampling)
    if not getattr(draw_u, "uniform", True) and type(weighting).t_of_u is not Weighting.t_of_u:
        raise UsageError(f"t_sampling {draw_u!r} draws t itself, but the weighting {weighting!r} has its own law of t "
                         "(its weights assume uniform variates); use it with the eps, likelihood or flow weighting")
    couple = COUPLINGS[coupling]
    reduction = REDUCTIONS[reduce]
    weighting.check(sde)
    n = x0.shape[0]
    labels = _drop_labels(model, as_labels(class_labels, n, x0.device), label_dropout, generator)
    u = draw_u(n, generator, x0.device)
    t, w = weighting.sample(sde, u)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        lo, hi = (0, n) if coupling_rows is None else coupling_rows
        noise = torch.cat([noise[:lo], couple(x0[lo:hi], noise[lo:hi]), noise[hi:]])
    elif couple is not _independent:
        raise UsageError(f"coupling {coupling!r} re-pairs drawn noise, but the noise was given; use 'independent'")
    xt = sde.perturb(x0, noise, t)
    residual = expand_as(sde.beta_bar(t), x0) * score_fn.score(xt, t, labels) + noise
    losses = w.to(x0.dtype) * residual.reshape(n, -1).square().sum(1)
    return reduction(losses)
