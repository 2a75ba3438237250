"""Parameterisations and DSM losses against closed forms for Gaussian data x_0 ~ N(mu, s2 I).

For such data x_t ~ N(alpha_bar mu, v I), v = alpha_bar^2 s2 + beta_bar^2, the exact score is -(x - alpha_bar mu)/v and
E||beta_bar s*(x_t) + eps||^2 = D (1 - beta_bar^2 / v) (the posterior variance of eps given x_t): the minimum of
every weighted DSM loss is a one-dimensional integral over t, computed here by quadrature.
"""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from scoresde import models
from scoresde.sde_lib import VESDE, CosineVPSDE, GaussianMixture, SubVPSDE, VPSDE
from scoresde.utils import UsageError

D = 4
MU = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
S2 = 0.25
DATA = GaussianMixture([1.0], MU[None], S2)
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(sigma_max=20.0), "cosine": CosineVPSDE()}
PARAMS = [("eps", {}), ("x0", {}), ("v", {}), ("score", {}), ("flow", {}), ("edm", {"sigma_data": 0.7})]
PARAM_IDS = ["eps", "x0", "v", "score", "flow", "edm"]


def path_rates(sde, t):
    """(alpha_bar', beta_bar') at float64 times t by autograd of the schedule itself (t >= 1e-5 here, where both
    are finite); 0 t keeps a graph for VE's constant alpha_bar."""
    t = t.detach().clone().requires_grad_(True)
    da, = torch.autograd.grad((sde.alpha_bar(t) + 0 * t).sum(), t)
    db, = torch.autograd.grad(sde.beta_bar(t).sum(), t)
    return da, db



class OptimalGaussian(nn.Module):
    """The Bayes-optimal network output for N(mu, s2 I) data, from the definitions of each parameterisation.

    It is fed noise_input = t. x0_hat = E[x_0 | x_t] (Tweedie: (x + beta_bar^2 score)/alpha_bar), eps_hat =
    -beta_bar score, v = alpha_bar eps - beta_bar x_0, flow: u = alpha_bar' x0_hat + beta_bar' eps_hat, EDM:
    D(x/alpha_bar; sigma) = c_skip x/alpha_bar + c_out F.
    `shift` is added to the output (a perturbation away from the optimum).
    """

    def __init__(self, sde, parameterization, sigma_data=0.5, shift=0.0):
        super().__init__()
        self.sde, self.parameterization = sde, parameterization
        self.sigma_data, self.shift = sigma_data, shift

    def forward(self, x, noise_input, y=None):
        t = noise_input.double()
        a = self.sde.alpha_bar(t)[:, None]
        b = self.sde.beta_bar(t)[:, None]
        if self.parameterization == "edm":
            x = x * torch.sqrt(b**2 + a**2 * self.sigma_data**2)   # the network sees c_in x / alpha_bar
        score = -(x - a * MU) / (a**2 * S2 + b**2)
        eps = -b * score
        x0 = (x + b**2 * score) / a
        if self.parameterization == "eps":
            out = eps
        elif self.parameterization == "x0":
            out = x0
        elif self.parameterization == "v":
            out = a * eps - b * x0
        elif self.parameterization == "score":
            out = score
        elif self.parameterization == "flow":
            da, db = path_rates(self.sde, t)
            out = da[:, None] * x0 + db[:, None] * eps
        else:
            sigma, sd = b / a, self.sigma_data
            c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / torch.sqrt(sigma**2 + sd**2)
            out = (x0 - c_skip * x / a) / c_out
        return (out + self.shift).to(x.dtype)


def optimal(sde, parameterization, opts, shift=0.0):
    return OptimalGaussian(sde, parameterization, opts.get("sigma_data", 0.5), shift)


