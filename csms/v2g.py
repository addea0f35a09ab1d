"""V2G strategies: feed back from bidirectional EVs at the feeder's peak or when
energy is dear, recharge later.

Pure functions of the CSMS's view, like every strategy. A negative limit is a
discharge setpoint; the CSMS sends it as an OCPP 2.1 CentralSetpoint (and
as 0 to a station that speaks an older version). Every driver's minimum SoC
is kept by the station; the strategies also keep what they borrow within the
EV's energy above that minimum and plan to recharge it before the EV leaves.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime

import numpy as np

from .feeder import FeederView, feeder_aware
from .model import (
    ASSUMED_CHARGE_EFFICIENCY,
    ASSUMED_DISCHARGE_EFFICIENCY,
    ControlView,
    SessionView,
    SiteView,
)
from .scheduling import (
    SLOT,
    Bidirectional,
    _assumed_done,
    _deadline_key,
    _fallback_first_slot,
    _price_site,
    greedy_fill,
    plan_schedule,
)
from .strategies import EvseKey, Limits, equal_share, is_satisfied, register, usable_cap_kw

__all__ = [
    "CHARGE_EFFICIENCY",
    "DEGRADATION_COST_PER_KWH",
    "DISCHARGE_EFFICIENCY",
    "MIN_DISCHARGE_KW",
    "V2GPlan",
    "plan_v2g_price",
    "v2g_peak_shaving",
    "v2g_price",
]

#: How long a discharge decision holds at most, for the energy it may take (h).
DISCHARGE_HORIZON_H = 0.25
#: Slack on the time needed to recharge before departure.
RECHARGE_MARGIN = 1.5


def _can_lend(s: SessionView, now: datetime) -> float:
    """kW this session may feed back now without endangering its departure energy."""
    if not s.v2x_max_discharge_kw or not s.v2x_spare_kwh or s.departure is None:
        return 0.0
    hours_left = (s.departure - now).total_seconds() / 3600.0
    charge_kw = min(s.max_power_kw, s.ev_max_kw or s.max_power_kw)
    if hours_left <= 0 or charge_kw <= 0:
        return 0.0
    lend_kw = min(s.v2x_max_discharge_kw, s.v2x_spare_kwh / DISCHARGE_HORIZON_H)
    # What it still needs plus what it lends must fit, with margin, in the time left.
    need_kwh = (s.energy_remaining_kwh or 0.0) + lend_kw * DISCHARGE_HORIZON_H
    if need_kwh * RECHARGE_MARGIN > charge_kw * (hours_left - DISCHARGE_HORIZON_H):
        return 0.0
    return lend_kw


@register("v2g_peak_shaving")
def v2g_peak_shaving(view: ControlView) -> Limits:
    """Keep the transformer under a target; at the peak, V2G EVs feed back.

    Charging is allocated by ``feeder_aware`` against a tightened transformer
    limit (``view.v2g_peak_target_percent`` of the real one, set per scenario
    by ``control.v2g_peak_target_percent``), which moves charging out
    of the peak into the valley. If the transformer is still predicted above
    the target, bidirectional EVs that can spare energy (and have time to
    recharge it before they leave) discharge, the most effective first, until
    the prediction meets the target. Without a feeder model: equal_share.
    """
    feeder = view.feeder
    if not isinstance(feeder, FeederView) or feeder.trafo_loading_percent is None:
        return equal_share(view)
    target = feeder.limits.trafo_loading_max_percent * view.v2g_peak_target_percent / 100.0
    tight = dataclasses.replace(feeder, limits=dataclasses.replace(
        feeder.limits, trafo_loading_max_percent=target))
    limits = feeder_aware(dataclasses.replace(view, feeder=tight))

    column = {sid: i for i, sid in enumerate(feeder.station_ids)}
    sessions = [s for site in view.sites for s in site.sessions if s.station_id in column]
    p_new = np.array(feeder.station_p_kw, dtype=float)
    # Stations' EV power after this cycle: allocated sessions at their limit,
    # others as measured.
    allocated = {s.station_id for s in sessions}
    for sid in allocated:
        p_new[column[sid]] = 0.0
    for s in sessions:
        alloc = limits.get((s.station_id, s.evse_id))
        p_new[column[s.station_id]] += s.power_kw if alloc is None else alloc
    delta = p_new - feeder.station_p_kw
    predicted = feeder.trafo_loading_percent + feeder.dtrafo_dp_percent_per_kw @ delta
    worst = int(np.argmax(predicted))
    excess = float(predicted[worst] - target)
    if excess <= 0:
        return limits

    sens = feeder.dtrafo_dp_percent_per_kw[worst]
    lenders = sorted(((s, _can_lend(s, view.now)) for s in sessions),
                     key=lambda x: -(x[1] * sens[column[x[0].station_id]]))
    for s, lend_kw in lenders:
        if excess <= 0 or lend_kw <= 0:
            break
        key = (s.station_id, s.evse_id)
        k = float(sens[column[s.station_id]])
        if k <= 0:
            continue
        charging = limits.get(key) or 0.0
        # Stopping its charging helps first, then feeding back.
        freed = min(charging, excess / k)
        excess -= freed * k
        feed = min(lend_kw, max(excess, 0.0) / k) if excess > 0 else 0.0
        excess -= feed * k
        limits[key] = charging - freed - feed
    return limits


# --------------------------------------------------------------------------- price arbitrage
#: The CSMS's default efficiencies (the plan uses those in the view, i.e. the
#: CSMS's configuration): battery kWh per grid kWh charged, and grid kWh per
#: battery kWh fed back.
CHARGE_EFFICIENCY = ASSUMED_CHARGE_EFFICIENCY
DISCHARGE_EFFICIENCY = ASSUMED_DISCHARGE_EFFICIENCY
#: Battery ageing charged per battery kWh discharged (price units per kWh).
#: A pack at ~120 per kWh that lasts ~3000 equivalent full cycles costs
#: ~0.04 per kWh cycled through it; without this the plan would cycle the
#: battery for a spread of cents.
DEGRADATION_COST_PER_KWH = 0.04
#: Planned net discharges smaller than this (kW) are sent as 0. The plan
#: averages over a 15-minute slot but is re-solved every control cycle, so an
#: EV nearing its minimum SoC would otherwise be sent an ever smaller trickle;
#: a bidirectional converter runs poorly there, the trickle earns nothing, and
#: stopping from at least this much is always a change larger than the CSMS's
#: deadband (a tiny setpoint could otherwise outlive the plan). Not feeding
#: back never endangers a driver's minimum SoC or departure energy.
MIN_DISCHARGE_KW = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class V2GPlan:
    """One site's whole ``v2g_price`` schedule, as planned this control cycle.

    Arrays have one row per planned session (in ``keys`` order) and one
    column per :data:`~evtwin.csms.scheduling.SLOT` starting at ``starts``.
    """

    keys: tuple[EvseKey, ...]
    starts: tuple[datetime, ...]
    charge_kw: np.ndarray
    """Planned charging power (grid side), >= 0."""
    discharge_kw: np.ndarray
    """Planned feed-back power (grid side), >= 0."""
    battery_kwh: np.ndarray
    """Battery energy at each slot end relative to now (kWh), with
    the view's ``charge_efficiency`` and ``discharge_efficiency``."""
    floor_kwh: np.ndarray
    """Lowest ``battery_kwh`` each session may reach: minus its energy above
    the driver's minimum SoC for V2G sessions, 0 for the others."""
    bidirectional: tuple[bool, ...]
    """Whether each session was allowed to feed back."""
    solved: bool

    @property
    def net_kw(self) -> np.ndarray:
        """Charging minus feeding back, kW (what the CSMS sends, per slot)."""
        return self.charge_kw - self.discharge_kw


