"""The reverse SDE through torchsde.sdeint: `sde_euler`, `sde_srk`, `sde_midpoint`.

torchsde integrates forwards in time, so it sees the reversed clock s = T - t:
 dx = -[f x - (1 + eta^2)/2 g^2 score](T - s) ds + eta g(T - s) dW_s.
The noise is additive (it does not depend on x), so Ito and Stratonovich agree and SRK has strong order 1.5. It is
declared "diagonal" to keep g a (batch, d) tensor instead of a (batch, d, d) matrix. sdeint is called once per grid
interval with one Brownian path for the whole run, so every time grid works and the solver state carries over.
"""
from __future__ import annotations

import torch
import torchsde

from .base import steps_of
from .random import SampleGenerators
from .steps import euler_maruyama_step
from .stochastic import StochasticSolver

Tensor = torch.Tensor


class _ReversedClockSDE(torch.nn.Module):
    """f(s, y), g(s, y) of the reverse process in s = T - t, on flattened float64 states (batch, d)."""

    noise_type = "diagonal"

    def __init__(self, solver: "TorchSDESolver", shape, dtype, sde_type: str):
        super().__init__()
        self.solver = solver
        self.shape, self.dtype = shape, dtype
        self.sde_type = sde_type
        # sdeint evaluates f(s_0, y_0) to check shapes before the method asks for it again, and SRK re-evaluates
        # f at earlier stages; results are remembered within one sdeint call (one grid interval).
        self.memo: dict = {}

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        key = (id(y), float(s))
        if key in self.memo:
            return self.memo[key][1]
        t = self.solver.sde.T - s
        x = y.reshape(self.shape).to(self.dtype)
        drift = self.solver.reverse.drift(x, t, score=self.solver.score_at(x, t))
        out = -drift.to(torch.float64).reshape(y.shape)
        self.memo[key] = (y, out)      # holding y keeps its id from being reused
        return out

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        return (self.solver.eta * self.solver.sde.g(self.solver.sde.T - s)).to(y).expand_as(y)


class PerSampleBrownian(torchsde.BaseBrownian):
    """One Brownian path per sample, stacked: sample i's noise comes from its own path (solvers.SampleGenerators)."""

    def __init__(self, paths: list):
        self.paths = paths

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        parts = [path(ta, tb, return_U=return_U, return_A=return_A) for path in self.paths]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(group) for group in zip(*parts))
        return torch.cat(parts)

    def __repr__(self):
        return f"PerSampleBrownian({len(self.paths)} paths)"

    @property
    def dtype(self):
        return self.paths[0].dtype

    @property
    def device(self):
        return self.paths[0].device

    @property
    def shape(self):
        return torch.Size((len(self.paths), *self.paths[0].shape[1:]))

    @property
    def levy_area_approximation(self):
        return self.paths[0].levy_area_approximation


class TorchSDESolver(StochasticSolver):
    """torchsde.sdeint(method=...) on the reverse SDE with the steps of the time grid."""

    method = "euler"
    sde_type = "ito"

    def integrate(self, x, ts, *, generator=None, denoise=True, progress=False):
        T = self.sde.T
        s = (T - ts).to(x.device)
        shape, dtype = x.shape, x.dtype
        y = x.to(torch.float64).reshape(shape[0], -1)
        levy = "space-time" if self.method == "srk" else "none"
        if isinstance(generator, SampleGenerators):
            bm = PerSampleBrownian([torchsde.BrownianInterval(
                t0=float(s[0]), t1=float(s[-1]), size=(1, y.shape[1]), dtype=torch.float64, device=x.device,
                entropy=entropy, levy_area_approximation=levy) for entropy in generator.seed_integers()])
        else:
            entropy = int(torch.randint(0, 2**62, (), generator=generator,
                                        device=generator.device if generator else None))
            bm = torchsde.BrownianInterval(t0=float(s[0]), t1=float(s[-1]), size=y.shape, dtype=torch.float64,
                                           device=x.device, entropy=entropy, levy_area_approximation=levy)
        process = _ReversedClockSDE(self, shape, dtype, self.sde_type)
        n = len(ts) - 1
        last = n - 1 if denoise else n
        extra = None
        for i in steps_of(ts[: last + 1], progress, f"sde_{self.method}"):
            # A dt a hair longer than the interval makes sdeint take exactly one step (it clips at the end time).
            dt = float(s[i + 1] - s[i]) * (1 + 1e-12)
            process.memo.clear()
            ys, extra = torchsde.sdeint(process, y, s[i:i + 2], bm=bm, method=self.method, dt=dt,
                                        extra=True, extra_solver_state=extra)
            y = ys[-1]
        x = y.reshape(shape).to(dtype)
        if denoise:
            x, _ = euler_maruyama_step(self.sde, self.eta, x, self.score_at(x, ts[n - 1]), ts[n - 1], ts[n])
        return x


class SDEEuler(TorchSDESolver):
    """torchsde Euler-Maruyama (strong order 1 for additive noise)."""
    method = "euler"


class SDESRK(TorchSDESolver):
    """torchsde stochastic Runge-Kutta (Rossler's SRI, strong order 1.5 for additive/diagonal noise)."""
    method = "srk"


class SDEMidpoint(TorchSDESolver):
    """torchsde midpoint (Stratonovich; the same SDE since the noise is additive)."""
    method = "midpoint"
    sde_type = "stratonovich"
