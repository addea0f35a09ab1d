"""``evtwin compare``: one scenario under several strategies, side by side."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from .scenario import Scenario, load_scenario

#: KPIs shown in the comparison figure, with their axis labels.
FIGURE_KPIS = {
    "peak_trafo_loading_percent": "peak transformer loading [%]",
    "v_min_pu": "min voltage [pu]",
    "minutes_voltage_violation": "minutes outside voltage band",
    "minutes_thermal_violation": "minutes over thermal limits",
    "energy_unmet_share": "energy unmet [%]",
    "energy_cost": "energy cost",
}


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


def plot_comparison(sc: Scenario, runs: list[StrategyRun], out: Path) -> list[Path]:
    """Bar charts of the main KPIs and overlaid grid time series, one colour per strategy."""
    names = [r.strategy for r in runs]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, label) in zip(axes.flat, FIGURE_KPIS.items(), strict=True):
        values = [r.kpis.get(key, float("nan")) for r in runs]
        ax.bar(names, values, color=[colours[i % len(colours)] for i in range(len(runs))])
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        if key == "peak_trafo_loading_percent":
            ax.axhline(sc.grid.trafo_loading_max_percent, color="red", ls="--", lw=1)
        if key == "v_min_pu":
            ax.axhline(sc.grid.v_min_pu, color="red", ls="--", lw=1)
            ax.set_ylim(min(min(values), sc.grid.v_min_pu) - 0.02, 1.0)
    fig.suptitle(f"{sc.name}: strategies compared")
    fig.tight_layout()
    kpi_png = out / "compare_kpis.png"
    fig.savefig(kpi_png, dpi=110)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    for i, run in enumerate(runs):
        t = pd.to_datetime(sc.start) + pd.to_timedelta(run.timeseries["t_s"], unit="s")
        c = colours[i % len(colours)]
        ax1.plot(t, run.timeseries["trafo_loading_percent"], color=c, lw=1, label=run.strategy)
        ax2.plot(t, run.timeseries["vm_min_pu"], color=c, lw=1, label=run.strategy)
    ax1.axhline(sc.grid.trafo_loading_max_percent, color="red", ls="--", lw=1, label="limit")
    ax2.axhline(sc.grid.v_min_pu, color="red", ls="--", lw=1, label="limit")
    ax1.set_ylabel("transformer loading [%]")
    ax2.set_ylabel("min bus voltage [pu]")
    ax2.set_xlabel("simulated time")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{sc.name}: feeder under each strategy")
    fig.tight_layout()
    ts_png = out / "compare_grid.png"
    fig.savefig(ts_png, dpi=110)
    plt.close(fig)
    return [kpi_png, ts_png]
