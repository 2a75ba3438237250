"""Inpainting / imputation with an unconditional score: sample the missing entries given the observed ones.

Both methods run the reverse SDE with Euler-Maruyama on a uniform grid T = t_0 > ... > t_n = eps and, after
every step to t_{i+1}, overwrite the observed entries by a fresh forward-noised copy alpha_bar x_obs + beta_bar z
(the replacement method of Song et al. 2021, Appendix I). RePaint (Lugmayr et al. 2022) then re-noises the merged
x back to t_i with the forward transition p(x_{t_i} | x_{t_{i+1}}) and repeats the step, `resample` times in all,
which lets the missing entries harmonise with the observed ones and removes most of the replacement bias.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from scoresde import solvers
from scoresde.sde_lib import SDE
from scoresde.utils import Registry, UsageError
from scoresde.solvers import CountingScore, SampleResult
from scoresde.solvers.random import fresh_generator

Tensor = torch.Tensor

# Each method's number of reverse steps per grid interval; None takes inpaint's `resample`. Song et al.'s
# replacement method is RePaint with a single pass.
INPAINTERS: Registry[int | None] = Registry("inpainting method", {
    "replacement": 1,
    "repaint": None,
})


def _noise(x: Tensor, generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def check_observation(x_obs: Tensor, mask: Tensor) -> Tensor:
    """The mask as a float tensor shaped like x_obs (1 = observed, 0 = to sample); ValueError if it does not fit."""
    if not isinstance(x_obs, Tensor) or not isinstance(mask, Tensor):
        raise TypeError("x_obs and mask must be torch tensors")
    try:
        mask = torch.broadcast_to(mask.to(x_obs.device), x_obs.shape)
    except RuntimeError:
        raise UsageError(f"mask of shape {tuple(mask.shape)} does not broadcast to the observations "
                         f"{tuple(x_obs.shape)}; give one mask per item or one for all (e.g. (C, H, W))") from None
    if not ((mask == 0) | (mask == 1)).all():
        raise UsageError("mask entries must be 0 (missing: to sample) or 1 (observed)")
    if not torch.isfinite(x_obs[mask.bool()]).all():
        raise UsageError("observed entries (mask = 1) must be finite; mark NaN entries as missing in the mask")
    return mask.to(x_obs.dtype)


def inpaint(sde: SDE, score_fn, x_obs: Tensor, mask: Tensor, *, method: str = "repaint", steps: int = 100,
            resample: int = 10, eps: float = 1e-3, generator: torch.Generator | None = None,
            progress: bool = False) -> SampleResult:
    """Sample x with x[mask = 1] = x_obs[mask = 1] and the rest from p(x_missing | x_observed); returns (x, nfe).

    method: "replacement" (one step per grid interval) or "repaint" (`resample` steps per interval, NFE
    steps * resample). x_obs: (N, ...) in model space (its missing entries are ignored, NaN allowed there);
    mask: 0/1, shaped like x_obs or broadcastable to it.
    """
    passes = INPAINTERS[method]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise UsageError(f"resample must be an integer >= 1 (1: no resampling), got {resample!r}")
    if not 0.0 < eps < sde.T:
        raise UsageError(f"eps must be in (0, T) = (0, {sde.T}), got eps={eps}")
    mask = check_observation(x_obs, mask)
    x_obs = torch.where(mask.bool(), x_obs, torch.zeros_like(x_obs))
    if generator is None:
        generator = fresh_generator(x_obs.device)
    ts = torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)
    painter = _Inpainter(sde, score_fn, x_obs, mask, generator, eps)
    with torch.no_grad():
        x = painter.run(ts, resample if passes is None else passes, progress)
    return SampleResult(x, painter.nfe)


class _Inpainter:
    """The shared loop: reverse Euler-Maruyama steps, each followed by replacing the observed entries."""

    def __init__(self, sde: SDE, score_fn, x_obs: Tensor, mask: Tensor, generator, eps: float):
        self.sde = sde
        # The sampler's own step and score wrapper, so that NFE counting and the t-range and NaN checks are the
        # same as in solvers.sample.
        self.solver = solvers.get_solver("euler_maruyama")(sde, CountingScore(score_fn, eps, sde.T), eta=1.0)
        self.x_obs, self.mask, self.generator = x_obs, mask, generator

    @property
    def nfe(self) -> int:
        return self.solver.score.nfe

    def step(self, x: Tensor, ts: Tensor, last: bool) -> Tensor:
        """One Euler-Maruyama step of the reverse SDE from ts[0] to ts[1] < ts[0] (the last returns its mean)."""
        return self.solver.integrate(x, ts, generator=self.generator, denoise=last)

    def replace(self, x: Tensor, s: Tensor, last: bool) -> Tensor:
        """Observed entries <- alpha_bar(s) x_obs + beta_bar(s) z (x_obs itself after the last step)."""
        if last:
            known = self.x_obs
        else:
            known = self.sde.perturb(self.x_obs, _noise(x, self.generator), s)
        return self.mask * known + (1.0 - self.mask) * x

    def renoise(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """A draw of p(x_t | x_s) = N(a x_s, v I) for s < t (sde.transition): back up one step."""
        a, v = self.sde.transition(s, t)
        return a.to(x.dtype) * x + v.clamp(min=0).sqrt().to(x.dtype) * _noise(x, self.generator)

    def run(self, ts: Tensor, resample: int, progress: bool) -> Tensor:
        x = self.sde.prior_sampling(self.x_obs.shape, generator=self.generator, device=self.x_obs.device,
                                    dtype=self.x_obs.dtype)
        x = self.replace(x, ts[0], last=False)
        for i in tqdm(range(len(ts) - 1), desc="inpainting", leave=False, disable=not progress):
            last = i == len(ts) - 2
            for r in range(1 if last else resample):
                if r > 0:
                    x = self.renoise(x, ts[i + 1], ts[i])
                x = self.replace(self.step(x, ts[i:i + 2], last), ts[i + 1], last)
        return x
