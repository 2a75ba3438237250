"""CIFAR-10, VP SDE, DDPM++ cont. (deep): score_sde_pytorch's release with 8 residual blocks per level (106.6M)."""
from scoresde.configs.score_sde_vp_ddpmpp_cont import get_config as get_shallow_config


def get_config():
    config = get_shallow_config()
    config.model.num_res_blocks = 8
    return config
