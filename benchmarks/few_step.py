"""Few-step generators on equal budgets: progressive distillation, reflow (+ one-step distillation) and consistency
distillation at 1, 2 and 4 steps, beside the teacher at 1, 2, 4 and 8 NFE on its best grid and converged.

python benchmarks/few_step.py --teacher runs/vpsde --out runs/few_step/vpsde
python benchmarks/few_step.py --teacher runs/rectified --out runs/few_step/rectified
python benchmarks/few_step.py --mixture --out runs/few_step/gmm8

The teacher run is only read: its config.json and newest checkpoint are copied into --out, where `--mode distill`
(in process) trains each method's students under distill/<method>/. --mixture distils the exact score of the gmm8
mixture under the VP-SDE into 3 x 128 MLP students instead. A student already trained in --out is kept and only
evaluated (its cost is then not re-measured).

Equal budgets: every method gets --updates student updates at the teacher run's batch size: progressive
distillation 16 -> 8 -> 4 -> 2 -> 1 steps spends them over its four rounds; reflow spends three quarters on the
2-rectified flow and one quarter on its one-step distillation, its pairs drawn by --pair_sampler with --pair_nfe
teacher evaluations in all (by default 4000 pairs of 20-step DPM-Solver on its default grid); consistency
distillation spends all of them on one student, sampled at 1, 2 and 4 steps. Teacher NFE counts the evaluations
of the original teacher, one per sample (the later rounds of progressive distillation are taught by its own
students, whose evaluations are not counted).

Every row draws the same per-sample seeds (sample i from (seed, i)) so rows differ by their sampler alone. Columns:
FD-digits2 and KID-digits2 x 10^3 of --n samples against the 1500 training digits (for --mixture: the energy
distance to --n exact mixture samples); "path RMSE": the RMSE (data space [0, 1] for digits, per point for the
mixture) to the teacher's converged ODE map (rk45, rtol = atol = 1e-5; 1e-8 on the exact mixture) from the same
prior noise.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from scoresde import configs
from scoresde import data as data_lib
from scoresde import metrics
from scoresde import run as runs
from scoresde import solvers
from scoresde.metrics.digits import digits_split
from scoresde.run import checkpoint as ckpt
from scoresde.training import distill, distributed, students
from scoresde.utils import atomic_write

STEPS = (1, 2, 4)
TEACHER_NFE = (1, 2, 4, 8)
TEACHER_SAMPLERS = [(solver, grid) for solver in ("ddim", "euler", "dpm_solver", "unipc")
                    for grid in ("uniform", "logsnr", "edm")]


class CountingTeacher:
    """A teacher score that counts its evaluations, one per sample."""

    def __init__(self, score_fn):
        self.score_fn, self.nfe = score_fn, 0

    def __call__(self, x, t):
        self.nfe += x.shape[0]
        return self.score_fn(x, t)


def copy_teacher(teacher: Path, out: Path) -> None:
    """config.json and the newest checkpoint of `teacher` into `out` (unless it has a checkpoint already)."""
    if ckpt.latest_checkpoint(out) is not None:
        return
    newest = ckpt.latest_checkpoint(teacher)
    if newest is None:
        raise SystemExit(f"no checkpoint in {teacher}; train it first (python main.py --mode train --config ...)")
    ckpt.checkpoint_dir(out).mkdir(parents=True, exist_ok=True)
    # Atomically: a copy stopped half-way must not pass for the teacher on the next run.
    atomic_write(out / "config.json", lambda tmp: shutil.copyfile(teacher / "config.json", tmp))
    atomic_write(ckpt.checkpoint_dir(out) / newest.name, lambda tmp: shutil.copyfile(newest, tmp))


PAIR_SHARD = 1000


def pair_sampler(spec: str) -> tuple[str, int, str]:
    """SOLVER:STEPS[:GRID] -> (solver, steps, options) of the reflow pairs' sampler."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1].isdigit() or int(parts[1]) < 1:
        raise SystemExit(f"--pair_sampler {spec!r}: give SOLVER:STEPS or SOLVER:STEPS:GRID, e.g. dpm_solver:20")
    return parts[0], int(parts[1]), f"grid={parts[2]}" if len(parts) == 3 else ""


