"""Probability-flow ODE solvers: dx/dt = f(t) x - g(t)^2/2 score(x, t), integrated from t_0 to t_n (either direction).

euler, heun: in t on a grid. ddim: exact Euler in (x/alpha_bar, beta_bar/alpha_bar). dpm_solver: multistep
exponential integrator in log-SNR (DPM-Solver++, data prediction). unipc: the same integrator with UniPC's
predictor and its free corrector. rk45: adaptive Dormand-Prince via torchdiffeq.
"""
from __future__ import annotations

import math

import torch

from scoresde.utils import Registry, UsageError

from .adaptive import METHODS, integrate_adaptive
from .base import FixedStepSolver, Solver, by_steps, steps_of
from .random import randn_like
from .steps import ddim_coefficients

Tensor = torch.Tensor


class ODESolver(FixedStepSolver):
    """A fixed-step solver of the probability-flow ODE."""


class Euler(ODESolver):
    """x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i)."""

    def integrate(self, x, ts, *, generator=None, denoise=False, progress=False):
        for i in steps_of(ts, progress, "euler"):
            x = x + (ts[i + 1] - ts[i]) * self.velocity(x, ts[i])
        return x


class Heun(ODESolver):
    """Heun's 2nd-order method (EDM Algorithm 1); the step into eps is plain Euler, as EDM's step into sigma = 0."""

    # Pathwise RMSE to the converged ODE on the digits model (benchmarks/defaults.py --sweep; FD-digits2 where it
    # breaks a tie): at 3 steps (5 NFE) the EDM grid 0.28 against log-SNR 0.38 and uniform 0.34; at 4 steps all three
    # 0.21-0.22 (EDM's FD 0.021); at 5 steps uniform and log-SNR 0.149 (FD 0.023 against 0.114); from 6 steps
    # log-SNR is the best or within 3 % (10 steps: 0.049 against EDM 0.062 and uniform 0.065).
    default_grids = ((4, "edm"), (5, "uniform"), (math.inf, "logsnr"))
    default_steps = 18

    def integrate(self, x, ts, *, generator=None, denoise=False, progress=False):
        n = len(ts) - 1
        decoding = bool(ts[-1] < ts[0])
        for i in steps_of(ts, progress, "heun"):
            h = ts[i + 1] - ts[i]
            v = self.velocity(x, ts[i])
            x_euler = x + h * v
            if decoding and i == n - 1:
                x = x_euler
            else:
                x = x + 0.5 * h * (v + self.velocity(x_euler, ts[i + 1]))
        return x


class DDIM(ODESolver):
    """DDIM (Song, Meng & Ermon 2021): x_s = (alpha_bar_s/alpha_bar_t) x_t + (alpha_bar_s beta_bar_t/alpha_bar_t
    - beta_bar_s) eps_hat, exact Euler in (x/alpha_bar, beta_bar/alpha_bar) (docs/math.md, section "DDIM as
    exponential Euler").
    """

    default_steps = 50

    def integrate(self, x, ts, *, generator=None, denoise=False, progress=False):
        zero = torch.zeros((), dtype=torch.float64)
        for i in steps_of(ts, progress, "ddim"):
            c_x, c_score = ddim_coefficients(self.sde, ts[i], ts[i + 1], zero)
            x = c_x * x + c_score * self.score_at(x, ts[i])
        return x


# The last steps lower their order when a step is long in log-SNR or much longer than the one before it
# (lower_order_final). Measured on the two-component mixture (VP, sub-VP, VE; dpm_solver and unipc, orders 2 and 3;
# uniform, logsnr and edm grids at 5-50 steps): extrapolating the polynomial over such a step is what diverges
# (unipc-3 on the uniform grid, last h = 3.5 after 0.75: pathwise RMSE 1.8 at 10 steps, 0.095 lowered), while
# lowering on steps of h <= 1.5 no longer than their predecessors costs up to 2.6x (the log-SNR grid at 6-15 steps).
LOWER_ORDER_MAX_H = 1.5
LOWER_ORDER_MAX_GROWTH = 1.2


