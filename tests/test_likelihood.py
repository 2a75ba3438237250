import math

import pytest
import torch
from oracles import moments

from scoresde import likelihood
from scoresde.sde_lib import GaussianMixture, SubVPSDE, VESDE, VPSDE
from scoresde.solvers.adaptive import integrate_adaptive

EPS = 1e-5
SDES = [VPSDE(), SubVPSDE(), VESDE()]
SDE_IDS = ["vp", "subvp", "ve"]


def make_mixture(dim: int) -> GaussianMixture:
    """Three well-separated, correlated components in `dim` dimensions (smallest variance 0.05)."""
    gen = torch.Generator().manual_seed(dim)
    means = 1.5 * torch.randn(3, dim, generator=gen, dtype=torch.float64)
    a = 0.3 * torch.randn(3, dim, dim, generator=gen, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) + 0.05 * torch.eye(dim, dtype=torch.float64)
    return GaussianMixture([0.2, 0.3, 0.5], means, covs)


def corrected_truth(mix, sde, x, z):
    """log p_eps(x) as the ODE with the prior N(0, prior_std^2 I) in place of p_T computes it."""
    return mix.log_prob(x, sde, EPS) + sde.prior_logp(z.to(torch.float64)) - mix.log_prob(z, sde, sde.T)


@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_exact_divergence_matches_the_mixture_density(sde, dim):
    mix = make_mixture(dim)
    x = mix.sample(16, generator=torch.Generator().manual_seed(1))
    res = likelihood.log_likelihood(sde, mix.score_fn(sde), x, divergence="exact", rtol=1e-6, atol=1e-6, eps=EPS)
    assert res.logp.shape == (16,) and res.z.shape == x.shape and res.nfe > 0
    # dopri5's local error control at rtol = atol = 1e-6 gives ~1e-5 nats here; the requirement is 1e-3.
    assert float((res.logp - corrected_truth(mix, sde, x, res.z)).abs().mean()) <= 1e-3
    # The prior correction matters: without it VE is off by more than the tolerance would allow.
    if isinstance(sde, VESDE):
        assert float((res.logp - mix.log_prob(x, sde, EPS)).abs().mean()) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_and_its_spread_shrinks_with_probes(kind):
    mix, sde = make_mixture(5), VPSDE()
    n = 400
    x = mix.sample(n, generator=torch.Generator().manual_seed(3))
    score_fn = mix.score_fn(sde)
    exact = likelihood.log_likelihood(sde, score_fn, x, divergence="exact").logp
    diffs = {}
    for n_probes in (1, 4):
        gen = torch.Generator().manual_seed(10 + n_probes)
        est = likelihood.log_likelihood(sde, score_fn, x, divergence=kind, n_probes=n_probes, generator=gen).logp
        diffs[n_probes] = est - exact
    for d in diffs.values():
        # Unbiased: the mean difference is within 4 standard errors of 0 (solver error ~1e-4 nats is negligible).
        assert abs(float(d.mean())) <= 4 * float(d.std()) / math.sqrt(n)
    # Averaging 4 independent probes divides the standard deviation by 2. The ratio of two sample standard
    # deviations from n = 400 has a relative standard error of about sqrt((kurtosis - 1) / (4 n)) ~ 5-8% for
    # these heavy-ish tailed quadratic forms; 0.35..0.65 is about 3 of those either side.
    ratio = float(diffs[4].std() / diffs[1].std())
    assert 0.35 <= ratio <= 0.65
    assert float(diffs[1].std()) > 0.05  # the estimator really is noisy, so the checks above have teeth


