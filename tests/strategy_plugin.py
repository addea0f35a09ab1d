"""A strategy registered by a module outside evtwin (a user's own), for the tests
that run the CSMS in a process of its own: that process imports this module."""

from __future__ import annotations

from evtwin.csms.model import ControlView
from evtwin.csms.strategies import Limits, get_strategy, register


@register("half_share")
def half_share(view: ControlView) -> Limits:
    """equal_share's limits, halved."""
    limits = get_strategy("equal_share")(view)
    return {key: None if kw is None else kw / 2.0 for key, kw in limits.items()}
