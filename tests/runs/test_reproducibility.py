"""The reproducibility record (training/reproducibility.py): what a run's numbers came from, in
the API, on the run page and in CSV; a run made before it was kept reads "not recorded"; and
`missmod runs spec ID` prints the command that submits the same run again."""

from __future__ import annotations

import csv
import io
import platform
import shlex

import pytest

from backend.db import utcnow
from backend.runs.models import Run, RunState
from missmod.cli import parse_pairs, resubmit_command
from missmod.models import Run as ClientRun
from training import reproducibility

SPEC = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom", "missing_rate": 0.9,
        "epochs": 2, "seed": 3}


def test_the_record_names_this_process():
    import torch

    record = reproducibility.record("cpu", "mle")
    assert list(record) == list(reproducibility.FIELDS) == list(reproducibility.LABELS)
    assert record["python"] == platform.python_version() and record["torch"] == torch.__version__
    assert record["torch_threads"] == torch.get_num_threads() and record["device"] == "cpu"
    assert record["plugin"] == "missmod" and record["plugin_version"] == record["missmod_version"]
    # This checkout is a git worktree: its commit is recorded (with +dirty when it has changes).
    assert record["git_commit"] and len(record["git_commit"].split("+")[0]) == 40


def _insert(client, environment) -> int:
    with client.app.state.sessions() as session:
        run = Run(name="old", spec=SPEC, state=RunState.succeeded, created_at=utcnow(), environment=environment,
                  **{k: SPEC[k] for k in ("dataset", "method", "fusion", "missing_modality", "missing_rate", "seed")})
        session.add(run)
        session.commit()
        return run.id


def test_old_runs_show_not_recorded_and_new_ones_their_record(embedded_settings, client_for):
    client = client_for(embedded_settings)
    old = _insert(client, None)
    recorded = _insert(client, reproducibility.record("cpu", "mle"))
    broken = _insert(client, ["not", "an", "object"])  # a bad stored row never takes down a page
    assert client.get(f"/api/runs/{old}").json()["environment"] is None
    assert client.get(f"/api/runs/{broken}").json()["environment"] is None
    assert client.get(f"/api/runs/{recorded}").json()["environment"]["host"] == platform.node()
    assert "not recorded" in client.get(f"/runs/{old}").text
    assert "not recorded" in client.get(f"/runs/{broken}").text
    page = client.get(f"/runs/{recorded}").text
    assert "not recorded" not in page and "Git commit" in page and platform.python_version() in page
    rows = {row["id"]: row for row in csv.DictReader(io.StringIO(client.get("/api/runs?format=csv").text))}
    assert rows[str(old)]["environment.python"] == "" and rows[str(recorded)]["environment.python"] \
        == platform.python_version()
    assert rows[str(recorded)]["environment.plugin"] == "missmod"


@pytest.mark.parametrize("spec", [SPEC, {**SPEC, "encoder": "mlp", "lr": 0.001, "name_like": "0.5",
                                         "flag": "true", "nothing": None, "list": [1, 2], "text": "two words"}])
def test_the_spec_command_submits_the_same_spec(spec):
    command = resubmit_command(ClientRun(id=1, name="r", state="succeeded", spec=spec,
                                         **{k: SPEC[k] for k in ("dataset", "method", "fusion", "missing_modality",
                                                                 "missing_rate", "seed")}))
    words = shlex.split(command)
    assert words[:3] == ["missmod", "runs", "submit"]
    assert parse_pairs(words[3:]) == spec
