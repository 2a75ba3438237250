"""Bits per dimension of discrete data through a continuous density, and uniform dequantisation.

Discrete data take model-space values x = lo + (hi - lo) k / (n_bins - 1), k in {0, ..., n_bins - 1}.
Uniform dequantisation maps bin k to [lo + (hi - lo) k / n_bins, lo + (hi - lo)(k + 1) / n_bins), a cube of
side w = (hi - lo) / n_bins per dimension, and log P(k) >= E_u log p(x + u) + D log w (Jensen), so
bits/dim = -log p / (D ln 2) - log2 w: an offset of 7 for 256 bins on [-1, 1] and 8 on [0, 1].
"""
from __future__ import annotations

import functools
import math
from typing import Iterable, NamedTuple

import torch
from tqdm.auto import tqdm

from scoresde.utils import UsageError, batch_data

from .accuracy import OdeSetting, candidates, choose_setting
from .core import log_likelihood, state_dtype_for
from .divergence import DIVERGENCES

Tensor = torch.Tensor


def check_bins(n_bins, data_range) -> tuple[float, float]:
    """(lo, hi) of data_range; a ValueError unless n_bins is an integer >= 2 or None and lo < hi."""
    if n_bins is not None and not (isinstance(n_bins, int) and n_bins >= 2):
        raise UsageError(f"n_bins must be an integer >= 2 (256 for 8-bit data) or None for continuous data, "
                         f"got {n_bins!r}")
    lo, hi = (float(v) for v in data_range)
    if not hi > lo:
        raise UsageError(f"data_range must be (lo, hi) with lo < hi, got {tuple(data_range)}")
    return lo, hi


def bin_offset(n_bins: int | None, data_range=(-1.0, 1.0)) -> float:
    """-log2 of the bin width (hi - lo) / n_bins in model space (0 for continuous data, n_bins None)."""
    lo, hi = check_bins(n_bins, data_range)
    return 0.0 if n_bins is None else -math.log2((hi - lo) / n_bins)


def bits_per_dim(logp: Tensor, x_shape, *, data_range=(-1.0, 1.0), n_bins: int | None = 256) -> Tensor:
    """bits/dim = -logp / (D ln 2) - log2((hi - lo) / n_bins) per sample, D = prod(x_shape[1:]).

    logp is the log-density (nats) of the dequantised data in model space, x_shape the data batch's shape
    (N, ...). With n_bins None (continuous data) there is no offset: -logp / (D ln 2).
    """
    x_shape = tuple(x_shape)
    if len(x_shape) < 2 or x_shape[0] != logp.shape[0] or logp.ndim != 1:
        raise UsageError(f"x_shape must be the data batch's shape (N, ...) with N = len(logp); got x_shape={x_shape} "
                         f"for logp of shape {tuple(logp.shape)}")
    if not torch.isfinite(logp).all():
        raise UsageError("logp contains NaN or inf; bits/dim would be meaningless (check the ODE solve and the data)")
    d = math.prod(x_shape[1:])
    return -logp.to(torch.float64) / (d * math.log(2.0)) + bin_offset(n_bins, data_range)


def dequantize(x: Tensor, n_bins: int, data_range=(-1.0, 1.0), generator: torch.Generator | None = None) -> Tensor:
    """lo + (hi - lo)(k + u) / n_bins, u ~ U[0, 1), for discrete x = lo + (hi - lo) k / (n_bins - 1)."""
    if n_bins is None:
        raise UsageError("dequantize needs n_bins (the data are continuous when n_bins is None: skip dequantisation)")
    lo, hi = check_bins(n_bins, data_range)
    k_real = (x.to(torch.float64) - lo) / (hi - lo) * (n_bins - 1)
    k = k_real.round()
    # Values stored in float32 sit within ~1e-4 bins of the grid for any n_bins up to 2^16.
    if ((k_real - k).abs() > 1e-3).any() or (k < 0).any() or (k > n_bins - 1).any():
        raise UsageError(f"x is not on the grid of {n_bins} levels over data_range {(lo, hi)}; is it already "
                         "dequantised, or is data_range / n_bins wrong?")
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)
    return (lo + (hi - lo) * (k + u) / n_bins).to(x.dtype)


