"""Household base-load profiles: a time-of-day shape times seeded noise, or each
load's own quarter-hour profile from a SimBench grid."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
import numpy.typing as npt

from evtwin.grid.exceptions import GridError

if TYPE_CHECKING:
    import pandapower as pp

__all__ = ["BaseLoad", "BaseLoadKind", "BaseLoadProfile", "LoadTimeSeries", "ProfileShape",
           "base_load"]

ProfileShape = Literal["residential", "flat"]
#: What a scenario's ``grid.base_load_profile`` may name (see :func:`base_load`).
BaseLoadKind = Literal["residential", "simbench"]

_SECONDS_PER_DAY = 86_400.0
_SECONDS_PER_HOUR = 3_600.0

# Residential demand at each full hour 00:00 ... 23:00, per unit of the household's
# nominal (peak) power.  The shape follows the BDEW standard load profile H0
# (VDEW/BDEW "Standardlastprofil Haushalt", working day, transition season):
# night trough around 03-04 h, morning rise, midday plateau, evening peak at
# 19-20 h.  It is an hourly approximation normalised to its peak, not the official
# quarter-hour table.
_RESIDENTIAL_HOURLY_PU = (
    0.43, 0.33, 0.29, 0.27, 0.27, 0.29, 0.38, 0.55,
    0.64, 0.66, 0.67, 0.72, 0.80, 0.74, 0.64, 0.60,
    0.62, 0.72, 0.87, 0.98, 1.00, 0.93, 0.78, 0.58,
)  # fmt: skip

# Close the day (24:00 == 00:00) so interpolation wraps around midnight.
_HOURS = np.arange(25, dtype=np.float64)
_SHAPES: dict[str, npt.NDArray[np.float64]] = {
    "residential": np.array((*_RESIDENTIAL_HOURLY_PU, _RESIDENTIAL_HOURLY_PU[0])),
    "flat": np.ones(25),
}


@dataclass(frozen=True, slots=True)
class BaseLoadProfile:
    """Multipliers on each household load's nominal power.

    ``t_s`` is simulation time in seconds, with ``t_s = 0`` at midnight; the shape
    repeats every day and is linearly interpolated between full hours.

    Attributes:
        shape: ``"residential"`` (H0-like, peak 1.0 at 20 h) or ``"flat"`` (1.0).
        scale: factor applied to the whole shape (1.0 = nominal power at the peak).
        noise: standard deviation of the multiplicative lognormal noise (0 = none);
            the noise has mean 1 so it does not shift the average demand.
    """

    shape: ProfileShape = "residential"
    scale: float = 1.0
    noise: float = 0.05

    def __post_init__(self) -> None:
        if self.shape not in _SHAPES:
            raise ValueError(f"Unknown profile shape {self.shape!r}; valid: {sorted(_SHAPES)}")
        if not self.scale >= 0.0:
            raise ValueError(f"Profile scale must be >= 0, got {self.scale}")
        if not self.noise >= 0.0:
            raise ValueError(f"Profile noise must be >= 0, got {self.noise}")

    @overload
    def shape_pu(self, t_s: float) -> float: ...
    @overload
    def shape_pu(self, t_s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...

    def shape_pu(self, t_s: float | npt.NDArray[np.float64]) -> float | npt.NDArray[np.float64]:
        """Noise-free multiplier at time ``t_s`` (seconds since midnight of day 0)."""
        hour = np.mod(t_s, _SECONDS_PER_DAY) / _SECONDS_PER_HOUR
        value = self.scale * np.interp(hour, _HOURS, _SHAPES[self.shape])
        if np.ndim(value) == 0:
            return float(value)
        return np.asarray(value, dtype=np.float64)

    def sample(self, t_s: float, rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
        """Multipliers for ``n`` households at time ``t_s``, one independent draw each.

        Always consumes ``n`` standard-normal draws from ``rng``, whatever ``noise``
        is, so runs that differ only in noise keep their random streams aligned.
        """
        z = rng.standard_normal(n)
        sigma = self.noise
        # Lognormal with E[factor] = 1: exp(sigma*z - sigma^2/2).
        factor = np.exp(sigma * z - 0.5 * sigma * sigma)
        factor *= self.shape_pu(float(t_s))
        return factor


@dataclass(frozen=True, eq=False)
class LoadTimeSeries:
    """Each load's own multipliers on its nominal P and Q, from a year of quarter-hour
    profiles (a SimBench grid's ``net.profiles["load"]``).

    ``t_s`` is seconds since midnight of the simulation's first day (as for
    :class:`BaseLoadProfile`). Values are step-held, not interpolated: SimBench's
    values are quarter-hour means, so ``t_s`` in ``[k * 900, (k + 1) * 900)`` takes
    quarter hour ``k`` of the day. The first day is the profile year's day with the
    start's month and day, moved by at most three days to the same weekday (household
    and commercial profiles differ on weekends); the year wraps around.

    Use :meth:`from_simbench`; the fields are its tables.

    Attributes:
        p_table, q_table: relative profiles ``(steps, profiles)``; the last column is
            ones (for loads without a profile).
        columns: each load's column of the tables, in ``net.load`` row order.
        offset_steps: the table row at ``t_s = 0``.
        step_s: the tables' resolution in seconds.
        scale: factor on every load's power (as ``BaseLoadProfile.scale``).
        noise: standard deviation of the multiplicative lognormal noise (mean 1; the
            same draw on a load's P and Q).
    """

    p_table: npt.NDArray[np.float64]
    q_table: npt.NDArray[np.float64]
    columns: npt.NDArray[np.intp]
    offset_steps: int
    step_s: float = 900.0
    scale: float = 1.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        if not self.scale >= 0.0:
            raise ValueError(f"Profile scale must be >= 0, got {self.scale}")
        if not self.noise >= 0.0:
            raise ValueError(f"Profile noise must be >= 0, got {self.noise}")

    @classmethod
    def from_simbench(cls, net: pp.pandapowerNet, start: date | datetime, *,
                      scale: float = 1.0, noise: float = 0.0) -> LoadTimeSeries:
        """The profiles of ``net``'s loads (``net.load["profile"]`` names the columns
        ``<profile>_pload`` / ``<profile>_qload`` of ``net.profiles["load"]``), with
        ``t_s = 0`` at midnight of ``start``'s day.

        Raises:
            GridError: the net has no SimBench load profiles, or a load names a
                profile the table lacks.
        """
        profiles = net.get("profiles")
        table = profiles.get("load") if isinstance(profiles, dict) else None
        if table is None or "profile" not in net.load.columns:
            raise GridError("the network has no SimBench load profiles "
                            "(net.profiles['load'] and net.load['profile'])")
        names = net.load["profile"]
        known = sorted({str(n) for n in names.dropna()})
        lacking = [n for n in known if f"{n}_pload" not in table or f"{n}_qload" not in table]
        if lacking:
            raise GridError(f"load profiles missing from net.profiles['load']: {lacking}")
        ones = np.ones((len(table), 1))
        p_table = np.hstack([table[[f"{n}_pload" for n in known]].to_numpy(np.float64), ones])
        q_table = np.hstack([table[[f"{n}_qload" for n in known]].to_numpy(np.float64), ones])
        col_of = {n: i for i, n in enumerate(known)}
        columns = np.array([len(known) if not isinstance(n, str) else col_of[n]
                            for n in names], dtype=np.intp)
        first = datetime.strptime(str(table["time"].iloc[0]), "%d.%m.%Y %H:%M")
        second = datetime.strptime(str(table["time"].iloc[1]), "%d.%m.%Y %H:%M")
        step_s = (second - first).total_seconds()
        return cls(p_table, q_table, columns, _first_row(first, start, step_s, len(table)),
                   step_s=step_s, scale=scale, noise=noise)

    @property
    def n_loads(self) -> int:
        """Number of loads (``net.load`` rows) the series is for."""
        return len(self.columns)

    def row(self, t_s: float) -> int:
        """The table row that holds at ``t_s`` (step-held, wrapping around the year)."""
        return (self.offset_steps + int(t_s // self.step_s)) % len(self.p_table)

    def factors(self, t_s: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Noise-free multipliers on each load's nominal P and Q at ``t_s``."""
        r = self.row(t_s)
        return (self.scale * self.p_table[r, self.columns],
                self.scale * self.q_table[r, self.columns])

    def sample(self, t_s: float, rng: np.random.Generator, n: int
               ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Multipliers on P and Q for the ``n`` loads at ``t_s`` with noise; always
        draws ``n`` standard normals from ``rng`` (as BaseLoadProfile.sample)."""
        if n != self.n_loads:
            raise ValueError(f"the series has {self.n_loads} loads, not {n}")
        z = rng.standard_normal(n)
        sigma = self.noise
        noise = np.exp(sigma * z - 0.5 * sigma * sigma)
        p, q = self.factors(t_s)
        return p * noise, q * noise


def _first_row(first: datetime, start: date | datetime, step_s: float, rows: int) -> int:
    """The row of ``start``'s midnight in a table that begins at ``first``."""
    day = start.date() if isinstance(start, datetime) else start
    year = first.year
    try:
        same = date(year, day.month, day.day)
    except ValueError:  # 29 February in a profile year that has none
        same = date(year, 2, 28)
    shift = (day.weekday() - same.weekday() + 3) % 7 - 3
    target = datetime.combine(same + timedelta(days=shift), datetime.min.time())
    # Keep the weekday inside the profile year: a shift past either end moves a week
    # (wrapping around the year would land on another weekday).
    end = first + timedelta(seconds=rows * step_s)
    if target < first:
        target += timedelta(days=7)
    elif target + timedelta(days=1) > end:
        target -= timedelta(days=7)
    return int((target - first).total_seconds() // step_s) % rows


#: A base load the feeder accepts.
BaseLoad = BaseLoadProfile | LoadTimeSeries


def base_load(kind: BaseLoadKind, net: pp.pandapowerNet, start: date | datetime, *,
              scale: float = 1.0, noise: float = 0.05) -> BaseLoad:
    """The base load a scenario's ``grid.base_load_profile`` names: ``"residential"``
    (one H0-like shape for every load) or ``"simbench"`` (each load's SimBench profile,
    :meth:`LoadTimeSeries.from_simbench` with ``t_s = 0`` at ``start``'s midnight)."""
    if kind == "simbench":
        return LoadTimeSeries.from_simbench(net, start, scale=scale, noise=noise)
    if kind != "residential":
        raise ValueError(f"Unknown base load {kind!r}; valid: 'residential', 'simbench'")
    return BaseLoadProfile("residential", scale=scale, noise=noise)
