"""Metrics a user can plot: one JSON object per line in <workdir>/metrics.jsonl, plus TensorBoard when installed."""
from __future__ import annotations

import json
from pathlib import Path

from absl import logging

from scoresde.utils import atomic_write_text


def _read_rows(path: Path) -> list[dict]:
    """The rows of a metrics file, skipping lines that are not JSON objects.

    A run killed mid-write leaves its last line cut short; losing that one row beats refusing to resume.
    """
    rows, bad = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    if bad:
        logging.warning("%s: skipped unreadable line%s %s (a run stopped while writing it?)", path,
                        "s" if len(bad) > 1 else "", ", ".join(map(str, bad)))
    return rows


class MetricsLogger:
    """Appends {"step": ..., name: value, ...} rows; on resume, drops rows logged after the resumed step."""

    def __init__(self, workdir, resume_step: int = 0, tensorboard: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # Rows past the checkpoint were logged by a run that died before saving; the resumed run redoes them.
            rows = [r for r in _read_rows(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
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
