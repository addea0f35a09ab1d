"""Weather that changes what drivers need: air temperature and EV energy use.

An EV uses more energy per kilometre in the cold (cabin heating, a cold battery)
and in the heat (air conditioning), so a visit after a cold day's driving needs
more energy. :func:`energy_factor` gives that relation; :func:`scale_visits`
applies the day's factor to drawn visits by lowering their arrival SoC.
:func:`synthetic_temperature` makes a seeded hourly temperature series
(monthly means, a daily cycle, day-to-day AR(1) anomalies) when no measured
series is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from .behaviour import Visit

FloatArray = npt.NDArray[np.float64]

#: Air temperature at which an EV uses the least energy per km (°C).
# assumption: 21.5 °C, the mild Pacific-coast climate Yuksel & Michalek (2015) take
# as the reference; the curve below is anchored to their extremes.
OPTIMUM_C = 21.5

#: Consumption rise per (°C below the optimum)², and per (°C above it)².
# Yuksel & Michalek 2015, "Effects of regional temperature on electric vehicle
# efficiency, range, and emissions in the United States", Environ. Sci. Technol.
# 49(6), doi:10.1021/es505621s: on the coldest days in Rochester, MN, a Nissan
# Leaf's range falls 36 % below its median (consumption x 1/0.64 = 1.56), on a
# 105 °F (40.5 °C) day in Phoenix from 69 to 49 miles (x 1.41).
# assumption: the coldest Rochester day is a -20 °C daily mean; both sides quadratic.
COLD_PER_C2 = (1.0 / 0.64 - 1.0) / (OPTIMUM_C + 20.0) ** 2
HEAT_PER_C2 = (69.0 / 49.0 - 1.0) / (40.5 - OPTIMUM_C) ** 2

#: Monthly mean air temperature (°C), January first, per named climate.
CLIMATES: dict[str, tuple[float, ...]] = {
    # assumption: rounded monthly means close to Deutscher Wetterdienst's 1991-2020
    # climate normals for Germany as a whole (annual mean about 9.3 °C); check the
    # station normals (DWD Climate Data Center) before relying on a site's values.
    "central_europe": (0.9, 1.6, 4.7, 9.0, 13.0, 16.3, 18.3, 18.0, 13.9, 9.3, 4.9, 1.9),
    # assumption: a mild maritime climate (north-west Europe coast), rounded.
    "maritime": (4.0, 4.2, 6.5, 9.0, 12.5, 15.0, 17.3, 17.3, 14.8, 11.3, 7.5, 4.8),
    # assumption: a cold continental climate (upper US Midwest), rounded.
    "continental": (-10.0, -7.5, -0.5, 7.5, 14.5, 19.5, 22.0, 20.7, 15.8, 8.8, 0.0, -7.5),
}

#: Half the daily swing of temperature (°C): coolest about 05 h, warmest about 15 h.
# assumption: a mean diurnal range of 8 K, typical of inland central Europe.
DAILY_AMPLITUDE_C = 4.0
#: Day-to-day anomaly of the daily mean: AR(1) persistence and innovation std (°C).
# assumption: weather spells last a few days (lag-one autocorrelation 0.7) and daily
# means scatter about 3 K around the monthly mean: an innovation std of 2.1 K gives a
# stationary std of 2.1 / sqrt(1 - 0.7²) = 2.9 K.
ANOMALY_AR1 = 0.7
ANOMALY_STD_C = 2.1


def energy_factor(temp_c: float | FloatArray) -> float | FloatArray:
    """Energy use relative to the optimum temperature (1.0 at :data:`OPTIMUM_C`)."""
    t = np.asarray(temp_c, dtype=float)
    below = np.clip(OPTIMUM_C - t, 0.0, None)
    above = np.clip(t - OPTIMUM_C, 0.0, None)
    out = 1.0 + COLD_PER_C2 * below**2 + HEAT_PER_C2 * above**2
    return float(out) if out.ndim == 0 else out


def scale_visit(visit: Visit, factor: float) -> Visit:
    """``visit`` with its energy need (target SoC - arrival SoC) times ``factor``: the
    driver arrives with a lower SoC (never below 0)."""
    need = max(0.0, visit.target_soc - visit.soc_initial) * factor
    return replace(visit, soc_initial=max(0.0, visit.target_soc - need))


def scale_visits(visits: Sequence[Visit], factor_at: Callable[[float], float]) -> list[Visit]:
    """Each visit scaled by ``factor_at(arrival_s)`` (the arrival day's factor)."""
    return [scale_visit(v, factor_at(v.arrival_s)) for v in visits]


def synthetic_temperature(months: npt.ArrayLike, days: npt.ArrayLike, hours: npt.ArrayLike,
                          rng: np.random.Generator, *, climate: str = "central_europe",
                          daily_amplitude_c: float = DAILY_AMPLITUDE_C,
                          anomaly_ar1: float = ANOMALY_AR1,
                          anomaly_std_c: float = ANOMALY_STD_C) -> FloatArray:
    """Hourly air temperature (°C) for local times given as month (1-12), a running
    day number (0, 1, ...: the day the hour belongs to) and hour of day (0-24).

    Daily mean: the month's mean (:data:`CLIMATES`) plus an AR(1) anomaly drawn once
    per day from ``rng``; a cosine daily cycle peaks at 15 h.
    """
    m = np.asarray(months, dtype=int)
    d = np.asarray(days, dtype=int)
    h = np.asarray(hours, dtype=float)
    if climate not in CLIMATES:
        raise ValueError(f"unknown climate {climate!r}; known: {', '.join(sorted(CLIMATES))}")
    n_days = int(d.max()) + 1 if d.size else 0
    anomaly = np.zeros(n_days)
    stationary = anomaly_std_c / np.sqrt(max(1e-9, 1.0 - anomaly_ar1**2))
    noise = rng.standard_normal(n_days)
    for k in range(n_days):
        anomaly[k] = (noise[k] * stationary if k == 0
                      else anomaly_ar1 * anomaly[k - 1] + anomaly_std_c * noise[k])
    mean = np.asarray(CLIMATES[climate])[m - 1]
    cycle = daily_amplitude_c * np.cos(2.0 * np.pi * (h - 15.0) / 24.0)
    return np.asarray(mean + anomaly[d] + cycle, dtype=np.float64)


__all__ = ["CLIMATES", "OPTIMUM_C", "energy_factor", "scale_visit", "scale_visits",
           "synthetic_temperature"]
