"""Distributed resources of a scenario: PV plants and stationary batteries.

Built once per run: each PV entry becomes one feeder injection per bus with its
whole generation series precomputed (seeded), each battery one feeder load
with its own dispatch (see :mod:`evtwin.agents.storage`). Every step the
runner asks :meth:`DerSet.step` for the powers to put into the power flow.

The CSMS gets, per site, a forecast of the PV behind the site's connection:
the mean of the generation to come over each clock hour. That is hindsight
(the run's own weather), i.e. a perfect day-ahead forecast at hourly
resolution; only passing clouds within the hour are not in it. With
``[forecast] pv_error_nrmse`` > 0 it gets a seeded day-ahead error instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from evtwin.agents.storage import StationaryBattery
from evtwin.grid import GridError, PVProfile, read_pv_csv

from .exceptions import ScenarioError
from .scenario import Scenario

FloatArray = npt.NDArray[np.float64]
Steps = tuple[tuple[datetime, float], ...]


@dataclass
class DerStep:
    """What the resources did over one step."""

    der_p_kw: FloatArray
    """Per feeder injection point, load convention (negative = feeding in)."""
    pv_kw_by_site: dict[str, float]
    storage_kw_by_site: dict[str, float]
    pv_kw: float
    storage_kw: float


@dataclass
class DerSet:
    """The scenario's PV and storage, as feeder injection points."""

    buses: list[int]
    """Feeder bus of each injection point: PV elements first, then batteries."""
    pv_kw: FloatArray
    """Generation per step (rows, as the run's steps) and PV element (columns), kW."""
    pv_site: list[str | None]
    batteries: list[StationaryBattery] = field(default_factory=list)
    pv_error_nrmse: float = 0.0
    """Error of the PV forecast the CSMS gets (see :meth:`site_forecasts`); 0: none."""
    pv_error_ar1: float = 0.8
    pv_error_seed: int = 0

    @property
    def empty(self) -> bool:
        """True when the scenario has no PV and no storage."""
        return not self.buses

    def step(self, k: int, site_ev_kw: dict[str, float], price_per_kwh: float,
             step_h: float, site_limit_kw: dict[str, float] | None = None) -> DerStep:
        """Powers over the step that ends at row ``k`` (row 0: the start instant).

        Each battery measures its site's net demand (EV charging minus the
        site's PV) and sets its power by its dispatch rule; it never charges
        the site's import above ``site_limit_kw`` (the connection's limit).
        """
        limits = site_limit_kw or {}
        pv = self.pv_kw[k] if len(self.pv_site) else np.zeros(0)
        pv_by_site: dict[str, float] = {}
        for site, p in zip(self.pv_site, pv, strict=True):
            if site is not None:
                pv_by_site[site] = pv_by_site.get(site, 0.0) + float(p)
        st_by_site: dict[str, float] = {}
        powers = []
        for b in self.batteries:
            net = site_ev_kw.get(b.site, 0.0) - pv_by_site.get(b.site, 0.0) + st_by_site.get(
                b.site, 0.0)
            p = b.step(net, price_per_kwh, step_h,
                       import_cap_kw=limits.get(b.site, float("inf"))) if k > 0 else 0.0
            st_by_site[b.site] = st_by_site.get(b.site, 0.0) + p
            powers.append(p)
        der = np.concatenate([-np.asarray(pv, dtype=np.float64), np.array(powers)])
        return DerStep(der, pv_by_site, st_by_site, float(pv.sum()), float(sum(powers)))

    def site_forecasts(self, start: datetime, step_s: float, *,
                       error: bool = True) -> dict[str, Steps]:
        """Per site, the mean of its PV over each clock hour, as (start, kW) steps.

        With ``pv_error_nrmse`` > 0 (and ``error``), each hour's value is multiplied
        by ``1 + sigma * z``: ``z`` a unit-variance AR(1) series per site (hour-to-hour
        correlation ``pv_error_ar1``; stream ``[seed, 50, site index]``), ``sigma``
        chosen so that the RMSE over the daylight hours is ``pv_error_nrmse`` times the
        mean daylight generation (sigma = nRMSE * mean / RMS of the true hours);
        negative values are cut to 0.
        """
        out: dict[str, Steps] = {}
        # Step k >= 1 covers (k-1, k]: bucket it by the clock hour it starts in.
        seconds_into_hour = start.minute * 60 + start.second
        hour_of = ((seconds_into_hour + np.arange(len(self.pv_kw) - 1) * step_s) // 3600
                   ).astype(int)
        sorted_sites = sorted({s for s in self.pv_site if s is not None})
        for site in sorted_sites:
            cols = [i for i, s in enumerate(self.pv_site) if s == site]
            series = self.pv_kw[1:, cols].sum(axis=1)
            hours = np.unique(hour_of)
            means = np.array([series[hour_of == h].mean() for h in hours], dtype=np.float64)
            if error and self.pv_error_nrmse > 0:
                means = self._with_error(means, sorted_sites.index(site))
            steps = []
            for h, value in zip(hours, means, strict=True):
                at = start if h == 0 else (start.replace(minute=0, second=0, microsecond=0)
                                           + timedelta(hours=int(h)))
                steps.append((at, float(value)))
            out[site] = tuple(steps)
        return out

    def _with_error(self, hourly_kw: FloatArray, index: int) -> FloatArray:
        """``hourly_kw`` with the multiplicative AR(1) forecast error of site ``index``."""
        day = hourly_kw[hourly_kw > 0]
        if not day.size:
            return hourly_kw
        sigma = self.pv_error_nrmse * float(day.mean()) / float(np.sqrt(np.mean(day**2)))
        rng = np.random.default_rng([self.pv_error_seed, 50, index])
        eps = rng.standard_normal(len(hourly_kw))
        phi = self.pv_error_ar1
        z = np.empty_like(eps)
        z[0] = eps[0]
        for k in range(1, len(eps)):
            z[k] = phi * z[k - 1] + np.sqrt(1.0 - phi**2) * eps[k]
        return np.asarray(np.clip(hourly_kw * (1.0 + sigma * z), 0.0, None), dtype=np.float64)


