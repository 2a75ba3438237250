"""Bad input, class by class, through the command line: each mistake is exit status 1 and one line on stderr that
says what is wrong and what to do, with no traceback, and leaves every run directory as it was."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import score_sde_reference as ref
from helpers import cli
from scoresde.run import checkpoint as ckpt
from test_import import small_arch

TINY = ["--config.model.nf=8", "--config.model.ch_mult=(1,)", "--config.training.batch_size=16",
        "--config.training.snapshot_samples=0", "--config.sampling.steps=3", "--config.training.progress=False",
        "--device=cpu"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """run/: a digits run trained for 2 steps; nan/: its checkpoint with NaN weights; imported/: a released
    CIFAR-10 model imported on a machine without CIFAR-10; files/: the bad files."""
    root = tmp_path_factory.mktemp("bad")
    cli("--mode", "train", "--workdir", root / "run", "--config.training.n_iters=2", *TINY)
    state = ckpt.load_checkpoint(root / "run" / "checkpoints" / "checkpoint_2.pt")
    for module in ("model", "ema"):
        state[module] = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state[module].items()}
    ckpt.save_checkpoint(root / "nan", 2, state)

    files = root / "files"
    files.mkdir()
    name = "score_sde_vp_ddpmpp_cont"
    torch.save(ref.random_checkpoint(small_arch(name)), files / "released.pth")
    cli("--mode", "import", "--from", "score_sde", "--config", name, "--checkpoint", files / "released.pth",
        "--workdir", root / "imported", "--config.model.nf=16", "--config.model.ch_mult=(1,2)",
        "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=(4,)", "--config.data.dataset=cifar10",
        f"--config.data.path={root / 'nowhere'}", "--config.data.image_size=8", "--config.data.num_channels=1",
        "--device=cpu")

    whole = (root / "run" / "checkpoints" / "checkpoint_2.pt").read_bytes()
    (files / "truncated.pt").write_bytes(whole[:len(whole) // 2])
    (files / "text.pt").write_text("not a checkpoint\n")
    torch.save(torch.zeros(3), files / "tensor.pt")
    torch.save({"weights": torch.zeros(3)}, files / "noconfig.pt")
    with open(files / "objects.pt", "wb") as f:
        pickle.dump({"step": Path("x")}, f, protocol=2)
    (files / "dir.pt").mkdir()

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, size=(12, 1, 8, 8)).astype(np.float32)
    np.savez(files / "samples.npz", samples=images)
    np.save(files / "samples.npy", images)
    (files / "garbage.npz").write_bytes(b"\x00garbage" * 16)
    np.savez(files / "wrongkey.npz", x=images)
    np.savez(files / "ints.npz", samples=(255 * images).astype(np.uint8))
    np.savez(files / "bytes255.npz", samples=255 * images)
    np.savez(files / "vectors.npz", samples=images.reshape(12, -1)[:, :2])
    np.savez(files / "otherspace.npz", samples=images, data_space=np.array([-1.0, 2.0]))
    np.savez(files / "nan.npz", samples=np.where(images > 0.5, np.nan, images))

    missing = images.copy()
    missing[:, :, :4] = np.nan
    np.save(files / "observed.npy", missing)
    np.save(files / "observed255.npy", 255 * missing)
    np.save(files / "oblong.npy", missing[:, :, :, :6])
    np.save(files / "mask_oblong.npy", np.ones((1, 8, 6), dtype=np.float32))
    np.save(files / "mask_half.npy", (np.arange(8) < 4).astype(np.float32).repeat(8).reshape(1, 8, 8))
    (files / "garbage.npy").write_bytes(b"\x00garbage" * 16)
    return root


def snapshot(root: Path) -> dict:
    """Every file and folder under root: files with (size, mtime), folders by name alone."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = None
        for f in filenames:
            s = os.stat(os.path.join(dirpath, f))
            out[os.path.relpath(os.path.join(dirpath, f), root)] = (s.st_size, s.st_mtime_ns)
    return out


