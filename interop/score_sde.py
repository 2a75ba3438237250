"""score_sde_pytorch's released checkpoints (Song et al. 2021) as this project's UNet.

Their DDPM++ and NCSN++ are one class whose layers sit in a single ModuleList `all_modules`, in the order the
forward pass uses them: [Fourier projection W (VE)], two Dense layers of the embedding, the input convolution,
per level the residual blocks (each followed by attention at attention resolutions) and the downsampling block
(followed by the pyramid's FIR stride-2 convolution with progressive_input="residual"), the middle block
(res, attention, res), per level the num_res_blocks + 1 decoder blocks, attention, the upsampling block, and
finally GroupNorm and the output convolution. `_Layout` walks this project's UNet in the same order, so the key
names, shapes and the order of their EMA list (`ema.shadow_params`: the trainable parameters in parameters()
order, which leaves out the fixed Fourier W) all follow from the config.

Two translations are not renames. Their attention holds four NIN layers (W of shape (in, out), applied as
x W + b): our qkv is the three W transposed and stacked, proj is the fourth transposed; the matrices are square,
so loading without the transpose would succeed and be wrong. Their sinusoidal embedding is of 999 t with
frequencies 10000^(-k/(half-1)): model.embedding_type="positional" here.
"""
from __future__ import annotations

from pathlib import Path

import torch

from scoresde.models.unet import AttnBlock, ResBlock, UNet
from scoresde.run.builders import build_model
from scoresde.run.checkpoint import CheckpointError

from .common import Imported, ImportMismatchError, as_config, data_shape, finish

_RES_NAMES = (("GroupNorm_0", "norm0"), ("Conv_0", "conv0"), ("Dense_0", "temb"), ("GroupNorm_1", "norm1"),
              ("Conv_1", "conv1"), ("Conv_2", "skip"))
_WB = (("weight", "weight"), ("bias", "bias"))


def _same(*tensors):
    return tensors[0]


def _nin_qkv_weight(w_q, w_k, w_v):
    return torch.cat([w_q.T, w_k.T, w_v.T], 0)[:, :, None, None]


def _nin_qkv_bias(b_q, b_k, b_v):
    return torch.cat([b_q, b_k, b_v], 0)


def _nin_proj_weight(w):
    return w.T[:, :, None, None]


class _Layout:
    """score_sde's parameters (key, shape, trainable) in their parameters() order, and how each of our tensors is
    made from theirs, for one network of this project."""

    def __init__(self, net: UNet):
        if not isinstance(net, UNet):
            raise ImportMismatchError(f"score_sde checkpoints import into model.name='unet', not {type(net).__name__}")
        if net.num_classes is not None:
            raise ImportMismatchError("score_sde's released networks are not class-conditional; "
                                      "set model.conditional=False")
        if net.embedding not in ("positional", "fourier"):
            raise ImportMismatchError(f"score_sde's networks use model.embedding_type='positional' (DDPM++) or "
                                      f"'fourier' (NCSN++), not {net.embedding!r}, whose time embedding differs")
        self._ours = net.state_dict()
        self.params: list[tuple[str, tuple, bool]] = []
        self.rules: list[tuple[str, tuple[str, ...], object]] = []
        self._index = 0
        if net.embedding == "fourier":
            self._copy(self._next(), "noise_embed.0", (("W", "W"),), trainable=False)
        self._copy(self._next(), "noise_embed.1")
        self._copy(self._next(), "noise_embed.3")
        self._copy(self._next(), "conv_in")
        pyramid = iter(range(len(net.pyramid or ())))
        for i, (block, downsamples) in enumerate(zip(net.down, net.downsamples)):
            self._block(f"down.{i}", block)
            if downsamples and net.pyramid is not None:
                self._copy(self._next() + ".Conv2d_0", f"pyramid.{next(pyramid)}")
        for part in ("mid", "up"):
            for i, block in enumerate(getattr(net, part)):
                self._block(f"{part}.{i}", block)
        self._copy(self._next(), "out.0")
        self._copy(self._next(), "out.2")

    def _next(self) -> str:
        self._index += 1
        return f"all_modules.{self._index - 1}"

    def _copy(self, theirs: str, ours: str, names=_WB, trainable: bool = True) -> None:
        for their_name, our_name in names:
            key = f"{ours}.{our_name}"
            self.params.append((f"{theirs}.{their_name}", tuple(self._ours[key].shape), trainable))
            self.rules.append((key, (f"{theirs}.{their_name}",), _same))

    def _block(self, ours: str, block) -> None:
        theirs = self._next()
        if isinstance(block, ResBlock):
            for their_name, our_name in _RES_NAMES:
                if getattr(block, our_name) is not None:
                    self._copy(f"{theirs}.{their_name}", f"{ours}.{our_name}")
        elif isinstance(block, AttnBlock):
            self._copy(f"{theirs}.GroupNorm_0", f"{ours}.norm")
            c = block.proj.weight.shape[0]
            for j in range(4):
                self.params += [(f"{theirs}.NIN_{j}.W", (c, c), True), (f"{theirs}.NIN_{j}.b", (c,), True)]
            nin = [f"{theirs}.NIN_{j}" for j in range(3)]
            self.rules += [(f"{ours}.qkv.weight", tuple(f"{k}.W" for k in nin), _nin_qkv_weight),
                           (f"{ours}.qkv.bias", tuple(f"{k}.b" for k in nin), _nin_qkv_bias),
                           (f"{ours}.proj.weight", (f"{theirs}.NIN_3.W",), _nin_proj_weight),
                           (f"{ours}.proj.bias", (f"{theirs}.NIN_3.b",), _same)]
        else:
            raise ImportMismatchError("score_sde's released networks resample inside residual blocks "
                                      "(resblock_type='biggan'); set model.resblock_updown=True")

    @property
    def trainable(self) -> list[tuple[str, tuple]]:
        return [(k, shape) for k, shape, trainable in self.params if trainable]

    def convert(self, theirs: dict) -> dict:
        """Our state dict from theirs (keys without 'module.')."""
        return {ours: fn(*(theirs[k] for k in keys)).clone() for ours, keys, fn in self.rules}


