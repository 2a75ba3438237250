"""Command line: python main.py --mode MODE --config NAME_OR_PATH [--config.a.b=value ...], MODE one of MODES below."""
from __future__ import annotations

import sys
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

import configs

MODES = ("train", "sample", "likelihood", "eval", "train_classifier", "inpaint", "calibrate")

FLAGS = flags.FLAGS
flags.DEFINE_string("mode", "train", f"One of {', '.join(MODES)}.")
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples); default runs/<config name>.")
flags.DEFINE_integer("seed", None, "Random seed (default: config.seed).")
flags.DEFINE_string("device", None, "auto (CUDA when present), cpu, cuda, cuda:N (default: config.device).")
flags.DEFINE_string("checkpoint", None, "Checkpoint path or step to load (default: the latest in the workdir).")
flags.DEFINE_string("solver", None, "Sampler name (default: config.sampling.solver).")
flags.DEFINE_integer("steps", None, "Solver steps (default: config.sampling.steps).")
flags.DEFINE_string("grid", None, "sample: uniform | logsnr | edm | calibrated (from --mode calibrate) | a .json "
                    "grid file (default: config.sampling.grid, '' = the solver's own).")
flags.DEFINE_integer("num_samples", None, "sample: samples to draw; likelihood: test points (0 = all).")
flags.DEFINE_integer("batch_size", None, "Samples or test points per batch.")
flags.DEFINE_float("snr", None, "pc: Langevin signal-to-noise ratio.")
flags.DEFINE_integer("corrector_steps", None, "pc: Langevin steps per predictor step.")
flags.DEFINE_float("eta", None, "Stochastic samplers: noise scale between ODE (0) and reverse SDE (1).")
flags.DEFINE_float("rtol", None, "Adaptive ODE relative tolerance (rk45 sampler, likelihood).")
flags.DEFINE_float("atol", None, "Adaptive ODE absolute tolerance (rk45 sampler, likelihood).")
flags.DEFINE_string("divergence", None, "likelihood: exact | rademacher | gaussian.")
flags.DEFINE_integer("dequant_repeats", None, "likelihood: fresh uniform dequantisations of the test set.")
flags.DEFINE_string("class_label", None, "sample/inpaint: a class label (3) or a list (0,1,2) cycled over each batch.")
flags.DEFINE_float("guidance", None, "Classifier-free guidance weight omega (conditional models; default "
                   "config.sampling.guidance).")
flags.DEFINE_float("classifier_scale", None, "Classifier guidance scale gamma, with the classifier of "
                   "--mode train_classifier (default config.sampling.classifier_scale).")
flags.DEFINE_string("input", None, "inpaint: .npy/.npz observations, scaled like the samples (images in [0, 1]).")
flags.DEFINE_string("mask", None, "inpaint: .npy/.npz 0/1 mask (1 = observed); default the input's 'mask' or its NaNs.")
flags.DEFINE_string("inpaint_method", None, "inpaint: replacement | repaint (default config.inpainting.method).")
flags.DEFINE_integer("resample", None, "inpaint: RePaint steps per interval (default config.inpainting.resample).")


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


# What a checkpoint's network was trained on and for: sampling, likelihood, eval and inpainting take these
# sections from the checkpoint, whatever --config says.
TRAINED_SECTIONS = ("sde", "model", "data")
# Where the data are rather than what they are: a run evaluated on another machine may point at its copy.
_RELOCATABLE = ("data.path", "data.download")


