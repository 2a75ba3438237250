"""What every distilled student shares, whatever the method: its teacher, its record and where it lives.

A student is an ordinary run (checkpoints, exact resume, SIGTERM, metrics.jsonl) in
<workdir>/distill/<method>/<name>/, with a record, distill.json, that says how it was made and so which samplers it
is valid with (training.distill.check_sampler reads it).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable, NamedTuple

import ml_collections
import torch

from scoresde import models
from scoresde import solvers
from scoresde.run import checkpoint as ckpt
from scoresde.run import precision
from scoresde.run.load import TRAINED_SECTIONS, config_of_checkpoint, load_run
from scoresde.sde_lib import SDE
from scoresde.training.loop import Trainer
from scoresde.utils import UsageError, atomic_write_json

Tensor = torch.Tensor

STUDENTS_DIR = "distill"
RECORD = "distill.json"


class Teacher(NamedTuple):
    """score_fn(x, t): the teacher's score; config: the config it was trained with (its sde, model and data sections
    become the student's; None: those of the distillation's config); init: its network's state dict, which the
    student starts from (None: a random start); label: where it came from; step: its checkpoint step."""

    score_fn: Callable
    config: ml_collections.ConfigDict | None
    init: dict | None
    label: str
    step: int


def load_teacher(workdir, checkpoint=None, device=None) -> Teacher:
    """The EMA network of the run in `workdir` (its newest checkpoint, or `checkpoint`) as a teacher."""
    if checkpoint in (None, "") and ckpt.latest_checkpoint(workdir) is None:
        raise UsageError(f"no teacher to distil: {ckpt.checkpoint_dir(workdir)} holds no checkpoint; train this run "
                         "first, or name the run directory that holds one")
    run = load_run(workdir, checkpoint, device)
    if run.config.model.conditional:
        raise UsageError(f"{run.path} is a class-conditional model; distillation here is for unconditional models")
    network = precision.autocast_network(run.network, run.config.precision, run.device)
    score_fn = models.get_score_fn(network, run.sde, run.precond)
    init = {k: v.detach().clone() for k, v in run.network.state_dict().items()}
    return Teacher(score_fn, run.config, init, str(run.path), run.step)


def start_from(trainer, init: dict | None) -> None:
    """Load `init` (a teacher's network) into a fresh student's network and EMA; None keeps the random start."""
    if init is not None:
        ckpt.load_module_state(trainer.model, init, "teacher network", "the teacher")
        ckpt.load_module_state(trainer.ema.module, init, "teacher network", "the teacher")


class StudentTrainer(Trainer):
    """A Trainer for a student: a fresh run starts from `init`, its teacher's network (None: the config's random
    initialisation); a resumed one from its own checkpoint, so it resumes bit-exactly."""

    def __init__(self, config: ml_collections.ConfigDict, workdir, init: dict | None = None, ctx=None):
        super().__init__(config, workdir, ctx)
        self.init = init

    def resume(self):
        path = super().resume()
        if path is None:
            start_from(self, self.init)
        return path


# A sampler's grid is a student's when their times agree to round-off.
GRID_ATOL = 1e-9


def on_grid(sde: SDE, sampler: solvers.Sampler, times) -> bool:
    """Whether fixed-step `sampler` steps through exactly `times` (a student's grid, to round-off GRID_ATOL)."""
    wanted = torch.as_tensor(times, dtype=torch.float64)
    got = sampler_times(sde, sampler)
    return got is not None and got.shape == wanted.shape and bool((got - wanted).abs().max() <= GRID_ATOL)


def method_dir(workdir, method: str) -> Path:
    """<workdir>/distill/<method>: where the students of one method live."""
    return Path(workdir) / STUDENTS_DIR / method


def inherit(config: ml_collections.ConfigDict, teacher: Teacher) -> ml_collections.ConfigDict:
    """A copy of `config` with the teacher's trained sections (sde, model, data) and distill's optimiser and EMA: the
    part of a student's config every method shares."""
    c, d = copy.deepcopy(config), config.distill
    with c.unlocked():
        if teacher.config is not None:
            for section in TRAINED_SECTIONS:
                for name, value in teacher.config[section].items():
                    if name in c[section]:
                        c[section][name] = tuple(value) if isinstance(value, list) else value
            # A consistency student's boundary belongs to it, not to the students taught by it.
            c.model.consistency_sigma_min = None
        c.model.ema_rate = d.ema_rate
        c.training.n_iters = d.iterations
        c.optim.lr, c.optim.warmup = d.lr, d.warmup
    return c


def check_common(config) -> None:
    """One clear line for a bad setting every method reads (iterations, warm-up, learning rate, EMA)."""
    d = config.distill
    for key, low in (("iterations", 1), ("warmup", 0)):
        if isinstance(d[key], bool) or not isinstance(d[key], int) or d[key] < low:
            raise UsageError(f"distill.{key}={d[key]!r}: must be an integer >= {low}")
    if not d.lr > 0 or not 0.0 <= d.ema_rate < 1.0:
        raise UsageError(f"distill.lr={d.lr!r} must be positive and distill.ema_rate={d.ema_rate!r} in [0, 1)")


def complete(workdir) -> bool:
    """Whether the run in workdir reached its training.n_iters (a finished student is not trained again)."""
    path = ckpt.latest_checkpoint(workdir)
    if path is None:
        return False
    state = ckpt.load_checkpoint(path)
    return int(state["step"]) >= config_of_checkpoint(path, state).training.n_iters


def claim_record(workdir, method: str, teacher: Teacher, is_main: bool = True, **fields) -> None:
    """Write the record of the student `method` in workdir (its teacher and what defines it, `fields`), or, for a
    student that has started training, refuse a teacher checkpoint or settings other than those it began with:
    resuming would mix two objectives in one run, and the record would misdescribe it. Only is_main writes."""
    wanted = json.loads(json.dumps({"method": method, "teacher": teacher.label, "teacher_step": teacher.step,
                                    **fields}))
    saved = read_record(workdir)
    if saved is not None and ckpt.latest_checkpoint(workdir) is not None:
        if saved["teacher_step"] != teacher.step:
            raise UsageError(f"{workdir} was started from the teacher's step {saved['teacher_step']}, not "
                             f"{teacher.step} ({teacher.label}); resume with that checkpoint (--checkpoint) or delete "
                             f"{workdir}")
        changed = [k for k in wanted if k != "teacher" and saved.get(k) != wanted[k]]
        if changed:
            was = ", ".join(f"{k}={saved.get(k)!r}" for k in changed if k not in ("times", "sigmas"))
            raise UsageError(f"{workdir} was started with other distill settings ({', '.join(changed)} differ; it "
                             f"has {was or 'other times'}); resume with those settings or delete {workdir}")
        return
    if is_main:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(workdir) / RECORD, wanted)


