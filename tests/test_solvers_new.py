"""EDM's sampler, stochastic DPM-Solver++, Analytic-DPM variances, the lower-order rule and calibrated-grid spacing."""
import math

import numpy as np
import pytest
import torch
from oracles import MIX

from scoresde import solvers
from scoresde.sde_lib import GaussianMixture, SubVPSDE, VESDE, VPSDE
from scoresde.solvers.analytic import NoiseMoments, estimate_eps_moments, load_eps_moments, save_eps_moments
from scoresde.solvers.calibrate import times_of
from scoresde.solvers.counting import CountingScore

F64 = torch.float64
# One Gaussian, N(mu, 0.05 I): the E||eps_hat||^2 tests need its closed form b^2 / (a^2 0.05 + b^2).
GAUSS = GaussianMixture(weights=[1.0], means=[[0.5, -0.3]], covs=[0.05])


def prior(sde, n=200, seed=0):
    return sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)


def reference(sde, x_T):
    return solvers.sample(sde, MIX.score_fn(sde), None, "rk45", x_T=x_T, rtol=1e-10, atol=1e-10).x


def rmse(a, b):
    return float((a - b).pow(2).mean().sqrt())


def observed_order(sde, name, steps, **options):
    x_T = prior(sde)
    ref = reference(sde, x_T)
    errors = [rmse(solvers.sample(sde, MIX.score_fn(sde), None, name, x_T=x_T, steps=n,
                                  generator=torch.Generator().manual_seed(1), **options).x, ref)
              for n in (steps, 2 * steps)]
    return math.log2(errors[0] / errors[1])


@pytest.mark.parametrize("name, options, steps, order, margin", [
    ("edm", {}, 20, 2, 0.3),
    ("dpm_solver_sde", {"eta": 0.0, "order": 2}, 20, 2, 0.3),
    ("dpm_solver_sde", {"eta": 0.0, "order": 3}, 40, 3, 0.4),
])
def test_deterministic_limits_converge_at_their_order(name, options, steps, order, margin):
    # Error vs dopri5 at rtol = atol = 1e-10 at n and 2n steps (VP, the mixture's exact score): log2(e_n / e_2n)
    # approaches the order; measured 2.05 (edm, s_churn = 0: Heun in sigma), 2.00 and 3.10.
    assert observed_order(VPSDE(), name, steps, **options) == pytest.approx(order, abs=margin)


@pytest.mark.parametrize("nu", [0.25, 1.0])
def test_dpm_solver_sde_mean_integrates_the_quadratic_exactly(nu):
    # The SDE step's mean is (beta_bar_s/beta_bar_t) e^(-nu h) x + alpha_bar_s int_0^h (1 + nu) e^((1 + nu)(u - h))
    # D(lambda_t + u) du; for D quadratic in lambda the 3-point step must equal it (40-point Gauss-Legendre, exact
    # to round-off); halving the D'' term, as k-diffusion's 3M SDE does, fails it.
    sde = VPSDE()
    solver = solvers.get_solver("dpm_solver_sde")(sde, CountingScore(MIX.score_fn(sde), 1e-3, 1.0), order=3)
    ts = torch.tensor([0.9, 0.7, 0.55, 0.4], dtype=F64)
    lam = sde.log_snr(ts)
    coefs = torch.tensor([[0.3, -1.2], [0.8, 0.5], [-0.2, 0.1]], dtype=F64)
    d_of = lambda u: sum(c * u**k for k, c in enumerate(coefs))  # noqa: E731
    x = torch.tensor([[0.4, -0.7]], dtype=F64)
    b_ratio = sde.beta_bar(ts[3]) / sde.beta_bar(ts[2])
    out = solver.step(x, [(lam[j], d_of(lam[j])[None]) for j in range(3)], lam[3], sde.alpha_bar(ts[3]), b_ratio, nu)
    nodes, weights = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(40))
    lo, hi = lam[2], lam[3]
    grid = (hi - lo) / 2 * nodes + (hi + lo) / 2
    w = (hi - lo) / 2 * weights * (1 + nu) * torch.exp((1 + nu) * (grid - hi))
    integral = (w[:, None] * torch.stack([d_of(g) for g in grid])).sum(0)
    exact = b_ratio * math.exp(-nu * float(hi - lo)) * x + sde.alpha_bar(ts[3]) * integral
    torch.testing.assert_close(out, exact, rtol=1e-12, atol=1e-12)