SAMPLE = ["--mode=sample", "--workdir={run}", "--num_samples=2", "--device=cpu"]
LIKELIHOOD = ["--mode=likelihood", "--workdir={run}", "--num_samples=2", "--device=cpu"]
FID = ["--mode=fid", "--workdir={run}", "--device=cpu"]
INPAINT = ["--mode=inpaint", "--workdir={run}", "--steps=2", "--device=cpu"]

CASES = [
    # checkpoints: missing, a folder, truncated, foreign, a bare tensor, without a config, NaN weights
    ("checkpoint-missing-step", [*SAMPLE, "--checkpoint=99"], "checkpoint_99.pt does not exist; "),
    ("checkpoint-missing-file", [*SAMPLE, "--checkpoint={files}/none.pt"], "none.pt does not exist; "),
    ("checkpoint-folder", [*SAMPLE, "--checkpoint={files}/dir.pt"], "dir.pt is a folder, not a checkpoint file; "),
    ("checkpoint-truncated", [*SAMPLE, "--checkpoint={files}/truncated.pt"], "truncated.pt is not readable ("),
    ("checkpoint-text", [*SAMPLE, "--checkpoint={files}/text.pt"], "text.pt is not a checkpoint (not a file "),
    ("checkpoint-objects", [*SAMPLE, "--checkpoint={files}/objects.pt"], "objects.pt holds Python objects other "),
    ("checkpoint-tensor", [*SAMPLE, "--checkpoint={files}/tensor.pt"], "tensor.pt holds a Tensor, not a checkpoint"),
    ("checkpoint-no-config", [*SAMPLE, "--checkpoint={files}/noconfig.pt"], "noconfig.pt holds no config; "),
    ("checkpoint-nan-eval", ["--mode=eval", "--workdir={nan}"], "checkpoint_2.pt has NaN or infinite weights"),
    ("checkpoint-nan-sample", [*SAMPLE, "--workdir={nan}"], "checkpoint_2.pt has NaN or infinite weights"),
    # samples to score
    ("samples-missing", [*FID, "--samples={files}/none.npz"], "none.npz; expected samples in data space"),
    ("samples-garbage", [*FID, "--samples={files}/garbage.npz"],
     "garbage.npz is not a NumPy file (no .npy header, not an .npz archive)"),
    ("samples-key", [*FID, "--samples={files}/wrongkey.npz"], "wrongkey.npz holds x; name the array 'samples'"),
    ("samples-dtype", [*FID, "--samples={files}/ints.npz"], "samples must be floats in data space"),
    ("samples-shape", [*FID, "--samples={files}/vectors.npz"], "digits samples are (N, 1, 8, 8), got shape (12, 2)"),
    ("samples-nan", [*FID, "--samples={files}/nan.npz"], "NaN or infinite values; draw them again"),
    ("samples-scale", [*FID, "--samples={files}/bytes255.npz"], "outside this run's data range 0..1; give them "
     "in data space (divide 8-bit images by 255)"),
    ("samples-of-other-data", [*FID, "--samples={files}/otherspace.npz"], "otherspace.npz holds samples of data in "
     "-1..2, not of this run's 0..1; score them with the --workdir of the run that drew them"),
    # observations to inpaint
    ("inpaint-no-input", INPAINT, "--mode inpaint needs --input=FILE"),
    ("inpaint-garbage", [*INPAINT, "--input={files}/garbage.npy"],
     "garbage.npy is not a NumPy file (no .npy header, not an .npz archive); expected"),
    ("inpaint-shape", [*INPAINT, "--input={files}/oblong.npy"], "have shape (12, 1, 8, 6); this model's data are"),
    ("inpaint-mask-shape", [*INPAINT, "--input={files}/observed.npy", "--mask={files}/mask_oblong.npy"],
     "mask_oblong.npy"),
    ("inpaint-scale", [*INPAINT, "--input={files}/observed255.npy"], "outside this run's data range 0..1"),
    ("inpaint-nan-observed", [*INPAINT, "--input={files}/observed.npy", "--mask={files}/mask_half.npy"],
     "observed entries (mask = 1) must be finite; mark NaN entries as missing"),
    # option values
    ("seed", [*SAMPLE, "--seed=-1"], "--seed=-1 must be an integer >= 0"),
    ("num-samples-sample", [*SAMPLE, "--num_samples=0"], "--num_samples=0 must be a positive integer"),
    ("num-samples-likelihood", [*LIKELIHOOD, "--num_samples=-5"], "--num_samples=-5 must be an integer >= 0"),
    ("batch-size", [*SAMPLE, "--batch_size=0"], "--batch_size=0 must be a positive integer"),
    ("steps", [*INPAINT, "--input={files}/observed.npy", "--steps=0"], "--steps=0 must be a positive integer"),
    ("order", [*SAMPLE, "--solver=dpm_solver", "--solver_options=order=7"], "order must be 1, 2 or 3, got order=7"),
    ("eta", [*SAMPLE, "--solver=euler_maruyama", "--eta=2"], "eta must be in [0, 1] (0: probability-flow ODE"),
    ("snr", [*SAMPLE, "--solver=pc", "--snr=-1"], "snr must be positive"),
    ("rtol-sample", [*SAMPLE, "--solver=rk45", "--rtol=-1"], "--rtol=-1.0 must be a positive number"),
    ("rtol-likelihood", [*LIKELIHOOD, "--rtol=-1"], "--rtol=-1.0 must be a positive number"),
    ("accuracy", [*LIKELIHOOD, "--accuracy=0"], "--accuracy=0.0 must be a positive number"),
    ("repeats", [*LIKELIHOOD, "--dequant_repeats=0"], "--dequant_repeats=0 must be a positive integer"),
    ("divergence", [*LIKELIHOOD, "--divergence=exactly"], "unknown divergence 'exactly'; available: "),
    ("bound", [*LIKELIHOOD, "--bound=vlb"],
     "bound must be ode (the probability-flow ODE likelihood) or elbo (the variational bound), got 'vlb'"),
    ("bound-options", [*LIKELIHOOD, "--bound=elbo", "--rtol=1e-3"], "(rtol) do not apply to the variational bound"),
    # imported runs, which have no config of their own beyond the checkpoint's
    ("import-no-config", ["--mode=import", "--from=score_sde", "--checkpoint={files}/released.pth",
                          "--workdir={files}/new"], "--from score_sde needs --config"),
    ("imported-without-data", ["--mode=likelihood", "--workdir={imported}", "--num_samples=2"],
     "the run's cifar10 test split has no items here: set --config.data.path"),
]


