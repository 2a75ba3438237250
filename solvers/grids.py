"""Time grids from T down to eps: uniform in t, uniform in log-SNR, and EDM's rho-schedule, optionally shifted
by a constant offset of the log-SNR (SD3's shift).

Every fixed-step solver takes its grid from here. Grids are float64, strictly decreasing, and start and end
exactly at T and eps (the log-SNR inversions are only accurate to round-off, so the endpoints are pinned).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import torch

from scoresde.sde_lib import SDE
from scoresde.utils import MissingFileError, Registry, UsageError
from scoresde.utils import atomic_write_text

Tensor = torch.Tensor


def uniform_t(sde: SDE, steps: int, eps: float) -> Tensor:
    """t_i = T + i (eps - T) / steps."""
    return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)


def uniform_log_snr(sde: SDE, steps: int, eps: float) -> Tensor:
    """lambda(t_i) uniform between lambda(T) and lambda(eps), lambda = log(alpha_bar / beta_bar)."""
    lam = torch.linspace(float(sde.log_snr(sde.T)), float(sde.log_snr(eps)), steps + 1, dtype=torch.float64)
    return _pin(sde.t_of_log_snr(lam), sde.T, eps)


def edm_rho(sde: SDE, steps: int, eps: float, rho: float = 7.0) -> Tensor:
    """EDM: sigma_i = (sigma_max^(1/rho) + i/steps (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    sigma = beta_bar/alpha_bar."""
    sigma_max = torch.exp(-sde.log_snr(sde.T))
    sigma_min = torch.exp(-sde.log_snr(eps))
    ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    sigma = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return _pin(sde.t_of_log_snr(-torch.log(sigma)), sde.T, eps)


def _pin(t: Tensor, T: float, eps: float) -> Tensor:
    t = t.clamp(eps, T)
    t[0], t[-1] = T, eps
    return t


GRIDS = Registry("time grid", {"uniform": uniform_t, "logsnr": uniform_log_snr, "edm": edm_rho})


def check_grid_name(name: str) -> str:
    """The registered spelling of grid `name`; a ValueError listing the grids if there is none."""
    return GRIDS.canonical(name)


def as_times(times) -> Tensor:
    """A given grid (a sequence or 1-D tensor of times, e.g. from solvers.calibrate_grid) as float64 on the CPU."""
    try:
        t = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise UsageError(f"grid must be a grid name ({', '.join(GRIDS)}) or a 1-D sequence of times, "
                         f"got {type(times).__name__}") from None
    if t.ndim != 1 or len(t) < 2 or not torch.isfinite(t).all() or not (t[1:] < t[:-1]).all():
        raise UsageError(f"a given grid must be a 1-D, finite, strictly decreasing sequence of at least 2 times "
                         f"from T to eps, got {t.tolist()}")
    return t


def check_times(t: Tensor, sde: SDE, steps: int, eps: float) -> Tensor:
    """t if it has `steps` steps from T to eps (to round-off), else a ValueError saying what differs."""
    if len(t) != steps + 1:
        raise UsageError(f"the given grid has {len(t) - 1} steps, but steps={steps} was asked for; "
                         f"leave steps unset to use the grid's")
    if abs(float(t[0]) - sde.T) > 1e-9 * sde.T or abs(float(t[-1]) - eps) > 1e-9 * sde.T:
        raise UsageError(f"the given grid runs from {float(t[0])!r} to {float(t[-1])!r}, but sampling runs from "
                         f"T={sde.T!r} to eps={eps!r}; pass the eps the grid was made for")
    return _pin(t.clone(), sde.T, eps)


def shift_times(sde: SDE, t: Tensor, shift: float) -> Tensor:
    """The grid t with its inner times moved to log-SNR lambda(t) - log(shift); t[0] = T and t[-1] = eps stay.

    A constant offset of the log-SNR is SD3's shift sigma' = shift sigma/(1 + (shift - 1) sigma) of rectified flow
    (sigma = t = 1/(1 + e^lambda)), written for every member through its own t_of_log_snr: shift > 1 spends more
    steps at high noise. A ValueError if an inner time would leave (eps, T).
    """
    if shift == 1.0:
        return t
    inner = sde.t_of_log_snr(sde.log_snr(t[1:-1]) - math.log(shift))
    moved = torch.cat([t[:1], inner, t[-1:]])
    if not (moved[1:] < moved[:-1]).all():
        raise UsageError(f"shift={shift} moves inner times of the grid past T={sde.T} or eps={float(t[-1])} (the "
                         f"log-SNR offset is {-math.log(shift):.3g}, wider than the grid's outer steps); use a shift "
                         "nearer 1, more steps, or the uniform grid, whose outer steps are widest in log-SNR")
    return moved


def time_grid(sde: SDE, steps: int, eps: float, grid: str = "uniform", rho: float = 7.0,
              shift: float = 1.0) -> Tensor:
    """The steps + 1 times T = t_0 > t_1 > ... > t_steps = eps of the named grid (float64), its inner times shifted
    in log-SNR by -log(shift) (shift_times)."""
    grid = check_grid_name(grid)
    if grid == "edm":
        t = edm_rho(sde, steps, eps, rho)
    else:
        t = GRIDS[grid](sde, steps, eps)
    if not (t[1:] < t[:-1]).all():
        raise UsageError(f"the {grid!r} grid with {steps} steps on [{eps}, {sde.T}] is not strictly decreasing; "
                         f"use fewer steps or a larger eps")
    return shift_times(sde, t, shift)


def save_grid(path, calibration, *, solver: str, sde: SDE, fitted_on: dict | None = None, **solver_options) -> None:
    """Write a fitted grid (a solvers.Calibration) and what it was fitted for as JSON, atomically. fitted_on: what
    the fit was made on, kept in the record (the CLI gives the checkpoint's path and step, the pilot size and the
    iterations)."""
    record = {"times": calibration.times.tolist(), "solver": solver, "solver_options": solver_options,
              "sde": repr(sde), "error": calibration.error, "initial_error": calibration.initial_error,
              "nfe": calibration.nfe, **(fitted_on or {})}
    atomic_write_text(path, json.dumps(record, indent=1))


def load_grid(path) -> Tensor:
    """The times of a grid written by save_grid."""
    try:
        with open(path) as f:
            record = json.load(f)
        return as_times(record["times"])
    except FileNotFoundError:
        raise MissingFileError(f"no grid file at {str(path)!r}; make one with calibrate_grid and save_grid") \
            from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UsageError(f"{str(path)!r} is not a grid file written by save_grid ({e})") from None


def grid_record(path) -> dict:
    """Everything a grid file written by save_grid records (times, solver, options, errors, what it was fitted on)."""
    with open(path) as f:
        return dict(json.load(f))


def grid_options(path) -> dict:
    """The solver options a grid file written by save_grid was fitted with ({} if it does not say)."""
    return dict(grid_record(path).get("solver_options") or {})


class ResolvedGrid(NamedTuple):
    """grid: the solver's grid option (a name or the times; None = the solver's default); steps: the steps to
    take; label: what tells the grid apart in file names ("" for the default)."""

    grid: object
    steps: int | None
    label: str


def resolve_grid(grid, steps: int | None, *, steps_given: bool = True, label: str | None = None) -> ResolvedGrid:
    """A grid setting ("" for the solver's own, a grid name, a .json path or the times) as a solver option.

    A .json path (a grid written by save_grid) gives its times and, unless steps_given, its number of steps.
    label: the grid's name in file names (default: the grid's name, "grid-<file stem>" or "given").
    """
    if grid in ("", None):
        return ResolvedGrid(None, steps, "")
    if not isinstance(grid, str):
        times = as_times(grid)
        return ResolvedGrid(times, steps if steps_given else len(times) - 1, label or "given")
    if grid in GRIDS:
        return ResolvedGrid(grid, steps, grid)
    if not grid.endswith(".json"):
        raise UsageError(f"unknown time grid {grid!r}; available: {', '.join(GRIDS)}, or the path of a "
                         f".json grid file")
    times = load_grid(grid)
    return ResolvedGrid(times, steps if steps_given else len(times) - 1, label or f"grid-{Path(grid).stem}")
