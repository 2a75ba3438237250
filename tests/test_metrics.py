"""Sample-quality metrics against closed forms and brute force; the Inception path with random weights when
torch-fidelity is importable (no download anywhere)."""
import itertools

import numpy as np
import pytest
import scipy.linalg
import torch

from scoresde import metrics
from scoresde.metrics import fidelity, reference
from scoresde.metrics.frechet import feature_statistics, frechet_distance
from scoresde.metrics.inception_score import inception_score
from scoresde.metrics.kid import kid, mmd2_unbiased
from scoresde.metrics.manifold import precision_recall
from scoresde.metrics.vectors import energy_distance, sliced_wasserstein


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


# --- Fréchet distance --------------------------------------------------------------------------------------------

def test_frechet_commuting_rank_deficient_matches_closed_form():
    # Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ commute, so Tr((Σ1Σ2)^½) = Σ √(a_i b_i); a third of a and b are zero,
    # as with fewer samples than dimensions. Eigenvalues that should be 0 come out as ~1e-16 ‖Σ‖; their square
    # roots add at most d 1e-8 ≈ 6e-7 to an FD of order 10, within 1e-6 relative.
    d, rng = 64, np.random.default_rng(0)
    a, b = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    a[:20], b[10:30] = 0.0, 0.0
    q = _rotation(d, 1)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-6)


def test_frechet_sample_covariance_with_fewer_samples_than_dims():
    # 10 points in 64-d: Σ has rank 9. With Σ2 = c² Σ1, (Σ1Σ2)^½ = c Σ1, so FD = ‖Δμ‖² + (1 - c)² Tr Σ1.
    x = np.random.default_rng(2).standard_normal((10, 64))
    mu, sigma = feature_statistics(x)
    c, shift = 1.7, np.full(64, 0.3)
    expected = shift @ shift + (1 - c) ** 2 * np.trace(sigma)
    assert frechet_distance(mu, sigma, mu + shift, c ** 2 * sigma) == pytest.approx(expected, rel=1e-6)


def test_frechet_general_covariances_match_scipy_sqrtm():
    # Full-rank, non-commuting covariances: scipy's Schur-based sqrtm of Σ1Σ2 is an independent computation.
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((8, 8)), rng.standard_normal((8, 8))
    s1, s2 = a @ a.T + 0.5 * np.eye(8), b @ b.T + 0.5 * np.eye(8)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_zero_on_itself_and_symmetric():
    mu1, s1 = feature_statistics(np.random.default_rng(4).standard_normal((30, 50)))   # rank 29 of 50
    mu2, s2 = feature_statistics(np.random.default_rng(5).standard_normal((30, 50)) * 1.5 + 0.2)
    # Zero up to the ~d √(1e-16 ‖Σ‖) of the clipped null eigenvalues: 1e-6 of Tr Σ ≈ 50 is far above that.
    assert frechet_distance(mu1, s1, mu1, s1) <= 1e-6 * np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


# --- KID, IS, precision/recall ------------------------------------------------------------------------------------

def _mmd2_loops(x, y):
    k = lambda u, v: (u @ v / len(u) + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_double_loop():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((7, 5)), rng.standard_normal((9, 5)) + 0.5
    # Same sums in another order: agreement to rounding (1e-12 relative).
    assert mmd2_unbiased(x, y) == pytest.approx(_mmd2_loops(x, y), rel=1e-12)


def test_kid_is_mean_and_std_over_the_drawn_subsets():
    rng = np.random.default_rng(7)
    f1, f2 = rng.standard_normal((20, 4)), rng.standard_normal((15, 4)) * 1.3
    draw = np.random.RandomState(11)
    values = []
    for _ in range(5):
        a, b = f1[draw.choice(20, 6, replace=False)], f2[draw.choice(15, 6, replace=False)]
        values.append(_mmd2_loops(a, b))
    mean, std = kid(f1, f2, subsets=5, subset_size=6, seed=11)
    assert mean == pytest.approx(np.mean(values), rel=1e-12)
    assert std == pytest.approx(np.std(values), rel=1e-9)


def test_inception_score_by_hand():
    # Split 1: two certain, different classes -> p(y) uniform, KL = log 2 each, IS = 2. Split 2: uniform rows ->
    # KL = 0, IS = 1. Mean 1.5, population std 0.5.
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    assert inception_score(probs, splits=2) == pytest.approx((1.5, 0.5), rel=1e-12)
    # One split of a 3-class table: p(y) = (0.5, 0.3, 0.2); IS = exp(mean_x Σ p log(p / p(y))).
    table = np.array([[0.8, 0.2, 0.0], [0.2, 0.4, 0.4]])
    marginal = table.mean(0)
    kl = [sum(p * np.log(p / q) for p, q in zip(row, marginal) if p > 0) for row in table]
    assert inception_score(table, splits=1)[0] == pytest.approx(np.exp(np.mean(kl)), rel=1e-12)


def test_precision_recall_limits():
    x = np.random.default_rng(8).standard_normal((50, 3))
    assert precision_recall(x, x) == (1.0, 1.0)          # every point lies in its own ball
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)  # k-NN radii ~1 cannot reach 100 away


