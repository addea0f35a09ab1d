"""``evtwin check``: a grid-limit gate for CI.

Runs scenarios and checks each result against limits: the voltage band,
thermal loading (lines and transformer), the unmet energy share and any KPI
bound from a limits file; optionally against a recorded baseline, where a KPI
may move only within its tolerance. A JUnit XML report names each scenario as a
test suite and each limit as a test case, so CI systems show which one broke.

Limits file (TOML, every field optional)::

    energy_unmet_max_percent = 1.0   # default 1 %
    v_min_pu = 0.95                        # default: the scenario's grid.v_min_pu
    [kpis]
    minutes_site_limit_exceeded = { max = 0 }
    [tolerance]                            # for --baseline
    relative = 0.02
    [tolerance.kpis]
    ocpp_messages = { relative = 0.10 }
    [scenarios.overload]                   # per scenario name, on top of the above
    trafo_loading_max_percent = 120
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evtwin.csms.config import read_toml, validation_problems

from .exceptions import CheckError
from .scenario import Scenario

#: Format tag of a baseline file.
BASELINE_FORMAT = "evtwin-baseline/1"

#: Default upper bound on the share of requested energy not delivered, in percent.
DEFAULT_UNMET_SHARE_MAX_PERCENT = 1.0


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def kpi_name_problems(data: Any) -> list[tuple[str, str]]:
    """Unknown KPI names in a limits mapping (``kpis``, ``tolerance.kpis``, per scenario).

    Checked on the raw mapping so they are reported together with every other
    problem of the file.
    """
    from .kpis import KPI_LABELS

    out: list[tuple[str, str]] = []

    def scan(section: Any, prefix: str) -> None:
        if isinstance(section, dict) and isinstance(section.get("kpis"), dict):
            out.extend((f"{prefix}kpis.{name}", f"unknown KPI; known: {', '.join(KPI_LABELS)}")
                       for name in section["kpis"] if name not in KPI_LABELS)

    if isinstance(data, dict):
        scan(data, "")
        scan(data.get("tolerance"), "tolerance.")
        scenarios = data.get("scenarios")
        if isinstance(scenarios, dict):
            for name, section in scenarios.items():
                scan(section, f"scenarios.{name}.")
    return out


class KpiBound(_Strict):
    """Bounds on one KPI (either or both), inclusive."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some(self) -> KpiBound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class LimitSet(_Strict):
    """Limits for a run; a field left out takes the scenario's own grid limit."""

    v_min_pu: float | None = Field(None, gt=0)
    """Lowest allowed bus voltage in p.u. (default: the scenario's ``grid.v_min_pu``)."""
    v_max_pu: float | None = Field(None, gt=0)
    """Highest allowed bus voltage in p.u. (default: the scenario's ``grid.v_max_pu``)."""
    line_loading_max_percent: float | None = Field(None, gt=0)
    """Highest allowed line loading in % of rating (default: the scenario's)."""
    trafo_loading_max_percent: float | None = Field(None, gt=0)
    """Highest allowed transformer loading in % of rated power (default: the scenario's)."""
    energy_unmet_max_percent: float | None = Field(None, ge=0, le=100)
    """Largest share of the requested energy left undelivered, in % (default 1 %)."""
    vuf_max_percent: float | None = Field(None, gt=0)
    """Highest voltage unbalance on an unbalanced feeder, % (default: the scenario's
    ``grid.vuf_max_percent``, EN 50160's 2 %)."""
    kpis: dict[str, KpiBound] = Field(default_factory=dict)
    """Bounds on any KPI by name (``[kpis] minutes_site_limit_exceeded = {max = 0}``)."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "energy_unmet_share_max_percent" in data:
            raise ValueError("energy_unmet_share_max_percent is now called "
                             "energy_unmet_max_percent (the KPI is energy_unmet_percent)")
        return data


class Tolerance(_Strict):
    """How far a KPI may move from its baseline: within either bound passes."""

    relative: float = Field(0.02, ge=0)
    """Share of the baseline value (0.02 = 2 %)."""
    absolute: float = Field(1e-6, ge=0)
    """In the KPI's own unit (keeps values at zero from failing on noise)."""


