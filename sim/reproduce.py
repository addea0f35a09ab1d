"""``evtwin reproduce``: run a recorded run (:mod:`.records`) again and compare its KPIs.

A run record (``run.json`` in a run folder, one per line in a sweep's
``journal.jsonl``) holds everything a run depends on: the exact validated
scenario (defaults filled in, so a later change of a default does not change
what is replayed), its seed, the versions of evtwin and its main dependencies,
the command that made it, and the KPIs it gave. KPIs are deterministic for a
scenario and seed, so running the record again must give the same KPIs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .exceptions import CheckError
from .records import RECORD_FORMAT, current_versions
from .scenario import Scenario

#: Two runs give "the same" KPI when they differ by at most this share of the larger value.
KPI_RELATIVE_TOLERANCE = 1e-9
#: ... or by at most this much in absolute terms (values at or near zero).
KPI_ABSOLUTE_TOLERANCE = 1e-12


def scenario_from_record(record: dict[str, Any], source: str) -> Scenario:
    """The scenario a record holds, validated; CheckError naming the field when it is bad."""
    if record.get("format") != RECORD_FORMAT:
        raise CheckError(source, [("format", f"expected {RECORD_FORMAT!r}, "
                                             f"got {record.get('format')!r}")])
    try:
        return Scenario.model_validate(record["scenario"])
    except KeyError:
        raise CheckError(source, [("scenario", "missing")]) from None
    except ValidationError as err:
        from evtwin.csms.config import validation_problems

        raise CheckError(source, [(f"scenario.{p}" if p else "scenario", m)
                                  for p, m in validation_problems(err)]) from None


def load_record(path: str | Path, run_id: str | None = None) -> tuple[dict[str, Any], str]:
    """Find a run record: ``run.json``, a run folder, or a sweep folder with ``run_id``.

    Returns the record and a name for it in messages. Raises CheckError (a
    user error) when there is none.
    """
    p = Path(path)
    if p.is_dir():
        if (p / "run.json").is_file() and run_id is None:
            p = p / "run.json"
        elif (p / "journal.jsonl").is_file():
            p = p / "journal.jsonl"
        else:
            raise CheckError(str(path), [("", "no run.json (a run folder) or journal.jsonl "
                                              "(a sweep folder) here")])
    if not p.is_file():
        raise CheckError(str(path), [("", "file not found")])
    if p.name.endswith(".jsonl"):
        if run_id is None:
            raise CheckError(str(p), [("", "a sweep holds many runs: name one with --run ID")])
        from .sweep import read_journal

        found = read_journal(p).get(run_id)
        if found is None or "record" not in found:
            raise CheckError(str(p), [("", f"no finished run {run_id!r} in this sweep")])
        return found["record"], f"{p.parent}#{run_id}"
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckError(str(p), [("", f"not a run record: {exc}")]) from None
    if not isinstance(record, dict):
        raise CheckError(str(p), [("", "not a run record (expected a JSON object)")])
    return record, str(p)


def same_value(a: float, b: float) -> bool:
    """True when two KPI values agree within the reproduction tolerance (NaN equals NaN)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    return abs(a - b) <= max(KPI_ABSOLUTE_TOLERANCE, KPI_RELATIVE_TOLERANCE * max(abs(a), abs(b)))


@dataclass
class Reproduction:
    """What running a record again gave."""

    source: str
    kpis_recorded: dict[str, float]
    kpis_now: dict[str, float]
    #: KPI -> (recorded, now) for every KPI that differs (or exists on one side only: NaN).
    differing: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: package -> (recorded, now) for every version that differs.
    version_changes: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        """Every KPI as recorded (version changes alone do not count)."""
        return not self.differing


def compare_kpis(recorded: dict[str, float], now: dict[str, float]
                 ) -> dict[str, tuple[float, float]]:
    """KPI -> (recorded, now) for KPIs that differ or are present on one side only."""
    from .kpis import current_kpi_names

    recorded = current_kpi_names(recorded)  # a record from before a KPI was renamed
    out: dict[str, tuple[float, float]] = {}
    for key in sorted(set(recorded) | set(now)):
        a = float(recorded.get(key, math.nan))
        b = float(now.get(key, math.nan))
        if key not in recorded or key not in now or not same_value(a, b):
            out[key] = (a, b)
    return out


def reproduce(record: dict[str, Any], source: str) -> Reproduction:
    """Run the record's scenario again (CSMS database in memory) and compare KPIs."""
    from .runner import Twin

    scenario = scenario_from_record(record, source)
    if record.get("external_csms"):
        raise CheckError(source, [("external_csms", (
            f"this run's stations spoke to another CSMS ({record['external_csms']}); "
            "its KPIs cannot be reproduced with evtwin's own CSMS"))])
    result = Twin(scenario, database=":memory:").run()
    recorded_kpis = {k: float(v) for k, v in (record.get("kpis") or {}).items()}
    now_versions = current_versions()
    old_versions = record.get("versions") or {}
    changes = {k: (str(old_versions.get(k, "-")), str(now_versions.get(k, "-")))
               for k in sorted(set(old_versions) | set(now_versions))
               if old_versions.get(k) != now_versions.get(k)}
    return Reproduction(source, recorded_kpis, result.kpis,
                        compare_kpis(recorded_kpis, result.kpis), changes)


__all__ = ["Reproduction", "compare_kpis", "load_record", "reproduce", "same_value",
           "scenario_from_record"]
