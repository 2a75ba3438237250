"""The noise-conditional classifier p_t(y | x_t) for classifier guidance, and its cross-entropy loss on noised data."""
from __future__ import annotations

import torch
from torch import nn

from scoresde.models import MLP
from scoresde.models.embeddings import make_embedding
from scoresde.sde_lib import SDE
from scoresde.utils import UsageError

Tensor = torch.Tensor


class MLPClassifier(MLP):
    """models.MLP with num_classes logits as its output, fed t: the noisy classifier for vector data (N, dim)."""

    def __init__(self, dim: int, num_classes: int, width: int = 128, depth: int = 3, activation: str = "silu"):
        super().__init__(dim, width=width, depth=depth, activation=activation, out_dim=num_classes)


class _ConvBlock(nn.Module):
    """GroupNorm-act-conv twice with the time embedding added in between, and a residual connection."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(8, c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(min(8, c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(self.act(self.norm2(h)))


class ConvClassifier(nn.Module):
    """Residual conv blocks with a time embedding, 2x average-pooling between resolutions, global mean, linear head.

    The encoder half of a U-Net, as in Dhariwal & Nichol's noisy classifiers, without attention; images (N, C, H, W).
    """

    def __init__(self, in_channels: int, num_classes: int, ch: int = 32, ch_mult=(1, 2)):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        emb_dim = 4 * ch
        self.embed = nn.Sequential(make_embedding("sinusoidal", ch), nn.Linear(ch, emb_dim), nn.SiLU(),
                                   nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv2d(in_channels, ch, 3, padding=1)
        chans = [ch] + [ch * m for m in ch_mult]
        self.blocks = nn.ModuleList(_ConvBlock(a, b, emb_dim) for a, b in zip(chans[:-1], chans[1:]))
        self.head = nn.Sequential(nn.GroupNorm(min(8, chans[-1]), chans[-1]), nn.SiLU())
        self.out = nn.Linear(chans[-1], num_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise UsageError(f"ConvClassifier expects images (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        emb = self.embed(t.expand(x.shape[0])).to(x.dtype)
        h = self.inp(x)
        for i, block in enumerate(self.blocks):
            h = block(h, emb)
            if i < len(self.blocks) - 1 and min(h.shape[-2:]) >= 2:
                h = nn.functional.avg_pool2d(h, 2)
        return self.out(self.head(h).mean(dim=(2, 3)))


def build_classifier(config, shape, num_classes: int | None) -> nn.Module:
    """The classifier for data of `shape`: ConvClassifier for images, MLPClassifier for vectors (config.classifier)."""
    if not num_classes:
        raise UsageError("a classifier needs a dataset with class labels (digits, mnist, cifar10, gmm8, moons, "
                         "circles, image_folder with sub-folders, or an array with 'y'); this one has none")
    c = config.classifier
    if len(shape) == 1:
        return MLPClassifier(shape[0], num_classes, width=c.width, depth=c.depth)
    return ConvClassifier(shape[0], num_classes, ch=c.nf, ch_mult=tuple(c.ch_mult))


def classifier_loss(classifier: nn.Module, sde: SDE, x0: Tensor, y: Tensor, *, eps: float = 1e-5,
                    generator: torch.Generator | None = None) -> Tensor:
    """Cross-entropy of classifier(x_t, t) against y, x_t = alpha_bar x0 + beta_bar z, t ~ U(eps, T)."""
    if not 0.0 <= eps < sde.T:
        raise UsageError(f"eps (the smallest training time) must be in [0, T={sde.T}), got {eps}")
    if y.shape != (x0.shape[0],) or (y < 0).any():
        raise UsageError("classifier training needs a class label in 0..K-1 for every item (y of shape (N,))")
    t = eps + torch.rand(x0.shape[0], dtype=torch.float64, generator=generator, device=x0.device) * (sde.T - eps)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = sde.perturb(x0, z, t)
    return nn.functional.cross_entropy(classifier(xt, t.to(x0.dtype)), y)


class ClassifierLogits:
    """logits_fn(x, t) of a trained classifier network, for ClassifierGuidance."""

    def __init__(self, classifier: nn.Module):
        self.classifier = classifier

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.classifier(x, t.to(x.dtype))
