"""FIR up/down-sampling (upsample, pad, FIR filter, downsample) in pure PyTorch, as NCSN++ uses it (Song et al. 2021).

A 1-D kernel k is made separable (k k^T) and normalised to sum 1; upsampling by a factor u multiplies it by u^2
so that a constant image keeps its value. With k = [1, 3, 3, 1] this is the BigGAN/StyleGAN2 resampling filter.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def setup_kernel(k) -> Tensor:
    """The 2-D FIR kernel of a 1-D (separable) or 2-D kernel, normalised to sum 1, float32."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = torch.outer(k, k)
    return k / k.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Insert up-1 zeros after every pixel, pad by pad=(before, after) (negative crops), convolve with `kernel`
    (a true convolution: the kernel is flipped), keep every down-th pixel. Same padding on both axes."""
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    if up > 1:
        z = y.new_zeros(n * c, 1, h * up, w * up)
        z[:, :, ::up, ::up] = y
        y = z
    y = F.pad(y, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1)).to(y)[None, None]
    y = F.conv2d(y, weight)[:, :, ::down, ::down]
    return y.reshape(n, c, y.shape[-2], y.shape[-1])


def upsample_fir(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """FIR upsampling by `factor` with a kernel of setup_kernel: output (H factor, W factor)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_fir(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """FIR low-pass filter with a kernel of setup_kernel, then keep every factor-th pixel: (H / factor, W / factor)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


class FIRDownConv2d(nn.Module):
    """Stride-2 convolution preceded by the FIR low-pass filter, one fused resampling step (NCSN++'s pyramid).

    weight (out, in, k, k) and bias (out,) are plain parameters so that score_sde's Conv2d_0 maps onto them 1:1.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        conv = nn.Conv2d(in_ch, out_ch, kernel_size)
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone())
        self.register_buffer("fir", setup_kernel(fir_kernel), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # The filter's and the convolution's supports together need (taps - 2) + (k - 1) pixels of padding.
        p = (self.fir.shape[0] - 2) + (self.weight.shape[-1] - 1)
        x = upfirdn2d(x, self.fir, pad=((p + 1) // 2, p // 2))
        return F.conv2d(x, self.weight, self.bias, stride=2)
