"""Consistency distillation (Song et al. 2023, "Consistency Models", Algorithm 2): a student f_theta(x_t, t) learns
to map any point of the teacher's probability-flow ODE path to the path's endpoint at eps, so that one network call
generates a sample (solvers/consistency.py, Algorithm 1, takes one or a few).

On EDM's rho = 7 discretisation sigma_1 = sigma(eps) < ... < sigma_N = sigma(T) (sigma = beta_bar/alpha_bar, so
every SDE of sde_lib is distilled the same way), each update draws a pair of neighbouring levels (n uniform in the
paper; by default a position uniform between the levels, so that f is learnt at every time a multistep sampler may
visit), x_(n+1) = alpha_bar x_0 + beta_bar z at t_(n+1), takes ONE step of the teacher's ODE back to t_n (Heun in
sigma as EDM, or DDIM), and pulls f_theta(x_(n+1), t_(n+1)) towards f_(theta^-)(x_hat_n, t_n) in the pseudo-Huber
distance (Song & Dhariwal 2023), theta^- an EMA of theta with rate mu (the target network). The boundary
f(y, sigma_min) = y is built into the student's preconditioning (models.Precond's sigma_min; docs/math.md,
"Consistency distillation"), so the chain of targets is anchored at the data end. The student is a run in
<workdir>/distill/consistency/ (training.students), and check_sampler refuses every sampler but the consistency one.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import ml_collections
import torch
from absl import logging

from scoresde import data as data_lib
from scoresde import models
from scoresde import solvers
from scoresde.run import checkpoint as ckpt
from scoresde.run import precision
from scoresde.run.builders import build_sde
from scoresde.sde_lib import SDE, expand_as
from scoresde.training import distributed
from scoresde.training import progressive
from scoresde.training import students
from scoresde.utils import Registry, UsageError

Tensor = torch.Tensor

METHOD = "consistency"
# Song & Dhariwal (2023, "Improved Techniques for Training Consistency Models"): c = 0.00054 sqrt(d) for data of d
# dimensions in [-1, 1]; LPIPS, the paper's CD metric, needs network weights that are not available offline.
HUBER_C_PER_SQRT_DIM = 0.00054
# A student trained from a teacher without a network (an exact score) starts from random weights; EDM's
# preconditioning keeps both its input and its denoised output of unit scale at every noise level.
RANDOM_START_PARAMETERIZATION = "edm"
# A student started from the teacher's weights keeps the teacher's parameterisation when it is one of these, so that
# it starts as the teacher's DDIM jump to sigma_min, and reads its output as v otherwise
# (distill.consistency.parameterization chooses): never eps, since f = c_skip y + (1 - c_skip) D and an
# eps-prediction's D = y - sigma eps_hat turns an error of eps_hat into sigma(T) times that error at the first step
# (sigma(T) = 150 for the VP-SDE), the one a one-step sampler takes; nor a score, for the same reason. The others'
# D stays of the data's scale at every noise level.
STUDENT_PARAMETERIZATIONS = ("v", "x0", "edm", "flow")
OTHERWISE_PARAMETERIZATION = "v"
# The boundary form of models.Precond(sigma_min=...) that the student's weights were trained under, in its record.
BOUNDARY = "c_skip = sigma_min/sigma"


def sigma_of(sde: SDE, t: Tensor) -> Tensor:
    """sigma(t) = beta_bar/alpha_bar, the noise level of y = x/alpha_bar."""
    return sde.beta_bar(t) / sde.alpha_bar(t)


def discretisation(sde: SDE, n: int, eps: float) -> Tensor:
    """The times t_1 = eps < ... < t_N = T of EDM's rho = 7 schedule in sigma (Karras et al. 2022), float64."""
    return solvers.time_grid(sde, n - 1, eps, "edm").flip(0)


def level_times(sde: SDE, position: Tensor, n: int, eps: float, rho: float = 7.0) -> Tensor:
    """t at the fractional position p in [0, n - 1] of the discretisation: sigma^(1/rho) = sigma_min^(1/rho) +
    p/(n - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)), so that p = 0, 1, ..., n - 1 are its levels t_1 .. t_N."""
    position = position.to(torch.float64)
    inv = (sigma_of(sde, torch.tensor([eps, sde.T], dtype=torch.float64)) ** (1 / rho)).to(position.device)
    sigma = (inv[0] + position / (n - 1) * (inv[1] - inv[0])) ** rho
    t = sde.t_of_log_snr(-torch.log(sigma)).clamp(eps, sde.T)
    # The inversion is exact only to round-off; the boundary level must be eps itself.
    return torch.where(position == 0, torch.full_like(t, eps), t)


