import math

import numpy as np
import pytest
import torch
from scipy import stats

from scoresde import sde_lib
from scoresde.sde_lib import SDE, CosineVPSDE, ScheduleSDE, SubVPSDE, VESDE, VPSDE

MEMBERS = [VPSDE(), SubVPSDE(), VESDE(), CosineVPSDE(), VPSDE(beta_min=0.5, beta_max=5.0, T=0.8)]
IDS = ["vp", "subvp", "ve", "cosine", "vp-custom"]


def grid(sde, n=101):
    return torch.linspace(0.0, sde.T, n, dtype=torch.float64)


@pytest.mark.parametrize("sde", MEMBERS, ids=IDS)
def test_closed_forms_match_autograd(sde):
    # Autograd in float64 is exact up to round-off; the 1e-12*T nudge at t = 0 moves f and g^2 by < 1e-10.
    t = grid(sde)
    torch.testing.assert_close(sde.f(t), SDE.f(sde, t), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sde.g2(t), SDE.g2(sde, t), rtol=1e-9, atol=1e-9)


def test_derived_coefficients_are_differentiable_in_t():
    # The autograd-derived f and g^2 of a user schedule carry gradients in t, like VP's closed forms: for the
    # schedule that reproduces VP, df/dt = -beta'(t)/2 = -9.95 and dg^2/dt = beta'(t) = 19.9 (beta linear in t).
    user = ScheduleSDE(alpha_bar=lambda t: torch.exp(-0.25 * t**2 * 19.9 - 0.05 * t),
                       beta_bar=lambda t: torch.sqrt(-torch.expm1(-0.5 * t**2 * 19.9 - 0.1 * t)))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    f, g2 = user.f_and_g2(t)
    df, = torch.autograd.grad(f.sum(), t, retain_graph=True)
    dg2, = torch.autograd.grad(g2.sum(), t)
    torch.testing.assert_close(df, torch.full_like(df, -9.95), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(dg2, torch.full_like(dg2, 19.9), rtol=1e-8, atol=1e-8)


def stencil_derivative(fn, t, h):
    """dfn/dt by the five-point central difference: error h^4/30 |fn^(5)| + 1.5 eps |fn| / h."""
    return (fn(t - 2 * h) - 8 * fn(t - h) + 8 * fn(t + h) - fn(t + 2 * h)) / (12 * h)


@pytest.mark.parametrize("sde", MEMBERS + [ScheduleSDE(alpha_bar=lambda t: torch.exp(-5 * t**2),
                                                       beta_bar=lambda t: torch.sqrt(-torch.expm1(-10 * t**2)))],
                         ids=IDS + ["schedule"])
def test_f_and_g2_are_the_derivatives_of_the_marginals(sde):
    # The definition, from the marginals alone: f = d ln alpha_bar/dt, g^2 = d beta_bar^2/dt - 2 f beta_bar^2, by
    # float64 finite differences (closed forms for the members, the one-pass autograd for the schedule). At
    # h = 1e-4 the truncation h^4/30 |F^(5)| is largest at the cosine's last point (tan u ~ 42), about 6e-8 of f
    # there, and the round-off 1.5 eps |F| / h stays below 1e-8 of f and g^2 everywhere; measured at most 3e-9.
    # The grid stops 1% short of both ends so that t +- 2h stays inside [0, T] (VP's beta_bar is NaN below 0).
    t = grid(sde)[1:-1]
    h = 1e-4
    f_fd = stencil_derivative(lambda u: torch.log(sde.alpha_bar(u)), t, h)
    b2 = lambda u: sde.beta_bar(u) ** 2  # noqa: E731
    g2_fd = stencil_derivative(b2, t, h) - 2 * f_fd * b2(t)
    f, g2 = sde.f_and_g2(t)
    torch.testing.assert_close(f, f_fd, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(g2, g2_fd, rtol=1e-7, atol=1e-10)


def test_vp_coefficients_are_song_et_al():
    sde = VPSDE(beta_min=0.1, beta_max=20.0)
    t = grid(sde)
    beta = 0.1 + t * 19.9
    torch.testing.assert_close(SDE.f(sde, t), -0.5 * beta, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(SDE.g2(sde, t), beta, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sde.alpha_bar(t), torch.exp(-0.25 * t**2 * 19.9 - 0.5 * t * 0.1), rtol=1e-12, atol=0)
    # alpha_bar(1) = exp(-5.025) ~ 6.6e-3: the prior N(0, I) is close to p_T.
    assert float(sde.alpha_bar(torch.tensor(1.0))) == pytest.approx(math.exp(-5.025), rel=1e-12)


def test_subvp_derived_g2():
    sde = SubVPSDE()
    t = grid(sde)
    beta = 0.1 + t * 19.9
    big_b = 0.1 * t + 0.5 * t**2 * 19.9
    torch.testing.assert_close(SDE.g2(sde, t), beta * (1 - torch.exp(-2 * big_b)), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(SDE.f(sde, t), -0.5 * beta, rtol=1e-9, atol=1e-9)


def test_ve_coefficients():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    t = grid(sde)
    sigma = 0.01 * (5000.0) ** t
    torch.testing.assert_close(sde.beta_bar(t), sigma, rtol=1e-12, atol=0)
    torch.testing.assert_close(SDE.g2(sde, t), 2 * sigma**2 * math.log(5000.0), rtol=1e-9, atol=1e-12)
    assert sde.prior_std == pytest.approx(50.0)


def test_cosine_matches_discrete_formula():
    # Seed 002: alpha_bar^H(t) = f(t)/f(0), f(t) = cos^2(((t + s)/(1 + s)) pi/2); alpha_bar = sqrt(alpha_bar^H).
    sde = CosineVPSDE(s=0.008)
    t = grid(sde)
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    expected = np.sqrt(f(t.numpy()) / f(0.0))
    np.testing.assert_allclose(sde.alpha_bar(t).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose((sde.alpha_bar(t) ** 2 + sde.beta_bar(t) ** 2).numpy(), 1.0, rtol=1e-12)


@pytest.mark.parametrize("sde", MEMBERS[:4], ids=IDS[:4])
def test_forward_simulation_matches_marginals(sde):
    # Brute force: start from the t = 0 marginal of x_0 ~ N(m0, s0^2), integrate dx = f x dt + g dw with fine
    # Euler-Maruyama, compare mean and variance with alpha_bar m0 and alpha_bar^2 s0^2 + beta_bar^2.
    gen = torch.Generator().manual_seed(0)
    n, steps, m0, s0 = 40000, 2000, 1.5, 0.5
    x0 = m0 + s0 * torch.randn(n, dtype=torch.float64, generator=gen)
    x = sde.alpha_bar(torch.tensor(0.0)) * x0 + sde.beta_bar(torch.tensor(0.0)) * torch.randn(
        n, dtype=torch.float64, generator=gen)
    ts = torch.linspace(0, sde.T, steps + 1, dtype=torch.float64)
    dt = sde.T / steps
    checkpoints = {steps // 10, steps // 3, 2 * steps // 3, steps}
    for i in range(1, steps + 1):
        t = ts[i - 1]
        x = x + sde.f(t) * x * dt + sde.g(t) * math.sqrt(dt) * torch.randn(n, dtype=torch.float64, generator=gen)
        if i in checkpoints:
            a, b = sde.alpha_bar(ts[i]), sde.beta_bar(ts[i])
            var = a**2 * s0**2 + b**2
            # Monte-Carlo standard errors: sqrt(var/n) for the mean, var sqrt(2/n) for the variance; 5 SE,
            # plus a 0.5% allowance for the O(dt) Euler-Maruyama bias.
            assert abs(x.mean() - a * m0) < 5 * math.sqrt(var / n) + 5e-3 * abs(a * m0), (i, x.mean(), a * m0)
            assert abs(x.var() - var) < 5 * var * math.sqrt(2 / n) + 5e-3 * var, (i, x.var(), var)


def test_schedule_sde_reproduces_vp():
    vp = VPSDE()
    user = ScheduleSDE(alpha_bar=lambda t: torch.exp(-0.25 * t**2 * 19.9 - 0.05 * t),
                       beta_bar=lambda t: torch.sqrt(1 - torch.exp(-0.5 * t**2 * 19.9 - 0.1 * t)), prior_std=1.0)
    t = grid(vp)[1:]
    for name in ("alpha_bar", "beta_bar", "f", "g2", "log_snr"):
        torch.testing.assert_close(getattr(user, name)(t), getattr(vp, name)(t), rtol=1e-6, atol=1e-6)
    x = torch.randn(7, 3, dtype=torch.float64)
    for a, b in zip(user.sde(x, t[:7]), vp.sde(x, t[:7])):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(user.t_of_log_snr(vp.log_snr(t[3:-3])), t[3:-3], rtol=1e-6, atol=1e-6)


def test_schedule_in_a_few_lines_from_seed():
    # alpha_bar(s) = exp(-5 s^2) is VP with beta(s) = 20 s: f = d log alpha_bar/ds = -10 s and g^2 = -2 f
    # (docs/math.md, section Drift and diffusion from the marginals).
    user = ScheduleSDE(alpha_bar=lambda t: torch.exp(-5 * t**2),
                       beta_bar=lambda t: torch.sqrt(-torch.expm1(-10 * t**2)))
    t = grid(user)[1:]
    torch.testing.assert_close(user.g2(t), 20 * t, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(user.f(t), -10 * t, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde", MEMBERS, ids=IDS)
def test_log_snr_inverse(sde):
    t = grid(sde, 51)[1:-1]
    lam = sde.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    torch.testing.assert_close(sde.t_of_log_snr(lam), t, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(SDE.t_of_log_snr(sde, lam), t, rtol=1e-9, atol=1e-9)


def test_transition():
    vp = VPSDE()
    s, t = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    a, v = vp.transition(s, t)
    # VP: a = exp(-(B(t) - B(s))/2) and, as the process preserves variance, v = 1 - a^2.
    assert float(a) == pytest.approx(math.exp(-0.5 * float(vp.integral_beta(t) - vp.integral_beta(s))), rel=1e-12)
    assert float(v) == pytest.approx(-math.expm1(-float(vp.integral_beta(t) - vp.integral_beta(s))), rel=1e-9)
    ve = VESDE()
    a, v = ve.transition(torch.tensor(0.2), torch.tensor(0.5))
    assert float(a) == 1.0
    assert float(v) == pytest.approx(float(ve.beta_bar(torch.tensor(0.5)) ** 2 - ve.beta_bar(torch.tensor(0.2)) ** 2))


@pytest.mark.parametrize("sde", MEMBERS, ids=IDS)
@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3, 3)])
def test_prior_logp_and_shapes(sde, shape):
    z = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert z.shape == shape
    d = math.prod(shape[1:])
    expected = stats.multivariate_normal(mean=np.zeros(d), cov=sde.prior_std**2 * np.eye(d)).logpdf(
        z.reshape(shape[0], -1).numpy())
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), expected, rtol=1e-10)
    t = torch.rand(shape[0], dtype=torch.float64) * sde.T
    drift, diffusion = sde.sde(z, t)
    mean, std = sde.marginal_prob(z, t)
    assert drift.shape == mean.shape == z.shape and diffusion.shape == std.shape == (shape[0],)
    torch.testing.assert_close(std, sde.beta_bar(t))
    x32 = z.float()
    assert sde.sde(x32, t)[0].dtype == torch.float32 and sde.marginal_prob(x32, 0.5)[1].dtype == torch.float32


def test_prior_sampling_moments():
    sde = VESDE()
    z = sde.prior_sampling((20000, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # std of the sample std ~ sigma/sqrt(2n) = 0.25; 4 SE.
    assert abs(z.std().item() - 50.0) < 1.0


@pytest.mark.parametrize("sde", MEMBERS[:4], ids=IDS[:4])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_reverse_process_keeps_gaussian_marginals(sde, eta):
    # For 1-D data N(0, s0^2), p_t = N(0, v(t)) with v = alpha_bar^2 s0^2 + beta_bar^2. A process with noise sigma
    # has marginals p_t iff drift - sigma^2/2 * score is the probability-flow velocity, which for a zero-mean
    # Gaussian is x v'(t) / (2 v): check it with v' by finite differences of the marginals.
    s0 = 0.7
    t = torch.linspace(0.05, sde.T - 0.05, 9, dtype=torch.float64)
    v = lambda u: sde.alpha_bar(u) ** 2 * s0**2 + sde.beta_bar(u) ** 2  # noqa: E731
    h = 1e-6
    dv = (v(t + h) - v(t - h)) / (2 * h)
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    score_fn = lambda x_, t_: -x_ / v(t_)[:, None]  # noqa: E731
    rev = sde.reverse(score_fn, eta=eta)
    drift = rev.drift(x, t)
    sigma = rev.diffusion(x, t)
    velocity = drift + 0.5 * (sigma**2)[:, None] * score_fn(x, t)
    torch.testing.assert_close(velocity, x * (dv / (2 * v(t)))[:, None], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sigma, eta * sde.g(t))


@pytest.mark.parametrize("kwargs, match", [
    (dict(cls=VPSDE, beta_min=5.0, beta_max=1.0), "beta_max must be greater than beta_min"),
    (dict(cls=VPSDE, beta_min=-1.0), "beta_min must be non-negative"),
    (dict(cls=SubVPSDE, beta_min=2.0, beta_max=2.0), "beta_max must be greater"),
    (dict(cls=VESDE, sigma_min=0.0), "sigma_min must be positive"),
    (dict(cls=VESDE, sigma_min=1.0, sigma_max=0.5), "sigma_max must be greater"),
    (dict(cls=CosineVPSDE, s=-0.1), "s must be non-negative"),
    (dict(cls=CosineVPSDE, T=1.0), "T must be in"),
])
def test_bad_constructor_arguments(kwargs, match):
    cls = kwargs.pop("cls")
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("alpha_bar, beta_bar, match, t_bad", [
    (lambda t: 1 - 2 * t, lambda t: t, "alpha_bar\\(t\\) must be positive", 0.5),
    (lambda t: torch.ones_like(t), lambda t: t - 0.25, "beta_bar\\(t\\) must be non-negative", 0.0),
    (lambda t: torch.ones_like(t), lambda t: 1 - t, "g\\(t\\)\\^2", 0.0),
])
def test_schedule_sde_rejects_invalid_schedules(alpha_bar, beta_bar, match, t_bad):
    with pytest.raises(ValueError, match=match) as info:
        ScheduleSDE(alpha_bar=alpha_bar, beta_bar=beta_bar)
    assert f"t={t_bad:.6g}" in str(info.value)


def test_registry():
    assert isinstance(sde_lib.get_sde("vpsde"), VPSDE)
    assert isinstance(sde_lib.get_sde("VESDE", sigma_max=10.0), VESDE)
    with pytest.raises(ValueError, match="unknown SDE 'ddpm'; available: vpsde, subvpsde, vesde, cosine, discrete_vp, "
                                         "rectified, polynomial_flow$"):
        sde_lib.get_sde("ddpm")
    with pytest.raises(ValueError, match="bad arguments for SDE 'vpsde'"):
        sde_lib.get_sde("vpsde", sigma_max=1.0)


def test_time_shape_errors():
    sde = VPSDE()
    with pytest.raises(ValueError, match="t must be a scalar or have shape \\(4,\\)"):
        sde.marginal_prob(torch.zeros(4, 2), torch.zeros(3))


@pytest.mark.parametrize("sde", MEMBERS, ids=IDS)
def test_perturb_is_the_marginal_and_denoise_inverts_it_for_a_point_mass(sde):
    # x_t = alpha_bar x0 + beta_bar z has the mean and std of marginal_prob. For data that are the point x0, the
    # score at x_t is -(x_t - alpha_bar x0)/beta_bar^2 = -z/beta_bar, and Tweedie's formula gives x0 back up to the
    # cancellation of beta_bar/alpha_bar z (at most 50 |z| for the VE SDE) in float64: ~1e-14, bounded by 1e-10.
    gen = torch.Generator().manual_seed(3)
    x0, z = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64), torch.randn(6, 2, 3, generator=gen,
                                                                                   dtype=torch.float64)
    t = sde.T * (0.01 + 0.99 * torch.rand(6, generator=gen, dtype=torch.float64))
    mean, std = sde.marginal_prob(x0, t)
    x = sde.perturb(x0, z, t)
    torch.testing.assert_close(x, mean + std[:, None, None] * z, rtol=1e-14, atol=1e-14)
    score = -z / sde.beta_bar(t)[:, None, None]
    torch.testing.assert_close(sde.denoise(x, score, t), x0, rtol=0, atol=1e-10)
    # A scalar t is the same time for every sample.
    torch.testing.assert_close(sde.perturb(x0, z, t[0]), sde.perturb(x0, z, t[0].expand(6)), rtol=1e-15, atol=0)
    torch.testing.assert_close(sde.denoise(x, score, t[0]), sde.denoise(x, score, t[0].expand(6)), rtol=1e-15,
                               atol=0)
