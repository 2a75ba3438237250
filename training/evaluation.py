"""Evaluations of a trained run: bits/dim of the test split, calibrated grids, inpainting of given observations."""
from __future__ import annotations

from typing import NamedTuple

import torch

import guidance
import likelihood
import solvers

from .sampling import write_samples


class LikelihoodReport(NamedTuple):
    """bits/dim (mean ± stderr over count test points, mean NFE per point's solve) and the settings used."""

    bits_per_dim: float
    stderr: float
    num_samples: int
    mean_nfe: float
    settings: dict

    def line(self) -> str:
        return (f"bits/dim: {self.bits_per_dim:.4f} ± {self.stderr:.4f} ({self.num_samples} samples, "
                f"mean NFE {self.mean_nfe:.0f})")

    def as_json(self) -> dict:
        return {k: v for k, v in self._asdict().items() if k != "settings"} | self.settings


def evaluate_likelihood(run, ctx, *, num_samples: int = 0, batch_size: int | None = None,
                        **options) -> LikelihoodReport | None:
    """Bits/dim of run's test split (num_samples points, 0 = all) through the probability-flow ODE.

    Under torchrun each process solves its own contiguous shard with its own seed and the plain network (a
    DDP-wrapped one would synchronise inside the adaptive solve, whose step counts differ); rank 0 gets the
    merged result, the others None. options: those of likelihood.evaluate_bits_per_dim, defaults from
    run.config.eval (divergence, n_probes, method, rtol, atol, eps, dequant_repeats as `repeats`).
    """
    e = run.config.eval
    settings = {"divergence": e.divergence, "n_probes": e.n_probes, "method": e.method, "rtol": e.rtol,
                "atol": e.atol, "eps": e.eps, "repeats": e.dequant_repeats}
    settings.update({k: v for k, v in options.items() if v is not None})
    test = run.data.test
    count = len(test) if num_samples <= 0 else min(num_samples, len(test))
    shard = torch.utils.data.Subset(test, ctx.shard(count))
    batches = ((x.to(ctx.device), y) for x, y in
               torch.utils.data.DataLoader(shard, batch_size=batch_size or e.batch_size))
    generator = torch.Generator(ctx.device).manual_seed(ctx.seed(run.config.seed))
    result = None if len(shard) == 0 else likelihood.evaluate_bits_per_dim(
        run.sde, run.score_fn, batches, n_bins=run.data.n_bins, data_range=run.data.data_range,
        progress=ctx.is_main, generator=generator, **settings)
    results = ctx.gather(result)
    if not ctx.is_main:
        return None
    r = results[0] if len(results) == 1 else likelihood.merge_bits_per_dim(results)
    settings["dequant_repeats"] = settings.pop("repeats")
    return LikelihoodReport(r.mean, r.stderr, r.count, r.nfe, settings)


def calibrate(run, sampler: solvers.Sampler, *, pilot: int, iterations: int, seed: int) -> str:
    """Fit `sampler`'s grid to the run's network on `pilot` prior samples and save it where `--grid calibrated`
    finds it; returns the line that says what was fitted and written."""
    solvers.check_calibratable(sampler.solver)
    options = {k: v for k, v in sampler.options.items() if k != "grid"}
    cal = solvers.calibrate_grid(run.sde, run.score_fn, (pilot, *run.data.shape), sampler.solver,
                                 steps=sampler.steps, eps=sampler.eps, iterations=iterations, progress=True,
                                 generator=torch.Generator(run.device).manual_seed(seed), device=run.device,
                                 **options)
    path = solvers.calibrated_grid_path(run.workdir, sampler.solver, sampler.steps)
    solvers.save_grid(path, cal, solver=sampler.solver, sde=run.sde, **options)
    return (f"{sampler.solver} grid with {sampler.steps} steps fitted on {pilot} pilot paths: pathwise RMSE "
            f"{cal.initial_error:.3g} (uniform log-SNR) -> {cal.error:.3g}, {cal.nfe} NFE; wrote {path}; sample "
            f"with --workdir {run.workdir} --solver {sampler.solver} --steps {sampler.steps} --grid calibrated")


def inpaint_file(run, score_fn, input_path: str, mask_path: str | None, *, method: str, steps: int, resample: int,
                 batch_size: int, seed: int):
    """Inpaint the observations in `input_path` (mask from `mask_path`, the file's 'mask' or its NaNs) in batches;
    writes <workdir>/inpaint/<method>_<steps>_seed<seed>.{npz,png}; returns the line saying what was written."""
    guidance.INPAINTERS[method]
    info = run.data
    x, mask = guidance.read_observation(input_path, mask_path, info.shape)
    x, mask = info.scaler(x).to(run.device), torch.broadcast_to(mask.to(run.device), x.shape)
    generator = torch.Generator(run.device).manual_seed(seed)
    chunks, nfe = [], 0
    for i in range(0, len(x), batch_size):
        result = guidance.inpaint(run.sde, score_fn, x[i:i + batch_size], mask[i:i + batch_size], method=method,
                                  steps=steps, resample=resample, eps=run.config.sampling.eps, generator=generator)
        chunks.append(info.inverse_scaler(result.x.float()).cpu())
        nfe += result.nfe
    out = torch.cat(chunks)
    per_batch = nfe // len(chunks)
    stem = run.workdir / "inpaint" / f"{method}_{steps}_seed{seed}"
    written = write_samples(stem, out, info, "try more --steps", title=f"{method}, NFE {per_batch}",
                            mask=mask.cpu().numpy())
    return f"inpainted {len(out)} items with {method}: NFE {per_batch} per batch; wrote {' and '.join(map(str, written))}"
