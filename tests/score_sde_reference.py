"""score_sde_pytorch's NCSNpp (DDPM++ / NCSN++ cont.) reconstructed from its architecture, independently of models/:
the key/shape table of its state dict, random checkpoints in its file format, and its forward pass computed
directly on its own weights (their einsum attention, their embeddings, FIR resampling by the closed-form taps).

`python tests/score_sde_reference.py` rewrites the JSON tables in tests/fixtures/.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

FIXTURES = Path(__file__).resolve().parent / "fixtures"

DDPMPP = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), image_size=32, channels=3,
              fourier=False, fir=False, progressive_input="none", centered=True, scale_by_sigma=False)
NCSNPP = dict(DDPMPP, fourier=True, fir=True, progressive_input="residual", centered=False, scale_by_sigma=True)


def _gn(c):
    return [("GroupNorm", "weight", (c,)), ("GroupNorm", "bias", (c,))]


def _named(prefix, params):
    return [(f"{prefix}.{name}", shape) for _, name, shape in params]


def _conv(cin, cout, k=3):
    return [("conv", "weight", (cout, cin, k, k)), ("conv", "bias", (cout,))]


def _dense(cin, cout):
    return [("dense", "weight", (cout, cin)), ("dense", "bias", (cout,))]


def modules(arch) -> list[tuple[str, list[tuple[str, tuple]]]]:
    """[(kind, [(param name, shape)])] of `all_modules`, in the order NCSNpp.__init__ appends them."""
    nf, cm, nrb = arch["nf"], arch["ch_mult"], arch["num_res_blocks"]
    out = []

    def res(cin, cout=None, updown=False):
        cout = cout or cin
        p = (_named("GroupNorm_0", _gn(cin)) + _named("Conv_0", _conv(cin, cout))
             + _named("Dense_0", _dense(4 * nf, cout)) + _named("GroupNorm_1", _gn(cout))
             + _named("Conv_1", _conv(cout, cout)))
        if cin != cout or updown:
            p += _named("Conv_2", _conv(cin, cout, 1))
        out.append(("res_up" if updown == "up" else "res_down" if updown == "down" else "res", p))

    def attn(c):
        p = _named("GroupNorm_0", _gn(c))
        for j in range(4):
            p += [(f"NIN_{j}.W", (c, c)), (f"NIN_{j}.b", (c,))]
        out.append(("attn", p))

    if arch["fourier"]:
        out.append(("fourier", [("W", (nf,))]))
    out.append(("dense", _named("", _dense(2 * nf if arch["fourier"] else nf, 4 * nf))))
    out.append(("dense", _named("", _dense(4 * nf, 4 * nf))))
    out.append(("conv", _named("", _conv(arch["channels"], nf))))
    hs_c, in_ch, pyramid_ch = [nf], nf, arch["channels"]
    resolutions = [arch["image_size"] // 2**i for i in range(len(cm))]
    for level in range(len(cm)):
        for _ in range(nrb):
            res(in_ch, nf * cm[level])
            in_ch = nf * cm[level]
            if resolutions[level] in arch["attn_resolutions"]:
                attn(in_ch)
            hs_c.append(in_ch)
        if level != len(cm) - 1:
            res(in_ch, updown="down")
            if arch["progressive_input"] == "residual":
                out.append(("pyramid", _named("Conv2d_0", _conv(pyramid_ch, in_ch))))
                pyramid_ch = in_ch
            hs_c.append(in_ch)
    res(in_ch)
    attn(in_ch)
    res(in_ch)
    for level in reversed(range(len(cm))):
        for _ in range(nrb + 1):
            res(in_ch + hs_c.pop(), nf * cm[level])
            in_ch = nf * cm[level]
        if resolutions[level] in arch["attn_resolutions"]:
            attn(in_ch)
        if level != 0:
            res(in_ch, updown="up")
    out.append(("gn", _named("", _gn(in_ch))))
    out.append(("conv", _named("", _conv(in_ch, arch["channels"]))))
    return [(kind, [(name.lstrip("."), shape) for name, shape in p]) for kind, p in out]


def table(arch, num_scales: int = 1000) -> list[tuple[str, tuple]]:
    """Their state dict's (key, shape) in order, without DataParallel's 'module.': the buffer first, then
    all_modules."""
    rows = [("sigmas", (num_scales,))]
    for i, (_, params) in enumerate(modules(arch)):
        rows += [(f"all_modules.{i}.{name}", shape) for name, shape in params]
    return rows


def random_checkpoint(arch, seed: int = 0, step: int = 1234) -> dict:
    """A checkpoint in score_sde's file format with random weights at realistic scale (He-like convolutions, GN
    around 1, Fourier W ~ N(0, 16^2)); the EMA is the model perturbed, so the two are told apart."""
    gen = torch.Generator().manual_seed(seed)
    model = {}
    for key, shape in table(arch):
        if key == "sigmas":
            model["module." + key] = torch.exp(torch.linspace(math.log(50), math.log(0.01), shape[0]))
        elif key.endswith(".W") and len(shape) == 1:
            model["module." + key] = torch.randn(shape, generator=gen) * 16.0
        elif "GroupNorm" in key or (len(shape) == 1 and key.endswith("weight")):
            base = 1.0 if key.endswith("weight") else 0.0
            model["module." + key] = base + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            model["module." + key] = 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = shape[0] if key.endswith(".W") else math.prod(shape[1:])
            model["module." + key] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    trainable = [k for k in model if k != "module.sigmas" and not (k.endswith(".W") and model[k].ndim == 1)]
    shadow = [model[k] * (1 + 0.05 * torch.randn(model[k].shape, generator=gen)) for k in trainable]
    optimizer = {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                                                "amsgrad": False, "params": list(range(len(trainable)))}]}
    return {"optimizer": optimizer, "model": model,
            "ema": {"decay": 0.9999, "num_updates": step, "shadow_params": shadow}, "step": step}


# --- their forward pass, on their weights ----------------------------------------------------------------------

def timestep_embedding(t, dim, max_positions=10000):
    """Their sinusoidal embedding: frequencies exp(-k log(10000)/(half - 1)), [sin, cos]."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(max_positions) / (half - 1)))
    arg = t.double()[:, None] * freqs[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], 1).float()


