"""Train the digits feature network behind FD-digits / IS-digits and write metrics/digits_classifier.pt.

Full-batch AdamW on the 1500 training images with a fixed seed, one thread and deterministic kernels: the same
machine and torch build write the same bytes, so the committed weights can be regenerated and checked. Gaussian
pixel noise on every step (σ = 0.2 in [0, 1] data space) and strong weight decay regularise a net that would
otherwise fit the training set exactly; they lift test accuracy from 0.92 to 0.94 and keep the features smooth on
generated samples, which are not on the 17-level grid.

  python benchmarks/train_digits_classifier.py            # writes metrics/digits_classifier.pt
  python benchmarks/train_digits_classifier.py --out /tmp/clf.pt
"""
from __future__ import annotations

import argparse
import io
import os

import torch
import torch.nn.functional as F


from scoresde.data.digits import N_TRAIN
from scoresde.metrics.digits import WEIGHTS, DigitsClassifier, digits_split


def digits_labels(split: str) -> torch.Tensor:
    from sklearn.datasets import load_digits

    labels = torch.from_numpy(load_digits().target).long()
    return labels[:N_TRAIN] if split == "train" else labels[N_TRAIN:]


def train(seed: int, steps: int, lr: float, weight_decay: float, noise: float) -> DigitsClassifier:
    torch.manual_seed(seed)
    x, y = digits_split("train"), digits_labels("train")
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x + noise * torch.randn_like(x)), y).backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitsClassifier, split: str) -> float:
    return (model(digits_split(split)).argmax(1) == digits_labels(split)).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(WEIGHTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight_decay", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=0.2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = train(args.seed, args.steps, args.lr, args.weight_decay, args.noise)
    # Through a buffer: torch.save names the archive after the file, and the bytes should not depend on --out.
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    with open(args.out, "wb") as f:
        f.write(buffer.getvalue())
    print(f"train accuracy {accuracy(model, 'train'):.4f} | test accuracy {accuracy(model, 'test'):.4f} | "
          f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
