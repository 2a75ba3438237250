import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from scoresde import run as runs
from scoresde import data as data_lib
from scoresde import models
from scoresde import sde_lib
import scoresde.utils
from scoresde import solvers
from scoresde import training
from scoresde.run import checkpoint as ckpt
from scoresde.training import loop

from helpers import ROOT, cli, metrics_rows, tiny_config
from oracles import relative_score_error


def _flat(state):
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [x for k in sorted(state, key=str) for x in _flat(state[k])]
    if isinstance(state, (list, tuple)):
        return [x for v in state for x in _flat(v)]
    return [torch.tensor(float(state))] if isinstance(state, (int, float)) else []


def test_resume_is_exact(tmp_path):
    straight = training.train(tiny_config(), tmp_path / "a")
    assert straight.step == 20 and not straight.interrupted
    training.train(tiny_config(n_iters=10), tmp_path / "b")
    resumed = training.train(tiny_config(), tmp_path / "b")
    assert resumed.step == 20
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "a"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "b"))
    for key in ("model", "ema", "optimizer"):
        xs, ys = _flat(a[key]), _flat(b[key])
        assert len(xs) == len(ys) > 0
        # Bit-for-bit: the same operations on the same CPU with the same random numbers.
        assert all(torch.equal(x, y) for x, y in zip(xs, ys)), key
    la = [r["loss"] for r in metrics_rows(tmp_path / "a") if "loss" in r]
    lb = [r["loss"] for r in metrics_rows(tmp_path / "b") if "loss" in r]
    assert la == lb and len(la) == 4
    assert (tmp_path / "a" / "snapshots" / "step_20.png").stat().st_size > 0


def test_same_seed_same_loss_curve(tmp_path):
    training.train(tiny_config(n_iters=10), tmp_path / "a")
    training.train(tiny_config(n_iters=10), tmp_path / "b")
    la = [r["loss"] for r in metrics_rows(tmp_path / "a") if "loss" in r]
    lb = [r["loss"] for r in metrics_rows(tmp_path / "b") if "loss" in r]
    assert la == lb and len(la) == 2


def test_keeps_last_k_checkpoints_and_metrics(tmp_path):
    training.train(tiny_config(n_iters=40, keep_checkpoints=2), tmp_path)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint_30.pt", "checkpoint_40.pt"]
    rows = metrics_rows(tmp_path)
    assert [r["step"] for r in rows if "loss" in r] == list(range(5, 41, 5))
    assert [r["step"] for r in rows if "test_loss" in r] == [10, 20, 30, 40]
    assert all(r["lr"] > 0 and r["grad_norm"] >= 0 for r in rows if "loss" in r)


def test_resume_skips_a_metrics_line_cut_by_a_crash(tmp_path, caplog):
    training.train(tiny_config(n_iters=10), tmp_path)
    path = tmp_path / "metrics.jsonl"
    rows = path.read_text().splitlines()
    path.write_text("\n".join(rows) + '\n{"step": 15, "loss": 0.4')   # killed mid-write, no newline
    with caplog.at_level("WARNING"):
        assert training.train(tiny_config(), tmp_path).step == 20
    warnings = [r.getMessage() for r in caplog.records if "skipped unreadable line" in r.getMessage()]
    assert len(warnings) == 1 and f"line {len(rows) + 1} " in warnings[0]
    # The cut line is gone and the resumed run's rows follow the old ones.
    assert [r["step"] for r in metrics_rows(tmp_path) if "loss" in r] == [5, 10, 15, 20]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_sampler_from_config_takes_the_sampling_section():
    config = tiny_config()
    config.sampling.snr, config.sampling.corrector_steps, config.sampling.eps = 0.07, 3, 2e-3
    s = runs.sampler_from_config(config, solver="pc")
    assert (s.solver, s.steps, s.eps, s.options, s.label) == ("pc", 4, 2e-3, {"snr": 0.07, "corrector_steps": 3},
                                                              "pc_4")
    s = runs.sampler_from_config(config, solver="pc", steps=9, options={"snr": 0.2})
    assert (s.steps, s.options) == (9, {"snr": 0.2, "corrector_steps": 3})
    # Fields the solver does not take are dropped; adaptive solvers get no steps.
    s = runs.sampler_from_config(config, solver="heun")
    assert (s.steps, s.eps, s.options, s.label) == (4, 2e-3, {}, "heun_4")
    s = runs.sampler_from_config(config, solver="rk45", options={"rtol": 1e-3})
    assert (s.steps, s.options, s.label) == (None, {"rtol": 1e-3}, "rk45_adaptive")
    # ... but an option given for a solver that does not take it is an error.
    with pytest.raises(ValueError, match=r"^unknown option 'snr' for solver 'heun'; its options: grid, rho, shift$"):
        runs.sampler_from_config(config, solver="heun", options={"snr": 0.1})


