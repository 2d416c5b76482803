"""The comparison table: every method × fusion at several missing rates, over seeds, as
mean ± std of test accuracy (the layout of the paper's Table 1).

    python -m bench.results_table --dataset digits --missing-modality bottom --out var/results/digits.json

Runs are paired across methods (same split and missing samples per seed). Results are saved
after every run, and a re-run with the same --out skips what is already there, so a long
table can be interrupted and continued.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from training.spec import METHODS, TrainSpec
from training.train import train


def grid(methods: list[str]) -> list[tuple[str, str]]:
    return [(method, fusion) for method in methods for fusion in METHODS[method].fusions]


def key(method: str, fusion: str, rate: float, seed: int) -> str:
    return f"{method}|{fusion}|{rate:g}|{seed}"


def run_table(dataset: str, missing_modality: str, rates: list[float], seeds: list[int], methods: list[str],
              epochs: int, out: Path) -> dict[str, float]:
    results: dict[str, float] = json.loads(out.read_text()) if out.exists() else {}
    todo = [(m, f, r, s) for m, f in grid(methods) for r in rates for s in seeds if key(m, f, r, s) not in results]
    started = time.perf_counter()
    for done, (method, fusion, rate, seed) in enumerate(todo, 1):
        spec = TrainSpec(dataset=dataset, method=method, fusion=fusion, missing_modality=missing_modality,
                         missing_rate=rate, epochs=epochs, seed=seed)
        results[key(method, fusion, rate, seed)] = train(spec).test_accuracy
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        elapsed = time.perf_counter() - started
        print(f"[{done}/{len(todo)}] {method} {fusion} r={rate:g} seed={seed}: "
              f"{results[key(method, fusion, rate, seed)]:.4f} ({elapsed / done:.1f} s/run)", flush=True)
    return results


def markdown(results: dict[str, float], rates: list[float], seeds: list[int], methods: list[str]) -> str:
    cells: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for method, fusion in grid(methods):
        for rate in rates:
            values = np.array([results[key(method, fusion, rate, s)] for s in seeds]) * 100
            cells.setdefault((method, fusion), []).append((values.mean(), values.std(ddof=1) if len(values) > 1 else 0))
    best = [max(row[i][0] for row in cells.values()) for i in range(len(rates))]
    lines = ["| method (fusion) | " + " | ".join(f"{r:.0%}" for r in rates) + " |",
             "|---|" + "---|" * len(rates)]
    for (method, fusion), row in cells.items():
        shown = [(f"**{m:.2f} ± {s:.2f}**" if m == best[i] else f"{m:.2f} ± {s:.2f}") for i, (m, s) in enumerate(row)]
        lines.append(f"| {method} ({fusion}) | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--missing-modality", default="bottom")
    parser.add_argument("--rates", default="0.8,0.9,0.95")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    seeds = list(range(args.seeds))
    methods = args.methods.split(",")
    results = run_table(args.dataset, args.missing_modality, rates, seeds, methods, args.epochs, args.out)
    print(f"\n{args.dataset}, {args.missing_modality} missing, test accuracy % (mean ± std over {len(seeds)} seeds, "
          f"{args.epochs} epochs; best per column in bold)\n")
    print(markdown(results, rates, seeds, methods))


if __name__ == "__main__":
    main()
