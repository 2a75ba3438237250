"""Sample quality of a run as papers report it: samples drawn with a configured sampler and scored against the
training data's reference statistics (metrics.evaluate), for --mode fid and for the metric logged in training."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from absl import logging

from scoresde import data as data_lib
from scoresde import metrics
from scoresde import models
from scoresde import solvers
from scoresde.metrics import fidelity
from scoresde.sde_lib.io import atomic_write_json

from . import precision
from .sampling import draw_samples
from .workdir import check_directory, fresh_stem

# Datasets whose name fixes the training set: their statistics are cached under that name, and the data are read
# only when the cache misses. User data (an array, an image folder) are keyed by a digest of their contents.
NAMED = ("mnist", "cifar10")
SAMPLES_KEY = "samples"


def default_cache_dir() -> Path:
    """Where reference statistics are kept unless config.metrics.cache_dir says otherwise: per user, outside any
    run, since every run on the same data shares them ($XDG_CACHE_HOME/scoresde/fid_stats, else ~/.cache/...)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "scoresde" / "fid_stats"


def cache_dir(config) -> Path:
    """config.metrics.cache_dir, or default_cache_dir() when it is empty (or the config has no metrics section)."""
    configured = config.get("metrics", {}).get("cache_dir", "")
    return Path(configured).expanduser() if configured else default_cache_dir()


def inception_weights(config, given: str | None = None) -> str | None:
    """The Inception weights file to use: `given` (--inception_weights), else config.metrics.inception_weights;
    None means torch hub's copy of the official file (downloaded once)."""
    return given or config.get("metrics", {}).get("inception_weights", "") or None


def data_space(split: data_lib.ArrayDataset, n_bins: int | None) -> torch.Tensor:
    """Every item of a split in data space and unflipped (training flips are augmentation, not data): level k of
    n_bins is k / (n_bins - 1), continuous data are as stored."""
    x = split.data.to(torch.float32)
    return x / (n_bins - 1) if n_bins is not None else x


def _load_data(config) -> data_lib.DataInfo:
    try:
        return data_lib.get_dataset(config)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"no reference statistics for dataset {config.data.dataset!r}: they are computed from its "
                         f"training data, which could not be read ({e})") from None


def _train_images(config) -> torch.Tensor:
    info = _load_data(config)
    return data_space(info.train, info.n_bins)


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:12]


def score(x: torch.Tensor, config, info: data_lib.DataInfo | None = None, *, cache: str | Path | None = None,
          weights: str | Path | None = None, device="cpu", batch_size: int = 200) -> metrics.EvalResult:
    """Data-space samples x of the data config.data describes, scored as papers do.

    digits: FD-digits / IS-digits against the 1500 training digits; vectors (2-D toys, float arrays): energy
    distance and sliced W2 to the held-out split (the training points are what the model fitted); other images:
    FID / KID / IS against the training split's Inception statistics, cached in `cache` (None: not cached).
    info: the loaded DataInfo, if any; otherwise the data are loaded only where needed.
    """
    name = str(config.data.dataset).lower()
    if name == "digits":
        return metrics.evaluate(x, "digits", 8, 1)
    if name not in NAMED and info is None:
        info = _load_data(config)
    if info is not None and tuple(x.shape[1:]) != tuple(info.shape):
        raise ValueError(f"samples have shape {tuple(x.shape)}, but the {name} data are (N, "
                         f"{', '.join(map(str, info.shape))})")
    if x.ndim == 2:
        return metrics.evaluate(x, name, reference=data_space(info.test, info.n_bins))
    if info is not None:
        size, channels, key = info.shape[-1], info.shape[0], name
        if name not in NAMED:
            key = f"{name}-{_digest(info.train.data)}"
        reference = lambda: data_space(info.train, info.n_bins)  # noqa: E731
    else:
        size, channels, key = config.data.image_size, config.data.num_channels, name
        reference = lambda: _train_images(config)  # noqa: E731
    try:
        return metrics.evaluate(x, key, size, channels, reference=reference, cache_dir=cache,
                                inception_weights=weights, device=device, batch_size=batch_size)
    except ImportError as e:
        raise ValueError(str(e)) from None