@pytest.mark.slow
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_latents_follow_p_T_and_decode_inverts_encode(sde):
    mix = make_mixture(2)
    n = 1000
    x = mix.sample(n, generator=torch.Generator().manual_seed(4))
    score_fn = mix.score_fn(sde)
    z = likelihood.log_likelihood(sde, score_fn, x, generator=torch.Generator().manual_seed(5)).z
    a, b = float(sde.alpha_bar(torch.tensor(sde.T))), float(sde.beta_bar(torch.tensor(sde.T)))
    data_mean, data_cov = moments(mix)
    cov_t = a**2 * data_cov + b**2 * torch.eye(2, dtype=torch.float64)
    # z ~ p_T = N(a mean, a^2 Cov + b^2 I) up to the flow's exactness. Standard errors: mean sqrt(var/n),
    # covariance entries ~ var sqrt(2/n); tolerances are 4.5 of them.
    scale = float(cov_t.diagonal().max())
    torch.testing.assert_close(z.mean(0), a * data_mean, atol=4.5 * math.sqrt(scale / n), rtol=0)
    torch.testing.assert_close(torch.cov(z.T), cov_t, atol=4.5 * scale * math.sqrt(2 / n), rtol=0)
    # Round trip on a subset at a tight tolerance: the x -> z -> x error is of the order of the tolerances
    # (times the flow's condition number, ~10 here).
    x_small = x[:32]
    z_small = likelihood.log_likelihood(sde, score_fn, x_small, rtol=1e-8, atol=1e-8,
                                        generator=torch.Generator().manual_seed(6)).z
    x_back = likelihood.decode(sde, score_fn, z_small, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(x_back, x_small, atol=1e-5, rtol=0)


class IntervalGuard:
    """The exact score, raising if the solver ever evaluates it outside [eps, T]."""

    def __init__(self, mix, sde):
        self.score_fn = mix.score_fn(sde)
        self.sde = sde
        self.t_seen = []

    def __call__(self, x, t):
        if (t < EPS).any() or (t > self.sde.T).any():
            raise AssertionError(f"score evaluated outside [eps, T] at t={t.min().item()!r}..{t.max().item()!r}")
        self.t_seen.append(float(t[0]))
        return self.score_fn(x, t)


INTERVAL_CASES = [pytest.param(sde, "rk45", id=f"{name}-rk45") for sde, name in zip(SDES, SDE_IDS)] + \
                 [pytest.param(VESDE(), "rk23", id="ve-rk23"), pytest.param(VPSDE(), "dopri8", id="vp-dopri8")]


@pytest.mark.parametrize("sde,method", INTERVAL_CASES)
def test_solver_never_leaves_the_interval(sde, method):
    # Without step_t dopri5 steps past the end of the interval and interpolates back; without an explicit
    # first step the initial-step heuristic's trial point is unbounded.
    mix = make_mixture(2)
    x = mix.sample(8, generator=torch.Generator().manual_seed(7))
    guard = IntervalGuard(mix, sde)
    res = likelihood.log_likelihood(sde, guard, x, method=method, eps=EPS)
    z = likelihood.decode(sde, guard, res.z, method=method, eps=EPS)
    # Both ends are reached (to float64 round-off of the stage times), so the guard is not vacuous.
    assert min(guard.t_seen) == pytest.approx(EPS, rel=1e-9) and max(guard.t_seen) == pytest.approx(sde.T, rel=1e-12)
    assert torch.isfinite(z).all()


@pytest.mark.parametrize("t0,t1", [(0.25, 1.0), (1.0, 0.25)], ids=["forward", "backward"])
def test_integrate_adaptive_solves_a_linear_ode_inside_its_interval(t0, t1):
    # dy/dt = -y t has y(t1) = y(t0) exp(-(t1^2 - t0^2) / 2); dopri5's error at rtol = atol = 1e-10 is ~1e-10.
    lo, hi, seen = min(t0, t1), max(t0, t1), []

    def func(t, y):
        seen.append(float(t))
        return -y * t

    y0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    y1 = integrate_adaptive(func, y0, t0, t1, rtol=1e-10, atol=1e-10, first_step=1e-3)
    torch.testing.assert_close(y1, y0 * math.exp(-(t1**2 - t0**2) / 2), rtol=1e-8, atol=0)
    # Every evaluation lies in [lo, hi]; the far end is reached to the round-off of the stage times t + c h.
    assert lo <= min(seen) and max(seen) <= hi and seen[0] == t0
    assert min(abs(t - t1) for t in seen) <= 1e-12
    with pytest.raises(RuntimeError, match=r"step limit \(max_steps=2\)"):
        integrate_adaptive(func, y0, t0, t1, rtol=1e-10, atol=1e-10, first_step=1e-3, max_steps=2)
    with pytest.raises(ValueError, match="unknown adaptive method 'euler'"):
        integrate_adaptive(func, y0, t0, t1, method="euler", rtol=1e-10, atol=1e-10, first_step=1e-3)


class CountingMLP(torch.nn.Module):
    """A small float32 network used as an eps-predictor; counts forward passes and backward passes."""

    def __init__(self, dim):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, 32), torch.nn.SiLU(), torch.nn.Dropout(0.5),
                                       torch.nn.Linear(32, dim))
        self.forwards = 0
        self.backwards = 0

    def forward(self, x, t):
        self.forwards += 1
        out = self.net(torch.cat([x, t[:, None]], 1))
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out

    def _count_backward(self, grad):
        self.backwards += 1