def _shift(x, k, dim):
    """x shifted by k along dim with zeros coming in: out[i] = x[i + k]."""
    n = x.shape[dim]
    idx = torch.arange(n) + k
    valid = (idx >= 0) & (idx < n)
    out = x.index_select(dim, idx.clamp(0, n - 1))
    shape = [1] * x.ndim
    shape[dim] = n
    return out * valid.reshape(shape).to(x)


def fir_up_1d(x, dim):
    """[1, 3, 3, 1] upsampling: out[2m] = (x[m-1] + 3 x[m])/4, out[2m+1] = (3 x[m] + x[m+1])/4."""
    even = (_shift(x, -1, dim) + 3 * x) / 4
    odd = (3 * x + _shift(x, 1, dim)) / 4
    return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)


def fir_down_1d(x, dim):
    """[1, 3, 3, 1] downsampling: out[i] = (x[2i-1] + 3 x[2i] + 3 x[2i+1] + x[2i+2])/8."""
    y = (_shift(x, -1, dim) + 3 * x + 3 * _shift(x, 1, dim) + _shift(x, 2, dim)) / 8
    return y.index_select(dim, torch.arange(0, x.shape[dim], 2))


def fir_up(x):
    return fir_up_1d(fir_up_1d(x, 2), 3)


def fir_down(x):
    return fir_down_1d(fir_down_1d(x, 2), 3)


