"""App users in the twin: site choice and reservations through the CSMS's driver service.

A share of the EVs (``[app] share``, drawn from the run's seed) have drivers
who use the operator's app (:mod:`evtwin.agents.app`). ``lead_min`` before a
visit to a shared site they pick a site of its kind by free EVSEs, price and
detour; when that site is busy they reserve a free EVSE there. The reservation
goes to the CSMS's :class:`~evtwin.csms.driverapi.DriverService`, which sends
ReserveNow to the station over the run's transport; the twin holds the EVSE out
of the free pool meanwhile. A driver who comes in time plugs into it (the
station's transaction uses the reservation); one who does not
(``no_show_share``, or too late) leaves it to expire: the station frees it
(2.x ReservationStatusUpdate Expired, 1.6 StatusNotification Available) and
the twin puts it back in the pool.

Only the sim wires the CSMS to the drivers (agents never import it).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import simpy

from evtwin.agents.app import SiteOffer, choose_site, should_reserve
from evtwin.agents.behaviour import Visit
from evtwin.agents.ev import EV
from evtwin.csms.driverapi import DriverError, DriverService
from evtwin.csms.exceptions import StationNotConnectedError
from evtwin.csms.shell import CallFailed, InvalidCallResult

from .scenario import AppSettings

__all__ = ["AppUsers", "Booking"]

Key = tuple[str, int]


@dataclass(slots=True)
class Booking:
    """One app user's plan for one visit, and what became of its reservation.

    ``state``: ``planned`` (no reservation), ``requested`` (ReserveNow to be sent),
    ``reserved``, ``refused`` (the station said no), ``honoured`` (the driver took
    it), ``expired`` (nobody came in time), ``dropped`` (not needed any more: the
    driver arrived before it was sent, or its EVSE failed)."""

    ev_id: str
    own_pool: str
    pool: str
    decided_s: float
    arrival_s: float
    state: str = "planned"
    station_id: str | None = None
    evse_id: int | None = None
    reservation_id: int | None = None
    expiry_s: float | None = None
    no_show: bool = False
    station_status: str | None = None
    """The station's answer when it refused."""