def method_configs(c, updates: int, pairs_from: str = "dpm_solver:20", pair_nfe: int = 80000) -> dict:
    """Each method's config, from the config `c`, on the budget of `updates` student updates; reflow's pairs from
    the sampler `pairs_from` (SOLVER:STEPS[:GRID]) with `pair_nfe` teacher evaluations in all."""
    out = {}
    progressive = _copy(c, method="progressive", start_steps=16, target_steps=1, iterations=updates // 4)
    out["progressive"] = progressive
    reflow = _copy(c, method="reflow", iterations=3 * updates // 4)
    r = reflow.distill.reflow
    r.one_step, r.one_step_iterations = True, updates // 4
    r.solver, r.steps, r.options = pair_sampler(pairs_from)
    r.shard_size = PAIR_SHARD
    r.pairs = pair_nfe // r.steps // PAIR_SHARD * PAIR_SHARD
    if r.pairs < PAIR_SHARD:
        raise SystemExit(f"--pair_nfe {pair_nfe} buys fewer than {PAIR_SHARD} pairs of {r.steps} steps")
    out["reflow"] = reflow
    out["consistency"] = _copy(c, method="consistency", iterations=updates)
    return out


def _copy(config, **distill_settings):
    c = config.copy_and_resolve_references()
    for k, v in distill_settings.items():
        c.distill[k] = v
    return c


def students_of(method: str, out: Path) -> list[tuple[str, Path, str, int]]:
    """(label, run directory, solver, steps) of each student of `method` to sample at 1, 2 and 4 steps."""
    root = students.method_dir(out, method)
    if method == "progressive":
        return [(f"progressive ({n})", root / str(n), "ddim", n) for n in STEPS]
    if method == "reflow":
        return ([("2-rectified", root / "2", "euler", n) for n in STEPS]
                + [("2-rectified + one-step", root / "2-onestep", "euler", 1)])
    return [("consistency", root, "consistency", n) for n in STEPS]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="runs/vpsde")
    p.add_argument("--mixture", action="store_true", help="the exact gmm8 score as the teacher")
    p.add_argument("--out", required=True)
    p.add_argument("--updates", type=int, default=2000, help="student updates per method")
    p.add_argument("--methods", default="progressive,reflow,consistency")
    p.add_argument("--pair_sampler", default="dpm_solver:20", help="SOLVER:STEPS[:GRID] of the teacher that draws "
                   "reflow's pairs")
    p.add_argument("--pair_nfe", type=int, default=80000, help="teacher evaluations spent on reflow's pairs")
    p.add_argument("--n", type=int, default=2000, help="samples per row")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="", help="preset whose training and distill settings the students take "
                   "(default: the one named after the teacher's SDE)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    ctx = distributed.Context(0, 1, 0, torch.device("cpu"), False)
    if a.mixture:
        mixture = data_lib.gmm8_mixture()
        base = configs.load_config("vpsde")
        base.data.dataset, base.data.num_samples = "gmm8", 20000
        base.model.mlp_width, base.model.mlp_depth = 128, 3
        base.training.batch_size = 256
        sde = runs.builders.build_sde(base)
        exact = mixture.score_fn(sde)
        teacher = students.Teacher(exact, None, None, "exact gmm8 score", 0)
        teacher_sde, teacher_score, data = sde, exact, data_lib.get_dataset(base)
        converged = dict(rtol=1e-8, atol=1e-8)
        reference = mixture.sample(a.n, torch.Generator().manual_seed(a.seed + 1)).float()
    else:
        copy_teacher(Path(a.teacher), out)
        run = runs.load_run(out, device="cpu")
        # The distill settings come from the current preset of the teacher's SDE; the teacher's own sde, model and
        # data sections become the students' (training.students.inherit).
        base, teacher = configs.load_config(a.config or run.config.sde.name), students.load_teacher(out, device="cpu")
        teacher_sde, teacher_score, data = run.sde, run.score_fn, run.data
        converged = dict(rtol=1e-5, atol=1e-5)
    base.device = "cpu"
    base.num_threads = a.threads
    base.training.progress = False
    base.training.snapshot_samples = 0

    def score(x):
        if a.mixture:
            r = metrics.evaluate(x, "vectors", reference=reference)
            return f"{r.energy:.4f}", ""
        r = metrics.evaluate(x, "digits")
        return f"{r.fd_digits2:.4f}", f"{1e3 * r.kid_digits2:.2f}"

    def draw(sde, score_fn, sampler):
        t0 = time.perf_counter()
        s = runs.draw_samples(sde, score_fn, data, sampler, a.n, a.batch, a.seed, ctx, progress=False)
        return s, time.perf_counter() - t0

    ode, _ = draw(teacher_sde, teacher_score, solvers.sampler("rk45", **converged))

    def rmse(x):
        return float(((x.double() - ode.x.double()) ** 2).flatten(1).sum(1).mean().sqrt()) / (
            1.0 if a.mixture else float(ode.x[0].numel()) ** 0.5)

    metric = "energy distance" if a.mixture else "FD-digits2 | KID-digits2 ×10³"
    header = f"| generator | steps | NFE | {metric} | path RMSE | teacher NFE | student updates | distillation min |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]

    def add(label, steps, nfe, x, cost=("", "", "")):
        quality = " | ".join(v for v in score(x) if v)
        lines.append(f"| {label} | {steps} | {nfe} | {quality} | {rmse(x):.4f} | {' | '.join(cost)} |")
        print(lines[-1], flush=True)

    if a.mixture:
        floor = mixture.sample(a.n, torch.Generator().manual_seed(a.seed + 2)).float()
        lines.append(f"| exact mixture samples (floor) | | | {score(floor)[0]} | | | | |")
    else:
        held_out = digits_split("test")
        r = metrics.evaluate(held_out, "digits")
        lines.append(f"| {len(held_out)} test digits (floor) | | | {r.fd_digits2:.4f} | {1e3 * r.kid_digits2:.2f} | | "
                     "| | |")
    print(lines[-1], flush=True)
    add("teacher, rk45", "adaptive", f"{ode.nfe:.0f}", ode.x)
    for nfe in TEACHER_NFE:
        best = None
        for solver, grid in TEACHER_SAMPLERS:
            try:
                sampler = solvers.sampler(solver, nfe, grid=grid)
                s, _ = draw(teacher_sde, teacher_score, sampler)
            except ValueError:
                continue
            err = rmse(s.x)
            if best is None or err < best[0]:
                best = (err, sampler, s)
        add(f"teacher, best of {len(TEACHER_SAMPLERS)} ({best[1].solver}, {best[1].grid_label})", nfe,
            f"{best[2].nfe:.0f}", best[2].x)

    for method, config in method_configs(base, a.updates, a.pair_sampler, a.pair_nfe).items():
        if method not in a.methods.split(","):
            continue
        counting = CountingTeacher(teacher.score_fn)
        t0 = time.perf_counter()
        result = distill.distill(config, out, ctx, teacher=teacher._replace(score_fn=counting))
        minutes = (time.perf_counter() - t0) / 60
        trained = bool(result.stages)
        cost = (f"{counting.nfe:,}" if trained else "(kept)", f"{a.updates}",
                f"{minutes:.1f}" if trained else "(kept)")
        for label, workdir, solver, steps in students_of(method, out):
            student = runs.load_run(workdir, device="cpu")
            sampler = solvers.sampler(solver, steps)
            distill.check_sampler(workdir, student.sde, sampler)
            s, _ = draw(student.sde, student.score_fn, sampler)
            add(label, steps, f"{s.nfe:.0f}", s.x, cost)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
