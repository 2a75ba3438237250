"""The straightness of benchmarks/flows.py against flows whose paths are known exactly."""
import importlib.util
import math

import pytest
import torch
from helpers import ROOT

from scoresde.sde_lib import RectifiedFlow, VPSDE

spec = importlib.util.spec_from_file_location("flows_benchmark", ROOT / "benchmarks" / "flows.py")
flows = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flows)

EPS = 1e-3
X0 = torch.tensor([0.7, -0.4, 0.2])


def point_mass_score(sde):
    """The exact score of data all at X0: x_t | x_0 = X0 is N(alpha_bar X0, beta_bar^2 I)."""
    def score(x, t):
        t = t.double()[:, None]
        return ((sde.alpha_bar(t) * X0 - x.double()) / sde.beta_bar(t) ** 2).to(x.dtype)
    return score


def test_one_data_point_under_rectified_flow_moves_in_straight_lines_at_constant_speed():
    # The ODE from eps goes along x_t = (1 - t) X0 + t eps at the constant velocity eps - X0: S = 0, arc = chord.
    sde = RectifiedFlow()
    s, s_rel, ratio = flows.straightness(sde, point_mass_score(sde), (3,), n=32, steps=50, eps=EPS)
    assert s < 1e-9 and s_rel < 1e-9
    assert ratio == pytest.approx(1.0, abs=1e-6)


def test_one_data_point_under_vp_follows_a_curve():
    # VP's paths x_t = alpha_bar X0 + beta_bar eps with alpha_bar^2 + beta_bar^2 = 1 bend: arc > chord, S > 0.
    sde = VPSDE()
    s, s_rel, ratio = flows.straightness(sde, point_mass_score(sde), (3,), n=32, steps=400, eps=EPS)
    assert ratio > 1.05 and s_rel > 0.1


def test_a_gaussian_under_rectified_flow_moves_along_rays():
    # Data N(0, sigma^2 I): the marginal std is m(t) = sqrt((1 - t)^2 sigma^2 + t^2) and the ODE's paths are the
    # rays x_t = m(t)/m(T) x_T. m falls to its minimum at t = sigma^2/(1 + sigma^2) and rises again, so each path
    # runs in and back out along its ray: arc/chord = (m(T) + m(eps) - 2 min m)/|m(T) - m(eps)|, and
    # S_rel = (T - eps) int m'^2 dt / (m(T) - m(eps))^2 - 1 (the same for every path), here by quadrature.
    sde, sigma = RectifiedFlow(), 0.3

    def score(x, t):
        return -x / ((1 - t[:, None]) ** 2 * sigma**2 + t[:, None] ** 2).to(x.dtype)

    s, s_rel, ratio = flows.straightness(sde, score, (2,), n=64, steps=2000, eps=EPS)
    t = torch.linspace(EPS, sde.T, 200001, dtype=torch.float64)
    m = torch.sqrt((1 - t) ** 2 * sigma**2 + t**2)
    dm = ((t - (1 - t) * sigma**2) / m)
    span = sde.T - EPS
    expected = span * torch.trapezoid(dm**2, t) / (m[-1] - m[0]) ** 2 - 1
    assert ratio == pytest.approx(float((m[-1] + m[0] - 2 * m.min()) / (m[-1] - m[0]).abs()), rel=1e-3)
    assert s_rel == pytest.approx(float(expected), rel=2e-2)
    assert float(expected) > 0.1 and math.isfinite(s)
