"""Probability-flow ODE solvers: dx/dt = f(t) x - g(t)^2/2 score(x, t), integrated from t_0 to t_n (either direction).

euler, heun: in t on a grid. ddim: exact Euler in (x/alpha_bar, beta_bar/alpha_bar). dpm_solver: multistep
exponential integrator in log-SNR (DPM-Solver++, data prediction). unipc: the same integrator with UniPC's
predictor and its free corrector. rk45: adaptive Dormand-Prince via torchdiffeq.
"""
from __future__ import annotations

import torch

from sde_lib import Registry

from .adaptive import METHODS, integrate_adaptive
from .base import FixedStepSolver, Solver, steps_of
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

    default_grid = "logsnr"
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


LOWER_ORDER_FINAL_STEPS = 5


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
    The first steps (no history yet) use lower order; so do the last ones at 5 steps or fewer (lower_order_final),
    where extrapolating over steps of h > 1.5 in lambda close to the data is unstable.
    """

    name = "dpm_solver"
    default_grid = "logsnr"
    default_steps = 20

    def __init__(self, sde, score, *, order: int = 3, lower_order_final: bool = True, **options):
        super().__init__(sde, score, **options)
        if order not in (1, 2, 3):
            raise ValueError(f"{self.name} order must be 1, 2 or 3, got order={order!r}")
        self.order = order
        self.lower_order_final = bool(lower_order_final)

    def step_order(self, i: int, n: int, available: int) -> int:
        """The order of step i of n with `available` points of history (lower at the start, and at the end if asked)."""
        order = min(self.order, available)
        # Measured on the two-component mixture (VP, sub-VP, VE; dpm_solver and unipc): lower orders at the end
        # help at 5 steps under VP and sub-VP only, and cost 1.2-3x in pathwise error at 6-9 steps.
        if self.lower_order_final and n <= LOWER_ORDER_FINAL_STEPS:
            order = min(order, n - i)
        return order

    def integrate(self, x, ts, *, generator=None, denoise=False, progress=False):
        n = len(ts) - 1
        lam, b = self.sde.log_snr(ts), self.sde.beta_bar(ts)
        a = self.sde.alpha_bar(ts)
        history: list[tuple[Tensor, Tensor]] = []     # (lambda_j, D_j), most recent last
        for i in steps_of(ts, progress, self.name):
            history = (history + [(lam[i], self.denoised(x, ts[i]))])[-self.order:]
            order = self.step_order(i, n, len(history))
            x = self.step(x, history[-order:], lam[i + 1], a[i + 1], b[i + 1] / b[i])
        return x

    def step(self, x: Tensor, history, lam_next: Tensor, a_next: Tensor, b_ratio: Tensor) -> Tensor:
        """One step with the polynomial through `history`; coefficients int_0^h e^(u-h) u^k/k! du in float64."""
        lam0, d0 = history[-1]
        h = lam_next - lam0
        c1 = -torch.expm1(-h)
        x = b_ratio * x + (a_next * c1) * d0
        if len(history) >= 2:
            lam1, d1 = history[-2]
            d01 = (d0 - d1) / (lam0 - lam1)
            slope = d01
            if len(history) == 3:
                lam2, d2 = history[-3]
                d12 = (d1 - d2) / (lam1 - lam2)
                d012 = (d01 - d12) / (lam0 - lam2)
                slope = d01 + (lam0 - lam1) * d012
                x = x + (a_next * (h**2 / 2 - h + c1)) * (2 * d012)
            x = x + (a_next * (h - c1)) * slope
        return x


class UniPC(DPMSolver):
    """UniPC (Zhao et al. 2023), data prediction in lambda: x_s = (beta_bar_s/beta_bar_t) x_t + alpha_bar_s (1 - e^-h) D_t
    + alpha_bar_s B(h) sum_k rho_k (D_k - D_t)/r_k, r_k = (lambda_k - lambda_t)/h, B(h) = 1 - e^-h ("bh2") or h ("bh1").

    The predictor UniP uses the last `order` points of (lambda, D); the corrector UniC redoes the step once D at
    the new point is known, raising the order by one at no extra NFE (the new D, taken before the correction, is
    kept in the history). The last step has no corrector: it would need one more evaluation. `integrate` follows
    the paper's multistep UniPC-p: evaluate D at the predicted point, correct the previous step with it, predict
    the next one.
    """

    name = "unipc"

    def __init__(self, sde, score, *, variant: str = "bh2", corrector: bool = True, **options):
        super().__init__(sde, score, **options)
        self.variant = UNIPC_VARIANTS.canonical(variant)
        self.b_of_h = UNIPC_VARIANTS[variant]
        self.corrector = bool(corrector)

    def integrate(self, x, ts, *, generator=None, denoise=False, progress=False):
        n = len(ts) - 1
        lam, b = self.sde.log_snr(ts), self.sde.beta_bar(ts)
        a = self.sde.alpha_bar(ts)
        history: list[tuple[Tensor, Tensor]] = []     # (lambda_j, D_j), most recent last
        x_start, used = x, []                           # the last step's start and the points UniP took it with
        for i in steps_of(ts, progress, self.name):
            d = self.denoised(x, ts[i])                 # the step's one NFE, at the predicted point
            if i > 0 and self.corrector:
                x = self.unic(x_start, used, (lam[i], d), a[i], b[i] / b[i - 1])
            history = (history + [(lam[i], d)])[-self.order:]
            used = history[-self.step_order(i, n, len(history)):]
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
                raise ValueError(f"rk45 {name} must be positive, got {name}={value}")
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
