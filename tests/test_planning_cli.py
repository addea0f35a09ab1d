"""``evtwin hosting-capacity``: the command a planner runs, its outputs and its errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from evtwin.sim.cli import main
from evtwin.sim.scenario import parse_scenario

ROOT = Path(__file__).resolve().parents[1]
PLANNING = ROOT / "scenarios" / "planning.toml"


@pytest.mark.slow
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
    assert len(curve) == 8 and set(curve["strategy"]) == {"uncontrolled", "equal_share",
                                                          "feeder_aware", "v2g"}
    assert (out / "hosting_probability.png").stat().st_size > 10_000
    assert "hosting capacity" in capsys.readouterr().out


@pytest.mark.slow
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
    (["--strategies", "price"], "--strategies"),
    (["--draws", "-1"], "--draws"),
    (["--buses", ","], "--buses"),
    (["--strategies", ","], "--strategies"),
    (["--set", "grid.phases=unbalanced", "--set", "grid.engine=pandapower"], "grid.engine"),
])
@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "evtwin.sim.cli", "hosting-capacity",
                           str(PLANNING), "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # no empty result folder left behind


@pytest.mark.slow
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


@pytest.mark.slow
def test_placement_prefers_the_bus_with_more_headroom(tmp_path: Path) -> None:
    """Equal demand (every driver has a charger of their own, so nobody needs the new
    site): of a bus near the transformer and one at the far end of the village feeder,
    the screen and the twin runs both put the near one first; the winner's scenario
    file runs as it was ranked."""
    from evtwin.sim import load_scenario
    from evtwin.sim.placement import NEW_SITE, place, write_placement

    demo = ROOT / "scenarios" / "demo.toml"
    sc = load_scenario(demo, {"duration_h": 3})
    data = sc.model_dump(mode="python", exclude_none=True)
    for site in data["sites"]:
        site["access"] = "private"
    sc = parse_scenario(data, "demo")
    near, far = 39, 69  # 44 m and 495 m from the transformer along the lines
    placement = place(sc, add=4, kw=22.0, candidates=[far, near], top=2, workers=1)
    t = placement.table.set_index("bus")
    assert t.loc[near, "demand_kwh"] == t.loc[far, "demand_kwh"] == 0.0
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
@pytest.mark.slow
def test_place_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                                says: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "evtwin.sim.cli", "place", str(PLANNING),
                           "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_place_screen_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--top 0: the power-flow screen alone, no twin run and no winner file."""
    assert main(["place", str(PLANNING), "--add", "2", "--candidates", "283,3", "--top", "0",
                 "--out", str(tmp_path)]) == 0
    [out] = list(tmp_path.iterdir())
    assert {p.name for p in out.iterdir()} == {"placement.csv", "placement.png"}
    table = pd.read_csv(out / "placement.csv")
    assert list(table["bus"]) == [3, 283] and table["rank"].isna().all()
    assert "(1)" in capsys.readouterr().out


def test_placement_goes_where_the_drivers_live_when_the_grid_takes_it() -> None:
    """Demand near a bus is the energy drivers request on visits to shared sites,
    weighted by exp(-d / radius) over the line length d from their home: checked against
    networkx shortest paths; of candidates that all take the chargers, the one with
    the most demand nearby ranks first."""
    import networkx as nx
    import numpy as np

    from evtwin.grid import load_network
    from evtwin.sim import load_scenario
    from evtwin.sim.placement import nearby_demand_kwh, place
    from evtwin.sim.runner import Twin

    sc = load_scenario(ROOT / "scenarios" / "demo.toml", {"duration_h": 24})
    twin = Twin(sc)
    net = load_network(sc.grid.network)
    graph = nx.Graph()
    for line in net.line.itertuples():
        if line.in_service:
            graph.add_edge(int(line.from_bus), int(line.to_bus), km=float(line.length_km))
    for t in net.trafo.itertuples():
        graph.add_edge(int(t.hv_bus), int(t.lv_bus), km=0.0)
    candidates = [39, 69, 99, 9]
    demand = nearby_demand_kwh(sc, candidates)
    for bus in candidates:
        km = nx.single_source_dijkstra_path_length(graph, bus, weight="km")
        shared = {s.name for s in sc.sites if s.access == "shared" or s.kind != "home"}
        expected = sum(
            sum((v.target_soc - v.soc_initial) * ev.vehicle.capacity_kwh for v in ev.visits
                if (v.site or ev.site) in shared)
            * np.exp(-km[ev.home_bus] / 0.3)
            for ev in twin.model.evs)
        assert demand[bus] == pytest.approx(expected, rel=1e-9)
    assert len({round(d, 3) for d in demand.values()}) == len(candidates)

    placement = place(sc, add=1, kw=3.7, candidates=candidates, top=0)
    t = placement.table
    assert (t["headroom_kw"] >= 0).all()  # a 3.7 kW charger fits anywhere here
    assert t["bus"].iloc[0] == max(demand, key=lambda b: demand[b])
    assert list(t["demand_kwh"]) == sorted(t["demand_kwh"], reverse=True)


