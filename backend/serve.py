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


def proxy_options(settings: Settings) -> list[str]:
    """Uvicorn's options for forwarded headers: believed from TRUSTED_PROXIES only."""
    if not settings.trusted_proxies:
        return ["--no-proxy-headers"]
    return ["--proxy-headers", "--forwarded-allow-ips", ",".join(settings.trusted_proxies)]


def uvicorn_command(settings: Settings, *options: str) -> list[str]:
    """The server's command line; `options` come last (a later option wins over an earlier one)."""
    return [sys.executable, "-m", "uvicorn", "--factory", APP, "--host", settings.host, "--port", str(settings.port),
            *proxy_options(settings), *options]


def main(argv: list[str] | None = None) -> None:
    command = uvicorn_command(get_settings(), *(sys.argv[1:] if argv is None else argv))
    # FORWARDED_ALLOW_IPS in the environment is uvicorn's own default; the command line says it.
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
