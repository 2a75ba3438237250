"""One step of the stochastic samplers against exact Gaussian laws, and their use of random number generators."""
import math

import pytest
import torch

import solvers
from sde_lib import VPSDE, GaussianMixture
from solvers.stochastic import langevin_step

MIX = GaussianMixture(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.5, -0.5]], covs=[0.1, 0.2])
F64 = torch.float64


def build(name, sde, score_fn, **options):
    return solvers.get_solver(name)(sde, solvers.CountingScore(score_fn, 1e-3, sde.T), **options)


def time(t):
    return torch.tensor(t, dtype=F64)


def test_langevin_step_is_the_snr_rule():
    # delta = 2 (snr ||z|| / ||score||)^2 with batch-mean norms and the same z as the update: then the drift and the
    # noise of the step have mean norms in the ratio snr, which is what the signal-to-noise rule means.
    sde, t, snr = VPSDE(), time(0.5), 0.16
    solver = build("pc", sde, MIX.score_fn(sde), snr=snr)
    x = 2.0 * torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    out = langevin_step(solver, x, t, snr, torch.Generator().manual_seed(7))
    z = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    score = MIX.score(x, sde, t)
    delta = 2 * (snr * z.norm(dim=1).mean() / score.norm(dim=1).mean()) ** 2
    torch.testing.assert_close(out, x + delta * score + (2 * delta).sqrt() * z, rtol=0, atol=1e-12)
    ratio = (delta * score).norm(dim=1).mean() / ((2 * delta).sqrt() * z).norm(dim=1).mean()
    assert float(ratio) == pytest.approx(snr, rel=1e-12)


def test_langevin_step_survives_a_zero_score():
    # A zero score (an untrained network) would give an infinite step; the floor, a thousandth of the kernel's score
    # norm sqrt(D) / beta_bar, caps delta at 2 (snr ||z|| beta_bar / (1e-3 sqrt(D)))^2.
    sde, t, snr = VPSDE(), time(0.5), 0.16
    solver = build("pc", sde, lambda x, t: torch.zeros_like(x), snr=snr)
    x = torch.zeros(16, 2, dtype=F64)
    out = langevin_step(solver, x, t, snr, torch.Generator().manual_seed(7))
    z = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(7))
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
    solver = build("pc", sde, MIX.score_fn(sde), snr=snr)
    gen = torch.Generator().manual_seed(0)
    x = 3.0 + 0.5 * torch.randn(n, 2, dtype=F64, generator=gen)
    for _ in range(300):
        x = langevin_step(solver, x, t, snr, gen)
    a, b = sde.alpha_bar(t), sde.beta_bar(t)
    mean0 = (MIX.weights[:, None] * MIX.means).sum(0)
    second0 = (MIX.weights[:, None, None] * (MIX.covs + MIX.means[:, :, None] * MIX.means[:, None, :])).sum(0)
    var_t = a**2 * (second0 - torch.outer(mean0, mean0)).diagonal() + b**2
    target = var_t / (1 - snr**2)
    torch.testing.assert_close(x.mean(0), a * mean0, rtol=0, atol=4 * float(target.max() / n) ** 0.5)
    torch.testing.assert_close(x.var(0), target, rtol=0, atol=4 * float(target.max()) * (2 / (n - 1)) ** 0.5)
