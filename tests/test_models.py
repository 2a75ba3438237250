"""Networks, registry, score functions and EMA."""
import math

import pytest
import torch
from torch import nn

from scoresde import models
from scoresde.sde_lib import VESDE, GaussianMixture, VPSDE

SMALL_UNETS = [  # (in_channels, image_size, ch_mult): digits 8x8, MNIST 28x28, CIFAR-10 32x32, 64x64
    (1, 8, (1, 2)),
    (1, 28, (1, 2, 2)),
    (3, 32, (1, 2, 2, 2)),
    (3, 64, (1, 2, 2, 2)),
]



def randomise_zero_init(net: nn.Module) -> nn.Module:
    """Give zero-initialised output layers random weights, so that outputs depend on every input."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return net


@pytest.mark.parametrize("in_channels,size,ch_mult", SMALL_UNETS, ids=["8x8x1", "28x28x1", "32x32x3", "64x64x3"])
@pytest.mark.parametrize("embedding,updown", [("sinusoidal", True), ("fourier", False)], ids=["ddpmpp", "ncsnpp-conv"])
def test_unet_output_has_the_input_shape_at_every_supported_size(in_channels, size, ch_mult, embedding, updown):
    torch.manual_seed(0)
    lowest = size // 2 ** (len(ch_mult) - 1)
    net = randomise_zero_init(models.UNet(in_channels, size, ch=8, ch_mult=ch_mult, num_res_blocks=1,
                                          attn_resolutions=(lowest,), embedding=embedding, resblock_updown=updown))
    x = torch.randn(2, in_channels, size, size)
    out = net(x, torch.tensor([0.1, 0.9]))
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    # The noise level reaches the output: two noise levels give different outputs for the same x.
    assert (out[0] - net(x[:1], torch.tensor([0.9]))[0]).abs().max() > 1e-4


def test_ddpmpp_cifar10_config_has_the_papers_parameter_count():
    net = models.get_model("ddpmpp")   # ch=128, ch_mult=(1,2,2,2), 4 blocks/level, attention at 16, BigGAN up/down
    n = sum(p.numel() for p in net.parameters())
    # Song et al. 2021 report 62M parameters for DDPM++ cont. (rounded to 1M); we count 61,804,419.
    assert abs(n - 62e6) < 0.5e6, n


def test_unet_class_labels_and_the_null_label():
    torch.manual_seed(0)
    net = randomise_zero_init(models.UNet(1, 8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                                          num_classes=10, dropout=0.0))
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    out = {y: net(x, t, torch.full((3,), y)) for y in (0, 7, 10)}
    torch.testing.assert_close(net(x, t), out[10])    # y=None is the null label num_classes
    assert (out[0] - out[7]).abs().max() > 1e-4       # the label changes the output
    with pytest.raises(ValueError, match=r"class labels y must have shape \(3,\)"):
        net(x, t, torch.zeros(2, dtype=torch.long))
    unconditional = models.UNet(1, 8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    with pytest.raises(ValueError, match="num_classes=None"):
        unconditional(x, t, torch.zeros(3, dtype=torch.long))


def test_mlp_shapes_labels_and_errors():
    torch.manual_seed(0)
    net = randomise_zero_init(models.get_model("mlp", dim=3, width=32, depth=3, num_classes=4, activation="gelu"))
    x = torch.randn(5, 3)
    out = net(x, torch.rand(5), torch.tensor([0, 1, 2, 3, 4]))
    assert out.shape == (5, 3)
    torch.testing.assert_close(net(x, torch.full((5,), 0.3)), net(x, torch.full((5,), 0.3), torch.full((5,), 4)))
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 3\)"):
        net(torch.randn(5, 2), torch.rand(5))
    with pytest.raises(ValueError, match="unknown activation 'swish'; available: silu, relu, gelu, tanh, softplus$"):
        models.MLP(2, activation="swish")
    with pytest.raises(ValueError, match="unknown embedding 'learned'; available: sinusoidal, positional, fourier$"):
        models.MLP(2, embedding="learned")


def test_sinusoidal_and_fourier_embeddings_follow_their_formulas():
    s = torch.tensor([0.3, -1.2])
    emb = models.SinusoidalEmbedding(4, scale=2.0)(s)
    # frequencies 10000^(-k/2), k = 0, 1: 1 and 1/100
    expected = torch.stack([torch.sin(2 * s), torch.sin(2 * s / 100), torch.cos(2 * s), torch.cos(2 * s / 100)], 1)
    torch.testing.assert_close(emb, expected)
    fourier = models.GaussianFourierEmbedding(64, scale=16.0)
    torch.testing.assert_close(fourier(s), torch.cat([torch.sin(2 * math.pi * s[:, None] * fourier.W),
                                                      torch.cos(2 * math.pi * s[:, None] * fourier.W)], 1))
    # W ~ N(0, 16^2) with 32 draws: the sample std has relative standard error 1/sqrt(64) = 12.5%; 4 SE = 50%.
    assert 8.0 < float(fourier.W.std()) < 24.0


def test_registry_and_unet_errors_say_what_works():
    with pytest.raises(ValueError, match="unknown model 'resnet'; available: mlp, unet, ddpmpp, ncsnpp$"):
        models.get_model("resnet")
    with pytest.raises(ValueError, match=r"unknown arguments \['channels', 'nf'\] for model 'unet'"):
        models.get_model("unet", nf=64, channels=3)
    with pytest.raises(ValueError, match=r"image_size must be a multiple of 8 .*got image_size=28, or use ch_mult "
                                         r"with 3 levels"):
        models.UNet(1, 28, ch_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match=r"attn_resolutions \[16\] are not resolutions .* \[8, 4\]"):
        models.UNet(1, 8, ch=16, ch_mult=(1, 2))
    with pytest.raises(ValueError, match="GroupNorm"):
        models.UNet(ch=136)
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 1, 8, 8\)"):
        models.UNet(1, 8, ch=16, ch_mult=(1, 2), attn_resolutions=())(torch.zeros(2, 1, 16, 16), torch.zeros(2))
    assert models.get_model("NCSNPP", ch=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                            image_size=8).embedding == "fourier"


class GaussianEps(nn.Module):
    """The optimal eps-predictor for x_0 ~ N(0, s2 I) under `sde`, fed noise_input = t:
    beta_bar x / (alpha_bar^2 s2 + beta_bar^2)."""

    def __init__(self, sde, s2):
        super().__init__()
        self.sde, self.s2 = sde, s2

    def forward(self, x, noise_input, y=None):
        t = noise_input.double()
        a, b = self.sde.alpha_bar(t)[:, None], self.sde.beta_bar(t)[:, None]
        return (b * x / (a**2 * self.s2 + b**2)).to(x.dtype)


def test_score_fn_dtypes_no_grad_and_autograd_divergence():
    sde, s2, d = VPSDE(), 0.5, 3
    oracle = GaussianMixture([1.0], torch.zeros(1, d), s2)
    score_fn = models.get_score_fn(GaussianEps(sde, s2), sde, "eps")
    x = torch.randn(6, d)
    t64 = torch.linspace(0.01, 1.0, 6, dtype=torch.float64)
    with torch.no_grad():
        s64, s32 = score_fn(x, t64), score_fn(x, t64.float())
    assert s64.dtype == s32.dtype == torch.float32
    exact = oracle.score_fn(sde)(x.double(), t64)
    # float32 arithmetic (relative precision 6e-8) on scores of size ~10: 1e-5 is ~100 ulps.
    torch.testing.assert_close(s64.double(), exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s32.double(), exact, rtol=1e-5, atol=1e-5)
    # Differentiable in x: the score of N(0, v I) has divergence -d/v with v = alpha_bar^2 s2 + beta_bar^2.
    xg = x.double().requires_grad_(True)
    s = score_fn(xg, t64)
    div = sum(torch.autograd.grad(s[:, i].sum(), xg, retain_graph=True)[0][:, i] for i in range(d))
    v = sde.alpha_bar(t64) ** 2 * s2 + sde.beta_bar(t64) ** 2
    torch.testing.assert_close(div, -d / v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("param", sorted(models.PARAMETERIZATIONS))
def test_score_fn_is_finite_at_t_zero(param):
    # beta_bar(0) = 0 for the VP SDE; the network here is a fixed random MLP with Fourier features of log sigma.
    net = randomise_zero_init(models.MLP(2, width=16, depth=2, embedding="fourier"))
    x = torch.randn(4, 2)
    s = models.get_score_fn(net, VPSDE(), param)(x, torch.zeros(4))
    assert torch.isfinite(s).all()


def test_score_fn_passes_class_labels_and_the_null_label_to_the_network():
    sde = VESDE(sigma_max=5.0)
    means = torch.tensor([[-1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    parts = [GaussianMixture([1.0], means[k:k + 1], 0.3) for k in range(2)]
    mixture = GaussianMixture([0.5, 0.5], means, 0.3)

    class ExactConditionalScore(nn.Module):
        """Score parameterisation: the exact score of class y, or of the whole mixture for the null label 2."""
        num_classes = 2

        def forward(self, x, noise_input, y=None):
            t = noise_input.double()
            out = mixture.score(x, sde, t)
            for k in range(2):
                out = torch.where((y == k)[:, None], parts[k].score(x, sde, t), out)
            return out

    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    score_fn = models.get_score_fn(ExactConditionalScore(), sde, models.Precond("score", "t"), class_labels=1)
    # float64 evaluations of the same closed forms: only round-off separates them.
    torch.testing.assert_close(score_fn(x, t), parts[1].score(x, sde, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(score_fn.score(x, t, torch.tensor([0, 1, 0, 1, 0])),
                               torch.where(torch.tensor([0, 1, 0, 1, 0])[:, None] == 1, parts[1].score(x, sde, t),
                                           parts[0].score(x, sde, t)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(score_fn.score(x, t, 2), mixture.score(x, sde, t), rtol=1e-12, atol=1e-12)


def test_ema_follows_the_warmup_recursion_and_averages_buffers():
    net = nn.Linear(2, 1)
    net.register_buffer("running", torch.zeros(1))
    net.register_buffer("count", torch.zeros((), dtype=torch.long))
    ema = models.create_ema(net, decay=0.9)
    expected_w, expected_b = None, None
    for n in range(6):
        with torch.no_grad():
            net.weight.fill_(float(n + 1))
            net.running.fill_(10.0 * n)
            net.count.fill_(n)
        ema.update_parameters(net)
        # Song et al.'s warm-up: decay min(0.9, (1 + n)/(10 + n)) after n averaged models; the first update copies.
        d = min(0.9, (1 + n) / (10 + n))
        expected_w = float(n + 1) if n == 0 else d * expected_w + (1 - d) * (n + 1)
        expected_b = 0.0 if n == 0 else d * expected_b + (1 - d) * 10.0 * n
    assert float(ema.module.weight.detach()[0, 0]) == pytest.approx(expected_w, rel=1e-6)
    assert float(ema.module.running[0]) == pytest.approx(expected_b, rel=1e-6)
    assert int(ema.module.count) == 5                  # integer buffers are copied, not averaged
    assert float(net.weight.detach()[0, 0]) == 6.0              # the source network is untouched
    constant = models.create_ema(nn.Linear(2, 1), decay=0.5, warmup=False)
    src = nn.Linear(2, 1)
    with torch.no_grad():
        src.bias.fill_(0.0)
        constant.update_parameters(src)
        src.bias.fill_(1.0)
        constant.update_parameters(src)
        constant.update_parameters(src)
    # Without warm-up: 0 -> 0.5 * 0 + 0.5 * 1 -> 0.5 * 0.5 + 0.5 * 1.
    assert float(constant.module.bias.detach()) == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r"EMA decay must be in \[0, 1\]"):
        models.create_ema(net, decay=1.5)


def test_score_fn_sees_through_wrappers_to_the_networks_embedding():
    net = randomise_zero_init(models.MLP(2, width=16, depth=2, embedding="fourier", num_classes=3))
    ema = models.create_ema(net)
    ema.update_parameters(net)
    x, t, sde = torch.randn(4, 2), torch.rand(4), VESDE()
    wrapped = models.get_score_fn(ema, sde, class_labels=1)
    assert wrapped.precond.noise_input == "log_sigma"  # declared by the wrapped network's Fourier embedding
    torch.testing.assert_close(wrapped(x, t), models.get_score_fn(net, sde, class_labels=1)(x, t))


def test_score_fn_errors_list_valid_names():
    net = models.MLP(2)
    with pytest.raises(ValueError, match="unknown parameterization 'noise'; available: score, eps, x0, v, flow, edm$"):
        models.get_score_fn(net, VPSDE(), "noise")
    with pytest.raises(ValueError, match="unknown noise_input 'sigma'; available: t, log_sigma, edm$"):
        models.Precond(noise_input="sigma")
    with pytest.raises(ValueError, match=r"class_labels must be an int or have shape \(4,\)"):
        models.get_score_fn(models.MLP(2, num_classes=3), VPSDE(), class_labels=torch.zeros(3))(
            torch.zeros(4, 2), torch.ones(4))
