"""The preconditioning of a run (models.Precond): what the network is fed, how its output becomes a score, and that
the run's network, loss weighting, score function and loaded checkpoint all use the same one."""
import json
import math

import pytest
import torch
from torch import nn

from scoresde import configs
from scoresde import models
from scoresde.models.diffusers import DiffusersUNet
from scoresde import run as runs
from scoresde.run import builders, load_run, workdir
from scoresde.sde_lib import VESDE, GaussianMixture, SubVPSDE, VPSDE
from scoresde.training import Trainer
from scoresde.utils import UsageError

from helpers import tiny_config

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(sigma_max=20.0)}
PARAMS = [("eps", 0.5), ("x0", 0.5), ("v", 0.5), ("score", 0.5), ("flow", 0.5), ("edm", 0.5), ("edm", 0.7)]
PARAM_IDS = ["eps", "x0", "v", "score", "flow", "edm", "edm_sd0.7"]

# A 2-D mixture of isotropic Gaussians: component k is N(MEANS[k], VARS[k] I) with weight WEIGHTS[k].
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MEANS = torch.tensor([[-1.0, 0.5], [1.5, 1.0], [0.0, -2.0]], dtype=torch.float64)
VARS = torch.tensor([0.04, 0.25, 0.1], dtype=torch.float64)


def posterior_mean(x, a, b):
    """E[x_0 | x_t = x] for x_t = a x_0 + b eps, from Bayes' rule on each component:
    x_t | k ~ N(a mu_k, (a^2 v_k + b^2) I) gives responsibilities r_k, and
    E[x_0 | x_t, k] = mu_k + a v_k (x - a mu_k)/(a^2 v_k + b^2). a, b: shape (N, 1)."""
    var = a[:, :, None] ** 2 * VARS + b[:, :, None] ** 2                            # (N, 1, K)
    diff = x[:, :, None] - a[:, :, None] * MEANS.T                                  # (N, D, K)
    log_r = torch.log(WEIGHTS) - 0.5 * (diff**2).sum(1) / var[:, 0] - torch.log(var[:, 0])   # D = 2: det^(-1/2) = 1/var
    r = torch.softmax(log_r, dim=1)                                                 # (N, K)
    means_k = MEANS.T + a[:, :, None] * VARS * diff / var                           # (N, D, K)
    return (means_k * r[:, None, :]).sum(2)


class ExactDenoiserNetwork(nn.Module):
    """The network output each parameterisation defines for the exact denoiser D = E[x_0 | x_t], fed noise input t.

    eps_hat = (x - alpha_bar D)/beta_bar, x0_hat = D, v = alpha_bar eps_hat - beta_bar D,
    score = (alpha_bar D - x)/beta_bar^2 (Tweedie), the path velocity u = alpha_bar' D + beta_bar' eps_hat
    (derivatives by autograd of the schedule), and EDM's F = (D - c_skip x_hat)/c_out for the input c_in x_hat,
    x_hat = x/alpha_bar (Karras et al. 2022, Table 1, sigma = beta_bar/alpha_bar).
    """

    def __init__(self, sde, parameterization, sigma_data):
        super().__init__()
        self.sde, self.parameterization, self.sd = sde, parameterization, sigma_data

    def forward(self, x, noise_input, y=None):
        t = noise_input.double()
        a, b = self.sde.alpha_bar(t)[:, None], self.sde.beta_bar(t)[:, None]
        sigma, sd = b / a, self.sd
        if self.parameterization == "edm":
            x = x * a * torch.sqrt(sigma**2 + sd**2)          # x_t from the network input c_in x_t/alpha_bar
        d = posterior_mean(x, a, b)
        eps = (x - a * d) / b
        tt = t.clone().requires_grad_(True)
        da, = torch.autograd.grad((self.sde.alpha_bar(tt) + 0 * tt).sum(), tt)
        db, = torch.autograd.grad(self.sde.beta_bar(tt).sum(), tt)
        return {"eps": eps, "x0": d, "v": a * eps - b * d, "score": (a * d - x) / b**2,
                "flow": da[:, None] * d + db[:, None] * eps,
                "edm": (d - sd**2 / (sigma**2 + sd**2) * x / a) / (sigma * sd / torch.sqrt(sigma**2 + sd**2))
                }[self.parameterization]


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("param,sigma_data", PARAMS, ids=PARAM_IDS)
def test_every_parameterisation_of_the_exact_denoiser_gives_the_posterior_mean_score(sde_name, param, sigma_data):
    sde = SDES[sde_name]
    gen = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(48, 2, dtype=torch.float64, generator=gen)
    t = 0.02 + 0.98 * torch.rand(48, dtype=torch.float64, generator=gen) * sde.T
    precond = models.Precond(param, "t", sigma_data)
    score = models.get_score_fn(ExactDenoiserNetwork(sde, param, sigma_data), sde, precond)(x, t)
    a, b = sde.alpha_bar(t)[:, None], sde.beta_bar(t)[:, None]
    expected = (a * posterior_mean(x, a, b) - x) / b**2
    # float64 round-off of the same closed forms by different routes (scores are at most ~1e3 here).
    torch.testing.assert_close(score, expected, rtol=1e-9, atol=1e-9)
    # sde_lib's mixture evaluates the score from the Gaussian densities directly: an independent reference.
    mixture = GaussianMixture(WEIGHTS, MEANS, VARS)
    torch.testing.assert_close(score, mixture.score(x, sde, t), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("param,sigma_data", PARAMS, ids=PARAM_IDS)
def test_the_score_is_the_denoiser_of_the_edm_coefficients(param, sigma_data):
    sde = VPSDE()
    net = models.MLP(2, width=16, depth=2, embedding="fourier").double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    precond = models.Precond.for_network(net, param, sigma_data)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 2, dtype=torch.float64, generator=gen)
    t = 0.05 + 0.95 * torch.rand(32, dtype=torch.float64, generator=gen)
    c = precond.coefficients(sde, t)
    a, b = sde.alpha_bar(t)[:, None], sde.beta_bar(t)[:, None]
    x_hat = x / a
    # D = c_skip x_hat + c_out F(c_in x_hat; c_noise) and score = (alpha_bar D - x)/beta_bar^2; t >= 0.05 keeps
    # beta_bar^2 >= 0.01, so the cancellation in alpha_bar D - x costs at most two digits of float64.
    d = c.c_skip[:, None] * x_hat + c.c_out[:, None] * net(c.c_in[:, None] * x_hat, c.c_noise)
    torch.testing.assert_close(models.get_score_fn(net, sde, precond)(x, t), (a * d - x) / b**2,
                               rtol=1e-11, atol=1e-11)


