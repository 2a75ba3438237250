"""Rectified flow (x_t = (1 - t) x_0 + t eps) on the bundled 8x8 digits with the small UNet of configs/vpsde.py,
trained by conditional flow matching: the network predicts the velocity eps - x_0, the loss is ||u_hat - u||^2,
and training times are logit-normal (Esser et al. 2024's best setting, mean 0 and std 1)."""
from scoresde.configs.default import get_default_configs


def get_config():
    config = get_default_configs()
    config.sde.name = "rectified"
    config.model.parameterization = "flow"
    config.training.weighting = "flow"
    config.training.t_sampling = "logit_normal"
    return config
