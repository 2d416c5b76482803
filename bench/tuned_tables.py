"""The tables of docs/results.md "Tuned comparisons", printed as markdown from the JSON files that
bench/tuned_comparison.py saved (nothing is recomputed: every figure is the API's own answer):

    python -m bench.tuned_tables study docs/results/study_digits_three_methods.json
    python -m bench.tuned_tables study docs/results/tuned_mle_vs_zero_padding_digits.json
    python -m bench.tuned_tables rules docs/results/selection_rules_digits.json

`study`: the search (trials complete / pruned per arm, the epochs they trained, the chosen trial and
its hyperparameters), then the final table (mean ± std over the final seeds, Δ to the reference
with its 95% interval and wins/ties/losses, the exact sign-flip p over seeds and McNemar's p over
the test samples, each Holm-adjusted over the table), then the final runs under every selection
rule. `rules`: a sweep's (or a study's) table under every selection rule, and the epoch each run
selected when the file has its runs.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from statistics import median

RULE_NAMES = {"val_accuracy_earliest": "best val. accuracy, earliest", "val_accuracy_latest": "best val. accuracy, latest",
              "val_loss": "lowest val. loss", "last_epoch": "last epoch"}


def pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def p_text(p: float | None) -> str:
    return "–" if p is None else f"{p:.3g}"


def column_label(column: dict) -> str:
    return f"{round(100 * column['missing_rate'])}%"


def short(label: str, rows: list[dict]) -> str:
    """`mle (add)` → `mle` when every row has the same fusion."""
    fusions = {row["label"].rpartition(" (")[2] for row in rows}
    return label.rpartition(" (")[0] if len(fusions) == 1 else label


def header(columns: list[dict], first: str) -> list[str]:
    return [f"| {first} | " + " | ".join(column_label(c) for c in columns) + " |",
            "|---|" + "---|" * len(columns)]


def hyper_value(value) -> str:
    return f"{value:.2g}" if isinstance(value, float) else str(value)


def search_table(record: dict) -> list[str]:
    study, trials = record["study"], record["trials"]
    epochs = study["base_spec"].get("epochs")
    names = list(dict.fromkeys(n for arm in study["arms"] for n in (arm["best_params"] or {})))
    lines = ["| arm | complete / pruned / failed | pruned after epoch | epochs trained | chosen trial (val. %) | "
             + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|---|---|---|---|" + "---|" * len(names)]
    for arm in study["arms"]:
        own = [t for t in trials if t["arm"] == arm["index"]]
        pruned_at = sorted(t["pruned_epoch"] for t in own if t["state"] == "pruned")
        at = ", ".join(f"{e}×{n}" if n > 1 else str(e) for e, n in sorted(Counter(pruned_at).items())) or "–"
        trained = sum(t["epochs"] or 0 for t in own)
        params = arm["best_params"] or {}
        lines.append(f"| {arm['label']}, {round(100 * arm['missing_rate'])}% | {arm['complete']} / {arm['pruned']} / "
                     f"{arm['failed']} | {at} | {trained} of {len(own) * epochs} | {arm['best_trial']} "
                     f"({pct(arm['best_value'])}) | "
                     + " | ".join(hyper_value(params[n]) if n in params else "–" for n in names) + " |")
    return lines


def final_tables(table: dict, samples: dict | None) -> list[str]:
    rows, columns = table["rows"], table["columns"]
    lines = header(columns, "row")
    for row in rows:
        cells = []
        for cell in row["cells"]:
            text = f"{pct(cell['mean'])} ± {pct(cell['std'])}"
            paired = cell.get("paired")
            if cell.get("is_reference"):
                text += " (reference)"
            elif paired:
                text += (f"<br>Δ {100 * paired['diff']:+.2f} [{100 * paired['ci_low']:+.1f}, "
                         f"{100 * paired['ci_high']:+.1f}], {paired['wins']}/{paired['ties']}/{paired['losses']}")
            cells.append(text)
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", *header(columns, "row")]
    by_label = {row["label"]: row for row in (samples or {}).get("rows", [])}
    for row in rows:
        if all(cell.get("is_reference") or not cell.get("paired") for cell in row["cells"]):
            continue
        cells = []
        for j, cell in enumerate(row["cells"]):
            seeds = cell.get("paired")
            if not seeds:
                cells.append("reference" if cell.get("is_reference") else "–")
                continue
            over = by_label.get(row["label"], {}).get("cells", [{}] * len(columns))[j].get("paired") or {}
            text = f"{p_text(seeds['p_seeds'])} (Holm {p_text(seeds['p_adjusted'])})"
            if over:
                text += f" · {p_text(over['p_samples'])} (Holm {p_text(over['p_adjusted'])})"
                text += {"loss": " ▼", "win": " ▲"}.get(over.get("mark"), "")
                text += f", discordant {over['discordant'][0]}/{over['discordant'][1]}"
            cells.append(text)
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def rules_table(rules: dict) -> list[str]:
    """Per rule and column, the rows in rank order with their means; an order other than the
    recorded rule's in bold."""
    columns = rules["columns"]
    recorded = next((r for r in rules["rules"] if r["recorded"]), rules["rules"][0])

    def order(rule: dict, j: int) -> tuple[list[str], str]:
        ranked = sorted(((row["cells"][j]["rank"] or 99, i, row) for i, row in enumerate(rule["rows"])
                         if row["cells"][j]["mean"] is not None))
        names = [row["label"] for _, _, row in ranked]
        text = " > ".join(f"{short(row['label'], rule['rows'])} {pct(row['cells'][j]['mean'])}" for _, _, row in ranked)
        return names, text

    lines = header(columns, "selection rule")
    for rule in rules["rules"]:
        cells = []
        for j in range(len(columns)):
            names, text = order(rule, j)
            cells.append(f"**{text}**" if names != order(recorded, j)[0] else text)
        mark = " (recorded)" if rule["recorded"] else ""
        lines.append(f"| {RULE_NAMES.get(rule['rule'], rule['rule'])}{mark} | " + " | ".join(cells) + " |")
    return lines


