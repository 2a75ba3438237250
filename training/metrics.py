"""Metrics a user can plot: one JSON object per line in <workdir>/metrics.jsonl, plus TensorBoard when installed."""
from __future__ import annotations

import json
from pathlib import Path

from .io import atomic_write_text


class MetricsLogger:
    """Appends {"step": ..., name: value, ...} rows; on resume, drops rows logged after the resumed step."""

    def __init__(self, workdir, resume_step: int = 0, tensorboard: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # Rows past the checkpoint were logged by a run that died before saving; the resumed run redoes them.
            rows = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(r + "\n" for r in rows))
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                pass

    def log(self, step: int, **scalars) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir) -> list[dict]:
    """All rows of <workdir>/metrics.jsonl."""
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
