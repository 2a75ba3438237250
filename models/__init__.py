"""Score networks (MLP, DDPM++/NCSN++ U-Net), their preconditioning (parameterisations of the score), DSM losses
and EMA."""
from .ema import EMAAverage, create_ema
from .embeddings import ACTIVATIONS, EMBEDDINGS, GaussianFourierEmbedding, SinusoidalEmbedding
from .losses import (
    COUPLINGS,
    T_SAMPLINGS,
    WEIGHTINGS,
    EDMWeighting,
    FlowMatchingWeighting,
    ImportanceLikelihoodWeighting,
    LikelihoodWeighting,
    LogitNormal,
    NoiseMSEWeighting,
    Weighting,
    dsm_loss,
    get_t_sampling,
    get_weighting,
    ot_permutation,
)
from .mlp import MLP
from .parameterization import NOISE_INPUTS, PARAMETERIZATIONS, SIGMA_DATA, Precond, ScoreFn, get_score_fn
from .registry import MODELS, get_model
from .unet import UNet

__all__ = [
    "MLP", "UNet", "MODELS", "get_model", "Precond", "SIGMA_DATA", "ScoreFn", "get_score_fn", "PARAMETERIZATIONS",
    "NOISE_INPUTS",
    "dsm_loss", "WEIGHTINGS", "T_SAMPLINGS", "Weighting", "NoiseMSEWeighting", "LikelihoodWeighting",
    "ImportanceLikelihoodWeighting", "EDMWeighting", "FlowMatchingWeighting", "get_weighting", "LogitNormal",
    "get_t_sampling", "COUPLINGS", "ot_permutation", "create_ema", "EMAAverage", "ACTIVATIONS",
    "EMBEDDINGS", "SinusoidalEmbedding", "GaussianFourierEmbedding",
]
