"""`missmod`: the command line on the Python client.

    missmod runs submit dataset=digits method=mle missing_modality=bottom missing_rate=0.9
    missmod runs wait 12                 # exit status 0 if the run succeeded, 1 otherwise
    missmod runs list --where 'accuracy>0.8' --sort -test_accuracy
    missmod sweeps preset table1 dataset=digits seeds=3 epochs=20 --wait
    missmod sweeps table 3
    missmod studies create dataset=digits missing_modality=bottom missing_rate=0.9 methods=mle,zero_padding \
        trials=20 epochs=50 --pruner median --wait
    missmod studies table 1
    missmod --json runs list | jq '.[].test_accuracy'

Tables for people by default, JSON with --json (for pipes). The server and token come from
--url/--token or MISSMOD_URL/MISSMOD_TOKEN.

argparse rather than typer: `key=value` pairs for any spec field are plain positional strings
either way, argparse is in the standard library (nothing more to install or break), and its
sub-commands cover the `missmod <group> <command>` shape exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import httpx

from .client import ApiError, Client, MissmodError, WaitTimeout
from .models import Run, Study, Sweep

EXIT_FAILED = 1  # an API error, or a run/sweep that did not succeed
EXIT_TIMEOUT = 124  # as timeout(1)


# --- values ----------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """`0.9` → 0.9, `30` → 30, `true` → True, `null` → None, `[1, 2]` → [1, 2], else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(pairs: Sequence[str], lists: bool = False) -> dict[str, Any]:
    """`key=value` arguments; with `lists`, `a,b` is a list (a sweep's values)."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"missmod: expected key=value, got {pair!r}")
        if lists and "," in value and not value.lstrip().startswith("["):
            fields[key] = [parse_value(v.strip()) for v in value.split(",")]
        else:
            fields[key] = parse_value(value)
    return fields


def with_method_options(fields: dict[str, Any], per_method: bool = False) -> dict[str, Any]:
    """A method's own options as `options.NAME=value` (a run), or `options.METHOD.NAME=a,b` (a
    sweep: only that method's runs multiply), gathered into the body's `method_options`."""
    options: dict[str, Any] = {}
    for key in [k for k in fields if k.startswith("options.")]:
        path = key[len("options."):].split(".")
        if len(path) != (2 if per_method else 1) or not all(path):
            form = "options.METHOD.NAME=value" if per_method else "options.NAME=value"
            raise SystemExit(f"missmod: {key!r}: a method's option is written {form}")
        value = fields.pop(key)
        if per_method:
            options.setdefault(path[0], {})[path[1]] = value
        else:
            options[path[0]] = value
    if options:
        fields["method_options"] = {**fields.get("method_options", {}), **options}
    return fields


# --- output ----------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def print_json(data: Any) -> None:
    def plain(thing):
        if isinstance(thing, (Run, Sweep, Study)):
            return thing.to_dict()
        raise TypeError(type(thing).__name__)

    print(json.dumps(data, default=plain, indent=2))


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                no_wrap: Sequence[str] = ()) -> None:
    """`no_wrap`: short columns (ids, counts, states) kept on one line, so the width left goes to
    the columns of text, which wrap between words."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # plain text: a run named "[bold]" or a "[external]" mark is not markup

    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in no_wrap)
    for row in rows:
        table.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    Console().print(table)


def print_notes(notes: Sequence[str]) -> None:
    """Long texts (error reasons) below a table, each wrapped between words at the terminal's
    width: a table column of its own would fold them into a few characters a line."""
    from rich.console import Console
    from rich.text import Text

    console = Console()
    for note in notes:
        console.print(Text(note))


def print_runs(runs: Sequence[Run], title: str | None = None) -> None:
    print_table(title, ["id", "name", "state", "method", "fusion", "dataset", "missing", "epochs", "test acc", ""],
                [[r.id, r.name, r.state, r.method, r.fusion, r.dataset, f"{r.missing_modality}@{r.missing_rate:g}",
                  r.epochs_completed, _percent(r.test_accuracy), "[external]" if r.external else ""]
                 for r in runs], no_wrap=["id", "state", "epochs", "test acc"])


# What a run's `info` holds (training/prepare.py, training/train.py), in words; keys not listed
# here are shown by their own names, so a newer server's additions still show.
INFO_LABELS = {
    "x_modality": "x (always present)", "y_modality": "y (may be missing)", "split_by": "split by",
    "n_train": "training samples", "n_train_complete": "complete training samples",
    "n_train_missing": "training samples without y", "n_train_missing_x": "training samples without x",
    "realised_missing_rate": "realised missing rate", "n_val": "validation samples", "n_test": "test samples",
    "n_test_groups": "test groups", "reference_set": "reference set", "reference_set_size": "reference set size",
    "steps_per_epoch": "steps per epoch", "parameters": "parameters", "device": "device",
    "accuracy_level": "accuracy counted per", "test_sample_accuracy": "test accuracy per sample",
    "test_missing_accuracy": "test accuracy with y missing", "resumed_from_epoch": "resumed from epoch",
    "seconds": "training seconds",
}
INFO_PERCENT = frozenset({"realised_missing_rate", "test_sample_accuracy", "test_missing_accuracy"})


