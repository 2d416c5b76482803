"""`make serve` (and the server `make run` starts): uvicorn with what the settings say about the
network — HOST, PORT, and which reverse proxies' forwarded headers to believe.

Uvicorn believes `X-Forwarded-For` from 127.0.0.1 unless told otherwise, so any client on
this host (or a proxy that passes the header on) could pass for any address and escape the
sign-in throttle and the stream caps, which count per client address. Here only the proxies
of TRUSTED_PROXIES are believed, and with none (the default) the headers are ignored.

    python -m backend.serve [more uvicorn options, e.g. --workers 2]
"""

from __future__ import annotations

import os
import sys

from .settings import Settings, get_settings

APP = "backend.main:create_app"
# glibc gives threads that allocate arenas of their own (up to 8 per core), and the API answers
# from a pool of threads: memory freed in one stays there, and the API's resident size crept up
# under `make soak` with its caches bounded small (+1.35 MB/min; +0.53 with two arenas, more runs
# and streams served). Two arenas, unless the environment says otherwise.
SERVER_ENVIRONMENT = {"MALLOC_ARENA_MAX": "2"}


def proxy_options(settings: Settings) -> list[str]:
    """Uvicorn's options for forwarded headers: believed from TRUSTED_PROXIES only."""
    if not settings.trusted_proxies:
        return ["--no-proxy-headers"]
    return ["--proxy-headers", "--forwarded-allow-ips", ",".join(settings.trusted_proxies)]


def uvicorn_command(settings: Settings, *options: str) -> list[str]:
    """The server's command line; `options` come last (a later option wins over an earlier one)."""
    return [sys.executable, "-m", "uvicorn", "--factory", APP, "--host", settings.host, "--port", str(settings.port),
            *proxy_options(settings), *options]


def server_environment() -> dict[str, str]:
    """This process's environment with SERVER_ENVIRONMENT's defaults, for the server's process."""
    return {**SERVER_ENVIRONMENT, **os.environ}


def main(argv: list[str] | None = None) -> None:
    command = uvicorn_command(get_settings(), *(sys.argv[1:] if argv is None else argv))
    # FORWARDED_ALLOW_IPS in the environment is uvicorn's own default; the command line says it.
    os.execve(command[0], command, server_environment())


if __name__ == "__main__":
    main()
