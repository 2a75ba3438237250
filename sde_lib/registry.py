"""One name -> object registry for the whole project (SDEs, solvers, models, datasets, ...), and the SDE table."""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from .base import SDE
from .members import CosineVPSDE, DiscreteVPSDE, SubVPSDE, VESDE, VPSDE

T = TypeVar("T")


class Registry(Generic[T]):
    """Names (case-insensitive, stored lower-case) -> objects; an unknown name is a ValueError listing the names.

    kind names the things registered ("SDE", "solver", ...) in that error.
    """

    def __init__(self, kind: str, entries: dict[str, T] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        for name, obj in (entries or {}).items():
            self.register(name, obj)

    def register(self, name: str, obj: T) -> T:
        """Add `obj` under `name`; a name already taken is a ValueError."""
        key = self._key(name)
        if key in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[key] = obj
        return obj

    @staticmethod
    def _key(name) -> str:
        return name.lower() if isinstance(name, str) else name

    def __getitem__(self, name: str) -> T:
        key = self._key(name)
        if key not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self._entries)}")
        return self._entries[key]

    def get(self, name: str) -> T:
        """The object registered under `name` (see __getitem__)."""
        return self[name]

    def canonical(self, name: str) -> str:
        """The registered spelling of `name` (lower-case); a ValueError listing the names if it is unknown."""
        self[name]
        return self._key(name)

    def __contains__(self, name) -> bool:
        return self._key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


SDES: Registry[type[SDE]] = Registry("SDE", {
    "vpsde": VPSDE,
    "subvpsde": SubVPSDE,
    "vesde": VESDE,
    "cosine": CosineVPSDE,
    "discrete_vp": DiscreteVPSDE,
})


def get_sde(name: str, **kwargs) -> SDE:
    """Construct the SDE registered under `name` (case-insensitive) with the given keyword arguments."""
    cls = SDES[name]
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for SDE {name!r}: {e}") from None
