"""SDEs defined by their marginal coefficients alpha_bar(t) (mean scale) and beta_bar(t) (std)."""
from .base import SDE, ReverseSDE, as_time, batch_time, expand_as
from .members import CosineVPSDE, PolynomialFlow, RectifiedFlow, ScheduleSDE, SubVPSDE, VESDE, VPSDE
from .mixture import GaussianMixture
from .registry import SDES, get_sde

__all__ = [
    "SDE", "ReverseSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "RectifiedFlow", "PolynomialFlow", "ScheduleSDE",
    "GaussianMixture", "SDES", "get_sde", "as_time", "batch_time", "expand_as",
]
