"""Sampling from a run: the solver settings of its config (with the run's calibrated grids and Analytic-DPM table
resolved from its directory), the sharded per-sample-seeded loop, and the reference points of 2-D plots."""
from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import torch
from absl import logging
from tqdm.auto import tqdm

from scoresde import solvers
from scoresde.utils import UsageError

from scoresde.run.interrupts import NEVER

# Fields of config.sampling that are also options of some solvers; each reaches a solver that takes it.
OPTION_FIELDS = ("snr", "corrector_steps")


def sampler_from_config(config, workdir=None, *, solver: str | None = None, steps: int | None = None,
                        grid: str | None = None, options: dict | None = None,
                        snapshot: bool = False) -> solvers.Sampler:
    """The solvers.Sampler that config.sampling describes, with command-line values taking precedence.

    Options, lowest precedence first: the OPTION_FIELDS of config.sampling that this solver takes, then
    config.sampling.options ("order=2,variant=bh1"), then `options`. steps: config.sampling.steps unless given
    (adaptive solvers take none). grid: config.sampling.grid unless given; a configured grid is dropped for
    solvers that take none, and snapshot=True (training) keeps named grids only, so that a missing or stale grid
    file never stops a training run. Everything is checked here, before any work starts.
    """
    s = config.sampling
    name = solvers.SOLVERS.canonical(solver or s.solver)
    takes = solvers.solver_options(name)
    merged = {k: s[k] for k in OPTION_FIELDS if k in takes}
    # No shift (1) is left out of the options, so that it is not recorded in labels and calibrated grids' options.
    if "shift" in takes and s.get("shift", 1.0) != 1.0:
        merged["shift"] = s.shift
    merged.update(solvers.parse_options(s.get("options", "")))
    merged.update(options or {})
    if grid is None:
        grid = s.grid if "grid" in takes else ""
        if snapshot and grid not in solvers.GRIDS:
            grid = ""
    if str(merged.get("variance", "")).lower() == "analytic" and "eps_moments" not in merged and workdir is not None:
        path = analytic_table_path(workdir)
        if not path.is_file() and snapshot:     # the table is made from a trained run: snapshots use DDPM's
            merged.pop("variance")
        elif not path.is_file():
            raise MissingTable(f"no Analytic-DPM table at {path}; estimate it for this run first", workdir,
                               "ancestral", None, "variance=analytic")
        else:
            merged["eps_moments"] = str(path)
    label = None
    if grid == "calibrated":
        grid, steps, label = _calibrated_grid(name, steps, s.steps, workdir, merged), None, "calibrated"
    elif isinstance(grid, str) and grid not in ("", *solvers.GRIDS) and not grid.endswith(".json"):
        raise UsageError(f"unknown time grid {grid!r}; available: {', '.join(solvers.GRIDS)}, calibrated, or the "
                         "path of a .json grid file")
    return solvers.sampler(name, steps, eps=s.eps, grid=grid, grid_label=label, default_steps=s.steps, **merged)


class MissingTable(UsageError):
    """A run lacks what calibration makes for it (a calibrated grid, the Analytic-DPM table); the attributes say
    which run, solver, steps and options it is needed for."""

    def __init__(self, message: str, workdir, solver: str, steps: int | None, options: str = ""):
        super().__init__(message)
        self.workdir, self.solver, self.steps, self.options = Path(workdir), solver, steps, options


def calibrated_grid_path(workdir, solver: str, steps: int) -> Path:
    """Where a run keeps the grid of `solver` fitted at `steps` steps: <workdir>/grids/<solver>_<steps>.json."""
    return Path(workdir) / "grids" / f"{solver}_{steps}.json"


def analytic_table_path(workdir) -> Path:
    """Where a run keeps Analytic-DPM's E||eps_hat||^2/D table: <workdir>/variances/analytic.json."""
    return Path(workdir) / "variances" / "analytic.json"


