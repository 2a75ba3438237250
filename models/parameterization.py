"""What the network predicts, and the score it implies: x_t = alpha_bar x_0 + beta_bar eps, score = -E[eps | x_t]/beta_bar.

Every parameterisation maps the network output F to score(x_t, t); training, sampling and likelihood all go
through `ScoreFn`, so there is one place where the network output is interpreted.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from scoresde.sde_lib import SDE, batch_time, expand_as
from scoresde.utils import Registry

Tensor = torch.Tensor

# beta_bar(0) = 0 for VP-type SDEs; flooring it here keeps 1/beta_bar finite at t = 0. It only changes t below
# ~1e-11 for the VP SDE (beta_bar^2 ~ beta_min t), far below any training or sampling time.
MIN_BETA_BAR = 1e-6


class Coefficients:
    """alpha_bar, beta_bar (floored at MIN_BETA_BAR) and sigma = beta_bar/alpha_bar at t, in float64, shape (N,)."""

    def __init__(self, sde: SDE, t: Tensor):
        self.t = t
        self.alpha_bar = sde.alpha_bar(t)
        self.beta_bar = sde.beta_bar(t).clamp(min=MIN_BETA_BAR)
        self.sigma = self.beta_bar / self.alpha_bar


def _noise_t(c: Coefficients) -> Tensor:
    return c.t


def _noise_log_sigma(c: Coefficients) -> Tensor:
    return torch.log(c.sigma)


def _noise_edm(c: Coefficients) -> Tensor:
    return 0.25 * torch.log(c.sigma)


# What the network receives as noise_input: t (sinusoidal embeddings), log sigma = -log-SNR (Fourier features,
# NCSN++), or EDM's c_noise = log(sigma)/4.
NOISE_INPUTS = Registry("noise_input", {
    "t": _noise_t,
    "log_sigma": _noise_log_sigma,
    "edm": _noise_edm,
})


def _score_from_score(net, x, a, b, opts) -> Tensor:
    """score = F, or F / beta_bar with scale_by_sigma (NCSN++)."""
    out = net(x)
    return out / b if opts["scale_by_sigma"] else out


def _score_from_eps(net, x, a, b, opts) -> Tensor:
    """score = -eps_hat / beta_bar."""
    return -net(x) / b


def _score_from_x0(net, x, a, b, opts) -> Tensor:
    """score = -(x - alpha_bar x0_hat) / beta_bar^2."""
    return -(x - a * net(x)) / b**2


def _score_from_v(net, x, a, b, opts) -> Tensor:
    """v = alpha_bar eps - beta_bar x0, so eps_hat = (beta_bar x + alpha_bar v_hat)/(alpha_bar^2 + beta_bar^2), score = -eps_hat/beta_bar."""
    return -(b * x + a * net(x)) / ((a**2 + b**2) * b)


def _score_from_edm(net, x, a, b, opts) -> Tensor:
    """EDM preconditioning in x_t: D = c_skip x/alpha_bar + c_out F(c_in x/alpha_bar), score = (alpha_bar D - x)/beta_bar^2.

    With sigma = beta_bar/alpha_bar and s_d = sigma_data: c_skip = s_d^2/(sigma^2+s_d^2), c_out = sigma s_d/sqrt(sigma^2+s_d^2),
    c_in = 1/sqrt(sigma^2+s_d^2). Substituting gives score = -x/(beta_bar^2 + alpha_bar^2 s_d^2)
    + alpha_bar s_d F / (beta_bar sqrt(beta_bar^2 + alpha_bar^2 s_d^2)), which never forms 1 - c_skip by cancellation.
    """
    sd = opts["sigma_data"]
    r2 = b**2 + (a * sd) ** 2
    out = net(x / torch.sqrt(r2))
    return -x / r2 + a * sd * out / (b * torch.sqrt(r2))


PARAMETERIZATIONS = Registry("parameterization", {
    "score": _score_from_score,
    "eps": _score_from_eps,
    "x0": _score_from_x0,
    "v": _score_from_v,
    "edm": _score_from_edm,
})


def network_attr(model: nn.Module, name: str):
    """An attribute of the network itself, looking through wrappers (DataParallel/DDP/AveragedModel .module, torch.compile)."""
    while not hasattr(model, name):
        inner = [getattr(model, w) for w in ("module", "_orig_mod") if isinstance(getattr(model, w, None), nn.Module)]
        if not inner:
            return None
        model = inner[0]
    return getattr(model, name)


def default_noise_input(model: nn.Module, parameterization: str) -> str:
    """EDM's c_noise for the EDM parameterisation, log sigma for Fourier-feature networks, t otherwise."""
    if parameterization == "edm":
        return "edm"
    return "log_sigma" if network_attr(model, "embedding") == "fourier" else "t"


def as_labels(y, n: int, device) -> Tensor | None:
    """Class labels as a long tensor (N,): an int is broadcast, None stays None."""
    if y is None:
        return None
    y = torch.as_tensor(y, device=device)
    if y.ndim == 0:
        return y.long().expand(n)
    if y.shape != (n,):
        raise ValueError(f"class_labels must be an int or have shape ({n},) to match the batch; got shape {tuple(y.shape)}")
    return y.long()


class ScoreFn:
    """score_fn(x, t) = grad_x log p_t(x) implied by `model` under `parameterization` (the sde_lib convention).

    t may be float64 or x's dtype, scalar or shape (N,); coefficients are computed in float64 and cast to x's dtype.
    Classifier-free guidance combines `score` of a class and of the null label: guidance.ClassifierFreeGuidance.
    """

    def __init__(self, model: nn.Module, sde: SDE, parameterization: str = "eps", class_labels=None, *,
                 noise_input: str | None = None, sigma_data: float = 0.5, scale_by_sigma: bool = False):
        parameterization = PARAMETERIZATIONS.canonical(parameterization)
        self.to_score = PARAMETERIZATIONS[parameterization]
        noise_input = NOISE_INPUTS.canonical(default_noise_input(model, parameterization) if noise_input is None
                                             else noise_input)
        self.noise_fn = NOISE_INPUTS[noise_input]
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive (the data standard deviation, 0.5 for images in [-1, 1]), "
                             f"got {sigma_data}")
        self.model, self.sde, self.parameterization = model, sde, parameterization
        self.class_labels = class_labels
        self.noise_input = noise_input
        self.opts = {"sigma_data": float(sigma_data), "scale_by_sigma": bool(scale_by_sigma)}

    def __call__(self, x: Tensor, t) -> Tensor:
        return self.score(x, t, self.class_labels)

    def score(self, x: Tensor, t, y=None) -> Tensor:
        """The score at (x, t) for class labels y (an int, a tensor (N,), or None for the unconditional/null label)."""
        c = Coefficients(self.sde, batch_time(t, x))
        y = as_labels(y, x.shape[0], x.device)
        net = functools.partial(self.model, noise_input=self.noise_fn(c).to(x.dtype), y=y)
        return self.to_score(net, x, expand_as(c.alpha_bar, x), expand_as(c.beta_bar, x), self.opts)


def get_score_fn(model: nn.Module, sde: SDE, parameterization: str = "eps", class_labels=None, *,
                 noise_input: str | None = None, sigma_data: float = 0.5, scale_by_sigma: bool = False) -> ScoreFn:
    """score_fn(x, t) = grad_x log p_t(x) of a network under a parameterisation (see ScoreFn)."""
    return ScoreFn(model, sde, parameterization, class_labels, noise_input=noise_input, sigma_data=sigma_data,
                   scale_by_sigma=scale_by_sigma)