def test_sampler_options_from_the_config_and_the_command_line():
    config = tiny_config()
    config.sampling.solver, config.sampling.options = "unipc", "order=2, variant=bh1"
    # Text from the config is converted to the solver's types; given options take precedence over it.
    assert runs.sampler_from_config(config).options == {"order": 2, "variant": "bh1"}
    assert runs.sampler_from_config(config, options={"order": "1"}).options == {"order": 1, "variant": "bh1"}
    with pytest.raises(ValueError, match=r"^solver 'unipc' option order='x': expected int$"):
        runs.sampler_from_config(config, options={"order": "x"})
    config.sampling.options = "orderr=2"
    with pytest.raises(ValueError, match=r"^unknown option 'orderr' for solver 'unipc'; its options: variant, "):
        runs.sampler_from_config(config)


def test_sampler_from_config_resolves_the_grid(tmp_path):
    config = tiny_config()
    config.sampling.grid = "edm"
    s = runs.sampler_from_config(config, solver="heun")
    assert (s.options["grid"], s.label) == ("edm", "heun_4_edm")
    config.sampling.grid = "calibrated"
    with pytest.raises(runs.MissingTable, match=re.escape(f"no calibrated heun grid with 4 steps at "
                                                          f"{tmp_path / 'grids' / 'heun_4.json'}; fit one")):
        runs.sampler_from_config(config, tmp_path, solver="heun")
    times = solvers.time_grid(sde_lib.VPSDE(), 4, 1e-3, "edm")
    path = runs.calibrated_grid_path(tmp_path, "heun", 4)
    assert path == tmp_path / "grids" / "heun_4.json"
    solvers.save_grid(str(path), solvers.Calibration(times, 0.1, 0.2, 10), solver="heun", sde=sde_lib.VPSDE())
    s = runs.sampler_from_config(config, tmp_path, solver="heun")
    assert s.options["grid"].tolist() == times.tolist() and s.label == "heun_4_calibrated"
    # A grid file brings its own number of steps unless steps is given.
    config.sampling.grid, config.sampling.steps = str(path), 6
    s = runs.sampler_from_config(config, solver="unipc")
    assert (s.steps, s.label) == (4, "unipc_4_grid-heun_4") and s.options["grid"].tolist() == times.tolist()
    assert runs.sampler_from_config(config, solver="heun", steps=7).steps == 7
    config.sampling.grid = "nonsense"
    with pytest.raises(ValueError, match="unknown time grid 'nonsense'; available: uniform, logsnr, edm, calibrated"):
        runs.sampler_from_config(config, solver="heun")


def test_a_calibrated_grid_is_used_only_with_the_options_it_was_fitted_with(tmp_path):
    sde = sde_lib.VPSDE()
    times = solvers.time_grid(sde, 4, 1e-3, "edm")
    fitted = solvers.Calibration(times, 0.1, 0.2, 10)
    solvers.save_grid(runs.calibrated_grid_path(tmp_path, "unipc", 4), fitted, solver="unipc", sde=sde, order=2)
    config = tiny_config()
    config.sampling.grid = "calibrated"
    s = runs.sampler_from_config(config, tmp_path, solver="unipc", steps=4, options={"order": "2"})
    assert s.grid_label == "calibrated" and s.options["grid"].tolist() == times.tolist()
    with pytest.raises(ValueError, match=r"was fitted with options \{'order': 2\}, not \{'order': 3\}"):
        runs.sampler_from_config(config, tmp_path, solver="unipc", steps=4, options={"order": 3})


def test_a_missing_calibrated_grid_names_the_command_that_makes_it(tmp_path):
    config = tiny_config()
    trainer = training.Trainer(config, tmp_path)
    trainer.run()
    result = cli("--mode", "sample", "--workdir", tmp_path, "--solver=heun", "--steps=3", "--grid=calibrated",
                 check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no calibrated heun grid with 3 steps at {tmp_path / 'grids' / 'heun_3.json'}; fit one for this run "
        f"first; make it with `python main.py --mode calibrate --workdir {tmp_path} --solver heun --steps 3`"]


