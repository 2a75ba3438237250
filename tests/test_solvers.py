import math

import pytest
import torch
from oracles import MIX

from scoresde import solvers
from scoresde.sde_lib import SubVPSDE, VESDE, VPSDE


def prior(sde, n=200, seed=0):
    return sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference(sde, x_T):
    return solvers.sample(sde, MIX.score_fn(sde), None, "rk45", x_T=x_T, rtol=1e-10, atol=1e-10).x


def rmse(a, b):
    return float((a - b).pow(2).mean().sqrt())


@pytest.mark.parametrize("name, options, steps, order, margin", [
    ("euler", {}, 40, 1, 0.25),
    ("heun", {}, 20, 2, 0.35),
    ("dpm_solver", {"order": 2}, 20, 2, 0.35),
    ("dpm_solver", {"order": 3}, 40, 3, 0.4),
])
def test_deterministic_solvers_converge_at_their_order(name, options, steps, order, margin):
    # Error vs a dopri5 solution at rtol = atol = 1e-10 (3e-9 away at most) at n and 2n steps: the observed order
    # log2(e_n / e_2n) approaches the method's order; at these n the next Taylor term moves it by less than the margin
    # (measured 1.07, 1.82, 2.12 and 3.09).
    sde = VPSDE()
    x_T = prior(sde)
    ref = reference(sde, x_T)
    errors = [rmse(solvers.sample(sde, MIX.score_fn(sde), None, name, x_T=x_T, steps=n, **options).x, ref)
              for n in (steps, 2 * steps)]
    assert math.log2(errors[0] / errors[1]) == pytest.approx(order, abs=margin), errors


@pytest.mark.parametrize("options, order, margin", [
    ({"order": 1}, 2, 0.25),
    ({"order": 1, "variant": "bh1"}, 2, 0.25),
    ({"order": 2}, 3, 0.25),
    ({"order": 2, "variant": "bh1"}, 3, 0.25),
    ({"order": 3}, 3.5, 0.5),
])
def test_unipc_corrector_raises_the_order_by_one(options, order, margin):
    # Same reference and measure as above at 80 and 160 steps. UniP-p + UniC has order p + 1 (measured 2.00, 1.99,
    # 2.99, 3.06). For p = 3 the first two steps (UniP-1/2 while the history fills) stay 3rd order, so the observed
    # order lies between 3 and 4 (measured 3.38; 3.53 at 160 -> 320), while UniP-3 alone would be 3.
    sde = VPSDE()
    x_T = prior(sde)
    ref = reference(sde, x_T)
    errors = [rmse(solvers.sample(sde, MIX.score_fn(sde), None, "unipc", x_T=x_T, steps=n, **options).x, ref)
              for n in (80, 160)]
    assert math.log2(errors[0] / errors[1]) == pytest.approx(order, abs=margin), errors


def test_unipc_beats_its_predictor_at_equal_nfe():
    # The corrector is free: 20 steps cost 20 NFE with or without it, and it removes most of the error
    # (measured 6.8e-3 vs 8.2e-3 at 20 steps and 1.9e-5 vs 1.6e-4 at 80).
    sde = VPSDE()
    x_T = prior(sde)
    ref = reference(sde, x_T)
    for steps, gain in ((20, 1.1), (80, 5.0)):
        runs = [solvers.sample(sde, MIX.score_fn(sde), None, "unipc", x_T=x_T, steps=steps, corrector=c)
                for c in (True, False)]
        assert runs[0].nfe == runs[1].nfe == steps
        assert rmse(runs[0].x, ref) * gain < rmse(runs[1].x, ref)


