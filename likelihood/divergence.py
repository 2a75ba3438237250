"""Divergence of a network output with respect to its input: exact, or Hutchinson-Skilling estimates.

Every estimator takes an output y = h(x) still attached to its graph, so the forward pass that produced
y (and the drift built from it) is reused: the cost is one vector-Jacobian product per probe.
"""
from __future__ import annotations

from typing import Callable

import torch

from scoresde.utils import Registry

Tensor = torch.Tensor


def exact_divergence(y: Tensor, x: Tensor, probes: Tensor | None = None) -> Tensor:
    """div h(x) = sum_i d y_i / d x_i per sample, by D vector-Jacobian products (right for small D)."""
    y_flat = y.reshape(y.shape[0], -1)
    d = y_flat.shape[1]
    div = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
    for i in range(d):
        grad, = torch.autograd.grad(y_flat[:, i].sum(), x, retain_graph=i < d - 1)
        div = div + grad.reshape(x.shape[0], -1)[:, i].to(torch.float64)
    return div


def hutchinson_divergence(y: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """div h(x) ~ mean_k v_k^T (dh/dx) v_k over probes v_k of shape (K, *x.shape) with E[v v^T] = I."""
    n_probes = probes.shape[0]
    total = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
    for k, v in enumerate(probes):
        vjp, = torch.autograd.grad(y, x, grad_outputs=v.to(y.dtype), retain_graph=k < n_probes - 1)
        total = total + (vjp * v).reshape(x.shape[0], -1).sum(1).to(torch.float64)
    return total / n_probes


def rademacher_probes(n_probes: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """n_probes vectors shaped like `like` with independent entries +-1."""
    bits = torch.randint(0, 2, (n_probes, *like.shape), generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def gaussian_probes(n_probes: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """n_probes vectors shaped like `like` with independent N(0, 1) entries."""
    return torch.randn((n_probes, *like.shape), generator=generator, device=like.device, dtype=like.dtype)


class Divergence:
    """An estimator: `probes` draws the (fixed along the trajectory) probe vectors, `estimate` applies them."""

    def __init__(self, estimate: Callable, probes: Callable | None):
        self.estimate = estimate
        self.probes = probes


DIVERGENCES: Registry[Divergence] = Registry("divergence", {
    "exact": Divergence(exact_divergence, None),
    "rademacher": Divergence(hutchinson_divergence, rademacher_probes),
    "gaussian": Divergence(hutchinson_divergence, gaussian_probes),
})
