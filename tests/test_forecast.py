"""Day-ahead demand forecasts, procurement and imbalance, weather, PV forecast error.

Fast tests use hand-made histories whose answer is known; the slow one runs the
shipped ``scenarios/operations.toml`` (a month) once for the module.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from evtwin.agents.behaviour import Visit
from evtwin.agents.weather import (
    CLIMATES,
    energy_factor,
    scale_visit,
    synthetic_temperature,
)
from evtwin.csms.forecast import (
    ForecastSettings,
    History,
    forecast_days,
    gate_closure,
    hour_starts,
    hourly_table,
    mae,
    pinball,
    sessions_to_arrivals,
    settle,
    site_map,
    skill,
)
from evtwin.csms.model import EvseSpec, StationSpec
from evtwin.sim.der import DerSet
from evtwin.sim.exceptions import ScenarioError
from evtwin.sim.runner import RunResult, build_model, run_scenario
from evtwin.sim.scenario import load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
ZONE = ZoneInfo("Europe/Berlin")
FIRST = date(2026, 1, 5)  # a Monday, no daylight-saving change for weeks


# -- scores and settlement, by hand ---------------------------------------------------
def test_settlement_against_a_hand_computed_example() -> None:
    # Hour 1: 2 kWh short at 0.20 + 0.05; hour 2: 1 kWh long credited at 0.30 - 0.04;
    # hour 3: exact.
    s = settle(np.array([10.0, 4.0, 6.0]), np.array([8.0, 5.0, 6.0]),
               np.array([0.20, 0.30, 0.25]), spread_short_per_kwh=0.05,
               spread_long_per_kwh=0.04)
    assert s.day_ahead_kwh == pytest.approx(19.0)
    assert s.day_ahead_cost == pytest.approx(8 * 0.20 + 5 * 0.30 + 6 * 0.25)  # 4.60
    assert s.short_kwh == pytest.approx(2.0)
    assert s.long_kwh == pytest.approx(1.0)
    assert s.imbalance_kwh == pytest.approx(3.0)
    assert s.imbalance_cost == pytest.approx(2 * 0.25 - 1 * 0.26)  # 0.24
    # Identity: what was drawn at day-ahead prices plus the spread on every kWh off.
    assert s.total_cost == pytest.approx(10 * 0.20 + 4 * 0.30 + 6 * 0.25 + 2 * 0.05 + 0.04)


def test_mae_pinball_and_skill_by_hand() -> None:
    y = np.array([0.0, 2.0, 4.0])
    f = np.array([1.0, 1.0, 1.0])
    assert mae(y, f) == pytest.approx((1 + 1 + 3) / 3)
    # q = 0.9: under-forecast (y > f) costs 0.9 per kWh, over-forecast 0.1.
    assert pinball(y, f, 0.9) == pytest.approx((0.1 * 1 + 0.9 * 1 + 0.9 * 3) / 3)
    assert pinball(y, f, 0.5) == pytest.approx(mae(y, f) / 2)
    assert skill(1.0, 4.0) == pytest.approx(0.75)
    assert np.isnan(mae(np.array([np.nan]), np.array([1.0])))


def test_gate_closure_is_noon_local_the_day_before() -> None:
    # CET in January (UTC+1): noon local is 11:00 UTC; CEST on 30 March: 10:00 UTC.
    assert gate_closure(date(2026, 1, 6), ZONE, ForecastSettings()) == pd.Timestamp(
        "2026-01-05T11:00Z")
    assert gate_closure(date(2026, 3, 31), ZONE, ForecastSettings()) == pd.Timestamp(
        "2026-03-30T10:00Z")
    # The day the clocks go forward has 23 hours.
    assert len(hour_starts(date(2026, 3, 29), 1, ZONE)) == 23


def test_arrivals_come_from_the_store_rows_mapped_to_sites_by_the_config() -> None:
    config = [StationSpec("m-001", "market", (EvseSpec(1, 22000.0),)),
              StationSpec("s-001", "school", (EvseSpec(1, 22000.0),))]
    rows = [{"station_id": "m-001", "started_at": "2026-03-02T05:27:48.655Z"},
            {"station_id": "s-001", "started_at": "2026-03-02T06:00:00Z"},
            {"station_id": "gone", "started_at": "2026-03-02T07:00:00Z"}]
    arrivals = sessions_to_arrivals(rows, site_map(config))
    assert arrivals["site"].tolist() == ["market", "school"]
    assert arrivals["time"].iloc[0] == pd.Timestamp("2026-03-02T05:27:48.655Z")


# -- synthetic histories with a known answer ------------------------------------------
EnergyOf = Callable[[str, int, int, int], float]


def _history(days: int, energy_of: EnergyOf, *, sites: tuple[str, ...] = ("a", "b"),
             temperature: bool = False, first: date = FIRST) -> History:
    """Hourly meter readings (one interval per hour) and arrivals: ``energy_of(site,
    local weekday, local hour, day index)`` kWh in each hour, one arrival per 5 kWh."""
    hours = hour_starts(first, days, ZONE)
    local = hours.tz_convert(ZONE)
    rows, arrivals = [], []
    for site in sites:
        for k, (t, lt) in enumerate(zip(hours, local, strict=True)):
            e = float(energy_of(site, lt.weekday(), lt.hour, k // 24))
            rows.append((site, t, t + pd.Timedelta(hours=1), e, e))
            arrivals += [(site, t + pd.Timedelta(minutes=10))] * int(e // 5)
    metered = pd.DataFrame(rows, columns=["site", "start", "end", "power_kw", "energy_kwh"])
    temp = pd.DataFrame(columns=["time", "temp_c"])
    if temperature:
        temp = pd.DataFrame({"time": hours, "temp_c": np.linspace(0.0, 10.0, len(hours))})
    return History(sites, pd.DataFrame(arrivals, columns=["site", "time"]), metered, temp)


def _weekday_pattern(noise: np.random.Generator | None) -> EnergyOf:
    def energy(site: str, weekday: int, hour: int, day: int) -> float:
        base = (20.0 if site == "a" else 12.0) * np.exp(-((hour - 18) / 2.5) ** 2)
        base *= 0.5 if weekday >= 5 else 1.0
        return max(0.0, base + (noise.normal(0.0, 4.0) if noise is not None else 0.0))
    return energy


def _scores(history: History, days: list[date]) -> dict[str, float]:
    table = forecast_days(history, days, ZONE, FIRST)
    hours = hour_starts(days[0], len(days), ZONE)
    actual = hourly_table(history, hours, ZONE, ForecastSettings())
    m = table.merge(actual[["site", "time", "energy_kwh"]], on=["site", "time"])
    y = m["energy_kwh"].to_numpy()
    return {"model": mae(y, m["energy_kwh_q50"].to_numpy()),
            "naive": mae(y, m["energy_kwh_naive"].to_numpy()),
            "model_pinball": float(np.mean([pinball(y, m[f"energy_kwh_q{q}"].to_numpy(),
                                                    q / 100) for q in (10, 50, 90)])),
            "naive_pinball": float(np.mean([pinball(y, m["energy_kwh_naive"].to_numpy(),
                                                    q / 100) for q in (10, 50, 90)])),
            "rows": float(len(m))}


def test_a_pure_weekly_repeat_is_forecast_exactly_by_the_naive_baseline() -> None:
    history = _history(28, _weekday_pattern(None))
    days = [FIRST + timedelta(days=k) for k in range(21, 28)]
    s = _scores(history, days)
    assert s["rows"] == 2 * 7 * 24
    assert s["naive"] == 0.0


def test_the_learned_model_beats_naive_on_a_weekday_pattern_with_noise() -> None:
    history = _history(35, _weekday_pattern(np.random.default_rng(1)), sites=("a",))
    days = [FIRST + timedelta(days=k) for k in range(21, 35)]
    s = _scores(history, days)
    # Naive carries last week's noise twice over (sd 4 * sqrt 2 where demand is
    # positive); the model averages three weeks of it.
    assert s["model"] < 0.85 * s["naive"]
    assert s["model_pinball"] < s["naive_pinball"]


def test_daylight_saving_days_are_forecast_hour_by_hour() -> None:
    # 25 October 2026: the clocks go back (25 hours, 02 h twice); 29 March: forward.
    # A week after the clocks went back, the naive lookup meets the doubled hour.
    for first, day, n in ((date(2026, 10, 14), date(2026, 10, 25), 25),
                          (date(2026, 10, 21), date(2026, 11, 1), 24),
                          (date(2026, 3, 18), date(2026, 3, 29), 23)):
        history = _history(12, _weekday_pattern(None), sites=("a",), first=first)
        table = forecast_days(history, [day], ZONE, first)
        assert len(table) == n
        assert not table["energy_kwh_naive"].isna().any()


def test_no_look_ahead_data_after_the_gate_does_not_change_the_forecast() -> None:
    history = _history(21, _weekday_pattern(np.random.default_rng(2)), temperature=True)
    day = FIRST + timedelta(days=14)
    cutoff = gate_closure(day, ZONE, ForecastSettings())
    met = history.metered.copy()
    late = met["end"] > cutoff
    assert late.any() and (~late).any()
    met.loc[late, ["energy_kwh", "power_kw"]] = met.loc[late, "energy_kwh"] * 10 + 7
    extra = pd.DataFrame({"site": "a", "time": [cutoff + pd.Timedelta(minutes=m)
                                                for m in range(0, 3000, 7)]})
    changed = History(history.sites, pd.concat([history.arrivals, extra], ignore_index=True),
                      met, history.temperature)
    days = [FIRST + timedelta(days=k) for k in range(11, 15)]  # the last one is `day`
    before = forecast_days(history, days, ZONE, FIRST)
    after = forecast_days(changed, days, ZONE, FIRST)
    pd.testing.assert_frame_equal(before, after)
    # The change is real: the next day's forecast, made after it, sees it.
    nxt = [day + timedelta(days=1)]
    assert not forecast_days(history, nxt, ZONE, FIRST).equals(
        forecast_days(changed, nxt, ZONE, FIRST))


# -- weather --------------------------------------------------------------------------
def test_energy_factor_matches_the_cited_anchors() -> None:
    # Yuksel & Michalek 2015: range -36 % on the coldest day (-20 °C assumed), 69 -> 49
    # miles at 40.5 °C; consumption scales as 1 / range.
    assert energy_factor(21.5) == pytest.approx(1.0)
    assert energy_factor(-20.0) == pytest.approx(1 / 0.64)
    assert energy_factor(40.5) == pytest.approx(69 / 49)
    assert 1.0 < energy_factor(10.0) < energy_factor(0.0)


def test_scale_visit_raises_the_energy_need_by_the_factor() -> None:
    v = Visit(arrival_s=0.0, departure_s=3600.0, soc_initial=0.5, target_soc=0.9,
              patience_s=600.0)
    assert scale_visit(v, 1.25).soc_initial == pytest.approx(0.9 - 0.4 * 1.25)
    assert scale_visit(v, 10.0).soc_initial == 0.0  # never below empty


def test_synthetic_temperature_follows_its_month_and_is_seeded() -> None:
    days = np.repeat(np.arange(400), 24)
    hours = np.tile(np.arange(24), 400)
    months = np.full(days.size, 1)
    a = synthetic_temperature(months, days, hours, np.random.default_rng([3, 51]))
    b = synthetic_temperature(months, days, hours, np.random.default_rng([3, 51]))
    np.testing.assert_array_equal(a, b)
    # 400 January days: the mean is the normal within a few tenths (AR(1) sd ~2.9 K).
    assert a.mean() == pytest.approx(CLIMATES["central_europe"][0], abs=0.8)
    # The daily cycle: 15 h is 2 x 4 K warmer than 03 h on average.
    assert a[hours == 15].mean() - a[hours == 3].mean() == pytest.approx(8.0, abs=1e-6)


_BASE = {"seed": 5, "timezone": "Europe/Berlin", "start": "2026-01-05T00:00:00",
         "duration_h": 72, "step_s": 300, "ev": {"count": 12},
         "run": {"transport": "direct"},
         "sites": [{"name": "p", "kind": "public", "stations": 2, "evses_per_station": 2,
                    "evse_max_kw": 22}]}


def test_weather_scales_drawn_visits_and_nothing_else() -> None:
    plain = build_model(parse_scenario(dict(_BASE)))
    cold = build_model(parse_scenario({**_BASE, "weather": {"offset_c": -10.0}}))
    off = build_model(parse_scenario({**_BASE, "weather": {"energy_effect": False}}))
    pairs = [(p, c, o) for ep, ec, eo in zip(plain.evs, cold.evs, off.evs, strict=True)
             for p, c, o in zip(ep.visits, ec.visits, eo.visits, strict=True)]
    assert pairs
    for p, c, o in pairs:
        assert (c.arrival_s, c.departure_s, c.target_soc) == (p.arrival_s, p.departure_s,
                                                              p.target_soc)
        assert o == p
        # A January day 10 K below the normal is well under the optimum: more energy.
        assert c.soc_initial <= p.soc_initial
    assert sum(p.soc_initial - c.soc_initial for p, c, _ in pairs) > 0


# -- PV forecast error ----------------------------------------------------------------
def _pv_set(nrmse: float, seed: int, days: int = 365) -> DerSet:
    hours = np.arange(days * 24 + 1)
    h = hours % 24
    rng = np.random.default_rng(0)
    daily = np.repeat(rng.uniform(0.3, 1.0, days + 1), 24)[: hours.size]
    pv = 40.0 * daily * np.clip(np.sin(np.pi * (h - 6) / 12), 0.0, None)
    return DerSet([1], pv.reshape(-1, 1), ["s"], pv_error_nrmse=nrmse, pv_error_seed=seed)


def test_pv_forecast_error_has_the_asked_nrmse_and_is_seeded() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    der = _pv_set(0.3, seed=7)
    told = np.array([v for _, v in der.site_forecasts(start, 3600)["s"]])
    true = np.array([v for _, v in der.site_forecasts(start, 3600, error=False)["s"]])
    day = true > 0
    nrmse = np.sqrt(np.mean((told[day] - true[day]) ** 2)) / true[day].mean()
    # 365 days, AR(1) 0.8: ~400 independent hours, so the estimate is within ~0.01.
    assert nrmse == pytest.approx(0.3, abs=0.02)
    assert (told >= 0).all() and (told[~day] == 0).all()  # no PV at night, none below 0
    again = np.array([v for _, v in _pv_set(0.3, seed=7).site_forecasts(start, 3600)["s"]])
    np.testing.assert_array_equal(told, again)
    other = np.array([v for _, v in _pv_set(0.3, seed=8).site_forecasts(start, 3600)["s"]])
    assert not np.array_equal(told, other)
    # Without an error the CSMS gets the truth, as before.
    exact = np.array([v for _, v in _pv_set(0.0, seed=7).site_forecasts(start, 3600)["s"]])
    np.testing.assert_array_equal(exact, true)


# -- scenario sections ----------------------------------------------------------------
@pytest.mark.parametrize(("section", "field"), [
    ({"forecast": {"warmup_days": 0}}, "forecast.warmup_days"),
    ({"forecast": {"gate_closure_h": 24}}, "forecast.gate_closure_h"),
    ({"forecast": {"imbalance_spread_short_per_kwh": -1}},
     "forecast.imbalance_spread_short_per_kwh"),
    ({"forecast": {"pv_error_ar1": 1.0}}, "forecast.pv_error_ar1"),
    ({"forecast": {"typo": 1}}, "forecast.typo"),
    ({"weather": {"kind": "csv"}}, "weather.csv"),
    ({"weather": {"climate": "mars"}}, "weather.climate"),
])
def test_config_errors_name_the_field(section: dict[str, object], field: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario({**_BASE, **section}, "t.toml")
    text = str(err.value)
    assert f"t.toml: {field}:" in text
    assert len(text.splitlines()) == 1


def test_weather_csv_must_cover_the_run(tmp_path: Path) -> None:
    csv = tmp_path / "w.csv"
    csv.write_text("time,temperature_c\n2026-01-05T00:00:00,1.0\n2026-01-06T00:00:00,2.0\n")
    (tmp_path / "s.toml").write_text(
        'start = 2026-01-05T00:00:00\ntimezone = "Europe/Berlin"\nduration_h = 72\n'
        '[ev]\ncount = 2\n[[sites]]\nname = "p"\nstations = 1\n'
        '[weather]\nkind = "csv"\ncsv = "w.csv"\n')
    sc = load_scenario(tmp_path / "s.toml")
    assert sc.weather is not None and sc.weather.csv == str(csv)  # resolved
    with pytest.raises(ScenarioError, match=r"weather\.csv: the series must cover the run"):
        build_model(sc)


def test_a_run_without_the_sections_has_no_new_kpis() -> None:
    result = run_scenario(parse_scenario({**_BASE, "duration_h": 24}))
    assert not [k for k in result.kpis if k.startswith(("forecast_", "imbalance",
                                                        "day_ahead", "procurement",
                                                        "pv_forecast"))]
    assert result.forecast.empty


@pytest.mark.slow
def test_a_short_run_replays_forecasts_and_writes_forecast_csv(tmp_path: Path) -> None:
    from evtwin.sim.results import write_results

    sc = parse_scenario({**_BASE, "duration_h": 24 * 9, "step_s": 900,
                         "control": {"interval_s": 900}, "csms": {"meter_interval_s": 900},
                         "forecast": {"warmup_days": 7, "pv_error_nrmse": 0.3},
                         "weather": {}, "pv": [{"name": "roof", "site": "p", "peak_kw": 30}]})
    result = run_scenario(sc)
    # Days 8 and 9 (12 and 13 January) are forecast: one site, 48 hours.
    assert len(result.forecast) == 48
    assert result.kpis["pv_forecast_mae_kw"] > 0
    assert result.kpis["forecast_skill_percent"] == pytest.approx(100 * (
        1 - result.kpis["forecast_mae_kwh"] / result.kpis["forecast_naive_mae_kwh"]))
    written = write_results(result, tmp_path / "run")
    assert tmp_path / "run" / "forecast.csv" in written
    assert len(pd.read_csv(tmp_path / "run" / "forecast.csv")) == 48


# -- the shipped scenario -------------------------------------------------------------
@pytest.fixture(scope="module")
def operations() -> RunResult:
    return run_scenario(load_scenario(ROOT / "scenarios" / "operations.toml"))


@pytest.mark.slow
def test_learned_forecast_beats_naive_on_operations(operations: RunResult) -> None:
    k = operations.kpis
    assert k["forecast_mae_kwh"] < k["forecast_naive_mae_kwh"]
    assert k["forecast_pinball_kwh"] < k["forecast_naive_pinball_kwh"]
    assert k["forecast_skill_percent"] > 0
    table = operations.forecast
    # Forecast days 9-31 March (7 days of warm-up from Monday 2 March), four sites;
    # 29 March has 23 hours (clocks forward): 4 x (22 x 24 + 23) rows.
    assert len(table) == 4 * (22 * 24 + 23)
    assert table["day"].min() == date(2026, 3, 9) and table["day"].max() == date(2026, 3, 31)
    # Procurement against an independent sum over the table: bought = the q50 forecasts;
    # with equal spreads total = sum(price x drawn) + spread x |imbalance|.
    assert k["day_ahead_energy_kwh"] == pytest.approx(table["energy_kwh_q50"].sum())
    drawn = (table["price_per_kwh"] * table["actual_energy_kwh"]).sum()
    assert k["procurement_cost"] == pytest.approx(drawn + 0.05 * k["imbalance_energy_kwh"])
    portfolio = table.groupby("time")[["actual_energy_kwh", "energy_kwh_q50"]].sum()
    assert k["imbalance_energy_kwh"] == pytest.approx(
        (portfolio["actual_energy_kwh"] - portfolio["energy_kwh_q50"]).abs().sum())
