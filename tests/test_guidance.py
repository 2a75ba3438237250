"""Classifier-free and classifier guidance against exact oracles: a Gaussian mixture whose components are the classes.

Under any SDE, p_t(x | y = k) is component k's N(alpha_bar mu_k, alpha_bar^2 Sigma_k + beta_bar^2 I) and the exact
noise-conditional classifier p_t(y | x) is the component responsibility, so guided scores and guided samples have
closed-form targets.
"""
import math

import pytest
import torch
from torch import nn

from scoresde import guidance
from scoresde import models
from scoresde import solvers
from scoresde.sde_lib import VESDE, VPSDE, CosineVPSDE, GaussianMixture, SubVPSDE

WEIGHTS = [0.5, 0.3, 0.2]
MEANS = [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]]
COVS = [[[0.30, 0.10], [0.10, 0.20]], [[0.25, 0.0], [0.0, 0.25]], [[0.15, -0.05], [-0.05, 0.35]]]
MIXTURE = GaussianMixture(WEIGHTS, MEANS, COVS)
CLASSES = [GaussianMixture([1.0], [MEANS[k]], [COVS[k]]) for k in range(3)]
SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_max=6.0), CosineVPSDE()]


class ExactClassifier:
    """logits_fn(x, t): log p_t(y | x), the mixture responsibilities."""

    def __init__(self, sde):
        self.sde = sde

    def __call__(self, x, t):
        return MIXTURE.responsibilities(x, self.sde, t).log()


class ExactConditionalScore:
    """(x, t, y) -> grad log p_t(x | y) per sample, and grad log p_t(x) (the whole mixture) for the null label None."""

    def __init__(self, sde):
        self.sde = sde

    def __call__(self, x, t, y):
        out = MIXTURE.score(x, self.sde, t)
        if y is None:
            return out
        for k, part in enumerate(CLASSES):
            out = torch.where((y == k)[:, None], part.score(x, self.sde, t), out)
        return out


