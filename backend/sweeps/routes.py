"""REST routes of sweeps and paper presets. Thin: shapes at the edge, logic in grid.py,
presets.py, analysis.py and service.py."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from sse_starlette import EventSourceResponse

from ..api import idempotency
from ..api.deps import RunQueueDep, SessionDep, SettingsDep
from ..api.params import Offset, SweepId
from ..catalog import registry
from ..runs.validation import DatasetCatalog
from . import service
from .analysis import missing_rate_trend
from .export import table_csv, table_latex
from .grid import SweepPlan, expand_grid, plan_sweep
from .presets import PRESETS, Preset, PresetPlan, feature_dataset_names, missing_capabilities, plan_preset
from .schemas import (
    InvalidCombinations,
    PresetOut,
    PresetPreview,
    PresetRequest,
    RetriedRuns,
    SweepCreate,
    SweepCreated,
    SweepOut,
    SweepPage,
    SweepPreview,
    SweepProgress,
    TableOut,
    TrendOut,
    table_out,
    trend_out,
)
from .stream import sweep_events

router = APIRouter(prefix="/api/sweeps", tags=["sweeps"])
presets_router = APIRouter(prefix="/api/presets", tags=["presets"])

NOT_FOUND = {404: {"description": "No sweep with this id"}}
AWAITING_BROKER = {202: {"description": "Saved with all its runs, but the broker could not be reached: the runs not "
                                         "sent wait for it (`awaiting_broker`) and are sent when it is back"}}


def _get_or_404(session, sweep_id: int):
    try:
        return service.get_sweep(session, sweep_id)
    except service.SweepNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} not found") from None


def _sweep_out(session, sweep) -> SweepOut:
    progress = service.progress_of(session, [sweep.id])[sweep.id]
    return SweepOut(id=sweep.id, name=sweep.name, created_at=sweep.created_at, grid=sweep.grid, preset=sweep.preset,
                    preset_options=sweep.preset_options, progress=SweepProgress(**progress))


def _invalid_out(plan: SweepPlan) -> list[InvalidCombinations]:
    return [InvalidCombinations(loc=list(g.loc), msg=g.msg, input=g.input, combinations=g.count, example=g.example)
            for g in plan.invalid]


def _refusal(plan: SweepPlan, skip_invalid: bool) -> list[dict] | None:
    """The 422 errors that refuse this plan, or None when it can be created."""
    if not plan.runs:
        errors = [g.as_error(plan.combinations) for g in plan.invalid]
        return errors or [{"type": "value_error", "loc": ("body",), "msg": "the grid is empty", "input": None}]
    if plan.invalid and not skip_invalid:
        return [g.as_error(plan.combinations) for g in plan.invalid]
    return None


def _create(session, queue, response: Response, plan: SweepPlan, key: str | None, **sweep_fields) -> SweepCreated:
    """201 when every run id reached the broker; 202 when some wait for it; 200 when an earlier
    request with the same Idempotency-Key created the sweep (nothing created now)."""
    sweep, created = idempotency.create_once(
        session, key, lambda k: service.sweep_by_idempotency_key(session, k),
        lambda: service.create_sweep(session, queue, plan, idempotency_key=key, **sweep_fields)[0])
    runs = service.runs_of(session, sweep.id)
    if not created:
        if sweep.grid != sweep_fields["grid"] or sweep.preset != sweep_fields.get("preset"):
            raise idempotency.reused_for_another_request(key)
        response.status_code = status.HTTP_200_OK
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    awaiting = [r.id for r in runs if r.awaiting_broker]
    if created and awaiting:
        response.status_code = status.HTTP_202_ACCEPTED
    return SweepCreated(**_sweep_out(session, sweep).model_dump(), run_ids=[r.id for r in runs],
                        left_out=_invalid_out(plan), awaiting_broker=awaiting)


def _catalog(settings, session) -> DatasetCatalog:
    return DatasetCatalog(settings.data_dir, settings.video_options(), registry.lookup(session))


def _plan(payload: SweepCreate, settings, session) -> tuple[SweepPlan, str]:
    grid = payload.grid()
    plan = plan_sweep(expand_grid(grid), _catalog(settings, session))
    return plan, payload.name or service.default_sweep_name(grid, len(plan.runs))


@router.post("/preview", response_model=SweepPreview)
def preview_sweep(payload: SweepCreate, settings: SettingsDep, session: SessionDep) -> SweepPreview:
    """How many runs the grid would create and which combinations are invalid; writes nothing."""
    plan, name = _plan(payload, settings, session)
    return SweepPreview(combinations=plan.combinations, runs=len(plan.runs), invalid=_invalid_out(plan),
                        would_refuse=_refusal(plan, payload.skip_invalid) is not None, name=name)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SweepCreated,
             responses={**AWAITING_BROKER, **idempotency.REPLAYED,
                        422: {"description": "A field or a combination is invalid; nothing written"}})
def create_sweep(payload: SweepCreate, response: Response, session: SessionDep, queue: RunQueueDep,
                 settings: SettingsDep, idempotency_key: idempotency.KeyHeader = None) -> SweepCreated:
    """Expand the grid into runs, commit them all, then queue them (seed by seed)."""
    key = idempotency.checked_key(idempotency_key)
    plan, name = _plan(payload, settings, session)
    errors = _refusal(plan, payload.skip_invalid)
    if errors:
        raise RequestValidationError(errors)
    return _create(session, queue, response, plan, key, name=name, grid=payload.grid())


@router.get("", response_model=SweepPage)
def list_sweeps(session: SessionDep, limit: int = Query(50, ge=1, le=500), offset: Offset = 0) -> SweepPage:
    """Sweeps, newest first, with their progress."""
    sweeps, total = service.list_sweeps(session, limit, offset)
    progress = service.progress_of(session, [s.id for s in sweeps])
    items = [SweepOut(id=s.id, name=s.name, created_at=s.created_at, grid=s.grid, preset=s.preset,
                      preset_options=s.preset_options, progress=SweepProgress(**progress[s.id])) for s in sweeps]
    return SweepPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{sweep_id}", response_model=SweepOut, responses=NOT_FOUND)
def get_sweep(sweep_id: SweepId, session: SessionDep) -> SweepOut:
    """The sweep and its progress (runs per state). Its runs: GET /api/runs?sweep={id}."""
    return _sweep_out(session, _get_or_404(session, sweep_id))


@router.delete("/{sweep_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
def delete_sweep(sweep_id: SweepId, session: SessionDep, settings: SettingsDep,
                 keep_runs: bool = Query(False, description="Keep the runs (detached from any sweep)")) -> Response:
    """Delete the sweep and its runs with their files (runs still training are stopped)."""
    try:
        service.delete_sweep(session, sweep_id, keep_runs, settings)
    except service.SweepNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} not found") from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{sweep_id}/retry", response_model=RetriedRuns, responses=NOT_FOUND)
def retry_sweep(sweep_id: SweepId, session: SessionDep, queue: RunQueueDep, settings: SettingsDep) -> RetriedRuns:
    """Queue every failed or cancelled run of the sweep again, from scratch (with the broker down,
    they wait for it)."""
    _get_or_404(session, sweep_id)
    return RetriedRuns(run_ids=service.retry_sweep(session, sweep_id, queue, settings))


@router.get("/{sweep_id}/table", response_model=TableOut, responses={
    **NOT_FOUND, 200: {"content": {"application/json": {}, "text/csv": {}, "application/x-latex": {}}}})
def get_table(sweep_id: SweepId, session: SessionDep,
              format: Literal["json", "csv", "latex"] = Query("json")) -> TableOut | Response:
    """The comparison table in the paper's layout: rows method (fusion), columns missing
    modality × rate, cells mean ± std (n − 1) of the test accuracy over the seeds that
    succeeded, best per column marked. CSV and LaTeX print percentages."""
    sweep = _get_or_404(session, sweep_id)
    table, results = service.sweep_table(session, sweep)
    if format == "json":
        dataset = results[0].spec.get("dataset") if results else None
        return table_out(sweep_id, table, service.paper_context(sweep, dataset))
    if format == "csv":
        body, media_type, suffix = table_csv(table), "text/csv; charset=utf-8", "csv"
    else:
        body, media_type, suffix = table_latex(table, sweep.name), "application/x-latex; charset=utf-8", "tex"
    return Response(body, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="sweep-{sweep_id}-table.{suffix}"'})


@router.get("/{sweep_id}/trend", response_model=TrendOut, responses=NOT_FOUND)
def get_trend(sweep_id: SweepId, session: SessionDep) -> TrendOut:
    """Test accuracy against missing rate: one series per method (fusion) and missing
    modality, mean and std over seeds; the paper's numbers as extra series in a preset sweep."""
    sweep = _get_or_404(session, sweep_id)
    table, _ = service.sweep_table(session, sweep)
    return trend_out(sweep_id, missing_rate_trend(table))


