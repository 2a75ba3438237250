import numpy as np
import pytest
import torch
from oracles import moments
from scipy import stats

from scoresde.sde_lib import GaussianMixture, SubVPSDE, VESDE, VPSDE

# Not oracles.MIX: full covariances with off-diagonal terms, in 3-D, so that log_prob and the score go through a
# non-trivial eigendecomposition of each component.
CORRELATED = GaussianMixture(weights=[0.3, 0.7], means=[[-1.0, 0.5, 0.0], [1.5, -0.5, 1.0]],
                      covs=np.array([[[0.3, 0.1, 0.0], [0.1, 0.2, 0.0], [0.0, 0.0, 0.1]], np.diag([0.05, 0.4, 0.2])]))


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "subvp", "ve"])
def test_log_prob_matches_scipy_and_score_is_its_gradient(sde):
    gen = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(6, 3, dtype=torch.float64, generator=gen)
    t = torch.tensor([0.0, 0.01, 0.1, 0.3, 0.7, 1.0], dtype=torch.float64)
    logp = CORRELATED.log_prob(x, sde, t)
    for i in range(6):
        a, b = float(sde.alpha_bar(t[i])), float(sde.beta_bar(t[i]))
        dens = sum(w * stats.multivariate_normal(a * m, a**2 * c + b**2 * np.eye(3)).pdf(x[i].numpy())
                   for w, m, c in zip(CORRELATED.weights.numpy(), CORRELATED.means.numpy(), CORRELATED.covs.numpy()))
        assert float(logp[i]) == pytest.approx(np.log(dens), rel=1e-10, abs=1e-10)
    xg = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(CORRELATED.log_prob(xg, sde, t).sum(), xg)
    torch.testing.assert_close(CORRELATED.score(x, sde, t), grad, rtol=1e-10, atol=1e-10)


def test_samples_have_the_mixture_moments():
    n = 200000
    x = CORRELATED.sample(n, generator=torch.Generator().manual_seed(0))
    mean, cov = moments(CORRELATED)
    # Standard error of each mean is sqrt(cov_ii / n) < 3e-3; of each covariance entry < 5e-3. Tolerance ~4 SE.
    torch.testing.assert_close(x.mean(0), mean, atol=1.2e-2, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=2e-2, rtol=0)


def test_event_shape_and_errors():
    mix = GaussianMixture([1.0], torch.zeros(1, 4), 1.0, event_shape=(1, 2, 2))
    x = mix.sample(5)
    assert x.shape == (5, 1, 2, 2)
    assert mix.score(x.float(), VPSDE(), 0.5).shape == (5, 1, 2, 2)
    with pytest.raises(ValueError, match="expected weights"):
        GaussianMixture([0.5, 0.5], torch.zeros(1, 2), 1.0)
