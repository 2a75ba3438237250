"""End to end through main.py (in process): conditional training, guided sampling, the classifier, inpainting."""
import numpy as np
import pytest

import helpers

TINY = ["--config.model.nf=8", "--config.model.ch_mult=(1,)", "--config.training.batch_size=16",
        "--config.training.log_freq=2", "--config.training.eval_freq=4", "--config.training.snapshot_freq=4",
        "--config.training.snapshot_samples=4", "--config.sampling.steps=3", "--config.training.progress=False",
        "--config.model.conditional=True", "--config.classifier.nf=8", "--config.classifier.ch_mult=(1,)",
        "--config.classifier.n_iters=4", "--config.classifier.batch_size=16", "--device=cpu"]

pytestmark = pytest.mark.slow


def cli(*args, check=True):
    return helpers.cli(*args, *TINY, check=check)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("conditional")
    cli("--mode", "train", "--workdir", str(workdir), "--config.training.n_iters=4")
    return workdir


def test_guided_sampling_with_a_list_of_labels(trained):
    result = cli("--mode", "sample", "--workdir", str(trained), "--solver=heun", "--steps=2", "--guidance=2",
                   "--class_label=0,5,9", "--num_samples=6", "--batch_size=3")
    assert result.written().name == "heun_2_n6_step4_seed42_y0-5-9_w2.npz"
    samples = np.load(result.written())["samples"]
    assert samples.shape == (6, 1, 8, 8) and np.isfinite(samples).all()
    assert "6 samples with heun" in result.stdout


def test_classifier_training_then_classifier_guided_sampling(trained):
    result = cli("--mode", "train_classifier", "--workdir", str(trained))
    assert "classifier at step 4" in result.stdout
    assert (trained / "classifier" / "checkpoints" / "checkpoint_4.pt").is_file()
    result = cli("--mode", "sample", "--workdir", str(trained), "--solver=euler_maruyama", "--steps=2",
                 "--classifier_scale=1.5", "--class_label=3", "--num_samples=2")
    assert result.written().name == "euler_maruyama_2_n2_step4_seed42_y3_g1.5.npz"
    assert np.isfinite(np.load(result.written())["samples"]).all()


def test_inpainting_keeps_the_observed_pixels(trained, tmp_path):
    x = np.random.default_rng(0).uniform(size=(3, 1, 8, 8)).astype(np.float32)
    mask = np.ones((1, 8, 8), np.float32)
    mask[:, 2:6, 2:6] = 0
    np.savez(tmp_path / "obs.npz", x=x)
    np.save(tmp_path / "mask.npy", mask)
    result = cli("--mode", "inpaint", "--workdir", str(trained), f"--input={tmp_path / 'obs.npz'}",
                   f"--mask={tmp_path / 'mask.npy'}", "--steps=3", "--resample=2", "--class_label=1")
    assert "NFE 5 per batch" in result.stdout   # (3 - 1) steps * 2 resamplings + the last step
    out = np.load(trained / "inpaint" / "repaint_3_seed42.npz")["samples"]
    observed = np.broadcast_to(mask, x.shape).astype(bool)
    # Observed pixels come back exactly up to the float32 round trip through the [-1, 1] model scale.
    np.testing.assert_allclose(out[observed], x[observed], atol=1e-6)
    assert np.isfinite(out).all() and not np.allclose(out[~observed], x[~observed], atol=1e-3)


def test_a_mask_of_another_shape_than_the_input_is_one_line(trained, tmp_path):
    np.save(tmp_path / "obs.npy", np.zeros((3, 1, 8, 8), np.float32))
    np.save(tmp_path / "mask.npy", np.zeros((2, 1, 8, 8), np.float32))
    before = sorted(trained.rglob("*"))
    result = cli("--mode", "inpaint", "--workdir", str(trained), f"--input={tmp_path / 'obs.npy'}",
                 f"--mask={tmp_path / 'mask.npy'}", "--steps=3", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert result.stderr == (f"error: the mask in {tmp_path / 'mask.npy'} has shape (2, 1, 8, 8), which does not fit "
                             "the observations' (3, 1, 8, 8); give one mask per observation, or one of shape "
                             "(1, 8, 8) for all\n")
    assert sorted(trained.rglob("*")) == before


@pytest.mark.parametrize("args, message", [
    (["--mode", "sample", "--guidance=1"], "need --class_label"),
    (["--mode", "sample", "--class_label=12"], "class label(s) [12] out of range; this model has classes 0..9"),
    (["--mode", "inpaint"], "--mode inpaint needs --input=FILE"),
])
def test_guidance_user_errors_are_one_line(trained, args, message):
    result = cli(*args, "--workdir", str(trained), check=False)
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
