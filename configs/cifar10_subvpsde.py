"""CIFAR-10, sub-VP SDE, DDPM++ cont. (Song et al. 2021)."""
from scoresde.configs.cifar10_base import get_cifar10_config


def get_config():
    config = get_cifar10_config()
    config.sde.name = "subvpsde"
    config.sampling.solver = "euler_maruyama"
    return config