def read_samples(path) -> torch.Tensor:
    """The 'samples' array of an .npz as --mode sample writes it (data space), as a float tensor."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no samples file {path}; write one with --mode sample (an .npz with key "
                                f"{SAMPLES_KEY!r}, in data space)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if SAMPLES_KEY not in z:
                raise ValueError(f"{path} holds {', '.join(z.keys()) or 'no arrays'}, not {SAMPLES_KEY!r} (an .npz as "
                                 f"--mode sample writes it)")
            x = z[SAMPLES_KEY]
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read {path} as an .npz ({e})") from None
    if x.dtype.kind != "f":
        raise ValueError(f"{path}: samples must be floats in data space ([0, 1] for images), got dtype {x.dtype}")
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{path}: the samples contain {bad} NaN or infinite values; draw them again")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


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
        stem = fresh_stem(Path(workdir) / "metrics" / self.stem, (".json",))     # never replace an earlier record
        return atomic_write_json(Path(f"{stem}.json"), {**self.record, **self.result.as_dict()})


def score_run(run, score_fn, sampler: solvers.Sampler, num: int, batch_size: int, seed: int, ctx, *,
              cache: str | Path | None, weights: str | Path | None = None, tag: str = "") -> Report | None:
    """Draw `num` samples of the run with `sampler` (training.draw_samples: sharded over ranks, seeded per sample)
    and score them; the Report on rank 0, None on the others. Its stem names the samples as --mode sample names
    its files (label, count, checkpoint step, seed), so a later checkpoint's record never replaces this one's."""
    # Before any work, and on every rank: a rank that stopped here alone would leave the others in the gather.
    check_directory(run.workdir / "metrics")
    out = draw_samples(run.sde, score_fn, run.data, sampler, num, batch_size, seed, ctx)
    if out is None:
        return None
    if not out.x.isfinite().all():
        raise ValueError(f"{int((~out.x.isfinite()).sum())} sample values are NaN/inf (nothing scored); try more "
                         "--steps or another --solver")
    result = score(out.x, run.config, run.data, cache=cache, weights=weights, device=ctx.device)
    record = {"dataset": run.config.data.dataset, "checkpoint": str(run.path), "step": run.step, "seed": seed,
              "solver": sampler.solver, "steps": sampler.steps, "grid": sampler.grid_label,
              "options": {k: v for k, v in sampler.options.items() if k != "grid"}, "sampler": sampler.describe(),
              "nfe": out.nfe, "sampling_seconds": out.seconds}
    return Report(result, f"{sampler.describe()}, NFE {out.nfe:.0f}", record,
                  f"{sampler.label}_n{num}_step{run.step}_seed{seed}{tag}")


def score_file(path, config, *, cache: str | Path | None, weights: str | Path | None = None,
               device="cpu") -> Report:
    """Score the samples of an .npz (read_samples) as samples of config.data; needs no checkpoint. The record is
    from_<file stem>: scoring --mode sample's file never replaces score_run's record of the same samples."""
    x = read_samples(path)
    result = score(x, config, cache=cache, weights=weights, device=device)
    record = {"dataset": config.data.dataset, "samples": str(path)}
    return Report(result, f"from {path}", record, f"from_{Path(path).stem}")


class TrainingQuality:
    """The offline metric logged every training.fid_freq steps: FD-digits for digits, energy distance for vectors,
    FID for other images where torch-fidelity and the Inception weights are already here (training never
    downloads); config.metrics.num_samples_training samples of the EMA network with the snapshot sampler.

    Every evaluation uses the same per-sample seeds (config.seed), so the changes between steps are the model's,
    not the noise's.
    """

    def __init__(self, config, info: data_lib.DataInfo):
        self.config, self.info = config, info
        self.num = config.metrics.num_samples_training
        if not (isinstance(self.num, int) and self.num >= 10):
            raise ValueError(f"config.metrics.num_samples_training must be an int >= 10 (the statistics need a few "
                             f"samples), got {self.num!r}")
        self.weights = inception_weights(config)
        self.cache = cache_dir(config)

    @classmethod
    def from_config(cls, config, info: data_lib.DataInfo) -> "TrainingQuality | None":
        """The metric when training.fid_freq > 0 and it can be computed offline here; None (with a warning) else."""
        freq = config.training.get("fid_freq", 0)     # configs saved before the field existed have none
        if not (isinstance(freq, int) and freq >= 0):
            raise ValueError(f"config.training.fid_freq must be an int >= 0 (0: off), got {freq!r}")
        if freq == 0:
            return None
        quality = cls(config, info)
        if info.is_image and str(config.data.dataset).lower() != "digits":
            weights = Path(quality.weights) if quality.weights else fidelity.default_weights_path()
            if not (metrics.inception_available() and weights.is_file()):
                logging.warning("training.fid_freq: no FID during training, it needs torch-fidelity (pip install "
                                "'scoresde[metrics]') and the Inception weights at %s", weights)
                return None
        return quality

    @torch.no_grad()
    def __call__(self, network: torch.nn.Module, sde, sampler: solvers.Sampler, ctx) -> dict | None:
        """{metric: value} of the network's samples on rank 0 (None on the others, or when a sample is NaN/inf:
        early in training that says nothing about the metric, and the run goes on)."""
        c = self.config
        model = precision.autocast_network(network.eval(), c.precision, ctx.device)
        score_fn = models.get_score_fn(model, sde, c.model.parameterization)
        out = draw_samples(sde, score_fn, self.info, sampler, self.num, c.sampling.batch_size, c.seed, ctx,
                           progress=False)
        if out is None:
            return None
        if not out.x.isfinite().all():
            logging.warning("sample quality skipped: %d sample values are NaN/inf", int((~out.x.isfinite()).sum()))
            return None
        result = score(out.x, c, self.info, cache=self.cache, weights=self.weights, device=ctx.device)
        return {k: v for k, v in result.as_dict().items() if k not in ("kind", "num_samples")}
