"""CIFAR-10, VP SDE, DDPM++ cont. (Song et al. 2021): eps-prediction, sinusoidal time embedding."""
from scoresde.configs.cifar10_base import get_cifar10_config


def get_config():
    config = get_cifar10_config()
    config.sde.name = "vpsde"
    config.sampling.solver = "euler_maruyama"  # the paper's VP predictor without corrector
    return config
