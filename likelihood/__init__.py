"""Exact likelihoods of score-based models through the probability-flow ODE, and bits per dimension."""
from scoresde.solvers.adaptive import METHODS

from .accuracy import OdeSetting, choose_setting
from .bound import BoundResult, bound_bits_per_dim, variational_bound
from .bpd import BitsPerDim, bits_per_dim, dequantize, evaluate_bits_per_dim, merge_bits_per_dim
from .core import LikelihoodResult, decode, log_likelihood
from .divergence import DIVERGENCES, exact_divergence, hutchinson_divergence
from .multistep import FIXED_METHODS

__all__ = [
    "log_likelihood", "decode", "LikelihoodResult", "bits_per_dim", "dequantize", "evaluate_bits_per_dim",
    "merge_bits_per_dim", "BitsPerDim", "DIVERGENCES", "METHODS", "FIXED_METHODS", "exact_divergence",
    "hutchinson_divergence", "variational_bound", "bound_bits_per_dim", "BoundResult", "OdeSetting", "choose_setting",
]
