"""Sample quality against cost on the Quickstart's digits model: FD-digits2 and IS-digits2 against NFE per solver.

python benchmarks/quality.py [--workdir runs/vpsde] [--n 2000] [--quick]

Every row draws the same per-sample seeds (sample i from (seed, i), as --mode fid does), so differences between
rows are the solvers', not the noise's. FD-digits2 is against the 1500 training digits; the floor is the 297 test
digits against them. The noise rows measure the FD's own sampling error with one sampler (unipc, 20 steps) on
fresh seeds: the spread of FD over disjoint sets of --n samples, and the FD between two disjoint sets of test size
(297), the number to set beside the floor. The 1000-step SDE rows use --n_long samples (default 2000, like every
other row; pc at 1000 steps is the slowest row). --rows draws only some groups of rows. Calibrated rows fit the
grid with solvers.calibrate_grid on --cal_pilot prior paths for --cal_iterations Adam steps from the log-SNR grid;
its one-off cost is in the table.
--quick: 500 samples, 5/10/20 steps, calibration at 10 steps only, SDE samplers at 100 steps (about 4 minutes).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


from scoresde import run as runs
from scoresde import metrics
from scoresde import solvers
from scoresde.metrics.digits import digits_split
from scoresde.training import distributed

TEST_SIZE = 297
ODE = ("euler", "heun", "ddim", "dpm_solver", "unipc")
CALIBRATED = ("unipc", "dpm_solver")
SDE = ("pc", "euler_maruyama")


def fd(x: torch.Tensor) -> metrics.EvalResult:
    return metrics.evaluate(x, "digits", 8, 1)


def row(name, grid, steps, nfe, n, result, seconds, note=""):
    return (f"| {name} | {grid} | {steps} | {nfe:.0f} | {n} | {result.fd_digits2:.4f} | "
            f"{1e3 * result.kid_digits2:.2f} ± {1e3 * result.kid_digits2_std:.2f} | "
            f"{result.is_digits2:.2f} ± {result.is_digits2_std:.2f} | {seconds:.0f} | {note} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/vpsde")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--n", type=int, default=2000, help="samples per row")
    p.add_argument("--n_long", type=int, default=2000, help="samples of the 1000-step SDE rows")
    p.add_argument("--rows", default="ode,calibrated,sde",
                   help="which groups of rows to draw (comma-separated: ode, calibrated, sde); the floor and noise "
                        "rows are always drawn")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise_sets", type=int, default=4, help="disjoint sets of --n samples for the noise rows")
    p.add_argument("--cal_pilot", type=int, default=32)
    p.add_argument("--cal_iterations", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    steps_list, cal_steps, sde_steps = (5, 10, 20, 50), (5, 10, 20), (100, 1000)
    if a.quick:
        a.n, a.noise_sets, steps_list, cal_steps, sde_steps = 500, 2, (5, 10, 20), (10,), (100,)
    start_all = time.perf_counter()
    run = runs.load_run(a.workdir, a.checkpoint, a.device)
    ctx = distributed.Context(0, 1, 0, torch.device(a.device), False)

    def draw(sampler, n, seed=a.seed):
        out = runs.draw_samples(run.sde, run.score_fn, run.data, sampler, n, a.batch, seed, ctx, progress=False)
        return out, fd(out.x)

    print(f"checkpoint {run.path} (step {run.step}); FD-digits2 of the samples against the 1500 training digits\n")
    lines = ["| sampler | grid | steps | NFE | samples | FD-digits2 | KID-digits2 ×10³ | IS-digits2 | seconds | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    held_out = digits_split("test")
    test = fd(held_out)
    lines.append(row("test digits (floor)", "", "", 0, len(held_out), test, 0, "held-out data, not samples"))

    # The noise: fresh seeds (beyond every row's) for one good sampler.
    noise_sampler = solvers.sampler("unipc", 20)
    t0 = time.perf_counter()
    big, _ = draw(noise_sampler, a.noise_sets * a.n, seed=a.seed + 1)
    seconds = time.perf_counter() - t0
    sets = [fd(big.x[i * a.n:(i + 1) * a.n]).fd_digits2 for i in range(a.noise_sets)]
    small = big.x[:len(big.x) // TEST_SIZE * TEST_SIZE].reshape(-1, TEST_SIZE, *run.data.shape)
    pairs = [metrics.evaluate(small[2 * i], "digits", reference=small[2 * i + 1]).fd_digits2
             for i in range(len(small) // 2)]
    vs_train = [fd(s).fd_digits2 for s in small]
    noise = [
        f"- FD-digits2 of {a.noise_sets} disjoint sets of {a.n} unipc-20 samples: {np.mean(sets):.4f} ± "
        f"{np.std(sets, ddof=1):.4f} (mean ± sd): the sampling noise of every {a.n}-sample row "
        f"({seconds:.0f} s).",
        f"- FD-digits2 between two disjoint sets of {TEST_SIZE} samples ({len(pairs)} pairs): {np.mean(pairs):.4f} ± "
        f"{np.std(pairs, ddof=1):.4f}; of one set of {TEST_SIZE} against the training digits ({len(vs_train)} sets): "
        f"{np.mean(vs_train):.4f} ± {np.std(vs_train, ddof=1):.4f}, beside the floor's {test.fd_digits2:.4f}.",
    ]
    print("\n".join(noise), flush=True)

    def timed_row(sampler, n, grid, note=""):
        t0 = time.perf_counter()
        out, result = draw(sampler, n)
        lines.append(row(sampler.solver, grid, sampler.steps, out.nfe, n, result, time.perf_counter() - t0, note))
        print(lines[-1], flush=True)

    rows = set(a.rows.split(","))
    if rows - {"ode", "calibrated", "sde"}:
        p.error(f"--rows takes ode, calibrated and sde, got {a.rows!r}")
    for name in ODE if "ode" in rows else ():
        for steps in steps_list:
            timed_row(solvers.sampler(name, steps), a.n, "default")
    for name in CALIBRATED if "calibrated" in rows else ():
        for steps in cal_steps:
            t0 = time.perf_counter()
            cal = solvers.calibrate_grid(run.sde, run.score_fn, (a.cal_pilot, *run.data.shape), name, steps=steps,
                                         iterations=a.cal_iterations, starts=("logsnr",),
                                         generator=torch.Generator(a.device).manual_seed(a.seed + 2),
                                         device=a.device)
            cost = (f"fit: {cal.nfe} NFE, {time.perf_counter() - t0:.0f} s; pilot RMSE {cal.initial_error:.3f} -> "
                    f"{cal.error:.3f}")
            timed_row(solvers.sampler(name, steps, grid=cal.times), a.n, "calibrated", cost)
    for name in SDE if "sde" in rows else ():
        for steps in sde_steps:
            timed_row(solvers.sampler(name, steps), a.n if steps < 1000 else a.n_long, "default")
    print("\n" + "\n".join(lines + [""] + noise))
    print(f"\ntotal {time.perf_counter() - start_all:.0f} s")


if __name__ == "__main__":
    main()
