"""The default grid and order by step count (solvers.default_grid), judged on the exact mixture's ODE map.

The table was chosen on the digits model (benchmarks/defaults.py --sweep). On the exact mixture the few-step choice
(uniform t, order 2) is not the most accurate of our own grids, log-SNR is, so what is asserted here is what does
hold there: our defaults are at least as accurate as diffusers' schedulers as shipped, and past the switch the
log-SNR default has a fraction of the error of the few-step default's uniform grid.
"""
import pytest
import torch
from oracles import MIX

from scoresde import sde_lib
from scoresde import solvers

VP = sde_lib.VPSDE()
SCORE = MIX.score_fn(VP)


@pytest.fixture(scope="module")
def paths():
    """1000 prior points and their exact ODE map to eps (rk45 at 1e-10: its error is far below every RMSE here)."""
    x_T = VP.prior_sampling((1000, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return x_T, solvers.sample(VP, SCORE, None, "rk45", x_T=x_T, rtol=1e-10, atol=1e-10).x


def rmse(x, ref):
    return float((x.double() - ref).pow(2).mean().sqrt())


def ours(solver, steps, paths, **options):
    x_T, ref = paths
    return rmse(solvers.sample(VP, SCORE, None, solver, x_T=x_T, steps=steps, **options).x, ref)


def diffusers_default(scheduler_cls, steps, paths):
    """diffusers' scheduler as shipped (linear betas 1e-4..0.02 over 1000 steps), its noise prediction at timestep n
    from the exact score at the t where the VP-SDE has the scheduler's log-SNR."""
    x_T, ref = paths
    scheduler = scheduler_cls()
    scheduler.set_timesteps(steps)
    ac = scheduler.alphas_cumprod.double()
    t_of = VP.t_of_log_snr(0.5 * torch.log(ac / (1 - ac))).clamp(1e-3, VP.T)
    x = x_T.float() * scheduler.init_noise_sigma
    for n in scheduler.timesteps:
        t = t_of[int(n)]
        eps = -VP.beta_bar(t) * SCORE(x.double(), t.expand(len(x)))
        x = scheduler.step(eps.float(), n, x).prev_sample
    return rmse(x, ref)


@pytest.mark.parametrize("steps", [5, 8, 10, 12, 15, 20])
@pytest.mark.parametrize("solver, scheduler", [("unipc", "UniPCMultistepScheduler"),
                                               ("dpm_solver", "DPMSolverMultistepScheduler")])
def test_default_is_at_least_as_accurate_as_diffusers_default(paths, solver, scheduler, steps):
    # Equal NFE (one per step for both). Measured RMSE to the exact map, ours / diffusers': unipc 0.222 / 0.229 at 5
    # steps, 0.118 / 0.124 at 8, 0.048 / 0.100 at 10, 0.009 / 0.039 at 20; dpm_solver 0.229 / 0.242, 0.119 / 0.129,
    # 0.093 / 0.101, 0.011 / 0.040. The closest margin is 3 % (unipc, 5 steps), far above float32 round-off in the
    # scheduler (1e-6), so no slack is given.
    diffusers = pytest.importorskip("diffusers")
    assert ours(solver, steps, paths) < diffusers_default(getattr(diffusers, scheduler), steps, paths)


@pytest.mark.parametrize("solver", ["unipc", "dpm_solver"])
def test_many_step_default_beats_the_few_step_grid(paths, solver):
    # At 20 steps the default is log-SNR at order 3; uniform t at order 2 (the few-step default) ends with a long
    # first-order step whose error dominates: measured 0.0091 against 0.0348 (unipc) and 0.0106 against 0.0364
    # (dpm_solver), ratios 0.26 and 0.29; the digits model gives 0.57 and 0.64. 0.4 bounds the mixture's ratio.
    assert solvers.default_grid(solver, 20) == "logsnr"
    assert ours(solver, 20, paths) < 0.4 * ours(solver, 20, paths, grid="uniform", order=2)


def test_few_step_heun_default_is_the_best_named_grid(paths):
    # 3 Heun steps (5 NFE): measured 0.240 on the EDM grid, 0.248 uniform, 0.268 log-SNR, on the digits model 0.275,
    # 0.338, 0.377; the mixture's margin (3 %) is far above round-off.
    default = ours("heun", 3, paths)
    assert default < min(ours("heun", 3, paths, grid=grid) for grid in ("uniform", "logsnr"))


def test_a_named_grid_keeps_third_order(paths):
    # An explicit grid is used as given, and without an order it keeps DPM-Solver++(3M)/UniPC-3: bit-identical to
    # order=3 on the same grid, and not the few-step default's order 2.
    x_T, _ = paths
    for solver in ("unipc", "dpm_solver"):
        run = [solvers.sample(VP, SCORE, None, solver, x_T=x_T, steps=5, grid="logsnr", **o).x
               for o in ({}, {"order": 3}, {"order": 2})]
        torch.testing.assert_close(run[0], run[1], rtol=0, atol=0)
        assert not torch.equal(run[0], run[2])
