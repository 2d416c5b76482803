"""REST routes of sweeps and paper presets. Thin: shapes at the edge; the planning in grid.py
and presets.py, results in analysis.py, the rest in service.py; a sweep or preset not found, a
refusal and a broker that cannot be reached are answered by backend/api/errors.py."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response, status
from sse_starlette import EventSourceResponse

from ..api import idempotency
from ..api.deps import SessionDep, SettingsDep, WorkQueueDep
from ..api.params import NO_CONTROL_CHARACTERS, Offset, SweepId
from ..catalog import registry
from ..live import open_stream, token_from
from ..refused import Refused
from ..runs.validation import DatasetCatalog
from . import service
from .analysis import missing_rate_trend
from .export import LatexSetting, table_csv, table_latex
from .grid import SweepPlan, expand_grid, plan_sweep
from .presets import PRESETS, PresetRequestPlan, get_preset, plan_preset_request
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
    SweepSummary,
    TableOut,
    TrendOut,
    table_out,
    trend_out,
)
from .selection_rules import SelectionRulesOut, sweep_sensitivity
from .stream import SweepTopic

router = APIRouter(prefix="/api/sweeps", tags=["sweeps"])
presets_router = APIRouter(prefix="/api/presets", tags=["presets"])

NOT_FOUND = {404: {"description": "No sweep with this id"}}
AWAITING_BROKER = {202: {"description": "Saved with all its runs, but the broker could not be reached: the runs not "
                                         "sent wait for it (`awaiting_broker`) and are sent when it is back"}}


def _sweep_out(session, sweep, include_external: bool = False) -> SweepOut:
    return SweepOut.of(sweep, service.progress_of(session, [sweep.id], include_external)[sweep.id])


ProgressExternalParam = Query(False, description=(
    "Count the runs trained elsewhere and logged into the sweep (POST /api/runs/external) in its progress; "
    "by default they are only counted apart (`progress.external`)"))


def _created(session, queue, response: Response, plan: SweepPlan, key: str | None, **sweep_fields) -> SweepCreated:
    """201 when every run id reached the broker; 202 when some wait for it (the broker is down);
    200 when an earlier request with the same Idempotency-Key created the sweep (nothing created now)."""
    sweep, created = idempotency.create_once(
        session, key, lambda k: service.sweep_by_idempotency_key(session, k),
        lambda: service.create_sweep(session, queue, plan, idempotency_key=key, **sweep_fields)[0])
    runs = service.runs_of(session, sweep.id)
    if not created:
        # The whole request: its name (given, or derived from the grid), the grid, the preset and
        # its options — a changed name is another request, as a run's changed body is.
        asked = (sweep_fields["name"], sweep_fields["grid"], sweep_fields.get("preset"),
                 sweep_fields.get("preset_options"))
        if (sweep.name, sweep.grid, sweep.preset, sweep.preset_options) != asked:
            raise idempotency.reused_for_another_request(key)
        response.status_code = status.HTTP_200_OK
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    awaiting = [r.id for r in runs if r.awaiting_broker]
    if created and awaiting:
        response.status_code = status.HTTP_202_ACCEPTED
    return SweepCreated(**_sweep_out(session, sweep).model_dump(), run_ids=[r.id for r in runs],
                        left_out=[InvalidCombinations.model_validate(g) for g in plan.invalid],
                        awaiting_broker=awaiting)


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
    return SweepPreview(combinations=plan.combinations, runs=len(plan.runs),
                        invalid=[InvalidCombinations.model_validate(g) for g in plan.invalid],
                        would_refuse=plan.refusal(payload.skip_invalid) is not None, name=name)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SweepCreated,
             responses={**AWAITING_BROKER, **idempotency.REPLAYED,
                        422: {"description": "A field or a combination is invalid; nothing written"}})
def create_sweep(payload: SweepCreate, response: Response, session: SessionDep, queue: WorkQueueDep,
                 settings: SettingsDep, idempotency_key: idempotency.KeyHeader = None) -> SweepCreated:
    """Expand the grid into runs, commit them all, then queue them (seed by seed)."""
    key = idempotency.checked_key(idempotency_key)
    plan, name = _plan(payload, settings, session)
    errors = plan.refusal(payload.skip_invalid)
    if errors:
        raise Refused(errors)
    return _created(session, queue, response, plan, key, name=name, grid=payload.grid())


@router.get("", response_model=SweepPage)
def list_sweeps(session: SessionDep, limit: int = Query(50, ge=1, le=500), offset: Offset = 0,
                cursor: str | None = Query(None, max_length=500, pattern=NO_CONTROL_CHARACTERS,
                                           description="`next_cursor` of the previous page"),
                include_external: bool = ProgressExternalParam) -> SweepPage:
    """Sweeps, newest first, with their progress."""
    sweeps, total, next_cursor = service.list_sweeps(session, limit, offset, cursor)
    progress = service.progress_of(session, [s.id for s in sweeps], include_external)
    return SweepPage(items=[SweepOut.of(s, progress[s.id]) for s in sweeps], total=total, limit=limit, offset=offset,
                     next_cursor=next_cursor)


@router.get("/{sweep_id}", response_model=SweepOut, responses=NOT_FOUND)
def get_sweep(sweep_id: SweepId, session: SessionDep, include_external: bool = ProgressExternalParam) -> SweepOut:
    """The sweep and its progress (runs per state). Its runs: GET /api/runs?sweep={id}."""
    return _sweep_out(session, service.get_sweep(session, sweep_id), include_external)


@router.delete("/{sweep_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
def delete_sweep(sweep_id: SweepId, session: SessionDep, settings: SettingsDep,
                 keep_runs: bool = Query(False, description="Keep the runs (detached from any sweep)")) -> Response:
    """Delete the sweep and its runs with their files (runs still training are stopped)."""
    service.delete_sweep(session, sweep_id, keep_runs, settings)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{sweep_id}/retry", response_model=RetriedRuns, responses=NOT_FOUND)
def retry_sweep(sweep_id: SweepId, session: SessionDep, queue: WorkQueueDep, settings: SettingsDep) -> RetriedRuns:
    """Queue every failed or cancelled run of the sweep again, from scratch."""
    return RetriedRuns(run_ids=service.retry_sweep(session, sweep_id, queue, settings))


ReferenceParam = Query(None, max_length=200, description=(
    "The reference of the paired comparisons: a row label (e.g. `zero_padding (add)`) or a method (its best "
    "row in each column); default: the best baseline (best row of a method other than mle) of each column"))
TestParam = Query("seeds", description=(
    "What marks a cell significant: `seeds` (exact sign-flip test over seeds) or `samples` (McNemar over the "
    "stored test predictions, pooled over seeds; runs without them use the seed-level test)"))

ExternalParam = Query(False, description=(
    "Rows of runs trained elsewhere (`external`) join Holm's family of comparisons and, where verified, may be "
    "the default reference; by default they are compared outside it, so logging one never changes missmod's "
    "cells. Either way, a run trained elsewhere is paired by seed only where its split is verified "
    "(`pairing_verified`)"))

@router.get("/{sweep_id}/table", response_model=TableOut, responses={
    **NOT_FOUND, 200: {"content": {"application/json": {}, "text/csv": {}, "application/x-latex": {}}}})
def get_table(sweep_id: SweepId, session: SessionDep,
              format: Literal["json", "csv", "latex"] = Query("json"),
              reference: str | None = ReferenceParam,
              test: Literal["seeds", "samples"] = TestParam,
              include_external: bool = ExternalParam) -> TableOut | Response:
    """The comparison table in the paper's layout: rows method (fusion), columns missing
    modality × rate, cells mean ± std (n − 1) of the test accuracy over the seeds that
    succeeded, best per column marked, and each cell compared seed by seed with its column's
    reference (`paired`: mean difference, 95% interval, wins/ties/losses, p-values, Holm's
    correction over the table; see docs/statistics.md). CSV and LaTeX print percentages and
    carry the same comparisons."""
    sweep = service.get_sweep(session, sweep_id)
    table, results, comparison = service.sweep_table(session, sweep, reference=reference, test=test,
                                                     include_external=include_external)
    if format == "json":
        dataset = results[0].dataset if results else None
        return table_out(sweep_id, table, service.paper_context(sweep, dataset), comparison)
    if format == "csv":
        body, media_type, suffix = table_csv(table), "text/csv; charset=utf-8", "csv"
    else:
        setting = LatexSetting(sweep.id, sweep.name, list(dict.fromkeys(r.dataset for r in results if not r.external)))
        body, media_type, suffix = table_latex(table, setting, comparison), "application/x-latex; charset=utf-8", "tex"
    return Response(body, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="sweep-{sweep_id}-table.{suffix}"'})


@router.get("/{sweep_id}/trend", response_model=TrendOut, responses=NOT_FOUND)
def get_trend(sweep_id: SweepId, session: SessionDep, reference: str | None = ReferenceParam,
              test: Literal["seeds", "samples"] = TestParam, include_external: bool = ExternalParam) -> TrendOut:
    """Test accuracy against missing rate: one series per method (fusion) and missing
    modality, mean and std over seeds, each point's paired difference to its column's
    reference and its mark (significant win or loss); the paper's numbers as extra series in a
    preset sweep."""
    sweep = service.get_sweep(session, sweep_id)
    table, _, _ = service.sweep_table(session, sweep, reference=reference, test=test, include_external=include_external)
    return trend_out(sweep_id, missing_rate_trend(table))


@router.get("/{sweep_id}/summary", response_model=SweepSummary, responses=NOT_FOUND)
def get_summary(sweep_id: SweepId, session: SessionDep, reference: str | None = ReferenceParam,
                test: Literal["seeds", "samples"] = TestParam, include_external: bool = ExternalParam) -> SweepSummary:
    """The table and the trend in one response (what the sweep page draws), with the paired
    comparisons against the reference asked for."""
    sweep = service.get_sweep(session, sweep_id)
    table, results, comparison = service.sweep_table(session, sweep, reference=reference, test=test,
                                                     include_external=include_external)
    dataset = results[0].dataset if results else None
    return SweepSummary(table=table_out(sweep_id, table, service.paper_context(sweep, dataset), comparison),
                        trend=trend_out(sweep_id, missing_rate_trend(table)))


@router.get("/{sweep_id}/selection-rules", response_model=SelectionRulesOut, responses=NOT_FOUND)
def get_sweep_selection_rules(sweep_id: SweepId, session: SessionDep,
                              reference: str | None = ReferenceParam) -> SelectionRulesOut:
    """The comparison table under every selection rule (best validation accuracy, earliest or
    latest among ties; lowest validation loss; last epoch), from the epochs the runs recorded: no
    retraining. Shows where a column's ranking changes with the rule (docs/studies.md)."""
    sweep = service.get_sweep(session, sweep_id)
    return sweep_sensitivity(session, service.sweep_results(session, sweep_id), service.modality_roles(sweep),
                             reference)


