"""Sampling runs: solver settings from a config, the sharded per-sample-seeded loop, and the files written."""
from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from scoresde import guidance
from scoresde import solvers

from .classifier import load_classifier
from .images import save_npz, save_samples
from .interrupts import NEVER
from .workdir import check_directory, fresh_stem

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


def guided_score_fn(run, class_label: str = "", omega: float = 0.0, gamma: float = 0.0):
    """run.score_fn conditioned on class_label ("3" or "0,1,2", cycled over each batch), with classifier-free
    guidance of weight omega (conditional models) and/or classifier guidance of scale gamma (a classifier from
    --mode train_classifier in the run directory)."""
    if not str(class_label or "").strip():
        if omega or gamma:
            raise ValueError("--guidance and --classifier_scale need --class_label (e.g. --class_label=3 or 0,1,2)")
        return run.score_fn
    labels = guidance.parse_labels(class_label)
    guidance.check_labels(labels, run.data.num_classes)
    score_fn = run.score_fn
    if run.config.model.conditional:
        score_fn = guidance.ClassifierFreeGuidance(score_fn.score, labels, omega)
    elif omega:
        raise ValueError("--guidance (classifier-free) needs a conditional model; train one with "
                         "--config.model.conditional=True, or use --classifier_scale")
    elif not gamma:
        raise ValueError("this model is unconditional: --class_label needs classifier guidance "
                         "(--classifier_scale > 0, after --mode train_classifier)")
    if gamma:
        net = load_classifier(run.config, run.workdir, run.data.shape, run.data.num_classes, run.device)
        score_fn = guidance.ClassifierGuidance(score_fn, guidance.ClassifierLogits(net), labels, gamma)
    return score_fn


def guidance_tag(class_label: str = "", omega: float = 0.0, gamma: float = 0.0) -> str:
    """File-name suffix of a conditional sample run, e.g. '_y0-1-2_w2' (empty when unconditional)."""
    text = str(class_label or "").strip()
    if not text:
        return ""
    tag = "_y" + "-".join(p.strip() for p in text.split(","))
    for letter, value in (("w", omega), ("g", gamma)):
        tag += f"_{letter}{value:g}" if value else ""
    return tag


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


def write_samples(stem: Path, x: torch.Tensor, data, hint: str, title: str | None = None,
                  **arrays) -> list[Path]:
    """<stem>.npz (x under 'samples', with `arrays`) and <stem>.png where the data have a picture; the files written.

    Non-finite samples raise before anything is written: a run never leaves NaN results that look like output.
    """
    if not x.isfinite().all():
        raise ValueError(f"the samples contain NaN/inf (nothing written); {hint}")
    png = save_samples(x, Path(f"{stem}.png"), data.is_image, reference=reference_points(data), title=title)
    npz = Path(f"{stem}.npz")
    save_npz(npz, samples=x.numpy(), **arrays)
    return [p for p in (png, npz) if p is not None]


class SampleRun(NamedTuple):
    """What sample_to_files did: the samples, the files written, and the sampler's description."""

    samples: Samples
    written: list[Path]
    description: str

    def line(self) -> str:
        n, (_, nfe, seconds, stopped) = len(self.samples.x), self.samples
        head = f"stopped by {stopped} after {n} samples" if stopped else f"{n} samples"
        files = " and ".join(map(str, self.written)) or "nothing"
        return (f"{head} with {self.description}: NFE {nfe:.0f} per batch, {seconds:.2f} s "
                f"({1000 * seconds / max(n, 1):.2f} ms/sample); wrote {files}")


def sample_stem(run, sampler: solvers.Sampler, num: int, seed: int, tag: str = "") -> Path:
    """<workdir>/samples/<label>_n<num>_step<checkpoint step>_seed<seed><tag>, or a fresh variant (_2, ...)
    where those files exist: a new sampling run never overwrites an earlier one."""
    stem = run.workdir / "samples" / f"{sampler.label}_n{num}_step{run.step}_seed{seed}{tag}"
    return fresh_stem(stem, (".npz", ".png", "_partial.npz", "_partial.png"))


def sample_to_files(run, score_fn, sampler: solvers.Sampler, num: int, batch_size: int, seed: int, ctx,
                    tag: str = "", stop=NEVER) -> SampleRun | None:
    """draw_samples, then (rank 0) write them to sample_stem(...).{npz,png} (with "_partial" when a signal
    stopped the run early; the batches finished are kept)."""
    stem = sample_stem(run, sampler, num, seed, tag)
    # Before any work, and on every rank: a rank that stopped here alone would leave the others in the gather.
    check_directory(stem.parent)
    out = draw_samples(run.sde, score_fn, run.data, sampler, num, batch_size, seed, ctx, stop=stop)
    if out is None:
        return None
    written = []
    if len(out.x):
        stem = Path(f"{stem}_partial") if out.stopped_by else stem
        written = write_samples(stem, out.x, run.data, "try more --steps or another --solver",
                                title=f"{sampler.solver}, NFE {out.nfe:.0f}")
    return SampleRun(out, written, sampler.describe())