def sigma_min(sde: SDE, eps: float) -> float:
    """sigma(eps) as the preconditioning computes it (models.parameterization.Coefficients), so that the boundary
    weight is exactly 0 at t = eps."""
    return float(models.parameterization.Coefficients(sde, torch.tensor([eps], dtype=torch.float64)).sigma[0])


# --- the teacher's step -------------------------------------------------------------------------------------------
def _ddim(sde, score_fn, x, t, s):
    """Euler in y = x/alpha_bar along sigma, dy/dsigma = eps_hat = -beta_bar score: DDIM (docs/math.md, "DDIM as
    exponential Euler")."""
    y = x / expand_as(sde.alpha_bar(t), x)
    slope = -expand_as(sde.beta_bar(t), x) * score_fn(x, t)
    return y, slope, y + expand_as(sigma_of(sde, s) - sigma_of(sde, t), x) * slope


def _heun_step(sde, score_fn, x, t, s):
    y, slope, y_euler = _ddim(sde, score_fn, x, t, s)
    a_s = expand_as(sde.alpha_bar(s), x)
    slope_s = -expand_as(sde.beta_bar(s), x) * score_fn(a_s * y_euler, s)
    return a_s * (y + expand_as(0.5 * (sigma_of(sde, s) - sigma_of(sde, t)), x) * (slope + slope_s))


TEACHER_STEPS = Registry("teacher step", {"heun": _heun_step, "ddim": progressive.ddim_step})


def teacher_step(sde: SDE, score_fn, x: Tensor, t: Tensor, s: Tensor, solver: str = "heun") -> Tensor:
    """x_hat_s: one step of the probability-flow ODE from x at per-sample times t to s (shape (N,)) with the score
    score_fn: "ddim" (Euler in sigma on y, first order) or "heun" (its trapezoidal correction, EDM's step, second
    order; 2 NFE)."""
    return TEACHER_STEPS[solver](sde, score_fn, x, t, s)


# --- the loss -----------------------------------------------------------------------------------------------------
def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """d(a, b) = sqrt(|a - b|^2 + c^2) - c per sample (Song & Dhariwal 2023): |a - b|^2/(2c) near 0 and |a - b|
    far from it, so that large errors of the early, high-noise pairs do not dominate the gradient."""
    return torch.sqrt(((a - b) ** 2).flatten(1).sum(1) + c**2) - c


def huber_c(c: float, x: Tensor) -> float:
    """The pseudo-Huber c: `c` itself, or for c = 0 Song & Dhariwal's 0.00054 sqrt(d), d the dimension of a datum."""
    return c if c > 0 else HUBER_C_PER_SQRT_DIM * math.sqrt(x[0].numel())


def consistency_loss(student, target, teacher, sde: SDE, x: Tensor, times: Tensor, solver: str = "heun",
                     c: float = 0.0, generator: torch.Generator | None = None, reduce: str = "mean",
                     continuous: bool = True) -> Tensor:
    """d(f_theta(x_(n+1), t_(n+1)), f_(theta^-)(x_hat_n, t_n)) for data x, one pair of neighbouring levels per
    sample.

    student, target, teacher: score functions (x, t) -> score; f is their denoised estimate (x + beta_bar^2
    score)/alpha_bar, so the distance is measured in y = x/alpha_bar, the data's scale. times: t_1 = eps < ... <
    t_N = T. c: the pseudo-Huber c (0: Song & Dhariwal's). reduce: "mean" over the batch, or "none".
    """
    times = times.to(x.device)
    if continuous:
        p = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float64) * (len(times) - 2)
        t, s = level_times(sde, p + 1, len(times), float(times[0])), level_times(sde, p, len(times), float(times[0]))
    else:
        n = torch.randint(len(times) - 1, (x.shape[0],), generator=generator, device=x.device)
        t, s = times[n + 1], times[n]
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_t = sde.perturb(x, noise, t)
    with torch.no_grad():
        x_s = teacher_step(sde, teacher, x_t, t, s, solver)
        aim = sde.denoise(x_s, target(x_s, s), s)
    # At least float32: under bfloat16 autocast the network's output would otherwise set the loss's precision.
    dtype = torch.promote_types(x.dtype, torch.float32)
    f = sde.denoise(x_t, student(x_t, t), t)
    losses = pseudo_huber(f.to(dtype), aim.to(dtype), huber_c(c, x))
    return losses.mean() if reduce == "mean" else losses


