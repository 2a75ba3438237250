"""Scoring a run's samples as papers report them: against the training data's reference statistics
(metrics.evaluate), with the statistics cached per dataset."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from scoresde import data as data_lib
from scoresde import metrics
from scoresde.utils import UsageError

# Datasets whose name fixes the training set: their statistics are cached under that name, and the data are read
# only when the cache misses. User data (an array, an image folder) are keyed by a digest of their contents.
NAMED = ("mnist", "cifar10")


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
        raise UsageError(f"no reference statistics for dataset {config.data.dataset!r}: they are computed from its "
                         f"training data, which could not be read ({e})") from None


def data_of(config) -> data_lib.DataInfo | None:
    """The DataInfo that score() reads for config.data, or None for the datasets it scores without their data
    (the digits' own classifier, the cached statistics of a NAMED dataset); their samples are images in [0, 1]."""
    name = str(config.data.dataset).lower()
    return None if name in NAMED or name == "digits" else _load_data(config)


def _train_images(config) -> torch.Tensor:
    info = _load_data(config)
    return data_space(info.train, info.n_bins)


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:12]


def score(x: torch.Tensor, config, info: data_lib.DataInfo | None = None, *, cache: str | Path | None = None,
          weights: str | Path | None = None, device="cpu", batch_size: int = 200) -> metrics.EvalResult:
    """Data-space samples x of the data config.data describes, scored as papers do.

    digits: FD-digits2, KID-digits2, precision/recall and IS-digits2 against the 1500 training digits; vectors
    (2-D toys, float arrays): energy distance and sliced W2 to the held-out split (the training points are what the
    model fitted); other images:
    FID / KID / IS against the training split's Inception statistics, cached in `cache` (None: not cached).
    info: the loaded DataInfo, if any; otherwise the data are loaded only where needed.
    """
    name = str(config.data.dataset).lower()
    if name == "digits":
        return metrics.evaluate(x, "digits", 8, 1)
    if name not in NAMED and info is None:
        info = _load_data(config)
    if info is not None and tuple(x.shape[1:]) != tuple(info.shape):
        raise UsageError(f"samples have shape {tuple(x.shape)}, but the {name} data are (N, "
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
        raise UsageError(str(e)) from None