def test_one_forward_and_one_vjp_per_evaluation_under_no_grad_in_eval_mode():
    sde, dim = VPSDE(), 3
    model = CountingMLP(dim).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def score_fn(x, t):
        return -model(x, t) / sde.beta_bar(t.double()).to(x.dtype)[:, None]

    x = torch.rand(8, dim) * 2 - 1
    with torch.no_grad():
        res = likelihood.log_likelihood(sde, score_fn, x, generator=torch.Generator().manual_seed(0))
    assert res.z.dtype == torch.float32 and res.logp.dtype == torch.float64
    assert torch.isfinite(res.logp).all()
    assert model.forwards == res.nfe and model.backwards == res.nfe
    # Eval mode makes the network deterministic (dropout off), so a second solve reproduces the first exactly.
    again = likelihood.log_likelihood(sde, score_fn, x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.logp, res.logp, rtol=0, atol=0)


def test_bad_input_gives_clear_errors():
    mix, sde = make_mixture(2), VPSDE()
    score_fn = mix.score_fn(sde)
    x = mix.sample(4, generator=torch.Generator().manual_seed(8))
    bad = x.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf \(samples \[2\]\)"):
        likelihood.log_likelihood(sde, score_fn, bad)
    with pytest.raises(ValueError, match="shaped like x"):
        likelihood.log_likelihood(sde, lambda x, t: score_fn(x, t)[:, :1], x)
    with pytest.raises(ValueError, match="NaN or inf at t="):
        likelihood.log_likelihood(sde, lambda x, t: score_fn(x, t) * float("nan"), x)
    with pytest.raises(ValueError, match="differentiably"):
        likelihood.log_likelihood(sde, lambda x, t: score_fn(x, t).detach(), x)
    with pytest.raises(RuntimeError, match=r"step limit \(max_steps=3\).*relax the tolerances \(rtol=1e-05"):
        likelihood.log_likelihood(sde, score_fn, x, max_steps=3)
    with pytest.raises(ValueError, match="available: exact, rademacher, gaussian"):
        likelihood.log_likelihood(sde, score_fn, x, divergence="hutchinson")
    with pytest.raises(ValueError, match="unknown adaptive method 'rk4'; available: rk45"):
        likelihood.log_likelihood(sde, score_fn, x, method="rk4")
    with pytest.raises(ValueError, match="unknown adaptive method 'rk4'; available: rk45"):
        likelihood.decode(sde, score_fn, x, method="rk4")
    with pytest.raises(RuntimeError, match=r"step limit \(max_steps=3\)"):
        likelihood.decode(sde, score_fn, x, max_steps=3)
    with pytest.raises(ValueError, match="eps must be in"):
        likelihood.log_likelihood(sde, score_fn, x, eps=0.0)
    with pytest.raises(ValueError, match="batch dimension"):
        likelihood.log_likelihood(sde, score_fn, x[0])