# --- the student as a training run ----------------------------------------------------------------------------------
class ConsistencyTrainer(students.StudentTrainer):
    """A Trainer whose loss is consistency_loss against a fixed teacher on the discretisation `times`, with the
    target network theta^- <- mu theta^- + (1 - mu) theta after every update.

    init: the state dict the student starts from (the teacher's EMA network, as Song et al. start from the
    pretrained diffusion model); None starts from the config's random initialisation. The target network starts
    as the student and is part of the checkpoint, so a run resumes bit-exactly.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir, teacher, times: Tensor, init: dict | None = None,
                 ctx: distributed.Context | None = None):
        super().__init__(config, workdir, init, ctx)
        self.teacher = teacher
        self.times = torch.as_tensor(times, dtype=torch.float64)
        self.target = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.target_network = precision.autocast_network(self.target, config.precision, self.device)

    def resume(self):
        path = super().resume()
        if path is None:        # the target network starts as the student started
            self.target.load_state_dict(self.model.state_dict())
        return path

    def state_dict(self) -> dict:
        return {**super().state_dict(), "target": self.target.state_dict()}

    def load_state_dict(self, state: dict, path) -> None:
        super().load_state_dict(state, path)
        ckpt.load_module_state(self.target, state["target"], "target network", path)

    def train_step(self, x, y) -> tuple[float, float]:
        out = super().train_step(x, y)
        mu = self.config.distill.consistency.target_ema
        with torch.no_grad():
            for aim, p in zip(self.target.parameters(), self.model.parameters()):
                aim.lerp_(p, 1.0 - mu)
            for aim, b in zip(self.target.buffers(), self.model.buffers()):
                aim.copy_(b)
        return out

    def loss(self, model, x, y, generator=None, reduce="mean", rows=None) -> Tensor:
        d = self.config.distill.consistency
        student = models.get_score_fn(model, self.sde, self.precond)
        target = models.get_score_fn(self.target_network, self.sde, self.precond)
        return consistency_loss(student, target, self.teacher, self.sde, x, self.times, d.teacher_solver,
                                d.huber_c, generator=generator, reduce=reduce, continuous=d.continuous)


# --- the method ---------------------------------------------------------------------------------------------------
def is_score(record: dict) -> bool:
    """False: the student's network is a consistency function (an ODE endpoint), not a score."""
    return False


def check_config(config) -> None:
    """One clear line for a bad distill.consistency setting, before any work."""
    d = config.distill.consistency
    for key, low in (("N", 2), ("steps", 1)):
        if isinstance(d[key], bool) or not isinstance(d[key], int) or d[key] < low:
            raise UsageError(f"distill.consistency.{key}={d[key]!r}: must be an integer >= {low}")
    TEACHER_STEPS.canonical(d.teacher_solver)
    if d.parameterization not in ("", *STUDENT_PARAMETERIZATIONS):
        raise UsageError(f"distill.consistency.parameterization={d.parameterization!r}: the student predicts "
                         f"{' | '.join(STUDENT_PARAMETERIZATIONS)}, whose output stays of the data's scale at every "
                         "noise level (\"\": the teacher's if it is one of them, else v)")
    if not 0.0 <= d.target_ema < 1.0:
        raise UsageError(f"distill.consistency.target_ema={d.target_ema!r}: the target network's EMA rate mu must "
                         "be in [0, 1) (Song et al.: 0.95 for CIFAR-10)")
    if not d.huber_c >= 0:
        raise UsageError(f"distill.consistency.huber_c={d.huber_c!r}: must be >= 0 (0: 0.00054 sqrt(dimension))")


def student_dir(workdir) -> Path:
    """<workdir>/distill/consistency: the consistency student."""
    return students.method_dir(workdir, METHOD)


def student_parameterization(chosen: str, teacher_parameterization: str, teacher: students.Teacher) -> str:
    """What the student's output is read as: edm from a random start; else `chosen`, or for "" the teacher's own
    when it is one of STUDENT_PARAMETERIZATIONS, else v."""
    if teacher.init is None:
        return RANDOM_START_PARAMETERIZATION
    if chosen:
        return chosen
    return teacher_parameterization if teacher_parameterization in STUDENT_PARAMETERIZATIONS \
        else OTHERWISE_PARAMETERIZATION