def random_points(sde, n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = 1e-3 + (sde.T - 1e-3) * torch.rand(n, dtype=torch.float64, generator=gen)
    return 3.0 * torch.randn(n, 2, dtype=torch.float64, generator=gen), t


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_classifier_guidance_with_the_exact_classifier_is_the_class_score(sde):
    # Bayes: grad log p_t(x) + grad log p_t(y | x) = grad log p_t(x | y) exactly; float64 round-off only.
    x, t = random_points(sde)
    labels = [0, 1, 2]
    guided = guidance.ClassifierGuidance(MIXTURE.score_fn(sde), ExactClassifier(sde), labels, scale=1.0)(x, t)
    y = guidance.batch_labels(labels, len(x), "cpu")
    torch.testing.assert_close(guided, ExactConditionalScore(sde)(x, t, y), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_classifier_free_guidance_is_classifier_guidance_with_scale_one_plus_omega(sde):
    # (1 + w) grad log p(x|y) - w grad log p(x) = grad log p(x) + (1 + w) grad log p(y|x): the two wrappers must agree
    # to round-off, and w = 0 must be the conditional score itself.
    x, t = random_points(sde, seed=1)
    cond = ExactConditionalScore(sde)
    for omega in (0.0, 0.5, 3.0):
        cfg = guidance.ClassifierFreeGuidance(cond, 2, omega=omega)(x, t)
        cg = guidance.ClassifierGuidance(MIXTURE.score_fn(sde), ExactClassifier(sde), 2, scale=1.0 + omega)(x, t)
        torch.testing.assert_close(cfg, cg, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(guidance.ClassifierFreeGuidance(cond, 2, omega=0.0)(x, t),
                               CLASSES[2].score(x, sde, t), rtol=1e-12, atol=1e-12)


def sample_moments(score_fn, sde, solver, steps, n=2000, seed=0):
    x = solvers.sample(sde, score_fn, (n, 2), solver=solver, steps=steps, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64).x
    return x, x.mean(0), torch.cov(x.T)


@pytest.mark.parametrize("solver, steps", [("heun", 40), ("euler_maruyama", 200)])
@pytest.mark.parametrize("kind", ["classifier", "classifier_free"])
def test_guided_sampling_draws_exactly_from_the_class(solver, steps, kind):
    # gamma = 1 with the exact classifier, or omega = 0 with the exact conditional score, is exactly p(x | y = 1):
    # N(mu_1, 0.25 I). With n = 2000 samples the standard error of each mean coordinate is 0.5/sqrt(2000) = 0.011
    # and of each variance 0.25 sqrt(2/2000) = 0.008; the tolerances are 4 standard errors plus 0.02 for the
    # discretisation error of the solver (heun is second order at 40 steps, EM first order at 200).
    sde = VPSDE()
    if kind == "classifier":
        score_fn = guidance.ClassifierGuidance(MIXTURE.score_fn(sde), ExactClassifier(sde), 1, scale=1.0)
    else:
        score_fn = guidance.ClassifierFreeGuidance(ExactConditionalScore(sde), 1, omega=0.0)
    x, mean, cov = sample_moments(score_fn, sde, solver, steps)
    assert (mean - torch.tensor(MEANS[1], dtype=torch.float64)).abs().max() < 4 * 0.011 + 0.02
    assert (cov - torch.tensor(COVS[1], dtype=torch.float64)).abs().max() < 4 * 0.008 + 0.02
    # Every sample belongs to class 1: the other components are > 3 class standard deviations away.
    assert MIXTURE.responsibilities(x).argmax(1).eq(1).double().mean() > 0.995


def test_unguided_sampling_of_the_same_oracle_visits_every_class():
    # The control for the test above: without guidance, class 1 gets its weight 0.3 of the samples
    # (binomial standard error sqrt(0.3 * 0.7 / 2000) = 0.010, tolerance 4 of them).
    sde = VPSDE()
    x, _, _ = sample_moments(MIXTURE.score_fn(sde), sde, "heun", 40)
    assert abs(MIXTURE.responsibilities(x).argmax(1).eq(1).double().mean() - 0.3) < 0.04


def test_classifier_free_guidance_of_a_network_combines_its_class_and_null_label_outputs():
    # eps-parameterisation: s(x, y) = -net(x, t, y) / beta_bar, and the null label is num_classes = 3.
    torch.manual_seed(0)
    net = models.MLP(2, width=16, depth=2, num_classes=3)
    for p in net.parameters():
        nn.init.normal_(p, std=0.3)
    sde = VPSDE()
    x, t = torch.randn(6, 2), torch.rand(6) * 0.9 + 0.05
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    ours = guidance.ClassifierFreeGuidance(models.get_score_fn(net, sde).score, labels, omega=2.0)(x, t)
    b = sde.beta_bar(t.double()).float()[:, None]
    with torch.no_grad():
        conditional, null = -net(x, t, labels) / b, -net(x, t, torch.full((6,), 3)) / b
    # float32 network evaluations in the same order: equal up to a few ulps of scores of size ~1.
    torch.testing.assert_close(ours, 3.0 * conditional - 2.0 * null, rtol=1e-5, atol=1e-5)


def test_classifier_guidance_gradient_flows_under_no_grad_for_a_network_classifier():
    # The gradient of log softmax of a linear classifier W x + b at class y is W_y - sum_k p_k W_k (exact formula).
    lin = nn.Linear(2, 3).double()
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 0.5, dtype=torch.float64)
    wrapped = guidance.ClassifierGuidance(lambda x, t: torch.zeros_like(x), lambda x, t: lin(x), 2, scale=1.5)
    with torch.no_grad():
        got = wrapped(x, t)
        p = torch.softmax(lin(x), dim=1)
        expected = 1.5 * (lin.weight[2] - p @ lin.weight)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_labels_are_repeated_or_cycled_over_the_batch():
    assert guidance.batch_labels(4, 3, "cpu").tolist() == [4, 4, 4]
    assert guidance.batch_labels([0, 1, 2], 7, "cpu").tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert guidance.batch_labels(torch.tensor([5, 6]), 3, "cpu").tolist() == [5, 6, 5]
    assert guidance.parse_labels("3") == 3 and guidance.parse_labels("0, 1,2") == [0, 1, 2]


@pytest.mark.parametrize("call, error, message", [
    (lambda: guidance.batch_labels([], 3, "cpu"), ValueError, "empty"),
    (lambda: guidance.batch_labels(True, 3, "cpu"), TypeError, "ints"),
    (lambda: guidance.batch_labels(torch.tensor([0.5]), 3, "cpu"), TypeError, "integer tensor"),
    (lambda: guidance.parse_labels("cat"), ValueError, "comma-separated list of integers"),
    (lambda: guidance.check_labels([0, 10], 10), ValueError, r"\[10\] out of range; this model has classes 0..9"),
    (lambda: guidance.check_labels(1, None), ValueError, "model.conditional=True"),
    (lambda: guidance.ClassifierFreeGuidance(ExactConditionalScore(VPSDE()), 1, omega=-1.0), ValueError,
     "non-negative"),
    (lambda: guidance.ClassifierGuidance(MIXTURE.score_fn(VPSDE()), ExactClassifier(VPSDE()), 1, scale=math.nan),
     ValueError, "non-negative"),
    (lambda: guidance.ClassifierGuidance(MIXTURE.score_fn(VPSDE()), ExactClassifier(VPSDE()), 5)(
        torch.zeros(2, 2, dtype=torch.float64), torch.full((2,), 0.5)), ValueError,
     "out of range for a classifier of 3"),
])
def test_bad_guidance_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