@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_eab4_converges_to_the_mixture_density(sde, dim):
    mix = make_mixture(dim)
    x = mix.sample(16, generator=torch.Generator().manual_seed(1))
    errors = []
    for steps in (48, 192):
        res = likelihood.log_likelihood(sde, mix.score_fn(sde), x, divergence="exact", method="eab4", steps=steps)
        assert res.nfe == steps
        errors.append(float((res.logp - corrected_truth(mix, sde, x, res.z)).abs().mean()))
    # Measured: 1.5e-4 .. 2e-1 nats at 48 steps, at most ~2e-3 at 192 (the 5-D mixture's 0.05 variances are the
    # hardest); fourth order would divide by 256, the pre-asymptotic grids by > 5 here.
    assert errors[1] <= 5e-3 and errors[1] <= errors[0] / 5 + 1e-4


def _bits(sde, score_fn, x, setting, probes=None):
    res = likelihood.log_likelihood(sde, score_fn, x, probes=probes, divergence="exact" if probes is None
                                    else "rademacher", **setting.kwargs())
    return likelihood.bits_per_dim(res.logp, x.shape, n_bins=None), res


@pytest.mark.parametrize("setting", [likelihood.OdeSetting("eab4", steps=n) for n in (12, 24, 48)] +
                         [likelihood.OdeSetting("rk45", rtol=tol, atol=tol) for tol in (1e-2, 1e-3)],
                         ids=lambda s: s.describe().replace(" ", "-"))
def test_estimated_ode_error_bounds_the_true_error_on_the_mixture(setting):
    sde, mix = VPSDE(), make_mixture(5)
    x = mix.sample(16, generator=torch.Generator().manual_seed(11))
    score_fn = mix.score_fn(sde)
    truth = {}

    def solve(s):
        bpd, res = _bits(sde, score_fn, x, s)
        truth[s] = -corrected_truth(mix, sde, x, res.z) / (5 * math.log(2))
        return bpd, res.nfe

    chosen = likelihood.choose_setting(solve, [setting], accuracy=None)
    error = chosen.bpd - truth[setting]
    # The estimate bounds the mean absolute error per point, so the bias of the mean bits/dim too.
    assert float(error.abs().mean()) <= chosen.ode_error and abs(float(error.mean())) <= chosen.ode_error
    # ... and is not vacuous: within 4x of the mean absolute error (plus the 1e-5 bits/dim floor of exactness).
    assert chosen.ode_error <= 4 * float(error.abs().mean()) + 1e-5


