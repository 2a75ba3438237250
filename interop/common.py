"""What every importer returns, and the config plumbing they share."""
from __future__ import annotations

from dataclasses import dataclass

import ml_collections
import torch

from scoresde import configs
from scoresde import data as data_lib
from scoresde import models
from scoresde import sde_lib
from scoresde.run.builders import build_precond, build_sde
from scoresde.run.checkpoint import CheckpointError, load_module_state
from scoresde.utils import UsageError


class ImportMismatchError(CheckpointError):
    """A third-party checkpoint does not fit the config it is imported under."""


@dataclass
class Imported:
    """config: the config the network is used under; network: the network with the released (EMA) weights, in eval
    mode; sde and score_fn(x, t): as runs.load_run gives them; step: the training step of the checkpoint;
    model_state: the non-averaged weights where the checkpoint has them (else the EMA weights), in this project's
    key names, for resuming training."""

    config: ml_collections.ConfigDict
    network: torch.nn.Module
    sde: sde_lib.SDE
    score_fn: models.ScoreFn
    step: int
    model_state: dict


def as_config(config) -> ml_collections.ConfigDict:
    """A ConfigDict from a bundled config name, a config file path, or a ConfigDict (copied)."""
    if isinstance(config, ml_collections.ConfigDict):
        return ml_collections.ConfigDict(config.to_dict())
    return configs.load_config(str(config))


def data_shape(config) -> tuple[int, int, int]:
    """(C, H, W) of the images the config's network takes, without reading the data when the config says it."""
    d = config.data
    if d.get("num_channels") and d.get("image_size"):
        return int(d.num_channels), int(d.image_size), int(d.image_size)
    shape = tuple(data_lib.get_dataset(config).shape)
    if len(shape) != 3:
        raise UsageError(f"the config's dataset {d.dataset!r} has shape {shape}; imported networks take images")
    return shape


def finish(config, network, state_ema: dict, model_state: dict, step: int, source) -> Imported:
    """Load the EMA weights into `network` strictly and put the score function on top."""
    load_module_state(network, state_ema, "imported EMA network", source)
    network.eval().requires_grad_(False)
    sde = build_sde(config)
    return Imported(config, network, sde, models.get_score_fn(network, sde, build_precond(config, network)),
                    int(step), model_state)
