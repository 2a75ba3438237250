"""End to end through main.py's command line: in process (main.run) with tiny overrides, so that each command
takes a fraction of a second; one test runs the console entry point `python main.py` itself."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from scoresde import likelihood
from scoresde import configs
from scoresde import run as runs
from scoresde.run import interrupts
from scoresde.commands import sampling
from scoresde import solvers
from scoresde import training
from scoresde.commands import evaluation, modes
from scoresde.utils import UsageError
from helpers import ROOT, cli, main_py

TINY = ["--config.model.nf=8", "--config.model.ch_mult=(1,)", "--config.training.batch_size=16",
        "--config.training.log_freq=2", "--config.training.eval_freq=4", "--config.training.snapshot_freq=4",
        "--config.training.snapshot_samples=4", "--config.sampling.steps=3", "--config.training.progress=False",
        "--device=cpu"]

pytestmark = pytest.mark.slow


def one_line_error(result, message):
    """The command failed with exit status 1 and exactly one line `error: ...` containing message on stderr."""
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    cli("--mode", "train", "--config", "vpsde", "--workdir", workdir, "--config.training.n_iters=4", *TINY)
    return workdir


def test_train_writes_checkpoint_metrics_snapshot(trained):
    assert (trained / "checkpoints" / "checkpoint_4.pt").is_file()
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert Image.open(trained / "snapshots" / "step_4.png").size[0] > 8


def test_resume_of_an_interrupted_run(tmp_path):
    workdir = tmp_path / "resume"
    first = cli("--mode", "train", "--workdir", workdir, "--config.training.n_iters=4", *TINY)
    assert "resumed from" not in first.log and "finished at step 4" in first.stdout
    result = cli("--mode", "train", "--workdir", workdir, "--config.training.n_iters=8", *TINY)
    assert f"resumed from {workdir / 'checkpoints' / 'checkpoint_4.pt'} (step 4)" in result.log
    assert re.fullmatch(r"finished at step 8, loss \d+\.\d{5}; checkpoint \S+checkpoint_8\.pt\n", result.stdout)


@pytest.mark.parametrize("solver, extra", [
    ("euler_maruyama", ["--steps=3"]), ("pc", ["--steps=3", "--snr=0.1"]), ("heun", ["--steps=3"]),
    ("dpm_solver", ["--steps=3"]), ("rk45", ["--rtol=1e-2", "--atol=1e-2"]),
])
def test_sample_each_solver_family(trained, solver, extra):
    result = cli("--mode", "sample", "--workdir", trained, "--solver", solver, "--num_samples=6", "--batch_size=4",
                 *extra, *TINY)
    stem = "adaptive" if solver == "rk45" else "3"
    # Named by what tells runs apart: solver, steps, number of samples, checkpoint step, seed.
    assert result.written() == trained / "samples" / f"{solver}_{stem}_n6_step4_seed42.npz"
    samples = np.load(result.written())["samples"]
    assert samples.shape == (6, 1, 8, 8) and np.isfinite(samples).all()
    assert Image.open(result.written(".png")).mode == "L"
    assert re.search(rf"^6 samples with {solver}, .*: NFE \d+ per batch", result.stdout)


def test_likelihood_prints_finite_bits_per_dim(trained):
    result = cli("--mode", "likelihood", "--workdir", trained, "--num_samples=3", "--rtol=1e-3", "--atol=1e-3",
                 *TINY)
    m = re.search(r"bits/dim: ([0-9.]+) ± ([0-9.]+) \(Hutchinson\) ± ([0-9.]+) \(ODE\) \(3 samples, mean NFE (\d+)",
                  result.stdout)
    assert m, result.stdout
    # A 4-step model is far from trained: only a finite, positive value is meaningful here (the bits/dim of a
    # trained model is checked against the README's figure by the likelihood tests' exact oracles instead).
    assert math.isfinite(float(m.group(1))) and float(m.group(1)) > 0
    report = json.loads((trained / "likelihood.json").read_text())
    assert report["num_samples"] == 3 and report["bits_per_dim"] == pytest.approx(float(m.group(1)), abs=1e-4)


def test_every_likelihood_result_is_kept(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained / "checkpoints", workdir / "checkpoints")
    common = ["--mode", "likelihood", "--workdir", workdir, "--num_samples=2", *TINY]
    ode = cli(*common, "--config.eval.steps=12", "--config.eval.accuracy=0")
    bound = cli(*common, "--bound=elbo", "--config.eval.bound_samples=4")
    (workdir / "likelihood.json").chmod(0o444)       # a result its owner protects is not replaced either
    again = cli(*common, "--config.eval.steps=24", "--config.eval.accuracy=0")
    written = {name: json.loads((workdir / name).read_text())
               for name in ("likelihood.json", "likelihood_elbo.json", "likelihood_2.json")}
    assert sorted(p.name for p in workdir.glob("likelihood*")) == sorted(written)
    for result, name in ((ode, "likelihood.json"), (bound, "likelihood_elbo.json"), (again, "likelihood_2.json")):
        printed = float(re.search(r"bits/dim(?: \(variational bound\))?: (\d+\.\d{4})", result.stdout).group(1))
        # The file holds the value printed (to its 4 printed decimals) and the checkpoint it is of.
        assert written[name]["bits_per_dim"] == pytest.approx(printed, abs=5e-5)
        assert written[name]["step"] == 4 and written[name]["checkpoint"].endswith("checkpoint_4.pt")
        assert f"wrote {workdir / name}" in result.log
    assert written["likelihood_elbo.json"]["bound"] == "elbo" and written["likelihood_2.json"]["steps"] == 24


def test_eval_prints_the_test_loss_of_the_checkpoint(trained):
    result = cli("--mode", "eval", "--workdir", trained, *TINY)
    m = re.fullmatch(r"test loss \(EMA, step 4\): (\d+\.\d{5})\n", result.stdout)
    assert m, result.stdout
    # A denoising loss is a mean of squares: finite and positive for any network that is not exact.
    assert 0 < float(m.group(1)) < math.inf


def test_two_dimensional_data_uses_the_mlp_and_a_scatter_plot(tmp_path):
    cli("--mode", "train", "--workdir", tmp_path, "--config.data.dataset=moons", "--config.data.num_samples=500",
        "--config.training.n_iters=2", *TINY)
    result = cli("--mode", "sample", "--workdir", tmp_path, "--config.data.dataset=moons", "--solver=heun",
                 "--num_samples=50", *TINY)
    assert np.load(result.written())["samples"].shape == (50, 2)
    assert Image.open(result.written(".png")).size[0] > 100


@pytest.mark.parametrize("args, message", [
    (["--config", "nosuch"], "unknown config 'nosuch'; available: cifar10_subvpsde"),
    (["--mode", "fly"], "value should be one of <train|sample|likelihood|eval|calibrate|train_classifier|inpaint"),
    (["--mode", "sample", "--solver", "magic"], "unknown solver 'magic'; available: euler"),
    (["--config.training.nope=1"], "unknown config field 'training.nope' in --config.training.nope; "),
    (["--config.training.n_iterz=3"], "unknown config field 'training.n_iterz' in --config.training.n_iterz (did you "
                                      "mean training.n_iters?)"),
    (["--config.training.snapshot_freq=0"], "config: training.snapshot_freq=0: must be a positive integer"),
    (["--config.training.log_freq=-1"], "config: training.log_freq=-1: must be a positive integer"),
    (["--config.training.batch_size=0"], "config: training.batch_size=0: must be a positive integer"),
    (["--config.training.fid_freq=-1"], "config: training.fid_freq=-1: must be an integer >= 0"),
    (["--config.metrics.num_samples_training=9"], "config: metrics.num_samples_training=9: must be an integer >= 10 "
                                                  "(the statistics need a few samples)"),
    (["--mode", "sample", "--config.metrics.num_samples_training=9"], "config: metrics.num_samples_training=9"),
    (["--config.sde.beta_min=30"], "config: sde.beta_min=30.0 must be below sde.beta_max=20.0"),
    (["--mode", "sample", "--workdir", "/nonexistent/run"], "no checkpoint in /nonexistent/run/checkpoints"),
    (["--config.data.dataset=array", "--config.data.path=/nonexistent.npy"], "/nonexistent.npy"),
    (["--config.data.dataset=imagenet"], "unknown dataset 'imagenet'"),
    (["--mode", "sample", "--solver=heun", "--snr=0.1"],
     "unknown option 'snr' for solver 'heun'; its options: grid, rho"),
    (["--mode", "sample", "--solver=rk45", "--steps=3"], "rk45 is adaptive and takes no `steps`"),
    (["--mode", "sample", "--solver=rk45", "--grid=logsnr"], "solver 'rk45' takes no grid"),
    (["--mode", "sample", "--solver=pc", "--grid=calibrated"], "calibrated grids are fitted for the deterministic"),
    (["--mode", "sample", "--solver=heun", "--grid=/nonexistent.json"], "no grid file at '/nonexistent.json'"),
    (["--mode", "calibrate", "--solver=pc"], "fits the grid of a deterministic fixed-step solver, not 'pc'"),
    (["--mode", "sample", "extra"], "unexpected arguments extra"),
])
def test_user_errors_are_one_line_without_traceback(args, message, tmp_path):
    # A workdir of its own first (a later --workdir wins): a command that got further would not write runs/ here.
    one_line_error(cli("--workdir", tmp_path / "run", "--config.training.n_iters=1", *TINY, *args, check=False),
                   message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", ["train", "sample"])
def test_a_command_checks_its_config_once(trained, tmp_path, monkeypatch, mode):
    calls = []
    check = configs.check_config
    monkeypatch.setattr(configs, "check_config", lambda config: calls.append(config) or check(config))
    workdir = tmp_path / "run" if mode == "train" else trained
    cli("--mode", mode, "--workdir", workdir, "--config.training.n_iters=1", "--num_samples=2", *TINY)
    assert len(calls) == 1


def test_bad_files_are_one_line_errors(trained, tmp_path):
    (tmp_path / "noget.py").write_text("x = 1\n")
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    (tmp_path / "fake.pt").write_text("not a checkpoint\n")
    (tmp_path / "fake.npy").write_text("not an array\n")
    np.save(tmp_path / "oblong.npy", np.zeros((400, 1, 8, 6), dtype=np.uint8))
    (tmp_path / "afile").write_text("")
    run = ["--workdir", tmp_path / "run", "--config.training.n_iters=1", *TINY]
    for args, message in [
        (["--config", tmp_path / "noget.py"], f"config file {tmp_path / 'noget.py'} does not define get_config()"),
        (["--config", tmp_path / "broken.py"], f"config file {tmp_path / 'broken.py'}:1: invalid syntax"),
        (["--config.data.dataset=array", f"--config.data.path={tmp_path / 'fake.npy'}"],
         f"{tmp_path / 'fake.npy'} is not a NumPy file (no .npy header, not an .npz archive)"),
        (["--config.data.dataset=array", f"--config.data.path={tmp_path / 'oblong.npy'}"],
         "array: the images are 8x6, not square; set --config.data.image_size=N"),
        (["--workdir", tmp_path / "afile"], f"{tmp_path / 'afile'} is a file, not a directory"),
    ]:
        one_line_error(cli(*run, *args, check=False), message)
    one_line_error(cli("--mode", "sample", "--workdir", trained, "--checkpoint", tmp_path / "fake.pt", *TINY,
                       check=False), f"{tmp_path / 'fake.pt'} is not a checkpoint (not a file written by torch.save)")
    assert not (tmp_path / "run").exists()


def test_a_file_holding_a_bare_tensor_is_not_a_checkpoint(trained, tmp_path):
    import torch

    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    one_line_error(cli("--mode", "sample", "--workdir", trained, "--checkpoint", tmp_path / "tensor.pt", *TINY,
                       check=False),
                   f"{tmp_path / 'tensor.pt'} holds a Tensor, not a checkpoint (a dict written by training); pass a "
                   "checkpoint_<step>.pt of a run, or a step number")
    assert sorted(p.relative_to(trained) for p in trained.rglob("*")) == before


def test_help_lists_the_modes():
    result = cli("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: python main.py --mode MODE")
    for mode, line in [("train", "train, or resume, the configured model in --workdir"),
                       ("likelihood", "bits/dim of the test split through the probability-flow ODE")]:
        assert re.search(rf"^  {mode} +{re.escape(line)}", result.stdout, re.M)
    assert "  --solver_options  Any solver options" in result.stdout and cli("-h").stdout == result.stdout


def test_an_override_that_contradicts_the_checkpoint_is_refused(trained):
    result = cli("--mode", "sample", "--workdir", trained, *TINY, "--config.model.nf=16", check=False)
    one_line_error(result, "--config.model.nf=16 conflicts with the checkpoint, which was trained with model.nf=8")


def test_calibrate_then_sample_on_the_calibrated_grid(trained):
    result = cli("--mode", "calibrate", "--workdir", trained, "--solver=unipc", "--steps=3",
                 "--config.sampling.calibration_pilot=4", "--config.sampling.calibration_iterations=3", *TINY)
    path = runs.calibrated_grid_path(trained, "unipc", 3)
    assert path == trained / "grids" / "unipc_3.json"
    record = json.loads(path.read_text())
    assert len(record["times"]) == 4 and record["solver"] == "unipc"
    assert record["error"] <= record["initial_error"] and f"wrote {path}" in result.stdout
    result = cli("--mode", "sample", "--workdir", trained, "--solver=unipc", "--steps=3", "--grid=calibrated",
                 "--num_samples=4", "--batch_size=4", *TINY)
    assert "NFE 3 per batch" in result.stdout
    assert result.written() == trained / "samples" / "unipc_3_calibrated_n4_step4_seed42.npz"
    assert np.isfinite(np.load(result.written())["samples"]).all()
    assert f"using the calibrated grid {path}, fitted on this checkpoint (step 4)" in result.log


def test_a_calibration_is_kept_unless_overwrite_is_given(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained / "checkpoints", workdir / "checkpoints")
    calibrate = ["--mode", "calibrate", "--workdir", workdir, "--solver=unipc", "--steps=3",
                 "--config.sampling.calibration_pilot=4", *TINY]
    cli(*calibrate, "--config.sampling.calibration_iterations=3")
    path = runs.calibrated_grid_path(workdir, "unipc", 3)
    first = path.read_text()
    record = json.loads(first)
    assert (record["step"], record["pilot"], record["iterations"]) == (4, 4, 3)
    assert record["checkpoint"] == str(workdir / "checkpoints" / "checkpoint_4.pt")
    one_line_error(cli(*calibrate, "--config.sampling.calibration_iterations=1", check=False),
                   f"{path} already holds a calibrated grid (fitted on checkpoint step 4, pilot RMSE "
                   f"{record['error']:.3g}); pass --overwrite to replace it, or move it away to keep it")
    assert path.read_text() == first
    path.chmod(0o444)
    one_line_error(cli(*calibrate, "--overwrite", check=False), f"{path} is read-only, so it is not replaced")
    path.chmod(0o644)
    cli(*calibrate, "--config.sampling.calibration_iterations=1", "--overwrite")
    assert json.loads(path.read_text())["iterations"] == 1
    # A grid fitted on another checkpoint of the run still samples, with a warning that says so.
    path.write_text(json.dumps({**json.loads(path.read_text()), "step": 2}))
    result = cli("--mode", "sample", "--workdir", workdir, "--solver=unipc", "--steps=3", "--grid=calibrated",
                 "--num_samples=2", *TINY)
    assert (f"the calibrated grid {path} was fitted on checkpoint step 2, not on this one (step 4); calibrate again "
            f"for this one (--mode calibrate --workdir {workdir} --solver unipc --steps 3 --overwrite)") in result.log


# A run on 3-D vectors: an MLP that trains in a blink, and data with no picture of their samples.
SAMPLE = ["--mode", "sample", "--solver=euler_maruyama", "--steps=3", "--num_samples=5", "--device=cpu"]


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vectors")
    np.save(workdir / "points.npy", np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32))
    cli("--mode", "train", "--config", "vpsde", "--workdir", workdir, "--config.data.dataset=array",
        f"--config.data.path={workdir / 'points.npy'}", "--config.model.mlp_width=16", "--config.model.mlp_depth=1",
        "--config.training.n_iters=2", *TINY)
    return workdir


def test_inference_uses_the_sde_model_and_data_of_the_checkpoint(vectors):
    # vesde's config has another SDE, a Fourier-feature network and the digits: the checkpoint's settings win, so
    # the samples are those of the config the run was trained with, bit for bit.
    expected = np.load(cli("--workdir", vectors, "--config", "vpsde", *SAMPLE).written())["samples"]
    result = cli("--workdir", vectors, "--config", "vesde", *SAMPLE)
    assert "using the checkpoint's sde.name='vpsde' (not 'vesde')" in result.log
    assert "data.dataset='array' (not 'digits')" in result.log
    np.testing.assert_array_equal(np.load(result.written())["samples"], expected)
    result = cli("--workdir", vectors, "--config.sde.name=vesde", *SAMPLE, check=False)
    one_line_error(result, "--config.sde.name='vesde' conflicts with the checkpoint, which was trained with "
                           "sde.name='vpsde'")


def test_sample_reports_only_the_files_it_wrote(vectors):
    result = cli("--workdir", vectors, *SAMPLE)
    npz = result.written()
    assert result.stdout.strip().endswith(f"wrote {npz}") and not npz.with_suffix(".png").exists()
    assert np.load(npz)["samples"].shape == (5, 3)


def test_a_second_sample_run_never_overwrites_the_first(vectors):
    first = cli("--workdir", vectors, *SAMPLE, "--seed=11").written()
    kept = first.read_bytes()
    second = cli("--workdir", vectors, *SAMPLE, "--seed=11").written()
    assert first.name == "euler_maruyama_3_n5_step2_seed11.npz"
    assert second == first.with_name("euler_maruyama_3_n5_step2_seed11_2.npz") and first.read_bytes() == kept


def test_samples_with_nan_are_refused_before_anything_is_written(vectors, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    shutil.copytree(vectors / "checkpoints", workdir / "checkpoints")
    # Every sampler with a finite score checks it (CountingScore); NaN can still appear in the samples themselves.
    real = solvers.Sampler.sample

    def with_nan(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        return result._replace(x=result.x * float("nan"))
    monkeypatch.setattr(solvers.Sampler, "sample", with_nan)
    one_line_error(cli("--workdir", workdir, *SAMPLE, check=False), "the samples contain NaN/inf (nothing written)")
    # samples/ was checked writable before sampling started, without being made: the run is left as it was.
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints"]


def samples_of(workdir, label, *args):
    """Run `--mode sample` and return the samples it wrote under samples/<label>_n<num>_step<step>_seed<seed>."""
    result = cli("--workdir", workdir, "--mode", "sample", "--device=cpu", *args)
    seed = next(a.split("=")[1] for a in args if a.startswith("--seed="))
    assert result.written().name.startswith(f"{label}_n") and f"_seed{seed}" in result.written().name
    return np.load(result.written())["samples"]


@pytest.mark.parametrize("solver", ["heun", "euler_maruyama", "ancestral"])
def test_the_same_seed_gives_the_same_samples_for_any_batch_size(vectors, solver):
    common = ("--solver", solver, "--steps=4", "--num_samples=8", "--seed=7")
    by3 = samples_of(vectors, f"{solver}_4", *common, "--batch_size=3")     # batches of 3 + 3 + 2
    by7 = samples_of(vectors, f"{solver}_4", *common, "--batch_size=7")     # 7 + 1
    assert by3.shape == by7.shape == (8, 3)
    # Sample i depends only on (seed, i); only the batched matrix products' float32 round-off may differ (~1e-7).
    assert np.abs(by3 - by7).max() <= 1e-5
    # ... and the samples are not copies of each other: every one gets its own noise (at least 1e-2 apart for
    # standard-normal-sized noise in 3-D; a batch that repeated its noise would give exactly zero).
    gaps = np.abs(by3[:, None] - by3[None]).max(-1) + np.eye(8)
    assert gaps.min() > 1e-2
    other = samples_of(vectors, f"{solver}_4", *common[:-1], "--seed=8", "--batch_size=3")
    assert np.abs(other - by3).max() > 1e-2


def test_a_checkpoint_of_another_run_files_its_outputs_with_that_run(vectors, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)     # the default workdir, runs/vpsde, is here and has no checkpoints
    checkpoint = vectors / "checkpoints" / "checkpoint_2.pt"
    result = cli(*SAMPLE, "--seed=31", "--checkpoint", checkpoint)
    assert result.written().parent == vectors / "samples" and not (tmp_path / "runs").exists()
    assert (f"checkpoint {checkpoint} belongs to the run {vectors}: its outputs go there, not to runs/vpsde "
            "(--workdir chooses)") in result.log
    shutil.copy(checkpoint, tmp_path / "loose.pt")
    one_line_error(cli(*SAMPLE, "--checkpoint", tmp_path / "loose.pt", check=False),
                   f"checkpoint {tmp_path / 'loose.pt'} is not in a run directory (<run>/checkpoints/); pass "
                   "--workdir DIR for what this command writes")
    assert not (tmp_path / "runs").exists()
    chosen = cli(*SAMPLE, "--checkpoint", tmp_path / "loose.pt", "--workdir", tmp_path / "mine").written()
    assert chosen.parent == tmp_path / "mine" / "samples"


def test_solver_options_reach_the_solver(vectors):
    common = ("--solver=unipc", "--steps=4", "--num_samples=6", "--seed=3")
    result = cli("--workdir", vectors, "--mode", "sample", "--device=cpu", *common,
                 "--solver_options", "order=2,variant=bh1")
    assert "6 samples with unipc, 4 steps, order=2, variant=bh1: NFE 4 per batch" in result.stdout
    two = np.load(result.written())["samples"]
    three = samples_of(vectors, "unipc_4", *common, "--solver_options=order=3")
    # Same prior noise and network: another order and variant move the samples by far more than round-off.
    assert np.isfinite(two).all() and np.abs(two - three).max() > 1e-4
    # The config field is the default of the flag.
    assert np.array_equal(samples_of(vectors, "unipc_4", *common, "--config.sampling.options=order=2,variant=bh1"),
                          two)


@pytest.mark.parametrize("options, message", [
    ("orderr=2", "unknown option 'orderr' for solver 'unipc'; its options: variant, corrector, order"),
    ("order=x", "solver 'unipc' option order='x': expected int"),
])
def test_bad_solver_options_are_one_line_errors(vectors, options, message):
    one_line_error(cli("--workdir", vectors, "--mode=sample", "--solver=unipc", f"--solver_options={options}",
                       check=False), message)


def test_the_console_entry_point(vectors):
    # The one run through `python main.py`: absl's flags from sys.argv, its log handler on stderr, the exit status.
    proc = main_py("--workdir", str(vectors), *SAMPLE)
    stem = vectors / "samples" / "euler_maruyama_3_n5_step2_seed42"
    assert re.fullmatch(rf"5 samples with euler_maruyama, 3 steps: NFE 3 per batch, .*; wrote {stem}(_\d+)?\.npz\n",
                        proc.stdout), proc.stdout
    assert "loaded the EMA weights of" in proc.stderr


def test_a_second_writer_of_shared_files_is_refused_naming_the_holder(vectors):
    calibrate = ["--mode", "calibrate", "--solver=unipc", "--steps=3", "--config.sampling.calibration_pilot=4",
                 "--config.sampling.calibration_iterations=2", "--device=cpu", "--overwrite"]
    with runs.WorkdirLock(vectors, "calibrate"):
        one_line_error(cli("--workdir", vectors, *calibrate, check=False),
                       f"{vectors} is in use by another calibrate process (PID {os.getpid()})")
    assert cli("--workdir", vectors, *calibrate).returncode == 0      # released on exit


def test_sampling_runs_beside_another_sampling_in_the_same_workdir(vectors, monkeypatch):
    # The second run starts and finishes while the first is drawing its samples, as in a sweep of parallel jobs
    # with the same settings: neither is refused, and each keeps its own files.
    real, inner = sampling.draw_samples, {}

    def draw_while_another_run_samples(*args, **kwargs):
        if "started" not in inner:      # the outer run; the inner one draws without starting a third
            inner["started"] = True
            inner["result"] = cli("--workdir", vectors, *SAMPLE, "--seed=21", check=False)
        return real(*args, **kwargs)
    monkeypatch.setattr(sampling, "draw_samples", draw_while_another_run_samples)
    outer = cli("--workdir", vectors, *SAMPLE, "--seed=21")
    assert inner["result"].returncode == 0, inner["result"].stderr
    first, second = inner["result"].written(), outer.written()
    assert first.name == "euler_maruyama_3_n5_step2_seed21.npz"
    assert second == first.with_name("euler_maruyama_3_n5_step2_seed21_2.npz")
    # Sample i depends only on (seed, i): both runs drew the same samples, and both files hold them.
    np.testing.assert_array_equal(np.load(first)["samples"], np.load(second)["samples"])


def test_the_training_lock_is_released_when_its_holder_is_killed(tmp_path):
    # Another process holds the lock as a training would; kill -9 gives no chance to clean up, yet the OS drops
    # the lock with the process, so a new training starts at once.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom scoresde import run as runs\n"
                               f"with runs.WorkdirLock({str(tmp_path)!r}, 'train'):\n"
                               "    print('locked', flush=True); time.sleep(600)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["--mode", "train", "--workdir", tmp_path, "--config.training.n_iters=2", *TINY]
        one_line_error(cli(*args, check=False), f"{tmp_path} is in use by another train process (PID {holder.pid})")
    finally:
        holder.kill()
        holder.wait()
    assert "finished at step 2" in cli(*args).stdout


class SignalAfter:
    """A stand-in for runs.interrupts.StopRequested whose signal arrives after `batches` batches have started."""

    def __init__(self, batches, name="SIGTERM"):
        self.checks, self.batches, self.name = 0, batches, name

    @property
    def signal(self):
        self.checks += 1
        return self.name if self.checks > self.batches else None


def test_a_signal_keeps_the_batches_already_evaluated(vectors):
    run = runs.load_run(vectors)
    ctx = training.distributed.setup(run.config)
    whole = evaluation.evaluate_likelihood(run, ctx, batch_size=4, rtol=1e-3, atol=1e-3)
    part = evaluation.evaluate_likelihood(run, ctx, batch_size=4, rtol=1e-3, atol=1e-3,
                                                   stop=SignalAfter(1))
    # The first batch of 4 test points was evaluated, then no new batch started; the whole split has 20 points.
    assert (whole.num_samples, part.num_samples, part.stopped_by) == (20, 4, "SIGTERM")
    assert part.line().startswith("stopped by SIGTERM after 4 test points; bits/dim: ")
    points = sampling.draw_samples(run.sde, run.score_fn, run.data, solvers.sampler("euler", 3), 10, 3, 0,
                                            ctx, stop=SignalAfter(2, "SIGINT"))
    assert points.x.shape == (6, 3) and points.stopped_by == "SIGINT"


class SignalledAlready(interrupts.StopRequested):
    """runs.interrupts.StopRequested that got SIGTERM before the work inside it started."""

    def __enter__(self):
        super().__enter__()
        self.signal = "SIGTERM"
        return self


def test_a_signal_before_the_first_batch_writes_nothing_and_exits_with_its_code(vectors, tmp_path, monkeypatch):
    run = runs.load_run(vectors)
    ctx = training.distributed.setup(run.config)
    assert evaluation.evaluate_likelihood(run, ctx, batch_size=4, rtol=1e-3, atol=1e-3, stop=SignalAfter(0)) is None
    workdir = tmp_path / "run"
    shutil.copytree(vectors / "checkpoints", workdir / "checkpoints")
    monkeypatch.setattr(interrupts, "StopRequested", SignalledAlready)
    result = cli("--mode", "likelihood", "--workdir", workdir, "--rtol=1e-3", "--atol=1e-3", "--device=cpu",
                 check=False)
    assert (result.returncode, result.stdout) == (143, "")
    assert result.stderr == "stopped by SIGTERM before the first test batch; nothing written\n"
    assert not list(workdir.glob("likelihood*.json"))


def test_an_error_after_a_signal_is_raised_as_that_error(vectors, monkeypatch):
    def fails_after_the_last_batch(sde, score_fn, batches, **kwargs):
        for _ in batches:       # the signal comes while the first batch is evaluated
            pass
        raise ValueError("logp contains NaN or inf")

    run = runs.load_run(vectors)
    ctx = training.distributed.setup(run.config)
    monkeypatch.setattr(likelihood, "evaluate_bits_per_dim", fails_after_the_last_batch)
    with pytest.raises(ValueError, match="logp contains NaN or inf"):
        evaluation.evaluate_likelihood(run, ctx, batch_size=4, rtol=1e-3, atol=1e-3, stop=SignalAfter(1))


def test_the_interrupt_handler_asks_once_then_stops_at_once(capfd):
    # In this process, where raise_signal runs the handler before it returns: the first SIGINT or SIGTERM only sets
    # the flag (the batch in hand finishes) and says so on stderr, the second raises KeyboardInterrupt naming the
    # signal, and leaving the context restores the previous handlers.
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        with interrupts.StopRequested() as stop:
            try:
                signal.raise_signal(sig)
            except KeyboardInterrupt:       # as a failure: pytest would take it for Ctrl-C and end the session
                pytest.fail(f"the first {sig.name} stopped at once")
            assert (stop.signal, stop.exit_code) == (sig.name, code)
            assert capfd.readouterr().err.startswith(f"{sig.name} received; a second one stops at once")
            with pytest.raises(KeyboardInterrupt, match=sig.name):
                signal.raise_signal(sig)
    assert {sig: signal.getsignal(sig) for sig in before} == before


class Watch:
    """What a child process writes to a pipe, read as it arrives: a progress bar ends its updates with no newline."""

    def __init__(self, pipe):
        self.text, self.closed, self._changed, self._pipe = "", False, threading.Condition(), pipe
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for chunk in iter(lambda: os.read(self._pipe.fileno(), 4096), b""):
            with self._changed:
                self.text += chunk.decode(errors="replace")
                self._changed.notify_all()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def wait_for(self, needle: str, timeout: float) -> bool:
        """True once needle has been written; False if the pipe closed or the timeout passed first."""
        with self._changed:
            self._changed.wait_for(lambda: needle in self.text or self.closed, timeout)
            return needle in self.text

    def finish(self) -> str:
        """Everything written, once the writer has exited."""
        self._thread.join()
        self._pipe.close()
        return self.text


def test_a_second_sigint_during_sampling_stops_at_once_with_exit_130(vectors):
    proc = subprocess.Popen([sys.executable, "main.py", "--workdir", str(vectors), "--mode", "sample",
                             "--solver=euler_maruyama", "--steps=200000", "--num_samples=4", "--batch_size=2",
                             "--device=cpu"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = Watch(proc.stderr)
    try:
        # The progress bar starts inside the interrupt handler's context, before the first batch of 200,000 steps.
        assert err.wait_for("sampling (euler_maruyama)", timeout=120), err.text[-2000:]
        proc.send_signal(signal.SIGINT)
        # Two signals that arrive before the handler runs count as one: the second goes once the first is answered.
        assert err.wait_for("SIGINT received; a second one stops at once", timeout=60), err.text[-2000:]
        proc.send_signal(signal.SIGINT)
        # At once, not after the batch in hand (about a minute of steps), which would end with a partial result's line.
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    text = err.finish()
    assert proc.returncode == 130, text[-2000:]
    assert text.strip().splitlines()[-1] == "error: stopped by SIGINT; results of the batches in progress are lost"


def test_an_output_that_cannot_be_written_stops_before_any_sampling(vectors, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    shutil.copytree(vectors / "checkpoints", workdir / "checkpoints")
    (workdir / "samples").write_text("in the way\n")
    monkeypatch.setattr(solvers.Sampler, "sample", lambda *a, **k: pytest.fail("sampled before checking the output"))
    one_line_error(cli("--workdir", workdir, *SAMPLE, check=False),
                   f"{workdir / 'samples'} is a file, not a directory; move it away")


def test_rerunning_a_finished_training_says_it_is_complete(trained):
    result = cli("--mode", "train", "--workdir", trained, "--config.training.n_iters=4", *TINY)
    assert result.stdout.startswith(f"already complete at step 4 (training.n_iters); checkpoint {trained}")


@pytest.mark.parametrize("error, one_line", [(UsageError("bad value; give another"), True),
                                             (ValueError("operands could not be broadcast"), False),
                                             (KeyError("a bug"), False)])
def test_only_what_the_user_can_fix_is_one_line(vectors, monkeypatch, error, one_line):
    # A ValueError from numpy or torch inside a mode is a bug: it keeps its traceback (here: it propagates out of
    # the in-process entry point); a UsageError is printed as one line with exit status 1.
    def fails(job):
        raise error
    monkeypatch.setitem(modes.RUNNERS, "eval", fails)
    if one_line:
        one_line_error(cli("--mode", "eval", "--workdir", vectors, check=False), "bad value; give another")
    else:
        with pytest.raises(type(error)):
            cli("--mode", "eval", "--workdir", vectors, check=False)
