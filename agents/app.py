"""Drivers who use the operator's app: pick a site before leaving, reserve when it is busy.

Before setting off (``lead_min`` before the planned arrival) an app user looks
at the sites they could charge at (their own and the others of its kind, each
a detour away), sees the free EVSEs and the price now, and picks the site
that costs least in money and time: price x the energy they want, plus the
detour valued at ``value_of_time_per_h``. Sites with no free EVSE are out. If
the chosen site is busy (its occupancy above ``reserve_when_occupancy_above``)
they reserve an EVSE there for ``reservation_min`` minutes.

These are the app user's decisions only: the simulator (:mod:`evtwin.sim.appusers`)
fills the offers from the CSMS's driver service and makes the reservations;
agents never import the CSMS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SiteOffer", "choose_site", "should_reserve"]


@dataclass(frozen=True, slots=True)
class SiteOffer:
    """A site as the app shows it to one driver: free and total EVSEs, price per kWh
    now, and the detour (minutes) it costs this driver to charge there."""

    site: str
    free_evses: int
    evses: int
    price_per_kwh: float
    detour_min: float

    @property
    def occupancy(self) -> float:
        """Share of the site's EVSEs not free (0 to 1)."""
        return 1.0 - self.free_evses / self.evses if self.evses else 1.0

    def cost(self, energy_kwh: float, value_of_time_per_h: float) -> float:
        """What charging here costs the driver: energy at today's price plus the detour."""
        return self.price_per_kwh * energy_kwh + value_of_time_per_h * self.detour_min / 60.0


def choose_site(offers: Sequence[SiteOffer], *, energy_kwh: float,
                value_of_time_per_h: float) -> SiteOffer | None:
    """The site with a free EVSE that costs least (ties: shorter detour, then name);
    None when no site has a free EVSE."""
    usable = [o for o in offers if o.free_evses > 0]
    if not usable:
        return None
    return min(usable, key=lambda o: (o.cost(energy_kwh, value_of_time_per_h),
                                      o.detour_min, o.site))


def should_reserve(offer: SiteOffer, occupancy_above: float) -> bool:
    """Reserve when the chosen site is busy: its occupancy above the threshold."""
    return offer.free_evses > 0 and offer.occupancy > occupancy_above

