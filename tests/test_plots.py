"""Run and compare figures: units on the axes, one labelled time zone, PV and storage,
no negative axes for counts, net cost beside gross (checked on matplotlib objects)."""

from __future__ import annotations

import dataclasses
from datetime import UTC
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from evtwin.sim import Twin, load_scenario
from evtwin.sim.compare import FIGURE_KPIS, StrategyRun, compare, kpi_figure
from evtwin.sim.compare import grid_figure as compare_grid_figure
from evtwin.sim.kpis import KPI_LABELS, format_kpi
from evtwin.sim.plots import (
    ev_power_figure,
    floor_at_zero,
    grid_figure,
    local_times,
    plot_all,
    site_power_figure,
    soc_figure,
    time_axis_label,
)
from evtwin.sim.runner import RunResult

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "scenarios" / "demo.toml")
PV_STORAGE = str(ROOT / "scenarios" / "pv_storage.toml")
V2G_PRICE = str(ROOT / "scenarios" / "v2g_price.toml")
CHEAP = {"run.transport": "direct"}


@pytest.fixture(scope="module")
def pv_result() -> RunResult:
    """Two hours of pv_storage (starts 05:00+02:00): PV, storage, two sites with limits."""
    return Twin(load_scenario(PV_STORAGE, {**CHEAP, "duration_h": 2})).run()


@pytest.fixture(scope="module")
def v2g_result() -> RunResult:
    """Four evening hours of v2g_price: bidirectional EVs plugged in with a 30 % floor."""
    return Twin(load_scenario(V2G_PRICE, {**CHEAP, "duration_h": 4})).run()


@pytest.fixture(scope="module")
def v2g_runs() -> list[StrategyRun]:
    """v2g_price to 03:00 under price and v2g_price: V2G sells at the evening peak."""
    return compare(V2G_PRICE, ["price", "v2g_price"], overrides={**CHEAP, "duration_h": 12},
                   workers=1)


def _legend_labels(ax: Axes) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def _tick_text(ax: Axes, when: pd.Timestamp) -> str:
    """What the x axis writes at the instant ``when``."""
    return str(ax.xaxis.get_major_formatter()(mdates.date2num(when.to_pydatetime())))


# ----------------------------------------------------------------------------- time zone
def test_local_times_follow_a_named_zone_across_daylight_saving() -> None:
    # 29 March 2026: Berlin's clocks go from 02:00 to 03:00.
    sc = load_scenario(DEMO, {"start": "2026-03-29T00:00:00", "timezone": "Europe/Berlin"})
    t = local_times(sc, [0.0, 3 * 3600.0])
    assert [x.hour for x in t] == [0, 4]
    assert time_axis_label(sc) == "local time (Europe/Berlin)"


def test_without_a_zone_the_start_offset_is_kept_and_named() -> None:
    sc = load_scenario(DEMO, {"start": "2026-03-29T00:00:00+01:00"})
    assert [x.hour for x in local_times(sc, [0.0, 3 * 3600.0])] == [0, 3]
    assert time_axis_label(sc) == "local time (UTC+01:00)"
    utc = load_scenario(DEMO, {"start": "2026-01-20T15:00:00"})
    assert time_axis_label(utc) == "simulated time (UTC)"
    assert local_times(utc, pd.Series([60.0]))[0] == pd.Timestamp("2026-01-20 15:01", tz=UTC)


@pytest.mark.slow
def test_run_figures_are_in_the_scenarios_local_time_and_say_so(pv_result: RunResult) -> None:
    start = pd.Timestamp(pv_result.scenario.start)  # 05:00+02:00, i.e. 03:00 UTC
    for fig in (grid_figure(pv_result), ev_power_figure(pv_result),
                site_power_figure(pv_result)):
        bottom = fig.axes[-1] if fig.axes[-1].get_xlabel() else fig.axes[-2]
        assert bottom.get_xlabel() == "local time (UTC+02:00)"
        assert _tick_text(bottom, start) == "15 05:00"
    berlin = dataclasses.replace(pv_result, scenario=pv_result.scenario.model_copy(
        update={"timezone": "Europe/Berlin"}))
    ax = ev_power_figure(berlin).axes[1]
    assert ax.get_xlabel() == "local time (Europe/Berlin)"
    assert _tick_text(ax, start) == "15 05:00"


