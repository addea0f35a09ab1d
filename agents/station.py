"""Virtual charging stations: EVSE state, meters and charging profiles, no I/O.

The station's OCPP behaviour (:mod:`evtwin.agents.protocol`) tells the CSMS
what happens here and applies what the CSMS asks. Everything here runs on
simulated seconds; the protocol turns them into OCPP timestamps.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mesa

from evtwin.ocppj.smartcharging import NOMINAL_VOLTAGE_V, Profile, composite_limit

from .battery import charge, charge_power_kw, discharge
from .exceptions import ProfileRejected

if TYPE_CHECKING:
    from .ev import EV

__all__ = ["NOMINAL_VOLTAGE_V", "Event", "Evse", "Profile", "Reservation", "VirtualStation"]

#: How long a remote start waits for an EV to plug in (OCPP ConnectionTimeOut), s.
CONNECTION_TIMEOUT_S = 180.0


@dataclass(slots=True)
class Evse:
    """One EVSE (with one connector) of a virtual station."""

    evse_id: int
    max_power_w: float
    phases: int = 3
    status: str = "Available"
    ev: EV | None = None
    transaction_id: str | None = None
    tx_started_s: float | None = None
    charging: bool = False
    seq_no: int = 0
    register_wh: float = 0.0
    export_register_wh: float = 0.0
    power_w: float = 0.0
    power_now_w: float = 0.0
    """Instantaneous power at the last update (negative = feeding back)."""
    step_wh: float = 0.0
    last_update_s: float = 0.0
    profiles: list[Profile] = field(default_factory=list)
    faults: set[str] = field(default_factory=set)
    """Failed components of this EVSE (see :mod:`evtwin.agents.faults`)."""
    derate: float = 1.0
    """Share of its rated power the EVSE can give (a failing power stage gives less)."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """An EVSE held for one id token (or its group) until ``expiry_s``."""

    reservation_id: int
    evse_id: int
    id_token: str
    expiry_s: float
    group_id_token: str | None = None

    def admits(self, id_token: str) -> bool:
        """Whether ``id_token`` may start on the reserved EVSE (the token itself, or the
        reservation's group token presented as such)."""
        token = id_token.casefold()
        return token == self.id_token.casefold() or (
            self.group_id_token is not None and token == self.group_id_token.casefold())


@dataclass(frozen=True, slots=True)
class Event:
    """Something the station must tell the CSMS about, in order."""

    kind: str  # plug | unplug | fault | repair | warning | status | reservation_ended
    evse_id: int
    at_s: float
    payload: dict[str, Any] = field(default_factory=dict)


class VirtualStation(mesa.Agent):
    """A charging station with one or more EVSEs at a site and a feeder bus."""

    def __init__(self, model: mesa.Model, station_id: str, site: str, evse_max_w: list[float],
                 phases: int = 3) -> None:
        super().__init__(model)
        self.station_id = station_id
        self.site = site
        self.evses = {i + 1: Evse(i + 1, p, phases) for i, p in enumerate(evse_max_w)}
        self.station_profiles: list[Profile] = []  # evse 0: TxDefault / max profiles
        self.events: deque[Event] = deque()
        self.voltage_v = NOMINAL_VOLTAGE_V
        self._tx_counter = 0
        self.rejected: set[str] = set()
        #: Failed components of the station as a whole (communication, payment).
        self.faults: set[str] = set()
        #: No connection to the CSMS (failed communication): nothing is sent until repaired.
        self.offline = False
        #: Heartbeats the failing modem drops (symptoms before a communication failure).
        self.drop_heartbeat: float = 0.0
        #: What the CSMS said a running transaction costs so far (2.x CostUpdated).
        self.running_cost: dict[str, float] = {}
        #: The tariff shown at each EVSE (0: the station's default; 2.1 SetDefaultTariff).
        self.tariffs: dict[int, dict[str, Any]] = {}
        #: Reservations in force, by reservation id (ReserveNow).
        self.reservations: dict[int, Reservation] = {}
        #: Remote starts waiting for an EV to plug in, by EVSE: (id token,
        #: remoteStartId, until when in s).
        self.remote_starts: dict[int, tuple[str, int | None, float]] = {}
        #: EVSEs the CSMS made inoperative (ChangeAvailability; 0: the whole station).
        self.inoperative: set[int] = set()
        #: Told which EVSEs the CSMS took out of service (True) or gave back (False), so
        #: the simulator's pool of free EVSEs follows; None: nobody listens.
        self.on_availability: Callable[[list[int], bool], None] | None = None
        #: Reservations used by a transaction, ended by their expiry, or cancelled.
        self.reservations_used = 0
        self.reservations_expired = 0

    # -- physical events (from the simulator) -------------------------------
    def plug(self, evse_id: int, ev: EV, at_s: float) -> str:
        """An EV plugs in; returns the transaction id the station opens for it.

        Power flows only after the CSMS has authorized the token and accepted
        the transaction (see :meth:`begin_charging`). On an EVSE reserved for
        the EV's token the transaction uses the reservation; reserved for
        another token, the station starts nothing (the transaction is rejected
        at once). A remote start waiting on the EVSE gives its token instead.
        """
        evse = self.evses[evse_id]
        self.advance_evse(evse, at_s)
        evse.ev = ev
        evse.status = "Occupied"
        remote = self.remote_starts.pop(evse_id, None)
        if remote is not None and remote[2] < at_s:
            remote = None  # the EV came after the connection timeout
        id_token = ev.id_token if remote is None else remote[0]
        extra: dict[str, Any] = {}
        reservation = self.reservation_on(evse_id)
        if reservation is not None and reservation.expiry_s <= at_s:
            self.expire_reservations(at_s)
            reservation = None
        if reservation is not None:
            if reservation.admits(id_token):
                self.use_reservation(reservation.reservation_id)
                extra["reservation_id"] = reservation.reservation_id
            elif reservation.group_id_token is not None:
                # A token of the reservation's group may use it: the CSMS's answer to
                # Authorize tells the token's group (see StationProtocol).
                extra["group_check"] = reservation.reservation_id
            else:
                extra["blocked"] = True  # held for someone else: nothing starts
        if remote is not None:
            extra.update(remote=True, remote_start_id=remote[1])
        return self._open_transaction(evse, ev, at_s, id_token, extra)

    def plug_waiting(self, evse_id: int, ev: EV, at_s: float) -> None:
        """An EV plugs in and waits for a remote start (the driver starts from the app:
        :meth:`remote_start`); the station tells the CSMS the connector is in use."""
        evse = self.evses[evse_id]
        self.advance_evse(evse, at_s)
        evse.ev = ev
        evse.status = "Occupied"
        self.events.append(Event("status", evse_id, at_s, {"status": "Occupied"}))

    def _open_transaction(self, evse: Evse, ev: EV, at_s: float, id_token: str,
                          extra: dict[str, Any]) -> str:
        evse_id = evse.evse_id
        self._tx_counter += 1
        evse.transaction_id = f"{self.station_id}-{evse_id}-{self._tx_counter}"
        evse.tx_started_s = at_s
        evse.seq_no = 0
        if extra.get("blocked"):
            self.rejected.add(evse.transaction_id)
        needs: dict[str, Any] | None = None
        if ev.states_needs and ev.current is not None:
            v = ev.vehicle
            needs = {"departure_s": ev.current.departure_s,
                     "energy_wh": ev.current.energy_wanted_kwh * 1000.0,
                     "max_current_a": v.max_power_kw * 1000.0 / (NOMINAL_VOLTAGE_V * v.phases),
                     "phases": v.phases}
            if v.bidirectional:
                # ISO 15118-20 style: energy to the minimum, the target and full (Wh,
                # negative = available), with the target SoC and power limits.
                cap_wh = v.capacity_kwh * 1000.0
                needs["v2x"] = {
                    "min_energy_wh": (ev.min_soc - ev.soc) * cap_wh,
                    "target_energy_wh": (ev.target_soc - ev.soc) * cap_wh,
                    "max_energy_wh": (1.0 - ev.soc) * cap_wh,
                    "target_soc_percent": ev.target_soc * 100.0,
                    "max_charge_w": v.max_power_kw * 1000.0,
                    "max_discharge_w": v.max_discharge_kw * 1000.0,
                }
        self.events.append(Event("plug", evse_id, at_s, {
            "transaction_id": evse.transaction_id, "register_wh": evse.register_wh,
            "id_token": id_token, "soc": ev.soc, "needs": needs, **extra,
        }))
        return evse.transaction_id

    # -- reservations and remote control (from the CSMS) ---------------------------
    def use_reservation(self, reservation_id: int) -> None:
        """A transaction uses the reservation: it no longer holds the EVSE."""
        if self.reservations.pop(reservation_id, None) is not None:
            self.reservations_used += 1

    def reservation_on(self, evse_id: int) -> Reservation | None:
        """The reservation holding an EVSE, if any."""
        return next((r for r in self.reservations.values() if r.evse_id == evse_id), None)

    def reserve(self, reservation_id: int, id_token: str, expiry_s: float,
                evse_id: int | None, at_s: float, group_id_token: str | None = None) -> str:
        """ReserveNow: hold an EVSE (None: any free one) until ``expiry_s``. Returns the
        answer's status: Accepted, Occupied, Faulted, Unavailable or Rejected. A
        reservation id in force is replaced (the EVSE it held is freed first)."""
        old = self.reservations.get(reservation_id)
        if evse_id is not None and evse_id not in self.evses:
            return "Rejected"
        if expiry_s <= at_s:
            return "Rejected"
        if evse_id is None:
            free = [e for e in self.evses.values() if self._reservable(e, old, at_s)]
            if not free:
                if all(self.down(e) for e in self.evses.values()):
                    return "Faulted"
                return "Occupied"
            evse = free[0]
        else:
            evse = self.evses[evse_id]
            if self.down(evse):  # Faulted, or Unavailable (made inoperative)
                return "Faulted" if evse.faults or self.faults else "Unavailable"
            if not self._reservable(evse, old, at_s):
                return "Occupied"
        if old is not None and old.evse_id != evse.evse_id:
            self._free(self.evses[old.evse_id], at_s)
        self.reservations[reservation_id] = Reservation(
            reservation_id, evse.evse_id, id_token, expiry_s, group_id_token)
        if evse.status != "Reserved":
            evse.status = "Reserved"
            self.events.append(Event("status", evse.evse_id, at_s, {"status": "Reserved"}))
        return "Accepted"

    def _reservable(self, evse: Evse, replacing: Reservation | None, at_s: float) -> bool:
        held = self.reservation_on(evse.evse_id)
        remote = self.remote_starts.get(evse.evse_id)
        return (evse.ev is None and evse.transaction_id is None and not self.down(evse)
                and (remote is None or remote[2] < at_s)  # a remote start awaits its EV
                and (held is None or held is replacing))

    def _free(self, evse: Evse, at_s: float) -> None:
        """A reservation no longer holds ``evse``: Available again (unless in use or down)."""
        if evse.ev is None and not self.down(evse) and evse.status == "Reserved":
            evse.status = "Available"
            self.events.append(Event("status", evse.evse_id, at_s, {"status": "Available"}))

    def cancel_reservation(self, reservation_id: int, at_s: float) -> bool:
        """CancelReservation: False if no such reservation is in force."""
        reservation = self.reservations.pop(reservation_id, None)
        if reservation is None:
            return False
        self._free(self.evses[reservation.evse_id], at_s)
        return True

    def expire_reservations(self, now_s: float) -> list[int]:
        """End the reservations whose expiry has come (2.x tells the CSMS: Expired);
        returns their ids."""
        ended = sorted(r.reservation_id for r in self.reservations.values()
                       if r.expiry_s <= now_s)
        for rid in ended:
            reservation = self.reservations.pop(rid)
            self.reservations_expired += 1
            evse = self.evses[reservation.evse_id]
            self.events.append(Event("reservation_ended", evse.evse_id,
                                     max(reservation.expiry_s, 0.0),
                                     {"reservation_id": rid, "status": "Expired"}))
            self._free(evse, max(reservation.expiry_s, 0.0))
        return ended

    def remote_start(self, id_token: str, evse_id: int | None, remote_start_id: int | None,
                     at_s: float) -> str:
        """RequestStartTransaction / RemoteStartTransaction: start a transaction for
        ``id_token`` on the EV plugged in and waiting, or (no EV yet) on the next EV
        to plug in within :data:`CONNECTION_TIMEOUT_S`. Returns Accepted or Rejected."""
        if evse_id is None:
            waiting = [e for e in self.evses.values()
                       if e.ev is not None and e.transaction_id is None]
            free = [e for e in self.evses.values()
                    if e.ev is None and not self.down(e)
                    and (self.reservation_on(e.evse_id) is None
                         or self.reservation_on(e.evse_id).admits(id_token))]  # type: ignore[union-attr]
            if not (waiting or free):
                return "Rejected"
            evse = (waiting or free)[0]
        else:
            evse_or_none = self.evses.get(evse_id)
            if evse_or_none is None:
                return "Rejected"
            evse = evse_or_none
        if self.down(evse) or evse.transaction_id is not None:
            return "Rejected"
        reservation = self.reservation_on(evse.evse_id)
        if reservation is not None and not reservation.admits(id_token):
            return "Rejected"
        if evse.ev is None:
            self.remote_starts[evse.evse_id] = (id_token, remote_start_id,
                                                at_s + CONNECTION_TIMEOUT_S)
            return "Accepted"
        # The connector's status went out when the EV plugged in (plug_waiting).
        extra: dict[str, Any] = {"remote": True, "remote_start_id": remote_start_id,
                                 "status_sent": True}
        if reservation is not None:
            self.use_reservation(reservation.reservation_id)
            extra["reservation_id"] = reservation.reservation_id
        self.advance_evse(evse, at_s)
        tx = self._open_transaction(evse, evse.ev, at_s, id_token, extra)
        if evse.ev.current is not None:
            evse.ev.current.transaction_id = tx
        return "Accepted"

    def remote_stop(self, transaction_id: str, at_s: float) -> bool:
        """RequestStopTransaction / RemoteStopTransaction: end the transaction; the EV
        stays plugged in (no more power) until it leaves. False: no such transaction."""
        evse = next((e for e in self.evses.values() if e.transaction_id == transaction_id),
                    None)
        if evse is None or transaction_id in self.rejected:
            return False
        self.advance_evse(evse, at_s)
        evse.charging = False
        evse.power_now_w = 0.0
        self.events.append(Event("unplug", evse.evse_id, at_s, {
            "transaction_id": transaction_id, "register_wh": evse.register_wh,
            "seq_no": evse.seq_no + 1, "reason": "Remote", "trigger": "RemoteStop",
            "charging_state": "EVConnected", "status": "Occupied"}))
        evse.transaction_id = None
        evse.tx_started_s = None
        evse.profiles = [p for p in evse.profiles if p.purpose != "TxProfile"]
        return True

    def unplug(self, evse_id: int, at_s: float) -> None:
        """The EV leaves: integrate up to ``at_s`` and end the transaction."""
        evse = self.evses[evse_id]
        self.advance_evse(evse, at_s)
        ev = evse.ev
        evse.ev = None
        evse.charging = False
        evse.status = self.idle_status(evse)
        self.events.append(Event("unplug", evse_id, at_s, {
            "transaction_id": evse.transaction_id, "register_wh": evse.register_wh,
            "seq_no": evse.seq_no + 1, "soc": ev.soc if ev else None, "status": evse.status,
        }))
        evse.transaction_id = None
        evse.tx_started_s = None
        evse.profiles = [p for p in evse.profiles if p.purpose != "TxProfile"]

    def rename_transaction(self, evse_id: int, old: str, new: str) -> None:
        """Adopt the id the CSMS gave a transaction (OCPP 1.6 StartTransaction)."""
        evse = self.evses[evse_id]
        if evse.transaction_id == old:
            evse.transaction_id = new
            if evse.ev is not None and evse.ev.current is not None:
                evse.ev.current.transaction_id = new
        if old in self.rejected:
            self.rejected.discard(old)
            self.rejected.add(new)

    def begin_charging(self, evse_id: int, transaction_id: str, now_s: float) -> None:
        """Close the power path: from ``now_s`` the EV draws power.

        Does nothing if that transaction is no longer on the EVSE (the EV
        left before the CSMS answered).
        """
        evse = self.evses[evse_id]
        if evse.ev is not None and evse.transaction_id == transaction_id:
            evse.charging = True
            evse.last_update_s = now_s

    def next_seq_no(self, evse_id: int) -> int:
        """The seqNo for the next TransactionEvent of this EVSE's transaction."""
        evse = self.evses[evse_id]
        evse.seq_no += 1
        return evse.seq_no

    # -- faults (see evtwin.agents.faults) ------------------------------------------
    def down(self, evse: Evse) -> bool:
        """The EVSE cannot start a session: a failed component of its own or the
        station's, or the CSMS made it (or the station) inoperative."""
        return bool(evse.faults or self.faults or evse.evse_id in self.inoperative
                    or 0 in self.inoperative)

    def idle_status(self, evse: Evse) -> str:
        """The status of an EVSE with no EV: Faulted, Unavailable (inoperative),
        Reserved or Available."""
        if evse.faults or self.faults:
            return "Faulted"
        if evse.evse_id in self.inoperative or 0 in self.inoperative:
            return "Unavailable"
        return "Reserved" if self.reservation_on(evse.evse_id) is not None else "Available"

    def set_availability(self, evse_id: int, operative: bool, at_s: float) -> str:
        """ChangeAvailability: take an EVSE (0: every one) out of service or back.

        Returns Accepted, Scheduled (an EVSE with an EV changes when the EV leaves: a
        running session goes on) or Rejected (no such EVSE). The free EVSEs report
        their new status at once (Unavailable, or Available/Reserved/Faulted again).
        """
        if evse_id and evse_id not in self.evses:
            return "Rejected"
        was = {e.evse_id: self.down(e) for e in self.evses.values()}
        if operative:
            self.inoperative.discard(evse_id)
        else:
            self.inoperative.add(evse_id)
        scheduled = False
        changed: list[int] = []
        for evse in self.evses.values():
            if self.down(evse) == was[evse.evse_id]:
                continue
            changed.append(evse.evse_id)
            if evse.ev is not None or evse.transaction_id is not None:
                scheduled = True  # its status follows when the EV leaves
                continue
            evse.status = self.idle_status(evse)
            self.events.append(Event("status", evse.evse_id, at_s, {"status": evse.status}))
        if changed and self.on_availability is not None:
            self.on_availability(changed, not operative)
        return "Scheduled" if scheduled else "Accepted"

    def fail(self, evse_id: int, component: str, code: str, stop_reason: str,
             at_s: float, *, offline: bool = False) -> list[int]:
        """A component fails at ``at_s`` (``evse_id`` 0: one of the station's own).

        An EVSE's own failure ends its running transaction (``stop_reason``): the
        power stops. A station-wide one (communication, payment) lets running
        sessions go on but no new one start; ``offline`` (a failed modem) also takes
        the station off the air. Returns the EVSEs whose transaction the failure ended.
        ``component`` is named as OCPP 2.x's device model names it.
        """
        ended: list[int] = []
        targets = [self.evses[evse_id]] if evse_id else list(self.evses.values())
        if evse_id:
            targets[0].faults.add(component)
        else:
            self.faults.add(component)
        if offline:
            self.offline = True
        for evse in targets:
            self.advance_evse(evse, at_s)
            tx = None
            if evse_id and evse.transaction_id is not None:
                tx = evse.transaction_id
                evse.charging = False
                evse.power_now_w = 0.0
                ended.append(evse.evse_id)
            if evse_id or evse.ev is None:  # an EV still plugged in keeps it Occupied
                evse.status = "Faulted"
            self.events.append(Event("fault", evse.evse_id, at_s, {
                "transaction_id": tx, "register_wh": evse.register_wh,
                "seq_no": evse.seq_no + 1, "reason": stop_reason, "component": component,
                "code": code, "status": evse.status, "station_wide": not evse_id}))
            if tx is not None:
                evse.transaction_id = None
                evse.tx_started_s = None
                evse.profiles = [p for p in evse.profiles if p.purpose != "TxProfile"]
        return ended

    def repair(self, evse_id: int, component: str, code: str, at_s: float, *,
               online: bool = False) -> None:
        """A crew repaired (or swapped) the component: the EVSE(s) work again."""
        targets = [self.evses[evse_id]] if evse_id else list(self.evses.values())
        if evse_id:
            targets[0].faults.discard(component)
            targets[0].derate = 1.0
        else:
            self.faults.discard(component)
        if online:
            self.offline = False
            self.drop_heartbeat = 0.0
        for evse in targets:
            if evse.ev is None:
                # A reservation made before the failure holds the EVSE again (until
                # expiry); an EVSE the CSMS made inoperative stays Unavailable.
                evse.status = self.idle_status(evse)
            elif evse.ev is not None:
                evse.status = "Occupied"
            self.events.append(Event("repair", evse.evse_id, at_s, {
                "component": component, "code": code, "status": evse.status,
                "station_wide": not evse_id}))

    def warn(self, evse_id: int, component: str, code: str, at_s: float) -> None:
        """A warning the station's self-test raises (a symptom, or a false alarm)."""
        evse = self.evses.get(evse_id)
        status = evse.status if evse is not None else "Available"
        self.events.append(Event("warning", evse_id, at_s, {
            "component": component, "code": code, "status": status}))

    def set_derate(self, evse_id: int, share: float, at_s: float) -> None:
        """The EVSE gives at most ``share`` of its rated power from ``at_s``."""
        evse = self.evses[evse_id]
        self.advance_evse(evse, at_s)
        evse.derate = share

    # -- physics ------------------------------------------------------------
    def limit_w(self, evse: Evse, now_s: float) -> float:
        """The effective limit on an EVSE at ``now_s`` (W): its hardware, then its
        profiles by the rules of :mod:`evtwin.ocppj.smartcharging` (the CSMS's too).
        A station-wide maximum is shared equally by the EVSEs that are charging."""
        profiles = [(0, p) for p in self.station_profiles]
        profiles += [(evse.evse_id, p) for p in evse.profiles]
        sharing = sum(1 for e in self.evses.values() if e.charging)
        rated = evse.max_power_w * evse.derate
        limit = composite_limit(profiles, now_s, evse_id=evse.evse_id, unit="W",
                                phases=self._phases(evse), evse_max=rated,
                                transaction_id=evse.transaction_id,
                                tx_start_s=evse.tx_started_s, sharing=sharing)
        return rated if limit is None else limit

    @staticmethod
    def _phases(evse: Evse) -> int:
        """Phases current flows on: a one-phase EV on a three-phase EVSE uses one."""
        if evse.ev is not None:
            return min(evse.phases, evse.ev.vehicle.phases)
        return evse.phases

    def setpoint_w(self, evse: Evse, now_s: float) -> float | None:
        """The CentralSetpoint (W) of the running transaction's TxProfile, if any."""
        candidates = [p for p in evse.profiles if p.purpose == "TxProfile"
                      and p.transaction_id == evse.transaction_id]
        for p in sorted(candidates, key=lambda p: -p.stack_level):
            if p.limit_w(now_s, evse.tx_started_s, self._phases(evse)) is not None:
                return p.setpoint_w(now_s, evse.tx_started_s, self._phases(evse))
        return None

    def station_cap_w(self, now_s: float, phases: int) -> float | None:
        """The ChargingStationMaxProfile limit at ``now_s`` in W (None if none)."""
        caps = [p for p in self.station_profiles if p.purpose == "ChargingStationMaxProfile"]
        for p in sorted(caps, key=lambda p: -p.stack_level):
            value = p.limit_w(now_s, None, phases)
            if value is not None:
                return value
        return None

    def _switch_times(self, evse: Evse, t0: float, t1: float) -> list[float]:
        profiles = evse.profiles + self.station_profiles
        return sorted({t for p in profiles for t in p.switch_times(t0, t1, evse.tx_started_s)})

    def advance_evse(self, evse: Evse, now_s: float) -> None:
        """Integrate the EVSE's EV from its last update to ``now_s``.

        The interval is cut where a profile's limit can change (period starts,
        durations, validity), so the energy does not depend on the step size.
        """
        t0 = evse.last_update_s
        evse.last_update_s = now_s
        if now_s <= t0 or not evse.charging or evse.ev is None:
            if evse.ev is None or not evse.charging:
                evse.power_now_w = 0.0
            return
        ev = evse.ev
        v = ev.vehicle
        bounds = [t0, *self._switch_times(evse, t0, now_s), now_s]
        for a, b in itertools.pairwise(bounds):
            hours = (b - a) / 3600.0
            setpoint = self.setpoint_w(evse, a)
            if setpoint is not None and setpoint < 0 and v.bidirectional:
                result = discharge(
                    soc=ev.soc, min_soc=ev.min_soc, capacity_kwh=v.capacity_kwh,
                    power_kw=min(-setpoint / 1000.0, v.max_discharge_kw),
                    efficiency=v.efficiency, duration_h=hours)
                ev.discharged_kwh -= result.battery_kwh
                evse.export_register_wh -= result.grid_kwh * 1000.0
            else:
                result = charge(
                    soc=ev.soc, target_soc=ev.target_soc, capacity_kwh=v.capacity_kwh,
                    limit_kw=self._charge_limit_kw(evse, a, setpoint),
                    ev_max_kw=v.max_power_kw, efficiency=v.efficiency,
                    taper_soc=v.taper_soc, duration_h=hours)
                evse.register_wh += result.grid_kwh * 1000.0
            ev.soc = result.soc_end
            ev.energy_battery_kwh += result.battery_kwh
            ev.energy_grid_kwh += result.grid_kwh
            ev.throughput_kwh += abs(result.battery_kwh)
            evse.step_wh += result.grid_kwh * 1000.0
        self._power_now(evse, now_s)

    def _power_now(self, evse: Evse, now_s: float) -> None:
        """What the EVSE's meter reads at ``now_s`` (not the average over a step)."""
        ev = evse.ev
        if ev is None or not evse.charging:
            evse.power_now_w = 0.0
            return
        v = ev.vehicle
        setpoint = self.setpoint_w(evse, now_s)
        if setpoint is not None and setpoint < 0 and v.bidirectional:
            evse.power_now_w = (-min(-setpoint / 1000.0, v.max_discharge_kw) * 1000.0
                                if ev.soc > ev.min_soc + 1e-9 else 0.0)
            return
        evse.power_now_w = 1000.0 * charge_power_kw(
            soc=ev.soc, target_soc=ev.target_soc,
            limit_kw=self._charge_limit_kw(evse, now_s, setpoint), ev_max_kw=v.max_power_kw,
            taper_soc=v.taper_soc)

    def _charge_limit_kw(self, evse: Evse, at_s: float, setpoint_w: float | None) -> float:
        """The limit a charging EV draws up to at ``at_s`` (kW): the EVSE's limit,
        and a charging setpoint is a target, not a cap, so the lower of the two."""
        limit_kw = self.limit_w(evse, at_s) / 1000.0
        if setpoint_w is not None:
            limit_kw = min(limit_kw, max(setpoint_w, 0.0) / 1000.0)
        return limit_kw

    def constant_limit_kw(self, evse: Evse, now_s: float) -> float | None:
        """The one charging limit (kW) over the EVSE's interval up to ``now_s``.

        None unless the EV charges (not V2G) and no profile changes its limit
        inside the interval: the case a control step integrates for the whole
        fleet at once (see :meth:`evtwin.agents.model.ChargingModel.step`).
        """
        t0 = evse.last_update_s
        ev = evse.ev
        if now_s <= t0 or not evse.charging or ev is None:
            return None
        if self._switch_times(evse, t0, now_s):
            return None
        setpoint = self.setpoint_w(evse, t0)
        if setpoint is not None and setpoint < 0 and ev.vehicle.bidirectional:
            return None
        return self._charge_limit_kw(evse, t0, setpoint)

    def charged(self, evse: Evse, now_s: float, grid_kwh: float) -> None:
        """Book an interval integrated elsewhere (the fleet step) on the EVSE's meter."""
        evse.last_update_s = now_s
        evse.register_wh += grid_kwh * 1000.0
        evse.step_wh += grid_kwh * 1000.0
        self._power_now(evse, now_s)

    def close_step(self, step_s: float) -> float:
        """Each EVSE's mean power over the step just integrated; returns the station's (W)."""
        total_wh = 0.0
        for evse in self.evses.values():
            evse.power_w = evse.step_wh * 3600.0 / step_s
            total_wh += evse.step_wh
            evse.step_wh = 0.0
        return total_wh * 3600.0 / step_s

    def advance_all(self, now_s: float) -> None:
        """Integrate every EVSE up to ``now_s`` (before its limits change)."""
        for evse in self.evses.values():
            self.advance_evse(evse, now_s)

    def advance(self, now_s: float, step_s: float) -> float:
        """Advance every EVSE to ``now_s``; returns the station's mean power (W) over the step."""
        for evse in self.evses.values():
            self.advance_evse(evse, now_s)
        return self.close_step(step_s)

    # -- smart charging (from the CSMS) ---------------------------------------
    def set_profile(self, evse_id: int, profile: Profile) -> None:
        """Install a profile, replacing one with the same id or purpose+stack level."""
        if profile.purpose == "TxProfile":
            if evse_id == 0:
                raise ProfileRejected("TxProfile needs an EVSE id > 0")
            evse = self.evses.get(evse_id)
            if evse is None:
                raise ProfileRejected(f"no EVSE {evse_id}")
            if evse.transaction_id is None or profile.transaction_id != evse.transaction_id:
                raise ProfileRejected("no such transaction on this EVSE")
        if profile.purpose == "ChargingStationMaxProfile" and evse_id != 0:
            raise ProfileRejected("ChargingStationMaxProfile must target EVSE 0")
        if evse_id != 0 and evse_id not in self.evses:
            raise ProfileRejected(f"no EVSE {evse_id}")
        if profile.purpose not in ("TxProfile", "TxDefaultProfile", "ChargingStationMaxProfile"):
            raise ProfileRejected(f"purpose {profile.purpose} not supported")
        # K01.FR.05: a profile id replaces that id wherever it is installed;
        # within one EVSE, the same purpose and stack level is replaced too.
        for holder in [self.station_profiles, *(e.profiles for e in self.evses.values())]:
            holder[:] = [p for p in holder if p.profile_id != profile.profile_id]
        target = self.station_profiles if evse_id == 0 else self.evses[evse_id].profiles
        target[:] = [p for p in target if not (
            p.purpose == profile.purpose and p.stack_level == profile.stack_level)]
        target.append(profile)

    def clear_profiles(self, *, profile_id: int | None = None, evse_id: int | None = None,
                       purpose: str | None = None, stack_level: int | None = None) -> int:
        """Remove matching profiles; returns how many were removed."""
        removed = 0
        holders: list[tuple[int, list[Profile]]] = [(0, self.station_profiles)]
        holders += [(e.evse_id, e.profiles) for e in self.evses.values()]
        for holder_id, profiles in holders:
            keep = []
            for p in profiles:
                match = (profile_id is None or p.profile_id == profile_id) and (
                    evse_id is None or holder_id == evse_id) and (
                    purpose is None or p.purpose == purpose) and (
                    stack_level is None or p.stack_level == stack_level)
                if match:
                    removed += 1
                else:
                    keep.append(p)
            profiles[:] = keep
        return removed
