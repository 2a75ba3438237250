"""Numerics of a run: autocast precision for the network, the fp16 gradient scaler, TF32 and torch.compile."""
from __future__ import annotations

import torch
from torch import nn
from scoresde.utils import UsageError

# Autocast dtypes by config.precision; float32 means no autocast.
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of config.precision on `device` (None: full float32)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; available: {', '.join(PRECISIONS)}")
    if precision == "float16" and device.type != "cuda":
        raise UsageError("precision='float16' needs CUDA (its gradient scaler is CUDA-only); "
                         "use precision='bfloat16' on CPU")
    return PRECISIONS[precision]


class Autocast(nn.Module):
    """network(x, ...) run under torch.autocast(dtype), its output cast back to x's dtype for the loss and solvers."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, device_type: str):
        super().__init__()
        self.module = module
        self.dtype = dtype
        self.device_type = device_type

    def forward(self, x, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.module(x, *args, **kwargs)
        return out.to(x.dtype)


def autocast_network(module: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """`module` itself in float32, else wrapped in Autocast."""
    dtype = autocast_dtype(precision, device)
    return module if dtype is None else Autocast(module, dtype, device.type)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Dynamic loss scaling, enabled for float16 only (bfloat16 has float32's exponent range)."""
    autocast_dtype(precision, device)
    return torch.amp.GradScaler(device.type, enabled=precision == "float16")


def set_tf32(allow: bool) -> None:
    """TF32 matmuls/convolutions on Ampere+ GPUs: faster, but 10-bit mantissas; off for reproducible runs."""
    torch.backends.cuda.matmul.allow_tf32 = bool(allow)
    torch.backends.cudnn.allow_tf32 = bool(allow)


def maybe_compile(module: nn.Module, compile_network: bool) -> nn.Module:
    """torch.compile(module) when asked; the uncompiled module keeps the parameters and the state_dict keys."""
    return torch.compile(module) if compile_network else module
