"""``--set KEY=VALUE`` scenario overrides: one parser for every command.

Values stay text: the scenario model coerces them by the field's type, so
``csms.protocol=1.6`` is the version "1.6", ``name=123`` the name "123" and
``ev.count=20`` the number 20, and an error names the field and the text given.
"""

from __future__ import annotations

from typing import Any

from .exceptions import ScenarioError

#: A --set value: the text of one value, or of each item of a list (``[1, 2]``).
OverrideValue = str | list[str]


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def parse_value(text: str) -> OverrideValue:
    """A --set value as text for the model to coerce: quotes around it are dropped
    (``name="a b"``); ``[a, b]`` is a list of texts (for a list field such as
    ``sites.0.buses=[3, 5]``; ``[]`` is an empty list)."""
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == "[" and stripped[-1] == "]":
        inner = stripped[1:-1].strip()
        return [_unquote(item) for item in inner.split(",")] if inner else []
    return _unquote(stripped)


def parse_overrides(items: list[str] | None, source: str) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a mapping of dotted paths to their text values
    (a command may add typed ones of its own, e.g. ``--seed``)."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ScenarioError(source, [("--set", f"expected KEY=VALUE, got {item!r}")])
        key, value = item.split("=", 1)
        if not key.strip():
            raise ScenarioError(source, [("--set", f"expected KEY=VALUE, got {item!r}")])
        overrides[key.strip()] = parse_value(value)
    return overrides
