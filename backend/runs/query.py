"""The runs list's small query language: `where` conditions on any spec field or final metric,
and sorting by any spec field.

    where = FIELD OP VALUE        OP: =  !=  >  >=  <  <=
    FIELD = a spec field          (dataset, method, encoder, lr, epochs, evaluate_missing, …)
          | a result              (test_accuracy — also `accuracy` —, val_accuracy, best_epoch,
                                   epochs_completed, state, name, external, attempts)
          | metrics.NAME          (the run's value of metric NAME at its last recorded epoch)

Repeat `where` for several (all must hold): `?where=accuracy>0.8&where=encoder=resnet50`.
Numbers compare as numbers, `true`/`false` as booleans, anything else as text. A spec field a
run was created without (it predates the field) counts as the field's default. A stored value of
another type than its field's (an external run logged before its settings were typed) counts as
absent, on every database alike, so it can never make a filter or a sort fail.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, String, and_, case, false, func, select, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement as SqlExpression
from sqlalchemy.sql.functions import FunctionElement

from training.spec import TrainSpec

from ..api.params import has_control_characters
from ..refused import Refused
from .models import MetricPoint, Run

Kind = Literal["number", "text", "bool"]
KIND_NAMES: dict[Kind, str] = {"number": "a number", "text": "text", "bool": "true or false"}

# The spec fields copied into typed, indexed columns of the runs table.
TYPED_COLUMNS: dict[str, tuple[Any, Kind]] = {
    "dataset": (Run.dataset, "text"), "method": (Run.method, "text"), "fusion": (Run.fusion, "text"),
    "missing_modality": (Run.missing_modality, "text"), "missing_rate": (Run.missing_rate, "number"),
    "seed": (Run.seed, "number"),
}
RESULT_COLUMNS: dict[str, tuple[Any, Kind]] = {
    "id": (Run.id, "number"), "name": (Run.name, "text"), "state": (Run.state, "text"),
    "test_accuracy": (Run.test_accuracy, "number"), "accuracy": (Run.test_accuracy, "number"),
    "val_accuracy": (Run.val_accuracy, "number"), "best_epoch": (Run.best_epoch, "number"),
    "epochs_completed": (Run.epochs_completed, "number"), "attempts": (Run.attempts, "number"),
    "external": (Run.external, "bool"), "sweep": (Run.sweep_id, "number"),
}
METRIC_PREFIX = "metrics."
OPERATORS = ("!=", ">=", "<=", "=", ">", "<")
CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*$")


class InvalidQuery(ValueError):
    """A `where` or `sort` the runs list cannot apply; the message says why."""


def _kind_of(annotation: Any) -> Kind:
    if typing.get_origin(annotation) is Literal:
        values = typing.get_args(annotation)
        return "bool" if all(isinstance(v, bool) for v in values) else "text"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        return "bool"
    if annotation in (int, float):
        return "number"
    return "text"


def _is_scalar(annotation: Any) -> bool:
    """A field holding one number, string or boolean (or None): one a query compares."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(_is_scalar(a) for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) is Literal or annotation in (int, float, bool, str)


def _spec_fields() -> dict[str, tuple[Kind, Any]]:
    """The spec fields a query filters and sorts by, with their kind and default. A field
    holding a mapping (a plugin's `method_options`) is not one: it has no order, and its
    default comes from a factory (PostgreSQL was handed pydantic's "no default" marker)."""
    fields = {}
    for name, field in TrainSpec.model_fields.items():
        if not _is_scalar(field.annotation):
            continue
        default = None if field.is_required() else field.default
        fields[name] = (_kind_of(field.annotation), default)
    return fields


SPEC_FIELDS = _spec_fields()
# Sortable: the typed columns and results, and every other spec field.
SORTABLE = [*TYPED_COLUMNS, *(n for n in RESULT_COLUMNS if n not in ("accuracy", "sweep")),
            *(n for n in SPEC_FIELDS if n not in TYPED_COLUMNS)]


