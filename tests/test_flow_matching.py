"""Flow matching in the DSM family: the flow (velocity) parameterisation and loss against the path's own velocity,
its minimiser against the exact mixture under rectified flow, logit-normal training times, minibatch optimal-transport
pairs against brute force, SD3's shift of sampling grids, and rectified runs through the command line."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from scoresde import models, solvers, training
from scoresde import run as runs
from scoresde.training import progressive
from scoresde.run import checkpoint as ckpt
from scoresde.run.builders import build_t_sampling
from scoresde.sde_lib import VESDE, CosineVPSDE, GaussianMixture, PolynomialFlow, RectifiedFlow, SubVPSDE, VPSDE
from scoresde.utils import UsageError

from helpers import cli, metrics_rows, tiny_config
from oracles import MIX
from test_precond import MEANS, VARS, WEIGHTS, ExactDenoiserNetwork
from test_training import _flat

SDES = {"rectified": RectifiedFlow(), "poly2": PolynomialFlow(power=2.0), "vp": VPSDE(), "subvp": SubVPSDE(),
        "ve": VESDE(sigma_max=20.0), "cosine": CosineVPSDE()}
# The mixture of test_precond, whose exact posterior mean E[x_0 | x_t] (and so the exact velocity) is computed there
# from Bayes' rule on each component.
DATA = GaussianMixture(WEIGHTS, MEANS, VARS)


def rates(sde, t):
    """(alpha_bar', beta_bar') at float64 times t by autograd of the schedule (0 t keeps a graph for VE's alpha_bar)."""
    t = t.detach().clone().requires_grad_(True)
    da, = torch.autograd.grad((sde.alpha_bar(t) + 0 * t).sum(), t)
    db, = torch.autograd.grad(sde.beta_bar(t).sum(), t)
    return da, db


class Recorder(nn.Module):
    """`inner`'s output, keeping the inputs x_t and noise input t the loss fed it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, noise_input, y=None):
        self.x, self.t = x.detach(), noise_input.detach()
        return self.inner(x, noise_input)


def random_mlp(seed=0):
    torch.manual_seed(seed)
    net = models.MLP(2, width=16, depth=2).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, dtype=p.dtype))
    return net


def velocity_error(sde, param, n=256, seed=0):
    """(dsm_loss with the flow weighting, ||u_hat - u||^2 from its definition) per example, float64."""
    x0 = DATA.sample(n, generator=torch.Generator().manual_seed(seed))
    net = Recorder(random_mlp())
    weighting = models.FlowMatchingWeighting(eps=1e-3)
    loss = models.dsm_loss(net, sde, x0, precond=models.Precond(param, "t"), weighting=weighting, reduce="none",
                           generator=torch.Generator().manual_seed(seed + 1))
    xt, t = net.x, net.t
    a, b = sde.alpha_bar(t)[:, None], sde.beta_bar(t)[:, None]
    da, db = (r[:, None] for r in rates(sde, t))
    noise = (xt - a * x0) / b                         # the noise the loss drew, recovered from x_t
    target = da * x0 + db * noise                     # u = d x_t/dt along this example's path
    out = net.inner(xt, t)
    if param == "flow":
        u_hat = out
    else:       # the velocity the eps-prediction implies: alpha_bar' x0_hat + beta_bar' eps_hat
        u_hat = da * (xt - b * out) / a + db * out
    return loss, (u_hat - target).square().sum(1)


@pytest.mark.parametrize("sde_name", ["rectified", "poly2", "vp", "ve"])
@pytest.mark.parametrize("param", ["flow", "eps"])
def test_the_flow_weighting_is_the_velocity_error_of_any_parameterisation(sde_name, param):
    loss, expected = velocity_error(SDES[sde_name], param)
    # float64 throughout; the noise recovered from x_t loses at most a few digits where beta_bar = 1e-3.
    torch.testing.assert_close(loss, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_the_flow_weighting_is_lambda_g4_over_4(sde_name):
    # ||u_hat - u||^2 = (beta_bar' - f beta_bar)^2 ||eps_hat - eps||^2 and g^2 = 2 beta_bar (beta_bar' - f beta_bar), so
    # lambda = w beta_bar^2 = g^4/4 (docs/math.md, Flow matching), with g^2 from the member's closed form.
    sde = SDES[sde_name]
    t = torch.linspace(1e-3, sde.T, 101, dtype=torch.float64)
    lam = models.FlowMatchingWeighting(eps=1e-3).lam(sde, t)
    torch.testing.assert_close(lam, sde.g2(t) ** 2 / 4, rtol=1e-9, atol=0)
    if sde_name == "rectified":
        torch.testing.assert_close(models.FlowMatchingWeighting().weight(sde, t), 1 / (1 - t) ** 2, rtol=1e-12, atol=0)


@pytest.mark.parametrize("sde_name", ["rectified", "poly2"])
def test_the_flow_parameterisation_of_the_exact_velocity_gives_the_exact_score(sde_name):
    sde = SDES[sde_name]
    gen = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(64, 2, dtype=torch.float64, generator=gen)
    t = 0.02 + (sde.T - 0.02) * torch.rand(64, dtype=torch.float64, generator=gen)
    t[0] = sde.T
    score = models.get_score_fn(ExactDenoiserNetwork(sde, "flow", 0.5), sde, models.Precond("flow", "t"))(x, t)
    # The mixture's score from its Gaussian densities; float64 round-off (scores are below ~1e2 here).
    torch.testing.assert_close(score, DATA.score(x, sde, t), rtol=1e-8, atol=1e-8)


class Shifted(nn.Module):
    """The exact velocity E[u | x_t] of DATA under `sde`, plus c + k x (a perturbation away from it)."""

    def __init__(self, sde, c=(0.0, 0.0), k=0.0):
        super().__init__()
        self.exact = ExactDenoiserNetwork(sde, "flow", 0.5)
        self.c, self.k = torch.as_tensor(c, dtype=torch.float64), k

    def forward(self, x, noise_input, y=None):
        return self.exact(x, noise_input) + self.c + self.k * x


def flow_losses(model, n=20000, seed=0):
    """Per-example conditional flow-matching losses ||F - u||^2 and marginal ones ||F - E[u | x_t]||^2 under rectified
    flow, for the same draws whatever the model."""
    sde = SDES["rectified"]
    x0 = DATA.sample(n, generator=torch.Generator().manual_seed(seed))
    net = Recorder(model)
    cond = models.dsm_loss(net, sde, x0, precond=models.Precond("flow", "t"), weighting="flow", reduce="none",
                           t_sampling="uniform", generator=torch.Generator().manual_seed(seed + 1))
    exact = ExactDenoiserNetwork(sde, "flow", 0.5)(net.x, net.t)
    marginal = (model(net.x, net.t) - exact).square().sum(1)
    return cond, marginal


def test_the_exact_velocity_minimises_the_flow_matching_loss():
    base, _ = flow_losses(Shifted(SDES["rectified"]))
    c = torch.tensor([0.3, -0.2], dtype=torch.float64)
    shifted, _ = flow_losses(Shifted(SDES["rectified"], c))
    # E[u - E[u | x_t] | x_t] = 0: shifting the output by c adds exactly ||c||^2 = 0.13 to the expected loss. The
    # same draws for both make the difference 2 c.(v* - u) + ||c||^2, whose mean is sharp.
    diff = shifted - base
    mean, se = float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))
    assert mean > 10 * se
    assert abs(mean - float(c @ c)) < 4 * se, (mean, float(c @ c), se)


def test_the_conditional_and_marginal_losses_differ_by_a_constant():
    # ||F - u||^2 - ||F - v*||^2 = ||u||^2 - ||v*||^2 - 2 F.(u - v*), and E[u - v* | x_t] = 0: its expectation does
    # not depend on F. Two models far apart (0.3 x changes the loss by ~0.4) agree to within 4 standard errors of
    # the paired difference.
    sde = SDES["rectified"]
    cond_a, marg_a = flow_losses(Shifted(sde))
    cond_b, marg_b = flow_losses(Shifted(sde, (0.2, 0.1), 0.3))
    assert float((cond_b - cond_a).mean()) > 0.1
    gap = (cond_a - marg_a) - (cond_b - marg_b)
    assert abs(float(gap.mean())) < 4 * float(gap.std() / math.sqrt(len(gap)))


def test_logit_normal_times_follow_their_law_on_eps_T():
    sde, eps, n = SDES["rectified"], 1e-3, 5000
    net = Recorder(lambda x, t: torch.zeros_like(x))
    draw = models.get_t_sampling("logit_normal", mean=0.5, std=0.8)
    models.dsm_loss(net, sde, torch.zeros(n, 2), precond="flow", weighting=models.FlowMatchingWeighting(eps=eps),
                    t_sampling=draw, generator=torch.Generator().manual_seed(0))
    u = (net.t.double() - eps) / (sde.T - eps)
    z = (torch.logit(u) - 0.5) / 0.8
    # Kolmogorov-Smirnov against N(0, 1) (a fixed seed: p is one number, here far above the threshold).
    assert stats.kstest(z.numpy(), "norm").pvalue > 0.01
    assert stats.kstest(u.numpy(), "uniform").pvalue < 1e-6
    with pytest.raises(UsageError, match="has its own law of t"):
        models.dsm_loss(net, sde, torch.zeros(4, 2), weighting="likelihood_is", t_sampling=draw)
    with pytest.raises(UsageError, match="positive std"):
        models.LogitNormal(std=0.0)
    config = tiny_config(t_sampling="logit_normal", logit_mean=-0.3, logit_std=1.5)
    assert repr(build_t_sampling(config)) == "LogitNormal(mean=-0.3, std=1.5)"


def test_the_ot_assignment_minimises_the_total_squared_distance():
    gen = torch.Generator().manual_seed(0)
    for trial in range(5):
        x, y = torch.randn(7, 3, generator=gen), torch.randn(7, 3, generator=gen)
        cost = torch.cdist(x.double(), y.double()) ** 2
        best = min(float(sum(cost[i, p[i]] for i in range(7))) for p in itertools.permutations(range(7)))
        perm = models.ot_permutation(x, y)
        assert sorted(perm.tolist()) == list(range(7))
        assert float(cost[torch.arange(7), perm].sum()) == pytest.approx(best, rel=1e-12)


def test_the_ot_coupling_re_pairs_only_the_given_rows():
    sde, n, lo, hi = SDES["rectified"], 10, 2, 8
    x0 = DATA.sample(n, generator=torch.Generator().manual_seed(3))

    def drawn_noise(coupling, rows):
        net = Recorder(lambda x, t: torch.zeros_like(x))
        models.dsm_loss(net, sde, x0, precond="flow", weighting="flow", coupling=coupling, coupling_rows=rows,
                        generator=torch.Generator().manual_seed(4))
        a, b = sde.alpha_bar(net.t)[:, None], sde.beta_bar(net.t)[:, None]
        return (net.x - a * x0) / b

    independent, paired = drawn_noise("independent", None), drawn_noise("ot", (lo, hi))
    # The times and everything outside [lo, hi) are untouched; inside, the noise is the drawn rows, re-paired with the
    # data at the least total squared distance of all 6! pairings. Recovered noise: 1e-9 of float64 round-off.
    torch.testing.assert_close(paired[:lo], independent[:lo], rtol=0, atol=1e-9)
    torch.testing.assert_close(paired[hi:], independent[hi:], rtol=0, atol=1e-9)
    cost = torch.cdist(x0[lo:hi], independent[lo:hi]) ** 2
    best = min(float(sum(cost[i, p[i]] for i in range(hi - lo))) for p in itertools.permutations(range(hi - lo)))
    assert float((x0[lo:hi] - paired[lo:hi]).square().sum()) == pytest.approx(best, rel=1e-9)
    assert float((x0[lo:hi] - independent[lo:hi]).square().sum()) > best * 1.01


def rectified_config(**training):
    config = tiny_config(**training)
    config.sde.name = "rectified"
    config.model.parameterization = "flow"
    config.training.weighting = "flow"
    return config


def test_training_with_ot_pairs_resumes_bit_exactly(tmp_path):
    straight = training.train(rectified_config(coupling="ot", t_sampling="logit_normal"), tmp_path / "a")
    training.train(rectified_config(coupling="ot", t_sampling="logit_normal", n_iters=10), tmp_path / "b")
    resumed = training.train(rectified_config(coupling="ot", t_sampling="logit_normal"), tmp_path / "b")
    assert straight.step == resumed.step == 20 and math.isfinite(straight.loss)
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "a"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "b"))
    for key in ("model", "ema", "optimizer"):
        xs, ys = _flat(a[key]), _flat(b[key])
        assert len(xs) == len(ys) > 0 and all(torch.equal(x, y) for x, y in zip(xs, ys)), key
    training.train(rectified_config(t_sampling="logit_normal"), tmp_path / "c")
    ot_losses = [r["loss"] for r in metrics_rows(tmp_path / "a") if "loss" in r]
    independent_losses = [r["loss"] for r in metrics_rows(tmp_path / "c") if "loss" in r]
    # The same seed with independent pairs draws the same t and noise, so the curves differ by the pairing alone.
    assert ot_losses == [r["loss"] for r in metrics_rows(tmp_path / "b") if "loss" in r]
    assert ot_losses != independent_losses
    with pytest.raises(ValueError, match="unknown coupling 'sinkhorn'; available: independent, ot"):
        training.Trainer(rectified_config(coupling="sinkhorn"), tmp_path / "d")


def test_shift_offsets_the_log_snr_of_the_inner_times_for_every_member():
    s = 3.0
    sde = SDES["rectified"]
    plain = solvers.time_grid(sde, 10, 1e-3, "uniform")
    shifted = solvers.time_grid(sde, 10, 1e-3, "uniform", shift=s)
    # SD3's sigma' = s sigma/(1 + (s - 1) sigma) with sigma = t on the rectified path; T and eps stay.
    torch.testing.assert_close(shifted[1:-1], s * plain[1:-1] / (1 + (s - 1) * plain[1:-1]), rtol=1e-12, atol=0)
    assert (float(shifted[0]), float(shifted[-1])) == (sde.T, 1e-3)
    # shift 2 for the others: VP's first uniform step spans only 0.95 in log-SNR (rectified flow's 2.9).
    for name in ("vp", "subvp", "ve", "cosine", "poly2"):
        sde = SDES[name]
        plain = solvers.time_grid(sde, 10, 1e-3, "uniform")
        shifted = solvers.time_grid(sde, 10, 1e-3, "uniform", shift=2.0)
        # The closed-form (or bisected, poly2) inverse of the log-SNR: 1e-9 of round-off.
        torch.testing.assert_close(sde.log_snr(shifted[1:-1]), sde.log_snr(plain[1:-1]) - math.log(2.0),
                                   rtol=0, atol=1e-9)
        assert (shifted[1:] < shifted[:-1]).all()
    # A log-SNR grid with 20 steps on rectified flow has steps of 0.69 in log-SNR: an offset of log 3 crosses T.
    with pytest.raises(ValueError, match="shift=3.0 moves inner times of the grid past T"):
        solvers.time_grid(SDES["rectified"], 20, 1e-3, "logsnr", shift=s)


def test_the_sampling_shift_of_the_config_reaches_the_solver():
    sde = SDES["rectified"]
    config = rectified_config()
    config.sampling.solver, config.sampling.steps, config.sampling.grid = "euler", 8, "uniform"
    config.sampling.shift = 3.0
    sampler = runs.sampler_from_config(config)
    assert sampler.options == {"grid": "uniform", "shift": 3.0}
    visited = []

    def score(x, t):
        visited.append(float(t[0]))
        return MIX.score(x, sde, t)

    sampler.sample(sde, score, (4, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = torch.linspace(sde.T, config.sampling.eps, 9, dtype=torch.float64)
    inner = 3 * grid[1:-1] / (1 + 2 * grid[1:-1])
    # Euler evaluates the score at every time of the grid but the last.
    np.testing.assert_allclose(visited, [sde.T, *inner.tolist()], rtol=1e-9)
    config.sampling.shift = 1.0
    assert "shift" not in runs.sampler_from_config(config).options
    with pytest.raises(ValueError, match="a given or calibrated grid is used as it is"):
        solvers.sample(sde, score, (4, 2), "euler", grid=grid.tolist(), shift=2.0)


RECTIFIED_TOY = ["--config", "rectified_toy", "--device=cpu", "--config.data.num_samples=2000",
                 "--config.model.mlp_width=32", "--config.model.mlp_depth=2", "--config.training.batch_size=64",
                 "--config.training.log_freq=5", "--config.training.eval_freq=10",
                 "--config.training.snapshot_freq=10", "--config.training.snapshot_samples=16",
                 "--config.training.progress=False", "--config.sampling.steps=4", "--config.optim.warmup=5"]


@pytest.fixture(scope="module")
def rectified_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rectified")
    cli(*RECTIFIED_TOY, "--mode", "train", "--workdir", workdir, "--config.training.n_iters=20",
        "--config.model.conditional=True")
    return workdir


def test_a_rectified_run_records_its_flow_settings(rectified_run):
    config = json.loads((rectified_run / "config.json").read_text())
    assert (config["sde"]["name"], config["model"]["parameterization"], config["training"]["weighting"],
            config["training"]["t_sampling"], config["training"]["coupling"]) == (
        "rectified", "flow", "flow", "logit_normal", "ot")


def test_guided_sampling_and_the_elbo_of_a_rectified_run(rectified_run):
    result = cli("--mode", "sample", "--workdir", rectified_run, "--solver=heun", "--steps=3", "--guidance=2",
                 "--class_label=0,1", "--num_samples=6", "--batch_size=3", "--device=cpu")
    samples = np.load(result.written())["samples"]
    assert samples.shape == (6, 2) and np.isfinite(samples).all()
    bound = cli("--mode", "likelihood", "--workdir", rectified_run, "--num_samples=4", "--bound=elbo",
                "--config.eval.bound_samples=4", "--device=cpu")
    report = json.loads((rectified_run / "likelihood_elbo.json").read_text())
    assert report["bound"] == "elbo" and math.isfinite(report["bits_per_dim"]), bound.stdout


def test_progressive_distillation_of_a_rectified_run(tmp_path):
    cli(*RECTIFIED_TOY, "--mode", "train", "--workdir", tmp_path, "--config.training.n_iters=20")   # unconditional
    r = cli("--mode", "distill", "--workdir", tmp_path, "--device=cpu", "--config.distill.start_steps=8",
            "--config.distill.target_steps=2", "--config.distill.iterations=5", "--config.training.progress=False")
    student = progressive.student_dir(tmp_path, 2)
    assert r.stdout.strip().endswith(f"--workdir {student} --solver ddim --steps 2")
    config = runs.config_of_checkpoint(ckpt.latest_checkpoint(student))
    assert (config.sde.name, config.model.parameterization) == ("rectified", "v")
    sampled = cli("--mode", "sample", "--workdir", student, "--device=cpu", "--solver", "ddim", "--steps", 2,
                  "--num_samples", 4)
    assert "NFE 2 per batch" in sampled.stdout
