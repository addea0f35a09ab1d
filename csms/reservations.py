"""Reservations as the CSMS knows them: asked for, answered, used, expired, cancelled.

A :class:`ReservationBook` is the core's small table of reservations (id,
station, EVSE, id token, expiry, status). It learns only from what the CSMS
sends and what stations say: the ReserveNow answer, the connector's status
(Reserved; Available again: OCPP 1.6 says an unused reservation ended only
so), 2.x ReservationStatusUpdate (Expired or Removed), and a transaction
started by the reserving token on the reserved EVSE (the reservation is
used). No I/O; kept in memory (the station keeps the reservation itself, and
the driver API and dashboard show what is in force).

Every ReserveNow and CancelReservation the CSMS sends is recorded, whoever
asks (the driver API, the operator API, OCPI, the twin's app users): the
shells send them through :meth:`ReservationBook.reserve` and
:meth:`ReservationBook.cancel`. Reservations that ended more than
``keep_ended_s`` (a day) ago are dropped (:meth:`ReservationBook.counts` still
counts them), and those in force are indexed by station, so a status message
or a transaction start looks at its station's few reservations only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = ["ACTIVE", "Reservation", "ReservationBook"]

#: Statuses of a reservation still in force (asked for, accepted by the station, or
#: accepted with CancelReservation on its way).
ACTIVE = frozenset({"Requested", "Accepted", "Cancelling"})
#: Of those, the ones holding an EVSE.
HOLDING = frozenset({"Accepted", "Cancelling"})


@dataclass(slots=True)
class Reservation:
    """One reservation. ``status``: Requested (ReserveNow sent), Accepted (in force),
    the station's refusal (Occupied, Faulted, Unavailable, Rejected), or how it ended:
    Used (a transaction of its token started there), Expired, Removed, Cancelled."""

    reservation_id: int
    station_id: str
    evse_id: int | None
    """None: any EVSE of the station, until the station says which one is Reserved."""
    id_token: str
    expiry: datetime
    created_at: datetime
    status: str = "Requested"
    transaction_id: str | None = None
    """The transaction that used it."""
    ended_at: datetime | None = None
    group_id_token: str | None = None
    """Any token of this group may use it (2.x groupIdToken, 1.6 parentIdTag)."""

    @property
    def active(self) -> bool:
        """Still holding (or about to hold) an EVSE."""
        return self.status in ACTIVE


class ReservationBook:
    """The reservations of one CSMS, by reservation id (see the module docstring).
    Ended ones are dropped ``keep_ended_s`` after they ended."""

    def __init__(self, keep_ended_s: float = 86_400.0) -> None:
        self.by_id: dict[int, Reservation] = {}
        self.keep_ended_s = keep_ended_s
        #: The active reservations of each station, by reservation id.
        self._active: dict[str, dict[int, Reservation]] = {}
        #: How many dropped reservations ended in each status.
        self._dropped: Counter[str] = Counter()
        self._pruned_at: datetime | None = None

    def requested(self, reservation_id: int, station_id: str, evse_id: int | None,
                  id_token: str, expiry: datetime, now: datetime,
                  group_id_token: str | None = None) -> Reservation:
        """ReserveNow is about to be sent (a reservation id in force is replaced)."""
        self.prune(now)
        old = self.by_id.get(reservation_id)
        if old is not None and old.active and old.station_id != station_id:
            # OCPP numbers reservations per station; the CSMS's book per CSMS: an id in
            # force elsewhere is refused rather than silently replaced.
            raise ValueError(f"reservation id {reservation_id} is in force at station "
                             f"{old.station_id}; choose another id")
        if old is not None:
            self._active.get(old.station_id, {}).pop(reservation_id, None)
        r = Reservation(reservation_id, station_id, evse_id, id_token, expiry, now,
                        group_id_token=group_id_token)
        self.by_id[reservation_id] = r
        self._active.setdefault(station_id, {})[reservation_id] = r
        return r

    def prune(self, now: datetime) -> int:
        """Drop the reservations that ended more than ``keep_ended_s`` before ``now``
        (at most once an hour); how many were dropped."""
        if self._pruned_at is not None and now - self._pruned_at < timedelta(hours=1):
            return 0
        self._pruned_at = now
        cutoff = now - timedelta(seconds=self.keep_ended_s)
        old = [r for r in self.by_id.values()
               if not r.active and r.ended_at is not None and r.ended_at < cutoff]
        for r in old:
            del self.by_id[r.reservation_id]
            self._dropped[r.status] += 1
        return len(old)

    def _station(self, station_id: str) -> list[Reservation]:
        """The station's active reservations (those no longer active leave the index)."""
        rs = self._active.get(station_id)
        if not rs:
            return []
        for rid in [rid for rid, r in rs.items() if not r.active]:
            del rs[rid]
        return list(rs.values())

    async def reserve(self, send: Callable[[], Awaitable[dict[str, Any]]],
                      reservation_id: int, station_id: str, evse_id: int | None,
                      id_token: str, expiry: datetime, clock: Callable[[], datetime],
                      group_id_token: str | None = None) -> dict[str, Any]:
        """Record a ReserveNow around ``send`` (which sends it and returns the answer):
        Requested, then the station's status (Failed if no answer came)."""
        now = clock()
        self.requested(reservation_id, station_id, evse_id, id_token, expiry, now,
                       group_id_token)
        try:
            result = await send()
        except BaseException:
            self.answered(reservation_id, "Failed", now)
            raise
        self.answered(reservation_id, str(result["status"]), clock())
        return result

    async def cancel(self, send: Callable[[], Awaitable[dict[str, Any]]],
                     reservation_id: int, clock: Callable[[], datetime]) -> dict[str, Any]:
        """Record a CancelReservation around ``send``: Cancelled when the station accepts,
        else the reservation holds on."""
        self.cancelling(reservation_id)
        try:
            result = await send()
        except BaseException:
            self.cancel_refused(reservation_id)
            raise
        if result["status"] == "Accepted":
            self.cancelled(reservation_id, clock())
        else:
            self.cancel_refused(reservation_id)
        return result

    def answered(self, reservation_id: int, status: str, now: datetime) -> None:
        """The station's ReserveNow answer: Accepted, or why not."""
        r = self.by_id.get(reservation_id)
        if r is not None and r.status == "Requested":
            r.status = status
            if status != "Accepted":
                r.ended_at = now

    def cancelling(self, reservation_id: int) -> None:
        """CancelReservation is about to be sent: the connector's Available that follows
        is the cancellation's, not a removal (see :meth:`on_status`)."""
        r = self.by_id.get(reservation_id)
        if r is not None and r.status == "Accepted":
            r.status = "Cancelling"

    def cancel_refused(self, reservation_id: int) -> None:
        """The station did not cancel it: it holds on."""
        r = self.by_id.get(reservation_id)
        if r is not None and r.status == "Cancelling":
            r.status = "Accepted"

    def cancelled(self, reservation_id: int, now: datetime) -> None:
        """The station accepted CancelReservation."""
        self._end(reservation_id, "Cancelled", now)

    def on_update(self, reservation_id: int, status: str, now: datetime) -> None:
        """2.x ReservationStatusUpdate: Expired or Removed."""
        self._end(reservation_id, status, now)

    def _end(self, reservation_id: int, status: str, now: datetime) -> None:
        r = self.by_id.get(reservation_id)
        if r is not None and r.active:
            r.status = status
            r.ended_at = now

    def on_status(self, station_id: str, evse_id: int, status: str, at: datetime) -> None:
        """A connector's status. Reserved names the EVSE of an any-EVSE reservation;
        Available on a reserved EVSE ends its reservation unused (Expired once its
        expiry has come, else Removed: 1.6's only word for it)."""
        here = self._station(station_id)
        if status == "Reserved":
            if not any(r.evse_id == evse_id for r in here):
                unplaced = [r for r in here if r.evse_id is None]
                if unplaced:
                    unplaced[-1].evse_id = evse_id
            return
        if status != "Available":
            return
        for r in here:
            if r.status == "Accepted" and r.evse_id == evse_id:
                r.status = "Expired" if at >= r.expiry else "Removed"
                r.ended_at = at

    def on_started(self, station_id: str, evse_id: int, id_token: str | None,
                   transaction_id: str, at: datetime,
                   group_id_token: str | None = None) -> Reservation | None:
        """A transaction started: the reservation of its token (or of the token's group,
        ``group_id_token``) on that EVSE is used."""
        if id_token is None:
            return None
        token = id_token.casefold()
        group = group_id_token.casefold() if group_id_token is not None else None
        for r in self._station(station_id):
            if (r.active and r.evse_id in (None, evse_id)
                    and (r.id_token.casefold() == token or (
                        group is not None and r.group_id_token is not None
                        and r.group_id_token.casefold() == group))):
                r.status = "Used"
                r.evse_id = evse_id
                r.transaction_id = transaction_id
                r.ended_at = at
                return r
        return None

    def of_token(self, id_token: str) -> list[Reservation]:
        """A driver's reservations, newest first."""
        token = id_token.casefold()
        return sorted((r for r in self.by_id.values() if r.id_token.casefold() == token),
                      key=lambda r: (r.created_at, r.reservation_id), reverse=True)

    def in_force(self, now: datetime) -> list[Reservation]:
        """Reservations holding an EVSE at ``now`` (accepted, expiry not yet come)."""
        return [r for sid in list(self._active) for r in self._station(sid)
                if r.status in HOLDING and r.expiry > now]

    def holding(self, station_id: str, evse_id: int, now: datetime) -> Reservation | None:
        """The reservation in force on one EVSE, if any."""
        return next((r for r in self._station(station_id)
                     if r.status in HOLDING and r.expiry > now and r.evse_id == evse_id), None)

    def counts(self) -> dict[str, int]:
        """How many reservations are in each status (dropped ones included)."""
        return dict(Counter(r.status for r in self.by_id.values()) + self._dropped)
