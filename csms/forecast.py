"""Next-day demand forecasts per site, and day-ahead procurement with imbalance settlement.

The CSMS forecasts, at each day-ahead gate closure (12:00 local on the day
before delivery), every hour of the next local day per site: arrivals (session
starts), energy (kWh) and the day's peak (kW). It learns only from its own
history up to the gate: the session starts it has seen and the energy its meter
values reported. Energy is assigned to the hour in which it was metered (the
stations' Energy.Active.Import.Register samples), not to the session's start
hour: a session that started before the gate and still charges after it adds
nothing after the gate to the history, so nothing leaks from the future.

Two forecasters, scored against each other:

- seasonal naive: the same local hour one week earlier (the latest day known at
  the gate while there is less than a week of history);
- learned: scikit-learn's HistGradientBoostingRegressor with quantile loss at
  q = 0.1, 0.5, 0.9 on calendar features (local hour, weekday, weekend or public
  holiday) and weather (the hour's and the day's mean temperature); q = 0.5 is
  the point forecast (the median minimises the absolute error). The delivery day's
  temperature is taken as known at the gate: a day-ahead temperature forecast is
  good to a degree or two (assumption), small against the day-to-day swings.

Procurement: the CSMS buys its point forecast per hour at the day-ahead price;
the difference to what it then draws is settled at the imbalance price (short:
day-ahead + spread, long: day-ahead - spread), for the whole portfolio as a
balancing group is settled, not per site.

This module never sees the simulator: it takes plain tables (see :class:`History`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from .model import StationSpec

FloatArray = npt.NDArray[np.float64]

#: Quantiles every learned forecast gives; 0.5 is the point forecast.
QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)

#: Hourly targets (per site and hour) and the daily one (per site and day).
HOURLY_TARGETS: tuple[str, ...] = ("arrivals", "energy_kwh")
DAILY_TARGET = "peak_kw"

#: Features of the learned model, in column order; ``site`` is categorical.
HOURLY_FEATURES: tuple[str, ...] = ("site_code", "hour", "weekday", "offday",
                                    "temp_c", "temp_day_c")
DAILY_FEATURES: tuple[str, ...] = ("site_code", "weekday", "offday", "temp_day_c")


@dataclass(frozen=True)
class ForecastSettings:
    """How the CSMS forecasts; keyword-only numbers with units in their names."""

    gate_closure_h: float = 12.0
    """Local clock hour of the gate closure on the day before delivery. 12:00 is the
    EPEX SPOT day-ahead auction's gate closure (EPEX SPOT, "Day-ahead auction",
    https://www.epexspot.com: orders until 12:00 CET for the next day)."""
    max_iter: int = 40
    # assumption: 40 boosting rounds at learning rate 0.1 fit a few thousand
    # site-hours without overfitting in our runs; not tuned per scenario.
    learning_rate: float = 0.1
    max_leaf_nodes: int = 15
    # assumption: small trees (sklearn's default is 31) for six features and a few
    # thousand rows; quantile loss refits every leaf, so leaves cost time.
    min_samples_leaf: int = 20
    # assumption: sklearn's default leaf size; a leaf then averages ~3 weeks of one hour.
    retrain_days: int = 7
    # assumption: a weekly refit (as operators retrain on a schedule); a daily refit
    # costs 7x the fitting time for little gain when the features are calendar and weather.
    holidays: frozenset[date] = field(default_factory=frozenset)
    """Public holidays (local dates), treated as weekend days."""


@dataclass(frozen=True)
class History:
    """What the CSMS knows about its sites, as plain tables (times are aware, UTC).

    ``arrivals``: one row per session start, columns ``site`` and ``time``.
    ``metered``: one row per meter interval and site, columns ``site``, ``start`` and
    ``end`` of the interval, ``power_kw`` (mean power over it) and ``energy_kwh``; an
    interval is known once it has ended and counts in the hour it starts in.
    ``temperature``: hourly air temperature, columns ``time`` (hour start) and
    ``temp_c``; empty when the CSMS has no weather feed (then no weather features).
    """

    sites: tuple[str, ...]
    arrivals: pd.DataFrame
    metered: pd.DataFrame
    temperature: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["time", "temp_c"]))
    temperature_forecast: pd.DataFrame | None = None
    """The weather service's day-ahead forecast (same columns): what the CSMS knows of
    the temperature after a gate closure; None: the measured one (a perfect forecast)."""