# ------------------------------------------------------------------------------ run plots
@pytest.mark.slow
def test_ev_power_shows_pv_storage_and_each_site_against_its_own_limit(
        pv_result: RunResult) -> None:
    ts, sc = pv_result.timeseries, pv_result.scenario
    fig = ev_power_figure(pv_result)
    ax_ev, ax_feeder = fig.axes
    feeder_labels = _legend_labels(ax_feeder)
    assert any(lbl.startswith("PV generation") for lbl in feeder_labels)
    assert any(lbl.startswith("stationary storage") for lbl in feeder_labels)
    # The base load has its own panel: it cannot dwarf the EV power.
    assert "household base load" in feeder_labels
    assert "household base load" not in _legend_labels(ax_ev)
    lines = {line.get_label(): line for line in ax_ev.get_lines()}
    for s in sc.sites:  # not stacked: each site's line is that site's own power
        np.testing.assert_allclose(lines[f"EVs at {s.name}"].get_ydata(),
                                   ts[f"site_{s.name}_kw"])
        assert np.nanmax(lines[f"{s.name} import limit"].get_ydata()) == s.limit_kw
    storage = next(line for line in ax_feeder.get_lines()
                   if line.get_label().startswith("stationary storage"))
    np.testing.assert_allclose(storage.get_ydata(), ts["storage_kw"])
    assert ts["storage_kw"].abs().max() > 0 and ts["pv_kw"].max() > 0  # something to see
    for ax in fig.axes:
        assert "[kW]" in ax.get_ylabel()
        assert ax.get_ylim()[0] == 0  # nothing negative here: the axes start at 0


@pytest.mark.slow
def test_ev_power_without_pv_or_storage_draws_none(v2g_result: RunResult) -> None:
    labels = _legend_labels(ev_power_figure(v2g_result).axes[1])
    assert labels == ["household base load"]


@pytest.mark.slow
def test_site_figure_is_titled_for_the_power_it_plots(pv_result: RunResult) -> None:
    (ax,) = site_power_figure(pv_result).axes
    assert "power at site office" in ax.get_title()
    assert "energy" not in ax.get_title()
    assert ax.get_ylabel() == "power [kW]"
    pv = next(lbl for lbl in _legend_labels(ax) if lbl.startswith("PV at the site"))
    step_h = pv_result.scenario.step_s / 3600
    kwh = pv_result.timeseries["site_office_pv_kw"].iloc[1:].sum() * step_h
    assert f"({kwh:,.1f} kWh)" in pv


@pytest.mark.slow
def test_soc_figure_draws_the_v2g_floor_only_where_v2g_applies(
        v2g_result: RunResult, pv_result: RunResult) -> None:
    s = v2g_result.sessions
    assert s["bidirectional"].any()
    (ax,) = soc_figure(v2g_result).axes
    floors = [line for line in ax.get_lines()
              if line.get_label().startswith("driver minimum SoC")]
    assert [tuple(line.get_ydata()) for line in floors] == [(30.0, 30.0)]
    assert any(lbl.startswith("target SoC") for lbl in _legend_labels(ax))
    assert any(" V2G (" in lbl for lbl in _legend_labels(ax))  # V2G visits marked apart
    assert "[%]" in ax.get_xlabel() and "[%]" in ax.get_ylabel()
    (ax,) = soc_figure(pv_result).axes  # no bidirectional site: no floor drawn
    assert not any(lbl.startswith("driver minimum SoC") for lbl in _legend_labels(ax))


