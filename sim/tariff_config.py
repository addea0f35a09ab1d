"""The scenario's ``[tariff]`` section: what drivers pay (not the operator's energy price,
which is ``[prices]``) and how drivers answer it (``[tariff.response]``).

Optional: a scenario without it runs exactly as before (the CSMS's default flat tariff,
drivers who ignore prices). With it the twin's CSMS bills sessions by this tariff
(:func:`csms_tariff`), publishes it to the drivers (:func:`published_prices`) and the
drivers respond (evtwin.agents.pricing). ``kind`` switches the policy, so one file
compares them: ``evtwin sweep prices.toml --set tariff.kind=flat,tou,occupancy``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evtwin.agents.pricing import IdleRule, SiteInfo, respond_all
from evtwin.agents.pricing import PriceResponse as ResponseParams
from evtwin.csms.model import Tariff
from evtwin.csms.tariffs import TariffBook, energy_price

if TYPE_CHECKING:
    from evtwin.agents.model import ChargingModel


class _Site(Protocol):
    """What this module reads of a scenario's site."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def evse_max_kw(self) -> float: ...
    @property
    def private(self) -> bool: ...


class _Prices(Protocol):
    @property
    def currency(self) -> str: ...


class ScenarioView(Protocol):
    """What this module reads of a scenario (evtwin.sim.scenario.Scenario, which imports
    this module for its ``tariff`` field: a protocol keeps the import one way)."""

    @property
    def tariff(self) -> DriverTariff | None: ...
    @property
    def timezone(self) -> str | None: ...
    @property
    def start(self) -> datetime: ...
    @property
    def seed(self) -> int: ...
    @property
    def step_s(self) -> int: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def prices(self) -> _Prices: ...
    @property
    def sites(self) -> Sequence[_Site]: ...


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: The response model's defaults (evtwin.agents.pricing cites each).
_DEFAULTS = ResponseParams()


class DriverTouBand(_Strict):
    """One band of the driver tariff: from ``start_h`` (local clock) to the next band."""

    start_h: float = Field(ge=0, lt=24, allow_inf_nan=False)
    price_per_kwh: float = Field(ge=0, allow_inf_nan=False)


class PriceResponseSettings(_Strict):
    """How drivers answer prices (evtwin.agents.pricing cites each default)."""

    enabled: bool = True
    """False: drivers ignore prices (the CSMS still bills by the tariff)."""
    flexible_share: float = Field(_DEFAULTS.flexible_share, ge=0, le=1)
    """Share of drivers who would move their arrival for a lower price."""
    shift_window_h: float = Field(_DEFAULTS.shift_window_h, ge=0, le=12)
    """How far a flexible driver moves an arrival, at most, either way."""
    shift_threshold_per_kwh: float = Field(_DEFAULTS.shift_threshold_per_kwh, ge=0)
    """Mean saving per kWh a flexible driver needs before moving (each driver draws
    their own threshold around it)."""
    detour_cost: float = Field(_DEFAULTS.detour_cost, ge=0)
    """What going to another public site costs a driver per visit (currency)."""
    energy_elasticity: float = Field(_DEFAULTS.energy_elasticity, ge=-2, le=0)
    """Price elasticity of the energy a driver takes (constant elasticity, only down)."""
    idle_response_share: float = Field(_DEFAULTS.idle_response_share, ge=0, le=1)
    """Share of drivers who leave once the idle fee would start."""