class ToleranceSet(Tolerance):
    """The default tolerance and per-KPI ones."""

    kpis: dict[str, Tolerance] = Field(default_factory=dict)

    def for_kpi(self, name: str) -> Tolerance:
        """The tolerance that applies to ``name``."""
        own = self.kpis.get(name)
        inherited = {"relative": self.relative, "absolute": self.absolute}
        if own is None:
            return Tolerance(**inherited)
        # A field the KPI's entry does not set comes from the file-level tolerance.
        return Tolerance(**{**inherited, **{f: getattr(own, f) for f in own.model_fields_set}})


class LimitsFile(LimitSet):
    """A limits file: limits for every scenario, per-scenario sections, baseline tolerances."""

    tolerance: ToleranceSet = ToleranceSet()
    scenarios: dict[str, LimitSet] = Field(default_factory=dict)
    """Per scenario name (the file's stem unless it sets ``name``), over the limits above."""

    @model_validator(mode="after")
    def _known_kpis(self) -> LimitsFile:
        problems = kpi_name_problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(f"{p}: {m}" for p, m in problems))
        return self


def load_limits(path: str | Path | None) -> LimitsFile:
    """Read and validate a limits file (None: the defaults); CheckError lists every problem."""
    if path is None:
        return LimitsFile()
    source = str(path)
    data, error = read_toml(path)
    if data is None:
        raise CheckError(source, [("", error)])
    try:
        return LimitsFile.model_validate(data)
    except ValidationError as err:
        # The KPI-name check is model-level: validation_problems leaves it to us.
        problems = validation_problems(err) + kpi_name_problems(data)
        if not problems:  # only another model-level validator spoke: say what it said
            problems = [("", e["msg"].removeprefix("Value error, ")) for e in err.errors()]
        raise CheckError(source, problems) from None


@dataclass(frozen=True)
class EffectiveLimits:
    """The limits that apply to one scenario, every default filled in."""

    v_min_pu: float
    v_max_pu: float
    line_loading_max_percent: float
    trafo_loading_max_percent: float
    energy_unmet_max_percent: float
    kpis: dict[str, KpiBound]
    vuf_max_percent: float = 2.0


def effective_limits(limits: LimitsFile, sc: Scenario) -> EffectiveLimits:
    """Scenario grid limits, overridden by the file, overridden by its section for ``sc``."""
    values: dict[str, Any] = {
        "v_min_pu": sc.grid.v_min_pu, "v_max_pu": sc.grid.v_max_pu,
        "line_loading_max_percent": sc.grid.line_loading_max_percent,
        "trafo_loading_max_percent": sc.grid.trafo_loading_max_percent,
        "energy_unmet_max_percent": DEFAULT_UNMET_SHARE_MAX_PERCENT,
        "vuf_max_percent": sc.grid.vuf_max_percent,
    }
    kpis: dict[str, KpiBound] = {}
    layers: list[LimitSet] = [limits]
    if sc.name in limits.scenarios:
        layers.append(limits.scenarios[sc.name])
    for layer in layers:
        for key in values:
            v = getattr(layer, key)
            if v is not None:
                values[key] = v
        kpis.update(layer.kpis)
    return EffectiveLimits(kpis=kpis, **values)


# -- evaluation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LimitResult:
    """One test case: a limit and whether the run kept it."""

    name: str
    """Test case name: ``voltage_band``, ``thermal_loading``, ``voltage_unbalance``
    (unbalanced feeders), ``energy_unmet_percent``,
    ``kpi.<name>`` or ``baseline.<name>``."""
    passed: bool
    message: str
    """What was measured against what, e.g. ``transformer 148.3 % > 100 %``."""


@dataclass
class ScenarioCheck:
    """One scenario's run and the limits checked on it."""

    path: str
    scenario: Scenario
    results: list[LimitResult] = field(default_factory=list)
    error: str | None = None
    """Why the run itself failed (then there are no limit results)."""
    kpis: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    overrides: dict[str, Any] = field(default_factory=dict)
    """``--set``/``--strategy`` overrides the scenario ran with."""

    @property
    def key(self) -> str:
        """Name in reports and baselines: ``<scenario name>[<strategy>]``."""
        return baseline_key(self.scenario)

    @property
    def passed(self) -> bool:
        """The run completed and every limit held."""
        return self.error is None and all(r.passed for r in self.results)


