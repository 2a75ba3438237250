"""Response curves of an image metric (in the manner of Heusel et al. 2017, Fig. 1 and A1): held-out images under
disturbances of growing strength, each scored against the same reference at the same set size, so that a metric
can be checked to grow with every disturbance before it is trusted to rank samplers.

Every disturbance maps a batch of data-space images (N, C, H, W) in [0, 1] to another of the same size N; the
random ones draw from the torch.Generator they are given.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F


def gaussian_noise(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """x + σ z, clipped to [0, 1] as a sampler's output is."""
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0.0, 1.0)


def salt_and_pepper(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Each pixel, with probability p, set to 0 or 1 (even odds)."""
    hit = torch.rand(x.shape, generator=gen) < p
    salt = (torch.rand(x.shape, generator=gen) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


def gaussian_blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of sd sigma_px pixels, truncated at 3 sd; zero padding, as the digits' background is
    0, so the blur neither adds nor removes ink at the border."""
    if sigma_px <= 0:
        return x.clone()
    radius = max(1, math.ceil(3 * sigma_px))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma_px ** 2))
    k = k / k.sum()
    c = x.shape[1]
    rows = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), padding=(0, radius), groups=c)
    return F.conv2d(rows, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), padding=(radius, 0), groups=c)


def swirl(x: torch.Tensor, strength: float, radius: float | None = None) -> torch.Tensor:
    """scikit-image's swirl about the image centre: the pixel at polar (r, θ) is read from angle
    θ + strength exp(-r / ρ), ρ = ln 2 · radius / 5, radius the half-width by default; bilinear, zero outside."""
    n, _, h, w = x.shape
    radius = (min(h, w) / 2) if radius is None else radius
    rho = math.log(2) * radius / 5
    yy, xx = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    dy, dx = yy - cy, xx - cx
    r = torch.sqrt(dx ** 2 + dy ** 2)
    theta = torch.atan2(dy, dx) + strength * torch.exp(-r / rho)
    sx, sy = cx + r * torch.cos(theta), cy + r * torch.sin(theta)
    # grid_sample's normalised coordinates with align_corners=True: -1 and 1 are the centres of the edge pixels.
    grid = torch.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], dim=-1).expand(n, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Each image's deviations from its own mean scaled by `factor` (< 1 lowers contrast, the mean ink stays)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + factor * (x - mean)).clamp(0.0, 1.0)


def drop_classes(x: torch.Tensor, labels: torch.Tensor, kept: int, gen: torch.Generator) -> torch.Tensor:
    """Only classes 0..kept-1 left: every image of another class replaced by a random image of a kept class (with
    replacement), so the set keeps its size and, with all classes kept, is x itself."""
    keep = labels < kept
    pool = torch.nonzero(keep).squeeze(1)
    out = x.clone()
    out[~keep] = x[pool[torch.randint(len(pool), (int((~keep).sum()),), generator=gen)]]
    return out


def collapse(x: torch.Tensor, distinct: int, gen: torch.Generator) -> torch.Tensor:
    """Mode collapse: `distinct` random images of x, repeated (in turn) to fill a set of len(x)."""
    chosen = torch.randperm(len(x), generator=gen)[:distinct]
    return x[chosen[torch.arange(len(x)) % distinct]]


def memorise(x: torch.Tensor, train: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """A fraction of x replaced by distinct random training images: samples that copy the training set."""
    n = round(fraction * len(x))
    out = x.clone()
    out[torch.randperm(len(x), generator=gen)[:n]] = train[torch.randperm(len(train), generator=gen)[:n]]
    return out


def posterior_mean(x: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    """Over-smoothing as a sampler's long last step makes it: each image noised to x + σ z and replaced by the
    posterior mean E[x' | x + σ z] under the empirical law of the set x (a softmax-weighted average of its
    images). σ → 0 returns x; growing σ averages ever more images, as a first-order step from noise level σ does."""
    flat = x.reshape(len(x), -1).double()
    noisy = flat + noise * torch.randn(flat.shape, generator=gen, dtype=flat.dtype)
    logits = -torch.cdist(noisy, flat) ** 2 / (2 * noise ** 2)
    return (torch.softmax(logits, dim=1) @ flat).to(x.dtype).reshape(x.shape)


@dataclasses.dataclass
class Point:
    """One disturbed set's metrics (metrics.evaluate's digits fields)."""

    curve: str
    strength: float
    fd: float
    kid: float
    kid_std: float
    precision: float
    recall: float


# (curve, what its strength is, strengths in increasing order of disturbance, the disturbance). The first
# Gaussian-blur strength is the 0.5 px of an over-smoothing sampler; swirl uses radius 8 px (the image width), as
# the default half-width leaves only the four centre pixels turned.
def _digits_curves(train: torch.Tensor, labels: torch.Tensor):
    return [
        ("Gaussian noise", "σ", (0.02, 0.05, 0.1, 0.25, 0.5), lambda x, s, g: gaussian_noise(x, s, g)),
        ("salt and pepper", "p", (0.01, 0.03, 0.1), lambda x, s, g: salt_and_pepper(x, s, g)),
        ("Gaussian blur", "px", (0.5, 0.75, 1.0), lambda x, s, g: gaussian_blur(x, s)),
        ("posterior mean", "σ", (0.5, 1.0, 2.0, 4.0), lambda x, s, g: posterior_mean(x, s, g)),
        ("swirl", "strength", (0.5, 1.0, 2.0, 4.0), lambda x, s, g: swirl(x, s, radius=8.0)),
        ("contrast", "1 - factor", (0.1, 0.25, 0.5, 0.75), lambda x, s, g: contrast(x, 1.0 - s)),
        ("mode dropping", "classes dropped", (2, 5, 8, 9), lambda x, s, g: drop_classes(x, labels, 10 - s, g)),
        ("mode collapse", "1 / distinct", (1 / 99, 1 / 33, 1 / 11, 1 / 3),
         lambda x, s, g: collapse(x, round(1 / s), g)),
        ("memorisation", "fraction", (0.25, 0.5, 1.0), lambda x, s, g: memorise(x, train, s, g)),
    ]


def digits_response(seed: int = 0) -> tuple[Point, list[Point]]:
    """(the held-out baseline, every disturbed point) of the digits metrics: each set is the 297 test digits,
    disturbed, scored by metrics.evaluate against the 1500 training digits, so every point has the same n on
    both sides as the baseline. Each random disturbance draws from torch.Generator(seed)."""
    from .digits import digits_labels, digits_split
    from .evaluate import evaluate

    def point(curve, strength, x):
        r = evaluate(x, "digits", 8, 1)
        return Point(curve, strength, r.fd_digits2, r.kid_digits2, r.kid_digits2_std, r.precision, r.recall)

    test, train = digits_split("test"), digits_split("train")
    points = []
    for curve, _, strengths, disturb in _digits_curves(train, digits_labels("test")):
        for s in strengths:
            points.append(point(curve, s, disturb(test, s, torch.Generator().manual_seed(seed))))
    return point("none", 0.0, test), points


def curve_units() -> dict[str, str]:
    """{curve: what its strength is}, in the order digits_response returns the curves."""
    return {curve: unit for curve, unit, _, _ in _digits_curves(torch.zeros(0), torch.zeros(0))}