class Recorder:
    """The mixture's exact score, recording every time it is asked at."""

    def __init__(self, sde):
        self.score, self.times = MIX.score_fn(sde), []

    def __call__(self, x, t):
        self.times.append(t.double())
        return self.score(x, t)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_edm_churn_raises_sigma_by_gamma_and_stays_below_T(sde):
    # s_churn = 40 over 10 steps: gamma = min(4, sqrt(2) - 1) on every step, so each step's first evaluation is at
    # sigma_i (1 + gamma) (clamped to sigma(T)), its second at sigma_(i+1); 2 NFE per step, 1 on the last.
    rec = Recorder(sde)
    out = solvers.sample(sde, rec, (8, 2), "edm", steps=10, s_churn=40.0, dtype=F64,
                         generator=torch.Generator().manual_seed(0))
    assert out.nfe == len(rec.times) == 19
    ts = solvers.time_grid(sde, 10, 1e-3, "edm")
    sigma = torch.exp(-sde.log_snr(ts))
    first = torch.stack([t[0] for t in rec.times[0::2]])
    expected = torch.minimum(sigma[:-1] * math.sqrt(2), sigma[0])
    torch.testing.assert_close(torch.exp(-sde.log_snr(first)), expected, rtol=1e-9, atol=0)
    assert float(first.max()) <= sde.T


def test_edm_noise_is_per_sample():
    # Sample i's churn noise comes from generator i alone: the first 4 of 8 samples equal a run of those 4.
    sde = VPSDE()
    run = lambda idx: solvers.sample(sde, MIX.score_fn(sde), (len(idx), 2), "edm", steps=6, s_churn=5.0,  # noqa: E731
                                     dtype=F64, generator=solvers.SampleGenerators(3, idx)).x
    torch.testing.assert_close(run(range(8))[:4], run(range(4)), rtol=0, atol=0)


def test_eps_moments_match_the_gaussian_closed_form():
    # For x_0 ~ N(mu, s^2 I) the exact eps_hat = beta_bar (x_t - alpha_bar mu)/V, V = alpha_bar^2 s^2 + beta_bar^2,
    # so E||eps_hat||^2/D = beta_bar^2/V, and each draw's ||eps_hat||^2/D is (beta_bar^2/V) chi^2_D/D: relative
    # standard error sqrt(2/(D N)) = 0.71% at D = 2, N = 20000; 4 of them.
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        gen = torch.Generator().manual_seed(0)
        times = solvers.time_grid(sde, 9, 1e-3, "logsnr")
        table = estimate_eps_moments(sde, GAUSS.score_fn(sde), [(GAUSS.sample(10_000, gen), None) for _ in range(2)],
                                     times, gen)
        a, b = sde.alpha_bar(table.times), sde.beta_bar(table.times)
        exact = b**2 / (a**2 * 0.05 + b**2)
        assert table.count == 20_000
        torch.testing.assert_close(table.values, exact, rtol=4 * (2 / (2 * 20_000)) ** 0.5, atol=0)
    # Between the nodes, linear in log-SNR: against the sigmoid f = 1/(1 + s^2 e^(2 lambda)), |f''| <= 4 x 0.0962
    # (the logistic's largest curvature, doubled twice by the 2 lambda), the error is at most dlambda^2/8 |f''|.
    sde = VPSDE()
    times = solvers.time_grid(sde, 40, 1e-3, "logsnr")
    a, b = sde.alpha_bar(times), sde.beta_bar(times)
    table = NoiseMoments(times, b**2 / (a**2 * 0.05 + b**2), 1)
    t = torch.linspace(1e-3, 1.0, 97, dtype=F64)
    exact = 1 / (1 + 0.05 * torch.exp(2 * sde.log_snr(t)))
    got = torch.stack([table.at(sde, ti) for ti in t])
    dlam = float(sde.log_snr(times).diff().abs().max())
    assert float((got - exact).abs().max()) <= dlam**2 / 8 * 4 * 0.0962


def test_eps_moments_save_load_and_the_option(tmp_path):
    sde = VPSDE()
    table = NoiseMoments(torch.tensor([1e-3, 0.5, 1.0], dtype=F64), torch.tensor([0.01, 0.6, 1.0], dtype=F64), 7)
    path = tmp_path / "variances" / "analytic.json"
    save_eps_moments(path, table, sde=sde)
    assert [p.name for p in path.parent.iterdir()] == ["analytic.json"]      # no temporary file left behind
    back = load_eps_moments(path)
    torch.testing.assert_close(back.values, table.values, rtol=0, atol=0)
    assert back.count == 7
    # The table or its path, same samples; no table is an error that says how to make one.
    kwargs = dict(steps=5, dtype=F64, variance="analytic")
    a = solvers.sample(sde, MIX.score_fn(sde), (8, 2), "ancestral", eps_moments=table,
                       generator=torch.Generator().manual_seed(0), **kwargs).x
    b = solvers.sample(sde, MIX.score_fn(sde), (8, 2), "ancestral", eps_moments=str(path),
                       generator=torch.Generator().manual_seed(0), **kwargs).x
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs eps_moments"):
        solvers.sample(sde, MIX.score_fn(sde), (8, 2), "ancestral", variance="analytic")
    with pytest.raises(ValueError, match="unknown ancestral variance 'small'"):
        solvers.sample(sde, MIX.score_fn(sde), (8, 2), "ancestral", variance="small")
    with pytest.raises(FileNotFoundError, match="no E"):
        solvers.sample(sde, MIX.score_fn(sde), (8, 2), "ancestral", variance="analytic",
                       eps_moments=str(tmp_path / "missing.json"))


