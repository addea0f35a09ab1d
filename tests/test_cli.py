"""The ``evtwin`` command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def evtwin(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evtwin.sim.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_run_demo_writes_results_and_prints_kpis(tmp_path: Path) -> None:
    proc = evtwin("run", str(ROOT / "scenarios" / "demo.toml"), "--out", str(tmp_path),
                  "--quiet", "--set", "duration_h=6", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Peak transformer loading" in proc.stdout
    assert "Speed-up over real time" in proc.stdout
    (run_dir,) = list(tmp_path.iterdir())
    assert run_dir.name.startswith("demo-")
    names = {p.name for p in run_dir.iterdir()}
    assert {"scenario.json", "scenario.toml", "kpis.json", "timeseries.csv", "sessions.csv",
            "station_power_kw.csv", "grid.png", "ev_power.png", "soc_at_departure.png",
            "csms.sqlite"} <= names
    data = json.loads((run_dir / "kpis.json").read_text())
    assert data["seed"] == 7
    assert data["versions"]["ocpp"]
    assert data["kpis"]["ocpp_messages"] > 0
    assert data["performance"]["speedup_vs_real_time"] > 1
    for png in ("grid.png", "ev_power.png", "soc_at_departure.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (run_dir / png).stat().st_size > 10_000
    as_run = json.loads((run_dir / "scenario.json").read_text())
    assert as_run["duration_h"] == 6


@pytest.mark.slow
def test_bad_scenario_is_one_clear_error_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[ev]\ncount = 0\n[[sites]]\nname = "a"\nstations = 2\ncolour = "red"\n')
    proc = evtwin("run", str(bad), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{bad}: ev.count: must be > 0" in proc.stderr
    assert f"{bad}: sites.0.colour: unknown field" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_unknown_feeder_name_is_a_user_error(tmp_path: Path) -> None:
    proc = evtwin("run", str(ROOT / "scenarios" / "demo.toml"), "--set",
                  "grid.network=atlantis", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "grid.network: unknown network 'atlantis'" in proc.stderr
    assert "kerber_dorfnetz" in proc.stderr


@pytest.mark.slow
def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    proc = evtwin("run", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope.toml: file not found" in proc.stderr


@pytest.mark.slow
def test_compare_runs_strategies_in_parallel_and_writes_table_and_figures(tmp_path: Path
                                                                          ) -> None:
    proc = evtwin("compare", str(ROOT / "scenarios" / "overload.toml"), "--strategies",
                  "uncontrolled,equal_share", "--workers", "2", "--out", str(tmp_path),
                  "--set", "duration_h=6", "--set", "start=2026-01-15T16:00:00", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = list(tmp_path.iterdir())
    import pandas as pd

    table = pd.read_csv(run_dir / "compare.csv", index_col="strategy")
    assert list(table.index) == ["uncontrolled", "equal_share"]
    assert table.loc["uncontrolled", "peak_trafo_loading_percent"] > 100
    assert table.loc["equal_share", "peak_trafo_loading_percent"] < 100
    for png in ("compare_kpis.png", "compare_grid.png"):
        assert (run_dir / png).stat().st_size > 10_000


@pytest.mark.slow
def test_compare_refuses_an_unknown_strategy_before_running(tmp_path: Path) -> None:
    proc = evtwin("compare", str(ROOT / "scenarios" / "demo.toml"), "--strategies",
                  "equal_share,fastest", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "control.strategy: unknown strategy 'fastest'" in proc.stderr
    assert not list(tmp_path.iterdir())
