"""A study request → what the study searches, checked as POST /api/runs checks a run: every
candidate at every setting must make a valid run, and so must every end of every range and every
choice of its space (a search that could ask for a spec no run can take is refused at once, naming
the field, rather than failing trials later). Errors are grouped as a sweep's are."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from training.search_space import default_search_space, distribution_error, describe
from training.spec import DEFAULTS_OF_LATER_OPTIONS, TrainSpec

from ..refused import ErrorDict, Refused
from ..runs.validation import DatasetCatalog, validate_run
from .schemas import NOT_IN_SPEC, StudyCreate

Loc = tuple[str | int, ...]


def candidate_label(method: str, fusion: str, options: Mapping[str, Any]) -> str:
    """As a comparison table labels its rows: "mle (add)", "mle (add), label_prior=uniform"."""
    extra = "".join(f", {name}={value}" for name, value in sorted(options.items())
                    if not (name in DEFAULTS_OF_LATER_OPTIONS and value == DEFAULTS_OF_LATER_OPTIONS[name]))
    return f"{method} ({fusion}){extra}"


def setting_label(setting: Mapping[str, Any]) -> str:
    return f"{setting['missing_modality']} {setting['missing_rate'] * 100:g}%"


@dataclass
class StudyPlan:
    name: str
    dataset: str
    base_spec: dict[str, Any]
    candidates: list[dict[str, Any]]
    settings: list[dict[str, Any]]
    trials_per_arm: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    parallel_trials: int
    trial_seed: int
    final_seeds: int

    @property
    def arms(self) -> int:
        return len(self.candidates) * len(self.settings)

    def fields(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Errors:
    """422 errors, each (location, message, value) once."""

    def __init__(self) -> None:
        self.items: dict[tuple, ErrorDict] = {}

    def add(self, loc: Loc, msg: str, value: Any = None) -> None:
        key = (loc, msg)
        if key not in self.items:
            self.items[key] = {"type": "value_error", "loc": ("body", *loc), "msg": msg,
                               "input": value if isinstance(value, (str, int, float, bool, type(None))) else None}


def _spec_loc(field: str, spec: Mapping[str, Any], options: Mapping[str, Any], candidate: int) -> Loc:
    """Where the request set a spec field: the study's `spec`, the candidate's `options`, or a field of its own."""
    if field in options:
        return ("methods", candidate, "options", field)
    if field in ("method", "fusion"):
        return ("methods", candidate, field)
    if field in spec:
        return ("spec", field)
    return (field,)


def plan_study(payload: StudyCreate, catalog: DatasetCatalog) -> StudyPlan:
    """The study to create, or Refused naming every field at fault."""
    errors = _Errors()
    settings = payload.settings()
    candidates: list[dict[str, Any]] = []
    labels: set[str] = set()
    base = {"dataset": payload.dataset, "seed": payload.trial_seed, **payload.spec}
    for field in payload.spec:
        if field not in TrainSpec.model_fields:
            errors.add(("spec", field), f"{field!r} is not a field of a run spec")
    for i, candidate in enumerate(payload.candidates()):
        fusion = candidate.fusion or payload.fusion
        for field in candidate.options:
            if field not in TrainSpec.model_fields or field in NOT_IN_SPEC:
                errors.add(("methods", i, "options", field), f"{field!r} is not an option a candidate can fix")
            elif field in payload.spec:
                errors.add(("methods", i, "options", field), f"{field!r} is also fixed in the study's spec")
        space: dict[str, Any] = dict(default_search_space(candidate.method))
        where: dict[str, Loc] = {name: ("methods", i, "space", name) for name in space}
        for layer, loc in ((payload.space, ("space",)), (candidate.space, ("methods", i, "space"))):
            for name, distribution in layer.items():
                if distribution is None:
                    space.pop(name, None)
                else:
                    space[name], where[name] = distribution, (*loc, name)
        for name in list(space):
            if name in payload.spec or name in candidate.options:
                errors.add(where[name], f"{name!r} is fixed ({'spec' if name in payload.spec else 'options'}) "
                                        f"and searched at once: remove it from one (a null in `space` removes a "
                                        f"default)")
                space.pop(name)
                continue
            reason = distribution_error(name, space[name])
            if reason:
                errors.add(where[name], reason)
                space.pop(name)
        label = candidate_label(candidate.method, fusion, candidate.options)
        if label in labels:
            errors.add(("methods", i), f"{label} is listed twice")
        labels.add(label)
        for setting in settings:
            combination = {**base, "method": candidate.method, "fusion": fusion, **candidate.options, **setting}
            _, refused = validate_run(combination, catalog)
            for error in refused:
                field = str(error["loc"][-1]) if len(error["loc"]) > 1 else "body"
                at = _spec_loc(field, payload.spec, candidate.options, i)
                errors.add(at if field in TrainSpec.model_fields else ("methods", i), f"{label}, "
                           f"{setting['missing_modality']} {setting['missing_rate']:g}: {error['msg']}", error.get("input"))
            if refused:
                continue
            for name, distribution in space.items():
                for value in distribution.values_to_check():
                    _, refused_value = validate_run({**combination, name: value}, catalog)
                    for error in refused_value:
                        errors.add(where[name], f"{label}: {name}={value!r} ({describe(distribution)}) makes a run no "
                                                f"worker can train: {error['msg']}", value)
        candidates.append({"method": candidate.method, "fusion": fusion, "options": dict(candidate.options),
                           "space": {name: d.model_dump() for name, d in space.items()}, "label": label})
    if errors.items:
        raise Refused(list(errors.items.values()))
    rates = ", ".join(setting_label(s) for s in settings)
    name = payload.name or (f"{payload.dataset}, {rates}: {' vs '.join(c['label'] for c in candidates)}, "
                            f"{payload.trials} trials each")[:200]
    return StudyPlan(name=name, dataset=payload.dataset, base_spec=dict(payload.spec), candidates=candidates,
                     settings=settings, trials_per_arm=payload.trials, sampler=payload.sampler.model_dump(),
                     pruner=payload.pruner.model_dump(), parallel_trials=payload.parallel_trials,
                     trial_seed=payload.trial_seed, final_seeds=payload.final_seeds)