def _plain(value):
    """value with lists as tuples: a config read back from JSON has lists where the config file has tuples."""
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _as_trained(config, trained, overridden: dict) -> None:
    """Set the TRAINED_SECTIONS of `config` to those of `trained`, the config a checkpoint was trained with.

    overridden: the --config.* overrides given ({'model.nf': 8, ...}). One that contradicts the checkpoint is a
    UsageError naming both values; other differences (another --config name, say) are logged.
    """
    replaced = []
    for section in TRAINED_SECTIONS:
        for field, value in trained.get(section, {}).items():
            key, current = f"{section}.{field}", config[section].get(field)
            if field not in config[section] or _plain(current) == _plain(value):
                continue
            if key in overridden:
                if key in _RELOCATABLE:
                    continue
                raise UsageError(f"--config.{key}={_plain(current)!r} conflicts with the checkpoint, which was "
                                 f"trained with {key}={_plain(value)!r}; drop the override (sampling, likelihood, "
                                 "eval and inpainting use the checkpoint's sde, model and data settings)")
            config[section][field] = value
            replaced.append(f"{key}={_plain(value)!r} (not {_plain(current)!r})")
    if replaced:
        logging.warning("using the checkpoint's %s", ", ".join(replaced))


def _checkpoint_config(config, path, state: dict | None = None) -> None:
    """Give `config` the trained sections of the checkpoint at `path` (see _as_trained)."""
    import training
    _as_trained(config, training.config_of_checkpoint(path, state), config_flags.get_override_values(FLAGS["config"]))


def _load_for_inference(config, workdir: Path, autocast: bool = False):
    """(data, sde, EMA score_fn, device) from the chosen checkpoint of a run, with the run's own config.

    config's TRAINED_SECTIONS become the checkpoint's. autocast runs the network in config.precision (sampling);
    without it, in float32 (the likelihood ODE). Under torchrun every rank loads the checkpoint onto its own device.
    """
    import data as data_lib
    import models
    import training
    from training import checkpoint as ckpt
    from training import distributed, precision
    path = ckpt.find_checkpoint(workdir, FLAGS.checkpoint)
    state = ckpt.load_checkpoint(path)
    _checkpoint_config(config, path, state)
    device = distributed.setup(config).device
    info = data_lib.get_dataset(config)
    sde = training.build_sde(config)
    model = training.build_model(config, info.shape, info.num_classes)
    ema = models.create_ema(model, decay=config.model.ema_rate)
    ckpt.load_module_state(ema, state["ema"], "EMA network", path)
    network = ema.module.to(device).eval().requires_grad_(False)     # gradients are only ever taken in x
    if autocast:
        network = precision.autocast_network(network, config.precision, device)
    logging.info("loaded the EMA weights of %s (step %d)", path, state["step"])
    return info, sde, models.get_score_fn(network, sde, config.model.parameterization), device


def train(config, workdir: Path) -> None:
    import training
    result = training.train(config, workdir)
    if training.distributed.setup(config).is_main:
        print(f"{'stopped' if result.interrupted else 'finished'} at step {result.step}, loss {result.loss:.5f}; "
              f"checkpoint {result.checkpoint}")


def _check_solver_flags(name: str, given: dict) -> None:
    """A UsageError naming the first flag in `given` that solver `name` does not take."""
    import solvers
    valid = solvers.solver_options(name)
    for k in given:
        if k not in valid:
            raise UsageError(f"--{k} does not apply to solver {name!r} (its options: {', '.join(valid) or 'none'})")


