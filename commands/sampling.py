"""Sampling runs: solver settings from a config, the sharded per-sample-seeded loop, and the files written."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from scoresde import guidance
from scoresde import solvers

from scoresde.training.classifier import load_classifier
from scoresde.run.sampling import Samples, draw_samples, reference_points
from scoresde.run.images import save_npz, save_samples
from scoresde.run.interrupts import NEVER
from scoresde.run.workdir import check_directory, claiming_names, fresh_stem
from scoresde.utils import UsageError

def guided_score_fn(run, class_label: str = "", omega: float = 0.0, gamma: float = 0.0):
    """run.score_fn conditioned on class_label ("3" or "0,1,2", cycled over each batch), with classifier-free
    guidance of weight omega (conditional models) and/or classifier guidance of scale gamma (a classifier from
    --mode train_classifier in the run directory)."""
    if not str(class_label or "").strip():
        if omega or gamma:
            raise UsageError("--guidance and --classifier_scale need --class_label (e.g. --class_label=3 or 0,1,2)")
        return run.score_fn
    labels = guidance.parse_labels(class_label)
    guidance.check_labels(labels, run.data.num_classes)
    score_fn = run.score_fn
    if run.config.model.conditional:
        score_fn = guidance.ClassifierFreeGuidance(score_fn.score, labels, omega)
    elif omega:
        raise UsageError("--guidance (classifier-free) needs a conditional model; train one with "
                         "--config.model.conditional=True, or use --classifier_scale")
    elif not gamma:
        raise UsageError("this model is unconditional: --class_label needs classifier guidance "
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


def write_samples(stem: Path, x: torch.Tensor, data, hint: str, title: str | None = None,
                  **arrays) -> list[Path]:
    """<stem>.npz (x under 'samples', the data space's (lo, hi) under 'data_space', with `arrays`) and <stem>.png
    where the data have a picture; the files written.

    Non-finite samples raise before anything is written: a run never leaves NaN results that look like output.
    """
    if not x.isfinite().all():
        raise UsageError(f"the samples contain NaN/inf (nothing written); {hint}")
    png = save_samples(x, Path(f"{stem}.png"), data.is_image, reference=reference_points(data), title=title)
    npz = Path(f"{stem}.npz")
    save_npz(npz, samples=x.numpy(), data_space=np.asarray(data.data_space), **arrays)
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


def samples_name(sampler: solvers.Sampler, num: int, step: int, seed: int, tag: str = "") -> str:
    """<label>_n<num>_step<checkpoint step>_seed<seed><tag>: the name of a run's samples, of their files and of
    their score's record."""
    return f"{sampler.label}_n{num}_step{step}_seed{seed}{tag}"


def sample_stem(run, sampler: solvers.Sampler, num: int, seed: int, tag: str = "") -> Path:
    """<workdir>/samples/<samples_name>, or a fresh variant (_2, ...) where those files exist: a new sampling run
    never overwrites an earlier one."""
    stem = run.workdir / "samples" / samples_name(sampler, num, run.step, seed, tag)
    return fresh_stem(stem, (".npz", ".png", "_partial.npz", "_partial.png"))


def sample_to_files(run, score_fn, sampler: solvers.Sampler, num: int, batch_size: int, seed: int, ctx,
                    tag: str = "", stop=NEVER) -> SampleRun | None:
    """draw_samples, then (rank 0) write them to sample_stem(...).{npz,png} (with "_partial" when a signal
    stopped the run early; the batches finished are kept). The name is chosen when the samples are written, under
    claiming_names: runs with the same settings side by side get _2, _3, ... instead of one replacing another."""
    # Before any work, and on every rank: a rank that stopped here alone would leave the others in the gather.
    directory = check_directory(run.workdir / "samples")
    out = draw_samples(run.sde, score_fn, run.data, sampler, num, batch_size, seed, ctx, stop=stop)
    if out is None:
        return None
    written = []
    if len(out.x):
        with claiming_names(directory):
            stem = sample_stem(run, sampler, num, seed, tag)
            stem = Path(f"{stem}_partial") if out.stopped_by else stem
            written = write_samples(stem, out.x, run.data, "try more --steps or another --solver",
                                    title=f"{sampler.solver}, NFE {out.nfe:.0f}")
    return SampleRun(out, written, sampler.describe())
