"""diffusers DDPM models: the score at the knots, DDIM against diffusers' DDIMScheduler, every sampler on the run."""
from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
from helpers import cli

from scoresde import run as runs
from scoresde import interop
from scoresde import likelihood
from scoresde import sde_lib
from scoresde.sde_lib import members
from scoresde import solvers
from scoresde.commands.importing import import_run

diffusers = pytest.importorskip("diffusers")

N = 1000
# alphas_cumprod of the default DDPMScheduler (linear betas 1e-4 .. 0.02), in float64 independently of the code.
ACP = torch.cumprod(1 - torch.linspace(1e-4, 0.02, N, dtype=torch.float64), 0)


def save_pipeline(folder, prediction_type="epsilon", **scheduler):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    unet.save_pretrained(folder / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=N, prediction_type=prediction_type, **scheduler).save_pretrained(
        folder / "scheduler")
    return unet.eval()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    return folder, save_pipeline(folder)


@pytest.fixture
def registered():
    assert "discrete_vp" in sde_lib.SDES, ("sde_lib/registry.py must register 'discrete_vp': DiscreteVPSDE "
                                           "for load_run to rebuild imported diffusers runs")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_score_at_the_knots_is_the_network_output(tmp_path, prediction_type):
    unet = save_pipeline(tmp_path, prediction_type)
    imported = interop.from_diffusers(tmp_path, "vpsde")
    n = torch.tensor([0, 1, 499, 998, 999])
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        score = imported.score_fn(x, (n + 1).double() / N).double()
        out = unet(x, n).sample.double()
    a, b = ACP[n].sqrt()[:, None, None, None], (1 - ACP[n]).sqrt()[:, None, None, None]
    eps = {"epsilon": out, "v_prediction": a * out + b * x.double(),
           "sample": (x.double() - a * out) / b}[prediction_type]
    want = -eps / b
    # The same float32 network call at the exact integer timestep; coefficients in float64 on both sides.
    assert float((score - want).abs().max() / want.abs().max()) < 1e-6


def test_ddim_on_the_trailing_knots_is_diffusers_ddim(pipeline):
    folder, unet = pipeline
    imported = interop.from_diffusers(folder, "vpsde")
    sched = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler", clip_sample=False, set_alpha_to_one=False,
                                                    timestep_spacing="trailing")
    sched.set_timesteps(10)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    x = x_T.clone()
    with torch.no_grad():
        for step in sched.timesteps:
            x = sched.step(unet(x, step).sample, step, x).prev_sample
        # Timestep n is t = (n+1)/N; the last DDIM step lands on alphas_cumprod[0], i.e. t_0 = 1/N.
        grid = [(int(step) + 1) / N for step in sched.timesteps] + [1 / N]
        ours = solvers.sample(imported.sde, imported.score_fn, None, "ddim", x_T=x_T, grid=grid, eps=1 / N)
    assert ours.nfe == 10
    # float32 round-off: diffusers keeps alphas_cumprod in float32, we compute the coefficients in float64.
    assert float((ours.x - x).abs().max() / x.abs().max()) < 1e-5


def test_import_run_samples_with_every_kind_of_solver_and_likelihood(pipeline, tmp_path, registered):
    folder, _ = pipeline
    path = import_run("diffusers", "vpsde", folder, tmp_path / "run")
    run = runs.load_run(tmp_path / "run")
    assert path.name == "checkpoint_0.pt" and run.config.eval.eps == 1 / N and run.config.model.name == "diffusers"
    gen = torch.Generator().manual_seed(0)
    for solver, steps, nfe in (("dpm_solver", 5, 5), ("pc", 3, 6), ("ddim", 4, 4)):
        out = solvers.sample(run.sde, run.score_fn, (2, 1, 8, 8), solver, steps=steps, eps=1 / N, generator=gen)
        assert out.nfe == nfe and torch.isfinite(out.x).all()
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    result = likelihood.log_likelihood(run.sde, run.score_fn, x, eps=run.config.eval.eps, rtol=1e-2, atol=1e-2,
                                       generator=gen)
    assert torch.isfinite(result.logp).all() and result.nfe > 0


