"""Class labels for a batch: one label for every sample, or a list cycled over the batch."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from scoresde.utils import UsageError

Tensor = torch.Tensor


def check_labels(labels, num_classes: int | None) -> None:
    """Raise ValueError unless every label is an int in [0, num_classes)."""
    values = batch_labels(labels, 1 if isinstance(labels, int) else len(labels), "cpu").tolist()
    if not num_classes:
        raise UsageError("class labels need a model trained with labels (config.model.conditional=True on a "
                         "dataset with classes)")
    bad = [v for v in values if not 0 <= v < num_classes]
    if bad:
        raise UsageError(f"class label(s) {bad} out of range; this model has classes 0..{num_classes - 1}")


def batch_labels(labels, n: int, device) -> Tensor:
    """Labels (n,) as int64: an int is repeated, a sequence or 1-D tensor is cycled (sample i gets labels[i % len])."""
    if isinstance(labels, bool):
        raise TypeError("class labels must be ints, got a bool")
    if isinstance(labels, int):
        return torch.full((n,), labels, dtype=torch.long, device=device)
    if isinstance(labels, Tensor):
        if labels.ndim > 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"class labels must be an int or a 1-D integer tensor, got {labels.dtype} of shape "
                            f"{tuple(labels.shape)}")
        labels = labels.reshape(-1)
    elif isinstance(labels, Sequence) and not isinstance(labels, str):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
            raise TypeError(f"class labels must be ints, got {list(labels)!r}")
        labels = torch.tensor(list(labels), dtype=torch.long)
    else:
        raise TypeError(f"class labels must be an int, a list of ints or an integer tensor, "
                        f"got {type(labels).__name__}")
    if labels.numel() == 0:
        raise UsageError("the list of class labels is empty; give at least one label")
    labels = labels.to(device=device, dtype=torch.long)
    return labels.repeat((n + labels.numel() - 1) // labels.numel())[:n]


def parse_labels(text: str) -> int | list[int]:
    """'3' -> 3, '0,1,2' -> [0, 1, 2] (the CLI's --class_label)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--class_label must be an integer or a comma-separated list of integers, got {text!r}") \
            from None
    if not values:
        raise UsageError("--class_label is empty; give a label such as 3 or a list such as 0,1,2")
    return values[0] if len(values) == 1 else values