def has_kind(value: Any, kind: Kind) -> bool:
    """Whether a spec value has its field's kind (None, an absent value, has every kind)."""
    if value is None:
        return True
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, bool) if kind == "bool" else isinstance(value, str)


class json_kind(FunctionElement):
    """The JSON type of `spec[key]` named alike on every database: 'number', 'string',
    'boolean', 'null', 'object', 'array' (NULL when absent)."""

    type = String()
    inherit_cache = True
    name = "json_kind"


@compiles(json_kind, "postgresql")
def _json_kind_postgresql(element, compiler, **kw):
    column, key = element.clauses
    return f"json_typeof({compiler.process(column, **kw)} -> {compiler.process(key, **kw)})"


@compiles(json_kind, "sqlite")
def _json_kind_sqlite(element, compiler, **kw):
    column, key = element.clauses
    kind = f"json_type({compiler.process(column, **kw)}, '$.\"' || {compiler.process(key, **kw)} || '\"')"
    return (f"CASE {kind} WHEN 'integer' THEN 'number' WHEN 'real' THEN 'number' WHEN 'text' THEN 'string' "
            f"WHEN 'true' THEN 'boolean' WHEN 'false' THEN 'boolean' ELSE {kind} END")


JSON_KINDS: dict[Kind, str] = {"number": "number", "text": "string", "bool": "boolean"}


def _spec_expression(name: str) -> tuple[SqlExpression, Kind]:
    kind, default = SPEC_FIELDS[name]
    element = Run.spec[name]
    typed = {"number": element.as_float, "bool": element.as_boolean, "text": element.as_string}[kind]()
    # Only a value of the field's own type is read as it: "abc" cast to a number would fail the
    # whole query on PostgreSQL (and compare as text with numbers on SQLite).
    value = case((json_kind(Run.spec, name) == JSON_KINDS[kind], typed))
    if default is not None:
        # A run created before the field existed had its default; a run trained elsewhere
        # (external) has only the settings it was logged with.
        value = func.coalesce(value, case((Run.external.is_(False), default)))
    return value, kind


def _final_metric_condition(name: str, compare) -> ColumnElement[bool]:
    """Runs whose value of metric `name` at their last epoch that recorded it satisfies
    `compare(value_column)`. Each run's last epoch is found once, in one grouped pass over that
    metric's points, then joined back to them: linear in the points. (A subquery correlated per
    point — each point checked against its run's max(epoch) — made PostgreSQL read a run's points
    once per point: six runs of 16,000 points took two minutes.)"""
    point = MetricPoint.__table__.alias("point")
    last = (select(point.c.run_id, func.max(point.c.epoch).label("epoch")).where(point.c.name == name)
            .group_by(point.c.run_id).subquery("last_epoch"))
    final = MetricPoint.__table__.alias("final")
    matching = (select(final.c.run_id)
                .join(last, and_(final.c.run_id == last.c.run_id, final.c.epoch == last.c.epoch))
                .where(final.c.name == name, compare(final.c.value)))
    return Run.id.in_(matching)


def is_metric(name: str) -> bool:
    return name.startswith(METRIC_PREFIX) and len(name) > len(METRIC_PREFIX)


def field_expression(name: str) -> tuple[SqlExpression, Kind]:
    """The SQL expression of a field and how its values compare; InvalidQuery when unknown."""
    if name in TYPED_COLUMNS:
        return TYPED_COLUMNS[name]
    if name in RESULT_COLUMNS:
        return RESULT_COLUMNS[name]
    if name in SPEC_FIELDS:
        return _spec_expression(name)
    if is_metric(name):
        raise InvalidQuery(f"{name}: final metrics can be compared (where), not sorted by")
    raise InvalidQuery(f"unknown field {name!r}: use a spec field ({', '.join(SPEC_FIELDS)}), a result "
                       f"({', '.join(RESULT_COLUMNS)}) or metrics.<name>")