def baseline_key(sc: Scenario) -> str:
    """A scenario's key in baseline files and reports: ``overload[equal_share]``."""
    return f"{sc.name}[{sc.control.strategy}]"


def evaluate_limits(kpis: dict[str, float], lim: EffectiveLimits) -> list[LimitResult]:
    """Check a run's KPIs against its limits; one result per limit."""
    out: list[LimitResult] = []

    def kpi(name: str) -> float:
        return float(kpis.get(name, math.nan))

    v_min, v_max = kpi("v_min_pu"), kpi("v_max_pu")
    bad = []
    if not v_min >= lim.v_min_pu:
        bad.append(f"min voltage {v_min:.4f} pu < {lim.v_min_pu:g} pu")
    if not v_max <= lim.v_max_pu:
        bad.append(f"max voltage {v_max:.4f} pu > {lim.v_max_pu:g} pu")
    out.append(LimitResult(
        "voltage_band", not bad, "; ".join(bad) or
        f"voltage {v_min:.4f}-{v_max:.4f} pu within {lim.v_min_pu:g}-{lim.v_max_pu:g} pu"))

    trafo, line = kpi("peak_trafo_loading_percent"), kpi("peak_line_loading_percent")
    bad = []
    if not trafo <= lim.trafo_loading_max_percent:
        bad.append(f"transformer loading {trafo:.1f} % > {lim.trafo_loading_max_percent:g} %")
    if not line <= lim.line_loading_max_percent:
        bad.append(f"line loading {line:.1f} % > {lim.line_loading_max_percent:g} %")
    out.append(LimitResult(
        "thermal_loading", not bad, "; ".join(bad) or
        f"peak transformer {trafo:.1f} % <= {lim.trafo_loading_max_percent:g} %, "
        f"peak line {line:.1f} % <= {lim.line_loading_max_percent:g} %"))

    if "vuf_max_percent" in kpis:  # an unbalanced power flow
        vuf = kpi("vuf_max_percent")
        ok = vuf <= lim.vuf_max_percent
        out.append(LimitResult(
            "voltage_unbalance", ok, f"voltage unbalance {vuf:.2f} % "
            f"{'<=' if ok else '>'} {lim.vuf_max_percent:g} % (EN 50160)"))

    unmet = kpi("energy_unmet_percent")
    ok = unmet <= lim.energy_unmet_max_percent
    out.append(LimitResult(
        "energy_unmet_percent", ok,
        f"unmet energy {unmet:.3f} % {'<=' if ok else '>'} "
        f"{lim.energy_unmet_max_percent:g} % of requested"))

    for name, bound in lim.kpis.items():
        value = kpi(name)
        problems = []
        if math.isnan(value):
            problems.append(f"{name}: the run did not report it")
        if bound.min is not None and not value >= bound.min:
            problems.append(f"{name} = {value:.6g} < min {bound.min:g}")
        if bound.max is not None and not value <= bound.max:
            problems.append(f"{name} = {value:.6g} > max {bound.max:g}")
        shown = " and ".join(s for s in (
            f">= {bound.min:g}" if bound.min is not None else "",
            f"<= {bound.max:g}" if bound.max is not None else "") if s)
        out.append(LimitResult(f"kpi.{name}", not problems,
                               "; ".join(problems) or f"{name} = {value:.6g} {shown}"))
    return out