def test_precision_recall_matches_the_papers_definition_by_brute_force():
    # Kynkäänniemi et al. 2019, eq. 1-3: f(φ, Φ) = 1 if ‖φ - φ'‖ ≤ ‖φ' - NN_k(φ', Φ)‖ for some φ' in Φ, the k-th
    # nearest neighbour of φ' in Φ other than itself; precision = mean f(fake, real), recall = mean f(real, fake).
    rng = np.random.default_rng(13)
    real, fake = rng.standard_normal((40, 3)), rng.standard_normal((30, 3)) * 0.6 + 1.5

    def f(phi, points, k=3):
        radii = [sorted(np.linalg.norm(p - q) for j, q in enumerate(points) if j != i)[k - 1]
                 for i, p in enumerate(points)]
        return any(np.linalg.norm(phi - p) <= r for p, r in zip(points, radii))

    expected = (np.mean([f(x, real) for x in fake]), np.mean([f(x, fake) for x in real]))
    assert precision_recall(real, fake) == pytest.approx(expected, abs=1e-12)
    assert 0.2 < expected[0] < 0.9 and 0.2 < expected[1] < 0.9     # neither limit: the example tests something


# --- vectors -----------------------------------------------------------------------------------------------------

def test_energy_distance_matches_double_loop():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((6, 2)), rng.standard_normal((8, 2)) + 1.0
    d = lambda u, v: np.linalg.norm(u - v)  # noqa: E731
    xy = np.mean([d(a, b) for a, b in itertools.product(x, y)])
    xx = np.mean([d(a, b) for a, b in itertools.permutations(x, 2)])
    yy = np.mean([d(a, b) for a, b in itertools.permutations(y, 2)])
    assert energy_distance(x, y) == pytest.approx(2 * xy - xx - yy, rel=1e-10)


def test_sliced_wasserstein_of_a_shift_in_one_dimension():
    # In 1-D every direction is ±1 and a shift keeps the sorted order: W2 = |δ| exactly.
    x = np.random.default_rng(10).standard_normal((100, 1))
    assert sliced_wasserstein(x, x + 0.7, projections=4) == pytest.approx(0.7, rel=1e-12)


@pytest.mark.parametrize("samples, match", [
    (torch.full((20, 1, 8, 8), float("nan")), "NaN"),
    (torch.rand(20, 1, 7, 7), "8 height|expected 8"),
    (torch.rand(1, 1, 8, 8), "at least 2"),
    (torch.rand(5, 1, 8, 8), "at least 10 samples"),
    (torch.randint(0, 2, (20, 1, 8, 8)), "floats"),
])
def test_evaluate_rejects_bad_samples(samples, match):
    with pytest.raises(ValueError, match=match):
        metrics.evaluate(samples, "digits", 8, 1)


def test_evaluate_vectors_against_held_out():
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((300, 2)), rng.standard_normal((200, 2))
    result = metrics.evaluate(torch.from_numpy(x), "gmm8", reference=torch.from_numpy(y))
    assert result.energy == pytest.approx(energy_distance(x, y), rel=1e-12)
    assert result.format() == f"ED {result.energy:.4f} | SW2 {result.sliced_w2:.4f}"


# --- reference cache ---------------------------------------------------------------------------------------------

