"""An API server process for the benchmarks that measure it from outside (live_latency,
live_streams): started on a free loopback port with the benchmark's database and broker, and
returned once it answers /api/health."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

from backend.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_api(settings: Settings, port: int, extra_env: dict[str, str] | None = None,
              patience: float = 60) -> subprocess.Popen:
    env = {**os.environ, "VAR_DIR": str(settings.var_dir), "DATABASE_URL": settings.database_url,
           "BROKER_URL": settings.broker_url, **(extra_env or {})}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "backend.main:create_app",
                               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                              cwd=ROOT, env=env)
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not start")
