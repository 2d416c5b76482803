r"""The comparison table as CSV (one row per method (fusion), three columns per cell: mean,
std, n; then the paired comparison of each cell with its column's reference) and as a LaTeX
table in the paper's layout (booktabs; best per column in bold; significant wins and losses
against the reference marked, the reference daggered), ready to paste: a caption naming the
setting (dataset, missing modality, rates, seeds, test set) and the marks it uses, and a
\label. Both print test accuracy in %."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from ..csv_export import SafeCSVWriter
from .analysis import Cell, ComparisonTable
from .paired import PairedSummary

LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def _percent(value: float | None, digits: int) -> str:
    return "" if value is None else f"{100 * value:.{digits}f}"


def table_csv(table: ComparisonTable) -> str:
    out = io.StringIO()
    writer = SafeCSVWriter(out)
    extras = [name for name, _ in table.rows[0].extras] if table.rows else []
    header = ["method", "fusion", *extras]
    for column in table.columns:
        header += [f"{column.label} mean", f"{column.label} std", f"{column.label} n"]
    # The paired columns come after every existing one, so scripts reading columns by position still work.
    for column in table.columns:
        header += [f"{column.label} {name}" for name in PAIRED_COLUMNS]
    writer.writerow(header)
    for row in table.rows:
        line = [row.label if row.external else row.method, row.fusion, *(value for _, value in row.extras)]
        for cell in row.cells:
            line += [_percent(cell.mean, 4), _percent(cell.std, 4), cell.n]
        for cell in row.cells:
            line += _paired_fields(cell)
        writer.writerow(line)
    return out.getvalue()


PAIRED_COLUMNS = ("reference", "diff", "ci_low", "ci_high", "wins", "ties", "losses", "p_value", "p_adjusted",
                  "significant", "test")


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _paired_fields(cell: Cell) -> list:
    paired = cell.paired
    if paired is None:
        note = "(this row)" if cell.is_reference else "" if cell.pairing_verified else "(pairing not verified)"
        return [note, *[""] * (len(PAIRED_COLUMNS) - 1)]
    return [paired.reference, _percent(paired.diff, 4), _percent(paired.ci_low, 4), _percent(paired.ci_high, 4),
            paired.wins, paired.ties, paired.losses, _p(paired.p_value), _p(paired.p_adjusted),
            paired.mark or "", paired.test]


# Significant (after Holm) win / loss against the column's reference; the reference itself.
LATEX_MARKS = {"win": r"$^{\uparrow}$", "loss": r"$^{\downarrow}$", "reference": r"$^{\dagger}$"}


@dataclass(frozen=True)
class LatexSetting:
    """What a LaTeX table's caption and label name besides the table itself."""

    sweep_id: int
    sweep_name: str  # in a comment above the table: the paper names the setting, not the sweep
    datasets: Sequence[str]


def _mark(cell: Cell, compared: bool) -> str | None:
    """The cell's mark: a significant win or loss, or † for the reference of a column in which
    something was compared with it (a reference nothing was compared with is not marked)."""
    if cell.is_reference:
        return "reference" if compared else None
    return cell.paired.mark if cell.paired is not None else None


def _latex_cell(cell: Cell, compared: bool) -> str:
    if cell.mean is None:
        return "--"
    text = f"{100 * cell.mean:.2f}"
    if cell.std is not None:
        text += rf" $\pm$ {100 * cell.std:.2f}"
    text = rf"\textbf{{{text}}}" if cell.best else text
    mark = _mark(cell, compared)
    return text + LATEX_MARKS[mark] if mark else text


def _series(items: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _seeds_text(seeds: Sequence[int], fewest: int) -> str:
    """The seeds behind the cells: "mean ± standard deviation over 5 seeds (0--4)"; "up to" when
    a cell has fewer (a run failed or is pending)."""
    if not seeds:
        return "no finished run yet"
    contiguous = len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1))
    listed = f"{seeds[0]}--{seeds[-1]}" if contiguous else ", ".join(map(str, seeds))
    if len(seeds) == 1:
        return f"one run per cell (seed {listed})"
    up_to = "up to " if 0 < fewest < len(seeds) else ""
    return rf"mean $\pm$ standard deviation over {up_to}{len(seeds)} seeds ({listed})"


