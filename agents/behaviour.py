"""Driver behaviour: when EVs arrive, how long they stay, how much they want.

Defaults per site kind, with their sources. The numbers are read off the
published distributions, rounded; they are starting points, every one of
them can be overridden per scenario.

- home: Quirós-Tortós, Navarro-Espinosa, Ochoa, Butler, "Statistical
  representation of EV charging: real data analysis and applications",
  PSCC 2018 (My Electric Avenue trial, ~200 EVs on UK LV feeders): plug-in
  peaks 17-20 h, most stay overnight and leave 6-8 h.
- workplace: Lee, Li, Low, "ACN-Data: analysis and applications of an open
  EV charging dataset", e-Energy 2019 (Caltech/JPL workplace): arrivals peak
  7-10 h, stays of several hours, energy typically 5-30 kWh.
- public: ElaadNL open data as described by Orfanoudakis et al., "EV2Gym",
  IEEE T-ITS 2024: daytime arrivals spread 8-20 h, connection times of a
  few hours, median energy around 8-10 kWh.
- fleet: battery sizes of common European EVs 2023-24 (40-100 kWh); AC
  on-board chargers 11 kW three-phase or 7.4 kW single-phase.
- weekends: the sources agree that workplace charging is a weekday
  activity and home and public charging go on at weekends; the weekend
  shares below (home 0.9, workplace 0.1, public 0.8 of weekday visits) are
  our assumptions in that direction, not figures read off the papers.
- efficiency: 0.92 grid-to-battery for AC charging (Apostolaki-Iosifidou,
  Codani, Kempton, "Measurement of power loss during electric vehicle
  charging and discharging", Energy 2017: 85-95 % depending on power).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

SiteKind = Literal["home", "workplace", "public"]


@dataclass(frozen=True, slots=True)
class Behaviour:
    """Distributions for one site kind. Times in hours, energies in kWh.

    Arrival hour ~ Normal(arrival_mean_h, arrival_std_h) clipped to
    [arrival_min_h, arrival_max_h]; dwell ~ LogNormal with median
    ``dwell_median_h`` and log-std ``dwell_sigma`` clipped to
    [dwell_min_h, dwell_max_h]; energy wanted ~ LogNormal with median
    ``energy_median_kwh`` and log-std ``energy_sigma``.
    """

    arrival_mean_h: float
    arrival_std_h: float
    arrival_min_h: float
    arrival_max_h: float
    dwell_median_h: float
    dwell_sigma: float
    dwell_min_h: float
    dwell_max_h: float
    energy_median_kwh: float
    energy_sigma: float
    energy_min_kwh: float = 1.0
    energy_max_kwh: float = 60.0
    patience_min: float = 15.0
    weekend_share: float = 1.0
    """Chance that a driver's daily visit also happens on a Saturday or Sunday."""


DEFAULTS: dict[str, Behaviour] = {
    "home": Behaviour(18.5, 1.5, 14.0, 23.5, 12.5, 0.12, 8.0, 16.0, 9.0, 0.5,
                      weekend_share=0.9),
    "workplace": Behaviour(8.5, 1.0, 6.0, 11.5, 7.5, 0.3, 1.0, 11.0, 10.0, 0.6, 2.0, 40.0,
                           weekend_share=0.1),
    "public": Behaviour(13.0, 3.5, 7.0, 21.0, 2.5, 0.6, 0.5, 10.0, 8.0, 0.7, 1.0, 50.0,
                        weekend_share=0.8),
}

BATTERY_KWH = np.array([40.0, 58.0, 77.0, 100.0])
BATTERY_P = np.array([0.2, 0.35, 0.3, 0.15])
ONBOARD = ((11.0, 3), (7.4, 1))  # (kW, phases)
ONBOARD_P = np.array([0.7, 0.3])
EFFICIENCY = 0.92
TAPER_SOC = 0.8


def behaviour_for(kind: str, **overrides: float) -> Behaviour:
    """Default behaviour for a site kind with some fields replaced."""
    return replace(DEFAULTS[kind], **overrides)


@dataclass(frozen=True, slots=True)
class Visit:
    """One charging visit as drawn: times in seconds since the scenario start."""

    arrival_s: float
    departure_s: float
    soc_initial: float
    target_soc: float
    patience_s: float
    site: str | None = None
    """Where the EV charges on this visit when not at its own site (a commuter's
    workplace); None: its own site."""


@dataclass(frozen=True, slots=True)
class Vehicle:
    """The fixed properties of one EV."""

    capacity_kwh: float
    max_power_kw: float
    phases: int
    efficiency: float = EFFICIENCY
    taper_soc: float = TAPER_SOC
    bidirectional: bool = False
    """Can feed energy back (V2G) when its station asks for a negative setpoint."""
    max_discharge_kw: float = 0.0


def draw_vehicle(rng: np.random.Generator) -> Vehicle:
    """Draw an EV from the default fleet mix."""
    capacity = float(rng.choice(BATTERY_KWH, p=BATTERY_P))
    power, phases = ONBOARD[int(rng.choice(len(ONBOARD), p=ONBOARD_P))]
    return Vehicle(capacity_kwh=capacity, max_power_kw=power, phases=phases)


def draw_visit(rng: np.random.Generator, b: Behaviour, vehicle: Vehicle, day_start_s: float,
               start_hour: float) -> Visit:
    """Draw one visit on the day beginning at ``day_start_s``.

    ``start_hour`` is the scenario's start time of day, so arrival hours are
    wall-clock hours: an arrival at 18 h in a scenario starting at 12 h comes
    6 h after ``day_start_s``.
    """
    hour = float(np.clip(rng.normal(b.arrival_mean_h, b.arrival_std_h),
                         b.arrival_min_h, b.arrival_max_h))
    offset_h = (hour - start_hour) % 24.0
    dwell_h = float(np.clip(b.dwell_median_h * np.exp(rng.normal(0.0, b.dwell_sigma)),
                            b.dwell_min_h, b.dwell_max_h))
    energy = float(np.clip(b.energy_median_kwh * np.exp(rng.normal(0.0, b.energy_sigma)),
                           b.energy_min_kwh, b.energy_max_kwh))
    soc0 = float(rng.uniform(0.15, 0.6))
    target = min(1.0, soc0 + energy / vehicle.capacity_kwh)
    arrival = day_start_s + offset_h * 3600.0
    return Visit(arrival, arrival + dwell_h * 3600.0, soc0, target, b.patience_min * 60.0)
