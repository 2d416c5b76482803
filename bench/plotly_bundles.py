"""How long Chromium takes to run each plotly.js bundle the pages could load: today's (core,
heatmap and bar: frontend/vendor/README.md), the "cartesian" partial one the pages loaded before issue 23
(read from git: bench/page_versions.py) and the complete one of the `plotly` Python package. Each
is fetched by a blank page in a browser context of its own (nothing cached) and timed from the
script's insertion to its `load` event (download over loopback, compile and run), then one
1,000-point line chart is drawn with it. The bundles alternate, after a first round not counted.

    python -m bench.plotly_bundles [--rounds 5]
"""

from __future__ import annotations

import argparse
import http.server
import os
import statistics
import threading
from functools import partial

from .page_versions import bundle_before, bundle_now
from .rows import Row, print_table
from .sweep_views import CHROMIUM, PLOTLY_FULL

RUN = """(src) => new Promise((resolve, reject) => {
    const script = document.createElement('script');
    const started = performance.now();
    script.src = src;
    script.onload = () => resolve(performance.now() - started);
    script.onerror = reject;
    document.head.append(script);
})"""
DRAW = """() => {
    const div = document.createElement('div');
    div.style.width = '600px'; div.style.height = '400px';
    document.body.append(div);
    const started = performance.now();
    const x = [...Array(1000).keys()];
    Plotly.newPlot(div, [{type: 'scatter', mode: 'lines', x, y: x.map(Math.sin)}]);
    div.getBoundingClientRect();
    return performance.now() - started;
}"""


class Bundles(http.server.BaseHTTPRequestHandler):
    """Serves a blank page and the bundles by name, never cached."""

    def do_GET(self):  # noqa: N802 (the handler's API)
        name = self.path.strip("/")
        body = b"<!doctype html><title>blank</title>" if name == "" else self.server.bundles.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if name == "" else "text/javascript")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def measure(rounds: int = 5) -> list[Row]:
    from playwright.sync_api import sync_playwright

    bundles = {"today": bundle_now(), "complete": PLOTLY_FULL.read_bytes()}
    if (before := bundle_before()) is not None:
        bundles["cartesian"] = before
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Bundles))
    server.bundles = bundles
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    run_ms = {name: [] for name in bundles}
    draw_ms = {name: [] for name in bundles}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            for i in range(rounds + 1):
                for name in bundles:
                    page = browser.new_page()
                    page.goto(f"{base}/")
                    ran = page.evaluate(RUN, f"{base}/{name}")
                    drew = page.evaluate(DRAW)
                    if i:
                        run_ms[name].append(ran)
                        draw_ms[name].append(drew)
                    page.close()
            browser.close()
    finally:
        server.shutdown()
    median = {name: statistics.median(times) / 1000 for name, times in run_ms.items()}
    load = f"load average {os.getloadavg()[0]:.1f}"
    size = {name: f"{len(body) / 1e6:.2f} MB" for name, body in bundles.items()}
    rows = [Row("plotly.js run in Chromium, today's bundle (core, heatmap, bar)", median["today"], "s",
                note=f"{size['today']}; median of {rounds}, fetched uncached over loopback, compiled and run; "
                     f"first chart drawn in {statistics.median(draw_ms['today']):.0f} ms; {load}")]
    if "cartesian" in median:
        rows.append(Row.compared("plotly.js run in Chromium, today's/cartesian partial bundle (before issue 23)",
                                 median["today"], median["cartesian"], "s",
                                 note=f"{size['cartesian']} for the cartesian bundle; measured alternately in this run"))
    rows.append(Row.compared("plotly.js run in Chromium, today's/complete bundle", median["today"], median["complete"],
                             "s", note=f"{size['complete']} for the complete bundle; measured alternately in this run"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    print_table(measure(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