def selected_epochs(runs: list[dict]) -> list[str]:
    """Median (range) of the epoch each succeeded run reported, per method."""
    by_method: dict[str, list[int]] = {}
    for run in runs:
        if run["state"] == "succeeded" and run.get("best_epoch"):
            by_method.setdefault(run["method"], []).append(run["best_epoch"])
    return [f"- `{method}`: median {median(epochs):g} (range {min(epochs)}–{max(epochs)}, {len(epochs)} runs)"
            for method, epochs in by_method.items()]


def render_study(record: dict) -> list[str]:
    study = record["study"]
    counts = study["trials"]
    lines = [f"<!-- {study['name']}: {counts['total']} trials ({counts['pruned']} pruned, {counts['failed']} failed), "
             f"{record['seconds']:.0f} s, study overhead {study['overhead_seconds']:.0f} s -->", "",
             *search_table(record), "", *final_tables(record["table"], record.get("table_samples")), ""]
    if record.get("selection_rules"):
        lines += [*rules_table(record["selection_rules"]), ""]
        lines += [f"- {change}" for change in record["selection_rules"]["ranking_changes"]]
    return lines


def render_rules(record: dict, runs: list[dict] | None) -> list[str]:
    lines = [*rules_table(record["selection_rules"]), ""]
    lines += [f"- {change}" for change in record["selection_rules"]["ranking_changes"]]
    if runs:
        lines += ["", "Epoch reported under the recorded rule:", *selected_epochs(runs)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["study", "rules"])
    parser.add_argument("file", type=Path)
    args = parser.parse_args()
    record = json.loads(args.file.read_text())
    if args.what == "study":
        lines = render_study(record)
    else:
        lines = render_rules(record, record.get("runs"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
