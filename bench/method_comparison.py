"""Test accuracy of methods on one dataset and missing setting over several seeds, as mean ±
std — the figures behind a claim like "mle beats lower_bound on digits at 90% missing".

    python -m bench.method_comparison --dataset digits --missing-modality bottom --missing-rate 0.9

Every run uses the same split and the same missing samples per seed (paired), the same
network and the same number of optimiser steps; the model is selected on validation accuracy.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from training.spec import TrainSpec
from training.train import train


def compare(dataset: str, missing_modality: str, missing_rate: float, methods: list[tuple[str, str]],
            seeds: list[int], epochs: int) -> dict[str, list[float]]:
    accuracies: dict[str, list[float]] = {}
    for method, fusion in methods:
        key = f"{method} ({fusion})"
        for seed in seeds:
            spec = TrainSpec(dataset=dataset, method=method, fusion=fusion, missing_modality=missing_modality,
                             missing_rate=missing_rate, epochs=epochs, seed=seed)
            accuracies.setdefault(key, []).append(train(spec).test_accuracy)
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--missing-modality", default="bottom")
    parser.add_argument("--missing-rate", type=float, default=0.9)
    parser.add_argument("--methods", default="mle:add,lower_bound:add,zero_padding:add",
                        help="comma-separated method:fusion pairs")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    methods = [tuple(pair.split(":")) for pair in args.methods.split(",")]
    started = time.perf_counter()
    accuracies = compare(args.dataset, args.missing_modality, args.missing_rate, methods,
                         list(range(args.seeds)), args.epochs)
    if args.json:
        print(json.dumps(accuracies))
        return
    print(f"{args.dataset}, {args.missing_modality} missing at {args.missing_rate:.0%}, {args.seeds} seeds, "
          f"{args.epochs} epochs ({time.perf_counter() - started:.0f} s)")
    for key, values in accuracies.items():
        values_pct = 100 * np.array(values)
        print(f"  {key:<24} {values_pct.mean():6.2f} ± {values_pct.std(ddof=1):.2f}   "
              f"[{', '.join(f'{v:.1f}' for v in values_pct)}]")


if __name__ == "__main__":
    main()
