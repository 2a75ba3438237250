"""Command line: python main.py --mode MODE --config NAME_OR_PATH [--config.a.b=value ...]; see MODES."""
from __future__ import annotations

import sys
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

import configs
import guidance
import solvers
import training
from sde_lib.io import atomic_write_json
from training import distributed

MODES = {
    "train": "train, or resume, the configured model in --workdir",
    "sample": "draw --num_samples with --solver from the run's EMA network; writes samples/*.npz and .png",
    "likelihood": "bits/dim of the test split through the probability-flow ODE; writes likelihood.json",
    "eval": "test denoising loss of the EMA network",
    "calibrate": "fit --solver's grid at --steps to the network; writes grids/<solver>_<steps>.json",
    "train_classifier": "train the noise-conditional classifier for classifier guidance",
    "inpaint": "fill the missing entries of --input (mask --mask) with the run's model",
}
SOLVER_FLAGS = ("snr", "corrector_steps", "eta", "rtol", "atol")


FLAG_SPECS = [  # name, type, help; every default is None: the config's value
    ("workdir", str, "Run directory (checkpoints, metrics, samples); default runs/<config name>."),
    ("seed", int, "Random seed (default config.seed); sample i depends only on (seed, i)."),
    ("device", str, "auto (CUDA when present), cpu, cuda, cuda:N (default config.device)."),
    ("checkpoint", str, "Checkpoint path or step to load (default: the newest in the workdir)."),
    ("solver", str, f"Sampler: {', '.join(solvers.available())} (default config.sampling.solver)."),
    ("steps", int, "Solver steps (default config.sampling.steps)."),
    ("grid", str, "uniform | logsnr | edm | calibrated (from --mode calibrate) | a .json grid file."),
    ("solver_options", str, "Any solver options, e.g. 'order=2,variant=bh1' (over config.sampling.options)."),
    ("num_samples", int, "sample: samples to draw; likelihood: test points (0 = all)."),
    ("batch_size", int, "Samples or test points per batch."),
    ("snr", float, "pc: Langevin signal-to-noise ratio (shorthand for --solver_options snr=...)."),
    ("corrector_steps", int, "pc: Langevin steps per predictor step."),
    ("eta", float, "Stochastic samplers: noise scale between ODE (0) and reverse SDE (1)."),
    ("rtol", float, "Adaptive ODE relative tolerance (rk45 sampler, likelihood)."),
    ("atol", float, "Adaptive ODE absolute tolerance (rk45 sampler, likelihood)."),
    ("divergence", str, "likelihood: exact | rademacher | gaussian (default config.eval.divergence)."),
    ("dequant_repeats", int, "likelihood: fresh uniform dequantisations of the test set."),
    ("class_label", str, "sample/inpaint: a class label (3) or a list (0,1,2) cycled over each batch."),
    ("guidance", float, "Classifier-free guidance weight omega (conditional models)."),
    ("classifier_scale", float, "Classifier guidance scale gamma, with the classifier of --mode train_classifier."),
    ("input", str, "inpaint: .npy/.npz observations, scaled like the samples (images in [0, 1])."),
    ("mask", str, "inpaint: .npy/.npz 0/1 mask (1 = observed); default the input's 'mask' or its NaNs."),
    ("inpaint_method", str, "inpaint: replacement | repaint (default config.inpainting.method)."),
    ("resample", int, "inpaint: RePaint steps per interval (default config.inpainting.resample)."),
]
DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float}


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("mode", "train", list(MODES), "; ".join(f"{k}: {v}" for k, v in MODES.items()), flag_values=fv)
    for name, kind, help_ in FLAG_SPECS:
        DEFINE[kind](name, None, help_, flag_values=fv)


def _or(value, default):
    return default if value is None else value


def _sampler(a, config, workdir) -> solvers.Sampler:
    options = solvers.parse_options(a.solver_options or "")
    options.update({k: getattr(a, k) for k in SOLVER_FLAGS if getattr(a, k) is not None})
    return training.sampler_from_config(config, workdir, solver=a.solver, steps=a.steps, grid=a.grid, options=options)


def _guidance(a, config) -> tuple:
    return (_or(a.class_label, config.sampling.class_label), _or(a.guidance, config.sampling.guidance),
            _or(a.classifier_scale, config.sampling.classifier_scale))


def train(a, config, workdir, ctx, load) -> None:
    result = training.train(config, workdir, ctx)
    if ctx.is_main:
        print(f"{'stopped' if result.interrupted else 'finished'} at step {result.step}, loss {result.loss:.5f}; "
              f"checkpoint {result.checkpoint}")


def sample(a, config, workdir, ctx, load) -> None:
    sampler, labels = _sampler(a, config, workdir), _guidance(a, config)
    num, batch = _or(a.num_samples, config.sampling.num_samples), _or(a.batch_size, config.sampling.batch_size)
    run = load(autocast=True)
    done = training.sampling.sample_to_files(run, training.guided_score_fn(run, *labels), sampler, num, batch,
                                             config.seed, ctx, training.sampling.guidance_tag(*labels))
    if done is not None:
        (_, nfe, seconds), written = done
        print(f"{num} samples with {sampler.describe()}: NFE {nfe:.0f} per batch, {seconds:.2f} s "
              f"({1000 * seconds / num:.2f} ms/sample); wrote {' and '.join(map(str, written))}")