@router.get("/{sweep_id}/stream", responses=NOT_FOUND,
            response_description="Server-Sent Events: `runs`, `progress`, `summary` (table and trend), `end`, `gone`")
def stream_sweep(sweep_id: SweepId, request: Request, session: SessionDep, settings: SettingsDep) -> EventSourceResponse:
    """Live updates of a sweep as its runs progress and finish."""
    _get_or_404(session, sweep_id)
    session.close()  # see runs/routes.py stream_run: the stream must not hold a pooled connection
    return EventSourceResponse(sweep_events(request.app.state.sessions, sweep_id, settings.stream_poll_interval,
                                            request), ping=15)


# --- presets ----------------------------------------------------------------------------


def _preset_or_404(name: str) -> Preset:
    preset = PRESETS.get(name)
    if preset is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no preset {name!r} (there are: {', '.join(PRESETS)})")
    return preset


def _roles(request: PresetRequest, modalities: DatasetCatalog) -> dict[str, str]:
    """Which dataset modality plays the paper's visual and audio roles; 422 naming the field."""
    available = modalities(request.dataset)
    if available is None or len(available) < 2:
        problem = "unknown dataset" if available is None else "not a two-modality dataset:"
        raise RequestValidationError([{"type": "value_error", "loc": ("body", "dataset"), "input": request.dataset,
                                       "msg": f"{problem} {request.dataset!r}"}])
    visual = request.visual or ("visual" if "visual" in available else available[0])
    audio = request.audio or ("audio" if "audio" in available else next(m for m in available if m != visual))
    for field, value in (("visual", visual), ("audio", audio)):
        if value not in available:
            raise RequestValidationError([{"type": "value_error", "loc": ("body", field), "input": value,
                                           "msg": f"dataset {request.dataset!r} has no modality {value!r} "
                                                  f"(it has: {', '.join(available)})"}])
    if visual == audio:
        raise RequestValidationError([{"type": "value_error", "loc": ("body", "audio"), "input": audio,
                                       "msg": "visual and audio must be two different modalities"}])
    return {"visual": visual, "audio": audio}


