"""PV generation, stationary storage and their place in the feeder, the scenario and the run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from evtwin.agents.storage import StationaryBattery
from evtwin.grid import Feeder, GridError, PVProfile, load_network, read_pv_csv
from evtwin.sim import ScenarioError, Twin, load_scenario
from evtwin.sim.runner import RunResult

ROOT = Path(__file__).resolve().parents[1]
PV_STORAGE = ROOT / "scenarios" / "pv_storage.toml"
JUNE = datetime(2026, 6, 21)
JANUARY = datetime(2026, 1, 20)


# --------------------------------------------------------------------------- PV profile
def _clear_day(start: datetime, step_s: int = 60) -> np.ndarray:
    n = 24 * 3600 // step_s + 1
    return PVProfile(cloudiness=0.0).series_pu(start, n, step_s, np.random.default_rng(0))


def test_clear_sky_pv_is_zero_at_night_and_peaks_at_solar_noon() -> None:
    pv = _clear_day(JUNE)
    hours = np.arange(len(pv)) / 60.0
    assert np.all(pv[(hours < 3.5) | (hours > 21.5)] == 0.0)
    assert abs(hours[np.argmax(pv)] - 12.5) < 0.1  # the profile's default solar noon
    assert 0.6 < pv.max() <= 0.85  # never above the performance ratio


def test_clear_sky_daily_yield_is_plausible_for_central_europe() -> None:
    # Horizontal plane at 51 N with PR 0.85: about 6-8 kWh/kWp on a clear June
    # day and about 1-1.5 in January.
    june = _clear_day(JUNE)[1:].sum() / 60.0
    january = _clear_day(JANUARY)[1:].sum() / 60.0
    assert 6.0 < june < 8.0
    assert 0.8 < january < 1.8


def test_pv_energy_does_not_depend_on_the_step() -> None:
    fine = _clear_day(JUNE, 60)[1:].sum() / 60.0
    coarse = _clear_day(JUNE, 900)[1:].sum() / 4.0
    assert coarse == pytest.approx(fine, rel=0.01)


def test_clouds_cut_the_yield_and_the_same_seed_gives_the_same_sky() -> None:
    def week(cloudiness: float, seed: int) -> np.ndarray:
        return PVProfile(cloudiness=cloudiness).series_pu(
            JUNE, 7 * 96 + 1, 900, np.random.default_rng(seed))

    clear, cloudy = week(0.0, 1).sum(), week(0.7, 1).sum()
    assert cloudy < 0.8 * clear
    np.testing.assert_array_equal(week(0.4, 5), week(0.4, 5))
    assert not np.array_equal(week(0.4, 5), week(0.4, 6))
    assert (week(0.4, 5) >= 0).all()


def test_pv_profile_file_is_interpolated_onto_the_steps(tmp_path: Path) -> None:
    path = tmp_path / "pv.csv"
    path.write_text("time,pu\n2026-06-21T10:00:00Z,0.2\n2026-06-21T11:00:00Z,0.6\n")
    start = datetime(2026, 6, 21, 10, tzinfo=UTC)
    kw = read_pv_csv(path, start, 5, 900, peak_kw=10.0)
    # Row 0 is the start instant, then each step's mean (2 -> 6 kW over the hour).
    np.testing.assert_allclose(kw, [2.0, 2.5, 3.5, 4.5, 5.5])
    hourly = read_pv_csv(path, start, 2, 3600, peak_kw=10.0)
    assert hourly[1] == pytest.approx(4.0)  # the same energy at any step
    with pytest.raises(GridError, match="must cover the run"):
        read_pv_csv(path, start, 6, 900, peak_kw=10.0)
    # Local time across the autumn clock change: offsets change, the energy does not.
    dst = tmp_path / "dst.csv"
    dst.write_text("time,p_kw\n2026-10-25T01:00:00+02:00,1\n2026-10-25T02:00:00+02:00,1\n"
                   "2026-10-25T02:00:00+01:00,1\n2026-10-25T04:00:00+01:00,1\n")
    night = datetime(2026, 10, 24, 23, tzinfo=UTC)
    assert read_pv_csv(dst, night, 5, 3600, peak_kw=1.0)[1:].sum() == pytest.approx(4.0)
    gap = tmp_path / "gap.csv"
    gap.write_text("time,p_kw\n2026-06-21T10:00:00Z,1\n2026-06-21T10:30:00Z,\n"
                   "2026-06-21T11:00:00Z,1\n")
    with pytest.raises(GridError, match=r"gap\.csv: the PV profile has empty"):
        read_pv_csv(gap, start, 5, 900, peak_kw=1.0)
    bad = tmp_path / "bad.csv"
    bad.write_text("when,kw\n")
    with pytest.raises(GridError, match=r"bad\.csv: a PV profile needs a 'time' column"):
        read_pv_csv(bad, start, 5, 900, peak_kw=10.0)


# --------------------------------------------------------------------------- storage
def test_peak_shaving_battery_holds_the_import_target_while_it_has_energy() -> None:
    b = StationaryBattery("b", "s", capacity_kwh=20, power_kw=10, soc=0.9, soc_min=0.1,
                          target_kw=30, efficiency=0.9)
    step_h = 1 / 60
    nets = []
    for _ in range(600):
        p = b.step(38.0, 0.3, step_h)  # 8 kW above the target
        nets.append(38.0 + p)
    nets_a = np.array(nets)
    held = nets_a <= 30.0 + 1e-9
    # It held the target until empty, then stopped at its minimum SoC, never below.
    assert held[:100].all() and not held[-1]
    assert b.soc == pytest.approx(0.1)
    # Energy balance: the cells lost discharged / efficiency.
    assert b.discharged_kwh == pytest.approx((0.9 - 0.1) * 20 * 0.9)
    # Below the target it recharges with what is left, never above the target.
    p = b.step(12.0, 0.3, step_h)
    assert p == pytest.approx(10.0) and 12.0 + p <= 30.0


def test_self_consumption_battery_stores_surplus_only() -> None:
    b = StationaryBattery("b", "s", capacity_kwh=10, power_kw=5, soc=0.5,
                          dispatch="self_consumption")
    assert b.step(-3.0, 0.3, 0.25) == pytest.approx(3.0)  # 3 kW surplus stored
    assert b.step(2.0, 0.3, 0.25) == pytest.approx(-2.0)  # covers 2 kW of demand
    assert b.step(-20.0, 0.3, 0.25) == pytest.approx(5.0)  # inverter limit


def test_price_battery_trades_on_the_spread_and_idles_on_a_flat_price() -> None:
    b = StationaryBattery("b", "s", capacity_kwh=10, power_kw=5, soc=0.5, dispatch="price",
                          charge_below_price=0.2, discharge_above_price=0.4)
    assert b.step(3.0, 0.15, 0.25) == pytest.approx(5.0)
    assert b.step(3.0, 0.30, 0.25) == 0.0
    assert b.step(3.0, 0.45, 0.25) == pytest.approx(-3.0)  # covers demand, never exports
    flat = StationaryBattery("f", "s", capacity_kwh=10, power_kw=5, dispatch="price",
                             charge_below_price=0.3, discharge_above_price=0.3)
    assert flat.step(3.0, 0.3, 0.25) == 0.0


def test_a_battery_never_charges_the_site_over_its_connection_limit() -> None:
    b = StationaryBattery("b", "s", capacity_kwh=100, power_kw=50, soc=0.2, dispatch="price",
                          charge_below_price=0.2, discharge_above_price=0.4)
    assert b.step(35.0, 0.1, 0.25, import_cap_kw=40.0) == pytest.approx(5.0)
    assert b.step(45.0, 0.1, 0.25, import_cap_kw=40.0) == 0.0  # already over: no charging
    assert b.step(10.0, 0.1, 0.25) == pytest.approx(50.0)  # no limit: the inverter's rating


# --------------------------------------------------------------------------- feeder
@pytest.mark.parametrize("engine", ["pgm", "pandapower"])
def test_pv_feeding_in_unloads_the_transformer_and_lifts_voltage(engine: Any) -> None:
    net = load_network("kerber_dorfnetz")
    far = int(net.load.bus.iloc[-1])
    feeder = Feeder(net, n_stations=2, engine=engine, der_buses=[far, far])
    base = feeder.solve(13 * 3600, np.zeros(2), np.random.default_rng(3),
                        der_p_kw=[0.0, 0.0])
    sunny = feeder.solve(13 * 3600, np.zeros(2), np.random.default_rng(3),
                         der_p_kw=[-15.0, -15.0])
    assert sunny.trafo_loading_percent < base.trafo_loading_percent
    row = list(feeder.bus_index).index(far)
    assert sunny.bus_vm_pu[row] > base.bus_vm_pu[row]
    with pytest.raises(ValueError, match="der_p_kw must have shape"):
        feeder.solve(0, np.zeros(2), np.random.default_rng(3), der_p_kw=[1.0])


def test_both_engines_agree_with_distributed_resources() -> None:
    net = load_network("kerber_dorfnetz")
    results = []
    for engine in ("pgm", "pandapower"):
        f = Feeder(net, n_stations=3, engine=engine, der_buses=[5, 39])
        results.append(f.solve(19 * 3600, np.array([11.0, 7.0, 3.0]), np.random.default_rng(9),
                               der_p_kw=[-20.0, 12.0]))
    np.testing.assert_allclose(results[0].bus_vm_pu, results[1].bus_vm_pu, atol=1e-4)
    assert results[0].trafo_loading_percent == pytest.approx(
        results[1].trafo_loading_percent, rel=1e-3)


# --------------------------------------------------------------------------- scenario
SCENARIO = """\
seed = 3
[ev]
count = 4
[[sites]]
name = "office"
stations = 2
"""


@pytest.mark.parametrize(("snippet", "field", "message"), [
    ('[[pv]]\nname = "p"\npeak_kw = 5\n', "pv.0", "give site or buses"),
    ('[[pv]]\nname = "p"\nsite = "depot"\npeak_kw = 5\n', "pv.0.site", "no site 'depot'"),
    ('[[pv]]\nname = "p"\nsite = "office"\npeak_kw = 5\nprofile = "csv"\n', "pv.0.csv",
     "give the file"),
    ('[[storage]]\nname = "b"\nsite = "office"\ncapacity_kwh = 10\npower_kw = 5\n',
     "storage.0.target_kw", "peak_shaving needs target_kw"),
    ('[[storage]]\nname = "b"\nsite = "office"\ncapacity_kwh = 10\npower_kw = 5\n'
     'dispatch = "self_consumption"\nsoc_min = 0.9\nsoc_max = 0.5\n', "storage.0",
     "soc_min must be below soc_max"),
])
def test_pv_and_storage_errors_name_their_field(tmp_path: Path, snippet: str, field: str,
                                                message: str) -> None:
    path = tmp_path / "case.toml"
    path.write_text(SCENARIO + snippet)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert any(f == field and message in m for f, m in info.value.problems), info.value.problems
    assert str(path) in str(info.value)


def test_a_pv_bus_that_does_not_exist_is_named(tmp_path: Path) -> None:
    path = tmp_path / "case.toml"
    path.write_text(SCENARIO + '[[pv]]\nname = "p"\nbuses = [3, 9999]\npeak_kw = 5\n')
    with pytest.raises(ScenarioError) as info:
        Twin(load_scenario(path))
    assert info.value.problems == [
        ("pv.0.buses.1",
         "no bus 9999 in kerber_dorfnetz (or it is out of service or not supplied)")]


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def pv_runs() -> dict[str, RunResult]:
    return {s: Twin(load_scenario(PV_STORAGE, {"control.strategy": s})).run()
            for s in ("equal_share", "pv_self_consumption")}


@pytest.mark.slow
def test_storage_shaves_the_office_import_and_pv_reaches_the_feeder(pv_runs: Any) -> None:
    run = pv_runs["equal_share"]
    ts = run.timeseries.iloc[1:]
    sc = run.scenario
    target = sc.storage[0].target_kw
    battery = ts["site_office_storage_kw"]
    # Whenever the office drew more than its target, the battery was discharging
    # at its rating or had run down to its minimum; otherwise the target held.
    over = ts["site_office_net_kw"] > target + 1e-6
    assert over.sum() < len(ts) * 0.05
    at_limit = battery[over] <= -sc.storage[0].power_kw + 1e-6
    assert run.kpis["storage_discharged_kwh"] > 10
    assert (at_limit | (battery[over] > -sc.storage[0].power_kw)).all()
    # The net at the connection is EV + storage - PV at every step.
    np.testing.assert_allclose(ts["site_office_net_kw"], ts["site_office_kw"]
                               + ts["site_office_storage_kw"] - ts["site_office_pv_kw"])
    # PV energy: 60 + 160 kWp on a mostly clear June day.
    assert 900 < run.kpis["pv_energy_kwh"] < 1800
    # The village's rooftop PV lifts midday voltages above the night's.
    midday = ts[(ts["pv_kw"] > 150)]
    assert midday["vm_max_pu"].max() > 1.0
    assert run.kpis["minutes_voltage_violation"] == 0


@pytest.mark.slow
def test_energy_cost_is_billed_at_the_site_connections(pv_runs: Any) -> None:
    run = pv_runs["equal_share"]
    ts = run.timeseries.iloc[1:]
    step_h = run.scenario.step_s / 3600
    net = ts[["site_office_net_kw", "site_street_net_kw"]].clip(lower=0).sum(axis=1)
    assert run.kpis["energy_cost"] == pytest.approx(float((net * ts["price_per_kwh"]).sum())
                                                    * step_h)
    # Own PV makes a kWh cheaper than the flat import price.
    assert run.kpis["cost_per_kwh_delivered"] < run.scenario.prices.flat_per_kwh


@pytest.mark.slow
def test_pv_self_consumption_uses_more_of_the_sites_pv(pv_runs: Any) -> None:
    plain, solar = pv_runs["equal_share"], pv_runs["pv_self_consumption"]
    assert solar.kpis["pv_used_on_site_share"] > plain.kpis["pv_used_on_site_share"] + 10
    assert solar.kpis["energy_cost"] < plain.kpis["energy_cost"]
    # The CSMS saw the office's PV forecast: its charging follows the sun.
    office = solar.timeseries.set_index(pd.to_datetime(solar.timeseries["time"]))
    noon = office.between_time("10:00", "14:00")["site_office_kw"].mean()
    assert noon > 0
