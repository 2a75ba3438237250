"""The pieces behind main.py, in process: the trained config of a checkpoint, and what sample/inpaint write."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import tiny_config
from PIL import Image

from scoresde import run as runs
from scoresde.commands import sampling


def trained_config(**changes):
    """The JSON round trip of tiny_config() (tuples come back as lists), with `changes` {'section.field': value}."""
    saved = json.loads(tiny_config().to_json())
    for key, value in changes.items():
        section, field = key.split(".")
        saved[section][field] = value
    return saved


def test_inference_takes_the_trained_sections_of_the_checkpoint(caplog):
    config = tiny_config()
    config.sde.name, config.model.embedding_type, config.sampling.steps = "vesde", "fourier", 200
    config.data.path = "/new/place"
    trained = trained_config(**{"model.ch_mult": [1, 2, 2], "model.embedding_type": "sinusoidal",
                                "data.path": "/old/place"})
    with caplog.at_level("WARNING"):
        runs.use_trained_sections(config, trained, {"model.mlp_width": 32, "data.path": "/new/place"})
    assert (config.sde.name, config.model.embedding_type, config.model.ch_mult) == ("vpsde", "sinusoidal", (1, 2, 2))
    # Sampling options stay those of the command line; the data may have moved.
    assert config.sampling.steps == 200 and config.data.path == "/new/place"
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "sde.name='vpsde' (not 'vesde')" in message and "model.embedding_type='sinusoidal'" in message


@pytest.mark.parametrize("key, given, saved", [
    ("sde.name", "vesde", "vpsde"), ("model.ch_mult", (1,), (1, 2)), ("data.dataset", "moons", "gmm8"),
])
def test_an_override_that_contradicts_the_checkpoint_is_refused(key, given, saved):
    config = tiny_config()
    section, field = key.split(".")
    config[section][field] = given
    with pytest.raises(ValueError, match=f"--config.{key}={given!r} conflicts with the checkpoint, which was "
                                              f"trained with {key}={saved!r}".replace("(", r"\(").replace(")", r"\)")):
        runs.use_trained_sections(config, trained_config(), {key: given})


def test_an_override_that_agrees_with_the_checkpoint_is_fine():
    config = tiny_config()
    runs.use_trained_sections(config, trained_config(),
                                  {"model.mlp_width": 32, "model.ch_mult": (1, 2), "sde.name": "vpsde"})
    assert config.to_dict() == tiny_config().to_dict()
    # Without an override the data are where they were in training.
    runs.use_trained_sections(config, trained_config(**{"data.path": "/old/place"}), {})
    assert config.data.path == "/old/place"


def data_info(is_image: bool, dim: int = 2):
    """The parts of a data.DataInfo that write_samples reads: is_image, the data space's range, and test points (in
    model scale, with the inverse scaler) drawn behind a scatter plot."""
    test = [(torch.full((dim,), float(i)), 0) for i in range(3)]
    return SimpleNamespace(is_image=is_image, test=test, inverse_scaler=lambda x: (x + 1) / 2,
                           data_space=(0.0, 1.0) if is_image else (-2.0, 3.0))


def test_vector_samples_without_a_picture_write_only_the_npz(tmp_path):
    x = torch.randn(5, 3)
    written = sampling.write_samples(tmp_path / "s", x, data_info(False, 3), "hint")
    assert written == [tmp_path / "s.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]
    np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["samples"], x.numpy())
    # The range the samples are in, so that scoring the file later knows it was drawn in this data space.
    assert np.load(tmp_path / "s.npz")["data_space"].tolist() == [-2.0, 3.0]


def test_points_and_images_also_get_a_png(tmp_path):
    assert sampling.write_samples(tmp_path / "p", torch.randn(5, 2), data_info(False), "hint") == [
        tmp_path / "p.png", tmp_path / "p.npz"]
    assert Image.open(tmp_path / "p.png").size[0] > 100
    written = sampling.write_samples(tmp_path / "i", torch.rand(4, 1, 8, 8), data_info(True), "hint",
                                     mask=np.ones((1, 8, 8)))
    assert written == [tmp_path / "i.png", tmp_path / "i.npz"]
    assert Image.open(tmp_path / "i.png").mode == "L"
    assert np.load(tmp_path / "i.npz")["mask"].shape == (1, 8, 8)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_samples_raise_and_write_nothing(tmp_path, bad):
    x = torch.rand(4, 1, 8, 8)
    x[2, 0, 3, 3] = bad
    with pytest.raises(ValueError, match=r"the samples contain NaN/inf \(nothing written\); try more --steps"):
        sampling.write_samples(tmp_path / "out" / "s", x, data_info(True), "try more --steps")
    assert not (tmp_path / "out").exists()


def test_a_field_added_since_a_run_was_trained_is_no_change_at_its_default():
    from scoresde.run.workdir import config_changes
    saved = {"sde": {"name": "vpsde", "beta_min": 0.1}}
    assert config_changes(saved, {"sde": {"name": "vpsde", "beta_min": 0.1, "power": 2.0}}) == ([], [])
    # At another value it changes the experiment like any other field.
    assert config_changes(saved, {"sde": {"name": "vpsde", "beta_min": 0.1, "power": 3.0}}) == (
        ["sde.power: 2.0 -> 3.0"], [])
