"""Reference statistics of a training set's features (mean, covariance, a pool for KID), computed once per
dataset, split, image shape and feature extractor, and cached on disk with what they were computed from."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np

from scoresde.utils import atomic_write

from .frechet import feature_statistics

FORMAT = 1
KID_POOL = 10_000  # features kept for KID: its subsets have 1000; all 50k of CIFAR-10 would be 400 MB


@dataclasses.dataclass
class ReferenceStats:
    mu: np.ndarray
    sigma: np.ndarray
    kid_features: np.ndarray
    meta: dict

    @classmethod
    def from_features(cls, features: np.ndarray, meta: dict, seed: int = 0) -> "ReferenceStats":
        mu, sigma = feature_statistics(features)
        keep = np.random.RandomState(seed).choice(len(features), min(KID_POOL, len(features)), replace=False)
        return cls(mu, sigma, np.asarray(features[np.sort(keep)], np.float32), {**meta, "count": len(features)})


def cache_path(cache_dir: str | Path, meta: dict) -> Path:
    shape = "x".join(str(s) for s in meta["shape"])
    return Path(cache_dir) / f"{meta['dataset']}-{meta['split']}-{shape}-{meta['extractor']}.npz"


def save(path: Path, stats: ReferenceStats) -> None:
    """Write atomically (a temporary file renamed over `path`): a reader never sees half a file, and two processes
    computing the same statistics at once leave one whole file."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, mu=stats.mu, sigma=stats.sigma, kid_features=stats.kid_features,
                     meta=np.array(json.dumps({**stats.meta, "format": FORMAT})))
    atomic_write(path, write)


def load(path: Path) -> ReferenceStats:
    with np.load(path, allow_pickle=False) as z:
        return ReferenceStats(z["mu"], z["sigma"], z["kid_features"], json.loads(str(z["meta"])))


def _matches(stored: dict, wanted: dict) -> bool:
    return stored.get("format") == FORMAT and all(stored.get(k) == v for k, v in wanted.items())


def reference_stats(meta: dict, features: Callable[[], np.ndarray], cache_dir: str | Path | None) -> ReferenceStats:
    """The cached statistics for `meta` (dataset, split, shape, extractor) if present, else computed from
    `features()` (called only then) and cached; cache_dir None computes without caching."""
    meta = {**meta, "shape": list(meta["shape"])}
    if cache_dir is not None:
        path = cache_path(cache_dir, meta)
        if path.is_file():
            stats = load(path)
            if _matches(stats.meta, meta):
                return stats
    stats = ReferenceStats.from_features(features(), meta)
    if cache_dir is not None:
        save(path, stats)
    return stats
