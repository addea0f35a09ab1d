"""Planning studies on a scenario's feeder: ``evtwin hosting-capacity``.

The study takes the scenario's network, its base-load profile (scale included; with
``base_load_profile = "simbench"`` every load's SimBench profile on the start day) and
its grid limits, and asks for every candidate bus how much charging power it takes
(:func:`evtwin.grid.hosting_capacity`). Candidates are the buses with a household
load unless named. Writes ``hosting_capacity.csv`` and a drawing of the feeder with
each bus coloured by its headroom (``hosting_capacity.png``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from evtwin.grid import (
    Feeder,
    GridLimits,
    base_load,
    hosting_capacity,
    limits_broken,
    load_buses,
    load_cases,
    load_network,
)

from .exceptions import ScenarioError
from .scenario import Scenario

__all__ = ["COINCIDENCE_AT_PEAK", "FIT_P_VIOLATION", "SCREEN_STRATEGIES", "HostingStudy",
           "PenetrationStudy",
           "hosting_penetration", "hosting_study", "penetration_study", "plot_hosting",
           "plot_penetration", "what_would_fix_it", "write_hosting"]

#: Share of home EVs charging at full power at the evening peak, uncontrolled: the UK
#: Electric Nation trial (about 1,200 EVs on 7.36 kW chargers) measured a diversified
#: uncontrolled peak of about 2.16 kW per EV, i.e. 2.16 / 7.36 = 0.29 of them at full
#: power (profiles published in the Team-Nando/EV-Demand-Profiles repository).
COINCIDENCE_AT_PEAK = 2.16 / 7.36

#: The strategies the penetration screen models without running the twin.
SCREEN_STRATEGIES = ("uncontrolled", "equal_share", "feeder_aware", "v2g")

#: Share of houses' EVs plugged in at the peak, for V2G in the screen: Electric Nation
#: saw about 70 % of its EVs plug in on a given day (see COINCIDENCE_AT_PEAK); taken as
#: plugged in at the evening peak, an upper bound (some plug in later).
PLUGGED_AT_PEAK = 0.7

#: A penetration "fits" a strategy while at most this share of draws breaks a limit.
FIT_P_VIOLATION = 0.05


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
        if not candidates:
            raise ScenarioError(sc.name, [("grid.network", f"{g.network} has no low-voltage "
                                           "bus with a load to study")])
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
    hour: int = 20
    """The hour of the base load's worst case, where the study looks."""


def _feeder(sc: Scenario, candidates: list[int], phases: int = 3) -> Feeder:
    """The study's feeder: a station at each candidate bus (``phases`` each; single-phase
    ones spread over L1-L3 when the scenario's grid is unbalanced)."""
    g = sc.grid
    unbalanced = g.phases == "unbalanced"
    net = load_network(g.network)
    return Feeder(net, n_stations=len(candidates),
                  station_buses=candidates, engine="pgm", unbalanced=unbalanced,
                  station_phases=[phases] * len(candidates) if unbalanced else None,
                  phase_seed=sc.seed,
                  base_profile=base_load(g.base_load_profile, net, sc.start,
                                         scale=g.base_load_scale, noise=0.0),
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
    equally among them, as the CSMS's strategy does; ``feeder_aware``: every charging
    EV held back by the same factor, the least that keeps every limit (found by
    bisection to 1/128 per draw; the strategy's program holds back where it matters
    most, so this is the most it would curtail). A draw the base load alone breaks
    stays broken under every strategy. ``v2g``: the charging EVs charge at full
    power, and the bidirectional EVs plugged in but not charging (``ev.v2g_share`` of
    the EVs; plugged in with probability :data:`PLUGGED_AT_PEAK`) feed back, all by the
    same share of the home charger's power, the least that keeps every limit (a draw
    that breaks one with all of them feeding back at full power stays broken).
    ``curtailed_percent``: the share of the charging EVs' power at the peak that the
    strategy holds back, over all draws; ``v2g_kw``: the mean power fed back per draw.
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
    if not net_buses:
        raise ScenarioError(sc.name, [("grid.network", f"{sc.grid.network} has no "
                                       "low-voltage bus with a load to study")])
    feeder = _feeder(sc, net_buses, home.phases if home is not None else 3)
    p, q, hours = load_cases(feeder)
    rng = np.random.default_rng(sc.seed)
    owns_u = rng.random((draws, len(net_buses)))
    charges = rng.random((draws, len(net_buses))) < coincidence
    # V2G's draws on a stream of their own: the other strategies' draws stay as they were.
    v2g_rng = np.random.default_rng([sc.seed, 1])
    plugged_idle = (~charges) & (v2g_rng.random((draws, len(net_buses))) < PLUGGED_AT_PEAK)
    bidirectional = v2g_rng.random((draws, len(net_buses))) < sc.ev.v2g_share
    p_all, q_all = np.repeat(p, draws, axis=0), np.repeat(q, draws, axis=0)
    rows = []
    for strategy in strategies:
        for level in levels:
            wanted = ((owns_u < level) & charges) * ev_kw
            ev = wanted
            if strategy == "equal_share" and site_limit_kw is not None:
                total = ev.sum(axis=1, keepdims=True)
                ev = ev * np.minimum(1.0, site_limit_kw / np.maximum(total, 1e-9))
            broken, binding = limits_broken(feeder, p_all, q_all, ev)
            fed_kw = 0.0
            if strategy == "feeder_aware" and broken.any():
                ev, broken, binding = _curtail_to_limits(feeder, p_all, q_all, ev, broken,
                                                         binding)
            elif strategy == "v2g" and broken.any():
                back = ((owns_u < level) & plugged_idle & bidirectional) * ev_kw
                with_v2g, broken, binding = _discharge_to_limits(feeder, p_all, q_all, ev,
                                                                 back, broken, binding)
                fed_kw = float((ev - with_v2g).sum()) / draws
            names = pd.Series([b for b in binding if b])
            total_wanted = float(wanted.sum())
            rows.append({"strategy": strategy, "penetration": float(level),
                         "evs_mean": float((owns_u < level).sum(axis=1).mean()),
                         "p_violation": float(broken.mean()),
                         "binding": names.mode().iloc[0] if len(names) else "",
                         "curtailed_percent": round(
                             100.0 * (1.0 - float(ev.sum()) / total_wanted), 2)
                         if total_wanted else 0.0,
                         "v2g_kw": round(fed_kw, 2),
                         "draws": draws})
    return PenetrationStudy(sc, pd.DataFrame(rows), ev_kw, coincidence, int(hours[0]))