def _preset_plans(preset: Preset, request: PresetRequest, settings, session) -> tuple[PresetPlan, SweepPlan, str]:
    modalities = _catalog(settings, session)
    roles = _roles(request, modalities)
    picked = modalities.info(request.dataset)
    is_video = picked is not None and picked.source == "video"

    def features(backbone: str) -> str | None:
        for name in feature_dataset_names(request.dataset, backbone):
            info = modalities.info(name)
            if info is not None and info.error is None:
                return name
        return None

    preset_plan = plan_preset(preset, dataset=request.dataset, roles=roles, seeds=request.seeds,
                              epochs=request.epochs, only_available=request.only_available, is_video=is_video,
                              features=features)
    sweep_plan = plan_sweep(preset_plan.combinations, modalities)
    name = request.name or f"{preset.figure} on {request.dataset} ({len(sweep_plan.runs)} runs)"
    return preset_plan, sweep_plan, name


def _preset_refusal(preset_plan: PresetPlan, sweep_plan: SweepPlan, only_available: bool,
                    dataset: str) -> tuple[list, str] | None:
    if not preset_plan.complete and (not only_available or not sweep_plan.runs):
        message = preset_plan.missing_message(len(sweep_plan.runs), dataset)
        return [{"type": "preset_unavailable", "loc": ("path", "name"), "input": None, "msg": message,
                 "ctx": {"missing_methods": preset_plan.missing_methods,
                         "missing_features": preset_plan.missing_features,
                         "available_runs": len(sweep_plan.runs)}}], message
    errors = _refusal(sweep_plan, skip_invalid=False)
    if errors:
        return errors, "; ".join(e["msg"] for e in errors)
    return None


