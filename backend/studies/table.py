"""The answer of a study: its final runs as a comparison table — rows the candidates, columns the
settings, each cell the mean ± std of the test accuracy over the final seeds of that arm's best
configuration, compared seed by seed with its column's reference (backend/sweeps/paired.py) — with
the chosen hyperparameters beside each cell; as JSON, CSV and LaTeX. And the same runs under every
selection rule (backend/sweeps/selection_rules.py)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from ..csv_export import csv_text
from ..sweeps.analysis import Cell, Column, ComparisonTable, Row, RunResult, add_result, mark_best
from ..sweeps.export import LatexSetting, latex_escape, table_csv, table_latex
from ..sweeps.paired import PairedSummary, Test, compare_table
from ..sweeps.selection_rules import SelectionRulesOut, accuracies_by_rule, sensitivity
from ..sweeps.service import run_predictions, sweep_results
from .models import Study, StudyTrial
from .plan import setting_label
from .service import best_trial, selection_rule, trials_of


@dataclass
class StudyTable:
    table: ComparisonTable
    hyperparameters: list[list[dict[str, Any]]]  # [row][column]: {"trial", "value", "params"}
    comparison: PairedSummary | None


def _roles(study: Study) -> dict[str, str]:
    roles = (study.preset_options or {}).get("roles") or {}
    return {modality: role for role, modality in roles.items()}


def final_results(session: Session, study: Study) -> list[RunResult]:
    return sweep_results(session, study.final_sweep_id) if study.final_sweep_id is not None else []


def build_table(study: Study, results: list[RunResult], accuracy: Mapping[int, float] | None = None) -> ComparisonTable:
    """Rows in the study's candidate order, columns in its setting order; `accuracy` replaces
    each run's reported test accuracy (another selection rule)."""
    roles = _roles(study)
    columns = [Column(s["missing_modality"], s["missing_rate"], roles.get(s["missing_modality"]))
               for s in study.settings]
    rows = [Row(c["method"], c["fusion"], tuple(sorted(c["options"].items())), [Cell() for _ in columns])
            for c in study.candidates]
    arm_of = study.final_runs or {}
    for result in results:
        arm = arm_of.get(str(result.run_id))
        if arm is None:
            continue
        candidate, setting = divmod(arm, len(study.settings))
        if accuracy is not None:
            result = replace(result, test_accuracy=accuracy.get(result.run_id))
        add_result(rows[candidate].cells[setting], result)
    table = ComparisonTable(columns=columns, rows=rows)
    mark_best(table)
    return table


def chosen(study: Study, trials: list[StudyTrial]) -> list[list[dict[str, Any]]]:
    """[row][column]: the trial each arm's final runs train (its number, validation accuracy, parameters)."""
    out = []
    for candidate in range(len(study.candidates)):
        row = []
        for setting in range(len(study.settings)):
            arm = candidate * len(study.settings) + setting
            best = best_trial(t for t in trials if t.arm == arm)
            row.append({"trial": best.number if best else None, "value": best.value if best else None,
                        "params": best.params if best else None})
        out.append(row)
    return out


def study_table(session: Session, study: Study, *, reference: str | None = None, test: Test = "seeds") -> StudyTable:
    results = final_results(session, study)
    table = build_table(study, results)
    hyperparameters = chosen(study, trials_of(session, study.id))
    if not results:
        return StudyTable(table, hyperparameters, None)
    finished = [run_id for row in table.rows for cell in row.cells for run_id in cell.run_ids]
    comparison = compare_table(table, reference=reference, test=test, predictions=run_predictions(session, finished))
    return StudyTable(table, hyperparameters, comparison)


def study_sensitivity(session: Session, study: Study, reference: str | None = None) -> SelectionRulesOut:
    results = [r for r in final_results(session, study) if r.state == "succeeded"]
    accuracies, missing = accuracies_by_rule(session, [r.run_id for r in results])
    return sensitivity(lambda accuracy: build_table(study, results, accuracy), accuracies, selection_rule(study),
                       missing, reference)


# --- exports ----------------------------------------------------------------------------------


def _param_names(hyperparameters: list[list[dict[str, Any]]]) -> list[str]:
    return list(dict.fromkeys(name for row in hyperparameters for cell in row for name in (cell["params"] or {})))


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def study_csv(result: StudyTable) -> str:
    """The sweep's CSV layout (backend/sweeps/export.py), then per column the chosen trial, its
    validation accuracy (%) and each hyperparameter."""
    names = _param_names(result.hyperparameters)
    lines = list(csv.reader(io.StringIO(table_csv(result.table))))
    rows: list[list[Any]] = []
    header = list(lines[0])
    for column in result.table.columns:
        header += [f"{column.label} trial", f"{column.label} val_accuracy", *(f"{column.label} {n}" for n in names)]
    rows.append(header)
    for line, hyper in zip(lines[1:], result.hyperparameters):
        extra = []
        for cell in hyper:
            params = cell["params"] or {}
            extra += ["" if cell["trial"] is None else cell["trial"],
                      "" if cell["value"] is None else f"{100 * cell['value']:.4f}",
                      *(_value(params[n]) if n in params else "" for n in names)]
        rows.append([*line, *extra])
    return csv_text(rows)


def study_latex(result: StudyTable, study: Study) -> str:
    """The comparison table in the paper's layout (each cell: its best configuration, tuned on
    validation accuracy, over the final seeds), then the chosen hyperparameters of each cell."""
    names = _param_names(result.hyperparameters)
    name = study.name
    setting = LatexSetting(study.final_sweep_id or 0, f"{name} (final runs of study {study.id})", [study.dataset])
    lines = [f"% missmod study {study.id}: each cell's runs use its best configuration, tuned on validation accuracy",
             table_latex(result.table, setting, result.comparison).rstrip("\n"),
             r"\begin{table}[t]", r"\centering",
             rf"\caption{{Hyperparameters chosen on validation accuracy for {latex_escape(name)}.}}",
             r"\begin{tabular}{ll" + "c" * (len(names) + 1) + "}", r"\toprule",
             " & ".join(["Method", "Setting", "Val.\\ acc.", *(latex_escape(n) for n in names)]) + r" \\",
             r"\midrule"]
    for row, hyper in zip(result.table.rows, result.hyperparameters):
        for column, cell in zip(result.table.columns, hyper):
            params = cell["params"] or {}
            value = "--" if cell["value"] is None else f"{100 * cell['value']:.2f}"
            lines.append(" & ".join([latex_escape(row.label), latex_escape(setting_label(
                {"missing_modality": column.missing_modality, "missing_rate": column.missing_rate})), value,
                *(latex_escape(_value(params[n])) if n in params else "--" for n in names)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
