"""Reflow (training.reflow, Liu et al. 2023): the pairs are the exact teacher's ODE map and survive a kill, a
student resumes bit-exactly, a 2-rectified flow of the exact teacher is straighter and more accurate in few Euler
steps than the teacher, the one-step student takes only its one step, and main.py runs it all."""
import json
import os
import signal

import numpy as np
import pytest
import scipy.integrate
import torch

from scoresde import run as runs
from scoresde import sde_lib
from scoresde import solvers
from scoresde import training
from scoresde.run import checkpoint as ckpt
from scoresde.training import distill, reflow, students

from helpers import cli, tiny_config, SignalAt
from oracles import MIX


def _config(pairs=400, shard_size=100, iterations=10, width=32, **reflow_settings):
    config = tiny_config(batch_size=100, eval_freq=100000, log_freq=100, snapshot_freq=100000)
    config.training.snapshot_samples = 0
    config.model.mlp_width = width
    config.distill.method, config.distill.iterations, config.distill.warmup = "reflow", iterations, 0
    r = config.distill.reflow
    r.pairs, r.shard_size = pairs, shard_size
    for key, value in reflow_settings.items():
        r[key] = value
    return config


def _exact(config, score_fn=None):
    sde = runs.build_sde(config)
    return students.Teacher(score_fn or MIX.score_fn(sde), None, None, "exact MIX score", 0)


def _shards(directory):
    return {p.name: dict(np.load(p)) for p in sorted(directory.glob("shard_*.npz"))}


def _ode_map(sde, z):
    """The probability-flow ODE from x_T = prior_std z to eps = 1e-3 by scipy's DOP853 at rtol 1e-11, independently
    of the library's solvers: dx/dt = f x - g^2/2 score."""
    score = MIX.score_fn(sde)
    n = len(z)

    def velocity(t, flat):
        x = torch.from_numpy(flat).view(n, -1)
        f, g2 = sde.f_and_g2(torch.full((n,), t, dtype=torch.float64))
        return (f[:, None] * x - 0.5 * g2[:, None] * score(x, torch.full((n,), t, dtype=torch.float64))).ravel()

    x_T = (z.double() * sde.prior_std).numpy().ravel()
    solution = scipy.integrate.solve_ivp(velocity, (sde.T, 1e-3), x_T, method="DOP853", rtol=1e-11, atol=1e-11)
    return torch.from_numpy(solution.y[:, -1]).view(n, -1)


@pytest.mark.parametrize("name", ["vpsde", "vesde", "rectified"])
def test_the_pairs_are_the_exact_teachers_ode_map(tmp_path, name):
    config = _config(pairs=200, options="rtol=1e-6,atol=1e-6")
    config.sde.name = name
    sde = runs.build_sde(config)
    pairs = reflow.draw_pairs(config, _exact(config), tmp_path, 1, "cpu")
    # The noise is the student's standard normal prior noise, drawn from (seed, flow, shard): a VE teacher's
    # x_T = 50 z is divided by its sigma_max, which the manifest records.
    expected_z = torch.cat([reflow.shard_noise(config.seed, 1, i, (100, 2)) for i in range(2)])
    assert torch.equal(pairs.z, expected_z)
    manifest = json.loads((tmp_path / reflow.MANIFEST).read_text())
    assert manifest["prior_std"] == pytest.approx(sde.prior_std) and manifest["solver"] == "rk45"
    assert (manifest["pairs"], manifest["nfe_per_pair"]) == (200, pairs.nfe)
    exact = _ode_map(sde, pairs.z[:50])
    error = float((pairs.x[:50].double() - exact).abs().max())
    scale = float(exact.abs().max())
    print(f"{name}: max |pair - exact map| {error:.2e} (|x| <= {scale:.2f}), {pairs.nfe:.0f} NFE per pair")
    # rk45 at rtol = atol = 1e-6 in float32 holds each step's error near 1e-6 (1 + |x|); over 15-30 steps the
    # largest error measured is 4.5e-6 (VP), 1.3e-5 (VE), 3.3e-5 (rectified); the bound, 1e-4 (1 + |x|) = 3.2e-4,
    # is ten times the worst yet a thousandth of the distance between the mixture's modes.
    assert error < 1e-4 * (1 + scale)
    assert pairs.nfe > 10


