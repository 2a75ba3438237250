"""Sampling from a run: the solver settings of its config (with the run's calibrated grids and Analytic-DPM table
resolved from its directory), the sharded per-sample-seeded loop, and the reference points of 2-D plots."""
from __future__ import annotations

import time
from typing import NamedTuple

import torch
from absl import logging
from tqdm.auto import tqdm

from scoresde import solvers

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
    merged.update(solvers.parse_options(s.get("options", "")))
    merged.update(options or {})
    if grid is None:
        grid = s.grid if "grid" in takes else ""
        if snapshot and grid not in solvers.GRIDS:
            grid = ""
    if str(merged.get("variance", "")).lower() == "analytic" and "eps_moments" not in merged and workdir is not None:
        path = solvers.analytic_variance_path(workdir)
        if not path.is_file() and snapshot:     # the table is made from a trained run: snapshots use DDPM's
            merged.pop("variance")
        elif not path.is_file():
            raise FileNotFoundError(f"no Analytic-DPM table at {path}; make it with `python main.py --mode calibrate "
                                    f"--workdir {workdir} --solver ancestral --solver_options variance=analytic` first")
        else:
            merged["eps_moments"] = str(path)
    return solvers.sampler(name, steps, eps=s.eps, grid=grid, workdir=workdir, default_steps=s.steps, **merged)


def report_calibrated_grid(sampler: solvers.Sampler, workdir, step: int) -> None:
    """Log which file a sampler on `--grid calibrated` takes its grid from and the checkpoint step it was fitted
    on; a warning where that is not `step`, the checkpoint loaded (the grid belongs to the network it was fitted
    to, so it may no longer be the best one)."""
    if sampler.grid_label != "calibrated":
        return
    path = solvers.calibrated_grid_path(workdir, sampler.solver, sampler.steps)
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
        raise ValueError(f"the number of samples and the batch size must be positive, got {num} and {batch_size}")
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


