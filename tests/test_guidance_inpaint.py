"""Inpainting against the closed-form Gaussian conditional: for x ~ N(mu, S), x_m | x_o is N(mu_m + K (x_o - mu_o),
S_mm - K S_om) with K = S_mo S_oo^-1, and the exact score of N(mu, S) under the SDE comes from sde_lib.GaussianMixture.
"""
import pytest
import torch

from scoresde import guidance
from scoresde.sde_lib import VESDE, VPSDE, GaussianMixture

COV = torch.tensor([[1.0, 0.9, 0.8, 0.7], [0.9, 1.0, 0.9, 0.8], [0.8, 0.9, 1.0, 0.9], [0.7, 0.8, 0.9, 1.0]],
                   dtype=torch.float64)
MU = torch.tensor([0.5, -0.5, 0.0, 1.0], dtype=torch.float64)
DATA = GaussianMixture([1.0], MU[None], COV[None])
OBSERVED, MISSING = [0, 1], [2, 3]
X_O = torch.tensor([1.5, 1.0], dtype=torch.float64)
N = 2000


def exact_conditional():
    k = COV[MISSING][:, OBSERVED] @ torch.linalg.inv(COV[OBSERVED][:, OBSERVED])
    return MU[MISSING] + k @ (X_O - MU[OBSERVED]), COV[MISSING][:, MISSING] - k @ COV[OBSERVED][:, MISSING]


def gaussian_w2(m1, c1, m2, c2) -> float:
    """2-Wasserstein distance between N(m1, c1) and N(m2, c2)."""
    def sqrtm(c):
        vals, vecs = torch.linalg.eigh(c)
        return vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    r = sqrtm(c2)
    cross = sqrtm(r @ c1 @ r)
    return max(float(((m1 - m2) ** 2).sum() + torch.trace(c1 + c2 - 2 * cross)), 0.0) ** 0.5


def observation():
    x_obs = torch.full((N, 4), float("nan"), dtype=torch.float64)
    x_obs[:, OBSERVED] = X_O
    mask = torch.zeros(4, dtype=torch.float64)
    mask[OBSERVED] = 1.0
    return x_obs, mask


def run(sde, method, **kw):
    x_obs, mask = observation()
    return guidance.inpaint(sde, DATA.score_fn(sde), x_obs, mask, method=method, steps=100,
                            generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.slow
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "ve"])
def test_repaint_is_much_closer_than_replacement_to_the_exact_conditional(sde):
    mean, cov = exact_conditional()   # conditional std of the missing dims: 0.44 and 0.60
    result = {}
    for method, kw in (("replacement", {}), ("repaint", {"resample": 10})):
        out = run(sde, method, **kw)
        assert torch.equal(out.x[:, OBSERVED], X_O.expand(N, 2))
        x = out.x[:, MISSING]
        result[method] = (x.mean(0), torch.cov(x.T), gaussian_w2(x.mean(0), torch.cov(x.T), mean, cov))
    # Measured (seed 0): replacement W2 = 0.79 (VP) / 0.83 (VE): its means fall short by 0.5-0.6, more than one
    # conditional std, and its variances are 1.5-1.7x too large; RePaint with 10 resamplings W2 = 0.10 / 0.11.
    # The Monte-Carlo error of the sample mean is sqrt(0.36/2000) = 0.013, so the gap is ~50 standard errors:
    # assert a factor 3.
    w2_replacement, w2_repaint = result["replacement"][2], result["repaint"][2]
    assert w2_repaint < w2_replacement / 3, (w2_repaint, w2_replacement)
    # Replacement's bias is real (> 20 standard errors), RePaint's mean within 0.15 (a third of a conditional std).
    assert (result["replacement"][0] - mean).abs().max() > 0.3
    assert (result["repaint"][0] - mean).abs().max() < 0.15


@pytest.mark.slow
def test_more_resampling_moves_repaint_toward_the_exact_conditional():
    # RePaint's remaining bias shrinks as the harmonisation steps grow: W2 = 0.47 with resample=2 and 0.13 with
    # resample=6 at seed 0; a gap of 0.1 is 8 Monte-Carlo standard errors of the mean (0.013) at n = 2000.
    sde = VPSDE()
    mean, cov = exact_conditional()
    w2 = []
    for u in (2, 6):
        x = run(sde, "repaint", resample=u).x[:, MISSING]
        w2.append(gaussian_w2(x.mean(0), torch.cov(x.T), mean, cov))
    assert w2[1] < w2[0] - 0.1, w2


