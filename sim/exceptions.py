"""Exceptions of the simulator package."""

from __future__ import annotations


class SimError(Exception):
    """Base class of every error evtwin.sim raises on purpose."""


class ScenarioError(SimError):
    """A scenario file is unreadable or invalid; ``problems`` lists every error.

    Each problem is ``(path, message)`` where ``path`` is the dotted field
    path (``ev.count``); ``str()`` gives one line per problem prefixed with
    the file name, e.g. ``scenarios/demo.toml: ev.count: must be > 0``.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}: {m}" if p else f"{source}: {m}"
                                   for p, m in problems))


class RunError(SimError):
    """A run could not complete (a station could not boot, the CSMS went away...)."""


class ExternalCSMSError(SimError):
    """``evtwin stations`` cannot use the CSMS it was pointed at (a user error): the URL,
    its address, TLS, credentials, or a station it does not know; names which.

    ``http_status`` is the CSMS's answer to a station's websocket upgrade when it
    refused one (404: a station it does not know), with that ``station_id``.
    """

    def __init__(self, message: str, *, station_id: str | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(message)
        self.station_id = station_id
        self.http_status = http_status


class RunFolderError(SimError):
    """A run folder lacks a file, or a file in it is unreadable or changed (a user error)."""


class SweepError(SimError):
    """A sweep cannot be planned or its output folder cannot be used (a user error)."""


class CheckError(ScenarioError):
    """A limits, baseline or run-record file is unreadable or invalid.

    ``problems`` as in :class:`ScenarioError`: ``(field path, message)`` pairs,
    ``str()`` one line per problem prefixed with the file name.
    """
