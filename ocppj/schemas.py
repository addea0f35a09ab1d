"""OCPP JSON schemas, each compiled once, and the OCPP-J error a failing payload earns.

The schemas are the ones the OCPP specifications publish, as shipped in the
``ocpp`` library's package data (``ocpp/v16/schemas``, ``ocpp/v201/schemas``,
``ocpp/v21/schemas``). Each (version, action, direction) is compiled by
``fastjsonschema`` into a Python function on first use, so a payload costs a few
microseconds instead of the generic validator's walk of the schema for every
message; and unlike that walk, formats are checked: a ``date-time`` must be an
RFC 3339 date-time with its offset (``2024-05-01T08:00:00`` without ``Z`` or
``+hh:mm`` is refused).

The error codes follow OCPP-J 2.0.1 section 4.3: a value of the wrong JSON type
is a TypeConstraintViolation, as is a string over its ``maxLength`` (its data
type, e.g. CiString36); a missing required field or too few or many array items
an OccurrenceConstraintViolation; a well-formed value the field does not allow
(an enum value it does not list, a number out of bounds) a
PropertyConstraintViolation; anything else (unknown field, format, pattern) a
FormatViolation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema

_DIRS = {"1.6": "v16", "2.0.1": "v201", "2.1": "v21"}
_CODES = {"type": "TypeConstraintViolation", "maxLength": "TypeConstraintViolation",
          "required": "OccurrenceConstraintViolation",
          "minItems": "OccurrenceConstraintViolation",
          "maxItems": "OccurrenceConstraintViolation",
          "enum": "PropertyConstraintViolation", "minimum": "PropertyConstraintViolation",
          "maximum": "PropertyConstraintViolation",
          "exclusiveMinimum": "PropertyConstraintViolation",
          "exclusiveMaximum": "PropertyConstraintViolation",
          "multipleOf": "PropertyConstraintViolation"}


class SchemaViolation(Exception):
    """A payload fails its schema: ``code`` (2.0.1 name), ``field`` (dotted path) and why."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code = code
        self.field = field
        self.message = message


def _schema_file(version: str, action: str, request: bool) -> str:
    name = action
    if request:
        if version != "1.6":
            name += "Request"
    else:
        name += "Response"
    return f"{name}.json"


@cache
def _compiled(version: str, action: str, request: bool) -> Callable[[Any], Any] | None:
    names = [_schema_file(version, action, request)]
    if request and version == "2.1":
        names.append(f"{action}.json")  # a SEND message (NotifyPeriodicEventStream)
    text = None
    for name in names:
        try:
            text = (resources.files("ocpp") / _DIRS[version] / "schemas" / name
                    ).read_text("utf-8-sig")
            break
        except (KeyError, FileNotFoundError, OSError):
            continue
    if text is None:
        return None
    schema = json.loads(text)
    # The 2.x schemas name themselves with a urn $id; fastjsonschema would try to
    # resolve it as a URL. Local "#/definitions/..." references still resolve.
    schema.pop("$id", None)
    schema.pop("id", None)
    return fastjsonschema.compile(schema)


@cache
def actions(version: str) -> frozenset[str]:
    """Every action OCPP ``version`` has a schema for (from the schema files' names)."""
    try:
        names = [f.name for f in (resources.files("ocpp") / _DIRS[version] / "schemas"
                                  ).iterdir()]
    except (KeyError, FileNotFoundError, OSError):
        return frozenset()
    out = set()
    for name in names:
        if not name.endswith(".json"):
            continue
        stem = name[: -len(".json")]
        for suffix in ("Request", "Response"):
            if version != "1.6" and stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        else:
            if version == "1.6" and stem.endswith("Response"):
                stem = stem[: -len("Response")]
        out.add(stem)
    return frozenset(out)


def has_schema(version: str, action: str, *, request: bool = True) -> bool:
    """Whether the specification has a schema for this action and direction (only
    names of :func:`actions` are looked up: a peer's action name never reaches a
    file path)."""
    return action in actions(version) and _compiled(version, action, request) is not None


def validate(version: str, action: str, payload: Any, *, request: bool = True) -> None:
    """Check ``payload`` against the schema of ``action``'s request (or response).

    Raises SchemaViolation naming the OCPP-J error code and the field; LookupError
    if the version has no such action.
    """
    check = _compiled(version, action, request) if action in actions(version) else None
    if check is None:
        raise LookupError(f"OCPP {version} has no schema for {action}")
    try:
        check(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        field = (exc.name or "data").removeprefix("data").lstrip(".")
        code = _CODES.get(exc.rule or "", "FormatViolation")
        message = (exc.message or "invalid").removeprefix(exc.name or "").strip() \
            or "is invalid"
        raise SchemaViolation(code, field, f"{field or 'payload'} {message}"[:200]) from None
