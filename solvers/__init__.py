"""Samplers for score-based models: reverse-SDE and probability-flow ODE solvers that count their score calls."""
from .analytic import NoiseMoments, estimate_eps_moments, load_eps_moments, save_eps_moments
from .api import Sampler, calibratable, check_calibratable, check_steps, encode, sample, sampler
from .base import SampleResult, Solver
from .calibrate import Calibration, calibrate_grid
from .counting import CountingScore
from .grids import GRIDS, grid_options, grid_record, load_grid, resolve_grid, save_grid, time_grid
from .options import check_options, parse_options, solver_options
from .random import SampleGenerators
from .registry import SOLVERS, available, default_grid, deterministic, get_solver

__all__ = ["sample", "encode", "sampler", "Sampler", "available", "get_solver", "solver_options", "check_options",
           "parse_options", "check_steps", "SampleResult", "Solver", "CountingScore", "SOLVERS", "GRIDS",
           "default_grid",
           "time_grid", "resolve_grid", "grid_options", "grid_record", "calibrate_grid", "Calibration", "save_grid",
           "load_grid", "calibratable", "check_calibratable", "deterministic", "SampleGenerators",
           "NoiseMoments", "estimate_eps_moments", "save_eps_moments", "load_eps_moments"]
