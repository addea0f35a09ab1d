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
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

SiteKind = Literal["home", "workplace", "public"]


@dataclass(frozen=True, slots=True)
class Behaviour:
    """Distributions for one site kind. Times in hours, energies in kWh.

    Arrival hour: a mixture of normals, component k with weight
    ``arrival_weights[k]``, mean ``arrival_means_h[k]`` and std
    ``arrival_stds_h[k]``, each truncated to [arrival_min_h, arrival_max_h]
    (redrawn inside the bounds, so no spike at a bound). Weekends have their
    own mixture (``weekend_arrival_*``; None: the weekday one). Without a
    mixture (``arrival_means_h`` None) it is one component,
    Normal(arrival_mean_h, arrival_std_h): the old single-normal form.

    Stay (dwell) and energy per visit: a bivariate lognormal. Log dwell has
    median ``dwell_medians_h[k]`` of the arrival component drawn (None:
    ``dwell_median_h`` for all) and log-std ``dwell_sigma``; log energy has
    median ``energy_median_kwh``, log-std ``energy_sigma`` and correlation
    ``dwell_energy_corr`` with the dwell's deviation from its component's
    median. Both are then clipped to their bounds. Stays depend on the arrival
    component because published stays are bimodal in a way no single
    lognormal reproduces (ElaadNL home stays: median 11 h but lower quartile
    4.2 h): daytime arrivals leave the same day, evening arrivals stay the
    night.

    Whether an EV plugs in on a day: probability ``plugin_share`` on a
    weekday and ``plugin_share * weekend_share`` on a Saturday or Sunday
    (see :func:`plugs_in`).
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
    """Chance of a weekend day's visit relative to a weekday's: an EV plugs in on a
    Saturday or Sunday with probability ``plugin_share * weekend_share``."""
    arrival_weights: tuple[float, ...] | None = None
    """Weights of the weekday arrival components (normalised when drawn)."""
    arrival_means_h: tuple[float, ...] | None = None
    arrival_stds_h: tuple[float, ...] | None = None
    dwell_medians_h: tuple[float, ...] | None = None
    """Median stay of each weekday arrival component, hours (None: dwell_median_h)."""
    weekend_arrival_weights: tuple[float, ...] | None = None
    weekend_arrival_means_h: tuple[float, ...] | None = None
    weekend_arrival_stds_h: tuple[float, ...] | None = None
    weekend_dwell_medians_h: tuple[float, ...] | None = None
    dwell_energy_corr: float = 0.0
    """Correlation of log dwell (within its component) and log energy."""
    plugin_share: float = 1.0
    """Chance that an EV plugs in on a given weekday."""

    def components(self, weekend: bool = False
                   ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...],
                              tuple[float, ...]]:
        """``(weights, means_h, stds_h, dwell_medians_h)`` of the arrival mixture,
        weights normalised; the weekday one where the weekend has none."""
        means = self.weekend_arrival_means_h if weekend else None
        if means is not None:
            weights, stds = self.weekend_arrival_weights, self.weekend_arrival_stds_h
            dwells = self.weekend_dwell_medians_h
        else:
            means, weights = self.arrival_means_h, self.arrival_weights
            stds, dwells = self.arrival_stds_h, self.dwell_medians_h
        if means is None:
            return (1.0,), (self.arrival_mean_h,), (self.arrival_std_h,), (self.dwell_median_h,)
        n = len(means)
        w = weights if weights is not None else (1.0,) * n
        total = float(sum(w))
        return (tuple(x / total for x in w), tuple(means),
                tuple(stds if stds is not None else (self.arrival_std_h,) * n),
                tuple(dwells if dwells is not None else (self.dwell_median_h,) * n))

    def dwell_quantile_h(self, q: float) -> float:
        """The ``q`` quantile of a weekday stay (hours): the mixture of the components'
        lognormal stays, clipped to [dwell_min_h, dwell_max_h] as drawn."""
        weights, _, _, medians = self.components()
        unit = NormalDist()

        def cdf(hours: float) -> float:
            if self.dwell_sigma <= 0:
                return sum(w for w, m in zip(weights, medians, strict=True) if m <= hours)
            return sum(w * unit.cdf((np.log(hours) - np.log(m)) / self.dwell_sigma)
                       for w, m in zip(weights, medians, strict=True))

        lo, hi = self.dwell_min_h, self.dwell_max_h
        if cdf(lo) >= q:
            return lo
        if cdf(hi) < q:
            return hi
        for _ in range(60):  # bisection in log hours
            mid = float(np.sqrt(lo * hi))
            lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
        return hi


#: Fields that describe the arrival mixture; an override of the single normal
#: (arrival_mean_h, arrival_std_h) without them replaces the mixture by it.
MIXTURE_FIELDS = ("arrival_weights", "arrival_means_h", "arrival_stds_h",
                  "weekend_arrival_weights", "weekend_arrival_means_h",
                  "weekend_arrival_stds_h")
DWELL_MIXTURE_FIELDS = ("dwell_medians_h", "weekend_dwell_medians_h")


# Calibrated defaults. Each figure is named with the published one it reproduces;
# tests/test_behaviour_calibration.py checks the sampled quantiles against them.
DEFAULTS: dict[str, Behaviour] = {
    "home": Behaviour(
        # Arrivals, ElaadNL private chargers: 10/50/90 % at 12.3/18.5/22.5 h, 41 % in
        # 17-20 h, 34 % in 20-24 h. Three components: daytime (people home by day),
        # the after-work peak and late-evening plug-ins (the overnight chargers).
        arrival_weights=(0.19, 0.47, 0.34), arrival_means_h=(12.2, 18.1, 21.8),
        arrival_stds_h=(3.0, 1.1, 1.2), arrival_mean_h=18.5, arrival_std_h=3.3,
        arrival_min_h=6.0, arrival_max_h=23.95,
        # Stays, ElaadNL private: median 11.0 h, IQR 4.2-14.6 h; daytime arrivals
        # leave the same day, evening ones next morning (My Electric Avenue: leave 6-8 h).
        dwell_medians_h=(2.8, 13.5, 11.0), dwell_median_h=11.0, dwell_sigma=0.45,
        dwell_min_h=0.5, dwell_max_h=20.0,
        # Energy per visit: ElaadNL private median 19.4 kWh; Electric Nation 21.6 kWh
        # per day with a charge. The median here sits above 19.4 because a small
        # battery's headroom caps what it takes.
        energy_median_kwh=20.0, energy_sigma=0.55, energy_min_kwh=2.0, energy_max_kwh=70.0,
        # Longer stays go with more energy (a fuller need waits longer): an assumption.
        dwell_energy_corr=0.3,
        # Electric Nation: about 70 % of EVs plug in on a given day.
        plugin_share=0.7,
        # Assumption: home charging goes on at weekends a little less often.
        weekend_share=0.9),
    "workplace": Behaviour(
        # Arrivals, ElaadNL workplace chargers: 10/50/90 % at 7.3/9.0/14.3 h: the
        # morning peak (ACN-Data: 7-10 h) and later arrivals (part-time, visitors).
        arrival_weights=(0.8, 0.2), arrival_means_h=(8.6, 14.5), arrival_stds_h=(1.15, 2.5),
        arrival_mean_h=9.8, arrival_std_h=2.8, arrival_min_h=5.0, arrival_max_h=22.0,
        # Stays, ACN-Data (Lee, Li, Low 2019; 30,114 sessions): mean 6.9 h; morning
        # arrivals stay the working day, late ones a few hours.
        dwell_medians_h=(7.6, 3.0), dwell_median_h=6.9, dwell_sigma=0.35,
        dwell_min_h=0.5, dwell_max_h=13.0,
        # Energy, ACN-Data: mean 14.7 kWh per session.
        energy_median_kwh=12.6, energy_sigma=0.65, energy_min_kwh=1.0, energy_max_kwh=60.0,
        dwell_energy_corr=0.3,  # assumption, as for home
        # Assumption: a workplace's EVs are its daily users (the published data count
        # sessions, not how often a car comes).
        plugin_share=1.0,
        # ACN-Data: about 2.5 % of sessions on weekends: 2w / (5 + 2w) = 0.025.
        weekend_share=0.064),
    "public": Behaviour(
        # Arrivals, ElaadNL public chargers: a morning peak (8-9 h) and an evening peak
        # (about 18 h), 27 % in 17-20 h; a daytime component between them.
        arrival_weights=(0.3, 0.3, 0.4), arrival_means_h=(8.7, 13.0, 18.5),
        arrival_stds_h=(1.1, 2.3, 1.5), arrival_mean_h=14.0, arrival_std_h=4.3,
        arrival_min_h=6.0, arrival_max_h=23.95,
        # Stays, ElaadNL public: median 4.4 h; morning arrivals park for the working
        # day, daytime ones shop, evening ones (residents without a drive) stay the night.
        dwell_medians_h=(5.5, 1.5, 6.0), dwell_median_h=4.4, dwell_sigma=0.5,
        dwell_min_h=0.25, dwell_max_h=16.0,
        # Energy, ElaadNL public: median 7.2 kWh per session.
        energy_median_kwh=7.2, energy_sigma=0.7, energy_min_kwh=0.5, energy_max_kwh=50.0,
        dwell_energy_corr=0.3,  # assumption, as for home
        plugin_share=1.0,  # assumption, as for workplaces
        weekend_share=0.8),  # assumption: fewer commuters, as many residents
}


def plugs_in(b: Behaviour, u: float, weekend: bool) -> bool:
    """Whether a visit happens, given a uniform draw ``u`` in [0, 1): below
    ``plugin_share`` on weekdays, below ``plugin_share * weekend_share`` at weekends.
    With plugin_share 1 every weekday visit happens, whatever ``u``."""
    return u < b.plugin_share * (b.weekend_share if weekend else 1.0)


BATTERY_KWH = np.array([40.0, 58.0, 77.0, 100.0])
BATTERY_P = np.array([0.2, 0.35, 0.3, 0.15])
ONBOARD = ((11.0, 3), (7.4, 1))  # (kW, phases)
ONBOARD_P = np.array([0.7, 0.3])
EFFICIENCY = 0.92
TAPER_SOC = 0.8


def behaviour_for(kind: str, **overrides: Any) -> Behaviour:
    """Default behaviour for a site kind with some fields replaced.

    Overriding the single normal (``arrival_mean_h`` or ``arrival_std_h``) without
    the mixture fields replaces the default mixture (weekdays and weekends) by that
    one normal; overriding ``dwell_median_h`` without ``dwell_medians_h`` gives every
    component that median. So scenario files written for the single-normal form
    mean what they meant.
    """
    base = DEFAULTS[kind]
    fields: dict[str, Any] = {}
    if ({"arrival_mean_h", "arrival_std_h"} & overrides.keys()
            and not set(MIXTURE_FIELDS) & overrides.keys()):
        fields.update(dict.fromkeys(MIXTURE_FIELDS))
        fields.update(dict.fromkeys(DWELL_MIXTURE_FIELDS))
    if "dwell_median_h" in overrides and not set(DWELL_MIXTURE_FIELDS) & overrides.keys():
        fields.update(dict.fromkeys(DWELL_MIXTURE_FIELDS))
    for prefix in ("", "weekend_"):
        # New component means: the kind's weights, stds and stay medians belong to its own
        # components; what is not given with the means falls back to equal weights,
        # arrival_std_h and dwell_median_h.
        if f"{prefix}arrival_means_h" in overrides:
            for name in ("arrival_weights", "arrival_stds_h", "dwell_medians_h"):
                fields.setdefault(f"{prefix}{name}", None)
    fields.update({k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    return replace(base, **fields)


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


def _truncated_normal(u: float, mean: float, std: float, lo: float, hi: float) -> float:
    """The ``u``-quantile of Normal(mean, std) truncated to [lo, hi]."""
    if std <= 0.0:
        return min(max(mean, lo), hi)
    dist = NormalDist(mean, std)
    a, b = dist.cdf(lo), dist.cdf(hi)
    p = a + u * (b - a)
    if not 0.0 < p < 1.0 or b - a < 1e-12:  # the bounds lie far out in one tail
        return min(max(mean, lo), hi)
    return min(max(dist.inv_cdf(p), lo), hi)


def draw_visit(rng: np.random.Generator, b: Behaviour, vehicle: Vehicle, day_start_s: float,
               start_hour: float, *, weekend: bool = False) -> Visit:
    """Draw one visit on the day beginning at ``day_start_s``.

    ``start_hour`` is the scenario's start time of day, so arrival hours are
    wall-clock hours: an arrival at 18 h in a scenario starting at 12 h comes
    6 h after ``day_start_s``. ``weekend``: draw from the weekend arrival mixture.
    """
    weights, means, stds, dwells = b.components(weekend)
    k = min(int(np.searchsorted(np.cumsum(weights), rng.random(), side="right")),
            len(weights) - 1)
    hour = _truncated_normal(float(rng.random()), means[k], stds[k],
                             b.arrival_min_h, b.arrival_max_h)
    offset_h = (hour - start_hour) % 24.0
    z_dwell, z_other = rng.normal(size=2)
    rho = b.dwell_energy_corr
    z_energy = rho * z_dwell + np.sqrt(max(0.0, 1.0 - rho * rho)) * z_other
    dwell_h = float(np.clip(dwells[k] * np.exp(b.dwell_sigma * z_dwell),
                            b.dwell_min_h, b.dwell_max_h))
    energy = float(np.clip(b.energy_median_kwh * np.exp(b.energy_sigma * z_energy),
                           b.energy_min_kwh, b.energy_max_kwh))
    soc0 = float(rng.uniform(0.15, 0.6))
    target = min(1.0, soc0 + energy / vehicle.capacity_kwh)
    arrival = day_start_s + offset_h * 3600.0
    return Visit(arrival, arrival + dwell_h * 3600.0, soc0, target, b.patience_min * 60.0)
