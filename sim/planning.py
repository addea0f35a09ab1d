"""Planning studies on a scenario's feeder: ``evtwin hosting-capacity``.

The study takes the scenario's network, its base-load profile (scale included) and
its grid limits, and asks for every candidate bus how much charging power it takes
(:func:`evtwin.grid.hosting_capacity`). Candidates are the buses with a household
load unless named. Writes ``hosting_capacity.csv`` and a drawing of the feeder with
each bus coloured by its headroom (``hosting_capacity.png``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evtwin.grid import (
    BaseLoadProfile,
    Feeder,
    GridLimits,
    hosting_capacity,
    load_buses,
    load_cases,
    load_network,
)

from .exceptions import ScenarioError
from .scenario import Scenario

__all__ = ["HostingStudy", "hosting_study", "plot_hosting", "write_hosting"]


@dataclass(frozen=True)
class HostingStudy:
    """A hosting-capacity study's results.

    ``table``: one row per candidate bus, nearest the transformer first: ``bus``,
    ``capacity_kw``, ``binding`` (what breaks just above it), ``hour`` (of the load
    case where it binds), ``distance_km``.
    """

    scenario: Scenario
    feeder: Feeder
    table: pd.DataFrame
    hours: tuple[int, ...]


def hosting_study(sc: Scenario, *, buses: Sequence[int] | None = None, day: bool = False,
                  max_kw: float = 500.0, tol_kw: float = 0.1) -> HostingStudy:
    """Hosting capacity of ``sc``'s feeder at its worst hour (``day``: every hour)."""
    g = sc.grid
    net = load_network(g.network)
    if buses is None:
        candidates = load_buses(net)
    else:
        known = {int(b) for b in net.bus.index}
        unknown = [b for b in buses if b not in known]
        if unknown:
            raise ScenarioError(sc.name, [("--buses", f"no bus {b} in {g.network}")
                                          for b in unknown])
        candidates = list(dict.fromkeys(int(b) for b in buses))
    feeder = Feeder(net, n_stations=len(candidates), station_buses=candidates,
                    engine="pgm",
                    base_profile=BaseLoadProfile("residential", scale=g.base_load_scale,
                                                 noise=0.0),
                    limits=GridLimits(v_min_pu=g.v_min_pu, v_max_pu=g.v_max_pu,
                                      line_loading_max_percent=g.line_loading_max_percent,
                                      trafo_loading_max_percent=g.trafo_loading_max_percent))
    p, q, hours = load_cases(feeder, range(24) if day else None)
    results = hosting_capacity(feeder, p, q, max_kw=max_kw, tol_kw=tol_kw)
    table = pd.DataFrame({
        "bus": [r.bus for r in results],
        "capacity_kw": [round(r.capacity_kw, 1) for r in results],
        "binding": [r.binding for r in results],
        "hour": [hours[r.case] for r in results],
        "distance_km": [round(r.distance_km, 3) for r in results],
    }).sort_values(["distance_km", "bus"], kind="stable").reset_index(drop=True)
    return HostingStudy(sc, feeder, table, tuple(hours))


def write_hosting(study: HostingStudy, out: Path) -> list[Path]:
    """Write the table (CSV) and the feeder drawing (PNG) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "hosting_capacity.csv"
    study.table.to_csv(csv, index=False)
    return [csv, plot_hosting(study, out / "hosting_capacity.png")]


def plot_hosting(study: HostingStudy, path: Path) -> Path:
    """The feeder with every candidate bus coloured by its hosting capacity (kW)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evtwin.grid.layout import bus_positions

    net = study.feeder.net
    pos, from_geo = bus_positions(net)
    fig, ax = plt.subplots(figsize=(10, 6.5))
    for _, line in net.line.iterrows():
        a, b = pos[int(line.from_bus)], pos[int(line.to_bus)]
        ax.plot([a[0], b[0]], [a[1], b[1]], color="0.7", lw=1.0, zorder=1)
    for _, trafo in net.trafo.iterrows():
        a, b = pos[int(trafo.hv_bus)], pos[int(trafo.lv_bus)]
        ax.plot([a[0], b[0]], [a[1], b[1]], color="0.3", lw=2.0, ls="--", zorder=1)
    table = study.table
    xs = [pos[int(b)][0] for b in table["bus"]]
    ys = [pos[int(b)][1] for b in table["bus"]]
    points = ax.scatter(xs, ys, c=table["capacity_kw"], cmap="viridis", s=40,
                        edgecolors="black", linewidths=0.4, zorder=3)
    fig.colorbar(points, ax=ax, label="hosting capacity (kW)")
    source = [pos[int(b)] for b in net.ext_grid["bus"]]
    ax.scatter([p[0] for p in source], [p[1] for p in source], marker="s", s=90,
               color="tab:red", zorder=4, label="external grid")
    weakest = table.loc[table["capacity_kw"].idxmin()]
    ax.annotate(f"weakest: bus {int(weakest.bus)}, {weakest.capacity_kw:.0f} kW\n"
                f"({weakest.binding})", pos[int(weakest.bus)], textcoords="offset points",
                xytext=(-10, 12), ha="right", fontsize=8,
                arrowprops={"arrowstyle": "-", "color": "0.4", "lw": 0.6})
    if from_geo:
        ax.set_xlabel("x (network geodata)")
        ax.set_ylabel("y (network geodata)")
    else:
        ax.set_xlabel("distance from the external grid along the lines (km)")
        ax.set_ylabel("branch")
        ax.set_yticks([])
    g = study.scenario.grid
    when = ("worst of 24 hours" if len(study.hours) > 1
            else f"at the base load's worst hour ({study.hours[0]}:00)")
    ax.set_title(f"{study.scenario.name}: extra charging power each bus takes, {when}\n"
                 f"{g.network}, households x{g.base_load_scale:g}, limits "
                 f"{g.v_min_pu:g}-{g.v_max_pu:g} pu, lines {g.line_loading_max_percent:g} %, "
                 f"transformer {g.trafo_loading_max_percent:g} %", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
