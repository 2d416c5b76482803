"""One row of a benchmark table: what was measured, the figure, and, where there is one, the
baseline measured in the same run, their ratio and the target it is held to."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Row:
    what: str
    figure: float | None
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    target: str | None = None  # e.g. "<= 1.5"
    met: bool | None = None
    note: str = ""

    @classmethod
    def compared(cls, what: str, figure: float, baseline: float, unit: str, target_max: float | None = None,
                 note: str = "") -> "Row":
        ratio = figure / baseline
        met = None if target_max is None else ratio <= target_max
        return cls(what, figure, unit, baseline, ratio, None if target_max is None else f"<= {target_max:g}", met, note)


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def print_table(rows: list[Row]) -> None:
    header = ("what", "figure", "unit", "baseline", "ratio", "target", "met")
    table = [header] + [
        (r.what, _fmt(r.figure), r.unit, _fmt(r.baseline), _fmt(r.ratio), r.target or "–",
         "–" if r.met is None else ("yes" if r.met else "NO"))
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    for index, line in enumerate(table):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    for r in rows:
        if r.note:
            print(f"  * {r.what}: {r.note}")


def write_json(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in rows], indent=2))
