"""Where demand is: each EV's home bus, each station's bus and phase, and unserved
demand per site and per bus.

* An EV of a **private** site (a household's charger; home sites by default) lives
  at its charger's bus. Every other EV (it charges at work or in public) gets a
  home bus drawn from the feeder's household buses on a stream of its own
  (``[seed, 5]``, one draw per EV in EV order), so the same scenario and seed put
  every household in the same place.
* A visit's **bus** is where it charged; a visit turned away from its own charger is
  unserved at that charger's bus; one turned away from a shared site counts against
  each of the site's station buses in equal parts (it would have used one of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from evtwin.agents import ChargingModel
from evtwin.grid import supplied_buses
from evtwin.grid.feeder import station_bus_problem

from .exceptions import ScenarioError

if TYPE_CHECKING:
    import pandapower as pp

    from .scenario import Scenario

__all__ = ["HOME_BUS_STREAM", "assign_home_buses", "check_station_buses",
           "station_bus_problems", "stations_table", "unserved_table"]

#: ``numpy.random.default_rng([seed, HOME_BUS_STREAM])`` draws shared-site EVs' home buses.
HOME_BUS_STREAM = 5

_PHASE_NAMES = {-1: "L1L2L3", 0: "L1", 1: "L2", 2: "L3"}


def station_bus_problems(sc: Scenario, net: pp.pandapowerNet) -> list[tuple[str, str]]:
    """Every site bus (``sites.N.buses.J``) that cannot take a charger, with why: it
    is not in the network, not supplied, or not a low-voltage bus (up to
    ``LV_MAX_KV``; the transformer's MV side is no charger location)."""
    supplied = supplied_buses(net)
    problems: list[tuple[str, str]] = []
    for i, site in enumerate(sc.sites):
        for j, bus in enumerate(site.buses or []):
            problem = station_bus_problem(net, bus, supplied)
            if problem is not None:
                problems.append((f"sites.{i}.buses.{j}", f"bus {bus}: {problem}"))
    return problems


def check_station_buses(sc: Scenario, net: pp.pandapowerNet) -> None:
    """ScenarioError naming the scenario's file and every bad site bus at once
    (see :func:`station_bus_problems`)."""
    problems = station_bus_problems(sc, net)
    if problems:
        raise ScenarioError(sc.source, problems)


def assign_home_buses(model: ChargingModel, station_buses: Sequence[int],
                      household_buses: Sequence[int], seed: int) -> None:
    """Set every EV's ``home_bus`` (see the module); stations in ``model.stations`` order."""
    bus_of = {st.station_id: int(b) for st, b in zip(model.stations, station_buses,
                                                     strict=True)}
    rng = np.random.default_rng([seed, HOME_BUS_STREAM])
    homes = np.asarray(household_buses, dtype=np.int64)
    for ev in model.evs:
        # One draw per EV whatever its site, so an EV's home does not depend on others'.
        drawn = int(homes[rng.integers(len(homes))]) if len(homes) else None
        ev.home_bus = bus_of[ev.charger[0]] if ev.charger is not None else drawn


def stations_table(model: ChargingModel, station_buses: Sequence[int],
                   lines: Sequence[int | None] | None = None) -> pd.DataFrame:
    """One row per station: ``station_id``, ``site``, ``bus``, ``evses``, ``evse_max_kw``,
    ``phases`` (1 or 3) and ``connection`` (``L1``/``L2``/``L3`` for a single-phase
    station on an unbalanced feeder, whose ``lines`` are 1-3; ``unknown`` for one on a
    balanced feeder; ``L1L2L3`` for a three-phase station)."""
    rows = []
    for i, (st, bus) in enumerate(zip(model.stations, station_buses, strict=True)):
        evses = list(st.evses.values())
        line = None if lines is None else lines[i]
        phase = -1 if line is None else int(line) - 1
        single = max(e.phases for e in evses) == 1
        rows.append({"station_id": st.station_id, "site": st.site, "bus": int(bus),
                     "evses": len(evses),
                     "evse_max_kw": max(e.max_power_w for e in evses) / 1000.0,
                     "phases": max(e.phases for e in evses),
                     # A single-phase station on a balanced feeder: on no line in particular.
                     "connection": "unknown" if single and phase < 0 else _PHASE_NAMES[phase]})
    return pd.DataFrame(rows, columns=["station_id", "site", "bus", "evses", "evse_max_kw",
                                       "phases", "connection"])


_TOTALS = ["visits", "turned_away", "requested_kwh", "delivered_kwh", "unmet_kwh",
           "turned_away_kwh"]


def unserved_table(sessions: pd.DataFrame, stations: pd.DataFrame) -> pd.DataFrame:
    """Demand and what went unserved, per site and per feeder bus.

    Columns: ``level`` (``site`` or ``bus``), ``name`` (the site's name or the bus
    index), ``visits``, ``turned_away`` (visits), ``requested_kwh``, ``delivered_kwh``
    (into the batteries), ``unmet_kwh`` (requested - delivered) and ``turned_away_kwh``
    (the part of it of drivers who never plugged in), ``unmet_share_percent``.
    Skipped visits (the car was still away) requested nothing and are left out.
    """
    columns = ["level", "name", *_TOTALS, "unmet_share_percent"]
    if sessions.empty:
        return pd.DataFrame(columns=columns)
    s = sessions[sessions["outcome"] != "skipped"]
    away = (s["outcome"] == "turned_away").to_numpy()
    frame = pd.DataFrame({
        "site": s["site"].to_numpy(),
        "bus": pd.to_numeric(s["bus"], errors="coerce").astype(float).to_numpy(),
        "visits": 1.0, "turned_away": away.astype(float),
        "requested_kwh": s["energy_wanted_kwh"].to_numpy(dtype=float),
        "delivered_kwh": s["energy_battery_kwh"].to_numpy(dtype=float),
    })
    # Rounded to the mWh: float noise of a fully served visit is not unmet energy.
    frame["unmet_kwh"] = (frame["requested_kwh"] - frame["delivered_kwh"]).round(6)
    frame["turned_away_kwh"] = np.where(away, frame["requested_kwh"], 0.0)
    per_site = frame.groupby("site", sort=True)[_TOTALS].sum()
    # A visit with no bus (turned away from a shared site) is spread over its site's buses.
    placed = frame[frame["bus"].notna()]
    spread = []
    site_buses = stations.groupby("site")["bus"].apply(list).to_dict()
    for row in frame[frame["bus"].isna()].itertuples(index=False):
        buses = site_buses.get(row.site, [])
        for bus in buses:
            part = {k: getattr(row, k) / len(buses) for k in _TOTALS}
            spread.append({"bus": float(bus), **part})
    per_bus_frame = pd.concat([placed[["bus", *_TOTALS]], pd.DataFrame(spread)],
                              ignore_index=True) if spread else placed[["bus", *_TOTALS]]
    per_bus = per_bus_frame.groupby("bus", sort=True)[_TOTALS].sum()
    out = pd.concat([
        per_site.reset_index().rename(columns={"site": "name"}).assign(level="site"),
        per_bus.reset_index().rename(columns={"bus": "name"}).assign(
            level="bus", name=lambda d: d["name"].astype(int).astype(str)),
    ], ignore_index=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["unmet_share_percent"] = np.where(
            out["requested_kwh"] > 0, 100.0 * out["unmet_kwh"] / out["requested_kwh"], 0.0)
    out["unmet_kwh"] = out["unmet_kwh"].round(6) + 0.0  # no -0.0
    return out[columns]
