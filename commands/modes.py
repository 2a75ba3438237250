"""The command line's modes as library functions, each taking a Job: what one `python main.py ...` asks for.

main.py parses the flags and dispatches here (as score_sde_pytorch's main.py does to its run_lib); the work itself is
done by the library calls each mode makes (training.train, load_run, draw_samples, evaluate_likelihood, ...).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from scoresde import configs
from scoresde import guidance
from scoresde import solvers
from scoresde import run as runs
from scoresde import training
from scoresde.run import interrupts
from scoresde.run import quality as scoring
from scoresde.training import distill as distillation
from scoresde.training import distributed
from scoresde.utils import UsageError

from . import evaluation, importing, quality, sampling

SOLVER_FLAGS = ("snr", "corrector_steps", "eta", "rtol", "atol")


def _or(value, default):
    return default if value is None else value


# Flags checked before anything is loaded or written: name -> (smallest value, what the value must be).
FLAG_RANGES = {
    "seed": (0, "an integer >= 0"), "batch_size": (1, "a positive integer"), "steps": (1, "a positive integer"),
    "corrector_steps": (0, "an integer >= 0"), "dequant_repeats": (1, "a positive integer"),
    "resample": (1, "a positive integer"), "rtol": (0, "a positive number"), "atol": (0, "a positive number"),
    "accuracy": (0, "a positive number"),
}
POSITIVE_FLOATS = ("rtol", "atol", "accuracy")


def check_flags(fv: flags.FlagValues) -> None:
    """A UsageError naming the first flag whose value is out of its range (FLAG_RANGES; --num_samples: 0 means
    the whole test split for likelihood, and is refused elsewhere)."""
    ranges = dict(FLAG_RANGES, num_samples=(0, "an integer >= 0 (0: the whole test split)")
                  if fv.mode == "likelihood" else (1, "a positive integer"))
    for name, (low, rule) in ranges.items():
        value = getattr(fv, name)
        if value is not None and not (value > low if name in POSITIVE_FLOATS else value >= low):
            raise UsageError(f"--{name}={value} must be {rule}; give another value, or leave the flag out for "
                             "the config's")


class Job:
    """One command line: its flags, config (with --seed/--device applied), workdir and distributed context."""

    def __init__(self, fv: flags.FlagValues, name: str, config_given: bool = True):
        check_flags(fv)
        self.a, self.config, self.config_given = fv, fv.config, config_given
        with self.config.unlocked():
            self.config.seed, self.config.device = _or(fv.seed, self.config.seed), _or(fv.device, self.config.device)
        if fv.mode != "train":      # a training run's Trainer checks its config, for library callers too
            configs.check_config(self.config)       # before anything is created on disk
        self.overridden = config_flags.get_override_values(fv["config"])
        self.workdir = Path(fv.workdir) if fv.workdir else self._run_of_checkpoint(Path("runs") / name)
        self.ctx = distributed.setup(self.config)

    def _run_of_checkpoint(self, default: Path) -> Path:
        """Without --workdir, the run directory a --checkpoint path belongs to (<run>/checkpoints/*.pt), so that
        what is made from it (samples, likelihoods, grids) is filed with its run and not with the default one's."""
        given = self.a.checkpoint
        if self.a.mode not in CHECKPOINT_MODES or not given or str(given).isdigit():
            return default
        path = Path(given)
        if not path.is_file() or path.parent.resolve() == runs.checkpoint_dir(default).resolve():
            return default      # a missing checkpoint is reported where it is looked up
        if path.parent.name != runs.CHECKPOINT_DIR:
            raise UsageError(f"checkpoint {path} is not in a run directory (<run>/{runs.CHECKPOINT_DIR}/); pass "
                             "--workdir DIR for what this command writes")
        logging.warning("checkpoint %s belongs to the run %s: its outputs go there, not to %s (--workdir chooses)",
                        path, path.parent.parent, default)
        return path.parent.parent

    def lock(self, mode: str):
        """The run directory's lock for `mode` (LOCKS), on the main process; none where the directory does not
        exist yet and the mode does not create it (it will stop with a clear error first)."""
        if mode not in LOCKS or not self.ctx.is_main or (mode != "import" and not self.workdir.is_dir()):
            return contextlib.nullcontext()
        return runs.WorkdirLock(runs.check_directory(self.workdir), LOCKS[mode])

    def load(self, autocast: bool = False) -> runs.Run:
        return runs.load_run(self.workdir, self.a.checkpoint, self.ctx.device, config=self.config,
                                 overridden=self.overridden, autocast=autocast)

    def sampler(self) -> solvers.Sampler:
        options = solvers.parse_options(self.a.solver_options or "")
        options.update({k: getattr(self.a, k) for k in SOLVER_FLAGS if getattr(self.a, k) is not None})
        return runs.sampler_from_config(self.config, self.workdir, solver=self.a.solver, steps=self.a.steps,
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
    distillation.check_sampler(run.workdir, run.sde, sampler)
    runs.report_calibrated_grid(sampler, run.workdir, run.step)
    with interrupts.StopRequested() as stop:
        done = sampling.sample_to_files(
            run, sampling.guided_score_fn(run, *labels), sampler, _or(job.a.num_samples, s.num_samples),
            _or(job.a.batch_size, s.batch_size), job.config.seed, job.ctx, sampling.guidance_tag(*labels),
            stop=stop)
    if done is not None:
        print(done.line())
    return stop.exit_code


def _keep(path: Path, overwrite: bool, what: str) -> None:
    """Refuse, before any work, to replace the `what` at `path` unless --overwrite: a calibration may have taken
    minutes and fit better than the one about to replace it."""
    if path.exists() and not overwrite:
        fitted = ""
        if path.suffix == ".json" and what == "grid":
            record = solvers.grid_record(path)
            step = record.get("step")
            fitted = (f" (fitted on checkpoint step {step if step is not None else 'not recorded'}, pilot RMSE "
                      f"{record.get('error', float('nan')):.3g})")
        raise UsageError(f"{path} already holds a calibrated {what}{fitted}; pass --overwrite to replace it, or move "
                         "it away to keep it (nothing was computed)")
    runs.check_replaceable(path)


def calibrate(job: Job) -> None:
    distillation.check_score(job.workdir, "calibration")
    given = {**solvers.parse_options(job.config.sampling.options), **solvers.parse_options(job.a.solver_options)}
    if str(given.get("variance", "")).lower() == "analytic":       # Analytic-DPM's table, not a grid
        _keep(runs.analytic_table_path(job.workdir), job.a.overwrite, "Analytic-DPM table")
        run = job.load()
        if job.ctx.is_main:
            print(evaluation.calibrate_variance(run, seed=job.config.seed))
        return
    sampler, s = job.sampler(), job.config.sampling
    solvers.check_calibratable(sampler.solver)     # before the checkpoint is loaded
    _keep(runs.calibrated_grid_path(job.workdir, sampler.solver, sampler.steps), job.a.overwrite, "grid")
    run = job.load(autocast=True)       # in the precision the samples will be drawn in
    if job.ctx.is_main:
        print(evaluation.calibrate(run, sampler, pilot=s.calibration_pilot,
                                            iterations=s.calibration_iterations, seed=job.config.seed))


def likelihood(job: Job) -> int:
    a = job.a
    options = dict(divergence=a.divergence, repeats=a.dequant_repeats, rtol=a.rtol, atol=a.atol, accuracy=a.accuracy)
    evaluation.check_likelihood_options(job.config.eval, _or(a.bound, "ode"), **options)
    run = job.load()
    distillation.check_score(run.workdir, "a likelihood")
    runs.check_directory(run.workdir)       # before any work: a result is never computed and then lost
    with interrupts.StopRequested() as stop:
        r = evaluation.evaluate_likelihood(
            run, job.ctx, num_samples=_or(a.num_samples, job.config.eval.num_samples), batch_size=a.batch_size,
            bound=_or(a.bound, "ode"), stop=stop, **options)
    if r is not None:
        print(r.line())      # printed first: the result is never computed and then lost
        logging.info("wrote %s", evaluation.write_likelihood(run, r))
    elif job.ctx.is_main:       # the signal came before the first batch
        print(f"stopped by {stop.signal} before the first test batch; nothing written", file=sys.stderr)
    return stop.exit_code


def evaluate(job: Job) -> None:
    if not job.ctx.is_main:     # one process evaluates and writes; torchrun's others have nothing to do
        return
    path, state = runs.use_checkpoint_config(job.config, job.workdir, job.a.checkpoint, job.overridden)
    trainer = training.Trainer(job.config, job.workdir, job.ctx)
    trainer.load_state_dict(state, path)
    print(f"test loss (EMA, step {trainer.step}): {trainer.test_loss(max_batches=10**9):.5f}")


def train_classifier(job: Job) -> None:
    if not job.ctx.is_main:     # one process evaluates and writes; torchrun's others have nothing to do
        return
    if runs.latest_checkpoint(job.workdir) is not None:     # it guides this run's model: same noise and data
        runs.use_checkpoint_config(job.config, job.workdir, None, job.overridden)
    r = training.train_classifier(job.config, job.workdir, job.ctx.device)
    print(f"classifier at step {r.step}, cross-entropy {r.loss:.4f}, test accuracy {r.test_accuracy:.3f} at "
          f"t = 0.1 T; checkpoint {r.checkpoint}")


def inpaint(job: Job) -> None:
    if not job.ctx.is_main:     # one process evaluates and writes; torchrun's others have nothing to do
        return
    a, c = job.a, job.config
    if not a.input:
        raise UsageError(f"--mode inpaint needs --input=FILE: {guidance.io.ACCEPTED}")
    distillation.check_score(job.workdir, "inpainting")
    method = guidance.INPAINTERS.canonical(_or(a.inpaint_method, c.inpainting.method))
    steps = _or(a.steps, c.inpainting.steps)
    run = job.load()
    print(evaluation.inpaint_file(
        run, sampling.guided_score_fn(run, *job.guidance()), a.input, a.mask, method=method, steps=steps,
        resample=_or(a.resample, c.inpainting.resample), batch_size=_or(a.batch_size, c.sampling.batch_size),
        seed=c.seed))


def fid(job: Job) -> None:
    a, c = job.a, job.config
    cache, weights = scoring.cache_dir(c), scoring.inception_weights(c, a.inception_weights)
    if a.samples:
        if runs.latest_checkpoint(job.workdir) is not None:     # the data the run's model was trained on
            runs.use_checkpoint_config(c, job.workdir, a.checkpoint, job.overridden)
        report = quality.score_file(a.samples, c, cache=cache, weights=weights, device=job.ctx.device) \
            if job.ctx.is_main else None
    else:
        sampler, labels = job.sampler(), job.guidance()
        run = job.load(autocast=True)
        distillation.check_sampler(run.workdir, run.sde, sampler)
        runs.report_calibrated_grid(sampler, run.workdir, run.step)
        report = quality.score_run(run, sampling.guided_score_fn(run, *labels), sampler,
                                   _or(a.num_samples, c.metrics.num_samples), _or(a.batch_size, c.sampling.batch_size),
                                   c.seed, job.ctx, cache=cache, weights=weights,
                                   tag=sampling.guidance_tag(*labels))
    if report is not None:
        print(report.line())
        logging.info("wrote %s", report.write(job.workdir))


def import_model(job: Job) -> None:
    if not job.ctx.is_main:     # one process evaluates and writes; torchrun's others have nothing to do
        return
    config = job.config if job.config_given else None
    path = importing.import_run(getattr(job.a, "from") or "", config, job.a.checkpoint, job.workdir)
    print(f"imported {job.a.checkpoint} as {path}; sample with --mode sample --workdir {job.workdir}")


def distill(job: Job) -> None:
    r = distillation.distill(job.config, job.workdir, job.ctx, checkpoint=job.a.checkpoint)
    if job.ctx.is_main:
        print(r.line())


# The modes whose --checkpoint is a checkpoint of a run (import's is the file or folder to import).
CHECKPOINT_MODES = ("sample", "likelihood", "eval", "calibrate", "inpaint", "fid", "distill")
RUNNERS = {"train": train, "sample": sample, "likelihood": likelihood, "eval": evaluate, "calibrate": calibrate,
           "train_classifier": train_classifier, "inpaint": inpaint, "import": import_model, "fid": fid,
           "distill": distill}
# The lock each mode that replaces shared files holds on its run directory while it works (one writer per kind of
# output); training takes its own inside Trainer.run. sample, likelihood, inpaint and fid only add files under
# fresh names (claimed under run.workdir.claiming_names), so any number of them run side by side; eval writes
# nothing.
LOCKS = {"calibrate": "calibrate", "train_classifier": "classifier", "import": "train", "distill": "distill"}
