"""--mode fid and the training-time sample-quality metric, end to end on a tiny digits run trained here."""
import json
import math
import re

import numpy as np
import pytest
import torch

from scoresde import configs
from scoresde import data as data_lib
from scoresde import metrics
from scoresde import training
from scoresde.metrics.digits import digits_split
from scoresde.run import quality as scoring
from scoresde.training.quality import TrainingQuality

from helpers import cli, metrics_rows

LINE = re.compile(r"^FD-digits2 (\d+\.\d{3}) \| KID-digits2 (-?\d+\.\d{4}) ± (\d+\.\d{4}) \| precision (\d\.\d{3}) \| "
                  r"recall (\d\.\d{3}) \| IS-digits2 (\d+\.\d{2}) ± (\d+\.\d{2}) \((\d+) samples, (.*)\)$")
STEPS, FID_FREQ, TRAINING_SAMPLES = 4, 2, 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """4 steps of the digits U-Net, the metric every 2 steps on 20 samples of a 2-step Euler snapshot sampler."""
    config = configs.load_config("vpsde")
    config.device = "cpu"
    t = config.training
    t.n_iters, t.batch_size, t.log_freq, t.eval_freq, t.snapshot_freq = STEPS, 16, 2, STEPS, 2
    t.snapshot_samples, t.progress, t.fid_freq = 4, False, FID_FREQ
    config.metrics.num_samples_training = TRAINING_SAMPLES
    config.sampling.solver, config.sampling.steps = "euler", 2
    config.metrics.cache_dir = str(tmp_path_factory.mktemp("cache"))
    workdir = tmp_path_factory.mktemp("digits")
    training.train(config, workdir)
    return workdir


def _one_error_line(result) -> str:
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.slow
def test_fid_mode_line_json_and_the_same_samples_from_a_file(run_dir):
    out = cli("--mode", "fid", "--workdir", run_dir, "--num_samples", 40, "--solver", "euler", "--steps", 3,
              "--batch_size", 16)
    (line,) = out.stdout.strip().splitlines()
    m = LINE.match(line)
    assert m, line
    assert m.group(8) == "40" and m.group(9).startswith("euler, 3 steps") and m.group(9).endswith("NFE 3")
    record = json.loads((run_dir / "metrics" / f"euler_3_n40_step{STEPS}_seed42.json").read_text())
    assert record["fd_digits2"] == pytest.approx(float(m.group(1)), abs=5e-4)     # the line rounds to 3 decimals
    assert record["kid_digits2"] == pytest.approx(float(m.group(2)), abs=5e-5)
    assert (record["precision"], record["recall"]) == pytest.approx((float(m.group(4)), float(m.group(5))), abs=5e-4)
    assert (record["num_samples"], record["nfe"], record["step"], record["solver"]) == (40, 3, STEPS, "euler")
    # --mode sample draws the same per-sample-seeded samples (at another batch size); scoring its file gives the
    # same FD up to float32 rounding of the batched network (measured identical; 1e-6 leaves room), and its
    # record does not replace the one with the checkpoint.
    cli("--mode", "sample", "--workdir", run_dir, "--num_samples", 40, "--solver", "euler", "--steps", 3)
    npz = run_dir / "samples" / f"euler_3_n40_step{STEPS}_seed42.npz"
    again = cli("--mode", "fid", "--workdir", run_dir, "--samples", npz)
    from_file = json.loads((run_dir / "metrics" / f"from_{npz.stem}.json").read_text())
    assert from_file["fd_digits2"] == pytest.approx(record["fd_digits2"], rel=1e-6)
    direct = metrics.evaluate(torch.from_numpy(np.load(npz)["samples"]), "digits", 8, 1)
    for key in ("fd_digits2", "kid_digits2", "precision", "recall"):
        assert from_file[key] == pytest.approx(getattr(direct, key), rel=1e-12)   # the same numbers, same code
    assert again.stdout.strip().endswith(f"(40 samples, from {npz})")
    assert json.loads((run_dir / "metrics" / f"{npz.stem}.json").read_text())["nfe"] == 3


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_samples_in_an_empty_workdir(tmp_path, suffix):
    # The 297 test digits as "samples": their FD-digits2 against the training digits is the held-out baseline, 0.088.
    # A plain .npy array is read as the samples just as the 'samples' array of an .npz.
    test = digits_split("test")
    path = tmp_path / f"test_digits{suffix}"
    if suffix == ".npz":
        _write(path, samples=test.numpy())
    else:
        np.save(path, test.numpy())
    empty = tmp_path / "empty"
    out = cli("--mode", "fid", "--config", "vpsde", "--samples", path, "--workdir", empty)
    expected = metrics.evaluate(test, "digits", 8, 1)
    assert out.stdout.startswith(expected.format() + " (297 samples, ")
    assert expected.fd_digits2 == pytest.approx(0.088, abs=5e-4)
    record = json.loads((empty / "metrics" / "from_test_digits.json").read_text())
    for key in ("fd_digits2", "kid_digits2", "kid_digits2_std", "precision", "recall", "is_digits2"):
        assert record[key] == pytest.approx(getattr(expected, key), rel=1e-12)
    assert record["kind"] == "digits" and record["samples"] == str(path)


