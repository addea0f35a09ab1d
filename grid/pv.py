"""PV generation: a clear-sky daily shape with seeded weather, or a measured profile.

The clear-sky shape is the Haurwitz (1945) global horizontal irradiance model,
``GHI = 1098 W/m² · cos z · exp(-0.059 / cos z)``, with the sun's zenith ``z``
from the latitude, the day's solar declination (Cooper 1969) and the hour
angle. A plant's output per kWp is ``GHI / 1000 W/m² × performance_ratio``
(a horizontal array; tilt, temperature and inverter clipping are folded into
the performance ratio).

Weather multiplies that by a clear-sky index: one draw per day (how cloudy the
day is, a Beta distribution around ``cloudiness``) times an intraday AR(1)
fluctuation with a 30-minute correlation time (passing clouds), both from the
run's seeded generator, so the same seed gives the same sky.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from evtwin.grid.exceptions import GridError

__all__ = ["PVProfile", "clear_sky_pu", "csv_times", "read_pv_csv"]

FloatArray = npt.NDArray[np.float64]

#: Haurwitz's clear-sky constants (W/m² and the air-mass coefficient).
_HAURWITZ_W_PER_M2 = 1098.0
_HAURWITZ_K = 0.059
#: Irradiance at which a PV module delivers its rated (kWp) power.
_STC_W_PER_M2 = 1000.0
#: Correlation time of passing clouds (s).
_CLOUD_TAU_S = 1800.0
#: Concentration of the daily cloudiness Beta distribution (higher: days alike).
_DAY_CONCENTRATION = 4.0
#: Share of clear-sky output an overcast sky (cloudiness 1) still lets through.
_OVERCAST_INDEX = 0.25


def clear_sky_pu(times: pd.DatetimeIndex, *, latitude_deg: float, solar_noon_h: float,
                 performance_ratio: float = 0.85) -> FloatArray:
    """Clear-sky PV output per kWp at ``times`` (local clock time at the plant)."""
    day = times.dayofyear.to_numpy(dtype=np.float64)
    hour = (times.hour + times.minute / 60.0 + times.second / 3600.0).to_numpy(dtype=np.float64)
    decl = np.radians(23.45) * np.sin(2.0 * np.pi * (284.0 + day) / 365.0)
    omega = np.radians(15.0 * (hour - solar_noon_h))
    lat = math.radians(latitude_deg)
    cos_z = math.sin(lat) * np.sin(decl) + math.cos(lat) * np.cos(decl) * np.cos(omega)
    up = cos_z > 1e-3
    ghi = np.zeros_like(cos_z)
    ghi[up] = _HAURWITZ_W_PER_M2 * cos_z[up] * np.exp(-_HAURWITZ_K / cos_z[up])
    return np.asarray(ghi / _STC_W_PER_M2 * performance_ratio, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class PVProfile:
    """Clear-sky PV with seeded weather, per kWp.

    Attributes:
        latitude_deg: the plant's latitude.
        solar_noon_h: local clock hour of solar noon (about 12.3 h in CET winter,
            13.3 h in CEST summer for central Germany).
        performance_ratio: AC output at 1000 W/m² per kWp (losses, tilt folded in).
        cloudiness: mean daily cloud cover, 0 (always clear) to 1 (always overcast).
        variability: std of the intraday clear-sky-index fluctuation on a partly
            cloudy day (0 = smooth days).
    """

    latitude_deg: float = 51.0
    solar_noon_h: float = 12.5
    performance_ratio: float = 0.85
    cloudiness: float = 0.3
    variability: float = 0.15

    def __post_init__(self) -> None:
        if not -90.0 <= self.latitude_deg <= 90.0:
            raise ValueError(f"latitude_deg must be within ±90, got {self.latitude_deg}")
        if not 0.0 <= self.cloudiness <= 1.0:
            raise ValueError(f"cloudiness must be within 0..1, got {self.cloudiness}")
        if not 0.0 < self.performance_ratio <= 1.0:
            raise ValueError(f"performance_ratio must be within (0, 1], got "
                             f"{self.performance_ratio}")
        if self.variability < 0.0:
            raise ValueError(f"variability must be >= 0, got {self.variability}")

    def series_pu(self, start: datetime, n_steps: int, step_s: float,
                  rng: np.random.Generator) -> FloatArray:
        """Output per kWp at ``start + k·step_s`` for ``k = 0 .. n_steps - 1``.

        Each value is the average over the step that *ends* there (the first is
        the instant at ``start``), so energy over a run does not depend on the
        step. Draws one number per day and one per step from ``rng``.
        """
        # Sample the step averages on a fine grid (at most 5 minutes apart).
        sub = max(1, math.ceil(step_s / 300.0))
        fine_dt = step_s / sub
        n_fine = (n_steps - 1) * sub + 1 if n_steps > 0 else 0
        offsets = np.arange(n_fine, dtype=np.float64) * fine_dt
        naive = start.replace(tzinfo=None)
        times = pd.DatetimeIndex([naive + timedelta(seconds=float(s)) for s in offsets])
        clear = clear_sky_pu(times, latitude_deg=self.latitude_deg,
                             solar_noon_h=self.solar_noon_h,
                             performance_ratio=self.performance_ratio)
        index = self._clear_sky_index(times, fine_dt, rng)
        fine = clear * index
        if sub == 1 or n_steps == 0:
            return np.asarray(fine, dtype=np.float64)
        # Trapezoid average over each step ending at k (k >= 1).
        out = np.empty(n_steps)
        out[0] = fine[0]
        seg = fine.reshape(-1)[: (n_steps - 1) * sub + 1]
        for k in range(1, n_steps):
            part = seg[(k - 1) * sub: k * sub + 1]
            out[k] = float(np.trapezoid(part) / sub)
        return out

    def _clear_sky_index(self, times: pd.DatetimeIndex, dt_s: float,
                         rng: np.random.Generator) -> FloatArray:
        """Daily cloudiness times intraday fluctuation; mean-one noise, >= 0."""
        days = (times.normalize() - times[0].normalize()).days.to_numpy() if len(times) else \
            np.zeros(0, dtype=np.int64)
        n_days = int(days.max()) + 1 if len(days) else 0
        c = self.cloudiness
        if 0.0 < c < 1.0:
            a, b = c * _DAY_CONCENTRATION, (1.0 - c) * _DAY_CONCENTRATION
            cover = rng.beta(a, b, n_days)
        else:
            cover = np.full(n_days, c)
        day_index = 1.0 - (1.0 - _OVERCAST_INDEX) * cover
        # Passing clouds: strongest on half-cloudy days, none on clear or overcast ones.
        sigma = self.variability * 4.0 * cover * (1.0 - cover)
        rho = math.exp(-dt_s / _CLOUD_TAU_S)
        z = rng.standard_normal(len(times))
        ar = np.empty(len(times))
        state = 0.0
        scale = math.sqrt(1.0 - rho * rho)
        for i, zi in enumerate(z):
            state = rho * state + scale * zi
            ar[i] = state
        s = sigma[days]
        fluct = np.exp(s * ar - 0.5 * s * s)
        return np.asarray(np.clip(day_index[days] * fluct, 0.0, 1.2), dtype=np.float64)


def csv_times(raw: pd.Series, zone: tzinfo | None) -> pd.Series:
    """ISO 8601 times of a CSV column as UTC instants: with an offset (which may change
    across daylight saving) as given; without one, local times in ``zone`` (UTC when
    None): a time the clocks skip moves forward, a repeated one is taken once each way
    in file order where the file says so, else the first time."""
    text = raw.astype(str).str.strip()
    if text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$").any():
        return pd.to_datetime(text, utc=True)
    naive = pd.to_datetime(text)
    if zone is None:
        return naive.dt.tz_localize("UTC")
    try:
        local = naive.dt.tz_localize(zone, ambiguous="infer", nonexistent="shift_forward")
    except (ValueError, TypeError):  # a repeated hour the order cannot resolve
        local = naive.dt.tz_localize(zone, ambiguous=True, nonexistent="shift_forward")
    return local.dt.tz_convert("UTC")


def read_pv_csv(path: str | Path, start: datetime, n_steps: int, step_s: float,
                peak_kw: float, zone: tzinfo | None = None) -> FloatArray:
    """A measured or forecast PV profile on the run's steps (kW).

    The file has a ``time`` column (ISO 8601; without an offset a local time in
    ``zone``, default the fixed offset of ``start``; offsets may change, e.g.
    across daylight saving: :func:`csv_times`) and
    either ``p_kw`` (the plant's output) or ``pu`` (output per kWp, scaled by
    ``peak_kw``). Between rows the output is linear. Like the clear-sky
    profile, each step's value is the mean over the step that ends there (row
    0 is the instant at ``start``), so the energy is the file's. It must cover
    the whole run.

    Raises:
        GridError: the file is missing, malformed, has gaps or is too short.
    """
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise GridError(f"{path}: cannot read the PV profile: {exc}") from None
    if "time" not in frame or not ({"p_kw", "pu"} & set(frame.columns)):
        raise GridError(f"{path}: a PV profile needs a 'time' column and 'p_kw' or 'pu'")
    try:
        times = csv_times(frame["time"], zone if zone is not None else start.tzinfo)
        values = (frame["p_kw"].astype(float) if "p_kw" in frame
                  else frame["pu"].astype(float) * peak_kw)
        t_s = np.array([(t.to_pydatetime() - start).total_seconds() for t in times])
    except (ValueError, TypeError, AttributeError) as exc:
        raise GridError(f"{path}: bad PV profile times or values: {exc}") from None
    v = values.to_numpy(dtype=np.float64)
    if not (np.isfinite(v).all() and np.isfinite(t_s).all()):
        raise GridError(f"{path}: the PV profile has empty or non-numeric cells")
    order = np.argsort(t_s, kind="stable")
    t_s, v = t_s[order], v[order]
    end_s = (n_steps - 1) * step_s
    if len(t_s) == 0 or t_s[0] > 0 or t_s[-1] < end_s:
        raise GridError(f"{path}: the PV profile must cover the run "
                        f"({start.isoformat()} + {end_s / 3600:g} h)")
    if np.any(v < 0):
        raise GridError(f"{path}: PV output must be >= 0")
    at = np.arange(n_steps, dtype=np.float64) * float(step_s)
    energy = _energy_kws(t_s, v, at)
    out = np.empty(n_steps)
    out[0] = np.interp(0.0, t_s, v)
    out[1:] = np.diff(energy) / step_s
    return out


def _energy_kws(t_s: FloatArray, v: FloatArray, at: FloatArray) -> FloatArray:
    """Integral of the piecewise-linear ``(t_s, v)`` from ``t_s[0]`` to each ``at`` (kW·s)."""
    dt = np.diff(t_s)
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * dt)])
    i = np.clip(np.searchsorted(t_s, at, side="right") - 1, 0, len(t_s) - 2)
    if len(t_s) == 1:
        return np.asarray(v[0] * (at - t_s[0]), dtype=np.float64)
    x = at - t_s[i]
    slope = np.divide(v[i + 1] - v[i], dt[i], out=np.zeros_like(x), where=dt[i] > 0)
    return np.asarray(cumulative[i] + v[i] * x + 0.5 * slope * x * x, dtype=np.float64)
