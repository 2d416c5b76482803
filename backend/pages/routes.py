"""The HTML pages. They hold no data of their own: their scripts read the REST API and the
live stream, so the pages and API can never disagree."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import jinja2
import plotly
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from training import reproducibility
from training.spec import FUSIONS

from ..api.deps import SessionDep, SettingsDep
from ..runs import service
from ..studies import service as studies
from ..sweeps import service as sweeps
from ..sweeps.presets import PRESETS
from ..security import safe_next_path

FRONTEND_DIR = Path(__file__).resolve().parents[2] / "frontend"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
# What the pages load: plotly.js with only the trace types the pages draw (scatter, heatmap, and
# bar for the study page's Optuna figures), its version in the name (frontend/vendor/README.md).
# The browser runs it in about a third of the time of plotly.js's "cartesian" partial bundle and
# a sixth of the complete one: it was the longest task of every page with a chart.
PLOTLY_PARTIAL_JS = FRONTEND_DIR / "vendor" / "plotly-missmod-4.1.1.min.js"

templates = Jinja2Templates(directory=FRONTEND_DIR / "templates")
templates.env.globals["plotly_js"] = f"/vendor/{PLOTLY_PARTIAL_JS.name}"
STATIC_DIR = FRONTEND_DIR / "static"


# The pages' own scripts and styles are linked with their content's hash (/static/run.js?v=…)
# and served with it as immutable: a second visit runs them from the browser's cache without
# asking the server again (a request each, on the page's critical path, to a server that may be
# busy), and a changed file is a new URL.
@lru_cache(maxsize=256)
def _hash_of(path: str, modified_ns: int) -> str:
    return hashlib.blake2b((STATIC_DIR / path).read_bytes(), digest_size=6).hexdigest()


def content_hash(path: str) -> str | None:
    try:
        return _hash_of(path, (STATIC_DIR / path).stat().st_mtime_ns)
    except OSError:
        return None


@jinja2.pass_context
def _url_for(context, name: str, /, **path_params) -> str:
    url = str(context["request"].url_for(name, **path_params))
    version = content_hash(path_params["path"]) if name == "static" else None
    return f"{url}?v={version}" if version else url


templates.env.globals["url_for"] = _url_for


class VersionedStaticFiles(StaticFiles):
    """/static: a file asked for with its current content hash (?v=, as the pages link it) may
    be kept for good; without it, or with another, it is revalidated (ETag) as before."""

    async def get_response(self, path: str, scope):
        response = await super().get_response(path, scope)
        query = dict(part.split("=", 1) for part in scope.get("query_string", b"").decode().split("&") if "=" in part)
        if response.status_code in (200, 304) and query.get("v") and query["v"] == content_hash(path):
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response
router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request):
    return templates.TemplateResponse(request, "runs.html", {"title": "Runs", "fusions": FUSIONS})


@router.get("/runs/new", response_class=HTMLResponse)
def new_run_page(request: Request):
    return templates.TemplateResponse(request, "new_run.html", {"title": "New run"})


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: int, session: SessionDep):
    if not 1 <= run_id <= 2**31 - 1:
        raise service.RunNotFound(run_id)
    run = service.get_run(session, run_id)  # not found: backend/api/errors.py answers
    trial = studies.trial_of_run(session, run_id)  # a study's trial says so
    # A stored record that is somehow not an object shows as not recorded, never as an error.
    environment = run.environment if isinstance(run.environment, dict) else None
    return templates.TemplateResponse(request, "run.html", {
        "title": run.name, "run": run, "trial": trial, "environment": environment,
        "environment_fields": [(key, reproducibility.LABELS[key]) for key in reproducibility.FIELDS]})


@router.get("/sweeps", response_class=HTMLResponse)
def sweeps_page(request: Request):
    return templates.TemplateResponse(request, "sweeps.html", {"title": "Sweeps"})


@router.get("/sweeps/new", response_class=HTMLResponse)
def new_sweep_page(request: Request):
    return templates.TemplateResponse(request, "new_sweep.html", {"title": "New sweep"})


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(request: Request, sweep_id: int, session: SessionDep):
    sweep = sweeps.get_sweep(session, sweep_id)
    preset = PRESETS.get(sweep.preset or "")
    return templates.TemplateResponse(request, "sweep.html", {"title": sweep.name, "sweep": sweep, "preset": preset})


@router.get("/studies", response_class=HTMLResponse)
def studies_page(request: Request):
    return templates.TemplateResponse(request, "studies.html", {"title": "Studies"})


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(request: Request, study_id: int, session: SessionDep):
    if not 1 <= study_id <= 2**31 - 1:
        raise studies.StudyNotFound(study_id)
    study = studies.get_study(session, study_id)  # not found: backend/api/errors.py answers
    return templates.TemplateResponse(request, "study.html", {"title": study.name, "study": study})


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request):
    """Runs side by side: `/compare?runs=1,2,3` (the page reads the ids itself)."""
    return templates.TemplateResponse(request, "compare.html", {"title": "Compare runs"})
@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request):
    """The live workers, their slots and GPUs, and the queue (GET /api/workers/stream)."""
    return templates.TemplateResponse(request, "workers.html", {"title": "Workers"})


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, settings: SettingsDep, next: str | None = None):
    return templates.TemplateResponse(request, "login.html", {
        "title": "Sign in", "next_path": safe_next_path(next), "token_required": settings.api_token is not None})


@router.get("/vendor/plotly.min.js")
def plotly_js() -> FileResponse:
    # The complete bundle, served from the installed plotly package: no CDN, works offline.
    return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})


@router.get(f"/vendor/{PLOTLY_PARTIAL_JS.name}")
def plotly_partial_js() -> FileResponse:
    # The version is in the name: a browser may keep it for good.
    return FileResponse(PLOTLY_PARTIAL_JS, media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})