def test_ddim_is_first_order_dpm_solver():
    # DDIM, DPM-Solver-1 and DPM-Solver++-1 are the same exponential-integrator step (round-off only).
    sde = VPSDE()
    x_T = prior(sde, 50)
    a = solvers.sample(sde, MIX.score_fn(sde), None, "ddim", x_T=x_T, steps=15, grid="logsnr").x
    b = solvers.sample(sde, MIX.score_fn(sde), None, "dpm_solver", x_T=x_T, steps=15, order=1).x
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    c = solvers.sample(sde, MIX.score_fn(sde), None, "unipc", x_T=x_T, steps=15, order=1, corrector=False).x
    torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_step_integrates_the_interpolating_polynomial_exactly(order):
    # x_s = (beta_bar_s/beta_bar_t) x_t + alpha_bar_s int e^(lambda - lambda_s) D dlambda (Lu et al. 2022b). For D a
    # polynomial of degree order - 1 in lambda the multistep update is exact, so it must match the integral by
    # 40-point Gauss-Legendre quadrature (exact to round-off for these smooth integrands). This is the "heun"
    # 2M update: Lu et al.'s Algorithm 2 ("midpoint") is off by about alpha_bar_s h^3/12 c_1 here, 1e-2 at h = 0.8.
    import numpy as np
    from scoresde.solvers.counting import CountingScore
    sde = VPSDE()
    solver = solvers.get_solver("dpm_solver")(sde, CountingScore(MIX.score_fn(sde), 1e-3, 1.0), order=order)
    ts = torch.tensor([0.9, 0.7, 0.55, 0.4], dtype=torch.float64)
    lam = sde.log_snr(ts)
    coefs = torch.tensor([[0.3, -1.2], [0.8, 0.5], [-0.2, 0.1]], dtype=torch.float64)[:order]
    d_of = lambda u: sum(c * u**k for k, c in enumerate(coefs))  # noqa: E731
    x = torch.tensor([[0.4, -0.7]], dtype=torch.float64)
    history = [(lam[j], d_of(lam[j])[None]) for j in range(3 - order, 3)]
    out = solver.step(x, history, lam[3], sde.alpha_bar(ts[3]), sde.beta_bar(ts[3]) / sde.beta_bar(ts[2]))
    nodes, weights = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(40))
    lo, hi = lam[2], lam[3]
    grid = (hi - lo) / 2 * nodes + (hi + lo) / 2
    integral = ((hi - lo) / 2 * weights * torch.exp(grid - hi))[:, None].mul(torch.stack([d_of(g) for g in grid]))
    exact = sde.beta_bar(ts[3]) / sde.beta_bar(ts[2]) * x + sde.alpha_bar(ts[3]) * integral.sum(0)
    torch.testing.assert_close(out, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "subvp", "ve"])
def test_encode_decode_round_trip(sde):
    # dopri5 at rtol = atol = 1e-8 each way: the round trip is exact up to ~1e-7 (x and z are O(1), O(5) for VE).
    x0 = MIX.sample(100, torch.Generator().manual_seed(1))
    score = MIX.score_fn(sde)
    z = solvers.encode(sde, score, x0, rtol=1e-8, atol=1e-8).x
    back = solvers.sample(sde, score, None, "rk45", x_T=z, rtol=1e-8, atol=1e-8).x
    assert rmse(back, x0) < 1e-5
    # A fixed-step solver is its own approximate inverse: dpm_solver with 50 steps each way is within 1e-2.
    z50 = solvers.encode(sde, score, x0, "dpm_solver", steps=50).x
    assert rmse(solvers.sample(sde, score, None, "dpm_solver", x_T=z50, steps=50).x, x0) < 1e-2


class Counter:
    """An independent count of score calls, and a check that t stays in [eps, T]."""

    def __init__(self, sde, eps):
        self.sde, self.eps, self.calls = sde, eps, 0
        self.score = MIX.score_fn(sde)

    def __call__(self, x, t):
        self.calls += 1
        if (t < self.eps).any() or (t > self.sde.T).any():
            raise AssertionError(f"score evaluated at t = {t.min().item()!r}..{t.max().item()!r}")
        return self.score(x, t)


@pytest.mark.parametrize("name", solvers.available())
def test_nfe_is_the_number_of_score_calls_and_t_stays_in_range(name):
    sde, eps = VPSDE(), 1e-3
    counter = Counter(sde, eps)
    steps = None if name == "rk45" else 7
    out = solvers.sample(sde, counter, (16, 1, 2), name, steps=steps, eps=eps, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(0))
    assert out.nfe == counter.calls > 0
    assert out.x.shape == (16, 1, 2) and torch.isfinite(out.x).all()


def test_rk45_never_leaves_eps_T_with_the_exact_vp_score():
    # The VP score at t < 0 is NaN; torchdiffeq's own first-step probe and end overshoot would go there.
    for sde in (VPSDE(), SubVPSDE()):
        counter = Counter(sde, 1e-3)
        out = solvers.sample(sde, counter, None, "rk45", x_T=prior(sde, 64))
        assert torch.isfinite(out.x).all() and out.nfe == counter.calls
        z = solvers.encode(sde, Counter(sde, 1e-3), out.x).x
        assert torch.isfinite(z).all()


def test_cosine_and_float32_and_denoise_defaults():
    from scoresde.sde_lib import CosineVPSDE
    sde = CosineVPSDE()
    out = solvers.sample(sde, MIX.score_fn(sde), (32, 2), "dpm_solver", generator=torch.Generator().manual_seed(0))
    assert out.x.dtype == torch.float32 and out.nfe == 20
    # ODE solvers: denoise=True adds one Tweedie step (one NFE); SDE solvers denoise in their last step (no NFE).
    assert solvers.sample(sde, MIX.score_fn(sde), (8, 2), "ddim", steps=5, denoise=True).nfe == 6
    assert solvers.sample(sde, MIX.score_fn(sde), (8, 2), "euler_maruyama", steps=5).nfe == 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", solvers.available())
