"""The GPU host's benchmark (bench/gpu.py) in its dry mode on the CPU: every code path it takes on a
GPU runs here at a small scale, so the script is known to work before a GPU is lent."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT


def test_gpu_bench_dry_mode_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--tiny", "--out", str(out)], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for row in ("slot(s) sharing the cpu", "input pipeline", "fp32 step", "bf16 mixed-precision step",
                "fed by the input pipeline", "GPU utilisation", "peak GPU memory"):
        assert row in table, table
    import json

    rows = {row["what"]: row for row in json.loads(out.read_text())}
    step = next(r for w, r in rows.items() if "bf16 mixed-precision step" in w)
    assert step["figure"] > 0 and step["baseline"] > 0
    assert rows["GPU utilisation while training (bf16)"]["figure"] is None  # no GPU: absent, not zero