def read_record(workdir) -> dict | None:
    """The student record of a distilled run (its method, teacher, and what it is valid with); None for any other."""
    path = Path(workdir) / RECORD
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def sampler_times(sde: SDE, sampler: solvers.Sampler) -> Tensor | None:
    """The grid a fixed-step sampler will take (None for an adaptive one)."""
    if sampler.steps is None:
        return None
    grid = sampler.options.get("grid")
    if grid is not None and not isinstance(grid, str):
        return solvers.grids.as_times(grid)
    name = grid or solvers.default_grid(sampler.solver, sampler.steps)
    return solvers.time_grid(sde, sampler.steps, sampler.eps, name, sampler.options.get("rho", 7.0),
                             sampler.options.get("shift", 1.0))


class DistillResult(NamedTuple):
    """stages: (name, TrainResult) of the students trained by this call; workdir: the last student's run directory
    reached; student: what that student is (e.g. "student of 4 DDIM steps"); command: the flags that sample it;
    interrupted: a signal stopped a student (rerun to resume it)."""

    stages: list
    workdir: Path
    student: str
    command: str
    interrupted: bool

    def line(self) -> str:
        done = ", ".join(f"{name}: {r.line()}" for name, r in self.stages) or "every student was already complete"
        if self.interrupted:
            return f"stopped in {self.workdir} ({done}); run the same command again to resume"
        return (f"{self.student} in {self.workdir} ({done}); sample it with python main.py --mode sample "
                f"--workdir {self.workdir} {self.command}")
