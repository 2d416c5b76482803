"""GET /api/runs?format=csv: every matching run, one row each with its spec fields, streamed a
page at a time (a long list is never held whole)."""

from __future__ import annotations

import io
from collections.abc import Iterator

from sqlalchemy.orm import sessionmaker

from training.reproducibility import FIELDS

from ..csv_export import SafeCSVWriter
from . import query, service
from .schemas import RunOut

CSV_PAGE = 500
RUN_CSV_COLUMNS = ["id", "name", "state", "external", "dataset", "method", "fusion", "missing_modality",
                   "missing_rate", "seed", "epochs_completed", "best_epoch", "val_accuracy", "test_accuracy",
                   "sweep_id", "tags", "created_at", "finished_at"]
# The reproducibility record, one column each (empty: not recorded).
ENVIRONMENT_COLUMNS = [f"environment.{name}" for name in FIELDS]


def runs_csv(sessions: sessionmaker, filters: service.RunFilters, sort: str) -> Iterator[str]:
    """Every matching run, a page of rows at a time (a long list is never held whole). Its own
    session: the rows are read while the response streams, after the request's session closed."""
    spec_columns = [name for name in query.SPEC_FIELDS if name not in RUN_CSV_COLUMNS]
    out = io.StringIO()
    writer = SafeCSVWriter(out)
    writer.writerow([*RUN_CSV_COLUMNS, *spec_columns, *ENVIRONMENT_COLUMNS])
    cursor = None
    while True:
        with sessions() as session:
            runs, _, cursor = service.list_runs(session, filters, sort=sort, limit=CSV_PAGE, cursor=cursor)
            for run in runs:
                out_run = RunOut.model_validate(run).model_dump(mode="json")
                out_run["tags"] = " ".join(out_run["tags"])
                writer.writerow([*(out_run.get(c) for c in RUN_CSV_COLUMNS),
                                 *(out_run["spec"].get(c) for c in spec_columns),
                                 *((out_run["environment"] or {}).get(name) for name in FIELDS)])
        yield out.getvalue()
        out.seek(0)
        out.truncate()
        if cursor is None:
            return
