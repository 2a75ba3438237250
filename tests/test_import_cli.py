"""--mode import end to end: a score_sde_pytorch file in, then sample and likelihood on the imported run."""
import re

import numpy as np
import torch
from helpers import cli

import score_sde_reference as ref
from test_import import small_arch

SMALL = ["--config.model.nf=16", "--config.model.ch_mult=(1,2)", "--config.model.num_res_blocks=1",
         "--config.model.attn_resolutions=(4,)", "--config.data.dataset=digits", "--config.data.image_size=8",
         "--config.data.num_channels=1", "--device=cpu"]


def test_import_then_sample_and_likelihood_from_the_command_line(tmp_path):
    name = "score_sde_vp_ddpmpp_cont"
    torch.save(ref.random_checkpoint(small_arch(name)), tmp_path / "checkpoint_8.pth")
    run = tmp_path / "run"
    result = cli("--mode", "import", "--from", "score_sde", "--config", name, "--checkpoint",
                 tmp_path / "checkpoint_8.pth", "--workdir", run, *SMALL)
    assert result.stdout.startswith(f"imported {tmp_path / 'checkpoint_8.pth'} as {run / 'checkpoints'}")
    sampled = cli("--mode", "sample", "--workdir", run, "--solver=ddim", "--steps=3", "--num_samples=4",
                  "--device=cpu")
    # The imported step (1234 in the fixture) names the samples, as a trained run's checkpoint step does.
    assert sampled.written().name == "ddim_3_n4_step1234_seed42.npz"
    assert np.isfinite(np.load(sampled.written())["samples"]).all() and "NFE 3 per batch" in sampled.stdout
    lik = cli("--mode", "likelihood", "--workdir", run, "--num_samples=2", "--rtol=1e-2", "--atol=1e-2",
              "--device=cpu")
    assert re.search(r"bits/dim: \d+\.\d{4} ± ", lik.stdout), lik.stdout
    again = cli("--mode", "import", "--from", "score_sde", "--config", name, "--checkpoint",
                tmp_path / "checkpoint_8.pth", "--workdir", run, *SMALL, check=False)
    assert again.returncode == 1 and "already holds" in again.stderr and again.stderr.count("\n") == 1


def test_import_needs_a_known_source(tmp_path):
    result = cli("--mode", "import", "--from", "tensorflow", "--checkpoint", tmp_path / "x", "--workdir",
                 tmp_path / "run", check=False)
    assert result.returncode == 1
    assert result.stderr == "error: unknown import source 'tensorflow'; available: score_sde, diffusers\n"


def test_an_imported_run_samples_without_its_dataset_on_this_machine(tmp_path):
    # A released CIFAR-10 model: sampling needs only the images' shape and scaling, not the 50,000 images.
    name = "score_sde_vp_ddpmpp_cont"
    torch.save(ref.random_checkpoint(small_arch(name)), tmp_path / "checkpoint_8.pth")
    run = tmp_path / "run"
    nowhere = ["--config.data.dataset=cifar10", f"--config.data.path={tmp_path / 'nowhere'}"]
    cli("--mode", "import", "--from", "score_sde", "--config", name, "--checkpoint", tmp_path / "checkpoint_8.pth",
        "--workdir", run, *SMALL, *nowhere)
    sampled = cli("--mode", "sample", "--workdir", run, "--solver=ddim", "--steps=2", "--num_samples=2")
    assert "CIFAR10 files missing" in sampled.log and "loading the run without its data" in sampled.log
    assert np.load(sampled.written())["samples"].shape == (2, 1, 8, 8)
    lik = cli("--mode", "likelihood", "--workdir", run, check=False)
    assert lik.returncode == 1 and lik.stderr.startswith("error: the run's cifar10 test split has no items here")
