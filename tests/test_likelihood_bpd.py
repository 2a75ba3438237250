import math

import pytest
import torch

from scoresde import likelihood
from scoresde.sde_lib import GaussianMixture, VPSDE


def test_uniform_density_over_the_data_range_is_log2_n_bins_bits():
    # A uniform density on the data cube puts probability 1/n_bins on every bin: exactly log2(n_bins) bits/dim.
    n, d = 5, 3 * 4 * 4
    for (lo, hi), n_bins in [((-1.0, 1.0), 256), ((0.0, 1.0), 256), ((0.0, 255.0), 32)]:
        logp = torch.full((n,), -d * math.log(hi - lo), dtype=torch.float64)
        bpd = likelihood.bits_per_dim(logp, (n, 3, 4, 4), data_range=(lo, hi), n_bins=n_bins)
        torch.testing.assert_close(bpd, torch.full((n,), math.log2(n_bins), dtype=torch.float64), rtol=0, atol=1e-12)
    # Offsets: 7 bits for 8-bit data on [-1, 1], 8 on [0, 1], none for continuous data.
    assert likelihood.bpd.bin_offset(256, (-1, 1)) == 7.0 and likelihood.bpd.bin_offset(256, (0, 1)) == 8.0
    logp = torch.tensor([-3.0])
    assert float(likelihood.bits_per_dim(logp, (1, 2), n_bins=None)) == pytest.approx(3.0 / (2 * math.log(2)))


def test_piecewise_constant_density_gives_the_discrete_code_length():
    # Dequantising a discrete distribution P gives the density P(k)/w on bin k; bits/dim must then be
    # exactly -log2 P(k) per dimension, whatever the dequantisation noise.
    n_bins, (lo, hi), d, n = 16, (-1.0, 1.0), 3, 50
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(n_bins, generator=gen, dtype=torch.float64), 0)
    k = torch.multinomial(probs, n * d, replacement=True, generator=gen).reshape(n, d)
    x = (lo + (hi - lo) * k / (n_bins - 1)).float()
    y = likelihood.dequantize(x, n_bins, (lo, hi), generator=gen).double()
    width = (hi - lo) / n_bins
    k_back = torch.floor((y - lo) / width).long()
    assert torch.equal(k_back, k)  # every dequantised value lies in its own bin
    logp = torch.log(probs[k_back] / width).sum(1)
    expected = -torch.log2(probs[k]).sum(1) / d
    # float32 storage moves y by < 1e-7, far inside the bin: the code length is exact to round-off.
    torch.testing.assert_close(likelihood.bits_per_dim(logp, x.shape, data_range=(lo, hi), n_bins=n_bins), expected,
                               rtol=0, atol=1e-12)


def test_dequantisation_noise_is_uniform_within_the_bin():
    n_bins = 256
    x = torch.full((20000, 1), -1.0 + 2.0 * 100 / 255)
    y = likelihood.dequantize(x, n_bins, generator=torch.Generator().manual_seed(1)).double()
    u = (y + 1.0) / 2.0 * n_bins - 100  # should be U[0, 1)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    # Mean 1/2 and variance 1/12 of U[0, 1): standard errors 0.002 and 0.0006 at n = 20000; 4 SE tolerances.
    assert float(u.mean()) == pytest.approx(0.5, abs=8e-3)
    assert float(u.var()) == pytest.approx(1 / 12, abs=2.4e-3)