def test_pair_drawing_stopped_by_sigterm_resumes_with_identical_shards(tmp_path):
    config = _config(pairs=400, iterations=2, solver="heun", steps=8, options="")
    exact = _exact(config)
    distill.distill(config, tmp_path / "a", teacher=exact)
    # Heun at 8 steps makes 15 calls per shard: SIGTERM in the second shard, which is finished, then it stops.
    stopped = distill.distill(config, tmp_path / "b", teacher=exact._replace(score_fn=SignalAt(exact.score_fn, 20)))
    pairs_b = reflow.pairs_dir(reflow.student_dir(tmp_path / "b", 2))
    assert stopped.interrupted and stopped.stages == [] and "run the same command again" in stopped.line()
    assert sorted(_shards(pairs_b)) == ["shard_00000.npz", "shard_00001.npz"]
    assert not list(pairs_b.glob(".*.tmp"))          # no half-written shard
    assert not (pairs_b.parent / "checkpoints").exists()
    resumed = distill.distill(config, tmp_path / "b", teacher=exact)
    assert [(n, r.step) for n, r in resumed.stages] == [("2", 2)]
    a, b = (_shards(reflow.pairs_dir(reflow.student_dir(tmp_path / w, 2))) for w in "ab")
    assert sorted(a) == sorted(b) == [f"shard_{i:05d}.npz" for i in range(4)]
    assert all(np.array_equal(a[s][k], b[s][k]) for s in a for k in ("x", "z", "nfe"))
    assert students.read_record(reflow.student_dir(tmp_path / "b", 2))["pair_nfe"] == 15
    # Pairs of another solver are another coupling: refused, not mixed in.
    config.distill.reflow.steps = 16
    with pytest.raises(ValueError, match="holds pairs drawn with steps=8, not 16"):
        reflow.draw_pairs(config, exact, pairs_b, 1, "cpu")


