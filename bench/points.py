"""Exactly once: the points a finished run must have, each of them once and nothing else.

A run's points are keyed by (epoch, step, name), and that is the table's own unique key: a check
that only looks for repeats cannot fail. What can fail is completeness, so the check builds the
set of keys the run must have from what it was asked to do (its spec, and the steps per epoch it
reported) and compares:

- per epoch e: `train_loss`, `val_loss`, `val_accuracy`, `test_accuracy` (and
  `test_missing_accuracy` with `evaluate_missing`) at step e × steps_per_epoch, where the epoch
  ended;
- per logged step (every `log_every_steps` optimiser steps and each epoch's last, training/
  step_log.py): `step/train_loss`, `step/lr`, `step/samples_per_second`, and for `mle` its loss
  terms (`step/loss_complete`; `step/loss_missing` when y is missing from some training samples;
  `step/loss_missing_x` when x is).

Used by the soak (bench/soak.py) and the tests that train through real workers; tested itself in
tests/runs/test_points.py (a dropped, duplicated or stray point is caught).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "test_accuracy")
STEP_METRICS = ("step/train_loss", "step/lr", "step/samples_per_second")
DEFAULT_LOG_EVERY_STEPS = 10  # training/spec.py's default, for a spec stored without it

Key = tuple[int, int, str]


def logged_steps(epochs: int, steps_per_epoch: int, every: int) -> list[int]:
    """The global steps at which the per-step metrics are logged, epoch after epoch."""
    return [(epoch - 1) * steps_per_epoch + k for epoch in range(1, epochs + 1)
            for k in range(1, steps_per_epoch + 1) if k % every == 0 or k == steps_per_epoch]


def step_metric_names(spec: Mapping[str, Any]) -> set[str]:
    names = set(STEP_METRICS)
    if spec["method"] == "mle":  # the one built-in method whose loss has several terms
        names.add("step/loss_complete")
        if spec.get("missing_rate", 0) > 0:
            names.add("step/loss_missing")
        if spec.get("other_missing_rate", 0) > 0:
            names.add("step/loss_missing_x")
    return names


def epoch_metric_names(spec: Mapping[str, Any]) -> set[str]:
    return set(EPOCH_METRICS) | ({"test_missing_accuracy"} if spec.get("evaluate_missing") else set())


def expected_points(spec: Mapping[str, Any], steps_per_epoch: int, epochs: int | None = None) -> set[Key]:
    """Every (epoch, step, name) a run of `spec` writes in its first `epochs` epochs (all of them
    by default). Not for ae1/ae2, whose imputer stage writes points of its own."""
    if spec["method"] in ("ae1", "ae2"):
        raise ValueError("ae1 and ae2 also write their imputer stage's points: not described here")
    epochs = spec["epochs"] if epochs is None else epochs
    assert steps_per_epoch >= 1, steps_per_epoch
    every = spec.get("log_every_steps") or DEFAULT_LOG_EVERY_STEPS
    keys = {(epoch, epoch * steps_per_epoch, name) for epoch in range(1, epochs + 1)
            for name in epoch_metric_names(spec)}
    step_names = step_metric_names(spec)
    for step in logged_steps(epochs, steps_per_epoch, every):
        epoch = (step - 1) // steps_per_epoch + 1
        keys |= {(epoch, step, name) for name in step_names}
    return keys


def run_expected_points(run: Mapping[str, Any]) -> set[Key]:
    """What a run as the API shows it (GET /api/runs/{id}) must have: every epoch it completed."""
    return expected_points(run["spec"], run["info"]["steps_per_epoch"], run["epochs_completed"])


@dataclass(frozen=True)
class PointsCheck:
    """How a run's points differ from exactly once: expected ones absent, keys that are not
    expected, and keys present more than once (with how many times)."""

    missing: tuple[Key, ...]
    unexpected: tuple[Key, ...]
    repeated: tuple[tuple[Key, int], ...]

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.repeated)

    def __str__(self) -> str:
        if self.exact:
            return "exactly once"
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected), ("repeated", self.repeated)):
            if items:
                shown = ", ".join(map(str, items[:5])) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
                parts.append(f"{len(items)} {label}: {shown}")
        return "; ".join(parts)


def key_of(point: Mapping[str, Any]) -> Key:
    return (point["epoch"], point.get("step") or 0, point["name"])


def check_points(points: Iterable[Mapping[str, Any]], expected: set[Key]) -> PointsCheck:
    """Compare points (dicts with epoch, step, name, as the API returns them) with the keys they
    must have, exactly once each."""
    counts = Counter(map(key_of, points))
    return PointsCheck(missing=tuple(sorted(expected - counts.keys())),
                       unexpected=tuple(sorted(counts.keys() - expected)),
                       repeated=tuple(sorted((key, n) for key, n in counts.items() if n > 1)))


def assert_exactly_once(points: Iterable[Mapping[str, Any]], expected: set[Key]) -> None:
    check = check_points(points, expected)
    assert check.exact, str(check)