def _bisect_to_limits(feeder: Feeder, p: np.ndarray, q: np.ndarray, ev: np.ndarray,
                      broken: np.ndarray, binding: list[str],
                      ev_at: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                      more_holds: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """For each broken draw, the share ``s`` in [0, 1] (to 1/128) nearest the draw's own
    powers that keeps every limit, by bisection: ``ev_at(rows, s)`` gives those rows'
    EV powers at share ``s``; ``more_holds``: a larger share holds (feeding back),
    else a smaller one does (curtailing). Returns every draw's powers (those that held
    unchanged), which still break a limit (at the end of the range), and what binds."""
    rows = np.flatnonzero(broken)
    holds = np.full(len(rows), 1.0 if more_holds else 0.0)  # known to hold (or the end)
    breaks = 1.0 - holds  # known to break
    for _ in range(7):
        mid = (holds + breaks) / 2.0
        bad, _ = limits_broken(feeder, p[rows], q[rows], ev_at(rows, mid))
        breaks = np.where(bad, mid, breaks)
        holds = np.where(bad, holds, mid)
    out = ev.copy()
    out[rows] = ev_at(rows, holds)
    still, names = limits_broken(feeder, p[rows], q[rows], out[rows])
    result = broken.copy()
    result[rows] = still
    binding = list(binding)
    for i, r in enumerate(rows):
        binding[r] = names[i]
    return out, result, binding


def _curtail_to_limits(feeder: Feeder, p: np.ndarray, q: np.ndarray, ev: np.ndarray,
                       broken: np.ndarray, binding: list[str]
                       ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``feeder_aware`` in the screen: each broken draw's charging scaled by the largest
    factor that keeps every limit; a draw the base load alone breaks ends with its EVs
    off and stays broken, with what binds then."""
    return _bisect_to_limits(feeder, p, q, ev, broken, binding,
                             lambda rows, s: ev[rows] * s[:, None], more_holds=False)


def _discharge_to_limits(feeder: Feeder, p: np.ndarray, q: np.ndarray, ev: np.ndarray,
                         back: np.ndarray, broken: np.ndarray, binding: list[str]
                         ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``v2g`` in the screen: in each broken draw the EVs of ``back`` (kW) feed back by
    the smallest common share that keeps every limit; a draw that breaks one even at
    full feed-back stays broken (at full feed-back)."""
    return _bisect_to_limits(feeder, p, q, ev, broken, binding,
                             lambda rows, s: ev[rows] - back[rows] * s[:, None],
                             more_holds=True)


def what_would_fix_it(study: PenetrationStudy) -> pd.DataFrame:
    """Per penetration where uncontrolled charging breaks a limit in more than
    :data:`FIT_P_VIOLATION` of the draws: what binds most often, each strategy's share
    of draws broken and of power held back, and ``fixed_by``: the strategies that bring
    it within :data:`FIT_P_VIOLATION`."""
    t = study.table
    rows = []
    for r in t[t["strategy"] == "uncontrolled"].itertuples():
        if r.p_violation <= FIT_P_VIOLATION:
            continue
        at = t[t["penetration"] == r.penetration].set_index("strategy")
        fixed = [str(s) for s in at.index if at.loc[s, "p_violation"] <= FIT_P_VIOLATION]
        row: dict[str, object] = {"penetration": r.penetration, "binding": r.binding}
        for strategy in at.index:
            row[f"p_violation_{strategy}"] = at.loc[strategy, "p_violation"]
            row[f"curtailed_percent_{strategy}"] = at.loc[strategy, "curtailed_percent"]
            if strategy == "v2g":
                row["v2g_kw"] = at.loc[strategy, "v2g_kw"]
        row["fixed_by"] = ", ".join(fixed) or "none of the strategies screened"
        rows.append(row)
    return pd.DataFrame(rows)


def hosting_penetration(study: PenetrationStudy) -> dict[str, float]:
    """Per strategy, its hosting capacity as a penetration: the highest share of houses
    with an EV studied up to which every level breaks a limit in at most
    :data:`FIT_P_VIOLATION` of the draws (0 when the lowest level already breaks more)."""
    out: dict[str, float] = {}
    for strategy, rows in study.table.groupby("strategy", sort=False):
        fits = 0.0
        for r in rows.sort_values("penetration").itertuples():
            if r.p_violation > FIT_P_VIOLATION:
                break
            fits = float(r.penetration)
        out[str(strategy)] = fits
    return out


def plot_penetration(study: PenetrationStudy, path: Path) -> Path:
    """Probability of a broken limit (%) against the share of houses with an EV (%), and
    below it the share of the charging power each strategy holds back to get there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 7.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 2]})
    # Distinct markers and dashes: strategies that coincide (e.g. both at 0 %) stay visible.
    styles = [("o", "-", 7), ("s", "--", 9), ("^", ":", 7), ("D", "-.", 6)]
    for i, (strategy, rows) in enumerate(study.table.groupby("strategy", sort=False)):
        marker, dash, size = styles[i % len(styles)]
        x = rows["penetration"] * 100
        ax.plot(x, rows["p_violation"] * 100, marker=marker, ls=dash, ms=size,
                mfc="none" if i else None, label=str(strategy))
        ax2.plot(x, rows["curtailed_percent"], marker=marker, ls=dash, ms=size,
                 mfc="none" if i else None, label=str(strategy))
    ax.set_ylabel("draws with a limit broken (%)")
    ax.set_ylim(-3, 103)
    ax.set_xlim(0, 102)
    ax.grid(alpha=0.3)
    ax2.set_xlabel("houses with an EV (%)")
    ax2.set_ylabel("charging power held back (%)")
    ax2.set_ylim(bottom=-2)
    ax2.grid(alpha=0.3)
    draws = int(study.table["draws"].iloc[0]) if len(study.table) else 0
    ax.set_title(f"{study.scenario.name}: {study.scenario.grid.network}"
                 f" at the base load's worst hour ({study.hour}:00)\n"
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
        fix = what_would_fix_it(penetration)
        if len(fix):
            fcsv = out / "hosting_fix.csv"
            fix.to_csv(fcsv, index=False)
            paths.append(fcsv)
    return paths


def plot_hosting(study: HostingStudy, path: Path, *, marked: dict[int, int] | None = None,
                 title: str | None = None, demand_kwh: dict[int, float] | None = None) -> Path:
    """The feeder with every candidate bus coloured by its hosting capacity (kW);
    ``marked`` buses get their number (a placement's rank) beside them; with
    ``demand_kwh`` each bus's marker area grows with the demand near it."""
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
    sizes: float | np.ndarray = 40.0
    if demand_kwh:
        d = np.array([demand_kwh.get(int(b), 0.0) for b in table["bus"]])
        top = float(d.max()) if len(d) and d.max() > 0 else 1.0
        sizes = 12.0 + 150.0 * d / top
    points = ax.scatter(xs, ys, c=table["capacity_kw"], cmap="viridis", s=sizes,
                        edgecolors="black", linewidths=0.4, zorder=3)
    if demand_kwh:
        for kwh in (top, top / 2):
            ax.scatter([], [], s=12.0 + 150.0 * kwh / top, color="0.8", edgecolors="black",
                       linewidths=0.4, label=f"demand nearby {kwh:.0f} kWh")
    fig.colorbar(points, ax=ax, label="hosting capacity (kW)")
    source = [pos[int(b)] for b in net.ext_grid["bus"]]
    ax.scatter([p[0] for p in source], [p[1] for p in source], marker="s", s=90,
               color="tab:red", zorder=4, label="external grid")
    for bus, number in (marked or {}).items():
        x, y = pos[int(bus)]
        ax.scatter([x], [y], s=320, facecolors="none", edgecolors="tab:red", linewidths=1.6,
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
