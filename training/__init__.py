"""Training: the loop, checkpoints, metrics and sample snapshots."""
from .builders import (build_model, build_optimizer, build_sde, calibrated_grid_path, get_device,
                       sampler_arguments)
from .checkpoint import CheckpointError, find_checkpoint, latest_checkpoint, load_checkpoint
from .loop import Trainer, TrainingDivergedError, TrainResult, config_of_checkpoint, train

__all__ = [
    "Trainer", "TrainResult", "TrainingDivergedError", "train", "config_of_checkpoint", "build_model",
    "build_optimizer", "build_sde", "get_device", "sampler_arguments", "calibrated_grid_path", "CheckpointError",
    "find_checkpoint", "latest_checkpoint", "load_checkpoint",
]
