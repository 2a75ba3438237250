"""Sample quality of a run as papers report it: samples drawn with a configured sampler and scored against the
training data's reference statistics (metrics.evaluate), for --mode fid and for the metric logged in training."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from scoresde import metrics
from scoresde import solvers
from scoresde.utils import UsageError, atomic_write_json, read_array

from scoresde.data import check_data_space
from scoresde.run.quality import data_of, score
from scoresde.run.sampling import draw_samples
from scoresde.run.workdir import check_directory, claiming_names, fresh_stem

from .sampling import samples_name

SAMPLES_KEY = "samples"


def read_samples(path) -> torch.Tensor:
    """The samples of an .npz as --mode sample writes it (under 'samples'), or of an .npy, as a float tensor."""
    x, _ = read_array(path, SAMPLES_KEY, expected=f"samples in data space: an .npz as --mode sample writes it "
                                                   f"(key {SAMPLES_KEY!r}) or an .npy array", only_array=False)
    if x.dtype.kind != "f":
        raise UsageError(f"{path}: samples must be floats in data space ([0, 1] for images), got dtype {x.dtype}")
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise UsageError(f"{path}: the samples contain {bad} NaN or infinite values; draw them again")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def recorded_data_space(path) -> tuple[float, float] | None:
    """The data space's (lo, hi) that a samples file written by this framework records, else None.

    Such samples are scored as they are: a barely trained model's samples lie far outside the data and are still
    its samples, while a file from elsewhere is checked for values in another scale.
    """
    z = np.load(path, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):
        return None
    with z:
        return tuple(float(v) for v in z["data_space"]) if "data_space" in z.files else None


class Report(NamedTuple):
    """One scored set of samples: the metrics, where the samples came from (shown in the line) and what the JSON
    record holds besides the metrics; `stem` names it under <workdir>/metrics/."""

    result: metrics.EvalResult
    source: str
    record: dict
    stem: str

    def line(self) -> str:
        return f"{self.result.format()} ({self.result.num_samples} samples, {self.source})"

    def write(self, workdir) -> Path:
        directory = check_directory(Path(workdir) / "metrics")
        with claiming_names(directory):       # never replace an earlier record, nor one written beside this one
            stem = fresh_stem(directory / self.stem, (".json",))
            return atomic_write_json(Path(f"{stem}.json"), {**self.record, **self.result.as_dict()})


def score_run(run, score_fn, sampler: solvers.Sampler, num: int, batch_size: int, seed: int, ctx, *,
              cache: str | Path | None, weights: str | Path | None = None, tag: str = "") -> Report | None:
    """Draw `num` samples of the run with `sampler` (training.draw_samples: sharded over ranks, seeded per sample)
    and score them; the Report on rank 0, None on the others. Its stem names the samples as --mode sample names
    its files (samples_name), so a later checkpoint's record never replaces this one's."""
    # Before any work, and on every rank: a rank that stopped here alone would leave the others in the gather.
    check_directory(run.workdir / "metrics")
    out = draw_samples(run.sde, score_fn, run.data, sampler, num, batch_size, seed, ctx)
    if out is None:
        return None
    if not out.x.isfinite().all():
        raise UsageError(f"{int((~out.x.isfinite()).sum())} sample values are NaN/inf (nothing scored); try more "
                         "--steps or another --solver")
    result = score(out.x, run.config, run.data, cache=cache, weights=weights, device=ctx.device)
    record = {"dataset": run.config.data.dataset, "checkpoint": str(run.path), "step": run.step, "seed": seed,
              "solver": sampler.solver, "steps": sampler.steps, "grid": sampler.grid_label,
              "options": {k: v for k, v in sampler.options.items() if k != "grid"}, "sampler": sampler.describe(),
              "nfe": out.nfe, "sampling_seconds": out.seconds}
    return Report(result, f"{sampler.describe()}, NFE {out.nfe:.0f}", record,
                  samples_name(sampler, num, run.step, seed, tag))


def score_file(path, config, *, cache: str | Path | None, weights: str | Path | None = None,
               device="cpu") -> Report:
    """Score the samples of an .npz or .npy (read_samples) as samples of config.data; needs no checkpoint. The record is
    from_<file stem>: scoring --mode sample's file never replaces score_run's record of the same samples."""
    x = read_samples(path)
    info = data_of(config)
    space = (0.0, 1.0) if info is None else info.data_space
    recorded = recorded_data_space(path)
    if recorded is None:
        check_data_space(x, space, f"the samples in {path}")
    elif not np.allclose(recorded, space):
        raise UsageError(f"{path} holds samples of data in {recorded[0]:g}..{recorded[1]:g}, not of this run's "
                         f"{space[0]:g}..{space[1]:g}; score them with the --workdir of the run that drew them")
    result = score(x, config, info, cache=cache, weights=weights, device=device)
    record = {"dataset": config.data.dataset, "samples": str(path)}
    return Report(result, f"from {path}", record, f"from_{Path(path).stem}")