def info_rows(info: dict[str, Any] | None, prefix: str = "") -> list[list[Any]]:
    """A run's `info` as (label, value) rows; nested records (bayes_test_accuracy) flattened."""
    rows: list[list[Any]] = []
    for key, value in (info or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += info_rows(value, f"{name}.")
        elif key in INFO_PERCENT and isinstance(value, (int, float)) and not prefix:
            rows.append([INFO_LABELS[key], f"{100 * value:.2f}%"])
        else:
            rows.append([INFO_LABELS.get(name, f"info.{name}"), value])
    return rows


def print_run(run: Run) -> None:
    rows = [["id", run.id], ["name", run.name], ["state", run.state], ["external", run.external],
            ["test accuracy", _percent(run.test_accuracy)], ["val accuracy", _percent(run.val_accuracy)],
            ["best epoch", run.best_epoch], ["epochs", run.epochs_completed], ["sweep", run.sweep_id],
            ["tags", ", ".join(run.tags)]]
    rows += info_rows(run.info)
    rows += [[f"spec.{key}", value] for key, value in run.spec.items()]
    if isinstance(run.environment, dict):
        rows += [[f"environment.{key}", value] for key, value in run.environment.items()]
    else:
        rows.append(["environment", "not recorded"])
    print_table(f"run {run.id}", ["field", "value"], [r for r in rows if r[1] not in (None, "")], no_wrap=["field"])
    if run.error:
        print_notes([f"error: {run.error}"])


def print_sweeps(sweeps: Sequence[Sweep]) -> None:
    print_table(None, ["id", "name", "preset", "runs", "succeeded", "failed", "queued/running", "done"],
                [[s.id, s.name, s.preset, s.progress.get("total"), s.progress.get("succeeded"),
                  s.progress.get("failed"), s.progress.get("queued", 0) + s.progress.get("running", 0),
                  "yes" if s.finished else "no"] for s in sweeps])


# A cell's marks in the human table (the LaTeX export's ↑ ↓ †, in plain text).
MARKS = {"win": "↑", "loss": "↓", "reference": "†"}


def print_comparison(table: dict[str, Any], sweep_id: int) -> None:
    columns = ["method (fusion)", *(c["label"] for c in table["columns"])]
    rows, used = [], set()
    for row in table["rows"]:
        cells = []
        for cell in row["cells"]:
            if cell["mean"] is None:
                cells.append("–" if not cell["pending"] else f"({cell['pending']} pending)")
                continue
            text = f"{100 * cell['mean']:.2f}" + (f" ± {100 * cell['std']:.2f}" if cell["std"] is not None else "")
            text += f" (n={cell['n']})" + (" *" if cell["best"] else "")
            mark = "reference" if cell.get("is_reference") else (cell.get("paired") or {}).get("mark")
            if mark:
                used.add(mark)
                text += f" {MARKS[mark]}"
            if cell.get("pairing_verified") is False:
                used.add("unverified")
                text += " (pairing not verified)"
            cells.append(text)
        rows.append([row["label"], *cells])
    print_table(f"sweep {sweep_id}: test accuracy (%), mean ± std over seeds; * best of column", columns, rows)
    comparison = table.get("comparison") or {}
    legend = []
    if used & {"win", "loss"}:
        legend.append(f"↑/↓: significantly better/worse than the column's reference †, Holm-adjusted "
                      f"p < {comparison.get('alpha', 0.05):g}.")
    elif "reference" in used:
        legend.append("†: the reference each cell of its column is compared with.")
    if "unverified" in used:
        legend.append("pairing not verified: a run trained elsewhere that declared no split is not paired with "
                      "missmod's runs by seed.")
    print_notes(legend + ([comparison["note"]] if comparison.get("note") else []))


# --- commands --------------------------------------------------------------------------


def _show(args, data: Any, human) -> None:
    if args.json:
        print_json(data)
    else:
        human(data)


def _wait_outcome(args, thing: Run | Sweep) -> int:
    _show(args, thing, print_run if isinstance(thing, Run) else lambda s: print_sweeps([s]))
    if isinstance(thing, Run):
        return 0 if thing.succeeded else EXIT_FAILED
    return 0 if thing.progress.get("failed", 0) == 0 and thing.progress.get("cancelled", 0) == 0 else EXIT_FAILED


def runs_submit(client: Client, args) -> int:
    run = client.submit(**with_method_options(parse_pairs(args.fields)))
    if args.wait:
        return _wait_outcome(args, client.wait(run, progress=not args.json and not args.quiet, timeout=args.timeout))
    _show(args, run, print_run)
    return 0


def spec_argument(key: str, value: Any) -> str:
    """One `key=value` argument that parse_value reads back as `value` (text that would read as a
    number or JSON is quoted as a JSON string), quoted for a POSIX shell."""
    text = value if isinstance(value, str) and parse_value(value) == value else json.dumps(value)
    return shlex.quote(f"{key}={text}")


def resubmit_command(run: Run) -> str:
    """The command that submits the same run again: its whole stored spec as key=value pairs."""
    return " ".join(["missmod", "runs", "submit", *(spec_argument(k, v) for k, v in run.spec.items())])


def runs_spec(client: Client, args) -> int:
    run = client.run(args.id)
    if args.json:
        print_json(run.spec)
        return 0
    if run.external:
        print(f"# run {run.id} was trained elsewhere: this submits its setting as a missmod run", file=sys.stderr)
    print(resubmit_command(run))
    return 0


def runs_log(client: Client, args) -> int:
    """A live run fed by JSON lines on stdin: {"step": 12, "epoch": 1, "train_loss": 0.4} logs points
    (docs/live-runs.md); {"finish": {"test_predictions": [...]}} ends it with its result; the end of
    input finishes it; a line that is not an object of numbers fails it with the reason."""
    fields = parse_pairs(args.fields)
    if "method" in fields and "method_label" not in fields:
        fields["method_label"] = fields.pop("method")
    run = client.start_run(**fields)
    print(f"run {run.id}: logging from stdin ({client.url}/runs/{run.id})", file=sys.stderr)
    number = 0
    try:
        for number, line in enumerate(sys.stdin, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("each line must be a JSON object")
            if "finish" in record:
                ended = run.finish(**(record["finish"] or {}))
                break
            step, epoch = record.pop("step", None), record.pop("epoch", None)
            run.log(step=step, epoch=epoch, **record)
        else:
            ended = run.finish()
    except (ValueError, TypeError) as error:
        ended = run.fail(f"line {number} of the input: {error}")
    _show(args, ended, print_run)
    return 0 if ended.succeeded else EXIT_FAILED


def runs_list(client: Client, args) -> int:
    filters = {"state": args.state or None, "dataset": args.dataset, "method": args.method, "sweep": args.sweep,
               "tag": args.tag, "q": args.q}
    if args.external is not None:
        filters["external"] = args.external == "true"
    if args.csv:
        params = {k: v for k, v in filters.items() if v is not None}
        if "external" in params:
            params["external"] = str(params["external"]).lower()
        response = client.request("GET", "/api/runs", params={**params, "where": args.where or [], "sort": args.sort,
                                                              "format": "csv"})
        sys.stdout.write(response.text)
        return 0
    runs = client.runs(where=args.where, sort=args.sort, limit=args.limit, **filters)
    _show(args, list(runs), lambda rs: print_runs(rs, f"{len(rs)} run(s)"))
    return 0


def runs_show(client: Client, args) -> int:
    _show(args, client.run(args.id), print_run)
    return 0


def runs_wait(client: Client, args) -> int:
    return _wait_outcome(args, client.wait(args.id, progress=not args.json and not args.quiet, timeout=args.timeout))


def _bulk(action: str):
    def command(client: Client, args) -> int:
        result = getattr(client, f"{action}_many")(args.ids)
        if args.json:
            print_json(result)
        else:
            print(f"{action}: {', '.join(map(str, result['done'])) or 'none'}")
            if result["not_found"]:
                print(f"not found: {', '.join(map(str, result['not_found']))}")
            for refused in result["refused"]:
                print(f"run {refused['id']}: {refused['reason']}")
        return 0 if not result["not_found"] and not result["refused"] else EXIT_FAILED
    return command


def runs_metrics(client: Client, args) -> int:
    if args.csv:
        sys.stdout.write(client.request("GET", f"/api/runs/{args.id}/metrics", params={"format": "csv"}).text)
        return 0
    points = client.metrics(args.id)
    if args.json:
        print_json([p.to_dict() for p in points])
        return 0
    names = list(dict.fromkeys(p.name for p in points))
    by_epoch: dict[int, dict[str, Any]] = {}
    for p in points:
        by_epoch.setdefault(p.epoch, {})[p.name] = p.value
    print_table(f"run {args.id}", ["epoch", *names],
                [[epoch, *(_fmt(values.get(n)) for n in names)] for epoch, values in sorted(by_epoch.items())])
    return 0


def runs_predictions(client: Client, args) -> int:
    if args.csv:
        sys.stdout.write(client.request("GET", f"/api/runs/{args.id}/predictions", params={"format": "csv"}).text)
        return 0
    predictions = client.predictions(args.id)
    _show(args, predictions.to_dict(), lambda p: print_table(
        f"run {args.id}: stored test predictions (--csv: one row each)", ["field", "value"],
        [["epoch", p["epoch"]], [f"test {p['counted']}", len(p["labels"])], ["correct", sum(predictions.correct)],
         ["accuracy", _percent(predictions.accuracy)], ["classes", ", ".join(p["classes"])]], no_wrap=["field"]))
    return 0


def runs_predict(client: Client, args) -> int:
    import numpy as np

    try:
        with np.load(args.file, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as error:
        print(f"missmod: cannot read {args.file}: {error}", file=sys.stderr)
        return EXIT_FAILED
    frame = client.predict(args.id, **arrays)
    info = frame.attrs
    if args.json:
        print_json({**info, "predicted": list(frame["predicted"]),
                    "probabilities": frame[[f"p_{c}" for c in info["classes"]]].values.tolist()})
        return 0
    text = frame.to_csv(index_label="index")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
        print(f"run {info['run_id']} ({info['method']}, epoch {info['epoch']}): {len(frame)} sample(s) from "
              f"{info['inputs'].replace('_', ' ')} by {info['rule']} -> {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def runs_download(client: Client, args) -> int:
    path = client.download_model(args.id, args.output)
    if args.json:
        print_json({"run_id": args.id, "path": path})
    else:
        print(f"{path} ({os.path.getsize(path):,} bytes): load it with training.bundle.load_model(path)")
    return 0


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}"


def runs_logs(client: Client, args) -> int:
    """The run's epochs as lines (followed live with --follow), then its error if it failed."""
    run = client.run(args.id)
    printed: set[tuple[int, str]] = set()

    def emit(points) -> None:
        by_epoch: dict[int, dict[str, Any]] = {}
        for p in points:
            if (p.epoch, p.name) not in printed:
                printed.add((p.epoch, p.name))
                by_epoch.setdefault(p.epoch, {})[p.name] = p.value
        for epoch, values in sorted(by_epoch.items()):
            print(f"epoch {epoch:>4}  " + "  ".join(f"{n}={_fmt(v)}" for n, v in values.items()), flush=True)

    emit(client.metrics(run))
    if args.follow and not run.finished:
        from .models import Point

        def on_event(event) -> bool:
            if event is not None and event.event == "metrics":
                emit([Point(**p) for p in json.loads(event.data)["points"]])
            return event is not None and event.event in ("end", "gone")

        client._follow(f"/api/runs/{run.id}/stream", None, on_event)
        run = client.run(run.id)
    print(f"run {run.id}: {run.state}" + (f", test accuracy {_percent(run.test_accuracy)}"
                                           if run.test_accuracy is not None else ""))
    if run.error:
        print(run.error)
        detail = getattr(run, "error_detail", None)
        if detail:
            print(detail)
    return 0


def sweeps_create(client: Client, args) -> int:
    sweep = client.sweep(with_method_options(parse_pairs(args.fields, lists=True), per_method=True),
                         skip_invalid=args.skip_invalid or None)
    return _after_sweep_created(client, args, sweep)


def sweeps_preset(client: Client, args) -> int:
    sweep = client.sweep(preset=args.name, **parse_pairs(args.fields))
    return _after_sweep_created(client, args, sweep)


def _after_sweep_created(client: Client, args, sweep: Sweep) -> int:
    if args.wait:
        return _wait_outcome(args, client.wait(sweep, progress=not args.json and not args.quiet, timeout=args.timeout))
    _show(args, sweep, lambda s: print_sweeps([s]))
    return 0


def sweeps_list(client: Client, args) -> int:
    _show(args, client.sweeps(include_external=args.include_external), print_sweeps)
    return 0


def sweeps_show(client: Client, args) -> int:
    _show(args, client.get_sweep(args.id, include_external=args.include_external), lambda s: print_sweeps([s]))
    return 0


def sweeps_wait(client: Client, args) -> int:
    sweep = client.get_sweep(args.id)
    return _wait_outcome(args, client.wait(sweep, progress=not args.json and not args.quiet, timeout=args.timeout))


def sweeps_table(client: Client, args) -> int:
    params = {**({"reference": args.reference} if args.reference else {}), "test": args.test,
              **({"include_external": "true"} if args.include_external else {})}
    if args.csv or args.latex:
        params["format"] = "csv" if args.csv else "latex"
        sys.stdout.write(client.request("GET", f"/api/sweeps/{args.id}/table", params=params).text)
        return 0
    table = client.table(args.id, reference=args.reference, test=args.test, include_external=args.include_external)
    _show(args, dict(table), lambda t: print_comparison(t, args.id))
    return 0


def sweeps_retry(client: Client, args) -> int:
    ids = client.retry_sweep(args.id)
    _show(args, {"run_ids": ids}, lambda d: print(f"queued again: {', '.join(map(str, ids)) or 'none'}"))
    return 0


def sweeps_delete(client: Client, args) -> int:
    client.delete_sweep(args.id, keep_runs=args.keep_runs)
    return 0


def sweeps_rules(client: Client, args) -> int:
    _show(args, client.selection_rules(args.id), print_selection_rules)
    return 0


# --- studies ---------------------------------------------------------------------------

# A study's own fields; any other key=value of `studies create` is a spec field every run shares.
STUDY_FIELDS = ("name", "dataset", "missing_modality", "missing_rate", "methods", "fusion", "trials", "parallel_trials",
                "trial_seed", "final_seeds")


def study_request(pairs: Sequence[str], sampler: str | None, sampler_seed: int | None, pruner: str | None,
                  space: str | None) -> dict[str, Any]:
    """`studies create`'s key=value pairs and options as the API's body."""
    fields = parse_pairs(pairs, lists=True)
    body: dict[str, Any] = {k: v for k, v in fields.items() if k in STUDY_FIELDS}
    spec = {k: v for k, v in fields.items() if k not in STUDY_FIELDS}
    if spec:
        body["spec"] = spec
    if isinstance(body.get("methods"), str):
        body["methods"] = [body["methods"]]
    if sampler or sampler_seed is not None:
        body["sampler"] = {**({"name": sampler} if sampler else {}),
                           **({"seed": sampler_seed} if sampler_seed is not None else {})}
    if pruner:
        body["pruner"] = {"name": pruner}
    if space:
        try:
            body["space"] = json.loads(space)
        except ValueError as error:
            raise SystemExit(f"missmod: --space is not JSON: {error}") from None
    return body


def print_studies(studies: Sequence[Study]) -> None:
    print_table(None, ["id", "name", "state", "trials", "complete", "pruned", "failed", "running", "final sweep"],
                [[s.id, s.name, s.state, f"{s.trials.get('total', 0)}/{s.trials.get('budget', 0)}",
                  s.trials.get("complete"), s.trials.get("pruned"), s.trials.get("failed"), s.trials.get("running"),
                  s.final_sweep_id or "–"] for s in studies])


def print_study(study: Study) -> None:
    print_studies([study])
    print_table(f"study {study.id}: arms (best trial on validation accuracy)",
                ["arm", "candidate", "setting", "trials", "pruned", "failed", "best val acc", "best parameters"],
                [[a["index"], a["label"], f"{a['missing_modality']}@{a['missing_rate']:g}", a["asked"], a["pruned"],
                  a["failed"], _percent(a["best_value"]), _params(a["best_params"])] for a in study.arms])


def _params(params: dict[str, Any] | None) -> str:
    if not params:
        return "–"
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def print_study_table(table: dict[str, Any], study_id: int) -> None:
    columns = ["candidate", *(c["label"] for c in table["columns"])]
    rows = []
    for row in table["rows"]:
        cells = []
        for cell, chosen in zip(row["cells"], row["hyperparameters"]):
            if cell["mean"] is None:
                text = "–" if not cell["pending"] else f"({cell['pending']} pending)"
            else:
                text = f"{100 * cell['mean']:.2f}" + (f" ± {100 * cell['std']:.2f}" if cell["std"] is not None else "")
                text += f" (n={cell['n']})" + (" *" if cell["best"] else "")
            if cell.get("paired"):
                paired = cell["paired"]
                text += f"\nΔ {100 * paired['diff']:+.2f}, {paired['wins']}/{paired['ties']}/{paired['losses']}"
            cells.append(f"{text}\n{_params(chosen['params'])}")
        rows.append([row["label"], *cells])
    print_table(f"study {study_id}: test accuracy (%) of each cell's best configuration, mean ± std over the final "
                "seeds; Δ to the reference, wins/ties/losses; the hyperparameters chosen; * best of column", columns, rows)


def print_selection_rules(result: dict[str, Any]) -> None:
    columns = ["rule", "row", *(c["label"] for c in result["columns"])]
    rows = [[rule["rule"] + (" (recorded)" if rule["recorded"] else ""), row["label"],
             *(f"{100 * c['mean']:.2f} ({c['rank']})" if c["mean"] is not None else "–" for c in row["cells"])]
            for rule in result["rules"] for row in rule["rows"]]
    print_table("test accuracy (%) under each selection rule (rank in its column)", columns, rows)
    for line in result["ranking_changes"] or ["No column's ranking changes with the rule."]:
        print(line)


def studies_create(client: Client, args) -> int:
    study = client.study(study_request(args.fields, args.sampler, args.sampler_seed, args.pruner, args.space))
    return _after_study_created(client, args, study)


def studies_preset(client: Client, args) -> int:
    fields = parse_pairs(args.fields)
    if args.pruner:
        fields["pruner"] = {"name": args.pruner}
    return _after_study_created(client, args, client.study(preset=args.name, **fields))


def _after_study_created(client: Client, args, study: Study) -> int:
    if args.wait:
        return _study_outcome(args, client.wait(study, progress=not args.json and not args.quiet,
                                                timeout=args.timeout))
    _show(args, study, print_study)
    return 0


def _study_outcome(args, study: Study) -> int:
    _show(args, study, print_study)
    return 0 if study.state == "finished" else EXIT_FAILED


def studies_list(client: Client, args) -> int:
    _show(args, client.studies(), print_studies)
    return 0


def studies_show(client: Client, args) -> int:
    _show(args, client.get_study(args.id), print_study)
    return 0


def studies_wait(client: Client, args) -> int:
    study = client.get_study(args.id)
    return _study_outcome(args, client.wait(study, progress=not args.json and not args.quiet, timeout=args.timeout))


def studies_trials(client: Client, args) -> int:
    _show(args, client.trials(args.id, args.arm), lambda trials: print_table(
        f"study {args.id}: trials (test accuracy hidden until the study is finished)",
        ["arm", "trial", "state", "run", "val acc", "epochs", "pruned after", "test acc", "parameters"],
        [[t["arm"], t["number"], t["state"], t["run_id"], _percent(t["value"]), t["epochs"], t["pruned_epoch"] or "–",
          "hidden" if t["test_hidden"] else _percent(t["test_accuracy"]), _params(t["params"])] for t in trials]))
    return 0


def studies_table(client: Client, args) -> int:
    if args.csv or args.latex:
        response = client.request("GET", f"/api/studies/{args.id}/table",
                                  params={"format": "csv" if args.csv else "latex"})
        sys.stdout.write(response.text)
        return 0
    _show(args, dict(client.study_table(args.id)), lambda t: print_study_table(t, args.id))
    return 0


def studies_rules(client: Client, args) -> int:
    _show(args, client.selection_rules(client.get_study(args.id)), print_selection_rules)
    return 0


def studies_cancel(client: Client, args) -> int:
    _show(args, client.cancel_study(args.id), print_study)
    return 0


def studies_delete(client: Client, args) -> int:
    client.delete_study(args.id)
    return 0


def presets_list(client: Client, args) -> int:
    _show(args, client.presets(), lambda ps: print_table(
        None, ["name", "figure", "title", "methods", "runs per seed", "missing"],
        [[p["name"], p["figure"], p["title"], ", ".join(p["methods"]), p["runs_per_seed"],
          ", ".join(p["missing_methods"]) or "–"] for p in ps]))
    return 0


def print_datasets(datasets: Sequence[dict[str, Any]]) -> None:
    unusable = [d for d in datasets if d.get("error")]
    print_table(None, ["name", "source", "modalities", "classes", "samples", "usable"],
                [[d["name"], d["source"], ", ".join(d["modalities"]), len(d["classes"]), d["n_samples"],
                  f"no [{unusable.index(d) + 1}]" if d.get("error") else "yes"] for d in datasets],
                no_wrap=["classes", "samples", "usable"])
    print_notes([f"[{i}] {d['name']}: {d['error']}" for i, d in enumerate(unusable, start=1)])


def datasets_list(client: Client, args) -> int:
    _show(args, client.datasets(), print_datasets)
    return 0


def datasets_preprocess(client: Client, args) -> int:
    job = client.preprocess(args.name)
    _show(args, job, lambda j: print(f"job {j['id']}: {j['kind']} {j['dataset']} {j['state']}"))
    return 0


def _options_text(method: dict[str, Any]) -> str:
    defaults = method.get("default_options") or {}
    return ", ".join(f"{name}={value}" for name, value in defaults.items()) or "–"


def methods_list(client: Client, args) -> int:
    _show(args, client.methods(), lambda ms: print_table(
        None, ["name", "title", "fusions", "options (default)", "package"],
        [[m["name"], m["title"], ", ".join(m["fusions"]), _options_text(m),
          f"{m.get('distribution') or '–'} {m.get('version') or ''}".strip()] for m in ms]))
    return 0


# --- the parser ------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose options also take values that start with `-`:
    `--sort -test_accuracy`, `--q -draft`, `--where '-…'`.

    argparse sorts every token that starts with `-` into options before any action sees it, so
    neither `nargs` nor a custom action can take `-test_accuracy` as `--sort`'s value (it answers
    "expected one argument"; only `--sort=-test_accuracy` worked). Each parser therefore joins
    such a value to its option (`--sort=-test_accuracy`, which argparse always read right) before
    parsing, for its own options that take one value, unless the token is one of its options
    (`--sort --json` still says the value is missing). Sub-command parsers are of this class too
    and do the same with the tokens handed to them."""

    def parse_known_args(self, args=None, namespace=None):
        tokens = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._attach_dash_values(tokens), namespace)

    def _attach_dash_values(self, tokens: list[str]) -> list[str]:
        takes_value = {option for action in self._actions if action.option_strings and action.nargs is None
                       for option in action.option_strings}
        attached: list[str] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token == "--":  # everything after is positional
                return attached + tokens[i:]
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if (token in takes_value and following is not None and following.startswith("-")
                    and not following.startswith("--") and following not in self._option_string_actions):
                attached.append(f"{token}={following}")
                i += 2
                continue
            attached.append(token)
            i += 1
        return attached


def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before the group and after the command alike.
    common = Parser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="server (default: $MISSMOD_URL or "
                                                                 "http://127.0.0.1:8000)")
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token (default: $MISSMOD_TOKEN)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output, for pipes")

    parser = Parser(prog="missmod", parents=[common],
                                     description="Submit, follow and compare missmod runs and sweeps.")
    groups = parser.add_subparsers(dest="group", required=True, metavar="{runs,sweeps,studies,presets,datasets,methods}")

    def command(group, name: str, handler, help: str) -> argparse.ArgumentParser:
        sub = group.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    def waiting(sub) -> None:
        sub.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 124)")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")

    runs = groups.add_parser("runs", help="runs").add_subparsers(dest="command", required=True)
    sub = command(runs, "submit", runs_submit, "create a run from key=value spec fields")
    sub.add_argument("fields", nargs="+", metavar="key=value", help="e.g. dataset=digits method=mle "
                                                                      "missing_modality=bottom missing_rate=0.9; a "
                                                                      "method's own option: options.NAME=value")
    sub.add_argument("--wait", action="store_true", help="wait until it finishes (exit 0 only if it succeeded)")
    waiting(sub)
    sub = command(runs, "list", runs_list, "list runs (every page)")
    sub.add_argument("--state", action="append", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    sub.add_argument("--where", action="append", metavar="EXPR",
                     help="FIELD OP VALUE on any spec field or final metric: 'accuracy>0.8', 'encoder=resnet50', "
                          "'metrics.val_loss<0.5' (repeat: all must hold)")
    sub.add_argument("--sort", default="-id", help="a column or spec field, - first to reverse (default -id)")
    sub.add_argument("--limit", type=int, default=None, help="at most this many runs")
    sub.add_argument("--dataset")
    sub.add_argument("--method")
    sub.add_argument("--sweep", type=int)
    sub.add_argument("--tag")
    sub.add_argument("--q", help="text the name contains")
    sub.add_argument("--external", choices=["true", "false"], help="only runs trained elsewhere, or only ours")
    sub.add_argument("--csv", action="store_true", help="CSV of every matching run, with its spec fields")
    sub = command(runs, "show", runs_show, "one run")
    sub.add_argument("id", type=int)
    sub = command(runs, "log", runs_log, "a live run logged from JSON lines on stdin, one "
                  '{"step": N, "epoch": E, "NAME": value, ...} each; {"finish": {...}} or the end of input ends it')
    sub.add_argument("fields", nargs="+", metavar="key=value", help="dataset=digits method=my_method "
                                                                      "missing_modality=bottom missing_rate=0.9 seed=0")
    sub = command(runs, "spec", runs_spec, "print the command that submits the same run again (--json: its spec)")
    sub.add_argument("id", type=int)
    sub = command(runs, "wait", runs_wait, "follow a run until it finishes: exit 0 if it succeeded, 1 otherwise")
    sub.add_argument("id", type=int)
    waiting(sub)
    for action, help in (("cancel", "cancel runs (one request)"), ("retry", "queue failed or cancelled runs again"),
                         ("delete", "delete runs with their metrics and files")):
        sub = command(runs, action, _bulk(action), help)
        sub.add_argument("ids", type=int, nargs="+", metavar="id")
    sub = command(runs, "logs", runs_logs, "a run's epochs (and its error); --follow for live")
    sub.add_argument("id", type=int)
    sub.add_argument("--follow", "-f", action="store_true")
    sub = command(runs, "metrics", runs_metrics, "a run's metrics, one row per epoch")
    sub.add_argument("id", type=int)
    sub.add_argument("--csv", action="store_true")
    sub = command(runs, "predictions", runs_predictions,
                  "a run's stored test predictions: a summary, or --csv one row per test sample")
    sub.add_argument("id", type=int)
    sub.add_argument("--csv", action="store_true", help="index, label, predicted, class names, correct")
    sub = command(runs, "predict", runs_predict,
                  "predict with a run's model: an .npz of arrays x and/or y (or the modalities' names); prints "
                  "CSV, one row per sample: predicted class and each class's probability")
    sub.add_argument("id", type=int)
    sub.add_argument("file", help=".npz with x (n, …) and/or y (n, …), as in the dataset")
    sub.add_argument("-o", "--output", help="write the CSV here instead of printing it")
    sub = command(runs, "download", runs_download,
                  "download a run's model bundle (its model at the selected epoch, for load_model)")
    sub.add_argument("id", type=int)
    sub.add_argument("-o", "--output", help="where to save it (default run-<id>-model.zip)")

    sweeps = groups.add_parser("sweeps", help="sweeps").add_subparsers(dest="command", required=True)
    sub = command(sweeps, "create", sweeps_create, "a grid sweep: key=value fields, a,b,c for several values")
    sub.add_argument("fields", nargs="+", metavar="key=value",
                     help="e.g. dataset=digits method=mle,zero_padding missing_rate=0.8,0.9 seed=0,1,2; a "
                          "method's own option: options.METHOD.NAME=a,b (only its runs multiply)")
    sub.add_argument("--skip-invalid", action="store_true", help="leave out the combinations the validation refuses")
    sub.add_argument("--wait", action="store_true")
    waiting(sub)
    sub = command(sweeps, "preset", sweeps_preset, "a paper experiment: missmod sweeps preset table1 dataset=digits")
    sub.add_argument("name")
    sub.add_argument("fields", nargs="*", metavar="key=value", help="dataset=…, seeds=…, epochs=…, only_available=true")
    sub.add_argument("--wait", action="store_true")
    waiting(sub)
    def external_option(sub, help: str) -> None:
        sub.add_argument("--include-external", action="store_true", help=help)

    progress_help = "count runs trained elsewhere (logged into the sweep) in its progress too"
    external_option(command(sweeps, "list", sweeps_list, "sweeps with their progress"), progress_help)
    sub = command(sweeps, "show", sweeps_show, "one sweep's progress")
    sub.add_argument("id", type=int)
    external_option(sub, progress_help)
    sub = command(sweeps, "retry", sweeps_retry, "queue a sweep's failed and cancelled runs again")
    sub.add_argument("id", type=int)
    sub = command(sweeps, "wait", sweeps_wait, "follow a sweep until every run finished (exit 0: none failed)")
    sub.add_argument("id", type=int)
    waiting(sub)
    sub = command(sweeps, "table", sweeps_table, "the comparison table (mean ± std over seeds), each cell compared "
                                                 "with its column's reference")
    sub.add_argument("id", type=int)
    out = sub.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true")
    out.add_argument("--latex", action="store_true", help="a booktabs table for a paper")
    sub.add_argument("--reference", help="the row label (e.g. 'zero_padding (add)') or the method each cell is "
                                         "compared with (default: the best baseline of each column)")
    sub.add_argument("--test", choices=["seeds", "samples"], default="seeds",
                     help="seeds: exact sign-flip over seeds; samples: McNemar over the stored test predictions")
    external_option(sub, "runs trained elsewhere join Holm's family of comparisons (where their pairing is "
                         "verified)")
    sub = command(sweeps, "delete", sweeps_delete, "delete a sweep and its runs")
    sub.add_argument("id", type=int)
    sub.add_argument("--keep-runs", action="store_true")
    sub = command(sweeps, "rules", sweeps_rules, "the table under every selection rule (no retraining)")
    sub.add_argument("id", type=int)

    studies = groups.add_parser("studies", help="hyperparameter studies").add_subparsers(dest="command", required=True)
    sub = command(studies, "create", studies_create, "a study: the same trial budget for every method (docs/studies.md)")
    sub.add_argument("fields", nargs="+", metavar="key=value",
                     help="dataset=digits missing_modality=bottom missing_rate=0.9 methods=mle,zero_padding trials=20; "
                          "any other key is a spec field every run shares (epochs=50, batch_size=64)")
    sub.add_argument("--sampler", choices=["tpe", "random"])
    sub.add_argument("--sampler-seed", type=int)
    sub.add_argument("--pruner", choices=["median", "hyperband", "none"])
    sub.add_argument("--space", metavar="JSON", help='replaces fields of the default spaces, e.g. '
                                                     '\'{"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-1}}\'')
    sub.add_argument("--wait", action="store_true", help="wait until it finishes (exit 0 only if it finished)")
    waiting(sub)
    sub = command(studies, "preset", studies_preset, "a tuned preset: missmod studies preset mle_vs_zero_padding_tuned "
                                                     "dataset=digits")
    sub.add_argument("name")
    sub.add_argument("fields", nargs="*", metavar="key=value", help="dataset=…, epochs=…, trials=…, final_seeds=…")
    sub.add_argument("--pruner", choices=["median", "hyperband", "none"])
    sub.add_argument("--wait", action="store_true")
    waiting(sub)
    command(studies, "list", studies_list, "studies with their trials spent")
    for name, handler, help in (("show", studies_show, "one study: its arms and best trials"),
                                ("rules", studies_rules, "the final table under every selection rule"),
                                ("cancel", studies_cancel, "ask no more trials; cancel its runs not ended"),
                                ("delete", studies_delete, "delete a study with its runs")):
        sub = command(studies, name, handler, help)
        sub.add_argument("id", type=int)
    sub = command(studies, "wait", studies_wait, "follow a study until it finishes (exit 0: finished)")
    sub.add_argument("id", type=int)
    waiting(sub)
    sub = command(studies, "trials", studies_trials, "a study's trials (validation figures)")
    sub.add_argument("id", type=int)
    sub.add_argument("--arm", type=int)
    sub = command(studies, "table", studies_table, "the final runs' table with the chosen hyperparameters")
    sub.add_argument("id", type=int)
    sub.add_argument("--csv", action="store_true")
    sub.add_argument("--latex", action="store_true")

    presets = groups.add_parser("presets", help="the paper's experiments").add_subparsers(dest="command", required=True)
    command(presets, "list", presets_list, "the presets and what each still lacks")
    datasets = groups.add_parser("datasets", help="datasets").add_subparsers(dest="command", required=True)
    command(datasets, "list", datasets_list, "datasets with their modalities and classes")
    sub = command(datasets, "preprocess", datasets_preprocess, "preprocess a raw video dataset (a job)")
    sub.add_argument("name")
    methods = groups.add_parser("methods", help="methods").add_subparsers(dest="command", required=True)
    command(methods, "list", methods_list, "methods and the fusions each allows")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Not parser defaults: the sub-commands share these options' actions, and a default set on
    # one parser would overwrite a value given before the sub-command.
    for name, default in (("url", None), ("token", None), ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    try:
        with Client(args.url, args.token) as client:
            return args.handler(client, args)
    except WaitTimeout as error:
        print(f"missmod: {error}", file=sys.stderr)
        return EXIT_TIMEOUT
    except ApiError as error:
        print(f"missmod: {error}", file=sys.stderr)
        return EXIT_FAILED
    except httpx.TransportError as error:
        print(f"missmod: cannot reach {args.url or 'the server'} ({type(error).__name__}: {error}); "
              f"set --url or MISSMOD_URL", file=sys.stderr)
        return EXIT_FAILED
    except MissmodError as error:
        print(f"missmod: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