def test_estimated_ode_error_bounds_the_true_error_on_a_network():
    # A fixed random MLP with Rademacher probes: the reference is dopri5 at rtol = atol = 1e-9 with the same
    # probes (its own error is ~1e-8 bits/dim, 4 orders below the errors measured).
    sde, dim = VPSDE(), 16
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(dim + 1, 64), torch.nn.SiLU(), torch.nn.Linear(64, dim)).double()
    for p in net.parameters():
        p.requires_grad_(False)

    def score_fn(x, t):
        eps_hat = x + 0.5 * net(torch.cat([x, t[:, None].to(x.dtype)], 1))
        return -eps_hat / sde.beta_bar(t.double()).to(x.dtype)[:, None]

    x = torch.rand(16, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    probes = likelihood.DIVERGENCES["rademacher"].probes(1, x, torch.Generator().manual_seed(2))
    reference, _ = _bits(sde, score_fn, x, likelihood.OdeSetting("rk45", rtol=1e-9, atol=1e-9), probes)
    for setting in [likelihood.OdeSetting("eab4", steps=12), likelihood.OdeSetting("rk45", rtol=1e-3, atol=1e-3)]:
        chosen = likelihood.choose_setting(lambda s: (lambda r: (r[0], r[1].nfe))(_bits(sde, score_fn, x, s, probes)),
                                           [setting], accuracy=None)
        error = chosen.bpd - reference
        assert abs(float(error.mean())) <= float(error.abs().mean()) <= chosen.ode_error
        assert chosen.ode_error <= 4 * float(error.abs().mean()) + 1e-6


def test_accuracy_search_picks_the_loosest_setting_and_its_error_holds():
    # Continuous 5-D mixture data and the exact divergence: the only error is the ODE's. The estimate is
    # |b(s) - b(s')| + |b(s') - b(s'')| averaged over the pilot, so by the triangle inequality the error of the mean
    # bits/dim at s is at most the estimate plus the error of b(s''), the solve it takes as exact (1e-6 .. 2e-4 here,
    # measured against the exact density). That bound is about the pilot's own points, so the pilot is the whole
    # random sample: a pilot of 16 of these 24 estimates 1.8e-4 at 48 steps for an error of 9.6e-4 on all 24, as
    # per-point errors are heavy-tailed (point 23 alone has 2.7e-2 bits/dim there, the others < 1.1e-3) and an
    # estimate holds for other points only as far as the pilot represents them. The search must also take the
    # loosest setting on the ladder that meets the accuracy.
    sde, mix = VPSDE(), make_mixture(5)
    x = mix.sample(24, generator=torch.Generator().manual_seed(12))
    score_fn = mix.score_fn(sde)
    batches = [(x, None)]
    res = likelihood.log_likelihood(sde, score_fn, x, divergence="exact", method="eab4", steps=1536)
    exact = -corrected_truth(mix, sde, x, res.z) / (5 * math.log(2))

    def neglected(setting):
        """Mean |b - exact| of the most accurate solve the estimate for `setting` takes as exact."""
        return float((_bits(sde, score_fn, x, setting.refined(2))[0] - exact).abs().mean())

    r = likelihood.evaluate_bits_per_dim(sde, score_fn, batches, n_bins=None, divergence="exact", accuracy=1e-3,
                                         pilot=24)
    steps = int(r.setting.split()[1])
    assert r.setting == f"eab4 {steps} steps" and r.nfe == steps and steps in likelihood.accuracy.STEP_LADDER
    assert r.count == 24 and r.ode_error <= 1e-3
    assert abs(r.mean - float(exact.mean())) <= r.ode_error + neglected(likelihood.OdeSetting("eab4", steps=steps))
    if steps > likelihood.accuracy.STEP_LADDER[0]:
        looser = likelihood.OdeSetting("eab4", steps=steps // 2)
        again = likelihood.choose_setting(lambda s: (lambda b_r: (b_r[0], b_r[1].nfe))(_bits(sde, score_fn, x, s)),
                                          [looser], accuracy=None)
        assert again.ode_error > 1e-3
    # rtol/atol given: the adaptive solver at those tolerances, no search, the error still estimated.
    fixed = likelihood.evaluate_bits_per_dim(sde, score_fn, batches, n_bins=None, divergence="exact", rtol=1e-3,
                                             atol=1e-3, accuracy=None, pilot=24)
    assert fixed.setting == "rk45 rtol 0.001" and fixed.ode_error > 0
    assert abs(fixed.mean - float(exact.mean())) <= fixed.ode_error + neglected(
        likelihood.OdeSetting("rk45", rtol=1e-3, atol=1e-3))
    with pytest.raises(ValueError, match="needs accuracy > 0 and pilot > 0"):
        likelihood.evaluate_bits_per_dim(sde, score_fn, batches, n_bins=None, pilot=0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        likelihood.log_likelihood(sde, score_fn, x, method="eab4")
