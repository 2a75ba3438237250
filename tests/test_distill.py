"""Progressive distillation (training.distill, Salimans & Ho 2022): the two-step target against DDIM by hand, a
4-step student of the exact gmm8 score against the teacher's many-step paths, exact resume after SIGTERM, errors."""

import pytest
import torch

from scoresde import run as runs
from scoresde import data as data_lib
from scoresde import sde_lib
from scoresde import solvers
from scoresde import training
from scoresde.run import checkpoint as ckpt
from scoresde.training import distill, progressive, students

from helpers import cli, metrics_rows, tiny_config, SignalAt

SDES = [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE(), sde_lib.CosineVPSDE()]


def _euler_in_sigma(sde, score_fn, x, t, s):
    """A DDIM step written independently of the code: Euler in y = x/alpha_bar along sigma = beta_bar/alpha_bar
    (docs/math.md, "DDIM as exponential Euler"), dy/dsigma = eps_hat = -beta_bar score."""
    a_t, b_t, a_s, b_s = (f(u)[:, None] for f, u in ((sde.alpha_bar, t), (sde.beta_bar, t), (sde.alpha_bar, s),
                                                     (sde.beta_bar, s)))
    y = x / a_t + (b_s / a_s - b_t / a_t) * (-b_t * score_fn(x, t))
    return a_s * y


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_the_target_is_two_teacher_ddim_steps(sde):
    mixture = data_lib.gmm8_mixture()
    teacher = mixture.score_fn(sde)
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([sde.T, 0.7, 0.3, 0.05], dtype=torch.float64)
    mid, s = 0.6 * t + 0.4e-3, 0.2 * t + 0.8e-3
    z = sde.alpha_bar(t)[:, None] * mixture.sample(4, gen) + sde.beta_bar(t)[:, None] * torch.randn(4, 2, generator=gen,
                                                                                                   dtype=torch.float64)
    by_hand = _euler_in_sigma(sde, teacher, _euler_in_sigma(sde, teacher, z, t, mid), mid, s)
    target = progressive.two_step_target(sde, teacher, z, t, mid, s)
    # One DDIM step from (z, t) whose x0-prediction is the target, i.e. whose eps_hat is (z - alpha_bar_t x)/beta_bar_t.
    eps_hat = (z - sde.alpha_bar(t)[:, None] * target) / sde.beta_bar(t)[:, None]
    landed = sde.alpha_bar(s)[:, None] * target + sde.beta_bar(s)[:, None] * eps_hat
    # float64 round-off: the VE path has |z| up to sigma_max = 50 and the target divides by 1 - e^(lambda_t - lambda_s).
    assert torch.allclose(landed, by_hand, rtol=1e-10, atol=1e-10 * float(z.abs().max()))
    # Data at one point make DDIM exact (eps_hat constant along the path): the target is that point, and a student
    # with the exact score has zero loss up to round-off, (1e-16 |z|)^2 per coordinate times max(SNR, 1): where the
    # weight is large (SNR(eps) < 1e8, sub-VP) |z| ~ |x| ~ 1, and where |z| is large (<= 50, VE at T) it is 1; so
    # below 1e-20 (measured 1e-28).
    point = sde_lib.GaussianMixture([1.0], [[0.5, -1.0]], 0.0)
    times = solvers.time_grid(sde, 8, 1e-3)
    x = point.sample(256, gen)
    loss = progressive.distillation_loss(point.score_fn(sde), point.score_fn(sde), sde, x, times, generator=gen)
    assert 0 <= float(loss) < 1e-20


def _gmm8_config(iterations, start_steps, width):
    config = tiny_config(batch_size=256, eval_freq=100000, log_freq=100, snapshot_freq=100000)
    config.training.snapshot_samples = 0
    config.data.num_samples = 20000
    config.model.mlp_width, config.model.mlp_depth = width, 3
    config.distill.warmup = 50
    config.distill.start_steps, config.distill.target_steps = start_steps, 4
    config.distill.iterations, config.distill.lr, config.distill.ema_rate = iterations, 2e-3, 0.99
    return config


def _rmse(x, y):
    return float(((x.double() - y.double()) ** 2).sum(1).mean().sqrt())


