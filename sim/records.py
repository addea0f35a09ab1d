"""Run records: what a run depends on (scenario, seed, versions, command) and gave.

A run record (``run.json`` in a run folder, one per line in a sweep's
``journal.jsonl``) holds everything a run depends on: the exact validated
scenario (defaults filled in, so a later change of a default does not change
what is replayed), its seed, the versions of evtwin and its main dependencies,
the command that made it, and the KPIs it gave. ``evtwin reproduce``
(:mod:`.reproduce`) runs one again.
"""

from __future__ import annotations

import functools
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .scenario import Scenario

#: Format tag of a run record; bumped when its layout changes.
RECORD_FORMAT = "evtwin-run/1"

def current_versions() -> dict[str, str]:
    """Versions of evtwin and its main dependencies, recorded with every run.

    Looked up once per process (a sweep worker records them for every run):
    the code a process runs does not change under it.
    """
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("evtwin", "ocpp", "websockets", "simpy", "mesa", "pandapower",
                "power-grid-model", "power-grid-model-io", "numpy", "pandas", "pydantic",
                "scipy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    # evtwin's version number does not move with every change: record the commit
    # of a source checkout too ("+dirty" with uncommitted changes), when there is one.
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain",
                                    "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            out["evtwin_commit"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip()
                                                            else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def default_command() -> list[str]:
    """The command line of this process, as a user would type it."""
    return [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []


def run_record(scenario: Scenario, kpis: dict[str, float], *, command: list[str] | None = None,
               versions: dict[str, str] | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A self-contained record of one run (JSON-serialisable).

    Args:
        scenario: the validated scenario exactly as run (its ``seed`` is the run's seed).
        kpis: the KPIs the run gave.
        command: the command that made the run; default this process's ``sys.argv``.
        versions: evtwin and dependency versions; default :func:`versions`.
        extra: more fields to record (e.g. a sweep's run id and parameters).
    """
    if versions is None:
        versions = current_versions()
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "scenario": scenario.model_dump(mode="json"),
        "seed": scenario.seed,
        "versions": versions,
        "command": default_command() if command is None else list(command),
        "kpis": dict(kpis),
    }
    record.update(extra or {})
    return record
