"""Command line: python main.py --mode train|sample|likelihood|eval --config NAME_OR_PATH [--config.a.b=value ...]."""
from __future__ import annotations

import sys
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

import configs

MODES = ("train", "sample", "likelihood", "eval")

FLAGS = flags.FLAGS
flags.DEFINE_string("mode", "train", f"One of {', '.join(MODES)}.")
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples); default runs/<config name>.")
flags.DEFINE_integer("seed", None, "Random seed (default: config.seed).")
flags.DEFINE_string("device", None, "auto (CUDA when present), cpu, cuda, cuda:N (default: config.device).")
flags.DEFINE_string("checkpoint", None, "Checkpoint path or step to load (default: the latest in the workdir).")
flags.DEFINE_string("solver", None, "Sampler name (default: config.sampling.solver).")
flags.DEFINE_integer("steps", None, "Solver steps (default: config.sampling.steps).")
flags.DEFINE_integer("num_samples", None, "sample: samples to draw; likelihood: test points (0 = all).")
flags.DEFINE_integer("batch_size", None, "Samples or test points per batch.")
flags.DEFINE_float("snr", None, "pc: Langevin signal-to-noise ratio.")
flags.DEFINE_integer("corrector_steps", None, "pc: Langevin steps per predictor step.")
flags.DEFINE_float("eta", None, "Stochastic samplers: noise scale between ODE (0) and reverse SDE (1).")
flags.DEFINE_float("rtol", None, "Adaptive ODE relative tolerance (rk45 sampler, likelihood).")
flags.DEFINE_float("atol", None, "Adaptive ODE absolute tolerance (rk45 sampler, likelihood).")
flags.DEFINE_string("divergence", None, "likelihood: exact | rademacher | gaussian.")
flags.DEFINE_integer("dequant_repeats", None, "likelihood: fresh uniform dequantisations of the test set.")


class UsageError(ValueError):
    """A mistake on the command line."""


def _resolve_config_argument(argv: list[str]) -> tuple[list[str], str]:
    """Rewrite --config NAME to the file configs/NAME.py; returns (argv, config name)."""
    argv = list(argv)
    name = "vpsde"
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            name, where = argv[i + 1], i + 1
        elif arg.startswith("--config="):
            name, where = arg.split("=", 1)[1], i
        else:
            continue
        path = str(configs.registry.config_path(name))
        argv[where] = path if where == i + 1 else f"--config={path}"
    return argv, Path(name).stem


def _flag(name, default):
    value = getattr(FLAGS, name)
    return default if value is None else value


def _load_for_inference(config, workdir: Path):
    """(data, sde, EMA score_fn, device) from the chosen checkpoint of a run, with the run's own config."""
    import data as data_lib
    import models
    import training
    from training import checkpoint as ckpt
    path = ckpt.find_checkpoint(workdir, FLAGS.checkpoint)
    state = ckpt.load_checkpoint(path)
    device = training.get_device(config.device)
    info = data_lib.get_dataset(config)
    sde = training.build_sde(config)
    model = training.build_model(config, info.shape, info.num_classes)
    ema = models.create_ema(model, decay=config.model.ema_rate)
    ckpt.load_module_state(ema, state["ema"], "EMA network", path)
    network = ema.module.to(device).eval()
    logging.info("loaded the EMA weights of %s (step %d)", path, state["step"])
    return info, sde, models.get_score_fn(network, sde, config.model.parameterization), device


def train(config, workdir: Path) -> None:
    import training
    result = training.train(config, workdir)
    print(f"{'stopped' if result.interrupted else 'finished'} at step {result.step}, loss {result.loss:.5f}; "
          f"checkpoint {result.checkpoint}")


def sample(config, workdir: Path) -> None:
    import time

    import numpy as np
    import solvers
    import torch
    from tqdm.auto import tqdm
    from training.images import save_npz, save_samples
    name = _flag("solver", config.sampling.solver)
    if name not in solvers.available():
        raise UsageError(f"unknown solver {name!r}; available: {', '.join(solvers.available())}")
    options = {"snr": config.sampling.snr, "corrector_steps": config.sampling.corrector_steps}
    options.update({k: getattr(FLAGS, k) for k in ("snr", "corrector_steps", "eta", "rtol", "atol")
                    if getattr(FLAGS, k) is not None})
    valid = solvers.solver_options(name)
    for k in [k for k in options if k not in valid]:
        if getattr(FLAGS, k) is not None:
            raise UsageError(f"--{k} does not apply to solver {name!r} (its options: {', '.join(valid) or 'none'})")
        del options[k]
    adaptive = solvers.get_solver(name).adaptive
    steps = None if adaptive else _flag("steps", config.sampling.steps)
    num, batch = _flag("num_samples", config.sampling.num_samples), _flag("batch_size", config.sampling.batch_size)
    if num < 1 or batch < 1:
        raise UsageError("--num_samples and --batch_size must be positive")
    info, sde, score_fn, device = _load_for_inference(config, workdir)
    gen = torch.Generator(device).manual_seed(config.seed)
    chunks, nfe, start = [], 0, time.perf_counter()
    for i in tqdm(range(0, num, batch), desc=f"sampling ({name})", disable=num <= batch):
        result = solvers.sample(sde, score_fn, (min(batch, num - i), *info.shape), solver=name, steps=steps,
                                eps=config.sampling.eps, generator=gen, device=device, **options)
        chunks.append(info.inverse_scaler(result.x.float()).cpu())
        nfe += result.nfe
    elapsed = time.perf_counter() - start
    x = torch.cat(chunks)
    stem = workdir / "samples" / f"{name}_{steps if steps is not None else 'adaptive'}_seed{config.seed}"
    save_npz(stem.with_suffix(".npz"), samples=x.numpy())
    reference = None if info.is_image else info.inverse_scaler(torch.stack([info.test[i][0] for i in
                                                                           range(min(len(info.test), 2000))]))
    save_samples(x, stem.with_suffix(".png"), info.is_image, reference=reference, title=f"{name}, NFE {nfe // len(chunks)}")
    if not np.isfinite(x.numpy()).all():
        raise ValueError("the samples contain NaN/inf; try more --steps or another --solver")
    print(f"{num} samples with {name}: NFE {nfe // len(chunks)} per batch, {elapsed:.2f} s "
          f"({1000 * elapsed / num:.2f} ms/sample); wrote {stem}.png and {stem}.npz")


