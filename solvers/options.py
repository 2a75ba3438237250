"""A solver's options: the keyword-only parameters of the __init__s along its class hierarchy.

This is the one place options are parsed and checked: `sample`, `encode`, `calibrate_grid` and the command line
(`--solver_options "order=2,variant=bh1"`, `config.sampling.options`) all go through `check_options`.
"""
from __future__ import annotations

import inspect

from .registry import get_solver
from scoresde.utils import UsageError

_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def option_parameters(solver: str) -> dict[str, inspect.Parameter]:
    """Option name -> its parameter, collected from every class of the solver's MRO (subclasses first)."""
    found: dict[str, inspect.Parameter] = {}
    for cls in get_solver(solver).__mro__:
        init = vars(cls).get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in found:
                found[p.name] = p
    return found


def solver_options(solver: str) -> list[str]:
    """The names of the options solver `solver` accepts."""
    return list(option_parameters(solver))


def expected_type(p: inspect.Parameter) -> type | None:
    """int, float, bool or str from the annotation (or the default's type); None for anything else (e.g. grid)."""
    annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
    annotation = annotation.removesuffix(" | None")     # e.g. order: int | None (None: the default per steps)
    if annotation in _TYPES:
        return _TYPES[annotation]
    return type(p.default) if type(p.default) in _TYPES.values() else None


def _convert(solver: str, name: str, value, kind: type | None):
    if kind is None or (isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))):
        return value
    problem = f"solver {solver!r} option {name}={value!r}: expected {kind.__name__}"
    if isinstance(value, str):
        text = value.strip()
        if kind is bool:
            if text.lower() not in _BOOLEANS:
                raise UsageError(f"{problem} (true or false)")
            return _BOOLEANS[text.lower()]
        try:
            return kind(text)
        except ValueError:
            raise UsageError(problem) from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise UsageError(problem)


def check_options(solver: str, options: dict) -> dict:
    """`options` converted to the solver's types (strings from the command line are parsed).

    An unknown option names itself and lists the solver's options; a value of the wrong type names the option and
    the expected type. Ranges (e.g. order in 1..3) are checked by the solver's constructor.
    """
    params = option_parameters(solver)
    checked = {}
    for name, value in options.items():
        if name not in params:
            raise UsageError(f"unknown option {name!r} for solver {solver!r}; its options: "
                             f"{', '.join(params) or 'none'}")
        checked[name] = _convert(solver, name, value, expected_type(params[name]))
    return checked


def parse_options(text: str) -> dict[str, str]:
    """"order=2, variant=bh1" -> {"order": "2", "variant": "bh1"} (values stay text; check_options converts)."""
    options: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"solver options are written name=value[,name=value...], got {item.strip()!r}")
        options[name.strip()] = value.strip()
    return options