class BitsPerDim(NamedTuple):
    """mean bits/dim, its standard error over data points, count of data points, mean NFE per ODE solve, the
    estimated ODE error of the mean (nan when not estimated), and the ODE setting used."""

    mean: float
    stderr: float
    count: int
    nfe: float
    ode_error: float = math.nan
    setting: str = ""


def evaluate_bits_per_dim(sde, score_fn, batches: Iterable, *, n_bins: int | None = 256, data_range=(-1.0, 1.0),
                          repeats: int = 1, progress: bool = False, generator: torch.Generator | None = None,
                          method: str = "eab4", steps: int | None = None, rtol: float | None = None,
                          atol: float | None = None, accuracy: float | None = 1e-3, pilot: int = 16,
                          **likelihood_kwargs) -> BitsPerDim:
    """Bits/dim over batches of x (or (x, y) pairs), each dequantised `repeats` times with fresh noise.

    Each data point's bits/dim is averaged over its repeats (score_sde reports the test set x5), so the
    standard error is over data points (nan for a single point). The ODE setting is the loosest one whose error,
    estimated on the first `pilot` points of the first batch (likelihood.accuracy), is at most `accuracy`
    bits/dim: steps of the fixed-grid `method`, or tolerances of an adaptive one. Giving steps, or rtol/atol
    (which select rk45 when `method` is fixed-grid), fixes the setting; its error is still estimated unless
    pilot is 0. The pilot points count as test points, solved with the chosen setting. likelihood_kwargs go to
    log_likelihood (divergence, n_probes, eps, ...).
    """
    settings = _check_options(n_bins, data_range, repeats, method, steps, rtol, atol, accuracy, pilot)
    solver = _BatchSolver(sde, score_fn, n_bins, data_range, generator, settings, accuracy, pilot, likelihood_kwargs)
    total, total_sq, count, nfe, solves = 0.0, 0.0, 0, 0, 0
    bar = tqdm(batches, desc="bits/dim", disable=not progress)
    for batch in bar:
        x = batch_data(batch)
        per_sample, batch_nfe = solver.repeated(x, repeats)
        nfe, solves = nfe + batch_nfe, solves + repeats
        total += float(per_sample.sum())
        total_sq += float((per_sample**2).sum())
        count += x.shape[0]
        bar.set_postfix(bpd=f"{total / count:.4f}")
    if count == 0:
        raise UsageError("no data: batches was empty")
    mean, stderr = _mean_and_stderr(total, total_sq, count)
    return BitsPerDim(mean, stderr, count, nfe / solves, solver.ode_error, solver.setting.describe())


def _check_options(n_bins, data_range, repeats, method, steps, rtol, atol, accuracy, pilot) -> list[OdeSetting]:
    """The candidate ODE settings of evaluate_bits_per_dim's options, once the options are checked."""
    if not (isinstance(repeats, int) and repeats >= 1):
        raise UsageError(f"repeats must be a positive integer, got {repeats!r}")
    if not (isinstance(pilot, int) and pilot >= 0):
        raise UsageError(f"pilot must be a non-negative integer (points used to estimate the ODE error), got {pilot!r}")
    if accuracy is not None and not accuracy > 0:
        raise UsageError(f"accuracy must be a positive number of bits/dim (or None), got {accuracy!r}")
    check_bins(n_bins, data_range)
    settings = candidates(method, steps, rtol, atol)
    if len(settings) > 1 and (accuracy is None or pilot == 0):
        raise UsageError("choosing the ODE setting needs accuracy > 0 and pilot > 0; or give steps or rtol/atol")
    return settings


