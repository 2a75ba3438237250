"""A residual MLP score network for vector data x of shape (N, dim) (the 2-D and tabular configs)."""
from __future__ import annotations

import torch
from torch import nn

from .embeddings import EMBEDDINGS, LabelEmbedding, check_no_labels, make_activation, make_embedding
from scoresde.utils import UsageError


class MLP(nn.Module):
    """out = W_out act(h_depth), h_{k+1} = h_k + W_k act(h_k + emb(noise_input, y)), h_1 = W_in x.

    The output has out_dim entries (default dim, a score or eps; the number of classes for a noisy classifier's
    logits); num_classes makes the network conditional on class labels y. noise_input says what it is fed as
    its noise level: t for sinusoidal embeddings, log sigma for Fourier features (models.Precond reads it).
    """

    def __init__(self, dim: int, width: int = 128, depth: int = 3, activation: str = "silu",
                 embedding: str = "sinusoidal", num_classes: int | None = None, embedding_scale: float | None = None,
                 out_dim: int | None = None):
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        for name, value in (("dim", dim), ("width", width), ("depth", depth), ("out_dim", out_dim)):
            if not (isinstance(value, int) and value > 0):
                raise UsageError(f"MLP {name} must be a positive int, got {value!r}")
        self.dim, self.embedding, self.num_classes = dim, embedding, num_classes
        self.noise_input = EMBEDDINGS[embedding].noise_input
        self.act = make_activation(activation)
        self.noise_embed = nn.Sequential(make_embedding(embedding, width, embedding_scale),
                                         nn.Linear(width, width), make_activation(activation), nn.Linear(width, width))
        self.label_embed = LabelEmbedding(num_classes, width) if num_classes is not None else None
        self.inp = nn.Linear(dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, out_dim)
        # Zero output: the untrained network predicts 0 (eps-prediction starts at the prior-free guess).
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, noise_input: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise UsageError(f"MLP(dim={self.dim}) expects x of shape (N, {self.dim}), got {tuple(x.shape)}")
        check_no_labels(y, self.num_classes)
        emb = self.noise_embed(noise_input.to(x.dtype).expand(x.shape[0])).to(x.dtype)
        if self.label_embed is not None:
            emb = emb + self.label_embed(y, x.shape[0], x.device).to(x.dtype)
        h = self.inp(x)
        for layer in self.hidden:
            h = h + layer(self.act(h + emb))
        return self.out(self.act(h + emb))
