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
import training.distill
import training.importing
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
    "import": "a pretrained model (--from score_sde --config NAME | --from diffusers) as a run in --workdir",
    "fid": "sample quality (FID/KID/IS, FD-digits, energy distance) of --num_samples or of --samples FILE; "
           "writes metrics/*.json",
    "distill": "progressive distillation of the run's EMA network, halving its DDIM steps each round down to "
               "config.distill.target_steps; each student is a run in <workdir>/distill/<steps>",
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
    ("num_samples", int, "sample, fid: samples to draw (fid: default config.metrics.num_samples, 50000); "
                         "likelihood: test points (0 = all)."),
    ("batch_size", int, "Samples or test points per batch."),
    ("snr", float, "pc: Langevin signal-to-noise ratio (shorthand for --solver_options snr=...)."),
    ("corrector_steps", int, "pc: Langevin steps per predictor step."),
    ("eta", float, "Stochastic samplers: noise scale between ODE (0) and reverse SDE (1)."),
    ("rtol", float, "Adaptive ODE relative tolerance (rk45 sampler, likelihood)."),
    ("atol", float, "Adaptive ODE absolute tolerance (rk45 sampler, likelihood)."),
    ("divergence", str, "likelihood: exact | rademacher | gaussian (default config.eval.divergence)."),
    ("dequant_repeats", int, "likelihood: fresh uniform dequantisations of the test set."),
    ("accuracy", float, "likelihood: bits/dim ODE error the setting is chosen for on a pilot batch (default "
                        "config.eval.accuracy); --rtol/--atol fix the tolerances instead."),
    ("bound", str, "likelihood: ode (probability-flow ODE, default) | elbo (variational bound, no ODE)."),
    ("class_label", str, "sample/inpaint: a class label (3) or a list (0,1,2) cycled over each batch."),
    ("guidance", float, "Classifier-free guidance weight omega (conditional models)."),
    ("classifier_scale", float, "Classifier guidance scale gamma, with the classifier of --mode train_classifier."),
    ("input", str, "inpaint: .npy/.npz observations, scaled like the samples (images in [0, 1])."),
    ("mask", str, "inpaint: .npy/.npz 0/1 mask (1 = observed); default the input's 'mask' or its NaNs."),
    ("inpaint_method", str, "inpaint: replacement | repaint (default config.inpainting.method)."),
    ("resample", int, "inpaint: RePaint steps per interval (default config.inpainting.resample)."),
    ("from", str, "import: score_sde (a checkpoint_*.pth of score_sde_pytorch) | diffusers (a save_pretrained folder)."),
    ("samples", str, "fid: score this .npz (key 'samples', data space, as --mode sample writes) instead of sampling."),
    ("inception_weights", str, "fid: local Inception weights file (default config.metrics.inception_weights)."),
]
DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float}


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("mode", "train", list(MODES), "; ".join(f"{k}: {v}" for k, v in MODES.items()), flag_values=fv)
    for name, kind, help_ in FLAG_SPECS:
        DEFINE[kind](name, None, help_, flag_values=fv)


def usage() -> str:
    """The --help text: the command, the modes with one line each, then every flag."""
    width = max(map(len, MODES))
    lines = ["usage: python main.py --mode MODE [--config NAME_OR_PATH] [--config.section.field=VALUE ...] [flags]",
             "", "modes:", *(f"  {m:<{width}}  {text}" for m, text in MODES.items()), "",
             "flags (unset: the config's value):",
             f"  --config NAME_OR_PATH  a bundled config ({', '.join(configs.available())}) or a file defining "
             "get_config(); default vpsde",
             "  --config.section.field=VALUE  override any field of the config (see configs/default.py)",
             *(f"  --{name}  {text}" for name, _, text in FLAG_SPECS)]
    return "\n".join(lines)


def _or(value, default):
    return default if value is None else value


