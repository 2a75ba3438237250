"""The default samplers against diffusers' and k-diffusion's, at equal NFE, on the Quickstart's digits model.

python benchmarks/defaults.py [--workdir runs/vpsde] [--n 2000] [--n_ref 512] [--sweep]

Every sampler starts from the same prior noise (sample i from (seed, i), as --mode fid draws it) and is scored two
ways: the pathwise RMSE (model space) of its first --n_ref samples to the converged probability-flow ODE from the
same noise (rk45 at rtol = atol = 1e-7, cached in --cache), and FD-digits2 / KID-digits2 of all --n samples against
the training digits. Peers run on the same network:

- diffusers' UniPCMultistepScheduler and DPMSolverMultistepScheduler with their default configuration (linear betas
  1e-4..0.02 over 1000 steps, "linspace" timesteps, order 2, final step to sigma = 0). The scheduler asks for the
  noise prediction at discrete timestep n; it is -beta_bar(t) score(x, t) at the t where the continuous VP-SDE has
  the scheduler's log-SNR log(alphas_cumprod[n]/(1 - alphas_cumprod[n]))/2, so that the network sees exactly the
  noise level the scheduler assumes (for VP with beta in [0.1, 20] within 0.4 % of t = (n + 1)/1000 for n >= 99, 8 %
  off at n = 0; n = 999 maps to 1.0034, clamped to T).
- k-diffusion's sample_dpmpp_2m, sample_euler and sample_heun on get_sigmas_karras (rho = 7, sigma_min and
  sigma_max = beta_bar/alpha_bar at eps and T, then sigma = 0), with the denoiser D(x_hat, sigma) = E[x_0 | x_t] of
  the score at x_t = alpha_bar x_hat. Skipped, with a line saying so, when k-diffusion is not installed.

Heun-type samplers take 2 NFE a step but 1 on their last (Euler) step, so at an even NFE budget they get one NFE
less: the NFE column is what each sampler actually spent. --sweep instead prints the RMSE to the ODE of every
fixed-step ODE solver of this project on every grid (orders 2 and 3 for the multistep ones): the measurement behind
solvers.default_grid (in parentheses: the NFE where it differs from the budget).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from scoresde import metrics, solvers
from scoresde import run as runs
from scoresde.utils import atomic_write

NFES = (5, 8, 10, 20)
SWEEP_NFES = (5, 8, 9, 10, 12, 15, 20)
OURS = ("euler", "heun", "ddim", "dpm_solver", "unipc")
# edm (EDM's sampler, at s_churn = 0 Heun in sigma on x/alpha_bar) is swept but has no row in the table: on this
# model its few-step paths diverge on every grid (RMSE 1.0-22 at 5 NFE) and it stays at 0.074 at 19 NFE.
SWEPT = (*OURS, "edm")
MULTISTEP = ("dpm_solver", "unipc")
TWO_PER_STEP = ("heun", "edm")


def steps_for(solver: str, nfe: int) -> int:
    """The most steps whose NFE is at most `nfe` (Heun's last step is one Euler evaluation)."""
    return (nfe + 1) // 2 if solver in TWO_PER_STEP else nfe


def prior(sde, shape, n: int, seed: int) -> torch.Tensor:
    return solvers.SampleGenerators(seed, range(n)).randn((n, *shape)) * sde.prior_std


def reference(run, x_T: torch.Tensor, eps: float, cache: Path, batch: int) -> torch.Tensor:
    """The converged ODE from x_T (rk45, rtol = atol = 1e-7), computed once per noise and cached."""
    if cache.is_file():
        ref = torch.load(cache)
        if torch.equal(ref["x_T"], x_T) and ref["eps"] == eps:
            return ref["x"]
    t0 = time.perf_counter()
    xs = [solvers.sample(run.sde, run.score_fn, None, "rk45", x_T=x_T[i:i + batch], eps=eps, rtol=1e-7,
                         atol=1e-7).x for i in range(0, len(x_T), batch)]
    x = torch.cat(xs)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, lambda tmp: torch.save({"x_T": x_T, "eps": eps, "x": x}, tmp))
    print(f"reference: rk45 at 1e-7 on {len(x_T)} paths in {time.perf_counter() - t0:.0f} s, cached in {cache}")
    return x