def site_map(stations: Iterable[StationSpec]) -> dict[str, str]:
    """Station id -> site, from the CSMS config's stations."""
    return {st.station_id: st.site for st in stations}


def sessions_to_arrivals(transactions: Iterable[dict[str, Any]],
                         site_of: dict[str, str]) -> pd.DataFrame:
    """Session starts per site from the CSMS store's ``transactions`` rows
    (``station_id``, ``started_at``), mapped to sites by the CSMS config's
    ``StationSpec.site`` (:func:`site_map`); stations it does not name are left out."""
    rows = [(site_of[t["station_id"]], t["started_at"]) for t in transactions
            if t.get("station_id") in site_of and t.get("started_at")]
    frame = pd.DataFrame(rows, columns=["site", "time"])
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame


# -- the hourly table ----------------------------------------------------------------
def hour_starts(first_day: date, days: int, zone: tzinfo) -> pd.DatetimeIndex:
    """UTC starts of every hour of ``days`` local days from ``first_day`` (23 or 25
    hours on a daylight-saving day)."""
    begin = datetime.combine(first_day, time(0), zone)
    end = datetime.combine(first_day + timedelta(days=days), time(0), zone)
    return pd.date_range(pd.Timestamp(begin).tz_convert("UTC"),
                         pd.Timestamp(end).tz_convert("UTC"), freq="h", inclusive="left")


def hourly_table(history: History, hours: pd.DatetimeIndex, zone: tzinfo,
                 settings: ForecastSettings) -> pd.DataFrame:
    """One row per site and hour of ``hours``: targets (NaN where nothing is known),
    calendar and weather features."""
    sites = list(history.sites)
    idx = pd.MultiIndex.from_product([sites, hours], names=["site", "time"])
    out = pd.DataFrame(index=idx).reset_index()
    arr = history.arrivals
    if len(arr):
        counts = arr.assign(time=arr["time"].dt.floor("h")).groupby(["site", "time"]).size()
        out["arrivals"] = counts.reindex(idx, fill_value=0).to_numpy(dtype=float)
    else:
        out["arrivals"] = 0.0
    met = history.metered
    if len(met):
        g = met.assign(time=met["start"].dt.floor("h")).groupby(["site", "time"])
        out["energy_kwh"] = g["energy_kwh"].sum().reindex(idx).to_numpy(dtype=float)
        out["peak_kw"] = g["power_kw"].max().reindex(idx).to_numpy(dtype=float)
    else:
        out["energy_kwh"] = np.nan
        out["peak_kw"] = np.nan
    # An hour without any meter reading is unknown, not zero; arrivals follow it.
    out.loc[out["energy_kwh"].isna(), "arrivals"] = np.nan
    local = out["time"].dt.tz_convert(zone)
    out["day"] = local.dt.date
    out["hour"] = local.dt.hour.astype(float)
    out["weekday"] = local.dt.weekday.astype(float)
    out["offday"] = ((out["weekday"] >= 5) | out["day"].isin(settings.holidays)).astype(float)
    out["site_code"] = out["site"].map({s: i for i, s in enumerate(sites)}).astype(float)
    temp = history.temperature
    if len(temp):
        t = temp.set_index(pd.to_datetime(temp["time"], utc=True))["temp_c"]
        out["temp_c"] = t.reindex(out["time"]).to_numpy(dtype=float)
        out["temp_day_c"] = out.groupby(["site", "day"])["temp_c"].transform("mean")
    else:
        out["temp_c"] = np.nan
        out["temp_day_c"] = np.nan
    return out


