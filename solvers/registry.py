"""Name -> solver class; the names are the CLI's --solver values."""
from __future__ import annotations

from scoresde.utils import Registry, UsageError

from .base import Solver
from .consistency import Consistency
from .dpm_sde import DPMSolverSDE
from .edm import EDM
from .library_sde import SDEEuler, SDEMidpoint, SDESRK
from .ode import DDIM, DPMSolver, RK45, Euler, Heun, UniPC
from .stochastic import Ancestral, EulerMaruyama, PredictorCorrector

SOLVERS: Registry[type[Solver]] = Registry("solver", {
    # probability-flow ODE (deterministic)
    "euler": Euler,
    "heun": Heun,
    "rk45": RK45,
    "ddim": DDIM,
    "dpm_solver": DPMSolver,
    "unipc": UniPC,
    # reverse SDE (stochastic)
    "euler_maruyama": EulerMaruyama,
    "pc": PredictorCorrector,
    "ancestral": Ancestral,
    "edm": EDM,
    "dpm_solver_sde": DPMSolverSDE,
    "sde_euler": SDEEuler,
    "sde_srk": SDESRK,
    "sde_midpoint": SDEMidpoint,
    # consistency models (Song et al. 2023, Algorithm 1): needs only the denoised estimate
    "consistency": Consistency,
})


def available() -> list[str]:
    """The registered solver names."""
    return SOLVERS.names()


def get_solver(name: str) -> type[Solver]:
    """The solver class registered under `name`; a ValueError lists the names otherwise."""
    return SOLVERS[name]


def default_grid(name: str, steps: int) -> str:
    """The grid solver `name` takes at `steps` steps when none is given (its class's default_grids table)."""
    cls = get_solver(name)
    if cls.adaptive:
        raise UsageError(f"{name} is adaptive and takes no grid")
    return cls.grid_for(steps)


def deterministic() -> list[str]:
    """The probability-flow ODE solvers (those `encode` and `calibrate_grid` accept)."""
    return [name for name, cls in SOLVERS.items() if not cls.stochastic]
