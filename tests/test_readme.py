"""Every `python main.py ...` command and Python snippet of the README, run as written on a tiny run.

A command or snippet line that needs a download (a released checkpoint, CIFAR-10 training) is left out by
NEEDS_DOWNLOAD; everything else runs in a fresh folder where the files the README takes for granted (my_data.npz,
photos/, ddpm-cifar10-32/, /datasets, obs.npz, mask.npy) are made tiny, and where the commands' own costs are cut by
flags appended per mode (COST). A README change that breaks a command or a snippet fails here.
"""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT, cli

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text()
# The released score_sde checkpoints and full-size CIFAR-10 training cannot be had offline (or in a minute).
NEEDS_DOWNLOAD = ("checkpoint_8.pth", "runs/sde_vp", "--config cifar10_")
# Appended to a command of each mode (a later flag wins): a 4-step, 8-channel network, few samples and test points.
TINY_TRAINING = ["--config.training.n_iters=4", "--config.training.snapshot_freq=4", "--config.training.log_freq=2",
                 "--config.training.eval_freq=4", "--config.training.snapshot_samples=4",
                 "--config.training.batch_size=16", "--config.training.progress=False", "--config.model.nf=8",
                 "--config.model.ch_mult=(1,)"]
# The classifier's network is configured, not read from its checkpoint: the same tiny one in every mode.
TINY_CLASSIFIER = ["--config.classifier.nf=8", "--config.classifier.ch_mult=(1,)", "--config.classifier.n_iters=4",
                   "--config.classifier.batch_size=16"]
COST = {"train": TINY_TRAINING, "train_classifier": TINY_TRAINING,
        "sample": ["--num_samples=16"], "fid": ["--num_samples=16"],
        "likelihood": ["--num_samples=2", "--config.eval.steps=12", "--config.eval.accuracy=0"],
        "inpaint": ["--steps=4", "--resample=2"], "calibrate": ["--config.sampling.calibration_iterations=2"],
        "distill": ["--config.distill.start_steps=8", "--config.distill.iterations=2", "--config.distill.warmup=1",
                    "--config.distill.reflow.pairs=32", "--config.distill.reflow.shard_size=16",
                    "--config.distill.reflow.solver=euler", "--config.distill.reflow.steps=2",
                    "--config.distill.reflow.options=", "--config.distill.reflow.one_step_iterations=2",
                    "--config.training.batch_size=16"]}


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.M | re.S)


def commands() -> list[list[str]]:
    """The arguments of every `python main.py` command in the README's bash blocks, in order."""
    found = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for command in line.split("&&"):
                words = shlex.split(command, comments=True)
                if words[:2] == ["python", "main.py"] and "MODE" not in words:
                    found.append(words[2:])
    return found


def mode_of(args: list[str]) -> str:
    for i, arg in enumerate(args):
        if arg.startswith("--mode="):
            return arg.split("=", 1)[1]
        if arg == "--mode":
            return args[i + 1]
    return "train"


def make_inputs(folder: Path) -> None:
    """The files the README's commands and snippets expect to exist, tiny."""
    rng = np.random.default_rng(0)
    np.savez(folder / "my_data.npz", x=rng.normal(size=(200, 2)).astype(np.float32))
    for k in range(20):     # a tenth is the test split; a training batch of 16 needs the other 18
        (folder / "photos" / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8))
        image.save(folder / "photos" / f"c{k % 2}" / f"{k}.png")
    np.savez(folder / "obs.npz", x=rng.uniform(size=(2, 1, 8, 8)).astype(np.float32))
    mask = np.ones((1, 8, 8), np.float32)
    mask[:, 2:6, 2:6] = 0
    np.save(folder / "mask.npy", mask)
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2)
    unet.save_pretrained(folder / "ddpm-cifar10-32" / "unet")
    diffusers.DDPMScheduler().save_pretrained(folder / "ddpm-cifar10-32" / "scheduler")
    from test_import_diffusers import fake_cifar10
    fake_cifar10(folder / "datasets")


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    make_inputs(folder)
    return folder


