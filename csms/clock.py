"""Injectable clocks: the CSMS never reads the wall clock directly.

The twin passes a clock that returns simulated time; the standalone server
passes :func:`wall_clock`. Every timestamp the CSMS writes or sends comes from
the clock it was given.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, timezone

Clock = Callable[[], datetime]
"""A zero-argument callable returning the current time as an aware UTC datetime."""


def wall_clock() -> datetime:
    """Return the current wall-clock time in UTC."""
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """Format an aware datetime as the OCPP timestamp form (RFC 3339, 'Z', ms).

    Cached for UTC and fixed offsets: on virtual time every message of a step
    carries the same few instants. (Not for zones with daylight saving, whose
    wall times in the repeated hour compare equal although they are not.)
    """
    if isinstance(ts.tzinfo, timezone):
        return _iso_fixed(ts)
    return _format(ts)


@functools.lru_cache(maxsize=4096)
def _iso_fixed(ts: datetime) -> str:
    return _format(ts)


def _format(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse an OCPP timestamp (RFC 3339, 'Z' or offset) into an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
