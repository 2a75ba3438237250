"""Name -> SDE class registry."""
from __future__ import annotations

from .base import SDE
from .members import CosineVPSDE, SubVPSDE, VESDE, VPSDE

SDES: dict[str, type[SDE]] = {
    "vpsde": VPSDE,
    "subvpsde": SubVPSDE,
    "vesde": VESDE,
    "cosine": CosineVPSDE,
}


def get_sde(name: str, **kwargs) -> SDE:
    """Construct the SDE registered under `name` (case-insensitive) with the given keyword arguments."""
    key = name.lower()
    if key not in SDES:
        raise ValueError(f"unknown SDE {name!r}; available: {', '.join(sorted(SDES))}")
    try:
        return SDES[key](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for SDE {name!r}: {e}") from None
