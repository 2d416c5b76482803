"""Response models generated from the dataclasses the logic returns, so that an API answer is the
result itself and not a second declaration of it kept in step by hand: every field of the
dataclass is in the model (a field added to the result is in the answer at once) with its type,
read from the object (`from_attributes`); what the dataclass computes (its properties) is named
with its type; the descriptions are the API's documentation of each field."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model


class FromAttributes(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def response_model_of(source: type, name: str, *, doc: str | None = None,
                      descriptions: Mapping[str, str] = {}, types: Mapping[str, Any] = {},
                      computed: Mapping[str, Any] = {}, exclude: Iterable[str] = ()) -> type[BaseModel]:
    """The pydantic model of `source`'s answer: its fields (less `exclude`), their types unless
    `types` gives another (a nested result's own model, a list for a tuple), then the properties
    in `computed` (name → type). Every field is required: an answer always carries it."""
    hints = typing.get_type_hints(source)
    left_out = set(exclude)
    unknown = (set(descriptions) | set(types)) - {f.name for f in dataclasses.fields(source)} - set(computed)
    if unknown:
        raise TypeError(f"{source.__name__} has no field {', '.join(sorted(unknown))}")
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(source):
        if field.name not in left_out:
            fields[field.name] = (types.get(field.name, hints[field.name]),
                                  Field(description=descriptions.get(field.name)))
    for field_name, annotation in computed.items():
        fields[field_name] = (annotation, Field(description=descriptions.get(field_name)))
    return create_model(name, __base__=FromAttributes, __doc__=doc or source.__doc__, **fields)
