"""Distillation into few-step students: `distill` runs the method config.distill.method names, and
`check_sampler`/`check_score` refuse what a student was not trained for, whatever its method.

Methods (each a module with METHOD, check_config(config), distill(config, workdir, ctx, teacher),
check_sampler(record, workdir, sde, sampler) and is_score(record), whether a student's network is still a score,
so that likelihoods mean something):
progressive (Salimans & Ho 2022); reflow (Liu et al. 2022: k-rectified flows, and their one-step students);
consistency (Song et al. 2023).
"""
from __future__ import annotations

import ml_collections

from scoresde import solvers
from scoresde.sde_lib import SDE
from scoresde.training import consistency
from scoresde.training import distributed
from scoresde.training import progressive
from scoresde.training import reflow
from scoresde.training import students
from scoresde.training.students import DistillResult, Teacher, load_teacher, read_record
from scoresde.utils import Registry, UsageError

__all__ = ["METHODS", "DistillResult", "Teacher", "check_sampler", "check_score", "distill", "load_teacher",
           "read_record"]

METHODS = Registry("distillation method", {m.METHOD: m for m in (progressive, reflow, consistency)})


def distill(config: ml_collections.ConfigDict, workdir, ctx: distributed.Context | None = None, *,
            checkpoint=None, teacher: Teacher | None = None) -> DistillResult:
    """Distil the run in `workdir` (its newest checkpoint, or `checkpoint`) by config.distill.method into students
    under <workdir>/distill/<method>/. teacher: the teacher instead of the run's network (e.g. an exact score, with
    config's sde, model and data). A finished student is kept, an interrupted one resumes where it stopped."""
    method = METHODS[config.distill.method]
    students.check_common(config)
    method.check_config(config)
    ctx = distributed.setup(config) if ctx is None else ctx
    if teacher is None:
        check_score(workdir, "teaching a student")
        teacher = load_teacher(workdir, checkpoint, ctx.device)
    return method.distill(config, workdir, ctx, teacher)


def _method_of(record: dict):
    # Records written before there was more than one method are progressive students.
    return METHODS[record.get("method", progressive.METHOD)]


def check_sampler(workdir, sde: SDE, sampler: solvers.Sampler) -> None:
    """A ValueError if the run in workdir is a distilled student and `sampler` is not one it was trained for."""
    record = read_record(workdir)
    if record is not None:
        _method_of(record).check_sampler(record, workdir, sde, sampler)


def check_score(workdir, use: str) -> None:
    """A ValueError if the run in workdir is a student whose network is no longer a score, so that `use` (its
    likelihood, a calibrated grid, inpainting, teaching another student) would mean nothing."""
    record = read_record(workdir)
    if record is not None and not _method_of(record).is_score(record):
        method = record.get("method", progressive.METHOD)
        raise UsageError(f"{workdir} is a {method} student: its network maps between the noise levels it was "
                         f"distilled for and is not a score, so it cannot be used for {use}; use its teacher "
                         f"({record['teacher']}) instead")