def _v2g_terms(s: SessionView, view: ControlView) -> Bidirectional | None:
    """How the plan may discharge this session, or None if it must not.

    Only EVs that said they can feed back (OCPP 2.1 V2X parameters), whose
    energy above the minimum SoC is known, and which leave at a known time
    later than now.
    """
    if (not s.v2x_max_discharge_kw or s.v2x_max_discharge_kw <= 0
            or s.v2x_spare_kwh is None or s.departure is None or s.departure <= view.now
            or s.energy_remaining_kwh is None):
        return None
    return Bidirectional(
        max_discharge_kw=s.v2x_max_discharge_kw,
        # The plan counts energy in grid kWh of charging; the spare is battery kWh.
        floor_kwh=max(s.v2x_spare_kwh, 0.0) / view.charge_efficiency,
        recharge_factor=1.0 / (view.charge_efficiency * view.discharge_efficiency))


def _planned(view: ControlView, site: SiteView) -> tuple[list[SessionView],
                                                         list[Bidirectional | None]]:
    """Sessions the LP plans (as :func:`~evtwin.csms.scheduling.price` does, plus
    every V2G session, which may trade even with its needs met) and their V2G terms."""
    out: list[SessionView] = []
    terms: list[Bidirectional | None] = []
    for s in site.sessions:
        b = _v2g_terms(s, view)
        if b is not None or (not is_satisfied(s) and not _assumed_done(s)):
            out.append(s)
            terms.append(b)
    return out, terms


