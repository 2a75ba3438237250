"""One step of the stochastic samplers against exact Gaussian laws, and their use of random number generators."""
import math

import pytest
import torch
from oracles import MIX, moments

from scoresde import solvers
from scoresde.sde_lib import VESDE, VPSDE, GaussianMixture
from scoresde.solvers.steps import langevin_step

F64 = torch.float64


def build(name, sde, score_fn, **options):
    return solvers.get_solver(name)(sde, solvers.CountingScore(score_fn, 1e-3, sde.T), **options)


def time(t):
    return torch.tensor(t, dtype=F64)


def split(step, score, z):
    """(c1, c2, residual) of the least-squares fit step = c1 score + c2 z, one pair per row of the (N, D) inputs."""
    basis = torch.stack([score, z], -1)
    coef = torch.linalg.lstsq(basis, step[..., None]).solution
    return coef[:, 0, 0], coef[:, 1, 0], (basis @ coef)[..., 0] - step


def test_langevin_step_is_a_langevin_step_with_drift_and_noise_in_the_ratio_snr():
    # Langevin dynamics dx = score dt + sqrt(2) dw, one Euler step of size delta: x + delta score + sqrt(2 delta) z,
    # and Song et al.'s rule (2021, Alg. 5) picks delta so that the drift and the noise have batch-mean norms in the
    # ratio snr. Fitted to the step as one (c1, c2) for the whole batch: the fit is exact (residual at round-off),
    # c2^2 = 2 c1, and c1 mean||score|| / (c2 mean||z||) = snr, all to float64 round-off (1e-10 relative).
    sde, t, snr = VPSDE(), time(0.5), 0.16
    x = 2.0 * torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    z = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    score = MIX.score(x, sde, t)
    step = langevin_step(sde, x, score, z, t, snr) - x
    c1, c2, residual = split(step.flatten()[None], score.flatten()[None], z.flatten()[None])
    assert float(residual.abs().max()) <= 1e-12 * float(c2.abs()) and float(c1) > 0
    assert float(c2**2) == pytest.approx(2 * float(c1), rel=1e-10)
    ratio = c1 * score.norm(dim=1).mean() / (c2 * z.norm(dim=1).mean())
    assert float(ratio) == pytest.approx(snr, rel=1e-10)


def test_langevin_chain_keeps_a_gaussian_p_t_up_to_the_discretisation():
    # For p_t = N(m, v I) the step is linear: x' - m = (1 - delta/v)(x - m) + sqrt(2 delta) z. At stationarity
    # (variance w) the rule's batch means give delta = 2 snr^2 v^2 / w, and w = (1 - delta/v)^2 w + 2 delta solves
    # to w = v (1 + snr^2): 1.25 v at snr = 0.5, where a delta off by 2x either way would give 1.5 v or 1.125 v.
    # Started from p_t itself (VP at t = 0.5, data N(mu, 0.3 I)), 40 corrector steps contract the start by
    # (1 - 0.4)^40 < 1e-8. Tolerances: 4 standard errors over N = 20000 chains, sqrt(w / N) for each coordinate's
    # mean and w sqrt(2 / N) for its variance (4 x 1%).
    sde, t, snr, n = VPSDE(), time(0.5), 0.5, 20_000
    mu, lam = torch.tensor([0.7, -0.4], dtype=F64), 0.3
    a, b = sde.alpha_bar(t), sde.beta_bar(t)
    v = a**2 * lam + b**2
    gen = torch.Generator().manual_seed(0)
    x = a * mu + v.sqrt() * torch.randn(n, 2, dtype=F64, generator=gen)
    for _ in range(40):
        x = langevin_step(sde, x, -(x - a * mu) / v, torch.randn(x.shape, dtype=F64, generator=gen), t, snr)
    w = v * (1 + snr**2)
    torch.testing.assert_close(x.mean(0), a * mu, rtol=0, atol=4 * float(w / n) ** 0.5)
    torch.testing.assert_close(x.var(0), w.expand(2), rtol=4 * (2 / n) ** 0.5, atol=0)