def sample(config, workdir: Path) -> None:
    import time

    import solvers
    import torch
    import training
    from tqdm.auto import tqdm
    from training import distributed
    name = _flag("solver", config.sampling.solver)
    if name not in solvers.available():
        raise UsageError(f"unknown solver {name!r}; available: {', '.join(solvers.available())}")
    given = {k: getattr(FLAGS, k) for k in ("snr", "corrector_steps", "eta", "rtol", "atol", "grid")
             if getattr(FLAGS, k) is not None}
    _check_solver_flags(name, given)
    given.pop("grid", None)             # already in config.sampling.grid
    arguments = training.sampler_arguments(config, name, FLAGS.steps, workdir=workdir, **given)
    steps = arguments["steps"]
    num, batch = _flag("num_samples", config.sampling.num_samples), _flag("batch_size", config.sampling.batch_size)
    if num < 1 or batch < 1:
        raise UsageError("--num_samples and --batch_size must be positive")
    info, sde, score_fn, device = _load_for_inference(config, workdir, autocast=True)
    score_fn = _guided(config, workdir, info, score_fn, device)
    # Under torchrun each rank draws a contiguous shard with its own seed; rank 0 gathers them and writes once.
    ctx = distributed.setup(config)
    shard = ctx.shard(num)
    gen = torch.Generator(device).manual_seed(ctx.seed(config.seed))
    chunks, nfe, start = [], 0, time.perf_counter()
    for i in tqdm(range(shard.start, shard.stop, batch), desc=f"sampling ({name})",
                  disable=len(shard) <= batch or not ctx.is_main):
        result = solvers.sample(sde, score_fn, (min(batch, shard.stop - i), *info.shape), solver=name,
                                generator=gen, device=device, **arguments)
        chunks.append(info.inverse_scaler(result.x.float()).cpu())
        nfe += result.nfe
    parts = ctx.gather((torch.cat(chunks) if chunks else torch.empty(0, *info.shape), nfe, len(chunks)))
    if not ctx.is_main:
        return
    elapsed = time.perf_counter() - start
    x = torch.cat([p[0] for p in parts])
    nfe, n_batches = sum(p[1] for p in parts), sum(p[2] for p in parts)
    grid = config.sampling.grid if "grid" in arguments else ""
    grid = f"grid-{Path(grid).stem}" if grid.endswith(".json") else grid
    stem = workdir / "samples" / (f"{name}_{steps if steps is not None else 'adaptive'}{'_' + grid if grid else ''}"
                                  f"_seed{config.seed}{_guidance_tag(config)}")
    reference = None if info.is_image else info.inverse_scaler(torch.stack([info.test[i][0] for i in
                                                                           range(min(len(info.test), 2000))]))
    written = _write_samples(stem, x, info.is_image, "try more --steps or another --solver", reference=reference,
                             title=f"{name}, NFE {nfe // n_batches}")
    print(f"{num} samples with {name}: NFE {nfe // n_batches} per batch, {elapsed:.2f} s "
          f"({1000 * elapsed / num:.2f} ms/sample); wrote {' and '.join(map(str, written))}")


def calibrate(config, workdir: Path) -> None:
    import solvers
    import torch
    import training
    from training import distributed
    name = _flag("solver", config.sampling.solver)
    if name not in solvers.available():
        raise UsageError(f"unknown solver {name!r}; available: {', '.join(solvers.available())}")
    solvers.check_calibratable(name)        # before loading the checkpoint
    steps = _flag("steps", config.sampling.steps)
    no_grid = {"grid": ""} if "grid" in solvers.solver_options(name) else {}      # the grid is what is fitted
    options = {k: v for k, v in training.sampler_arguments(config, name, steps, eta=FLAGS.eta, **no_grid).items()
               if k not in ("steps", "eps")}
    # In the precision the samples will be drawn in, so that the grid fits the network that will use it.
    info, sde, score_fn, device = _load_for_inference(config, workdir, autocast=True)
    if not distributed.setup(config).is_main:
        return
    pilot = config.sampling.calibration_pilot
    cal = solvers.calibrate_grid(sde, score_fn, (pilot, *info.shape), name, steps=steps, eps=config.sampling.eps,
                                 generator=torch.Generator(device).manual_seed(config.seed), device=device,
                                 iterations=config.sampling.calibration_iterations, progress=True, **options)
    path = training.calibrated_grid_path(workdir, name, steps)
    solvers.save_grid(str(path), cal, solver=name, sde=sde, **options)
    print(f"{name} grid with {steps} steps fitted on {pilot} pilot paths: pathwise RMSE {cal.initial_error:.3g} "
          f"(uniform log-SNR) -> {cal.error:.3g}, {cal.nfe} NFE; wrote {path}; sample with "
          f"--solver {name} --steps {steps} --grid calibrated")