def plan_v2g_price(view: ControlView, site: SiteView) -> V2GPlan:
    """The whole schedule :func:`v2g_price` plans for ``site`` now.

    See :func:`v2g_price` for the program; this exposes every slot, not only
    the first, so the plan can be inspected (and tested).
    """
    sessions, terms = _planned(view, site)
    keys = tuple((s.station_id, s.evse_id) for s in sessions)
    if not sessions:
        empty = np.zeros((0, 1))
        return V2GPlan(keys, (view.now,), empty, empty, empty, np.zeros(0), (), True)
    sched = plan_schedule(
        view.prices, view.now, site.limit_kw, sessions, bidirectional=terms,
        export_prices=view.export_prices,
        discharge_cost_per_kwh=DEGRADATION_COST_PER_KWH / view.discharge_efficiency)
    dt_h = SLOT.total_seconds() / 3600.0
    eta_c, eta_d = view.charge_efficiency, view.discharge_efficiency
    battery = np.cumsum((eta_c * sched.charge_kw - sched.discharge_kw / eta_d) * dt_h, axis=1)
    floor = np.array([0.0 if b is None else -b.floor_kwh * eta_c for b in terms])
    return V2GPlan(keys, sched.starts, sched.charge_kw, sched.discharge_kw, battery, floor,
                   tuple(b is not None for b in terms), sched.solved)


def _first_slot(plan: V2GPlan, limit_kw: float | None) -> list[float]:
    """Net first-slot powers: no discharge below :data:`MIN_DISCHARGE_KW`, and
    the site's limit kept both ways despite that and the solver's tolerance."""
    net = plan.net_kw[:, 0].copy()
    v2g = np.array(plan.bidirectional, dtype=bool)
    net[v2g & (net < 0) & (net > -MIN_DISCHARGE_KW)] = 0.0
    # Solver rounding must not leave a V2G session a few watts of charge either.
    net[v2g & (np.abs(net) < 1e-6)] = 0.0
    if limit_kw is not None:
        limit = max(limit_kw, 0.0)
        draw, feed = float(net[net > 0].sum()), float(-net[net < 0].sum())
        if draw - feed > limit and draw > 0:  # solver tolerance must not breach the limit
            net[net > 0] *= max(0.0, (limit + feed) / draw)
        elif feed - draw > limit and feed > 0:
            net[net < 0] *= max(0.0, (limit + draw) / feed)
    return [float(p) for p in net]


def _v2g_price_site(view: ControlView, site: SiteView) -> Limits:
    """One site's first-slot limits; exactly ``price``'s without a V2G session."""
    sessions, terms = _planned(view, site)
    if all(b is None for b in terms):
        return _price_site(view, site)
    limits: Limits = {(s.station_id, s.evse_id): 0.0 for s in site.sessions}
    plan = plan_v2g_price(view, site)
    if plan.solved:
        limits.update(zip(plan.keys, _first_slot(plan, site.limit_kw), strict=True))
    else:
        sched = plan_schedule(view.prices, view.now, site.limit_kw, sessions)
        limits.update(_fallback_first_slot(site.limit_kw, sessions, sched))
    # As in price: sessions with their assumed energy delivered take what the
    # plan leaves now; energy fed back is not budget for them (it would be
    # bought back at the moment it is sold).
    planned = set(plan.keys)
    rest = sorted((s for s in site.sessions if _assumed_done(s)
                   and (s.station_id, s.evse_id) not in planned), key=_deadline_key)
    if rest:
        used = sum(max(p or 0.0, 0.0) for p in limits.values())
        budget = math.inf if site.limit_kw is None else site.limit_kw - used
        for s, p in zip(rest, greedy_fill(budget, [usable_cap_kw(s) for s in rest]),
                        strict=True):
            limits[(s.station_id, s.evse_id)] = p
    return limits


@register("v2g_price")
def v2g_price(view: ControlView) -> Limits:
    """Price arbitrage with V2G: the :func:`~evtwin.csms.scheduling.price` LP
    with discharge, re-solved every control cycle.

    Per site, a linear program over 15-minute slots up to the latest departure
    (at most 24 h), solved with HiGHS. Each session charges ``c >= 0``; an EV
    that can feed back (OCPP 2.1 V2X, known energy above its minimum SoC and
    known departure) may also discharge ``d >= 0`` (grid side). Minimise the
    import price times ``c``, minus the export price (``view.export_prices``)
    times ``d``, plus :data:`DEGRADATION_COST_PER_KWH` per battery kWh
    discharged, plus a heavy penalty per kWh not delivered by departure.
    Subject to: the battery never falls below the driver's minimum SoC
    (the view's ``discharge_efficiency`` loss per kWh fed back), nor is
    filled beyond what the EV asked for, and reaches it by departure where
    physically possible (slack-penalised otherwise; what was fed back must be
    bought back with the round-trip loss); ``c`` within the caps of
    :func:`~evtwin.csms.scheduling.price`, ``d`` within the EV's discharge
    maximum; per slot ``sum(c - d) <= limit`` and, with a limit,
    ``sum(d - c) <= limit`` (the connection's rating holds both ways; a site
    without a limit may feed back without one). Earlier slots win ties.

    Returns each session's net first-slot power (negative: discharge).
    Sessions that cannot feed back are planned exactly as by ``price``. Without
    a price forecast there is nothing to trade on: :func:`v2g_peak_shaving`.
    """
    if not view.prices:
        return v2g_peak_shaving(view)
    limits: Limits = {}
    for site in view.sites:
        limits.update(_v2g_price_site(view, site))
    return limits
