"""The abstract SDE, defined by its marginal coefficients alpha_bar(t) and beta_bar(t).

x_t = alpha_bar(t) * x_0 + beta_bar(t) * eps. Everything else (drift, diffusion, prior, reverse
process, log-SNR) is derived here, so a new schedule only has to say what its marginals are.
"""
from __future__ import annotations

import abc
import math
from typing import Callable

import torch
from scoresde.utils import UsageError

Tensor = torch.Tensor
ScoreCallable = Callable[[Tensor, Tensor], Tensor]     # score_fn(x, t) -> tensor like x


def as_time(t, device=None) -> Tensor:
    """t as a float64 tensor (coefficient math is always done in float64)."""
    if isinstance(t, Tensor):
        return t.to(device=device if device is not None else t.device, dtype=torch.float64)
    return torch.as_tensor(t, dtype=torch.float64, device=device)


def batch_time(t, x: Tensor) -> Tensor:
    """t broadcast to shape (N,) for a batch x of shape (N, ...), in float64 on x's device."""
    t = as_time(t, x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise UsageError(f"t must be a scalar or have shape ({x.shape[0]},) to match x of shape "
                         f"{tuple(x.shape)}; got t of shape {tuple(t.shape)}")
    return t


def expand_as(c: Tensor, x: Tensor) -> Tensor:
    """A per-sample coefficient of shape (N,) reshaped to broadcast against x (N, ...), in x's dtype."""
    return c.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _coefficient(c: Tensor, x: Tensor) -> Tensor:
    """A coefficient of a scalar t (kept 0-dim, so that one on the CPU scales x on any device) or of a per-sample
    t (N,) (expand_as), in x's dtype."""
    return c.to(x.dtype) if c.ndim == 0 else expand_as(c, x)


class SDE(abc.ABC):
    """A linear SDE dx = f(t) x dt + g(t) dw on [0, T], given by its marginals x_t = alpha_bar x_0 + beta_bar eps.

    Subclasses implement `alpha_bar` and `beta_bar` (elementwise torch functions of a float64 t).
    `f` and `g2` are derived by automatic differentiation unless a subclass overrides them.
    """

    def __init__(self, T: float = 1.0):
        if not T > 0:
            raise UsageError(f"T must be positive, got T={T}")
        self.T = float(T)

    # --- the definition -------------------------------------------------------------------------
    @abc.abstractmethod
    def alpha_bar(self, t: Tensor) -> Tensor:
        """Mean scale: E[x_t | x_0] = alpha_bar(t) x_0."""

    @abc.abstractmethod
    def beta_bar(self, t: Tensor) -> Tensor:
        """Standard deviation: Std[x_t | x_0] = beta_bar(t)."""

    # --- derived coefficients (float64) ------------------------------------------------------------
    def _derivatives(self, t) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(alpha_bar, d alpha_bar/dt, beta_bar^2, d beta_bar^2/dt) by autograd, in float64."""
        # A beta_bar written as sqrt(...) has derivative 0 * inf at beta_bar = 0 (t = 0 for VP); nudging t
        # by 1e-12 T takes the one-sided limit instead, changing f and g^2 by O(1e-12).
        t = as_time(t)
        # A caller differentiating through t (solvers.calibrate_grid) gets a graph through the derivatives too.
        keep = t.requires_grad and torch.is_grad_enabled()
        t = t.clamp(min=1e-12 * self.T) if keep else t.detach().clamp(min=1e-12 * self.T).requires_grad_(True)
        with torch.enable_grad():
            # Adding 0*t keeps a graph for schedules that are constant in t (VE's alpha_bar = 1).
            a = self.alpha_bar(t) + 0.0 * t
            b2 = self.beta_bar(t) ** 2 + 0.0 * t
            da, = torch.autograd.grad(a.sum(), t, retain_graph=True, create_graph=keep)
            db2, = torch.autograd.grad(b2.sum(), t, create_graph=keep)
        if keep:
            return a, da, b2, db2
        return a.detach(), da, b2.detach(), db2

    def f(self, t) -> Tensor:
        """Drift coefficient f(t) = d ln alpha_bar / dt."""
        a, da, _, _ = self._derivatives(t)
        return da / a

    def g2(self, t) -> Tensor:
        """Squared diffusion g(t)^2 = d beta_bar^2/dt - 2 f(t) beta_bar^2 = alpha_bar^2 d/dt(beta_bar^2/alpha_bar^2)."""
        a, da, b2, db2 = self._derivatives(t)
        return db2 - 2.0 * (da / a) * b2

    def f_and_g2(self, t) -> tuple[Tensor, Tensor]:
        """(f(t), g(t)^2) at once: samplers and the likelihood need both at every evaluation."""
        if type(self).f is SDE.f and type(self).g2 is SDE.g2:
            # One autograd pass instead of two for schedules without closed forms.
            a, da, b2, db2 = self._derivatives(t)
            f = da / a
            return f, db2 - 2.0 * f * b2
        return self.f(t), self.g2(t)

    def velocity_coefficients(self, t) -> tuple[Tensor, Tensor]:
        """(d alpha_bar/dt, d beta_bar/dt): the path x_t = alpha_bar x_0 + beta_bar eps moves at
        u = alpha_bar' x_0 + beta_bar' eps (the flow-matching target). By autograd, with
        beta_bar' = (beta_bar^2)'/(2 beta_bar) taken at t >= 1e-12 T as in f and g^2 (beta_bar' is infinite at t = 0
        for VP-type SDEs)."""
        _, da, b2, db2 = self._derivatives(t)
        return da, db2 / (2.0 * torch.sqrt(b2))

    def g(self, t) -> Tensor:
        """Diffusion coefficient g(t) = sqrt(g2(t))."""
        return torch.sqrt(torch.clamp(self.g2(t), min=0.0))

    def log_snr(self, t) -> Tensor:
        """Half log signal-to-noise ratio lambda(t) = log(alpha_bar / beta_bar)."""
        t = as_time(t)
        return torch.log(self.alpha_bar(t)) - torch.log(self.beta_bar(t))

    def t_of_log_snr(self, lam) -> Tensor:
        """Inverse of log_snr by bisection on [0, T] (lambda is decreasing in t); subclasses give closed forms."""
        lam = as_time(lam)
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def transition(self, s, t) -> tuple[Tensor, Tensor]:
        """p(x_t | x_s) = N(a x_s, v I) for s < t: (a, v) = (alpha_bar_t/alpha_bar_s,
        beta_bar_t^2 - a^2 beta_bar_s^2)."""
        s, t = as_time(s), as_time(t)
        a = self.alpha_bar(t) / self.alpha_bar(s)
        return a, self.beta_bar(t) ** 2 - a**2 * self.beta_bar(s) ** 2

    # --- the process ----------------------------------------------------------------------------
    def sde(self, x: Tensor, t) -> tuple[Tensor, Tensor]:
        """(drift, diffusion) of the forward SDE: (f(t) x, g(t)); diffusion has shape (N,)."""
        t = batch_time(t, x)
        return expand_as(self.f(t), x) * x, self.g(t).to(x.dtype)

    def marginal_prob(self, x0: Tensor, t) -> tuple[Tensor, Tensor]:
        """(mean, std) of p(x_t | x_0): (alpha_bar(t) x_0, beta_bar(t)); std has shape (N,)."""
        t = batch_time(t, x0)
        return expand_as(self.alpha_bar(t), x0) * x0, self.beta_bar(t).to(x0.dtype)

    def perturb(self, x0: Tensor, z: Tensor, t) -> Tensor:
        """x_t = alpha_bar(t) x0 + beta_bar(t) z, for a scalar t or one per sample (N,)."""
        t = as_time(t)
        return _coefficient(self.alpha_bar(t), x0) * x0 + _coefficient(self.beta_bar(t), x0) * z

    def denoise(self, x: Tensor, score: Tensor, t) -> Tensor:
        """Tweedie's E[x_0 | x_t = x] = (x + beta_bar(t)^2 score)/alpha_bar(t), for a scalar t or one per sample
        (N,)."""
        t = as_time(t)
        a, b = self.alpha_bar(t), self.beta_bar(t)
        return _coefficient(1.0 / a, x) * x + _coefficient(b**2 / a, x) * score

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std^2 I) at t = T (beta_bar(T) in general)."""
        return float(self.beta_bar(as_time(self.T)))

    def prior_sampling(self, shape, generator: torch.Generator | None = None, device=None,
                       dtype=torch.float32) -> Tensor:
        """A sample of the prior N(0, prior_std^2 I) of the given shape."""
        if generator is not None and device is None:
            device = generator.device
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return z * self.prior_std

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I) per sample, summed over all non-batch dimensions; shape (N,)."""
        d = z[0].numel()
        s = self.prior_std
        sq = (z.reshape(z.shape[0], -1).to(torch.float64) ** 2).sum(1)
        return (-0.5 * sq / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))).to(z.dtype)

    def reverse(self, score_fn: ScoreCallable, eta: float = 1.0) -> "ReverseSDE":
        """The reverse-time process with noise scale eta*g(t): eta = 1 reverse SDE, eta = 0 probability-flow ODE."""
        return ReverseSDE(self, score_fn, eta)

    # --- checks ---------------------------------------------------------------------------------
    def validate(self, n: int = 1001) -> None:
        """Raise ValueError naming the first t on [0, T] where alpha_bar <= 0, beta_bar < 0 or g^2 < 0."""
        t = torch.linspace(0.0, self.T, n, dtype=torch.float64)
        a, b, g2 = self.alpha_bar(t), self.beta_bar(t), self.g2(t)
        checks = [
            (~torch.isfinite(a), "alpha_bar(t) must be finite"),
            (~torch.isfinite(b), "beta_bar(t) must be finite"),
            (a <= 0, "alpha_bar(t) must be positive"),
            (b < 0, "beta_bar(t) must be non-negative"),
            (~torch.isfinite(g2), "g(t)^2 must be finite (near beta_bar = 0, write 1 - exp(-x) as "
                                  "-torch.expm1(-x) so that its derivative keeps its precision)"),
            # -1e-10 absorbs autograd round-off where g^2 is exactly 0.
            (g2 < -1e-10, "g(t)^2 = d beta_bar^2/dt - 2 f beta_bar^2 must be non-negative "
                          "(beta_bar^2/alpha_bar^2 must not decrease)"),
        ]
        for bad, message in checks:
            if bad.any():
                t_bad = float(t[bad.nonzero()[0, 0]])
                raise UsageError(f"{type(self).__name__}: {message}; violated at t={t_bad:.6g}")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class ReverseSDE:
    """dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dw_bar, run backwards in t; same marginals as the forward SDE."""

    def __init__(self, sde: SDE, score_fn: ScoreCallable, eta: float = 1.0):
        if not 0.0 <= eta <= 1.0:
            raise UsageError(f"eta must be in [0, 1] (0: probability-flow ODE, 1: reverse SDE), got {eta}")
        self.forward_sde = sde
        self.score_fn = score_fn
        self.eta = float(eta)

    def drift(self, x: Tensor, t, score: Tensor | None = None) -> Tensor:
        """Reverse drift f(t) x - (1 + eta^2)/2 g(t)^2 score(x, t) (pass `score` to reuse one already computed)."""
        t = batch_time(t, x)
        if score is None:
            score = self.score_fn(x, t.to(x.dtype))
        f, g2 = self.forward_sde.f_and_g2(t)
        return expand_as(f, x) * x - expand_as(0.5 * (1.0 + self.eta**2) * g2, x) * score

    def diffusion(self, x: Tensor, t) -> Tensor:
        """Reverse diffusion eta * g(t), shape (N,)."""
        return (self.eta * self.forward_sde.g(batch_time(t, x))).to(x.dtype)

    def sde(self, x: Tensor, t) -> tuple[Tensor, Tensor]:
        """(drift, diffusion) of the reverse process at (x, t)."""
        return self.drift(x, t), self.diffusion(x, t)