class DPMSolver(ODESolver):
    """Multistep DPM-Solver++ (Lu et al. 2022b) in lambda = log(alpha_bar/beta_bar), with data prediction:
    x_s = (beta_bar_s/beta_bar_t) x_t + alpha_bar_s int e^(lambda-lambda_s) D dlambda over [lambda_t, lambda_s].

    D = E[x_0 | x_t] is extrapolated by the polynomial through the last `order` values (Newton divided differences
    on the non-uniform lambda grid) and integrated exactly against the exponential weight. With h = lambda_s -
    lambda_t, r = (lambda_t - lambda_prev)/h and D_prev the previous value, the second-order step is

        x_s = (beta_bar_s/beta_bar_t) x_t + alpha_bar_s (1 - e^-h) D_t + alpha_bar_s (h - 1 + e^-h)/h (D_t - D_prev)/r,

    the exact integral of the line through the two points: the update diffusers' DPMSolverMultistepScheduler uses
    with solver_type="heun", not Lu et al.'s Algorithm 2 (DPM-Solver++(2M), solver_type="midpoint"), whose last
    term is alpha_bar_s (1 - e^-h)/2 (D_t - D_prev)/r; the two differ by O(h^3) per step and are both second order.
    The first steps (no history yet) use lower order; so do the last ones (lower_order_final) when their step is
    long in lambda (h > 1.5) or grows by more than 1.2x on the step before: extrapolating the polynomial over it
    close to the data is unstable, whatever grid gives such steps (uniform in t, EDM's at few steps, a given one).
    """

    name = "dpm_solver"
    # Few steps: uniform t at order 2, as diffusers ships DPM-Solver++ and UniPC; more steps: uniform log-SNR at order
    # 3 (Lu et al. 2022b). Pathwise RMSE to the converged ODE on the digits model (benchmarks/defaults.py --sweep), at
    # 5 / 8 / 10 / 12 / 15 / 20 steps: uniform-2 0.157 / 0.093 / 0.076 / 0.059 / 0.046 / 0.039, log-SNR-3 0.613 /
    # 0.202 / 0.101 / 0.065 / 0.043 / 0.025. At few steps uniform t ends with one long step from t ~ 0.2, i.e.
    # denoises from moderate noise, while log-SNR spends its few steps at low noise; with more steps that long last
    # step dominates the error instead. Measured on a learned network: on the exact two-component mixture (tests/
    # oracles.py) log-SNR is best at every step count (tests/test_solvers_defaults.py).
    default_grids = ((12, "uniform"), (math.inf, "logsnr"))
    default_orders = ((12, 2), (math.inf, 3))
    default_steps = 20
    nu = 0.0        # eta^2 of the eta family: 0 is the ODE; DPMSolverSDE sets it and draws each step's noise

    def __init__(self, sde, score, *, order: int | None = None, lower_order_final: bool = True, **options):
        super().__init__(sde, score, **options)
        if order is not None and order not in (1, 2, 3):
            raise UsageError(f"{self.name} order must be 1, 2 or 3, got order={order!r}")
        self.order = order      # None: order_for(steps)
        self.lower_order_final = bool(lower_order_final)

    @classmethod
    def order_for(cls, steps: int) -> int:
        """The default order at `steps` steps (default_orders, read as default_grids)."""
        return by_steps(cls.default_orders, steps)

    def top_order(self, steps: int) -> int:
        """The order of the multistep method on a grid of `steps` steps: the given one; else the default grid's
        (order_for), or 3 on a grid given by name or times (DPM-Solver++(3M), UniPC-3)."""
        if self.order is not None:
            return self.order
        return self.order_for(steps) if self.grid is None else 3

    def step_order(self, i: int, lam: Tensor, available: int) -> int:
        """The order of step i on the log-SNR grid lam with `available` points of history, at most the method's
        order (lower at the start, and at the end if asked)."""
        order = available
        h = (lam[i + 1] - lam[i]).abs()
        grows = i > 0 and h > LOWER_ORDER_MAX_GROWTH * (lam[i] - lam[i - 1]).abs()
        if self.lower_order_final and (h > LOWER_ORDER_MAX_H or grows):
            order = min(order, len(lam) - 1 - i)
        return order

    def integrate(self, x, ts, *, generator=None, denoise=False, progress=False):
        n = len(ts) - 1
        lam, a, b = self.sde.log_snr(ts), self.sde.alpha_bar(ts), self.sde.beta_bar(ts)
        top = self.top_order(n)
        history: list[tuple[Tensor, Tensor]] = []     # (lambda_j, D_j), most recent last
        for i in steps_of(ts, progress, self.name):
            history = (history + [(lam[i], self.denoised(x, ts[i]))])[-top:]
            order = self.step_order(i, lam, len(history))
            x = self.step(x, history[-order:], lam[i + 1], a[i + 1], b[i + 1] / b[i], self.nu)
            if self.nu > 0 and not (denoise and i == n - 1):
                # The SDE step's noise (solvers/dpm_sde.py); with `denoise` the last step returns its mean.
                std = b[i + 1] * (-torch.expm1(-2 * self.nu * (lam[i + 1] - lam[i]))).sqrt()
                x = x + std * randn_like(x, generator)
        return x

    def step(self, x: Tensor, history, lam_next: Tensor, a_next: Tensor, b_ratio: Tensor, nu: float = 0.0) -> Tensor:
        """One step with the polynomial through `history`: D + D' u + D'' u^2/2 integrated against the weight
        (1 + nu) e^((1 + nu)(u - h)), i.e. phi_k(H)/(1 + nu)^k D^(k) with H = (1 + nu) h and phi_k(H) =
        int_0^H e^(w-H) w^k/k! dw, in float64. nu = 0 is the ODE; nu = eta^2 the mean of the SDE step
        (solvers/dpm_sde.py)."""
        lam0, d0 = history[-1]
        h = lam_next - lam0
        rate = 1.0 + nu
        big_h = rate * h
        phi0 = -torch.expm1(-big_h)
        x = (b_ratio * torch.exp(-nu * h)) * x + (a_next * phi0) * d0
        if len(history) >= 2:
            lam1, d1 = history[-2]
            d01 = (d0 - d1) / (lam0 - lam1)
            slope = d01
            if len(history) == 3:
                lam2, d2 = history[-3]
                d12 = (d1 - d2) / (lam1 - lam2)
                d012 = (d01 - d12) / (lam0 - lam2)
                slope = d01 + (lam0 - lam1) * d012
                x = x + (a_next * (big_h**2 / 2 - big_h + phi0) / rate**2) * (2 * d012)
            x = x + (a_next * (big_h - phi0) / rate) * slope
        return x