def test_what_would_fix_it_names_the_binding_element_and_the_strategies_that_hold() -> None:
    """At full penetration uncontrolled charging overloads the planning feeder's
    transformer in some draws; feeder_aware holds back the least uniform share that
    keeps every limit (re-solved: it holds, and 3 % more power breaks a limit again);
    equal_share holds to the home site's limit. Each strategy's hosting capacity as a
    penetration is reported, and uncontrolled's is the lowest."""
    import numpy as np

    from evtwin.grid import limits_broken, load_buses, load_cases, load_network
    from evtwin.sim import load_scenario
    from evtwin.sim.planning import (
        _curtail_to_limits,
        _discharge_to_limits,
        _feeder,
        hosting_penetration,
        penetration_study,
        what_would_fix_it,
    )

    sc = load_scenario(PLANNING)
    study = penetration_study(sc, [0.5, 1.0], draws=30)
    fix = what_would_fix_it(study)
    assert list(fix["penetration"]) == [1.0]
    [row] = fix.itertuples()
    assert row.binding.startswith("trafo")
    assert "feeder_aware" in row.fixed_by and "uncontrolled" not in row.fixed_by
    assert row.curtailed_percent_feeder_aware > 0
    fits = hosting_penetration(study)
    assert fits["uncontrolled"] < fits["feeder_aware"]

    buses = load_buses(load_network(sc.grid.network))
    feeder = _feeder(sc, buses)
    p, q, _ = load_cases(feeder)
    rng = np.random.default_rng(1)
    ev = (rng.random((8, len(buses))) < 0.6) * 11.0
    pp_, qq = np.repeat(p, 8, axis=0), np.repeat(q, 8, axis=0)
    broken, binding = limits_broken(feeder, pp_, qq, ev)
    assert broken.any()
    held, still, _ = _curtail_to_limits(feeder, pp_, qq, ev, broken, binding)
    assert not still.any()
    assert not limits_broken(feeder, pp_, qq, held)[0].any()
    cut = np.flatnonzero(broken)
    assert limits_broken(feeder, pp_[cut], qq[cut], held[cut] * 1.03)[0].all()
    assert (held[~broken] == ev[~broken]).all()  # draws that held keep their power

    # V2G: idle EVs feeding back by the least common share that keeps every limit.
    back = (rng.random((8, len(buses))) < 0.5) * 11.0
    fed, still, _ = _discharge_to_limits(feeder, pp_, qq, ev, back, broken, binding)
    cut = np.flatnonzero(broken & ~still)
    assert len(cut) > 0
    assert not limits_broken(feeder, pp_[cut], qq[cut], fed[cut])[0].any()
    share = (ev[cut] - fed[cut]).sum(axis=1) / back[cut].sum(axis=1)
    less = ev[cut] - back[cut] * np.maximum(share - 0.03, 0.0)[:, None]
    assert limits_broken(feeder, pp_[cut], qq[cut], less)[0].all()
    row_v2g = fix.iloc[0]
    assert row_v2g["v2g_kw"] > 0