def test_samples_keep_the_dtype_of_x_T(name, dtype):
    # The step coefficients are 0-d float64 tensors; type promotion must not up-cast a float32 or bfloat16 batch.
    sde = VPSDE()
    x_T = prior(sde, 16).to(dtype)
    out = solvers.sample(sde, MIX.score_fn(sde), None, name, x_T=x_T, steps=None if name == "rk45" else 4,
                         generator=torch.Generator().manual_seed(0))
    assert out.x.dtype == dtype and torch.isfinite(out.x.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", solvers.available())
def test_cpu_coefficients_scale_cuda_batches(name):
    # The grid and the step coefficients stay 0-d float64 CPU tensors, which torch takes as scalars next to a CUDA
    # batch; the samples must match the CPU run to float64 round-off (the score is the same closed form).
    sde = VPSDE()
    x_T = prior(sde, 16)
    steps = None if name == "rk45" else 4
    out = solvers.sample(sde, MIX.score_fn(sde), None, name, x_T=x_T.cuda(), steps=steps,
                         generator=torch.Generator("cuda").manual_seed(0))
    assert out.x.device.type == "cuda" and out.x.dtype == torch.float64
    if not solvers.get_solver(name).stochastic:
        cpu = solvers.sample(sde, MIX.score_fn(sde), None, name, x_T=x_T, steps=steps).x
        torch.testing.assert_close(out.x.cpu(), cpu, rtol=1e-10, atol=1e-10)


def test_options_are_collected_along_the_class_hierarchy():
    # Each class declares its own options and passes the rest on to its base class.
    assert solvers.solver_options("unipc") == ["variant", "corrector", "order", "lower_order_final", "grid", "rho",
                                               "shift"]
    assert solvers.solver_options("pc") == ["predictor", "corrector", "snr", "corrector_steps", "step_size", "eta",
                                            "grid", "rho", "shift"]
    assert solvers.solver_options("sde_srk") == ["eta", "grid", "rho", "shift"]


def test_same_generator_same_samples():
    sde = VPSDE()
    run = lambda: solvers.sample(sde, MIX.score_fn(sde), (8, 2), "pc", steps=10,  # noqa: E731
                                 generator=torch.Generator().manual_seed(3)).x
    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_grids_are_decreasing_from_T_to_eps():
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        for grid in solvers.GRIDS:
            t = solvers.time_grid(sde, 12, 1e-3, grid)
            assert t[0] == sde.T and t[-1] == 1e-3 and (t[1:] < t[:-1]).all()
    lam = VPSDE().log_snr(solvers.time_grid(VPSDE(), 12, 1e-3, "logsnr"))
    torch.testing.assert_close(lam.diff(), lam.diff().mean().expand(12), rtol=1e-9, atol=1e-9)


def test_bad_input_gets_clear_errors():
    sde, score = VPSDE(), MIX.score_fn(VPSDE())
    with pytest.raises(ValueError, match="unknown solver 'nope'; available: euler, heun"):
        solvers.sample(sde, score, (4, 2), "nope")
    with pytest.raises(ValueError, match="unknown option.*bogus.*its options: order, lower_order_final, grid, rho"):
        solvers.sample(sde, score, (4, 2), "dpm_solver", bogus=1)
    with pytest.raises(ValueError, match="unipc order must be 1, 2 or 3"):
        solvers.sample(sde, score, (4, 2), "unipc", order=4)
    with pytest.raises(ValueError, match="unknown unipc variant 'bh3'; available: bh1, bh2"):
        solvers.sample(sde, score, (4, 2), "unipc", variant="bh3")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        solvers.sample(sde, score, (4, 2), "heun", steps=0)
    with pytest.raises(ValueError, match="rk45 is adaptive"):
        solvers.sample(sde, score, (4, 2), "rk45", steps=10)
    with pytest.raises(ValueError, match=r"eps must be in \(0, T\)"):
        solvers.sample(sde, score, (4, 2), "heun", eps=1.5)
    with pytest.raises(ValueError, match="unknown time grid 'cosine'; available: uniform, logsnr, edm"):
        solvers.sample(sde, score, (4, 2), "heun", grid="cosine")
    with pytest.raises(ValueError, match="unknown predictor 'rk'; available: euler_maruyama, reverse_diffusion"):
        solvers.sample(sde, score, (4, 2), "pc", predictor="rk")
    with pytest.raises(ValueError, match="shaped like x"):
        solvers.sample(sde, lambda x, t: x[:, :1], (4, 2), "euler")
    # Uniform grid 1, 0.91, ..., 0.55, 0.46: the score first divides by zero at the step from t = 0.46.
    with pytest.raises(ValueError, match=r"NaN or inf at t=0\.46"):
        solvers.sample(sde, lambda x, t: x / (t[:, None] > 0.5), (4, 2), "euler", steps=10, grid="uniform",
                       eps=0.1)
    with pytest.raises(ValueError, match="encode needs a deterministic"):
        solvers.encode(sde, score, torch.zeros(4, 2), "pc")
