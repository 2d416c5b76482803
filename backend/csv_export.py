"""The one way this app writes CSV (runs list, a run's metrics, a sweep's table): every cell a
spreadsheet would take for a formula is neutralised first. Below runs and sweeps, which both
export."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

# OWASP's rule against CSV (formula) injection: a spreadsheet runs a cell that starts with one of
# these as a formula, and names come from data files (modalities, classes) and from users.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def neutralise(cell: object) -> object:
    """A text cell a spreadsheet would take for a formula, quoted so it stays text."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) and not _is_number(cell):
        return "'" + cell
    return cell


class SafeCSVWriter:
    """csv.writer whose every cell goes through `neutralise`."""

    def __init__(self, out: io.StringIO):
        self._writer = csv.writer(out, lineterminator="\n")

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([neutralise(cell) for cell in row])


def csv_text(rows: Iterable[Iterable[object]]) -> str:
    """Rows (the header first) as one CSV text."""
    out = io.StringIO()
    writer = SafeCSVWriter(out)
    for row in rows:
        writer.writerow(row)
    return out.getvalue()
