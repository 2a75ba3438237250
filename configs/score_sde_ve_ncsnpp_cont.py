"""CIFAR-10, VE SDE, NCSN++ cont. exactly as score_sde_pytorch released it (Song et al. 2021, 62.8M parameters).

FIR resampling with kernel [1, 3, 3, 1], the residual input pyramid, 2 nf Gaussian Fourier features of log sigma
(scale 16), input centring 2x - 1 of data in [0, 1], and the output divided by sigma (the network is the score).
"""
from configs.score_sde_vp_ddpmpp_cont import get_config as get_ddpmpp_config


def get_config():
    config = get_ddpmpp_config()
    config.sde.name = "vesde"
    config.sde.sigma_min = 0.01
    config.sde.sigma_max = 50.0
    config.data.centered = False         # data in [0, 1]; the network centres its input itself
    model = config.model
    model.parameterization = "score"
    model.embedding_type = "fourier"
    model.fourier_scale = 16.0
    model.embedding_mult = 2
    model.fir = True
    model.fir_kernel = (1, 3, 3, 1)
    model.progressive_input = "residual"
    model.center_input = True
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    config.sampling.solver = "pc"        # reverse diffusion predictor + Langevin corrector
    config.sampling.snr = 0.16
    return config
