"""The pages link their own scripts and styles with the hash of their content, and those URLs are
served as immutable: a second visit runs them from the browser's cache without asking again."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "frontend" / "static"


def test_a_page_links_its_scripts_by_content_hash_and_those_are_kept_for_good(client_for, embedded_settings):
    client = client_for(embedded_settings)
    page = client.get("/sweeps")
    assert page.status_code == 200
    linked = dict(re.findall(r'/static/([\w.]+)\?v=([0-9a-f]+)"', page.text))
    assert {"common.js", "sweeps.js", "app.css"} <= set(linked), page.text
    for name, version in linked.items():
        assert version == hashlib.blake2b((STATIC / name).read_bytes(), digest_size=6).hexdigest()
        answer = client.get(f"/static/{name}?v={version}")
        assert answer.status_code == 200 and answer.content == (STATIC / name).read_bytes()
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
    # Without the hash, or with another one (an old page's), it is revalidated as before.
    for path in ["/static/common.js", "/static/common.js?v=000000000000"]:
        answer = client.get(path)
        assert answer.status_code == 200 and "cache-control" not in answer.headers and answer.headers["etag"]


TRACE_TYPES_THE_PAGES_DRAW = {
    "scatter": "{x: [1, 2, 3], y: [2, 1, 3]}",
    "heatmap": "{z: [[1, 0], [0, 1]]}",  # confusion matrices
    "bar": "{x: ['lr', 'epochs'], y: [0.7, 0.3], orientation: 'v'}",  # the study page's importances (Optuna)
}


@pytest.mark.browser
def test_the_pages_plotly_js_draws_every_trace_type_they_use(embedded_settings, start_server, page):
    """The pages load plotly.js built with only the trace types they draw (frontend/vendor/
    README.md); one it lacked would be drawn as a scatter, silently. Each is drawn here with the
    bundle the pages link, in Chromium, and keeps its type."""
    from backend.pages.routes import templates

    base = start_server(embedded_settings)
    page.goto(f"{base}/")
    page.add_script_tag(url=f"{base}{templates.env.globals['plotly_js']}")
    for kind, trace in TRACE_TYPES_THE_PAGES_DRAW.items():
        drawn = page.evaluate(f"""async () => {{
            const div = document.createElement('div');
            document.body.append(div);
            await Plotly.newPlot(div, [{{type: '{kind}', ...{trace}}}]);
            return [div._fullData[0].type, div.querySelectorAll('.{kind}layer > *').length];
        }}""")
        assert drawn[0] == kind and drawn[1] > 0, (kind, drawn)
    assert page.js_errors == []
