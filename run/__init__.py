"""A run directory: factories from its config, checkpoints, the lock and config identity, load_run, the metrics
log, images, interrupts, precision, and sampling with the run's own grids and tables."""
from .builders import build_model, build_optimizer, build_sde, get_device
from .checkpoint import (CHECKPOINT_DIR, CheckpointError, checkpoint_dir, find_checkpoint, latest_checkpoint,
                         load_checkpoint)
from .interrupts import EXIT_CODES, StopRequested
from .load import Run, config_of_checkpoint, load_run, use_checkpoint_config, use_trained_sections
from .log import MetricsLogger
from .sampling import (MissingTable, Samples, analytic_table_path, calibrated_grid_path, draw_samples,
                       reference_points, report_calibrated_grid, sampler_from_config)
from .workdir import WorkdirBusyError, WorkdirLock, check_directory, check_replaceable, claiming_names

__all__ = [
    "Run", "load_run", "config_of_checkpoint", "use_trained_sections", "use_checkpoint_config", "build_model",
    "build_optimizer", "build_sde", "get_device", "CHECKPOINT_DIR", "checkpoint_dir", "CheckpointError",
    "find_checkpoint", "latest_checkpoint", "load_checkpoint", "EXIT_CODES", "StopRequested", "MetricsLogger",
    "Samples", "draw_samples", "reference_points", "sampler_from_config", "MissingTable", "calibrated_grid_path",
    "analytic_table_path", "report_calibrated_grid", "WorkdirBusyError", "WorkdirLock", "check_directory",
    "check_replaceable", "claiming_names",
]
