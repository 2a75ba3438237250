"""NCSN++ pieces of the UNet against their definitions: FIR resampling, the pyramid's FIR convolution, widths."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scoresde import configs
from scoresde import models
import score_sde_reference as ref
from scoresde.models.upfirdn import FIRDownConv2d, downsample_fir, setup_kernel, upsample_fir
from scoresde.run.builders import build_model


def test_fir_up_and_down_sampling_are_the_closed_form_taps():
    x = torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(0))
    # [1, 3, 3, 1]: up  out[2m] = (x[m-1] + 3 x[m])/4, out[2m+1] = (3 x[m] + x[m+1])/4 (zeros outside);
    #               down out[i] = (x[2i-1] + 3 x[2i] + 3 x[2i+1] + x[2i+2])/8.
    k = setup_kernel((1, 3, 3, 1))
    assert torch.allclose(upsample_fir(x, k), ref.fir_up(x), atol=1e-6)
    assert torch.allclose(downsample_fir(x, k), ref.fir_down(x), atol=1e-6)
    up = upsample_fir(torch.ones(1, 1, 6, 6), k)
    assert torch.allclose(up[..., 1:-1, 1:-1], torch.ones(1, 1, 10, 10))   # gain 1 away from the border


def test_fir_down_conv_is_one_convolution_with_the_composed_kernel():
    gen = torch.Generator().manual_seed(1)
    conv = FIRDownConv2d(3, 5)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    # Blur then stride-2 conv is one stride-2 cross-correlation with w (*) K, the full 2-D convolution (6x6).
    k = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    w = conv.weight.detach().double().numpy()
    composed = np.zeros(w.shape[:2] + (6, 6))
    for a in range(4):
        for b in range(4):
            composed[:, :, a:a + 3, b:b + 3] += k[a, b] * w
    want = torch.nn.functional.conv2d(torch.nn.functional.pad(x.double(), (2, 2, 2, 2)), torch.from_numpy(composed),
                                      conv.bias.detach().double(), stride=2)
    assert torch.allclose(conv(x).double(), want, atol=1e-5)
    assert torch.allclose(conv(x), ref.fir_conv_down(x, conv.weight, conv.bias), atol=1e-5)


def test_ncsnpp_cont_has_the_published_size_and_fourier_width():
    config = configs.load_config("score_sde_ve_ncsnpp_cont")
    net = build_model(config, (3, 32, 32))
    w = net.noise_embed[0].W
    assert w.shape == (128,) and net.noise_embed[1].weight.shape == (512, 256)
    assert net.noise_embed[0](torch.zeros(2)).shape == (2, 256)
    assert sum(p.numel() for p in net.parameters()) + w.numel() == 62_758_915     # score_sde's count includes W
    assert len(net.pyramid) == 3


def test_pyramid_combine_and_output_scaling():
    kw = dict(in_channels=1, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
              embedding="fourier", fir=True)
    torch.manual_seed(0)
    net = models.get_model("unet", progressive_input="residual", center_input=True, scale_by_sigma=True, **kw)
    x, log_sigma = torch.rand(2, 1, 8, 8), torch.tensor([0.5, 2.0])
    # With the pyramid's convolution zero, the pyramid adds nothing, so h/sqrt(2) continues as in a net without it
    # whose downsampling block's output is divided by sqrt 2.
    with torch.no_grad():
        net.pyramid[0].weight.zero_()
        net.pyramid[0].bias.zero_()
    plain = models.get_model("unet", **kw)
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("pyramid")})
    with torch.no_grad():
        plain.down[1].conv1.weight.div_(2**0.5)
        plain.down[1].conv1.bias.div_(2**0.5)
        plain.down[1].skip.weight.div_(2**0.5)
        plain.down[1].skip.bias.div_(2**0.5)
    want = plain(2 * x - 1, log_sigma) / torch.exp(log_sigma)[:, None, None, None]
    assert torch.allclose(net(x, log_sigma), want, atol=1e-5)


def test_ncsnpp_option_errors():
    with pytest.raises(ValueError, match="Fourier"):
        models.get_model("unet", scale_by_sigma=True)
    with pytest.raises(ValueError, match="fir=True"):
        models.get_model("unet", progressive_input="residual")