@pytest.mark.slow
def test_a_4_step_student_follows_the_exact_teachers_paths(tmp_path):
    config = _gmm8_config(iterations=500, start_steps=16, width=128)
    sde = runs.build_sde(config)
    mixture = data_lib.gmm8_mixture()
    exact = students.Teacher(mixture.score_fn(sde), None, None, "exact gmm8 score", 0)
    result = distill.distill(config, tmp_path, teacher=exact)
    assert [n for n, _ in result.stages] == ["8 steps", "4 steps"] and not result.interrupted
    run = runs.load_run(progressive.student_dir(tmp_path, 4), device="cpu")
    sampling = run.config.sampling
    assert (sampling.solver, sampling.steps, run.config.model.parameterization) == ("ddim", 4, "v")
    assert len([r for r in metrics_rows(run.workdir) if "loss" in r]) == 5

    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    paths = {n: solvers.sample(sde, mixture.score_fn(sde), None, "ddim", steps=n, x_T=z.double()).x
             for n in (4, 16, 512)}
    with torch.no_grad():
        student = solvers.sample(sde, run.score_fn, None, "ddim", steps=4, x_T=z).x
    teacher_4, teacher_16, error = (_rmse(x, paths[512]) for x in (paths[4], paths[16], student))
    print(f"pathwise RMSE to the 512-step exact DDIM: teacher 4 steps {teacher_4:.3f}, 16 steps {teacher_16:.3f}, "
          f"4-step student {error:.3f}")
    # Exact DDIM's own error is 0.51 at 4 steps and 0.10 at the start's 16, about where the student levels off (it
    # learns the 16-step map). Measured after 2 x 500 updates: 0.145, 0.158, 0.149 for seeds 0, 1, 2; the bound,
    # 0.4 x the teacher's own 4-step error (0.205), leaves 30% above the worst of them.
    assert teacher_4 > 0.45 and teacher_16 < 0.12
    assert error < 0.4 * teacher_4

    # The student refuses any grid but its own, on the command line too.
    distill.check_sampler(run.workdir, sde, solvers.sampler("ddim", 4))
    for other in (solvers.sampler("ddim", 8), solvers.sampler("dpm_solver", 4),
                  solvers.sampler("ddim", 4, grid="logsnr"), solvers.sampler("ddim", 4, shift=2.0)):
        with pytest.raises(ValueError, match="valid only with the ddim steps it was distilled for"):
            distill.check_sampler(run.workdir, sde, other)
    ok = cli("--mode", "sample", "--workdir", run.workdir, "--solver", "ddim", "--steps", 4, "--num_samples", 8)
    assert "NFE 4 per batch" in ok.stdout
    refused = cli("--mode", "sample", "--workdir", run.workdir, "--solver", "ddim", "--steps", 8, check=False)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "sample it with --solver ddim --steps 4" in refused.stderr


def test_an_interrupted_round_resumes_bit_exactly(tmp_path):
    config = _gmm8_config(iterations=12, start_steps=16, width=32)
    config.data.num_samples = 2000
    sde = runs.build_sde(config)
    score = data_lib.gmm8_mixture().score_fn(sde)
    teacher = students.Teacher(score, None, None, "exact", 0)
    distill.distill(config, tmp_path / "a", teacher=teacher)
    # SIGTERM in the 7th update of the first round: it saves step 7 and stops; the same call again resumes there.
    stopped = distill.distill(config, tmp_path / "b", teacher=teacher._replace(score_fn=SignalAt(score, 13)))
    assert stopped.interrupted and stopped.workdir == progressive.student_dir(tmp_path / "b", 8)
    assert stopped.stages[0][1].step == 7
    assert "run the same command again to resume" in stopped.line()
    resumed = distill.distill(config, tmp_path / "b", teacher=teacher)
    assert [(n, r.step) for n, r in resumed.stages] == [("8 steps", 12), ("4 steps", 12)]
    for steps in (8, 4):
        a, b = (ckpt.load_checkpoint(ckpt.latest_checkpoint(progressive.student_dir(tmp_path / w, steps)))
                for w in "ab")
        for key in ("model", "ema"):
            # Bit for bit: the same operations on the same CPU with the same random numbers.
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (steps, key)
    assert distill.distill(config, tmp_path / "b", teacher=teacher).stages == []      # finished rounds are kept
    # A started round resumes only from the teacher checkpoint it began with.
    assert distill.distill(config, tmp_path / "c", teacher=teacher._replace(score_fn=SignalAt(score, 13))).interrupted
    with pytest.raises(ValueError, match="was started from the teacher's step 0, not 3"):
        distill.distill(config, tmp_path / "c", teacher=teacher._replace(step=3))


@pytest.mark.parametrize("start, target, message", [
    (16, 3, "must be distill.start_steps=16 divided by a power of 2"),
    (24, 4, "must be distill.start_steps=24 divided by a power of 2"),
    (16, 16, "must be distill.start_steps=16 divided by a power of 2"),
    (16, 4, "no teacher to distil"),
])
def test_bad_input_is_one_clear_line(tmp_path, start, target, message):
    r = cli("--mode", "distill", "--workdir", tmp_path / "empty", f"--config.distill.start_steps={start}",
            f"--config.distill.target_steps={target}", check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert not (tmp_path / "empty" / "distill").exists()


def test_main_py_distills_a_trained_run_into_students_that_sample(tmp_path):
    training.train(tiny_config(), tmp_path)      # a 20-step gmm8 teacher with an eps-prediction MLP
    r = cli("--mode", "distill", "--workdir", tmp_path, "--device=cpu", "--config.distill.start_steps=8",
            "--config.distill.target_steps=2", "--config.distill.iterations=5", "--config.training.progress=False")
    student = progressive.student_dir(tmp_path, 2)
    assert r.stdout.strip().endswith(f"sample it with python main.py --mode sample --workdir {student} --solver ddim "
                                     "--steps 2")
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(student))
    config = runs.config_of_checkpoint(ckpt.latest_checkpoint(student), state)
    assert (state["step"], students.read_record(student)["teacher_step"], config.model.parameterization) == (5, 5, "v")
    assert students.read_record(student)["teacher"] == str(ckpt.latest_checkpoint(progressive.student_dir(tmp_path, 4)))
    assert "NFE 2 per batch" in cli("--mode", "sample", "--workdir", student, "--device=cpu", "--solver", "ddim",
                                    "--steps", 2, "--num_samples", 4).stdout