@pytest.mark.parametrize("make, extra, match", [
    (lambda p: _write(p, samples=np.random.rand(20, 2).astype(np.float32)), (), r"\(N, 1, 8, 8\), got shape \(20, 2\)"),
    (lambda p: _write(p, samples=np.full((20, 1, 8, 8), np.nan, np.float32)), (), "1280 NaN or infinite"),
    (lambda p: _write(p, samples=np.random.rand(20, 1, 8, 8).astype(np.float32)),
     ("--config.data.dataset=array",), "no reference statistics for dataset 'array'.*config.data.path"),
    (lambda p: _write(p, x=np.random.rand(20, 1, 8, 8).astype(np.float32)), (), "holds x; name the array 'samples'"),
    (lambda p: p, (), "no file .*s.npz; expected samples in data space"),
])
def test_bad_samples_give_one_clear_line(tmp_path, make, extra, match):
    npz = make(tmp_path / "s.npz")
    result = cli("--mode", "fid", "--samples", npz, "--workdir", tmp_path / "w", *extra, check=False)
    assert re.search(match, _one_error_line(result))
    assert not (tmp_path / "w" / "metrics").exists()


def test_fid_mode_without_checkpoint_or_samples(tmp_path):
    result = cli("--mode", "fid", "--workdir", tmp_path, "--num_samples", 20, check=False)
    assert "checkpoint" in _one_error_line(result)


def test_fid_freq_logs_the_digits_metrics_of_the_ema_samples(run_dir):
    rows = [r for r in metrics_rows(run_dir) if "fd_digits2" in r]
    assert [r["step"] for r in rows] == list(range(FID_FREQ, STEPS + 1, FID_FREQ))
    assert all(math.isfinite(r[k]) for r in rows for k in ("fd_digits2", "kid_digits2", "precision", "recall"))
    # The last row scores the EMA network of the final checkpoint with the snapshot sampler on seeds 0..19 of
    # config.seed: --mode fid with the same sampler and count draws the same samples (to float32 rounding).
    cli("--mode", "fid", "--workdir", run_dir, "--num_samples", TRAINING_SAMPLES, "--solver", "euler", "--steps", 2)
    record = json.loads((run_dir / "metrics" / f"euler_2_n{TRAINING_SAMPLES}_step{STEPS}_seed42.json").read_text())
    assert rows[-1]["fd_digits2"] == pytest.approx(record["fd_digits2"], rel=1e-6)


def test_vectors_are_scored_against_the_held_out_split():
    config = configs.load_config("vpsde")
    config.data.dataset, config.data.num_samples = "gmm8", 500
    info = data_lib.get_dataset(config)
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    result = scoring.score(x, config)
    held_out = info.test.data.double().numpy()
    assert result.energy == pytest.approx(metrics.energy_distance(x.double().numpy(), held_out), rel=1e-12)


def test_training_metric_needs_the_extra_for_other_images(tmp_path, monkeypatch):
    config = configs.load_config("vpsde")
    config.data.dataset, config.data.path = "array", str(_write(tmp_path / "a.npz", x=np.zeros((8, 4, 4), np.uint8)))
    config.training.fid_freq = 10
    info = data_lib.get_dataset(config)
    monkeypatch.setattr(metrics, "inception_available", lambda: False)
    assert TrainingQuality.from_config(config, info) is None
    config.data.dataset = "digits"
    assert TrainingQuality.from_config(config, data_lib.get_dataset(config)).num == 1000


def test_default_cache_dir_is_per_user(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert scoring.default_cache_dir() == tmp_path / "scoresde" / "fid_stats"
    config = configs.load_config("vpsde")
    assert scoring.cache_dir(config) == tmp_path / "scoresde" / "fid_stats"
    config.metrics.cache_dir = str(tmp_path / "mine")
    assert scoring.cache_dir(config) == tmp_path / "mine"
