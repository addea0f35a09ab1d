"""Day-ahead forecasts and procurement, replayed after a run (``[forecast]``).

After the twin has run, this replays what the CSMS would have done at each
day-ahead gate closure: forecast the next local day per site and hour with only
the history it had then (:func:`evtwin.csms.forecast.forecast_days`), buy the
point forecast at the day-ahead price, and settle the difference to what the
sites then drew at the imbalance price. The CSMS's history is what it was told:
the session starts (its transactions) and the energy its meter values reported,
per site and step (the twin's ``site_<name>_kw`` columns are those readings).

It also builds the run's weather (``[weather]``): an hourly temperature series,
measured or drawn, and the daily energy factor that scales drawn visits.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from evtwin.agents.weather import energy_factor, scale_visits, synthetic_temperature
from evtwin.csms.forecast import (
    QUANTILES,
    ForecastSettings,
    History,
    forecast_days,
    hour_starts,
    hourly_table,
    mae,
    pinball,
    sessions_to_arrivals,
    settle,
    skill,
)
from evtwin.grid.pv import csv_times

from .exceptions import ScenarioError
from .scenario import Scenario

if TYPE_CHECKING:
    from evtwin.agents.model import ChargingModel

    from .der import DerSet

#: Random stream of the synthetic weather (H2's streams are 50-59; 50: PV error).
WEATHER_STREAM = 51


# -- weather -------------------------------------------------------------------------
def _local_days(sc: Scenario) -> tuple[date, int]:
    """The run's first local day and how many local days it touches."""
    zone = sc.local_zone()
    first = sc.start.astimezone(zone).date()
    last = (sc.start + timedelta(seconds=sc.duration_s)).astimezone(zone).date()
    return first, (last - first).days + 1


def weather_series(sc: Scenario) -> pd.DataFrame:
    """Hourly air temperature over the run's local days: columns ``time`` (UTC hour
    start) and ``temp_c``; empty without ``[weather]``.

    Raises:
        ScenarioError: the weather file is unusable or does not cover the run
            (naming ``weather.csv``).
    """
    w = sc.weather
    if w is None:
        return pd.DataFrame(columns=["time", "temp_c"])
    zone = sc.local_zone()
    first, n_days = _local_days(sc)
    hours = hour_starts(first, n_days, zone)
    if w.kind == "csv":
        assert w.csv is not None
        try:
            frame = pd.read_csv(w.csv)
            times = csv_times(frame["time"], zone)
            temp = pd.Series(frame["temperature_c"].astype(float).to_numpy(),
                             index=pd.DatetimeIndex(times)).sort_index()
        except (OSError, KeyError, ValueError) as exc:
            raise ScenarioError(sc.source, [("weather.csv", f"cannot read the weather "
                                             f"series: {exc}")]) from None
        run_start = pd.Timestamp(sc.start).tz_convert("UTC")
        run_end = run_start + pd.Timedelta(seconds=sc.duration_s)
        if temp.empty or temp.index[0] > run_start or temp.index[-1] < run_end - pd.Timedelta(
                hours=1):
            raise ScenarioError(sc.source, [("weather.csv", "the series must cover the run "
                                             f"({sc.start.isoformat()} for "
                                             f"{sc.duration_h:g} h)")])
        # Hourly values, held forward (and back before the first row) over the days.
        values = temp.reindex(temp.index.union(hours)).ffill().bfill().reindex(hours)
        return pd.DataFrame({"time": hours, "temp_c": values.to_numpy(dtype=float)
                             + w.offset_c})
    local = hours.tz_convert(zone)
    day = np.array([(d - first).days for d in local.date])
    rng = np.random.default_rng([sc.seed, WEATHER_STREAM])
    temp_c = synthetic_temperature(local.month, day, local.hour, rng, climate=w.climate)
    return pd.DataFrame({"time": hours, "temp_c": temp_c + w.offset_c})


def daily_energy_factor(sc: Scenario, weather: pd.DataFrame) -> Callable[[float], float]:
    """``f(t_s)``: the energy factor of the mean temperature of the local day ``t_s``
    seconds after the start."""
    zone = sc.local_zone()
    local_day = pd.to_datetime(weather["time"], utc=True).dt.tz_convert(zone).dt.date
    by_day = weather.groupby(local_day.to_numpy())["temp_c"].mean()
    factors = {d: float(energy_factor(t)) for d, t in by_day.items()}

    def factor_at(t_s: float) -> float:
        d = (sc.start + timedelta(seconds=t_s)).astimezone(zone).date()
        return factors.get(d, 1.0)

    return factor_at


def apply_weather(model: ChargingModel, sc: Scenario) -> None:
    """Scale the drawn visits' energy need by their day's temperature factor (no-op
    without ``[weather]`` or with ``energy_effect = false``); visits from a sessions
    file keep their data."""
    if sc.weather is None or not sc.weather.energy_effect:
        return
    factor_at = daily_energy_factor(sc, weather_series(sc))
    plan = getattr(model, "sessions_plan", None)
    given = {id(v) for evs in (plan.evs.values() if plan is not None else ())
             for g in evs for v in g.visits}
    for ev in model.evs:
        scaled = scale_visits(ev.visits, factor_at)
        ev.visits = [v if id(v) in given else s
                     for v, s in zip(ev.visits, scaled, strict=True)]


