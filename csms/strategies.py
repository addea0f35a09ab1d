"""Smart-charging strategies: pure functions of the CSMS's view.

A strategy takes a :class:`~evtwin.csms.model.ControlView` and returns a limit
per EVSE in kW, keyed by ``(station_id, evse_id)``; ``None`` means "no limit
from the CSMS" (the station charges at its own maximum). Strategies never see
the simulator: the same function runs in the twin and on a real site.
"""

from __future__ import annotations

from collections.abc import Callable

from .exceptions import UnknownStrategyError
from .model import ControlView, SessionView

EvseKey = tuple[str, int]
Limits = dict[EvseKey, float | None]
Strategy = Callable[[ControlView], Limits]

_REGISTRY: dict[str, Strategy] = {}


def register(name: str) -> Callable[[Strategy], Strategy]:
    """Register a strategy under ``name`` (decorator)."""

    def deco(fn: Strategy) -> Strategy:
        _REGISTRY[name] = fn
        return fn

    return deco


def get_strategy(name: str) -> Strategy:
    """Return the strategy registered as ``name`` or raise UnknownStrategyError."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownStrategyError(name, sorted(_REGISTRY)) from None


def strategy_names() -> list[str]:
    """Names of all registered strategies, sorted."""
    return sorted(_REGISTRY)


def check_strategy_name(name: str) -> str:
    """Return ``name`` if a strategy is registered under it, else raise ValueError
    listing the known ones (for config validators)."""
    if name not in _REGISTRY:
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


@register("equal_share")
def equal_share(view: ControlView) -> Limits:
    """Share each site's limit equally among its active sessions.

    Sessions are capped at their EVSE's maximum and the surplus goes to the
    others. Sites without a limit are left uncontrolled.
    """
    limits: Limits = {}
    for site in view.sites:
        sessions: tuple[SessionView, ...] = site.sessions
        if site.limit_kw is None:
            limits.update({(s.station_id, s.evse_id): None for s in sessions})
            continue
        shares = water_fill(site.limit_kw, [s.max_power_kw for s in sessions])
        for s, share in zip(sessions, shares, strict=True):
            limits[(s.station_id, s.evse_id)] = share
    return limits
