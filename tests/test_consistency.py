"""Consistency distillation (training.consistency, Song et al. 2023): the boundary condition of the
parameterisation, the teacher's one ODE step against the exact ODE, a student of the exact gmm8 score against the
exact probability-flow map, exact resume after SIGTERM, and the refusals."""
import logging
import math
import re

import pytest
import torch

from scoresde import data as data_lib
from scoresde import models
from scoresde import run as runs
from scoresde import sde_lib
from scoresde import solvers
from scoresde import training
from scoresde.metrics.vectors import energy_distance
from scoresde.run import checkpoint as ckpt
from scoresde.training import consistency, distill, students

from helpers import cli, tiny_config, SignalAt
from oracles import MIX

EPS = 1e-3


@pytest.mark.parametrize("sde, parameterization", [(sde_lib.VPSDE(), "eps"), (sde_lib.VPSDE(), "edm"),
                                                    (sde_lib.VESDE(), "score"), (sde_lib.RectifiedFlow(), "flow")],
                         ids=["vp-eps", "vp-edm", "ve-score", "rectified-flow"])
def test_the_consistency_function_is_the_identity_at_sigma_min(sde, parameterization):
    torch.manual_seed(0)
    net = models.get_model("mlp", dim=2, width=32, depth=2).double()
    sigma_min = consistency.sigma_min(sde, EPS)
    plain = models.Precond.for_network(net, parameterization)
    cm = models.Precond.for_network(net, parameterization, sigma_min=sigma_min)
    y = torch.randn(64, 2, dtype=torch.float64)
    # At t = eps the boundary weight 1 - c_skip is exactly 0: c_skip = 1, c_out = 0 and the score 0, bit for bit.
    at_eps = cm.coefficients(sde, torch.tensor([EPS], dtype=torch.float64))
    assert (float(at_eps.c_skip[0]), float(at_eps.c_out[0])) == (1.0, 0.0)
    x = sde.alpha_bar(torch.tensor(EPS, dtype=torch.float64)) * y
    score = models.get_score_fn(net, sde, cm)(x, EPS)
    assert torch.equal(score, torch.zeros_like(score))
    # So the denoised estimate every solver takes is x/alpha_bar(eps) = y, up to the round-off of x = alpha_bar y.
    torch.testing.assert_close(sde.denoise(x, score, EPS), y, rtol=4e-16, atol=0)
    # Elsewhere f = c_skip y + (1 - c_skip) D with c_skip = sigma_min/sigma, one DDIM step to sigma_min with the plain
    # parameterisation's denoiser D (float64 round-off; the VE score times beta_bar^2 up to 2500 loses about 12
    # digits' worth of 1e-16 relative to |f| ~ 1e2).
    t = torch.tensor([0.01, 0.1, 0.5, 0.9], dtype=torch.float64)
    xt = sde.perturb(y[:4], torch.randn(4, 2, dtype=torch.float64), t)
    f = sde.denoise(xt, models.get_score_fn(net, sde, cm)(xt, t), t)
    d = sde.denoise(xt, models.get_score_fn(net, sde, plain)(xt, t), t)
    sigma = sde.beta_bar(t) / sde.alpha_bar(t)
    c_skip = (sigma_min / sigma)[:, None]
    y_t = xt / sde.alpha_bar(t)[:, None]
    torch.testing.assert_close(f, c_skip * y_t + (1 - c_skip) * d, rtol=1e-9, atol=1e-9)


def _exact_ode(sde, score_fn, x, t, s):
    """The probability-flow ODE's solution from t to s (scalars), rk45 at tolerance 1e-10."""
    solver = solvers.get_solver("rk45")(sde, solvers.CountingScore(score_fn, 1e-4, sde.T), rtol=1e-10, atol=1e-10)
    return solver.integrate(x, torch.tensor([t, s], dtype=torch.float64))


@pytest.mark.parametrize("solver, order", [("ddim", 1), ("heun", 2)])
@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.VESDE(), sde_lib.RectifiedFlow()],
                         ids=lambda s: type(s).__name__)
