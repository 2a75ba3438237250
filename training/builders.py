"""From a config to the objects of a run: device, SDE, network, optimiser, score function."""
from __future__ import annotations

from pathlib import Path

import torch

import models
import sde_lib
import solvers

_SDE_FIELDS = {"vpsde": ("beta_min", "beta_max"), "subvpsde": ("beta_min", "beta_max"),
               "vesde": ("sigma_min", "sigma_max"), "cosine": ("s",)}
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def get_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA when available, else CPU; anything else is passed to torch.device."""
    if name in ("", "auto", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"invalid device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device=cpu")
    return device


def build_sde(config) -> sde_lib.SDE:
    """The SDE named by config.sde.name with its parameters from config.sde."""
    name = config.sde.name.lower()
    if name not in _SDE_FIELDS:
        raise ValueError(f"unknown SDE {config.sde.name!r}; available: {', '.join(sorted(_SDE_FIELDS))}")
    return sde_lib.get_sde(name, **{k: config.sde[k] for k in _SDE_FIELDS[name] if k in config.sde})


def build_model(config, shape, num_classes=None) -> torch.nn.Module:
    """A UNet for images (C, H, W) and an MLP for vector data, configured from config.model.

    The network takes class labels only when config.model.conditional is set (and the data have labels).
    """
    m = config.model
    if m.conditional and not num_classes:
        raise ValueError("model.conditional=True needs a dataset with class labels; this one has none")
    num_classes = num_classes if m.conditional else None
    common = dict(embedding=m.embedding_type, num_classes=num_classes)
    if m.embedding_type == "fourier":
        common["embedding_scale"] = m.fourier_scale
    if len(shape) == 1:
        return models.get_model("mlp", dim=shape[0], width=m.mlp_width, depth=m.mlp_depth, **common)
    if m.name == "mlp":
        raise ValueError(f"model.name='mlp' is for vector data, but this dataset has images of shape {tuple(shape)}; "
                         "use model.name='unet'")
    return models.get_model(m.name, in_channels=shape[0], image_size=shape[-1], ch=m.nf, ch_mult=tuple(m.ch_mult),
                            num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
                            dropout=m.dropout, resblock_updown=m.resblock_updown, skip_rescale=m.skip_rescale,
                            **common)


def build_optimizer(config, params) -> torch.optim.Optimizer:
    """Adam/AdamW with config.optim's learning rate, betas, eps and weight decay."""
    o = config.optim
    key = o.optimizer.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {o.optimizer!r}; available: Adam, AdamW")
    return OPTIMIZERS[key](params, lr=o.lr, betas=(o.beta1, 0.999), eps=o.eps, weight_decay=o.weight_decay)


def learning_rate(config, step: int) -> float:
    """Linear warm-up to optim.lr over optim.warmup steps, then constant (Song et al.)."""
    warmup = config.optim.warmup
    return config.optim.lr * min(1.0, (step + 1) / warmup) if warmup > 0 else config.optim.lr


def calibrated_grid_path(workdir, solver: str, steps: int) -> Path:
    """Where --mode calibrate keeps the grid of `solver` at `steps` steps for the run in `workdir`."""
    return Path(workdir) / "grids" / f"{solver}_{steps}.json"


def _resolve_grid(grid: str, solver: str, steps: int | None, explicit_steps: bool, workdir):
    """(grid option, steps) for config.sampling.grid: a grid name as is, "calibrated" or a .json path as times."""
    if grid in solvers.GRIDS:
        return grid, steps
    if grid == "calibrated":
        solvers.check_calibratable(solver)
        if workdir is None:
            raise ValueError("sampling.grid='calibrated' needs a run directory; give the grid's .json path instead")
        path = calibrated_grid_path(workdir, solver, steps)
        if not path.is_file():
            raise FileNotFoundError(f"no calibrated {solver} grid with {steps} steps at {path}; make it with "
                                    f"`python main.py --mode calibrate --solver {solver} --steps {steps}` first")
        return solvers.load_grid(str(path)), steps
    if not grid.endswith(".json"):
        raise ValueError(f"unknown sampling grid {grid!r}; available: {', '.join(solvers.GRIDS)}, calibrated, "
                         f"or the path of a .json grid file")
    times = solvers.load_grid(grid)
    return times, (steps if explicit_steps else len(times) - 1)


def sampler_arguments(config, solver: str, steps: int | None = None, workdir=None, **overrides) -> dict:
    """Keyword arguments of solvers.sample(..., solver=solver) from config.sampling, for every sampling run.

    steps defaults to config.sampling.steps (None for adaptive solvers, which choose their own); every field of
    config.sampling that names an option of this solver (snr, corrector_steps for pc) is passed on. overrides
    replace options (None: not given); one that this solver does not take is a ValueError. The grid option comes
    from config.sampling.grid ("" keeps the solver's default; "calibrated" reads the grid of --mode calibrate from
    `workdir`; a .json path gives its times and, unless steps was given, its number of steps).
    """
    valid = solvers.solver_options(solver)
    options = {k: v for k, v in config.sampling.items() if k in valid}
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in valid:
            raise ValueError(f"option {k!r} does not apply to solver {solver!r} (its options: "
                             f"{', '.join(valid) or 'none'})")
        options[k] = v
    explicit_steps = steps is not None
    if solvers.get_solver(solver).adaptive:
        steps = None
    elif steps is None:
        steps = config.sampling.steps
    if options.get("grid", None) == "":
        del options["grid"]
    elif "grid" in options and isinstance(options["grid"], str):
        options["grid"], steps = _resolve_grid(options["grid"], solver, steps, explicit_steps, workdir)
    return {"steps": steps, "eps": config.sampling.eps, **options}
