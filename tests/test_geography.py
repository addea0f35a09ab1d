"""Demand geography: home buses, private home chargers, unserved demand per site and bus."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from evtwin.grid import load_buses, load_network
from evtwin.sim.geography import stations_table, unserved_table
from evtwin.sim.results import write_results
from evtwin.sim.runner import Twin, build_model
from evtwin.sim.scenario import parse_scenario


def _scenario(**changes: Any) -> Any:
    data: dict[str, Any] = {
        "name": "geo", "seed": 5, "start": "2026-06-01T12:00:00", "duration_h": 48,
        "step_s": 300,
        "grid": {"network": "kerber_dorfnetz", "engine": "pgm"},
        "control": {"strategy": "uncontrolled", "interval_s": 300},
        # 12 home EVs on 6 home chargers: two households' cars share each charger.
        "ev": {"count": 18},
        "sites": [
            {"name": "homes", "kind": "home", "stations": 6, "evse_max_kw": 11,
             "ev_share": 12},
            {"name": "work", "kind": "workplace", "stations": 3, "evses_per_station": 2,
             "evse_max_kw": 11, "ev_share": 6},
        ],
    }
    data.update(changes)
    return parse_scenario(data, "geo")


def test_private_home_ev_owns_a_charger_and_lives_at_its_bus() -> None:
    twin = Twin(_scenario())
    model = twin.model
    home = [ev for ev in model.evs if ev.site == "homes"]
    work = [ev for ev in model.evs if ev.site == "work"]
    assert len(home) == 12 and len(work) == 6
    # Round robin: the k-th home EV has EVSE k mod 6, so each charger serves two EVs.
    chargers = [ev.charger for ev in home]
    assert chargers[:6] == chargers[6:]
    assert len(set(chargers)) == 6
    assert all(ev.charger is None for ev in work)
    for ev in home:
        assert ev.charger is not None
        assert ev.home_bus == twin.bus_of[ev.charger[0]]
    # Workplace drivers live somewhere on the feeder: at a household bus.
    households = set(load_buses(load_network("kerber_dorfnetz")))
    assert all(ev.home_bus in households for ev in work)
    again = Twin(_scenario())
    assert [ev.home_bus for ev in again.model.evs] == [ev.home_bus for ev in model.evs]


@pytest.mark.slow
def test_twin_run_charges_home_evs_at_their_own_charger_only() -> None:
    twin = Twin(_scenario())
    result = twin.run()
    s = result.sessions
    own = {ev.ev_id: ev.charger for ev in twin.model.evs}
    homes = s[(s["site"] == "homes") & s["station_id"].notna()]
    assert len(homes) >= 6
    for row in homes.itertuples():
        assert (row.station_id, row.evse_id) == own[row.ev_id]
        assert row.bus == row.home_bus
    # Two cars per charger: some arrive to find it taken and give up, at their own bus.
    away = s[(s["site"] == "homes") & (s["outcome"] == "turned_away")]
    assert len(away) > 0
    assert (away["bus"] == away["home_bus"]).all()
    # The shared workplace: any EVSE of the site, several EVs per EVSE over the run.
    work = s[(s["site"] == "work") & s["station_id"].notna()]
    assert work.groupby(["station_id", "evse_id"])["ev_id"].nunique().max() > 1

    table = result.unserved
    sites = table[table["level"] == "site"].set_index("name")
    buses = table[table["level"] == "bus"]
    # Every kWh requested and unmet is somewhere: the sites' and the buses' totals agree
    # with each other and with the run's KPIs.
    for col in ("requested_kwh", "delivered_kwh", "unmet_kwh", "turned_away_kwh", "visits"):
        assert sites[col].sum() == pytest.approx(buses[col].sum(), rel=1e-9, abs=1e-6)
    assert sites["requested_kwh"].sum() == pytest.approx(result.kpis["energy_requested_kwh"])
    assert sites["unmet_kwh"].sum() == pytest.approx(result.kpis["energy_unmet_kwh"], abs=1e-5)
    assert sites.loc["homes", "turned_away"] == len(away)
    assert set(buses["name"].astype(int)) <= set(result.stations["bus"])


def test_unserved_table_spreads_a_shared_site_turn_away_over_its_buses() -> None:
    stations = pd.DataFrame({"station_id": ["a-1", "a-2", "h-1"], "site": ["a", "a", "h"],
                             "bus": [10, 20, 30]})
    sessions = pd.DataFrame([
        # served in full at bus 10
        {"site": "a", "bus": 10, "outcome": "served", "energy_wanted_kwh": 8.0,
         "energy_battery_kwh": 8.0},
        # turned away from the shared site: half to bus 10, half to bus 20
        {"site": "a", "bus": np.nan, "outcome": "turned_away", "energy_wanted_kwh": 6.0,
         "energy_battery_kwh": 0.0},
        # left short at its own charger on bus 30
        {"site": "h", "bus": 30, "outcome": "served", "energy_wanted_kwh": 10.0,
         "energy_battery_kwh": 7.5},
        # skipped: requested nothing
        {"site": "h", "bus": np.nan, "outcome": "skipped", "energy_wanted_kwh": 9.0,
         "energy_battery_kwh": 0.0},
    ])
    t = unserved_table(sessions, stations).set_index(["level", "name"])
    assert t.loc[("site", "a"), "unmet_kwh"] == pytest.approx(6.0)
    assert t.loc[("site", "a"), "turned_away"] == 1
    assert t.loc[("site", "h"), "unmet_kwh"] == pytest.approx(2.5)
    assert t.loc[("site", "h"), "unmet_share_percent"] == pytest.approx(25.0)
    assert t.loc[("bus", "10"), "unmet_kwh"] == pytest.approx(3.0)
    assert t.loc[("bus", "10"), "requested_kwh"] == pytest.approx(11.0)
    assert t.loc[("bus", "20"), "turned_away_kwh"] == pytest.approx(3.0)
    assert t.loc[("bus", "20"), "visits"] == pytest.approx(0.5)
    assert t.loc[("bus", "30"), "unmet_kwh"] == pytest.approx(2.5)


def test_access_defaults_and_override() -> None:
    sc = _scenario()
    assert [s.private for s in sc.sites] == [True, False]
    shared = _scenario(sites=[{"name": "homes", "kind": "home", "stations": 6,
                               "access": "shared"}])
    assert not shared.sites[0].private
    model = build_model(shared)
    assert all(ev.charger is None for ev in model.evs)


@pytest.mark.slow
def test_run_folder_has_stations_and_unserved(tmp_path: Any) -> None:
    sc = _scenario(duration_h=6, grid={"network": "kerber_dorfnetz", "engine": "pgm",
                                       "phases": "unbalanced"},
                   sites=[{"name": "homes", "kind": "home", "stations": 6, "phases": 1}])
    twin = Twin(sc)
    result = twin.run()
    write_results(result, tmp_path)
    stations = pd.read_csv(tmp_path / "stations.csv")
    assert list(stations["bus"]) == twin.feeder.station_buses
    # Single-phase stations on an unbalanced feeder: each on one named phase.
    assert set(stations["connection"]) <= {"L1", "L2", "L3"}
    assert len(set(stations["connection"])) > 1
    unserved = pd.read_csv(tmp_path / "unserved.csv")
    assert set(unserved["level"]) == {"site", "bus"}
    # Told no lines (a balanced feeder), a single-phase station is on no known line.
    assert stations_table(twin.model, twin.feeder.station_buses)["connection"].eq(
        "unknown").all()


def _commuters(share: float | None) -> Any:
    sites: list[dict[str, Any]] = [{"name": "homes", "kind": "home", "stations": 12,
                                    "evse_max_kw": 11}]
    if share is not None:
        sites.append({"name": "work", "kind": "workplace", "stations": 4,
                      "evses_per_station": 2, "ev_share": 0, "visitors_from": "homes",
                      "visitor_share": share})
    return _scenario(start="2026-06-01T00:00:00", duration_h=72, ev={"count": 12},
                     sites=sites)


def test_commuters_charge_at_home_and_at_work() -> None:
    """An EV lives at its home charger and, for ``visitor_share`` of a site's EVs, also
    charges at work on weekdays: its own visits are the same as without the workplace."""
    alone = build_model(_commuters(None))
    both = build_model(_commuters(0.5))
    assert len(both.evs) == len(alone.evs) == 12  # the workplace has no EVs of its own
    commuters = 0
    for a, b in zip(alone.evs, both.evs, strict=True):
        own = [v for v in b.visits if v.site is None]
        assert own == a.visits
        at_work = [v for v in b.visits if v.site == "work"]
        commuters += bool(at_work)
        assert [v.arrival_s for v in b.visits] == sorted(v.arrival_s for v in b.visits)
        for v in at_work:  # workplace behaviour: on a weekday, not at night
            assert 5 * 3600 <= v.arrival_s % 86400 <= 22 * 3600
    assert 2 <= commuters <= 10
    with pytest.raises(Exception, match="visitors need a shared site"):
        _scenario(sites=[{"name": "a", "stations": 1},
                         {"name": "b", "stations": 1, "visitors_from": "a"}])
    with pytest.raises(Exception, match="name another site"):
        _scenario(sites=[{"name": "a", "stations": 1, "kind": "public",
                          "visitors_from": "nowhere"}])


@pytest.mark.slow
def test_commuters_sessions_are_recorded_where_they_charged() -> None:
    twin = Twin(_commuters(0.5))
    result = twin.run()
    s = result.sessions
    work = s[(s["site"] == "work") & s["station_id"].notna()]
    assert len(work) > 0
    assert set(work["ev_id"]) <= {ev.ev_id for ev in twin.model.evs if ev.site == "homes"}
    work_buses = set(result.stations.loc[result.stations["site"] == "work", "bus"])
    assert set(work["bus"]) <= work_buses
    # Their home bus stays the bus of their home charger.
    home_of = {ev.ev_id: ev.home_bus for ev in twin.model.evs}
    assert (work["home_bus"] == work["ev_id"].map(home_of)).all()
    sites = result.unserved[result.unserved["level"] == "site"].set_index("name")
    assert sites.loc["work", "requested_kwh"] > 0


def test_home_buses_are_households_of_the_network_as_given() -> None:
    """Stations on buses without a household do not make those buses anyone's home:
    shared-site drivers live at household buses of the network, the same ones
    evtwin place weighs demand with."""
    from evtwin.sim.placement import nearby_demand_kwh

    net = load_network("kerber_dorfnetz")
    households = set(load_buses(net))
    bare = [int(b) for b in net.bus.index if int(b) not in households and int(b) > 1][:2]
    sc = _scenario(ev={"count": 40}, sites=[
        {"name": "park", "kind": "public", "stations": 2, "buses": bare}])
    twin = Twin(sc)
    assert {ev.home_bus for ev in twin.model.evs} <= households
    # The demand screen sees the same homes: demand at a home bus with a driver is
    # at least that driver's own energy (distance 0).
    demand = nearby_demand_kwh(sc, sorted(households))
    for ev in twin.model.evs:
        own = sum((v.target_soc - v.soc_initial) * ev.vehicle.capacity_kwh
                  for v in ev.visits)
        assert demand[ev.home_bus] >= own - 1e-9
