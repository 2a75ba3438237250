"""An offline feature network for the bundled 8x8 digits: a small classifier whose penultimate features give
"FD-digits" (a Fréchet distance, as FID in Inception features) and whose softmax gives "IS-digits"."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("digits_classifier.pt")
FEATURES = 16


class DigitsClassifier(nn.Module):
    """64 pixels -> 32 (ReLU) -> 16 (tanh: bounded features whose covariance no single unit dominates) -> 10."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, FEATURES), nn.Tanh())
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def load_classifier(path: str | Path = WEIGHTS) -> DigitsClassifier:
    """The committed classifier (trained by benchmarks/train_digits_classifier.py), in eval mode."""
    model = DigitsClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


def digits_split(split: str) -> torch.Tensor:
    """The train or test images of the digits dataset in data space: float (N, 1, 8, 8), level k -> k / 16."""
    from sklearn.datasets import load_digits

    from scoresde.data.digits import N_BINS, N_TRAIN

    images = torch.from_numpy(load_digits().images.astype(np.float32))[:, None] / (N_BINS - 1)
    if split == "train":
        return images[:N_TRAIN]
    if split == "test":
        return images[N_TRAIN:]
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


@torch.no_grad()
def digits_features(images: torch.Tensor, model: DigitsClassifier | None = None,
                    batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features (N, 16), logits (N, 10)) in float64 for images (N, 1, 8, 8) in data space."""
    model = load_classifier() if model is None else model
    feats, logits = [], []
    for batch in torch.split(images.to(torch.float32), batch_size):
        f = model.features(batch)
        feats.append(f.double().numpy())
        logits.append(model.head(f).double().numpy())
    return np.concatenate(feats), np.concatenate(logits)
