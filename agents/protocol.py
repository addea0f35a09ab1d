"""A virtual station's OCPP behaviour as a state machine, without I/O or wire form.

:class:`StationProtocol` decides what the station says and what it does with
the answers; it never awaits anything. It queues version-neutral messages
(:mod:`evtwin.ocppj.domain`), hands them out one at a time
(:meth:`StationProtocol.next_message`: OCPP-J allows one outstanding CALL per
direction) and goes on when it is given the answer
(:meth:`StationProtocol.on_answer`). What a message leads to (Authorize, then
the transaction start if the token is accepted, then the EV's charging needs)
is a continuation run on the answer, placed ahead of anything queued later,
so the order on the wire is the order of events at the station.

It also answers the CSMS (:meth:`StationProtocol.handle`): charging profiles,
tariffs and running costs, reservations (ReserveNow, CancelReservation; an
unused one expires at its time: 2.x ReservationStatusUpdate) and remote
start and stop.

A transport drives it: :mod:`evtwin.agents.link` over an OCPP-J endpoint
(websocket or in-memory pipe, each message encoded for the station's OCPP
version), or with direct calls into a CSMS. The behaviour differs by version
where OCPP does: 1.6 says Preparing/Charging and lets the CSMS number the
transaction (StartTransaction), 2.x says Occupied, numbers its events and
states the EV's needs; only 2.1 carries bidirectional (V2X) parameters.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from evtwin.ocppj import domain as d

from .exceptions import ProfileRejected, ProtocolError
from .station import NOMINAL_VOLTAGE_V, Evse, Profile, VirtualStation

log = logging.getLogger("evtwin.agents.protocol")

Then = Callable[[Any], list["_Item"]]


@dataclass(slots=True)
class _Send:
    """A message to send; ``then`` runs on its answer and returns what follows it."""

    message: d.StationMessage
    then: Then | None = None


@dataclass(slots=True)
class _Later:
    """Messages decided only when their turn comes (after the answers before them)."""

    build: Callable[[], list[_Item]]


_Item = _Send | _Later


#: Columns of a received charging profile's record (``profiles.csv``), in order.
PROFILE_COLUMNS: tuple[str, ...] = (
    "t_s", "station_id", "evse_id", "profile_id", "purpose", "stack_level", "unit", "limit",
    "number_phases", "limit_w_now", "transaction_id", "status")


class StationProtocol:
    """The OCPP behaviour of one :class:`VirtualStation` speaking ``version``.

    ``to_datetime`` maps simulated seconds to aware datetimes and
    ``to_seconds`` back; ``now_s`` is the simulated time now. Every time the
    station states is simulated time.
    """

    def __init__(self, station: VirtualStation, version: str, *,
                 to_datetime: Callable[[float], datetime],
                 to_seconds: Callable[[datetime], float],
                 now_s: Callable[[], float]) -> None:
        if version not in ("1.6", "2.0.1", "2.1"):
            raise ValueError(f"unknown OCPP version {version!r}")
        self.station = station
        self.version = version
        self.to_datetime = to_datetime
        self.to_seconds = to_seconds
        self.now_s = now_s
        self.heartbeat_interval_s = 3600.0
        self.calls_sent = 0
        self.call_errors = 0
        self.profiles_received = 0
        #: Every SetChargingProfile received, with its answer (what a CSMS did).
        self.received_profiles: list[dict[str, Any]] = []
        self._queue: deque[_Item] = deque()
        self._sent: _Send | None = None
        #: OCPP 1.6: the station's own transaction id -> the one the CSMS assigned.
        self._csms_tx: dict[str, str] = {}
        #: 1.6: the charging status last sent per EVSE (Charging/SuspendedEV/SuspendedEVSE).
        self._status16: dict[int, str] = {}
        #: 2.x NotifyEvent eventId (one sequence per station).
        self._event_id = 0
        self._heartbeats = 0

    # ------------------------------------------------------------------ state

    @property
    def idle(self) -> bool:
        """Nothing queued and no answer awaited: every exchange so far is complete."""
        return self._sent is None and not self._queue

    @property
    def awaiting(self) -> d.StationMessage | None:
        """The message whose answer is awaited, if any."""
        return self._sent.message if self._sent is not None else None

    def _at(self, t_s: float) -> datetime:
        return d.ms_time(self.to_datetime(t_s))

    # ------------------------------------------------------------------ what to say

    def boot(self) -> None:
        """BootNotification, then the status of every EVSE."""
        def booted(answer: d.BootAnswer) -> list[_Item]:
            if answer.status != "Accepted":
                raise ProtocolError(f"{self.station.station_id}: BootNotification "
                                    f"{answer.status}")
            self.heartbeat_interval_s = float(answer.interval_s)
            at = self._at(self.now_s())
            status = "Available" if self.version == "1.6" else None
            return [_Send(d.StatusChanged(e.evse_id, status or e.status, at))
                    for e in self.station.evses.values()]
        self._queue.append(_Send(d.Boot("evtwin", "evtwin-virtual"), booted))

    def queue_events(self, now_s: float) -> None:
        """Plug-ins and departures the station queued so far, in order."""
        st = self.station
        if st.reservations:
            st.expire_reservations(now_s)
        while st.events:
            event = st.events.popleft()
            if event.kind == "status":
                status = event.payload["status"]
                if status == "Occupied" and self.version == "1.6":
                    status = "Preparing"  # 1.6: plugged in, no transaction yet
                self._queue.append(_Send(d.StatusChanged(event.evse_id, status,
                                                         self._at(event.at_s))))
            elif event.kind == "reservation_ended":
                self._queue.append(_Later(self._reservation_chain(event)))
            elif event.kind == "plug":
                self._queue.append(_Later(self._plug_chain(event.evse_id, event.at_s,
                                                           event.payload, now_s)))
            elif event.kind in ("unplug", "fault"):
                self._queue.append(_Later(self._unplug_chain(event.evse_id, event.at_s,
                                                             event.payload)))
            else:  # repair | warning
                self._queue.append(_Later(self._problem_chain(event.kind, event.evse_id,
                                                              event.at_s, event.payload)))

    def queue_due(self, now_s: float, *, sample: bool, aligned: bool, heartbeat: bool) -> None:
        """Everything due at ``now_s``: events, then meter samples, clock-aligned
        readings and the heartbeat."""
        self.queue_events(now_s)
        if sample:
            self._queue.append(_Later(lambda: self._samples_due(now_s)))
        if aligned:
            self._queue.append(_Later(lambda: self._aligned_due(now_s)))
        if heartbeat and not self.station.offline:
            self._heartbeats += 1
            # A failing modem loses some heartbeats (a low-discrepancy pattern: no draw).
            if (self._heartbeats * 0.6180339887) % 1.0 >= self.station.drop_heartbeat:
                self._queue.append(_Send(d.Heartbeat()))

    def next_message(self) -> d.StationMessage | None:
        """The next message to send (None: none, or an answer is still awaited)."""
        if self._sent is not None or self.station.offline:
            return None  # offline: the station keeps what it has to say until it is back
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Later):
                self._queue.extendleft(reversed(item.build()))
                continue
            self._sent = item
            self.calls_sent += 1
            return item.message
        return None

    def on_answer(self, answer: Any) -> None:
        """The CSMS answered the message in flight; run what follows from it."""
        sent = self._sent
        if sent is None:
            raise ProtocolError(f"{self.station.station_id}: an answer with no message "
                                "in flight")
        self._sent = None
        if sent.then is not None:
            self._queue.extendleft(reversed(sent.then(answer)))

    def on_refused(self, code: str, description: str) -> None:
        """The CSMS answered the message in flight with an error (or a result that
        fails its schema). A refused report (status, clock-aligned meter values,
        heartbeat) is logged and counted; anything else is a :class:`ProtocolError`."""
        sent = self._sent
        if sent is None:
            raise ProtocolError(f"{self.station.station_id}: an error with no message "
                                "in flight")
        message = sent.message
        if not self._is_report(message):
            self._sent = None
            raise ProtocolError(f"{self.station.station_id}: {type(message).__name__} "
                                f"refused: {code} {description}")
        self.call_errors += 1
        log.warning("%s: %s answered %s %s", self.station.station_id, type(message).__name__,
                    code, description)
        self.on_answer(d.Ack())

    def _is_report(self, message: d.StationMessage) -> bool:
        if isinstance(message, d.Heartbeat | d.MeterReport | d.StatusChanged | d.ProblemReport):
            return True
        # 1.6 sends transaction samples as MeterValues, a report like any other.
        return self.version == "1.6" and isinstance(message, d.TransactionUpdated)

    # ------------------------------------------------------------------ readings

    def _reading(self, evse: Evse, at: datetime, context: str, *, full: bool) -> d.Reading:
        v16 = self.version == "1.6"
        export = None if v16 or evse.export_register_wh <= 0 else evse.export_register_wh
        power = soc = None
        if full:
            power = max(evse.power_now_w, 0.0) if v16 else evse.power_now_w
            if evse.ev is not None:
                soc = evse.ev.soc * 100.0
        return d.Reading(at, context, evse.register_wh, export, power, soc,
                         self.station.voltage_v)

    def _charging_state(self, evse: Evse, now_s: float) -> str:
        """2.x chargingState: who stopped the power, when it is stopped."""
        if evse.power_now_w != 0:
            return "Charging"
        if self.station.limit_w(evse, now_s) <= 0:
            return "SuspendedEVSE"  # the limit is 0: the station holds the EV back
        return "SuspendedEV"  # the EV takes nothing (full, or its own choice)

    def _samples_due(self, now_s: float) -> list[_Item]:
        st = self.station
        at = self._at(now_s)
        out: list[_Item] = []
        for evse in st.evses.values():
            tx = evse.transaction_id
            if tx is None or tx in st.rejected:
                continue
            state = self._charging_state(evse, now_s)
            if self.version == "1.6":
                if tx not in self._csms_tx.values():
                    continue  # StartTransaction not answered: no CSMS id to report on
                seq_no = None
                if self._status16.get(evse.evse_id, "Charging") != state:
                    # 1.6 tells who stopped the power by the connector's status, when
                    # the state is sampled (2.x: chargingState in the same sample).
                    self._status16[evse.evse_id] = state
                    out.append(_Send(d.StatusChanged(evse.evse_id, state, at)))
            else:
                seq_no = st.next_seq_no(evse.evse_id)
            out.append(_Send(d.TransactionUpdated(
                evse.evse_id, tx, at, seq_no, state,
                self._reading(evse, at, "Sample.Periodic", full=True))))
        return out

    def _aligned_due(self, now_s: float) -> list[_Item]:
        at = self._at(now_s)
        return [_Send(d.MeterReport(e.evse_id, self._reading(e, at, "Sample.Clock", full=False)))
                for e in self.station.evses.values() if e.transaction_id is None]

    # ------------------------------------------------------------------ sessions

    def _plug_chain(self, evse_id: int, at_s: float, info: dict[str, Any], now_s: float
                    ) -> Callable[[], list[_Item]]:
        st = self.station
        at = self._at(at_s)
        tx_id: str = info["transaction_id"]
        v16 = self.version == "1.6"

        def begin_reading() -> d.Reading:
            if v16:  # 1.6 meterStart is whole Wh
                return d.Reading(at, "Transaction.Begin", float(round(info["register_wh"])))
            # The export register too, 0 included: the CSMS bills what is fed
            # back from it (a lifetime register is not a session's export).
            return d.Reading(at, "Transaction.Begin", info["register_wh"],
                             st.evses[evse_id].export_register_wh)

        def authorized(answer: d.AuthorizeAnswer) -> list[_Item]:
            if answer.status != "Accepted":
                st.rejected.add(tx_id)
                return []
            reservation_id = info.get("reservation_id")
            held = info.get("group_check")
            if held is not None:  # reserved for a group: is this token in it?
                reservation = st.reservations.get(held)
                if reservation is not None and not (
                        answer.group_id_token is not None
                        and reservation.admits(answer.group_id_token)):
                    st.rejected.add(tx_id)  # another group's reservation: nothing starts
                    return []
                st.use_reservation(held)
                reservation_id = held if reservation is not None else None
            return [_Send(d.TransactionStarted(
                evse_id, tx_id, at, info["id_token"], begin_reading(),
                reservation_id=reservation_id,
                remote_start_id=None if v16 else info.get("remote_start_id")), started)]

        def started(answer: d.TransactionAnswer) -> list[_Item]:
            status = answer.id_token_status or "Accepted"
            if v16:
                csms_tx = answer.transaction_id
                if csms_tx is None:
                    raise ProtocolError(f"{st.station_id}: StartTransaction answered "
                                        "without a transaction id")
                self._csms_tx[tx_id] = csms_tx
                st.rename_transaction(evse_id, tx_id, csms_tx)
                if status != "Accepted":
                    st.rejected.add(csms_tx)
                    return []

                def charging(_: Any) -> list[_Item]:
                    st.begin_charging(evse_id, csms_tx, now_s)
                    self._status16[evse_id] = "Charging"
                    return []
                return [_Send(d.StatusChanged(evse_id, "Charging", at), charging)]
            if status != "Accepted":
                st.rejected.add(tx_id)
                return []
            st.begin_charging(evse_id, tx_id, now_s)
            needs = self._needs(evse_id, info.get("needs"))
            return [] if needs is None else [_Send(needs)]

        def build() -> list[_Item]:
            out: list[_Item] = []
            if not info.get("status_sent"):
                out.append(_Send(d.StatusChanged(evse_id, "Preparing" if v16 else "Occupied",
                                                 at)))
            if info.get("blocked"):
                return out  # the EVSE is reserved for another token: nothing starts
            if info.get("remote"):
                # Started by the CSMS, which knows the token (AuthorizeRemoteStart false).
                return [*out, *authorized(d.AuthorizeAnswer("Accepted"))]
            return [*out, _Send(d.AuthorizeRequest(info["id_token"]), authorized)]
        return build

    def _reservation_chain(self, event: Any) -> Callable[[], list[_Item]]:
        """A reservation ended unused: 2.x ReservationStatusUpdate (1.6 says nothing
        but the connector's status, which follows as its own event)."""
        def build() -> list[_Item]:
            if self.version == "1.6":
                return []
            return [_Send(d.ReservationEnded(event.payload["reservation_id"],
                                             event.payload["status"]))]
        return build

    def _needs(self, evse_id: int, needs: dict[str, Any] | None) -> d.ChargingNeeds | None:
        """ISO 15118 in the EV -> OCPP 2.x: departure time and energy need."""
        if needs is None or self.version == "1.6":
            return None
        transfer = "AC_three_phase" if needs["phases"] == 3 else "AC_single_phase"
        v2x = None
        raw = needs.get("v2x")
        if raw is not None and self.version == "2.1":
            transfer = "AC_BPT"
            v2x = d.V2XNeeds(
                min_energy_wh=round(raw["min_energy_wh"]),
                target_energy_wh=round(raw["target_energy_wh"]),
                max_energy_wh=round(raw["max_energy_wh"]),
                target_soc_percent=round(raw["target_soc_percent"]),
                max_charge_w=round(raw["max_charge_w"]),
                max_discharge_w=round(raw["max_discharge_w"]))
        return d.ChargingNeeds(
            evse_id=evse_id, energy_transfer=transfer, departure=self._at(needs["departure_s"]),
            energy_wh=round(needs["energy_wh"]), min_current_a=6,
            max_current_a=round(needs["max_current_a"]),
            max_voltage_v=round(NOMINAL_VOLTAGE_V), v2x=v2x)

    def _unplug_chain(self, evse_id: int, at_s: float, info: dict[str, Any]
                      ) -> Callable[[], list[_Item]]:
        st = self.station
        at = self._at(at_s)

        def build() -> list[_Item]:
            tx: str | None = info["transaction_id"]
            seq_no: int | None = info["seq_no"]
            v16 = self.version == "1.6"
            if v16:
                # Queued with the CSMS's id if StartTransaction had been answered by
                # then, else with the station's own.
                tx = tx if tx in self._csms_tx.values() else self._csms_tx.get(tx or "")
                seq_no = None
            out: list[_Item] = []
            fault = "component" in info  # a failure (see VirtualStation.fail)
            if tx is not None and tx not in st.rejected:
                reason = info.get("reason", "EVDisconnected")
                how: tuple[str, ...] = ()
                if fault:
                    how = ("AbnormalCondition", "EVConnected")
                elif "trigger" in info:  # a remote stop: the EV stays plugged in
                    how = (info["trigger"], info["charging_state"])
                out.append(_Send(d.TransactionEnded(
                    evse_id, tx, at, seq_no, "Other" if v16 and fault else reason,
                    d.Reading(at, "Transaction.End", info["register_wh"]), *how)))
            status = info.get("status", "Available")
            if v16 and status == "Occupied":
                status = "Finishing"  # 1.6: transaction over, EV still plugged in
            if fault:
                out.extend(self._problem_chain("fault", evse_id, at_s, info)())
            else:
                out.append(_Send(d.StatusChanged(evse_id, status, at)))
            self._status16.pop(evse_id, None)
            return out
        return build

    def _problem_chain(self, kind: str, evse_id: int, at_s: float, info: dict[str, Any]
                       ) -> Callable[[], list[_Item]]:
        """A failure, its repair or a warning: 2.x StatusNotification (when the status
        changes) and NotifyEvent; 1.6 one StatusNotification with the error code."""
        at = self._at(at_s)

        def build() -> list[_Item]:
            severity = {"fault": "fault", "repair": "cleared"}.get(kind, "warning")
            status = info["status"]
            if self.version == "1.6" and status == "Occupied":
                status = self._status16.get(evse_id, "Charging")
            self._event_id += 1
            report = d.ProblemReport(evse_id, info["component"], info["code"], severity,
                                     status, at, self._event_id)
            if self.version == "1.6":
                return [_Send(report)]
            out: list[_Item] = []
            if kind != "warning":
                out.append(_Send(d.StatusChanged(evse_id, status, at)))
            out.append(_Send(report))
            return out
        return build

    # ------------------------------------------------------------------ the CSMS asks

    def handle(self, request: d.CSMSRequest) -> d.StationAnswer:
        """Apply a CSMS request and return the station's answer."""
        if isinstance(request, d.SetChargingProfile):
            return self._set_profile(request)
        if isinstance(request, d.CostUpdate):  # shown to the driver on the display
            self.station.running_cost[request.transaction_id] = request.total_cost
            return d.Ack()
        if isinstance(request, d.DefaultTariff):
            if request.evse_id != 0 and request.evse_id not in self.station.evses:
                return d.TariffAnswer("Rejected")
            for e in ([request.evse_id] if request.evse_id else [0, *self.station.evses]):
                self.station.tariffs[e] = request.tariff
            return d.TariffAnswer("Accepted")
        if isinstance(request, d.ReserveNow | d.CancelReservation | d.RequestStart
                      | d.RequestStop):
            return self._remote(request)
        if isinstance(request, d.ChangeAvailability):
            return d.StatusAnswer(self.station.set_availability(
                request.evse_id, request.operative, self.now_s()))
        self.station.advance_all(self.now_s())
        removed = self.station.clear_profiles(
            profile_id=request.profile_id, evse_id=request.evse_id,
            purpose=request.purpose, stack_level=request.stack_level)
        return d.ClearAnswer("Accepted" if removed else "Unknown")

    def _remote(self, request: d.ReserveNow | d.CancelReservation | d.RequestStart
                | d.RequestStop) -> d.StatusAnswer:
        """Reservations and remote start/stop (what the driver's app asks through the CSMS)."""
        st = self.station
        now = self.now_s()
        if isinstance(request, d.ReserveNow):
            if st.offline:
                return d.StatusAnswer("Unavailable")
            st.expire_reservations(now)
            return d.StatusAnswer(st.reserve(
                request.reservation_id, request.id_token, self.to_seconds(request.expiry),
                request.evse_id or None, now, request.group_id_token))
        if isinstance(request, d.CancelReservation):
            ok = st.cancel_reservation(request.reservation_id, now)
            return d.StatusAnswer("Accepted" if ok else "Rejected")
        if isinstance(request, d.RequestStart):
            status = st.remote_start(request.id_token, request.evse_id, request.remote_start_id,
                                     now)
            return d.StatusAnswer(status)
        ok = st.remote_stop(request.transaction_id, now)
        return d.StatusAnswer("Accepted" if ok else "Rejected")

    def _profile(self, data: d.ProfileData) -> Profile:
        secs = self.to_seconds
        setpoints = [p.setpoint for p in data.periods]
        return Profile(
            profile_id=data.profile_id, purpose=data.purpose, stack_level=data.stack_level,
            kind=data.kind, unit=data.unit,
            # A period with no limit (a 2.1 setpoint alone) sets no cap.
            periods=[(p.start_s, p.limit if p.limit is not None else float("inf"), p.phases)
                     for p in data.periods],
            start_s=secs(data.start) if data.start else None, duration_s=data.duration_s,
            transaction_id=data.transaction_id,
            valid_from_s=secs(data.valid_from) if data.valid_from else None,
            valid_to_s=secs(data.valid_to) if data.valid_to else None,
            recurrency=data.recurrency,
            setpoints=setpoints if any(sp is not None for sp in setpoints) else None)

    def _set_profile(self, request: d.SetChargingProfile) -> d.ProfileAnswer:
        self.profiles_received += 1
        now = self.now_s()
        self.station.advance_all(now)  # the old limits hold until now
        profile = self._profile(request.profile)
        try:
            self.station.set_profile(request.evse_id, profile)
        except ProfileRejected as exc:
            self._record(request.evse_id, profile, "Rejected", now)
            return d.ProfileAnswer("Rejected", exc.reason)
        self._record(request.evse_id, profile, "Accepted", now)
        return d.ProfileAnswer("Accepted")

    def _record(self, evse_id: int, profile: Profile, status: str, now: float) -> None:
        evse = self.station.evses.get(evse_id)
        phases = evse.phases if evse is not None else 3
        first = profile.periods[0] if profile.periods else (0.0, float("nan"), None)
        self.received_profiles.append(dict(zip(PROFILE_COLUMNS, (
            now, self.station.station_id, evse_id, profile.profile_id, profile.purpose,
            profile.stack_level, profile.unit, first[1], first[2],
            profile.limit_w(now, evse.tx_started_s if evse else None, phases),
            profile.transaction_id, status), strict=True)))
