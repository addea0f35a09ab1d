"""Deadline-, price- and PV-aware smart-charging strategies.

Like those in :mod:`evtwin.csms.strategies`, each is a pure function of the
CSMS's :class:`~evtwin.csms.model.ControlView` returning a limit per EVSE in kW
(``None``: no limit from the CSMS), so the same code runs in the twin and on a
real site. They use only what the CSMS knows: each session's departure and
remaining energy (stated by the EV, or the site's defaults that the core fills
in), its EVSE's and EV's maximum power, its present draw, and the price and PV
forecasts.

Shared rules:

* A session's *cap* is :func:`~evtwin.csms.strategies.usable_cap_kw`: EVSE
  maximum, EV maximum when stated, and the present draw plus a headroom when
  the EV draws clearly less than its last limit. Deadline arithmetic (laxity,
  what can still be delivered) uses :func:`~evtwin.csms.strategies.hardware_cap_kw`.
* An EV that stated its needs and has them met gets 0. A session whose
  *assumed* energy (site default, the EV said nothing) is delivered is served
  last, with whatever budget nobody else needs: the default is a guess, and
  cutting such an EV off while budget sits idle would only lose energy.
* A session past its departure that is still plugged in counts as most urgent.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from .model import ControlView, SessionView, SiteView
from .strategies import (
    EvseKey,
    Limits,
    hardware_cap_kw,
    is_satisfied,
    register,
    usable_cap_kw,
)

__all__ = [
    "HORIZON",
    "SLOT",
    "URGENCY_WINDOW",
    "Bidirectional",
    "Schedule",
    "edf",
    "greedy_fill",
    "laxity_h",
    "llf",
    "plan_schedule",
    "price",
    "pv_self_consumption",
    "step_value",
]

#: Length of one slot of the price optimisation.
SLOT = timedelta(minutes=15)
#: The price optimisation looks no further ahead than this.
HORIZON = timedelta(hours=24)
#: pv_self_consumption draws from the grid for a session whose laxity is below this.
URGENCY_WINDOW = timedelta(minutes=15)

_INF = math.inf


def _key(s: SessionView) -> EvseKey:
    return (s.station_id, s.evse_id)


def _hours(delta: timedelta) -> float:
    return delta.total_seconds() / 3600.0


def _assumed_done(s: SessionView) -> bool:
    """Served last, from what is left: the site's default energy is delivered but
    the EV never said what it wants, or the EV itself takes nothing (SuspendedEV)."""
    if s.charging_state == "SuspendedEV":
        return True
    return (not s.needs_stated and s.energy_remaining_kwh is not None
            and s.energy_remaining_kwh <= 0.0)


def _deadline_key(s: SessionView) -> tuple[float, str, int]:
    """Sort key for earliest deadline first (unknown departure last, ties by id)."""
    dep = _INF if s.departure is None else s.departure.timestamp()
    return (dep, s.station_id, s.evse_id)


def laxity_h(s: SessionView, now: datetime) -> float:
    """Hours a session can still wait and finish at its full rate by departure.

    ``(departure - now) - energy_remaining / cap``; negative once it can no
    longer finish in time; infinite if departure or need is unknown.
    """
    if s.departure is None or s.energy_remaining_kwh is None:
        return _INF
    cap = hardware_cap_kw(s)
    need_h = 0.0 if s.energy_remaining_kwh <= 0 else (
        _INF if cap <= 0 else s.energy_remaining_kwh / cap)
    return _hours(s.departure - now) - need_h


def greedy_fill(budget_kw: float, caps_kw: Sequence[float]) -> list[float]:
    """Give each in turn as much as its cap allows until ``budget_kw`` is used.

    The order of ``caps_kw`` is the priority order; ``budget_kw`` may be ``inf``.
    """
    left = max(budget_kw, 0.0)
    out: list[float] = []
    for cap in caps_kw:
        share = min(max(cap, 0.0), left)
        out.append(share)
        left -= share
    return out


def _priority_fill(site: SiteView, budget_kw: float, order: list[SessionView]) -> Limits:
    """Fill ``budget_kw`` in ``order``; assumed-done sessions after everyone, stated-done get 0."""
    active = [s for s in order if not is_satisfied(s) and not _assumed_done(s)]
    rest = [s for s in order if _assumed_done(s)]
    queue = active + rest
    shares = greedy_fill(budget_kw, [usable_cap_kw(s) for s in queue])
    limits: Limits = {_key(s): 0.0 for s in site.sessions}
    limits.update({_key(s): p for s, p in zip(queue, shares, strict=True)})
    return limits


def _by_priority(view: ControlView, order_key: Callable[[SessionView], Any]) -> Limits:
    limits: Limits = {}
    for site in view.sites:
        if site.limit_kw is None:
            limits.update({_key(s): None for s in site.sessions})
            continue
        order = sorted(site.sessions, key=order_key)
        limits.update(_priority_fill(site, site.limit_kw, order))
    return limits


@register("edf")
def edf(view: ControlView) -> Limits:
    """Earliest deadline first under each site's limit.

    Sessions in order of departure (stated, or the site's default dwell) each
    get their whole cap until the site's limit is used up. Sites without a
    limit are left uncontrolled.
    """
    return _by_priority(view, _deadline_key)


@register("llf")
def llf(view: ControlView) -> Limits:
    """Least laxity first under each site's limit.

    Laxity is ``(departure - now) - energy_remaining / cap`` (:func:`laxity_h`);
    sessions in increasing laxity (ties: earlier departure) each get their
    whole cap until the site's limit is used up. Sites without a limit are left
    uncontrolled.
    """
    def key(s: SessionView) -> tuple[float, float, str, int]:
        return (laxity_h(s, view.now), *_deadline_key(s))

    return _by_priority(view, key)


# --------------------------------------------------------------------------- price
def step_value(steps: Sequence[tuple[datetime, float]], at: datetime, *,
               default: float = 0.0) -> float:
    """The value of a sorted (start, value) step series at ``at``.

    Before the first step the first value holds; ``default`` for no steps.
    """
    if not steps:
        return default
    i = bisect.bisect_right(steps, at, key=lambda step: step[0])
    return steps[max(i - 1, 0)][1]


def _step_average(steps: Sequence[tuple[datetime, float]], start: datetime,
                  end: datetime) -> float:
    """Time-weighted mean of a sorted step series over [start, end)."""
    lo = bisect.bisect_right(steps, start, key=lambda step: step[0])
    hi = bisect.bisect_left(steps, end, key=lambda step: step[0])
    points = [start, *(t for t, _ in steps[lo:hi]), end]
    total = sum(step_value(steps, a) * (b - a).total_seconds()
                for a, b in itertools.pairwise(points))
    return total / max((end - start).total_seconds(), 1e-9)


def _price_site(view: ControlView, site: SiteView) -> Limits:
    """Solve the cost-minimising LP for one site and return its first slot."""
    now = view.now
    limits: Limits = {_key(s): 0.0 for s in site.sessions}
    plan = [s for s in site.sessions if not is_satisfied(s) and not _assumed_done(s)]
    if plan:
        limits.update(_solve_lp(view.prices, now, site.limit_kw, plan))
    # Sessions with their assumed energy delivered take what the plan leaves now.
    rest = sorted((s for s in site.sessions if _assumed_done(s)), key=_deadline_key)
    if rest:
        used = sum(p for p in limits.values() if p is not None)
        budget = _INF if site.limit_kw is None else site.limit_kw - used
        for s, p in zip(rest, greedy_fill(budget, [usable_cap_kw(s) for s in rest]),
                        strict=True):
            limits[_key(s)] = p
    return limits


@dataclass(frozen=True, slots=True)
class Bidirectional:
    """What the shared LP may do with a session that can feed back (V2G).

    Energies are in *grid-charge kWh*: the grid energy that charging would
    need to put the same amount into the battery, so that a session without
    V2G is planned exactly as by :func:`price`.
    """

    max_discharge_kw: float
    """Most the session may feed back (grid side, kW)."""
    floor_kwh: float
    """How far its cumulative net charge may fall below zero (>= 0): the
    energy above the driver's minimum SoC."""
    recharge_factor: float
    """Grid-charge kWh that replace one grid kWh fed back (round-trip loss, >= 1)."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A solved site schedule: one row per session, one column per slot (kW)."""

    starts: tuple[datetime, ...]
    """Start of each slot (slots are :data:`SLOT` long)."""
    charge_kw: np.ndarray
    """Planned charging power, >= 0."""
    discharge_kw: np.ndarray
    """Planned feed-back power (grid side), >= 0; zeros for sessions without V2G."""
    charge_cap_kw: np.ndarray
    """Upper bound on each charge_kw (caps, scaled by the part of a slot before departure)."""
    discharge_cap_kw: np.ndarray
    """Upper bound on each discharge_kw."""
    solved: bool
    """False if the solver failed (then both plans are zero)."""


def plan_schedule(prices: Sequence[tuple[datetime, float]], now: datetime,
                  limit_kw: float | None, sessions: Sequence[SessionView], *,
                  bidirectional: Sequence[Bidirectional | None] | None = None,
                  export_prices: Sequence[tuple[datetime, float]] = (),
                  discharge_cost_per_kwh: float = 0.0) -> Schedule:
    """The cheapest schedule that delivers what is possible, for one site.

    Variables ``c[i, t]`` (kW charging, session i, slot t), one slack per
    session (kWh it will miss) and, for each session with a
    :class:`Bidirectional` entry, ``d[i, t]`` (kW fed back, grid side).
    Minimise ``sum price[t] * c * dt + penalty * slack + sum (cost - export[t])
    * d * dt`` (``cost`` is ``discharge_cost_per_kwh`` per grid kWh fed back)
    subject to ``0 <= c[i, t] <= cap_i`` (scaled by the part of the slot before
    departure), ``sum_i c[i, t] - d[i, t] <= limit``, and, with ``E_i(t) =
    sum_{k <= t} (c[i, k] - r_i * d[i, k]) * dt`` (``r_i`` the recharge
    factor, no ``d`` without V2G), ``need_i <= E_i(end) + slack_i`` and
    ``E_i(end) <= remaining_i``, where need is the remaining energy or what the
    cap allows before departure, whichever is less. For V2G sessions also
    ``-floor_i <= E_i(t) <= remaining_i`` at every slot end, ``0 <= d[i, t] <=
    max_discharge_i`` (scaled likewise) and ``sum_i d[i, t] - c[i, t] <= limit``.
    """
    # Imported here, not at the top: scipy costs ~0.5 s, and a CSMS running edf or
    # llf (this module) never solves an LP.
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    dt_h = _hours(SLOT)
    deadlines = [s.departure if s.departure is not None else now + HORIZON for s in sessions]
    # A session past its departure is still plugged in: it should finish in the first slot.
    deadlines = [max(d, now + SLOT) for d in deadlines]
    end = min(max(deadlines), now + HORIZON)
    n_t = max(1, math.ceil((end - now) / SLOT - 1e-9))
    n = len(sessions)
    starts = [now + k * SLOT for k in range(n_t)]
    price = np.array([_step_average(prices, a, a + SLOT) for a in starts])
    v2g = [(i, bi) for i, bi in enumerate(bidirectional or ()) if bi is not None]
    m = len(v2g)

    ub = np.zeros((n, n_t))
    dub = np.zeros((n, n_t))
    for i, (s, dep) in enumerate(zip(sessions, deadlines, strict=True)):
        frac = np.clip([(dep - a) / SLOT for a in starts], 0.0, 1.0)
        ub[i] = hardware_cap_kw(s) * frac
        ub[i, 0] = min(ub[i, 0], usable_cap_kw(s))
    for i, bi in v2g:
        dub[i] = max(bi.max_discharge_kw, 0.0) * np.clip(
            [(deadlines[i] - a) / SLOT for a in starts], 0.0, 1.0)
    possible = ub.sum(axis=1) * dt_h
    remaining = np.array([_INF if s.energy_remaining_kwh is None else s.energy_remaining_kwh
                          for s in sessions])
    need = np.minimum(remaining, possible)

    # Among equally cheap slots, prefer the earlier one (robust to early departures
    # and forecast errors, and makes the optimum unique).
    scale = max(float(np.abs(price).max()), 1e-3)
    export = np.zeros(n_t)
    if m:
        export = np.array([_step_average(export_prices, a, a + SLOT) if export_prices else 0.0
                           for a in starts])
        scale = max(scale, float(np.abs(export).max()))
    tiebreak = 1e-4 * scale * np.arange(n_t) / n_t
    penalty = 1e3 * (scale + 1.0)
    c = np.concatenate([np.tile((price + tiebreak) * dt_h, n), np.full(n, penalty),
                        np.tile((discharge_cost_per_kwh - export + tiebreak) * dt_h, m)])
    d0 = n * n_t + n  # first discharge column

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    b: list[float] = []
    row = 0

    def add(entries: Iterable[tuple[int, float]], rhs: float) -> None:
        nonlocal row
        for col, val in entries:
            rows.append(row)
            cols.append(col)
            vals.append(val)
        b.append(rhs)
        row += 1

    # V2G sessions carry their energy state e[t] = E(t) as variables, so each
    # slot adds a few nonzeros rather than a growing prefix sum.
    e0 = d0 + m * n_t  # first energy-state column
    eq_rows: list[int] = []
    eq_cols: list[int] = []
    eq_vals: list[float] = []
    v2g_of = {i: (j, bi) for j, (i, bi) in enumerate(v2g)}
    for i in range(n):
        slots = range(i * n_t, (i + 1) * n_t)
        if i not in v2g_of:
            add([*((j, -dt_h) for j in slots), (n * n_t + i, -1.0)], -float(need[i]))
            if math.isfinite(remaining[i]):
                add(((j, dt_h) for j in slots), float(remaining[i]))
            continue
        j, bi = v2g_of[i]
        add([(e0 + (j + 1) * n_t - 1, -1.0), (n * n_t + i, -1.0)], -float(need[i]))
        for t in range(n_t):
            # e[t] - e[t-1] - c[t] * dt + r * d[t] * dt = 0
            for col, val in ((e0 + j * n_t + t, 1.0), (i * n_t + t, -dt_h),
                             (d0 + j * n_t + t, bi.recharge_factor * dt_h)):
                eq_rows.append(j * n_t + t)
                eq_cols.append(col)
                eq_vals.append(val)
            if t:
                eq_rows.append(j * n_t + t)
                eq_cols.append(e0 + j * n_t + t - 1)
                eq_vals.append(-1.0)
    if limit_kw is not None:
        for t in range(n_t):
            add([*((i * n_t + t, 1.0) for i in range(n)),
                 *((d0 + j * n_t + t, -1.0) for j in range(m))], max(limit_kw, 0.0))
        if m:
            # The connection's rating holds both ways: feed back no more than may be drawn.
            for t in range(n_t):
                add([*((i * n_t + t, -1.0) for i in range(n)),
                     *((d0 + j * n_t + t, 1.0) for j in range(m))], max(limit_kw, 0.0))
    n_var = n * n_t + n + 2 * m * n_t
    a_ub = coo_matrix((vals, (rows, cols)), shape=(row, n_var)).tocsr()
    bounds = ([(0.0, float(u)) for u in ub.ravel()] + [(0.0, None)] * n
              + [(0.0, float(u)) for i, _ in v2g for u in dub[i]]
              + [(-max(bi.floor_kwh, 0.0),
                  float(remaining[i]) if math.isfinite(remaining[i]) else None)
                 for i, bi in v2g for _ in range(n_t)])
    eq_args: dict[str, Any] = {}
    if m:
        eq_args = {"A_eq": coo_matrix((eq_vals, (eq_rows, eq_cols)),
                                      shape=(m * n_t, n_var)).tocsr(),
                   "b_eq": np.zeros(m * n_t)}
        c = np.concatenate([c, np.zeros(m * n_t)])
    res = linprog(c, A_ub=a_ub, b_ub=np.array(b), bounds=bounds, method="highs", **eq_args)
    charge = np.zeros((n, n_t))
    discharge = np.zeros((n, n_t))
    solved = res.status == 0 and res.x is not None
    if solved:
        charge = np.clip(res.x[: n * n_t].reshape(n, n_t), 0.0, ub)
        for j, (i, _) in enumerate(v2g):
            discharge[i] = np.clip(res.x[d0 + j * n_t: d0 + (j + 1) * n_t], 0.0, dub[i])
    return Schedule(starts=tuple(starts), charge_kw=charge, discharge_kw=discharge,
                    charge_cap_kw=ub, discharge_cap_kw=dub, solved=solved)


def _fallback_first_slot(limit_kw: float | None, sessions: Sequence[SessionView],
                         plan: Schedule) -> dict[EvseKey, float]:
    """Deadline-first charging in the first slot, for when the solver fails."""
    # Cannot happen with the slack (the zero schedule is feasible); keep
    # charging deadline-first rather than stop everyone if it ever does.
    order = sorted(range(len(sessions)), key=lambda i: _deadline_key(sessions[i]))
    budget = _INF if limit_kw is None else limit_kw
    shares = greedy_fill(budget, [float(plan.charge_cap_kw[i, 0]) for i in order])
    return {_key(sessions[i]): p for i, p in zip(order, shares, strict=True)}


def _solve_lp(prices: Sequence[tuple[datetime, float]], now: datetime,
              limit_kw: float | None, sessions: Sequence[SessionView]) -> dict[EvseKey, float]:
    """First-slot powers of the cheapest schedule that delivers what is possible
    (:func:`plan_schedule` without V2G)."""
    plan = plan_schedule(prices, now, limit_kw, sessions)
    if not plan.solved:
        return _fallback_first_slot(limit_kw, sessions, plan)
    first = plan.charge_kw[:, 0].copy()
    if limit_kw is not None and first.sum() > limit_kw > 0:
        first *= limit_kw / first.sum()  # solver tolerance must not breach the limit
    return {_key(s): float(p) for s, p in zip(sessions, first, strict=True)}


@register("price")
def price(view: ControlView) -> Limits:
    """Cheapest schedule over the remaining horizon, re-solved every control cycle.

    A linear program over 15-minute slots up to the latest departure (at most
    24 h ahead) per site, solved with HiGHS: charge in the cheapest slots
    while delivering, before departure, what each session still needs or as
    much as its cap allows, within the site's limit. Energy that cannot be
    delivered is penalised rather than made infeasible. Among equally priced
    slots the earlier is used. Returns each session's power in the first
    slot. Sites without a limit are optimised too (price shifting needs no
    limit). Without a price forecast this is :func:`edf`.
    """
    if not view.prices:
        return edf(view)
    limits: Limits = {}
    for site in view.sites:
        limits.update(_price_site(view, site))
    return limits


# --------------------------------------------------------------------------- PV
def _urgent_kw(s: SessionView, now: datetime) -> float:
    """Power a session must get now to still finish: rises from 0 at a laxity of
    :data:`URGENCY_WINDOW` to its whole cap at laxity 0 (or past departure)."""
    lax = laxity_h(s, now)
    if not math.isfinite(lax) or is_satisfied(s) or _assumed_done(s):
        return 0.0
    window = _hours(URGENCY_WINDOW)
    return hardware_cap_kw(s) * min(1.0, max(0.0, 1.0 - lax / window))


@register("pv_self_consumption")
def pv_self_consumption(view: ControlView) -> Limits:
    """Charge from local PV; from the grid only to meet a departure.

    Where sites report their own PV (``SiteView.pv_forecast_kw``, the PV
    behind each site's connection), each site follows its own forecast and
    sites without PV charge earliest-deadline-first within their limit (there
    is no PV to wait for). Otherwise ``view.pv_forecast_kw`` is read as the
    surplus of the whole CSMS, shared by all sites.

    Within a PV pool: first every session about to miss its departure gets
    what it needs from PV or grid (a laxity below :data:`URGENCY_WINDOW`: a
    share of its cap growing to all of it as laxity reaches 0), most urgent
    first within its site's limit. The PV left over is then given in
    earliest-deadline order, each up to its cap and within its site's limit.
    Everyone else gets 0: no PV, no charging.
    """
    now = view.now
    if not any(site.pv_forecast_kw for site in view.sites):
        return _follow_pv(view.sites, max(0.0, step_value(view.pv_forecast_kw, now)), now)
    limits: Limits = {}
    for site in view.sites:
        if site.pv_forecast_kw:
            limits.update(_follow_pv((site,), max(0.0, step_value(site.pv_forecast_kw, now)),
                                     now))
        elif site.limit_kw is None:
            limits.update({_key(s): None for s in site.sessions})
        else:
            limits.update(_priority_fill(site, site.limit_kw,
                                         sorted(site.sessions, key=_deadline_key)))
    return limits


def _follow_pv(sites: Sequence[SiteView], pv_kw: float, now: datetime) -> Limits:
    """Share ``pv_kw`` among ``sites``' sessions (see :func:`pv_self_consumption`)."""
    pv_left = pv_kw
    limits: Limits = {}
    site_left: dict[str, float] = {}
    for site in sites:
        budget = _INF if site.limit_kw is None else max(site.limit_kw, 0.0)
        for s in sorted(site.sessions, key=lambda s: (laxity_h(s, now), *_deadline_key(s))):
            p = min(_urgent_kw(s, now), usable_cap_kw(s), budget)
            limits[_key(s)] = p
            budget -= p
            pv_left -= p
        site_left[site.name] = budget
    pv_left = max(pv_left, 0.0)

    everyone = [(site, s) for site in sites for s in site.sessions]
    queue = sorted(((site, s) for site, s in everyone
                    if not is_satisfied(s) and not _assumed_done(s)),
                   key=lambda x: _deadline_key(x[1]))
    queue += sorted(((site, s) for site, s in everyone if _assumed_done(s)),
                    key=lambda x: _deadline_key(x[1]))
    for site, s in queue:
        if pv_left <= 0:
            break
        have = limits[_key(s)] or 0.0
        extra = min(usable_cap_kw(s) - have, site_left[site.name], pv_left)
        if extra > 0:
            limits[_key(s)] = have + extra
            site_left[site.name] -= extra
            pv_left -= extra
    return limits
