"""ODE settings chosen for a bits/dim accuracy, and an estimate of the integration error of the bits/dim.

The ODE error of a setting is measured, not inferred from its tolerance: on a pilot batch the same points and the
same probes are solved at the setting and at two more accurate ones (twice and four times the steps of a fixed
grid, or rtol and atol divided by 10 and 100), and the error of bits/dim at the setting is estimated by

    err = mean_i |b_i(s) - b_i(s')| + mean_i |b_i(s') - b_i(s'')|,

the triangle inequality with the last (most accurate) solve taken as exact. It bounds the mean absolute error
per pilot point, hence the bias of the mean bits/dim as far as the pilot represents the test set (per-point errors
can be heavy-tailed; docs/math.md, "The likelihood ODE and bits/dim"). Two differences rather than one: the errors
of dopri5 and of fixed grids are not monotone in the setting near 1e-3 bits/dim (dopri5 at tol 1e-5 was 2x worse
than at 1e-4 on a trained digits U-Net), so |b(s) - b(s')| alone may miss half of the error of s.
"""
from __future__ import annotations

import logging
from typing import Callable, NamedTuple

import torch

from .multistep import FIXED_METHODS
from scoresde.utils import UsageError

Tensor = torch.Tensor

# Candidate settings for the accuracy search, loosest first.
STEP_LADDER = tuple(12 * 2**k for k in range(7))           # 12 ... 768 steps
TOL_LADDER = tuple(float(f"1e-{k}") for k in range(2, 9))   # 1e-2 ... 1e-8


def _decimal(value: float) -> float:
    """value rounded to 12 significant digits, so that 1e-2 / 10 is the ladder's 1e-3 (solves are cached by it)."""
    return float(f"{value:.12g}")


class OdeSetting(NamedTuple):
    """One way to solve the likelihood ODE: a fixed-grid method with `steps`, or an adaptive one with rtol/atol."""

    method: str
    steps: int | None = None
    rtol: float | None = None
    atol: float | None = None

    def kwargs(self) -> dict:
        if self.steps is not None:
            return {"method": self.method, "steps": self.steps}
        return {"method": self.method, "rtol": self.rtol, "atol": self.atol}

    def refined(self, level: int) -> "OdeSetting":
        """The setting 2^level times the steps, or with tolerances divided by 10^level."""
        if self.steps is not None:
            return self._replace(steps=self.steps * 2**level)
        return self._replace(rtol=_decimal(self.rtol / 10**level), atol=_decimal(self.atol / 10**level))

    def describe(self) -> str:
        if self.steps is not None:
            return f"{self.method} {self.steps} steps"
        if self.rtol == self.atol:
            return f"{self.method} rtol {self.rtol:g}"
        return f"{self.method} rtol {self.rtol:g} atol {self.atol:g}"


def candidates(method: str, steps: int | None, rtol: float | None, atol: float | None) -> list[OdeSetting]:
    """The settings to try, loosest first: the one given, or the ladder of `method` when none is.

    rtol or atol given select the adaptive method (rk45 when `method` is a fixed-grid one); the other tolerance
    defaults to the one given (score_sde uses rtol = atol).
    """
    if rtol is not None or atol is not None:
        adaptive = "rk45" if method in FIXED_METHODS else method
        rtol = atol if rtol is None else rtol
        return [OdeSetting(adaptive, rtol=float(rtol), atol=float(rtol if atol is None else atol))]
    if method in FIXED_METHODS:
        if steps is not None:
            return [OdeSetting(method, steps=int(steps))]
        return [OdeSetting(method, steps=n) for n in STEP_LADDER]
    if steps is not None:
        raise UsageError(f"steps applies to the fixed-grid methods ({', '.join(FIXED_METHODS)}), not to the "
                         f"adaptive {method!r}; give rtol/atol instead")
    return [OdeSetting(method, rtol=tol, atol=tol) for tol in TOL_LADDER]


class PilotResult(NamedTuple):
    """setting: the one chosen; ode_error: its estimated bits/dim error; bpd and nfe: the pilot points solved with
    it (reused as test points); pilot_nfe: network calls per point spent on the more accurate solves."""

    setting: OdeSetting
    ode_error: float
    bpd: Tensor
    nfe: int
    pilot_nfe: int


def choose_setting(solve: Callable[[OdeSetting], tuple[Tensor, int]], settings: list[OdeSetting],
                   accuracy: float | None) -> PilotResult:
    """The loosest of `settings` whose estimated error is at most `accuracy` (the only one when there is one).

    solve(setting) gives the pilot points' bits/dim (same points, same probes every time) and its NFE. When no
    candidate reaches the accuracy the most accurate one is kept, with its (larger) estimated error.
    """
    solved: dict[OdeSetting, tuple[Tensor, int]] = {}

    def get(s):
        if s not in solved:
            solved[s] = solve(s)
        return solved[s]

    def error(s):
        b0, b1, b2 = (get(s.refined(level))[0] for level in range(3))
        err = float((b0 - b1).abs().mean() + (b1 - b2).abs().mean())
        spent = sum(n for _, n in solved.values())
        logging.info("pilot on %d points: %s has an estimated error of %.2g bits/dim (%d network calls per point "
                     "so far)", len(b0), s.describe(), err, spent)
        return err

    chosen, err = settings[-1], None
    for s in settings:
        err = error(s)
        if accuracy is None or err <= accuracy:
            chosen = s
            break
    if accuracy is not None and err > accuracy:
        logging.warning("no ODE setting up to %s reached the bits/dim accuracy %g (estimated error %.2g); "
                        "using it anyway", chosen.describe(), accuracy, err)
    bpd, nfe = get(chosen)
    pilot_nfe = sum(n for s, (_, n) in solved.items() if s != chosen)
    return PilotResult(chosen, err, bpd, nfe, pilot_nfe)