def calibrate(a, config, workdir, ctx, load) -> None:
    sampler = _sampler(a, config, workdir)
    solvers.check_calibratable(sampler.solver)
    run = load(autocast=True)       # in the precision the samples will be drawn in
    if ctx.is_main:
        s = config.sampling
        cal, path = training.evaluation.calibrate(run, sampler, pilot=s.calibration_pilot,
                                                  iterations=s.calibration_iterations, seed=config.seed)
        print(f"{sampler.solver} grid with {sampler.steps} steps fitted on {s.calibration_pilot} pilot paths: "
              f"pathwise RMSE {cal.initial_error:.3g} (uniform log-SNR) -> {cal.error:.3g}, {cal.nfe} NFE; wrote "
              f"{path}; sample with --workdir {workdir} --solver {sampler.solver} --steps {sampler.steps} "
              "--grid calibrated")


def likelihood(a, config, workdir, ctx, load) -> None:
    options = dict(divergence=a.divergence, repeats=a.dequant_repeats, rtol=a.rtol, atol=a.atol)
    r = training.evaluation.evaluate_likelihood(load(), ctx, num_samples=_or(a.num_samples, config.eval.num_samples),
                                                batch_size=a.batch_size, **options)
    if r is not None:
        print(r.line())
        atomic_write_json(workdir / "likelihood.json", r.as_json())


def evaluate(a, config, workdir, ctx, load) -> None:
    path, state = training.use_checkpoint_config(config, workdir, a.checkpoint, _overridden())
    trainer = training.Trainer(config, workdir, ctx)
    trainer.load_state_dict(state, path)
    print(f"test loss (EMA, step {trainer.step}): {trainer.test_loss(max_batches=10**9):.5f}")


def train_classifier(a, config, workdir, ctx, load) -> None:
    if training.latest_checkpoint(workdir) is not None:     # it guides this run's model: same noise, same data
        training.use_checkpoint_config(config, workdir, None, _overridden())
    r = guidance.train_classifier(config, workdir)
    print(f"classifier at step {r.step}, cross-entropy {r.loss:.4f}, test accuracy {r.test_accuracy:.3f} at "
          f"t = 0.1 T; checkpoint {r.checkpoint}")


def inpaint(a, config, workdir, ctx, load) -> None:
    if not a.input:
        raise ValueError(f"--mode inpaint needs --input=FILE: {guidance.io.ACCEPTED}")
    method = guidance.INPAINTERS.canonical(_or(a.inpaint_method, config.inpainting.method))
    steps, resample = _or(a.steps, config.inpainting.steps), _or(a.resample, config.inpainting.resample)
    run = load()
    written, nfe, n = training.evaluation.inpaint_file(
        run, training.guided_score_fn(run, *_guidance(a, config)), a.input, a.mask, method=method, steps=steps,
        resample=resample, batch_size=_or(a.batch_size, config.sampling.batch_size), seed=config.seed)
    print(f"inpainted {n} items with {method}: NFE {nfe} per batch; wrote {' and '.join(map(str, written))}")


FV: flags.FlagValues | None = None


def _overridden() -> dict:
    return config_flags.get_override_values(FV["config"])


def run(argv: list[str]) -> int:
    """Run one command line (argv[0] is the program name) in this process; returns the exit status."""
    global FV
    FV = flags.FlagValues()
    define_flags(FV)
    try:
        argv, name = configs.registry.resolve_argument(argv)
        # ml_collections applies --config.a.b=value overrides while defining the flag, so a bad field fails here.
        config_flags.DEFINE_config_file("config", str(configs.registry.config_path("vpsde")), "Config name "
                                        "(configs/NAME.py) or path; override fields with --config.a.b=value.",
                                        flag_values=FV, lock_config=True, sys_argv=argv)
        rest = FV(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        if isinstance(e, (KeyError, AttributeError)):
            e = f"unknown config field {str(e).strip(chr(34) + chr(39))!r} in a --config.* override; see " \
                "configs/default.py for the fields"
        print(f"error: {e}", file=sys.stderr)
        return 1
    logging.set_verbosity(logging.INFO)
    try:
        if len(rest) > 1:
            raise ValueError(f"unexpected arguments {' '.join(rest[1:])}; flags are written --name=value")
        a, config = FV, FV.config
        with config.unlocked():
            config.seed, config.device = _or(a.seed, config.seed), _or(a.device, config.device)
        workdir = Path(a.workdir or Path("runs") / name)
        ctx = distributed.setup(config)

        def load(autocast=False):
            return training.load_run(workdir, a.checkpoint, ctx.device, config=config, overridden=_overridden(),
                                     autocast=autocast)
        globals()[a.mode if a.mode != "eval" else "evaluate"](a, config, workdir, ctx, load)
    except (ValueError, FileNotFoundError, training.CheckpointError, training.TrainingDivergedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()
    return 0


def entry() -> None:
    logging.use_absl_handler()
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    entry()
