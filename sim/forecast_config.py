"""Scenario sections ``[forecast]`` and ``[weather]`` (both optional).

``[forecast]`` turns on the CSMS's day-ahead demand forecast, procurement and
imbalance settlement (replayed after the run by :mod:`evtwin.sim.procurement`)
and, with ``pv_error_nrmse`` > 0, an error on the PV forecast the CSMS plans with.
``[weather]`` gives the run an hourly air temperature: it scales each visit's
energy need (:mod:`evtwin.agents.weather`) and is a feature of the forecast.
A scenario without them runs exactly as before.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from evtwin.agents.weather import CLIMATES


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Forecast(_Strict):
    """The CSMS's day-ahead forecast of its sites' demand and what it buys from it."""

    warmup_days: int = Field(7, ge=1, le=365)
    """Days of history before the first forecast day (the seasonal-naive baseline
    needs a week)."""
    # 12:00 is the EPEX SPOT day-ahead auction's gate closure (EPEX SPOT, "Day-ahead
    # auction", https://www.epexspot.com): orders for the next day until noon.
    gate_closure_h: float = Field(12.0, ge=0, lt=24)
    """Local clock hour on the day before delivery when the forecast is made and the
    energy bought; only data from before it is used."""
    retrain_days: int = Field(7, ge=1)
    """How often (days) the learned model is refitted at a gate closure."""
    # assumption: imbalance prices scatter widely around the day-ahead price (German
    # reBAP, ENTSO-E transparency data); 0.05 per kWh (50 EUR/MWh) each way is a round
    # figure of that order, not a statistic: set it from your market's data.
    imbalance_spread_short_per_kwh: float = Field(0.05, ge=0)
    """Short (drew more than bought): pay day-ahead price + this."""
    imbalance_spread_long_per_kwh: float = Field(0.05, ge=0)
    """Long (drew less than bought): the surplus earns day-ahead price - this."""
    holidays: list[date] = Field(default_factory=list)
    """Public holidays (local dates): a forecast feature, like weekends."""
    # Antonanzas et al. 2016, "Review of photovoltaic power forecasting", Solar Energy
    # 136, 78-111, doi:10.1016/j.solener.2016.06.069, report day-ahead errors in the
    # tens of percent; 0 (the default) keeps the perfect forecast runs had before.
    pv_error_nrmse: float = Field(0.0, ge=0, le=2)
    """Error of the PV forecast the CSMS gets: RMSE of the hourly forecast over the
    daylight hours divided by the mean daylight generation (0.3: 30 %)."""
    # assumption: hour-to-hour persistence 0.8: a misjudged cloud field is wrong for
    # several hours at once.
    pv_error_ar1: float = Field(0.8, ge=0, lt=1)
    """Hour-to-hour correlation of the PV forecast's relative error (AR(1))."""


class Weather(_Strict):
    """Hourly air temperature at the sites: measured (``csv``) or drawn (seeded)."""

    kind: Literal["synthetic", "csv"] = "synthetic"
    csv: str | None = None
    """kind = "csv": columns ``time`` (ISO 8601; without an offset local time in the
    scenario's time zone) and ``temperature_c``, hourly; a relative path is resolved
    against the scenario's folder."""
    climate: str = "central_europe"
    """kind = "synthetic": monthly means of a named climate (see
    evtwin.agents.weather.CLIMATES)."""
    offset_c: float = 0.0
    """Added to every hour (a colder or warmer month than the normal)."""
    energy_effect: bool = True
    """Scale each visit's energy need by the day's temperature factor
    (evtwin.agents.weather.energy_factor)."""

    @model_validator(mode="after")
    def _complete(self) -> Weather:
        if self.kind == "csv" and not self.csv:
            raise ValueError('csv: give the file for kind = "csv"')
        if self.climate not in CLIMATES:
            raise ValueError(f"climate: unknown climate {self.climate!r}; known: "
                             f"{', '.join(sorted(CLIMATES))}")
        return self


__all__ = ["Forecast", "Weather"]
