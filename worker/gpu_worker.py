"""Start one Celery worker on one GPU of this host: `python -m worker.gpu_worker [celery options]`.

One worker process per GPU (docs/architecture.md §5). Docker Compose cannot give each replica of a scaled
service its own GPU (`count: 1` hands every replica the same one), so each replica sees the
host's GPUs and claims one itself: an exclusive lock on a file per GPU, in GPU_LOCK_DIR, which
the replicas of a host share. The kernel drops the lock when the worker dies, so a restarted
replica claims a GPU again. The worker then sees only its GPU (CUDA_VISIBLE_DEVICES) and is
named after it. CUDA is never touched here: the GPUs are listed with nvidia-smi.

With CUDA_VISIBLE_DEVICES already set (a GPU chosen by hand) or no GPU at all (a CPU worker),
the worker starts as it is. A replica beyond the number of GPUs waits for one to free up.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from backend.settings import get_settings

log = logging.getLogger("missmod.gpu_worker")
WAIT_SECONDS = 30.0


def list_gpus() -> list[str]:
    """The UUIDs of the GPUs this container sees; none without an NVIDIA driver."""
    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listing.splitlines() if line.strip()]


def claim_gpu(gpus: list[str], lock_dir: Path) -> tuple[str, int] | None:
    """The first GPU no other worker of this host holds, and the open file that holds its lock."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for gpu in gpus:
        fd = os.open(lock_dir / f"{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return gpu, fd
    return None


def worker_command(node: str, extra: list[str]) -> list[str]:
    # No --concurrency: the app takes it from RUNS_PER_GPU (worker/celery_app.py).
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel", "INFO",
            "--hostname", node, *extra]


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    host = socket.gethostname()
    env = dict(os.environ)
    if "CUDA_VISIBLE_DEVICES" in env or not (gpus := list_gpus()):
        what = f"GPU(s) {env['CUDA_VISIBLE_DEVICES']!r}" if "CUDA_VISIBLE_DEVICES" in env else "no GPU: CPU"
        log.info("starting a worker on %s", what)
        os.execvpe(sys.executable, worker_command(f"worker@{host}", argv), env)
    lock_dir = get_settings().gpu_lock_dir
    while (claimed := claim_gpu(gpus, lock_dir)) is None:
        log.warning("all %d GPU(s) of this host are held by other workers; waiting for one", len(gpus))
        time.sleep(WAIT_SECONDS)
    gpu, fd = claimed
    os.set_inheritable(fd, True)  # the lock lives as long as the worker (and its pool processes)
    env["CUDA_VISIBLE_DEVICES"] = gpu
    node = f"{gpu.removeprefix('GPU-')[:8]}@{host}"
    log.info("claimed %s; starting worker %s", gpu, node)
    os.execvpe(sys.executable, worker_command(node, argv), env)


if __name__ == "__main__":
    main(sys.argv[1:])
