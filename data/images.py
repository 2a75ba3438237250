"""Pillow helpers: grey/RGB conversion, resize of the shorter side and centre crop, to uint8 (C, H, W)."""
from __future__ import annotations

import numpy as np
from PIL import Image

MODES = {1: "L", 3: "RGB"}


def fit_image(image: Image.Image, image_size: int | None, num_channels: int) -> np.ndarray:
    """The image in num_channels, shorter side resized to image_size, centre-cropped: uint8 (C, S, S)."""
    image = image.convert(MODES[num_channels])
    if image_size is not None and image.size != (image_size, image_size):
        w, h = image.size
        scale = image_size / min(w, h)
        # max(.., image_size) guards the rounding of the longer side so the crop box always fits.
        size = (max(round(w * scale), image_size), max(round(h * scale), image_size))
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def fit_images(images: np.ndarray, image_size: int | None, num_channels: int | None) -> np.ndarray:
    """uint8 images (N, C, H, W), C in {1, 3}, fitted like `fit_image`; returned as they are when they already fit."""
    n, c, h, w = images.shape
    num_channels = num_channels or c
    if c == num_channels and (image_size is None or h == w == image_size):
        return np.ascontiguousarray(images)
    pil = [Image.fromarray(img[0] if c == 1 else img.transpose(1, 2, 0)) for img in images]
    out = [fit_image(img, image_size, num_channels) for img in pil]
    return np.stack(out) if out else np.zeros((0, num_channels, image_size or h, image_size or w), np.uint8)
