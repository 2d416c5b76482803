"""The API's contract as OpenAPI says it, and its documentation pages.

- Operation ids are stable names (`runs-list`, `runs-create`, …), not FastAPI's generated
  `list_runs_api_runs_get`: generated clients name their methods after them.
- Every status the API can answer is documented, errors as problem details
  (backend/api/problems.py): the ones a route declares, plus those any request can meet (401
  without the token, 403 cross-site, 413 body too large, 422 invalid input, 500, 503 database
  unreachable).
- The token is an HTTP bearer security scheme (Swagger UI's Authorize button).
- /docs (Swagger UI) and /redoc (ReDoc) load their scripts from this server (the files of the
  fastapi-offline package), never from a CDN: missmod runs on GPU hosts without internet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

from ..security import OPEN_PATHS
from .problems import PROBLEM_MEDIA_TYPE, FieldIssue, Problem

DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL = "/static/api-docs"
BEARER_SCHEME = "bearerAuth"
# The docs pages start their scripts inline (FastAPI's pages), so the dashboard's CSP does not fit
# them; this one still lets nothing leave the server: ReDoc's side menu, for one, shows a logo
# from cdn.redoc.ly, which a page offline would ask for in vain.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

STABILITY = """
**Stability.** Everything under `/api/` is version 1 of this API. Within it, changes only add:
new endpoints, new optional parameters, new fields in responses. No field is removed or renamed,
no status code changes meaning, and operation ids stay as they are. Scripts should ignore fields
they do not know. A change that would break this promise would come under a new prefix
(`/api/v2/`), with `/api/` kept alongside.

**Lists** page by cursor: pass `limit`, then the `next_cursor` of each page as `cursor` until it is
null (`total` counts every match where that is cheap).

**Errors** are RFC 9457 problem details (`application/problem+json`): `type`, `title`, `status`
and `detail`; a 422's `detail` lists each invalid field with its `loc` (e.g. `["body", "missing_rate"]`).