def _describe(shapes: dict) -> str:
    kind = "NCSN++ (Fourier features)" if "all_modules.0.W" in shapes else "DDPM++ (positional embedding)"
    dense = shapes.get("all_modules.1.weight" if "all_modules.0.W" in shapes else "all_modules.0.weight")
    nf = f"nf={dense[0] // 4}, " if dense else ""
    indices = {int(k.split(".")[1]) for k in shapes if k.startswith("all_modules.")}
    params = sum(torch.Size(s).numel() for s in shapes.values())
    return f"{kind} network with {nf}{max(indices, default=-1) + 1} modules and {params:,} parameters"


def _check_fits(found: dict, layout: _Layout, source, config_name: str) -> None:
    expected = {k: shape for k, shape, _ in layout.params}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k])} vs {expected[k]}" for k in expected
              if k in found and tuple(found[k]) != expected[k]]
    if missing or unexpected or shapes:
        details = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                ("shape differs", shapes)) if keys)
        raise ImportMismatchError(
            f"{source} does not fit {config_name}: the checkpoint holds a {_describe(found)}, the config builds a "
            f"{_describe(expected)} ({details}); use the config of the released model (score_sde_vp_ddpmpp_cont, "
            "score_sde_subvp_ddpmpp_cont, score_sde_ve_ncsnpp_cont, and their _deep variants with 8 residual "
            "blocks per level)")


def load_score_sde_checkpoint(checkpoint) -> dict:
    """A score_sde checkpoint ({'model', 'ema': {'shadow_params'}, 'optimizer', 'step'}) from a path, or the dict."""
    if isinstance(checkpoint, dict):
        state = checkpoint
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"score_sde checkpoint {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for truncated or foreign files
            raise CheckpointError(f"{path} is not readable as a score_sde checkpoint "
                                  f"({type(e).__name__}: {e})") from None
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict)
            and isinstance(state.get("ema"), dict) and isinstance(state["ema"].get("shadow_params"), (list, tuple))):
        raise CheckpointError(f"{checkpoint if not isinstance(checkpoint, dict) else 'the checkpoint'} is not a "
                              "score_sde_pytorch checkpoint (a dict with 'model', 'ema': {'shadow_params': [...]}, "
                              "'optimizer', 'step')")
    return state


def import_score_sde(checkpoint, config) -> Imported:
    """The EMA network of a score_sde_pytorch checkpoint (a checkpoint_*.pth path, or its loaded dict) under a
    config of this project (a name such as "score_sde_vp_ddpmpp_cont", a path, or a ConfigDict).

    A checkpoint whose tensors do not fit the config (another model, depth or SDE) is an ImportMismatchError
    naming what the file holds and what the config builds.
    """
    config_name = f"config {config!r}" if isinstance(config, (str, Path)) else "the config"
    config = as_config(config)
    state = load_score_sde_checkpoint(checkpoint)
    source = checkpoint if not isinstance(checkpoint, dict) else "the score_sde checkpoint"
    network = build_model(config, data_shape(config))
    layout = _Layout(network)
    # DataParallel's prefix; `sigmas` is a buffer of their discrete noise levels that continuous models never use.
    model = {k.removeprefix("module."): v for k, v in state["model"].items() if k.removeprefix("module.") != "sigmas"}
    _check_fits({k: tuple(v.shape) for k, v in model.items()}, layout, source, config_name)
    shadow = list(state["ema"]["shadow_params"])
    trainable = layout.trainable
    if len(shadow) != len(trainable):
        raise ImportMismatchError(f"{source}: its EMA holds {len(shadow)} tensors, its network {len(trainable)} "
                                  "trainable parameters; the file is damaged or not from score_sde_pytorch")
    ema = dict(model)
    for i, ((key, shape), tensor) in enumerate(zip(trainable, shadow)):
        if tuple(tensor.shape) != shape:
            raise ImportMismatchError(f"{source}: EMA tensor {i} has shape {tuple(tensor.shape)}, but parameter "
                                      f"{i} of the network ({key}) has {shape}")
        ema[key] = tensor
    return finish(config, network, layout.convert(ema), layout.convert(model), int(state.get("step", 0)), source)
