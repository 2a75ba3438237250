"""The installed project is the one package `scoresde` (plus its console script): a user's own modules named like
our subpackages (models.py, data/, training.py, configs/) stay the user's, and the library still imports and samples.
"""
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from helpers import ROOT

USER_SCRIPT = """
import models, data, training, configs
import scoresde
from scoresde import sde_lib, solvers
sde = sde_lib.VPSDE()
gmm = sde_lib.GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [[[0.25]], [[0.25]]])
x = solvers.sample(sde, gmm.score_fn(sde), (512, 1), "heun", steps=40,
                   generator=__import__("torch").Generator().manual_seed(0)).x
print("user", models.WHO, data.WHO, training.WHO, configs.WHO)
print("scoresde", scoresde.__file__)
print("mean |x|", round(float(x.abs().mean()), 2))
"""


# A PYTHONPATH pointing at a checkout would import the checkout instead of what was installed.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _venv(tmp_path: Path) -> tuple[Path, Path]:
    """A new venv that sees the test environment's packages (torch, ...) after its own, through a .pth path line
    (the paths only: that environment's own install of this project, a .pth finder, is not loaded)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "test-environment.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return python, site


def _user_folder(tmp_path: Path) -> Path:
    user = tmp_path / "project"
    for name in ("data", "configs"):
        (user / name).mkdir(parents=True)
        (user / name / "__init__.py").write_text(f"WHO = 'user {name}'\n")
    for name in ("models", "training"):
        (user / f"{name}.py").write_text(f"WHO = 'user {name}'\n")
    return user


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_install_is_one_namespace(tmp_path, editable):
    python, site = _venv(tmp_path)
    # Without setuptools and wheel at hand, pip fetches them for the build from the package index.
    have = importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel")
    isolation = ["--no-build-isolation"] if have else []
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *isolation,
                           *(["-e"] if editable else []), str(ROOT)], capture_output=True, text=True, cwd=tmp_path,
                          env=CLEAN_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = {p.name for p in site.iterdir() if "scoresde" in p.name.lower()}
    others = {p.name for p in site.iterdir()} - ours - {"__pycache__", "_distutils_hack", "distutils-precedence.pth",
                                                        "test-environment.pth"}
    others = {n for n in others if not n.startswith(("pip", "setuptools", "pkg_resources", "_virtualenv"))}
    assert others == set(), f"the install put generic names into site-packages: {sorted(others)}"
    assert "scoresde" in ours if not editable else any(n.endswith("finder.py") for n in ours)
    assert (python.parent / "scoresde").is_file(), "no console script 'scoresde'"

    user = _user_folder(tmp_path)
    out = subprocess.run([str(python), "-c", USER_SCRIPT], cwd=user, capture_output=True, text=True, env=CLEAN_ENV)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "user user models user data user training user configs"
    where = Path(lines[1].split(" ", 1)[1])
    assert where.is_relative_to(ROOT if editable else site), where
    # Two components at -2 and 2 with std 0.5 (at t = 0): E|x| = 2 up to 2e-3, the samples' mean |x| to
    # about 0.5/sqrt(512) = 0.02.
    assert abs(float(lines[2].split()[-1]) - 2.0) < 0.1, lines[2]

    cli = subprocess.run([str(python.parent / "scoresde"), "--help"], cwd=user, capture_output=True, text=True,
                         env=CLEAN_ENV)
    assert cli.returncode == 0 and "--mode MODE" in cli.stdout, cli.stderr
