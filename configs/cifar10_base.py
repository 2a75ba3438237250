"""Shared CIFAR-10 settings of Song et al. 2021 (continuous-time DDPM++/NCSN++); not a config by itself."""
from scoresde.configs.default import get_default_configs


def get_cifar10_config():
    config = get_default_configs()
    data = config.data
    data.dataset = "cifar10"
    data.image_size = 32
    data.num_channels = 3
    data.random_flip = True
    data.path = "datasets"               # root holding cifar-10-batches-py/ (torchvision's layout)

    model = config.model
    model.name = "unet"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.dropout = 0.1
    model.resblock_updown = True
    model.skip_rescale = True
    model.ema_rate = 0.9999

    training = config.training
    training.batch_size = 128
    training.n_iters = 1300001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 1000
    training.snapshot_samples = 64

    config.optim.lr = 2e-4
    config.optim.warmup = 5000
    config.sampling.steps = 1000
    config.sampling.batch_size = 256
    config.sampling.num_samples = 50000
    config.eval.batch_size = 64
    config.eval.dequant_repeats = 5      # Song et al. report the test set x5
    return config
