"""Reflow (Liu, Gong & Liu 2022, "Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified
Flow"): the teacher's probability-flow ODE couples each noise z with the sample x it lands on, and a
rectified-flow student fitted on the straight lines x_t = (1 - t) x + t z between the pairs learns a flow with the
same marginals whose paths are straighter, so that a few Euler steps follow them (docs/math.md, "Reflow").

Students, each a run in <workdir>/distill/reflow/<name>/ (training.students):
<k>: the k-rectified flow (k = 2 reflows the teacher, k = 3 the 2-rectified flow, ...), a proper flow model, valid
with every ODE sampler and with the likelihood;
<k>-onestep (distill.reflow.one_step): the k-rectified flow distilled into one Euler step from T (Sec. 2.3), valid
with `--solver euler --steps 1` only.
Each student's pairs are drawn into <student>/pairs/ (draw_pairs): a sharded dataset that a rerun completes.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import ml_collections
import numpy as np
import torch
from absl import logging
from tqdm.auto import tqdm

from scoresde import data as data_lib
from scoresde import models
from scoresde import solvers
from scoresde.run import interrupts
from scoresde.run.builders import build_sde
from scoresde.sde_lib import SDE
from scoresde.training import distributed
from scoresde.training import students
from scoresde.utils import UsageError, atomic_write, atomic_write_json, derived_seed

Tensor = torch.Tensor

METHOD = "reflow"
PAIRS = "pairs"
MANIFEST = "manifest.json"
# What defines a set of pairs: shards drawn under another value of any of these are another coupling, which a rerun
# must not mix in. The number of pairs is not among them: a rerun asking for more adds shards.
PAIR_IDENTITY = ("teacher", "teacher_step", "flow", "sde", "solver", "steps", "options", "eps", "shape", "seed",
                 "prior_std", "shard_size")


# --- the pairs ------------------------------------------------------------------------------------------------------
class Pairs(NamedTuple):
    """x: the teacher's samples (N, ...) in model space; z: the standard normal noise each one was drawn from
    (x_T = prior_std z); nfe: the teacher's network evaluations per pair."""

    x: Tensor
    z: Tensor
    nfe: float


def pair_sampler(config) -> solvers.Sampler:
    """The teacher's ODE solver for the pairs: distill.reflow's solver, steps (0: the solver's default) and options
    ("rtol=1e-5,atol=1e-5"), down to config.sampling.eps."""
    r = config.distill.reflow
    name = solvers.SOLVERS.canonical(r.solver)
    if name not in solvers.deterministic():
        raise UsageError(f"distill.reflow.solver={r.solver!r}: the pairs are the teacher's probability-flow ODE map, "
                         f"so use a deterministic solver: {', '.join(solvers.deterministic())}")
    return solvers.sampler(name, r.steps or None, eps=config.sampling.eps, **solvers.parse_options(r.options))


def pairs_dir(student) -> Path:
    """<student>/pairs: the pairs a student is trained on."""
    return Path(student) / PAIRS


def _manifest(config, teacher: students.Teacher, sde: SDE, sampler: solvers.Sampler, shape, flow: int) -> dict:
    """What the pairs are (PAIR_IDENTITY), as JSON reads it back."""
    r = config.distill.reflow
    return json.loads(json.dumps({
        "teacher": teacher.label, "teacher_step": teacher.step, "flow": flow, "sde": repr(sde),
        "solver": sampler.solver, "steps": sampler.steps, "options": sampler.options, "eps": sampler.eps,
        "shape": list(shape), "seed": config.seed, "prior_std": sde.prior_std, "shard_size": r.shard_size,
    }, default=str))


def _check_manifest(directory: Path, wanted: dict) -> None:
    """Write the manifest of a new set of pairs, or refuse to add to one drawn under other settings."""
    path = directory / MANIFEST
    if not path.is_file():
        atomic_write_json(path, wanted)
        return
    with open(path) as f:
        saved = json.load(f)
    for key in PAIR_IDENTITY:
        if saved.get(key) != wanted[key]:
            raise UsageError(f"{directory} holds pairs drawn with {key}={saved.get(key)!r}, not {wanted[key]!r}; "
                             f"rerun with the settings they were drawn with, or delete {directory.parent} to start "
                             "this student again")


