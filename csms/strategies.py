"""Smart-charging strategies: pure functions of the CSMS's view.

A strategy takes a :class:`~evtwin.csms.model.ControlView` and returns a limit
per EVSE in kW, keyed by ``(station_id, evse_id)``; ``None`` means "no limit
from the CSMS" (the station charges at its own maximum). Strategies never see
the simulator: the same function runs in the twin and on a real site.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .exceptions import UnknownStrategyError
from .model import ControlView, SessionView

EvseKey = tuple[str, int]
Limits = dict[EvseKey, float | None]
Strategy = Callable[[ControlView], Limits]

_REGISTRY: dict[str, Strategy] = {}

#: Strategies defined in modules that are imported on first use, by name. Their
#: modules pull in numpy, scipy and (feeder_aware) the grid model; a CSMS that
#: runs ``equal_share`` should not pay seconds of start-up for them.
#: ``tests/test_csms_startup.py`` checks this table against the ``@register``
#: calls in those modules.
_LAZY: dict[str, str] = {
    "edf": "evtwin.csms.scheduling",
    "llf": "evtwin.csms.scheduling",
    "price": "evtwin.csms.scheduling",
    "pv_self_consumption": "evtwin.csms.scheduling",
    "feeder_aware": "evtwin.csms.feeder",
    "v2g_peak_shaving": "evtwin.csms.v2g",
    "v2g_price": "evtwin.csms.v2g",
}


def register(name: str) -> Callable[[Strategy], Strategy]:
    """Register a strategy under ``name`` (decorator)."""

    def deco(fn: Strategy) -> Strategy:
        _REGISTRY[name] = fn
        return fn

    return deco


def get_strategy(name: str) -> Strategy:
    """Return the strategy registered as ``name`` or raise UnknownStrategyError.

    A built-in strategy whose module is not imported yet is imported here.
    """
    if name not in _REGISTRY and name in _LAZY:
        importlib.import_module(_LAZY[name])
        if name not in _REGISTRY:  # the table above is out of date
            raise RuntimeError(f"{_LAZY[name]} does not register strategy {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownStrategyError(name, strategy_names()) from None


def strategy_names() -> list[str]:
    """Names of all strategies, registered or built in (not yet imported), sorted."""
    return sorted(_REGISTRY.keys() | _LAZY.keys())


def strategy_module(name: str) -> str | None:
    """The module that registered strategy ``name`` (None if it is not registered yet:
    a built-in one is imported on first use). Another process imports it to know it."""
    fn = _REGISTRY.get(name)
    return None if fn is None else fn.__module__


def check_strategy_name(name: str) -> str:
    """Return ``name`` if a strategy is known under it, else raise ValueError
    listing the known ones (for config validators). Imports nothing."""
    if name not in _REGISTRY and name not in _LAZY:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(strategy_names())}")
    return name


@register("uncontrolled")
def uncontrolled(view: ControlView) -> Limits:
    """Every EVSE charges at its own maximum: the CSMS sets no limit."""
    return {(s.station_id, s.evse_id): None for site in view.sites for s in site.sessions}


def water_fill(budget_kw: float, caps_kw: list[float]) -> list[float]:
    """Split ``budget_kw`` equally, never giving anyone more than their cap.

    What a capped session cannot use is shared among the others (water
    filling), so the budget is used up whenever the caps allow it.
    """
    n = len(caps_kw)
    shares = [0.0] * n
    remaining = max(budget_kw, 0.0)
    order = sorted(range(n), key=lambda i: caps_kw[i])
    for rank, i in enumerate(order):
        fair = remaining / (n - rank)
        shares[i] = min(caps_kw[i], fair)
        remaining -= shares[i]
    return shares


def line_shares(s: SessionView) -> tuple[float, float, float]:
    """Which part of a session's power each line (L1, L2, L3) carries: all of it on its
    line for a single-phase EVSE whose line the CSMS knows, a third each otherwise."""
    if s.phases == 1 and s.line in (1, 2, 3):
        return tuple(1.0 if k == s.line else 0.0 for k in (1, 2, 3))  # type: ignore[return-value]
    return (1 / 3, 1 / 3, 1 / 3)


def water_fill_lines(room_kw: list[float], caps_kw: list[float],
                     uses: list[tuple[float, float, float]]) -> list[float]:
    """:func:`water_fill` with a budget per line: every share rises equally until it
    reaches its cap or a line it draws on (``uses[i][k]`` of its power on line ``k``) is
    full, then the others go on (max-min fair). With every session three-phase and the
    same room on each line, the same shares as ``water_fill(sum(room_kw), caps_kw)``."""
    n = len(caps_kw)
    shares = [0.0] * n
    room = [max(r, 0.0) for r in room_kw]
    eps = 1e-9
    active = {i for i in range(n) if caps_kw[i] > eps}
    while active:
        rate = [sum(uses[i][k] for i in active) for k in range(3)]
        step = min(caps_kw[i] - shares[i] for i in active)
        for k in range(3):
            if rate[k] > eps:
                step = min(step, room[k] / rate[k])
        for i in active:
            shares[i] += step
        for k in range(3):
            room[k] -= rate[k] * step
        full = {k for k in range(3) if room[k] <= eps}
        active = {i for i in active if caps_kw[i] - shares[i] > eps
                  and not any(uses[i][k] > 0 for k in full)}
    return shares


#: A session is "clearly" drawing less than its limit below this fraction of it...
TAPER_FRACTION = 0.9
#: ...minus this margin in kW (so meter noise on a small limit does not count).
TAPER_MARGIN_KW = 0.2
#: Headroom above the present draw for a session that cannot use its limit:
#: at least this many kW...
TAPER_HEADROOM_KW = 1.0
#: ...or this share of the EVSE's maximum, whichever is larger.
TAPER_HEADROOM_SHARE = 0.1


def hardware_cap_kw(s: SessionView) -> float:
    """The most a session can physically take, in kW: its EVSE's maximum, or
    the EV's own maximum when the EV stated a lower one."""
    if s.ev_max_kw is not None:
        return max(0.0, min(s.max_power_kw, s.ev_max_kw))
    return max(0.0, s.max_power_kw)