# -- baselines ----------------------------------------------------------------------------
def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read a baseline file; CheckError when it is unreadable or not a baseline."""
    source = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckError(source, [("", "baseline file not found (record one with "
                                       "--update-baseline)")]) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckError(source, [("", f"not a baseline file: {exc}")]) from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
        raise CheckError(source, [("format", f"expected {BASELINE_FORMAT!r}")])
    scenarios = data.get("scenarios")
    if not isinstance(scenarios, dict):
        raise CheckError(source, [("scenarios", "missing or not a table")])
    for key, entry in scenarios.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("kpis"), dict):
            raise CheckError(source, [(f"scenarios.{key}.kpis", "missing or not a table")])
    return data


def baseline_entry(check: ScenarioCheck) -> dict[str, Any]:
    """What a baseline records for one scenario: its KPIs and how it was run."""
    return {"scenario": check.path, "seed": check.scenario.seed,
            "strategy": check.scenario.control.strategy,
            "overrides": _typed_overrides(check), "kpis": dict(check.kpis)}


def _typed_overrides(check: ScenarioCheck) -> dict[str, Any]:
    """``--set`` values as the scenario model took them (``2`` for ``duration_h=2``)."""
    from .sweep import _typed

    data = check.scenario.model_dump(mode="json")
    return {k: _typed(v, data, k) for k, v in check.overrides.items()}


def _same_overrides(recorded: dict[str, Any], now: dict[str, Any]) -> bool:
    """Equal as values, not as text: ``2``, ``2.0`` and ``"2"`` are the same override."""
    def norm(v: Any) -> Any:
        try:
            return float(v)
        except (TypeError, ValueError):
            return str(v)
    return (recorded.keys() == now.keys()
            and all(norm(recorded[k]) == norm(now[k]) for k in recorded))


def write_baseline(path: str | Path, checks: list[ScenarioCheck]) -> Path:
    """Record (or update, keeping other scenarios') the baseline of these runs."""
    from .records import current_versions as versions

    p = Path(path)
    data: dict[str, Any] = {"format": BASELINE_FORMAT, "scenarios": {}}
    if p.exists():
        data = load_baseline(p)
    for check in checks:
        if check.error is None:
            data["scenarios"][check.key] = baseline_entry(check)
    data["recorded"] = datetime.now(UTC).isoformat(timespec="seconds")
    data["versions"] = versions()
    data["scenarios"] = dict(sorted(data["scenarios"].items()))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2) + "\n")
    return p


def compare_baseline(check: ScenarioCheck, baseline: dict[str, Any],
                     tolerance: ToleranceSet) -> list[LimitResult]:
    """One result per KPI recorded for this scenario: did it move beyond its tolerance?"""
    entry = baseline["scenarios"].get(check.key)
    if entry is None:
        return [LimitResult("baseline", False, f"no baseline recorded for {check.key}; "
                                               "record one with --update-baseline")]
    out = []
    if entry.get("seed") is not None and entry["seed"] != check.scenario.seed:
        out.append(LimitResult("baseline", False, f"baseline recorded with seed "
                                                  f"{entry['seed']}, run with "
                                                  f"{check.scenario.seed}"))
    recorded_overrides = entry.get("overrides", {})
    if not _same_overrides(recorded_overrides, _typed_overrides(check)):
        out.append(LimitResult("baseline", False, f"baseline recorded with overrides "
                                                  f"{recorded_overrides}, run with "
                                                  f"{_typed_overrides(check)}"))
    from .kpis import current_kpi_names

    for name, recorded in sorted(current_kpi_names(entry["kpis"]).items()):
        tol = tolerance.for_kpi(name)
        base = float(recorded)
        value = float(check.kpis.get(name, math.nan))
        allowed = max(tol.absolute, tol.relative * abs(base))
        delta = value - base
        ok = (math.isnan(base) and math.isnan(value)) or abs(delta) <= allowed
        if math.isnan(value) and not math.isnan(base):
            message = f"{name}: baseline {base:.6g}, the run did not report it"
        else:
            message = (f"{name} = {value:.6g}, baseline {base:.6g} ({delta:+.3g}; "
                       f"tolerance +-{allowed:.3g})")
        out.append(LimitResult(f"baseline.{name}", ok, message))
    return out