def _price_quantile(prices: Steps, q: float) -> float:
    return float(np.quantile([p for _, p in prices], q))


def build_der(sc: Scenario, station_buses: list[int], station_sites: list[str],
              known_buses: set[int], prices: Steps) -> DerSet:
    """PV elements and batteries of ``sc`` with their buses and series.

    ``known_buses`` are the buses resources may go on (in service, supplied).

    Raises:
        ScenarioError: a bus does not exist or a PV profile file is unusable
            (naming the scenario field).
    """
    n_rows = int(sc.duration_s // sc.step_s) + 1
    buses: list[int] = []
    pv_cols: list[FloatArray] = []
    pv_site: list[str | None] = []
    problems: list[tuple[str, str]] = []
    site_buses = {s.name: sorted({b for b, site in zip(station_buses, station_sites,
                                                        strict=True) if site == s.name})
                  for s in sc.sites}
    def unusable(bus: int) -> str:
        return f"no bus {bus} in {sc.grid.network} (or it is out of service or not supplied)"

    for i, plant in enumerate(sc.pv):
        where = plant.buses if plant.buses is not None else site_buses.get(plant.site or "", [])
        bad = [(j, b) for j, b in enumerate(where) if b not in known_buses]
        if bad:
            problems += [(f"pv.{i}.buses.{j}", unusable(b)) for j, b in bad]
            continue
        if plant.profile == "csv":
            assert plant.csv is not None
            try:
                kw = read_pv_csv(plant.csv, sc.start, n_rows, sc.step_s, plant.peak_kw,
                                 sc.local_zone())
            except GridError as exc:
                problems.append((f"pv.{i}.csv", str(exc)))
                continue
        else:
            rng = np.random.default_rng([sc.seed, 2, i])
            kw = plant.peak_kw * PVProfile(
                latitude_deg=plant.latitude_deg, solar_noon_h=plant.solar_noon_h,
                performance_ratio=plant.performance_ratio, cloudiness=plant.cloudiness,
                variability=plant.variability).series_pu(sc.start, n_rows, sc.step_s, rng)
        for bus in where:
            buses.append(int(bus))
            pv_cols.append(kw / len(where))
            pv_site.append(plant.site)
    batteries = []
    for i, st in enumerate(sc.storage):
        default = site_buses.get(st.site) or []
        where_st = st.bus if st.bus is not None else (default[0] if default else None)
        if where_st is None or where_st not in known_buses:
            problems.append((f"storage.{i}.bus", unusable(where_st or -1)))
            continue
        site = next(s for s in sc.sites if s.name == st.site)
        target = st.target_kw if st.target_kw is not None else (site.limit_kw or 0.0)
        batteries.append(StationaryBattery(
            name=st.name, site=st.site, capacity_kwh=st.capacity_kwh, power_kw=st.power_kw,
            soc=st.soc_initial, soc_min=st.soc_min, soc_max=st.soc_max,
            efficiency=st.efficiency, dispatch=st.dispatch, target_kw=target,
            charge_below_price=(st.charge_below_price if st.charge_below_price is not None
                                else _price_quantile(prices, 0.25)),
            discharge_above_price=(st.discharge_above_price
                                   if st.discharge_above_price is not None
                                   else _price_quantile(prices, 0.75))))
        buses.append(int(where_st))
    if problems:
        raise ScenarioError(sc.name, problems)
    pv = np.column_stack(pv_cols) if pv_cols else np.zeros((n_rows, 0))
    fc = sc.forecast
    return DerSet(buses, pv, pv_site, batteries,
                  pv_error_nrmse=fc.pv_error_nrmse if fc is not None else 0.0,
                  pv_error_ar1=fc.pv_error_ar1 if fc is not None else 0.8,
                  pv_error_seed=sc.seed)
