"""Exact likelihoods of score-based models through the probability-flow ODE, and bits per dimension."""
from .bpd import BitsPerDim, bits_per_dim, dequantize, evaluate_bits_per_dim
from .core import LikelihoodResult, decode, log_likelihood
from .divergence import DIVERGENCES, exact_divergence, hutchinson_divergence
from .ode import CLOCKS, METHODS

__all__ = [
    "log_likelihood", "decode", "LikelihoodResult", "bits_per_dim", "dequantize", "evaluate_bits_per_dim",
    "BitsPerDim", "DIVERGENCES", "CLOCKS", "METHODS", "exact_divergence", "hutchinson_divergence",
]
