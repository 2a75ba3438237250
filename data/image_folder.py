"""A folder of images (labels from sub-folder names, if any), resized and centre-cropped with Pillow, held as uint8."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .core import DataInfo, NO_LABEL, discrete_info, holdout_split
from .images import fit_image
from scoresde.utils import MissingFileError, UsageError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def find_images(root: str) -> tuple[list[str], list[int], list[str]]:
    """(paths, labels, classes): images directly in root are unlabelled; images under root/<class>/... get its index."""
    if not os.path.isdir(root):
        raise MissingFileError(f"image_folder: {root!r} is not a directory; set config.data.path to a folder of "
                                f"images (optionally one sub-folder per class)")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    loose = [e.path for e in entries if e.is_file() and e.name.lower().endswith(EXTENSIONS)]
    classes, paths, labels = [], [], []
    for entry in entries:
        if entry.is_dir():
            found = _walk(entry.path)
            if found:
                labels += [len(classes)] * len(found)
                classes.append(entry.name)
                paths += found
    if loose and classes:
        raise UsageError(f"image_folder: {root} has both images and class sub-folders ({', '.join(classes)}); "
                         f"move the loose images into a sub-folder, or keep only loose images for unlabelled data")
    if not loose and not classes:
        raise MissingFileError(f"image_folder: no images ({', '.join(EXTENSIONS)}) in {root}")
    return (loose, [NO_LABEL] * len(loose), []) if loose else (paths, labels, classes)


def load_image_folder(options) -> DataInfo:
    """DataInfo for the images under config.data.path: 256 levels, num_channels (default 3), image_size required."""
    if options.path is None:
        raise UsageError("image_folder needs config.data.path: a directory of images (sub-folders = classes)")
    if options.image_size is None:
        raise UsageError("image_folder needs config.data.image_size: images are resized (shorter side) and "
                         "centre-cropped to image_size x image_size")
    paths, labels, classes = find_images(options.path)
    channels = options.num_channels or 3
    images = torch.from_numpy(np.stack([_read(p, options.image_size, channels) for p in paths]))
    labels = torch.tensor(labels, dtype=torch.int64)
    train, test = holdout_split(len(paths), options.test_fraction)
    info = discrete_info("image_folder", images[train], labels[train], images[test], labels[test], 256,
                         len(classes) or None, options)
    info.classes = classes
    return info


def _walk(folder: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(EXTENSIONS)]
    return found


def _read(path: str, image_size: int, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return fit_image(image, image_size, channels)
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"image_folder: cannot read {path} as an image ({e}); remove or replace it") from e
