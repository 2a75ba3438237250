"""Pretrained models from elsewhere: score_sde_pytorch's released checkpoints and diffusers DDPM pipelines."""
from .common import Imported, ImportMismatchError
from .score_sde import import_score_sde


def from_diffusers(folder, config=None) -> Imported:
    """A diffusers save_pretrained folder (UNet2DModel + DDPMScheduler config) as an Imported; see interop.diffusers."""
    from .diffusers import from_diffusers as load   # diffusers is an optional dependency
    return load(folder, config)


__all__ = ["Imported", "ImportMismatchError", "import_score_sde", "from_diffusers"]
