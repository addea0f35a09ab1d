"""``evtwin hosting-capacity``: the command a planner runs, its outputs and its errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from evtwin.sim.cli import main

ROOT = Path(__file__).resolve().parents[1]
PLANNING = ROOT / "scenarios" / "planning.toml"


def test_hosting_capacity_writes_its_table_and_drawing(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert main(["hosting-capacity", str(PLANNING), "--buses", "283,29,3", "--out",
                 str(tmp_path)]) == 0
    [out] = list(tmp_path.iterdir())
    table = pd.read_csv(out / "hosting_capacity.csv")
    assert list(table.columns) == ["bus", "capacity_kw", "binding", "hour", "distance_km"]
    assert sorted(table["bus"]) == [3, 29, 283]
    assert (table["capacity_kw"] > 0).all() and (table["hour"] == 20).all()
    assert (out / "hosting_capacity.png").stat().st_size > 10_000
    assert "hosting capacity" in capsys.readouterr().out


def test_the_planning_scenario_has_the_feeder_the_issue_asks_for() -> None:
    from evtwin.grid import load_buses, load_network
    from evtwin.sim import load_scenario

    sc = load_scenario(PLANNING)
    assert len(load_buses(load_network(sc.grid.network))) >= 50


@pytest.mark.parametrize(("args", "says"), [
    (["--buses", "3,x"], "--buses"),
    (["--buses", "99999"], "no bus 99999"),
    (["--max-kw", "-5"], "--max-kw"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "evtwin.sim.cli", "hosting-capacity",
                           str(PLANNING), "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # no empty result folder left behind
