"""CIFAR-10, VE SDE, NCSN++ cont. (Song et al. 2021): Fourier features of log sigma, PC sampling."""
from scoresde.configs.cifar10_base import get_cifar10_config


def get_config():
    config = get_cifar10_config()
    config.sde.name = "vesde"
    config.sde.sigma_max = 50.0
    config.data.centered = False         # NCSN++ models data in [0, 1]
    config.model.embedding_type = "fourier"
    config.model.ema_rate = 0.999
    config.sampling.solver = "pc"        # reverse diffusion predictor + Langevin corrector
    config.sampling.snr = 0.16
    return config
