"""Name -> solver class; the names are the CLI's --solver values."""
from __future__ import annotations

import inspect

from .base import Solver
from .library_sde import SDEEuler, SDEMidpoint, SDESRK
from .ode import DDIM, DPMSolver, RK45, Euler, Heun, UniPC
from .stochastic import Ancestral, EulerMaruyama, PredictorCorrector

SOLVERS: dict[str, type[Solver]] = {
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
    "sde_euler": SDEEuler,
    "sde_srk": SDESRK,
    "sde_midpoint": SDEMidpoint,
}


def available() -> list[str]:
    """The registered solver names."""
    return list(SOLVERS)


def get_solver(name: str) -> type[Solver]:
    """The solver class registered under `name`; a ValueError lists the names otherwise."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; available: {', '.join(SOLVERS)}")
    return SOLVERS[name]


def solver_options(name: str) -> list[str]:
    """The keyword options solver `name` accepts (its constructor's keyword-only parameters)."""
    params = inspect.signature(get_solver(name).__init__).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
