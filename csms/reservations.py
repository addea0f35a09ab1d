"""Reservations as the CSMS knows them: asked for, answered, used, expired, cancelled.

A :class:`ReservationBook` is the core's small table of reservations (id,
station, EVSE, id token, expiry, status). It learns only from what the CSMS
sends and what stations say: the ReserveNow answer, the connector's status
(Reserved; Available again: OCPP 1.6 says an unused reservation ended only
so), 2.x ReservationStatusUpdate (Expired or Removed), and a transaction
started by the reserving token on the reserved EVSE (the reservation is
used). No I/O; kept in memory (the station keeps the reservation itself, and
the driver API and dashboard show what is in force).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

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
    """The reservations of one CSMS, by reservation id."""

    def __init__(self) -> None:
        self.by_id: dict[int, Reservation] = {}

    def requested(self, reservation_id: int, station_id: str, evse_id: int | None,
                  id_token: str, expiry: datetime, now: datetime,
                  group_id_token: str | None = None) -> Reservation:
        """ReserveNow is about to be sent (a reservation id in force is replaced)."""
        r = Reservation(reservation_id, station_id, evse_id, id_token, expiry, now,
                        group_id_token=group_id_token)
        self.by_id[reservation_id] = r
        return r

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
        if status == "Reserved":
            if not any(r.active and r.station_id == station_id and r.evse_id == evse_id
                       for r in self.by_id.values()):
                unplaced = [r for r in self.by_id.values() if r.active
                            and r.station_id == station_id and r.evse_id is None]
                if unplaced:
                    unplaced[-1].evse_id = evse_id
            return
        if status != "Available":
            return
        for r in self.by_id.values():
            if r.status == "Accepted" and r.station_id == station_id and r.evse_id == evse_id:
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
        for r in self.by_id.values():
            if (r.active and r.station_id == station_id and r.evse_id in (None, evse_id)
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
        return [r for r in self.by_id.values() if r.status in HOLDING and r.expiry > now]

    def holding(self, station_id: str, evse_id: int, now: datetime) -> Reservation | None:
        """The reservation in force on one EVSE, if any."""
        return next((r for r in self.in_force(now)
                     if r.station_id == station_id and r.evse_id == evse_id), None)

    def counts(self) -> dict[str, int]:
        """How many reservations are in each status."""
        return dict(Counter(r.status for r in self.by_id.values()))
