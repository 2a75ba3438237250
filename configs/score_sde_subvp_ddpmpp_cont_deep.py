"""CIFAR-10, sub-VP SDE, DDPM++ cont. (deep): score_sde_pytorch's release with 8 residual blocks per level."""
from scoresde.configs.score_sde_subvp_ddpmpp_cont import get_config as get_shallow_config


def get_config():
    config = get_shallow_config()
    config.model.num_res_blocks = 8
    return config