def test_counts_one_score_call_per_step_and_resample():
    sde = VPSDE()
    x_obs, mask = observation()
    calls = []
    score = DATA.score_fn(sde)

    def counting(x, t):
        calls.append(1)
        return score(x, t)
    out = guidance.inpaint(sde, counting, x_obs[:5], mask, method="repaint", steps=7, resample=3,
                           generator=torch.Generator().manual_seed(0))
    # The last step (to eps) is taken once, every other step `resample` times.
    assert out.nfe == len(calls) == 6 * 3 + 1
    assert guidance.inpaint(sde, score, x_obs[:5], mask, method="replacement", steps=7).nfe == 7


def test_score_checks_of_the_samplers_apply():
    # The score goes through the samplers' CountingScore: a NaN is reported with its evaluation number instead
    # of turning the missing entries into NaN.
    sde = VPSDE()
    x_obs, mask = observation()
    score = DATA.score_fn(sde)
    calls = []

    def breaks_on_the_third_call(x, t):
        calls.append(1)
        return score(x, t) * (float("nan") if len(calls) == 3 else 1.0)
    with pytest.raises(ValueError, match="score_fn returned NaN or inf .*score evaluation 3"):
        guidance.inpaint(sde, breaks_on_the_third_call, x_obs[:5], mask, method="repaint", steps=7, resample=2,
                         generator=torch.Generator().manual_seed(0))


def test_without_a_generator_the_global_rng_is_left_alone():
    sde = VPSDE()
    x_obs, mask = observation()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = guidance.inpaint(sde, DATA.score_fn(sde), x_obs[:5], mask, method="replacement", steps=3).x
    b = guidance.inpaint(sde, DATA.score_fn(sde), x_obs[:5], mask, method="replacement", steps=3).x
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(a[:, MISSING], b[:, MISSING])   # each call still draws fresh noise


def test_image_masks_broadcast_and_observed_pixels_are_kept():
    sde = VPSDE()
    data = GaussianMixture([1.0], torch.zeros(1, 2 * 3 * 3), 0.5, event_shape=(2, 3, 3))
    x_obs = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 3, 3, dtype=torch.float64)   # one mask for every item and channel: the left column observed
    mask[..., 0] = 1
    x = guidance.inpaint(sde, data.score_fn(sde), x_obs, mask, method="replacement", steps=5).x
    assert torch.equal(x[..., 0], x_obs[..., 0]) and torch.isfinite(x).all()
    assert not torch.equal(x[..., 1:], x_obs[..., 1:])


@pytest.mark.parametrize("kwargs, error, message", [
    ({"method": "magic"}, ValueError, "unknown inpainting method 'magic'; available: replacement, repaint"),
    ({"steps": 0}, ValueError, "steps must be an integer >= 1"),
    ({"resample": 0}, ValueError, "resample must be an integer >= 1"),
    ({"eps": 0.0}, ValueError, r"eps must be in \(0, T\)"),
    ({"mask": torch.ones(3)}, ValueError, "does not broadcast"),
    ({"mask": torch.full((4,), 0.5)}, ValueError, "must be 0"),
    ({"mask": torch.ones(4)}, ValueError, "observed entries \\(mask = 1\\) must be finite"),
])
def test_bad_inpainting_arguments_raise_clear_errors(kwargs, error, message):
    x_obs, mask = observation()
    kwargs = {"mask": mask, **kwargs}
    with pytest.raises(error, match=message):
        guidance.inpaint(VPSDE(), DATA.score_fn(VPSDE()), x_obs[:3], **kwargs)


def test_replacement_is_repaint_with_one_pass():
    sde = VPSDE()
    x_obs = DATA.sample(5, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    runs = [guidance.inpaint(sde, DATA.score_fn(sde), x_obs, mask, method=method, steps=6, resample=resample,
                             generator=torch.Generator().manual_seed(2))
            for method, resample in (("replacement", 4), ("repaint", 1))]
    # Same draws in the same order: bit-identical, and one score evaluation per step.
    assert torch.equal(runs[0].x, runs[1].x) and runs[0].nfe == runs[1].nfe == 6