def shard_path(directory, i: int) -> Path:
    """<pairs>/shard_<i>.npz: z, x and the NFE of shard i."""
    return Path(directory) / f"shard_{i:05d}.npz"


def shard_noise(seed: int, flow: int, i: int, shape) -> Tensor:
    """The standard normal noise of shard i of the pairs drawn from flow `flow` (1: the teacher, k: the
    k-rectified flow): a function of (seed, flow, i) alone, so a shard redrawn after a crash is the same."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(derived_seed(seed, flow, i)))


def _write_shard(path: Path, z: Tensor, x: Tensor, nfe: int) -> None:
    """Write one shard atomically: a crash leaves it whole or absent, never half-written."""
    def write(tmp):
        with open(tmp, "wb") as f:     # a file object: np.savez would add ".npz" to the temporary name
            np.savez(f, z=z.numpy(), x=x.numpy(), nfe=np.int64(nfe))
    atomic_write(path, write)


def load_pairs(directory, shards: int) -> Pairs:
    """The first `shards` shards of the pairs in `directory`."""
    zs, xs, nfe = [], [], []
    for i in range(shards):
        with np.load(shard_path(directory, i)) as f:
            zs.append(torch.from_numpy(f["z"]))
            xs.append(torch.from_numpy(f["x"]))
            nfe.append(int(f["nfe"]))
    return Pairs(torch.cat(xs), torch.cat(zs), float(np.mean(nfe)))


def draw_pairs(config, teacher: students.Teacher, directory, flow: int, device, stop=interrupts.NEVER
               ) -> Pairs | None:
    """config.distill.reflow.pairs (noise, sample) pairs of the teacher's probability-flow ODE in `directory`.

    Shard i holds shard_size pairs: noise z from (seed, flow, i), and the teacher's ODE solution from
    x_T = prior_std z (the teacher's prior: sigma_max for VE), drawn in one solver call and written atomically.
    Complete shards are kept, so a rerun draws only the missing ones; the manifest then records the pairs' number
    and the teacher's evaluations per pair. flow: the index of the teacher's flow (1 for
    the run itself, k for the k-rectified flow). Returns None once `stop` has a signal (the shard in hand is
    finished and written first).
    """
    r, directory, taught = config.distill.reflow, Path(directory), students.inherit(config, teacher)
    sde, shape, sampler = build_sde(taught), data_lib.get_dataset(taught).shape, pair_sampler(config)
    manifest = _manifest(config, teacher, sde, sampler, shape, flow)
    _check_manifest(directory, manifest)
    shards = r.pairs // r.shard_size
    missing = [i for i in range(shards) if not shard_path(directory, i).is_file()]
    if missing:
        logging.info("drawing %d of %d shards of %d pairs with %s (%s) in %s", len(missing), shards, r.shard_size,
                     teacher.label, sampler.describe(), directory)
    for i in tqdm(missing, desc="pairs", dynamic_ncols=True, disable=not config.training.progress):
        if stop.signal is not None:
            return None
        z = shard_noise(config.seed, flow, i, (r.shard_size, *shape))
        result = sampler.sample(sde, teacher.score_fn, None, x_T=(z * sde.prior_std).to(device))
        _write_shard(shard_path(directory, i), z, result.x.float().cpu(), result.nfe)
    if stop.signal is not None and missing:
        return None
    pairs = load_pairs(directory, shards)
    atomic_write_json(directory / MANIFEST, {**manifest, "pairs": len(pairs.x), "nfe_per_pair": pairs.nfe})
    return pairs


class PairDataset(torch.utils.data.Dataset):
    """The pairs as training items: item i is (stack(x_i, z_i), 0), a pair in place of an example."""

    def __init__(self, pairs: Pairs):
        self.items = torch.stack([pairs.x, pairs.z], 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i], 0

    def get_batch(self, idx):
        """The items at indices idx, collated (data.loader fetches a batch in one call)."""
        return self.items[idx], torch.zeros(len(idx), dtype=torch.int64)


# --- the losses -----------------------------------------------------------------------------------------------------
def reflow_loss(model, sde: SDE, pairs: Tensor, **dsm) -> Tensor:
    """||u_hat(x_t, t) - (z - x)||^2 on x_t = (1 - t) x + t z for pairs stack(x, z) of shape (N, 2, ...): conditional
    flow matching (the flow weighting of models.dsm_loss, which takes the other arguments) with the teacher's
    coupling in place of independent noise."""
    return models.dsm_loss(model, sde, pairs[:, 0], noise=pairs[:, 1], **dsm)


def one_step_loss(score_fn, sde: SDE, pairs: Tensor, times: Tensor, reduce: str = "mean") -> Tensor:
    """|x_T + (t_1 - T) v(x_T, T) - x|^2 with x_T = prior_std z and v the probability-flow velocity: one Euler step
    from T to t_1 = times[1] lands on the paired sample (Liu et al. Sec. 2.3, with L2 in place of LPIPS)."""
    x, z = pairs[:, 0], pairs[:, 1]
    x_T = z * sde.prior_std
    # The Euler solver's own arithmetic: the velocity at float64 time T, the step as a float64 scalar.
    t = times[0].to(x.device).expand(len(x))
    v = sde.reverse(score_fn, 0.0).drift(x_T, t, score=score_fn(x_T, t))
    losses = (x_T + (times[1] - times[0]).to(x.device) * v - x).flatten(1).square().sum(1)
    return losses.mean() if reduce == "mean" else losses


class ReflowTrainer(students.StudentTrainer):
    """A Trainer whose examples are the pairs (train and test: the student has no held-out pairs, so its test loss
    is that of a fixed first part of them) and whose loss is reflow_loss, or one_step_loss on `times`.

    init: the state dict the student starts from, None for the config's random initialisation. Resuming,
    checkpoints, signals, metrics and snapshots are the Trainer's, so a student resumes bit-exactly.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir, pairs: Pairs, init: dict | None = None,
                 ctx: distributed.Context | None = None, times: Tensor | None = None):
        super().__init__(config, workdir, init, ctx)
        items = PairDataset(pairs)
        self.data = dataclasses.replace(self.data, train=items, test=items)
        self.times = times

    def loss(self, model, x, y, generator=None, reduce="mean", rows=None) -> Tensor:
        if self.times is not None:
            return one_step_loss(models.get_score_fn(model, self.sde, self.precond), self.sde, x, self.times, reduce)
        return reflow_loss(model, self.sde, x, precond=self.precond, weighting=self.weighting,
                           t_sampling=self.t_sampling, generator=generator, reduce=reduce)


