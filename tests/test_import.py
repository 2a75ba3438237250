"""score_sde_pytorch checkpoints: their key/shape table, outputs against their forward pass, mismatches, import_run.

The checkpoints are written here in score_sde's file format from tests/score_sde_reference.py, an independent
reconstruction of their NCSNpp; the released CIFAR-10 files themselves are not downloaded.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from scoresde import run as runs
from scoresde import configs
from scoresde import interop
from scoresde import likelihood
from scoresde import models
import score_sde_reference as ref
from scoresde import solvers
from scoresde.interop.score_sde import _Layout
from scoresde.run.builders import build_model
from scoresde.run.checkpoint import CheckpointError
from scoresde.commands.importing import import_run

SMALL = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8, channels=1)
KINDS = {"score_sde_vp_ddpmpp_cont": ref.DDPMPP, "score_sde_subvp_ddpmpp_cont": ref.DDPMPP,
         "score_sde_ve_ncsnpp_cont": ref.NCSNPP}
# Float32 round-off through ~25 layers: measured 6e-7 (DDPM++) and 3e-6 to 2.1e-5 (NCSN++, whose log sigma and sigma
# are computed in float64 here and in float32 there, then multiplied by Fourier frequencies up to 2 pi 16; the
# figure depends on the CPU's kernels); the wrong embedding or a missing transpose is 1e-2 or more.
RTOL = 1e-4


def small_config(name, num_res_blocks=1):
    """The released config with the small network on the bundled 8x8 digits (any size must import)."""
    config = configs.load_config(name)
    m = config.model
    m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 16, (1, 2), num_res_blocks, (4,)
    config.data.dataset = "digits"
    config.data.path = ""
    config.data.image_size, config.data.num_channels = 8, 1
    return config


def small_arch(name, num_res_blocks=1):
    return {**KINDS[name], **SMALL, "num_res_blocks": num_res_blocks}


def their_score(state, arch, sde, x, t, use_ema=True):
    """Their get_score_fn: VP/sub-VP -F(x, 999 t)/std(t); VE F(x, sigma(t)) (the network divides by sigma)."""
    std = sde.beta_bar(t)
    if arch["fourier"]:
        return ref.forward(state, arch, x, std.float(), use_ema)
    return -ref.forward(state, arch, x, (999 * t).float(), use_ema) / std.float()[:, None, None, None]


def rel_err(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("name, count", [("score_sde_ddpmpp_cont", 61_804_419), ("score_sde_ncsnpp_cont", 62_758_915)])
def test_key_shape_tables_have_the_published_parameter_counts(name, count):
    rows = json.loads((ref.FIXTURES / f"{name}.json").read_text())
    assert rows[0][0] == "module.sigmas"
    assert sum(math.prod(shape) for key, shape in rows[1:]) == count
    arch = ref.DDPMPP if "ddpmpp" in name else ref.NCSNPP
    assert rows == [[f"module.{k}", list(s)] for k, s in ref.table(arch)]
    if "ddpmpp" in name:
        assert len(rows) == 565                     # 564 parameters and the buffer sigmas


@pytest.mark.parametrize("config_name, table", [("score_sde_vp_ddpmpp_cont", "score_sde_ddpmpp_cont"),
                                                ("score_sde_ve_ncsnpp_cont", "score_sde_ncsnpp_cont")])
def test_full_size_config_expects_exactly_their_tensors(config_name, table):
    rows = json.loads((ref.FIXTURES / f"{table}.json").read_text())[1:]
    network = build_model(configs.load_config(config_name), (3, 32, 32))
    layout = _Layout(network)
    assert [(k, list(s)) for k, s, _ in layout.params] == [(k.removeprefix("module."), s) for k, s in rows]
    # Ours holds the same numbers: parameters, plus the fixed Fourier W as a buffer.
    ours = sum(p.numel() for p in network.parameters()) + sum(
        b.numel() for k, b in network.state_dict().items() if k == "noise_embed.0.W")
    assert ours == sum(math.prod(s) for _, s in rows)


@pytest.mark.parametrize("name", list(KINDS))
def test_imported_score_is_their_score(name):
    arch = small_arch(name)
    state = ref.random_checkpoint(arch)
    imported = interop.import_score_sde(state, small_config(name))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 8, 8, generator=gen) if not arch["centered"] else torch.randn(4, 1, 8, 8, generator=gen)
    t = torch.tensor([1e-3, 0.3, 0.7, 1.0], dtype=torch.float64)
    score = imported.score_fn(x, t)
    assert rel_err(score, their_score(state, arch, imported.sde, x, t)) < RTOL
    # The EMA weights, not the model's (which differ from them by ~5 % per tensor).
    assert rel_err(score, their_score(state, arch, imported.sde, x, t, use_ema=False)) > 1e-2
    assert imported.step == 1234


def test_attention_is_their_nin_einsum():
    name = "score_sde_vp_ddpmpp_cont"
    arch = small_arch(name)
    state = ref.random_checkpoint(arch)
    net = interop.import_score_sde(state, small_config(name)).network
    # Module 4 of all_modules is the attention after the first residual block at 4x4 pixels (level 1); ours is down.3.
    kinds = [kind for kind, _ in ref.modules(arch)]
    assert kinds[:6] == ["dense", "dense", "conv", "res", "res_down", "res"] and kinds[6] == "attn"
    ema = dict(zip([k for k in state["model"] if k != "module.sigmas"], state["ema"]["shadow_params"]))
    prefix = "module.all_modules.6."
    params = {k.removeprefix(prefix): v for k, v in ema.items() if k.startswith(prefix)}
    x = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(2))
    assert rel_err(net.down[3](x), ref.attention(params, x)) < 1e-6
    # Without the transpose every tensor would still load; the output is far off.
    wrong = {**params, **{f"NIN_{j}.W": params[f"NIN_{j}.W"].T for j in range(4)}}
    assert rel_err(net.down[3](x), ref.attention(wrong, x)) > 0.1


def test_positional_embedding_is_their_formula_and_ours_is_not():
    name = "score_sde_vp_ddpmpp_cont"
    net = interop.import_score_sde(ref.random_checkpoint(small_arch(name)), small_config(name)).network
    t = torch.tensor([0.0, 1e-3, 0.25, 0.5, 1.0], dtype=torch.float64)
    half = 8
    k = torch.arange(half, dtype=torch.float64)
    arg = 999 * t[:, None] * 10000 ** (-k / (half - 1))
    want = torch.cat([torch.sin(arg), torch.cos(arg)], 1)
    # float32 arguments up to 999 rad: an absolute phase error of ~1e-4 at most.
    assert float((net.noise_embed[0](t.float()).double() - want).abs().max()) < 2e-4
    ours = models.SinusoidalEmbedding(16)          # this project's: 1000 t, 10000^(-k/half)
    assert float((ours(t.float()).double() - want).abs().max()) > 0.1


def test_the_wrong_embedding_gives_a_wrong_score():
    name = "score_sde_vp_ddpmpp_cont"
    arch = small_arch(name)
    state = ref.random_checkpoint(arch)
    imported = interop.import_score_sde(state, small_config(name))
    config = small_config(name)
    config.model.embedding_type = "sinusoidal"
    with pytest.raises(interop.ImportMismatchError, match="positional"):
        interop.import_score_sde(state, config)
    # Loaded anyway (every tensor fits), this project's own embedding moves the score by more than 1 %.
    wrong = build_model(config, (1, 8, 8))
    wrong.load_state_dict(imported.network.state_dict(), strict=True)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0.05, 0.3, 0.6, 0.9], dtype=torch.float64)
    score = imported.score_fn(x, t)
    wrong_score = -wrong(x, t.float()) / imported.sde.beta_bar(t).float()[:, None, None, None]
    assert rel_err(wrong_score, score) > 1e-2


def test_a_deeper_file_is_refused_naming_both_networks():
    state = ref.random_checkpoint(small_arch("score_sde_vp_ddpmpp_cont", num_res_blocks=2))
    with pytest.raises(interop.ImportMismatchError) as e:
        interop.import_score_sde(state, small_config("score_sde_vp_ddpmpp_cont"))
    message = str(e.value)
    n_file = len(ref.modules(small_arch("score_sde_vp_ddpmpp_cont", 2)))
    n_cfg = len(ref.modules(small_arch("score_sde_vp_ddpmpp_cont", 1)))
    assert f"{n_file} modules" in message and f"{n_cfg} modules" in message and "_deep" in message


def test_a_ve_file_under_a_vp_config_is_refused():
    state = ref.random_checkpoint(small_arch("score_sde_ve_ncsnpp_cont"))
    with pytest.raises(interop.ImportMismatchError, match=r"holds a NCSN\+\+ \(Fourier features\).*builds a DDPM\+\+"):
        interop.import_score_sde(state, small_config("score_sde_vp_ddpmpp_cont"))
    with pytest.raises(CheckpointError, match="not a score_sde_pytorch checkpoint"):
        interop.import_score_sde({"model": {}}, small_config("score_sde_vp_ddpmpp_cont"))


@pytest.mark.parametrize("name, solver", [("score_sde_vp_ddpmpp_cont", "euler_maruyama"),
                                          ("score_sde_ve_ncsnpp_cont", "pc")])
def test_import_run_then_load_run_samples_and_likelihood(tmp_path, name, solver):
    arch = small_arch(name)
    state = ref.random_checkpoint(arch)
    file = tmp_path / "checkpoint_8.pth"
    torch.save(state, file)
    path = import_run("score_sde", small_config(name), file, tmp_path / "run")
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"step", "model", "ema", "optimizer", "rng", "config"} and saved["step"] == 1234
    run = runs.load_run(tmp_path / "run")
    x = torch.rand(3, 1, 8, 8) if not arch["centered"] else torch.randn(3, 1, 8, 8)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert rel_err(run.score_fn(x, t), their_score(state, arch, run.sde, x, t)) < RTOL
    out = solvers.sample(run.sde, run.score_fn, (3, 1, 8, 8), solver, steps=4,
                         generator=torch.Generator().manual_seed(0))
    assert out.nfe == (8 if solver == "pc" else 4) and torch.isfinite(out.x).all()
    result = likelihood.log_likelihood(run.sde, run.score_fn, x[:1], rtol=1e-2, atol=1e-2,
                                       generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(result.logp).all() and result.nfe > 0
    with pytest.raises(ValueError, match="already holds"):
        import_run("score_sde", small_config(name), file, tmp_path / "run")
