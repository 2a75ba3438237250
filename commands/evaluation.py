"""Evaluations of a trained run: bits/dim of the test split, calibrated grids, inpainting of given observations."""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import NamedTuple

import torch
from absl import logging

from scoresde import guidance
from scoresde.data import check_data_space
from scoresde import likelihood
from scoresde import solvers

from scoresde.run.interrupts import NEVER
from scoresde.run.sampling import analytic_table_path, calibrated_grid_path
from scoresde.commands.sampling import write_samples
from scoresde.run.workdir import check_directory, claiming_names, fresh_stem
from scoresde.utils import UsageError, atomic_write_json


class LikelihoodReport(NamedTuple):
    """bits/dim (mean ± stderr over count test points, mean NFE per point's solve), its estimated ODE error (the
    ODE setting in `ode`), and the settings used. For the variational bound ode_error is nan and NFE counts the
    network calls per point (its t samples)."""

    bits_per_dim: float
    stderr: float
    num_samples: int
    mean_nfe: float
    ode_error: float
    ode: str
    settings: dict
    stopped_by: str | None = None

    def line(self) -> str:
        head = f"stopped by {self.stopped_by} after {self.num_samples} test points; " if self.stopped_by else ""
        if self.settings.get("bound") == "elbo":
            return (f"{head}bits/dim (variational bound): {self.bits_per_dim:.4f} ± {self.stderr:.4f} "
                    f"({self.num_samples} samples, {self.mean_nfe:.0f} t samples each)")
        noise = "stderr" if self.settings.get("divergence") == "exact" else "Hutchinson"
        ode = "" if math.isnan(self.ode_error) else f" ± {self.ode_error:.4f} (ODE)"
        return (f"{head}bits/dim: {self.bits_per_dim:.4f} ± {self.stderr:.4f} ({noise}){ode} ({self.num_samples} "
                f"samples, mean NFE {self.mean_nfe:.0f}, {self.ode})")

    def as_json(self) -> dict:
        out = {k: v for k, v in self._asdict().items() if k != "settings"} | self.settings
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}


def check_likelihood_options(eval_config, bound: str = "ode", **options) -> None:
    """A ValueError for an unknown bound or divergence, or for ODE options given with the variational bound:
    what evaluate_likelihood(run, ctx, bound=bound, **options) would refuse, checked without the run (the
    eval section is the command line's, never the checkpoint's)."""
    if bound not in ("ode", "elbo"):
        raise UsageError(f"bound must be ode (the probability-flow ODE likelihood) or elbo (the variational bound), "
                         f"got {bound!r}")
    if bound == "elbo":
        ode_only = sorted(k for k, v in options.items() if v is not None and k != "repeats")
        if ode_only:
            raise UsageError(f"options of the ODE likelihood ({', '.join(ode_only)}) do not apply to the variational "
                             "bound (--bound elbo)")
    else:
        divergence = options.get("divergence")
        likelihood.DIVERGENCES.canonical(eval_config.divergence if divergence is None else divergence)


def evaluate_likelihood(run, ctx, *, num_samples: int = 0, batch_size: int | None = None, bound: str = "ode",
                        stop=NEVER, **options) -> LikelihoodReport | None:
    """Bits/dim of run's test split (num_samples points, 0 = all) through the probability-flow ODE, or (bound
    "elbo") the continuous-time variational bound on it (likelihood.bound_bits_per_dim).

    Under torchrun each process solves its own contiguous shard with its own seed (and its own pilot) and the
    plain network (a DDP-wrapped one would synchronise inside the adaptive solve, whose step counts differ); rank
    0 gets the merged result, the others None. options: those of likelihood.evaluate_bits_per_dim (or of
    bound_bits_per_dim), defaults from run.config.eval (divergence, n_probes, method, steps, rtol, atol, accuracy
    (0: steps or rtol/atol as configured), pilot, eps, dequant_repeats as `repeats`; for the bound bound_samples
    as `n_t` and bound_eps as `eps`); rtol or atol in options fix an adaptive solve at those tolerances.
    A signal (`stop`) ends a single process's evaluation after the batch in hand, and the report says so; when
    it comes before the first batch there is nothing to report and the result is None.
    """
    evaluate, settings = _likelihood_settings(run.config.eval, bound, options)
    shard = _test_shard(run, ctx, num_samples)
    settings = size_pilot(settings, len(shard))
    batches = _test_batches(ctx, shard, batch_size or run.config.eval.batch_size, stop)
    first = next(batches, None)
    if first is None and not ctx.distributed:       # a single process's batches end early only on a signal
        return None
    result, error = _evaluate_shard(run, ctx, evaluate, settings, first, batches)
    merged = _merge_shards(ctx, result, error)
    return None if merged is None else _report(merged, settings, None if ctx.distributed else stop.signal)


