"""X-Forwarded-For is believed from the proxies of TRUSTED_PROXIES only (default: none, loopback
included). Uvicorn believes it from 127.0.0.1 unless told otherwise, which `make serve` and
`make run` kept: thirty wrong tokens from rotating forwarded addresses got no 429, and one client
opened 600 streams past the per-client cap (issue 20, item 5). The server here is started with
`make serve`'s own command line (read with `make -n`), a real process on loopback."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import pytest
from pydantic import SecretStr

from backend.serve import uvicorn_command
from backend.settings import Settings

from ..support import ROOT, Process, free_port, settings_env

TOKEN = "correct-horse-battery-staple-42"
RUN = {"dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.5, "epochs": 1}


@contextmanager
def make_serve(settings: Settings, tmp_path, name: str) -> Iterator[str]:
    """`make serve`'s server, as the Makefile starts it (its last command), on a free port;
    stopped when the block ends (it runs in a session of its own)."""
    commands = subprocess.run(["make", "-s", "-n", "serve"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip().splitlines()
    port = free_port()
    env = {**settings_env(settings.model_copy(update={"port": port})), "HOST": "127.0.0.1", "PORT": str(port)}
    process = Process(["bash", "-c", f"exec {commands[-1]}"], env, tmp_path / f"{name}.log")
    try:
        process.wait_for_log("Uvicorn running on", timeout=60)
        # The server itself (bash and backend.serve exec it, same process) has few malloc arenas.
        assert b"MALLOC_ARENA_MAX=2" in Path(f"/proc/{process.popen.pid}/environ").read_bytes().split(b"\0")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def wrong_tokens(client: httpx.Client, addresses: list[str]) -> list[int]:
    return [client.post("/api/session", json={"token": f"wrong-{i}"},
                        headers={"X-Forwarded-For": address}).status_code for i, address in enumerate(addresses)]


def open_streams(client: httpx.Client, run_id: int, addresses: list[str]) -> list[int]:
    """Holds a stream of a queued run (it stays open) per address; their statuses."""
    statuses = []
    for address in addresses:
        request = client.build_request("GET", f"/api/runs/{run_id}/stream",
                                       headers={"X-Forwarded-For": address, **bearer()})
        response = client.send(request, stream=True)
        statuses.append(response.status_code)
    return statuses


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_forwarded_for_is_ignored_unless_it_comes_from_a_trusted_proxy(embedded_settings, tmp_path):
    settings = embedded_settings.model_copy(update={"api_token": SecretStr(TOKEN), "sign_in_attempts_per_minute": 10,
                                                    "max_streams_per_client": 2})
    rotating = [f"198.51.100.{i}" for i in range(1, 31)]

    with make_serve(settings, tmp_path, "default") as base, httpx.Client(base_url=base, timeout=30) as client:
        # Every attempt is the loopback client's, whatever it claims: the eleventh is refused.
        statuses = wrong_tokens(client, rotating)
        assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}, statuses
        run_id = client.post("/api/runs", json=RUN, headers=bearer()).json()["id"]
        assert open_streams(client, run_id, rotating[:3]) == [200, 200, 503]

    # Behind a proxy on this host, named: each forwarded address is a client of its own.
    proxied = settings.model_copy(update={"trusted_proxies": ["127.0.0.1"], "var_dir": tmp_path / "proxied"})
    proxied.make_dirs()
    from backend.migrate import upgrade

    upgrade(proxied.database_url)
    with make_serve(proxied, tmp_path, "proxied") as base, httpx.Client(base_url=base, timeout=30) as client:
        assert set(wrong_tokens(client, rotating)) == {401}
        assert wrong_tokens(client, ["203.0.113.9"] * 11)[-1] == 429  # one client is still throttled
        run_id = client.post("/api/runs", json=RUN, headers=bearer()).json()["id"]
        assert open_streams(client, run_id, rotating[:3]) == [200, 200, 200]
        assert open_streams(client, run_id, ["203.0.113.9"] * 3) == [200, 200, 503]


def test_the_launchers_pass_the_setting_to_uvicorn():
    """`make run` (backend/run_local.py), `make serve`, the compose file and the image all start
    the server through backend/serve.py."""
    assert "--no-proxy-headers" in uvicorn_command(Settings())
    command = uvicorn_command(Settings(trusted_proxies="10.0.0.5, 10.1.0.0/16"), "--workers", "2")
    assert command[command.index("--forwarded-allow-ips") + 1] == "10.0.0.5,10.1.0.0/16"
    assert "--proxy-headers" in command and command[-2:] == ["--workers", "2"]
    with pytest.raises(ValueError, match="reverse proxy"):
        Settings(trusted_proxies="proxy.example.org")
    run_local = (ROOT / "backend" / "run_local.py").read_text()
    assert "uvicorn_command(settings" in run_local and "env=server_environment()" in run_local
    assert "backend.serve" in (ROOT / "docker-compose.yml").read_text()
    assert '"backend.serve"' in (ROOT / "Dockerfile.gpu").read_text()
    assert shlex.split(subprocess.run(["make", "-s", "-n", "serve"], cwd=ROOT, capture_output=True, text=True,
                                      check=True).stdout.splitlines()[-1])[1:3] == ["-m", "backend.serve"]
