"""The tuned comparisons of docs/results.md, through the API and a two-slot worker on a fresh
embedded stack, each saved whole (the study, its trials, its final table, the table under every
selection rule, every run with the epoch it reported) to a JSON file beside the other raw results
(bench/tuned_tables.py prints docs/results.md's tables from them):

    python -m bench.tuned_comparison study --out docs/results/study_digits_three_methods.json
    python -m bench.tuned_comparison preset --dataset digits --out docs/results/tuned_mle_vs_zero_padding_digits.json
    python -m bench.tuned_comparison preset --dataset synthetic --out docs/results/tuned_mle_vs_zero_padding_synthetic.json
    python -m bench.tuned_comparison pair --dataset synthetic --rate 0.95 --epochs 20 --trials 8 --slots 4 \
        --tpe-startup 4 --out docs/results/tuned_mle_vs_zero_padding_synthetic_95.json
    python -m bench.tuned_comparison rules --dataset digits --out docs/results/selection_rules_digits.json

- `study`: digits, bottom half missing at 90%, mle, zero_padding and lower_bound, 20 trials each
  (TPE, median pruner), 50 epochs, final runs over 5 seeds (the study of docs/studies.md);
- `preset`: the tuned preset "MLE vs zero padding, tuned" on a dataset (its `audio` role missing at
  80/90/95%), 20 trials per method and rate, 50 epochs, 5 final seeds;
- `pair`: the preset's comparison (zero padding and mle, add) at one missing rate (`--rate`) of the
  dataset's second modality, with `--epochs`, `--trials`, `--slots` and `--tpe-startup` as given (the budget a
  loaded machine allowed for docs/results.md's synthetic table);
- `rules`: a sweep of mle, zero_padding and lower_bound (add) at 80/90/95% over 5 seeds with the
  default settings, 50 epochs, and its table under every selection rule.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from .paper_preset import call, wait_until
from .slots_throughput import embedded_stack

EPOCHS = 50
SECOND_MODALITY = {"digits": "bottom", "synthetic": "y"}


def wait_for_study(port: int, study_id: int) -> dict:
    def ended():
        study = call(port, "GET", f"/api/studies/{study_id}")[1]
        return study if study["state"] in ("finished", "cancelled") else None

    return wait_until(ended, 6 * 3600, 2.0)


def runs(port: int) -> list[dict]:
    """Every run of the stack (trials and final runs), with the epoch each reported."""
    keep = ("id", "state", "method", "fusion", "missing_modality", "missing_rate", "seed", "sweep_id",
            "epochs_completed", "best_epoch", "val_accuracy", "test_accuracy", "started_at", "finished_at")
    out: list[dict] = []
    while page := call(port, "GET", f"/api/runs?limit=500&sort=id&offset={len(out)}")[1]["items"]:
        out += [{k: run[k] for k in keep} for run in page]
    return out


def study_record(port: int, created: dict, started: float) -> dict:
    study = wait_for_study(port, created["id"])
    study_id = study["id"]
    return {"study": study, "seconds": round(time.perf_counter() - started, 1),
            "trials": call(port, "GET", f"/api/studies/{study_id}/trials")[1],
            "table": call(port, "GET", f"/api/studies/{study_id}/table")[1],
            "table_samples": call(port, "GET", f"/api/studies/{study_id}/table?test=samples")[1],
            "selection_rules": call(port, "GET", f"/api/studies/{study_id}/selection-rules")[1],
            "runs": runs(port)}


def three_methods(port: int) -> dict:
    started = time.perf_counter()
    status, created = call(port, "POST", "/api/studies", {
        "dataset": "digits", "missing_modality": "bottom", "missing_rate": 0.9,
        "methods": ["mle", "zero_padding", "lower_bound"], "trials": 20, "spec": {"epochs": EPOCHS},
        "pruner": {"name": "median"}, "parallel_trials": 2, "final_seeds": 5})
    assert status == 201, created
    return study_record(port, created, started)


def tuned_preset(port: int, dataset: str, trials: int, slots: int, tpe_startup: int) -> dict:
    started = time.perf_counter()
    status, created = call(port, "POST", "/api/studies/presets/mle_vs_zero_padding_tuned", {
        "dataset": dataset, "epochs": EPOCHS, "trials": trials, "final_seeds": 5, "parallel_trials": slots,
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": tpe_startup}})
    assert status == 201, created
    return study_record(port, created, started)


def tuned_pair(port: int, dataset: str, rate: float, trials: int, slots: int, tpe_startup: int,
               epochs: int = EPOCHS) -> dict:
    """The preset's comparison at one missing rate of the dataset's second modality."""
    started = time.perf_counter()
    status, created = call(port, "POST", "/api/studies", {
        "dataset": dataset, "missing_modality": SECOND_MODALITY[dataset], "missing_rate": rate,
        "methods": ["zero_padding", "mle"], "trials": trials, "spec": {"epochs": epochs},
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": tpe_startup}, "pruner": {"name": "median"},
        "parallel_trials": slots, "final_seeds": 5})
    assert status == 201, created
    return study_record(port, created, started)


def rules(port: int, dataset: str) -> dict:
    started = time.perf_counter()
    status, sweep = call(port, "POST", "/api/sweeps", {
        "dataset": dataset, "method": ["mle", "zero_padding", "lower_bound"], "fusion": "add",
        "missing_modality": SECOND_MODALITY[dataset], "missing_rate": [0.8, 0.9, 0.95], "seed": [0, 1, 2, 3, 4],
        "epochs": EPOCHS})
    assert status == 201, sweep

    def done():
        progress = call(port, "GET", f"/api/sweeps/{sweep['id']}")[1]["progress"]
        return progress if progress["done"] else None

    wait_until(done, 6 * 3600, 2.0)
    return {"sweep": call(port, "GET", f"/api/sweeps/{sweep['id']}")[1], "seconds": round(time.perf_counter() - started, 1),
            "table": call(port, "GET", f"/api/sweeps/{sweep['id']}/table")[1],
            "selection_rules": call(port, "GET", f"/api/sweeps/{sweep['id']}/selection-rules")[1],
            "runs": runs(port)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["study", "preset", "pair", "rules"])
    parser.add_argument("--dataset", default="digits", choices=sorted(SECOND_MODALITY))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=0.95, help="pair: the missing rate")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="pair: epochs of every trial and final run")
    parser.add_argument("--trials", type=int, default=20, help="preset: trials per method and rate")
    parser.add_argument("--slots", type=int, default=2, help="preset: the worker's slots, and the trials at once")
    parser.add_argument("--tpe-startup", type=int, default=10, help="preset: TPE's random trials before it models")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped: the stack's processes are stopped too
    with embedded_stack(args.slots if args.what in ("preset", "pair") else 2) as port:
        record = (three_methods(port) if args.what == "study"
                  else tuned_preset(port, args.dataset, args.trials, args.slots, args.tpe_startup)
                  if args.what == "preset"
                  else tuned_pair(port, args.dataset, args.rate, args.trials, args.slots, args.tpe_startup, args.epochs)
                  if args.what == "pair" else rules(port, args.dataset))
        # written before the stack stops: a slow stop must not lose an hour's measurement
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))
    print(f"written to {args.out} ({record['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