def preset_out(preset: Preset) -> PresetOut:
    return PresetOut(name=preset.name, figure=preset.figure, title=preset.title, description=preset.description,
                     paper_dataset=preset.paper_dataset, focus=preset.focus, methods=preset.methods,
                     features=preset.features, runs_per_seed=preset.runs_per_seed(),
                     missing_methods=missing_capabilities(preset),
                     assumptions=list(preset.assumptions),
                     reported=preset.reported.title if preset.reported else None)


@presets_router.get("", response_model=list[PresetOut])
def list_presets() -> list[PresetOut]:
    """The paper's experiments, and what each needs that the training library lacks."""
    return [preset_out(p) for p in PRESETS.values()]


@presets_router.post("/{name}/preview", response_model=PresetPreview, responses={404: {"description": "No such preset"}})
def preview_preset(name: str, request: PresetRequest, settings: SettingsDep, session: SessionDep) -> PresetPreview:
    """How many runs the preset would create on this dataset, and what it lacks; writes nothing."""
    preset = _preset_or_404(name)
    preset_plan, sweep_plan, sweep_name = _preset_plans(preset, request, settings, session)
    refusal = _preset_refusal(preset_plan, sweep_plan, request.only_available, request.dataset)
    return PresetPreview(runs=len(sweep_plan.runs), roles=preset_plan.roles,
                         missing_methods=preset_plan.missing_methods, missing_features=preset_plan.missing_features,
                         left_out=preset_plan.left_out, would_refuse=refusal is not None,
                         message=refusal[1] if refusal else None, name=sweep_name)


@presets_router.post("/{name}/sweeps", status_code=status.HTTP_201_CREATED, response_model=SweepCreated,
                     responses={**AWAITING_BROKER, **idempotency.REPLAYED, 404: {"description": "No such preset"},
                                422: {"description": "The preset needs methods the training library lacks "
                                                     "(unless only_available), or a field is invalid"}})
def create_preset_sweep(name: str, request: PresetRequest, response: Response, session: SessionDep,
                        queue: RunQueueDep, settings: SettingsDep,
                        idempotency_key: idempotency.KeyHeader = None) -> SweepCreated:
    """Create the sweep of a paper experiment on the dataset given, in one call."""
    key = idempotency.checked_key(idempotency_key)
    preset = _preset_or_404(name)
    preset_plan, sweep_plan, sweep_name = _preset_plans(preset, request, settings, session)
    refusal = _preset_refusal(preset_plan, sweep_plan, request.only_available, request.dataset)
    if refusal:
        raise RequestValidationError(refusal[0])
    options = {**request.model_dump(exclude={"name"}), "roles": preset_plan.roles, "left_out": preset_plan.left_out}
    # Not a product (fusions differ per method): the values each field takes, for reading back.
    grid = {field: list(dict.fromkeys(c[field] for c in preset_plan.combinations))
            for field in dict.fromkeys(f for c in preset_plan.combinations for f in c)}
    return _create(session, queue, response, sweep_plan, key, name=sweep_name, grid=grid, preset=preset.name,
                   preset_options=options)
