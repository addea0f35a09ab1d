"""``evtwin check``: limits, baselines, JUnit, and the overload gate the issue asks for."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from evtwin.sim.check import (
    LimitsFile,
    ScenarioCheck,
    compare_baseline,
    effective_limits,
    evaluate_limits,
    junit_xml,
    load_baseline,
    load_limits,
    write_baseline,
)
from evtwin.sim.cli import main
from evtwin.sim.exceptions import CheckError
from evtwin.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
OVERLOAD = ROOT / "scenarios" / "overload.toml"

#: KPIs of a healthy run (inside the default limits).
GOOD = {"v_min_pu": 0.95, "v_max_pu": 1.02, "peak_trafo_loading_percent": 80.0,
        "peak_line_loading_percent": 60.0, "energy_unmet_percent": 0.2,
        "minutes_site_limit_exceeded": 0.0, "energy_cost": 100.0, "ocpp_messages": 1000.0}


def junit_cases(path: Path) -> dict[str, ET.Element]:
    return {f"{suite.get('name')}/{case.get('name')}": case
            for suite in ET.parse(path).getroot().iter("testsuite")
            for case in suite.iter("testcase")}


@pytest.mark.slow
def test_overload_fails_uncontrolled_and_passes_equal_share(tmp_path: Path) -> None:
    """The issue's gate, on scenarios/overload.toml as shipped (both runs at once)."""
    procs = {strategy: subprocess.Popen(
        [sys.executable, "-m", "evtwin.sim.cli", "check", str(OVERLOAD), "--strategy",
         strategy, "--junit", str(tmp_path / f"{strategy}.xml")], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for strategy in ("uncontrolled", "equal_share")}
    out = {s: p.communicate(timeout=600) for s, p in procs.items()}

    assert procs["uncontrolled"].returncode == 1, out["uncontrolled"]
    assert "check failed" in out["uncontrolled"][0]
    cases = junit_cases(tmp_path / "uncontrolled.xml")
    failure = cases["overload[uncontrolled]/thermal_loading"].find("failure")
    assert failure is not None
    assert "transformer loading" in failure.get("message", "")
    assert "> 100 %" in failure.get("message", "")
    # The limits that held are there too, passing.
    assert cases["overload[uncontrolled]/voltage_band"].find("failure") is None
    root = ET.parse(tmp_path / "uncontrolled.xml").getroot()
    assert int(root.get("failures", "0")) >= 1

    assert procs["equal_share"].returncode == 0, out["equal_share"]
    assert "limits hold" in out["equal_share"][0]
    cases = junit_cases(tmp_path / "equal_share.xml")
    assert {"overload[equal_share]/voltage_band", "overload[equal_share]/thermal_loading",
            "overload[equal_share]/energy_unmet_percent"} <= set(cases)
    assert all(case.find("failure") is None for case in cases.values())


def test_limits_default_to_the_scenario_and_layer_file_then_section(tmp_path: Path) -> None:
    sc = load_scenario(OVERLOAD)
    lim = effective_limits(LimitsFile(), sc)
    assert (lim.v_min_pu, lim.v_max_pu) == (sc.grid.v_min_pu, sc.grid.v_max_pu)
    assert lim.trafo_loading_max_percent == sc.grid.trafo_loading_max_percent
    assert lim.energy_unmet_max_percent == 1.0
    path = tmp_path / "limits.toml"
    path.write_text("v_min_pu = 0.95\nenergy_unmet_max_percent = 2\n"
                    "[kpis]\nminutes_site_limit_exceeded = { max = 0 }\n"
                    "[scenarios.overload]\ntrafo_loading_max_percent = 150\n"
                    "[scenarios.overload.kpis]\nenergy_cost = { min = 1, max = 500 }\n"
                    "[scenarios.other]\nv_min_pu = 0.5\n")
    lim = effective_limits(load_limits(path), sc)
    assert lim.v_min_pu == 0.95 and lim.trafo_loading_max_percent == 150
    assert lim.energy_unmet_max_percent == 2
    assert set(lim.kpis) == {"minutes_site_limit_exceeded", "energy_cost"}


def test_limits_file_errors_name_the_file_and_every_field(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    path = tmp_path / "limits.toml"
    path.write_text('v_min_pu = "low"\ncolour = 1\n[kpis]\nhappiness = { max = 1 }\n'
                    "energy_cost = {}\n")
    with pytest.raises(CheckError) as err:
        load_limits(path)
    text = str(err.value)
    assert f"{path}: v_min_pu:" in text
    assert f"{path}: colour: unknown field" in text
    assert f"{path}: kpis.happiness: unknown KPI; known: energy_requested_kwh" in text
    assert f"{path}: kpis.energy_cost: give min, max or both" in text
    code = main(["check", str(OVERLOAD), "--limits", str(path)])
    captured = capsys.readouterr()
    assert code == 2 and "kpis.happiness: unknown KPI" in captured.err
    assert "Traceback" not in captured.err
    assert main(["check", str(OVERLOAD), "--limits", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: file not found" in capsys.readouterr().err
    assert main(["check", str(OVERLOAD), "--update-baseline"]) == 2


def test_evaluate_limits_names_what_broke() -> None:
    sc = load_scenario(OVERLOAD)
    lim = effective_limits(LimitsFile.model_validate(
        {"kpis": {"minutes_site_limit_exceeded": {"max": 0}, "energy_cost": {"min": 150}}}), sc)
    results = {r.name: r for r in evaluate_limits(GOOD, lim)}
    assert set(results) == {"voltage_band", "thermal_loading", "energy_unmet_percent",
                            "kpi.minutes_site_limit_exceeded", "kpi.energy_cost"}
    assert results["voltage_band"].passed and results["thermal_loading"].passed
    assert results["kpi.minutes_site_limit_exceeded"].passed
    assert not results["kpi.energy_cost"].passed
    assert "energy_cost = 100 < min 150" in results["kpi.energy_cost"].message
    bad = {**GOOD, "v_min_pu": 0.87, "peak_line_loading_percent": 104.5,
           "energy_unmet_percent": 3.0}
    results = {r.name: r for r in evaluate_limits(bad, lim)}
    assert not results["voltage_band"].passed
    assert "min voltage 0.8700 pu < 0.9 pu" in results["voltage_band"].message
    assert not results["thermal_loading"].passed
    assert "line loading 104.5 % > 100 %" in results["thermal_loading"].message
    assert "transformer" not in results["thermal_loading"].message
    assert not results["energy_unmet_percent"].passed
    # A KPI the run did not report fails its bound instead of passing silently.
    missing = {k: v for k, v in GOOD.items() if k != "v_max_pu"}
    assert not {r.name: r for r in evaluate_limits(missing, lim)}["voltage_band"].passed


def test_baseline_tolerances_per_kpi(tmp_path: Path) -> None:
    sc = load_scenario(OVERLOAD)
    recorded = ScenarioCheck(str(OVERLOAD), sc, kpis=dict(GOOD))
    path = write_baseline(tmp_path / "baseline.json", [recorded])
    baseline = load_baseline(path)
    assert baseline["scenarios"]["overload[uncontrolled]"]["kpis"]["energy_cost"] == 100.0
    limits = LimitsFile.model_validate({"tolerance": {"relative": 0.05,
                                                      "kpis": {"ocpp_messages": {
                                                          "relative": 0.2}}}})
    moved = ScenarioCheck(str(OVERLOAD), sc, kpis={**GOOD, "energy_cost": 104.0,
                                                   "ocpp_messages": 1150.0,
                                                   "peak_trafo_loading_percent": 90.0})
    results = {r.name: r for r in compare_baseline(moved, baseline, limits.tolerance)}
    assert results["baseline.energy_cost"].passed  # 4 % within 5 %
    assert results["baseline.ocpp_messages"].passed  # 15 % within its own 20 %
    assert not results["baseline.peak_trafo_loading_percent"].passed  # 12.5 % > 5 %
    assert "baseline 80" in results["baseline.peak_trafo_loading_percent"].message
    # Run under another strategy: no baseline for it, which fails rather than passes.
    other = ScenarioCheck(str(OVERLOAD), load_scenario(OVERLOAD, {
        "control.strategy": "equal_share"}), kpis=dict(GOOD))
    (only,) = compare_baseline(other, baseline, limits.tolerance)
    assert only.name == "baseline" and not only.passed and "--update-baseline" in only.message
    # Recording another scenario keeps the first.
    write_baseline(path, [other])
    assert set(load_baseline(path)["scenarios"]) == {"overload[uncontrolled]",
                                                     "overload[equal_share]"}


def test_junit_has_a_suite_per_scenario_and_a_case_per_limit() -> None:
    sc = load_scenario(OVERLOAD)
    ok = ScenarioCheck("a.toml", sc, kpis=GOOD,
                       results=evaluate_limits(GOOD, effective_limits(LimitsFile(), sc)))
    broken = ScenarioCheck("b.toml", load_scenario(OVERLOAD, {"name": "b"}),
                           error="RunError: the CSMS went away")
    root = junit_xml([ok, broken]).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "0", "1")
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"overload[uncontrolled]", "b[uncontrolled]"}
    assert [c.get("name") for c in suites["overload[uncontrolled]"].iter("testcase")] == [
        "voltage_band", "thermal_loading", "energy_unmet_percent"]
    (run_case,) = suites["b[uncontrolled]"].iter("testcase")
    error = run_case.find("error")
    assert error is not None and "CSMS went away" in error.get("message", "")
    props = {p.get("name"): p.get("value") for p in suites["b[uncontrolled]"].iter("property")}
    assert props["scenario"] == "b.toml" and props["seed"] == "11"


@pytest.mark.slow
def test_check_against_a_recorded_baseline(tmp_path: Path) -> None:
    """Record a baseline, pass against it, fail when the run moves a KPI."""
    from tests.test_sweep import TINY

    # A 3-hour evening run leaves home visits unfinished (about 20 kWh each): the test
    # is about the baseline gate, so the unmet-energy limit is off here.
    limits = tmp_path / "limits.toml"
    limits.write_text("energy_unmet_max_percent = 100\n")
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    baseline = tmp_path / "baseline.json"
    assert main(["check", str(scenario), "--limits", str(limits), "--baseline",
                 str(baseline), "--update-baseline"]) == 0
    assert "tiny[uncontrolled]" in load_baseline(baseline)["scenarios"]
    assert main(["check", str(scenario), "--limits", str(limits), "--baseline",
                 str(baseline)]) == 0
    # Same scenario, more EVs: the baseline gate (and only it) catches the move.
    scenario.write_text(TINY.replace("count = 4", "count = 8"))
    report = tmp_path / "report.xml"
    assert main(["check", str(scenario), "--limits", str(limits), "--baseline",
                 str(baseline), "--junit", str(report)]) == 1
    failed = {name for name, case in junit_cases(report).items()
              if case.find("failure") is not None}
    assert "tiny[uncontrolled]/baseline.energy_requested_kwh" in failed
    assert all("/baseline." in name for name in failed)


def test_a_kpi_tolerance_takes_what_it_does_not_set_from_the_file_level() -> None:
    limits = LimitsFile.model_validate({"tolerance": {
        "relative": 0.05, "absolute": 5.0,
        "kpis": {"ocpp_messages": {"relative": 0.1}, "v_min_pu": {"absolute": 0.001}}}})
    tol = limits.tolerance
    assert (tol.for_kpi("ocpp_messages").relative, tol.for_kpi("ocpp_messages").absolute) == (
        0.1, 5.0)
    assert (tol.for_kpi("v_min_pu").relative, tol.for_kpi("v_min_pu").absolute) == (0.05, 0.001)
    assert (tol.for_kpi("energy_cost").relative, tol.for_kpi("energy_cost").absolute) == (
        0.05, 5.0)


def test_a_baseline_from_before_text_overrides_and_the_kpi_rename_still_holds(
        tmp_path: Path) -> None:
    """Older baselines recorded ``duration_h`` as the number 2 and the unmet KPI as
    ``energy_unmet_share``; today ``--set duration_h=2`` arrives as text."""
    sc = load_scenario(OVERLOAD, {"duration_h": "2"})
    now = ScenarioCheck(str(OVERLOAD), sc, kpis=dict(GOOD), overrides={"duration_h": "2"})
    old_kpis = {("energy_unmet_share" if k == "energy_unmet_percent" else k): v
                for k, v in GOOD.items()}
    baseline = {"format": "evtwin-baseline/1", "scenarios": {now.key: {
        "seed": sc.seed, "overrides": {"duration_h": 2}, "kpis": old_kpis}}}
    results = compare_baseline(now, baseline, LimitsFile.model_validate({}).tolerance)
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]
    assert "baseline.energy_unmet_percent" in {r.name for r in results}
    # A different value is still a different run.
    other = ScenarioCheck(str(OVERLOAD), load_scenario(OVERLOAD, {"duration_h": "3"}),
                          kpis=dict(GOOD), overrides={"duration_h": "3"})
    assert not all(r.passed for r in compare_baseline(other, baseline,
                                                      LimitsFile.model_validate({}).tolerance))
