"""Exponential moving average of network weights with torch.optim.swa_utils.AveragedModel."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from scoresde.utils import UsageError


class EMAAverage:
    """multi_avg_fn for AveragedModel: ema <- d ema + (1 - d) w, d = min(decay, (1 + n)/(10 + n)) with warm-up,
    n = models averaged so far.

    The warm-up (Song et al.'s TF ExponentialMovingAverage with num_updates) lets the average forget the random
    initialisation within the first few hundred steps instead of ~1/(1 - decay) steps.
    """

    def __init__(self, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise UsageError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)

    def decay_at(self, n: int) -> float:
        """The decay used for the update that follows n averaged models."""
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def __call__(self, ema_params: list[torch.Tensor], model_params: list[torch.Tensor], num_averaged) -> None:
        d = self.decay_at(int(num_averaged))
        # AveragedModel groups tensors by dtype; integer buffers (counters) are copied, not averaged.
        if ema_params[0].is_floating_point() or ema_params[0].is_complex():
            torch._foreach_lerp_(ema_params, model_params, 1.0 - d)
        else:
            torch._foreach_copy_(ema_params, model_params)


def create_ema(model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> AveragedModel:
    """AveragedModel holding the EMA of `model` (parameters and buffers); call ema.update_parameters(model) after
    each step.

    The first update copies the weights; ema.module is the averaged network.
    """
    return AveragedModel(model, multi_avg_fn=EMAAverage(decay, warmup), use_buffers=True)