def daily_table(hourly: pd.DataFrame) -> pd.DataFrame:
    """Per site and local day: the day's peak (kW; NaN unless every hour is known) and
    the daily features."""
    g = hourly.groupby(["site", "day"], sort=True)
    out = g.agg(peak_kw=("peak_kw", "max"), known=("energy_kwh", "count"),
                hours=("time", "size"), site_code=("site_code", "first"),
                weekday=("weekday", "first"), offday=("offday", "first"),
                temp_day_c=("temp_day_c", "first")).reset_index()
    out.loc[out["known"] < out["hours"], "peak_kw"] = np.nan
    return out.drop(columns=["known", "hours"])


# -- forecasters ---------------------------------------------------------------------
def gate_closure(day: date, zone: tzinfo, settings: ForecastSettings) -> pd.Timestamp:
    """The instant (UTC) of the gate closure for delivery day ``day``: the local clock
    reads ``gate_closure_h`` on the day before."""
    minutes = round(settings.gate_closure_h * 60)
    local = datetime.combine(day - timedelta(days=1), time(minutes // 60, minutes % 60), zone)
    return pd.Timestamp(local).tz_convert("UTC")


def _naive_lookup(known: pd.DataFrame, target: pd.DataFrame, column: str, key: str,
                  shifts: Sequence[int]) -> FloatArray:
    """For each target row, ``column`` from the first of ``shifts`` (days back, by
    the local ``day`` and ``key``) that is known."""
    table = known.dropna(subset=[column]).set_index(["site", "day", key])[column]
    # The night the clocks go back has its 02 h twice: take the first.
    table = table[~table.index.duplicated()]
    out = np.full(len(target), np.nan)
    for shift in shifts:
        keys = list(zip(target["site"], [d - timedelta(days=shift) for d in target["day"]],
                        target[key], strict=True))
        values = table.reindex(keys).to_numpy(dtype=float)
        fill = np.isnan(out) & ~np.isnan(values)
        out[fill] = values[fill]
    return out


def naive_forecast(known: pd.DataFrame, target: pd.DataFrame, column: str,
                   key: str = "hour") -> FloatArray:
    """Seasonal-naive forecast of ``column``: the same local hour (``key``) a week
    before; the latest earlier day that is known while no week is (1..6 days back)."""
    return _naive_lookup(known, target, column, key, (7, 1, 2, 3, 4, 5, 6))


@dataclass(frozen=True)
class QuantileModel:
    """One fitted regressor per quantile of :data:`QUANTILES` for one target, and the
    features it was fitted on (weather columns are left out when the CSMS has none)."""

    features: tuple[str, ...]
    models: tuple[Any, ...]
    """Fitted HistGradientBoostingRegressors, in the order of QUANTILES; empty when
    there was nothing to fit on."""

    def predict(self, target: pd.DataFrame) -> dict[float, FloatArray]:
        """Quantile forecasts for the ``target`` rows, never negative and not crossing."""
        if not self.models:
            return {q: np.full(len(target), np.nan) for q in QUANTILES}
        x = target[list(self.features)].to_numpy(dtype=float)
        # Demand is never negative; quantile models are fitted apart and may cross.
        stacked = np.sort(np.vstack([np.maximum(m.predict(x), 0.0) for m in self.models]),
                          axis=0)
        return {q: stacked[i] for i, q in enumerate(QUANTILES)}


def fit_quantiles(known: pd.DataFrame, column: str, features: Sequence[str],
                  settings: ForecastSettings) -> QuantileModel:
    """Fit ``column`` on every ``known`` row that has a value, one quantile-loss
    gradient-boosting model per quantile."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    train = known.dropna(subset=[column])
    used = tuple(n for n in features if not train[n].isna().all()) if len(train) else ()
    if not len(train):
        return QuantileModel(used, ())
    x = train[list(used)].to_numpy(dtype=float)
    y = train[column].to_numpy(dtype=float)
    models = []
    for q in QUANTILES:
        model = HistGradientBoostingRegressor(
            loss="quantile", quantile=q, max_iter=settings.max_iter,
            learning_rate=settings.learning_rate, min_samples_leaf=settings.min_samples_leaf,
            categorical_features=[used.index("site_code")] if "site_code" in used else None,
            early_stopping=False, max_leaf_nodes=settings.max_leaf_nodes, random_state=0)
        models.append(model.fit(x, y))
    return QuantileModel(used, tuple(models))


@dataclass
class _Fitted:
    day: date
    hourly: dict[str, QuantileModel]
    daily: QuantileModel


def _tables(history: History, day: date, zone: tzinfo, first_day: date,
            settings: ForecastSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hourly and daily tables from ``first_day`` to ``day`` as known at the gate
    closure for ``day``: nothing the CSMS learns after it is in them."""
    cutoff = gate_closure(day, zone, settings)
    temperature = history.temperature
    ahead = history.temperature_forecast
    if ahead is not None and len(temperature):
        # Measured up to the gate, forecast after it.
        measured = temperature[pd.to_datetime(temperature["time"], utc=True) < cutoff]
        forecast = ahead[pd.to_datetime(ahead["time"], utc=True) >= cutoff]
        temperature = pd.concat([measured, forecast], ignore_index=True)
    before = History(history.sites,
                     history.arrivals[history.arrivals["time"] < cutoff],
                     history.metered[history.metered["end"] <= cutoff],
                     temperature)
    hours = hour_starts(first_day, (day - first_day).days + 1, zone)
    table = hourly_table(before, hours, zone, settings)
    whole = table["time"] + pd.Timedelta(hours=1) <= cutoff
    table.loc[~whole, ["arrivals", "energy_kwh", "peak_kw"]] = np.nan
    return table, daily_table(table)


def forecast_days(history: History, days: Sequence[date], zone: tzinfo, first_day: date,
                  settings: ForecastSettings = ForecastSettings()) -> pd.DataFrame:
    """The CSMS's forecasts for every site and hour of each local day in ``days``
    (ascending), each made at its day's gate closure from the history since
    ``first_day`` known then (rolling origin). The learned models are refitted at the
    gate of the first day and then every ``retrain_days``; between refits a day is
    forecast with the last models, fitted on less than what its gate knew.

    Columns: ``site``, ``time`` (UTC hour start), ``day`` (local), ``hour``, and per
    target ``T`` in arrivals, energy_kwh and peak_kw (the day's, on each of its hours):
    ``T_naive``, ``T_q10``, ``T_q50``, ``T_q90``.
    """
    import sklearn.ensemble  # noqa: F401  # load its OpenMP runtime before limiting it
    from threadpoolctl import threadpool_limits

    # One thread: the fits are small, and OpenMP threads spinning on cores the twin
    # (or other runs) use cost more than they give.
    with threadpool_limits(limits=1, user_api="openmp"):
        return _forecast_days(history, days, zone, first_day, settings)


def _forecast_days(history: History, days: Sequence[date], zone: tzinfo, first_day: date,
                   settings: ForecastSettings) -> pd.DataFrame:
    fitted: _Fitted | None = None
    frames = []
    for day in days:
        table, daily = _tables(history, day, zone, first_day, settings)
        known, target = table[table["day"] < day], table[table["day"] == day]
        known_d = daily[daily["day"] < day].assign(key=0)
        target_d = daily[daily["day"] == day].reset_index(drop=True).assign(key=0)
        target = target.reset_index(drop=True)
        if fitted is None or (day - fitted.day).days >= settings.retrain_days:
            fitted = _Fitted(day, {c: fit_quantiles(known, c, HOURLY_FEATURES, settings)
                                   for c in HOURLY_TARGETS},
                             fit_quantiles(known_d, DAILY_TARGET, DAILY_FEATURES, settings))
        out = target[["site", "time", "day", "hour"]].copy()
        for column in HOURLY_TARGETS:
            out[f"{column}_naive"] = naive_forecast(known, target, column)
            for q, values in fitted.hourly[column].predict(target).items():
                out[f"{column}_q{round(q * 100):02d}"] = values
        per_site = target_d[["site"]].copy()
        per_site[f"{DAILY_TARGET}_naive"] = naive_forecast(known_d, target_d, DAILY_TARGET,
                                                           key="key")
        for q, values in fitted.daily.predict(target_d).items():
            per_site[f"{DAILY_TARGET}_q{round(q * 100):02d}"] = values
        frames.append(out.merge(per_site, on="site", how="left"))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


# -- scores --------------------------------------------------------------------------
def mae(actual: FloatArray, forecast: FloatArray) -> float:
    """Mean absolute error over the pairs where both are known (NaN if none are)."""
    a, f = np.asarray(actual, dtype=float), np.asarray(forecast, dtype=float)
    ok = ~(np.isnan(a) | np.isnan(f))
    return float(np.mean(np.abs(a[ok] - f[ok]))) if ok.any() else float("nan")


def pinball(actual: FloatArray, forecast: FloatArray, q: float) -> float:
    """Mean pinball (quantile) loss of a q-quantile forecast:
    q·(y - f) when y >= f, (1 - q)·(f - y) otherwise (Koenker & Bassett 1978)."""
    a, f = np.asarray(actual, dtype=float), np.asarray(forecast, dtype=float)
    ok = ~(np.isnan(a) | np.isnan(f))
    d = a[ok] - f[ok]
    return float(np.mean(np.maximum(q * d, (q - 1.0) * d))) if ok.any() else float("nan")


def skill(model_mae: float, naive_mae: float) -> float:
    """Skill score 1 - MAE_model / MAE_naive (0: as good as naive; 1: perfect)."""
    return 1.0 - model_mae / naive_mae if naive_mae > 0 else float("nan")


# -- procurement ---------------------------------------------------------------------
@dataclass(frozen=True)
class Settlement:
    """Day-ahead purchase and imbalance settlement over a set of hours (currency
    units as the prices)."""

    day_ahead_kwh: float
    imbalance_kwh: float
    """Sum of |actual - bought| over the hours."""
    short_kwh: float
    long_kwh: float
    day_ahead_cost: float
    imbalance_cost: float
    """Short energy at day-ahead + spread, minus long energy sold back at
    day-ahead - spread (can be negative when long energy at high prices earns)."""

    @property
    def total_cost(self) -> float:
        """What the energy cost in all: day-ahead purchase plus imbalance."""
        return self.day_ahead_cost + self.imbalance_cost


def settle(actual_kwh: FloatArray, bought_kwh: FloatArray, price_per_kwh: FloatArray, *,
           spread_short_per_kwh: float, spread_long_per_kwh: float) -> Settlement:
    """Settle each hour: ``bought`` paid at the day-ahead price; the imbalance
    ``actual - bought`` paid at ``price + spread_short`` when short (> 0) or
    credited at ``price - spread_long`` when long (< 0)."""
    a = np.asarray(actual_kwh, dtype=float)
    b = np.asarray(bought_kwh, dtype=float)
    p = np.asarray(price_per_kwh, dtype=float)
    imb = a - b
    short = np.clip(imb, 0.0, None)
    long = np.clip(-imb, 0.0, None)
    cost = short * (p + spread_short_per_kwh) - long * (p - spread_long_per_kwh)
    return Settlement(float(b.sum()), float(np.abs(imb).sum()), float(short.sum()),
                      float(long.sum()), float((b * p).sum()), float(cost.sum()))


__all__ = ["DAILY_TARGET", "HOURLY_TARGETS", "QUANTILES", "ForecastSettings", "History",
           "QuantileModel", "Settlement", "daily_table", "fit_quantiles", "forecast_days",
           "gate_closure", "hour_starts", "hourly_table", "mae", "naive_forecast", "pinball",
           "sessions_to_arrivals", "settle", "site_map", "skill"]