def test_merge_bits_per_dim_equals_the_pooled_statistics():
    values = torch.randn(23, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 3.0
    pieces = [values[:10], values[10:11], values[11:]]  # a shard of one point has stderr nan
    parts = [likelihood.BitsPerDim(float(p.mean()), float(p.std() / math.sqrt(len(p))) if len(p) > 1 else math.nan,
                                   len(p), 10.0) for p in pieces]
    merged = likelihood.merge_bits_per_dim(parts + [None])
    # float64 sums of 23 numbers: agreement to ~1e-15 relative; 1e-12 leaves room.
    assert merged.mean == pytest.approx(float(values.mean()), rel=1e-12)
    assert merged.stderr == pytest.approx(float(values.std() / math.sqrt(23)), rel=1e-12)
    assert merged.count == 23 and merged.nfe == 10.0
    with pytest.raises(ValueError, match="every shard was empty"):
        likelihood.merge_bits_per_dim([None])


def test_bad_input():
    with pytest.raises(ValueError, match="not on the grid of 256 levels"):
        likelihood.dequantize(torch.tensor([[0.001]]), 256)
    with pytest.raises(ValueError, match="not on the grid"):
        likelihood.dequantize(torch.tensor([[1.5]]), 256)
    with pytest.raises(ValueError, match="n_bins must be an integer >= 2"):
        likelihood.bits_per_dim(torch.zeros(2), (2, 3), n_bins=1)
    with pytest.raises(ValueError, match="NaN or inf"):
        likelihood.bits_per_dim(torch.tensor([0.0, float("nan")]), (2, 3))
    with pytest.raises(ValueError, match="N = len\\(logp\\)"):
        likelihood.bits_per_dim(torch.zeros(2), (3, 32, 32))
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        likelihood.evaluate_bits_per_dim(VPSDE(), None, [], repeats=0)
    with pytest.raises(ValueError, match="no data"):
        likelihood.evaluate_bits_per_dim(VPSDE(), None, [])


@pytest.mark.slow
def test_evaluate_bits_per_dim_matches_the_gaussian_in_closed_form():
    # Model: data N(0, s^2 I) under the VP SDE, so p_eps = N(0, v I) with v = a^2 s^2 + b^2 at t = eps.
    # For x in bin [c - w/2, c + w/2), E_u[-log p] = sum_i (c_i^2 + w^2/12) / (2 v) + D/2 log(2 pi v).
    sde, s, d, n_bins, eps = VPSDE(), 0.4, 2, 32, 1e-5
    mix = GaussianMixture([1.0], torch.zeros(1, d), s**2)
    gen = torch.Generator().manual_seed(2)
    k = torch.randint(0, n_bins, (60, d), generator=gen)
    x = -1.0 + 2.0 * k.double() / (n_bins - 1)
    batches = [(x[:30], torch.zeros(30)), (x[30:], torch.zeros(30))]
    res = likelihood.evaluate_bits_per_dim(sde, mix.score_fn(sde), batches, n_bins=n_bins, repeats=3,
                                           generator=gen, divergence="exact")
    assert res.count == 60 and res.nfe > 0 and res.stderr > 0
    e = torch.tensor(eps, dtype=torch.float64)
    v = float(sde.alpha_bar(e) ** 2 * s**2 + sde.beta_bar(e) ** 2)
    w = 2.0 / n_bins
    centres = -1.0 + w * (k.double() + 0.5)
    nll = ((centres**2 + w**2 / 12).sum(1) / (2 * v) + d / 2 * math.log(2 * math.pi * v))
    expected = float((nll / (d * math.log(2)) + math.log2(n_bins / 2.0)).mean())
    # Given the bins, the only randomness is the dequantisation noise (exact divergence; solver error ~1e-5
    # nats). Var_u[(c + u)^2] ~ c^2 w^2 / 3 per coordinate, so each solve's bits/dim has standard deviation
    # sqrt(sum_i c_i^2 w^2 / 3) / (2 v D ln 2); the mean over 60 points x 3 repeats must lie within 4 SE.
    sd = torch.sqrt((centres**2 * w**2 / 3).sum(1)) / (2 * v * d * math.log(2))
    se = math.sqrt(float((sd**2).mean()) / (60 * 3))
    assert res.mean == pytest.approx(expected, abs=4 * se)


def test_merged_ode_error_is_the_count_weighted_mean_and_the_report_line_shows_both_errors():
    from scoresde.commands.evaluation import LikelihoodReport
    parts = [likelihood.BitsPerDim(2.0, 0.1, 10, 96.0, 4e-4, "eab4 96 steps"),
             likelihood.BitsPerDim(3.0, 0.2, 30, 48.0, 8e-4, "eab4 48 steps")]
    merged = likelihood.merge_bits_per_dim(parts)
    # Each shard's estimate bounds its mean absolute error; the union's is their count-weighted mean.
    assert merged.ode_error == pytest.approx((10 * 4e-4 + 30 * 8e-4) / 40, rel=1e-12)
    assert merged.nfe == pytest.approx(60.0, rel=1e-12) and merged.setting == "eab4 96 steps, eab4 48 steps"
    report = LikelihoodReport(2.26371, 0.01502, 297, 175.0, 2.3e-4, "rk45 rtol 0.0001",
                              {"divergence": "rademacher"})
    assert report.line() == ("bits/dim: 2.2637 ± 0.0150 (Hutchinson) ± 0.0002 (ODE) (297 samples, mean NFE 175, "
                             "rk45 rtol 0.0001)")
    bound = LikelihoodReport(4.17241, 0.0707, 48, 64.0, math.nan, "variational bound, 64 t samples",
                             {"bound": "elbo"})
    assert bound.line() == "bits/dim (variational bound): 4.1724 ± 0.0707 (48 samples, 64 t samples each)"
    assert bound.as_json()["ode_error"] is None   # JSON has no NaN


def test_the_pilot_is_cut_to_a_quarter_of_the_points_evaluated():
    from scoresde.commands.evaluation import size_pilot
    settings = {"accuracy": 1e-3, "pilot": 16, "steps": None}
    # 16 test points: each candidate solves its pilot three times, so a 16-point pilot would cost more than the
    # evaluation; a quarter of them, 4, is used.
    assert size_pilot(settings, 16)["pilot"] == 4
    assert size_pilot(settings, 297) is settings              # the Quickstart's 297 points keep their 16
    assert size_pilot(settings, 2)["pilot"] == 1
    assert size_pilot({"accuracy": None, "pilot": 16}, 16)["pilot"] == 16     # no search, no pilot to size