def posterior_eps_var(sde, t):
    """E||beta_bar s*(x_t) + eps||^2 / D = 1 - beta_bar^2 / v at float64 times t."""
    t = torch.as_tensor(t, dtype=torch.float64)
    a, b = sde.alpha_bar(t), sde.beta_bar(t)
    return (1 - b**2 / (a**2 * S2 + b**2)).numpy()


def uniform_average(fn, lo, hi):
    """(1/(hi - lo)) int_lo^hi fn(t) dt for a vectorised fn, by adaptive quadrature (relative error < 1e-9)."""
    val, _ = integrate.quad(lambda s: float(fn(np.array([s]))[0]), lo, hi, limit=200, epsrel=1e-10, points=[0.01, 0.1])
    return val / (hi - lo)


def loss_samples(sde, n, seed, parameterization="eps", opts=None, shift=0.0, weighting="eps", eps=1e-5, **kwargs):
    opts = opts or {}
    gen = torch.Generator().manual_seed(seed)
    x0 = DATA.sample(n, generator=gen)
    model = optimal(sde, parameterization, opts, shift)
    if isinstance(weighting, str):
        weighting = models.get_weighting(weighting, eps=eps)
    return models.dsm_loss(model, sde, x0, precond=models.Precond(parameterization, "t", **opts), reduce="none",
                           weighting=weighting, generator=gen, **kwargs)


def assert_mc_close(samples, expected):
    """|mean - expected| < 4 standard errors, and the standard error is under 2% of expected (a sharp test)."""
    mean, se = float(samples.mean()), float(samples.std() / math.sqrt(len(samples)))
    assert se < 0.02 * abs(expected), (se, expected)
    assert abs(mean - expected) < 4 * se, (mean, expected, se)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("param,opts", PARAMS, ids=PARAM_IDS)
def test_every_parameterization_of_the_optimal_network_gives_the_exact_score(sde_name, param, opts):
    sde = SDES[sde_name]
    gen = torch.Generator().manual_seed(1)
    x = DATA.sample(64, generator=gen) * 1.5
    t = torch.rand(64, dtype=torch.float64, generator=gen) * sde.T
    t[:4] = torch.tensor([1e-5, 1e-3, 0.5 * sde.T, sde.T])
    score = models.get_score_fn(optimal(sde, param, opts), sde, models.Precond(param, "t", **opts))(x, t)
    exact = DATA.score_fn(sde)(x, t)
    # float64 round-off: the x0 route forms x - alpha_bar x0_hat (size ~|x|, error ~1e-16 |x|) and divides by
    # beta_bar^2, which is 1e-12 for sub-VP at t = 1e-5; the bound below allows 10x that, plus 1e-8 relative.
    b2 = sde.beta_bar(t)[:, None] ** 2
    allowed = 1e-8 * exact.abs() + 1e-15 * (1 + x.abs()) / b2
    assert ((score - exact).abs() <= allowed).all(), float(((score - exact).abs() / allowed).max())


@pytest.mark.parametrize("param,opts", PARAMS, ids=PARAM_IDS)
def test_dsm_loss_at_the_optimum_is_the_analytic_minimum(param, opts):
    sde = SDES["vp"]
    losses = loss_samples(sde, 40000, 0, param, opts)
    minimum = D * uniform_average(lambda t: posterior_eps_var(sde, t), 1e-5, sde.T)
    assert_mc_close(losses, minimum)
    # All parameterisations see the same (t, eps) draws and imply the same score: identical per-sample losses.
    torch.testing.assert_close(losses, loss_samples(sde, 40000, 0), rtol=1e-7, atol=1e-9)


def _eps_sensitivity(sde, param, opts):
    """k(t) with eps_hat changing by k(t) c when the network output changes by c (from the definitions)."""
    sd = opts.get("sigma_data", 0.5)

    def k(t):
        t = torch.as_tensor(t, dtype=torch.float64)
        a, b = sde.alpha_bar(t), sde.beta_bar(t)
        da, db = path_rates(sde, t)
        return {"eps": torch.ones_like(t), "x0": a / b, "v": a / (a**2 + b**2),
                "score": b, "flow": a / (a * db - da * b),
                "edm": a * sd / torch.sqrt(b**2 + a**2 * sd**2)}[param].numpy()
    return k


