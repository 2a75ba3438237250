"""Ctrl-C and SIGTERM in long evaluations: finish the batch in hand, keep what was computed, exit 130 / 143."""
from __future__ import annotations

import os
import signal
import threading

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class StopRequested:
    """A context that turns the first SIGINT/SIGTERM into `self.signal` (checked between batches) and a second one
    into KeyboardInterrupt (stop now, keep nothing more)."""

    def __init__(self):
        self.signal: str | None = None
        self._previous = {}

    def __enter__(self) -> "StopRequested":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.signal = signal.Signals(signum).name
        # Straight to file descriptor 2: the handler may run inside a write to sys.stderr (a progress bar's), which
        # must not be re-entered.
        os.write(2, f"{self.signal} received; a second one stops at once, losing the batches in progress\n".encode())

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal, 0)


class _NeverStop:
    signal = None


NEVER = _NeverStop()