def _sweep_exists(sessions, sweep_id: int) -> None:
    with sessions() as session:
        service.get_sweep(session, sweep_id)


@router.get("/{sweep_id}/stream",
            responses={**NOT_FOUND, 503: {"description": "Too many live streams; see Retry-After"}},
            response_description="Server-Sent Events: `runs`, `progress`, `summary` (table and trend), `end`, `gone`")
async def stream_sweep(sweep_id: SweepId, request: Request,
                       last_event_id: Annotated[str | None, Header()] = None) -> EventSourceResponse:
    """Live updates of a sweep as its runs progress and finish. A reconnecting EventSource
    (Last-Event-ID: the digest of the state it has) is sent what changed since, or nothing."""
    return await open_stream(request, SweepTopic.kind, sweep_id, token_from(last_event_id), exists=_sweep_exists)


# --- presets ----------------------------------------------------------------------------


def _preset_plan(name: str, request: PresetRequest, settings, session) -> PresetRequestPlan:
    catalog = _catalog(settings, session)
    return plan_preset_request(get_preset(name), request, catalog)


@presets_router.get("", response_model=list[PresetOut])
def list_presets() -> list[PresetOut]:
    """The paper's experiments, and what each needs that the training library lacks."""
    return [PresetOut.model_validate(p) for p in PRESETS.values()]


