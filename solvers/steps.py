"""Single steps of the grid samplers, each a formula in the model's score at one point.

The steps take the SDE and eta (the noise scale of the family dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dw_bar,
docs/math.md, section "The eta family of reverse processes") and the score and noise they need, never a solver.
Their coefficients are 0-d float64 tensors: a 0-d tensor does not up-cast a batch of the same category, so
`c * x` keeps x's dtype (float32, bfloat16) and device while the coefficient itself is computed in float64.
"""
from __future__ import annotations

import torch

from scoresde.sde_lib import SDE, expand_as
from scoresde.utils import Registry

Tensor = torch.Tensor


def ddim_coefficients(sde: SDE, t: Tensor, s: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(c_x, c_score) of x_s = alpha_bar_s x0_hat + sqrt(beta_bar_s^2 - sigma^2) eps_hat = c_x x_t + c_score score.

    x0_hat = (x_t + beta_bar_t^2 score)/alpha_bar_t and eps_hat = -beta_bar_t score: the DDIM update of Song, Meng &
    Ermon (2021) in the marginals alpha_bar, beta_bar (docs/math.md, section "DDIM as exponential Euler").
    """
    a_t, b_t, a_s, b_s = sde.alpha_bar(t), sde.beta_bar(t), sde.alpha_bar(s), sde.beta_bar(s)
    ratio = a_s / a_t
    return ratio, ratio * b_t**2 - torch.sqrt((b_s**2 - sigma**2).clamp(min=0.0)) * b_t


def ancestral_std(sde: SDE, eta: float, t: Tensor, s: Tensor) -> Tensor:
    """sigma = eta beta_bar_s sqrt(v) / beta_bar_t, v the transition variance from s to t: the std of q(x_s | x_t, x_0).

    eta = 1 is DDPM's posterior (Ho et al. 2020, eqs. 6-7), eta = 0 is DDIM (Song, Meng & Ermon 2021); written with
    alpha_bar ratios between the chosen times, so any subsequence of times works (docs/math.md, section "Ancestral
    sampling").
    """
    _, v = sde.transition(s, t)
    return eta * sde.beta_bar(s) * v.clamp(min=0.0).sqrt() / sde.beta_bar(t)


def analytic_std(sde: SDE, sigma: Tensor, t: Tensor, s: Tensor, eps_moment: Tensor | None) -> Tensor:
    """sigma_* with sigma_*^2 = sigma^2 + (alpha_bar_s beta_bar_t/alpha_bar_t - sqrt(beta_bar_s^2 - sigma^2))^2
    (1 - E||eps_hat||^2/D): Analytic-DPM's optimal std for the DDIM step with sigma (Bao et al. 2022, Theorem 1;
    docs/math.md, section "Ancestral sampling"). eps_moment = E||eps_hat(x_t, t)||^2/D is clipped to [0, 1], the
    range of its true value.
    """
    a_t, b_t, a_s, b_s = sde.alpha_bar(t), sde.beta_bar(t), sde.alpha_bar(s), sde.beta_bar(s)
    gap = a_s * b_t / a_t - torch.sqrt((b_s**2 - sigma**2).clamp(min=0.0))
    return (sigma**2 + gap**2 * (1 - eps_moment.clamp(0.0, 1.0))).sqrt()


def ddpm_std(sde: SDE, sigma: Tensor, t: Tensor, s: Tensor, eps_moment: Tensor | None) -> Tensor:
    """sigma itself: the std of q(x_s | x_t, x_0) scaled by eta (Ho et al. 2020's sigma^2 = beta_tilde at eta = 1)."""
    return sigma


def large_std(sde: SDE, sigma: Tensor, t: Tensor, s: Tensor, eps_moment: Tensor | None) -> Tensor:
    """sqrt(v), v the transition variance from s to t: Ho et al. (2020)'s other choice sigma^2 = beta_t."""
    return sde.transition(s, t)[1].clamp(min=0.0).sqrt()


ANCESTRAL_VARIANCES = Registry("ancestral variance", {"ddpm": ddpm_std, "large": large_std, "analytic": analytic_std})


def euler_maruyama_step(sde: SDE, eta: float, x: Tensor, score: Tensor, t: Tensor,
                        t_next: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, std) of x_next = x - [f x - (1 + eta^2)/2 g^2 score] dt + eta g sqrt(dt) z, dt = t - t_next > 0.

    The reverse drift is taken backwards in time, hence the minus sign (docs/math.md, section "The eta family of
    reverse processes").
    """
    dt = t - t_next
    f, g2 = sde.f_and_g2(t)
    drift = f * x - (0.5 * (1.0 + eta**2) * g2) * score
    return x - dt * drift, eta * sde.g(t) * dt.sqrt()


def reverse_diffusion_step(sde: SDE, eta: float, x: Tensor, score: Tensor, t: Tensor,
                           t_next: Tensor) -> tuple[Tensor, Tensor]:
    """Song et al.'s reverse diffusion (2021, App. E): invert x_t = a x_s + sqrt(v) z, (a, v) = transition(t_next, t).

    mean = x - (a - 1) x + (1 + eta^2)/2 v score, std = eta sqrt(v): valid for every SDE (sub-VP, user schedules)
    because (a, v) come from the marginals on the chosen grid, not from a per-SDE discretisation.
    """
    a, v = sde.transition(t_next, t)
    return (2.0 - a) * x + (0.5 * (1.0 + eta**2) * v) * score, eta * v.clamp(min=0.0).sqrt()


PREDICTORS = Registry("predictor", {"euler_maruyama": euler_maruyama_step,
                                    "reverse_diffusion": reverse_diffusion_step})


def batch_step_size(snr: float, score: Tensor, z: Tensor, floor: Tensor) -> Tensor:
    """delta = 2 (snr mean ||z|| / mean ||score||)^2 over the batch: one number per step, as in Song et al.'s code."""
    score_norm = score.flatten(1).norm(dim=1)
    return 2.0 * (snr * z.flatten(1).norm(dim=1).mean() / torch.maximum(score_norm.mean(), floor)) ** 2


def per_sample_step_size(snr: float, score: Tensor, z: Tensor, floor: Tensor) -> Tensor:
    """delta_i = 2 (snr sqrt(D) / ||score_i||)^2 from each sample's own score norm and the noise's typical norm."""
    root_d = score[0].numel() ** 0.5
    score_norm = score.flatten(1).norm(dim=1)
    return expand_as(2.0 * (snr * root_d / torch.maximum(score_norm, floor)) ** 2, score)


LANGEVIN_STEP_SIZES = Registry("Langevin step_size", {"batch": batch_step_size, "per_sample": per_sample_step_size})


def langevin_step(sde: SDE, x: Tensor, score: Tensor, z: Tensor, t: Tensor, snr: float,
                  step_size: str = "batch") -> Tensor:
    """x + delta score + sqrt(2 delta) z, delta = 2 (snr ||z|| / ||score||)^2 (Song et al. 2021, Alg. 4-5).

    score is the score at (x, t) and z the standard normal noise of the step. Their per-step alpha_i (1 for VE,
    1 - beta_i -> 1 for VP) is 1 in continuous time (docs/math.md, section "The Langevin step rule"). step_size
    "batch" (as in their code): ||z|| and ||score|| are per-sample norms averaged over the batch, so delta is one
    number per step, an estimate of a function of t alone, and the chain targets p_t. "per_sample": delta =
    2 (snr sqrt(D) / ||score(x)||)^2 from the sample's own score norm (and the noise's typical norm sqrt(D): its own
    ||z|| would couple the step to the noise it scales, giving heavy tails), so a sample's path does not depend on
    the rest of the batch. But Langevin with a step delta(x) that depends on the position targets
    p_t(x) / delta(x), here p_t(x) ||score(x)||^2: for Gaussian p_t a variance (D + 2)/D too large (25% for D = 8,
    3% for D = 64, 0.07% for a 32x32x3 image, where the norms concentrate and both rules agree). In 2-D it is worse
    than the 2x this predicts: near the zeros of the score the steps are huge and the tails heavy (a variance of
    6.5 for N(0, I)).
    """
    # sqrt(D) / beta_bar is the score norm of the noise kernel, an upper bound on that of p_t. A norm below a
    # thousandth of it is a zero score (e.g. an untrained network), not data: it would otherwise give an infinite step.
    floor = 1e-3 * x[0].numel() ** 0.5 / sde.beta_bar(t).to(x)
    delta = LANGEVIN_STEP_SIZES[step_size](snr, score, z, floor)
    return x + delta * score + (2.0 * delta).sqrt() * z


CORRECTORS = Registry("corrector", {"langevin": langevin_step, "none": None})
