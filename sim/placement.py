"""Where new chargers go: ``evtwin place SCENARIO --add N``.

Two stages, as a planner would work:

1. **Screen** every candidate bus with the batched power flow: its hosting capacity
   at the base load's worst hour less the new chargers' power is its headroom
   (negative: the chargers at full power would break a limit there). With equal
   demand everywhere (evtwin's EVs have no home bus yet), more headroom ranks first.
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

import pandas as pd
import tomli_w

from evtwin.grid import load_network, place_stations

from .exceptions import ScenarioError
from .planning import HostingStudy, hosting_study, plot_hosting
from .scenario import Scenario, parse_scenario

__all__ = ["Placement", "place", "placed_scenario", "write_placement"]

#: The new site's name in the scenarios placement writes.
NEW_SITE = "new"


@dataclass(frozen=True)
class Placement:
    """A placement study: ``table`` has one row per candidate bus (best first):
    ``bus``, ``capacity_kw``, ``headroom_kw``, ``binding``, ``distance_km``,
    ``screen_rank`` and, for those run, ``rank`` and their KPIs."""

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
          top: int = 3, workers: int | None = None) -> Placement:
    """Rank candidate buses for ``add`` new chargers of ``kw`` each (see the module)."""
    if add < 1:
        raise ScenarioError(sc.name, [("--add", "place at least one charger")])
    # The search bound leaves room above the new site's power, so headroom is real.
    hosting = hosting_study(sc, buses=candidates, max_kw=max(500.0, 2.0 * add * kw))
    table = hosting.table.copy()
    table["headroom_kw"] = (table["capacity_kw"] - add * kw).round(1)
    table = table.sort_values(["headroom_kw", "distance_km", "bus"],
                              ascending=[False, True, True], kind="stable")
    table["screen_rank"] = range(1, len(table) + 1)
    chosen = [int(b) for b in table["bus"].head(max(0, top))]
    existing = _existing_buses(sc)
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
    columns = ["minutes_voltage_violation", "minutes_thermal_violation", "energy_unmet_share",
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
    ran = ran.sort_values(["violation_min", "energy_unmet_share", "energy_delivered_kwh",
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
                             f"{placement.kw:g} kW; colour: hosting capacity, circled: "
                             f"placements run, by rank")
    paths = [csv, png]
    if placement.winner is not None:
        toml = out / "winner.toml"
        data = placement.winner.model_dump(mode="python", exclude_none=True)
        toml.write_text("# evtwin place: the winning placement (site \"new\")\n"
                        + tomli_w.dumps(data), encoding="utf-8")
        paths.append(toml)
    return paths
