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

import numpy as np
import pandas as pd

from evtwin.grid import (
    BaseLoadProfile,
    Feeder,
    GridLimits,
    hosting_capacity,
    limits_broken,
    load_buses,
    load_cases,
    load_network,
)

from .exceptions import ScenarioError
from .scenario import Scenario

__all__ = ["COINCIDENCE_AT_PEAK", "HostingStudy", "PenetrationStudy", "hosting_study",
           "penetration_study", "plot_hosting", "plot_penetration", "write_hosting"]

#: Share of home EVs charging at full power at the evening peak, uncontrolled: the UK
#: Electric Nation trial (about 1,200 EVs on 7.36 kW chargers) measured a diversified
#: uncontrolled peak of about 2.16 kW per EV, i.e. 2.16 / 7.36 = 0.29 of them at full
#: power (profiles published in the Team-Nando/EV-Demand-Profiles repository).
COINCIDENCE_AT_PEAK = 2.16 / 7.36

#: The strategies the penetration screen models without running the twin.
SCREEN_STRATEGIES = ("uncontrolled", "equal_share")


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
    feeder = _feeder(sc, candidates)
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


@dataclass(frozen=True)
class PenetrationStudy:
    """Probability of a broken limit against EV penetration, per strategy.

    ``table``: one row per strategy and penetration: ``strategy``, ``penetration``
    (share of houses with an EV), ``evs_mean``, ``p_violation`` (share of draws with a
    limit broken), ``binding`` (what broke most often), ``draws``.
    """

    scenario: Scenario
    table: pd.DataFrame
    ev_kw: float
    coincidence: float


def _feeder(sc: Scenario, candidates: list[int], phases: int = 3) -> Feeder:
    """The study's feeder: a station at each candidate bus (``phases`` each; single-phase
    ones spread over L1-L3 when the scenario's grid is unbalanced)."""
    g = sc.grid
    unbalanced = g.phases == "unbalanced"
    return Feeder(load_network(g.network), n_stations=len(candidates),
                  station_buses=candidates, engine="pgm", unbalanced=unbalanced,
                  station_phases=[phases] * len(candidates) if unbalanced else None,
                  phase_seed=sc.seed,
                  base_profile=BaseLoadProfile("residential", scale=g.base_load_scale,
                                               noise=0.0),
                  limits=GridLimits(v_min_pu=g.v_min_pu, v_max_pu=g.v_max_pu,
                                    line_loading_max_percent=g.line_loading_max_percent,
                                    trafo_loading_max_percent=g.trafo_loading_max_percent,
                                    vuf_max_percent=g.vuf_max_percent))