def test_reference_cache_round_trip_and_invalidation(tmp_path):
    feats = np.random.default_rng(13).standard_normal((40, 6))
    meta = {"dataset": "toy", "split": "train", "shape": [3, 4, 4], "extractor": "x"}
    calls = []

    def compute():
        calls.append(1)
        return feats

    first = reference.reference_stats(meta, compute, tmp_path)
    again = reference.reference_stats(meta, compute, tmp_path)   # cache hit: compute not called
    assert len(calls) == 1 and again.meta["count"] == 40
    np.testing.assert_array_equal(again.sigma, first.sigma)
    assert np.allclose(again.mu, feats.mean(0), rtol=0, atol=1e-15)
    assert not list(tmp_path.glob("*.tmp"))                        # the temporary file was renamed away
    reference.reference_stats({**meta, "extractor": "y"}, compute, tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.npz"))) == 2


# --- the Inception path (torch-fidelity) -------------------------------------------------------------------------

def test_missing_extra_or_weights_give_one_clear_line(tmp_path, monkeypatch):
    if fidelity.is_available():
        with pytest.raises(FileNotFoundError, match="no Inception weights at"):
            fidelity.load_inception(tmp_path / "missing.pth")
        import urllib.error

        import torch_fidelity.feature_extractor_inceptionv3 as tfi

        def offline(*args, **kwargs):
            raise urllib.error.URLError("Name or service not known")

        monkeypatch.setattr(tfi, "load_state_dict_from_url", offline)
        with pytest.raises(RuntimeError, match=f"put {fidelity.WEIGHTS_FILE} at .* or pass inception_weights=PATH"):
            fidelity.load_inception()
    else:
        with pytest.raises(ImportError, match=r"pip install 'scoresde\[metrics\]'"):
            metrics.evaluate(torch.rand(12, 3, 8, 8), "cifar10", 8, 3, reference=torch.rand(12, 3, 8, 8))


@pytest.fixture
def random_inception_weights(tmp_path, monkeypatch):
    if not fidelity.is_available():
        pytest.skip("torch-fidelity (with a torchvision matching this torch) is not importable here")
    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    with monkeypatch.context() as m:   # build the real architecture without loading (or downloading) weights
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        model = tfi.FeatureExtractorInceptionV3(fidelity.EXTRACTOR, [fidelity.FEATURES, fidelity.LOGITS])
    path = tmp_path / "random-inception.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_inception_path_end_to_end(random_inception_weights, tmp_path):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(12, 1, 16, 16, generator=gen)
    model = fidelity.load_inception(random_inception_weights)
    seen = []
    model.Conv2d_1a_3x3.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    grey, grey_logits = fidelity.inception_features(images, model, batch_size=6)
    rgb, _ = fidelity.inception_features(images.expand(-1, 3, -1, -1), model, batch_size=12)
    assert seen[0] == (6, 3, 299, 299)                     # the network resized 16x16 to 299 itself
    assert grey.shape == (12, 2048) and grey_logits.shape == (12, 1008)
    np.testing.assert_array_equal(grey, rgb)               # grey -> RGB is channel repetition, nothing else

    cache = tmp_path / "cache"
    result = metrics.evaluate(images, "mnist", 16, 1, reference=images, cache_dir=cache,
                              inception_weights=random_inception_weights, batch_size=6, kid_subsets=3,
                              kid_subset_size=12, is_splits=2)
    mu, sigma = feature_statistics(grey)
    # Samples equal to the reference: FD is 0 up to the clipped null eigenvalues of a rank-11 covariance in
    # 2048-d (≤ 2048 √(1e-16 ‖Σ‖)), far below 1e-6 of Tr Σ; KID and IS are recomputed from the same features.
    assert result.fid <= 1e-6 * max(np.trace(sigma), 1e-12)
    assert result.kid == pytest.approx(kid(grey, grey, 3, 12, 2020)[0], rel=1e-5, abs=1e-9)
    assert result.is_mean == pytest.approx(inception_score(metrics.softmax_probs(grey_logits), 2, 2020)[0],
                                           rel=1e-6)
    (cached,) = cache.glob("*.npz")
    stored = reference.load(cached)
    assert stored.meta["count"] == 12 and stored.meta["shape"] == [1, 16, 16]
    assert stored.meta["extractor"].startswith(f"{fidelity.EXTRACTOR}-sha256-")
    np.testing.assert_allclose(stored.mu, mu, rtol=0, atol=1e-12)
    # A cache hit needs no reference at all.
    again = metrics.evaluate(images, "mnist", 16, 1, cache_dir=cache, inception_weights=random_inception_weights,
                             kid_subsets=3, kid_subset_size=12, is_splits=2)
    assert again.fid == pytest.approx(result.fid, abs=1e-9)
    assert again.format().startswith("FID ")


def test_inception_kid_and_fid_agree_with_torch_fidelity():
    if not fidelity.is_available():
        pytest.skip("torch-fidelity (with a torchvision matching this torch) is not importable here")
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    rng = np.random.default_rng(14)
    f1, f2 = rng.standard_normal((300, 16)), rng.standard_normal((250, 16)) * 1.2 + 0.1
    (m1, s1), (m2, s2) = feature_statistics(f1), feature_statistics(f2)
    theirs = fid_statistics_to_metric({"mu": m1, "sigma": s1}, {"mu": m2, "sigma": s2}, False)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(theirs["frechet_inception_distance"], rel=1e-8)
    theirs = kid_features_to_metric(torch.from_numpy(f1), torch.from_numpy(f2), kid_subsets=10,
                                    kid_subset_size=100, verbose=False, rng_seed=2020)
    assert kid(f1, f2, 10, 100, 2020) == pytest.approx(
        (theirs["kernel_inception_distance_mean"], theirs["kernel_inception_distance_std"]), rel=1e-8)
