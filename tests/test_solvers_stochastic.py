"""One step of the stochastic samplers against exact Gaussian laws, and their use of random number generators."""
import math

import pytest
import torch
from oracles import MIX

from scoresde import solvers
from scoresde.sde_lib import VESDE, VPSDE, GaussianMixture
from scoresde.solvers.steps import langevin_step

F64 = torch.float64


def build(name, sde, score_fn, **options):
    return solvers.get_solver(name)(sde, solvers.CountingScore(score_fn, 1e-3, sde.T), **options)


def time(t):
    return torch.tensor(t, dtype=F64)


def test_langevin_step_is_the_snr_rule():
    # delta = 2 (snr ||z|| / ||score||)^2 with batch-mean norms and the same z as the update: then the drift and the
    # noise of the step have mean norms in the ratio snr, which is what the signal-to-noise rule means.
    sde, t, snr = VPSDE(), time(0.5), 0.16
    x = 2.0 * torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    z = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    score = MIX.score(x, sde, t)
    out = langevin_step(sde, x, score, z, t, snr)
    delta = 2 * (snr * z.norm(dim=1).mean() / score.norm(dim=1).mean()) ** 2
    torch.testing.assert_close(out, x + delta * score + (2 * delta).sqrt() * z, rtol=0, atol=1e-12)
    ratio = (delta * score).norm(dim=1).mean() / ((2 * delta).sqrt() * z).norm(dim=1).mean()
    assert float(ratio) == pytest.approx(snr, rel=1e-12)


def test_langevin_step_survives_a_zero_score():
    # A zero score (an untrained network) would give an infinite step; the floor, a thousandth of the kernel's score
    # norm sqrt(D) / beta_bar, caps delta at 2 (snr ||z|| beta_bar / (1e-3 sqrt(D)))^2.
    sde, t, snr = VPSDE(), time(0.5), 0.16
    x = torch.zeros(16, 2, dtype=F64)
    z = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    out = langevin_step(sde, x, torch.zeros_like(x), z, t, snr)
    delta = 2 * (snr * z.norm(dim=1).mean() * sde.beta_bar(t) / (1e-3 * math.sqrt(2))) ** 2
    torch.testing.assert_close(out, (2 * delta).sqrt() * z, rtol=1e-12, atol=0)


def test_langevin_corrector_alone_converges_to_p_t():
    # Corrector only, at VP t = 0.9 where p_t is N(m, S) up to O(alpha_bar^2) = 3e-4, from the wrong N(3, 0.25 I).
    # With delta = 2 snr^2 sigma^2 (batch means of ||z|| and ||score|| at stationarity) the chain's exact stationary
    # law on N(m, sigma^2) is N(m, sigma^2 / (1 - snr^2)): the discretisation bias, 2.6% at snr 0.16. The approach
    # to the target takes ~175 steps (the step is small while the score is large), then errors contract by
    # 1 - 2 snr^2 = 0.95 per step, so after 300 the start is forgotten to 1e-4. Tolerances: 4 standard errors over
    # N independent chains, sqrt(var / N) = 0.010 for the mean and var sqrt(2 / N) = 0.015 for the variance.
    # The old step (times alpha_bar^2 = 3e-4) leaves the samples at 3; per-sample norms give a variance of 1.5
    # (with the old floor ||score||^2 >= D / beta_bar^2) to 30 (without it).
    sde, t, snr, n = VPSDE(), time(0.9), 0.16, 10_000
    gen = torch.Generator().manual_seed(0)
    x = 3.0 + 0.5 * torch.randn(n, 2, dtype=F64, generator=gen)
    for _ in range(300):
        x = langevin_step(sde, x, MIX.score(x, sde, t), torch.randn(x.shape, dtype=F64, generator=gen), t, snr)
    a, b = sde.alpha_bar(t), sde.beta_bar(t)
    mean0 = (MIX.weights[:, None] * MIX.means).sum(0)
    second0 = (MIX.weights[:, None, None] * (MIX.covs + MIX.means[:, :, None] * MIX.means[:, None, :])).sum(0)
    var_t = a**2 * (second0 - torch.outer(mean0, mean0)).diagonal() + b**2
    target = var_t / (1 - snr**2)
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


def test_per_sample_langevin_step_uses_each_samples_score_norm():
    # step_size="per_sample": delta_i = 2 (snr sqrt(D) / ||score_i||)^2, the sample's own score norm and the noise's
    # typical norm sqrt(D), so a sample's step does not depend on the rest of the batch.
    sde, t, snr = VPSDE(), time(0.5), 0.16
    x = 2.0 * torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    z = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    score = MIX.score(x, sde, t)
    out = langevin_step(sde, x, score, z, t, snr, "per_sample")
    delta = (2 * (snr * math.sqrt(2) / score.norm(dim=1)) ** 2)[:, None]
    torch.testing.assert_close(out, x + delta * score + (2 * delta).sqrt() * z, rtol=0, atol=1e-12)
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
