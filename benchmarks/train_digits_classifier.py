"""Train the digits feature network behind FD-digits2 / KID-digits2 / precision-recall / IS-digits2 and write
metrics/digits_features.pt.

Full-batch AdamW on the 1500 training images with a fixed seed, one thread and deterministic kernels: the same
machine and torch build write the same bytes, so the committed weights can be regenerated and checked. No noise
augmentation: a network trained to ignore pixel noise makes a metric blind to the residual noise of few-step and
stochastic samplers. After training, the feature centre and per-layer scales are fitted on the training digits
(DigitsFeatureNet.calibrate) and saved with the weights.

  python benchmarks/train_digits_classifier.py            # writes metrics/digits_features.pt
  python benchmarks/train_digits_classifier.py --out /tmp/net.pt
"""
from __future__ import annotations

import argparse
import io
import os

import torch
import torch.nn.functional as F

from scoresde.metrics.digits import WEIGHTS, DigitsFeatureNet, digits_labels, digits_split


def train(seed: int, steps: int, lr: float, weight_decay: float) -> DigitsFeatureNet:
    torch.manual_seed(seed)
    x, y = digits_split("train"), digits_labels("train")
    model = DigitsFeatureNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval().requires_grad_(False)
    model.calibrate(x)
    return model


@torch.no_grad()
def accuracy(model: DigitsFeatureNet, split: str) -> float:
    return (model(digits_split(split)).argmax(1) == digits_labels(split)).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(WEIGHTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = train(args.seed, args.steps, args.lr, args.weight_decay)
    # Through a buffer: torch.save names the archive after the file, and the bytes should not depend on --out.
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    with open(args.out, "wb") as f:
        f.write(buffer.getvalue())
    print(f"train accuracy {accuracy(model, 'train'):.4f} | test accuracy {accuracy(model, 'test'):.4f} | "
          f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