def _likelihood_settings(e, bound: str, options: dict) -> tuple:
    """(the evaluating function, its settings): run.config.eval's defaults for `bound`, overridden by options."""
    check_likelihood_options(e, bound, **options)
    if bound == "elbo":
        settings = {"bound": "elbo", "n_t": e.bound_samples, "eps": e.bound_eps, "repeats": e.dequant_repeats}
        evaluate = likelihood.bound_bits_per_dim
    else:
        settings, evaluate = _ode_settings(e), likelihood.evaluate_bits_per_dim
    settings.update({k: v for k, v in options.items() if v is not None})
    return evaluate, settings


def _ode_settings(e) -> dict:
    """The ODE likelihood's settings in run.config.eval, with None for those its way of choosing the solve ignores."""
    fixed = e.method in likelihood.FIXED_METHODS
    search = e.accuracy > 0 and not (fixed and e.steps > 0)
    return {"divergence": e.divergence, "n_probes": e.n_probes, "method": e.method,
            "steps": None if search or not fixed else e.steps,
            "rtol": None if search or fixed else e.rtol, "atol": None if search or fixed else e.atol,
            "accuracy": e.accuracy if search else None, "pilot": e.pilot, "eps": e.eps,
            "repeats": e.dequant_repeats}


def _test_shard(run, ctx, num_samples: int) -> torch.utils.data.Subset:
    """This process's contiguous part of the first num_samples (0 = all) points of the run's test split."""
    test = run.data.test
    if len(test) == 0:
        raise UsageError(f"the run's {run.data.name} test split has no items here: set --config.data.path to the "
                         "folder that holds the dataset")
    count = len(test) if num_samples <= 0 else min(num_samples, len(test))
    return torch.utils.data.Subset(test, ctx.shard(count))


def _test_batches(ctx, shard, batch_size: int, stop):
    """The shard's (x, y) batches on ctx.device; a single process starts no new batch once a signal has come
    (under torchrun every rank evaluates its whole shard, so that none waits for the others alone)."""
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size)
    return ((x.to(ctx.device), y) for x, y in loader if ctx.distributed or stop.signal is None)


