"""diffusers DDPM models (a save_pretrained UNet2DModel + DDPMScheduler config, e.g. google/ddpm-cifar10-32).

The network stays a diffusers module, wrapped; the discrete schedule becomes sde_lib.DiscreteVPSDE, whose index
n sits at t_n = (n+1)/N. Between the knots log sigma is linear in t, so the fractional timestep at which log sigma
interpolates the knots' log sigmas (k-diffusion's DiscreteEpsDDPMDenoiser idea) is simply N t - 1; below t_0 the
network is queried at timestep 0. The score at a knot is then exactly -eps_theta(x, n)/beta_bar_n.
"""
from __future__ import annotations

import json
from pathlib import Path


from scoresde.models.diffusers import DiffusersUNet, require_diffusers
from scoresde.run.builders import build_model

from .common import Imported, ImportMismatchError, as_config, finish
from scoresde.utils import MissingFileError, UsageError

PARAMETERIZATIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SCHEDULE_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")


def _folders(folder: Path) -> tuple[Path, Path]:
    unet = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    for scheduler in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"):
        if scheduler.is_file():
            break
    else:
        raise MissingFileError(f"{folder} holds no scheduler/scheduler_config.json (a diffusers DDPM pipeline "
                                "saved with save_pretrained, e.g. google/ddpm-cifar10-32)")
    if not (unet / "config.json").is_file():
        raise MissingFileError(f"{folder} holds no unet/config.json (a diffusers UNet2DModel saved with "
                               "save_pretrained)")
    return unet, scheduler


def _schedule(scheduler: dict, path) -> dict:
    if scheduler.get("rescale_betas_zero_snr"):
        raise ImportMismatchError(f"{path}: rescale_betas_zero_snr makes alphas_cumprod[-1] = 0 (infinite sigma), "
                                  "which no SDE of this project has")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in PARAMETERIZATIONS:
        raise ImportMismatchError(f"{path}: unsupported prediction_type {prediction!r}; supported: "
                                  f"{', '.join(PARAMETERIZATIONS)}")
    defaults = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                "trained_betas": None}
    fields = {k: scheduler.get(k, v) if scheduler.get(k) is not None else v for k, v in defaults.items()}
    fields["trained_betas"] = tuple(fields["trained_betas"] or ())
    fields["parameterization"] = PARAMETERIZATIONS[prediction]
    return fields


def _config(base, unet_config: dict, fields: dict):
    if base is None:
        if (unet_config["in_channels"], unet_config["sample_size"]) != (3, 32):
            raise UsageError("pass a config whose data section describes the model's data (e.g. --config vpsde); "
                             "only 32x32 RGB models default to CIFAR-10")
        base = "cifar10_vpsde"
    config = as_config(base)
    with config.unlocked():
        config.sde.name = "discrete_vp"
        for k in SCHEDULE_FIELDS:
            config.sde[k] = fields[k]
        config.model.name = "diffusers"
        config.model.parameterization = fields["parameterization"]
        config.model.conditional = False
        config.model.diffusers_unet = json.dumps(unet_config)
        config.data.centered = True                     # DDPM's data are in [-1, 1]
        config.data.image_size = unet_config["sample_size"]
        config.data.num_channels = unet_config["in_channels"]
        # t_0 = 1/N is the least noise the network was trained at: sample and evaluate down to it.
        t0 = 1.0 / fields["num_train_timesteps"]
        config.sampling.eps = config.eval.eps = config.training.eps = t0
    return config


def from_diffusers(folder, config=None) -> Imported:
    """A diffusers save_pretrained folder (unet/ + scheduler/, or the UNet with scheduler_config.json beside it)
    under a config of this project (name, path or ConfigDict; its data section says what the model was trained on;
    default CIFAR-10 for 32x32 RGB models). sde, model and the eps of sampling/eval come from the folder."""
    diffusers = require_diffusers()
    folder = Path(folder)
    unet_dir, scheduler_path = _folders(folder)
    unet = diffusers.UNet2DModel.from_pretrained(unet_dir)
    if unet.config.get("num_class_embeds") or unet.config.get("class_embed_type"):
        raise ImportMismatchError(f"{unet_dir}: class-conditional diffusers UNets are not supported")
    fields = _schedule(json.loads(scheduler_path.read_text()), scheduler_path)
    unet_config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    config = _config(config, json.loads(json.dumps(unet_config)), fields)
    network = build_model(config, (config.data.num_channels, config.data.image_size, config.data.image_size))
    state = DiffusersUNet(unet, fields["num_train_timesteps"]).state_dict()
    # diffusers publishes one set of weights (the EMA ones for google/ddpm-*): it serves as both.
    return finish(config, network, state, state, 0, folder)