def test_the_teachers_step_has_its_order(sde, solver, order):
    score_fn = MIX.score_fn(sde)
    gen = torch.Generator().manual_seed(0)
    t = 0.5
    x = sde.perturb(MIX.sample(256, gen), torch.randn(256, 2, generator=gen, dtype=torch.float64), t)
    errors = []
    for h in (0.04, 0.02, 0.01):
        exact = _exact_ode(sde, score_fn, x, t, t - h)
        ts, ss = torch.full((256,), t, dtype=torch.float64), torch.full((256,), t - h, dtype=torch.float64)
        step = consistency.teacher_step(sde, score_fn, x, ts, ss, solver)
        errors.append(float((step - exact).norm(dim=1).max()))
    # A method of order p makes a local error O(h^(p+1)): halving h divides it by 2^(p+1). Measured local orders
    # are within 0.1 of p + 1 at these step sizes; 0.3 leaves room for the next term of the expansion.
    for coarse, fine in zip(errors, errors[1:]):
        assert abs(math.log2(coarse / fine) - (order + 1)) < 0.3, errors


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.VESDE(), sde_lib.RectifiedFlow(), sde_lib.CosineVPSDE()],
                         ids=lambda s: type(s).__name__)
def test_positions_between_the_levels_follow_the_rho_schedule(sde):
    n = 18
    levels = consistency.discretisation(sde, n, EPS)
    # At whole positions: the levels themselves (the schedule through two routes to t, round-off of the inversion).
    at_levels = consistency.level_times(sde, torch.arange(n, dtype=torch.float64), n, EPS)
    assert float(at_levels[0]) == EPS
    torch.testing.assert_close(at_levels, levels, rtol=1e-10, atol=1e-12)
    # Between them: sigma^(1/7) is linear in the position, so half-way positions are the mid-points in sigma^(1/7).
    half = consistency.level_times(sde, torch.arange(n - 1, dtype=torch.float64) + 0.5, n, EPS)
    root = consistency.sigma_of(sde, levels) ** (1 / 7)
    torch.testing.assert_close(consistency.sigma_of(sde, half) ** (1 / 7), (root[1:] + root[:-1]) / 2, rtol=1e-9,
                               atol=0)
    assert bool((half > levels[:-1]).all() and (half < levels[1:]).all())


def _gmm8_config(iterations, width):
    config = tiny_config(batch_size=256, eval_freq=100000, log_freq=100, snapshot_freq=100000)
    config.training.snapshot_samples = 0
    config.data.num_samples = 20000
    config.model.mlp_width, config.model.mlp_depth = width, 3
    config.distill.method = "consistency"
    config.distill.warmup = 50
    config.distill.iterations, config.distill.lr, config.distill.ema_rate = iterations, 2e-3, 0.99
    return config


def _rmse(x, y):
    return float(((x.double() - y.double()) ** 2).sum(1).mean().sqrt())


