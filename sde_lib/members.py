"""The SDEs of Song et al. 2021 (VP, sub-VP, VE), the cosine schedule, rectified flow and its polynomial
relatives, and schedules from user callables.

Each member chooses alpha_bar and beta_bar; f and g^2 are given in closed form where they exist and
checked against the autograd-derived ones of the base class in the tests.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .base import SDE, Tensor, as_time
from scoresde.utils import UsageError


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


class VPSDE(SDE):
    """Variance preserving: beta(t) = beta_min + t (beta_max - beta_min), alpha_bar = exp(-1/2 int_0^t beta)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        _require(beta_min >= 0, f"beta_min must be non-negative, got beta_min={beta_min}")
        _require(beta_max > beta_min,
                 f"beta_max must be greater than beta_min, got beta_min={beta_min}, beta_max={beta_max}")
        super().__init__(T)
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t) -> Tensor:
        """Noise rate beta(t) = beta_min + t (beta_max - beta_min)."""
        return self.beta_min + as_time(t) * (self.beta_max - self.beta_min)

    def integral_beta(self, t) -> Tensor:
        """B(t) = int_0^t beta = beta_min t + t^2 (beta_max - beta_min) / 2."""
        t = as_time(t)
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def alpha_bar(self, t) -> Tensor:
        """alpha_bar(t) = exp(-B(t)/2)."""
        return torch.exp(-0.5 * self.integral_beta(t))

    def beta_bar(self, t) -> Tensor:
        """beta_bar(t) = sqrt(1 - exp(-B(t)))."""
        return torch.sqrt(-torch.expm1(-self.integral_beta(t)))

    def f(self, t) -> Tensor:
        """f(t) = -beta(t)/2."""
        return -0.5 * self.beta(t)

    def g2(self, t) -> Tensor:
        """g(t)^2 = beta(t)."""
        return self.beta(t)

    @property
    def prior_std(self) -> float:
        """The prior is N(0, I) (beta_bar(T) differs from 1 by less than 1e-4 with the defaults)."""
        return 1.0

    def _t_of_log_alpha_bar(self, log_a: Tensor) -> Tensor:
        # Solve beta_min t + (beta_max - beta_min) t^2 / 2 = -2 log_a for t >= 0.
        a, b, c = 0.5 * (self.beta_max - self.beta_min), self.beta_min, 2.0 * log_a
        return 2.0 * (-c) / (b + torch.sqrt(b**2 - 4.0 * a * c))

    def t_of_log_snr(self, lam) -> Tensor:
        """Closed form: alpha_bar^2 = sigmoid(2 lambda), then solve the quadratic B(t) = -2 log alpha_bar."""
        lam = as_time(lam)
        return self._t_of_log_alpha_bar(0.5 * torch.nn.functional.logsigmoid(2.0 * lam))


class SubVPSDE(VPSDE):
    """Sub-VP: alpha_bar as VP, beta_bar = 1 - exp(-B(t)) = 1 - alpha_bar^2."""

    def beta_bar(self, t) -> Tensor:
        """beta_bar(t) = 1 - exp(-B(t))."""
        return -torch.expm1(-self.integral_beta(t))

    def g2(self, t) -> Tensor:
        """g(t)^2 = beta(t) (1 - exp(-2 B(t)))."""
        return self.beta(t) * -torch.expm1(-2.0 * self.integral_beta(t))

    def t_of_log_snr(self, lam) -> Tensor:
        """Closed form: alpha_bar solves e^lambda (1 - a^2) = a, then the VP quadratic."""
        lam = as_time(lam)
        # a = (sqrt(1 + 4 e^{2 lam}) - 1) / (2 e^lam), written without cancellation for very negative lam.
        e = torch.exp(lam)
        a = 2.0 * e / (torch.sqrt(1.0 + 4.0 * e**2) + 1.0)
        return self._t_of_log_alpha_bar(torch.log(a))


