"""The pages' scripts and plotly.js bundle as they were before issue 23 (redraws coalesced per
frame, markers only on short curves, the sweep page's reconnect; plotly.js's "cartesian" partial
bundle), served in place of today's so that a page's old and new drawing are timed in the same
run, against the same server and data.

Both versions go through Playwright's request interception (route.fulfill), scripts and
plotly.js alike, so neither is served from the HTTP cache: the comparison is like for like.
The old files are read from git (a checkout is needed, as for `make bench`); without git,
`scripts_before()` is None and the rows have no baseline.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "frontend" / "static"
# main just before issue 23's page work (parts 2 and 3)
BEFORE = "78c2382"
BUNDLE_NOW = ROOT / "frontend" / "vendor" / "plotly-missmod-4.1.1.min.js"
BUNDLE_BEFORE = "frontend/vendor/plotly-cartesian-4.1.1.min.js"  # at BEFORE
BUNDLE_URL = re.compile(r"/vendor/plotly-[^/]+\.min\.js$")  # the page's own (not /vendor/plotly.min.js)


def scripts_now() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in STATIC.glob("*.js")}


def bundle_now() -> bytes:
    return BUNDLE_NOW.read_bytes()


def bundle_before() -> bytes | None:
    """The plotly.js bundle the pages loaded at BEFORE (None without git)."""
    try:
        return subprocess.run(["git", "show", f"{BEFORE}:{BUNDLE_BEFORE}"], cwd=ROOT, capture_output=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def scripts_before() -> dict[str, bytes] | None:
    scripts = {}
    for name in scripts_now():
        try:
            scripts[name] = subprocess.run(["git", "show", f"{BEFORE}:frontend/static/{name}"], cwd=ROOT,
                                           capture_output=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            if name in ("common.js", "charts.js", "run.js", "sweep.js"):
                return None  # no checkout, or no such commit: no baseline
    return scripts


def serve(page, scripts: dict[str, bytes], bundle: bytes | None = None) -> None:
    """Answer the page's requests for /static/<name>.js with `scripts` (a name it lacks: as
    served), and, with `bundle`, for the page's plotly.js bundle with it."""
    if bundle is not None:
        page.route(BUNDLE_URL, lambda route: route.fulfill(body=bundle, content_type="text/javascript",
                                                           headers={"Cache-Control": "no-store"}))

    def fulfil(route):
        name = route.request.url.rsplit("/", 1)[-1].split("?", 1)[0]
        if name in scripts:
            route.fulfill(body=scripts[name], content_type="text/javascript", headers={"Cache-Control": "no-store"})
        else:
            route.continue_()

    page.route(re.compile(r"/static/[^/?]+\.js(\?.*)?$"), fulfil)  # the pages link them with ?v=<hash>
