"""What the network predicts, and the score it implies: x_t = alpha_bar x_0 + beta_bar eps,
score = -E[eps | x_t]/beta_bar.

The network predicts eps, x0, v = alpha_bar eps - beta_bar x0, the score, EDM's F, or the path velocity
u = alpha_bar' x0 + beta_bar' eps of flow matching ("flow"; u = eps - x0 for rectified flow).

A `Precond` (EDM's preconditioning) says what the network is fed and maps its output F to score(x_t, t); training,
sampling and likelihood all go through it, so there is one place where the network output is interpreted.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import nn

from scoresde.sde_lib import SDE, batch_time, expand_as
from scoresde.utils import Registry, UsageError

Tensor = torch.Tensor

# beta_bar(0) = 0 for VP-type SDEs; flooring it here keeps 1/beta_bar finite at t = 0. It only changes t below
# ~1e-11 for the VP SDE (beta_bar^2 ~ beta_min t), far below any training or sampling time.
MIN_BETA_BAR = 1e-6


class Coefficients:
    """alpha_bar, beta_bar (floored at MIN_BETA_BAR) and sigma = beta_bar/alpha_bar at t, in float64, shape (N,);
    the derivatives alpha_bar', beta_bar' are computed on first use (only the flow parameterisation needs them)."""

    def __init__(self, sde: SDE, t: Tensor):
        self.sde, self.t = sde, t
        self.alpha_bar = sde.alpha_bar(t)
        self.beta_bar = sde.beta_bar(t).clamp(min=MIN_BETA_BAR)
        self.sigma = self.beta_bar / self.alpha_bar

    @functools.cached_property
    def rates(self) -> tuple[Tensor, Tensor]:
        """(alpha_bar', beta_bar') at t (SDE.velocity_coefficients)."""
        return self.sde.velocity_coefficients(self.t)

    @property
    def d_alpha_bar(self) -> Tensor:
        return self.rates[0]

    @property
    def d_beta_bar(self) -> Tensor:
        return self.rates[1]

    @property
    def noise_rate(self) -> Tensor:
        """alpha_bar beta_bar' - alpha_bar' beta_bar = alpha_bar^2 d sigma/dt, positive wherever noise is added."""
        return self.alpha_bar * self.d_beta_bar - self.d_alpha_bar * self.beta_bar


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


def _ab(c: Coefficients, x: Tensor) -> tuple[Tensor, Tensor]:
    return expand_as(c.alpha_bar, x), expand_as(c.beta_bar, x)


def _score_from_score(net, x, c, sigma_data) -> Tensor:
    """score = F (a network that scales its own output, as NCSN++'s scale_by_sigma, does so inside)."""
    return net(x)


def _score_from_eps(net, x, c, sigma_data) -> Tensor:
    """score = -eps_hat / beta_bar."""
    return -net(x) / expand_as(c.beta_bar, x)


def _score_from_x0(net, x, c, sigma_data) -> Tensor:
    """score = -(x - alpha_bar x0_hat) / beta_bar^2."""
    a, b = _ab(c, x)
    return -(x - a * net(x)) / b**2


def _score_from_v(net, x, c, sigma_data) -> Tensor:
    """v = alpha_bar eps - beta_bar x0, so eps_hat = (beta_bar x + alpha_bar v_hat)/(alpha_bar^2 + beta_bar^2),
    score = -eps_hat/beta_bar."""
    a, b = _ab(c, x)
    return -(b * x + a * net(x)) / ((a**2 + b**2) * b)


def _score_from_flow(net, x, c, sigma_data) -> Tensor:
    """u = alpha_bar' x0 + beta_bar' eps and x = alpha_bar x0 + beta_bar eps give
    eps_hat = (alpha_bar u_hat - alpha_bar' x)/(alpha_bar beta_bar' - alpha_bar' beta_bar), i.e.
    (u_hat - f x)/(beta_bar' - f beta_bar); score = -eps_hat/beta_bar.

    The form multiplied through by alpha_bar stays finite at alpha_bar -> 0, where f = alpha_bar'/alpha_bar is not:
    for rectified flow the denominator is exactly 1 and eps_hat = (1 - t) u_hat + x.
    """
    a, b = _ab(c, x)
    da, rate = expand_as(c.d_alpha_bar, x), expand_as(c.noise_rate, x)
    return -(a * net(x) - da * x) / (rate * b)


def _score_from_edm(net, x, c, sigma_data) -> Tensor:
    """EDM preconditioning in x_t: D = c_skip x/alpha_bar + c_out F(c_in x/alpha_bar),
    score = (alpha_bar D - x)/beta_bar^2.

    With sigma = beta_bar/alpha_bar and s_d = sigma_data: c_skip = s_d^2/(sigma^2+s_d^2),
    c_out = sigma s_d/sqrt(sigma^2+s_d^2), c_in = 1/sqrt(sigma^2+s_d^2). Substituting gives
    score = -x/(beta_bar^2 + alpha_bar^2 s_d^2) + alpha_bar s_d F / (beta_bar sqrt(beta_bar^2 + alpha_bar^2 s_d^2)),
    which never forms 1 - c_skip by cancellation.
    """
    a, b = _ab(c, x)
    r2 = b**2 + (a * sigma_data) ** 2
    out = net(x / torch.sqrt(r2))
    return -x / r2 + a * sigma_data * out / (b * torch.sqrt(r2))


PARAMETERIZATIONS = Registry("parameterization", {
    "score": _score_from_score,
    "eps": _score_from_eps,
    "x0": _score_from_x0,
    "v": _score_from_v,
    "flow": _score_from_flow,
    "edm": _score_from_edm,
})


def _coefficients_score(c, sigma_data):
    a, b = c.alpha_bar, c.beta_bar
    return a, torch.ones_like(a), b**2 / a


def _coefficients_eps(c, sigma_data):
    a, b = c.alpha_bar, c.beta_bar
    return a, torch.ones_like(a), -b / a


def _coefficients_x0(c, sigma_data):
    a = c.alpha_bar
    return a, torch.zeros_like(a), torch.ones_like(a)


def _coefficients_v(c, sigma_data):
    a, b = c.alpha_bar, c.beta_bar
    return a, a**2 / (a**2 + b**2), -b / (a**2 + b**2)


def _coefficients_flow(c, sigma_data):
    a, b = c.alpha_bar, c.beta_bar
    return a, a * c.d_beta_bar / c.noise_rate, -b / c.noise_rate


def _coefficients_edm(c, sigma_data):
    sigma2 = c.sigma**2
    return (1 / torch.sqrt(sigma2 + sigma_data**2), sigma_data**2 / (sigma2 + sigma_data**2),
            torch.sqrt(sigma2) * sigma_data / torch.sqrt(sigma2 + sigma_data**2))


# (c_in, c_skip, c_out) of each parameterisation as functions of the Coefficients and sigma_data: the network
# sees x_t = alpha_bar x_hat (c_in = alpha_bar) except under edm, and x0_hat = c_skip x_hat + c_out F follows
# from each definition (eps: x0 = x_hat - sigma eps; v: x0 = (alpha_bar x - beta_bar v)/(alpha_bar^2 + beta_bar^2);
# flow: x0 = (beta_bar' x - beta_bar u)/(alpha_bar beta_bar' - alpha_bar' beta_bar); score: Tweedie,
# x0 = (x + beta_bar^2 s)/alpha_bar).
COEFFICIENTS = {
    "score": _coefficients_score,
    "eps": _coefficients_eps,
    "x0": _coefficients_x0,
    "v": _coefficients_v,
    "flow": _coefficients_flow,
    "edm": _coefficients_edm,
}

# EDM's sigma_data: the standard deviation of images scaled to [-1, 1].
SIGMA_DATA = 0.5


def consistency_weight(sigma: Tensor, sigma_min: float) -> Tensor:
    """1 - c_skip of a consistency model, (sigma - sigma_min)/sigma: exactly 0 at sigma = sigma_min, so that
    f(y, sigma_min) = y, and f = y - (sigma - sigma_min) eps_hat, one DDIM step from sigma to sigma_min (docs/math.md,
    "Consistency distillation")."""
    return (sigma - sigma_min) / sigma


class PrecondCoefficients(NamedTuple):
    """EDM's D(x_hat; sigma) = c_skip x_hat + c_out F(c_in x_hat; c_noise) at each time, float64 tensors (N,)."""

    c_in: Tensor
    c_skip: Tensor
    c_out: Tensor
    c_noise: Tensor


class Precond:
    """How a network is fed and how its output F becomes a score: EDM's preconditioning (Karras et al. 2022,
    Table 1), in x_hat = x_t/alpha_bar with noise level sigma = beta_bar/alpha_bar (docs/math.md, Preconditioning).

    D(x_t) = c_skip x_hat + c_out F(c_in x_hat; c_noise) estimates E[x_0 | x_t], and
    score = (alpha_bar D - x_t)/beta_bar^2.
    `parameterization` fixes c_in, c_skip and c_out; `noise_input` names c_noise, what the network receives as its
    noise level (NOISE_INPUTS); `sigma_data` is the data standard deviation of the edm parameterisation, and the
    one an EDM loss weighting must use. The score is computed by the algebraically equal closed forms above
    (PARAMETERIZATIONS), which avoid cancellations such as 1 - c_skip near t = 0.

    sigma_min (None: none) makes it a consistency model (Song et al. 2023; docs/math.md, "Consistency
    distillation"): f(y, sigma) = c_skip y + (1 - c_skip) D(y, sigma) with c_skip = sigma_min/sigma, i.e.
    f = y - (sigma - sigma_min) eps_hat, one DDIM step to sigma_min with the network's eps_hat = (y - D)/sigma; so
    f(y, sigma_min) = y exactly, and score = (1 - c_skip) (alpha_bar D - x_t)/beta_bar^2, so that Tweedie's formula
    returns f. The paper's c_skip = s_d^2/((sigma - sigma_min)^2 + s_d^2) would leave (1 - c_skip) D ~ (sigma -
    sigma_min)^2 near sigma_min, where removing the noise needs an output hundreds of times the noise; here its
    effective c_out is ~ sigma - sigma_min there, as the paper's. A student that starts from a teacher's weights
    starts as the teacher's one DDIM jump to sigma_min.
    """

    def __init__(self, parameterization: str = "eps", noise_input: str = "t", sigma_data: float = SIGMA_DATA,
                 sigma_min: float | None = None):
        self.parameterization = PARAMETERIZATIONS.canonical(parameterization)
        self.noise_input = NOISE_INPUTS.canonical(noise_input)
        if not (isinstance(sigma_data, (int, float)) and not isinstance(sigma_data, bool) and sigma_data > 0):
            raise UsageError(f"sigma_data must be a positive number (the data standard deviation, {SIGMA_DATA} for "
                             f"images in [-1, 1]), got {sigma_data!r}")
        self.sigma_data = float(sigma_data)
        if sigma_min is not None and not (isinstance(sigma_min, (int, float)) and not isinstance(sigma_min, bool)
                                          and sigma_min > 0):
            raise UsageError(f"sigma_min must be a positive number (a consistency model's sigma(eps)) or None, got "
                             f"{sigma_min!r}")
        self.sigma_min = None if sigma_min is None else float(sigma_min)
        self._to_score = PARAMETERIZATIONS[self.parameterization]
        self._noise = NOISE_INPUTS[self.noise_input]

    @classmethod
    def for_network(cls, network: nn.Module, parameterization: str = "eps", sigma_data: float = SIGMA_DATA,
                    sigma_min: float | None = None) -> Precond:
        """The preconditioning of `network`: it is fed the noise input its class declares (its `noise_input`
        attribute, "t" when it declares none), and EDM's c_noise = log(sigma)/4 under the edm parameterisation;
        sigma_min: a consistency model's boundary (None: none)."""
        if PARAMETERIZATIONS.canonical(parameterization) == "edm":
            noise_input = "edm"
        else:
            noise_input = network_attr(network, "noise_input") or "t"
        if network_attr(network, "scale_by_sigma") and noise_input != "log_sigma":
            raise UsageError(f"the network divides its output by exp(noise input) (scale_by_sigma), which is sigma "
                             f"only when it is fed log sigma, but parameterization={parameterization!r} feeds it "
                             f"{noise_input}; use another parameterisation or a network without scale_by_sigma")
        return cls(parameterization, noise_input, sigma_data, sigma_min)

    def noise(self, c: Coefficients) -> Tensor:
        """c_noise, the network's noise input, at the times of `c` (float64, shape (N,))."""
        return self._noise(c)

    def coefficients(self, sde: SDE, t: Tensor) -> PrecondCoefficients:
        """c_in, c_skip, c_out and c_noise at float64 times t of shape (N,) under `sde`."""
        c = Coefficients(sde, t)
        c_in, c_skip, c_out = COEFFICIENTS[self.parameterization](c, self.sigma_data)
        if self.sigma_min is not None:
            w = consistency_weight(c.sigma, self.sigma_min)
            c_skip, c_out = (1 - w) + w * c_skip, w * c_out
        return PrecondCoefficients(c_in, c_skip, c_out, self.noise(c))

    def score(self, network: nn.Module, x: Tensor, c: Coefficients, y: Tensor | None = None) -> Tensor:
        """The score at x (shape (N, ...)) implied by `network`'s output, for the coefficients c of x's times."""
        net = functools.partial(network, noise_input=self.noise(c).to(x.dtype), y=y)
        score = self._to_score(net, x, c, self.sigma_data)
        if self.sigma_min is None:
            return score
        return expand_as(consistency_weight(c.sigma, self.sigma_min), x) * score

    def __repr__(self) -> str:
        boundary = "" if self.sigma_min is None else f", sigma_min={self.sigma_min!r}"
        return (f"Precond(parameterization={self.parameterization!r}, noise_input={self.noise_input!r}, "
                f"sigma_data={self.sigma_data!r}{boundary})")


def network_attr(model: nn.Module, name: str):
    """An attribute of the network itself, looking through wrappers (DataParallel/DDP/AveragedModel .module,
    torch.compile)."""
    while not hasattr(model, name):
        inner = [getattr(model, w) for w in ("module", "_orig_mod") if isinstance(getattr(model, w, None), nn.Module)]
        if not inner:
            return None
        model = inner[0]
    return getattr(model, name)


def as_labels(y, n: int, device) -> Tensor | None:
    """Class labels as a long tensor (N,): an int is broadcast, None stays None."""
    if y is None:
        return None
    y = torch.as_tensor(y, device=device)
    if y.ndim == 0:
        return y.long().expand(n)
    if y.shape != (n,):
        raise UsageError(f"class_labels must be an int or have shape ({n},) to match the batch; "
                         f"got shape {tuple(y.shape)}")
    return y.long()


class ScoreFn:
    """score_fn(x, t) = grad_x log p_t(x) implied by `model` under the preconditioning `precond` (the sde_lib
    convention); a parameterisation name stands for Precond.for_network(model, name).

    t may be float64 or x's dtype, scalar or shape (N,); coefficients are computed in float64 and cast to x's dtype.
    Classifier-free guidance combines `score` of a class and of the null label: guidance.ClassifierFreeGuidance.
    """

    def __init__(self, model: nn.Module, sde: SDE, precond: Precond | str = "eps", class_labels=None):
        self.precond = precond if isinstance(precond, Precond) else Precond.for_network(model, precond)
        self.model, self.sde = model, sde
        self.class_labels = class_labels

    def __call__(self, x: Tensor, t) -> Tensor:
        return self.score(x, t, self.class_labels)

    def score(self, x: Tensor, t, y=None) -> Tensor:
        """The score at (x, t) for class labels y (an int, a tensor (N,), or None for the unconditional/null label)."""
        c = Coefficients(self.sde, batch_time(t, x))
        return self.precond.score(self.model, x, c, as_labels(y, x.shape[0], x.device))


def get_score_fn(model: nn.Module, sde: SDE, precond: Precond | str = "eps", class_labels=None) -> ScoreFn:
    """score_fn(x, t) = grad_x log p_t(x) of a network under a preconditioning or parameterisation (see ScoreFn)."""
    return ScoreFn(model, sde, precond, class_labels)