def _setting_caption(table: ComparisonTable, setting: LatexSetting) -> str:
    """Test accuracy on which dataset, with which modality missing from how many training samples,
    over which seeds, evaluated on what."""
    own = [row for row in table.rows if not row.external] or table.rows
    cells = [cell for row in own for cell in row.cells if cell.n]
    seeds = sorted({seed for cell in cells for seed in cell.seeds})
    fewest = min((cell.n for cell in cells), default=0)
    modalities = list(dict.fromkeys(c.missing_modality + (f" ({c.role})" if c.role else "") for c in table.columns))
    rates = [f"{rate * 100:g}\\%" for rate in sorted({c.missing_rate for c in table.columns})]
    dataset = _series([latex_escape(d) for d in setting.datasets]) if setting.datasets else "this dataset"
    missing = (f"modality {latex_escape(modalities[0])}" if len(modalities) == 1
               else f"modality {_series([latex_escape(m) for m in modalities])} (by column)")
    seeds_text = _seeds_text(seeds, fewest)
    return (rf"Test accuracy (\%) on {dataset} with the {missing} missing from "
            rf"{_series(rates) if len(rates) < 4 else rates[0] + ' to ' + rates[-1]} of the training samples, "
            rf"on the complete test set at the epoch of best validation accuracy: {seeds_text}; best of each column "
            rf"in bold.")


def _legend(table: ComparisonTable, comparison: PairedSummary | None, compared_columns: set[int]) -> str:
    """The marks the table uses, and only those."""
    used = {_mark(cell, i in compared_columns) for row in table.rows for i, cell in enumerate(row.cells)
            if cell.mean is not None}
    text = ""
    if comparison is not None and used & {"win", "loss", "reference"}:
        references = {label for label in comparison.references if label is not None}
        against = (latex_escape(next(iter(references))) if len(references) == 1
                   else "the best baseline of its column" if comparison.reference is None
                   else latex_escape(comparison.reference))
        test = ("McNemar's exact test over the test samples, pooled over seeds" if comparison.test == "samples"
                else "an exact sign-flip test over seeds")
        family = (rf"Holm-adjusted $p < {comparison.alpha:g}$ over the table's {comparison.tests} "
                  rf"comparison{'s' if comparison.tests != 1 else ''}")
        if used & {"win", "loss"}:
            text += (rf" $\uparrow$/$\downarrow$: significantly better/worse than {against} ($\dagger$) by {test}, "
                     rf"{family}.")
        else:
            text += rf" $\dagger$: {against}, the reference of the paired comparisons; no difference is significant by {test} ({family})."
    external = [row for row in table.rows if row.external]
    if external:
        text += " [external]: trained outside missmod"
        unverified = any(not cell.pairing_verified for row in table.rows for cell in row.cells)
        if unverified:
            text += ", not paired with missmod's runs (its split is not verified)"
        elif comparison is not None and comparison.outside_family:
            text += ", compared outside the correction"
        text += "."
    return text


def table_latex(table: ComparisonTable, setting: LatexSetting, comparison: PairedSummary | None = None) -> str:
    modalities: list[tuple[str, int]] = []  # (label, number of rate columns), in order
    for column in table.columns:
        label = column.missing_modality + (f" ({column.role})" if column.role else "")
        if modalities and modalities[-1][0] == label:
            modalities[-1] = (label, modalities[-1][1] + 1)
        else:
            modalities.append((label, 1))
    compared_columns = {i for i in range(len(table.columns)) if any(row.cells[i].paired for row in table.rows)}
    name = " ".join(setting.sweep_name.split())
    lines = [
        r"% needs \usepackage{booktabs}",
        f"% missmod sweep {setting.sweep_id}: {name}",
        *(f"% {' '.join(note.split())}" for note in (comparison.notes if comparison is not None else [])),
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_setting_caption(table, setting)}{_legend(table, comparison, compared_columns)}}}",
        rf"\label{{tab:missmod-sweep-{setting.sweep_id}}}",
        r"\begin{tabular}{l" + "".join(" " + "c" * n for _, n in modalities) + "}",
        r"\toprule",
    ]
    heads, rules, start = ["Method"], [], 2
    for label, n in modalities:
        heads.append(rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(label.capitalize())} missing}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    lines.append(" & ".join(heads) + r" \\")
    lines.append(" ".join(rules))
    lines.append(" & ".join(["", *(latex_escape(f"{c.missing_rate * 100:g}%") for c in table.columns)]) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        lines.append(" & ".join([latex_escape(row.label), *(_latex_cell(cell, i in compared_columns)
                                                           for i, cell in enumerate(row.cells))]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