class UniPC(DPMSolver):
    """UniPC (Zhao et al. 2023), data prediction in lambda:
    x_s = (beta_bar_s/beta_bar_t) x_t + alpha_bar_s (1 - e^-h) D_t + alpha_bar_s B(h) sum_k rho_k (D_k - D_t)/r_k,
    r_k = (lambda_k - lambda_t)/h, B(h) = 1 - e^-h ("bh2") or h ("bh1").

    The predictor UniP uses the last `order` points of (lambda, D); the corrector UniC redoes the step once D at
    the new point is known, raising the order by one at no extra NFE (the new D, taken before the correction, is
    kept in the history). The last step has no corrector: it would need one more evaluation. `integrate` follows
    the paper's multistep UniPC-p: evaluate D at the predicted point, correct the previous step with it, predict
    the next one.
    """

    name = "unipc"
    # As DPMSolver's, measured for UniPC (pathwise RMSE to the converged ODE on the digits model at 5 / 8 / 9 / 10 /
    # 20 steps): uniform-2 0.151 / 0.092 / 0.078 / 0.074 / 0.035, log-SNR-3 0.599 / 0.133 / 0.091 / 0.066 / 0.020
    # (log-SNR-2 0.064 at 10 steps, 0.022 at 20).
    default_grids = ((9, "uniform"), (math.inf, "logsnr"))
    default_orders = ((9, 2), (math.inf, 3))

    def __init__(self, sde, score, *, variant: str = "bh2", corrector: bool = True, **options):
        super().__init__(sde, score, **options)
        self.variant = UNIPC_VARIANTS.canonical(variant)
        self.b_of_h = UNIPC_VARIANTS[variant]
        self.corrector = bool(corrector)

    def integrate(self, x, ts, *, generator=None, denoise=False, progress=False):
        lam, b = self.sde.log_snr(ts), self.sde.beta_bar(ts)
        a = self.sde.alpha_bar(ts)
        top = self.top_order(len(ts) - 1)
        history: list[tuple[Tensor, Tensor]] = []     # (lambda_j, D_j), most recent last
        x_start, used = x, []                           # the last step's start and the points UniP took it with
        for i in steps_of(ts, progress, self.name):
            d = self.denoised(x, ts[i])                 # the step's one NFE, at the predicted point
            if i > 0 and self.corrector:
                x = self.unic(x_start, used, (lam[i], d), a[i], b[i] / b[i - 1])
            history = (history + [(lam[i], d)])[-top:]
            used = history[-self.step_order(i, lam, len(history)):]
            x_start = x
            x = self.unip(x, used, lam[i + 1], a[i + 1], b[i + 1] / b[i])
        return x

    def unip(self, x: Tensor, points, lam_next: Tensor, a_next: Tensor, b_ratio: Tensor) -> Tensor:
        """UniP-p: the step from (lambda_t, D_t) = points[-1] to lam_next, with the p - 1 earlier points."""
        return self.update(x, points[-1], points[:-1], lam_next, a_next, b_ratio)

    def unic(self, x: Tensor, points, new, a_next: Tensor, b_ratio: Tensor) -> Tensor:
        """UniC-p: the step UniP took from x with `points` again, now also through new = (lambda_s, D_s) at its end."""
        return self.update(x, points[-1], points[:-1] + [new], new[0], a_next, b_ratio)

    def update(self, x: Tensor, base, others, lam_next: Tensor, a_next: Tensor, b_ratio: Tensor) -> Tensor:
        """The UniPC update from base = (lambda_t, D_t) with the other points' differences D_k - D_t."""
        lam0, d0 = base
        h = lam_next - lam0
        x = b_ratio * x + (-a_next * torch.expm1(-h)) * d0
        if not others:
            return x
        r = torch.stack([(lam - lam0) / h for lam, _ in others])
        b_h = self.b_of_h(h)
        rho = unipc_rhos(h, r, b_h)
        weight = a_next * b_h
        for (_, d), rho_k, r_k in zip(others, rho, r):
            x = x + (weight * rho_k / r_k) * (d - d0)
        return x


