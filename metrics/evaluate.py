"""`evaluate(samples, dataset, ...)`: sample quality as papers report it, for the dataset the samples imitate."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import fidelity
from . import reference as reference_cache
from .digits import digits_features, digits_split, load_classifier
from .frechet import feature_statistics, frechet_distance
from .inception_score import inception_score, softmax_probs
from .kid import kid
from .manifold import precision_recall
from .vectors import energy_distance, sliced_wasserstein
from scoresde.utils import UsageError


@dataclasses.dataclass
class EvalResult:
    """Metrics of one set of samples; which fields are set depends on `kind` ("inception", "digits", "vectors")."""

    kind: str
    num_samples: int
    fid: float | None = None
    kid: float | None = None
    kid_std: float | None = None
    is_mean: float | None = None
    is_std: float | None = None
    fd_digits2: float | None = None
    kid_digits2: float | None = None
    kid_digits2_std: float | None = None
    precision: float | None = None
    recall: float | None = None
    is_digits2: float | None = None
    is_digits2_std: float | None = None
    energy: float | None = None
    sliced_w2: float | None = None

    def format(self) -> str:
        if self.kind == "inception":
            return (f"FID {self.fid:.2f} | KID {self.kid:.4f} ± {self.kid_std:.4f} | "
                    f"IS {self.is_mean:.2f} ± {self.is_std:.2f}")
        if self.kind == "digits":
            return (f"FD-digits2 {self.fd_digits2:.3f} | KID-digits2 {self.kid_digits2:.4f} ± "
                    f"{self.kid_digits2_std:.4f} | precision {self.precision:.3f} | recall {self.recall:.3f} | "
                    f"IS-digits2 {self.is_digits2:.2f} ± {self.is_digits2_std:.2f}")
        return f"ED {self.energy:.4f} | SW2 {self.sliced_w2:.4f}"

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


Reference = torch.Tensor | np.ndarray | Callable[[], torch.Tensor]


def evaluate(samples, dataset: str, image_size: int | None = None, num_channels: int | None = None, *,
             reference: Reference | None = None, reference_split: str = "train",
             cache_dir: str | Path | None = None, inception_weights: str | Path | None = None,
             device: str | torch.device = "cpu", batch_size: int = 200, kid_subsets: int = 100,
             kid_subset_size: int = 1000, is_splits: int = 10, seed: int = 2020) -> EvalResult:
    """Score data-space samples of `dataset` against its reference data.

    - "digits": in the bundled feature network (metrics.digits; reference: the train split unless given), the
      Fréchet distance FD-digits2, its small-n companion KID-digits2 (unbiased at any n), precision and recall
      (Kynkäänniemi et al. 2019, k = 3) on equal-size random subsets of both sets (min of the two sizes: the
      k-NN radii depend on n, and the paper compares sets of one size), and IS-digits2 of its softmax;
    - other images (N, C, H, W) in [0, 1]: FID, KID and IS in torch-fidelity's Inception (the `metrics` extra).
      The reference statistics are read from cache_dir when cached for this dataset, split, shape and weights;
      otherwise `reference` (images in data space, or a function returning them, called only then) gives them,
      and they are cached there;
    - vectors (N, D), e.g. the 2-D toys: energy distance and sliced Wasserstein-2 against `reference`, which
      should be held-out data.
    seed fixes the KID subsets, the precision/recall subsets and the IS shuffle (2020, torch-fidelity's default).
    """
    x = _as_tensor(samples, "samples")
    dataset = dataset.lower()
    _check_samples(x, image_size, num_channels, is_splits)
    if dataset == "digits":
        return _score_digits(x, reference, reference_split, is_splits, kid_subsets, kid_subset_size, seed)
    if x.ndim == 2:
        return _score_vectors(x, dataset, reference)
    return _score_inception(x, dataset, reference, reference_split, cache_dir, inception_weights, device, batch_size,
                            kid_subsets, kid_subset_size, is_splits, seed)


def _check_samples(x: torch.Tensor, image_size: int | None, num_channels: int | None, is_splits: int) -> None:
    """Refuse samples that are neither images of the given size nor vectors, or too few for the statistics."""
    if x.ndim == 4:
        expected = (num_channels, image_size, image_size)
        for got, want, what in zip(x.shape[1:], expected, ("channels", "height", "width")):
            if want is not None and got != want:
                raise UsageError(f"samples have {got} {what}, expected {want} (shape {tuple(x.shape)})")
        if x.shape[1] not in (1, 3):
            raise UsageError(f"images need 1 or 3 channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    elif x.ndim != 2:
        raise UsageError(f"samples must be images (N, C, H, W) or vectors (N, D), got shape {tuple(x.shape)}")
    if len(x) < 2:
        raise UsageError(f"the statistics need at least 2 samples, got {len(x)}")
    if x.ndim == 4 and len(x) < is_splits:
        raise UsageError(f"the Inception Score with {is_splits} splits needs at least {is_splits} samples, "
                         f"got {len(x)}")


def _score_digits(x: torch.Tensor, reference: Reference | None, reference_split: str, is_splits: int,
                  kid_subsets: int, kid_subset_size: int, seed: int) -> EvalResult:
    """FD-digits2, KID-digits2, precision/recall (Kynkaenniemi et al. 2019, equal-size sets) and IS-digits2 of
    digits samples (N, 1, 8, 8) in the bundled feature network."""
    if tuple(x.shape[1:]) != (1, 8, 8):
        raise UsageError(f"digits samples are (N, 1, 8, 8), got shape {tuple(x.shape)}")
    ref = digits_split(reference_split) if reference is None else _as_tensor(_call(reference), "reference")
    model = load_classifier()
    ref_feats, _ = digits_features(ref, model)
    feats, logits = digits_features(x.clamp(0.0, 1.0), model)
    is_mean, is_std = inception_score(softmax_probs(logits), is_splits, seed)
    kid_mean, kid_std = kid(feats, ref_feats, kid_subsets, kid_subset_size, seed)
    m = min(len(feats), len(ref_feats))
    rng = np.random.RandomState(seed)
    prec, rec = precision_recall(ref_feats[np.sort(rng.choice(len(ref_feats), m, replace=False))],
                                 feats[np.sort(rng.choice(len(feats), m, replace=False))])
    return EvalResult("digits", len(x), fd_digits2=frechet_distance(*feature_statistics(feats),
                                                                    *feature_statistics(ref_feats)),
                      kid_digits2=kid_mean, kid_digits2_std=kid_std, precision=prec, recall=rec,
                      is_digits2=is_mean, is_digits2_std=is_std)


def _score_vectors(x: torch.Tensor, dataset: str, reference: Reference | None) -> EvalResult:
    """Energy distance and sliced Wasserstein-2 of vector samples (N, D) against held-out `reference` data."""
    if reference is None:
        raise UsageError(f"vector samples of {dataset!r} are scored against held-out data: pass reference=")
    ref = _as_tensor(_call(reference), "reference")
    return EvalResult("vectors", len(x), energy=energy_distance(x, ref), sliced_w2=sliced_wasserstein(x, ref))


def _score_inception(x: torch.Tensor, dataset: str, reference: Reference | None, reference_split: str,
                     cache_dir: str | Path | None, inception_weights: str | Path | None, device: str | torch.device,
                     batch_size: int, kid_subsets: int, kid_subset_size: int, is_splits: int, seed: int) -> EvalResult:
    """FID, KID and IS of images (N, C, H, W) in torch-fidelity's Inception, against the cached or computed
    reference statistics."""
    model = fidelity.load_inception(inception_weights, device)
    meta = {"dataset": dataset, "split": reference_split, "shape": list(x.shape[1:]),
            "extractor": f"{fidelity.EXTRACTOR}-{fidelity.weights_tag(inception_weights)}"}

    def reference_features() -> np.ndarray:
        if reference is None:
            where = f"in {cache_dir}" if cache_dir is not None else "(no cache_dir given)"
            raise UsageError(f"no cached reference statistics for {dataset} {reference_split} at shape "
                             f"{tuple(x.shape[1:])} {where}: pass reference= the {reference_split} images")
        ref = _as_tensor(_call(reference), "reference")
        if tuple(ref.shape[1:]) != tuple(x.shape[1:]):
            raise UsageError(f"reference images have shape {tuple(ref.shape[1:])}, samples {tuple(x.shape[1:])}")
        return fidelity.inception_features(ref, model, batch_size, device)[0]

    stats = reference_cache.reference_stats(meta, reference_features, cache_dir)
    feats, logits = fidelity.inception_features(x, model, batch_size, device)
    kid_mean, kid_std = kid(feats, stats.kid_features, kid_subsets, kid_subset_size, seed)
    is_mean, is_std = inception_score(softmax_probs(logits), is_splits, seed)
    return EvalResult("inception", len(x), fid=frechet_distance(*feature_statistics(feats), stats.mu, stats.sigma),
                      kid=kid_mean, kid_std=kid_std, is_mean=is_mean, is_std=is_std)


def _call(reference: Reference):
    return reference() if callable(reference) else reference


def _as_tensor(a, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).detach().cpu()
    if not t.dtype.is_floating_point:
        raise UsageError(f"{what} must be floats in data space ([0, 1] for images), got dtype {t.dtype}")
    if not torch.isfinite(t).all():
        raise UsageError(f"{what} contain {int((~torch.isfinite(t)).sum())} NaN or infinite values")
    return t