def _value(text: str, kind: Kind, field: str) -> Any:
    if kind == "number":
        try:
            number = float(text)
        except ValueError:
            raise InvalidQuery(f"{field} is a number; {text!r} is not") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise InvalidQuery(f"{field}: {text!r} is not a finite number")
        return number
    if kind == "bool":
        if text.lower() not in ("true", "false"):
            raise InvalidQuery(f"{field} is true or false, not {text!r}")
        return text.lower() == "true"
    return text


@dataclass(frozen=True)
class Condition:
    field: str
    operator: str
    value: str

    def sql(self) -> ColumnElement[bool]:
        if is_metric(self.field):
            value = _value(self.value, "number", self.field)
            return _final_metric_condition(self.field[len(METRIC_PREFIX):],
                                           lambda column: self._compare(column, "number", value))
        expression, kind = field_expression(self.field)
        value = _value(self.value, kind, self.field)
        if kind == "bool" and self.operator not in ("=", "!="):
            raise InvalidQuery(f"{self.field} is true or false: compare it with = or !=")
        if kind == "bool":
            value = true() if value else false()
            return expression.is_(value) if self.operator == "=" else expression.is_not(value)
        return self._compare(expression, kind, value)

    def _compare(self, expression, kind: Kind, value: Any) -> ColumnElement[bool]:
        if kind == "number" and self.operator in ("=", "!=") and self.field not in ("id", "sweep"):
            # Numbers typed by people (0.9) against doubles: equal within a tolerance.
            close = expression.between(value - 1e-9, value + 1e-9)
            return close if self.operator == "=" else and_(expression.is_not(None), ~close)
        return {"=": expression == value, "!=": expression != value, ">": expression > value,
                ">=": expression >= value, "<": expression < value, "<=": expression <= value}[self.operator]


def parse_condition(text: str) -> Condition:
    match = CONDITION.match(text)
    if match is None:
        raise InvalidQuery(f"{text!r} is not FIELD OP VALUE (OP one of {' '.join(OPERATORS)}), e.g. accuracy>0.8")
    field, operator, value = match.groups()
    if value == "":
        raise InvalidQuery(f"{text!r} compares {field} with nothing")
    condition = Condition(field, operator, value)
    condition.sql()  # unknown fields and mistyped values are refused here, at the edge
    return condition


def parse_conditions(texts: Sequence[str]) -> tuple[Condition, ...]:
    """The `where` parameters of a request; Refused (a 422 naming the one at fault) otherwise."""
    conditions = []
    for index, text in enumerate(texts):
        if len(text) > 300 or has_control_characters(text):
            raise Refused.field("query", ("where", index), text, "at most 300 printable characters")
        try:
            conditions.append(parse_condition(text))
        except InvalidQuery as error:
            raise Refused.field("query", ("where", index), text, str(error)) from None
    return tuple(conditions)


def check_sort(sort: str) -> None:
    """Refused (a 422 naming `sort`) unless it is a sortable key, `-` first to reverse."""
    if sort.lstrip("-") not in SORTABLE:
        raise Refused.field("query", "sort", sort, f"sort by one of: {', '.join(SORTABLE)} (prefix - to reverse)",
                            kind="enum")


def sort_expression(name: str) -> tuple[SqlExpression, Kind]:
    if name not in SORTABLE:
        raise InvalidQuery(f"sort by one of: {', '.join(SORTABLE)} (prefix - to reverse)")
    return field_expression(name)


def sort_value(run: Run, name: str) -> Any:
    """The value a run has for a sort key, as the database compares it (for cursors)."""
    if name in TYPED_COLUMNS or name in RESULT_COLUMNS:
        return getattr(run, RESULT_COLUMNS.get(name, TYPED_COLUMNS.get(name))[0].key)
    kind, default = SPEC_FIELDS[name]
    spec = run.spec if isinstance(run.spec, dict) else {}
    value = spec.get(name)
    if value is None or not has_kind(value, kind):  # as _spec_expression reads it
        value = default if not run.external else None
    if value is None:
        return None
    if kind == "number":
        return float(value)
    return bool(value) if kind == "bool" else str(value)
