"""CIFAR-10, VP SDE, DDPM++ cont. exactly as score_sde_pytorch released it (Song et al. 2021, 61.8M parameters).

The config to import its checkpoints under (python main.py --mode import --from score_sde ...), or to train the
same network anew. It differs from cifar10_vpsde only in the time embedding: score_sde's 999 t with frequencies
10000^(-k/(half-1)) ("positional"), without which their weights load and give a score 1-18 % off.
"""
from scoresde.configs.cifar10_base import get_cifar10_config


def get_config():
    config = get_cifar10_config()
    config.sde.name = "vpsde"
    config.sde.beta_min = 0.1
    config.sde.beta_max = 20.0
    config.data.centered = True          # data in [-1, 1]
    model = config.model
    model.parameterization = "eps"       # their score is -F(x, 999 t)/beta_bar(t)
    model.embedding_type = "positional"
    model.embedding_mult = 1             # embedding features = embedding_mult * nf
    model.fir = False
    model.fir_kernel = (1, 3, 3, 1)
    model.progressive_input = "none"
    model.center_input = False
    model.scale_by_sigma = False
    config.sampling.solver = "euler_maruyama"   # their VP sampler: Euler-Maruyama predictor, no corrector
    return config
