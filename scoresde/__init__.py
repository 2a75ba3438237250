"""scoresde: continuous-time score-based generative models, SDEs defined by their marginals.

The everyday API, loaded on first use so that `import scoresde` stays cheap:

    run = scoresde.load_run("runs/vpsde")                  # config, sde, score_fn, network, data of a trained run
    x = scoresde.sample(run.sde, run.score_fn, (64, *run.data.shape), "heun", steps=20).x
"""
import importlib
import os

# In a source checkout the subpackages are folders beside this one (setuptools' package_dir maps them to
# scoresde.<name> when installing); there, the checkout is searched too, so it runs without being installed.
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if (os.path.isfile(os.path.join(_checkout, "setup.cfg"))
        and os.path.isfile(os.path.join(_checkout, "sde_lib", "__init__.py"))):
    __path__.append(_checkout)

__version__ = "0.1.0"

SUBPACKAGES = ("utils", "sde_lib", "models", "solvers", "likelihood", "metrics", "data", "guidance", "configs", "run",
               "training", "interop", "commands")
FUNCTIONS = {"load_run": "run", "Run": "run", "draw_samples": "run", "train": "training", "Trainer": "training",
             "get_sde": "sde_lib", "GaussianMixture": "sde_lib", "sample": "solvers", "sampler": "solvers",
             "load_config": "configs", "UsageError": "utils"}

__all__ = [*SUBPACKAGES, *FUNCTIONS, "__version__"]


def __getattr__(name: str):
    if name in SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.{FUNCTIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