def b_h1(h: Tensor) -> Tensor:
    """B(h) = h."""
    return h


def b_h2(h: Tensor) -> Tensor:
    """B(h) = 1 - e^-h."""
    return -torch.expm1(-h)


UNIPC_VARIANTS = Registry("unipc variant", {"bh1": b_h1, "bh2": b_h2})


def unipc_rhos(h: Tensor, r: Tensor, b_h: Tensor) -> Tensor:
    """rho_1..rho_K with sum_k rho_k r_k^(m-1) = m! psi_m(-h) / -B(h), m = 1..K, in float64 (UniPC's order conditions).

    psi_1(z) = (e^z - 1)/z - 1 and psi_(m+1)(z) = psi_m(z)/z - 1/(m+1)!: the remainders of e^z's Taylor series
    over z^m, which are what the polynomial through the points integrates to against e^(lambda - lambda_s).
    One point (K = 1) has rho = 1/2, as in the paper: the condition then holds to O(h), and B(h) picks the method.
    """
    if len(r) == 1:
        return torch.full((1,), 0.5, dtype=torch.float64)
    z = -h
    psi = torch.expm1(z) / z - 1
    factorial = 1.0
    b = []
    for m in range(1, len(r) + 1):
        b.append(psi * factorial / -b_h)
        factorial *= m + 1
        psi = psi / z - 1 / factorial
    powers = torch.arange(len(r), dtype=torch.float64)
    return torch.linalg.solve(r[None, :] ** powers[:, None], torch.stack(b))


class RK45(Solver):
    """Adaptive Runge-Kutta with rtol/atol (torchdiffeq; dopri5, Dormand-Prince 5(4), unless `method` says otherwise).

    Integrated by `solvers.adaptive.integrate_adaptive`, so the score is never evaluated outside [eps, T];
    first_step is a fraction of the span. The state is integrated in float64 so that its time variable stays
    float64 too. method: a name from `solvers.adaptive.METHODS` (rk45, rk23, dopri8, ...).
    """

    adaptive = True

    def __init__(self, sde, score, *, rtol: float = 1e-5, atol: float = 1e-5, first_step: float = 1e-2,
                 method: str = "rk45", max_steps: int = 10_000):
        super().__init__(sde, score)
        for name, value in (("rtol", rtol), ("atol", atol), ("first_step", first_step), ("max_steps", max_steps)):
            if not value > 0:
                raise UsageError(f"rk45 {name} must be positive, got {name}={value}")
        self.rtol, self.atol = float(rtol), float(atol)
        self.first_step = float(first_step)
        self.method = METHODS.canonical(method)
        self.max_steps = int(max_steps)

    def integrate(self, x, ts, *, generator=None, denoise=False, progress=False):
        shape, dtype = x.shape, x.dtype

        def rhs(t, y):
            v = self.velocity(y.reshape(shape).to(dtype), t)
            return v.to(torch.float64).reshape(y.shape)

        y = integrate_adaptive(rhs, x.to(torch.float64), ts[0], ts[-1], method=self.method, rtol=self.rtol,
                               atol=self.atol, first_step=self.first_step, max_steps=self.max_steps)
        return y.to(dtype)