def run_case(root, args):
    return cli(*(a.format(**{name: root / name for name in ("run", "nan", "imported", "files")}) for a in args),
               check=False)


@pytest.mark.parametrize("case, args, message", [pytest.param(*c, id=c[0]) for c in CASES])
def test_a_mistake_is_one_line_and_changes_nothing(root, case, args, message):
    before = snapshot(root)
    result = run_case(root, args)
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    after = snapshot(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k, "gone") != after.get(k, "gone"))
    assert not changed, f"changed: {changed}"


# Values and names that are wrong whatever the run: refused before its checkpoint is read.
BEFORE_LOADING = {"seed", "num-samples-sample", "num-samples-likelihood", "batch-size", "steps", "order", "eta", "snr",
                  "rtol-sample", "rtol-likelihood", "accuracy", "repeats", "divergence", "bound", "bound-options"}


@pytest.mark.parametrize("case, args, message", [pytest.param(*c, id=c[0]) for c in CASES if c[0] in BEFORE_LOADING])
def test_a_bad_option_is_refused_before_the_checkpoint_is_read(root, monkeypatch, case, args, message):
    monkeypatch.setattr(ckpt, "load_checkpoint", lambda *a, **k: pytest.fail("read the checkpoint first"))
    result = run_case(root, args)
    assert result.returncode == 1 and message in result.stderr