@pytest.mark.slow
def test_a_student_of_the_exact_score_approximates_the_ode_map(tmp_path):
    config = _gmm8_config(iterations=1200, width=128)
    sde = runs.build_sde(config)
    mixture = data_lib.gmm8_mixture()
    score_fn = mixture.score_fn(sde)
    result = distill.distill(config, tmp_path, teacher=students.Teacher(score_fn, None, None, "exact gmm8", 0))
    assert not result.interrupted and result.workdir == consistency.student_dir(tmp_path)
    run = runs.load_run(result.workdir, device="cpu")
    assert run.config.model.consistency_sigma_min == consistency.sigma_min(sde, EPS)
    assert students.read_record(result.workdir)["N"] == 18

    # The consistency function on a grid of (x, t) against the exact map to eps. The baseline is the exact
    # one-step denoiser E[x_0 | x_t], where a student from a teacher network starts: RMSE 3.74 at T and 1.44 at
    # t = 0.5 on this grid (the map moves points by ~3.7, the mixture's radius). Measured for the student: 0.18
    # and 0.14; the bounds, 0.27 and 0.20, leave 40% or more above them. Under the paper's c_skip, whose f cannot
    # remove the noise near sigma_min (models.Precond), the same student had 0.22 and 0.27.
    grid = torch.stack(torch.meshgrid(torch.linspace(-4, 4, 9), torch.linspace(-4, 4, 9), indexing="ij"), -1)
    grid = grid.reshape(-1, 2).double()
    with torch.no_grad():
        for t, fraction in ((sde.T, 0.072), (0.5, 0.14)):
            x = grid * float(sde.beta_bar(torch.tensor(t)))
            f = sde.denoise(x.float(), run.score_fn(x.float(), t), t)
            exact = _exact_ode(sde, score_fn, x, t, EPS) / sde.alpha_bar(torch.tensor(EPS, dtype=torch.float64))
            denoiser = sde.denoise(x, score_fn(x, t), t)
            print(f"t={t}: RMSE to the exact ODE map: student {_rmse(f, exact):.3f}, exact denoiser "
                  f"{_rmse(denoiser, exact):.3f}")
            assert _rmse(f, exact) < fraction * _rmse(denoiser, exact)

    # Between two training levels the function is as good as on them: on points of the data's own paths at the
    # levels 4 and 5 of 18 (t = 0.121 and 0.221) and half-way between. Measured: 0.094, 0.099 and 0.115; a student
    # trained on the levels alone (distill.consistency.continuous=False) had 0.072, 0.204 and 0.117, a ratio of 1.75
    # of half-way to the worse level, against 0.86 here: the bound, 1.15, sits between them.
    gen = torch.Generator().manual_seed(4)
    x0 = mixture.sample(1000, gen)
    positions = torch.tensor([4.0, 4.5, 5.0], dtype=torch.float64)
    errors = []
    for t in consistency.level_times(sde, positions, 18, EPS).tolist():
        x = sde.perturb(x0, torch.randn(x0.shape, generator=gen, dtype=torch.float64), torch.full((1000,), t))
        with torch.no_grad():
            f = sde.denoise(x.float(), run.score_fn(x.float(), t), t)
        exact = _exact_ode(sde, score_fn, x, t, EPS) / sde.alpha_bar(torch.tensor(EPS, dtype=torch.float64))
        errors.append(_rmse(f, exact))
    print("RMSE to the exact map on the levels 4 and 5 and half-way:", errors)
    assert errors[1] < 1.15 * max(errors[0], errors[2])

    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1)).double()
    exact = solvers.sample(sde, score_fn, None, "rk45", x_T=z, rtol=1e-8, atol=1e-8).x
    teacher = {n: {s: solvers.sample(sde, score_fn, None, s, steps=n, x_T=z).x for s in ("ddim", "euler")}
               for n in (1, 2)}
    with torch.no_grad():
        student = {n: solvers.sample(sde, run.score_fn, None, "consistency", steps=n, x_T=z.float(),
                                     generator=torch.Generator().manual_seed(2)).x for n in (1, 2, 4)}
    errors = {n: {s: _rmse(x, exact) for s, x in teacher[n].items()} for n in (1, 2)}
    print("pathwise RMSE to the exact map:", errors, {n: _rmse(x, exact) for n, x in student.items()})
    # The 1-step student against the teacher's 1-step maps: best of DDIM/Euler is 1.64, the student 0.27 (measured);
    # the bound, half the teacher's, leaves more than twice the student's error.
    assert _rmse(student[1], exact) < 0.5 * min(errors[1].values())
    # Two steps re-noise with fresh noise, so their samples leave the path of z: compare them as distributions.
    reference = mixture.sample(2000, torch.Generator().manual_seed(3))
    distances = {"student": energy_distance(student[2], reference),
                 "student, 4 steps": energy_distance(student[4], reference),
                 **{s: energy_distance(x, reference) for s, x in teacher[2].items()}}
    print("energy distance of 2-step samples to the data:", distances)
    # Measured: the student's 2 and 4 steps -0.0001 and 0.0016, teacher Euler 0.21 and DDIM 0.64 (energy distances
    # of 2000 samples; two sets of the data differ by ~0.001). Trained on its levels alone, the student's were
    # 0.004 and 0.012, its 4-step inner times falling between them: the bound, 0.006, separates the two.
    assert max(distances["student"], distances["student, 4 steps"]) < 0.006


