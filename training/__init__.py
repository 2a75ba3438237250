"""Training and trained runs: the loop, checkpoints, metrics, sample snapshots, and load_run for inference."""
from .builders import build_model, build_optimizer, build_sde, get_device
from .classifier import ClassifierResult, load_classifier, train_classifier
from .checkpoint import CheckpointError, find_checkpoint, latest_checkpoint, load_checkpoint
from .loop import Trainer, TrainingDivergedError, TrainResult, train
from .run import Run, config_of_checkpoint, load_run, use_checkpoint_config, use_trained_sections
from . import evaluation, interrupts, sampling
from .workdir import WorkdirBusyError, WorkdirLock, check_directory
from .sampling import Samples, draw_samples, guided_score_fn, sampler_from_config, write_samples

__all__ = [
    "Trainer", "TrainResult", "TrainingDivergedError", "train", "Run", "load_run", "config_of_checkpoint",
    "use_trained_sections", "use_checkpoint_config", "build_model", "build_optimizer", "build_sde", "get_device", "sampler_from_config",
    "Samples", "draw_samples", "guided_score_fn", "write_samples", "CheckpointError", "find_checkpoint",
    "latest_checkpoint", "load_checkpoint", "train_classifier", "load_classifier", "ClassifierResult", "WorkdirBusyError", "WorkdirLock", "check_directory",
]
