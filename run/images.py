"""Sample snapshots: a PNG grid for images, a scatter plot for 2-D data, an .npz of the raw samples."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scoresde.utils import UsageError, atomic_write


def image_grid(x: torch.Tensor, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Tile images (N, C, H, W) with values in [0, 1] into one uint8 array (H', W', C) or (H', W')."""
    if x.ndim != 4:
        raise UsageError(f"image_grid expects images of shape (N, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = np.ones((c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), dtype=np.float32)
    imgs = x.detach().float().clamp(0, 1).cpu().numpy()
    for i in range(n):
        r, q = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top:top + h, left:left + w] = imgs[i]
    grid = np.round(grid * 255).astype(np.uint8).transpose(1, 2, 0)
    return grid[:, :, 0] if c == 1 else grid


def save_image_grid(x: torch.Tensor, path, nrow: int | None = None, upscale: int | None = None) -> None:
    """Save images (N, C, H, W) in [0, 1] as a PNG grid; small images are upscaled so they can be seen."""
    grid = Image.fromarray(image_grid(x, nrow))
    scale = upscale or max(1, 256 // max(grid.size))
    if scale > 1:
        grid = grid.resize((grid.size[0] * scale, grid.size[1] * scale), Image.NEAREST)
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))


def save_scatter(x: torch.Tensor, path, reference: torch.Tensor | None = None, title: str | None = None) -> None:
    """Save a scatter plot of 2-D points (N, 2) as PNG, optionally over reference (data) points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x.ndim != 2 or x.shape[1] != 2:
        raise UsageError(f"save_scatter expects points of shape (N, 2), got {tuple(x.shape)}")
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if reference is not None:
        ref = reference.detach().cpu().numpy()
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.75", label="data")
    pts = x.detach().cpu().numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="C0", label="samples")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    if reference is not None:
        ax.legend(loc="upper right", markerscale=4)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    plt.close(fig)


def save_samples(x: torch.Tensor, path_png, is_image: bool, reference: torch.Tensor | None = None,
                 title: str | None = None) -> Path | None:
    """A picture of samples in data space: an image grid (images in [0, 1]) or a scatter plot (2-D vectors).

    Returns the path written, or None for data that have no picture (vectors of another dimension).
    """
    if is_image:
        save_image_grid(x, path_png)
    elif x.ndim == 2 and x.shape[1] == 2:
        save_scatter(x, path_png, reference=reference, title=title)
    else:
        return None
    return Path(path_png)


def save_npz(path, **arrays) -> None:
    """Save arrays as a compressed .npz atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write(path, write)