def batched(fn, x_T: torch.Tensor, batch: int) -> tuple[torch.Tensor, int]:
    """fn(x_T chunk) -> (x, nfe) over chunks; the NFE of one chunk (every chunk takes the same steps)."""
    outs = [fn(x_T[i:i + batch]) for i in range(0, len(x_T), batch)]
    return torch.cat([o[0] for o in outs]), outs[0][1]


def ours(run, solver: str, nfe: int, eps: float, **options):
    steps = steps_for(solver, nfe)
    # edm is the stochastic sampler; with s_churn = 0 (its default) it is Heun on the ODE and needs no noise.
    generator = torch.Generator().manual_seed(0) if solver == "edm" else None
    return lambda x_T: solvers.sample(run.sde, run.score_fn, None, solver, steps=steps, x_T=x_T, eps=eps,
                                      generator=generator, **options)


def diffusers_sampler(run, scheduler_cls, nfe: int, eps: float):
    sde = run.sde

    def sample(x_T):
        scheduler = scheduler_cls()
        scheduler.set_timesteps(nfe)
        ac = scheduler.alphas_cumprod.double()
        t_of = sde.t_of_log_snr(0.5 * torch.log(ac / (1 - ac))).clamp(eps, sde.T)
        x, count = x_T * scheduler.init_noise_sigma, 0
        for n in scheduler.timesteps:
            t = t_of[int(n)]
            eps_hat = -sde.beta_bar(t) * run.score_fn(x, t.float().expand(len(x)))
            count += 1
            x = scheduler.step(eps_hat.float(), n, x).prev_sample
        return x, count
    return sample


