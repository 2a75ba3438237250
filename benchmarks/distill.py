"""Progressive distillation of the Quickstart's digits model: FD-digits2 and wall time of the teacher's DDIM at 4, 8,
start and 64 steps against its students, and what the distillation cost.

python benchmarks/distill.py [--teacher runs/vpsde] [--out /tmp/distill_bench] [--start 16] [--target 4]
                             [--iterations 600] [--lr 5e-4] [--warmup 50] [--n 2000]

The teacher run is only read: its config.json and newest checkpoint are copied into --out, whose
distill/progressive/<steps>/ then holds the students (python main.py --mode distill on that copy, in process). A
finished --out is not trained again, only evaluated.
Every row draws the same per-sample seeds (sample i from (seed, i), as --mode sample does),
so the rows differ by their sampler alone; "RMSE" is the pixel RMSE in data space [0, 1] to the teacher's 64-step
DDIM sample from the same noise (how closely a few-step sampler follows the ODE's paths). FD-digits2 is against the
1500 training digits; the floor is the 297 test digits against them.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch


from scoresde import run as runs
from scoresde import configs
from scoresde import metrics
from scoresde import solvers
from scoresde.metrics.digits import digits_split
from scoresde.run import checkpoint as ckpt
from scoresde.training import distill, progressive
from scoresde.training import distributed


def copy_teacher(teacher: Path, out: Path) -> None:
    """config.json and the newest checkpoint of `teacher` into `out` (unless it has a checkpoint already)."""
    if ckpt.latest_checkpoint(out) is not None:
        return
    newest = ckpt.latest_checkpoint(teacher)
    if newest is None:
        raise SystemExit(f"no checkpoint in {teacher}; train the Quickstart model first")
    ckpt.checkpoint_dir(out).mkdir(parents=True, exist_ok=True)
    shutil.copy2(teacher / "config.json", out / "config.json")
    shutil.copy2(newest, ckpt.checkpoint_dir(out) / newest.name)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="runs/vpsde")
    p.add_argument("--out", default="/tmp/distill_bench")
    p.add_argument("--start", type=int, default=16, help="teacher DDIM steps of the first round")
    p.add_argument("--target", type=int, default=4)
    p.add_argument("--iterations", type=int, default=600, help="student updates per round")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=50, help="learning-rate warm-up steps of each round")
    p.add_argument("--n", type=int, default=2000, help="samples per row")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    copy_teacher(Path(a.teacher), out)

    config = configs.load_config("vpsde")
    config.device = "cpu"
    d = config.distill
    d.start_steps, d.target_steps, d.iterations, d.lr, d.warmup = a.start, a.target, a.iterations, a.lr, a.warmup
    config.training.progress = False
    config.training.log_freq = 100
    config.training.snapshot_freq = a.iterations
    config.training.eval_freq = a.iterations
    wall, cpu = time.perf_counter(), time.process_time()
    result = distill.distill(config, out)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rounds = progressive.rounds(config)
    if result.stages:
        cost = (f"distillation {' -> '.join(map(str, [a.start, *rounds]))} steps, {a.iterations} updates per round "
                f"(batch {config.training.batch_size}, lr {a.lr:g}): {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU "
                f"on {a.threads} threads, {wall / (a.iterations * len(result.stages)):.2f} s per update")
    else:
        cost = f"distillation: every round was already complete in {out} (not timed)"
    print(cost, flush=True)

    ctx = distributed.Context(0, 1, 0, torch.device("cpu"), False)

    def draw(run, steps):
        t0 = time.perf_counter()
        sampler = solvers.sampler("ddim", steps)
        distill.check_sampler(run.workdir, run.sde, sampler)
        samples = runs.draw_samples(run.sde, run.score_fn, run.data, sampler, a.n, a.batch, a.seed, ctx,
                                        progress=False)
        return samples, time.perf_counter() - t0

    teacher = runs.load_run(out, device="cpu")
    reference, ref_seconds = draw(teacher, 64)
    lines = ["| sampler | DDIM steps (NFE) | FD-digits2 | RMSE to teacher-64 paths | sampling s |",
             "|---|---|---|---|---|",
             f"| test digits (floor) | | {metrics.evaluate(digits_split('test'), 'digits', 8, 1).fd_digits2:.4f} | | |"]

    def row(name, steps, samples, seconds):
        fd = metrics.evaluate(samples.x, "digits", 8, 1).fd_digits2
        rmse = float(((samples.x - reference.x) ** 2).mean().sqrt())
        lines.append(f"| {name} | {steps} | {fd:.4f} | {rmse:.4f} | {seconds:.1f} |")
        print(lines[-1], flush=True)

    for steps in sorted({4, 8, a.start}):
        row("teacher", steps, *draw(teacher, steps))
    row("teacher", 64, reference, ref_seconds)
    for steps in rounds:
        row(f"student ({progressive.student_dir(out, steps)})", steps,
            *draw(runs.load_run(progressive.student_dir(out, steps), device="cpu"), steps))
    print("\n" + "\n".join(lines) + f"\n\n{a.n} samples per row; {cost}")


if __name__ == "__main__":
    main()
