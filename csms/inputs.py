"""The CSMS's one front door for what it learns from systems other than its stations.

A real CSMS hears from more than its chargers: an energy supplier's tariff and
day-ahead prices, a PV forecast per site, a grid operator's limit on a site's
import (OCPP's ChargingStationExternalConstraints), and a model of the feeder
with its latest measurements. :class:`InputPort` takes each through one typed
method that checks it completely (aware timestamps in increasing order, finite
numbers, known sites) before anything changes, and raises
:class:`~evtwin.csms.exceptions.InputError` naming the field otherwise. The
strategies see the result in their read-only :class:`~evtwin.csms.model.ControlView`.

The twin feeds it (its price signal, its PV forecasts, demand-response events,
the feeder model it measures); ``evtwin csms serve`` feeds the feeder from the
stations' reports (:class:`~evtwin.csms.feeder.FeederMonitor`). Every input
that binds at once (a grid operator's limit) makes the next control cycle due;
prices, forecasts and the feeder view are used from the next cycle on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from .exceptions import InputError

if TYPE_CHECKING:
    from .feeder import FeederView

log = logging.getLogger("evtwin.csms.inputs")

#: A step series: (start time, value) pairs, each value holding until the next time.
Steps = tuple[tuple[datetime, float], ...]


def check_steps(field: str, steps: Iterable[tuple[datetime, float]], *,
                minimum: float | None = None) -> Steps:
    """``steps`` as a tuple, or InputError naming ``field`` and the bad item."""
    out: list[tuple[datetime, float]] = []
    for i, item in enumerate(steps):
        try:
            at, value = item
        except (TypeError, ValueError):
            raise InputError(f"{field}[{i}]", "expected a (time, value) pair") from None
        if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
            raise InputError(f"{field}[{i}]", f"time {at!r} is not an aware datetime")
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise InputError(f"{field}[{i}]", f"value {value!r} is not a finite number")
        if minimum is not None and value < minimum:
            raise InputError(f"{field}[{i}]", f"value {value} is below {minimum}")
        if out and at <= out[-1][0]:
            raise InputError(f"{field}[{i}]", f"time {at.isoformat()} does not follow "
                                              f"{out[-1][0].isoformat()}")
        out.append((at, float(value)))
    return tuple(out)


class InputPort:
    """Prices, PV forecasts, grid-operator limits and the feeder model of one CSMS.

    ``sites``: the site names the CSMS knows; ``on_change`` is called after an
    input that should make control run again at once (a grid operator's limit).
    """

    def __init__(self, sites: Collection[str], on_change: Callable[[], None] = lambda: None
                 ) -> None:
        self._sites = frozenset(sites)
        self._on_change = on_change
        #: Energy price per kWh for import (the day-ahead signal) and export.
        self.prices: Steps = ()
        self.export_prices: Steps = ()
        #: PV forecast (kW) over all sites, and per site.
        self.pv_forecast_kw: Steps = ()
        self.site_pv_forecast_kw: dict[str, Steps] = {}
        #: Import limits a grid operator imposes on sites for a while (kW).
        self.grid_limits_kw: dict[str, float] = {}
        #: The feeder model and its latest measurement (None: no feeder model).
        self.feeder: FeederView | None = None

    def _site(self, field: str, site: str) -> str:
        if site not in self._sites:
            raise InputError(field, f"unknown site {site!r}")
        return site

    def set_prices(self, import_per_kwh: Iterable[tuple[datetime, float]],
                   export_per_kwh: Iterable[tuple[datetime, float]] = ()) -> None:
        """The energy price per kWh from each time on, for import and for export."""
        prices = check_steps("prices", import_per_kwh)
        export = check_steps("export_prices", export_per_kwh)
        self.prices, self.export_prices = prices, export

    def set_pv_forecast(self, kw: Iterable[tuple[datetime, float]], *,
                        site: str | None = None) -> None:
        """A PV forecast (kW >= 0) for one site behind its connection, or, with
        ``site`` None, the total the CSMS plans with (default: the sum of the
        sites' forecasts, when they share their step times)."""
        steps = check_steps("pv_forecast_kw" if site is None else
                            f"site_pv_forecast_kw.{site}", kw, minimum=0.0)
        if site is None:
            self.pv_forecast_kw = steps
        else:
            self.site_pv_forecast_kw[self._site("site", site)] = steps
            self.pv_forecast_kw = _sum_if_aligned(list(self.site_pv_forecast_kw.values()))

    def set_grid_limit(self, site: str, limit_kw: float | None) -> None:
        """A grid operator limits (or, with None, releases) a site's import."""
        self._site("site", site)
        if limit_kw is not None and (isinstance(limit_kw, bool)
                                     or not isinstance(limit_kw, int | float)
                                     or not math.isfinite(limit_kw) or limit_kw < 0):
            raise InputError("limit_kw", f"{limit_kw!r} is not a finite power >= 0")
        if limit_kw is None:
            self.grid_limits_kw.pop(site, None)
        else:
            self.grid_limits_kw[site] = float(limit_kw)
        log.info("external constraint on %s: %s kW", site, limit_kw,
                 extra={"event": "external_constraint", "site": site, "limit_kw": limit_kw})
        self._on_change()

    def observe_feeder(self, view: FeederView | None) -> None:
        """The feeder model's latest view (sensitivities and measurement); None: none.
        Not a reason to control at once: the next cycle uses it."""
        self.feeder = view


def _sum_if_aligned(series: list[Steps]) -> Steps:
    """Pointwise sum of step series with the same step times (else empty)."""
    if not series:
        return ()
    times = [t for t, _ in series[0]]
    if any([t for t, _ in s] != times for s in series[1:]):
        return ()
    return tuple((t, sum(s[i][1] for s in series)) for i, t in enumerate(times))
