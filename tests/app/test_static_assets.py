"""The pages link their own scripts and styles with the hash of their content, and those URLs are
served as immutable: a second visit runs them from the browser's cache without asking again."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

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
