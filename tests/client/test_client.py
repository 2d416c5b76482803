"""The Python client and the `missmod` CLI against a live server process (and a real worker
where runs must train): what a script or a notebook does, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from missmod.client import Client, InvalidInput, NotFound, Unauthorized

from tests.support import ROOT

SPEC = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom", "missing_rate": 0.9,
        "epochs": 2}
TOKEN = "client-test-token-0123456789"


def cli(base: str, *args: str, token: str | None = None, timeout: float = 180,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`missmod …` as a user runs it (python -m missmod: the same entry point as the console
    script), configured from the environment (`env` adds to it: COLUMNS=80 for a narrow terminal)."""
    extra, env = env or {}, {k: v for k, v in os.environ.items() if not k.startswith("MISSMOD_")}
    env.update(MISSMOD_URL=base, PYTHONPATH=str(ROOT), COLUMNS="200")  # tables one row per line
    env.update(extra)
    if token:
        env["MISSMOD_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "missmod", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_submit_wait_and_dataframes_and_a_preset_sweep_with_an_external_run(
        embedded_settings, start_server, start_worker):
    base = start_server(embedded_settings)
    start_worker(embedded_settings)
    client = Client(base)

    # submit → wait (on the live stream, with a progress bar) → DataFrame with the right rows
    first = client.submit(**SPEC, seed=0, name="client run 0")
    second = client.submit(**SPEC, seed=1, lr=0.01)
    other = client.submit(**{**SPEC, "method": "lower_bound"}, seed=0)
    finished = [client.wait(run, progress=True, timeout=180) for run in (first, second, other)]
    assert [run.state for run in finished] == ["succeeded"] * 3
    frame = client.runs(method="mle", sort="seed").to_pandas()
    assert list(frame["id"]) == [first.id, second.id]
    assert list(frame["seed"]) == [0, 1] and list(frame["lr"]) == [0.001, 0.01]  # spec fields are columns
    assert list(frame["test_accuracy"]) == [r.test_accuracy for r in finished[:2]]
    assert frame.loc[0, "name"] == "client run 0" and not frame["external"].any()
    # where-conditions on any spec field and on results
    assert [r.id for r in client.runs(where=["lr>0.005"])] == [second.id]
    good = client.runs(where=[f"accuracy>={min(r.test_accuracy for r in finished)}"], sort="id")
    assert [r.id for r in good] == [first.id, second.id, other.id]
    curves = client.metrics(first).to_pandas()
    assert list(curves["epoch"]) == [1, 2] and {"train_loss", "val_accuracy", "test_accuracy"} <= set(curves)

    # the CLI on the same server: a run submitted with key=value pairs, waited for (exit 0 = succeeded)
    submitted = cli(base, "--json", "runs", "submit", "dataset=digits", "method=mle", "missing_modality=bottom",
                    "missing_rate=0.9", "epochs=1")
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["id"]
    waited = cli(base, "runs", "wait", str(run_id), "--quiet")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "succeeded" in waited.stdout
    listed = json.loads(cli(base, "runs", "list", "--json", "--where", "epochs=1").stdout)
    assert [r["id"] for r in listed] == [run_id]
    assert "epoch    1" in cli(base, "runs", "logs", str(run_id)).stdout

    # a sweep by preset, waited for, its table as a DataFrame
    sweep = client.sweep(preset="fig5", dataset="digits", seeds=1, epochs=2)
    assert len(sweep.run_ids) == 4
    sweep = client.wait(sweep, progress=True, timeout=240)
    assert sweep.finished and sweep.progress["succeeded"] == 4
    table = client.table(sweep).to_pandas()
    assert sorted(table["method"]) == ["hgr", "lower_bound", "mle", "zero_padding"]
    assert table["n"].tolist() == [1, 1, 1, 1] and not table["external"].any()

    # a run trained elsewhere, logged through the client into that sweep: its own row, marked
    external = client.log_run(
        {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": sweep_modality(client, sweep),
         "missing_rate": 0.95, "seed": 0, "encoder": "their_cnn"},
        {"train_loss": [0.9, 0.5, 0.3], "val_accuracy": [0.6, 0.7, 0.8], "test_accuracy": [0.55, 0.66, 0.77]},
        [[5, 1], [2, 7]], sweep=sweep, source="github.com/someone/their-mle")
    assert external.external and external.state == "succeeded" and external.test_accuracy == 0.77
    assert external.best_epoch == 3 and external.spec["encoder"] == "their_cnn"
    table = client.table(sweep)
    marked = [row for row in table.rows if row["external"]]
    assert len(marked) == 1 and marked[0]["label"] == "mle (add) [external]"
    assert marked[0]["cells"][0]["mean"] == 0.77 and marked[0]["cells"][0]["run_ids"] == [external.id]
    ours = next(row for row in table.rows if row["method"] == "mle" and not row["external"])
    assert external.id not in ours["cells"][0]["run_ids"]  # never averaged with missmod's own mle
    frame = table.to_pandas()
    assert frame[frame["external"]]["mean"].tolist() == [0.77]
    trend = client.trend(sweep)["series"]
    assert [s["label"] for s in trend if s["external"]] == ["mle (add) [external]"]
    assert client.confusion(external)["counts"] == [[5, 1], [2, 7]]
    assert "[external]" in cli(base, "sweeps", "table", str(sweep.id)).stdout
    shown = cli(base, "runs", "list", "--external", "true")
    assert shown.returncode == 0 and "[external]" in shown.stdout