def test_analytic_variance_gives_gaussian_data_their_variance_in_few_steps():
    # x_0 ~ N(mu, 0.05 I) under VP on the uniform grid, 10 steps, the exact score and its exact E||eps_hat||^2/D;
    # the last step adds its noise too (denoise=False: the mean alone drops Var[x_0 | x_t], most of the variance at
    # 10 steps). Exact law at eps: N(alpha_bar mu, (alpha_bar^2 0.05 + beta_bar^2) I). Per-coordinate variance
    # ratio, measured: analytic 0.99, DDPM (eta = 1) 0.25, DDPM's 'large' 2.79; the standard error of a variance
    # ratio from 2 x 4000 draws is sqrt(2/8000) = 1.6%, 4 of them.
    sde, n = VPSDE(), 4000
    times = solvers.time_grid(sde, 99, 1e-3, "logsnr")
    a, b = sde.alpha_bar(times), sde.beta_bar(times)
    table = NoiseMoments(times, b**2 / (a**2 * 0.05 + b**2), 1)
    t = torch.tensor(1e-3, dtype=F64)
    exact_var = float(sde.alpha_bar(t) ** 2 * 0.05 + sde.beta_bar(t) ** 2)
    ratio = {}
    for variance in ("analytic", "ddpm", "large"):
        out = solvers.sample(sde, GAUSS.score_fn(sde), (n, 2), "ancestral", steps=10, dtype=F64, denoise=False,
                             variance=variance, eps_moments=table, generator=torch.Generator().manual_seed(1)).x
        ratio[variance] = float(out.var(0).mean()) / exact_var
    assert ratio["analytic"] == pytest.approx(1.0, abs=4 * (2 / (2 * n)) ** 0.5), ratio
    assert ratio["ddpm"] < 0.4 and ratio["large"] > 2.0, ratio


def lower_order_error(sde, name, grid, steps, lower):
    x_T = prior(sde, 300)
    out = solvers.sample(sde, MIX.score_fn(sde), None, name, x_T=x_T, steps=steps, grid=grid, order=3,
                         lower_order_final=lower)
    return rmse(out.x, reference(sde, x_T))


@pytest.mark.parametrize("grid, steps, bound", [("uniform", 10, 0.15), ("uniform", 50, 5e-3), ("logsnr", 8, 0.08)])
def test_lower_order_final_follows_the_step_sizes(grid, steps, bound):
    # unipc order 3 under VP. On the uniform grid the last step spans h = 3.5 in log-SNR (2.0 at 50 steps), four
    # times its predecessor: extrapolating the cubic over it diverges (pathwise RMSE 1.8 and 0.066 without lowering,
    # measured 0.095 and 3.2e-3 with it). On the log-SNR grid at 8 steps (h = 1.2 throughout) lowering costs: 0.17
    # against 0.061 without. The bounds sit 1.3-1.6x above the rule's measured errors.
    assert lower_order_error(VPSDE(), "unipc", grid, steps, True) < bound


def test_fitted_grid_keeps_its_minimum_spacing():
    # widths = min_width + softmax(p) (span - n min_width): every width is at least min_width whatever p is, and
    # the fitted grid inherits it (min_spacing 0.2 of the mean step is 0.2 (1 - 1e-3)/5 here).
    p = torch.tensor([30.0, -30.0, 0.0, -50.0, 10.0], dtype=F64)
    times = times_of(p, 1.0, 1e-3, 0.04)
    assert times[0] == 1.0 and times[-1] == 1e-3 and float((times[:-1] - times[1:]).min()) >= 0.04 - 1e-15
    sde = VPSDE()
    cal = solvers.calibrate_grid(sde, MIX.score_fn(sde), (32, 2), "dpm_solver", steps=5, iterations=15,
                                 min_spacing=0.2, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert float((cal.times[:-1] - cal.times[1:]).min()) >= 0.2 * (1 - 1e-3) / 5 - 1e-12
