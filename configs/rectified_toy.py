"""Rectified flow on the 2-D two-moons toy with the MLP, trained by conditional flow matching with minibatch
optimal-transport pairs (Tong et al. 2023): a CPU minute. Euler on the uniform grid is diffusers' FlowMatchEuler."""
from scoresde.configs.default import get_default_configs


def get_config():
    config = get_default_configs()
    config.sde.name = "rectified"
    config.data.dataset = "moons"
    config.model.parameterization = "flow"
    config.training.weighting = "flow"
    config.training.t_sampling = "logit_normal"
    config.training.coupling = "ot"
    config.sampling.solver = "euler"
    config.sampling.grid = "uniform"
    return config