def sweep_modality(client: Client, sweep) -> str:
    return client.runs(sweep=sweep.id, limit=1)[0].missing_modality


def test_pagination_errors_and_exit_codes(embedded_settings, start_server):
    """No worker: the runs stay queued, which is all listing and cancelling need."""
    base = start_server(embedded_settings)
    client = Client(base)
    made = [client.submit(**SPEC, seed=seed) for seed in range(7)]
    # every page is read: 7 runs in pages of 3
    assert [r.id for r in client.iter_runs(page_size=3, sort="id")] == [r.id for r in made]
    assert len(client.runs(page_size=2, limit=5)) == 5
    first_page = client.request("GET", "/api/runs", params={"limit": 3}).json()
    assert len(first_page["items"]) == 3 and first_page["next_cursor"]

    # an error carries the API's message and the field at fault
    with pytest.raises(InvalidInput) as caught:
        client.submit(**{**SPEC, "missing_rate": 1.5})
    assert caught.value.field == "missing_rate" and caught.value.status == 422
    assert "missing_rate" in str(caught.value) and "less than 1" in str(caught.value)
    with pytest.raises(InvalidInput) as caught:
        client.runs(where=["colour=blue"])
    assert caught.value.field == "where.0" and "unknown field 'colour'" in str(caught.value)
    with pytest.raises(NotFound, match="run 999999 not found"):
        client.run(999999)
    refused = cli(base, "runs", "submit", "dataset=digits", "method=mle", "missing_modality=top",
                  "missing_rate=2")
    assert refused.returncode == 1 and "missing_rate" in refused.stderr

    # `runs wait` exits non-zero when the run did not succeed
    assert cli(base, "runs", "cancel", str(made[0].id)).returncode == 0
    waited = cli(base, "runs", "wait", str(made[0].id), "--quiet")
    assert waited.returncode == 1 and "cancelled" in waited.stdout
    # bulk actions are one request each
    outcome = client.cancel_many([made[1], made[2], 999999])
    assert outcome["done"] == [made[1].id, made[2].id] and outcome["not_found"] == [999999]
    assert client.delete_many(made[:3])["done"] == [r.id for r in made[:3]]
    assert len(client.runs()) == 4


def test_the_token(embedded_settings, start_server):
    settings = embedded_settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    base = start_server(settings)
    with pytest.raises(Unauthorized, match="authentication required"):
        Client(base).runs()
    client = Client(base, token=TOKEN)
    run = client.submit(**SPEC)
    assert [r.id for r in client.runs()] == [run.id]
    assert cli(base, "runs", "list").returncode == 1  # no MISSMOD_TOKEN
    listed = cli(base, "--json", "runs", "show", str(run.id), token=TOKEN)
    assert listed.returncode == 0 and json.loads(listed.stdout)["id"] == run.id


def test_the_client_imports_nothing_of_the_server_nor_torch():
    code = ("import sys, missmod, missmod.client, missmod.cli, missmod.models; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'backend', 'worker', 'training', "
            "'fastapi', 'sqlalchemy', 'celery', 'pandas'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # pandas too: only to_pandas() loads it
