"""Solver benchmark on a 2-D Gaussian mixture with its exact score: NFE, pathwise error, distribution error, time.

python benchmarks/sampling.py [--n 1000] [--sde vpsde]
Pathwise error: RMSE against dopri5 at rtol = atol = 1e-10 from the same x_T (ODE solvers only). Distribution
error: energy distance to fresh exact samples of p_eps. Calibrated rows: the grid fitted by
solvers.calibrate_grid on 1024 other pilot paths (its one-off cost in NFE and seconds is in the options column),
judged on the same paths as every other row. Overhead: solver wall time per NFE outside score_fn, also
relative to one forward pass of a small MLP (2-256-256-256-2) on the same batch, a stand-in for a network.
"""
from __future__ import annotations

import argparse
import time

import torch

from scoresde import sde_lib
from scoresde.metrics import energy_distance
from scoresde import solvers

MIX = sde_lib.GaussianMixture(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.5, -0.5]], covs=[0.1, 0.2])
RUNS = [("euler", {"grid": "uniform"}, (20, 80)), ("heun", {"grid": "uniform"}, (10, 25)),
        ("heun", {}, (5, 10, 20)), ("ddim", {}, (10, 20, 50)), ("rk45", {}, (None,)),
        ("dpm_solver", {"order": 2, "grid": "logsnr"}, (10, 20)),
        ("dpm_solver", {"order": 3, "grid": "logsnr"}, (5, 10, 20, 40)),
        ("unipc", {"order": 2, "grid": "logsnr"}, (5, 10, 20)),
        ("unipc", {"order": 3, "grid": "logsnr"}, (5, 10, 20, 40)),
        ("unipc", {"order": 3, "corrector": False, "grid": "logsnr"}, (10, 20)),
        ("euler_maruyama", {}, (100, 500)), ("ancestral", {}, (100,)), ("pc", {}, (100,)),
        ("sde_euler", {}, (100,)), ("sde_srk", {}, (20,)),
        ("edm", {}, (10, 18)), ("edm", {"s_churn": 10.0}, (18, 40)),
        ("dpm_solver_sde", {"eta": 0.0, "order": 3}, (10, 20)),
        ("dpm_solver_sde", {"order": 2}, (50,)), ("dpm_solver_sde", {"order": 3}, (50,))]
