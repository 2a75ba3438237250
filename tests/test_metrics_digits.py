"""The digits metrics on the committed feature network: its accuracy, evaluate()'s fields, the disturbances of
metrics.response, and the response curves (monotone in every disturbance, the acceptance ratios for noise,
precision and recall telling mode dropping from noise)."""
import numpy as np
import pytest
import torch

from scoresde import metrics
from scoresde.metrics import response
from scoresde.metrics.digits import digits_features, digits_labels, digits_split, load_classifier
from scoresde.metrics.frechet import feature_statistics, frechet_distance
from scoresde.metrics.inception_score import inception_score
from scoresde.metrics.kid import kid
from scoresde.metrics.manifold import precision_recall


@pytest.fixture(scope="module")
def curves():
    """The whole response table, computed once for every test here (about 10 s)."""
    base, points = response.digits_response(seed=0)
    by_curve = {}
    for p in points:
        by_curve.setdefault(p.curve, []).append(p)
    return base, by_curve


def test_feature_network_accuracy_and_size():
    # The training script reports 0.9293 on the 297 test images; 0.92 leaves room for other BLAS builds.
    model = load_classifier()
    assert (model(digits_split("test")).argmax(1) == digits_labels("test")).float().mean().item() >= 0.92
    assert sum(p.numel() for p in model.parameters()) < 50_000       # 100 kB on disk


def test_features_are_normalised_per_layer_on_the_training_digits():
    feats, _ = digits_features(digits_split("train"))
    assert feats.shape == (1500, 112)
    np.testing.assert_allclose(feats.mean(0), 0.0, atol=1e-5)
    # Each layer's block (16, 32, 64 units) has total variance 1: the scale is the root of the ddof-1 trace.
    blocks = np.split(feats, [16, 48], axis=1)
    assert [b.var(0, ddof=1).sum() for b in blocks] == pytest.approx([1.0, 1.0, 1.0], rel=1e-5)


def test_evaluate_digits_fields_and_line():
    test, train = digits_split("test"), digits_split("train")
    result = metrics.evaluate(test, "digits", 8, 1)
    feats, logits = digits_features(test)
    ref, _ = digits_features(train)
    assert result.fd_digits2 == pytest.approx(frechet_distance(*feature_statistics(feats),
                                                                *feature_statistics(ref)), rel=1e-12)
    assert (result.kid_digits2, result.kid_digits2_std) == pytest.approx(kid(feats, ref, 100, 1000, 2020), rel=1e-12)
    # precision/recall on equal sizes: all 297 samples against 297 training digits drawn with seed 2020.
    rng = np.random.RandomState(2020)
    real = ref[np.sort(rng.choice(1500, 297, replace=False))]
    assert (result.precision, result.recall) == pytest.approx(precision_recall(real, feats), abs=1e-12)
    is_mean, is_std = inception_score(metrics.softmax_probs(logits), 10, 2020)
    assert (result.is_digits2, result.is_digits2_std) == pytest.approx((is_mean, is_std), rel=1e-12)
    assert result.format() == (f"FD-digits2 {result.fd_digits2:.3f} | KID-digits2 {result.kid_digits2:.4f} ± "
                               f"{result.kid_digits2_std:.4f} | precision {result.precision:.3f} | recall "
                               f"{result.recall:.3f} | IS-digits2 {is_mean:.2f} ± {is_std:.2f}")


# --- the disturbances ---------------------------------------------------------------------------------------------

def test_disturbances_at_zero_strength_leave_the_images():
    x, g = digits_split("test"), torch.Generator().manual_seed(0)
    labels = digits_labels("test")
    for y in (response.gaussian_blur(x, 0.0), response.contrast(x, 1.0), response.drop_classes(x, labels, 10, g),
              response.memorise(x, digits_split("train"), 0.0, g)):
        assert torch.equal(y, x)
    torch.testing.assert_close(response.swirl(x, 0.0), x, atol=1e-6, rtol=0)      # bilinear at the pixel centres
    # A noise level far below the smallest distance between two digits (> 0.4) leaves each image its own
    # posterior mean: the other weights are below exp(-0.16 / 2e-4).
    torch.testing.assert_close(response.posterior_mean(x, 0.01, g), x, atol=1e-6, rtol=0)


