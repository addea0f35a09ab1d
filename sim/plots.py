"""Result plots (matplotlib, Agg backend: files only, no screen needed).

Each figure is built by a ``*_figure`` function that returns the
:class:`~matplotlib.figure.Figure` (so tests can inspect its axes) and written
by the matching ``plot_*`` function. Times are shown in the scenario's zone
(see :func:`local_times`), and the time axis says which zone that is.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from .runner import RunResult

#: Colours in the order matplotlib cycles through them (one per site or strategy).
COLOURS: list[str] = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def time_zone(scenario: Any) -> tuple[tzinfo, str]:
    """The zone a scenario's figures show times in, and its name for labels.

    The scenario's ``timezone`` (an IANA name) when it has one; otherwise the
    offset of its ``start``, which is the local time the household profile and
    the drivers' arrival hours already follow (``UTC`` for a start without one).
    """
    tz = scenario.local_zone()  # one place for the rule: the scenario model
    name = getattr(scenario, "timezone", None)
    if name:
        return tz, "UTC" if tz is UTC else str(name)
    offset = tz.utcoffset(None)
    if not offset:
        return UTC, "UTC"
    return tz, _offset_name(offset)


def _offset_name(offset: timedelta) -> str:
    minutes = round(offset.total_seconds() / 60)
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def time_axis_label(scenario: Any) -> str:
    """The label of a time axis: ``local time (Europe/Berlin)`` or ``simulated time (UTC)``."""
    tz, name = time_zone(scenario)
    return "simulated time (UTC)" if tz is UTC else f"local time ({name})"


def local_times(scenario: Any, t_s: Iterable[float] | pd.Series) -> pd.DatetimeIndex:
    """Seconds since the scenario's start as times in its zone (see :func:`time_zone`)."""
    tz, _ = time_zone(scenario)
    start = pd.Timestamp(scenario.start)
    if start.tzinfo is None:  # the scenario model makes it aware; plain objects may not
        start = start.tz_localize(UTC)
    offsets = pd.to_timedelta(np.asarray(list(t_s) if not isinstance(t_s, pd.Series)
                                         else t_s.to_numpy(), dtype=float), unit="s")
    return pd.DatetimeIndex(start + offsets).tz_convert(tz)


def format_time_axis(ax: Axes, scenario: Any, *, xlabel: bool = True) -> None:
    """Ticks and tick labels in the scenario's zone; the zone named in the x label."""
    tz, _ = time_zone(scenario)
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(tz=tz))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%d %H:%M", tz=tz))
    if xlabel:
        ax.set_xlabel(time_axis_label(scenario))


def floor_at_zero(ax: Axes, values: Iterable[float]) -> None:
    """Start the value axis at 0 for amounts that are never negative; an all-zero
    panel gets 0..1 instead of matplotlib's symmetric range around 0."""
    data = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if data.size and data.min() < 0:
        return
    top = float(data.max()) if data.size else 0.0
    if top <= 0:
        ax.set_ylim(0.0, 1.0)
    else:
        ax.set_ylim(bottom=0.0)


def _finish_time_axis(ax: Axes, scenario: Any, ylabel: str,
                      legend_loc: Literal["upper left", "lower left"], *, xlabel: bool) -> None:
    ax.set_ylabel(ylabel)
    format_time_axis(ax, scenario, xlabel=xlabel)
    ax.legend(loc=legend_loc, fontsize=8)
    ax.grid(True, alpha=0.3)