def test_an_all_zero_panel_starts_at_zero() -> None:
    ax = Figure().subplots()
    ax.plot([0, 1], [0.0, 0.0])
    floor_at_zero(ax, [0.0, 0.0])
    assert ax.get_ylim() == (0.0, 1.0)
    ax = Figure().subplots()
    ax.plot([0, 1], [-2.0, 3.0])
    floor_at_zero(ax, [-2.0, 3.0])  # negative amounts (V2G) keep their range
    assert ax.get_ylim()[0] < -2.0


@pytest.mark.slow
def test_plot_all_writes_every_figure(pv_result: RunResult, tmp_path: Path) -> None:
    paths = plot_all(pv_result, tmp_path)
    assert {p.name for p in paths} == {"grid.png", "ev_power.png", "soc_at_departure.png",
                                       "site_energy.png"}
    assert all(p.stat().st_size > 10_000 for p in paths)


# --------------------------------------------------------------------------- compare plots
def _panels(fig: Figure) -> dict[str, Axes]:
    return {ax.get_label(): ax for ax in fig.axes if ax.get_label() in FIGURE_KPIS}


@pytest.mark.slow
def test_compare_figure_plots_net_cost_beside_gross(v2g_runs: list[StrategyRun]) -> None:
    sc = load_scenario(V2G_PRICE, {**CHEAP, "duration_h": 12})
    panels = _panels(kpi_figure(sc, v2g_runs))
    assert set(panels) == set(FIGURE_KPIS)
    by = {r.strategy: r.kpis for r in v2g_runs}
    # V2G earned something: net below gross, and the cheapest by net is not by gross.
    assert by["v2g_price"]["net_energy_cost"] < by["v2g_price"]["energy_cost"]
    for key in ("energy_cost", "net_energy_cost"):
        heights = [bar.get_height() for bar in panels[key].patches]
        assert heights == pytest.approx([r.kpis[key] for r in v2g_runs])
        texts = [t.get_text() for t in panels[key].texts]
        assert texts == [format_kpi(r.kpis[key], "cur") for r in v2g_runs]
        assert "[EUR]" in panels[key].get_title() and "[EUR]" in panels[key].get_ylabel()
    net = [bar.get_height() for bar in panels["net_energy_cost"].patches]
    assert [r.strategy for r in v2g_runs][int(np.argmin(net))] == "v2g_price"


@pytest.mark.slow
def test_compare_axes_carry_units_and_amounts_start_at_zero(
        v2g_runs: list[StrategyRun]) -> None:
    sc = load_scenario(V2G_PRICE, {**CHEAP, "duration_h": 12})
    for key, ax in _panels(kpi_figure(sc, v2g_runs)).items():
        unit = KPI_LABELS[key][1]
        assert f"[{'EUR' if unit == 'cur' else unit}]" in ax.get_ylabel(), key
        values = [r.kpis[key] for r in v2g_runs]
        if key != "v_min_pu" and min(values) >= 0:
            assert ax.get_ylim()[0] == 0, key  # not auto-scaled to the differences
        if unit == "min" and max(values) == 0:
            assert ax.get_ylim() == (0.0, 1.0), key  # no negative minutes


@pytest.mark.slow
def test_compare_time_series_are_in_the_scenarios_zone(v2g_runs: list[StrategyRun]) -> None:
    sc = load_scenario(V2G_PRICE, {**CHEAP, "duration_h": 12})  # start without an offset: UTC
    ax = compare_grid_figure(sc, v2g_runs).axes[-1]
    assert ax.get_xlabel() == "simulated time (UTC)"
    assert _tick_text(ax, pd.Timestamp(sc.start)) == "20 15:00"
    berlin = load_scenario(V2G_PRICE, {**CHEAP, "duration_h": 12, "timezone": "Europe/Berlin"})
    ax = compare_grid_figure(berlin, v2g_runs).axes[-1]
    assert ax.get_xlabel() == "local time (Europe/Berlin)"
    assert _tick_text(ax, pd.Timestamp(berlin.start)) == "20 15:00"
    assert ax.get_ylabel() == "min bus voltage [pu]"
