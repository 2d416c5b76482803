"""The registry of the methods this process can train or offer (docs/methods.md).

Every method, the six built-in ones included, is registered the same way: an entry point of
the group `missmod.methods` whose object is a `training.plugins.MethodDescription`. missmod's own
pyproject declares the six; an install whose metadata predates that (an old editable install)
gets the same objects from `training.builtin_methods`, which those entry points name. A plugin
that cannot be loaded or is malformed never takes the registry down: it is listed in
`unavailable()` with the reason, and the other methods stay.

No torch here (nor in what it imports): the API process loads it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import builtin_methods
from .plugins import (BUILTIN_DISTRIBUTION, ENTRY_POINT_GROUP, MethodDescription, PluginError, UnavailableMethod,
                      check_description)

log = logging.getLogger("missmod.methods")


@dataclass
class Registry:
    """The methods this process can offer, and those it cannot (with the reason)."""

    methods: dict[str, MethodDescription] = field(default_factory=dict)
    broken: dict[str, UnavailableMethod] = field(default_factory=dict)

    def add(self, loaded: Any, entry_name: str, distribution: str | None, version: str | None) -> None:
        try:
            description = check_description(loaded)
        except PluginError as error:
            self.broken[entry_name] = UnavailableMethod(entry_name, str(error), distribution, version)
            return
        description = replace(description, distribution=distribution, version=version)
        if description.name != entry_name:
            self.broken[entry_name] = UnavailableMethod(
                entry_name, f"the entry point is named {entry_name!r} but its description {description.name!r}",
                distribution, version)
            return
        taken = self.methods.get(description.name)
        if taken is not None:
            if (taken.distribution, taken.implementation) != (distribution, description.implementation):
                log.warning("method %r of %s ignored: %s registers that name", description.name, distribution,
                            taken.distribution)
                self.broken[f"{description.name} ({distribution})"] = UnavailableMethod(
                    description.name, f"the name is taken by {taken.distribution}'s method", distribution, version)
            return
        self.methods[description.name] = description


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_point(entry: importlib.metadata.EntryPoint) -> Any:
    """The entry point's object. A description must not pull torch into the API's process."""
    torch_before = "torch" in sys.modules
    loaded = entry.load()
    if not torch_before and "torch" in sys.modules:
        raise PluginError("its description imports torch (the API process must not): import torch only in the "
                          "implementation module")
    return loaded


def load_registry() -> Registry:
    """Built-in methods first (their names cannot be taken), then every installed plugin."""
    registry = Registry()
    builtin_version = _version(BUILTIN_DISTRIBUTION)
    entries = _entry_points()
    by_distribution = [(e, e.dist.name if e.dist else None, e.dist.version if e.dist else None) for e in entries]
    # missmod's own entry points (its pyproject) come first; an install whose metadata predates
    # them gets the same descriptions from the module those entry points name.
    own = {e.name for e, dist, _ in by_distribution if dist == BUILTIN_DISTRIBUTION}
    for description in builtin_methods.BUILTIN:
        if description.name not in own:
            registry.add(description, description.name, BUILTIN_DISTRIBUTION, builtin_version)
    order = {d.name: i for i, d in enumerate(builtin_methods.BUILTIN)}
    ordered = sorted(by_distribution, key=lambda e: (e[1] != BUILTIN_DISTRIBUTION, order.get(e[0].name, 0), e[0].name))
    for entry, dist, version in ordered:
        try:
            loaded = _load_entry_point(entry)
        except Exception as error:  # an import error, a missing dependency, anything its module raises
            reason = f"could not be loaded ({entry.value}): {type(error).__name__}: {error}"
            registry.broken[entry.name] = UnavailableMethod(entry.name, reason, dist, version)
            continue
        registry.add(loaded, entry.name, dist, version)
    for name, broken in registry.broken.items():
        log.warning("method %r (%s %s) unavailable: %s", name, broken.distribution, broken.version, broken.reason)
    return registry


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


_lock = threading.Lock()
_registry: Registry | None = None


def registry() -> Registry:
    """This process's registry, loaded once (installing a plugin takes a restart)."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = load_registry()
        return _registry


def reload() -> Registry:
    """Load the registry again (tests; a process that installed a plugin)."""
    global _registry
    with _lock:
        _registry = None
    return registry()


def unavailable() -> list[UnavailableMethod]:
    return list(registry().broken.values())


class MethodCatalogue(Mapping[str, MethodDescription]):
    """name → description of every method this process can offer, read from the registry when
    first used (`training.spec.METHODS`)."""

    def __getitem__(self, name: str) -> MethodDescription:
        return registry().methods[name]

    def __iter__(self) -> Iterator[str]:
        return iter(registry().methods)

    def __len__(self) -> int:
        return len(registry().methods)

    def __repr__(self) -> str:
        return f"MethodCatalogue({list(self)})"


def describe_unknown(name: str) -> str:
    """Why `name` cannot be used, for a 422."""
    broken = registry().broken.get(name)
    if broken is not None:
        return (f"method {name!r} ({broken.distribution} {broken.version}) is installed but cannot be used: "
                f"{broken.reason}")
    return f"unknown method {name!r} (available: {', '.join(registry().methods)})"
