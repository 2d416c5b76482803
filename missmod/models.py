"""What the client returns: light models of the API's answers, and lists and tables that turn
into pandas DataFrames.

The client defines its own models rather than importing the server's (backend/), so that it
installs and imports without torch, SQLAlchemy or FastAPI. They declare the fields scripts use
most and keep every other field the server sends (`extra="allow"`), so a newer server's
additions reach the script untouched (the API only ever adds fields).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def _pandas():
    try:
        import pandas
    except ImportError:  # an optional extra: `pip install 'missmod[pandas]'`
        raise ImportError("to_pandas() needs pandas: pip install 'missmod[pandas]' (or pandas itself)") from None
    return pandas


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Run(_Model):
    id: int
    name: str
    state: str
    dataset: str
    method: str
    fusion: str
    missing_modality: str
    missing_rate: float
    seed: int
    spec: dict[str, Any] = {}
    epochs_completed: int = 0
    test_accuracy: float | None = None
    val_accuracy: float | None = None
    best_epoch: int | None = None
    external: bool = False
    sweep_id: int | None = None
    tags: list[str] = []
    error: str | None = None
    info: dict[str, Any] | None = None  # what the run recorded about its data and training
    # The reproducibility record (versions, commit, device, host, plugin); None: not recorded.
    environment: dict[str, Any] | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"


class Sweep(_Model):
    id: int
    name: str
    progress: dict[str, Any] = {}
    grid: dict[str, Any] = {}
    preset: str | None = None
    run_ids: list[int] = []
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return bool(self.progress.get("done"))


class Study(_Model):
    """A hyperparameter study (docs/studies.md): `trials` counts them per state, `arms` holds each
    candidate × setting with its best trial so far."""

    id: int
    name: str
    state: str
    dataset: str = ""
    trials: dict[str, int] = {}
    arms: list[dict[str, Any]] = []
    final_sweep_id: int | None = None
    run_ids: list[int] = []

    @property
    def finished(self) -> bool:
        """Ended: finished (its final runs ended) or cancelled."""
        return self.state in ("finished", "cancelled")


class Predictions(_Model):
    """A run's stored test predictions at its selected epoch, one per test sample (or group,
    `counted`), in the order of its test set: two runs of the same dataset, seed and split list
    the same samples in the same order."""

    run_id: int
    epoch: int
    classes: list[str]
    counted: str = "samples"
    labels: list[int]
    predicted: list[int]

    @property
    def correct(self) -> list[bool]:
        return [label == guess for label, guess in zip(self.labels, self.predicted)]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.labels) if self.labels else float("nan")

    def discordant(self, reference: "Predictions") -> tuple[int, int]:
        """McNemar's discordant counts against `reference` on the same test samples: (b, c) = (only
        the reference right, only this run right). The exact test's p-value is then
        scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue (docs/statistics.md)."""
        if self.labels != reference.labels:
            raise ValueError(f"runs {self.run_id} and {reference.run_id} were not tested on the same samples "
                             "(another dataset, seed or split)")
        pairs = list(zip(reference.correct, self.correct))
        return sum(a and not b for a, b in pairs), sum(b and not a for a, b in pairs)

    def to_pandas(self):
        """One row per test sample: index, label, predicted, their class names, correct."""
        pd = _pandas()
        return pd.DataFrame({"index": range(len(self.labels)), "label": self.labels, "predicted": self.predicted,
                             "label_name": [self.classes[i] for i in self.labels],
                             "predicted_name": [self.classes[i] for i in self.predicted], "correct": self.correct})


class Point(_Model):
    epoch: int
    name: str
    value: float | None


# The columns a runs DataFrame starts with; the spec's other fields follow.
RUN_COLUMNS = ["id", "name", "state", "external", "dataset", "method", "fusion", "missing_modality", "missing_rate",
               "seed", "epochs_completed", "best_epoch", "val_accuracy", "test_accuracy", "sweep_id", "tags",
               "created_at", "finished_at"]


class RunList(list):
    """The runs of a query (every page of it)."""

    def to_pandas(self):
        """One row per run: its columns, then every spec field (lr, epochs, encoder, …)."""
        pd = _pandas()
        records = []
        for run in self:
            record = {column: getattr(run, column, None) for column in RUN_COLUMNS}
            for key, value in (run.spec or {}).items():
                record.setdefault(key, value)
            records.append(record)
        frame = pd.DataFrame.from_records(records, columns=None if records else RUN_COLUMNS)
        return frame


class Metrics(list):
    """A run's metric points, in the order they were recorded."""

    def to_pandas(self, wide: bool = True):
        """wide: one row per epoch, one column per metric; else one row per point (epoch, name, value)."""
        pd = _pandas()
        long = pd.DataFrame.from_records([p.to_dict() for p in self], columns=["epoch", "name", "value"])
        if not wide:
            return long
        table = long.pivot_table(index="epoch", columns="name", values="value", aggfunc="last", dropna=False)
        table.columns.name = None
        return table.reset_index()


class Table(dict):
    """A sweep's comparison table as the API returns it: `columns` (missing modality × rate),
    `rows` (method (fusion), `external` for runs trained elsewhere) and their `cells`."""

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.get("rows", [])

    @property
    def columns(self) -> list[dict[str, Any]]:
        return self.get("columns", [])

    def to_pandas(self, wide: bool = False):
        """Long (default): one row per cell — label, method, fusion, external, the row's other
        fields, missing_modality, missing_rate, mean, std, n, pending, best, paper, then the
        cell's paired comparison with its column's reference (PAIRED_COLUMNS: is_reference,
        reference, diff, ci_low, ci_high, wins, ties, losses, p_value, p_adjusted, significant,
        mark, test; empty for the reference itself and cells not compared). wide: the paper's
        layout, mean accuracy per row label × column label. A study's table adds the chosen
        trial, its val_accuracy and a `param.<name>` column per hyperparameter."""
        pd = _pandas()
        records = []
        for row in self.rows:
            # A study's table: the configuration each cell was trained with.
            chosen_per_cell = row.get("hyperparameters") or [None] * len(row["cells"])
            for column, cell, chosen in zip(self.columns, row["cells"], chosen_per_cell):
                paired = cell.get("paired") or {}
                records.append({"label": row["label"], "method": row["method"], "fusion": row["fusion"],
                                "external": row.get("external", False), **row.get("extras", {}),
                                "missing_modality": column["missing_modality"],
                                "missing_rate": column["missing_rate"], "column": column["label"],
                                **{k: cell.get(k) for k in ("mean", "std", "n", "pending", "best", "paper")},
                                "is_reference": cell.get("is_reference", False),
                                "pairing_verified": cell.get("pairing_verified", True),
                                **{k: paired.get(k) for k in PAIRED_COLUMNS},
                                "significant": bool(paired.get("significant", False))})
                if chosen is not None:
                    records[-1].update(trial=chosen.get("trial"), val_accuracy=chosen.get("value"),
                                       **{f"param.{k}": v for k, v in (chosen.get("params") or {}).items()})
        frame = pd.DataFrame.from_records(records)
        if wide and records:
            frame = frame.pivot(index="label", columns="column", values="mean")
            frame = frame.reindex(index=[r["label"] for r in self.rows], columns=[c["label"] for c in self.columns])
        return frame


# A cell's paired comparison as Table.to_pandas() lays it out (the API's `paired`, flattened).
PAIRED_COLUMNS = ("reference", "diff", "ci_low", "ci_high", "wins", "ties", "losses", "p_value", "p_adjusted",
                  "significant", "mark", "test")
