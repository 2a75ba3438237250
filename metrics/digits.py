"""An offline feature network for the bundled 8x8 digits, behind FD-digits2, KID-digits2, precision/recall and
IS-digits2: a small convolutional classifier trained on the training split without noise augmentation, whose
features are the spatial means of all three convolutional layers. The first layer's edge and blob detectors see
pixel noise, blur and contrast as FID's Inception does; the last layer sees which digit it is (mode dropping).
metrics/response.py and benchmarks/digits_response.py measure how the metrics respond to each disturbance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from scoresde.utils import UsageError

WEIGHTS = Path(__file__).with_name("digits_features.pt")
CHANNELS = (16, 32, 64)
FEATURES = sum(CHANNELS)


class DigitsFeatureNet(nn.Module):
    """conv 3x3 (1 -> 16, 8x8) -> conv 3x3 stride 2 (-> 32, 4x4) -> conv 3x3 stride 2 (-> 64, 2x2), ReLU after
    each; the classifier is linear on the last layer's spatial mean.

    features(): each layer's spatial mean, centred on the training digits' mean and divided by the root of its
    total variance over them, so that each layer contributes the same spread (trace of covariance 1) to the 112
    features; unnormalised, the 64 last-layer units would outweigh the 16 first-layer ones that see noise. The
    centre and scales are buffers fitted once (calibrate) and saved with the weights.
    """

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(1, CHANNELS[0], 3, padding=1),
                                    nn.Conv2d(CHANNELS[0], CHANNELS[1], 3, padding=1, stride=2),
                                    nn.Conv2d(CHANNELS[1], CHANNELS[2], 3, padding=1, stride=2)])
        self.head = nn.Linear(CHANNELS[-1], 10)
        self.register_buffer("centre", torch.zeros(FEATURES))
        self.register_buffer("scale", torch.ones(len(CHANNELS)))

    def layer_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        means = []
        for conv in self.convs:
            x = F.relu(conv(x))
            means.append(x.mean(dim=(2, 3)))
        return means

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer_means(x)[-1])

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        means = self.layer_means(x)
        scale = torch.cat([s.expand(c) for s, c in zip(self.scale, CHANNELS)])
        return (torch.cat(means, dim=1) - self.centre) / scale, self.head(means[-1])

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor) -> None:
        """Fit the centre and the per-layer scales to `images` (the training digits)."""
        means = self.layer_means(images)
        self.centre.copy_(torch.cat([m.mean(0) for m in means]))
        self.scale.copy_(torch.stack([m.var(0).sum().sqrt() for m in means]))


def load_classifier(path: str | Path = WEIGHTS) -> DigitsFeatureNet:
    """The committed network (trained by benchmarks/train_digits_classifier.py), in eval mode."""
    model = DigitsFeatureNet()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


def digits_split(split: str) -> torch.Tensor:
    """The train or test images of the digits dataset in data space: float (N, 1, 8, 8), level k -> k / 16."""
    from sklearn.datasets import load_digits

    from scoresde.data.digits import N_BINS

    images = torch.from_numpy(load_digits().images.astype(np.float32))[:, None] / (N_BINS - 1)
    return images[_split_slice(split)]


def digits_labels(split: str) -> torch.Tensor:
    """The labels (0..9, int64) of digits_split(split)."""
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().target).long()[_split_slice(split)]


def _split_slice(split: str) -> slice:
    from scoresde.data.digits import N_TRAIN

    if split == "train":
        return slice(None, N_TRAIN)
    if split == "test":
        return slice(N_TRAIN, None)
    raise UsageError(f"split must be 'train' or 'test', got {split!r}")


@torch.no_grad()
def digits_features(images: torch.Tensor, model: DigitsFeatureNet | None = None,
                    batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 112), logits (N, 10)) in float64 for images (N, 1, 8, 8) in data space."""
    model = load_classifier() if model is None else model
    feats, logits = [], []
    for batch in torch.split(images.to(torch.float32), batch_size):
        f, z = model.features_and_logits(batch)
        feats.append(f.double().numpy())
        logits.append(z.double().numpy())
    return np.concatenate(feats), np.concatenate(logits)
