"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models",
Algorithm 2): a student learns to take in one deterministic DDIM step what its teacher takes in two; each round
halves the steps, and the student of one round is the teacher of the next.

The paper writes the target in (alpha, sigma) of VP/cosine. Here it is written through the marginals alpha_bar,
beta_bar, where DDIM is the exact Euler step in (x/alpha_bar, beta_bar/alpha_bar) (docs/math.md, sections "DDIM as
exponential Euler" and "Progressive distillation"), so every SDE of sde_lib is distilled the same way. Each round's
student is a run in <workdir>/distill/progressive/<steps>/ (training.students), with its grid in its record: a
student is only valid on the grid it was distilled for, and check_sampler refuses any other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import ml_collections
import torch
from absl import logging

from scoresde import models
from scoresde import solvers
from scoresde.sde_lib import SDE, expand_as
from scoresde.utils import Registry, UsageError
from scoresde.solvers.steps import ddim_coefficients

from scoresde.training import distributed
from scoresde.training import students
from scoresde.run.builders import build_sde

Tensor = torch.Tensor

METHOD = "progressive"
# The paper's choice: an x- or v-prediction student, since eps-prediction turns a small network error into a large
# x-error at low SNR, where the few-step student takes its first, longest steps.
STUDENT_PARAMETERIZATIONS = ("v", "x0")
# A sampler's grid is a student's when their times agree to round-off (students.on_grid): the named grids at n steps
# are every other time of the same grid at 2n (docs/math.md, "Progressive distillation").


def snr(sde: SDE, t: Tensor) -> Tensor:
    """SNR(t) = (alpha_bar/beta_bar)^2 = e^(2 lambda): invariant under x -> x/alpha_bar, so the same for VP and VE."""
    return (sde.alpha_bar(t) / sde.beta_bar(t).clamp(min=models.parameterization.MIN_BETA_BAR)) ** 2


# w(SNR) of the loss w |x_tilde - x_hat|^2 (Salimans & Ho 2022): "truncated SNR" max(SNR, 1) is
# max(|x - x_hat|^2, |eps - eps_hat|^2), since eps - eps_hat = (alpha_bar/beta_bar)(x_hat - x); "SNR+1" is the
# v-objective |v - v_hat|^2 for VP (alpha_bar^2 + beta_bar^2 = 1). Both stay finite at SNR -> 0, where eps-weighting
# (w = SNR) would ignore the first step from the prior, the one a few-step student depends on most.
WEIGHTINGS = Registry("distillation weighting", {
    "truncated_snr": lambda s: s.clamp(min=1.0),
    "snr_plus_one": lambda s: s + 1.0,
})


# --- the target ---------------------------------------------------------------------------------------------------
def ddim_step(sde: SDE, score_fn, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """One deterministic DDIM step from per-sample times t to s (shape (N,)): alpha_bar_s x0_hat
    + beta_bar_s eps_hat."""
    c_x, c_score = ddim_coefficients(sde, t, s, torch.zeros_like(t))
    return expand_as(c_x, x) * x + expand_as(c_score, x) * score_fn(x, t)


def two_step_target(sde: SDE, teacher, z: Tensor, t: Tensor, mid: Tensor, s: Tensor) -> Tensor:
    """x_tilde: the x0-prediction whose one DDIM step from (z, t) to s lands where two teacher steps t -> mid -> s do.

    With r = beta_bar_s/beta_bar_t, a DDIM step is z_s = alpha_bar_s x + r (z - alpha_bar_t x), so
    x_tilde = (z_s - r z)/(alpha_bar_s - r alpha_bar_t); for VP this is the paper's
    (z'' - (sigma''/sigma) z)/(alpha'' - (sigma''/sigma) alpha). The denominator is alpha_bar_s (1 - e^(lambda_t -
    lambda_s)) > 0, since lambda grows towards the data.
    """
    z_s = ddim_step(sde, teacher, ddim_step(sde, teacher, z, t, mid), mid, s)
    r = sde.beta_bar(s) / sde.beta_bar(t)
    denominator = sde.alpha_bar(s) - r * sde.alpha_bar(t)
    return expand_as(1.0 / denominator, z) * z_s - expand_as(r / denominator, z) * z


def distillation_loss(student, teacher, sde: SDE, x: Tensor, teacher_times: Tensor, weighting: str = "truncated_snr",
                      generator: torch.Generator | None = None, reduce: str = "mean") -> Tensor:
    """w(SNR_t) |x_tilde - x0_hat|^2 (summed over dimensions) for data x, one student step per sample.

    student, teacher: score functions (x, t) -> score. teacher_times: the teacher's grid T = t_0 > ... > t_2n = eps;
    the student steps t_2i -> t_2i+2, and step i is drawn uniformly for each sample (Algorithm 2), as is the noise of
    z_t = alpha_bar_t x + beta_bar_t eps. reduce: "mean" over the batch, or "none" for per-sample losses.
    """
    steps = (len(teacher_times) - 1) // 2
    if len(teacher_times) != 2 * steps + 1 or steps < 1:
        raise UsageError(f"the teacher grid needs an even number of steps, got {len(teacher_times) - 1}")
    i = torch.randint(steps, (x.shape[0],), generator=generator, device=x.device)
    times = teacher_times.to(x.device)
    t, mid, s = times[2 * i], times[2 * i + 1], times[2 * i + 2]
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    z = sde.perturb(x, noise, t)
    with torch.no_grad():
        target = two_step_target(sde, teacher, z, t, mid, s)
    # At least float32: under bfloat16 autocast the network's output would otherwise set the loss's precision.
    dtype = torch.promote_types(x.dtype, torch.float32)
    # The student's DDIM step in its data prediction x0_hat (Tweedie's formula).
    error = (sde.denoise(z, student(z, t), t).to(dtype) - target.to(dtype)) ** 2
    losses = WEIGHTINGS[weighting](snr(sde, t)).to(dtype) * error.flatten(1).sum(1)
    return losses.mean() if reduce == "mean" else losses


# --- one round: the student as a training run -----------------------------------------------------------------------
class ProgressiveTrainer(students.StudentTrainer):
    """A student whose loss is distillation_loss against a fixed teacher on its grid `teacher_times`.

    init: the state dict the student starts from (the teacher's EMA network, Algorithm 2's "init student from
    teacher"); None starts from the config's random initialisation (a teacher without a network, e.g. an exact
    score). Resuming, checkpoints, signals, metrics and snapshots are the Trainer's, so a round resumes bit-exactly.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir, teacher: Callable, teacher_times: Tensor,
                 init: dict | None = None, ctx: distributed.Context | None = None):
        super().__init__(config, workdir, init, ctx)
        self.teacher = teacher
        self.teacher_times = torch.as_tensor(teacher_times, dtype=torch.float64)

    def loss(self, model, x, y, generator=None, reduce="mean", rows=None) -> Tensor:
        c = self.config
        student = models.get_score_fn(model, self.sde, self.precond)
        return distillation_loss(student, self.teacher, self.sde, x, self.teacher_times, c.distill.weighting,
                                 generator=generator, reduce=reduce)


# --- the rounds -----------------------------------------------------------------------------------------------------
def rounds(config) -> list[int]:
    """The students' steps, start_steps/2 down to target_steps, after checking config.distill (one clear line)."""
    d = config.distill
    students.check_common(config)
    for key, low in (("start_steps", 1), ("target_steps", 1)):
        if isinstance(d[key], bool) or not isinstance(d[key], int) or d[key] < low:
            raise UsageError(f"distill.{key}={d[key]!r}: must be an integer >= {low}")
    ratio = d.start_steps // d.target_steps
    if d.start_steps % d.target_steps or ratio < 2 or ratio & (ratio - 1):
        raise UsageError(f"distill.target_steps={d.target_steps} must be distill.start_steps={d.start_steps} divided "
                         "by a power of 2 (each round halves the steps), e.g. 64 -> 32 -> 16 -> 8 -> 4")
    if d.teacher_solver.lower() != "ddim":
        raise UsageError(f"distill.teacher_solver={d.teacher_solver!r}: the student's step is a DDIM step, so its "
                         "target is two DDIM steps of the teacher; use 'ddim'")
    if d.parameterization not in STUDENT_PARAMETERIZATIONS:
        raise UsageError(f"distill.parameterization={d.parameterization!r}: the student predicts v or x0 "
                         f"({', '.join(STUDENT_PARAMETERIZATIONS)}), as Salimans & Ho (2022) recommend")
    WEIGHTINGS.canonical(d.weighting)
    solvers.grids.check_grid_name(d.grid)
    steps, out = d.start_steps, []
    while steps > d.target_steps:
        steps //= 2
        out.append(steps)
    return out


def is_score(record: dict) -> bool:
    """False: a student's network maps between its grid's times; it is not a score."""
    return False


def check_config(config) -> None:
    """One clear line for a bad distill setting, before any work (see rounds)."""
    rounds(config)


def student_dir(workdir, steps: int) -> Path:
    """<workdir>/distill/progressive/<steps>: the student of `steps` DDIM steps."""
    return students.method_dir(workdir, METHOD) / str(steps)


def student_config(config: ml_collections.ConfigDict, teacher: students.Teacher,
                   steps: int) -> ml_collections.ConfigDict:
    """The config of the student with `steps` DDIM steps: the teacher's sde, model and data, distill's optimiser
    and EMA, and sampling set to DDIM at `steps` on the distillation grid (what its snapshots use)."""
    c, d = students.inherit(config, teacher), config.distill
    with c.unlocked():
        c.model.parameterization = d.parameterization
        c.sampling.solver, c.sampling.steps, c.sampling.grid, c.sampling.options = "ddim", steps, d.grid, ""
        c.distill.target_steps = steps
    return c


def check_sampler(record: dict, workdir, sde: SDE, sampler: solvers.Sampler) -> None:
    """A ValueError unless `sampler` is DDIM on the grid the student `record` was distilled for.

    A student's network has learnt a map between its grid's times, not a score, so any other solver, step count or
    grid gives wrong samples: refused rather than warned about.
    """
    if sampler.solver != record["solver"] or not students.on_grid(sde, sampler, record["times"]):
        raise UsageError(f"{workdir} is a progressive-distillation student, valid only with the {record['solver']} "
                         f"steps it was distilled for ({record['steps']} on the {record['grid']} grid, eps "
                         f"{record['eps']:g}), not with {sampler.describe()}; sample it with {sample_flags(record)}")


def sample_flags(record: dict) -> str:
    """The sampling flags a student of `record` takes."""
    grid = "" if record["grid"] == "uniform" else f" --grid {record['grid']}"
    return f"--solver {record['solver']} --steps {record['steps']}{grid}"


def distill(config: ml_collections.ConfigDict, workdir, ctx: distributed.Context, teacher: students.Teacher
            ) -> students.DistillResult:
    """Distil the run in `workdir` round by round down to config.distill.target_steps DDIM steps.

    Round k's student is trained in <workdir>/distill/progressive/<steps>/ from the EMA network of round k-1
    (`teacher` for the first round), and becomes round k+1's teacher. A finished round is skipped, an interrupted
    one resumes where it stopped.
    """
    steps_of_rounds = rounds(config)
    workdir = Path(workdir)
    trained = []
    for steps in steps_of_rounds:
        here = student_dir(workdir, steps)
        c = student_config(config, teacher, steps)
        sde = build_sde(c)
        teacher_times = solvers.time_grid(sde, 2 * steps, c.sampling.eps, c.distill.grid)
        if not students.complete(here):
            students.claim_record(
                here, METHOD, teacher, ctx.is_main, solver="ddim", steps=steps, grid=c.distill.grid,
                eps=c.sampling.eps, times=teacher_times[::2].tolist(), teacher_steps=2 * steps,
                parameterization=c.model.parameterization, weighting=c.distill.weighting, sde=repr(sde))
            logging.info("distilling %s (%d DDIM steps) into %d steps in %s", teacher.label, 2 * steps, steps, here)
            result = ProgressiveTrainer(c, here, teacher.score_fn, teacher_times, teacher.init, ctx).run()
            trained.append((f"{steps} steps", result))
            if result.interrupted:
                return students.DistillResult(trained, here, "", "", True)
        teacher = students.load_teacher(here, None, ctx.device)
    flags = sample_flags(students.read_record(here))
    return students.DistillResult(trained, here, f"student of {steps} DDIM steps", flags, False)