# --- the students ---------------------------------------------------------------------------------------------------
def is_score(record: dict) -> bool:
    """A k-rectified flow is a flow (and so a score); its one-step student is a map from noise to data."""
    return not record.get("one_step", False)


def check_config(config) -> None:
    """One clear line for a bad distill.reflow setting, before any work."""
    r = config.distill.reflow
    for key, low in (("k", 2), ("pairs", 1), ("shard_size", 1), ("steps", 0), ("one_step_iterations", 1)):
        if isinstance(r[key], bool) or not isinstance(r[key], int) or r[key] < low:
            raise UsageError(f"distill.reflow.{key}={r[key]!r}: must be an integer >= {low}")
    if r.pairs % r.shard_size:
        raise UsageError(f"distill.reflow.pairs={r.pairs} must be a multiple of distill.reflow.shard_size="
                         f"{r.shard_size} (every shard holds shard_size pairs)")
    if not isinstance(r.one_step, bool):
        raise UsageError(f"distill.reflow.one_step={r.one_step!r}: must be True or False")
    if r.pairs < config.training.batch_size:
        raise UsageError(f"distill.reflow.pairs={r.pairs} is fewer than training.batch_size="
                         f"{config.training.batch_size}; draw at least one batch of pairs")
    pair_sampler(config)


def student_dir(workdir, k: int) -> Path:
    """<workdir>/distill/reflow/<k>: the k-rectified flow."""
    return students.method_dir(workdir, METHOD) / str(k)


def one_step_dir(workdir, k: int) -> Path:
    """<workdir>/distill/reflow/<k>-onestep: the k-rectified flow distilled into one Euler step."""
    return students.method_dir(workdir, METHOD) / f"{k}-onestep"


def student_config(config: ml_collections.ConfigDict, teacher: students.Teacher) -> ml_collections.ConfigDict:
    """The config of a rectified-flow student: the teacher's model and data, sde_lib's rectified flow with the flow
    parameterisation and loss (flow weighting, the run's training.t_sampling), distill's optimiser and EMA."""
    c = students.inherit(config, teacher)
    with c.unlocked():
        c.sde.name, c.model.parameterization = "rectified", "flow"
        c.training.weighting, c.training.coupling = "flow", "independent"
    return c


