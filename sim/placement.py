"""Where new chargers go: ``evtwin place SCENARIO --add N``.

Two stages, as a planner would work:

1. **Screen** every candidate bus with the batched power flow: its hosting capacity
   at the base load's worst hour less the new chargers' power is its headroom
   (negative: the chargers at full power would break a limit there). Its **demand**
   is the energy the scenario's drivers ask for on visits to shared sites (workplace
   and public, a commuter's included) over the run, each weighted by how near they
   live: ``exp(-d / radius_km)`` with ``d`` the line length between their
   home bus and the candidate (see evtwin.sim.geography). Candidates that take the
   chargers (headroom >= 0) rank first, by demand, then by headroom; with equal
   demand, more headroom ranks first; those that do not take them follow, by headroom.
2. **Run the twin** on the top ``K`` placements, in parallel on the sweep executor:
   the scenario with a new public site of ``N`` chargers on that bus (the existing
   stations pinned to the buses they had), under the scenario's strategy. The
   placements are ranked by their KPIs: minutes outside a grid limit (voltage,
   thermal, unbalance), then unmet demand, then energy delivered, then peak
   transformer loading.

The screen counts the households' load only; the existing chargers' load shows in
the twin runs.

Writes ``placement.csv`` (every candidate: its screen, and the KPIs of those run),
``placement.png`` (the feeder with each candidate's headroom and the runs' ranks)
and ``winner.toml`` (the scenario with the winning site, ready for ``evtwin run``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandapower.topology as top
import pandas as pd
import tomli_w

from evtwin.grid import load_buses, load_network, place_stations

from .exceptions import ScenarioError
from .geography import assign_home_buses
from .planning import HostingStudy, hosting_study, plot_hosting
from .scenario import Scenario, parse_scenario

__all__ = ["Placement", "nearby_demand_kwh", "place", "placed_scenario", "write_placement"]

#: The new site's name in the scenarios placement writes.
NEW_SITE = "new"

#: How far drivers go to a public charger: demand weighs ``exp(-km / DEMAND_RADIUS_KM)``.
DEMAND_RADIUS_KM = 0.3


@dataclass(frozen=True)
class Placement:
    """A placement study: ``table`` has one row per candidate bus (best first):
    ``bus``, ``capacity_kw``, ``headroom_kw``, ``demand_kwh``, ``binding``,
    ``distance_km``, ``screen_rank`` and, for those run, ``rank`` and their KPIs."""

    scenario: Scenario
    hosting: HostingStudy
    table: pd.DataFrame
    add: int
    kw: float
    winner: Scenario | None


def _existing_buses(sc: Scenario) -> list[int]:
    """The bus of every station of ``sc``, as the twin places them."""
    if all(s.buses is not None for s in sc.sites):
        return [b for s in sc.sites for b in (s.buses or [])]
    return place_stations(load_network(sc.grid.network), sum(s.stations for s in sc.sites))


def nearby_demand_kwh(sc: Scenario, buses: Sequence[int], *,
                      radius_km: float = DEMAND_RADIUS_KM,
                      existing: list[int] | None = None) -> dict[int, float]:
    """Per bus: the energy (kWh, over the run) that drivers request on visits to shared
    sites (workplace and public; a commuter's too), each weighted by
    ``exp(-d / radius_km)``, ``d`` the line length (km) from their home bus to the bus;
    the drivers and homes of ``sc`` as the twin draws them (same seed)."""
    from .runner import build_model

    if radius_km <= 0:
        raise ScenarioError(sc.name, [("--demand-radius-km", "must be > 0")])
    model = build_model(sc)
    net = load_network(sc.grid.network)
    assign_home_buses(model, existing if existing is not None else _existing_buses(sc),
                      load_buses(net), sc.seed)
    shared = {s.name for s in sc.sites if not s.private}
    wanted: dict[int, float] = {}
    for ev in model.evs:
        if ev.home_bus is None:
            continue
        # Visits to shared sites: where a public charger could serve them instead.
        kwh = sum((v.target_soc - v.soc_initial) * ev.vehicle.capacity_kwh
                  for v in ev.visits if (v.site or ev.site) in shared)
        if kwh > 0:
            wanted[ev.home_bus] = wanted.get(ev.home_bus, 0.0) + kwh
    graph = top.create_nxgraph(net)
    targets = [int(b) for b in buses]
    out = dict.fromkeys(targets, 0.0)
    # One shortest-path search from each home with demand (fewer than the candidates).
    for home, kwh in wanted.items():
        dist = top.calc_distance_to_bus(net, home, g=graph)
        d_km = np.array([dist.get(b, np.inf) for b in targets], dtype=float)
        for bus, weight in zip(targets, kwh * np.exp(-d_km / radius_km), strict=True):
            out[bus] += float(weight)
    return out


def placed_scenario(sc: Scenario, bus: int, add: int, kw: float,
                    existing: list[int] | None = None) -> Scenario:
    """``sc`` with a public site of ``add`` chargers of ``kw`` on ``bus``; every existing
    station pinned to the bus it had (``existing``, worked out when not given), so only
    the new site moves between placements."""
    if existing is None:
        existing = _existing_buses(sc)
    data = sc.model_dump(mode="python", exclude_none=True)
    start = 0
    for site in data["sites"]:
        site["buses"] = existing[start:start + site["stations"]]
        start += site["stations"]
    if any(s["name"] == NEW_SITE for s in data["sites"]):
        raise ScenarioError(sc.name, [("sites", f"a site is named {NEW_SITE!r} already")])
    data["sites"].append({"name": NEW_SITE, "kind": "public", "stations": add,
                          "evse_max_kw": kw, "buses": [int(bus)] * add})
    return parse_scenario(data, sc.name)


def _run_placement(data: dict[str, Any]) -> dict[str, float]:
    """Worker: one twin run of a placed scenario; its KPIs."""
    from .runner import Twin

    return dict(Twin(parse_scenario(data, "placement")).run().kpis)


def place(sc: Scenario, *, add: int, kw: float = 22.0, candidates: Sequence[int] | None = None,
          top: int = 3, workers: int | None = None,
          radius_km: float = DEMAND_RADIUS_KM) -> Placement:
    """Rank candidate buses for ``add`` new chargers of ``kw`` each (see the module)."""
    if add < 1:
        raise ScenarioError(sc.name, [("--add", "place at least one charger")])
    # The search bound leaves room above the new site's power, so headroom is real.
    hosting = hosting_study(sc, buses=candidates, max_kw=max(500.0, 2.0 * add * kw))
    existing = _existing_buses(sc)
    table = hosting.table.copy()
    table["headroom_kw"] = (table["capacity_kw"] - add * kw).round(1)
    demand = nearby_demand_kwh(sc, [int(b) for b in table["bus"]], radius_km=radius_km,
                               existing=existing)
    table["demand_kwh"] = [round(demand[int(b)], 1) for b in table["bus"]]
    takes = table[table["headroom_kw"] >= 0].sort_values(
        ["demand_kwh", "headroom_kw", "distance_km", "bus"],
        ascending=[False, False, True, True], kind="stable")
    # Those that do not take the chargers follow, by headroom alone.
    short = table[table["headroom_kw"] < 0].sort_values(
        ["headroom_kw", "distance_km", "bus"], ascending=[False, True, True], kind="stable")
    table = pd.concat([takes, short])
    table["screen_rank"] = range(1, len(table) + 1)
    chosen = [int(b) for b in table["bus"].head(max(0, top))]
    scenarios = {b: placed_scenario(sc, b, add, kw, existing) for b in chosen}
    kpis: dict[int, dict[str, float]] = {}
    if chosen:
        payloads = {b: s.model_dump(mode="python", exclude_none=True)
                    for b, s in scenarios.items()}
        workers = workers or min(len(chosen), os.cpu_count() or 1)
        if workers <= 1:
            kpis = {b: _run_placement(d) for b, d in payloads.items()}
        else:
            from .sweep import make_backend

            backend = make_backend(workers=workers)
            interrupted = False
            try:
                futures = {b: backend.submit_call(_run_placement, d) for b, d in
                           payloads.items()}
                kpis = {b: f.result() for b, f in futures.items()}
            except BaseException:  # Ctrl-C or a failed run: do not wait for the others
                interrupted = True
                raise
            finally:
                backend.close(interrupted=interrupted)
    columns = ["minutes_voltage_violation", "minutes_thermal_violation", "energy_unmet_percent",
               "energy_delivered_kwh", "peak_trafo_loading_percent", "v_min_pu",
               "peak_line_loading_percent", "net_energy_cost"]
    for col in columns:
        table[col] = [kpis[int(b)].get(col) if int(b) in kpis else None for b in table["bus"]]
    unbalance = [kpis[int(b)].get("minutes_unbalance_violation", 0.0) if int(b) in kpis
                 else None for b in table["bus"]]
    table["minutes_unbalance_violation"] = unbalance
    # Minutes outside a grid limit (a step breaking two counts under each).
    table["violation_min"] = (table["minutes_voltage_violation"]
                              + table["minutes_thermal_violation"]
                              + table["minutes_unbalance_violation"])
    ran = table[table["bus"].isin(chosen)].copy()
    ran = ran.sort_values(["violation_min", "energy_unmet_percent", "energy_delivered_kwh",
                           "peak_trafo_loading_percent"],
                          ascending=[True, True, False, True], kind="stable")
    rank = {int(b): i + 1 for i, b in enumerate(ran["bus"])}
    table["rank"] = [rank.get(int(b)) for b in table["bus"]]
    table = table.sort_values(["rank", "screen_rank"], na_position="last",
                              kind="stable").reset_index(drop=True)
    winner = scenarios[int(ran["bus"].iloc[0])] if len(ran) else None
    return Placement(sc, hosting, table, add, kw, winner)


def write_placement(placement: Placement, out: Path) -> list[Path]:
    """``placement.csv``, ``placement.png`` and (when placements ran) ``winner.toml``."""
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "placement.csv"
    placement.table.to_csv(csv, index=False)
    marked = {int(r.bus): int(r.rank) for r in placement.table.itertuples()
              if not pd.isna(r.rank)}
    png = plot_hosting(placement.hosting, out / "placement.png", marked=marked,
                       title=f"{placement.scenario.name}: {placement.add} new chargers of "
                             f"{placement.kw:g} kW; colour: hosting capacity, size: demand "
                             f"nearby, circled: placements run, by rank",
                       demand_kwh={int(r.bus): float(r.demand_kwh)
                                   for r in placement.table.itertuples()})
    paths = [csv, png]
    if placement.winner is not None:
        toml = out / "winner.toml"
        data = placement.winner.model_dump(mode="python", exclude_none=True)
        toml.write_text("# evtwin place: the winning placement (site \"new\")\n"
                        + tomli_w.dumps(data), encoding="utf-8")
        paths.append(toml)
    return paths
