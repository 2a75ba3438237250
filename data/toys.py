"""2-D toy distributions (the FFJORD set): swissroll, moons, circles, checkerboard and gmm8 (eight Gaussians on a ring).

The training set is drawn from config.seed; the test set from one fixed stream, the same for every seed.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from sklearn import datasets as skdata

from scoresde.sde_lib import GaussianMixture
from scoresde.utils import Registry

from scoresde.utils import derived_seed

from .core import DataInfo, continuous_info, labels_or_none

GMM8_RADIUS = 4.0 / math.sqrt(2.0)   # FFJORD's ring of radius 4 with std 0.5, divided by sqrt(2)
GMM8_STD = 0.5 / math.sqrt(2.0)
_TRAIN_KEY, _TEST_KEY = 101, 102


def gmm8_mixture() -> GaussianMixture:
    """The gmm8 distribution: (1/8) sum_k N(r (cos k pi/4, sin k pi/4), s^2 I), r = GMM8_RADIUS, s = GMM8_STD."""
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    means = GMM8_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(torch.full((8,), 1 / 8), means, GMM8_STD**2)


def swissroll(n: int, rng: np.random.RandomState):
    """The (x, z) plane of scikit-learn's swiss roll with noise 1, divided by 5; no labels."""
    x, _ = skdata.make_swiss_roll(n, noise=1.0, random_state=rng)
    return x[:, [0, 2]] / 5.0, None


def moons(n: int, rng: np.random.RandomState):
    """Two interleaved half circles (noise 0.1), scaled by 2 and centred; label = which moon."""
    x, y = skdata.make_moons(n, noise=0.1, random_state=rng)
    return 2.0 * x + np.array([-1.0, -0.2]), y


def circles(n: int, rng: np.random.RandomState):
    """Two concentric circles of radii 3 and 1.5 (noise 0.08 before scaling by 3); label = which circle."""
    x, y = skdata.make_circles(n, factor=0.5, noise=0.08, random_state=rng)
    return 3.0 * x, y


def checkerboard(n: int, rng: np.random.RandomState):
    """Uniform on the black squares of a 4x4 checkerboard of side 8 centred at 0; no labels."""
    x1 = rng.uniform(-2.0, 2.0, n)
    x2 = rng.uniform(0.0, 1.0, n) - 2.0 * rng.randint(0, 2, n) + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], axis=1), None


def gmm8(n: int, rng: np.random.RandomState):
    """Samples of gmm8_mixture(); label = the component (0..7, counter-clockwise from angle 0)."""
    means = gmm8_mixture().means.numpy()
    k = rng.randint(0, 8, n)
    return means[k] + GMM8_STD * rng.standard_normal((n, 2)), k


TOYS = Registry("toy", {"swissroll": swissroll, "moons": moons, "circles": circles, "checkerboard": checkerboard,
                        "gmm8": gmm8})


def load_toy(options) -> DataInfo:
    """DataInfo for the toy options.dataset: num_samples points from config.seed, num_test_samples fixed ones."""
    sample = TOYS[options.dataset]
    train_x, train_y = sample(options.num_samples, _rng(options.seed, _TRAIN_KEY))
    test_x, test_y = sample(options.num_test_samples, _rng(_TEST_KEY))
    train_y, num_classes = labels_or_none(train_y, len(train_x))
    test_y, _ = labels_or_none(test_y, len(test_x))
    mixture = gmm8_mixture() if options.dataset == "gmm8" else None
    return continuous_info(options.dataset, _tensor(train_x), train_y, _tensor(test_x), test_y, num_classes,
                           options, mixture)


def _rng(*key: int) -> np.random.RandomState:
    return np.random.RandomState(derived_seed(*key) % 2**32)


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
