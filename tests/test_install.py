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


# The new venv's link to the test environment's packages: ours, not the install's.
LINK = "test-environment.pth"
# A user's shell: a PYTHONPATH that points at this checkout (as a test run may set) would decide the imports.
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _venv(tmp_path: Path) -> tuple[Path, Path]:
    """(python, site-packages) of a fresh venv that sees the test environment's packages (torch, pip, setuptools,
    ...) except scoresde."""
    venv = tmp_path / "venv"
    # --system-site-packages would show the base interpreter's packages, not those of a test environment that is
    # itself a venv; and a pip of its own would come with ensurepip's setuptools, which may not build wheels.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    shared = tmp_path / "test-environment"
    shared.mkdir()
    paths = sysconfig.get_paths()
    for folder in {paths["purelib"], paths["platlib"]}:
        for entry in Path(folder).iterdir():
            # Not the test environment's own install of the project: pip would count it as installed in the venv.
            if "scoresde" not in entry.name.lower() and not (shared / entry.name).exists():
                (shared / entry.name).symlink_to(entry)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True, env=USER_ENV).stdout.strip())
    (site / LINK).write_text(f"{shared}\n")
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
    # The build runs without isolation (no package index needed): setuptools >= 70.1 builds wheels by itself.
    if importlib.util.find_spec("setuptools") is None or (importlib.util.find_spec("setuptools.command.bdist_wheel")
                                                           is None and importlib.util.find_spec("wheel") is None):
        pytest.skip("the test environment has no setuptools that builds wheels (setuptools >= 70.1, or wheel)")
    python, site = _venv(tmp_path)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    *(["-e"] if editable else []), str(ROOT)], check=True, capture_output=True, cwd=tmp_path,
                   env=USER_ENV)
    ours = {p.name for p in site.iterdir() if "scoresde" in p.name.lower()}
    # __pycache__: the editable finder, compiled.
    others = {p.name for p in site.iterdir()} - ours - {LINK, "__pycache__"}
    assert others == set(), f"the install put generic names into site-packages: {sorted(others)}"
    assert "scoresde" in ours if not editable else any(n.endswith("finder.py") for n in ours)
    assert (python.parent / "scoresde").is_file(), "no console script 'scoresde'"

    user = _user_folder(tmp_path)
    out = subprocess.run([str(python), "-c", USER_SCRIPT], cwd=user, capture_output=True, text=True, env=USER_ENV)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "user user models user data user training user configs"
    where = Path(lines[1].split(" ", 1)[1])
    assert where.is_relative_to(ROOT if editable else site), where
    # Two components at -2 and 2 with std 0.5 (at t = 0): E|x| = 2 up to 2e-3, the samples' mean |x| to
    # about 0.5/sqrt(512) = 0.02.
    assert abs(float(lines[2].split()[-1]) - 2.0) < 0.1, lines[2]

    cli = subprocess.run([str(python.parent / "scoresde"), "--help"], cwd=user, capture_output=True, text=True,
                         env=USER_ENV)
    assert cli.returncode == 0 and "--mode MODE" in cli.stdout, cli.stderr