def test_networks_declare_their_noise_input():
    sde, t = VESDE(), torch.tensor([0.1, 0.5], dtype=torch.float64)
    log_sigma = torch.log(sde.beta_bar(t) / sde.alpha_bar(t))
    fourier = models.MLP(2, embedding="fourier")
    assert fourier.noise_input == "log_sigma"
    assert models.Precond.for_network(fourier, "eps").noise_input == "log_sigma"
    torch.testing.assert_close(models.Precond.for_network(fourier).coefficients(sde, t).c_noise, log_sigma,
                               rtol=0, atol=0)
    for embedding in ("sinusoidal", "positional"):
        assert models.UNet(1, 8, ch=8, ch_mult=(1, 2), attn_resolutions=(), embedding=embedding).noise_input == "t"
    assert DiffusersUNet.noise_input == "t"
    # EDM feeds its own c_noise = log(sigma)/4 whatever the embedding.
    edm = models.Precond.for_network(fourier, "edm")
    assert edm.noise_input == "edm"
    torch.testing.assert_close(edm.coefficients(sde, t).c_noise, log_sigma / 4, rtol=0, atol=0)
    assert models.Precond.for_network(nn.Linear(2, 2)).noise_input == "t"     # declares nothing
    scaled = models.UNet(1, 8, ch=8, ch_mult=(1, 2), attn_resolutions=(), embedding="fourier", scale_by_sigma=True)
    assert models.Precond.for_network(scaled, "score").noise_input == "log_sigma"
    with pytest.raises(UsageError, match="scale_by_sigma.*parameterization='edm' feeds it edm"):
        models.Precond.for_network(scaled, "edm")


def image_config(**model):
    config = configs.load_config("vpsde")
    config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 8, (1, 2), 1
    for key, value in model.items():
        config.model[key] = value
    return config


def preset_kwargs(config):
    m = config.model
    return dict(in_channels=1, image_size=8, ch=m.nf, ch_mult=m.ch_mult, num_res_blocks=m.num_res_blocks,
                attn_resolutions=m.attn_resolutions, dropout=m.dropout, resblock_updown=m.resblock_updown,
                skip_rescale=m.skip_rescale)


def test_an_unset_embedding_type_is_the_model_presets_and_an_explicit_one_overrides_it():
    config = image_config(name="ncsnpp")
    torch.manual_seed(3)
    net = builders.build_model(config, (1, 8, 8))
    torch.manual_seed(3)
    preset = models.get_model("ncsnpp", **preset_kwargs(config))
    assert net.embedding == preset.embedding == "fourier" and net.noise_input == "log_sigma"
    assert net.state_dict().keys() == preset.state_dict().keys()
    assert all(torch.equal(v, preset.state_dict()[k]) for k, v in net.state_dict().items())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p, q in zip(net.parameters(), preset.parameters()):
            noise = 0.05 * torch.randn(p.shape, generator=gen)
            p.add_(noise)
            q.add_(noise)
    x, noise_input = torch.randn(3, 1, 8, 8, generator=gen), torch.randn(3, generator=gen)
    # The same layers with the same weights: the same floating-point operations, so equal to the bit.
    assert torch.equal(net(x, noise_input), preset(x, noise_input))
    assert net(x, noise_input).abs().max() > 0
    # A value set in the config (as every config.json of a trained run holds) overrides the preset.
    assert builders.build_model(image_config(name="ncsnpp", embedding_type="sinusoidal"), (1, 8, 8)).embedding \
        == "sinusoidal"
    assert builders.build_model(image_config(), (1, 8, 8)).embedding == "sinusoidal"
    assert builders.build_model(image_config(name="ddpmpp"), (1, 8, 8)).embedding == "sinusoidal"
    assert builders.build_model(image_config(name="ncsnpp"), (2,)).embedding == "sinusoidal"   # vector data: MLP


