"""Shared pieces of the tests: a tiny training config, a run's metrics, and main.py run in process (cli) or as a
subprocess."""
import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from scoresde import configs

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**training_overrides):
    """The vpsde config on 2000 gmm8 points with a 32-wide MLP: a training step takes milliseconds."""
    config = configs.load_config("vpsde")
    config.data.dataset = "gmm8"
    config.data.num_samples = 2000
    config.model.mlp_width = 32
    config.model.mlp_depth = 2
    config.training.batch_size = 64
    config.training.n_iters = 20
    config.training.log_freq = 5
    config.training.eval_freq = 10
    config.training.snapshot_freq = 10
    config.training.snapshot_samples = 16
    config.training.progress = False
    config.sampling.solver = "euler"
    config.sampling.steps = 4
    config.optim.warmup = 5
    config.device = "cpu"
    for k, v in training_overrides.items():
        config.training[k] = v
    return config


def metrics_rows(workdir) -> list[dict]:
    """The rows of <workdir>/metrics.jsonl written so far: its complete lines (none before the file exists)."""
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]] if path.exists() else []


def main_py(*args, check=True):
    """Run `python main.py *args` in the repository root (one thread per process); raise if it fails and check."""
    proc = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"main.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


class Result(NamedTuple):
    """What one command line gave: its exit status, stdout, stderr and the log messages (absl, in process)."""

    returncode: int
    stdout: str
    stderr: str
    log: str

    def written(self, suffix: str = ".npz") -> Path:
        """The file with `suffix` named by the result line's "wrote A and B"."""
        files = self.stdout.strip().splitlines()[-1].split("; wrote ", 1)[1].split(" and ")
        return next(Path(f) for f in files if f.endswith(suffix))


def cli(*args, check=True) -> Result:
    """`main.run(["main.py", *args])` in this process, capturing stdout, stderr and the log; raise if it fails and
    check. In process it takes milliseconds where `python main.py` pays seconds of imports."""
    import main

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler, root = Keep(logging.DEBUG), logging.getLogger()
    root.addHandler(handler)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main.run(["main.py", *map(str, args)])
    finally:
        root.removeHandler(handler)
    result = Result(code, out.getvalue(), err.getvalue(), "\n".join(r.getMessage() for r in records))
    if check and code != 0:
        raise AssertionError(f"main.py {' '.join(map(str, args))} failed ({code}):\n{result.stdout}\n{result.stderr}")
    return result


class SignalAt:
    """A score function that sends this process SIGTERM at its n-th call (a signal mid-training, at a known step)."""

    def __init__(self, score_fn, n):
        self.score_fn, self.n, self.calls = score_fn, n, 0

    def __call__(self, x, t):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.score_fn(x, t)
