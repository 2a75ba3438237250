"""Response curves of the digits metrics (in the manner of Heusel et al. 2017, Fig. 1): the 297 held-out test
digits under growing disturbances, each set scored against the 1500 training digits by metrics.evaluate, so every
row has n = 297 against 1500 as the baseline does. Prints a Markdown table (the README's) and the noise floor:
the sd of each metric over bootstrap resamples of the clean held-out set.

  python benchmarks/digits_response.py [--seed 0] [--bootstrap 20]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from scoresde import metrics
from scoresde.metrics import response
from scoresde.metrics.digits import digits_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    base, points = response.digits_response(a.seed)
    units = response.curve_units()
    lines = ["| disturbance | strength | FD-digits2 | × held-out | KID-digits2 (×10³) | precision | recall |",
             "|---|---|---|---|---|---|---|",
             f"| none (held-out digits) | | {base.fd:.3f} | 1 | {1e3 * base.kid:.2f} ± {1e3 * base.kid_std:.2f} | "
             f"{base.precision:.3f} | {base.recall:.3f} |"]
    for q in points:
        lines.append(f"| {q.curve} | {units[q.curve]} {q.strength:.3g} | {q.fd:.3f} | {q.fd / base.fd:.1f} | "
                     f"{1e3 * q.kid:.2f} ± {1e3 * q.kid_std:.2f} | {q.precision:.3f} | {q.recall:.3f} |")
    test = digits_split("test")
    gen = torch.Generator().manual_seed(a.seed)
    boot = [metrics.evaluate(test[torch.randint(len(test), (len(test),), generator=gen)], "digits", 8, 1)
            for _ in range(a.bootstrap)]
    sd = {k: np.std([getattr(r, k) for r in boot], ddof=1)
          for k in ("fd_digits2", "kid_digits2", "precision", "recall")}
    print("\n".join(lines))
    print(f"\nnoise floor (sd over {a.bootstrap} bootstrap resamples of the 297 held-out digits): FD-digits2 "
          f"{sd['fd_digits2']:.3f}, KID-digits2 {1e3 * sd['kid_digits2']:.2f}e-3, precision {sd['precision']:.3f}, "
          f"recall {sd['recall']:.3f}  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
