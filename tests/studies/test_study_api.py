"""Studies through the API with the worker played in this process (tests/studies/support.py), so
that what Optuna is told can be watched from inside: a request is checked field by field; the
sampler and the pruner are told validation figures only, never a test figure; every arm spends
exactly its budget; the trials' test accuracy stays hidden until the study is finished; the final
table carries the paired statistics and the chosen hyperparameters (JSON, CSV, LaTeX) and reads
under every selection rule; and processes advancing one study at once ask each trial once."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict

import optuna
from sqlalchemy import select

from backend.db import session_factory
from backend.queue import WorkQueue
from backend.runs.models import MetricPoint, Run, RunState
from backend.studies import service
from backend.studies.models import StudyTrial

from tests.studies.support import SMALL_STUDY, play_worker


def test_a_study_request_is_checked_field_by_field_before_anything_is_written(embedded_settings, client_for):
    client = client_for(embedded_settings)
    spaces = client.get("/api/studies/spaces").json()
    assert spaces["mle"]["lr"] == {"distribution": "loguniform", "low": 1e-4, "high": 1e-2}
    assert "reference_set" in spaces["mle"] and "reference_set" not in spaces["zero_padding"]
    assert spaces["ae2"]["imputer_epochs"]["distribution"] == "int"
    base = {**SMALL_STUDY, "methods": ["mle", "zero_padding"]}
    refused = [
        ({"space": {"hidden_dim": {"distribution": "loguniform", "low": 8, "high": 64}}}, ["space", "hidden_dim"],
         "takes int or categorical"),
        ({"space": {"lr": {"distribution": "loguniform", "low": 1e-3, "high": 100}}}, ["space", "lr"],
         "less than or equal to 10"),
        ({"space": {"seed": {"distribution": "int", "low": 0, "high": 3}}}, ["space", "seed"], "not searched"),
        ({"space": {"lr": {"distribution": "loguniform", "low": 1e-2, "high": 1e-3}}}, ["space", "lr"], "below high"),
        ({"spec": {"epochs": 4, "lr": 0.01}}, ["methods", 0, "space", "lr"], "fixed (spec) and searched"),
        ({"spec": {"epochs": 4, "encoder": "small_cnn"}}, ["spec", "encoder"], "takes images"),
        ({"methods": ["mle", {"method": "zero_padding", "fusion": "outer"}]}, ["methods", 1, "fusion"],
         "not available for method 'zero_padding'"),
        ({"methods": ["mle", "mle"]}, ["methods", 1], "listed twice"),
        ({"missing_modality": "left"}, ["missing_modality"], "has no modality 'left'"),
        ({"spec": {"method": "mle"}}, ["spec"], "set by the study's own fields"),
    ]
    for change, loc, message in refused:
        response = client.post("/api/studies", json={**base, **change})
        assert response.status_code == 422, (change, response.text)
        errors = response.json()["detail"]
        assert any(e["loc"][1:len(loc) + 1] == loc and message in e["msg"] for e in errors), (change, errors)
    assert client.get("/api/studies").json()["total"] == 0 and client.get("/api/runs").json()["total"] == 0

    # The space a sweep refuses ("a value or a flat list of values") is what a study takes.
    space = {"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2}}
    assert client.post("/api/sweeps", json={**{k: v for k, v in base.items() if k in ("dataset", "missing_modality",
                                                                                    "missing_rate")},
                                            "method": "mle", "lr": space["lr"]}).status_code == 422
    created = client.post("/api/studies", json={**base, "space": {**space, "feature_dim": None}})
    assert created.status_code == 201, created.text
    study = created.json()
    assert [c["space"].get("lr") for c in study["candidates"]] == [space["lr"]] * 2
    assert all("feature_dim" not in c["space"] for c in study["candidates"])  # null removed the default
    assert "reference_set" in study["candidates"][0]["space"]  # mle's own default kept
    assert len(study["run_ids"]) == 2 and study["trials"] == {"running": 2, "complete": 0, "pruned": 0, "failed": 0,
                                                              "total": 2, "budget": 6}
    assert [a["asked"] for a in study["arms"]] == [1, 1]  # one trial each: the arms move at the same pace


class Told:
    """Every value Optuna's samplers and pruners are given: per arm (study name) and trial number,
    the objective values and the per-epoch values they saw."""

    def __init__(self, monkeypatch):
        self.values: dict[tuple[str, int], set] = defaultdict(set)
        self.intermediate: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
        self.decisions = 0
        for owner in (optuna.samplers.TPESampler, optuna.samplers.RandomSampler):
            original = owner.sample_independent
            monkeypatch.setattr(owner, "sample_independent", self._watching(original))
        original_prune = optuna.pruners.MedianPruner.prune
        monkeypatch.setattr(optuna.pruners.MedianPruner, "prune", self._watching_pruner(original_prune))

    def see(self, study) -> None:
        self.decisions += 1
        for trial in study.get_trials(deepcopy=False):
            key = (study.study_name, trial.number)
            if trial.value is not None:
                self.values[key].add(trial.value)
            self.intermediate[key].update(trial.intermediate_values)

    def _watching(self, original):
        def sample_independent(sampler, study, trial, name, distribution):
            self.see(study)
            return original(sampler, study, trial, name, distribution)
        return sample_independent

    def _watching_pruner(self, original):
        def prune(pruner, study, trial):
            self.see(study)
            return original(pruner, study, trial)
        return prune


def test_selection_never_sees_test_and_the_final_table_carries_the_chosen_hyperparameters(
        embedded_settings, client_for, monkeypatch):
    told = Told(monkeypatch)
    client = client_for(embedded_settings)
    created = client.post("/api/studies", json={**SMALL_STUDY, "methods": ["mle", "zero_padding"],
                                                "spec": {"epochs": 5}})
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]
    done: set[int] = set()
    play_worker(embedded_settings, done, stop_after=6)  # the six trials, and no final run yet
    searching = client.get(f"/api/studies/{study_id}").json()
    trials = client.get(f"/api/studies/{study_id}/trials").json()
    assert searching["trials"]["total"] == 6 and searching["trials"]["running"] == 0
    assert searching["state"] == "final" and searching["final_sweep_id"] is not None
    assert all(t["test_hidden"] and t["test_accuracy"] is None for t in trials)  # not finished: hidden
    play_worker(embedded_settings, done)  # the final runs
    study = client.get(f"/api/studies/{study_id}").json()
    assert study["state"] == "finished"

    # The budget: three trials per arm, numbered 0-2 once each, each its own run; pruned ones stopped early.
    with session_factory(embedded_settings.database_url)() as session:
        rows = session.execute(select(StudyTrial, Run).join(Run, Run.id == StudyTrial.run_id)
                               .where(StudyTrial.study_id == study_id)).all()
        points = session.execute(select(MetricPoint.run_id, MetricPoint.epoch, MetricPoint.name, MetricPoint.value)
                                 .where(MetricPoint.name.in_(["val_accuracy", "test_accuracy"]))).all()
    assert sorted((t.arm, t.number) for t, _ in rows) == [(a, n) for a in (0, 1) for n in range(3)]
    assert len({run.id for _, run in rows}) == 6
    for trial, run in rows:
        if trial.state == "pruned":
            assert run.state == RunState.cancelled and run.epochs_completed == trial.pruned_epoch < 5
        else:
            assert trial.state == "complete" and run.state == RunState.succeeded and trial.value == run.val_accuracy
    assert study["trials"]["pruned"] == sum(t.state == "pruned" for t, _ in rows)

    # What Optuna was told, trial by trial, is the run's validation figures: the validation accuracy
    # of the epoch it selected, and of each epoch at that epoch; never a test figure.
    per_run = defaultdict(dict)
    for run_id, epoch, name, value in points:
        per_run[run_id][(name, epoch)] = value
    assert told.decisions >= 6
    differs = 0  # told figures whose test counterpart differs: had test been told, the checks would fail
    for trial, run in rows:
        key = (f"missmod-study-{study_id}-arm-{trial.arm}", trial.number)
        val = {epoch: v for (name, epoch), v in per_run[run.id].items() if name == "val_accuracy"}
        test = {epoch: v for (name, epoch), v in per_run[run.id].items() if name == "test_accuracy"}
        assert told.values[key] <= ({run.val_accuracy} if trial.state == "complete" else set()), key
        assert told.intermediate[key].items() <= val.items(), key
        differs += sum(test[epoch] != value for epoch, value in told.intermediate[key].items())
        differs += sum(run.test_accuracy != value for value in told.values[key])
    assert differs >= 6 and sum(len(told.intermediate[key]) for key in told.intermediate) >= 6

    # Finished: the trials' test accuracy is shown.
    shown = client.get(f"/api/studies/{study_id}/trials").json()
    by_run = {run.id: run for _, run in rows}
    assert all(not t["test_hidden"] and t["test_accuracy"] == by_run[t["run_id"]].test_accuracy for t in shown)

    # The final table: a row per candidate, the best trial's hyperparameters beside each cell, the
    # final seeds compared with the reference (zero padding: the best baseline).
    table = client.get(f"/api/studies/{study_id}/table").json()
    assert [row["label"] for row in table["rows"]] == ["mle (add)", "zero_padding (add)"]
    for row, arm in zip(table["rows"], study["arms"]):
        cell, chosen = row["cells"][0], row["hyperparameters"][0]
        assert cell["n"] == 2 and sorted(cell["seeds"]) == [0, 1]
        assert (chosen["trial"], chosen["value"], chosen["params"]) == (arm["best_trial"], arm["best_value"],
                                                                        arm["best_params"])
        final_specs = [by_id["spec"] for by_id in (client.get(f"/api/runs/{i}").json() for i in cell["run_ids"])]
        assert all(spec[name] == value for spec in final_specs for name, value in chosen["params"].items())
    assert table["rows"][1]["cells"][0]["is_reference"] and table["rows"][0]["cells"][0]["paired"]["n"] == 2
    assert table["comparison"]["tests"] == 1
    csv = client.get(f"/api/studies/{study_id}/table?format=csv").text.splitlines()
    assert "bottom 90% lr" in csv[0] and "bottom 90% paired" not in csv[0] and "bottom 90% p_value" in csv[0]
    assert "reference_set" in csv[0] and len(csv) == 3
    latex = client.get(f"/api/studies/{study_id}/table?format=latex").text
    assert r"\toprule" in latex and "Hyperparameters chosen on validation accuracy" in latex and "weight\\_decay" in latex

    # Every selection rule, read from the final runs' epochs: the recorded rule gives the table itself.
    rules = client.get(f"/api/studies/{study_id}/selection-rules").json()
    assert [r["rule"] for r in rules["rules"]] == ["val_accuracy_earliest", "val_accuracy_latest", "val_loss",
                                                   "last_epoch"]
    recorded = next(r for r in rules["rules"] if r["recorded"])
    assert recorded["rule"] == "val_accuracy_earliest"
    assert [[c["mean"] for c in row["cells"]] for row in recorded["rows"]] == \
        [[c["mean"] for c in row["cells"]] for row in table["rows"]]
    sweep_rules = client.get(f"/api/sweeps/{study['final_sweep_id']}/selection-rules")
    assert sweep_rules.status_code == 200 and sweep_rules.json()["recorded_rule"] == "val_accuracy_earliest"
    figures = client.get(f"/api/studies/{study_id}/plots", params={"arm": 0}).json()["figures"]
    assert {t.get("type", "scatter") for f in figures.values() if isinstance(f, dict) for t in f["data"]} <= \
        {"scatter", "bar"}  # what the pages' plotly.js bundle draws
    assert isinstance(figures["history"], dict) and isinstance(figures["parallel"], dict)


def test_processes_advancing_one_study_at_once_ask_each_trial_once(embedded_settings, client_for):
    """Four threads (each its own session, as four processes would be) advance the study every
    time trials end: the version check lets one ask, so the study never exceeds its parallel
    trials nor its budget, and no arm gets a trial number twice."""
    client = client_for(embedded_settings)
    study_id = client.post("/api/studies", json={**SMALL_STUDY, "methods": ["mle", "zero_padding"],
                                                 "parallel_trials": 2, "pruner": {"name": "none"}}).json()["id"]
    sessions = session_factory(embedded_settings.database_url)
    queue = WorkQueue(embedded_settings)
    errors: list[Exception] = []
    for _ in range(6):
        with sessions() as session:
            running = list(session.scalars(select(Run).join(StudyTrial, StudyTrial.run_id == Run.id)
                                           .where(StudyTrial.study_id == study_id, Run.state == RunState.queued)))
            for run in running:  # as if trained: succeeded with a validation accuracy
                run.state, run.val_accuracy, run.test_accuracy = RunState.succeeded, 0.5 + run.id / 100, 0.1
            session.commit()
        start = threading.Barrier(4)

        def advance():
            try:
                with sessions() as session:
                    start.wait()
                    service.advance(session, queue, study_id)
            except Exception as error:  # an advance must never fail because another raced it
                errors.append(error)

        threads = [threading.Thread(target=advance) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        with sessions() as session:
            trials = service.trials_of(session, study_id)
            assert sum(t.state == "running" for t in trials) <= 2
            assert len({(t.arm, t.number) for t in trials}) == len(trials)
    queue.close()
    with sessions() as session:
        trials = service.trials_of(session, study_id)
        study = service.get_study(session, study_id)
        assert Counter(t.arm for t in trials) == {0: 3, 1: 3}
        assert [t.number for t in trials if t.arm == 0] == [0, 1, 2]
        assert study.state == "final" and study.final_sweep_id is not None
        finals = session.scalars(select(Run).where(Run.sweep_id == study.final_sweep_id)).all()
        assert len(finals) == 2 * 2  # each arm's best, over the two final seeds: started once
