"""The comparison table as CSV (one row per method (fusion), three columns per cell: mean,
std, n; then the paired comparison of each cell with its column's reference) and as a LaTeX
table in the paper's layout (booktabs; best per column in bold; significant wins and losses
against the reference marked, the reference daggered). Both print test accuracy in %."""

from __future__ import annotations

import io

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
        return ["(this row)" if cell.is_reference else "", *[""] * (len(PAIRED_COLUMNS) - 1)]
    return [paired.reference, _percent(paired.diff, 4), _percent(paired.ci_low, 4), _percent(paired.ci_high, 4),
            paired.wins, paired.ties, paired.losses, _p(paired.p_value), _p(paired.p_adjusted),
            paired.mark or "", paired.test]


# Significant (after Holm) win / loss against the column's reference; the reference itself.
LATEX_MARKS = {"win": r"$^{\uparrow}$", "loss": r"$^{\downarrow}$", "reference": r"$^{\dagger}$"}


def _latex_cell(cell: Cell) -> str:
    if cell.mean is None:
        return "--"
    text = f"{100 * cell.mean:.2f}"
    if cell.std is not None:
        text += rf" $\pm$ {100 * cell.std:.2f}"
    text = rf"\textbf{{{text}}}" if cell.best else text
    mark = "reference" if cell.is_reference else cell.paired.mark if cell.paired is not None else None
    return text + LATEX_MARKS[mark] if mark else text


def _comparison_caption(comparison: PairedSummary | None) -> str:
    if comparison is None or not comparison.tests:
        return ""
    against = (rf"the best baseline of each column" if comparison.reference is None
               else latex_escape(comparison.reference))
    test = ("McNemar's exact test over test samples pooled over seeds" if comparison.test == "samples"
            else "an exact sign-flip test over seeds")
    text = (rf" $\uparrow$/$\downarrow$: significantly better/worse than {against} ($\dagger$), "
            rf"by {test}, Holm-adjusted $p < {comparison.alpha:g}$ over the table's {comparison.tests} comparisons.")
    if comparison.test == "seeds" and comparison.smallest_p >= comparison.alpha:
        text += (rf" With {comparison.max_seeds} seeds this test cannot reach $p < {comparison.alpha:g}$ "
                 rf"(it needs {comparison.seeds_for_alpha} or more).")
    return text


def table_latex(table: ComparisonTable, sweep_name: str, comparison: PairedSummary | None = None) -> str:
    modalities: list[tuple[str, int]] = []  # (label, number of rate columns), in order
    for column in table.columns:
        label = column.missing_modality + (f" ({column.role})" if column.role else "")
        if modalities and modalities[-1][0] == label:
            modalities[-1] = (label, modalities[-1][1] + 1)
        else:
            modalities.append((label, 1))
    seeds = max((cell.n for row in table.rows for cell in row.cells), default=0)
    lines = [
        r"% needs \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{Test accuracy (\%) of {latex_escape(sweep_name)}: mean $\pm$ standard deviation over "
        rf"up to {seeds} seed{'s' if seeds != 1 else ''}; best of each column in bold."
        rf"{_comparison_caption(comparison)}}}",
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
        lines.append(" & ".join([latex_escape(row.label), *(_latex_cell(cell) for cell in row.cells)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