# -- the replay ----------------------------------------------------------------------
def _metered(sc: Scenario, ts: pd.DataFrame) -> pd.DataFrame:
    """Per site and step: the mean power the meter values reported (kW) and energy."""
    times = pd.to_datetime(ts["time"], utc=True)
    step = pd.Timedelta(seconds=sc.step_s)
    frames = []
    for s in sc.sites:
        column = f"site_{s.name}_kw"
        if column not in ts or len(ts) < 2:
            continue
        kw = ts[column].to_numpy(dtype=float)[1:]  # row k: the step (k-1, k]
        end = times.iloc[1:].reset_index(drop=True)
        frames.append(pd.DataFrame({"site": s.name, "start": end - step, "end": end,
                                    "power_kw": kw, "energy_kwh": kw * sc.step_s / 3600.0}))
    if not frames:
        return pd.DataFrame(columns=["site", "start", "end", "power_kw", "energy_kwh"])
    return pd.concat(frames, ignore_index=True)


def _hourly_price(ts: pd.DataFrame, hours: pd.DatetimeIndex, step_s: float) -> np.ndarray:
    """The day-ahead price of each hour: the mean import price over its steps."""
    if len(ts) < 2:
        return np.full(len(hours), np.nan)
    starts = pd.DatetimeIndex(pd.to_datetime(ts["time"], utc=True).iloc[1:]) - pd.Timedelta(
        seconds=step_s)
    price = pd.Series(ts["price_per_kwh"].astype(float).iloc[1:].to_numpy(),
                      index=starts.floor("h")).groupby(level=0).mean()
    return price.reindex(hours).ffill().bfill().to_numpy(dtype=float)


def settings_of(sc: Scenario) -> ForecastSettings:
    """The CSMS's forecast settings from the scenario's ``[forecast]``."""
    fc = sc.forecast
    assert fc is not None
    return ForecastSettings(gate_closure_h=fc.gate_closure_h, retrain_days=fc.retrain_days,
                            holidays=frozenset(fc.holidays))


def history_of(sc: Scenario, ts: pd.DataFrame, transactions: list[dict[str, Any]],
               site_of: dict[str, str]) -> History:
    """What the CSMS knew after the run: its session starts, metered energy, weather."""
    weather = weather_series(sc)
    return History(tuple(s.name for s in sc.sites), sessions_to_arrivals(transactions, site_of),
                   _metered(sc, ts), weather, temperature_forecast(sc, weather))


#: Day-ahead error of the temperature forecast the CSMS gets (K, standard deviation of a
#: daily offset): assumption, about the 1-2 K mean absolute error of day-ahead 2 m
#: temperature forecasts in national weather services' verification reports.
TEMPERATURE_FORECAST_SD_K = 1.5


def temperature_forecast(sc: Scenario, weather: pd.DataFrame) -> pd.DataFrame | None:
    """The weather service's forecast: the measured series with a seeded error per local
    day (stream 52), so the learned demand forecast does not see tomorrow's weather
    exactly; None without weather."""
    if not len(weather):
        return None
    zone = sc.local_zone()
    days = pd.to_datetime(weather["time"], utc=True).dt.tz_convert(zone).dt.date
    unique = sorted(set(days))
    rng = np.random.default_rng([sc.seed, 52])
    offset = dict(zip(unique, rng.normal(0.0, TEMPERATURE_FORECAST_SD_K, len(unique)),
                      strict=True))
    return weather.assign(temp_c=weather["temp_c"].to_numpy(dtype=float)
                          + days.map(offset).to_numpy(dtype=float))


