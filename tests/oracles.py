"""Reference values the tests compare against, written independently of the library code they check.

MIX: the two-component mixture the solver tests sample. moments: a mixture's mean and covariance from its
parameters. relative_score_error: how far a learned score is from a mixture's exact one (sde_lib.GaussianMixture.score)
on x_t ~ p_t. energy_distance and permutation_null: a two-sample test that samples follow a target distribution.
"""
import torch

from scoresde.sde_lib import GaussianMixture

# Unequal weights and spreads, means 2.7 apart: the score turns sharply between the modes, which separates the
# solvers' orders, and neither component is negligible. The errors, orders and calibration gains quoted in the
# solver tests were measured on exactly these parameters.
MIX = GaussianMixture(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.5, -0.5]], covs=[0.1, 0.2])


def moments(mixture) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, covariance) of x_0 ~ mixture: sum_k w_k mu_k and sum_k w_k (S_k + mu_k mu_k^T) - mean mean^T."""
    w, mu = mixture.weights, mixture.means
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (mixture.covs + mu[:, :, None] * mu[:, None, :])).sum(0)
    return mean, second - torch.outer(mean, mean)


def noised(mixture, sde, t: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws of x_t = alpha_bar(t) x_0 + beta_bar(t) z with x_0 ~ mixture, in float64."""
    x0 = mixture.sample(n, generator=generator).double()
    tt = torch.full((n,), float(t), dtype=torch.float64)
    z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    return sde.alpha_bar(tt)[:, None] * x0 + sde.beta_bar(tt)[:, None] * z


def relative_score_error(score_fn, sde, mixture, t: float, n: int = 4000, seed: int = 0) -> float:
    """E|s(x_t, t) - s*(x_t, t)|^2 / E|s*(x_t, t)|^2 over x_t ~ p_t (n draws); s* is the mixture's exact score.

    A zero score scores 1.0 exactly; score_fn is called on float32 inputs (as a network is), compared in float64.
    """
    x = noised(mixture, sde, t, n, torch.Generator().manual_seed(seed))
    exact = mixture.score(x, sde, torch.full((n,), float(t), dtype=torch.float64))
    with torch.no_grad():
        learned = score_fn(x.float(), torch.full((n,), float(t))).double()
    return float((learned - exact).square().sum(1).mean() / exact.square().sum(1).mean())


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """U-statistic of 2 E|X - Y| - E|X - X'| - E|Y - Y'| (zero in expectation when X ~ Y)."""
    n, m = len(x), len(y)
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).sum() / (n * (n - 1))
            - torch.cdist(y, y).sum() / (m * (m - 1)))


def permutation_null(x: torch.Tensor, y: torch.Tensor, rounds: int = 20, seed: int = 0) -> torch.Tensor:
    """Energy distances of random re-splits of the pooled samples: the statistic's spread when X ~ Y."""
    pooled, gen = torch.cat([x, y]), torch.Generator().manual_seed(seed)
    out = []
    for _ in range(rounds):
        p = pooled[torch.randperm(len(pooled), generator=gen)]
        out.append(float(energy_distance(p[:len(x)], p[len(x):])))
    return torch.tensor(out)