class AppUsers:
    """The app users of one twin run (see the module docstring). ``twin`` is the
    :class:`~evtwin.sim.runner.Twin` (untyped here: the runner imports this module)."""

    def __init__(self, twin: Any, settings: AppSettings, seed: int) -> None:
        self.twin = twin
        self.s = settings
        draws = np.random.default_rng([seed, 16]).random(len(twin.model.evs))
        self.users = {ev.ev_id for ev, u in zip(twin.model.evs, draws, strict=True)
                      if u < settings.share}
        self._no_show = np.random.default_rng([seed, 17])
        self.service: DriverService | None = None
        self.pending: list[Booking] = []
        self.bookings: list[Booking] = []
        self._next: dict[str, Booking] = {}

    # -- in the driver's process (simpy) ---------------------------------------------
    def before_arrival(self, ev: EV, visit: Visit) -> Generator[simpy.Event, Any, None]:
        """Wait until the driver decides (``lead_min`` before arriving), then plan."""
        env = self.twin.env
        if ev.ev_id not in self.users or visit.arrival_s < env.now - 1e-6:
            return
        decide_s = max(visit.arrival_s - self.s.lead_min * 60.0, env.now)
        if decide_s > env.now + 1e-6:
            yield env.timeout(decide_s - env.now)
        self._plan(ev, visit)

    def _plan(self, ev: EV, visit: Visit) -> None:
        twin = self.twin
        own = twin._pool(ev) if visit.site is None else visit.site
        kind = twin.site_kind.get(own)
        if kind is None or self.service is None:
            return  # a charger of their own: nothing to choose
        offers = [SiteOffer(pool, len(twin.free[pool].items), len(twin.pool_members[pool]),
                            float(self.service.price(pool)["energy_per_kwh"]),
                            0.0 if pool == own else self.s.detour_min)
                  for pool in sorted(twin.site_kind) if twin.site_kind[pool] == kind]
        wanted_kwh = max(visit.target_soc - visit.soc_initial, 0.0) * ev.vehicle.capacity_kwh
        chosen = choose_site(offers, energy_kwh=wanted_kwh,
                             value_of_time_per_h=self.s.value_of_time_per_h)
        if chosen is None:
            return  # nothing free anywhere: they go to their own site and see
        env_now = float(twin.env.now)
        booking = Booking(ev.ev_id, own, chosen.site, env_now, visit.arrival_s)
        self.bookings.append(booking)
        self._next[ev.ev_id] = booking
        if should_reserve(chosen, self.s.reserve_when_occupancy_above):
            store = twin.free[chosen.site]
            key: Key = store.items[0]
            store.items.remove(key)  # held for them while ReserveNow goes out
            booking.station_id, booking.evse_id = key
            booking.state = "requested"
            booking.no_show = bool(self._no_show.random() < self.s.no_show_share)
            self.pending.append(booking)

    def take(self, ev_id: str) -> Booking | None:
        """The driver's plan for the visit that starts now (once)."""
        return self._next.pop(ev_id, None)

    def claim(self, booking: Booking) -> Key | None:
        """The driver arrived: the EVSE reserved for them, if it still is (honoured)."""
        if booking.station_id is None or booking.evse_id is None:
            return None
        key = (booking.station_id, booking.evse_id)
        station = self.twin.station_by_id[booking.station_id]
        if booking.state == "requested":  # arrived before it was sent: no need any more
            self.pending.remove(booking)
            booking.state = "dropped"
            if station.down(station.evses[booking.evse_id]):
                return None
            return key
        if booking.state != "reserved":
            return None
        if station.down(station.evses[booking.evse_id]):
            booking.state = "dropped"
            return None  # out of order meanwhile (it returns to the pool when repaired)
        booking.state = "honoured"
        return key

    def holds(self, key: Key) -> bool:
        """Whether a reservation (asked for or in force) holds this EVSE out of its pool."""
        return any(b.state in ("requested", "reserved")
                   and (b.station_id, b.evse_id) == key for b in self.bookings)

    def _give_back(self, key: Key) -> None:
        """An EVSE no reservation holds any more goes back to its pool (if it works)."""
        twin = self.twin
        station = twin.station_by_id[key[0]]
        if (key not in twin.in_use and not station.down(station.evses[key[1]])
                and key not in twin.free[twin.pool_of[key]].items):
            twin.free[twin.pool_of[key]].put(key)

    def _expire(self, booking: Booking) -> Generator[simpy.Event, Any, None]:
        env = self.twin.env
        assert booking.expiry_s is not None and booking.station_id is not None
        yield env.timeout(max(booking.expiry_s - env.now, 0.0))
        if booking.state != "reserved":
            return
        booking.state = "expired"
        # The station lets go at its expiry (and tells the CSMS); the EVSE is free again.
        self.twin.station_by_id[booking.station_id].expire_reservations(float(env.now))
        assert booking.evse_id is not None
        self._give_back((booking.station_id, booking.evse_id))

    # -- in the run's event loop --------------------------------------------------------
    async def exchange(self) -> None:
        """Send the reservations asked for (ReserveNow through the driver service)."""
        assert self.service is not None
        env = self.twin.env
        pending, self.pending = self.pending, []
        token_of = {ev.ev_id: ev.id_token for ev in self.twin.model.evs}
        for b in pending:
            assert b.station_id is not None and b.evse_id is not None
            try:
                r = await self.service.reserve(token_of[b.ev_id], b.station_id, b.evse_id,
                                               self.s.reservation_min)
            except (DriverError, StationNotConnectedError, TimeoutError,
                    ConnectionError) as exc:  # no answer (a modem failure, say): Offline
                b.state = "refused"
                b.station_status = getattr(exc, "status", None) or "Offline"
                self._give_back((b.station_id, b.evse_id))
                continue
            except (CallFailed, InvalidCallResult):  # the station answered with an error
                b.state = "refused"
                b.station_status = "Error"
                self._give_back((b.station_id, b.evse_id))
                continue
            b.state = "reserved"
            b.reservation_id = r.reservation_id
            b.expiry_s = float(env.now) + self.s.reservation_min * 60.0
            env.process(self._expire(b))

    # -- results ----------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """Every app decision of the run, one row each."""
        return pd.DataFrame([asdict(b) for b in self.bookings],
                            columns=list(Booking.__dataclass_fields__))

    def kpis(self, sessions: pd.DataFrame) -> dict[str, float]:
        """App users, reservations made/honoured/expired/refused, no-shows, site switches,
        and the share of visits (%) turned away for app users and for the others (the
        effect), with what the CSMS's reservation table recorded."""
        b = self.bookings
        made = [x for x in b if x.state in ("reserved", "honoured", "expired")]
        visits = sessions[sessions["outcome"] != "skipped"]
        app = visits["ev_id"].isin(self.users)

        def away(rows: pd.DataFrame) -> float:
            return 100.0 * float((rows["outcome"] == "turned_away").mean()) if len(rows) else 0.0

        out = {
            "app_users": float(len(self.users)),
            "app_decisions": float(len(b)),
            "app_site_switches": float(sum(1 for x in b if x.pool != x.own_pool)),
            "reservations_made": float(len(made)),
            "reservations_honoured": float(sum(1 for x in b if x.state == "honoured")),
            "reservations_expired": float(sum(1 for x in b if x.state == "expired")),
            "reservations_refused": float(sum(1 for x in b if x.state == "refused")),
            "app_no_shows": float(sum(1 for x in made if x.no_show)),
            "turned_away_percent_app": away(visits[app]),
            "turned_away_percent_other": away(visits[~app]),
        }
        core = self.twin.core
        if core is not None:
            counts = core.reservations.counts()
            out["csms_reservations_used"] = float(counts.get("Used", 0))
            out["csms_reservations_expired"] = float(counts.get("Expired", 0))
        return out


def attach(app: AppUsers, server: Any) -> None:
    """Give the app users the driver service of the twin's CSMS ``server`` (a
    CSMSServer): its stations over any transport (wire shells or direct ones)."""
    def station(station_id: str) -> Any:
        return server.connections.get(station_id) or server.direct.get(station_id)
    app.service = DriverService(server.core, station,
                                reservation_minutes=app.s.reservation_min,
                                max_reservation_minutes=max(app.s.reservation_min, 60.0))
