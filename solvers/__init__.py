"""Samplers for score-based models: reverse-SDE and probability-flow ODE solvers that count their score calls."""
from .api import encode, sample
from .base import SampleResult, Solver
from .calibrate import Calibration, calibratable, calibrate_grid, check_calibratable, load_grid, save_grid
from .counting import CountingScore
from .grids import GRIDS, time_grid
from .registry import SOLVERS, available, get_solver, solver_options

__all__ = ["sample", "encode", "available", "get_solver", "solver_options", "SampleResult", "Solver",
           "CountingScore", "SOLVERS", "GRIDS", "time_grid", "calibrate_grid", "Calibration", "save_grid", "load_grid",
           "calibratable", "check_calibratable"]
