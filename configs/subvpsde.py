"""Sub-VP SDE (beta_min = 0.1, beta_max = 20) on the bundled 8x8 digits with a small UNet."""
from scoresde.configs.default import get_default_configs


def get_config():
    config = get_default_configs()
    config.sde.name = "subvpsde"
    return config
