"""Noise-level embeddings: sinusoidal features of t (VP-type) and Gaussian Fourier features of log sigma (VE-type)."""
from __future__ import annotations

import math

import torch
from torch import nn

from scoresde.utils import Registry, UsageError


class SinusoidalEmbedding(nn.Module):
    """emb(s) = [sin(scale s w_k), cos(scale s w_k)], w_k = 10000^(-k/(dim/2 - freq_shift)), k < dim/2.

    The transformer/DDPM positional code; scale=1000 maps t in [0, 1] onto the range of DDPM's discrete indices.
    score_sde_pytorch's DDPM++ cont. uses scale 999 and freq_shift 1 (registered as "positional"): its networks
    are only right with exactly that embedding.
    """

    noise_input = "t"   # what a network with this embedding is fed (models.NOISE_INPUTS)

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0, freq_shift: int = 0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise UsageError(f"embedding dim must be a positive even number, got {dim}")
        half = dim // 2
        if half - freq_shift <= 0:
            raise UsageError(f"embedding dim {dim} is too small for freq_shift={freq_shift}")
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - freq_shift))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = float(scale)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        arg = self.scale * s.float()[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class GaussianFourierEmbedding(nn.Module):
    """emb(s) = [sin(2 pi s W), cos(2 pi s W)], W ~ N(0, scale^2) fixed at construction (NCSN++ with s = log sigma)."""

    noise_input = "log_sigma"

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise UsageError(f"embedding dim must be a positive even number, got {dim}")
        # A fixed seed makes two networks built from the same config share their (untrained) frequencies.
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("W", torch.randn(dim // 2, generator=gen) * scale)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        arg = 2 * math.pi * s.float()[:, None] * self.W[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class PositionalEmbedding(SinusoidalEmbedding):
    """score_sde_pytorch's sinusoidal embedding of t: SinusoidalEmbedding(scale=999, freq_shift=1)."""

    def __init__(self, dim: int, scale: float = 999.0):
        super().__init__(dim, scale=scale, freq_shift=1)


EMBEDDINGS: Registry[type[nn.Module]] = Registry("embedding", {
    "sinusoidal": SinusoidalEmbedding,
    "positional": PositionalEmbedding,
    "fourier": GaussianFourierEmbedding,
})

ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation", {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
})


def make_embedding(name: str, dim: int, scale: float | None = None) -> nn.Module:
    """The noise-level embedding registered under `name` ("sinusoidal", "positional" or "fourier"), with its default
    scale if None; its output has `dim` features (a Fourier embedding has dim/2 frequencies)."""
    cls = EMBEDDINGS[name]
    return cls(dim) if scale is None else cls(dim, scale=scale)


def make_activation(name: str) -> nn.Module:
    """The activation module registered under `name`."""
    return ACTIVATIONS[name]()


class LabelEmbedding(nn.Module):
    """Learned class embeddings with one extra row: label `num_classes` is the null label (classifier-free guidance)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes > 0):
            raise UsageError(f"num_classes must be a positive int or None, got {num_classes!r}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor | None, n: int, device) -> torch.Tensor:
        if y is None:
            y = torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        elif y.shape != (n,):
            raise UsageError(f"class labels y must have shape ({n},), got {tuple(y.shape)}")
        return self.table(y.long())


def check_no_labels(y, num_classes) -> None:
    """Raise if labels are passed to a network built without num_classes."""
    if y is not None and num_classes is None:
        raise UsageError("class labels were given but the network was built with num_classes=None; "
                         "build it with num_classes=<number of classes>")
