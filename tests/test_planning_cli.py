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
                 str(tmp_path), "--draws", "5", "--penetration", "0.5,1"]) == 0
    [out] = list(tmp_path.iterdir())
    table = pd.read_csv(out / "hosting_capacity.csv")
    assert list(table.columns) == ["bus", "capacity_kw", "binding", "hour", "distance_km"]
    assert sorted(table["bus"]) == [3, 29, 283]
    assert (table["capacity_kw"] > 0).all() and (table["hour"] == 20).all()
    assert (out / "hosting_capacity.png").stat().st_size > 10_000
    curve = pd.read_csv(out / "hosting_penetration.csv")
    assert len(curve) == 4 and set(curve["strategy"]) == {"uncontrolled", "equal_share"}
    assert (out / "hosting_probability.png").stat().st_size > 10_000
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
    (["--penetration", "0.5,2"], "--penetration"),
    (["--strategies", "feeder_aware"], "--strategies"),
    (["--draws", "-1"], "--draws"),
    (["--buses", ","], "--buses"),
    (["--strategies", ","], "--strategies"),
    (["--set", "grid.phases=unbalanced", "--set", "grid.engine=pandapower"], "grid.engine"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "evtwin.sim.cli", "hosting-capacity",
                           str(PLANNING), "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # no empty result folder left behind


def test_probability_of_violation_rises_with_penetration_for_fixed_draws() -> None:
    """With the same seeded draws at every level (the EVs of a lower penetration are among
    those of a higher one), the share of draws with a broken limit never falls as more
    houses get an EV; sharing the home site's limit (equal_share) never breaks more."""
    from evtwin.sim import load_scenario
    from evtwin.sim.planning import penetration_study

    sc = load_scenario(PLANNING)
    levels = [i / 10 for i in range(11)]
    study = penetration_study(sc, levels, draws=40)
    t = study.table
    unc = t[t.strategy == "uncontrolled"]["p_violation"].tolist()
    eq = t[t.strategy == "equal_share"]["p_violation"].tolist()
    assert unc == sorted(unc) and unc[0] == 0.0 and unc[-1] > 0.2
    assert all(e <= u for e, u in zip(eq, unc, strict=True))
    again = penetration_study(sc, levels, draws=40).table
    assert again.equals(t)  # same scenario, same seed: the same curve


def test_placement_prefers_the_bus_with_more_headroom(tmp_path: Path) -> None:
    """Equal demand (evtwin's EVs have no home bus yet): of a bus near the transformer
    and one at the far end of the village feeder, the screen and the twin runs both
    put the near one first; the winner's scenario file runs as it was ranked."""
    from evtwin.sim import load_scenario
    from evtwin.sim.placement import NEW_SITE, place, write_placement

    demo = ROOT / "scenarios" / "demo.toml"
    sc = load_scenario(demo, {"duration_h": 3})
    near, far = 39, 69  # 44 m and 495 m from the transformer along the lines
    placement = place(sc, add=4, kw=22.0, candidates=[far, near], top=2, workers=1)
    t = placement.table.set_index("bus")
    assert t.loc[near, "headroom_kw"] > t.loc[far, "headroom_kw"]
    assert t.loc[near, "screen_rank"] == 1 and t.loc[near, "rank"] == 1
    assert placement.winner is not None
    [new] = [s for s in placement.winner.sites if s.name == NEW_SITE]
    assert new.buses == [near] * 4 and new.evse_max_kw == 22.0
    paths = write_placement(placement, tmp_path)
    again = load_scenario(tmp_path / "winner.toml")
    assert again.model_dump() == placement.winner.model_dump()
    assert {p.name for p in paths} == {"placement.csv", "placement.png", "winner.toml"}


@pytest.mark.parametrize(("args", "says"), [
    (["--add", "0"], "--add"),
    (["--add", "2", "--candidates", "x"], "--candidates"),
    (["--add", "2", "--candidates", "99999"], "no bus 99999"),
    (["--add", "2", "--candidates", ","], "--candidates"),
])
def test_place_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                                says: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "evtwin.sim.cli", "place", str(PLANNING),
                           "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_place_screen_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--top 0: the power-flow screen alone, no twin run and no winner file."""
    assert main(["place", str(PLANNING), "--add", "2", "--candidates", "283,3", "--top", "0",
                 "--out", str(tmp_path)]) == 0
    [out] = list(tmp_path.iterdir())
    assert {p.name for p in out.iterdir()} == {"placement.csv", "placement.png"}
    table = pd.read_csv(out / "placement.csv")
    assert list(table["bus"]) == [3, 283] and table["rank"].isna().all()
    assert "(1)" in capsys.readouterr().out