def test_disturbances_do_what_they_say():
    x, g = digits_split("test"), torch.Generator().manual_seed(0)
    # A centred impulse keeps its mass under a blur (the kernel sums to 1, nothing reaches the border).
    impulse = torch.zeros(1, 1, 8, 8)
    impulse[0, 0, 4, 4] = 1.0
    assert response.gaussian_blur(impulse, 0.5).sum().item() == pytest.approx(1.0, rel=1e-6)
    assert response.collapse(x, 3, g).unique(dim=0).shape[0] == 3
    kept = response.drop_classes(x, digits_labels("test"), 5, g)
    flat = x.reshape(len(x), -1)
    assert all(digits_labels("test")[(flat == k.reshape(1, -1)).all(1)].max() < 5 for k in kept)
    # On a grey image every hit shows: 0.1 of 19008 pixels, half of them 1 (binomial sd 0.0022 and 0.0016; 3 sd).
    sp = response.salt_and_pepper(torch.full_like(x, 0.5), 0.1, g)
    assert (sp != 0.5).float().mean().item() == pytest.approx(0.1, abs=0.007)
    assert (sp == 1.0).float().mean().item() == pytest.approx(0.05, abs=0.005)
    assert response.contrast(x, 0.5).std(dim=(1, 2, 3)).mean() == pytest.approx(
        0.5 * x.std(dim=(1, 2, 3)).mean().item(), rel=1e-5)


# --- the response curves ------------------------------------------------------------------------------------------

def test_noise_acceptance_ratios(curves):
    # n = 297 held-out digits (the whole test split) against the 1500 training digits on both the baseline and
    # every disturbed set. Measured 3.2x and 13.2x: the committed network meets the targets of 3x and 10x.
    base, by_curve = curves
    fd = {p.strength: p.fd for p in by_curve["Gaussian noise"]}
    assert fd[0.1] >= 3 * base.fd
    assert fd[0.25] >= 10 * base.fd
    # The unbiased companion responds at least as strongly (measured 5.8x and 27x its baseline).
    kid = {p.strength: p.kid for p in by_curve["Gaussian noise"]}
    assert kid[0.1] >= 3 * base.kid and kid[0.25] >= 10 * base.kid


def test_every_disturbance_curve_is_monotone_from_the_baseline(curves):
    base, by_curve = curves
    for curve, points in by_curve.items():
        fds = [base.fd] + [p.fd for p in points]
        if curve == "memorisation":
            # Copies of the training digits match the reference better than held-out digits: a distance to the
            # training set cannot see memorisation (nor can FID); it falls monotonically instead.
            assert all(a > b for a, b in zip(fds, fds[1:])), (curve, fds)
        else:
            assert all(a < b for a, b in zip(fds, fds[1:])), (curve, fds)


def test_over_smoothing_never_ranks_above_the_held_out_digits(curves):
    # The 0.5 px blur of an over-smoothed sampler scores 4.3x the held-out digits (the noise floor, a bootstrap sd,
    # is a third of the baseline), and a slight pull to the posterior mean 1.6x.
    base, by_curve = curves
    assert by_curve["Gaussian blur"][0].fd >= 2 * base.fd
    assert by_curve["posterior mean"][0].fd >= 1.3 * base.fd


def test_precision_and_recall_tell_mode_dropping_from_noise(curves):
    base, by_curve = curves
    drop = {p.strength: p for p in by_curve["mode dropping"]}
    noise = {p.strength: p for p in by_curve["Gaussian noise"]}
    # Half the classes dropped: recall halves (0.85 -> 0.44), precision stays (0.91 -> 0.90; the bootstrap sd of
    # precision is 0.013, of recall 0.03).
    assert drop[5].recall <= 0.6 * base.recall
    assert drop[5].precision >= base.precision - 0.03
    # Noise of σ = 0.5: precision falls by more than half (0.91 -> 0.38), recall by far less (0.85 -> 0.61).
    assert noise[0.5].precision <= 0.5 * base.precision
    assert base.precision - noise[0.5].precision >= 2 * (base.recall - noise[0.5].recall)
    # Salt and pepper leaves recall (0.94) and takes precision (0.71).
    sp = by_curve["salt and pepper"][-1]
    assert sp.recall >= base.recall and sp.precision <= base.precision - 0.1