class VESDE(SDE):
    """Variance exploding: alpha_bar = 1, beta_bar = sigma(t) = sigma_min (sigma_max/sigma_min)^t."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        _require(sigma_min > 0, f"sigma_min must be positive, got sigma_min={sigma_min}")
        _require(sigma_max > sigma_min,
                 f"sigma_max must be greater than sigma_min, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        super().__init__(T)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min) / self.T

    def alpha_bar(self, t) -> Tensor:
        """alpha_bar(t) = 1."""
        return torch.ones_like(as_time(t))

    def beta_bar(self, t) -> Tensor:
        """beta_bar(t) = sigma_min (sigma_max/sigma_min)^(t/T)."""
        return self.sigma_min * torch.exp(as_time(t) * self._log_ratio)

    def f(self, t) -> Tensor:
        """f(t) = 0."""
        return torch.zeros_like(as_time(t))

    def g2(self, t) -> Tensor:
        """g(t)^2 = d sigma^2/dt = 2 sigma(t)^2 log(sigma_max/sigma_min)/T."""
        return 2.0 * self.beta_bar(t) ** 2 * self._log_ratio

    def t_of_log_snr(self, lam) -> Tensor:
        """Closed form: lambda = -log sigma(t)."""
        return (-as_time(lam) - math.log(self.sigma_min)) / self._log_ratio


class CosineVPSDE(SDE):
    """Nichol & Dhariwal's cosine schedule as a continuous VP SDE: alpha_bar = cos(u(t))/cos(u(0)),
    u = (t+s)/(1+s) pi/2.

    The drift f = -tan(u) pi/(2(1+s)) blows up at t = 1, so the default horizon T = 0.9946 stops where
    alpha_bar(T) ~ 8e-3, comparable to the VP SDE's 6e-3 (the same choice as DPM-Solver's cosine schedule).
    """

    def __init__(self, s: float = 0.008, T: float = 0.9946):
        _require(s >= 0, f"s must be non-negative, got s={s}")
        _require(0 < T < 1, f"T must be in (0, 1) for the cosine schedule (its drift is infinite at t=1), got T={T}")
        super().__init__(T)
        self.s = float(s)

    def _u(self, t) -> Tensor:
        return (as_time(t) + self.s) / (1.0 + self.s) * (math.pi / 2)

    def alpha_bar(self, t) -> Tensor:
        """alpha_bar(t) = cos(u(t)) / cos(u(0))."""
        return torch.cos(self._u(t)) / math.cos(self.s / (1.0 + self.s) * math.pi / 2)

    def beta_bar(self, t) -> Tensor:
        """beta_bar(t) = sqrt(1 - alpha_bar(t)^2)."""
        return torch.sqrt(1.0 - self.alpha_bar(t) ** 2)

    def f(self, t) -> Tensor:
        """f(t) = d ln alpha_bar/dt = -tan(u(t)) pi / (2 (1 + s))."""
        return -torch.tan(self._u(t)) * (math.pi / (2.0 * (1.0 + self.s)))

    def g2(self, t) -> Tensor:
        """g(t)^2 = -2 f(t) (variance preserving: alpha_bar^2 + beta_bar^2 = 1)."""
        return -2.0 * self.f(t)

    @property
    def prior_std(self) -> float:
        """The prior is N(0, I), as for every variance-preserving SDE."""
        return 1.0

    def t_of_log_snr(self, lam) -> Tensor:
        """Closed form: alpha_bar^2 = sigmoid(2 lambda), u = arccos(alpha_bar cos u(0))."""
        a = torch.sqrt(torch.sigmoid(2.0 * as_time(lam)))
        u = torch.arccos(a * math.cos(self.s / (1.0 + self.s) * math.pi / 2))
        return u * (2.0 * (1.0 + self.s) / math.pi) - self.s


class ScheduleSDE(SDE):
    """An SDE from two callables, e.g. ScheduleSDE(alpha_bar=lambda t: torch.exp(-5 * t**2), beta_bar=...).

    The callables take a float64 tensor t and must use torch operations (f and g^2 come from autograd).
    The schedule is checked on a grid of [0, T] at construction.
    """

    def __init__(self, alpha_bar: Callable[[Tensor], Tensor], beta_bar: Callable[[Tensor], Tensor],
                 T: float = 1.0, prior_std: float | None = None):
        _require(callable(alpha_bar), "alpha_bar must be a callable t -> tensor")
        _require(callable(beta_bar), "beta_bar must be a callable t -> tensor")
        super().__init__(T)
        self._alpha_bar = alpha_bar
        self._beta_bar = beta_bar
        self._prior_std = prior_std
        self.validate()

    def alpha_bar(self, t) -> Tensor:
        """The user's alpha_bar(t)."""
        t = as_time(t)
        return torch.as_tensor(self._alpha_bar(t), dtype=torch.float64).expand_as(t)

    def beta_bar(self, t) -> Tensor:
        """The user's beta_bar(t)."""
        t = as_time(t)
        return torch.as_tensor(self._beta_bar(t), dtype=torch.float64).expand_as(t)

    @property
    def prior_std(self) -> float:
        """prior_std if given, else beta_bar(T)."""
        return super().prior_std if self._prior_std is None else float(self._prior_std)