def _write_samples(stem: Path, x, is_image: bool, hint: str, reference=None, title=None, **arrays) -> list[Path]:
    """<stem>.npz (x under 'samples', with `arrays`) and <stem>.png where the data have a picture; the files written.

    Non-finite samples raise before anything is written: a run never leaves NaN results that look like output.
    """
    from training.images import save_npz, save_samples
    if not x.isfinite().all():
        raise ValueError(f"the samples contain NaN/inf (nothing written); {hint}")
    png = save_samples(x, Path(f"{stem}.png"), is_image, reference=reference, title=title)
    npz = Path(f"{stem}.npz")
    save_npz(npz, samples=x.numpy(), **arrays)
    return [p for p in (png, npz) if p is not None]


def likelihood(config, workdir: Path) -> None:
    import json

    import likelihood as lik
    import torch
    from training import distributed
    from training.io import atomic_write_json
    num = _flag("num_samples", config.eval.num_samples)
    batch = _flag("batch_size", config.eval.batch_size)
    repeats = _flag("dequant_repeats", config.eval.dequant_repeats)
    divergence = _flag("divergence", config.eval.divergence)
    if divergence not in lik.DIVERGENCES:
        raise UsageError(f"unknown --divergence {divergence!r}; available: {', '.join(lik.DIVERGENCES)}")
    info, sde, score_fn, device = _load_for_inference(config, workdir)
    # Under torchrun each rank solves for its own contiguous shard of the test points, with its own seed and the
    # plain network: a DDP-wrapped one would synchronise inside the adaptive solve, whose step counts differ.
    ctx = distributed.setup(config)
    test = torch.utils.data.Subset(info.test, ctx.shard(len(info.test) if num <= 0 else min(num, len(info.test))))
    batches = ((x.to(device), y) for x, y in torch.utils.data.DataLoader(test, batch_size=batch))
    gen = torch.Generator(device).manual_seed(ctx.seed(config.seed))
    result = None if len(test) == 0 else lik.evaluate_bits_per_dim(
        sde, score_fn, batches, n_bins=info.n_bins, data_range=info.data_range, repeats=repeats,
        progress=ctx.is_main, generator=gen, divergence=divergence, n_probes=config.eval.n_probes,
        method=config.eval.method, rtol=_flag("rtol", config.eval.rtol), atol=_flag("atol", config.eval.atol),
        eps=config.eval.eps)
    results = ctx.gather(result)
    if not ctx.is_main:
        return
    result = results[0] if len(results) == 1 else distributed.merge_bits_per_dim(results)
    report = {"bits_per_dim": result.mean, "stderr": result.stderr, "num_samples": result.count,
              "mean_nfe": result.nfe, "dequant_repeats": repeats, "divergence": divergence,
              "rtol": _flag("rtol", config.eval.rtol), "atol": _flag("atol", config.eval.atol)}
    atomic_write_json(workdir / "likelihood.json", report)
    print(f"bits/dim: {result.mean:.4f} ± {result.stderr:.4f} ({result.count} samples, mean NFE {result.nfe:.0f})")
    logging.info("wrote %s", json.dumps(report))


def _guidance_tag(config) -> str:
    """File-name suffix of a conditional sample run, e.g. '_y0-1-2_w2' (empty when unconditional)."""
    text = str(_flag("class_label", config.sampling.class_label) or "").strip()
    if not text:
        return ""
    tag = "_y" + "-".join(p.strip() for p in text.split(","))
    for letter, value in (("w", _flag("guidance", config.sampling.guidance)),
                          ("g", _flag("classifier_scale", config.sampling.classifier_scale))):
        tag += f"_{letter}{value:g}" if value else ""
    return tag