def _small_config():
    config = _gmm8_config(iterations=12, width=32)
    config.data.num_samples = 2000
    return config


def test_an_interrupted_student_resumes_bit_exactly(tmp_path):
    config = _small_config()
    sde = runs.build_sde(config)
    score = data_lib.gmm8_mixture().score_fn(sde)
    teacher = students.Teacher(score, None, None, "exact", 0)
    distill.distill(config, tmp_path / "a", teacher=teacher)
    # Heun takes 2 teacher calls per update: SIGTERM at the 13th is in the 7th, which saves step 7 and stops.
    stopped = distill.distill(config, tmp_path / "b", teacher=teacher._replace(score_fn=SignalAt(score, 13)))
    assert stopped.interrupted and stopped.stages[0][1].step == 7
    resumed = distill.distill(config, tmp_path / "b", teacher=teacher)
    assert [(n, r.step) for n, r in resumed.stages] == [("consistency", 12)]
    a, b = (ckpt.load_checkpoint(ckpt.latest_checkpoint(consistency.student_dir(tmp_path / w))) for w in "ab")
    for key in ("model", "ema", "target"):
        # Bit for bit: the same operations on the same CPU with the same random numbers.
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    # The target network is an EMA of the student, not a copy of it.
    assert not all(torch.equal(a["model"][k], a["target"][k]) for k in a["model"])
    assert distill.distill(config, tmp_path / "b", teacher=teacher).stages == []      # a finished student is kept


def test_other_samplers_and_likelihoods_are_refused(tmp_path, caplog):
    config = _small_config()
    config.distill.iterations = 2
    sde = runs.build_sde(config)
    distill.distill(config, tmp_path, teacher=students.Teacher(MIX.score_fn(sde), None, None, "exact", 0))
    here = consistency.student_dir(tmp_path)
    for steps in (1, 2, 4):
        distill.check_sampler(here, sde, solvers.sampler("consistency", steps))
    for other in (solvers.sampler("ddim", 1), solvers.sampler("edm", 18), solvers.sampler("euler_maruyama", 100)):
        with pytest.raises(ValueError, match="valid only with consistency sampling.*--solver consistency --steps 1"):
            distill.check_sampler(here, sde, other)
    with pytest.raises(ValueError, match="is a consistency student.*cannot be used for a likelihood"):
        distill.check_score(here, "a likelihood")
    # Its boundary is at sigma(eps): another eps is another function.
    with pytest.raises(ValueError, match="student for eps 0.001 .* not eps 0.01"):
        distill.check_sampler(here, sde, solvers.sampler("consistency", 1, eps=1e-2))
    # A student trained on its levels alone is poorer between them: a sampler whose inner times are elsewhere is
    # warned about, one on the levels is not.
    config.distill.consistency.continuous = False
    distill.distill(config, tmp_path / "levels", teacher=students.Teacher(MIX.score_fn(sde), None, None, "exact", 0))
    levels = students.read_record(consistency.student_dir(tmp_path / "levels"))["times"]
    with caplog.at_level(logging.WARNING):
        distill.check_sampler(consistency.student_dir(tmp_path / "levels"), sde, solvers.sampler("consistency", 2))
        assert re.search(r"trained at its 18 levels only .* the inner times 0\.\d+ are not among them", caplog.text)
        caplog.clear()
        on_levels = [levels[-1], levels[9], levels[0]]
        distill.check_sampler(consistency.student_dir(tmp_path / "levels"), sde,
                              solvers.sampler("consistency", 2, grid=on_levels))
        assert caplog.text == ""
    config.distill.consistency.continuous = True
    # A student whose weights were trained under another boundary form would be evaluated as another function.
    record = students.read_record(here)
    with pytest.raises(ValueError, match="trained under another boundary form .*distil it again"):
        consistency.check_sampler({k: v for k, v in record.items() if k != "boundary"}, here, sde,
                                  solvers.sampler("consistency", 1))
    # It cannot teach: its network is not a score.
    with pytest.raises(ValueError, match="is a consistency student.*cannot be used for teaching a student"):
        distill.distill(config, here)
    # Resuming a stopped student with another objective is refused rather than mixed into the same run.
    config.distill.iterations = 8
    stopped = students.Teacher(SignalAt(MIX.score_fn(sde), 5), None, None, "exact", 0)
    assert distill.distill(config, tmp_path / "b", teacher=stopped).interrupted
    config.distill.consistency.N = 10
    with pytest.raises(ValueError, match=r"was started with other distill settings \(N, times, sigmas differ"):
        distill.distill(config, tmp_path / "b", teacher=students.Teacher(MIX.score_fn(sde), None, None, "exact", 0))