def one_step_times(sde: SDE, eps: float) -> Tensor:
    """The grid of one Euler step, [T, eps]."""
    return students.sampler_times(sde, solvers.sampler("euler", 1, eps=eps))


def check_sampler(record: dict, workdir, sde: SDE, sampler: solvers.Sampler) -> None:
    """A k-rectified flow takes any sampler; its one-step student only the one Euler step it was trained for."""
    if not is_score(record):
        if sampler.solver != "euler" or not students.on_grid(sde, sampler, record["times"]):
            raise UsageError(f"{workdir} is a one-step reflow student, valid only with one Euler step from T to eps "
                             f"{record['eps']:g}, not with {sampler.describe()}; sample it with --solver euler "
                             "--steps 1")


def _train(config, c, here: Path, teacher: students.Teacher, flow: int, ctx, stop, grid, **fields):
    """Draw a student's pairs from `teacher` (flow number `flow`, under the distillation's `config`) and train it
    under its config `c` (grid: a one-step student's [T, eps]); returns its TrainResult, or None when a signal
    stopped the pairs.

    The student starts from the teacher's network (the same one: the model section is the teacher's), as Liu et al.
    start each reflow from the previous flow. From a score network of another SDE too, although it predicts another
    quantity there: on the digits VP teacher its features beat a random start after 800 updates (FD-digits2 of
    1- and 2-step Euler 0.027 and 0.019, against 0.047 and 0.030). An exact teacher has no network: a random start.
    """
    pairs = None
    if ctx.is_main:
        pairs = draw_pairs(config, teacher, pairs_dir(here), flow, ctx.device, stop)
    # Every rank trains on rank 0's pairs (one writer); a stop there stops all.
    pairs = ctx.broadcast(pairs)
    if pairs is None:
        return None
    students.claim_record(here, METHOD, teacher, ctx.is_main, pairs=len(pairs.x), pair_nfe=pairs.nfe,
                          pair_sampler=pair_sampler(config).describe(),
                          init="teacher" if teacher.init is not None else "random", **fields)
    return ReflowTrainer(c, here, pairs, teacher.init, ctx, grid).run()


def distill(config: ml_collections.ConfigDict, workdir, ctx: distributed.Context, teacher: students.Teacher
            ) -> students.DistillResult:
    """Reflow the run in `workdir` into the 2-, ..., k-rectified flows, then (distill.reflow.one_step) the k-th
    into one Euler step. Each student draws its pairs from the previous flow (`teacher` for the first); a finished
    student is kept, an interrupted one (pairs or training) resumes where it stopped."""
    check_config(config)
    r, workdir, trained = config.distill.reflow, Path(workdir), []
    stages = [(k, student_dir(workdir, k), False) for k in range(2, r.k + 1)]
    if r.one_step:
        stages.append((r.k, one_step_dir(workdir, r.k), True))
    with interrupts.StopRequested() as stop:
        for k, here, one_step in stages:
            c = student_config(config, teacher)
            fields = {"k": k, "one_step": one_step, "sde": repr(build_sde(c))}
            grid = None
            if one_step:
                grid = one_step_times(build_sde(c), c.sampling.eps)
                with c.unlocked():
                    c.training.n_iters = r.one_step_iterations
                    c.sampling.solver, c.sampling.steps, c.sampling.grid, c.sampling.options = "euler", 1, "", ""
                fields.update(solver="euler", steps=1, eps=c.sampling.eps, times=grid.tolist())
            if not students.complete(here):
                logging.info("reflow of %s into %s", teacher.label, here)
                result = _train(config, c, here, teacher, k if one_step else k - 1, ctx, stop, grid, **fields)
                if result is not None:
                    trained.append((here.name, result))
                if result is None or result.interrupted:
                    return students.DistillResult(trained, here, "", "", True)
            teacher = students.load_teacher(here, None, ctx.device)
    k, here, one_step = stages[-1]
    if one_step:
        return students.DistillResult(trained, here, f"one-step student of the {k}-rectified flow",
                                      "--solver euler --steps 1", False)
    return students.DistillResult(trained, here, f"{k}-rectified flow (any ODE sampler; likelihood too)",
                                  "--solver euler --steps 2", False)