def _guided(config, workdir: Path, info, score_fn, device):
    """score_fn conditioned on --class_label, with classifier-free (--guidance) / classifier (--classifier_scale) guidance."""
    import guidance
    text = _flag("class_label", config.sampling.class_label)
    omega = _flag("guidance", config.sampling.guidance)
    gamma = _flag("classifier_scale", config.sampling.classifier_scale)
    if not str(text).strip():
        if omega or gamma:
            raise UsageError("--guidance and --classifier_scale need --class_label (e.g. --class_label=3 or 0,1,2)")
        return score_fn
    labels = guidance.parse_labels(text)
    guidance.check_labels(labels, info.num_classes)
    if config.model.conditional:
        score_fn = guidance.ClassifierFreeGuidance(score_fn.score, labels, omega)
    elif omega:
        raise UsageError("--guidance (classifier-free) needs a conditional model; train one with "
                         "--config.model.conditional=True, or use --classifier_scale")
    elif not gamma:
        raise UsageError("this model is unconditional: --class_label needs classifier guidance "
                         "(--classifier_scale > 0, after --mode train_classifier)")
    if gamma:
        net = guidance.load_classifier(config, workdir, info.shape, info.num_classes, device)
        score_fn = guidance.ClassifierGuidance(score_fn, guidance.ClassifierLogits(net), labels, gamma)
    return score_fn


def train_classifier(config, workdir: Path) -> None:
    import guidance
    from training import checkpoint as ckpt
    # The classifier guides this run's score model, so it must see the same noise on the same data.
    path = ckpt.latest_checkpoint(workdir)
    if path is not None:
        _checkpoint_config(config, path)
    result = guidance.train_classifier(config, workdir)
    print(f"classifier at step {result.step}, cross-entropy {result.loss:.4f}, test accuracy "
          f"{result.test_accuracy:.3f} at t = 0.1 T; checkpoint {result.checkpoint}")


def inpaint(config, workdir: Path) -> None:
    import guidance
    import torch
    if not FLAGS.input:
        raise UsageError(f"--mode inpaint needs --input=FILE: {guidance.io.ACCEPTED}")
    method = _flag("inpaint_method", config.inpainting.method)
    if method not in guidance.INPAINTERS:
        raise UsageError(f"unknown --inpaint_method {method!r}; available: {', '.join(guidance.INPAINTERS)}")
    steps, resample = _flag("steps", config.inpainting.steps), _flag("resample", config.inpainting.resample)
    batch = _flag("batch_size", config.sampling.batch_size)
    info, sde, score_fn, device = _load_for_inference(config, workdir)
    x, mask = guidance.read_observation(FLAGS.input, FLAGS.mask, info.shape)
    score_fn = _guided(config, workdir, info, score_fn, device)
    x, mask = info.scaler(x).to(device), torch.broadcast_to(mask.to(device), x.shape)
    gen = torch.Generator(device).manual_seed(config.seed)
    chunks, nfe = [], 0
    for i in range(0, len(x), batch):
        result = guidance.inpaint(sde, score_fn, x[i:i + batch], mask[i:i + batch], method=method, steps=steps,
                                  resample=resample, eps=config.sampling.eps, generator=gen)
        chunks.append(info.inverse_scaler(result.x.float()).cpu())
        nfe += result.nfe
    out = torch.cat(chunks)
    stem = workdir / "inpaint" / f"{method}_{steps}_seed{config.seed}"
    written = _write_samples(stem, out, info.is_image, "try more --steps", title=f"{method}, NFE {nfe // len(chunks)}",
                             mask=mask.cpu().numpy())
    print(f"inpainted {len(out)} items with {method}: NFE {nfe // len(chunks)} per batch; "
          f"wrote {' and '.join(map(str, written))}")


def evaluate(config, workdir: Path) -> None:
    import training
    from training import checkpoint as ckpt
    path = ckpt.find_checkpoint(workdir, FLAGS.checkpoint)
    state = ckpt.load_checkpoint(path)
    _checkpoint_config(config, path, state)
    trainer = training.Trainer(config, workdir)
    trainer.load_state_dict(state, path)
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
    if FLAGS.grid is not None:
        config.sampling.grid = FLAGS.grid
    workdir = Path(FLAGS.workdir or Path("runs") / config_name)
    {"train": train, "sample": sample, "likelihood": likelihood, "eval": evaluate,
     "train_classifier": train_classifier, "inpaint": inpaint, "calibrate": calibrate}[FLAGS.mode](config, workdir)


def entry() -> None:
    from training import CheckpointError, TrainingDivergedError, distributed
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
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    entry()
