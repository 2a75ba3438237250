"""Name -> network constructor registry, with presets of the published configurations."""
from __future__ import annotations

import functools
import inspect

from torch import nn

from scoresde.utils import Registry, UsageError

from .mlp import MLP
from .unet import UNet

# DDPM++ cont. and NCSN++ cont. of Song et al. 2021 for CIFAR-10 (NCSN++ here without FIR resampling and
# progressive pyramids); any argument can still be overridden.
MODELS = Registry("model", {
    "mlp": MLP,
    "unet": UNet,
    "ddpmpp": functools.partial(UNet, embedding="sinusoidal"),
    "ncsnpp": functools.partial(UNet, embedding="fourier"),
})


def _accepted(constructor) -> set[str]:
    return set(inspect.signature(constructor).parameters)


def get_model(name: str, **kwargs) -> nn.Module:
    """The network registered under `name` (case-insensitive), built with the given keyword arguments."""
    constructor = MODELS[name]
    unknown = sorted(set(kwargs) - _accepted(constructor))
    if unknown:
        raise UsageError(f"unknown arguments {unknown} for model {name!r}; it accepts: "
                         f"{', '.join(sorted(_accepted(constructor)))}")
    return constructor(**kwargs)