@pytest.mark.parametrize("param,opts", PARAMS, ids=PARAM_IDS)
def test_perturbing_the_optimum_increases_the_loss_by_the_predicted_amount(param, opts):
    sde, eps = SDES["vp"], 1e-3
    c = torch.tensor([0.1, -0.2, 0.05, 0.1], dtype=torch.float64)
    if param == "flow":
        # VP's velocity is large (beta_bar' ~ t^(-1/2) near 0), so a shift of it moves eps_hat by less: a 3x
        # larger one keeps the increase over 10 standard errors (8 with c itself).
        c = 3 * c
    base = loss_samples(sde, 40000, 3, param, opts, eps=eps)
    shifted = loss_samples(sde, 40000, 3, param, opts, shift=c, eps=eps)
    k = _eps_sensitivity(sde, param, opts)
    # E[eps - eps_hat* | x_t] = 0, so shifting eps_hat by k(t) c adds exactly E_t[k^2] ||c||^2 to the loss.
    increase = uniform_average(lambda t: k(t) ** 2, eps, sde.T) * float(c @ c)
    diff = shifted - base
    mean, se = float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))
    assert mean > 10 * se, "the perturbation must increase the loss significantly"
    assert abs(mean - increase) < 4 * se + 1e-12, (mean, increase, se)


def test_importance_sampled_likelihood_loss_has_the_same_expectation_with_less_variance():
    sde, eps, n = SDES["vp"], 1e-3, 200000
    plain = loss_samples(sde, n, 4, weighting="likelihood", eps=eps)
    importance = loss_samples(sde, n, 5, weighting="likelihood_is", eps=eps)
    g2_over_b2 = lambda t: (sde.g2(torch.as_tensor(t)) / sde.beta_bar(torch.as_tensor(t)) ** 2).numpy()  # noqa: E731
    expected = D * uniform_average(lambda t: g2_over_b2(t) * posterior_eps_var(sde, t), eps, sde.T)
    assert_mc_close(plain, expected)
    assert_mc_close(importance, expected)
    se = math.sqrt(plain.var() / n + importance.var() / n)
    assert abs(float(plain.mean() - importance.mean())) < 4 * se
    # Measured variance ratio 17 here (480 at eps = 1e-5): the plain estimator has the g^2/beta_bar^2 ~ 1/t spike.
    assert plain.var() > 10 * importance.var()


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_importance_likelihood_weights_stay_on_the_device(name):
    # Reading a value on the host (float(), .item()) is refused on the meta device, as on CUDA it would stall the
    # training step for a GPU synchronisation.
    sde, eps = SDES[name], 1e-5
    weighting = models.ImportanceLikelihoodWeighting(eps=eps)
    t, w = weighting.sample(sde, torch.rand(8, dtype=torch.float64, device="meta"))
    assert t.device.type == w.device.type == "meta" and w.shape == t.shape == (8,)
    _, w = weighting.sample(sde, torch.rand(8, dtype=torch.float64))
    lam_hi, lam_lo = sde.log_snr(torch.tensor(eps, dtype=torch.float64)), sde.log_snr(torch.tensor(sde.T))
    assert torch.allclose(w, 2 * (lam_hi - lam_lo) / (sde.T - eps), rtol=1e-12)