class Job:
    """One command line: its flags, config (with --seed/--device applied), workdir and distributed context."""

    def __init__(self, fv: flags.FlagValues, name: str, config_given: bool = True):
        self.a, self.config, self.config_given = fv, fv.config, config_given
        with self.config.unlocked():
            self.config.seed, self.config.device = _or(fv.seed, self.config.seed), _or(fv.device, self.config.device)
        configs.check_config(self.config)       # before anything is created on disk
        self.overridden = config_flags.get_override_values(fv["config"])
        self.workdir = Path(fv.workdir or Path("runs") / name)
        self.ctx = distributed.setup(self.config)

    def load(self, autocast: bool = False) -> training.Run:
        return training.load_run(self.workdir, self.a.checkpoint, self.ctx.device, config=self.config,
                                 overridden=self.overridden, autocast=autocast)

    def sampler(self) -> solvers.Sampler:
        options = solvers.parse_options(self.a.solver_options or "")
        options.update({k: getattr(self.a, k) for k in SOLVER_FLAGS if getattr(self.a, k) is not None})
        return training.sampler_from_config(self.config, self.workdir, solver=self.a.solver, steps=self.a.steps,
                                            grid=self.a.grid, options=options)

    def guidance(self) -> tuple:
        s = self.config.sampling
        return (_or(self.a.class_label, s.class_label), _or(self.a.guidance, s.guidance),
                _or(self.a.classifier_scale, s.classifier_scale))


def train(job: Job) -> None:
    r = training.train(job.config, job.workdir, job.ctx)
    if job.ctx.is_main:
        print(r.line())


def sample(job: Job) -> int:
    sampler, labels, s = job.sampler(), job.guidance(), job.config.sampling
    run = job.load(autocast=True)
    training.distill.check_sampler(run.workdir, run.sde, sampler)
    with training.interrupts.StopRequested() as stop:
        done = training.sampling.sample_to_files(
            run, training.guided_score_fn(run, *labels), sampler, _or(job.a.num_samples, s.num_samples),
            _or(job.a.batch_size, s.batch_size), job.config.seed, job.ctx, training.sampling.guidance_tag(*labels),
            stop=stop)
    if done is not None:
        print(done.line())
    return stop.exit_code


def calibrate(job: Job) -> None:
    given = {**solvers.parse_options(job.config.sampling.options), **solvers.parse_options(job.a.solver_options)}
    if str(given.get("variance", "")).lower() == "analytic":       # Analytic-DPM's table, not a grid
        run = job.load()
        if job.ctx.is_main:
            print(training.evaluation.calibrate_variance(run, seed=job.config.seed))
        return
    sampler, s = job.sampler(), job.config.sampling
    solvers.check_calibratable(sampler.solver)
    run = job.load(autocast=True)       # in the precision the samples will be drawn in
    if job.ctx.is_main:
        print(training.evaluation.calibrate(run, sampler, pilot=s.calibration_pilot,
                                            iterations=s.calibration_iterations, seed=job.config.seed))


def likelihood(job: Job) -> None:
    a = job.a
    r = training.evaluation.evaluate_likelihood(
        job.load(), job.ctx, num_samples=_or(a.num_samples, job.config.eval.num_samples), batch_size=a.batch_size,
        divergence=a.divergence, repeats=a.dequant_repeats, rtol=a.rtol, atol=a.atol, accuracy=a.accuracy,
        bound=_or(a.bound, "ode"))
    if r is not None:
        print(r.line())
        atomic_write_json(job.workdir / "likelihood.json", r.as_json())


def evaluate(job: Job) -> None:
    path, state = training.use_checkpoint_config(job.config, job.workdir, job.a.checkpoint, job.overridden)
    trainer = training.Trainer(job.config, job.workdir, job.ctx)
    trainer.load_state_dict(state, path)
    print(f"test loss (EMA, step {trainer.step}): {trainer.test_loss(max_batches=10**9):.5f}")


def train_classifier(job: Job) -> None:
    if training.latest_checkpoint(job.workdir) is not None:     # it guides this run's model: same noise and data
        training.use_checkpoint_config(job.config, job.workdir, None, job.overridden)
    r = training.train_classifier(job.config, job.workdir, job.ctx.device)
    print(f"classifier at step {r.step}, cross-entropy {r.loss:.4f}, test accuracy {r.test_accuracy:.3f} at "
          f"t = 0.1 T; checkpoint {r.checkpoint}")


