"""The API documentation pages work on a host without internet: Chromium with every request
that does not go to the server aborted draws Swagger UI and ReDoc from the server's own files."""

from __future__ import annotations

import pytest

from tests.support import wait_in_page

pytestmark = pytest.mark.browser


def offline(page, base: str) -> list[str]:
    """Abort every request that leaves the server; returns the list of those that tried."""
    blocked: list[str] = []

    def route(request_route):
        url = request_route.request.url
        if url.startswith(base + "/") or url == base:
            request_route.continue_()
        else:
            blocked.append(url)
            request_route.abort()

    page.route("**/*", route)
    return blocked


def test_swagger_ui_and_redoc_render_with_the_network_blocked(page, embedded_settings, start_server):
    base = start_server(embedded_settings)
    blocked = offline(page, base)

    page.goto(f"{base}/docs")
    # Swagger UI's ids are operations-<tag>-<operationId>: the stable ids, drawn from /openapi.json
    page.wait_for_selector("#operations-runs-runs-list", timeout=30_000)
    page.wait_for_selector("#operations-runs-runs-log-external")
    assert page.locator(".opblock").count() >= 30
    assert page.locator("button.authorize").count() == 1  # the bearer scheme's Authorize button
    page.click("#operations-runs-runs-get .opblock-summary")
    page.wait_for_selector("#operations-runs-runs-get .responses-table")
    assert "application/problem+json" in page.text_content("#operations-runs-runs-get")

    page.goto(f"{base}/redoc")
    wait_in_page(page, "document.querySelectorAll('[data-section-id^=\"operation/\"]').length >= 30")
    assert "runs-list" in page.content()

    assert blocked == []
    assert page.js_errors == []
