"""Household base-load profiles: time-of-day shape times seeded noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import numpy.typing as npt

__all__ = ["BaseLoadProfile", "ProfileShape"]

ProfileShape = Literal["residential", "flat"]

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