def test_an_interrupted_student_resumes_bit_exactly(tmp_path, monkeypatch):
    config = _config(iterations=12, solver="heun", steps=4, options="")
    exact = _exact(config)
    distill.distill(config, tmp_path / "a", teacher=exact)
    calls = {"n": 0}
    loss = reflow.reflow_loss

    def signal_at_7(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss(*args, **kwargs)

    monkeypatch.setattr(reflow, "reflow_loss", signal_at_7)
    stopped = distill.distill(config, tmp_path / "b", teacher=exact)
    assert stopped.interrupted and stopped.stages[0][1].step == 7
    monkeypatch.setattr(reflow, "reflow_loss", loss)
    resumed = distill.distill(config, tmp_path / "b", teacher=exact)
    assert [(n, r.step) for n, r in resumed.stages] == [("2", 12)]
    a, b = (ckpt.load_checkpoint(ckpt.latest_checkpoint(reflow.student_dir(tmp_path / w, 2))) for w in "ab")
    for key in ("model", "ema"):
        # Bit for bit: the same operations on the same CPU with the same random numbers and pairs.
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert distill.distill(config, tmp_path / "b", teacher=exact).stages == []      # a finished student is kept


def _euler(sde, score_fn, x_T, steps):
    return solvers.sample(sde, score_fn, None, "euler", steps=steps, x_T=x_T).x.double()


def _straightness(sde, score_fn, x_T, steps=200):
    """Liu et al.'s S = int E|(x_eps - x_T)/(eps - T) - v(x_t, t)|^2 dt along the Euler path of `steps` steps
    (time rescaled to length 1): 0 exactly when every path is a straight line at constant speed."""
    times = solvers.time_grid(sde, steps, 1e-3, "uniform")
    flow, xs, vs = sde.reverse(score_fn, 0.0), [x_T], []
    with torch.no_grad():
        for t, s in zip(times[:-1], times[1:]):
            vs.append(flow.drift(xs[-1], t.expand(len(x_T))))
            xs.append(xs[-1] + (s - t) * vs[-1])
    length = float(times[0] - times[-1])
    chord = (xs[-1] - xs[0]) / (times[-1] - times[0])
    return float(sum(((chord - v) ** 2).sum(1).mean() for v in vs) / steps * length ** 2)


def test_a_2_rectified_flow_of_the_exact_teacher_is_straighter_and_better_in_few_euler_steps(tmp_path):
    config = _config(pairs=2000, shard_size=1000, iterations=600, width=128, options="rtol=1e-6,atol=1e-6")
    config.sde.name = "rectified"
    config.model.mlp_depth = 3
    config.training.batch_size = 256
    config.distill.lr, config.distill.warmup, config.distill.ema_rate = 2e-3, 50, 0.99
    sde = runs.build_sde(config)
    teacher = _exact(config)
    result = distill.distill(config, tmp_path, teacher=teacher)
    run = runs.load_run(reflow.student_dir(tmp_path, 2), device="cpu")
    assert students.read_record(run.workdir)["init"] == "random" and run.config.model.parameterization == "flow"

    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    exact = solvers.sample(sde, teacher.score_fn, None, "rk45", x_T=z.double() * sde.prior_std, rtol=1e-9,
                           atol=1e-9).x
    with torch.no_grad():
        errors = {(who, n): float(((_euler(s, f, z * s.prior_std, n) - exact) ** 2).sum(1).mean().sqrt())
                  for who, s, f in (("teacher", sde, teacher.score_fn), ("student", run.sde, run.score_fn))
                  for n in (1, 2)}
        straight = {"teacher": _straightness(sde, teacher.score_fn, z.double() * sde.prior_std),
                    "student": _straightness(run.sde, run.score_fn, z * run.sde.prior_std)}
    print(result.line(), errors, straight)
    # Pathwise RMSE to the exact map of the same noise. The exact 1-rectified flow's one Euler step lands near the
    # data mean (1.36) and two land halfway (0.675); the 2-rectified student follows the map within 0.086-0.089
    # (1 step) and 0.070-0.074 (2 steps) for seeds 0, 1, 2. The bound, a fifth of the teacher's error, is 0.27 and
    # 0.135: 80% above the worst student.
    for n in (1, 2):
        assert errors["student", n] < 0.2 * errors["teacher", n], (n, errors)
    # Straightness: the exact flow's paths bend where they choose a mode (S = 0.79); the student's are nearly
    # straight (S = 2.8e-4 to 3.3e-4 for seeds 0-2); the bound, 1% of the teacher's, is 24 times the worst.
    assert straight["student"] < 0.01 * straight["teacher"], straight


def test_the_one_step_student_takes_only_its_one_euler_step(tmp_path):
    config = _config(iterations=5, solver="heun", steps=4, options="", one_step=True, one_step_iterations=5)
    result = distill.distill(config, tmp_path, teacher=_exact(config))
    flow, one_step = reflow.student_dir(tmp_path, 2), reflow.one_step_dir(tmp_path, 2)
    assert [n for n, _ in result.stages] == ["2", "2-onestep"] and result.workdir == one_step
    assert result.line().endswith(f"--workdir {one_step} --solver euler --steps 1")
    record = students.read_record(one_step)
    assert (record["one_step"], record["init"], record["teacher_step"]) == (True, "teacher", 5)
    sde = sde_lib.RectifiedFlow()
    # The 2-rectified flow is a flow: any ODE sampler, and a likelihood.
    for sampler in (solvers.sampler("euler", 1), solvers.sampler("heun", 7), solvers.sampler("rk45")):
        distill.check_sampler(flow, sde, sampler)
    distill.check_score(flow, "a likelihood")
    distill.check_sampler(one_step, sde, solvers.sampler("euler", 1))
    for other in (solvers.sampler("euler", 2), solvers.sampler("heun", 1), solvers.sampler("rk45")):
        with pytest.raises(ValueError, match="valid only with one Euler step .* sample it with --solver euler "
                                             "--steps 1$"):
            distill.check_sampler(one_step, sde, other)
    with pytest.raises(ValueError, match="is a reflow student: .* is not a score"):
        distill.check_score(one_step, "a likelihood")


def test_a_3_rectified_flow_reflows_the_2_rectified_one(tmp_path, monkeypatch):
    starts, start_from = [], students.start_from
    monkeypatch.setattr(students, "start_from", lambda trainer, init: starts.append((trainer.workdir.name, init))
                        or start_from(trainer, init))
    config = _config(iterations=3, solver="euler", steps=2, options="", k=3)
    result = distill.distill(config, tmp_path, teacher=_exact(config))
    assert [n for n, _ in result.stages] == ["2", "3"] and result.workdir == reflow.student_dir(tmp_path, 3)
    second, third = reflow.student_dir(tmp_path, 2), reflow.student_dir(tmp_path, 3)
    record = students.read_record(third)
    assert (record["k"], record["init"], record["teacher"]) == (3, "teacher", str(ckpt.latest_checkpoint(second)))
    # The 2nd flow starts at random (the exact teacher has no network), the 3rd from the 2nd's EMA network.
    ema = students.load_teacher(second, None, "cpu").init
    assert [name for name, _ in starts] == ["2", "3"] and starts[0][1] is None
    assert all(torch.equal(starts[1][1][k], ema[k]) for k in ema)
    # The 3rd flow's pairs come from the 2nd, with noise of their own: (seed, flow 2, shard), not the 2nd's.
    manifests = [json.loads((reflow.pairs_dir(d) / reflow.MANIFEST).read_text()) for d in (second, third)]
    assert [m["flow"] for m in manifests] == [1, 2] and manifests[1]["sde"] == "RectifiedFlow(T=0.999)"
    z2, z3 = (reflow.load_pairs(reflow.pairs_dir(d), 4).z for d in (second, third))
    assert torch.equal(z3[:100], reflow.shard_noise(config.seed, 2, 0, (100, 2))) and not torch.equal(z2, z3)


@pytest.mark.parametrize("setting, message", [
    ("k=1", "distill.reflow.k=1: must be an integer >= 2"),
    ("pairs=150", "must be a multiple of distill.reflow.shard_size=100"),
    ("solver=pc", "so use a deterministic solver"),
    ("solver=rk45 --config.distill.reflow.steps=4", "rk45 is adaptive and takes no `steps`"),
])
def test_bad_reflow_settings_are_one_clear_line(tmp_path, setting, message):
    args = [f"--config.distill.reflow.{s}" for s in setting.split(" --config.distill.reflow.")]
    r = cli("--mode", "distill", "--workdir", tmp_path / "empty", "--config.distill.method=reflow",
            "--config.distill.reflow.shard_size=100", *args, check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert not (tmp_path / "empty" / "distill").exists()


def test_main_py_reflows_a_trained_run_into_students_that_sample_and_score(tmp_path):
    training.train(tiny_config(), tmp_path)      # a 20-step gmm8 teacher with an eps-prediction MLP
    r = cli("--mode", "distill", "--workdir", tmp_path, "--device=cpu", "--config.distill.method=reflow",
            "--config.distill.reflow.pairs=200", "--config.distill.reflow.shard_size=100",
            "--config.distill.reflow.solver=euler", "--config.distill.reflow.steps=4",
            "--config.distill.reflow.options=", "--config.distill.reflow.one_step=True",
            "--config.distill.reflow.one_step_iterations=3", "--config.distill.iterations=3",
            "--config.training.batch_size=50", "--config.training.progress=False")
    flow, one_step = reflow.student_dir(tmp_path, 2), reflow.one_step_dir(tmp_path, 2)
    assert r.stdout.strip().endswith(f"--workdir {one_step} --solver euler --steps 1")
    # Pairs of 4 Euler steps; the student starts from the teacher's network although that predicted eps for VP.
    assert (students.read_record(flow)["pair_nfe"], students.read_record(flow)["init"]) == (4, "teacher")
    assert "NFE 3 per batch" in cli("--mode", "sample", "--workdir", flow, "--device=cpu", "--solver", "euler",
                                    "--steps", 3, "--num_samples", 4).stdout
    assert "NFE 1 per batch" in cli("--mode", "sample", "--workdir", one_step, "--device=cpu", "--solver", "euler",
                                    "--steps", 1, "--num_samples", 4).stdout
    refused = cli("--mode", "sample", "--workdir", one_step, "--device=cpu", "--solver", "heun", "--steps", 2,
                  check=False)
    assert refused.returncode == 1 and "sample it with --solver euler --steps 1" in refused.stderr
    cli("--mode", "fid", "--workdir", flow, "--device=cpu", "--solver", "euler", "--steps", 2, "--num_samples", 64)
    # A fixed-step likelihood ODE (no accuracy pilot): the student's likelihood runs, quickly.
    cli("--mode", "likelihood", "--workdir", flow, "--device=cpu", "--num_samples", 8, "--config.eval.steps=12",
        "--config.eval.accuracy=0")
    refused = cli("--mode", "likelihood", "--workdir", one_step, "--device=cpu", "--num_samples", 8, check=False)
    assert refused.returncode == 1 and "is not a score" in refused.stderr
