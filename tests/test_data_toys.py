import math

import ml_collections
import pytest
import torch

from scoresde import data
from scoresde.sde_lib import VESDE, VPSDE

TOYS = ["swissroll", "moons", "circles", "checkerboard", "gmm8"]


def toy(name, seed=0, n=4000, n_test=500):
    config = ml_collections.ConfigDict({"data": {"dataset": name, "num_samples": n, "num_test_samples": n_test},
                                        "seed": seed})
    return data.get_dataset(config)


def stacked(dataset):
    x, y = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(x), torch.tensor(y)


@pytest.mark.parametrize("name", TOYS)
def test_shapes_sizes_and_seeding(name):
    info = toy(name)
    assert (info.name, info.shape, info.n_bins, info.is_image) == (name, (2,), None, False)
    assert (len(info.train), len(info.test)) == (4000, 500)
    x, y = stacked(info.train)
    assert x.dtype == torch.float32 and x.shape == (4000, 2)
    # Continuous data: scalers are the identity and data_range is the training set's exact (min, max).
    assert (info.data_range[0], info.data_range[1]) == (float(x.min()), float(x.max()))
    assert info.scaler(1.5) == 1.5 and info.inverse_scaler(-2.0) == -2.0
    if info.num_classes is None:
        assert (y == data.NO_LABEL).all()
    else:
        assert set(y.tolist()) == set(range(info.num_classes))
    again, other = toy(name), toy(name, seed=1)
    assert torch.equal(stacked(again.train)[0], x)
    assert not torch.allclose(stacked(other.train)[0], x)
    # The test set is one fixed stream: the same for every seed and every training-set size.
    assert torch.equal(stacked(other.test)[0], stacked(info.test)[0])
    assert torch.equal(stacked(toy(name, n=100).test)[0], stacked(info.test)[0])


def test_checkerboard_is_uniform_on_the_black_squares():
    x, _ = stacked(toy("checkerboard", n=16000).train)
    cells = torch.floor(x / 2).long()
    assert ((cells.sum(1) % 2) == 0).all()           # every point on a black square (exact)
    assert (x.abs() <= 4).all()
    counts = torch.bincount(((cells[:, 0] + 2) * 4 + cells[:, 1] + 2), minlength=16).double()
    # Each of the 8 black squares has probability 1/8: count SE = sqrt(n p (1-p)) ~ 42 of 2000; allow 5 SE.
    black = counts[counts > 0]
    assert len(black) == 8 and ((black - 2000).abs() < 210).all()


def test_circles_and_moons_labels_name_their_component():
    x, y = stacked(toy("circles").train)
    r = x.norm(dim=1)
    # Radii 3 and 1.5 with per-coordinate noise 0.24: each mean radius has SE ~ 0.24/sqrt(2000) ~ 0.005.
    assert float(r[y == 0].mean()) == pytest.approx(3.0, abs=0.03)
    assert float(r[y == 1].mean()) == pytest.approx(1.5, abs=0.03)
    x, y = stacked(toy("moons").train)
    # Moon means (0, 2/pi) (upper, label 0) and (1, 0.5 - 2/pi), times 2 plus (-1, -0.2): (-1, 1.07), (1, -0.47).
    # Noise 0.2 and arc spread ~1.4 give SEs < 0.04; allow 0.1.
    torch.testing.assert_close(x[y == 0].mean(0), torch.tensor([-1.0, 4 / math.pi - 0.2]), atol=0.1, rtol=0)
    torch.testing.assert_close(x[y == 1].mean(0), torch.tensor([1.0, 0.8 - 4 / math.pi]), atol=0.1, rtol=0)


def test_gmm8_mixture_is_the_sampled_distribution():
    info = toy("gmm8", n=20000)
    mix = info.mixture
    assert mix.dim == 2 and len(mix.weights) == 8
    x, y = stacked(info.train)
    # Labels are the components: each point lies within 6 std of its component mean (P(miss) ~ 1e-8 per point).
    assert ((x.double() - mix.means[y]).norm(dim=1) < 6 * data.GMM8_STD).all()
    # Moments: mean 0, covariance (r^2/2 + s^2) I = 4.125 I. SE of a mean ~ sqrt(4.1/2e4) = 0.014, of a variance
    # ~ 0.02 (ring + noise kurtosis); allow ~4 SE.
    torch.testing.assert_close(x.double().mean(0), torch.zeros(2, dtype=torch.float64), atol=0.06, rtol=0)
    cov = torch.cov(x.double().T)
    expected = (data.GMM8_RADIUS**2 / 2 + data.GMM8_STD**2) * torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(cov, expected, atol=0.1, rtol=0)


@pytest.mark.parametrize("sde,t", [(None, None), (VPSDE(), 0.3), (VESDE(sigma_max=5.0), 0.6)],
                         ids=["data", "vp", "ve"])
def test_gmm8_exact_score_satisfies_steins_identity_on_the_samples(sde, t):
    # Stein: E[score(x_t) x_t^T] = -I for the true score of x_t's density, whatever that density is. Samples come
    # from the dataset (noised with the SDE's exact transition), the score from the mixture: a wrong mixture
    # (radius, std, weights) or wrong samples break the identity.
    info = toy("gmm8", n=20000)
    x, _ = stacked(info.train)
    x = x.double()
    if sde is not None:
        eps = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        tt = torch.full((len(x),), t, dtype=torch.float64)
        x = sde.alpha_bar(tt)[:, None] * x + sde.beta_bar(tt)[:, None] * eps
        score = info.mixture.score_fn(sde)(x, tt)
    else:
        score = info.mixture.score(x)
    products = score[:, :, None] * x[:, None, :]
    mean = products.mean(0)
    se = products.std(0) / math.sqrt(len(x))
    # Per-entry Monte-Carlo standard error measured on the sample itself; 5 SE.
    assert ((mean + torch.eye(2, dtype=torch.float64)).abs() < 5 * se).all(), (mean, se)
    # The check has power: a mixture with a 10% larger radius violates it by many standard errors.
    wrong = data.gmm8_mixture()
    wrong.means = wrong.means * 1.1
    bad = (wrong.score(x, sde, t if sde is not None else None)[:, :, None] * x[:, None, :]).mean(0)
    assert ((bad + torch.eye(2, dtype=torch.float64)).abs() > 10 * se).any()