def test_edm_weighting_on_the_ve_sde_matches_its_lognormal_expectation():
    sde, sd, eps = SDES["ve"], 0.7, 1e-5
    weighting = models.EDMWeighting(eps=eps, sigma_data=sd)
    losses = loss_samples(sde, 40000, 6, "edm", {"sigma_data": sd}, weighting=weighting)
    # E over log sigma ~ N(-1.2, 1.2^2), sigma mapped to t and clamped to [eps, T] as documented.
    z = np.linspace(-9, 9, 20001)
    t = sde.t_of_log_snr(-torch.as_tensor(-1.2 + 1.2 * z)).clamp(eps, sde.T)
    sigma2 = (sde.beta_bar(t) / sde.alpha_bar(t)).numpy() ** 2
    integrand = (sigma2 + sd**2) / sd**2 * D * posterior_eps_var(sde, t) * stats.norm.pdf(z)
    assert_mc_close(losses, np.trapezoid(integrand, z))


# Variance of a batch mean relative to uniform t, measured over 1500 batches: stratified 0.40, antithetic 0.73.
# With 600 batches the ratio of two variance estimates has ~8% relative error: the bounds are > 2.5 such errors away.
@pytest.mark.parametrize("t_sampling,ratio_bound", [("stratified", 0.55), ("antithetic", 0.9)])
def test_stratified_and_antithetic_t_are_unbiased_and_reduce_the_variance_of_batch_means(t_sampling, ratio_bound):
    sde, batches, n = SDES["vp"], 600, 64
    minimum = D * uniform_average(lambda t: posterior_eps_var(sde, t), 1e-5, sde.T)
    means = {s: torch.stack([loss_samples(sde, n, 100 + i, t_sampling=s).mean() for i in range(batches)])
             for s in ("uniform", t_sampling)}
    assert_mc_close(means[t_sampling], minimum)
    assert means[t_sampling].var() < ratio_bound * means["uniform"].var()


def test_loss_reductions_and_gradients_reach_the_network():
    torch.manual_seed(0)
    net = models.MLP(D, width=32, depth=2)
    nn.init.normal_(net.out.weight, std=0.1)
    x0 = DATA.sample(128, generator=torch.Generator().manual_seed(0)).float()
    per_sample = models.dsm_loss(net, VPSDE(), x0, reduce="none", generator=torch.Generator().manual_seed(1))
    mean = models.dsm_loss(net, VPSDE(), x0, generator=torch.Generator().manual_seed(1))
    assert per_sample.shape == (128,) and mean.shape == ()
    torch.testing.assert_close(mean, per_sample.mean())
    mean.backward()
    grads = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert torch.isfinite(grads).all() and grads.abs().max() > 0


def test_label_dropout_replaces_labels_by_the_null_label_at_the_given_rate():
    class Recorder(nn.Module):
        num_classes = 10

        def forward(self, x, noise_input, y=None):
            self.y = y
            return torch.zeros_like(x)

    net, n, p = Recorder(), 20000, 0.2
    x0 = torch.zeros(n, 2)
    y = torch.arange(n) % 10
    models.dsm_loss(net, VPSDE(), x0, class_labels=y, label_dropout=p, generator=torch.Generator().manual_seed(0))
    dropped = net.y == 10
    # Binomial(n, p): standard error of the rate sqrt(p(1-p)/n) = 2.8e-3; 4 SE.
    assert abs(float(dropped.float().mean()) - p) < 0.0113
    assert torch.equal(net.y[~dropped], y[~dropped])