def _calibrated_grid(solver: str, steps: int | None, default_steps: int, workdir, options: dict) -> str:
    """The path of the run's calibrated grid for `solver` at `steps` (default_steps if None), checked to have been
    fitted with these options."""
    solvers.check_calibratable(solver)
    if workdir is None:
        raise UsageError("grid 'calibrated' needs the run directory (--workdir); or give the path of the .json grid "
                         "file")
    steps = solvers.check_steps(solver, default_steps if steps is None else steps)
    path = calibrated_grid_path(workdir, solver, steps)
    if not path.is_file():
        raise MissingTable(f"no calibrated {solver} grid with {steps} steps at {path}; fit one for this run first",
                           workdir, solver, steps, "")
    fitted = solvers.check_options(solver, solvers.grid_options(path))
    wanted = solvers.check_options(solver, options)
    if fitted != wanted:
        raise UsageError(f"the calibrated {solver} grid with {steps} steps was fitted with options "
                         f"{fitted or 'none'}, not {wanted or 'none'}; sample with those, or calibrate again "
                         "with these")
    return str(path)


def report_calibrated_grid(sampler: solvers.Sampler, workdir, step: int) -> None:
    """Log which file a sampler on `--grid calibrated` takes its grid from and the checkpoint step it was fitted
    on; a warning where that is not `step`, the checkpoint loaded (the grid belongs to the network it was fitted
    to, so it may no longer be the best one)."""
    if sampler.grid_label != "calibrated":
        return
    path = calibrated_grid_path(workdir, sampler.solver, sampler.steps)
    fitted = solvers.grid_record(path).get("step")
    again = (f"calibrate again for this one (--mode calibrate --workdir {workdir} --solver {sampler.solver} "
             f"--steps {sampler.steps} --overwrite)")
    if fitted is None:
        logging.warning("the calibrated grid %s does not record the checkpoint it was fitted on; this is checkpoint "
                        "step %d: %s", path, step, again)
    elif int(fitted) != step:
        logging.warning("the calibrated grid %s was fitted on checkpoint step %d, not on this one (step %d); %s",
                        path, int(fitted), step, again)
    else:
        logging.info("using the calibrated grid %s, fitted on this checkpoint (step %d)", path, step)


class Samples(NamedTuple):
    """x: the samples in data space (CPU), rows in sample order; nfe: mean score evaluations per batch;
    seconds: wall time of the sampling; stopped_by: the signal that stopped it early (x then holds the batches
    finished before it), else None."""

    x: torch.Tensor
    nfe: float
    seconds: float
    stopped_by: str | None = None


def draw_samples(sde, score_fn, data, sampler: solvers.Sampler, num: int, batch_size: int, seed: int, ctx,
                 progress: bool = True, stop=NEVER) -> Samples | None:
    """`num` samples with `sampler`, this process drawing its shard ctx.shard(num) (training.distributed).

    Sample i gets its own generator seeded by (seed, i) (solvers.SampleGenerators) for its prior noise and every
    step's noise, so the samples are the same for any batch size and number of processes. stop: a
    training.interrupts.StopRequested; once it has a signal no new batch starts (single process). Returns the
    gathered Samples on rank 0, None on the others.
    """
    if num < 1 or batch_size < 1:
        raise UsageError(f"the number of samples and the batch size must be positive, got {num} and {batch_size}")
    shard = ctx.shard(num)
    chunks, nfe, start = [], [], time.perf_counter()
    for i in tqdm(range(shard.start, shard.stop, batch_size), desc=f"sampling ({sampler.solver})",
                  disable=not progress or len(shard) <= batch_size or not ctx.is_main):
        if stop.signal is not None and not ctx.distributed:
            break
        stop_at = min(i + batch_size, shard.stop)
        generators = solvers.SampleGenerators(seed, range(i, stop_at), ctx.device)
        result = sampler.sample(sde, score_fn, (stop_at - i, *data.shape), generator=generators, device=ctx.device)
        chunks.append(data.inverse_scaler(result.x.float()).cpu())
        nfe.append(result.nfe)
    parts = ctx.gather((torch.cat(chunks) if chunks else torch.empty(0, *data.shape), nfe))
    if not ctx.is_main:
        return None
    counts = [n for p in parts for n in p[1]]
    # Under torchrun a signal does not stop the shards (they must stay in step), so the samples are complete.
    return Samples(torch.cat([p[0] for p in parts]), sum(counts) / max(len(counts), 1), time.perf_counter() - start,
                   None if ctx.distributed else stop.signal)


def reference_points(data, limit: int = 2000) -> torch.Tensor | None:
    """Test points in data space to draw behind a scatter plot of 2-D samples (None for images)."""
    if data.is_image:
        return None
    return data.inverse_scaler(torch.stack([data.test[i][0] for i in range(min(len(data.test), limit))]))


