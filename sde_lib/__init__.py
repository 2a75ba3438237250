"""SDEs defined by their marginal coefficients alpha_bar(t) (mean scale) and beta_bar(t) (std)."""
from .base import SDE, ReverseSDE, as_time, batch_time, expand_as
from .members import CosineVPSDE, ScheduleSDE, SubVPSDE, VESDE, VPSDE
from .mixture import GaussianMixture
from .registry import SDES, Registry, get_sde

__all__ = [
    "SDE", "ReverseSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "ScheduleSDE", "GaussianMixture",
    "SDES", "Registry", "get_sde", "as_time", "batch_time", "expand_as",
]
