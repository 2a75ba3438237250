"""End to end through `python main.py`, with tiny overrides so that each command takes seconds."""
import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from helpers import main_py

TINY = ["--config.model.nf=8", "--config.model.ch_mult=(1,)", "--config.training.batch_size=16",
        "--config.training.log_freq=2", "--config.training.eval_freq=4", "--config.training.snapshot_freq=4",
        "--config.training.snapshot_samples=4", "--config.sampling.steps=3", "--config.training.progress=False",
        "--device=cpu"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    main_py("--mode", "train", "--config", "vpsde", "--workdir", str(workdir), "--config.training.n_iters=4", *TINY)
    return workdir


def test_train_writes_checkpoint_metrics_snapshot(trained):
    assert (trained / "checkpoints" / "checkpoint_4.pt").is_file()
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert Image.open(trained / "snapshots" / "step_4.png").size[0] > 8


def test_resume_of_an_interrupted_run(trained, tmp_path):
    workdir = tmp_path / "resume"
    main_py("--mode", "train", "--workdir", str(workdir), "--config.training.n_iters=4", *TINY)
    proc = main_py("--mode", "train", "--workdir", str(workdir), "--config.training.n_iters=8", *TINY)
    assert "resumed from" in proc.stderr and "step 4" in proc.stderr
    assert "finished at step 8" in proc.stdout


@pytest.mark.parametrize("solver, extra", [
    ("euler_maruyama", []), ("pc", ["--snr=0.1"]), ("heun", []), ("dpm_solver", []),
    ("rk45", ["--rtol=1e-2", "--atol=1e-2"]),
])
def test_sample_each_solver_family(trained, solver, extra):
    proc = main_py("--mode", "sample", "--workdir", str(trained), "--solver", solver, "--num_samples=6",
                   "--batch_size=4", "--steps=3", *extra, *TINY)
    stem = "adaptive" if solver == "rk45" else "3"
    samples = np.load(trained / "samples" / f"{solver}_{stem}_seed42.npz")["samples"]
    assert samples.shape == (6, 1, 8, 8) and np.isfinite(samples).all()
    assert Image.open(trained / "samples" / f"{solver}_{stem}_seed42.png").mode == "L"
    assert re.search(r"NFE \d+", proc.stdout)


def test_likelihood_prints_finite_bits_per_dim(trained):
    proc = main_py("--mode", "likelihood", "--workdir", str(trained), "--num_samples=3", "--rtol=1e-3",
                   "--atol=1e-3", *TINY)
    m = re.search(r"bits/dim: ([0-9.]+) ± ([0-9.]+) \(3 samples, mean NFE (\d+)\)", proc.stdout)
    assert m, proc.stdout
    # A 4-step model is far from trained: only a finite, positive value is meaningful here (the bits/dim of a
    # trained model is checked against the README's figure by the likelihood tests' exact oracles instead).
    assert math.isfinite(float(m.group(1))) and float(m.group(1)) > 0
    report = json.loads((trained / "likelihood.json").read_text())
    assert report["num_samples"] == 3 and report["bits_per_dim"] == pytest.approx(float(m.group(1)), abs=1e-4)


def test_two_dimensional_data_uses_the_mlp_and_a_scatter_plot(tmp_path):
    main_py("--mode", "train", "--workdir", str(tmp_path), "--config.data.dataset=moons",
            "--config.data.num_samples=500", "--config.training.n_iters=2", *TINY)
    main_py("--mode", "sample", "--workdir", str(tmp_path), "--config.data.dataset=moons", "--solver=heun",
            "--num_samples=50", *TINY)
    assert np.load(tmp_path / "samples" / "heun_3_seed42.npz")["samples"].shape == (50, 2)
    assert Image.open(tmp_path / "samples" / "heun_3_seed42.png").size[0] > 100


@pytest.mark.parametrize("args, message", [
    (["--config", "nosuch"], "unknown config 'nosuch'; available: cifar10_subvpsde"),
    (["--mode", "fly"], "unknown --mode 'fly'; available: train, sample, likelihood, eval"),
    (["--mode", "sample", "--solver", "magic"], "unknown solver 'magic'; available: euler"),
    (["--config.training.nope=1"], "unknown config field 'nope'"),
    (["--mode", "sample", "--workdir", "/nonexistent/run"], "no checkpoint in /nonexistent/run/checkpoints"),
    (["--config.data.dataset=array", "--config.data.path=/nonexistent.npy"], "/nonexistent.npy"),
    (["--config.data.dataset=imagenet"], "unknown dataset 'imagenet'"),
])
def test_user_errors_are_one_line_without_traceback(args, message):
    proc = main_py(*args, "--config.training.n_iters=1", *TINY, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_checkpoint_of_another_config_is_refused(trained):
    proc = main_py("--mode", "sample", "--workdir", str(trained), *TINY, "--config.model.nf=16", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "does not match the configured network" in proc.stderr
