"""End to end through `python main.py`, with tiny overrides so that each command takes seconds."""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, main_py

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
    (["--mode", "sample", "--solver=heun", "--snr=0.1"], "--snr does not apply to solver 'heun' (its options: grid, rho)"),
    (["--mode", "sample", "--solver=rk45", "--grid=logsnr"], "--grid does not apply to solver 'rk45'"),
    (["--mode", "sample", "--solver=pc", "--grid=calibrated"], "calibrated grids are fitted for the deterministic"),
    (["--mode", "sample", "--solver=heun", "--grid=/nonexistent.json"], "no grid file at '/nonexistent.json'"),
    (["--mode", "calibrate", "--solver=pc"], "fits the grid of a deterministic fixed-step solver, not 'pc'"),
])
def test_user_errors_are_one_line_without_traceback(args, message):
    proc = main_py(*args, "--config.training.n_iters=1", *TINY, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_override_that_contradicts_the_checkpoint_is_refused(trained):
    proc = main_py("--mode", "sample", "--workdir", str(trained), *TINY, "--config.model.nf=16", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--config.model.nf=16 conflicts with the checkpoint, which was trained with model.nf=8" in proc.stderr


def test_calibrate_then_sample_on_the_calibrated_grid(trained):
    proc = main_py("--mode", "calibrate", "--workdir", str(trained), "--solver=unipc", "--steps=3",
                   "--config.sampling.calibration_pilot=4", "--config.sampling.calibration_iterations=3", *TINY)
    record = json.loads((trained / "grids" / "unipc_3.json").read_text())
    assert len(record["times"]) == 4 and record["solver"] == "unipc"
    assert record["error"] <= record["initial_error"] and f"wrote {trained / 'grids' / 'unipc_3.json'}" in proc.stdout
    proc = main_py("--mode", "sample", "--workdir", str(trained), "--solver=unipc", "--steps=3", "--grid=calibrated",
                   "--num_samples=4", "--batch_size=4", *TINY)
    assert "NFE 3 per batch" in proc.stdout
    assert np.isfinite(np.load(trained / "samples" / "unipc_3_calibrated_seed42.npz")["samples"]).all()


# A run on 3-D vectors: an MLP that trains in a blink, and data with no picture of their samples.
SAMPLE = ["--mode", "sample", "--solver=euler_maruyama", "--steps=3", "--num_samples=5", "--device=cpu"]


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vectors")
    np.save(workdir / "points.npy", np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32))
    main_py("--mode", "train", "--config", "vpsde", "--workdir", str(workdir), "--config.data.dataset=array",
            f"--config.data.path={workdir / 'points.npy'}", "--config.model.mlp_width=16",
            "--config.model.mlp_depth=1", "--config.training.n_iters=2", *TINY)
    return workdir


def test_inference_uses_the_sde_model_and_data_of_the_checkpoint(vectors):
    # vesde's config has another SDE, a Fourier-feature network and the digits: the checkpoint's settings win, so
    # the samples are those of the config the run was trained with, bit for bit.
    main_py("--workdir", str(vectors), "--config", "vpsde", *SAMPLE)
    expected = np.load(vectors / "samples" / "euler_maruyama_3_seed42.npz")["samples"]
    proc = main_py("--workdir", str(vectors), "--config", "vesde", *SAMPLE)
    assert "using the checkpoint's sde.name='vpsde' (not 'vesde')" in proc.stderr
    assert "data.dataset='array' (not 'digits')" in proc.stderr
    np.testing.assert_array_equal(np.load(vectors / "samples" / "euler_maruyama_3_seed42.npz")["samples"], expected)
    proc = main_py("--workdir", str(vectors), "--config.sde.name=vesde", *SAMPLE, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--config.sde.name='vesde' conflicts with the checkpoint, which was trained with sde.name='vpsde'" \
        in proc.stderr


def test_sample_reports_only_the_files_it_wrote(vectors):
    proc = main_py("--workdir", str(vectors), *SAMPLE)
    stem = vectors / "samples" / "euler_maruyama_3_seed42"
    assert proc.stdout.strip().endswith(f"wrote {stem}.npz") and not stem.with_suffix(".png").exists()
    assert np.load(f"{stem}.npz")["samples"].shape == (5, 3)


def test_samples_with_nan_are_refused_before_anything_is_written(vectors, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(vectors / "checkpoints", workdir / "checkpoints")
    # Every sampler with a finite score checks it (CountingScore); NaN can still appear in the samples themselves.
    patch = ("import solvers\nreal = solvers.sample\n"
             "def sample(*args, **kwargs):\n    result = real(*args, **kwargs)\n"
             "    return result._replace(x=result.x * float('nan'))\n"
             "solvers.sample = sample\n")
    proc = main_py_with(patch, "--workdir", str(workdir), *SAMPLE)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "the samples contain NaN/inf (nothing written)" in proc.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints"]


def main_py_with(patch: str, *args):
    """`python main.py *args` after running the Python code `patch` in the same process."""
    script = f"{patch}\nimport runpy, sys\nsys.argv[0] = 'main.py'\nrunpy.run_path('main.py', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