def test_langevin_step_with_a_zero_score_is_noise_at_the_floor():
    # A zero score (an untrained network) would make delta infinite. Below a floor of a thousandth of the noise
    # kernel's score norm sqrt(D) / beta_bar the rule takes the floor as the score's norm: the step is pure noise
    # c z (one c for the batch), with delta = c^2 / 2 putting a score of the floor's norm and the noise in the ratio
    # snr. To round-off (1e-12 relative).
    sde, t, snr = VPSDE(), time(0.5), 0.16
    x = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    z = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    step = langevin_step(sde, x, torch.zeros_like(x), z, t, snr) - x
    c = (step * z).sum() / z.square().sum()
    torch.testing.assert_close(step, c * z, rtol=0, atol=1e-12 * float(c))
    floor = 1e-3 * math.sqrt(2) / sde.beta_bar(t)
    assert float(c**2 / 2 * floor / (c * z.norm(dim=1).mean())) == pytest.approx(snr, rel=1e-12)


def test_langevin_corrector_alone_converges_to_p_t():
    # Corrector only, at VP t = 0.9 where p_t is N(m, S) up to O(alpha_bar^2) = 3e-4, from the wrong N(3, 0.25 I).
    # On N(m, sigma^2) the chain's stationary law is N(m, sigma^2 (1 + snr^2)) (derived in the test above): the
    # discretisation bias, 2.6% at snr 0.16. The approach to the target takes ~175 steps (the step is small while
    # the score is large), then errors contract by 1 - 2 snr^2 = 0.95 per step, so after 300 the start is forgotten
    # to 1e-4. Tolerances: 4 standard errors over N independent chains, sqrt(var / N) = 0.010 for the mean and
    # var sqrt(2 / N) = 0.015 for the variance.
    # The old step (times alpha_bar^2 = 3e-4) leaves the samples at 3; per-sample norms give a variance of 1.5
    # (with the old floor ||score||^2 >= D / beta_bar^2) to 30 (without it).
    sde, t, snr, n = VPSDE(), time(0.9), 0.16, 10_000
    gen = torch.Generator().manual_seed(0)
    x = 3.0 + 0.5 * torch.randn(n, 2, dtype=F64, generator=gen)
    for _ in range(300):
        x = langevin_step(sde, x, MIX.score(x, sde, t), torch.randn(x.shape, dtype=F64, generator=gen), t, snr)
    a, b = sde.alpha_bar(t), sde.beta_bar(t)
    mean0, cov0 = moments(MIX)
    target = (a**2 * cov0.diagonal() + b**2) * (1 + snr**2)
    torch.testing.assert_close(x.mean(0), a * mean0, rtol=0, atol=4 * float(target.max() / n) ** 0.5)
    torch.testing.assert_close(x.var(0), target, rtol=0, atol=4 * float(target.max()) * (2 / (n - 1)) ** 0.5)


def joint_gaussian(sde, mu, lam, x_t, t, s):
    """For x_0 ~ N(mu, lam I): (E[x_s | x_t], Var[x_s | x_t]) from the marginal at s and the Markov transition
    x_t = a x_s + sqrt(v) z alone, with none of the solvers' posterior formulas."""
    a, v = sde.transition(s, t)
    var_s = sde.alpha_bar(s) ** 2 * lam + sde.beta_bar(s) ** 2
    var_t = a**2 * var_s + v
    mean = sde.alpha_bar(s) * mu + a * var_s / var_t * (x_t - sde.alpha_bar(t) * mu)
    return mean, var_s - (a * var_s) ** 2 / var_t


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=20.0)], ids=["vp", "ve"])
@pytest.mark.parametrize("lam", [0.0, 0.3], ids=["point", "gaussian"])
def test_one_ancestral_step_is_the_posterior_given_x_t(sde, lam):
    # From one fixed x_t, one ancestral step (eta = 1) to s < t, 100k draws. Its mean must be E[x_s | x_t] for any
    # data: the step puts x0_hat = E[x_0 | x_t] where the DDPM posterior mean is linear in x_0. Its variance is
    # sigma^2 = beta_bar_s^2 v / beta_bar_t^2 (v the transition variance s -> t), the exact Var[x_s | x_t] when the
    # data is a point (lam = 0); for spread data the step leaves out the posterior spread of x_0, as DDPM does.
    # Tolerances: 4 standard errors, sqrt(var / N) for the mean and var sqrt(2 / N) for the variance.
    t, s, n = time(0.6), time(0.4), 100_000
    mu = torch.tensor([0.7, -0.4], dtype=F64)
    data = GaussianMixture([1.0], mu[None], [lam])
    solver = build("ancestral", sde, data.score_fn(sde), eta=1.0)
    x_t = (sde.alpha_bar(t) * mu + sde.beta_bar(t) * torch.tensor([1.0, -0.5], dtype=F64)).expand(n, 2)
    x_s = solver.integrate(x_t, torch.stack([t, s]), generator=torch.Generator().manual_seed(0), denoise=False)
    mean, exact_var = joint_gaussian(sde, mu, lam, x_t[0], t, s)
    _, v = sde.transition(s, t)
    sigma2 = sde.beta_bar(s) ** 2 * v / sde.beta_bar(t) ** 2
    if lam == 0.0:
        torch.testing.assert_close(sigma2, exact_var, rtol=1e-12, atol=0)
    torch.testing.assert_close(x_s.mean(0), mean, rtol=0, atol=4 * float(sigma2 / n) ** 0.5)
    torch.testing.assert_close(x_s.var(0), sigma2.expand(2), rtol=4 * (2 / (n - 1)) ** 0.5, atol=0)


