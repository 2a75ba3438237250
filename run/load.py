"""A trained run as one object: its config, SDE, EMA network and score function, from a run directory."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import ml_collections
import torch
from absl import logging

from scoresde import data as data_lib
from scoresde import models
from scoresde import sde_lib

from scoresde.run import checkpoint as ckpt
from scoresde.run import precision
from scoresde.run.builders import build_model, build_precond, build_sde, get_device, set_num_threads
from scoresde.utils import UsageError

# What a checkpoint's network was trained on and for: inference takes these sections from the checkpoint.
TRAINED_SECTIONS = ("sde", "model", "data")
# Where the data are rather than what they are: a run evaluated on another machine may point at its copy.
RELOCATABLE = ("data.path", "data.download")


@dataclass
class Run:
    """config: the run's config (trained sections from the checkpoint); network: the EMA network (eval mode, no
    parameter gradients); score_fn(x, t): its score (through `precond`); data: the DataInfo (shape, scalers, test
    split); step and path: of the checkpoint loaded."""

    config: ml_collections.ConfigDict
    sde: sde_lib.SDE
    score_fn: models.ScoreFn
    network: torch.nn.Module
    data: data_lib.DataInfo
    step: int
    path: Path
    workdir: Path

    @property
    def precond(self) -> models.Precond:
        """The preconditioning of the network (parameterisation, noise input, sigma_data)."""
        return self.score_fn.precond

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device


def _plain(value):
    """value with lists as tuples: a config read back from JSON has lists where the config file has tuples."""
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def config_of_checkpoint(path, state: dict | None = None) -> ml_collections.ConfigDict:
    """The config the checkpoint at `path` was trained with; `state`: that checkpoint, if already loaded."""
    state = ckpt.load_checkpoint(path) if state is None else state
    if "config" not in state:
        raise ckpt.CheckpointError(f"checkpoint {path} holds no config; it was not written by training.Trainer")
    return ml_collections.ConfigDict(json.loads(state["config"]))


def use_trained_sections(config, trained, overridden=()) -> None:
    """Set config's TRAINED_SECTIONS to those of `trained`, the config a checkpoint was trained with.

    overridden: the config keys given on the command line ('model.nf', ...). One that contradicts the checkpoint
    is a ValueError naming both values; other differences (another --config name, say) are logged, except where
    `config` leaves the field None.
    """
    replaced = []
    for section in TRAINED_SECTIONS:
        for name, value in trained.get(section, {}).items():
            key, current = f"{section}.{name}", config[section].get(name)
            if name not in config[section]:
                # A field only some models have (an imported network's architecture, say): the checkpoint's.
                with config.unlocked():
                    config[section][name] = value
                continue
            if _plain(current) == _plain(value):
                continue
            if key in overridden:
                if key in RELOCATABLE:
                    continue
                raise UsageError(f"--config.{key}={_plain(current)!r} conflicts with the checkpoint, which was "
                                 f"trained with {key}={_plain(value)!r}; drop the override (sampling, likelihood, "
                                 "eval and inpainting use the checkpoint's sde, model and data settings)")
            with config.unlocked():
                config[section][name] = value
            if current is not None:     # None leaves the choice to the run (model.embedding_type: its preset's)
                replaced.append(f"{key}={_plain(value)!r} (not {_plain(current)!r})")
    if replaced:
        logging.warning("using the checkpoint's %s", ", ".join(replaced))


def use_checkpoint_config(config, workdir, checkpoint=None, overridden=()) -> tuple[Path, dict]:
    """(path, state) of the chosen checkpoint of a run, with its trained sections put into `config`."""
    path = ckpt.find_checkpoint(workdir, checkpoint)
    state = ckpt.load_checkpoint(path)
    use_trained_sections(config, config_of_checkpoint(path, state), overridden)
    return path, state


def load_run(workdir, checkpoint=None, device=None, *, config=None, overridden=(), autocast: bool = False) -> Run:
    """The EMA network of a trained run, ready for sampling and likelihoods.

    checkpoint: a path or step (default: the newest in workdir/checkpoints). device: default config.device
    ("auto": CUDA when present). config: a config to use instead of the checkpoint's own (the command line's);
    its sde, model and data sections still come from the checkpoint, and a key of `overridden` that contradicts
    the checkpoint is a ValueError naming both values. autocast: run the network in config.precision (sampling);
    the default float32 is what the likelihood ODE needs.
    """
    workdir = Path(workdir)
    path = ckpt.find_checkpoint(workdir, checkpoint)
    state = ckpt.load_checkpoint(path)
    trained = config_of_checkpoint(path, state)
    if config is None:
        config = trained
    else:
        use_trained_sections(config, trained, overridden)
    device = get_device(config.device) if device is None else torch.device(device)
    try:
        info = data_lib.get_dataset(config)
    except FileNotFoundError as e:
        if config.data.get("image_size") is None or config.data.get("num_channels") is None:
            raise
        # Sampling needs only the images' shape and scaling; evaluations on data say what is missing when used.
        logging.warning("%s; loading the run without its data (sampling works; likelihood and FID need them)", e)
        info = data_lib.image_shape_only(config)
    sde = build_sde(config)
    model = build_model(config, info.shape, info.num_classes)
    ema = models.create_ema(model, decay=config.model.ema_rate)
    ckpt.load_module_state(ema, state["ema"], "EMA network", path)
    network = ema.module.to(device).eval().requires_grad_(False)     # gradients are only ever taken in x
    set_num_threads(config, network, device)
    if autocast:
        network = precision.autocast_network(network, config.precision, device)
    logging.info("loaded the EMA weights of %s (step %d)", path, state["step"])
    score_fn = models.get_score_fn(network, sde, build_precond(config, model))
    return Run(config, sde, score_fn, network, info, int(state["step"]), path, workdir)
