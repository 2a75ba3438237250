"""Run directories: one writer at a time (an OS lock), outputs checked writable before work starts, fresh names
instead of overwrites, and a run that stays one experiment when it is resumed."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path

from scoresde.configs.default import get_default_configs
from scoresde.utils import UsageError

try:
    import fcntl
except ImportError:     # Windows: no advisory locks; the run goes unlocked
    fcntl = None

# Config keys that only continue, extend or observe a run; any other difference on resume is another experiment.
RESUMABLE_CHANGES = (
    "training.n_iters", "training.snapshot_freq", "training.log_freq", "training.eval_freq", "training.fid_freq",
    "training.keep_checkpoints", "training.snapshot_samples", "training.progress", "sampling", "eval", "metrics",
    "distill",
    "classifier", "inpainting", "device", "distributed", "compile", "num_threads", "data.path", "data.download",
)

class WorkdirBusyError(RuntimeError):
    """Another process holds the run directory's lock."""


def check_directory(path) -> Path:
    """`path` as a directory that exists or can be made, and can be written (a clear ValueError otherwise).

    Nothing is created: a folder is made by the first file written into it, so that a command that fails
    later leaves no empty folder behind. A missing folder is checked through its nearest existing parent.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{existing} is a file, not a directory; move it away or choose another --workdir (nothing "
                         "was computed)")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"cannot write to {path} ({e.strerror or e}); choose another --workdir or fix its "
                         "permissions (nothing was computed)") from None
    return path


def _missing_folders(path: Path) -> list[Path]:
    """The folders of `path` (itself included) that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def check_replaceable(path) -> Path:
    """`path`, which a mode will replace, as a file it may replace: absent, or a writable file (a UsageError
    otherwise, before any work). A read-only file is taken as one its owner wants kept."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory, where a file is to be written; move it away (nothing was computed)")
    if path.exists() and (not os.access(path, os.W_OK) or not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP
                                                                                      | stat.S_IWOTH)):
        raise UsageError(f"{path} is read-only, so it is not replaced; make it writable (chmod u+w) or move it "
                         "away (nothing was computed)")
    return path


@contextlib.contextmanager
def claiming_names(directory):
    """Hold an exclusive lock on `directory` itself while a fresh name is chosen there (fresh_stem) and its files
    written: processes that only add uniquely named files (sampling, scores, likelihoods) run side by side and
    never pick the same name. A waiting process blocks for the length of a write; no lock file is left behind, and
    a directory made here is removed again if nothing was written into it."""
    directory = Path(directory)
    missing = _missing_folders(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY) if fcntl is not None else None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield directory
    finally:
        if fd is not None:
            os.close(fd)        # closing the descriptor releases the lock
        for folder in missing:
            with contextlib.suppress(OSError):      # not empty: something was written, or another process did
                folder.rmdir()


class WorkdirLock:
    """An exclusive advisory lock (fcntl.flock) on <directory>/.lock-<name>, released on exit and by the OS when
    the process dies (kill -9 included), holding the holder's PID for the error a second process gets.

    On exit the lock file is removed, and so are the folders the lock created if they are still empty: a
    command leaves in the run directory only what it wrote.
    """

    def __init__(self, directory, name: str = "train"):
        self.path = Path(directory) / f".lock-{name}"
        self.name = name
        self._file = None
        self._made: list[Path] = []

    def __enter__(self) -> "WorkdirLock":
        if fcntl is None:
            return self
        self._made = _missing_folders(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    f.close()
                    raise
                f.seek(0)
                holder = f.read().strip() or "unknown"
                f.close()
                raise WorkdirBusyError(f"{self.path.parent} is in use by another {self.name} process (PID {holder}); "
                                       "wait for it to finish, stop it, or use another --workdir") from None
            # The previous holder removes the file as it lets go: a lock taken on the removed file guards nothing,
            # so it is taken again on the file now at the path.
            try:
                current = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)       # while still held: a process waiting on it then sees it gone
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:     # not empty: the command wrote there
                break
        self._made = []


def fresh_stem(stem: Path, suffixes: tuple[str, ...]) -> Path:
    """`stem`, or stem_2, stem_3, ... : the first whose files with these suffixes do not exist yet."""
    candidate, k = Path(stem), 1
    while any(Path(f"{candidate}{s}").exists() for s in suffixes):
        k += 1
        candidate = Path(f"{stem}_{k}")
    return candidate


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def _resumable(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in RESUMABLE_CHANGES)


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(refused, allowed): 'key: old -> new' for every config key that differs between a run's saved config
    and the one it is resumed with; refused are those that would make the checkpoints another experiment.

    A field that the saved config lacks has its default value: fields are added with a default that keeps what
    runs trained before them did."""
    old, new = _flat(saved), _flat(current)
    defaults = _flat(json.loads(get_default_configs().to_json()))
    refused, allowed = [], []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, defaults.get(key, "<unset>")), new.get(key, "<unset>")
        if a != b:
            (allowed if _resumable(key) else refused).append(f"{key}: {a!r} -> {b!r}")
    return refused, allowed


def check_resume_config(saved_json: str, config) -> list[str]:
    """The allowed changes of `config` against the config a run was trained with (JSON); a ValueError naming
    the first refused one (field and both values) if resuming would change the experiment."""
    refused, allowed = config_changes(json.loads(saved_json), json.loads(config.to_json()))
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise UsageError(f"this run was trained with another config: {refused[0]}{more}; a run is one experiment, "
                         "so resume it with its own settings (only n_iters, logging/snapshot frequencies, sampling "
                         "and evaluation settings may change) or train in another --workdir")
    return allowed