def test_ancestral_eta_scales_the_step_std():
    # DDIM's family (Song, Meng & Ermon 2021, eq. 7) for a known x_0 = mu: q(x_s | x_t, x_0) has std eta sigma and mean
    # alpha_bar_s x_0 + sqrt(beta_bar_s^2 - eta^2 sigma^2) (x_t - alpha_bar_t x_0) / beta_bar_t. Tolerances as above.
    sde, t, s, n, eta = VPSDE(), time(0.6), time(0.4), 100_000, 0.5
    mu = torch.tensor([0.7, -0.4], dtype=F64)
    solver = build("ancestral", sde, GaussianMixture([1.0], mu[None], [0.0]).score_fn(sde), eta=eta)
    eps = torch.tensor([1.0, -0.5], dtype=F64)
    x_t = (sde.alpha_bar(t) * mu + sde.beta_bar(t) * eps).expand(n, 2)
    x_s = solver.integrate(x_t, torch.stack([t, s]), generator=torch.Generator().manual_seed(2), denoise=False)
    _, v = sde.transition(s, t)
    var = eta**2 * sde.beta_bar(s) ** 2 * v / sde.beta_bar(t) ** 2
    mean = sde.alpha_bar(s) * mu + (sde.beta_bar(s) ** 2 - var).sqrt() * eps
    torch.testing.assert_close(x_s.mean(0), mean, rtol=0, atol=4 * float(var / n) ** 0.5)
    torch.testing.assert_close(x_s.var(0), var.expand(2), rtol=4 * (2 / (n - 1)) ** 0.5, atol=0)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ancestral_step_keeps_the_marginals_for_every_eta(eta):
    # For a point mass x0_hat = x_0 exactly, and every member of the DDIM family q_eta(x_s | x_t, x_0) maps
    # p_t = N(alpha_bar_t mu, beta_bar_t^2 I) to p_s = N(alpha_bar_s mu, beta_bar_s^2 I). Tolerances: 4 standard
    # errors at N = 100k, as above.
    sde, t, s, n = VPSDE(), time(0.6), time(0.4), 100_000
    mu = torch.tensor([0.7, -0.4], dtype=F64)
    data = GaussianMixture([1.0], mu[None], [0.0])
    solver = build("ancestral", sde, data.score_fn(sde), eta=eta)
    gen = torch.Generator().manual_seed(1)
    x_t = sde.alpha_bar(t) * mu + sde.beta_bar(t) * torch.randn(n, 2, dtype=F64, generator=gen)
    x_s = solver.integrate(x_t, torch.stack([t, s]), generator=gen, denoise=False)
    var_s = sde.beta_bar(s) ** 2
    torch.testing.assert_close(x_s.mean(0), sde.alpha_bar(s) * mu, rtol=0, atol=4 * float(var_s / n) ** 0.5)
    torch.testing.assert_close(x_s.var(0), var_s.expand(2), rtol=4 * (2 / (n - 1)) ** 0.5, atol=0)


