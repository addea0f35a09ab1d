"""Result plots (matplotlib, Agg backend: files only, no screen needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .runner import RunResult


def _times(result: RunResult, t_s: pd.Series) -> pd.DatetimeIndex:
    return pd.to_datetime(result.scenario.start) + pd.to_timedelta(t_s, unit="s")


def _finish_time_axis(ax: plt.Axes, ylabel: str, legend_loc: Literal["upper left", "lower left"],
                      *, xlabel: bool) -> None:
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel("simulated time (UTC)")
    ax.legend(loc=legend_loc, fontsize=8)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%d %H:%M"))
    ax.grid(True, alpha=0.3)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grid(result: RunResult, path: Path) -> Path:
    """Feeder voltage envelope and transformer/line loading over time, limits drawn."""
    ts, g = result.timeseries, result.scenario.grid
    t = _times(result, ts["t_s"])
    unbalanced = "vuf_max_percent" in ts
    if unbalanced:
        fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 9.5), sharex=True)
    else:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    ax1.fill_between(t, ts["vm_min_pu"], ts["vm_max_pu"], alpha=0.35, label="bus voltage range")
    if unbalanced:  # each phase's lowest bus voltage
        for k in (1, 2, 3):
            ax1.plot(t, ts[f"vm_min_l{k}_pu"], lw=1, label=f"min voltage L{k}")
    else:
        ax1.plot(t, ts["vm_min_pu"], lw=1, label="min bus voltage")
    ax1.axhline(g.v_min_pu, color="red", ls="--", lw=1,
                label=f"limits {g.v_min_pu}-{g.v_max_pu} pu")
    ax1.axhline(g.v_max_pu, color="red", ls="--", lw=1)
    ax1.set_title(f"{result.scenario.name}: feeder voltage envelope "
                  f"(strategy {result.scenario.control.strategy})")
    _finish_time_axis(ax1, "voltage [pu]", "lower left", xlabel=False)
    ax2.plot(t, ts["trafo_loading_percent"], label="transformer loading")
    ax2.plot(t, ts["line_loading_max_percent"], lw=1, alpha=0.8, label="max line loading")
    ax2.axhline(g.trafo_loading_max_percent, color="red", ls="--", lw=1, label="thermal limit")
    _finish_time_axis(ax2, "loading [%] (most loaded phase)" if unbalanced else "loading [%]",
                      "upper left", xlabel=not unbalanced)
    if unbalanced:
        ax3.plot(t, ts["vuf_max_percent"], color="tab:purple",
                 label="highest voltage unbalance factor")
        ax3.axhline(g.vuf_max_percent, color="red", ls="--", lw=1,
                    label=f"limit {g.vuf_max_percent:g} % (EN 50160)")
        _finish_time_axis(ax3, "unbalance [%]", "upper left", xlabel=True)
        ax4 = ax3.twinx()
        ax4.plot(t, ts["neutral_current_max_a"], color="tab:gray", lw=1)
        ax4.set_ylabel("highest neutral current [A] (grey)")
    return _save(fig, path)


def plot_ev_power(result: RunResult, path: Path) -> Path:
    """EV charging power stacked by site, with base load and site limits."""
    ts, sc = result.timeseries, result.scenario
    t = _times(result, ts["t_s"])
    fig, ax = plt.subplots(figsize=(11, 4.5))
    cols = [f"site_{s.name}_kw" for s in sc.sites]
    ax.stackplot(t, *[ts[c] for c in cols], labels=[f"EVs at {s.name}" for s in sc.sites],
                 alpha=0.8)
    ax.plot(t, ts["base_kw"], color="black", lw=1, label="household base load")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(sc.sites):
        if s.limit_kw is not None:
            ax.axhline(s.limit_kw, ls="--", lw=1.2, color=colours[i % len(colours)],
                       label=f"{s.name} import limit")
    ax.set_title(f"{sc.name}: EV charging power (stacked by site)")
    _finish_time_axis(ax, "power [kW]", "upper left", xlabel=True)
    return _save(fig, path)


def plot_soc(result: RunResult, path: Path) -> Path:
    """SoC at departure against the SoC the driver wanted, per visit."""
    s = result.sessions
    fig, ax = plt.subplots(figsize=(7, 5))
    if not s.empty:
        for outcome, marker in (("served", "o"), ("open", "^"), ("turned_away", "x")):
            sel = s[s["outcome"] == outcome]
            if len(sel):
                ax.scatter(sel["target_soc"] * 100, sel["soc_final"] * 100, marker=marker,
                           alpha=0.7, label=f"{outcome} ({len(sel)})")
    ax.plot([0, 100], [0, 100], color="grey", lw=1, ls=":", label="got what was wanted")
    ax.set_xlim(0, 102)
    ax.set_ylim(0, 102)
    ax.set_xlabel("SoC wanted at departure [%]")
    ax.set_ylabel("SoC at departure (or at end of run) [%]")
    ax.set_title(f"{result.scenario.name}: SoC at departure")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_site_energy(result: RunResult, path: Path) -> Path:
    """Per site with PV or storage: EV charging, PV, storage and the net at the connection."""
    ts, sc = result.timeseries, result.scenario
    t = _times(result, ts["t_s"])
    sites = [s for s in sc.sites if ts.get(f"site_{s.name}_pv_kw", pd.Series([0.0])).any()
             or ts.get(f"site_{s.name}_storage_kw", pd.Series([0.0])).any()]
    sites = sites or list(sc.sites[:1])
    fig, axes = plt.subplots(len(sites), 1, figsize=(11, 3.6 * len(sites)), sharex=True,
                             squeeze=False)
    for i, (ax, s) in enumerate(zip(axes[:, 0], sites, strict=True)):
        ax.plot(t, ts[f"site_{s.name}_kw"], lw=1.2, label="EV charging")
        if f"site_{s.name}_pv_kw" in ts:
            ax.fill_between(t, 0, ts[f"site_{s.name}_pv_kw"], color="gold", alpha=0.5,
                            label="PV at the site")
            ax.plot(t, ts[f"site_{s.name}_storage_kw"], lw=1, color="purple",
                    label="storage (+ charging)")
            ax.plot(t, ts[f"site_{s.name}_net_kw"], lw=1.2, color="black",
                    label="net at the connection")
        limit = next((b.target_kw for b in sc.storage
                      if b.site == s.name and b.dispatch == "peak_shaving"), None)
        if limit is not None:
            ax.axhline(limit, color="red", ls="--", lw=1, label="storage import target")
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_title(f"{sc.name}: energy at site {s.name}")
        _finish_time_axis(ax, "power [kW]", "upper left", xlabel=i == len(sites) - 1)
    return _save(fig, path)


def plot_all(result: RunResult, out: Path) -> list[Path]:
    """Write every plot of a run into ``out``."""
    np.seterr(all="ignore")
    paths = [plot_grid(result, out / "grid.png"), plot_ev_power(result, out / "ev_power.png"),
             plot_soc(result, out / "soc_at_departure.png")]
    if result.scenario.pv or result.scenario.storage:
        paths.append(plot_site_energy(result, out / "site_energy.png"))
    return paths