@pytest.mark.parametrize("chosen, teacher_output, student_output", [
    ("", "flow", "flow"), ("", "v", "v"), ("", "eps", "v"), ("", "score", "v"), ("x0", "flow", "x0")])
def test_the_student_keeps_a_teachers_output_that_stays_of_the_datas_scale(chosen, teacher_output, student_output):
    teacher = students.Teacher(None, None, {"weight": torch.zeros(1)}, "a network", 0)
    assert consistency.student_parameterization(chosen, teacher_output, teacher) == student_output
    # Without a teacher network the student starts from random weights under EDM's preconditioning.
    exact = students.Teacher(None, None, None, "an exact score", 0)
    assert consistency.student_parameterization(chosen, teacher_output, exact) == "edm"


@pytest.mark.parametrize("setting, message", [
    ("parameterization=eps", "parameterization='eps': the student predicts v | x0 | edm | flow"),
    ("N=1", "distill.consistency.N=1: must be an integer >= 2"),
    ("teacher_solver=rk45", "unknown teacher step 'rk45'"),
    ("target_ema=1.0", "target network's EMA rate mu must be in [0, 1)"),
    ("huber_c=-1.0", "huber_c=-1.0: must be >= 0"),
])
def test_bad_settings_are_one_clear_line(tmp_path, setting, message):
    r = cli("--mode", "distill", "--workdir", tmp_path, "--config.distill.method=consistency",
            f"--config.distill.consistency.{setting}", check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: ") and message in r.stderr


def test_main_py_distills_a_trained_run_into_a_consistency_student(tmp_path):
    training.train(tiny_config(), tmp_path)      # a 20-step gmm8 teacher with an eps-prediction MLP
    r = cli("--mode", "distill", "--workdir", tmp_path, "--device=cpu", "--config.distill.method=consistency",
            "--config.distill.iterations=5", "--config.training.progress=False")
    student = consistency.student_dir(tmp_path)
    assert r.stdout.strip().endswith(f"sample it with python main.py --mode sample --workdir {student} --solver "
                                     "consistency --steps 1")
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(student))
    config = runs.config_of_checkpoint(ckpt.latest_checkpoint(student), state)
    # It starts from the teacher's eps-network's weights and reads them as v (distill.consistency.parameterization).
    assert (state["step"], config.model.parameterization) == (5, "v")
    assert students.read_record(student)["teacher_step"] == 20
    for steps in (1, 2, 4):
        ok = cli("--mode", "sample", "--workdir", student, "--device=cpu", "--solver", "consistency", "--steps", steps,
                 "--num_samples", 4)
        assert f"NFE {steps} per batch" in ok.stdout
    refused = cli("--mode", "sample", "--workdir", student, "--device=cpu", "--solver", "ddim", "--steps", 4,
                  check=False)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "sample it with --solver consistency --steps 1" in refused.stderr
