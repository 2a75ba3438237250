"""VP-SDE (eps), rectified flow and rectified flow with minibatch OT coupling on the digits, on the same network,
data and training budget: sample quality against NFE, bits/dim, and how straight the learned ODE paths are.

python benchmarks/flows.py [--out /tmp/flows_bench] [--n_iters 2000] [--workdirs VP RF RF_OT] [--n 2000]
                           [--euler 1 2 4 8 16] [--straight_n 500] [--straight_steps 200] [--no_likelihood]

The three runs are configs/vpsde.py, configs/rectified.py and configs/rectified.py with
--config.training.coupling=ot, all the Quickstart's U-Net, batch and --n_iters steps. Without --workdirs they are
trained into --out/{vpsde,rf,rf_ot} (python main.py --mode train, one after the other); a directory that already
holds a checkpoint is not trained again. --workdirs gives three trained run directories instead (in that order).

Quality: FD-digits2 and KID-digits2 (against the 1500 training digits) of --n samples per cell, with Euler at each
--euler step count and with rk45 (adaptive, the converged ODE); every cell draws the same per-sample seeds (sample
i from (seed, i), as --mode fid does). Bits/dim: the default --mode likelihood on all 297 test digits.

Straightness (Liu et al. 2022) along the model's own Euler trajectories (--straight_steps uniform steps from T
to eps, --straight_n paths, the first seeds of the quality cells), in the model's data space ([-1, 1]) and with time
rescaled to s = (T - t)/(T - eps) in [0, 1], so dx/ds = -(T - eps) v with v = f x - g^2/2 score the
probability-flow velocity dx/dt:
  S      = E int_0^1 ||dx/ds - (x_eps - x_T)||^2 ds / D   (D = 64 pixels; 0 for a straight path at constant speed),
  S_rel  = S / (E ||x_eps - x_T||^2 / D)                   (the kinetic energy E int ||dx/ds||^2 ds beyond that of
                                                            the straight constant-speed path, relative to it),
  arc/chord = E path length / ||x_eps - x_T|| per path     (1 for a straight path at any speed: S and S_rel also
                                                            count uneven speed, which a time change could remove).
So S = (T - eps) E int_eps^T ||v - (x_T - x_eps)/(T - eps)||^2 dt / D. On Euler's grid the sum of the step
displacements is exactly x_eps - x_T, so the integral is the Riemann sum of the steps' velocities.

Measured (README, "Flow matching against the VP-SDE on the digits"): the three trainings took 3.2, 4.7 and 3.6 min
and this script's evaluation of them 14.3 min (rk45 at 2000 samples 1-3 min per run, bits/dim 1-4 min), on 2 CPU
cores shared with a test suite.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from scoresde import metrics
from scoresde import run as runs
from scoresde import solvers
from scoresde.commands import evaluation
from scoresde.run import checkpoint as ckpt
from scoresde.training import distributed

ROOT = Path(__file__).resolve().parent.parent
# (label, directory under --out, config, extra training options)
RUNS = (("VP-SDE, ε", "vpsde", "vpsde", ()),
        ("rectified flow", "rf", "rectified", ()),
        ("rectified flow, OT coupling", "rf_ot", "rectified", ("--config.training.coupling=ot",)))


def train(workdir: Path, config: str, extra, n_iters: int) -> float:
    """Train `workdir` with main.py unless it holds a checkpoint; the wall seconds it took (0 if it was kept)."""
    if ckpt.latest_checkpoint(workdir) is not None:
        return 0.0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "main.py"), "--mode", "train", "--config", config, "--workdir",
                    str(workdir), f"--config.training.n_iters={n_iters}", "--config.training.progress=False",
                    *extra], check=True, cwd=ROOT)
    return time.perf_counter() - t0


@torch.no_grad()
def straightness(sde, score_fn, shape, n: int, steps: int, seed: int = 0, batch: int = 500, eps: float = 1e-3,
                 device="cpu") -> tuple[float, float, float]:
    """(S, S_rel, arc/chord) of n Euler paths of `steps` uniform steps from T to eps of the probability-flow ODE of
    `sde` with score_fn(x, t), for samples of `shape` (see the module docstring); path i starts from the prior
    noise of seed (seed, i), as sample i of draw_samples does."""
    flow = sde.reverse(score_fn, eta=0.0)
    ts = solvers.time_grid(sde, steps, eps, "uniform")
    span = float(ts[0] - ts[-1])
    s_sum, chord_sum, ratios = 0.0, 0.0, []
    for i in range(0, n, batch):
        idx = range(i, min(i + batch, n))
        x = solvers.SampleGenerators(seed, idx, device).randn((len(idx), *shape)) * sde.prior_std
        x_T, vs, length = x.clone(), [], torch.zeros(len(idx), dtype=torch.float64)
        for k in range(steps):
            v = flow.drift(x, ts[k]).double()
            h = float(ts[k + 1] - ts[k])
            vs.append((v, abs(h) / span))       # the velocity and the step's ds
            length += (abs(h) * v.flatten(1).norm(dim=1)).cpu()
            x = x + h * v.to(x.dtype)
        chord = (x.double() - x_T.double()).flatten(1)          # x_eps - x_T: the sum of the steps
        for v, ds in vs:
            u = (-span * v).flatten(1)                            # dx/ds, s = (T - t)/(T - eps)
            s_sum += float(((u - chord) ** 2).sum() * ds)
        chord_sum += float((chord ** 2).sum())
        ratios.append(length / chord.norm(dim=1).cpu())
    d = math.prod(shape)
    s = s_sum / (n * d)
    return s, s / (chord_sum / (n * d)), float(torch.cat(ratios).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/flows_bench", help="where the three runs are trained (without --workdirs)")
    p.add_argument("--workdirs", nargs=3, default=None, metavar=("VP", "RF", "RF_OT"),
                   help="three trained run directories (VP-SDE eps, rectified, rectified + OT): nothing is trained")
    p.add_argument("--n_iters", type=int, default=2000, help="training steps of each run")
    p.add_argument("--n", type=int, default=2000, help="samples per quality cell")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--euler", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="Euler step counts")
    p.add_argument("--straight_n", type=int, default=500, help="paths of the straightness estimate")
    p.add_argument("--straight_steps", type=int, default=200, help="Euler steps of the straightness paths")
    p.add_argument("--no_likelihood", action="store_true", help="skip bits/dim")
    p.add_argument("--likelihood_n", type=int, default=0, help="test digits of the bits/dim (0: all 297)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    start_all = time.perf_counter()
    dirs = [Path(w) for w in a.workdirs] if a.workdirs else [Path(a.out) / r[1] for r in RUNS]
    trained = {}
    if not a.workdirs:
        for (label, _, config, extra), w in zip(RUNS, dirs):
            trained[label] = train(w, config, extra, a.n_iters)
    ctx = distributed.Context(0, 1, 0, torch.device(a.device), False)
    samplers = [solvers.sampler("euler", k) for k in a.euler] + [solvers.sampler("rk45")]

    quality, summary, timing = [], [], []
    for (label, *_), w in zip(RUNS, dirs):
        run = runs.load_run(w, None, a.device)
        c = run.config
        if run.step < c.training.n_iters:
            raise SystemExit(f"{w}: the newest checkpoint is at step {run.step} of {c.training.n_iters}; finish "
                             "its training first")
        print(f"{label}: {run.path} (step {run.step}; sde {c.sde.name}, parameterization {c.model.parameterization}, "
              f"weighting {c.training.weighting}, t_sampling {c.training.t_sampling}, coupling "
              f"{c.training.get('coupling', 'independent')})", flush=True)
        cells, t_run = [], time.perf_counter()
        for s in samplers:
            t0 = time.perf_counter()
            out = runs.draw_samples(run.sde, run.score_fn, run.data, s, a.n, a.batch, a.seed, ctx, progress=False)
            r = metrics.evaluate(out.x, "digits", 8, 1)
            nfe = f" ({out.nfe:.0f} NFE)" if s.solver == "rk45" else ""
            cells.append(f"{r.fd_digits2:.3f} / {1e3 * r.kid_digits2:.2f}{nfe}")
            print(f"  {s.solver} {s.steps or 'adaptive'}: NFE {out.nfe:.0f}, {r.format()}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        quality.append(f"| {label} | " + " | ".join(cells) + " |")
        t_quality = time.perf_counter() - t_run
        t0 = time.perf_counter()
        if a.no_likelihood:
            bpd = "–"
        else:
            lk = evaluation.evaluate_likelihood(run, ctx, num_samples=a.likelihood_n)
            print("  " + lk.line(), flush=True)
            bpd = f"{lk.bits_per_dim:.4f} ± {lk.stderr:.4f}"
        t_lik = time.perf_counter() - t0
        t0 = time.perf_counter()
        s, s_rel, ratio = straightness(run.sde, run.score_fn, tuple(run.data.shape), a.straight_n, a.straight_steps,
                                       a.seed, a.batch, device=a.device)
        t_straight = time.perf_counter() - t0
        print(f"  straightness S {s:.4f}, S_rel {s_rel:.4f}, arc/chord {ratio:.4f} ({t_straight:.0f} s)", flush=True)
        summary.append(f"| {label} | {bpd} | {s:.4f} | {s_rel:.4f} | {ratio:.4f} |")
        train_s = trained.get(label, 0.0)
        timing.append(f"{label}: " + (f"training {train_s / 60:.1f} min, " if train_s else "") +
                      f"quality {t_quality / 60:.1f} min, bits/dim {t_lik / 60:.1f} min, "
                      f"straightness {t_straight:.0f} s")

    head = " | ".join(f"Euler {k}" for k in a.euler)
    print(f"\nFD-digits2 / KID-digits2 × 10³ ({a.n} samples per cell, the same seeds in every cell; NFE = Euler "
          "steps)\n")
    print(f"| formulation | {head} | rk45 |")
    print("|---" * (len(a.euler) + 2) + "|")
    print("\n".join(quality))
    print(f"\nbits/dim ({a.likelihood_n or 297} test digits, mean ± stderr) and straightness ({a.straight_n} Euler "
          f"paths of {a.straight_steps} steps)\n")
    print("| formulation | bits/dim | S | S_rel | arc/chord |\n|---|---|---|---|---|")
    print("\n".join(summary))
    print("\n" + "\n".join(timing))
    print(f"\ntotal {(time.perf_counter() - start_all) / 60:.1f} min")


if __name__ == "__main__":
    main()
