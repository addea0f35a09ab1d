"""Run records (``run.json``) and ``evtwin reproduce``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from evtwin.sim.cli import main
from evtwin.sim.exceptions import CheckError
from evtwin.sim.reproduce import compare_kpis, load_record, same_value
from evtwin.sim.scenario import Scenario
from tests.test_sweep import TINY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run written by ``evtwin run`` (CSMS database in a file, as users run it)."""
    root = tmp_path_factory.mktemp("reproduce")
    scenario = root / "tiny.toml"
    scenario.write_text(TINY.replace('database = "memory"', 'database = "file"'))
    proc = subprocess.run([sys.executable, "-m", "evtwin.sim.cli", "run", str(scenario),
                           "--out", str(root / "runs"), "--quiet", "--set", "ev.count=5",
                           "--seed", "3"], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    (found,) = (root / "runs").iterdir()
    return found


def test_same_value_and_compare_kpis() -> None:
    assert same_value(1.0, 1.0 + 1e-12) and same_value(0.0, -0.0)
    assert same_value(math.nan, math.nan) and not same_value(1.0, math.nan)
    assert not same_value(1.0, 1.0 + 1e-6)
    assert compare_kpis({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.5, "c": 0.0}) == {
        "b": (2.0, 2.5), "c": (math.nan, 0.0)}


@pytest.mark.slow
def test_run_json_records_exact_scenario_seed_versions_and_command(run_dir: Path) -> None:
    record = json.loads((run_dir / "run.json").read_text())
    assert record["format"] == "evtwin-run/1"
    assert record["seed"] == 3 and record["scenario"]["seed"] == 3
    assert record["scenario"]["ev"]["count"] == 5
    assert record["command"][1:3] == ["run", str(run_dir.parents[1] / "tiny.toml")]
    assert "--seed" in record["command"]
    for pkg in ("evtwin", "numpy", "pandapower", "power-grid-model", "ocpp", "python"):
        assert record["versions"][pkg]
    kpis = json.loads((run_dir / "kpis.json").read_text())["kpis"]
    assert record["kpis"] == kpis
    # Both scenario files load back into the same validated scenario.
    as_run = Scenario.model_validate(json.loads((run_dir / "scenario.json").read_text()))
    assert as_run == Scenario.model_validate(record["scenario"])
    assert as_run.start.isoformat() == "2026-01-15T16:30:00+00:00"


@pytest.mark.slow
def test_reproduce_gives_the_same_kpis(run_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", str(run_dir)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "reproduced: all" in out and "KPIs identical" in out


@pytest.mark.slow
def test_reproduce_reports_kpis_and_versions_that_differ(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = json.loads((run_dir / "run.json").read_text())
    record["kpis"]["v_min_pu"] += 0.001
    record["versions"]["numpy"] = "0.0.1"
    tampered = tmp_path / "run.json"
    tampered.write_text(json.dumps(record))
    assert main(["reproduce", str(tampered)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "version differs: numpy recorded 0.0.1" in out
    assert "v_min_pu" in out and "not reproduced: 1 KPI(s) differ" in out


def test_bad_records_are_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    with pytest.raises(CheckError, match=r"no run\.json"):
        load_record(tmp_path)
    (tmp_path / "run.json").write_text('{"format": "something else"}')
    assert main(["reproduce", str(tmp_path)]) == 2
    assert "format: expected 'evtwin-run/1'" in capsys.readouterr().err
    bad = {"format": "evtwin-run/1", "scenario": {"ev": {"count": 0}, "sites": []}}
    (tmp_path / "run.json").write_text(json.dumps(bad))
    assert main(["reproduce", str(tmp_path)]) == 2
    assert "scenario.ev.count: must be > 0" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_against_another_csms_is_not_reproduced_with_ours(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = json.loads((run_dir / "run.json").read_text())
    assert "external_csms" not in record  # a run against evtwin's own CSMS
    record["external_csms"] = "ws://127.0.0.1:9000/ocpp"
    (tmp_path / "run.json").write_text(json.dumps(record))
    assert main(["reproduce", str(tmp_path)]) == 2
    assert "external_csms: this run's stations spoke to another CSMS" in capsys.readouterr().err