class DriverTariff(_Strict):
    """The driver-facing tariff the CSMS bills sessions with (evtwin.csms.tariffs)."""

    kind: Literal["flat", "tou", "occupancy"] = "flat"
    energy_per_kwh: float = Field(0.30, ge=0, allow_inf_nan=False)
    """flat and occupancy: the price per kWh (0.30: the CSMS's default flat tariff)."""
    time_per_hour: float = Field(0.0, ge=0, allow_inf_nan=False)
    session_fee: float = Field(0.0, ge=0, allow_inf_nan=False)
    tou: list[DriverTouBand] = Field(default_factory=list)
    """kind = "tou": daily bands, e.g. 0.25 from 0 h, 0.55 from 17 h, 0.25 from 21 h."""
    occupancy_threshold: float = Field(0.8, gt=0, le=1)
    """kind = "occupancy": share of a site's EVSEs in use at a session's start from
    which the surcharge applies to that session."""
    occupancy_surcharge_per_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    idle_fee_per_min: float = Field(0.0, ge=0, allow_inf_nan=False)
    """Any kind: per minute plugged in after charging stopped, beyond the grace."""
    idle_grace_min: float = Field(0.0, ge=0, allow_inf_nan=False)
    idle_fee_cap: float | None = Field(None, ge=0, allow_inf_nan=False)
    """Most idle fee per session (none: no cap)."""
    site_offsets_per_kwh: dict[str, float] = Field(default_factory=dict)
    """Added to every per-kWh price at the named site (negative: cheaper there)."""
    cost_updated_interval_s: float = Field(0.0, ge=0, le=86400)
    """OCPP 2.x CostUpdated to stations at most this often (0: never; the twin's
    virtual stations do not answer it, so leave 0 in twin runs)."""
    response: PriceResponseSettings = PriceResponseSettings()

    @model_validator(mode="after")
    def _complete(self) -> DriverTariff:
        if self.kind == "tou" and not self.tou:
            raise ValueError('tou: give at least one band for kind = "tou"')
        starts = [b.start_h for b in self.tou]
        if len(set(starts)) != len(starts):
            raise ValueError("tou: two bands start at the same hour")
        if self.kind == "occupancy" and self.occupancy_surcharge_per_kwh <= 0:
            raise ValueError('occupancy_surcharge_per_kwh: must be > 0 for kind = "occupancy"')
        return self


def tariff_problems(sc: ScenarioView) -> list[tuple[str, str]]:
    """Problems across sections: a site offset must name a site of the scenario."""
    if sc.tariff is None:
        return []
    names = {s.name for s in sc.sites}
    return [(f"tariff.site_offsets_per_kwh.{name}", f"unknown site {name!r}")
            for name in sc.tariff.site_offsets_per_kwh if name not in names]


def _zone_name(sc: ScenarioView) -> str:
    """The tariff's local clock: the scenario's zone, else its start's fixed offset."""
    if sc.timezone is not None:
        return sc.timezone
    offset = sc.start.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def csms_tariff(sc: ScenarioView) -> Tariff | None:
    """The CSMS's tariff for the scenario (None without ``[tariff]``: the default)."""
    t = sc.tariff
    if t is None:
        return None
    return Tariff(t.energy_per_kwh, t.time_per_hour, t.session_fee, sc.prices.currency,
                  0.0, t.cost_updated_interval_s, kind=t.kind,
                  bands=tuple(sorted((b.start_h, b.price_per_kwh) for b in t.tou)),
                  timezone=_zone_name(sc), occupancy_threshold=t.occupancy_threshold,
                  occupancy_surcharge_per_kwh=t.occupancy_surcharge_per_kwh,
                  idle_fee_per_min=t.idle_fee_per_min, idle_grace_min=t.idle_grace_min,
                  idle_fee_cap=t.idle_fee_cap,
                  site_offsets_per_kwh=tuple(sorted(t.site_offsets_per_kwh.items())),
                  # 2.1 stations are told the tariff they show (SetDefaultTariff).
                  push_to_stations=True)


def published_prices(sc: ScenarioView, tariff: Tariff) -> Callable[[str, float], float]:
    """The tariff as drivers see it: ``price(site, t_s)`` per kWh at ``t_s`` seconds after
    the start, from the CSMS's own tariff object (what its app would publish; the
    occupancy surcharge, decided at the moment, is not in it)."""
    def price(site: str, t_s: float) -> float:
        return energy_price(tariff, sc.start + timedelta(seconds=t_s), site)
    return price


def response_params(r: PriceResponseSettings) -> ResponseParams:
    """The agents' response parameters from the scenario's ``[tariff.response]``."""
    return ResponseParams(flexible_share=r.flexible_share, shift_window_h=r.shift_window_h,
                          shift_threshold_per_kwh=r.shift_threshold_per_kwh,
                          detour_cost=r.detour_cost, energy_elasticity=r.energy_elasticity,
                          idle_response_share=r.idle_response_share)