class _BatchSolver:
    """Per-point bits/dim of batches through the likelihood ODE, at the setting chosen on the first `pilot` points
    of the first batch (settings[0] until then, and for good when pilot is 0)."""

    def __init__(self, sde, score_fn, n_bins, data_range, generator, settings: list[OdeSetting],
                 accuracy: float | None, pilot: int, likelihood_kwargs: dict):
        self.sde, self.score_fn, self.n_bins, self.data_range = sde, score_fn, n_bins, data_range
        self.generator, self.settings, self.accuracy, self.pilot = generator, settings, accuracy, pilot
        self.likelihood_kwargs = likelihood_kwargs
        self.estimator = DIVERGENCES[likelihood_kwargs.get("divergence", "rademacher")]
        self.setting, self.ode_error, self.chosen = settings[0], math.nan, pilot == 0

    def repeated(self, x: Tensor, repeats: int) -> tuple[Tensor, int]:
        """Each point's bits/dim averaged over `repeats` dequantisations, and the NFE summed over their solves."""
        per_sample, nfe = torch.zeros(x.shape[0], dtype=torch.float64), 0
        for _ in range(repeats):
            bpd, solve_nfe = self.once(x)
            per_sample += bpd / repeats
            nfe += solve_nfe
        return per_sample, nfe

    def once(self, x: Tensor) -> tuple[Tensor, int]:
        """Each point's bits/dim under one fresh dequantisation (and fresh probes), and the NFE of the batch's
        solve; the first call chooses the setting on its first `pilot` points, which it solves with that setting."""
        x_cont = x if self.n_bins is None else dequantize(x, self.n_bins, self.data_range, generator=self.generator)
        probes = self._probes(x_cont)
        bpds, nfe, start = [], 0, 0
        if not self.chosen:
            start = min(self.pilot, x.shape[0])
            pilot = choose_setting(functools.partial(self._solve, x_cont[:start], _rows(probes, 0, start)),
                                   self.settings, self.accuracy)
            self.setting, self.ode_error, self.chosen = pilot.setting, pilot.ode_error, True
            bpds.append(pilot.bpd)
            nfe = pilot.nfe
        if start < x.shape[0]:
            bpd, rest_nfe = self._solve(x_cont[start:], _rows(probes, start, x.shape[0]), self.setting)
            bpds.append(bpd)
            nfe = max(nfe, rest_nfe)
        return torch.cat(bpds), nfe

    def _probes(self, x_cont: Tensor) -> Tensor | None:
        """The divergence estimator's probes for the batch x_cont (None for the exact divergence)."""
        if self.estimator.probes is None:
            return None
        kw = self.likelihood_kwargs
        return self.estimator.probes(kw.get("n_probes", 1), x_cont.to(state_dtype_for(x_cont, kw.get("state_dtype"))),
                                     self.generator)

    def _solve(self, x_cont: Tensor, probes: Tensor | None, setting: OdeSetting) -> tuple[Tensor, int]:
        """Bits/dim of the points x_cont (on the CPU) at `setting`, and the solve's NFE."""
        r = log_likelihood(self.sde, self.score_fn, x_cont, probes=probes, **setting.kwargs(), **self.likelihood_kwargs)
        return bits_per_dim(r.logp, x_cont.shape, data_range=self.data_range, n_bins=self.n_bins).cpu(), r.nfe


def _mean_and_stderr(total: float, total_sq: float, count: int) -> tuple[float, float]:
    """Mean and its standard error from the sums of x and x^2 over count points (stderr nan for one point)."""
    mean = total / count
    var = (total_sq - count * mean**2) / (count - 1) if count > 1 else math.nan
    return mean, math.sqrt(max(var, 0.0) / count)


def _rows(probes: Tensor | None, start: int, stop: int) -> Tensor | None:
    return None if probes is None else probes[:, start:stop]


def merge_bits_per_dim(results: list[BitsPerDim | None]) -> BitsPerDim:
    """The BitsPerDim of the union of disjoint shards, from each shard's mean, stderr and count (None: no shard).

    The sums of x and x^2 of a shard are count*mean and (count - 1)*count*stderr^2 + count*mean^2; NFE and the
    ODE error (a bound on each shard's mean absolute error, so its weighted mean bounds the union's) are averaged
    with weights count; the settings of the shards are listed once each.
    """
    results = [r for r in results if r is not None and r.count > 0]
    if not results:
        raise UsageError("no data: every shard was empty")
    count = sum(r.count for r in results)
    total = sum(r.count * r.mean for r in results)
    total_sq = sum((r.count - 1) * r.count * r.stderr**2 + r.count * r.mean**2 if r.count > 1 else r.mean**2
                   for r in results)
    mean, stderr = _mean_and_stderr(total, total_sq, count)
    nfe = sum(r.count * r.nfe for r in results) / count
    ode_error = sum(r.count * r.ode_error for r in results) / count
    setting = ", ".join(dict.fromkeys(r.setting for r in results))
    return BitsPerDim(mean, stderr, count, nfe, ode_error, setting)
