"""The DDPM++ / NCSN++ U-Net (Song et al. 2021): BigGAN residual blocks, GroupNorm, attention, skip rescaling.

DDPM++ cont. is the default; NCSN++ cont. adds FIR resampling, the residual input pyramid, Fourier features of
log sigma, input centring and the output divided by sigma (see `UNet`). Not implemented: score_sde's output
pyramids (progressive="output_skip"/"residual") and the input_skip pyramid, which no released CIFAR-10 model uses.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import EMBEDDINGS, LabelEmbedding, check_no_labels, make_activation, make_embedding
from .upfirdn import FIRDownConv2d, downsample_fir, setup_kernel, upsample_fir
from scoresde.utils import UsageError

PROGRESSIVE_INPUTS = ("none", "residual")


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch, so every block starts as the identity (init_scale=0)."""
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class ResBlock(nn.Module):
    """BigGAN residual block: h = conv(drop(act(GN(conv(resample(act(GN x)))) + temb)))); out = (skip(x) + h) / sqrt 2.

    Resampling is nearest/average pooling, or FIR filtering with fir_kernel (NCSN++).
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, activation: str,
                 skip_rescale: bool, up: bool = False, down: bool = False, fir_kernel=None):
        super().__init__()
        self.up, self.down, self.skip_rescale = up, down, skip_rescale
        # The 2-D FIR kernel, built once (not saved in the state dict); None: nearest/average-pool resampling.
        self.register_buffer("fir", None if fir_kernel is None else setup_kernel(fir_kernel), persistent=False)
        self.act = make_activation(activation)
        self.norm0 = _group_norm(in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm1 = _group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if (in_ch != out_ch or up or down) else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            if self.fir is not None:
                return upsample_fir(x, self.fir)
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            if self.fir is not None:
                return downsample_fir(x, self.fir)
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm0(x))
        h = self.conv0(self._resample(h))
        h = h + self.temb(self.act(temb))[:, :, None, None]
        h = self.conv1(self.dropout(self.act(self.norm1(h))))
        x = self._resample(x)
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels: out = (x + W_o softmax(q k^T / sqrt C) v) / sqrt 2."""

    def __init__(self, ch: int, skip_rescale: bool):
        super().__init__()
        self.skip_rescale = skip_rescale
        self.norm = _group_norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        n, c, hgt, wid = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, hgt * wid).transpose(2, 3).unbind(1)
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        h = self.proj(h.transpose(1, 2).reshape(n, c, hgt, wid))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (used when resblock_updown=False)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution (used when resblock_updown=False)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Noise-conditional U-Net for images x of shape (N, in_channels, image_size, image_size); output shaped like x.

    Each of the len(ch_mult) levels has num_res_blocks residual blocks (attention after each where the resolution
    is in attn_resolutions) and halves the resolution before the next level; the decoder mirrors it with skip
    connections. The default arguments are DDPM++ cont. (Song et al. 2021) for CIFAR-10.

    NCSN++ cont. options: embedding_dim (features of the noise embedding; default ch, NCSN++ uses 2 ch Fourier
    features), fir/fir_kernel (FIR resampling in the residual blocks), progressive_input="residual" (the image
    pyramid: after each downsampling block, pyramid <- FIR stride-2 conv(pyramid) and h <- (pyramid + h)/sqrt 2,
    pyramid <- h), center_input (the network sees 2x - 1, for data in [0, 1]) and scale_by_sigma (the output is
    divided by sigma = exp(noise_input), so the noise input must be log sigma: Fourier embeddings only).
    `noise_input` says what the network is fed as its noise level: t for sinusoidal embeddings, log sigma for
    Fourier features (models.Precond reads it).
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, ch: int = 128, ch_mult=(1, 2, 2, 2),
                 num_res_blocks: int = 4, attn_resolutions=(16,), dropout: float = 0.1, resblock_updown: bool = True,
                 skip_rescale: bool = True, embedding: str = "sinusoidal", num_classes: int | None = None,
                 activation: str = "silu", embedding_scale: float | None = None, embedding_dim: int | None = None,
                 fir: bool = False, fir_kernel=(1, 3, 3, 1), progressive_input: str = "none",
                 center_input: bool = False, scale_by_sigma: bool = False):
        super().__init__()
        ch_mult, attn_resolutions = tuple(ch_mult), tuple(attn_resolutions)
        _check_config(in_channels, image_size, ch, ch_mult, num_res_blocks, attn_resolutions, dropout)
        _check_ncsnpp_options(embedding, fir, resblock_updown, progressive_input, scale_by_sigma)
        self.in_channels, self.image_size = in_channels, image_size
        self.embedding, self.num_classes = embedding, num_classes
        self.noise_input = EMBEDDINGS[embedding].noise_input
        self.center_input, self.scale_by_sigma = bool(center_input), bool(scale_by_sigma)
        self.skip_rescale = skip_rescale
        temb_dim, embedding_dim = 4 * ch, embedding_dim or ch
        self.noise_embed = nn.Sequential(make_embedding(embedding, embedding_dim, embedding_scale),
                                         nn.Linear(embedding_dim, temb_dim), make_activation(activation),
                                         nn.Linear(temb_dim, temb_dim))
        self.label_embed = LabelEmbedding(num_classes, temb_dim) if num_classes is not None else None
        fir_kernel = tuple(fir_kernel) if fir else None

        def res(cin, cout, **updown):
            return ResBlock(cin, cout, temb_dim, dropout, activation, skip_rescale, fir_kernel=fir_kernel, **updown)

        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        # One FIR stride-2 convolution per downsampling block when the input pyramid is on.
        self.pyramid = nn.ModuleList() if progressive_input == "residual" else None
        self.downsamples = []       # per down block: whether it halves the resolution (the pyramid steps there)
        skips, cur, resolution, pyramid_ch = [ch], ch, image_size, in_channels
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(res(cur, ch * mult))
                self.downsamples.append(False)
                cur = ch * mult
                if resolution in attn_resolutions:
                    self.down.append(AttnBlock(cur, skip_rescale))
                    self.downsamples.append(False)
                skips.append(cur)
            if level != len(ch_mult) - 1:
                self.down.append(res(cur, cur, down=True) if resblock_updown else Downsample(cur))
                self.downsamples.append(True)
                if self.pyramid is not None:
                    self.pyramid.append(FIRDownConv2d(pyramid_ch, cur, fir_kernel=fir_kernel))
                    pyramid_ch = cur
                skips.append(cur)
                resolution //= 2
        self.mid = nn.ModuleList([res(cur, cur), AttnBlock(cur, skip_rescale), res(cur, cur)])
        # Decoder blocks flagged True take a skip connection (concatenated on channels).
        self.up = nn.ModuleList()
        self._takes_skip = []
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(res(cur + skips.pop(), ch * mult))
                self._takes_skip.append(True)
                cur = ch * mult
            if resolution in attn_resolutions:
                self.up.append(AttnBlock(cur, skip_rescale))
                self._takes_skip.append(False)
            if level != 0:
                self.up.append(res(cur, cur, up=True) if resblock_updown else Upsample(cur))
                self._takes_skip.append(False)
                resolution *= 2
        self.out = nn.Sequential(_group_norm(cur), make_activation(activation),
                                 _zero(nn.Conv2d(cur, in_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, noise_input: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise UsageError(f"this UNet expects x of shape (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        check_no_labels(y, self.num_classes)
        noise_input = noise_input.to(x.dtype).expand(x.shape[0])
        temb = self.noise_embed(noise_input).to(x.dtype)
        if self.label_embed is not None:
            temb = temb + self.label_embed(y, x.shape[0], x.device).to(x.dtype)
        if self.center_input:
            x = 2 * x - 1
        pyramid, pyramid_convs = x, iter(self.pyramid or ())
        h = self.conv_in(x)
        hs = [h]
        for block, downsamples in zip(self.down, self.downsamples):
            h = block(h, temb)
            # The skip connection carries the output of the attention that follows a residual block, if any.
            if isinstance(block, AttnBlock):
                hs[-1] = h
                continue
            if downsamples and self.pyramid is not None:
                pyramid = next(pyramid_convs)(pyramid)
                h = pyramid = (pyramid + h) / math.sqrt(2.0) if self.skip_rescale else pyramid + h
            hs.append(h)
        for block in self.mid:
            h = block(h, temb)
        for block, takes_skip in zip(self.up, self._takes_skip):
            h = block(torch.cat([h, hs.pop()], dim=1) if takes_skip else h, temb)
        out = self.out(h)
        if self.scale_by_sigma:
            out = out / torch.exp(noise_input)[:, None, None, None]
        return out


def _check_ncsnpp_options(embedding, fir, resblock_updown, progressive_input, scale_by_sigma) -> None:
    if progressive_input not in PROGRESSIVE_INPUTS:
        raise UsageError(f"UNet progressive_input must be one of {PROGRESSIVE_INPUTS}, got {progressive_input!r}")
    if progressive_input == "residual" and not fir:
        raise UsageError("UNet progressive_input='residual' is implemented with FIR resampling only; set fir=True")
    if fir and not resblock_updown:
        raise UsageError("UNet fir=True resamples inside the residual blocks; it needs resblock_updown=True")
    if scale_by_sigma and embedding != "fourier":
        raise UsageError("UNet scale_by_sigma divides by sigma = exp(noise input), which is log sigma only for the "
                         f"Fourier embedding; got embedding={embedding!r}")


def _check_config(in_channels, image_size, ch, ch_mult, num_res_blocks, attn_resolutions, dropout) -> None:
    for name, value in (("in_channels", in_channels), ("image_size", image_size), ("ch", ch),
                        ("num_res_blocks", num_res_blocks)):
        if not (isinstance(value, int) and value > 0):
            raise UsageError(f"UNet {name} must be a positive int, got {value!r}")
    if not ch_mult or not all(isinstance(m, int) and m > 0 for m in ch_mult):
        raise UsageError(f"UNet ch_mult must be a non-empty tuple of positive ints, got {ch_mult!r}")
    widths = sorted({ch * m for m in ch_mult} | {ch})
    bad_widths = [c for c in widths if c % 4 or c % min(c // 4, 32)]
    if bad_widths:
        raise UsageError(f"UNet channel counts {bad_widths} (ch * ch_mult) must be multiples of 4, and of 32 from 128 "
                         f"on (GroupNorm uses min(channels/4, 32) groups); got ch={ch}, ch_mult={ch_mult}")
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"UNet dropout must be in [0, 1), got {dropout}")
    factor = 2 ** (len(ch_mult) - 1)
    if image_size % factor:
        works = ", ".join(str(factor * k) for k in range(1, 9))
        fewer = [len(ch_mult) - k for k in range(1, len(ch_mult)) if image_size % 2 ** (len(ch_mult) - k - 1) == 0]
        hint = f", or use ch_mult with {fewer[0]} levels" if fewer else ""
        raise UsageError(f"UNet with {len(ch_mult)} levels (ch_mult={ch_mult}) halves the resolution "
                         f"{len(ch_mult) - 1} times, so image_size must be a multiple of {factor} "
                         f"(e.g. {works}); got image_size={image_size}{hint}")
    resolutions = [image_size // 2**k for k in range(len(ch_mult))]
    bad = [r for r in attn_resolutions if r not in resolutions]
    if bad:
        raise UsageError(f"UNet attn_resolutions {bad} are not resolutions of this network; with image_size="
                         f"{image_size} and {len(ch_mult)} levels they are {resolutions} (use () for no attention "
                         f"outside the middle block)")
