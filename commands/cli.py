"""The command line: flags, parsing and dispatch to the modes of commands.modes; see MODES."""
from __future__ import annotations

import sys

from absl import flags, logging
from ml_collections import config_flags

from scoresde import configs
from scoresde import solvers
from scoresde import run as runs
from scoresde.run.sampling import MissingTable
from scoresde.training import TrainingDivergedError, distributed

from .modes import RUNNERS, Job
from scoresde.utils import UsageError

MODES = {
    "train": "train, or resume, the configured model in --workdir",
    "sample": "draw --num_samples with --solver from the run's EMA network; writes samples/*.npz and .png",
    "likelihood": "bits/dim of the test split through the probability-flow ODE; writes likelihood.json",
    "eval": "test denoising loss of the EMA network",
    "calibrate": "fit --solver's grid at --steps to the network; writes grids/<solver>_<steps>.json",
    "train_classifier": "train the noise-conditional classifier for classifier guidance",
    "inpaint": "fill the missing entries of --input (mask --mask) with the run's model",
    "import": "a pretrained model (--from score_sde --config NAME | --from diffusers) as a run in --workdir",
    "fid": "sample quality (FID/KID/IS, FD-digits2 with precision/recall, energy distance) of --num_samples or of "
           "--samples FILE; writes metrics/*.json",
    "distill": "distil the run's EMA network into a few-step student by config.distill.method (progressive: "
               "halving its DDIM steps each round down to config.distill.target_steps; reflow: rectified flows on "
               "the teacher's ODE pairs, config.distill.reflow; consistency: one consistency model, "
               "config.distill.consistency); each student is a run in <workdir>/distill/<method>/",
}

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
    ("from", str, "import: score_sde (a checkpoint_*.pth of score_sde_pytorch) | diffusers "
                  "(a save_pretrained folder)."),
    ("samples", str, "fid: score this .npz (key 'samples', data space, as --mode sample writes) instead of sampling."),
    ("inception_weights", str, "fid: local Inception weights file (default config.metrics.inception_weights)."),
    ("overwrite", bool, "calibrate: replace an existing calibrated grid or Analytic-DPM table (kept otherwise)."),
]
DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
          bool: flags.DEFINE_boolean}


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
        rest = parse_flags(fv, argv)
    except (UsageError, flags.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    logging.set_verbosity(logging.INFO)
    try:
        if len(rest) > 1:
            raise UsageError(f"unexpected arguments {' '.join(rest[1:])}; flags are written --name=value")
        job = Job(fv, name, config_given=any(arg == "--config" or arg.startswith("--config=") for arg in argv))
        with job.lock(fv.mode):
            return RUNNERS[fv.mode](job) or 0
    except (UsageError, runs.CheckpointError, TrainingDivergedError, runs.WorkdirBusyError) as e:
        print(f"error: {e}{calibrate_hint(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        name = str(e) or "SIGINT"
        print(f"error: stopped by {name}; results of the batches in progress are lost", file=sys.stderr)
        return runs.EXIT_CODES.get(name, 130)
    finally:
        distributed.shutdown()


def parse_flags(fv: flags.FlagValues, argv: list[str]) -> list[str]:
    """Define --config and parse argv into fv; returns the arguments left over. ml_collections applies the
    --config.a.b=value overrides while defining the flag and reports a bad field or value as a KeyError,
    AttributeError, TypeError or ValueError of its own, raised here for the user's text alone: those become a
    UsageError."""
    try:
        config_flags.DEFINE_config_file("config", str(configs.registry.config_path("vpsde")), "Config name "
                                        "(configs/NAME.py) or path; override fields with --config.a.b=value.",
                                        flag_values=fv, lock_config=True, sys_argv=argv)
        return fv(argv)
    except (KeyError, AttributeError) as e:
        raise UsageError(f"unknown config field {str(e).strip(chr(34) + chr(39))!r} in a --config.* override; see "
                         "configs/default.py for the fields") from None
    except (TypeError, ValueError) as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(str(e)) from None


def calibrate_hint(e: Exception) -> str:
    """The command that makes a run's missing calibration table, for errors that say one is missing."""
    if not isinstance(e, MissingTable):
        return ""
    flags_ = [f"--workdir {e.workdir}", f"--solver {e.solver}"]
    flags_ += [f"--steps {e.steps}"] if e.steps is not None else []
    flags_ += [f"--solver_options {e.options}"] if e.options else []
    return f"; make it with `python main.py --mode calibrate {' '.join(flags_)}`"


def entry() -> None:
    logging.use_absl_handler()
    sys.exit(run(sys.argv))

