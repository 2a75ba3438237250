"""CIFAR-10, sub-VP SDE, DDPM++ cont. as score_sde_pytorch released it (the VP network under the sub-VP SDE)."""
from scoresde.configs.score_sde_vp_ddpmpp_cont import get_config as get_vp_config


def get_config():
    config = get_vp_config()
    config.sde.name = "subvpsde"
    return config