def forecast_run(sc: Scenario, ts: pd.DataFrame, transactions: list[dict[str, Any]],
                 site_of: dict[str, str], der: DerSet | None = None,
                 ) -> tuple[dict[str, float], pd.DataFrame]:
    """Replay the CSMS's day-ahead forecasts and procurement over a finished run.

    Every whole local day after ``warmup_days`` is forecast at its gate closure. KPIs:
    the MAE of the hourly site energy (model q = 0.5 and seasonal naive), skill, mean
    pinball loss over q = 0.1, 0.5, 0.9 (the naive forecast is one value for every
    quantile), arrivals and daily-peak MAE, and the procurement of the portfolio:
    energy bought day-ahead, imbalance energy and cost, total cost (also with the naive
    forecast as the purchase). Returns the KPIs and the per-site-hour table.

    The energy forecast and bought is the EV charging at each site, not netted
    against PV or storage behind the site's connection (the PV forecast is separate:
    ``pv_forecast_mae_kw``). Bought is the q = 0.5 forecast: with equal spreads the
    settlement costs ``price x drawn + spread x |imbalance|``, least in expectation at
    the median.
    """
    assert sc.forecast is not None
    zone = sc.local_zone()
    settings = settings_of(sc)
    history = history_of(sc, ts, transactions, site_of)
    first, n_days = _local_days(sc)
    run_end = pd.Timestamp(sc.start).tz_convert("UTC") + pd.Timedelta(seconds=sc.duration_s)
    days = [first + timedelta(days=k) for k in range(sc.forecast.warmup_days, n_days)
            if hour_starts(first + timedelta(days=k), 1, zone)[-1]
            + pd.Timedelta(hours=1) <= run_end]
    kpis: dict[str, float] = {}
    if not days:
        return kpis, pd.DataFrame()
    table = forecast_days(history, days, zone, first, settings)
    hours = hour_starts(days[0], (days[-1] - days[0]).days + 1, zone)
    actual = hourly_table(history, hours, zone, settings)
    actual_d = actual.groupby(["site", "day"])["peak_kw"].max().rename("actual_peak_kw")
    table = table.merge(actual[["site", "time", "arrivals", "energy_kwh", "temp_c"]].rename(
        columns={"arrivals": "actual_arrivals", "energy_kwh": "actual_energy_kwh"}),
        on=["site", "time"], how="left")
    table = table.merge(actual_d.reset_index(), on=["site", "day"], how="left")
    price = pd.Series(_hourly_price(ts, hours, sc.step_s), index=hours)
    table["price_per_kwh"] = price.reindex(table["time"]).to_numpy()

    a, q50, naive = (table["actual_energy_kwh"], table["energy_kwh_q50"],
                     table["energy_kwh_naive"])
    kpis["forecast_mae_kwh"] = mae(a, q50)
    kpis["forecast_naive_mae_kwh"] = mae(a, naive)
    kpis["forecast_skill_percent"] = 100.0 * skill(kpis["forecast_mae_kwh"],
                                                   kpis["forecast_naive_mae_kwh"])
    kpis["forecast_pinball_kwh"] = float(np.mean([
        pinball(a, table[f"energy_kwh_q{round(q * 100):02d}"], q) for q in QUANTILES]))
    kpis["forecast_naive_pinball_kwh"] = float(np.mean([pinball(a, naive, q)
                                                        for q in QUANTILES]))
    kpis["forecast_arrivals_mae"] = mae(table["actual_arrivals"], table["arrivals_q50"])
    kpis["forecast_naive_arrivals_mae"] = mae(table["actual_arrivals"],
                                              table["arrivals_naive"])
    daily = table.drop_duplicates(["site", "day"])
    kpis["forecast_peak_mae_kw"] = mae(daily["actual_peak_kw"], daily["peak_kw_q50"])
    kpis["forecast_naive_peak_mae_kw"] = mae(daily["actual_peak_kw"], daily["peak_kw_naive"])

    # A balancing group is settled as a whole: the portfolio's hours, not each site's.
    portfolio = table.groupby("time").agg(actual=("actual_energy_kwh", "sum"),
                                          bought=("energy_kwh_q50", "sum"),
                                          naive=("energy_kwh_naive", "sum"),
                                          price=("price_per_kwh", "first"))
    fc = sc.forecast
    spreads = {"spread_short_per_kwh": fc.imbalance_spread_short_per_kwh,
               "spread_long_per_kwh": fc.imbalance_spread_long_per_kwh}
    model = settle(portfolio["actual"], portfolio["bought"], portfolio["price"], **spreads)
    base = settle(portfolio["actual"], portfolio["naive"].fillna(0.0), portfolio["price"],
                  **spreads)
    kpis["day_ahead_energy_kwh"] = model.day_ahead_kwh
    kpis["day_ahead_cost"] = model.day_ahead_cost
    kpis["imbalance_energy_kwh"] = model.imbalance_kwh
    kpis["imbalance_cost"] = model.imbalance_cost
    kpis["procurement_cost"] = model.total_cost
    kpis["procurement_cost_naive"] = base.total_cost
    if der is not None and any(s is not None for s in der.pv_site):
        kpis["pv_forecast_mae_kw"] = pv_forecast_mae_kw(der, sc.start, sc.step_s)
    table["time"] = table["time"].map(lambda t: t.isoformat())
    return kpis, table


def pv_forecast_mae_kw(der: DerSet, start: datetime, step_s: float) -> float:
    """Mean absolute error (kW) of the PV forecast the CSMS got against the true hourly
    mean, over every site and hour."""
    told = der.site_forecasts(start, step_s)
    true = der.site_forecasts(start, step_s, error=False)
    errors = [abs(f - t) for site in told
              for (_, f), (_, t) in zip(told[site], true[site], strict=True)]
    return float(np.mean(errors)) if errors else 0.0


__all__ = ["apply_weather", "daily_energy_factor", "forecast_run", "history_of",
           "pv_forecast_mae_kw", "settings_of", "weather_series"]
