"""--mode fid end to end on CIFAR-shaped (3x32x32) images through torch-fidelity's Inception architecture, with
random weights (nothing is downloaded): the figures equal FID/KID computed from the same network's features."""
import json

import numpy as np
import pytest
import torch
from helpers import cli
from test_metrics import random_inception_weights  # noqa: F401  (a fixture)

from scoresde.metrics import fidelity
from scoresde.metrics.frechet import feature_statistics, frechet_distance


@pytest.mark.slow
def test_fid_of_a_samples_file_on_cifar_shaped_images(tmp_path, random_inception_weights):  # noqa: F811
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "train.npy", train)
    # Samples in data space [0, 1]: half the training images, half new ones.
    samples = np.concatenate([train[:6], rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)])
    samples = samples.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    np.savez(tmp_path / "samples.npz", samples=samples)
    result = cli("--mode", "fid", "--config", "cifar10_vpsde", "--workdir", tmp_path / "run",
                 "--config.data.dataset=array", f"--config.data.path={tmp_path / 'train.npy'}",
                 "--config.data.test_fraction=0.25", f"--config.metrics.cache_dir={tmp_path / 'cache'}",
                 "--samples", tmp_path / "samples.npz", "--inception_weights", random_inception_weights)
    assert result.stdout.startswith("FID ")
    (record,) = (tmp_path / "run" / "metrics").glob("from_samples*.json")
    fid = json.loads(record.read_text())["fid"]
    # The same figure from the features directly: the training split is every image the array data keep for
    # training (18 of 24 with test_fraction 0.25), in the order the array dataset holds them.
    model = fidelity.load_inception(random_inception_weights)
    from scoresde import configs, data
    config = configs.load_config("cifar10_vpsde")
    config.data.dataset, config.data.path, config.data.test_fraction = "array", str(tmp_path / "train.npy"), 0.25
    info = data.get_dataset(config)
    reference = info.train.data.to(torch.float32) / 255.0
    ours, _ = fidelity.inception_features(torch.from_numpy(samples), model)
    theirs, _ = fidelity.inception_features(reference, model)
    expected = frechet_distance(*feature_statistics(ours), *feature_statistics(theirs))
    # The same float32 features (in other batches: ~1e-6 relative) and the same float64 statistics.
    assert fid == pytest.approx(expected, rel=1e-4)