def test_snapshots_use_the_sampling_options(tmp_path, monkeypatch):
    config = tiny_config()
    config.sampling.solver, config.sampling.steps, config.sampling.corrector_steps = "pc", 2, 3
    trainer = training.Trainer(config, tmp_path)
    real, nfe = solvers.Sampler.sample, []

    def recording(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        nfe.append(result.nfe)
        return result
    monkeypatch.setattr(solvers.Sampler, "sample", recording)
    assert trainer.snapshot().is_file()
    # Each of the 2 steps: 3 Langevin corrections and one predictor evaluation (1 + 1 with the default).
    assert nfe == [2 * (3 + 1)]


@pytest.mark.parametrize("grid", ["calibrated", "/nonexistent/grid.json"])
def test_snapshots_of_a_run_set_to_a_calibrated_grid_use_the_default_grid(tmp_path, grid):
    # There is no calibrated grid while the network is still training; the snapshot must not stop the run.
    config = tiny_config()
    config.sampling.solver, config.sampling.grid = "unipc", grid
    trainer = training.Trainer(config, tmp_path)
    assert trainer.sampler.label == "unipc_4" and "grid" not in trainer.sampler.options
    assert trainer.snapshot().is_file()


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    trainer = training.Trainer(tiny_config(), tmp_path)
    first = trainer.save()

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    trainer.step = 5
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert ckpt.load_checkpoint(first)["step"] == 0
    assert sorted(p.name for p in ckpt.checkpoint_dir(tmp_path).iterdir()) == ["checkpoint_0.pt"]


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "checkpoints" / "checkpoint_7.pt"
    path.parent.mkdir(parents=True)
    torch.save({"step": 7, "weights": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])       # a crash mid-copy: the zip's directory is missing
    with pytest.raises(runs.CheckpointError, match="is not readable .*delete it to fall back"):
        training.train(tiny_config(), tmp_path)
    path.write_bytes(b"garbage")
    with pytest.raises(runs.CheckpointError, match="is not a checkpoint"):
        training.train(tiny_config(), tmp_path)


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    real = models.dsm_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 13 else loss

    monkeypatch.setattr(models, "dsm_loss", flaky)
    config = tiny_config(eval_freq=1000)
    with pytest.raises(training.TrainingDivergedError, match="at step 13") as info:
        training.train(config, tmp_path)
    assert "checkpoint_10.pt" in str(info.value)
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["step"] == 10


def test_a_loss_that_is_nan_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    real = models.dsm_loss
    monkeypatch.setattr(models, "dsm_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(training.TrainingDivergedError) as info:
        training.train(tiny_config(), tmp_path)
    assert str(info.value) == ("loss is nan at step 1; no checkpoint was saved before it. Lower optim.lr, keep "
                               "optim.grad_clip > 0, or check the data.")


def test_a_busy_run_directory_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "build_model", lambda *a, **k: pytest.fail("built the model of a busy run"))
    monkeypatch.setattr(loop.data_lib, "get_dataset", lambda *a, **k: pytest.fail("read the data of a busy run"))
    with runs.WorkdirLock(tmp_path, "train"):
        with pytest.raises(runs.WorkdirBusyError, match=f"in use by another train process \\(PID {os.getpid()}\\)"):
            training.train(tiny_config(), tmp_path)
    # The lock file goes with its holder; the run directory holds what it held before.
    assert list(tmp_path.iterdir()) == []


def test_a_lock_leaves_only_what_was_written_under_it(tmp_path):
    with runs.WorkdirLock(tmp_path / "a" / "b", "sample") as lock:
        assert lock.path.read_text() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []       # the lock file and both folders it made are gone
    with runs.WorkdirLock(tmp_path / "a" / "b", "sample"):
        (tmp_path / "a" / "kept.txt").write_text("x")
    assert [p.name for p in tmp_path.rglob("*")] == ["a", "kept.txt"]


def test_checkpoint_of_another_network_is_refused(tmp_path):
    training.train(tiny_config(n_iters=10), tmp_path)
    config = tiny_config()
    config.model.mlp_width = 48
    # Resuming under another network is another experiment: refused by name before any tensor is compared ...
    with pytest.raises(ValueError, match=r"trained with another config: model.mlp_width: 32 -> 48; a run is one "):
        training.train(config, tmp_path)
    # ... and tensors that do not fit the network are refused by the strict load, naming the differences.
    state = runs.load_checkpoint(runs.latest_checkpoint(tmp_path))
    with pytest.raises(runs.CheckpointError, match="does not match the configured network .*shape differs"):
        training.Trainer(config, tmp_path).load_state_dict(state, "checkpoint_10.pt")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_and_stops_the_run(tmp_path, sig):
    trainer = training.Trainer(tiny_config(n_iters=100000, eval_freq=100000), tmp_path)
    real = trainer.train_step

    def step_then_signal(x, y):
        out = real(x, y)
        if trainer.step == 13:
            os.kill(os.getpid(), sig)      # Python runs the handler before the loop looks at the flag
        return out
    trainer.train_step = step_then_signal
    before = signal.getsignal(sig)
    result = trainer.run()
    assert (result.step, result.interrupted) == (13, True) and math.isfinite(result.loss)
    # Step 13 is not a snapshot step (every 10): the stop saves it, next to the checkpoint of step 10.
    assert result.checkpoint == ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_dir(tmp_path) / "checkpoint_13.pt"
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint_10.pt", "checkpoint_13.pt"]
    assert ckpt.load_checkpoint(result.checkpoint)["step"] == 13
    assert signal.getsignal(sig) is before     # the run's handler is gone again


@pytest.mark.slow
def test_sigterm_to_main_py_saves_and_exits_cleanly(tmp_path):
    # The same configuration as tiny_config(), through the console entry point as a batch system runs it.
    args = ["--mode", "train", "--config", "vpsde", "--workdir", str(tmp_path), "--config.data.dataset=gmm8",
            "--config.data.num_samples=2000", "--config.model.mlp_width=32", "--config.model.mlp_depth=2",
            "--config.training.batch_size=64", "--config.training.n_iters=100000", "--config.training.log_freq=5",
            "--config.training.eval_freq=100000", "--config.training.snapshot_freq=100000",
            "--config.training.progress=False", "--config.sampling.solver=euler", "--config.sampling.steps=4",
            "--config.optim.warmup=5", "--device=cpu"]
    proc = subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len([r for r in metrics_rows(tmp_path)
                                                                  if "loss" in r]) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    latest = ckpt.latest_checkpoint(tmp_path)
    step = ckpt.load_checkpoint(latest)["step"]
    assert 10 <= step < 100000
    assert re.fullmatch(rf"stopped at step {step}, loss \d+\.\d{{5}}; checkpoint {re.escape(str(latest))}\n", out), out
    assert f"SIGTERM received: saved {latest} at step {step}, exiting" in err
    # The run resumes from where the signal stopped it.
    assert training.Trainer(tiny_config(), tmp_path).resume() == latest


@pytest.mark.slow
def test_short_training_learns_the_gmm8_score(tmp_path):
    config = tiny_config(n_iters=3000, batch_size=256, snapshot_freq=3000, eval_freq=3000, log_freq=500)
    config.training.snapshot_samples = 0
    config.data.num_samples = 20000
    config.model.mlp_width = 128
    config.model.mlp_depth = 3
    config.model.ema_rate = 0.995
    config.optim.lr = 2e-3
    config.optim.warmup = 100
    trainer = training.Trainer(config, tmp_path)
    trainer.run()
    mixture = data_lib.gmm8_mixture()
    score_fn = models.get_score_fn(trainer.ema.module.eval(), trainer.sde, "eps")
    # Relative squared error E|s - s*|^2 / E|s*|^2 on 4000 x_t ~ p_t; an untrained (zero-output) network scores 1.0.
    # Measured after these 3000 steps: 0.077, 0.066, 0.004, 3e-4, 5e-4; the bounds leave a factor >= 2. Small t is
    # hardest: the eight modes are sharp there.
    bounds = {0.05: 0.2, 0.1: 0.15, 0.3: 0.02, 0.6: 0.01, 1.0: 0.01}
    errors = {t: relative_score_error(score_fn, trainer.sde, mixture, t, n=4000, seed=0) for t in bounds}
    print("relative squared score error:", {t: round(e, 5) for t, e in errors.items()})
    assert all(errors[t] < bound for t, bound in bounds.items()), errors


def test_cpu_threads_follow_the_config_and_the_network_size():
    before = torch.get_num_threads()
    try:
        config, small = tiny_config(), torch.nn.Linear(10, 10)
        config.num_threads = 2
        assert runs.builders.set_num_threads(config, small, torch.device("cpu")) == 2
        config.num_threads = 0      # auto: one thread below SMALL_NETWORK parameters on the CPU ...
        assert runs.builders.set_num_threads(config, small, torch.device("cpu")) == 1
        torch.set_num_threads(2)    # ... and torch's own setting otherwise
        big = torch.nn.Linear(1500, 1500)
        assert sum(p.numel() for p in big.parameters()) > runs.builders.SMALL_NETWORK
        assert runs.builders.set_num_threads(config, big, torch.device("cpu")) == 2
    finally:
        torch.set_num_threads(before)


def test_files_get_the_umask_permissions_not_mkstemps(tmp_path):
    # mkstemp creates 0600 files; what a run writes must be readable as any file the user creates is.
    old = os.umask(0o022)
    try:
        path = scoresde.utils.atomic_write_text(tmp_path / "a.json", "{}")
        assert (path.stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (scoresde.utils.atomic_write_text(tmp_path / "b.json", "{}").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


def test_a_second_signal_during_a_snapshot_skips_it_and_saves(tmp_path):
    trainer = training.Trainer(tiny_config(n_iters=100000, eval_freq=100000, snapshot_freq=10), tmp_path)

    def slow_snapshot():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)     # the second one interrupts the snapshot itself
        pytest.fail("the snapshot went on after the second signal")
    trainer.snapshot = slow_snapshot
    result = trainer.run()
    # The checkpoint of step 10 was saved before the snapshot started; the run stops there.
    assert result.interrupted and result.step == 10
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint_10.pt"