def test_inference_takes_the_recorded_embedding_quietly_where_the_config_leaves_it_unset(caplog):
    config = image_config(name="ncsnpp")
    trained = json.loads(image_config(name="ncsnpp", embedding_type="sinusoidal").to_json())
    with caplog.at_level("WARNING"):
        runs.use_trained_sections(config, trained)
    assert config.model.embedding_type == "sinusoidal"
    assert "embedding_type" not in caplog.text


def test_a_run_records_the_embedding_it_trains_with(tmp_path):
    config = tiny_config(n_iters=2, snapshot_freq=2, eval_freq=2, log_freq=1, snapshot_samples=0)
    assert config.model.embedding_type is None
    trainer = Trainer(config, tmp_path)
    assert trainer.config.model.embedding_type == "sinusoidal" == trainer.model.embedding
    trainer.run()
    assert json.loads((tmp_path / "config.json").read_text())["model"]["embedding_type"] == "sinusoidal"


def test_the_edm_weighting_the_preconditioning_and_the_loaded_run_share_sigma_data(tmp_path):
    config = tiny_config(n_iters=2, snapshot_freq=2, eval_freq=2, log_freq=1, snapshot_samples=0, weighting="edm")
    config.model.parameterization, config.model.sigma_data = "edm", 0.7
    trainer = Trainer(config, tmp_path)
    sde, precond = trainer.sde, trainer.precond
    assert trainer.weighting.sigma_data == precond.sigma_data == 0.7
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    sigma = sde.beta_bar(t) / sde.alpha_bar(t)
    c = precond.coefficients(sde, t)
    # Karras et al. 2022, Table 1, at sigma_data = 0.7; float64 evaluations of the same formulas.
    torch.testing.assert_close(c.c_skip, 0.49 / (sigma**2 + 0.49), rtol=1e-14, atol=0)
    torch.testing.assert_close(c.c_out, 0.7 * sigma / torch.sqrt(sigma**2 + 0.49), rtol=1e-14, atol=0)
    torch.testing.assert_close(c.c_in, 1 / torch.sqrt(sigma**2 + 0.49), rtol=1e-14, atol=0)
    torch.testing.assert_close(c.c_noise, torch.log(sigma) / 4, rtol=1e-14, atol=0)
    # EDM's lambda(sigma) = (sigma^2 + s_d^2)/(sigma s_d)^2 on ||D - x_0||^2 is w = (sigma^2 + s_d^2)/s_d^2 on
    # ||beta_bar s + eps||^2 (models.EDMWeighting), at the same s_d.
    torch.testing.assert_close(trainer.weighting.weight(sde, t), (sigma**2 + 0.49) / 0.49, rtol=1e-14, atol=0)
    trainer.run()
    run = load_run(tmp_path)
    assert run.precond.sigma_data == 0.7 and run.precond.parameterization == "edm"
    # The untrained output layer is zero, so D = c_skip x_hat and the score is -x/(beta_bar^2 + alpha_bar^2 0.49).
    net = models.MLP(2, width=8, depth=1)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    a, b = sde.alpha_bar(t)[:, None], sde.beta_bar(t)[:, None]
    expected = -x.double() / (b**2 + a**2 * 0.49)
    # float32 network arithmetic: a few ulps (6e-8) of scores of size up to ~1e3.
    torch.testing.assert_close(models.get_score_fn(net, sde, run.precond)(x, t).double(), expected,
                               rtol=1e-5, atol=1e-5)


def test_sigma_data_is_set_once_for_the_model():
    config = tiny_config(weighting="edm")
    with config.unlocked():
        config.training.sigma_data = 0.7
    precond = builders.build_precond(config, models.MLP(2))
    with pytest.raises(UsageError, match="training.sigma_data is not read: .* model.sigma_data"):
        builders.build_weighting(config, precond)
    config.model.sigma_data = -1.0
    assert "model.sigma_data=-1.0: must be a positive number" in configs.validate.problems(config)


def test_a_saved_config_without_sigma_data_resumes_as_the_default():
    saved = json.loads(tiny_config().to_json())
    del saved["model"]["sigma_data"]
    refused, _ = workdir.config_changes(saved, json.loads(tiny_config().to_json()))
    assert refused == []
    current = tiny_config()
    current.model.sigma_data = 0.7
    refused, _ = workdir.config_changes(saved, json.loads(current.to_json()))
    assert refused == ["model.sigma_data: 0.5 -> 0.7"]
    assert math.isclose(models.SIGMA_DATA, 0.5)
