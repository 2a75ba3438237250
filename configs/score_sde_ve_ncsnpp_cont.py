"""CIFAR-10, VE SDE, NCSN++ cont. exactly as score_sde_pytorch released it (Song et al. 2021, 62.8M parameters).

FIR resampling with kernel [1, 3, 3, 1], the residual input pyramid, 2 nf Gaussian Fourier features of log sigma
(scale 16), input centring 2x - 1 of data in [0, 1], and the output divided by sigma (the network is the score).
"""
from scoresde.configs.cifar10_vesde import get_config as get_vesde_config


def get_config():
    config = get_vesde_config()          # VE SDE (sigma 0.01 to 50), data in [0, 1], Fourier features, PC sampling
    model = config.model
    model.parameterization = "score"
    model.fourier_scale = 16.0
    model.embedding_mult = 2
    model.fir = True
    model.fir_kernel = (1, 3, 3, 1)
    model.progressive_input = "residual"
    model.center_input = True            # the network centres its input itself
    model.scale_by_sigma = True
    return config
