"""`make bench`: every benchmark in one run, one table, and the rows as JSON in var/bench.json
(keys: what, figure, unit, baseline, ratio, target, met, note).

    python -m bench                      # all of them (under 10 minutes on a 2-core CPU)
    python -m bench --only eq5 ingestion # some of them
    python -m bench --only slots --quick # several runs per worker, the input pipeline, briefly

Figures are measured here and now; ratios compare figures measured in the same run. A row
whose figure could not be measured on this machine (no GPU) says so instead of a number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from .rows import Row, print_table, write_json

POSTGRES = os.environ.get("MISSMOD_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def eq5() -> list[Row]:
    import torch

    from . import eq5_cost

    return eq5_cost.measure(torch.device("cpu"), min_run_time=0.5)


def training() -> list[Row]:
    from . import training_throughput

    return training_throughput.measure()


def worker_training() -> list[Row]:
    from . import worker_training as worker_path

    return worker_path.measure()


def ingestion() -> list[Row]:
    from . import ingestion as ingestion_bench

    return ingestion_bench.measure(POSTGRES)


def api() -> list[Row]:
    from . import api_views

    return api_views.measure()


def curves() -> list[Row]:
    from . import long_curves

    return long_curves.measure(POSTGRES)


def live() -> list[Row]:
    from . import live_latency

    return live_latency.measure()


def live_runs() -> list[Row]:
    from . import live_runs as live_runs_bench

    return live_runs_bench.measure(POSTGRES)


def streams() -> list[Row]:
    from . import live_streams

    return live_streams.measure()


def pages() -> list[Row]:
    from . import plotly_bundles, sweep_views

    return plotly_bundles.measure() + sweep_views.measure(loads=3)


def slots() -> list[Row]:
    from . import slots_throughput

    return slots_throughput.measure(quick=QUICK)


def studies() -> list[Row]:
    from . import study_throughput

    return study_throughput.measure(quick=QUICK)


def predict() -> list[Row]:
    from . import prediction_latency

    return prediction_latency.measure()


SECTIONS = {"eq5": eq5, "training": training, "worker": worker_training, "ingestion": ingestion, "api": api, "curves": curves, "live": live, "live_runs": live_runs,
            "streams": streams,
            "pages": pages, "slots": slots, "studies": studies, "predict": predict}
QUICK = False


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("VAR_DIR", "var")) / "bench.json")
    parser.add_argument("--quick", action="store_true", help="sections that have one run their quick mode")
    args = parser.parse_args()
    global QUICK
    QUICK = args.quick
    rows: list[Row] = []
    started = time.perf_counter()
    for name in args.only or list(SECTIONS):
        section_started = time.perf_counter()
        print(f"[bench] {name}…", flush=True)
        rows.extend(SECTIONS[name]())
        print(f"[bench] {name} took {time.perf_counter() - section_started:.0f} s", flush=True)
    print(f"\nmissmod benchmarks on {machine()}, {time.perf_counter() - started:.0f} s\n")
    print_table(rows)
    write_json(rows, args.out)
    (args.out.with_suffix(".machine.json")).write_text(json.dumps({"machine": machine()}))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
