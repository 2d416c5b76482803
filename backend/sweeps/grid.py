"""A grid → the runs of a sweep. Every combination is validated exactly as POST /api/runs
validates one run (backend.runs.validation); the invalid ones are grouped by reason so a
refusal reads "fusion 'outer' is not available for method 'zero_padding' — 15 of 90
combinations" rather than fifteen copies of the same error."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..runs.schemas import RunCreate
from ..runs.validation import DatasetCatalog, ErrorDict, validate_run

MAX_RUNS_PER_SWEEP = 5_000


# A method's own option in a grid: `method_options.<method>.<option>` → its values. Only the runs
# of that method multiply by them (docs/methods.md).
OPTION_PREFIX = "method_options."


def option_key(method: str, option: str) -> str:
    return f"{OPTION_PREFIX}{method}.{option}"


def _split_options(grid: Mapping[str, list[Any]]) -> tuple[dict[str, list[Any]], dict[str, dict[str, list[Any]]]]:
    fields, options = {}, {}
    for name, values in grid.items():
        if name.startswith(OPTION_PREFIX):
            method, _, option = name[len(OPTION_PREFIX):].partition(".")
            options.setdefault(method, {})[option] = values
        else:
            fields[name] = values
    return fields, options


def expand_grid(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """The product of the lists. `seed` varies slowest: the first runs cover every other
    combination once, so the comparison table fills in everywhere before seeds repeat. A method's
    options multiply that method's combinations only."""
    fields, options = _split_options(grid)
    names = sorted(fields, key=lambda name: name != "seed")  # stable: seed first, then the order given
    combinations = []
    for values in itertools.product(*(fields[name] for name in names)):
        combination = dict(zip(names, values))
        own = options.get(combination.get("method"), {})
        if not own:
            combinations.append(combination)
            continue
        for chosen in itertools.product(*own.values()):
            combinations.append({**combination, "method_options": dict(zip(own, chosen))})
    return combinations


def grid_size(grid: Mapping[str, list[Any]]) -> int:
    fields, options = _split_options(grid)
    size = 1
    for name, values in fields.items():
        if name != "method" or not options:
            size *= len(values)
    if options:
        size *= sum(math.prod(len(v) for v in options.get(method, {}).values()) for method in fields.get("method", []))
    return size


@dataclass
class InvalidGroup:
    """Combinations refused for the same reason (same field, same message, same value)."""

    loc: tuple
    msg: str
    type: str
    input: Any
    count: int = 0
    example: dict[str, Any] = field(default_factory=dict)

    @property
    def combinations(self) -> int:  # what the API calls the count (InvalidCombinations)
        return self.count

    def as_error(self, total: int) -> ErrorDict:
        """The FastAPI error of a refused sweep: the field, what is wrong, how often, an example."""
        example = ", ".join(f"{k}={v}" for k, v in self.example.items())
        return {"type": "invalid_combination", "loc": self.loc, "input": self.input,
                "msg": f"{self.msg} — in {self.count} of {total} combinations (e.g. {example})",
                "ctx": {"combinations": self.count, "example": self.example, "reason": self.msg}}


@dataclass
class SweepPlan:
    runs: list[RunCreate]
    invalid: list[InvalidGroup]
    combinations: int

    @property
    def invalid_count(self) -> int:
        return self.combinations - len(self.runs)

    def refusal(self, skip_invalid: bool) -> list[ErrorDict] | None:
        """The 422 errors that refuse this plan, or None when it can be created."""
        if not self.runs:
            errors = [g.as_error(self.combinations) for g in self.invalid]
            return errors or [{"type": "value_error", "loc": ("body",), "msg": "the grid is empty", "input": None}]
        if self.invalid and not skip_invalid:
            return [g.as_error(self.combinations) for g in self.invalid]
        return None


def _varying(combinations: list[dict[str, Any]]) -> list[str]:
    """Fields whose value differs between combinations: what identifies one in a message."""
    names = list(dict.fromkeys(name for c in combinations for name in c))
    return [n for n in names if len({repr(c.get(n)) for c in combinations}) > 1]


def plan_sweep(combinations: Iterable[Mapping[str, Any]], catalog: DatasetCatalog) -> SweepPlan:
    combinations = [dict(c) for c in combinations]
    varying = _varying(combinations)
    runs: list[RunCreate] = []
    groups: dict[tuple, InvalidGroup] = {}
    for combination in combinations:
        payload, errors = validate_run(combination, catalog)
        if payload is not None:
            runs.append(payload)
            continue
        for error in errors:
            # A missing field's "input" is the whole combination: not what tells groups apart.
            value = error.get("input")
            value = None if isinstance(value, (dict, list)) else value
            key = (tuple(error["loc"]), error["msg"], repr(value))
            group = groups.get(key)
            if group is None:
                example = {name: combination[name] for name in varying if name in combination}
                group = groups[key] = InvalidGroup(loc=tuple(error["loc"]), msg=error["msg"], type=error["type"],
                                                   input=value, example=example)
            group.count += 1
    return SweepPlan(runs=runs, invalid=list(groups.values()), combinations=len(combinations))