def k_sampling():
    """k_diffusion.sampling, or None. Its package __init__ imports the training stack (torchvision, skimage, ...),
    which sampling.py does not need: only k_diffusion.utils.append_dims, so utils is given just that."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        return None
    try:
        import k_diffusion.sampling as sampling
        return sampling
    except ImportError:
        pass
    folder = Path(spec.submodule_search_locations[0])
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(folder)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    package.utils = utils
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    sampling_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", folder / "sampling.py")
    sampling = importlib.util.module_from_spec(sampling_spec)
    sys.modules["k_diffusion.sampling"] = sampling
    sampling_spec.loader.exec_module(sampling)
    return sampling


def k_sampler(run, sampling, name: str, nfe: int, eps: float):
    sde = run.sde
    steps = steps_for("heun", nfe) if name == "heun" else nfe
    sigma_min, sigma_max = (float(torch.exp(-sde.log_snr(torch.tensor(t, dtype=torch.float64)))) for t in (eps, sde.T))
    sigmas = sampling.get_sigmas_karras(steps, sigma_min, sigma_max)
    a_T, a_eps = (sde.alpha_bar(torch.tensor(t, dtype=torch.float64)) for t in (sde.T, eps))

    def sample(x_T):
        count = 0

        def denoiser(x_hat, sigma):
            nonlocal count
            count += 1
            t = sde.t_of_log_snr(-torch.log(sigma.double())).clamp(eps, sde.T)
            x = (sde.alpha_bar(t)[:, None, None, None] * x_hat).float()
            return sde.denoise(x, run.score_fn(x, t.float()), t[:, None, None, None]).float()

        x_hat = getattr(sampling, f"sample_{name}")(denoiser, (x_T / a_T).float(), sigmas, disable=True)
        # The last step lands on sigma = 0; alpha_bar(eps) x_hat is x at eps, where the reference ends (1 - 3e-5).
        return (a_eps * x_hat).float(), count
    return sample


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/vpsde")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--n", type=int, default=2000, help="samples per row for FD-digits2 and KID-digits2")
    p.add_argument("--n_ref", type=int, default=512, help="paths (the first of the --n) for the RMSE to the ODE")
    p.add_argument("--nfe", default=None, help="NFE budgets, comma-separated (default 5,8,10,20; sweep: "
                                               "5,8,9,10,12,15,20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--cache", default="runs/bench", help="folder for the cached reference ODE solutions")
    p.add_argument("--sweep", action="store_true", help="RMSE of every solver of ours on every grid instead")
    a = p.parse_args()
    start_all = time.perf_counter()
    torch.set_grad_enabled(False)
    run = runs.load_run(a.workdir, a.checkpoint, "cpu")
    eps = float(run.config.sampling.eps)
    nfes = [int(v) for v in (a.nfe or ",".join(map(str, SWEEP_NFES if a.sweep else NFES))).split(",")]
    n = a.n_ref if a.sweep else a.n
    x_T = prior(run.sde, run.data.shape, max(n, a.n_ref), a.seed)
    ref = reference(run, x_T[:a.n_ref], eps, Path(a.cache) / f"ode_reference_{a.seed}_{a.n_ref}.pt", a.batch)
    print(f"checkpoint {run.path} (step {run.step}); torch {torch.__version__}, diffusers {version('diffusers')}, "
          f"k-diffusion {version('k-diffusion')}\n")

    def rmse(x):
        return float((x[:a.n_ref].double() - ref.double()).square().mean().sqrt())

    if a.sweep:
        lines = ["| solver | grid | order | " + " | ".join(f"{v} NFE" for v in nfes) + " |",
                 "|---|---|---|" + "---|" * len(nfes)]
        for solver in SWEPT:
            for grid in solvers.GRIDS:
                for order in (2, 3) if solver in MULTISTEP else (None,):
                    options = {"grid": grid} if order is None else {"grid": grid, "order": order}
                    cells = []
                    for nfe in nfes:
                        x, used = batched(ours(run, solver, nfe, eps, **options), x_T, a.batch)
                        cells.append(f"{rmse(x):.3f}" + (f" ({used})" if used != nfe else ""))
                    lines.append(f"| {solver} | {grid} | {order or ''} | " + " | ".join(cells) + " |")
                    print(lines[-1], flush=True)
        print("\n" + "\n".join(lines))
        print(f"\ntotal {time.perf_counter() - start_all:.0f} s")
        return

    import diffusers
    rows = [(f"scoresde {name}", version("scoresde"), "default", lambda nfe, name=name: ours(run, name, nfe, eps))
            for name in OURS]
    for cls in (diffusers.UniPCMultistepScheduler, diffusers.DPMSolverMultistepScheduler):
        rows.append((f"diffusers {cls.__name__}", diffusers.__version__, "linspace t",
                     lambda nfe, cls=cls: diffusers_sampler(run, cls, nfe, eps)))
    sampling = k_sampling()
    if sampling is None:
        print("k-diffusion is not installed (pip install --no-deps k-diffusion): its rows are skipped\n")
    else:
        for name in ("dpmpp_2m", "euler", "heun"):
            rows.append((f"k-diffusion sample_{name}", version("k-diffusion"), "karras rho 7",
                         lambda nfe, name=name: k_sampler(run, sampling, name, nfe, eps)))
    lines = ["| method | version | grid | NFE | RMSE to ODE | FD-digits2 | KID-digits2 ×10³ |",
             "|---|---|---|---|---|---|---|"]
    for nfe in nfes:
        for method, ver, grid, make in rows:
            x, used = batched(make(nfe), x_T, a.batch)
            result = metrics.evaluate(run.data.inverse_scaler(x.float()), "digits", 8, 1)
            if method.startswith("scoresde"):
                name = method.split()[1]
                grid = solvers.default_grid(name, steps_for(name, nfe))
            lines.append(f"| {method} | {ver} | {grid} | {used} | {rmse(x):.3f} | {result.fd_digits2:.4f} | "
                         f"{1e3 * result.kid_digits2:.2f} |")
            print(lines[-1], flush=True)
    # The FD's own sampling noise: disjoint sets of --n samples from fresh seeds, one good sampler.
    sets = []
    for k in range(2):
        noise = prior(run.sde, run.data.shape, a.n, a.seed + 1 + k)
        x, _ = batched(ours(run, "unipc", 20, eps), noise, a.batch)
        sets.append(metrics.evaluate(run.data.inverse_scaler(x.float()), "digits", 8, 1).fd_digits2)
    print("\n" + "\n".join(lines))
    print(f"\nFD-digits2 noise floor: {np.std(sets, ddof=1):.4f} (sd over {len(sets)} disjoint sets of {a.n} "
          f"unipc-20 samples on fresh seeds: {', '.join(f'{v:.4f}' for v in sets)})")
    print(f"\ntotal {time.perf_counter() - start_all:.0f} s")


if __name__ == "__main__":
    main()
