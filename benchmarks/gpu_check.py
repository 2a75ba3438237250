"""One command for a CUDA machine: the CUDA tests, then the throughput and peak memory of the GPU paths.

python benchmarks/gpu_check.py [--steps 20]

Where there is no CUDA device it says so in one line and exits 0. On a GPU it runs the CUDA tests
(`pytest -k cuda`), then prints a table: training images/s of the CIFAR-10 DDPM++ config (score_sde_vp_ddpmpp_cont,
batch 128, on random 32x32 images so that nothing is downloaded) in float32, bfloat16 and bfloat16 + torch.compile;
sampling ms per network evaluation at batch 256 (heun); the likelihood's ms per ODE step (eab4, batch 256); Inception
feature throughput (torch-fidelity's architecture, random weights; skipped without the metrics extra); and the peak
memory of each.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from scoresde import configs, likelihood, metrics, models, solvers, training


def timed(fn, repeats: int) -> tuple[float, float]:
    """(seconds per call, peak GiB) of fn() on the GPU after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, torch.cuda.max_memory_allocated() / 2**30


def trainer(workdir: Path, precision: str, compiled: bool) -> training.Trainer:
    """A Trainer of the CIFAR-10 DDPM++ config on 1024 random 8-bit 32x32 images."""
    images = workdir / "images.npy"
    if not images.exists():
        np.save(images, np.random.default_rng(0).integers(0, 256, (1024, 32, 32, 3), dtype=np.uint8))
    config = configs.load_config("score_sde_vp_ddpmpp_cont")
    config.data.dataset, config.data.path = "array", str(images)
    config.device, config.precision, config.compile = "cuda", precision, compiled
    config.training.batch_size, config.training.progress = 128, False
    return training.Trainer(config, workdir / f"{precision}{'-compile' if compiled else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed repetitions of each measurement")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to measure")
        return 0
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", "tests"],
                           cwd=Path(__file__).resolve().parents[1])
    rows = [f"| CUDA tests | {'passed' if tests.returncode == 0 else 'FAILED'} | |"]
    with tempfile.TemporaryDirectory() as tmp:
        for precision, compiled in (("float32", False), ("bfloat16", False), ("bfloat16", True)):
            t = trainer(Path(tmp), precision, compiled)
            batches = t.batches()

            def step():
                x, y = next(batches)
                t.train_step(x.to(t.device), t.labels(y))
            seconds, peak = timed(step, args.steps)
            label = f"training, {precision}{' + compile' if compiled else ''}"
            rows.append(f"| {label} | {128 / seconds:.0f} images/s | {peak:.2f} |")
        net = t.ema.module.eval()
        score_fn = models.get_score_fn(net, t.sde, t.precond)
        x_T = torch.randn(256, 3, 32, 32, device="cuda")
        with torch.no_grad():
            seconds, peak = timed(lambda: solvers.sample(t.sde, score_fn, None, "heun", x_T=x_T, steps=10), 2)
        nfe = solvers.sample(t.sde, score_fn, None, "heun", x_T=x_T, steps=10).nfe
        rows.append(f"| sampling, heun, batch 256 | {1e3 * seconds / nfe:.1f} ms per NFE | {peak:.2f} |")
        x = torch.rand(256, 3, 32, 32, device="cuda") * 2 - 1
        steps = 12
        seconds, peak = timed(lambda: likelihood.log_likelihood(t.sde, score_fn, x, method="eab4", steps=steps), 2)
        rows.append(f"| likelihood, eab4, batch 256 | {1e3 * seconds / steps:.1f} ms per ODE step | {peak:.2f} |")
    if metrics.inception_available():
        import torch_fidelity.feature_extractor_inceptionv3 as tfi
        # The architecture without its weights: throughput does not depend on them, and nothing is downloaded.
        with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}), \
                mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
            extractor = tfi.FeatureExtractorInceptionV3(metrics.fidelity.EXTRACTOR, [metrics.fidelity.FEATURES])
        images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, device="cuda")
        extractor = extractor.to("cuda").eval()
        with torch.no_grad():
            seconds, peak = timed(lambda: extractor(images), 3)
        rows.append(f"| Inception features, batch 512 | {512 / seconds:.0f} images/s | {peak:.2f} |")
    else:
        rows.append("| Inception features | skipped: pip install -e \".[metrics]\" | |")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| measurement | throughput | peak GiB |\n|---|---|---|")
    print("\n".join(rows))
    return 0 if tests.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
