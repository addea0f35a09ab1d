"""``evtwin compare``: one scenario under several strategies, side by side."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .kpis import KPI_LABELS, display_unit, format_kpi
from .plots import (
    COLOURS,
    floor_at_zero,
    format_time_axis,
    local_times,
    save_figure,
    v2g_peak_target_percent,
)
from .scenario import Scenario, load_scenario

#: KPIs shown in the comparison figure, one panel each, with their panel titles
#: (the unit comes from :data:`~evtwin.sim.kpis.KPI_LABELS`).
FIGURE_KPIS = {
    "peak_trafo_loading_percent": "peak transformer loading",
    "v_min_pu": "min voltage",
    "minutes_voltage_violation": "time outside voltage band",
    "minutes_thermal_violation": "time over thermal limits",
    "energy_unmet_percent": "energy unmet (share of requested)",
    "energy_delivered_kwh": "energy delivered to batteries",
    "energy_cost": "gross energy cost (imports)",
    "net_energy_cost": "net energy cost (imports - V2G revenue)",
}

#: Figure KPIs that are not amounts: their value axis need not start at 0.
_NOT_AMOUNTS = {"v_min_pu"}


@dataclass
class StrategyRun:
    """One strategy's KPIs and time series."""

    strategy: str
    kpis: dict[str, float]
    performance: dict[str, float]
    timeseries: pd.DataFrame


def _run_one(path: str, overrides: dict[str, Any], strategy: str) -> StrategyRun:
    """Worker: a whole twin run (its own event loop, CSMS and sockets)."""
    from .runner import Twin

    sc = load_scenario(path, {**overrides, "control.strategy": strategy})
    result = Twin(sc).run()
    return StrategyRun(strategy, result.kpis, result.performance, result.timeseries)


def compare(path: str, strategies: list[str], *, overrides: dict[str, Any] | None = None,
            workers: int | None = None) -> list[StrategyRun]:
    """Run ``path`` once per strategy in parallel processes; results in the given order."""
    overrides = overrides or {}
    for strategy in strategies:  # validate every name before starting anything
        load_scenario(path, {**overrides, "control.strategy": strategy})
    workers = workers or min(len(strategies), os.cpu_count() or 1)
    if workers <= 1:
        return [_run_one(path, overrides, s) for s in strategies]
    # The executor sweep and check use too (spawned workers that leave Ctrl-C to us).
    from .sweep import make_backend

    backend = make_backend(workers=workers)
    interrupted = False
    try:
        futures = [backend.submit_call(_run_one, path, overrides, s) for s in strategies]
        return [f.result() for f in futures]
    except BaseException:  # Ctrl-C or a failed run: do not wait for the others
        interrupted = True
        raise
    finally:
        backend.close(interrupted=interrupted)


def comparison_table(runs: list[StrategyRun]) -> pd.DataFrame:
    """One row per strategy, one column per KPI (and wall time)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"strategy": run.strategy, **run.kpis}
        row["wall_time_s"] = run.performance["wall_time_s"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("strategy")


def kpi_figure(sc: Scenario, runs: list[StrategyRun]) -> Figure:
    """One bar panel per KPI of :data:`FIGURE_KPIS`, one colour per strategy.

    Each panel's axis carries the KPI's unit and is labelled with its key
    (``ax.get_label()``); amounts start at 0 so small differences stay small,
    and every bar carries its value.
    """
    names = [r.strategy for r in runs]
    colours = [COLOURS[i % len(COLOURS)] for i in range(len(runs))]
    fig = Figure(figsize=(15, 7.5))
    axes = fig.subplots(2, 4)
    for ax, (key, title) in zip(axes.flat, FIGURE_KPIS.items(), strict=True):
        unit = display_unit(KPI_LABELS[key][1], sc.prices.currency)
        values = [float(r.kpis.get(key, float("nan"))) for r in runs]
        bars = ax.bar(names, values, color=colours)
        ax.bar_label(bars, labels=[format_kpi(v, KPI_LABELS[key][1]) for v in values],
                     fontsize=8, padding=2)
        ax.set_label(key)
        ax.set_title(f"{title} [{unit}]", fontsize=10)
        ax.set_ylabel(f"{KPI_LABELS[key][0].strip()} [{unit}]", fontsize=8)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        finite = [v for v in values if v == v]
        if key == "peak_trafo_loading_percent":
            ax.axhline(sc.grid.trafo_loading_max_percent, color="red", ls="--", lw=1,
                       label="thermal limit")
            finite.append(sc.grid.trafo_loading_max_percent)
        if key == "v_min_pu":
            ax.axhline(sc.grid.v_min_pu, color="red", ls="--", lw=1, label="lower limit")
            low = min([*finite, sc.grid.v_min_pu])
            ax.set_ylim(low - 0.02, max([*finite, 1.0]) + 0.01)
        if key not in _NOT_AMOUNTS:
            _amount_axis(ax, finite)
        if KPI_LABELS[key][1] in ("", "min"):  # counts of things or of minutes
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{sc.name}: strategies compared")
    return fig


def _amount_axis(ax: Axes, values: list[float]) -> None:
    """Value axis from 0 (or from below 0 for negative amounts), headroom for the labels."""
    low = min([0.0, *values])
    high = max([0.0, *values])
    if low == high == 0.0:
        ax.set_ylim(0.0, 1.0)
        return
    span = high - low
    ax.set_ylim(low - (0.12 * span if low < 0 else 0.0), high + 0.12 * span)


def grid_figure(sc: Scenario, runs: list[StrategyRun]) -> Figure:
    """Transformer loading and minimum voltage over time, one line per strategy."""
    fig = Figure(figsize=(12, 7))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for i, run in enumerate(runs):
        t = local_times(sc, run.timeseries["t_s"])
        c = COLOURS[i % len(COLOURS)]
        ax1.plot(t, run.timeseries["trafo_loading_percent"], color=c, lw=1, label=run.strategy)
        ax2.plot(t, run.timeseries["vm_min_pu"], color=c, lw=1, label=run.strategy)
    ax1.axhline(sc.grid.trafo_loading_max_percent, color="red", ls="--", lw=1, label="limit")
    if any(run.strategy == "v2g_peak_shaving" for run in runs):
        ax1.axhline(v2g_peak_target_percent(sc), color="green", ls=":", lw=1,
                    label="v2g_peak_shaving target")
    ax2.axhline(sc.grid.v_min_pu, color="red", ls="--", lw=1, label="limit")
    ax1.set_ylabel("transformer loading [%]")
    ax2.set_ylabel("min bus voltage [pu]")
    floor_at_zero(ax1, [v for r in runs for v in r.timeseries["trafo_loading_percent"]])
    format_time_axis(ax1, sc, xlabel=False)
    format_time_axis(ax2, sc, xlabel=True)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{sc.name}: feeder under each strategy")
    return fig


def plot_comparison(sc: Scenario, runs: list[StrategyRun], out: Path) -> list[Path]:
    """Write :func:`kpi_figure` (``compare_kpis.png``) and :func:`grid_figure`
    (``compare_grid.png``) into ``out``."""
    return [save_figure(kpi_figure(sc, runs), out / "compare_kpis.png"),
            save_figure(grid_figure(sc, runs), out / "compare_grid.png")]
