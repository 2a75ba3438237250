"""Data-parallel throughput: training steps/s and sampling samples/s on 1 vs 2 (or more) ranks.

Each world size is launched with torch.multiprocessing (gloo on CPU, NCCL on CUDA, one GPU per rank), exactly
as torchrun would run main.py: the global batch stays the same, so a perfect scale-out doubles the steps/s.
On CPU each rank gets --threads_per_rank threads (default 1: one core per rank, as one GPU per rank).

  python benchmarks/training.py                     # digits U-Net, 1 vs 2 ranks on CPU
  python benchmarks/training.py --model mlp --quick # the 2-D MLP, few steps (smoke test)
  python benchmarks/training.py --device cuda --worlds 1 2 4 8
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time

import torch
import torch.multiprocessing as mp


from scoresde import configs
from scoresde import solvers
from scoresde import models
from scoresde import training
from scoresde.training import distributed


def bench_config(args):
    config = configs.load_config("vpsde")
    config.device = args.device
    config.precision = args.precision
    config.training.batch_size = args.batch_size
    config.training.progress = False
    if args.model == "mlp":
        config.data.dataset = "gmm8"
    else:
        config.data.dataset = "digits"
        config.model.nf = 32
        config.model.ch_mult = (1, 2)
    return config


def _worker(rank, world_size, port, args, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(args.threads_per_rank)
    try:
        config = bench_config(args)
        with tempfile.TemporaryDirectory() as workdir:
            trainer = training.Trainer(config, workdir)
            ctx = trainer.dist
            batches = trainer.batches()

            def steps(n):
                for _ in range(n):
                    x, y = next(batches)
                    trainer.train_step(x.to(trainer.device), trainer.labels(y))

            steps(args.warmup)
            ctx.barrier()
            start = time.perf_counter()
            steps(args.steps)
            ctx.barrier()
            train_s = time.perf_counter() - start

            score_fn = models.get_score_fn(trainer.ema.module.eval(), trainer.sde, trainer.precond)
            shard = ctx.shard(args.samples)
            gen = torch.Generator(trainer.device).manual_seed(ctx.seed(config.seed))
            ctx.barrier()
            start = time.perf_counter()
            x = solvers.sample(trainer.sde, score_fn, (len(shard), *trainer.data.shape), solver="dpm_solver",
                               steps=args.sample_steps, generator=gen, device=trainer.device).x.cpu()
            parts = ctx.gather(x)
            sample_s = time.perf_counter() - start
        if ctx.is_main:
            assert sum(len(p) for p in parts) == args.samples
            result = {"world_size": world_size, "steps_per_s": args.steps / train_s,
                      "examples_per_s": args.steps * args.batch_size / train_s,
                      "samples_per_s": args.samples / sample_s}
            with open(out_path, "w") as f:
                json.dump(result, f)
    finally:
        distributed.shutdown()


def run(world_size, args) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        mp.spawn(_worker, args=(world_size, port, args, out.name), nprocs=world_size, join=True)
        with open(out.name) as f:
            return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("unet", "mlp"), default="unet", help="digits U-Net or 2-D MLP")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per rank)")
    parser.add_argument("--precision", default="float32", help="float32 | bfloat16 | float16 (CUDA)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2], help="world sizes to compare")
    parser.add_argument("--threads_per_rank", type=int, default=1, help="CPU threads of each rank")
    parser.add_argument("--batch_size", type=int, default=64, help="global batch")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--samples", type=int, default=256, help="samples drawn (sharded over the ranks)")
    parser.add_argument("--sample_steps", type=int, default=20, help="DPM-Solver steps")
    parser.add_argument("--quick", action="store_true", help="few steps and samples (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.samples = 5, 1, 32
    rows = [run(w, args) for w in args.worlds]
    base = rows[0]
    print(f"{args.model}, {args.device}, {args.precision}, global batch {args.batch_size}, "
          f"{args.threads_per_rank} thread(s) per rank")
    print("| ranks | train steps/s | examples/s | speed-up | samples/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['world_size']} | {r['steps_per_s']:.2f} | {r['examples_per_s']:.0f} | "
              f"{r['steps_per_s'] / base['steps_per_s']:.2f}x | {r['samples_per_s']:.1f} | "
              f"{r['samples_per_s'] / base['samples_per_s']:.2f}x |")


if __name__ == "__main__":
    main()