def size_pilot(settings: dict, points: int) -> dict:
    """The settings with the accuracy search's pilot cut to a quarter of the points evaluated (at least 1): each
    candidate setting solves the pilot three times over, so a pilot as large as the test set costs several times
    the evaluation it serves."""
    pilot = settings.get("pilot")
    if not settings.get("accuracy") or not pilot or pilot <= max(1, points // 4):
        return settings
    logging.info("pilot cut from %d to %d points: a quarter of the %d test points evaluated", pilot,
                 max(1, points // 4), points)
    return {**settings, "pilot": max(1, points // 4)}


def _evaluate_shard(run, ctx, evaluate, settings: dict, first, batches) -> tuple:
    """(BitsPerDim of the batches `first` and then `batches`, None), or (None, None) for an empty shard; under
    torchrun (None, the ValueError) when the evaluation failed."""
    if first is None:
        return None, None
    generator = torch.Generator(ctx.device).manual_seed(ctx.seed(run.config.seed))
    try:
        return evaluate(run.sde, run.score_fn, itertools.chain([first], batches), n_bins=run.data.n_bins,
                        data_range=run.data.data_range, progress=ctx.is_main, generator=generator,
                        **{k: v for k, v in settings.items() if k != "bound"}), None
    except ValueError as failure:
        if not ctx.distributed:
            raise
        return None, failure    # travels as a value: a rank that raised alone would leave the others waiting


def _merge_shards(ctx, result, error):
    """On rank 0 the BitsPerDim of all shards (raising the first rank's error, if any), None on the others."""
    results = ctx.gather((result, error))
    if not ctx.is_main:
        return None
    errors = [err for _, err in results if err is not None]
    if errors:
        raise errors[0]
    results = [r for r, _ in results]
    return results[0] if len(results) == 1 else likelihood.merge_bits_per_dim(results)


def _report(r, settings: dict, stopped_by: str | None) -> LikelihoodReport:
    """The LikelihoodReport of the BitsPerDim r, with the settings under the names the report uses."""
    settings["dequant_repeats"] = settings.pop("repeats")
    return LikelihoodReport(r.mean, r.stderr, r.count, r.nfe, r.ode_error, r.setting, settings, stopped_by)


def write_likelihood(run, report: LikelihoodReport) -> Path:
    """Write the report, with the checkpoint it is of, to <workdir>/likelihood.json (the probability-flow ODE's) or
    likelihood_elbo.json (the variational bound's), "_partial" before ".json" when a signal stopped it early; where
    that name is taken, likelihood_2.json, likelihood_3.json, ...: no result ever replaces another."""
    stem = run.workdir / ("likelihood_elbo" if report.settings.get("bound") == "elbo" else "likelihood")
    with claiming_names(check_directory(run.workdir)):
        stem = fresh_stem(stem, (".json", "_partial.json"))
        path = Path(f"{stem}_partial.json" if report.stopped_by else f"{stem}.json")
        return atomic_write_json(path, {**report.as_json(), "checkpoint": str(run.path), "step": run.step})


def calibrate(run, sampler: solvers.Sampler, *, pilot: int, iterations: int, seed: int) -> str:
    """Fit `sampler`'s grid to the run's network on `pilot` prior samples and save it where `--grid calibrated`
    finds it; returns the line that says what was fitted and written."""
    options = {k: v for k, v in sampler.options.items() if k != "grid"}
    cal = solvers.calibrate_grid(run.sde, run.score_fn, (pilot, *run.data.shape), sampler.solver,
                                 steps=sampler.steps, eps=sampler.eps, iterations=iterations, progress=True,
                                 generator=torch.Generator(run.device).manual_seed(seed), device=run.device,
                                 **options)
    path = calibrated_grid_path(run.workdir, sampler.solver, sampler.steps)
    solvers.save_grid(path, cal, solver=sampler.solver, sde=run.sde, **options,
                      fitted_on={"checkpoint": str(run.path), "step": run.step, "pilot": pilot,
                                 "iterations": iterations})
    return (f"{sampler.solver} grid with {sampler.steps} steps fitted on {pilot} pilot paths: pathwise RMSE "
            f"{cal.initial_error:.3g} (uniform log-SNR) -> {cal.error:.3g}, {cal.nfe} NFE; wrote {path}; sample "
            f"with --workdir {run.workdir} --solver {sampler.solver} --steps {sampler.steps} --grid calibrated")


def calibrate_variance(run, *, times: int = 100, batches: int = 20, batch_size: int | None = None,
                       seed: int = 0) -> str:
    """Estimate E||eps_hat(x_t, t)||^2/D, the table of Analytic-DPM's variance (solvers.estimate_eps_moments), on
    `batches` batches of the run's training split at `times` log-SNR-spaced times from eps to T, and write it to
    <workdir>/variances/analytic.json (run.sampling.analytic_table_path); returns the line saying what was written."""
    eps = run.config.sampling.eps
    grid = solvers.time_grid(run.sde, times - 1, eps, "logsnr")
    loader = torch.utils.data.DataLoader(run.data.train, batch_size=batch_size or run.config.eval.batch_size,
                                         shuffle=True, generator=torch.Generator().manual_seed(seed))
    data = (x.to(run.device) for x, _ in itertools.islice(loader, batches))
    table = solvers.estimate_eps_moments(run.sde, run.score_fn, data, grid,
                                         torch.Generator(run.device).manual_seed(seed))
    path = analytic_table_path(run.workdir)
    solvers.save_eps_moments(path, table, sde=run.sde)
    return (f"E||eps||^2/D at {times} times from {table.count} training points, {float(table.values.min()):.3g} "
            f"to {float(table.values.max()):.3g}; wrote {path}; sample with --workdir "
            f"{run.workdir} --solver ancestral --solver_options variance=analytic")


def inpaint_file(run, score_fn, input_path: str, mask_path: str | None, *, method: str, steps: int, resample: int,
                 batch_size: int, seed: int):
    """Inpaint the observations in `input_path` (mask from `mask_path`, the file's 'mask' or its NaNs) in batches;
    writes <workdir>/inpaint/<method>_<steps>_seed<seed>.{npz,png} (or a fresh variant, _2, ..., where those exist);
    returns the line saying what was written."""
    method = guidance.INPAINTERS.canonical(method)
    info = run.data
    x, mask = guidance.read_observation(input_path, mask_path, info.shape)
    if len(x) == 0:
        raise UsageError(f"{input_path} holds no observations")
    directory = check_directory(run.workdir / "inpaint")    # before any work: a result is never computed and then lost
    mask = torch.broadcast_to(mask, x.shape)
    check_data_space(x[mask == 1], info.data_space, f"the observed entries of {input_path}")
    x, mask = info.scaler(x).to(run.device), mask.to(run.device)
    generator = torch.Generator(run.device).manual_seed(seed)
    chunks, nfe = [], 0
    for i in range(0, len(x), batch_size):
        result = guidance.inpaint(run.sde, score_fn, x[i:i + batch_size], mask[i:i + batch_size], method=method,
                                  steps=steps, resample=resample, eps=run.config.sampling.eps, generator=generator)
        chunks.append(info.inverse_scaler(result.x.float()).cpu())
        nfe += result.nfe
    out = torch.cat(chunks)
    per_batch = nfe // len(chunks)
    with claiming_names(directory):
        stem = fresh_stem(directory / f"{method}_{steps}_seed{seed}", (".npz", ".png"))
        written = write_samples(stem, out, info, "try more --steps", title=f"{method}, NFE {per_batch}",
                                mask=mask.cpu().numpy())
    return (f"inpainted {len(out)} items with {method}: NFE {per_batch} per batch; "
            f"wrote {' and '.join(map(str, written))}")