def save_figure(fig: Figure, path: Path) -> Path:
    """Lay out and write ``fig`` as a PNG."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def v2g_peak_target_percent(sc: Any) -> float:
    """The transformer loading ``v2g_peak_shaving`` shaves to, in % of rated power (its
    target is a share of the thermal limit: csms/v2g.py)."""
    return float(sc.grid.trafo_loading_max_percent * sc.control.v2g_peak_target_percent / 100)


def grid_figure(result: RunResult) -> Figure:
    """Feeder voltage envelope and transformer/line loading over time, limits drawn."""
    ts, sc = result.timeseries, result.scenario
    g = sc.grid
    t = local_times(sc, ts["t_s"])
    unbalanced = "vuf_max_percent" in ts
    fig = Figure(figsize=(11, 9.5) if unbalanced else (11, 7))
    axes = fig.subplots(3 if unbalanced else 2, 1, sharex=True)
    ax1, ax2 = axes[0], axes[1]
    ax1.fill_between(t, ts["vm_min_pu"], ts["vm_max_pu"], alpha=0.35, label="bus voltage range")
    if unbalanced:  # each phase's lowest bus voltage
        for k in (1, 2, 3):
            ax1.plot(t, ts[f"vm_min_l{k}_pu"], lw=1, label=f"min voltage L{k}")
    else:
        ax1.plot(t, ts["vm_min_pu"], lw=1, label="min bus voltage")
    ax1.axhline(g.v_min_pu, color="red", ls="--", lw=1,
                label=f"limits {g.v_min_pu}-{g.v_max_pu} pu")
    ax1.axhline(g.v_max_pu, color="red", ls="--", lw=1)
    ax1.set_title(f"{sc.name}: feeder voltage envelope (strategy {sc.control.strategy})")
    _finish_time_axis(ax1, sc, "voltage [pu]", "lower left", xlabel=False)
    ax2.plot(t, ts["trafo_loading_percent"], label="transformer loading")
    ax2.plot(t, ts["line_loading_max_percent"], lw=1, alpha=0.8, label="max line loading")
    ax2.axhline(g.trafo_loading_max_percent, color="red", ls="--", lw=1, label="thermal limit")
    if sc.control.strategy == "v2g_peak_shaving":
        ax2.axhline(v2g_peak_target_percent(sc), color="green", ls=":", lw=1,
                    label="V2G peak-shaving target")
    floor_at_zero(ax2, [*ts["trafo_loading_percent"], *ts["line_loading_max_percent"]])
    _finish_time_axis(ax2, sc, "loading [%] (most loaded phase)" if unbalanced else "loading [%]",
                      "upper left", xlabel=not unbalanced)
    if unbalanced:
        ax3 = axes[2]
        ax3.plot(t, ts["vuf_max_percent"], color="tab:purple",
                 label="highest voltage unbalance factor")
        ax3.axhline(g.vuf_max_percent, color="red", ls="--", lw=1,
                    label=f"limit {g.vuf_max_percent:g} % (EN 50160)")
        floor_at_zero(ax3, ts["vuf_max_percent"])
        _finish_time_axis(ax3, sc, "unbalance [%]", "upper left", xlabel=True)
        ax4 = ax3.twinx()
        ax4.plot(t, ts["neutral_current_max_a"], color="tab:gray", lw=1)
        ax4.set_ylabel("highest neutral current [A] (grey)")
        floor_at_zero(ax4, ts["neutral_current_max_a"])
    return fig


def ev_power_figure(result: RunResult) -> Figure:
    """EV charging power per site against that site's own limit (top) and, apart so
    neither dwarfs the other, the feeder's household base load, PV and storage (bottom)."""
    ts, sc = result.timeseries, result.scenario
    t = local_times(sc, ts["t_s"])
    fig = Figure(figsize=(11, 7.5))
    ax_ev, ax_feeder = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    shown: list[float] = []
    for i, s in enumerate(sc.sites):
        colour = COLOURS[i % len(COLOURS)]
        kw = ts[f"site_{s.name}_kw"]
        ax_ev.fill_between(t, 0, kw, color=colour, alpha=0.3, lw=0)
        ax_ev.plot(t, kw, color=colour, lw=1.2, label=f"EVs at {s.name}")
        shown.extend(kw)
        limit = ts.get(f"site_{s.name}_limit_kw")
        if limit is not None and limit.notna().any():  # the limit in force, grid operator's too
            ax_ev.plot(t, limit, color=colour, ls="--", lw=1.2, drawstyle="steps-pre",
                       label=f"{s.name} import limit")
            shown.extend(limit.dropna())
        elif s.limit_kw is not None:
            ax_ev.axhline(s.limit_kw, color=colour, ls="--", lw=1.2,
                          label=f"{s.name} import limit")
            shown.append(s.limit_kw)
    ax_ev.set_title(f"{sc.name}: EV charging power per site (not stacked), each with its "
                    "own limit")
    _finish_time_axis(ax_ev, sc, "EV power [kW] (- fed back)", "upper left", xlabel=False)
    floor_at_zero(ax_ev, shown)

    feeder: list[float] = [*ts["base_kw"]]
    ax_feeder.plot(t, ts["base_kw"], color="black", lw=1, label="household base load")
    if sc.pv:
        ax_feeder.fill_between(t, 0, ts["pv_kw"], color="gold", alpha=0.5,
                               label="PV generation (all plants)")
        feeder.extend(ts["pv_kw"])
    if sc.storage:
        ax_feeder.plot(t, ts["storage_kw"], color="purple", lw=1.2,
                       label="stationary storage (+ charging, - discharging)")
        feeder.extend(ts["storage_kw"])
    parts = ["household base load"] + (["PV"] if sc.pv else []) + (
        ["storage"] if sc.storage else [])
    ax_feeder.set_title(f"feeder: {', '.join(parts)}", fontsize=10)
    _finish_time_axis(ax_feeder, sc, "power [kW]", "upper left", xlabel=True)
    floor_at_zero(ax_feeder, feeder)
    return fig


