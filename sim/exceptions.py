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


class RunFolderError(SimError):
    """A run folder lacks a file, or a file in it is unreadable or changed (a user error)."""


class SweepError(SimError):
    """A sweep cannot be planned or its output folder cannot be used (a user error)."""


class CheckError(ScenarioError):
    """A limits, baseline or run-record file is unreadable or invalid.

    ``problems`` as in :class:`ScenarioError`: ``(field path, message)`` pairs,
    ``str()`` one line per problem prefixed with the file name.
    """
