"""From a config to the objects of a run: device, SDE, network, optimiser, score function."""
from __future__ import annotations

import inspect

import torch

from scoresde import models
from scoresde import sde_lib
from scoresde.utils import Registry, UsageError

OPTIMIZERS = Registry("optimizer", {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW})


def get_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA when available, else CPU; anything else is passed to torch.device."""
    if name in ("", "auto", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"invalid device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available; use --device=cpu")
    return device


def _fields_for(cls, section) -> dict:
    """The fields of a config section that are parameters of cls's constructor (the others belong to other choices)."""
    return {k: section[k] for k in inspect.signature(cls).parameters if k in section}


def build_sde(config) -> sde_lib.SDE:
    """The SDE named by config.sde.name, given the fields of config.sde that its constructor takes."""
    return sde_lib.get_sde(config.sde.name, **_fields_for(sde_lib.SDES[config.sde.name], config.sde))


def _network_name(config, shape) -> str:
    """The name of the network the run builds: an MLP for vector data, else config.model.name."""
    return "mlp" if len(shape) == 1 else config.model.name


def network_embedding(config, shape) -> str | None:
    """The noise embedding of the run's network: model.embedding_type where it is set, else the model preset's
    own (ncsnpp: Fourier features; unet, ddpmpp, mlp: sinusoidal); None for a diffusers UNet, which has its own."""
    name = _network_name(config, shape)
    if name == "diffusers":
        return None
    explicit = config.model.get("embedding_type")
    return explicit if explicit else inspect.signature(models.MODELS[name]).parameters["embedding"].default


def build_model(config, shape, num_classes=None) -> torch.nn.Module:
    """A UNet for images (C, H, W) and an MLP for vector data, configured from config.model.

    The network takes class labels only when config.model.conditional is set (and the data have labels).
    model.name="diffusers" is a wrapped diffusers UNet2DModel (models.diffusers; needs the diffusers extra).
    The embedding is network_embedding's: an unset model.embedding_type keeps the preset's.
    """
    m = config.model
    if m.conditional and not num_classes:
        raise UsageError("model.conditional=True needs a dataset with class labels; this one has none")
    num_classes = num_classes if m.conditional else None
    embedding = network_embedding(config, shape)
    common = dict(embedding=embedding, num_classes=num_classes)
    if embedding == "fourier":
        common["embedding_scale"] = m.fourier_scale
    if len(shape) == 1:
        return models.get_model("mlp", dim=shape[0], width=m.mlp_width, depth=m.mlp_depth, **common)
    if m.name == "mlp":
        raise UsageError(f"model.name='mlp' is for vector data, but this dataset has images of shape {tuple(shape)}; "
                         "use model.name='unet'")
    if m.name == "diffusers":
        from scoresde.models.diffusers import build_diffusers_model   # optional dependency, imported only when used
        return build_diffusers_model(config, shape)
    # NCSN++ fields (score_sde's names; absent from older configs, which then get DDPM++).
    ncsnpp = {key: m[key] for key in ("fir", "progressive_input", "center_input", "scale_by_sigma") if key in m}
    if "fir_kernel" in m:
        ncsnpp["fir_kernel"] = tuple(m.fir_kernel)
    if "embedding_mult" in m:
        ncsnpp["embedding_dim"] = m.embedding_mult * m.nf
    return models.get_model(m.name, in_channels=shape[0], image_size=shape[-1], ch=m.nf, ch_mult=tuple(m.ch_mult),
                            num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
                            dropout=m.dropout, resblock_updown=m.resblock_updown, skip_rescale=m.skip_rescale,
                            **common, **ncsnpp)


def build_precond(config, network: torch.nn.Module) -> models.Precond:
    """The run's preconditioning: config.model.parameterization, model.sigma_data (EDM's 0.5 in configs that
    have none) and model.consistency_sigma_min (a consistency model's boundary; None in configs that have none),
    with the noise input `network` (the unwrapped network of build_model) declares."""
    return models.Precond.for_network(network, config.model.parameterization,
                                      config.model.get("sigma_data", models.SIGMA_DATA),
                                      config.model.get("consistency_sigma_min"))


def build_weighting(config, precond: models.Precond) -> models.Weighting:
    """The DSM weighting named by config.training.weighting, given the fields of config.training it takes (eps, ...)
    and the preconditioning's sigma_data (EDM), so that the loss and the network see one data scale."""
    if "sigma_data" in config.training:
        raise UsageError("training.sigma_data is not read: the data standard deviation is model.sigma_data, used by "
                         "both the preconditioning and the EDM weighting; set that instead")
    name = config.training.weighting
    fields = _fields_for(models.WEIGHTINGS[name], config.training)
    if "sigma_data" in inspect.signature(models.WEIGHTINGS[name]).parameters:
        fields["sigma_data"] = precond.sigma_data
    return models.get_weighting(name, **fields)


def build_t_sampling(config):
    """The draw of training times config.training.t_sampling names; logit_normal takes training.logit_mean and
    training.logit_std (SD3's m and s)."""
    t = config.training
    if models.T_SAMPLINGS.canonical(t.t_sampling) == "logit_normal":
        return models.get_t_sampling(t.t_sampling, mean=t.logit_mean, std=t.logit_std)
    return models.get_t_sampling(t.t_sampling)


def build_optimizer(config, params) -> torch.optim.Optimizer:
    """Adam/AdamW with config.optim's learning rate, betas, eps and weight decay."""
    o = config.optim
    return OPTIMIZERS[o.optimizer](params, lr=o.lr, betas=(o.beta1, 0.999), eps=o.eps, weight_decay=o.weight_decay)


def learning_rate(config, step: int) -> float:
    """Linear warm-up to optim.lr over optim.warmup steps, then constant (Song et al.)."""
    warmup = config.optim.warmup
    return config.optim.lr * min(1.0, (step + 1) / warmup) if warmup > 0 else config.optim.lr


SMALL_NETWORK = 2_000_000   # parameters; below this, CPU runs default to one thread (see config.num_threads)


def set_num_threads(config, network: torch.nn.Module, device: torch.device) -> int:
    """Set torch's CPU thread count from config.num_threads (0: 1 for small networks on the CPU, else torch's
    default); returns the count in use."""
    n = config.get("num_threads", 0)
    if n > 0:
        torch.set_num_threads(n)
    elif device.type == "cpu" and sum(p.numel() for p in network.parameters()) < SMALL_NETWORK:
        torch.set_num_threads(1)
    return torch.get_num_threads()
