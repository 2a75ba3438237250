"""Rectified flow and its polynomial relatives as members of the SDE family, against the mathematics and the exact
Gaussian-mixture oracle: closed forms, the probability-flow velocity as the flow-matching target, samples, and
likelihoods."""
import pytest
import torch
from test_likelihood import corrected_truth, make_mixture
from test_solvers_distribution import MIX, SOLVERS, check_samples_follow_the_mixture

from scoresde import likelihood, sde_lib, solvers
from scoresde.sde_lib import PolynomialFlow, RectifiedFlow

FLOWS = [RectifiedFlow(), PolynomialFlow(power=2.0)]
IDS = ["rectified", "poly2"]


@pytest.mark.parametrize("sde", FLOWS, ids=IDS)
def test_closed_forms_match_the_marginals(sde):
    # f = d ln alpha_bar/dt and g^2 = d beta_bar^2/dt - 2 f beta_bar^2 by autograd of alpha_bar and beta_bar (the
    # base class), against the closed forms; both in float64, so they agree to round-off (1e-9 relative near T,
    # where f ~ -1/(1 - t) = -1000). The base class evaluates t = 0 at 1e-12 T, where g^2 = 2e-12: hence atol 1e-11.
    t = torch.linspace(0.0, sde.T, 201, dtype=torch.float64)
    torch.testing.assert_close(sde.f(t), sde_lib.SDE.f(sde, t), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(sde.g2(t), sde_lib.SDE.g2(sde, t), rtol=1e-9, atol=1e-11)
    assert float(sde.alpha_bar(torch.tensor(sde.T, dtype=torch.float64))) == pytest.approx(
        1 - 0.999 ** sde.power, rel=1e-12)


def test_rectified_flow_is_the_straight_interpolation():
    sde, t = RectifiedFlow(), torch.tensor([0.0, 0.25, 0.5, 0.999], dtype=torch.float64)
    torch.testing.assert_close(sde.alpha_bar(t), 1 - t)
    torch.testing.assert_close(sde.beta_bar(t), t)
    torch.testing.assert_close(sde.f(t), -1 / (1 - t))
    torch.testing.assert_close(sde.g2(t), 2 * t / (1 - t))
    lam = sde.log_snr(t[1:])
    torch.testing.assert_close(lam, torch.log((1 - t[1:]) / t[1:]))
    torch.testing.assert_close(sde.t_of_log_snr(lam), t[1:], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="T must lie in"):
        RectifiedFlow(T=1.0)
    assert sde_lib.get_sde("rectified").T == pytest.approx(0.999)


@pytest.mark.parametrize("sde", FLOWS, ids=IDS)
def test_probability_flow_velocity_is_the_expected_path_velocity(sde):
    # For x_t = alpha_bar x_0 + beta_bar eps, the probability-flow drift f x - g^2/2 score equals
    # E[alpha_bar' x_0 + beta_bar' eps | x_t = x] (the flow-matching target), with Tweedie's E[x_0 | x] =
    # (x + beta_bar^2 score)/alpha_bar and E[eps | x] = -beta_bar score, and alpha_bar', beta_bar' by autograd.
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (0.05, 0.5, 0.9, sde.T):
        tt = torch.full((64,), t, dtype=torch.float64, requires_grad=True)
        a, b = sde.alpha_bar(tt), sde.beta_bar(tt)
        da, = torch.autograd.grad(a.sum(), tt)
        db, = torch.autograd.grad(b.sum(), tt)
        a, b, tt = a.detach(), b.detach(), tt.detach()
        score = MIX.score(x, sde, tt)
        expected = da[:, None] * (x + b[:, None] ** 2 * score) / a[:, None] - db[:, None] * b[:, None] * score
        drift = sde.reverse(MIX.score_fn(sde), eta=0.0).drift(x, tt, score=score)
        torch.testing.assert_close(drift, expected, rtol=1e-9, atol=1e-9)
        assert torch.isfinite(drift).all()


@pytest.mark.parametrize("sde", FLOWS, ids=IDS)
def test_exact_divergence_likelihood_is_the_mixture_density(sde):
    mix = make_mixture(2)
    x = mix.sample(16, generator=torch.Generator().manual_seed(1))
    res = likelihood.log_likelihood(sde, mix.score_fn(sde), x, divergence="exact", rtol=1e-6, atol=1e-6, eps=1e-5)
    # As for VP/VE: dopri5 at 1e-6 leaves ~1e-5 nats; the prior N(0, T^2 I) is corrected for exactly.
    assert float((res.logp - corrected_truth(mix, sde, x, res.z)).abs().mean()) <= 1e-3


def test_deterministic_samplers_converge_to_the_exact_ode_map_at_their_order():
    # The probability-flow map of the mixture under rectified flow, by dopri5 at 1e-9 from the same prior noise.
    # Measured RMSE at 40 -> 80 steps: euler 2.5e-2 -> 1.3e-2 (first order: ratio 2), heun 5.7e-3 -> 1.7e-3,
    # dpm_solver 6.4e-3 -> 1.1e-3, unipc 4.3e-3 -> 3.7e-4 (ratios 3.4 to 12: second order or better).
    sde = RectifiedFlow()
    score = MIX.score_fn(sde)
    z = sde.prior_sampling((500, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = solvers.sample(sde, score, None, "rk45", x_T=z, rtol=1e-9, atol=1e-9, eps=1e-3).x

    def rmse(name, steps):
        x = solvers.sample(sde, score, None, name, x_T=z, steps=steps, eps=1e-3).x
        return float((x - exact).pow(2).mean().sqrt())

    ratio = rmse("euler", 40) / rmse("euler", 80)
    assert 1.8 < ratio < 2.2
    for name in ("heun", "dpm_solver", "unipc"):
        coarse, fine = rmse(name, 40), rmse(name, 80)
        assert fine < 2e-3 and coarse / fine > 3.0, (name, coarse, fine)


def test_ddim_is_euler_on_the_straight_path():
    # DDIM's x_s = alpha_bar_s x0_hat + beta_bar_s eps_hat with x_t = (1 - t) x0_hat + t eps_hat is exactly
    # x_t + (s - t)(eps_hat - x0_hat): Euler on the probability-flow velocity. Equal to float64 round-off.
    sde = RectifiedFlow()
    score = MIX.score_fn(sde)
    z = sde.prior_sampling((200, 2), torch.Generator().manual_seed(4), dtype=torch.float64)
    for grid in ("uniform", "logsnr"):
        ddim = solvers.sample(sde, score, None, "ddim", x_T=z, steps=12, grid=grid).x
        euler = solvers.sample(sde, score, None, "euler", x_T=z, steps=12, grid=grid).x
        torch.testing.assert_close(ddim, euler, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_sampler_follows_the_mixture_under_rectified_flow(name):
    check_samples_follow_the_mixture(RectifiedFlow(), name, SOLVERS[name])


def test_repaint_reaches_the_exact_conditional_under_rectified_flow():
    # The 4-D mixture of the inpainting tests, two coordinates observed. Measured (seed 0): replacement W2 = 0.81
    # with its means 0.61 short, RePaint with 10 resamplings W2 = 0.13, means within 0.11, as under VP and VE; the
    # sample means' Monte-Carlo error is 0.013.
    from test_guidance_inpaint import MISSING, N, OBSERVED, X_O, exact_conditional, gaussian_w2, run
    mean, cov = exact_conditional()
    w2 = {}
    for method, kw in (("replacement", {}), ("repaint", {"resample": 10})):
        out = run(RectifiedFlow(), method, **kw)
        assert torch.equal(out.x[:, OBSERVED], X_O.expand(N, 2))
        x = out.x[:, MISSING]
        w2[method] = gaussian_w2(x.mean(0), torch.cov(x.T), mean, cov)
    assert w2["repaint"] < w2["replacement"] / 3 and (x.mean(0) - mean).abs().max() < 0.15


def test_a_calibrated_grid_beats_the_log_snr_grid_under_rectified_flow():
    # Fitted on 256 pilot paths, judged on 1000 fresh ones against dopri5 at 1e-10. Measured at 6 unipc steps:
    # pilot 0.59 -> 0.045, fresh paths 0.59 (log-SNR grid) -> 0.050; a factor 2 is asserted.
    sde = RectifiedFlow()
    score = MIX.score_fn(sde)
    cal = solvers.calibrate_grid(sde, score, (256, 2), "unipc", steps=6, iterations=60, dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(3))
    assert cal.times[0] == sde.T and cal.error < 0.5 * cal.initial_error
    z = sde.prior_sampling((1000, 2), torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = solvers.sample(sde, score, None, "rk45", x_T=z, rtol=1e-10, atol=1e-10).x

    def rmse(**kw):
        return float((solvers.sample(sde, score, None, "unipc", x_T=z, **kw).x - exact).pow(2).mean().sqrt())
    assert rmse(grid=cal.times) < 0.5 * rmse(steps=6, grid="logsnr")