def fir_conv_down(x, w, b):
    """Their conv_downsample_2d: pad 2, blur with [1, 3, 3, 1]/8 in each direction, 3x3 conv with stride 2."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    y = F.pad(x, (2, 2, 2, 2))
    y = sum(k[a] * y[:, :, a:a + y.shape[2] - 3, :] for a in range(4))
    y = sum(k[a] * y[:, :, :, a:a + y.shape[3] - 3] for a in range(4))
    return F.conv2d(y, w, b, stride=2)


def attention(p, x):
    """Their AttnBlockpp with skip rescaling: NIN q, k, v, einsum softmax attention, NIN output."""
    B, C, H, W = x.shape
    h = F.group_norm(x, min(C // 4, 32), p["GroupNorm_0.weight"], p["GroupNorm_0.bias"], eps=1e-6)

    def nin(j, y):
        return (torch.einsum("bchw,co->bohw", y, p[f"NIN_{j}.W"]) + p[f"NIN_{j}.b"][None, :, None, None])

    q, k, v = nin(0, h), nin(1, h), nin(2, h)
    w = torch.einsum("bchw,bcij->bhwij", q, k) * C ** (-0.5)
    w = F.softmax(w.reshape(B, H, W, H * W), -1).reshape(B, H, W, H, W)
    h = nin(3, torch.einsum("bhwij,bcij->bchw", w, v))
    return (x + h) / math.sqrt(2.0)


def resblock(p, x, temb, kind, fir):
    h = F.silu(F.group_norm(x, min(x.shape[1] // 4, 32), p["GroupNorm_0.weight"], p["GroupNorm_0.bias"], eps=1e-6))
    if kind == "res_up":
        up = fir_up if fir else (lambda y: F.interpolate(y, scale_factor=2.0, mode="nearest"))
        h, x = up(h), up(x)
    elif kind == "res_down":
        down = fir_down if fir else (lambda y: F.avg_pool2d(y, 2))
        h, x = down(h), down(x)
    h = F.conv2d(h, p["Conv_0.weight"], p["Conv_0.bias"], padding=1)
    h = h + F.linear(F.silu(temb), p["Dense_0.weight"], p["Dense_0.bias"])[:, :, None, None]
    c = h.shape[1]
    h = F.silu(F.group_norm(h, min(c // 4, 32), p["GroupNorm_1.weight"], p["GroupNorm_1.bias"], eps=1e-6))
    h = F.conv2d(h, p["Conv_1.weight"], p["Conv_1.bias"], padding=1)
    if "Conv_2.weight" in p:
        x = F.conv2d(x, p["Conv_2.weight"], p["Conv_2.bias"])
    return (x + h) / math.sqrt(2.0)


def forward(state: dict, arch, x, time_cond, use_ema: bool = True):
    """NCSNpp.forward(x, time_cond) of a checkpoint from random_checkpoint (EMA weights by default).

    time_cond is 999 t (positional) or sigma (Fourier), as their get_score_fn passes it.
    """
    keys = [k.removeprefix("module.") for k in state["model"]]
    flat = {k.removeprefix("module."): v for k, v in state["model"].items()}
    if use_ema:
        trainable = [k for k in keys if k != "sigmas" and not (k.endswith(".W") and flat[k].ndim == 1)]
        flat.update(zip(trainable, state["ema"]["shadow_params"]))
    mods = modules(arch)
    params = [{name: flat[f"all_modules.{i}.{name}"] for name, _ in p} for i, (_, p) in enumerate(mods)]
    kinds = [kind for kind, _ in mods]
    i = 0

    def take():
        nonlocal i
        i += 1
        return kinds[i - 1], params[i - 1]

    if arch["fourier"]:
        _, p = take()
        proj = torch.log(time_cond)[:, None] * p["W"][None, :] * 2 * math.pi
        temb = torch.cat([torch.sin(proj), torch.cos(proj)], 1)
    else:
        temb = timestep_embedding(time_cond, arch["nf"])
    _, p = take()
    temb = F.linear(temb, p["weight"], p["bias"])
    _, p = take()
    temb = F.linear(F.silu(temb), p["weight"], p["bias"])
    if not arch["centered"]:
        x = 2 * x - 1
    pyramid = x
    _, p = take()
    hs = [F.conv2d(x, p["weight"], p["bias"], padding=1)]
    fir = arch["fir"]
    nlev = len(arch["ch_mult"])
    for level in range(nlev):
        for _ in range(arch["num_res_blocks"]):
            kind, p = take()
            h = resblock(p, hs[-1], temb, kind, fir)
            if h.shape[-1] in arch["attn_resolutions"]:
                _, p = take()
                h = attention(p, h)
            hs.append(h)
        if level != nlev - 1:
            kind, p = take()
            h = resblock(p, hs[-1], temb, kind, fir)
            if arch["progressive_input"] == "residual":
                _, p = take()
                pyramid = fir_conv_down(pyramid, p["Conv2d_0.weight"], p["Conv2d_0.bias"])
                pyramid = (pyramid + h) / math.sqrt(2.0)
                h = pyramid
            hs.append(h)
    h = hs[-1]
    for block in ("res", "attn", "res"):
        kind, p = take()
        h = attention(p, h) if block == "attn" else resblock(p, h, temb, kind, fir)
    for level in reversed(range(nlev)):
        for _ in range(arch["num_res_blocks"] + 1):
            kind, p = take()
            h = resblock(p, torch.cat([h, hs.pop()], 1), temb, kind, fir)
        if h.shape[-1] in arch["attn_resolutions"]:
            _, p = take()
            h = attention(p, h)
        if level != 0:
            kind, p = take()
            h = resblock(p, h, temb, kind, fir)
    _, p = take()
    h = F.silu(F.group_norm(h, min(h.shape[1] // 4, 32), p["weight"], p["bias"], eps=1e-6))
    _, p = take()
    h = F.conv2d(h, p["weight"], p["bias"], padding=1)
    assert i == len(mods) and not hs
    if arch["scale_by_sigma"]:
        h = h / time_cond[:, None, None, None]
    return h


if __name__ == "__main__":
    for name, arch in (("score_sde_ddpmpp_cont", DDPMPP), ("score_sde_ncsnpp_cont", NCSNPP)):
        rows = [[f"module.{k}", list(s)] for k, s in table(arch)]
        (FIXTURES / f"{name}.json").write_text(json.dumps(rows, indent=0) + "\n")