def ddpm_betas(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               beta_schedule: str = "linear", trained_betas=None) -> Tensor:
    """DDPM's per-step betas in float64, as diffusers' DDPMScheduler defines them from its config."""
    n = int(num_train_timesteps)
    if trained_betas is not None and len(trained_betas):
        return torch.as_tensor(trained_betas, dtype=torch.float64)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        def a2(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - a2((i + 1) / n) / a2(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    raise UsageError(f"unsupported beta_schedule {beta_schedule!r}; supported: linear, scaled_linear, "
                     "squaredcos_cap_v2, or trained_betas")


class PolynomialFlow(SDE):
    """The affine path alpha_bar = 1 - t^k, beta_bar = t (k = 1: rectified flow), stopped at T < 1.

    f = -k t^(k-1)/(1 - t^k) and g^2 = 2t + 2k t^(k+1)/(1 - t^k) are infinite at t = 1, where alpha_bar = 0 and
    the log-SNR log((1 - t^k)/t) is -inf; the probability-flow velocity alpha_bar' x_0 + beta_bar' eps stays finite
    there, but the samplers that step in the log-SNR cannot start from -inf. So the process ends at T = 1 - 1e-3 by
    default, where alpha_bar(T) = k 1e-3 to first order (azula clips its rectified schedule the same way): the prior
    N(0, T^2 I) then ignores the marginal's mean alpha_bar(T) x_0, as VP's prior ignores exp(-5) x_0.
    """

    def __init__(self, power: float = 1.0, T: float = 1.0 - 1e-3):
        _require(power > 0, f"power must be positive, got power={power}")
        _require(0 < T < 1, f"T must lie in (0, 1): alpha_bar(1) = 0 has an infinite drift; got T={T}")
        super().__init__(T)
        self.power = float(power)

    def alpha_bar(self, t) -> Tensor:
        """alpha_bar(t) = 1 - t^k."""
        return 1.0 - as_time(t) ** self.power

    def beta_bar(self, t) -> Tensor:
        """beta_bar(t) = t."""
        return as_time(t)

    def f(self, t) -> Tensor:
        """f(t) = d ln alpha_bar/dt = -k t^(k-1)/(1 - t^k)."""
        t = as_time(t)
        return -self.power * t ** (self.power - 1.0) / (1.0 - t**self.power)

    def g2(self, t) -> Tensor:
        """g(t)^2 = d t^2/dt - 2 f t^2 = 2t + 2k t^(k+1)/(1 - t^k)."""
        t = as_time(t)
        return 2.0 * t + 2.0 * self.power * t ** (self.power + 1.0) / (1.0 - t**self.power)

    def velocity_coefficients(self, t) -> tuple[Tensor, Tensor]:
        """(alpha_bar', beta_bar') = (-k t^(k-1), 1): the path's velocity is finite at every t."""
        t = as_time(t)
        return -self.power * t ** (self.power - 1.0), torch.ones_like(t)


class RectifiedFlow(PolynomialFlow):
    """Rectified flow (Liu et al. 2022), the conditional optimal-transport path of flow matching (Lipman et al.
    2023): x_t = (1 - t) x_0 + t eps, so f = -1/(1 - t), g^2 = 2t/(1 - t); stopped at T = 1 - 1e-3."""

    def __init__(self, T: float = 1.0 - 1e-3):
        super().__init__(1.0, T)

    def __repr__(self) -> str:
        return f"RectifiedFlow(T={self.T!r})"

    def t_of_log_snr(self, lam) -> Tensor:
        """Closed form: lambda = log((1 - t)/t), so t = sigmoid(-lambda)."""
        return torch.sigmoid(-as_time(lam))


class DiscreteVPSDE(SDE):
    """A discrete DDPM schedule (diffusers' DDPMScheduler) as a continuous variance-preserving SDE on [0, 1].

    Index n = 0..N-1 sits at t_n = (n+1)/N with alpha_bar(t_n) = sqrt(alphas_cumprod[n]) and beta_bar(t_n) =
    sqrt(1 - alphas_cumprod[n]) exactly (alphas_cumprod recomputed in float64). Between the knots log sigma
    (sigma = beta_bar/alpha_bar) is linear in t; below t_0, sigma^2 falls linearly to 0 at t = 0. sigma never
    decreases, so g^2 >= 0, and alpha_bar = 1/sqrt(1 + sigma^2). Then f = -g^2/2 and g^2 = alpha_bar^2 d sigma^2/dt.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None):
        super().__init__(1.0)
        betas = ddpm_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        _require(betas.ndim == 1 and len(betas) >= 2, f"a DDPM schedule needs at least 2 steps, got {len(betas)}")
        _require(bool(((betas > 0) & (betas < 1)).all()), "DDPM betas must lie in (0, 1)")
        self.num_train_timesteps = len(betas)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        self.log_sigmas = 0.5 * (torch.log1p(-self.alphas_cumprod) - torch.log(self.alphas_cumprod))
        self.validate()

    def _sigma2_and_rate(self, t) -> tuple[Tensor, Tensor]:
        """(sigma^2, d sigma^2/dt) at t; on a knot, the rate of the segment above it."""
        t = as_time(t)
        n = self.num_train_timesteps
        u = t * n - 1.0                                   # the fractional index of t
        k = torch.clamp(torch.floor(u), 0, n - 2).long()
        lo, hi = self.log_sigmas[k], self.log_sigmas[k + 1]
        log_sigma = lo + (u - k) * (hi - lo)
        s2_knots = torch.exp(2.0 * log_sigma)
        s2_0 = math.exp(2.0 * float(self.log_sigmas[0]))
        below = u < 0
        s2 = torch.where(below, s2_0 * t * n, s2_knots)
        rate = torch.where(below, torch.full_like(t, s2_0 * n), 2.0 * s2_knots * n * (hi - lo))
        return s2, rate

    def alpha_bar(self, t) -> Tensor:
        """alpha_bar = 1/sqrt(1 + sigma^2)."""
        return torch.rsqrt(1.0 + self._sigma2_and_rate(t)[0])

    def beta_bar(self, t) -> Tensor:
        """beta_bar = sigma/sqrt(1 + sigma^2)."""
        s2 = self._sigma2_and_rate(t)[0]
        return torch.sqrt(s2 / (1.0 + s2))

    def g2(self, t) -> Tensor:
        """g^2 = alpha_bar^2 d sigma^2/dt."""
        s2, rate = self._sigma2_and_rate(t)
        return rate / (1.0 + s2)

    def f(self, t) -> Tensor:
        """f = d ln alpha_bar/dt = -g^2/2."""
        return -0.5 * self.g2(t)

    @property
    def prior_std(self) -> float:
        """The prior is N(0, I), as DDPM samples it."""
        return 1.0

    def t_of_log_snr(self, lam) -> Tensor:
        """Closed form: invert the piecewise-linear log sigma = -lambda over the knots, or sigma^2 below t_0."""
        log_sigma = -as_time(lam)
        n = self.num_train_timesteps
        k = torch.clamp(torch.searchsorted(self.log_sigmas, log_sigma) - 1, 0, n - 2)
        lo, hi = self.log_sigmas[k], self.log_sigmas[k + 1]
        t_knots = (k + 1 + (log_sigma - lo) / (hi - lo)) / n
        t_below = torch.exp(2.0 * (log_sigma - self.log_sigmas[0])) / n
        return torch.where(log_sigma < self.log_sigmas[0], t_below, t_knots)