@pytest.mark.parametrize("name", ["euler_maruyama", "pc", "ancestral", "sde_euler"])
def test_sampling_without_a_generator_leaves_the_global_rng_alone(name):
    sde = VPSDE()
    x_T = sde.prior_sampling((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    state = torch.random.get_rng_state()
    runs = [solvers.sample(sde, MIX.score_fn(sde), None, name, x_T=x_T, steps=3).x for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state)
    # Each call still draws fresh noise.
    assert not torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("solver", ["euler_maruyama", "ancestral", "sde_euler", "sde_srk"])
def test_per_sample_generators_make_samples_independent_of_the_batch(solver):
    # Sample i draws its prior noise and every step's noise (for torchsde: its own Brownian path) from generator i
    # alone, so splitting 10 samples into batches of 3 and 7 changes nothing but round-off.
    sde = VPSDE()
    whole = solvers.sample(sde, MIX.score_fn(sde), (10, 2), solver, steps=20, dtype=F64,
                           generator=solvers.SampleGenerators(5, range(10))).x
    parts = torch.cat([solvers.sample(sde, MIX.score_fn(sde), (n, 2), solver, steps=20, dtype=F64,
                                      generator=solvers.SampleGenerators(5, range(i, i + n))).x
                       for i, n in ((0, 3), (3, 7))])
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-12)
    # A different seed is different noise: the samples move by O(1), not round-off.
    other = solvers.sample(sde, MIX.score_fn(sde), (10, 2), solver, steps=20, dtype=F64,
                           generator=solvers.SampleGenerators(6, range(10))).x
    assert (other - whole).abs().mean() > 0.1


def test_per_sample_langevin_step_is_each_samples_own():
    # step_size="per_sample": each sample takes its own Langevin step x_i + delta_i score_i + sqrt(2 delta_i) z_i, its
    # drift in the ratio snr to the noise's typical norm sqrt(D) (not to its own ||z_i||, which would couple the step
    # to the noise it scales), so a sample's step does not depend on the rest of the batch. Fitted per sample in 3-D
    # (an overdetermined fit, so the residual tests the form): exact, c2^2 = 2 c1 and c1 ||score_i|| / (c2 sqrt(3))
    # = snr, to round-off (1e-9 relative for these 3x2 fits); the first 5 rows alone step exactly as in the batch.
    sde, t, snr = VPSDE(), time(0.5), 0.16
    gen = torch.Generator().manual_seed(3)
    x = 2.0 * torch.randn(64, 3, dtype=F64, generator=gen)
    z = torch.randn(x.shape, dtype=F64, generator=gen)
    score = -x / float(sde.alpha_bar(t) ** 2 + sde.beta_bar(t) ** 2)     # data N(0, I)
    step = langevin_step(sde, x, score, z, t, snr, "per_sample") - x
    c1, c2, residual = split(step, score, z)
    assert float(residual.abs().max()) <= 1e-12 * float(c2.abs().max()) and (c1 > 0).all()
    torch.testing.assert_close(c2**2, 2 * c1, rtol=1e-9, atol=0)
    torch.testing.assert_close(c1 * score.norm(dim=1) / (c2 * math.sqrt(3)), torch.full_like(c1, snr), rtol=1e-9,
                               atol=0)
    alone = langevin_step(sde, x[:5], score[:5], z[:5], t, snr, "per_sample") - x[:5]
    torch.testing.assert_close(alone, step[:5], rtol=1e-15, atol=0)
    # The batch rule, by contrast, takes its step from batch means.
    batch = langevin_step(sde, x[:5], score[:5], z[:5], t, snr) - langevin_step(sde, x, score, z, t, snr)[:5]
    assert float(batch.abs().max()) > 1e-3
    with pytest.raises(ValueError, match="unknown Langevin step_size 'each'; available: batch, per_sample"):
        solvers.sample(sde, MIX.score_fn(sde), (4, 2), "pc", steps=2, step_size="each")


def test_per_sample_langevin_targets_p_times_score_norm_squared():
    # A step delta(x) ~ 1 / ||score(x)||^2 makes Langevin target p(x) ||score(x)||^2 instead of p: for p = N(0, I)
    # in D = 8 a variance (D + 2)/D = 1.25 per coordinate, times the discretisation's 1/(1 - snr^2) (0.25% at
    # snr 0.05), where the batch rule gives 1.0025. From N(0, I) the chain relaxes at rate delta ~ 2 snr^2 = 0.005
    # per step, so 1000 steps leave e^-5 of the start. Tolerance 0.04: 4 standard errors of a variance over 8e4
    # coordinates (1.25 sqrt(2 / 8e4) = 0.006) widened 1.5x for the radial coupling of the coordinates.
    sde, t, snr, d = VPSDE(), time(0.5), 0.05, 8
    var_t = float(sde.alpha_bar(t) ** 2 + sde.beta_bar(t) ** 2)      # data N(0, I): p_t = N(0, var_t I)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, d, dtype=F64, generator=gen) * var_t**0.5
    for _ in range(1000):
        x = langevin_step(sde, x, -x / var_t, torch.randn(x.shape, dtype=F64, generator=gen), t, snr, "per_sample")
    expected = var_t * (d + 2) / d / (1 - snr**2)
    assert float(x.var(0).mean()) == pytest.approx(expected, abs=0.04)
