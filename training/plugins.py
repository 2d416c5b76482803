"""Methods as plugins: the light half of the method protocol (docs/methods.md).

A method comes in two halves:

- its **description** (`MethodDescription`): name, title, the fusions it supports, its options
  (a pydantic model) and where its implementation lives. It imports no torch, so the API can
  offer and validate the method (forms, GET /api/choices, sweeps, the CLI) without loading it;
- its **implementation**, a `training.methods.Method` subclass named by `implementation`
  ("module:Class"), imported only where the method trains (a worker, a script).

Every method, the six built-in ones included, is registered the same way: an entry point of
the group `missmod.methods` whose object is a description (training/method_registry.py).

This module imports no torch (nor does anything it imports): the API process loads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

ENTRY_POINT_GROUP = "missmod.methods"
# The distribution of the six built-in methods.
BUILTIN_DISTRIBUTION = "missmod"

# The fusions φ(f, g) the model implements (training/fusion.py); a method supports some of them.
FusionName = Literal["add", "concat", "outer"]
FUSIONS: tuple[str, ...] = get_args(FusionName)

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# JSON-schema types an option may have: each becomes one form field, one sweep-grid field and
# one CLI `key=value`.
OPTION_TYPES = ("number", "integer", "boolean", "string")


class NoOptions(BaseModel):
    """The options of a method that has none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class MethodDescription:
    """What the API knows of a method: everything but its torch code.

    `options`: a pydantic model whose fields all have defaults and simple types (number,
    integer, boolean, string, or a Literal of strings); a run's `method_options` is validated
    against it. `implementation`: "package.module:ClassName" of its `training.methods.Method`
    subclass, imported only where the method trains."""

    name: str
    title: str
    description: str
    implementation: str
    fusions: tuple[str, ...] = FUSIONS
    options: type[BaseModel] = NoOptions
    # Filled in by the registry from the entry point's distribution.
    distribution: str | None = None
    version: str | None = None

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    def validated_options(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """The run's options with their defaults, as JSON values; raises ValueError naming the option."""
        given = dict(given or {})
        known = self.options.model_fields
        unknown = [key for key in given if key not in known]
        if unknown:
            takes = ", ".join(known) if known else "none"
            raise ValueError(f"method {self.name!r} has no option {unknown[0]!r} (its options: {takes})")
        try:
            return self.options.model_validate(given).model_dump(mode="json")
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"option {where!r} of method {self.name!r}: {first['msg']}") from None

    def default_options(self) -> dict[str, Any]:
        return self.options().model_dump(mode="json")

    def options_schema(self) -> dict[str, Any]:
        """The options' JSON schema (what the forms build their fields from)."""
        return self.options.model_json_schema()

    def provenance(self) -> dict[str, str | None]:
        """What a run records of the method's code: its distribution and version."""
        return {"name": self.name, "distribution": self.distribution, "version": self.version}


@dataclass(frozen=True)
class UnavailableMethod:
    """A registered method that cannot be offered, and why."""

    name: str
    reason: str
    distribution: str | None = None
    version: str | None = None


class PluginError(ValueError):
    """A description that breaks the protocol (the message says how)."""


def check_description(description: Any) -> MethodDescription:
    """The description if it follows the protocol; PluginError saying what is wrong otherwise."""
    if not isinstance(description, MethodDescription):
        raise PluginError(f"the entry point gives a {type(description).__name__}, not a "
                          f"training.plugins.MethodDescription")
    if not isinstance(description.name, str) or not NAME_PATTERN.match(description.name):
        raise PluginError(f"name {description.name!r}: lower-case letters, digits and _, starting with a letter, "
                          f"at most 40 characters")
    for attribute in ("title", "description"):
        if not isinstance(getattr(description, attribute), str) or not getattr(description, attribute).strip():
            raise PluginError(f"{attribute} must be a non-empty string")
    fusions = tuple(description.fusions) if isinstance(description.fusions, (tuple, list)) else ()
    if not fusions or any(f not in FUSIONS for f in fusions):
        raise PluginError(f"fusions {description.fusions!r}: a non-empty list of {', '.join(FUSIONS)}")
    module, colon, attribute = str(description.implementation).partition(":")
    if not colon or not module or not attribute:
        raise PluginError(f"implementation {description.implementation!r}: expected 'package.module:ClassName'")
    _check_options(description.options)
    return replace(description, fusions=fusions)


def _check_options(options: Any) -> None:
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise PluginError(f"options must be a pydantic BaseModel class, got {options!r}")
    try:
        defaults = options()
        schema = options.model_json_schema()
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        raise PluginError(f"options model {options.__name__}: every option needs a default "
                          f"({'.'.join(map(str, first['loc']))}: {first['msg']})") from None
    except Exception as error:
        raise PluginError(f"options model {options.__name__} cannot be used: {type(error).__name__}: {error}") from None
    for name, prop in schema.get("properties", {}).items():
        if not NAME_PATTERN.match(name):
            raise PluginError(f"option {name!r}: lower-case letters, digits and _")
        kind = prop.get("type") or ("string" if "enum" in prop else None)
        if kind not in OPTION_TYPES:
            raise PluginError(f"option {name!r} has type {kind or 'of several kinds'}: an option is a number, an "
                              f"integer, a boolean or a string (a form field, a sweep value, a CLI key=value)")
    defaults.model_dump(mode="json")


