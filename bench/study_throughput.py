"""A hyperparameter study's throughput and its own cost, measured in one run on a fresh embedded
stack (SQLite, filesystem broker, the API and one worker with two slots):

- trials per minute of the same small study (digits, zero padding and lower bound, 8 trials
  each, 10 epochs) without pruning and with the median pruner, and their ratio: what pruning buys;
- the study's overhead outside training as a share of the search's wall time: the seconds spent
  choosing each trial's parameters (Optuna rebuilt from the database, then asked) and deciding
  after each epoch whether to prune (the same, then the pruner), summed over the trials, over the
  wall time from the study's creation to its last trial's end. Each arm's search runs in a
  process that is also training (the worker's run process, the API), so this is the study's whole
  cost; the target is 5%.

    python -m bench.study_throughput [--quick]
"""

from __future__ import annotations

import argparse
import time

from .paper_preset import call, wait_until
from .rows import Row, print_table
from .slots_throughput import embedded_stack

STUDY = {"dataset": "digits", "missing_modality": "bottom", "missing_rate": 0.9,
         "methods": ["zero_padding", "lower_bound"], "spec": {"epochs": 10}, "trials": 8, "parallel_trials": 2,
         "final_seeds": 1}
PRUNERS = {"none": {"name": "none"}, "median": {"name": "median", "n_startup_trials": 2, "n_warmup_epochs": 1}}


def search(port: int, pruner: dict, trials: int) -> dict:
    """Create the study, wait until every trial has ended (the study asks for its final runs),
    then cancel it (the final runs are not what is measured); the search's figures."""
    started = time.perf_counter()
    status, study = call(port, "POST", "/api/studies", {**STUDY, "trials": trials, "pruner": pruner})
    assert status == 201, study

    def searched():
        current = call(port, "GET", f"/api/studies/{study['id']}")[1]
        return current if current["state"] != "searching" else None

    done = wait_until(searched, 3600, 0.2)
    wall = time.perf_counter() - started
    call(port, "POST", f"/api/studies/{study['id']}/cancel")
    counts = done["trials"]
    assert counts["failed"] == 0 and counts["total"] == counts["budget"], counts
    return {"wall": wall, "trials": counts["total"], "pruned": counts["pruned"], "overhead": done["overhead_seconds"],
            "trials_per_minute": counts["total"] * 60 / wall}


def measure(quick: bool = False) -> list[Row]:
    trials = 4 if quick else STUDY["trials"]
    with embedded_stack(2) as port:
        figures = {name: search(port, pruner, trials) for name, pruner in PRUNERS.items()}
    none, median = figures["none"], figures["median"]
    overhead = sum(f["overhead"] for f in figures.values()) / sum(f["wall"] for f in figures.values())
    setting = f"digits, zero_padding + lower_bound, {trials} trials each, {STUDY['spec']['epochs']} epochs, 2 slots"
    return [
        Row("study trials per minute, no pruning", none["trials_per_minute"], "trials/min", note=setting),
        Row.compared("study trials per minute, median pruning / none", median["trials_per_minute"],
                     none["trials_per_minute"], "trials/min",
                     note=f"{median['pruned']} of {median['trials']} trials pruned"),
        Row("study overhead outside training, share of wall time", 100 * overhead, "%", target="<= 5",
            met=100 * overhead <= 5,
            note=f"{sum(f['overhead'] for f in figures.values()):.2f} s of asking and pruning decisions over "
                 f"{sum(f['wall'] for f in figures.values()):.0f} s of search, both studies"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 trials per method")
    print_table(measure(parser.parse_args().quick))


if __name__ == "__main__":
    main()