def test_the_readme_commands_run_as_written(readme_folder, monkeypatch):
    monkeypatch.chdir(readme_folder)
    ran = []
    for args in commands():
        if any(marker in " ".join(args) for marker in NEEDS_DOWNLOAD):
            continue
        if "--help" in args:
            assert cli(*args).stdout.startswith("usage: python main.py --mode MODE")
            continue
        if "--samples" in args:     # "score existing samples": the Quickstart's, under the README's name
            (readme_folder / "samples").mkdir(exist_ok=True)
            shutil.copy(next((readme_folder / "runs/vpsde/samples").glob("*.npz")), readme_folder / "samples/x.npz")
        args = [a.replace("=/datasets", f"={readme_folder / 'datasets'}") for a in args]
        result = cli(*args, *COST.get(mode_of(args), []), *TINY_CLASSIFIER, check=False)
        assert result.returncode == 0, f"python main.py {' '.join(args)}:\n{result.stderr}"
        ran.append(mode_of(args))
    # Every mode the README shows ran: a change in how commands are found cannot make this test vacuous.
    assert set(ran) == {"train", "sample", "likelihood", "fid", "distill", "import", "train_classifier", "inpaint"}
    assert (readme_folder / "runs/vpsde/likelihood.json").is_file()
    assert (readme_folder / "runs/ddpm/config.json").is_file()


def gaussian_score(x, t):
    """The exact score of N(0, 0.25 I) data under sde_lib.VPSDE(), the SDE of the snippets: x_t ~ N(0, a^2/4 + b^2)."""
    from scoresde import sde_lib

    t = torch.as_tensor(t, dtype=torch.float64)
    sde = sde_lib.VPSDE()
    var = (sde.alpha_bar(t) ** 2 / 4 + sde.beta_bar(t) ** 2).to(x.dtype)
    return -x / (var.reshape(-1, *[1] * (x.dim() - 1)) if var.dim() else var)


class Classifier(torch.nn.Module):
    """Logits of 10 classes of 8x8 digits at time t: a linear map of the pixels and t."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(65, 10)

    def forward(self, x, t):
        return self.linear(torch.cat([x.flatten(1), t.reshape(-1, 1).expand(len(x), 1)], 1))


def snippet_lines(block: str) -> str:
    """The block without the statements that need a download (each such README line is a whole statement)."""
    return "\n".join(line for line in block.splitlines() if not any(m in line for m in NEEDS_DOWNLOAD))


def test_the_readme_python_snippets_run_in_order(readme_folder, monkeypatch, tmp_path):
    # Only the Quickstart's run (trained as the commands above do) and the diffusers folder come from outside.
    if not (readme_folder / "runs/vpsde/checkpoints").is_dir():
        assert cli("--mode", "train", "--config", "vpsde", "--workdir", readme_folder / "runs/vpsde",
                   *TINY_TRAINING).returncode == 0
    shutil.copytree(readme_folder / "runs/vpsde", tmp_path / "runs/vpsde")
    shutil.copytree(readme_folder / "ddpm-cifar10-32", tmp_path / "ddpm-cifar10-32")
    monkeypatch.chdir(tmp_path)
    # What the snippets leave to the reader: data points x0 at times t with noise z and a score value, a log-SNR, a
    # batch shape, a score function (an exact
    # one, so that every call is cheap), prior noise, a noise-conditional classifier and
    # observations with a mask.
    namespace = {
        "x0": torch.randn(16, 2), "t": torch.full((16,), 0.5), "lam": torch.tensor(0.0), "shape": (64, 2),
        "score_fn": gaussian_score, "uncond_score": gaussian_score, "z": torch.randn(16, 2),
        "score": torch.randn(16, 2),
        "classifier": Classifier(), "x_obs": torch.randn(4, 2), "mask": torch.tensor([[1.0, 0.0]] * 4),
    }
    # The snippets' own costs, cut as COST cuts the commands': 4 training steps, 5 calibration iterations, 1 repeat.
    substitutions = {"config.training.n_iters = 500": "config.training.n_iters = 4",
                     "(256, 2), \"unipc\", steps=10,": "(256, 2), \"unipc\", steps=10, iterations=5,",
                     "pilot=16, repeats=5": "pilot=16, repeats=1"}
    for number, block in enumerate(blocks("python")):
        code = snippet_lines(block)
        for old, new in substitutions.items():
            code = code.replace(old, new)
        substitutions = {old: new for old, new in substitutions.items() if old not in block}
        try:
            exec(compile(code, f"README python block {number + 1}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"README python block {number + 1} failed: {type(e).__name__}: {e}\n{code}") from e
    assert not substitutions, f"the README no longer has {list(substitutions)}: update the substitutions"