**Authentication**: when the server has an `API_TOKEN`, send `Authorization: Bearer <token>`.
"""

# Route function name → its operation id. Kept in one table so that the ids, which generated
# clients and scripts depend on, are visible and reviewed together.
OPERATION_IDS = {
    "health": "health-get",
    "sign_in": "session-create",
    "sign_out": "session-delete",
    "list_datasets": "datasets-list",
    "delete_dataset": "datasets-delete",
    "list_methods": "methods-list",
    "list_choices": "choices-list",
    "create_run": "runs-create",
    "log_external_run": "runs-log-external",
    "list_runs": "runs-list",
    "bulk_delete_runs": "runs-bulk-delete",
    "bulk_retry_runs": "runs-bulk-retry",
    "bulk_cancel_runs": "runs-bulk-cancel",
    "get_run": "runs-get",
    "update_run": "runs-update",
    "delete_run": "runs-delete",
    "retry_run": "runs-retry",
    "get_metrics": "runs-metrics",
    "get_paired": "runs-paired",
    "get_predictions": "runs-predictions",
    "get_system_metrics": "runs-system-metrics",
    "get_confusion": "runs-confusion",
    "cancel_run": "runs-cancel",
    "stream_run": "runs-stream",
    "list_artifacts": "runs-artifacts-list",
    "download_artifact": "runs-artifacts-get",
    "preview_sweep": "sweeps-preview",
    "create_sweep": "sweeps-create",
    "list_sweeps": "sweeps-list",
    "get_sweep": "sweeps-get",
    "delete_sweep": "sweeps-delete",
    "retry_sweep": "sweeps-retry",
    "get_table": "sweeps-table",
    "get_trend": "sweeps-trend",
    "get_summary": "sweeps-summary",
    "stream_sweep": "sweeps-stream",
    "list_presets": "presets-list",
    "preview_preset": "presets-preview",
    "create_preset_sweep": "presets-create-sweep",
    "preprocess_dataset": "datasets-preprocess",
    "extract_features": "datasets-extract-features",
    "list_jobs": "jobs-list",
    "get_job": "jobs-get",
    "cancel_job": "jobs-cancel",
    "stream_job": "jobs-stream",
    "list_workers": "workers-list",
    "get_queue": "workers-queue",
    "stream_workers": "workers-stream",
    "default_study_spaces": "studies-spaces",
    "create_study": "studies-create",
    "list_studies": "studies-list",
    "list_study_presets": "studies-presets-list",
    "create_preset_study": "studies-presets-create",
    "get_study": "studies-get",
    "list_study_trials": "studies-trials",
    "get_study_plots": "studies-plots",
    "get_study_table": "studies-table",
    "get_study_selection_rules": "studies-selection-rules",
    "cancel_study": "studies-cancel",
    "delete_study": "studies-delete",
    "get_sweep_selection_rules": "sweeps-selection-rules",
}


def operation_id(route: APIRoute) -> str:
    """A route added without an entry above still gets a readable, stable id."""
    if route.name in OPERATION_IDS:
        return OPERATION_IDS[route.name]
    tag = str(route.tags[0]).replace(" ", "-") if route.tags else "api"
    return f"{tag}-{route.name.replace('_', '-')}"


# Statuses any request may meet, whatever the route.
ALWAYS = {500: "Unexpected error (a reference to the server log)",
          503: "The database (or the broker) is unreachable; try again shortly (Retry-After)"}
UNAUTHORIZED = {401: "API_TOKEN is set and the request does not carry it (`Authorization: Bearer <token>`)"}
CROSS_SITE = {403: "A state-changing request sent by a page of another site"}
BODY_ERRORS = {400: "The request body is not valid JSON",
               413: "The request body is larger than MAX_REQUEST_BYTES"}
INVALID = {422: "An input is invalid: `detail` lists each field at fault (`loc`, `msg`)"}
NOT_FOUND = {404: "Not found"}


def _problem_content() -> dict[str, Any]:
    return {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _document_errors(path: str, method: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    extra: dict[int, str] = dict(ALWAYS)
    if path not in OPEN_PATHS:
        extra.update(UNAUTHORIZED)
    if method not in ("get", "head", "options"):
        extra.update(CROSS_SITE)
    if "requestBody" in operation:
        extra.update(BODY_ERRORS)
    if operation.get("parameters") or "requestBody" in operation:
        extra.update(INVALID)
    if any(p.get("in") == "path" for p in operation.get("parameters", [])):
        extra.update(NOT_FOUND)
    for status, description in extra.items():
        responses.setdefault(str(status), {"description": description})
    for status, response in responses.items():
        if not status[0] in "45" or (path == "/api/health" and status == "503"):
            continue
        # FastAPI's own 422 schema (HTTPValidationError) becomes the problem schema.
        response["content"] = _problem_content()
        if status == "422" and response.get("description") == "Validation Error":
            response["description"] = INVALID[422]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                         description=(app.description or "") + STABILITY, routes=app.routes)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (Problem, FieldIssue):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(model_schema.pop("$defs", {}))
        schemas[model.__name__] = model_schema
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = {BEARER_SCHEME: {
        "type": "http", "scheme": "bearer",
        "description": "The server's API_TOKEN; needed only when the server has one"}}
    # Either the token, or nothing when the server has none (`make run` on a laptop).
    schema["security"] = [{BEARER_SCHEME: []}, {}]
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if path in OPEN_PATHS:
                operation["security"] = []
            _document_errors(path, method, operation)
    app.openapi_schema = schema
    return schema


def install_docs(app: FastAPI) -> None:
    """The OpenAPI generator, and /docs and /redoc on local assets (create the app with
    docs_url=None, redoc_url=None; call before mounting /static)."""
    app.openapi = lambda: build_openapi(app)
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="api-docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    def with_csp(page: HTMLResponse) -> HTMLResponse:
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return with_csp(get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
            # No online validator badge: it would call validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        ))

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return with_csp(get_redoc_html(openapi_url=openapi_url, title=f"{app.title} API",
                                       redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
                                       redoc_favicon_url="/static/favicon.svg", with_google_fonts=False))