def usable_cap_kw(s: SessionView) -> float:
    """What a session can use right now, in kW.

    :func:`hardware_cap_kw`, and, when the EV draws clearly less than the limit
    it was given (it tapers, is full, or is a smaller car than the EVSE), only
    its present draw plus a headroom, so budget it cannot use goes to others.
    The headroom lets it climb back one step per control cycle if it can.

    A draw of exactly 0 is not taken as evidence: it is what the CSMS holds
    before the first power reading of a session, and forever for a station
    that meters energy only, and capping on it would starve such sessions.
    """
    cap = hardware_cap_kw(s)
    headroom = max(TAPER_HEADROOM_KW, TAPER_HEADROOM_SHARE * s.max_power_kw)
    if s.charging_state == "SuspendedEV":
        # The EV itself takes nothing (full, or its own timer): a headroom lets
        # it resume, the rest of its share goes to EVs that can use it.
        return min(cap, headroom)
    if (s.limit_kw is not None and s.power_kw > 0.0
            and s.power_kw < TAPER_FRACTION * s.limit_kw - TAPER_MARGIN_KW):
        cap = min(cap, max(0.0, s.power_kw) + headroom)
    return cap


def is_satisfied(s: SessionView) -> bool:
    """True if the EV stated its needs and has received all the energy it asked for."""
    return s.needs_stated and s.energy_remaining_kwh is not None and s.energy_remaining_kwh <= 0.0


@register("equal_share")
def equal_share(view: ControlView) -> Limits:
    """Share each site's limit equally among its active sessions.

    Each session is capped at what it can use (:func:`usable_cap_kw`: the
    EVSE's maximum, the EV's stated maximum, and its present draw plus a
    headroom when it draws clearly less than its limit); an EV that stated its
    needs and has them met gets 0. What a capped session cannot use goes to
    the others. Sites without a limit are left uncontrolled. When the CSMS knows
    the line of single-phase EVSEs, each line takes a third of the site's limit and
    the shares are max-min fair over the lines (:func:`water_fill_lines`): a phase
    crowded with single-phase EVs is not overloaded while the others idle.
    """
    limits: Limits = {}
    for site in view.sites:
        sessions: tuple[SessionView, ...] = site.sessions
        if site.limit_kw is None:
            limits.update({(s.station_id, s.evse_id): None for s in sessions})
            continue
        # EVs that take nothing now (SuspendedEV) share only what the others leave.
        idle = [s.charging_state == "SuspendedEV" for s in sessions]
        caps_kw = [0.0 if is_satisfied(s) or i else usable_cap_kw(s)
                   for s, i in zip(sessions, idle, strict=True)]
        idle_caps = [usable_cap_kw(s) if i and not is_satisfied(s) else 0.0
                     for s, i in zip(sessions, idle, strict=True)]
        if any(s.phases == 1 and s.line is not None for s in sessions):
            # Single-phase EVSEs on known lines: each line of the site's three-phase
            # connection takes a third of its limit.
            uses = [line_shares(s) for s in sessions]
            room = [site.limit_kw / 3.0] * 3
            shares = water_fill_lines(room, caps_kw, uses)
            room = [room[k] - sum(sh * u[k] for sh, u in zip(shares, uses, strict=True))
                    for k in range(3)]
            extra = water_fill_lines(room, idle_caps, uses)
        else:
            shares = water_fill(site.limit_kw, caps_kw)
            left = max(site.limit_kw - sum(shares), 0.0)
            extra = water_fill(left, idle_caps)
        for s, share, more in zip(sessions, shares, extra, strict=True):
            limits[(s.station_id, s.evse_id)] = share + more
    return limits