def test_schedule_knots_are_exact():
    sde = members.DiscreteVPSDE()
    t = torch.arange(1, N + 1, dtype=torch.float64) / N        # the knots t_n = (n + 1)/N
    assert torch.allclose(sde.alpha_bar(t) ** 2, ACP, rtol=1e-12)
    assert torch.allclose(sde.beta_bar(t) ** 2, 1 - ACP, rtol=1e-10)
    # Below t_0, sigma^2 falls linearly to 0; f and g^2 match the base class's autograd derivatives.
    s = torch.tensor([0.0, 2e-4, 7e-4, 0.2501, 0.9], dtype=torch.float64)
    assert float(sde.beta_bar(s[:1])) == 0.0
    assert torch.allclose(sde.g2(s), sde_lib.SDE.g2(sde, s), rtol=1e-8)
    assert torch.allclose(sde.f(s), sde_lib.SDE.f(sde, s), rtol=1e-8)
    assert torch.allclose(sde.t_of_log_snr(sde.log_snr(s[1:])), s[1:], atol=1e-12)


def test_refusals(tmp_path, monkeypatch):
    save_pipeline(tmp_path, rescale_betas_zero_snr=True)
    with pytest.raises(interop.ImportMismatchError, match="rescale_betas_zero_snr"):
        interop.from_diffusers(tmp_path, "vpsde")
    config = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    config.update(rescale_betas_zero_snr=False, prediction_type="flow")
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    with pytest.raises(interop.ImportMismatchError, match="prediction_type 'flow'"):
        interop.from_diffusers(tmp_path, "vpsde")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        interop.from_diffusers(tmp_path / "unet", "vpsde")
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[diffusers\]"'):
        interop.from_diffusers(tmp_path, "vpsde")


def fake_cifar10(root, per_batch=2):
    """torchvision's cifar-10-batches-py layout with `per_batch` random images in each pickle."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), "labels": [0] * per_batch}
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


def test_the_readme_commands_import_sample_and_evaluate_a_diffusers_pipeline(tmp_path, monkeypatch):
    # The README's commands, with the downloaded google/ddpm-cifar10-32 replaced by a tiny pipeline of the same
    # kind (32x32 RGB, so that the import needs no --config) and /datasets by two-image CIFAR-10 pickles.
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "ddpm-cifar10-32" / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=N).save_pretrained(tmp_path / "ddpm-cifar10-32" / "scheduler")
    datasets = fake_cifar10(tmp_path / "datasets")
    monkeypatch.chdir(tmp_path)
    cli("--mode", "import", "--from", "diffusers", "--checkpoint", "ddpm-cifar10-32/", "--workdir", "runs/ddpm")
    saved = json.loads((tmp_path / "runs/ddpm/config.json").read_text())
    assert saved["model"]["name"] == "diffusers" and saved["sde"]["name"] == "discrete_vp"
    assert json.loads(saved["model"]["diffusers_unet"])["block_out_channels"] == [8, 16]
    sampled = cli("--mode", "sample", "--workdir", "runs/ddpm", "--solver", "ddim", "--steps", "4",
                  "--num_samples", "2")
    x = np.load(sampled.written())["samples"]
    assert x.shape == (2, 3, 32, 32) and np.isfinite(x).all()
    lik = cli("--mode", "likelihood", "--workdir", "runs/ddpm", f"--config.data.path={datasets}",
              "--config.eval.steps=12", "--config.eval.accuracy=0")
    assert re.search(r"^bits/dim: \d+\.\d{4} ± \d\.\d{4} \(Hutchinson\) ± \d\.\d{4} \(ODE\) \(2 samples, mean NFE 12,",
                     lik.stdout, re.M), lik.stdout