def soc_figure(result: RunResult) -> Figure:
    """SoC at departure against the SoC the driver wanted, per visit; for V2G visits
    also the driver's minimum SoC, the floor V2G never discharges below."""
    s, sc = result.sessions, result.scenario
    fig = Figure(figsize=(7, 5.5))
    ax = fig.subplots()
    v2g = (s["bidirectional"].fillna(False).astype(bool) if "bidirectional" in s
           else pd.Series(False, index=s.index))
    for outcome, marker in (("served", "o"), ("open", "^"), ("turned_away", "x")):
        for is_v2g in (False, True):
            sel = s[(s["outcome"] == outcome) & (v2g == is_v2g)] if not s.empty else s
            if not len(sel):
                continue
            style: dict[str, Any] = ({"facecolors": "none", "edgecolors": "black"}
                                     if is_v2g and marker != "x" else {})
            ax.scatter(sel["target_soc"] * 100, sel["soc_final"] * 100, marker=marker,
                       alpha=0.7, label=f"{outcome}{' V2G' if is_v2g else ''} ({len(sel)})",
                       **style)
    ax.plot([0, 100], [0, 100], color="grey", lw=1, ls=":",
            label="target SoC reached")
    if v2g.any() and "min_soc" in s:
        for floor in sorted(s.loc[v2g, "min_soc"].dropna().unique()):
            ax.axhline(floor * 100, color="red", ls="--", lw=1,
                       label=f"driver minimum SoC {floor * 100:g} % (V2G floor)")
    ax.set_xlim(0, 102)
    ax.set_ylim(0, 102)
    ax.set_xlabel("target SoC: wanted at departure [%]")
    ax.set_ylabel("SoC at departure (or at end of run) [%]")
    ax.set_title(f"{sc.name}: SoC at departure")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig


def site_power_figure(result: RunResult) -> Figure:
    """Per site with PV or storage: EV charging, PV, storage and the net at the
    connection, as power; each line's energy over the run in the legend."""
    ts, sc = result.timeseries, result.scenario
    t = local_times(sc, ts["t_s"])
    step_h = sc.step_s / 3600.0

    def kwh(col: str) -> str:  # row 0 is the state at the start, not a step
        return f"{float(ts[col].iloc[1:].sum()) * step_h:,.1f} kWh"

    sites = [s for s in sc.sites if ts.get(f"site_{s.name}_pv_kw", pd.Series([0.0])).any()
             or ts.get(f"site_{s.name}_storage_kw", pd.Series([0.0])).any()]
    sites = sites or list(sc.sites[:1])
    fig = Figure(figsize=(11, 3.6 * len(sites) + 0.4))
    axes = fig.subplots(len(sites), 1, sharex=True, squeeze=False)
    for i, (ax, s) in enumerate(zip(axes[:, 0], sites, strict=True)):
        ev = f"site_{s.name}_kw"
        ax.plot(t, ts[ev], lw=1.2, label=f"EV charging ({kwh(ev)})")
        if f"site_{s.name}_pv_kw" in ts:
            pv, st, net = (f"site_{s.name}_{x}_kw" for x in ("pv", "storage", "net"))
            ax.fill_between(t, 0, ts[pv], color="gold", alpha=0.5,
                            label=f"PV at the site ({kwh(pv)})")
            ax.plot(t, ts[st], lw=1, color="purple", label="storage (+ charging)")
            ax.plot(t, ts[net], lw=1.2, color="black",
                    label=f"net at the connection ({kwh(net)})")
        limit = next((b.target_kw for b in sc.storage
                      if b.site == s.name and b.dispatch == "peak_shaving"), None)
        if limit is not None:
            ax.axhline(limit, color="red", ls="--", lw=1, label="storage import target")
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_title(f"{sc.name}: power at site {s.name}")
        _finish_time_axis(ax, sc, "power [kW]", "upper left", xlabel=i == len(sites) - 1)
    return fig


def plot_grid(result: RunResult, path: Path) -> Path:
    """Write :func:`grid_figure` to ``path``."""
    return save_figure(grid_figure(result), path)


def plot_ev_power(result: RunResult, path: Path) -> Path:
    """Write :func:`ev_power_figure` to ``path``."""
    return save_figure(ev_power_figure(result), path)


def plot_soc(result: RunResult, path: Path) -> Path:
    """Write :func:`soc_figure` to ``path``."""
    return save_figure(soc_figure(result), path)


def plot_site_energy(result: RunResult, path: Path) -> Path:
    """Write :func:`site_power_figure` to ``path`` (``site_energy.png`` in a run folder)."""
    return save_figure(site_power_figure(result), path)


def plot_all(result: RunResult, out: Path) -> list[Path]:
    """Write every plot of a run into ``out``."""
    with np.errstate(all="ignore"):
        paths = [plot_grid(result, out / "grid.png"),
                 plot_ev_power(result, out / "ev_power.png"),
                 plot_soc(result, out / "soc_at_departure.png")]
        if result.scenario.pv or result.scenario.storage:
            paths.append(plot_site_energy(result, out / "site_energy.png"))
    return paths
