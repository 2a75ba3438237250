"""Checks of a whole config before anything runs or is written: types, ranges and relations between fields."""
from __future__ import annotations

import math
from scoresde.utils import UsageError

POSITIVE_INTS = (
    "training.batch_size", "training.n_iters", "training.snapshot_freq", "training.log_freq", "training.eval_freq",
    "sampling.steps", "sampling.num_samples", "sampling.batch_size", "sampling.calibration_pilot",
    "sampling.calibration_iterations", "eval.batch_size", "eval.n_probes", "eval.dequant_repeats",
    "classifier.batch_size", "classifier.n_iters", "classifier.log_freq", "classifier.snapshot_freq",
    "inpainting.steps", "inpainting.resample", "model.nf", "model.num_res_blocks", "model.mlp_width",
    "model.mlp_depth", "data.num_samples", "metrics.num_samples",
)
# key: (smallest value, why)
MINIMUM_INTS = {"metrics.num_samples_training": (10, "the statistics need a few samples")}
NON_NEGATIVE_INTS = ("seed", "training.keep_checkpoints", "training.snapshot_samples", "optim.warmup",
                     "eval.num_samples", "training.fid_freq", "num_threads")
POSITIVE_FLOATS = ("optim.lr", "optim.eps", "eval.rtol", "eval.atol", "sampling.eps", "training.eps", "eval.eps",
                   "sde.beta_min", "sde.beta_max", "sde.sigma_min", "sde.sigma_max", "model.fourier_scale",
                   "model.sigma_data", "training.logit_std", "sampling.shift")
# key: (low, high, low included, high included)
INTERVALS = {
    "model.ema_rate": (0.0, 1.0, True, False), "model.dropout": (0.0, 1.0, True, False),
    "training.p_uncond": (0.0, 1.0, True, True), "data.test_fraction": (0.0, 1.0, False, False),
    "optim.beta1": (0.0, 1.0, True, False), "sde.s": (0.0, 1.0, False, False),
}


def _get(config, key):
    node = config
    for part in key.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def problems(config) -> list[str]:
    """What is wrong with `config`, one message per field ('training.log_freq=0: must be a positive integer')."""
    found = []
    for key in POSITIVE_INTS:
        v = _get(config, key)
        if v is not None and not (_is_int(v) and v >= 1):
            found.append(f"{key}={v!r}: must be a positive integer")
    for key, (low, why) in MINIMUM_INTS.items():
        v = _get(config, key)
        if v is not None and not (_is_int(v) and v >= low):
            found.append(f"{key}={v!r}: must be an integer >= {low} ({why})")
    for key in NON_NEGATIVE_INTS:
        v = _get(config, key)
        if v is not None and not (_is_int(v) and v >= 0):
            found.append(f"{key}={v!r}: must be an integer >= 0")
    for key in POSITIVE_FLOATS:
        v = _get(config, key)
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  and v > 0):
            found.append(f"{key}={v!r}: must be a positive number")
    for key, (low, high, closed_low, closed_high) in INTERVALS.items():
        v = _get(config, key)
        if v is None or not isinstance(v, (int, float)):
            continue
        if not ((v >= low if closed_low else v > low) and (v <= high if closed_high else v < high)):
            found.append(f"{key}={v!r}: must be in {'[' if closed_low else '('}{low:g}, {high:g}"
                         f"{']' if closed_high else ')'}")
    for small, large in (("sde.beta_min", "sde.beta_max"), ("sde.sigma_min", "sde.sigma_max")):
        a, b = _get(config, small), _get(config, large)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not a < b:
            found.append(f"{small}={a!r} must be below {large}={b!r}")
    return found


def check_config(config) -> None:
    """A ValueError naming the first problem (and how many more there are) if the config is not usable."""
    found = problems(config)
    if found:
        more = f" (and {len(found) - 1} more: {'; '.join(found[1:3])})" if len(found) > 1 else ""
        raise UsageError(f"config: {found[0]}{more}")