@presets_router.post("/{name}/preview", response_model=PresetPreview, responses={404: {"description": "No such preset"}})
def preview_preset(name: str, request: PresetRequest, settings: SettingsDep, session: SessionDep) -> PresetPreview:
    """How many runs the preset would create on this dataset, and what it lacks; writes nothing."""
    plan = _preset_plan(name, request, settings, session)
    return PresetPreview(runs=len(plan.sweep_plan.runs), roles=plan.preset_plan.roles,
                         missing_methods=plan.preset_plan.missing_methods,
                         missing_features=plan.preset_plan.missing_features, left_out=plan.preset_plan.left_out,
                         would_refuse=plan.refusal is not None, message=plan.message, name=plan.name)


@presets_router.post("/{name}/sweeps", status_code=status.HTTP_201_CREATED, response_model=SweepCreated,
                     responses={**AWAITING_BROKER, **idempotency.REPLAYED, 404: {"description": "No such preset"},
                                422: {"description": "The preset needs methods the training library lacks "
                                                     "(unless only_available), or a field is invalid"}})
def create_preset_sweep(name: str, request: PresetRequest, response: Response, session: SessionDep,
                        queue: WorkQueueDep, settings: SettingsDep,
                        idempotency_key: idempotency.KeyHeader = None) -> SweepCreated:
    """Create the sweep of a paper experiment on the dataset given, in one call."""
    key = idempotency.checked_key(idempotency_key)
    plan = _preset_plan(name, request, settings, session)
    if plan.refusal:
        raise Refused(plan.refusal)
    options = {**request.model_dump(exclude={"name"}), "roles": plan.preset_plan.roles,
               "left_out": plan.preset_plan.left_out}
    return _created(session, queue, response, plan.sweep_plan, key, name=plan.name, grid=plan.grid(),
                    preset=plan.preset.name, preset_options=options)