# Distribution table: (label, solver, options, steps for a budget of NFE score evaluations).
STOCHASTIC = [("euler_maruyama", "euler_maruyama", {}, lambda nfe: nfe),
              ("pc (1 Langevin step)", "pc", {}, lambda nfe: nfe // 2),
              ("ancestral (DDPM)", "ancestral", {}, lambda nfe: nfe),
              ("ancestral analytic", "ancestral", {"variance": "analytic"}, lambda nfe: nfe),
              ("edm s_churn=10", "edm", {"s_churn": 10.0}, lambda nfe: (nfe + 1) // 2),
              ("dpm_solver_sde 2M eta=1", "dpm_solver_sde", {"order": 2}, lambda nfe: nfe),
              ("dpm_solver_sde 3M eta=1", "dpm_solver_sde", {"order": 3}, lambda nfe: nfe)]
CALIBRATED = [("unipc", {"order": 3}, (5, 10, 20)), ("dpm_solver", {"order": 3}, (10,))]


class TimedScore:
    def __init__(self, score):
        self.score, self.seconds = score, 0.0

    def __call__(self, x, t):
        start = time.perf_counter()
        out = self.score(x, t)
        self.seconds += time.perf_counter() - start
        return out


def mlp_forward_seconds(n: int, repeats: int = 50) -> float:
    """Wall time of one forward pass of a small MLP on a batch of n 2-D points (float64, like the samplers here)."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 256), torch.nn.SiLU(), torch.nn.Linear(256, 256), torch.nn.SiLU(),
                              torch.nn.Linear(256, 256), torch.nn.SiLU(), torch.nn.Linear(256, 2)).double()
    x = torch.randn(n, 2, dtype=torch.float64)
    with torch.no_grad():
        net(x)
        start = time.perf_counter()
        for _ in range(repeats):
            net(x)
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--sde", default="vpsde", choices=sorted(sde_lib.SDES))
    args = parser.parse_args()
    torch.set_num_threads(1)     # steadier timings on a shared machine
    sde = sde_lib.get_sde(args.sde)
    x_T = sde.prior_sampling((args.n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = solvers.sample(sde, MIX.score_fn(sde), None, "rk45", x_T=x_T, rtol=1e-10, atol=1e-10).x
    truth = MIX.sample(args.n, torch.Generator().manual_seed(1))
    print(f"{args.sde}, {args.n} samples, 2-D two-component mixture (exact score); "
          f"energy distance of two exact sample sets: {energy_distance(truth, MIX.sample(args.n)):.1e}\n")
    mlp = mlp_forward_seconds(args.n)
    print("| solver | options | steps | NFE | pathwise RMSE | energy distance | ms / sample | overhead µs / NFE "
          "| overhead / MLP pass |")
    print("|---|---|---|---|---|---|---|---|---|")
    def row(name, options, steps, label=None):
        score = TimedScore(MIX.score_fn(sde))
        start = time.perf_counter()
        out = solvers.sample(sde, score, None, name, x_T=x_T, steps=steps,
                             generator=torch.Generator().manual_seed(2), **options)
        wall = time.perf_counter() - start
        # edm without churn and dpm_solver_sde at eta = 0 draw no noise: their paths are the ODE's.
        noiseless = options.get("eta") == 0.0 or (name == "edm" and not options.get("s_churn"))
        path = ("-" if solvers.get_solver(name).stochastic and not noiseless
                else f"{(out.x - ref).pow(2).mean().sqrt():.1e}")
        overhead = (wall - score.seconds) / out.nfe
        opts = label or ", ".join(f"{k}={v}" for k, v in options.items()) or "default"
        print(f"| {name} | {opts} | {steps or 'adaptive'} | {out.nfe} | {path} | "
              f"{energy_distance(out.x, truth):.1e} | {1e3 * wall / args.n:.3f} | {1e6 * overhead:.0f} | "
              f"{overhead / mlp:.2f} |", flush=True)

    for name, options, step_list in RUNS:
        for steps in step_list:
            row(name, options, steps)
    for name, options, step_list in CALIBRATED:
        for steps in step_list:
            start = time.perf_counter()
            cal = solvers.calibrate_grid(sde, MIX.score_fn(sde), (1024, 2), name, steps=steps, dtype=torch.float64,
                                         generator=torch.Generator().manual_seed(5), **options)
            label = (", ".join(f"{k}={v}" for k, v in options.items())
                     + f", grid=calibrated ({cal.nfe} NFE, {time.perf_counter() - start:.0f} s once)")
            row(name, dict(options, grid=cal.times), steps, label)
    eps = torch.tensor(1e-3, dtype=torch.float64)
    noise = torch.randn(truth.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    truth_eps = sde.alpha_bar(eps) * truth + sde.beta_bar(eps) * noise
    moments = solvers.estimate_eps_moments(sde, MIX.score_fn(sde),
                                           [MIX.sample(10_000, torch.Generator().manual_seed(4))],
                                           solvers.time_grid(sde, 99, 1e-3, "logsnr"), torch.Generator().manual_seed(4))
    budgets = (10, 20, 50, 100)
    print("\nEnergy distance to exact samples of p_eps (the last step adds no noise; ancestral analytic: with noise,"
          " its E||eps||^2 table from 10^4 exact samples)\n")
    print("| solver | " + " | ".join(f"{b} NFE" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for label, name, options, steps_of_budget in STOCHASTIC:
        cells = []
        for budget in budgets:
            extra = {"eps_moments": moments, "denoise": False} if options.get("variance") == "analytic" else {}
            out = solvers.sample(sde, MIX.score_fn(sde), None, name, x_T=x_T, steps=steps_of_budget(budget),
                                 generator=torch.Generator().manual_seed(2), **options, **extra)
            cells.append(f"{energy_distance(out.x, truth_eps):.1e} ({out.nfe})")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nOne MLP forward pass on the batch: {1e6 * mlp:.0f} µs. Overhead: solver time per NFE outside score_fn.")


if __name__ == "__main__":
    main()
