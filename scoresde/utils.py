"""Generic helpers of every package: the error type for user mistakes, a name registry, derived seeds, the reader of
users' .npy/.npz arrays, and atomic file output (nothing the framework writes is ever left half-written)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

import numpy as np


class UsageError(ValueError):
    """A mistake the user can fix (a bad option, name, value or file): the command line prints its message alone.

    A ValueError, so that callers catching ValueError keep working; errors of any other kind are bugs and keep
    their traceback.
    """


class MissingFileError(UsageError, FileNotFoundError):
    """A file the user named (or a run needs) is not there: a UsageError that is also a FileNotFoundError."""


class MissingDependencyError(UsageError, ImportError):
    """An optional package a feature needs is not installed: a UsageError that is also an ImportError."""


def derived_seed(*key: int) -> int:
    """A 63-bit seed from integer keys via numpy's SeedSequence (so (seed, index) pairs never collide)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> 1)


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
            raise UsageError(f"unknown {self.kind} {name!r}; available: {', '.join(self._entries)}")
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


# The first bytes of an .npy file and of an .npz (a zip archive).
NUMPY_MAGIC = (b"\x93NUMPY", b"PK\x03\x04")


def read_array(path, key: str | None = None, *, expected: str,
               only_array: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(the array, every array of the file by name) of a user's .npy or .npz file ({} as the second for an .npy).

    From an .npz, the array is the one under `key`, or (with only_array) its only array. Nothing is unpickled
    (allow_pickle=False: an object array would run arbitrary code on load). A missing file is a MissingFileError,
    any other unusable file a UsageError of one line (a MissingFileError is one too); both say what the file
    must be (`expected`).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no file {path}; expected {expected}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not any(magic.startswith(m) for m in NUMPY_MAGIC):
        raise UsageError(f"{path} is not a NumPy file (no .npy header, not an .npz archive); expected {expected}, "
                         f"written with np.save / np.savez")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded, {}
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except Exception:   # numpy raises several types; its messages suggest allow_pickle=True, which is never safe here
        raise UsageError(f"cannot read {path}: it holds pickled objects or is damaged (only numeric arrays are "
                         f"read); expected {expected}") from None
    if key in arrays:
        return arrays[key], arrays
    if only_array and len(arrays) == 1:
        return next(iter(arrays.values())), arrays
    raise UsageError(f"{path} holds {', '.join(arrays) or 'no arrays'}; name the array {key!r}. Expected {expected}")


def batch_data(batch):
    """The data of a batch given as x or as (x, y)."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path) on a temporary file next to `path`, fsync it, then rename it over `path`.

    The file gets the permissions of an ordinary new file (0666 less the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write a text file atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return atomic_write(path, write)


def atomic_write_json(path, obj) -> Path:
    """Write an object as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
