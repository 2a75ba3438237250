"""A pretrained model from elsewhere as an ordinary run directory, which every --mode then uses through load_run."""
from __future__ import annotations

from pathlib import Path

from scoresde import interop
from scoresde import models
from scoresde.interop.common import data_shape

from scoresde.run import checkpoint as ckpt
from scoresde.run.builders import build_model, build_optimizer
from scoresde.utils import UsageError, atomic_write_text

SOURCES = ("score_sde", "diffusers")


def import_run(source: str, config, checkpoint, workdir) -> Path:
    """Import `checkpoint` from `source` ("score_sde": a checkpoint_*.pth of score_sde_pytorch; "diffusers": a
    save_pretrained folder) under `config` (a config name, path or ConfigDict; optional for diffusers) and write
    workdir/checkpoints/checkpoint_<step>.pt (atomically) as training would: step, model, ema, a fresh optimizer
    state, rng and config, with the config also in workdir/config.json as a trained run has it. Returns the
    checkpoint's path. A workdir that already holds checkpoints is refused.
    """
    if source not in SOURCES:
        raise UsageError(f"unknown import source {source!r}; available: {', '.join(SOURCES)}")
    existing = ckpt.latest_checkpoint(workdir)
    if existing is not None:
        raise UsageError(f"{workdir} already holds {existing}; import into a new --workdir")
    if source == "score_sde":
        if config in (None, ""):
            raise UsageError("--from score_sde needs --config, the config of the released model (e.g. "
                             "score_sde_vp_ddpmpp_cont)")
        imported = interop.import_score_sde(checkpoint, config)
    else:
        imported = interop.from_diffusers(checkpoint, config)
    config = imported.config
    model = build_model(config, data_shape(config))
    ckpt.load_module_state(model, imported.model_state, "imported network", checkpoint)
    ema = models.create_ema(model, decay=config.model.ema_rate)
    ema.module.load_state_dict(imported.network.state_dict())
    # As if `step` updates had been averaged, so that resumed training does not restart the EMA warm-up.
    ema.n_averaged.fill_(max(imported.step, 1))
    state = {"step": imported.step, "model": model.state_dict(), "ema": ema.state_dict(),
             "optimizer": build_optimizer(config, model.parameters()).state_dict(), "rng": ckpt.rng_state(),
             "config": config.to_json()}
    path = ckpt.save_checkpoint(workdir, imported.step, state, keep=0)
    atomic_write_text(Path(workdir) / "config.json", config.to_json(indent=2))
    return path