def inpaint(job: Job) -> None:
    a, c = job.a, job.config
    if not a.input:
        raise ValueError(f"--mode inpaint needs --input=FILE: {guidance.io.ACCEPTED}")
    method = guidance.INPAINTERS.canonical(_or(a.inpaint_method, c.inpainting.method))
    steps = _or(a.steps, c.inpainting.steps)
    run = job.load()
    print(training.evaluation.inpaint_file(
        run, training.guided_score_fn(run, *job.guidance()), a.input, a.mask, method=method, steps=steps,
        resample=_or(a.resample, c.inpainting.resample), batch_size=_or(a.batch_size, c.sampling.batch_size),
        seed=c.seed))


def fid(job: Job) -> None:
    a, c = job.a, job.config
    quality = training.quality
    cache, weights = quality.cache_dir(c), quality.inception_weights(c, a.inception_weights)
    if a.samples:
        if training.latest_checkpoint(job.workdir) is not None:     # the data the run's model was trained on
            training.use_checkpoint_config(c, job.workdir, a.checkpoint, job.overridden)
        report = quality.score_file(a.samples, c, cache=cache, weights=weights, device=job.ctx.device) \
            if job.ctx.is_main else None
    else:
        sampler, labels = job.sampler(), job.guidance()
        run = job.load(autocast=True)
        training.distill.check_sampler(run.workdir, run.sde, sampler)
        report = quality.score_run(run, training.guided_score_fn(run, *labels), sampler,
                                   _or(a.num_samples, c.metrics.num_samples), _or(a.batch_size, c.sampling.batch_size),
                                   c.seed, job.ctx, cache=cache, weights=weights,
                                   tag=training.sampling.guidance_tag(*labels))
    if report is not None:
        print(report.line())
        logging.info("wrote %s", report.write(job.workdir))


def import_model(job: Job) -> None:
    config = job.config if job.config_given else None
    path = training.importing.import_run(getattr(job.a, "from") or "", config, job.a.checkpoint, job.workdir)
    print(f"imported {job.a.checkpoint} as {path}; sample with --mode sample --workdir {job.workdir}")


def distill(job: Job) -> None:
    r = training.distill.distill(job.config, job.workdir, job.ctx, checkpoint=job.a.checkpoint)
    if job.ctx.is_main:
        print(r.line())


RUNNERS = {"train": train, "sample": sample, "likelihood": likelihood, "eval": evaluate, "calibrate": calibrate,
           "train_classifier": train_classifier, "inpaint": inpaint, "import": import_model, "fid": fid,
           "distill": distill}


def run(argv: list[str]) -> int:
    """Run one command line (argv[0] is the program name) in this process; returns the exit status."""
    fv = flags.FlagValues()
    define_flags(fv)
    if any(arg in ("-h", "--help", "-help", "--helpfull", "--helpshort") for arg in argv[1:]):
        print(usage())
        return 0
    try:
        argv, name, path = configs.registry.resolve_argument(argv)
        configs.registry.check_overrides(configs.load_config(path), argv)
        # ml_collections applies --config.a.b=value overrides while defining the flag, so a bad field fails here.
        config_flags.DEFINE_config_file("config", str(configs.registry.config_path("vpsde")), "Config name "
                                        "(configs/NAME.py) or path; override fields with --config.a.b=value.",
                                        flag_values=fv, lock_config=True, sys_argv=argv)
        rest = fv(argv)
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
        given = any(arg == "--config" or arg.startswith("--config=") for arg in argv)
        return RUNNERS[fv.mode](Job(fv, name, given)) or 0
    except (ValueError, FileNotFoundError, ImportError, training.CheckpointError, training.TrainingDivergedError,
            training.WorkdirBusyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        name = str(e) or "SIGINT"
        print(f"error: stopped by {name}; results of the batches in progress are lost", file=sys.stderr)
        return training.interrupts.EXIT_CODES.get(name, 130)
    finally:
        distributed.shutdown()


def entry() -> None:
    logging.use_absl_handler()
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    entry()
