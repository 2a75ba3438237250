"""VE SDE (sigma_min = 0.01, sigma_max = 50) on the bundled 8x8 digits with a small UNet."""
from scoresde.configs.default import get_default_configs


def get_config():
    config = get_default_configs()
    config.sde.name = "vesde"
    config.model.embedding_type = "fourier"  # VE networks see log sigma through Gaussian Fourier features
    config.sampling.solver = "pc"            # Song et al.'s VE sampler: reverse diffusion + Langevin
    config.sampling.steps = 200              # predictor steps (NFE = 2 x steps with one corrector step)
    return config
