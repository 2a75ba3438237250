"""A diffusers UNet2DModel as a network of this project (the optional diffusers extra): forward(x, t) takes the
continuous time of sde_lib.DiscreteVPSDE and queries the UNet at the fractional timestep N t - 1."""
from __future__ import annotations

import json

import torch
from torch import nn

from .embeddings import check_no_labels
from scoresde.utils import MissingDependencyError, UsageError


def require_diffusers():
    """The diffusers package, or an ImportError saying how to install the optional extra."""
    try:
        import diffusers
    except ImportError:
        raise MissingDependencyError("diffusers models need the optional diffusers package: "
                                     'pip install -e ".[diffusers]"') from None
    return diffusers


class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel as a network of this project: forward(x, noise_input=t) = unet(x, N t - 1).sample."""

    noise_input = "t"   # forward maps t to the UNet's timestep itself

    def __init__(self, unet: nn.Module, num_train_timesteps: int):
        super().__init__()
        self.unet = unet
        self.num_train_timesteps = int(num_train_timesteps)

    def forward(self, x: torch.Tensor, noise_input: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_no_labels(y, None)
        n = self.num_train_timesteps
        timestep = (noise_input.to(x.dtype) * n - 1).clamp(0, n - 1).expand(x.shape[0])
        return self.unet(x, timestep).sample


def build_diffusers_model(config, shape) -> DiffusersUNet:
    """The wrapped UNet2DModel described by config.model.diffusers_unet (its config as JSON), untrained."""
    diffusers = require_diffusers()
    unet = diffusers.UNet2DModel.from_config(json.loads(config.model.diffusers_unet))
    expected = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    if tuple(shape) != expected:
        raise UsageError(f"the diffusers UNet takes images of shape {expected}, the data have {tuple(shape)}; "
                         "set data.image_size and data.num_channels to match")
    return DiffusersUNet(unet, config.sde.num_train_timesteps)