def apply_price_plan(sc: ScenarioView, model: ChargingModel) -> None:
    """Drivers answer the published tariff: re-plan the drawn visits once before the run
    (shift, switch site, less energy) and set ``model.idle_rule`` (who leaves when the
    idle fee would start; the runner's drivers follow it). Nothing without ``[tariff]``
    or with ``response.enabled = false``. Draws from its own stream (seed, 60)."""
    tariff = csms_tariff(sc)
    model.idle_rule = None
    if tariff is None or sc.tariff is None or not sc.tariff.response.enabled:
        return
    params = response_params(sc.tariff.response)
    sites = {s.name: SiteInfo(s.kind, s.evse_max_kw, not s.private) for s in sc.sites}
    from_data = frozenset(ev.ev_id for ev in model.evs if ev.session_tags)
    drivers = respond_all(model.evs, np.random.default_rng([sc.seed, 60]),
                          price=published_prices(sc, tariff), sites=sites, params=params,
                          reference_per_kwh=sc.tariff.energy_per_kwh,
                          duration_s=sc.duration_s, skip=from_data)
    if tariff.idle_fee_per_min > 0:
        model.idle_rule = IdleRule(
            grace_s=tariff.idle_grace_min * 60.0, step_s=float(sc.step_s),
            leavers=frozenset(ev_id for ev_id, d in drivers.items()
                              if d.leaves_for_idle_fee and ev_id not in from_data))


def price_kpis(sc: ScenarioView, sessions: pd.DataFrame, book: TariffBook | None,
               model: ChargingModel, end_s: float) -> dict[str, float]:
    """The pricing KPIs of a run with ``[tariff]`` (none without): what drivers paid
    (from the CSMS's cost records; NaN when the CSMS is out of reach), per kWh, idle
    fees, utilisation of the EVSEs and how many visits answered the prices."""
    if sc.tariff is None:
        return {}
    nan = float("nan")
    totals = book.totals() if book is not None else {}
    revenue = totals.get("revenue", nan)
    kwh = totals.get("energy_kwh", nan)
    per_session = [c.total / c.energy_kwh for c in (book.final.values() if book else ())
                   if c.energy_kwh > 1e-6]
    evses = sum(len(st.evses) for st in model.stations)
    plugged_h = 0.0
    if not sessions.empty and "plugged_s" in sessions:
        start = pd.to_numeric(sessions["plugged_s"], errors="coerce")
        stop = pd.to_numeric(sessions["unplugged_s"], errors="coerce").fillna(end_s)
        plugged_h = float(((stop - start).clip(lower=0.0)).fillna(0.0).sum()) / 3600.0
    col = sessions.get
    return {
        "driver_revenue": revenue,
        "driver_revenue_per_kwh": revenue / kwh if kwh and kwh > 0 else nan,
        "driver_cost_per_kwh_mean": float(np.mean(per_session)) if per_session else nan,
        "idle_fee_revenue": totals.get("idle_fees", nan),
        "occupancy_surcharge_revenue": totals.get("surcharges", nan),
        "evse_utilisation_percent": 100.0 * plugged_h / (evses * end_s / 3600.0)
        if evses and end_s > 0 else 0.0,
        "sessions_price_shifted": float((col("price_shifted_s", pd.Series(dtype=float))
                                         != 0).sum()),
        "sessions_site_switched": float(col("site_switched_from", pd.Series(dtype=object))
                                        .notna().sum()),
        "sessions_energy_reduced": float((col("energy_reduced_kwh", pd.Series(dtype=float))
                                          > 0).sum()),
        "sessions_left_for_idle_fee": float(col("left_for_idle_fee", pd.Series(dtype=bool))
                                            .fillna(False).astype(bool).sum()),
    }


__all__ = ["DriverTariff", "DriverTouBand", "PriceResponseSettings", "apply_price_plan",
           "csms_tariff", "price_kpis", "published_prices", "response_params",
           "tariff_problems"]
