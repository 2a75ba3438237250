"""The SDE table: names -> SDE classes."""
from __future__ import annotations

from scoresde.utils import Registry, UsageError

from .base import SDE
from .members import CosineVPSDE, DiscreteVPSDE, PolynomialFlow, RectifiedFlow, SubVPSDE, VESDE, VPSDE

SDES: Registry[type[SDE]] = Registry("SDE", {
    "vpsde": VPSDE,
    "subvpsde": SubVPSDE,
    "vesde": VESDE,
    "cosine": CosineVPSDE,
    "discrete_vp": DiscreteVPSDE,
    "rectified": RectifiedFlow,
    "polynomial_flow": PolynomialFlow,
})


def get_sde(name: str, **kwargs) -> SDE:
    """Construct the SDE registered under `name` (case-insensitive) with the given keyword arguments."""
    cls = SDES[name]
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UsageError(f"bad arguments for SDE {name!r}: {e}") from None
