"""The CSMS for one station reached by direct calls: the ``direct`` transport.

A :class:`DirectShell` takes a station's version-neutral messages
(:mod:`evtwin.ocppj.domain`) and applies them to the :class:`CSMSCore` as the
version's wire shell would, without a wire form: no frame, no JSON, no schema
(the station is our own, in the same process). What the core refuses comes
back as :class:`~evtwin.ocppj.domain.Refusal` with the OCPP-J error code the
wire shell would have answered. CSMS-initiated limits go to the station's
``peer`` callable the same way.

The version still matters, as it does on the wire: a 1.6 station's
transactions are numbered by the CSMS and its events carry no charging
state; a 2.0.1 station cannot be told to discharge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from evtwin.ocppj import domain as d

from .clock import iso
from .core import CSMSCore, ProfileCommand
from .exceptions import InvalidMessageError, UnknownEvseError
from .model import EVChargingNeeds, TxEvent
from .shell import STOP_REASONS_16, InvalidOperation, limit_period
from .tariffs import tariff_21

log = logging.getLogger("evtwin.csms.ocpp")

Peer = Callable[[d.CSMSRequest], d.StationAnswer]


def _samples(reading: d.Reading, ts: str) -> tuple[Any, ...]:
    return tuple((ts, s.measurand, None, s.value, s.unit, reading.at)
                 for s in reading.samples())


class DirectShell:
    """One station's CSMS side on the ``direct`` transport (see the module docstring)."""

    def __init__(self, station_id: str, core: CSMSCore, version: str,
                 frames: dict[str, int] | None = None) -> None:
        self.id = station_id
        self.core = core
        self.version = version
        self.peer: Peer | None = None
        #: Messages exchanged, counted as the frames they would be ("in": from the
        #: station, "out": to it), so a run's message count is the same on every transport.
        self.frames = frames if frames is not None else {"in": 0, "out": 0}
        #: The last charging needs per EVSE (as a wire shell keeps them).
        self.ev_charging_needs: dict[int, EVChargingNeeds] = {}

    # ------------------------------------------------------------------ station -> CSMS

    def handle(self, m: d.StationMessage) -> d.CSMSAnswer:
        """Apply one station message; its answer, or Refusal."""
        frames = self.frames
        frames["in"] += 1
        frames["out"] += 1
        self.core.health.seen(self.id)
        try:
            return self._handle(m)
        except UnknownEvseError as exc:
            raise d.Refusal("PropertyConstraintViolation", str(exc)) from None
        except InvalidMessageError as exc:
            raise d.Refusal(exc.code, str(exc)) from None
        except Exception as exc:
            # As a wire shell answers it: InternalError, one log line, never the payload.
            name = type(m).__name__
            log.error("%s: %s failed: %s: %.200s", self.id, name, type(exc).__name__, exc,
                      extra={"event": "handler_failed", "station": self.id, "action": name})
            raise d.Refusal("InternalError", f"{name} could not be processed") from None

    def _handle(self, m: d.StationMessage) -> d.CSMSAnswer:
        core = self.core
        v16 = self.version == "1.6"
        if isinstance(m, d.TransactionUpdated):
            return self._tx(m, "Updated", "MeterValuePeriodic", m.seq_no,
                            None if v16 else m.charging_state, None, m.reading, m.evse_id)
        if isinstance(m, d.StatusChanged):
            core.on_status(self.id, m.evse_id, m.status, iso(m.at))
            return d.Ack()
        if isinstance(m, d.ProblemReport):
            if v16:  # one StatusNotification: the status with its error code
                if m.evse_id != 0:
                    core.on_status(self.id, m.evse_id, m.status, iso(m.at))
                if m.severity == "cleared":
                    return d.Ack()
            core.on_problem(self.id, m.evse_id, m.component, m.code, m.severity, iso(m.at))
            return d.Ack()
        if isinstance(m, d.MeterReport):
            if m.evse_id != 0:  # 0 is the station's main meter
                core.check_evse(self.id, m.evse_id)
            core.meter_samples(self.id, m.evse_id, _samples(m.reading, iso(m.reading.at)))
            return d.Ack()
        if isinstance(m, d.Heartbeat):
            core.on_heartbeat(self.id)
            return d.Ack()
        if isinstance(m, d.AuthorizeRequest):
            info = core.token_info(m.id_token)
            return d.AuthorizeAnswer(info.status, info.group)
        if isinstance(m, d.TransactionStarted):
            if not v16:
                return self._tx(m, "Started", "Authorized", 0, "EVConnected", None, m.reading,
                                m.evse_id, id_token=m.id_token)
            core.check_evse(self.id, m.evse_id)
            tx_id = core.next_transaction_id()
            self._tx(m, "Started", "Authorized", 0, None, None, m.reading, m.evse_id,
                     id_token=m.id_token, transaction_id=tx_id)
            return d.TransactionAnswer(
                core.token_info(m.id_token, starting=(self.id, tx_id)).status, tx_id)
        if isinstance(m, d.TransactionEnded):
            if not v16:
                return self._tx(m, "Ended", m.trigger, m.seq_no, m.charging_state, m.reason,
                                m.reading, m.evse_id)
            # 1.6 StopTransaction names no connector: the session's own is kept; its
            # whole-Wh meterStop comes before the exact register (as on the wire).
            self._tx(m, "Ended", "EVDeparted", None, None,
                     STOP_REASONS_16.get(m.reason, "Other"), m.reading, 0,
                     meter_stop_wh=float(round(m.reading.register_wh)))
            return d.TransactionAnswer()
        if isinstance(m, d.ChargingNeeds):
            core.check_evse(self.id, m.evse_id)
            needs = self._needs(m)
            self.ev_charging_needs[m.evse_id] = needs
            core.note_ev_needs(self.id, needs)
            return d.Ack()
        if isinstance(m, d.ReservationEnded):
            core.on_station_message(self.id, "ReservationStatusUpdate", {
                "reservationId": m.reservation_id, "reservationUpdateStatus": m.status})
            return d.Ack()
        if isinstance(m, d.Boot):
            r = core.on_boot(self.id, m.vendor, m.model)
            if (r["status"] == "Accepted" and self.version == "2.1" and self.peer is not None
                    and core.config.tariff.push_to_stations):
                spec = core.stations[self.id]
                tariff = tariff_21(core.config.tariff, "evtwin-default", spec.site)
                self.frames["out"] += 1
                self.peer(d.DefaultTariff(0, "evtwin-default", tariff))
                self.frames["in"] += 1
            return d.BootAnswer(r["status"], float(r["interval"]))
        raise TypeError(f"not a station message: {type(m).__name__}")

    def _tx(self, m: Any, event_type: str, trigger: str, seq_no: int | None,
            charging_state: str | None, stopped_reason: str | None, reading: d.Reading,
            evse_id: int, *, id_token: str | None = None, transaction_id: str | None = None,
            meter_stop_wh: float | None = None) -> d.TransactionAnswer:
        ts = iso(m.at)
        samples = _samples(reading, ts)
        if meter_stop_wh is not None:
            samples = ((ts, d.ENERGY, None, meter_stop_wh, "Wh", reading.at), *samples)
        energy_wh = next((s[3] for s in reversed(samples) if s[1] == d.ENERGY), None)
        ev = TxEvent(
            transaction_id=transaction_id or m.transaction_id, event_type=event_type,
            seq_no=seq_no, evse_id=evse_id, at=m.at, timestamp=ts, trigger_reason=trigger,
            id_token=id_token, charging_state=charging_state, stopped_reason=stopped_reason,
            samples=samples, energy_wh=energy_wh)
        r = self.core.transaction_event(self.id, ev, record=d.record(m))
        info = r.get("id_token_info")
        return d.TransactionAnswer(None if info is None else info.status)

    def _needs(self, m: d.ChargingNeeds) -> EVChargingNeeds:
        v = m.v2x
        return EVChargingNeeds(
            evse_id=m.evse_id, received_at=self.core.clock(), energy_transfer=m.energy_transfer,
            departure_time=m.departure, energy_amount_wh=float(m.energy_wh),
            ev_min_current_a=float(m.min_current_a), ev_max_current_a=float(m.max_current_a),
            ev_max_voltage_v=float(m.max_voltage_v),
            v2x_max_charge_power_w=None if v is None else float(v.max_charge_w),
            v2x_max_discharge_power_w=None if v is None else float(v.max_discharge_w),
            v2x_target_energy_wh=None if v is None else float(v.target_energy_wh),
            v2x_min_energy_wh=None if v is None else float(v.min_energy_wh),
            v2x_max_energy_wh=None if v is None else float(v.max_energy_wh),
            v2x_target_soc_percent=None if v is None else float(v.target_soc_percent),
            charging_needs=d.record(m))

    # ------------------------------------------------------------------ CSMS -> station

    def _ask(self, request: d.CSMSRequest) -> d.StationAnswer:
        if self.peer is None:
            raise ConnectionError(f"{self.id}: no station attached")
        self.frames["out"] += 1
        result = self.peer(request)
        self.frames["in"] += 1
        return result

    async def reserve_now(self, reservation_id: int, id_token: str, expiry: datetime, *,
                          evse_id: int | None = None, id_token_type: str = "Central",
                          group_id_token: str | None = None) -> dict[str, Any]:
        """ReserveNow (as the wire shells offer it; ``id_token_type`` has no direct form),
        recorded in the core's reservation book."""
        if evse_id:
            self.core.check_evse(self.id, evse_id)

        async def send() -> dict[str, Any]:
            result = self._ask(d.ReserveNow(reservation_id, id_token, d.ms_time(expiry),
                                            evse_id, group_id_token))
            return {"status": result.status}

        try:
            return await self.core.reservations.reserve(
                send, reservation_id, self.id, evse_id, id_token, expiry, self.core.clock,
                group_id_token)
        except ValueError as exc:  # the id is in force at another station
            if isinstance(exc, InvalidOperation):
                raise
            raise InvalidOperation("reservation_id", str(exc)) from None

    async def cancel_reservation(self, reservation_id: int) -> dict[str, Any]:
        """CancelReservation, recorded in the reservation book."""
        async def send() -> dict[str, Any]:
            return {"status": self._ask(d.CancelReservation(reservation_id)).status}

        return await self.core.reservations.cancel(send, reservation_id, self.core.clock)

    async def request_start(self, evse_id: int | None, id_token: str, *,
                            remote_start_id: int | None = None,
                            id_token_type: str = "Central") -> dict[str, Any]:
        """RequestStartTransaction (1.6 RemoteStartTransaction: no remoteStartId)."""
        if self.version == "1.6":
            remote_start_id = None
        elif remote_start_id is None:
            remote_start_id = self.core.store.next_counter("remote_start_id")
        result = self._ask(d.RequestStart(id_token, evse_id, remote_start_id))
        out: dict[str, Any] = {"status": result.status}
        if remote_start_id is not None:
            out["remote_start_id"] = remote_start_id
        return out

    async def request_stop(self, transaction_id: str) -> dict[str, Any]:
        """RequestStopTransaction."""
        return {"status": self._ask(d.RequestStop(transaction_id)).status}

    async def send_limit(self, cmd: ProfileCommand) -> str:
        """A TxProfile with one period at ``cmd.limit``; record and return the status."""
        if self.peer is None:
            raise ConnectionError(f"{self.id}: no station attached")
        core = self.core
        profile_id = cmd.profile_id or core.next_profile_id()
        data = d.ProfileData(
            profile_id=profile_id, purpose="TxProfile", stack_level=0, kind="Absolute",
            unit=cmd.unit, periods=(limit_period(cmd.limit, self.version),),
            start=d.ms_time(core.clock()), transaction_id=cmd.transaction_id)
        self.frames["out"] += 1
        status = self.peer(d.SetChargingProfile(cmd.evse_id, data)).status
        self.frames["in"] += 1
        core.profile_sent(cmd, profile_id, status)
        return status