def likelihood(config, workdir: Path) -> None:
    import json

    import likelihood as lik
    import torch
    from training.io import atomic_write_json
    num = _flag("num_samples", config.eval.num_samples)
    batch = _flag("batch_size", config.eval.batch_size)
    repeats = _flag("dequant_repeats", config.eval.dequant_repeats)
    divergence = _flag("divergence", config.eval.divergence)
    if divergence not in lik.DIVERGENCES:
        raise UsageError(f"unknown --divergence {divergence!r}; available: {', '.join(lik.DIVERGENCES)}")
    info, sde, score_fn, device = _load_for_inference(config, workdir)
    test = info.test if num <= 0 else torch.utils.data.Subset(info.test, range(min(num, len(info.test))))
    batches = ((x.to(device), y) for x, y in torch.utils.data.DataLoader(test, batch_size=batch))
    gen = torch.Generator(device).manual_seed(config.seed)
    result = lik.evaluate_bits_per_dim(
        sde, score_fn, batches, n_bins=info.n_bins, data_range=info.data_range, repeats=repeats, progress=True,
        generator=gen, divergence=divergence, n_probes=config.eval.n_probes, method=config.eval.method,
        rtol=_flag("rtol", config.eval.rtol), atol=_flag("atol", config.eval.atol), eps=config.eval.eps)
    report = {"bits_per_dim": result.mean, "stderr": result.stderr, "num_samples": result.count,
              "mean_nfe": result.nfe, "dequant_repeats": repeats, "divergence": divergence,
              "rtol": _flag("rtol", config.eval.rtol), "atol": _flag("atol", config.eval.atol)}
    atomic_write_json(workdir / "likelihood.json", report)
    print(f"bits/dim: {result.mean:.4f} ± {result.stderr:.4f} ({result.count} samples, mean NFE {result.nfe:.0f})")
    logging.info("wrote %s", json.dumps(report))


def evaluate(config, workdir: Path) -> None:
    import training
    from training import checkpoint as ckpt
    trainer = training.Trainer(config, workdir)
    path = ckpt.find_checkpoint(workdir, FLAGS.checkpoint)
    trainer.load_state_dict(ckpt.load_checkpoint(path, map_location=trainer.device), path)
    print(f"test loss (EMA, step {trainer.step}): {trainer.test_loss(max_batches=10**9):.5f}")


def main(argv, config_name: str) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {' '.join(argv[1:])}; flags are written --name=value")
    if FLAGS.mode not in MODES:
        raise UsageError(f"unknown --mode {FLAGS.mode!r}; available: {', '.join(MODES)}")
    config = FLAGS.config
    if FLAGS.seed is not None:
        config.seed = FLAGS.seed
    if FLAGS.device is not None:
        config.device = FLAGS.device
    workdir = Path(FLAGS.workdir or Path("runs") / config_name)
    {"train": train, "sample": sample, "likelihood": likelihood, "eval": evaluate}[FLAGS.mode](config, workdir)


def entry() -> None:
    from training import CheckpointError, TrainingDivergedError
    try:
        argv, config_name = _resolve_config_argument(sys.argv)
    except ValueError as e:
        sys.exit(f"error: {e}")
    try:
        # ml_collections applies --config.a.b=value overrides while defining the flag, so a bad field fails here.
        config_flags.DEFINE_config_file(
            "config", str(configs.registry.CONFIG_DIR / "vpsde.py"),
            "Config name (configs/NAME.py) or path; override fields with --config.a.b=value.", lock_config=True)
        argv = FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        if isinstance(e, (KeyError, AttributeError)):
            sys.exit(f"error: unknown config field {str(e).strip(chr(34) + chr(39))!r} in a --config.* override; "
                     "see configs/default.py for the fields")
        sys.exit(f"error: {e}")
    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()
    try:
        main(argv, config_name)
    except (ValueError, FileNotFoundError, CheckpointError, TrainingDivergedError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    entry()
