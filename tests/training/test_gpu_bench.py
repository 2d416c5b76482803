"""The GPU host's benchmark (bench/gpu.py) and the first day's checklist (bench/gpu_checklist.py)
in their dry modes on the CPU: every code path they take on a GPU runs here at a small scale, so
the scripts are known to work before a GPU is lent; and the benchmark forks before touching CUDA."""

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


def test_gpu_checklist_dry_mode_runs_on_cpu(tmp_path):
    out = tmp_path / "checklist.json"
    done = subprocess.run([sys.executable, "bench/gpu_checklist.py", "--device", "cpu", "--tiny", "--out", str(out)],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    rows = {row["what"]: row for row in json.loads(out.read_text())}
    for precision in ("fp32", "fp16"):
        run = rows[f"mle small_cnn run, {precision}: epoch 2"]
        assert run["figure"] > 0 and "losses finite" in run["note"], run
    assert "loss scale" in rows["mle small_cnn run, fp16: epoch 2"]["note"]
    assert rows["host syncs in a training epoch (set_sync_debug_mode)"]["figure"] is None  # no GPU: not checked


# Runs bench/gpu.py's main() up to its first fork, with the small run replaced by a probe that
# reports, from the forked child, whether CUDA is unusable there (a "bad fork"); then the same
# after this process has called torch.cuda.is_available(), the mechanism the bench must avoid.
FORK_PROBE = """
import torch
import bench.gpu as bench


class Forked(Exception):
    pass


def probe(job):
    raise Forked(torch.cuda._is_in_bad_fork())


def child_state(*args):
    try:
        bench.main(["--tiny", *args])
    except Forked as child:
        return child.args[0]


bench._one_small_run = probe
print(child_state("--device", "auto"), child_state("--device", "cuda"))  # --device cuda: main checked CUDA first
torch.cuda.is_available()
print(child_state("--device", "auto"))
"""


def test_the_bench_forks_its_small_runs_before_touching_cuda():
    done = subprocess.run([sys.executable, "-c", FORK_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    before, after = done.stdout.strip().splitlines()[-2:]
    assert before == "False False"  # the children can use CUDA
    assert after == "True"  # the check can fail: after is_available() in the parent, they cannot
