"""``--set KEY=VALUE`` scenario overrides: one parser for every command."""

from __future__ import annotations

from typing import Any

from .exceptions import ScenarioError


def parse_value(text: str) -> Any:
    """A --set value: int, float, true/false, or a string (quoted: always a string, so
    ``csms.protocol="1.6"`` is the version, not a number)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: list[str] | None, source: str) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a mapping of dotted paths to parsed values."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ScenarioError(source, [("--set", f"expected KEY=VALUE, got {item!r}")])
        key, value = item.split("=", 1)
        overrides[key.strip()] = parse_value(value.strip())
    return overrides
