"""The Inception path of FID / KID / IS: torch-fidelity's InceptionV3, a port of the TF graph (pt_inception-2015-12-05)
that papers' FID numbers come from, used only as a feature extractor (the metric math is ours).

torch-fidelity is the optional extra `metrics` and is imported on first use: `import torch_fidelity` imports
torchvision, which must be a build matching the installed torch (PyPI's torchvision beside a CPU-only torch fails
with "operator torchvision::nms does not exist").
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from scoresde.utils import MissingDependencyError, MissingFileError, UsageError

EXTRACTOR = "inception-v3-compat"
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
DEFAULT_WEIGHTS_TAG = "pt_inception-2015-12-05-6726825d"  # torch hub names files by their sha256 prefix
FEATURES, LOGITS = "2048", "logits_unbiased"  # torch-fidelity's layers for FID/KID and for IS


def _extractor_class():
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except (ImportError, RuntimeError, OSError) as e:  # RuntimeError/OSError: a torchvision built for another torch
        raise MissingDependencyError(f"FID, KID and IS need torch-fidelity with a torchvision built for torch "
                          f"{torch.__version__}: pip install 'scoresde[metrics]' ({type(e).__name__}: {e})") from e
    return FeatureExtractorInceptionV3


def is_available() -> bool:
    """Whether torch-fidelity (and a working torchvision) can be imported here."""
    try:
        _extractor_class()
    except ImportError:
        return False
    return True


def default_weights_path() -> Path:
    """Where torch hub keeps (and first looks for) the downloaded Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def weights_tag(weights: str | Path | None) -> str:
    """Which weights a feature came from, for the reference cache: the official file has one tag, however reached."""
    if weights is None:
        return DEFAULT_WEIGHTS_TAG
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    return DEFAULT_WEIGHTS_TAG if digest.startswith("6726825d") else f"sha256-{digest[:16]}"


def load_inception(weights: str | Path | None = None, device: str | torch.device = "cpu"):
    """torch-fidelity's InceptionV3 giving (2048-d pool features, unbiased logits), on `device`, in eval mode.

    weights=None downloads the official file once into torch hub's cache (or uses it if already there);
    a path loads that file, for machines without internet.
    """
    cls = _extractor_class()
    if weights is not None:
        if not Path(weights).is_file():
            raise MissingFileError(f"no Inception weights at {weights}: get {WEIGHTS_FILE} from torch-fidelity's "
                                    f"releases and pass its path as inception_weights")
        model = cls(EXTRACTOR, [FEATURES, LOGITS], feature_extractor_weights_path=str(weights))
    else:
        try:
            model = cls(EXTRACTOR, [FEATURES, LOGITS])
        except OSError as e:  # urllib's URLError and HTTPError are OSErrors
            raise RuntimeError(f"could not download the Inception weights ({e}): put {WEIGHTS_FILE} at "
                               f"{default_weights_path()} or pass inception_weights=PATH") from None
    return model.to(device).eval()


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Data-space images (N, C, H, W) in [0, 1] -> uint8 RGB as torch-fidelity expects: clamped (samplers overshoot
    [0, 1] slightly), rounded to the nearest of 256 levels, grey repeated to 3 channels. The network itself resizes
    to 299 x 299 with TF1's bilinear rule, so no resize happens here."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UsageError(f"images must be (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    levels = (images.to(torch.float32).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return levels.expand(-1, 3, -1, -1) if levels.shape[1] == 1 else levels


@torch.no_grad()
def inception_features(images: torch.Tensor, model, batch_size: int = 200,
                       device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(pool features (N, 2048), logits (N, 1008)) in float64 for data-space images (N, C, H, W)."""
    feats, logits = [], []
    for batch in torch.split(images, batch_size):
        pool, logit = model(to_uint8_rgb(batch).to(device))
        feats.append(pool.cpu().double().numpy())
        logits.append(logit.cpu().double().numpy())
    return np.concatenate(feats), np.concatenate(logits)