# -- JUnit --------------------------------------------------------------------------------
def junit_xml(checks: list[ScenarioCheck]) -> ET.ElementTree:
    """JUnit XML: a test suite per scenario, a test case per limit (failures with messages)."""
    from .records import current_versions as versions

    evtwin_version = versions().get("evtwin", "")
    root = ET.Element("testsuites", name="evtwin check")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    total_time = 0.0
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for check in checks:
        cases = check.results if check.error is None else []
        n_fail = sum(1 for r in cases if not r.passed)
        n_err = 1 if check.error is not None else 0
        n_tests = len(cases) + n_err
        suite = ET.SubElement(root, "testsuite", name=check.key, tests=str(n_tests),
                              failures=str(n_fail), errors=str(n_err), skipped="0",
                              time=f"{check.wall_time_s:.3f}", timestamp=stamp)
        props = ET.SubElement(suite, "properties")
        for name, value in (("scenario", check.path), ("seed", str(check.scenario.seed)),
                            ("strategy", check.scenario.control.strategy),
                            ("evtwin", evtwin_version)):
            ET.SubElement(props, "property", name=name, value=value)
        classname = f"evtwin.check.{check.scenario.name}"
        if check.error is not None:
            case = ET.SubElement(suite, "testcase", classname=classname, name="run",
                                 time=f"{check.wall_time_s:.3f}")
            ET.SubElement(case, "error", message=check.error, type="RunError").text = check.error
        for r in cases:
            case = ET.SubElement(suite, "testcase", classname=classname, name=r.name,
                                 time="0")
            if not r.passed:
                ET.SubElement(case, "failure", message=r.message,
                              type="LimitViolated").text = f"{check.key}: {r.name}: {r.message}"
            else:
                ET.SubElement(case, "system-out").text = r.message
        totals["tests"] += n_tests
        totals["failures"] += n_fail
        totals["errors"] += n_err
        total_time += check.wall_time_s
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", f"{total_time:.3f}")
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_junit(checks: list[ScenarioCheck], path: str | Path) -> Path:
    """Write the JUnit report to ``path`` (folders created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    junit_xml(checks).write(p, encoding="utf-8", xml_declaration=True)
    return p


# -- running ------------------------------------------------------------------------------
def run_checks(paths: list[str], *, overrides: dict[str, Any] | None = None,
               limits: LimitsFile | None = None, baseline: dict[str, Any] | None = None,
               workers: int = 1) -> list[ScenarioCheck]:
    """Validate every scenario, run them (in ``workers`` processes), check each result.

    Raises ScenarioError for an invalid scenario before anything runs.
    """
    from .scenario import load_scenario
    from .sweep import RunSpec, execute_run, make_backend

    limits = limits or LimitsFile()
    scenarios = [load_scenario(p, overrides or {}) for p in paths]
    specs = [RunSpec(run_id=f"check-{i}", index=i, params=dict(overrides or {}), seed=sc.seed,
                     scenario=sc.model_dump(mode="json"), source_sha256="")
             for i, sc in enumerate(scenarios)]
    if workers > 1 and len(specs) > 1:
        backend = make_backend(workers=min(workers, len(specs)))
        interrupted = False
        try:
            futures = [backend.submit(s) for s in specs]
            records = [f.result() for f in futures]
        except BaseException:  # Ctrl-C: stop the runs in flight, do not wait for them
            interrupted = True
            raise
        finally:
            backend.close(interrupted=interrupted)
    else:
        records = [execute_run(s) for s in specs]
    checks = []
    for path, sc, rec in zip(paths, scenarios, records, strict=True):
        check = ScenarioCheck(path, sc, kpis=rec.get("kpis") or {},
                              wall_time_s=float(rec.get("wall_time_s") or 0.0),
                              overrides=dict(overrides or {}))
        if rec.get("status") != "ok":
            check.error = str(rec.get("error"))
        else:
            check.results = evaluate_limits(check.kpis, effective_limits(limits, sc))
            if baseline is not None:
                check.results += compare_baseline(check, baseline, limits.tolerance)
        checks.append(check)
    return checks


__all__ = ["BASELINE_FORMAT", "EffectiveLimits", "KpiBound", "LimitResult", "LimitSet",
           "LimitsFile", "ScenarioCheck", "Tolerance", "ToleranceSet", "baseline_key",
           "compare_baseline", "effective_limits", "evaluate_limits", "junit_xml",
           "kpi_name_problems", "load_baseline", "load_limits", "run_checks", "write_baseline",
           "write_junit"]