def student_config(config: ml_collections.ConfigDict, teacher: students.Teacher) -> ml_collections.ConfigDict:
    """The student's config: the teacher's sde, model and data with the boundary sigma(eps) in its preconditioning,
    student_parameterization's output, distill's optimiser and EMA, and consistency sampling (what its snapshots
    use)."""
    c, d = students.inherit(config, teacher), config.distill.consistency
    with c.unlocked():
        c.model.parameterization = student_parameterization(d.parameterization, c.model.parameterization, teacher)
        c.model.consistency_sigma_min = sigma_min(build_sde(c), c.sampling.eps)
        c.sampling.solver, c.sampling.steps, c.sampling.grid, c.sampling.options = METHOD, d.steps, "", ""
    return c


def sample_flags(steps: int) -> str:
    """The sampling flags of a consistency student taking `steps` steps."""
    return f"--solver {METHOD} --steps {steps}"


def check_sampler(record: dict, workdir, sde: SDE, sampler: solvers.Sampler) -> None:
    """A ValueError unless `sampler` is consistency sampling: the student's network is a consistency function,
    not a score, so every ODE or SDE solver would integrate something that is not the teacher's dynamics."""
    if sampler.solver != METHOD:
        raise UsageError(f"{workdir} is a consistency-distillation student: its network maps a noisy point to the end "
                         f"of its ODE path and is not a score, so it is valid only with consistency sampling, not "
                         f"with {sampler.describe()}; sample it with {sample_flags(1)} (or --steps 2 or 4)")
    if record.get("boundary") != BOUNDARY:
        raise UsageError(f"{workdir} is a consistency-distillation student trained under another boundary form "
                         f"({record.get('boundary', 'the paper c_skip = s_d^2/((sigma - sigma_min)^2 + s_d^2)')}) "
                         f"than the one its network is evaluated with now ({BOUNDARY}); distil it again")
    if abs(sampler.eps - record["eps"]) > 1e-12:
        raise UsageError(f"{workdir} is a consistency-distillation student for eps {record['eps']:g} (its boundary "
                         f"f(y, sigma(eps)) = y), not eps {sampler.eps:g}; sample it with {sample_flags(1)} and that "
                         f"eps")
    if not record.get("continuous", False):
        levels = torch.tensor(record["times"], dtype=torch.float64)
        inner = students.sampler_times(sde, sampler)[1:-1]
        off = [float(t) for t in inner if (levels - t).abs().min() > students.GRID_ATOL]
        if off:
            logging.warning("%s was trained at its %d levels only (distill.consistency.continuous=False), and the "
                            "inner times %s are not among them, where its consistency function is poorer; pass "
                            "--grid with inner times from the levels in %s", workdir, len(levels),
                            ", ".join(f"{t:.4g}" for t in off), students.RECORD)


def distill(config: ml_collections.ConfigDict, workdir, ctx: distributed.Context, teacher: students.Teacher
            ) -> students.DistillResult:
    """Distil the run in `workdir` into a consistency student in <workdir>/distill/consistency/ (kept if
    finished, resumed if interrupted)."""
    check_config(config)
    here, c = student_dir(workdir), student_config(config, teacher)
    d, sde = c.distill.consistency, build_sde(c)
    times = discretisation(sde, d.N, c.sampling.eps)
    trained = []
    if not students.complete(here):
        dimension = math.prod(data_lib.get_dataset(c).shape)
        students.claim_record(
            here, METHOD, teacher, ctx.is_main, N=d.N, times=times.tolist(), sigmas=sigma_of(sde, times).tolist(),
            sigma_min=c.model.consistency_sigma_min, eps=c.sampling.eps, teacher_solver=d.teacher_solver,
            boundary=BOUNDARY, continuous=d.continuous, target_ema=d.target_ema,
            huber_c=d.huber_c or HUBER_C_PER_SQRT_DIM * math.sqrt(dimension), parameterization=c.model.parameterization,
            sde=repr(sde))
        logging.info("distilling %s into a consistency student (%d noise levels, %s teacher steps) in %s",
                     teacher.label, d.N, d.teacher_solver, here)
        result = ConsistencyTrainer(c, here, teacher.score_fn, times, teacher.init, ctx).run()
        trained.append(("consistency", result))
        if result.interrupted:
            return students.DistillResult(trained, here, "", "", True)
    return students.DistillResult(trained, here, "consistency student", sample_flags(d.steps), False)