def test_bad_loss_arguments_name_the_valid_choices():
    net, x0 = models.MLP(2), torch.zeros(4, 2)
    with pytest.raises(ValueError,
                       match="unknown weighting 'nll'; available: eps, likelihood, likelihood_is, edm, flow$"):
        models.dsm_loss(net, VPSDE(), x0, weighting="nll")
    with pytest.raises(ValueError,
                       match="unknown parameterization 'epsilon'; available: score, eps, x0, v, flow, edm$"):
        models.dsm_loss(net, VPSDE(), x0, precond="epsilon")
    with pytest.raises(ValueError,
                       match="unknown t_sampling 'sobol'; available: uniform, stratified, antithetic, logit_normal$"):
        models.dsm_loss(net, VPSDE(), x0, t_sampling="sobol")
    with pytest.raises(ValueError, match="unknown reduce 'sum'; available: mean, none$"):
        models.dsm_loss(net, VPSDE(), x0, reduce="sum")
    with pytest.raises(ValueError, match=r"eps .* must be in \[0, T=1.0\)"):
        models.dsm_loss(net, VPSDE(), x0, weighting=models.NoiseMSEWeighting(eps=1.5))
    with pytest.raises(ValueError, match="likelihood_is' needs eps > 0"):
        models.get_weighting("likelihood_is", eps=0.0)
    with pytest.raises(ValueError, match=r"unknown arguments \['sigma_data'\] for weighting 'eps'"):
        models.get_weighting("eps", sigma_data=0.5)
    with pytest.raises(ValueError, match=r"hyper-parameters \['eps'\] are for a weighting given by name"):
        models.get_weighting(models.NoiseMSEWeighting(), eps=1e-3)
    with pytest.raises(ValueError, match="label_dropout > 0 needs class_labels"):
        models.dsm_loss(net, VPSDE(), x0, label_dropout=0.1)
    with pytest.raises(UsageError, match="the weighting has sigma_data=0.7 but the preconditioning 0.5"):
        models.dsm_loss(net, VPSDE(), x0, precond="edm", weighting=models.EDMWeighting(sigma_data=0.7))
    with pytest.raises(UsageError, match="sigma_data must be a positive number"):
        models.Precond("edm", sigma_data=0.0)
    assert set(models.WEIGHTINGS) == {"eps", "likelihood", "likelihood_is", "edm", "flow"}
    assert set(models.PARAMETERIZATIONS) == {"score", "eps", "x0", "v", "flow", "edm"}


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "cosine"])
def test_importance_density_is_normalised_and_gives_the_likelihood_weight(name):
    sde, eps = SDES[name], 1e-3
    weighting = models.ImportanceLikelihoodWeighting(eps=eps)
    # p(t) = (g^2/beta_bar^2) / (2 (lambda(eps) - lambda(T))) integrates to 1 on [eps, T] because
    # g^2/beta_bar^2 = -2 d lambda/dt; quadrature to 1e-9 relative.
    density = lambda t: weighting.density(sde, torch.as_tensor(t, dtype=torch.float64)).numpy()  # noqa: E731
    assert uniform_average(density, eps, sde.T) * (sde.T - eps) == pytest.approx(1.0, rel=1e-8)
    # w = (g^2/beta_bar^2) p_uniform / p: the same lambda = g^2 relative to uniform t as LikelihoodWeighting.
    t = torch.linspace(eps, sde.T, 50, dtype=torch.float64)
    ratio = models.LikelihoodWeighting(eps=eps).weight(sde, t) / ((sde.T - eps) * weighting.density(sde, t))
    torch.testing.assert_close(weighting.weight(sde, t), ratio, rtol=1e-10, atol=0)


def test_weightings_lambda_and_t_range():
    sde, eps = SDES["vp"], 1e-3
    t = torch.linspace(eps, sde.T, 20, dtype=torch.float64)
    torch.testing.assert_close(models.NoiseMSEWeighting(eps).lam(sde, t), sde.beta_bar(t) ** 2, rtol=1e-14, atol=0)
    torch.testing.assert_close(models.LikelihoodWeighting(eps).lam(sde, t), sde.g2(t), rtol=1e-12, atol=0)
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    for name in models.WEIGHTINGS:
        drawn, w = models.get_weighting(name, eps=eps).sample(sde, u)
        assert drawn.min() >= eps and drawn.max() <= sde.T and (w > 0).all(), name
        # Each t_of_u is an inverse CDF: non-decreasing in u.
        assert (drawn.diff() >= 0).all(), name
    assert isinstance(models.get_weighting("EDM", sigma_data=0.7), models.EDMWeighting)
