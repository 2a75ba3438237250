"""The table Analytic-DPM's optimal reverse variance needs: E||eps_hat(x_t, t)||^2 / D over a grid of times.

Bao et al. (2022, Theorem 1) give the variance of the ancestral step that minimises the KL divergence to the
forward process in terms of this one number per time (docs/math.md, section "Ancestral sampling"). It depends on
the model and the data, so it is estimated once by Monte Carlo on training data, x_t = alpha_bar x_0 + beta_bar z,
and kept as JSON next to the run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from scoresde.sde_lib import SDE
from scoresde.utils import MissingFileError, UsageError, atomic_write_text, batch_data

Tensor = torch.Tensor


class NoiseMoments(NamedTuple):
    """The second moment of the predicted noise: times (float64); values: E||eps_hat||^2 / D at each (averaged over
    count data points)."""

    times: Tensor
    values: Tensor
    count: int

    def at(self, sde: SDE, t: Tensor) -> Tensor:
        """The value at time t, linear in log-SNR between the table's times and constant beyond them.

        For Gaussian data N(mu, s^2 I) the exact value is 1/(1 + s^2 e^(2 lambda)), a sigmoid in lambda: linear
        interpolation in lambda is accurate on any table whose times are dense in lambda (e.g. the logsnr grid).
        """
        lam, order = sde.log_snr(self.times).sort()
        values = self.values[order]
        x = sde.log_snr(t).clamp(lam[0], lam[-1])
        k = torch.searchsorted(lam, x.reshape(1)).clamp(1, len(lam) - 1)[0]
        w = (x - lam[k - 1]) / (lam[k] - lam[k - 1])
        return values[k - 1] + w * (values[k] - values[k - 1])


def estimate_eps_moments(sde: SDE, score_fn, data_batches, times, generator: torch.Generator | None = None,
                         ) -> NoiseMoments:
    """E||eps_hat(x_t, t)||^2 / D, eps_hat = -beta_bar score, at each of `times` by Monte Carlo over data_batches.

    data_batches: an iterable of x_0 batches (or (x_0, label) pairs, as a DataLoader gives), each used once at
    every time with fresh noise from `generator`. The score is called once per batch and time, without gradients.
    """
    times = torch.as_tensor(times, dtype=torch.float64).sort().values
    if times.ndim != 1 or len(times) < 2:
        raise UsageError(f"times must be a 1-D sequence of at least 2 times, got {times.tolist()}")
    if not (float(times[0]) > 0 and float(times[-1]) <= sde.T):
        raise UsageError(f"times must lie in (0, T] = (0, {sde.T}], got {float(times[0])}..{float(times[-1])}")
    sums, count = torch.zeros(len(times), dtype=torch.float64), 0
    with torch.no_grad():
        for batch in data_batches:
            x0 = batch_data(batch)
            dim = x0[0].numel()
            for k, t in enumerate(times):
                z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                x_t = sde.perturb(x0, z, t)
                eps_hat = -sde.beta_bar(t) * score_fn(x_t, t.expand(len(x0)).to(x0))
                sums[k] += eps_hat.double().flatten(1).square().sum().cpu() / dim
            count += len(x0)
    if count == 0:
        raise UsageError("estimate_eps_moments needs at least one data batch")
    return NoiseMoments(times, sums / count, count)


def save_eps_moments(path, table: NoiseMoments, *, sde: SDE) -> None:
    """Write the table and the SDE it was estimated for as JSON, atomically."""
    record = {"times": table.times.tolist(), "values": table.values.tolist(), "count": table.count, "sde": repr(sde)}
    atomic_write_text(path, json.dumps(record, indent=1))


def load_eps_moments(path) -> NoiseMoments:
    """The table written by save_eps_moments."""
    try:
        with open(path) as f:
            record = json.load(f)
        table = NoiseMoments(torch.tensor(record["times"], dtype=torch.float64),
                           torch.tensor(record["values"], dtype=torch.float64), int(record["count"]))
    except FileNotFoundError:
        raise MissingFileError(f"no E||eps||^2 table at {str(path)!r}; make one with estimate_eps_moments and "
                                "save_eps_moments") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{str(path)!r} is not a table written by save_eps_moments ({e})") from None
    if table.times.ndim != 1 or table.times.shape != table.values.shape or len(table.times) < 2:
        raise UsageError(f"{str(path)!r}: times and values must be 1-D of the same length >= 2")
    return table


def as_eps_moments(table) -> NoiseMoments:
    """An NoiseMoments, or the path of one saved by save_eps_moments."""
    if isinstance(table, NoiseMoments):
        return table
    if isinstance(table, (str, Path)):
        return load_eps_moments(table)
    raise UsageError(f"eps_moments must be a table from solvers.estimate_eps_moments or the path of its .json file, "
                     f"got {type(table).__name__}")
