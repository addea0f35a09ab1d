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
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

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
    "edf",
    "greedy_fill",
    "laxity_h",
    "llf",
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


def _solve_lp(prices: Sequence[tuple[datetime, float]], now: datetime,
              limit_kw: float | None, sessions: Sequence[SessionView]) -> dict[EvseKey, float]:
    """First-slot powers of the cheapest schedule that delivers what is possible.

    Variables ``p[i, t]`` (kW, session i, slot t) and one slack per session (kWh
    it will miss). Minimise ``sum price[t] * p[i, t] * dt + penalty * slack``
    subject to ``0 <= p[i, t] <= cap_i`` (scaled by the part of the slot before
    departure), ``sum_i p[i, t] <= limit``, and ``need_i <= sum_t p[i, t] * dt
    + slack_i``, ``sum_t p[i, t] * dt <= remaining_i``, where need is the
    remaining energy or what the cap allows before departure, whichever is less.
    """
    dt_h = _hours(SLOT)
    deadlines = [s.departure if s.departure is not None else now + HORIZON for s in sessions]
    # A session past its departure is still plugged in: it should finish in the first slot.
    deadlines = [max(d, now + SLOT) for d in deadlines]
    end = min(max(deadlines), now + HORIZON)
    n_t = max(1, math.ceil((end - now) / SLOT - 1e-9))
    n = len(sessions)
    starts = [now + k * SLOT for k in range(n_t)]
    price = np.array([_step_average(prices, a, a + SLOT) for a in starts])

    ub = np.zeros((n, n_t))
    for i, (s, dep) in enumerate(zip(sessions, deadlines, strict=True)):
        frac = np.clip([(dep - a) / SLOT for a in starts], 0.0, 1.0)
        ub[i] = hardware_cap_kw(s) * frac
        ub[i, 0] = min(ub[i, 0], usable_cap_kw(s))
    possible = ub.sum(axis=1) * dt_h
    remaining = np.array([_INF if s.energy_remaining_kwh is None else s.energy_remaining_kwh
                          for s in sessions])
    need = np.minimum(remaining, possible)

    # Among equally cheap slots, prefer the earlier one (robust to early departures
    # and forecast errors, and makes the optimum unique).
    scale = max(float(np.abs(price).max()), 1e-3)
    tiebreak = 1e-4 * scale * np.arange(n_t) / n_t
    penalty = 1e3 * (scale + 1.0)
    c = np.concatenate([np.tile((price + tiebreak) * dt_h, n), np.full(n, penalty)])

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

    for i in range(n):
        slots = range(i * n_t, (i + 1) * n_t)
        add([*((j, -dt_h) for j in slots), (n * n_t + i, -1.0)], -float(need[i]))
        if math.isfinite(remaining[i]):
            add(((j, dt_h) for j in slots), float(remaining[i]))
    if limit_kw is not None:
        for t in range(n_t):
            add(((i * n_t + t, 1.0) for i in range(n)), max(limit_kw, 0.0))
    a_ub = coo_matrix((vals, (rows, cols)), shape=(row, n * n_t + n)).tocsr()
    bounds = [(0.0, float(u)) for u in ub.ravel()] + [(0.0, None)] * n
    res = linprog(c, A_ub=a_ub, b_ub=np.array(b), bounds=bounds, method="highs")
    if res.status != 0 or res.x is None:
        # Cannot happen with the slack (the zero schedule is feasible); keep
        # charging deadline-first rather than stop everyone if it ever does.
        order = sorted(range(n), key=lambda i: _deadline_key(sessions[i]))
        budget = _INF if limit_kw is None else limit_kw
        shares = greedy_fill(budget, [float(ub[i, 0]) for i in order])
        return {_key(sessions[i]): p for i, p in zip(order, shares, strict=True)}
    first = np.clip(res.x[: n * n_t].reshape(n, n_t)[:, 0], 0.0, ub[:, 0])
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
    """Charge from local PV surplus; from the grid only to meet a departure.

    ``view.pv_forecast_kw`` is read as the surplus of the whole CSMS (all
    sites together); its current step is the PV budget. First every session
    about to miss its departure gets what it needs from PV or grid (a laxity
    below :data:`URGENCY_WINDOW`: a share of its cap growing to all of it as
    laxity reaches 0), most urgent first within its site's limit. The PV
    left over is then given in earliest-deadline order, each up to its cap
    and within its site's limit. Everyone else gets 0: no PV, no charging.
    """
    now = view.now
    pv_left = max(0.0, step_value(view.pv_forecast_kw, now))
    limits: Limits = {}
    site_left: dict[str, float] = {}
    for site in view.sites:
        budget = _INF if site.limit_kw is None else max(site.limit_kw, 0.0)
        for s in sorted(site.sessions, key=lambda s: (laxity_h(s, now), *_deadline_key(s))):
            p = min(_urgent_kw(s, now), usable_cap_kw(s), budget)
            limits[_key(s)] = p
            budget -= p
            pv_left -= p
        site_left[site.name] = budget
    pv_left = max(pv_left, 0.0)

    everyone = [(site, s) for site in view.sites for s in site.sessions]
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