def penetration_study(sc: Scenario, levels: Sequence[float], *, draws: int = 100,
                      strategies: Sequence[str] = SCREEN_STRATEGIES,
                      coincidence: float = COINCIDENCE_AT_PEAK) -> PenetrationStudy:
    """How likely the feeder breaks a limit at the base load's worst hour as more
    houses get an EV (a screen with batched power flows, not twin runs).

    Each draw gives every house a uniform number for owning an EV and one for
    charging at the peak (seeded by the scenario's seed; the same numbers at every
    penetration, so the EVs of a lower penetration are among those of a higher one).
    A house owns an EV below the penetration; its EV charges at the home site's
    ``evse_max_kw`` with probability ``coincidence``. ``uncontrolled``: every charging
    EV at full power; ``equal_share``: the home site's ``limit_kw`` (if any) shared
    equally among them, as the CSMS's strategy does.
    """
    unknown = [st for st in strategies if st not in SCREEN_STRATEGIES]
    if unknown:
        raise ScenarioError(sc.name, [("--strategies", f"the screen models only "
                                       f"{', '.join(SCREEN_STRATEGIES)}, not {unknown}")])
    bad = [lv for lv in levels if not 0.0 <= lv <= 1.0]
    if bad:
        raise ScenarioError(sc.name, [("--penetration", f"shares between 0 and 1, not {bad}")])
    home = next((site for site in sc.sites if site.kind == "home"), None)
    ev_kw = home.evse_max_kw if home is not None else 11.0
    site_limit_kw = home.limit_kw if home is not None else None
    net_buses = load_buses(load_network(sc.grid.network))
    feeder = _feeder(sc, net_buses, home.phases if home is not None else 3)
    p, q, _ = load_cases(feeder)
    rng = np.random.default_rng(sc.seed)
    owns_u = rng.random((draws, len(net_buses)))
    charges = rng.random((draws, len(net_buses))) < coincidence
    rows = []
    for strategy in strategies:
        for level in levels:
            ev = ((owns_u < level) & charges) * ev_kw
            if strategy == "equal_share" and site_limit_kw is not None:
                total = ev.sum(axis=1, keepdims=True)
                ev = ev * np.minimum(1.0, site_limit_kw / np.maximum(total, 1e-9))
            broken, binding = limits_broken(feeder, np.repeat(p, draws, axis=0),
                                            np.repeat(q, draws, axis=0), ev)
            names = pd.Series([b for b in binding if b])
            rows.append({"strategy": strategy, "penetration": float(level),
                         "evs_mean": float((owns_u < level).sum(axis=1).mean()),
                         "p_violation": float(broken.mean()),
                         "binding": names.mode().iloc[0] if len(names) else "",
                         "draws": draws})
    return PenetrationStudy(sc, pd.DataFrame(rows), ev_kw, coincidence)


def plot_penetration(study: PenetrationStudy, path: Path) -> Path:
    """Probability of a broken limit (%) against the share of houses with an EV (%)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for strategy, rows in study.table.groupby("strategy", sort=False):
        ax.plot(rows["penetration"] * 100, rows["p_violation"] * 100, marker="o",
                label=str(strategy))
    ax.set_xlabel("houses with an EV (%)")
    ax.set_ylabel("draws with a limit broken (%)")
    ax.set_ylim(-3, 103)
    ax.set_xlim(0, 102)
    ax.grid(alpha=0.3)
    draws = int(study.table["draws"].iloc[0]) if len(study.table) else 0
    ax.set_title(f"{study.scenario.name}: {study.scenario.grid.network} at the evening peak\n"
                 f"{draws} draws per point; {study.ev_kw:g} kW chargers, "
                 f"{study.coincidence:.0%} charging at once (Electric Nation)", fontsize=10)
    ax.legend(title="strategy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_hosting(study: HostingStudy, out: Path,
                  penetration: PenetrationStudy | None = None) -> list[Path]:
    """Write the tables (CSV) and figures (PNG) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "hosting_capacity.csv"
    study.table.to_csv(csv, index=False)
    paths = [csv, plot_hosting(study, out / "hosting_capacity.png")]
    if penetration is not None:
        pcsv = out / "hosting_penetration.csv"
        penetration.table.to_csv(pcsv, index=False)
        paths += [pcsv, plot_penetration(penetration, out / "hosting_probability.png")]
    return paths


def plot_hosting(study: HostingStudy, path: Path, *, marked: dict[int, int] | None = None,
                 title: str | None = None) -> Path:
    """The feeder with every candidate bus coloured by its hosting capacity (kW);
    ``marked`` buses get their number (a placement's rank) beside them."""
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
    for bus, number in (marked or {}).items():
        x, y = pos[int(bus)]
        ax.scatter([x], [y], s=160, facecolors="none", edgecolors="tab:red", linewidths=1.6,
                   zorder=4)
        ax.annotate(str(number), (x, y), textcoords="offset points", xytext=(7, 5),
                    color="tab:red", fontsize=10, fontweight="bold")
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
    head = title or f"{study.scenario.name}: extra charging power each bus takes"
    ax.set_title(f"{head}\n{when}\n"
                 f"{g.network}, households x{g.base_load_scale:g}, limits "
                 f"{g.v_min_pu:g}-{g.v_max_pu:g} pu, lines {g.line_loading_max_percent:g} %, "
                 f"transformer {g.trafo_loading_max_percent:g} %", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
