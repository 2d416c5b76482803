"""A request refused field by field by logic beyond its schema (the dataset check, a sweep's
combinations, a preset's roles, a `where` the runs list cannot apply, a cursor this server did not
write): the services raise it, backend/api/errors.py answers it as a 422 exactly like a schema
error, so a form shows it next to its field. Errors are FastAPI's shape:
`{"type", "loc": ["body" | "query", field, …], "msg", "input"}`."""

from __future__ import annotations

from typing import Any

ErrorDict = dict[str, Any]


class Refused(ValueError):
    def __init__(self, errors: list[ErrorDict]):
        super().__init__("; ".join(str(e.get("msg")) for e in errors))
        self.errors = errors

    @classmethod
    def field(cls, location: str, name: str | tuple, given: Any, message: str, kind: str = "value_error") -> "Refused":
        """One field refused: `location` is "body" or "query"; `name` a field (or a path in it)."""
        path = name if isinstance(name, tuple) else (name,)
        return cls([{"type": kind, "loc": (location, *path), "input": given, "msg": message}])
