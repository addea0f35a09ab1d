"""OCPP 2.0.1 and 2.1 shells of the CSMS.

2.1 keeps 2.0.1's messages for everything this CSMS handles, so both share
the handlers; they differ in schemas (checked by the ``ocpp`` library per
version) and in what 2.1 adds (V2X fields in charging schedules).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

from ocpp.v21.enums import Action as Action21
from ocpp.v201.enums import Action as Action201

from .clock import iso, parse_iso
from .core import CSMSCore, ProfileCommand
from .exceptions import StoreError
from .model import EVChargingNeeds, LimitSchedule
from .parse import samples_2x, tx_event_2x
from .shell import (
    DATA_TRANSFER_ANSWER,
    PURPOSES_21,
    PURPOSES_201,
    CallFailed,
    IdTokenType,
    InvalidOperation,
    LogType,
    ProfileReport,
    ProfileSpec,
    Purpose,
    PurposeFilter,
    ReportBase,
    ShellBase,
    StationMessageError,
    TriggerMessageName,
    VariableSpec,
    answer,
    as_variables,
    invalid_message_is_a_call_error,
    limit_period,
    log_parameters,
    periods_from_wire,
    profile_to_wire_2x,
    recorded,
    retry_fields,
    unknown_evse_is_a_property_violation,
    version_at_least,
    wire,
)
from .tariffs import tariff_21

#: What a 2.0.1 TriggerMessage may ask for (2.1 adds SignV2G20Certificate and
#: CustomTrigger, which this CSMS does not send).
TRIGGER_MESSAGES_201 = frozenset({
    "BootNotification", "LogStatusNotification", "FirmwareStatusNotification", "Heartbeat",
    "MeterValues", "SignChargingStationCertificate", "SignV2GCertificate", "StatusNotification",
    "TransactionEvent", "SignCombinedCertificate", "PublishFirmwareStatusNotification"})
TRIGGER_MESSAGES_21 = TRIGGER_MESSAGES_201 | {"SignV2G20Certificate"}

#: IdTokenType.idToken: 36 characters in 2.0.1, 255 in 2.1.
ID_TOKEN_MAX = {"2.0.1": 36, "2.1": 255}

log = logging.getLogger("evtwin.csms")

#: Transactions at most waiting to be asked about (GetTransactionStatus) per connection.
MAX_RECONCILE = 1000
#: An EV's schedule above its limit makes the CSMS resend the limit at most this often.
RENEGOTIATE_EVERY_S = 60.0


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def ev_charging_needs(evse_id: int, needs: dict[str, Any], received_at: datetime
                      ) -> EVChargingNeeds:
    """The domain's view of a NotifyEVChargingNeeds ``chargingNeeds`` object (wire form)."""
    ac = needs.get("acChargingParameters") or {}
    dc = needs.get("dcChargingParameters") or {}
    v2x = needs.get("v2xChargingParameters") or {}
    departure = needs.get("departureTime")
    return EVChargingNeeds(
        evse_id=evse_id, received_at=received_at,
        energy_transfer=needs["requestedEnergyTransfer"],
        departure_time=parse_iso(departure) if departure else None,
        energy_amount_wh=_number(ac.get("energyAmount", dc.get("energyAmount"))),
        ev_min_current_a=_number(ac.get("evMinCurrent")),
        ev_max_current_a=_number(ac.get("evMaxCurrent", dc.get("evMaxCurrent"))),
        ev_max_voltage_v=_number(ac.get("evMaxVoltage", dc.get("evMaxVoltage"))),
        ev_max_power_w=_number(dc.get("evMaxPower")),
        ev_energy_capacity_wh=_number(dc.get("evEnergyCapacity")),
        soc_percent=_number(dc.get("stateOfCharge")),
        v2x_min_charge_power_w=_number(v2x.get("minChargePower")),
        v2x_max_charge_power_w=_number(v2x.get("maxChargePower")),
        v2x_min_discharge_power_w=_number(v2x.get("minDischargePower")),
        v2x_max_discharge_power_w=_number(v2x.get("maxDischargePower")),
        v2x_target_energy_wh=_number(v2x.get("evTargetEnergyRequest")),
        v2x_min_energy_wh=_number(v2x.get("evMinEnergyRequest")),
        v2x_max_energy_wh=_number(v2x.get("evMaxEnergyRequest")),
        v2x_target_soc_percent=_number(v2x.get("targetSoC")),
        charging_needs=needs,
    )


class Handlers201(ShellBase):
    """Handlers for station-initiated 2.0.1/2.1 messages, answered in wire form."""

    _reconciling: bool

    # What stations send for the record: kept as received, answered as the spec says.
    on_notify_event = recorded("NotifyEvent")
    on_security_event_notification = recorded("SecurityEventNotification")
    on_notify_monitoring_report = recorded("NotifyMonitoringReport")
    on_log_status_notification = recorded("LogStatusNotification")
    on_firmware_status_notification = recorded("FirmwareStatusNotification")
    on_publish_firmware_status_notification = recorded("PublishFirmwareStatusNotification")
    on_notify_customer_information = recorded("NotifyCustomerInformation")
    on_notify_display_messages = recorded("NotifyDisplayMessages")
    on_reservation_status_update = recorded("ReservationStatusUpdate")
    on_data_transfer = recorded("DataTransfer", DATA_TRANSFER_ANSWER)
    # ISO 15118 certificate services need a V2G PKI and an OCSP responder this CSMS
    # does not have: answered Failed, as the spec has them answer when they cannot.
    on_get_certificate_status = recorded("GetCertificateStatus", {
        "status": "Failed", "statusInfo": {"reasonCode": "NoOCSPResponder",
                                           "additionalInfo": "no OCSP responder to ask"}})
    on_get_15118_ev_certificate = recorded("Get15118EVCertificate", {
        "status": "Failed", "exiResponse": "",
        "statusInfo": {"reasonCode": "NoV2GPKI",
                       "additionalInfo": "no contract certificate pool to ask"}})

    # The messages every station sends all the time take the wire payload and
    # return the wire answer (see shell.wire); the rest go through @on.
    @wire("BootNotification")
    def on_boot_notification(self, payload: dict[str, Any]) -> dict[str, Any]:
        station = payload["chargingStation"]
        r = self.core.on_boot(self.id, station.get("vendorName", ""), station.get("model", ""))
        reason = payload["reason"]
        pending = self.core.open_at_boot.pop(self.id, set())
        if pending and reason != "Triggered":  # Triggered: asked to, not a reboot
            # Transactions open before the reboot whose Ended never came: asked about
            # once the answer is out (E14); PowerUp means the power was lost.
            self._ask_about(sorted(pending), "PowerLoss" if reason == "PowerUp" else "Reboot",
                            f"not ongoing after a reboot ({reason})")
        if (r["status"] == "Accepted" and self.version == "2.1"
                and self.core.config.tariff.push_to_stations):
            self._in_background(self._push_tariff())
        return {"currentTime": r["current_time"], "interval": r["interval"],
                "status": r["status"]}

    async def _push_tariff(self) -> None:
        """The station's default tariff, once it has booted (2.1, ``push_to_stations``)."""
        try:
            await self.set_default_tariff(0)
        except (CallFailed, TimeoutError, ConnectionError) as exc:
            log.info("%s: SetDefaultTariff not delivered: %s", self.id, exc)

    @wire("NotifyChargingLimit")
    def on_notify_charging_limit(self, payload: dict[str, Any]) -> dict[str, Any]:
        """NotifyChargingLimit (K12): kept, and its schedules cap the EVSE (0: the
        station) in every control cycle until ClearedChargingLimit."""
        evse_id = payload.get("evseId") or 0
        if evse_id:
            with unknown_evse_is_a_property_violation():
                self.core.check_evse(self.id, evse_id)
        schedules = tuple(self._limit_schedule(sc, n) for n, sc in
                          enumerate(payload.get("chargingSchedule") or []))
        self.core.on_station_message(self.id, "NotifyChargingLimit", payload)
        try:
            self.core.note_charging_limit(
                self.id, evse_id, payload["chargingLimit"]["chargingLimitSource"], schedules)
        except ValueError as exc:
            raise StationMessageError("OccurrenceConstraintViolation", str(exc)) from None
        return {}

    def _limit_schedule(self, schedule: dict[str, Any], n: int) -> LimitSchedule:
        """A ChargingScheduleType as the core keeps it (starting now when it names no
        start); a negative limit is a PropertyConstraintViolation."""
        periods = []
        for i, period in enumerate(schedule["chargingSchedulePeriod"]):
            limit = period.get("limit")
            if limit is not None and limit < 0:
                raise StationMessageError(
                    "PropertyConstraintViolation",
                    f"chargingSchedule.{n}.chargingSchedulePeriod.{i}.limit: negative")
            periods.append((float(period["startPeriod"]),
                            None if limit is None else float(limit),
                            period.get("numberPhases")))
        start = schedule.get("startSchedule")
        return LimitSchedule(parse_iso(start) if start else self.core.clock(),
                             schedule["chargingRateUnit"], tuple(periods),
                             schedule.get("duration"))

    @wire("ClearedChargingLimit")
    def on_cleared_charging_limit(self, payload: dict[str, Any]) -> dict[str, Any]:
        """ClearedChargingLimit (K13): kept, and the source's limit no longer applies."""
        self.core.on_station_message(self.id, "ClearedChargingLimit", payload)
        self.core.clear_charging_limit(self.id, payload.get("evseId"),
                                       payload["chargingLimitSource"])
        return {}

    @wire("NotifyEVChargingSchedule")
    def on_notify_ev_charging_schedule(self, payload: dict[str, Any]) -> dict[str, Any]:
        """NotifyEVChargingSchedule (K15-K17): kept; Accepted when the EV plans within
        the limit the CSMS gave its EVSE, else Rejected and the control cycle made due,
        so the station gets the limit again (renegotiation)."""
        evse_id = payload["evseId"]
        with unknown_evse_is_a_property_violation():
            self.core.check_evse(self.id, evse_id)
        self.core.on_station_message(self.id, "NotifyEVChargingSchedule", payload)
        schedule = payload["chargingSchedule"]
        phases = self.core.station(self.id).evse(evse_id).phases
        planned_w = []
        for period in schedule["chargingSchedulePeriod"]:
            if period.get("limit") is None:
                continue
            value = float(period["limit"])
            if schedule["chargingRateUnit"] == "A":
                value *= self.core.config.nominal_voltage_v * int(
                    period.get("numberPhases", phases))
            planned_w.append(value)
        limit_w = self.core.sent_limits_w.get((self.id, evse_id))
        if limit_w is not None and planned_w and max(planned_w) > limit_w * 1.01 + 1.0:
            log.info("%s: EV on EVSE %d plans %.0f W above its limit %.0f W", self.id,
                     evse_id, max(planned_w), limit_w, extra={
                         "event": "ev_schedule_rejected", "station": self.id,
                         "evse": evse_id})
            # Sent again at the next cycle, made due now; at most once a minute per
            # EVSE, so an EV that keeps planning above its limit cannot loop.
            now = time.monotonic()
            if now - self._renegotiated_at.get(evse_id, -math.inf) >= RENEGOTIATE_EVERY_S:
                self._renegotiated_at[evse_id] = now
                self.core.sent_limits_w.pop((self.id, evse_id), None)
                self.core.sessions_changed = True
            return {"status": "Rejected", "statusInfo": {
                "reasonCode": "AboveLimit",
                "additionalInfo": f"the EVSE's limit is {limit_w:.0f} W"}}
        return {"status": "Accepted"}

    def _cost_update(self, tx_id: str, interval_s: float) -> None:
        """CostUpdated with the session's running cost, at most every ``interval_s``."""
        now = self.core.clock().timestamp()
        if now - self._cost_sent.get(tx_id, -math.inf) < interval_s:
            return
        cost = self.core.running_cost(self.id, tx_id)
        if cost is None or tx_id in self._cost_in_flight:
            return  # one at a time: a station slow to answer gets no queue of them
        self._cost_sent[tx_id] = now
        self._cost_in_flight.add(tx_id)

        async def send() -> None:
            try:
                await self.cost_updated(tx_id, cost)
            except (CallFailed, TimeoutError, ConnectionError) as exc:
                log.info("%s: CostUpdated for %s not delivered: %s", self.id, tx_id, exc)
            finally:
                self._cost_in_flight.discard(tx_id)
        self._in_background(send())

    def _ask_about(self, transaction_ids: list[str], reason: str, why: str) -> None:
        """Reconcile these transactions (:meth:`_reconcile`): queued, one question at a
        time, each transaction once, at most :data:`MAX_RECONCILE` waiting."""
        for tx_id in transaction_ids:
            if len(self._to_reconcile) >= MAX_RECONCILE:
                log.warning("%s: too many transactions to reconcile; %s left alone",
                            self.id, tx_id)
                break
            self._to_reconcile.setdefault(tx_id, (reason, why))
        if self._to_reconcile and not self._reconciling:
            self._reconciling = True
            self._in_background(self._reconcile())

    async def _reconcile(self) -> None:
        """Ask the station about transactions whose events may be lost
        (GetTransactionStatus, E14) and end those it says are over with nothing
        queued. No answer or a refusal ends nothing."""
        try:
            while self._to_reconcile:
                tx_id = next(iter(self._to_reconcile))
                reason, why = self._to_reconcile.pop(tx_id)
                session = self.core.sessions.get((self.id, tx_id))
                if session is None or not session.is_open:
                    continue  # ended meanwhile
                try:
                    status = await self.get_transaction_status(tx_id)
                except (CallFailed, InvalidOperation, TimeoutError, ConnectionError) as exc:
                    log.info("%s: transaction %s not reconciled: %s", self.id, tx_id, exc,
                             extra={"event": "transaction_status_unknown",
                                    "station": self.id, "transaction": tx_id})
                    continue
                log.info("%s: transaction %s ongoing=%s queued=%s", self.id, tx_id,
                         status["ongoing"], status["messages_in_queue"], extra={
                             "event": "transaction_status", "station": self.id,
                             "transaction": tx_id, "ongoing": status["ongoing"],
                             "messages_in_queue": status["messages_in_queue"]})
                if status["ongoing"] is False and not status["messages_in_queue"]:
                    try:
                        self.core.close_transaction(self.id, tx_id, reason, why)
                    except StoreError as exc:
                        log.error("%s: transaction %s not closed: %s", self.id, tx_id, exc)
        finally:
            self._reconciling = False

    @wire("StatusNotification")
    def on_status_notification(self, payload: dict[str, Any]) -> dict[str, Any]:
        with unknown_evse_is_a_property_violation():
            self.core.on_status(self.id, payload["evseId"], payload["connectorStatus"],
                                payload["timestamp"])
        return {}

    @wire("Authorize")
    def on_authorize(self, payload: dict[str, Any]
                     ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        id_token = payload["idToken"]["idToken"]
        if self.core.needs_remote_authorization(id_token):  # a roaming token: ask its eMSP
            return self._authorize_remote(id_token)
        return {"idTokenInfo": self.core.token_info(id_token).to_2x()}

    async def _authorize_remote(self, id_token: str) -> dict[str, Any]:
        return {"idTokenInfo": (await self.core.authorize_remote(id_token, self.id)).to_2x()}

    @wire("TransactionEvent")
    def on_transaction_event(self, payload: dict[str, Any]) -> dict[str, Any]:
        core = self.core
        with unknown_evse_is_a_property_violation(), invalid_message_is_a_call_error():
            r = core.transaction_event(self.id, tx_event_2x(payload, core.clock(), core.config),
                                       record=payload)
        out: dict[str, Any] = {}
        if r.get("id_token_info") is not None:
            out["idTokenInfo"] = r["id_token_info"].to_2x()
        if r.get("total_cost") is not None:
            out["totalCost"] = r["total_cost"]
        interval = core.config.tariff.cost_updated_interval_s
        if interval > 0 and payload["eventType"] == "Updated" and payload.get("meterValue"):
            self._cost_update(payload["transactionInfo"]["transactionId"], interval)
        elif payload["eventType"] == "Ended":
            self._cost_sent.pop(payload["transactionInfo"]["transactionId"], None)
        if r.get("seq_gap"):
            self._ask_about([payload["transactionInfo"]["transactionId"]], "Other",
                            f"events missing before seqNo {payload['seqNo']}")
        return out

    @wire("MeterValues")
    def on_meter_values(self, payload: dict[str, Any]) -> dict[str, Any]:
        evse_id = payload["evseId"]
        if evse_id != 0:  # 0 is the station's main meter
            with unknown_evse_is_a_property_violation():
                self.core.check_evse(self.id, evse_id)
        core = self.core
        with invalid_message_is_a_call_error():
            core.meter_samples(self.id, evse_id,
                               samples_2x(payload["meterValue"], core.clock(), core.config))
        return {}

    @wire("NotifyEVChargingNeeds")
    def on_notify_ev_charging_needs(self, payload: dict[str, Any]) -> dict[str, Any]:
        evse_id = payload["evseId"]
        with unknown_evse_is_a_property_violation():
            self.core.check_evse(self.id, evse_id)
        at = parse_iso(payload["timestamp"]) if payload.get("timestamp") else self.core.clock()
        needs = ev_charging_needs(evse_id, payload["chargingNeeds"], at)
        self.ev_charging_needs[evse_id] = needs
        self.core.note_ev_needs(self.id, needs)
        return {"status": "Accepted"}

    @wire("ReportChargingProfiles")
    def on_report_charging_profiles(self, payload: dict[str, Any]) -> dict[str, Any]:
        report = self._profile_reports.get(payload["requestId"])
        if report is not None:  # else a late report for a request we gave up on
            source = payload["chargingLimitSource"]
            report.profiles.extend({"evse_id": payload["evseId"],
                                    "charging_limit_source": source, "charging_profile": p}
                                   for p in payload["chargingProfile"])
            if not payload.get("tbc", False):
                report.done.set()
        return {}

    def _init_shell(self, core: CSMSCore) -> None:
        super()._init_shell(core)
        #: When CostUpdated last went out per transaction (the core's clock, epoch s).
        self._cost_sent: dict[str, float] = {}
        self._cost_in_flight: set[str] = set()
        #: Transactions to ask the station about (E14): id -> (stopped reason, why).
        self._to_reconcile: dict[str, tuple[str, str]] = {}
        self._reconciling = False
        #: When an EV's schedule last made the CSMS send an EVSE's limit again.
        self._renegotiated_at: dict[int, float] = {}

    def _tx_profile(self, profile_id: int, cmd: ProfileCommand) -> dict[str, Any]:
        return {
            "id": profile_id,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "transactionId": cmd.transaction_id,
            "chargingSchedule": [{
                "id": profile_id,
                "startSchedule": iso(self.core.clock()),
                "chargingRateUnit": cmd.unit,
                "chargingSchedulePeriod": [self._limit_period(cmd)],
            }],
        }

    def _limit_period(self, cmd: ProfileCommand) -> dict[str, Any]:
        """The limit's one schedule period (see :func:`~evtwin.csms.shell.limit_period`)."""
        period = limit_period(cmd.limit, self.version)
        # A single-phase EVSE: say so (numberPhases defaults to 3). No phaseToUse: that
        # is only for EVSEs that can switch phases (ACPhaseSwitchingSupported).
        phases = {"numberPhases": 1} if cmd.phases == 1 else {}
        if period.setpoint is None:
            return {"startPeriod": 0, "limit": period.limit, **phases}
        return {"startPeriod": 0, "operationMode": "CentralSetpoint",
                "setpoint": period.setpoint, "dischargeLimit": period.setpoint, **phases}

    async def send_limit(self, cmd: ProfileCommand) -> str:
        """Send a TxProfile with one period at ``cmd.limit``; record and return the status."""
        profile_id = cmd.profile_id or self.core.next_profile_id()
        payload = {"evseId": cmd.evse_id, "chargingProfile": self._tx_profile(profile_id, cmd)}
        try:
            status = str((await self.call_json("SetChargingProfile", payload))["status"])
        except CallFailed as exc:
            status = f"CallError:{exc.code}"
        self.core.profile_sent(cmd, profile_id, status)
        return status


    # -- version-neutral operations (see ShellBase for the contracts) ----------
    @property
    def _purposes(self) -> dict[str, str]:
        return PURPOSES_21 if version_at_least(self.version, "2.1") else PURPOSES_201

    def _wire_purpose(self, purpose: str, field: str = "purpose") -> str:
        try:
            return self._purposes[purpose]
        except KeyError:
            raise InvalidOperation(field, f"{purpose} needs OCPP 2.1; "
                                          f"the station speaks {self.version}") from None

    def _id_token(self, id_token: str, id_token_type: str, field: str) -> dict[str, Any]:
        limit = ID_TOKEN_MAX[self.version]
        if len(id_token) > limit:
            raise InvalidOperation(field, f"OCPP {self.version} id tokens have at most "
                                          f"{limit} characters")
        return {"idToken": id_token, "type": id_token_type}

    async def request_start(self, evse_id: int | None, id_token: str, *,
                            remote_start_id: int | None = None,
                            id_token_type: IdTokenType = "Central",
                            charging_profile: ProfileSpec | Mapping[str, Any] | None = None,
                            ) -> dict[str, Any]:
        """RequestStartTransaction."""
        self._check_evse_arg(evse_id, station_wide=False)
        payload: dict[str, Any] = {}
        if evse_id is not None:
            payload["evseId"] = evse_id
        payload["idToken"] = self._id_token(id_token, id_token_type, "id_token")
        if remote_start_id is None:
            remote_start_id = self.core.store.next_counter("remote_start_id")
        payload["remoteStartId"] = remote_start_id
        profile_id = None
        if charging_profile is None:
            result = await self.call_json("RequestStartTransaction", payload)
        else:
            profile = self._start_profile(charging_profile)
            profile_id = self.core.next_profile_id()
            payload["chargingProfile"] = profile_to_wire_2x(
                profile, profile_id, self.core.clock(), self.version, path="charging_profile")
            result = await self._send_profile("RequestStartTransaction", payload, evse_id or 0,
                                              profile_id, profile)
        return answer(result, remote_start_id=remote_start_id,
                      transaction_id=result.get("transactionId"), profile_id=profile_id)

    async def request_stop(self, transaction_id: str) -> dict[str, Any]:
        """RequestStopTransaction."""
        return answer(await self.call_json("RequestStopTransaction",
                                           {"transactionId": transaction_id}))

    def _set_profile_payload(self, evse_id: int, prof: ProfileSpec, profile_id: int,
                             now: datetime) -> dict[str, Any]:
        """SetChargingProfile in this version's wire form."""
        return {"evseId": evse_id, "chargingProfile": profile_to_wire_2x(
            prof, profile_id, now, self.version, path="profile")}

    async def clear_charging_profile(self, *, profile_id: int | None = None,
                                     evse_id: int | None = None,
                                     purpose: Purpose | None = None,
                                     stack_level: int | None = None) -> dict[str, Any]:
        """ClearChargingProfile (criteria go in chargingProfileCriteria)."""
        self._check_evse_arg(evse_id)
        payload: dict[str, Any] = {}
        if profile_id is not None:
            payload["chargingProfileId"] = profile_id
        criteria: dict[str, Any] = {}
        if evse_id is not None:
            criteria["evseId"] = evse_id
        if purpose is not None:
            criteria["chargingProfilePurpose"] = self._wire_purpose(purpose)
        if stack_level is not None:
            criteria["stackLevel"] = stack_level
        if criteria:
            payload["chargingProfileCriteria"] = criteria
        result = await self.call_json("ClearChargingProfile", payload)
        self._forget_profiles(result, profile_id=profile_id, evse_id=evse_id, purpose=purpose,
                              stack_level=stack_level)
        return answer(result)

    async def get_composite_schedule(self, evse_id: int, duration_s: int,
                                     unit: Literal["W", "A"] | None = None) -> dict[str, Any]:
        """GetCompositeSchedule."""
        self._check_evse_arg(evse_id)
        payload: dict[str, Any] = {"duration": duration_s}
        if unit is not None:
            payload["chargingRateUnit"] = unit
        payload["evseId"] = evse_id
        result = await self.call_json("GetCompositeSchedule", payload)
        wire = result.get("schedule")
        schedule = None
        if result["status"] == "Accepted" and wire is not None:
            schedule = {"evse_id": wire["evseId"], "schedule_start": wire["scheduleStart"],
                        "duration_s": wire["duration"], "unit": wire["chargingRateUnit"],
                        "periods": periods_from_wire(wire["chargingSchedulePeriod"])}
        return answer(result, schedule=schedule)

    async def change_availability(self, evse_id: int, operative: bool) -> dict[str, Any]:
        """ChangeAvailability (no ``evse`` for the whole station)."""
        self._check_evse_arg(evse_id)
        payload: dict[str, Any] = {}
        if evse_id != 0:
            payload["evse"] = {"id": evse_id}
        payload["operationalStatus"] = "Operative" if operative else "Inoperative"
        return answer(await self.call_json("ChangeAvailability", payload))

    async def reset(self, hard: bool, evse_id: int | None = None) -> dict[str, Any]:
        """Reset Immediate (hard) or OnIdle, of the station or one EVSE."""
        self._check_evse_arg(evse_id, station_wide=False)
        payload: dict[str, Any] = {"type": "Immediate" if hard else "OnIdle"}
        if evse_id is not None:
            payload["evseId"] = evse_id
        return answer(await self.call_json("Reset", payload))

    async def trigger_message(self, message: TriggerMessageName,
                              evse_id: int | None = None) -> dict[str, Any]:
        """TriggerMessage."""
        allowed = TRIGGER_MESSAGES_21 if self.version == "2.1" else TRIGGER_MESSAGES_201
        if message not in allowed:
            raise InvalidOperation("message", f"OCPP {self.version} can trigger only "
                                              f"{', '.join(sorted(allowed))}")
        self._check_evse_arg(evse_id)
        payload: dict[str, Any] = {"requestedMessage": message}
        if evse_id is not None:
            payload["evse"] = {"id": evse_id}
        return answer(await self.call_json("TriggerMessage", payload))

    async def _reserve_now(self, reservation_id: int, id_token: str, expiry: datetime, *,
                           evse_id: int | None, id_token_type: IdTokenType,
                           group_id_token: str | None) -> dict[str, Any]:
        """ReserveNow."""
        self._check_evse_arg(evse_id, station_wide=False)
        payload: dict[str, Any] = {"id": reservation_id, "expiryDateTime": iso(expiry),
                                   "idToken": self._id_token(id_token, id_token_type,
                                                             "id_token")}
        if evse_id is not None:
            payload["evseId"] = evse_id
        if group_id_token is not None:
            payload["groupIdToken"] = self._id_token(group_id_token, "Central",
                                                     "group_id_token")
        return answer(await self.call_json("ReserveNow", payload))

    async def get_charging_profiles(self, *, request_id: int | None = None,
                                    evse_id: int | None = None,
                                    purpose: PurposeFilter | None = None,
                                    stack_level: int | None = None,
                                    profile_ids: list[int] | None = None,
                                    report_timeout_s: float | None = None) -> dict[str, Any]:
        """GetChargingProfiles, then wait for the station's ReportChargingProfiles.

        The criteria select what to report (none: every profile). Returns
        ``status`` (Accepted or NoProfiles), ``request_id``, ``profiles`` (one
        item per reported profile: ``evse_id``, ``charging_limit_source`` and
        ``charging_profile`` as the station sent it) and ``complete``, false if
        the last report (``tbc`` false) did not come within
        ``report_timeout_s`` (default: the response timeout).
        """
        self._check_evse_arg(evse_id)
        if request_id is None:
            request_id = self.core.store.next_counter("request_id")
        criteria: dict[str, Any] = {}
        if purpose is not None:
            criteria["chargingProfilePurpose"] = self._wire_purpose(purpose)
        if stack_level is not None:
            criteria["stackLevel"] = stack_level
        if profile_ids:
            criteria["chargingProfileId"] = list(profile_ids)
        payload: dict[str, Any] = {"requestId": request_id}
        if evse_id is not None:
            payload["evseId"] = evse_id
        payload["chargingProfile"] = criteria
        # Registered before the call: a report may overtake the CALLRESULT.
        report = self._profile_reports[request_id] = ProfileReport()
        try:
            result = await self.call_json("GetChargingProfiles", payload)
            complete = True
            if result["status"] == "Accepted":
                timeout = self._response_timeout if report_timeout_s is None \
                    else report_timeout_s
                try:
                    await asyncio.wait_for(report.done.wait(), timeout)
                except TimeoutError:
                    complete = False
        finally:
            del self._profile_reports[request_id]
        return answer(result, request_id=request_id, profiles=report.profiles,
                      complete=complete)

    # -- connectors, local authorization, device model, firmware and logs ---------
    async def unlock_connector(self, evse_id: int, connector_id: int = 1) -> dict[str, Any]:
        """UnlockConnector."""
        self._check_evse_arg(evse_id, station_wide=False)
        return answer(await self.call_json("UnlockConnector",
                                           {"evseId": evse_id, "connectorId": connector_id}))

    async def get_local_list_version(self) -> dict[str, Any]:
        """GetLocalListVersion."""
        result = await self.call_json("GetLocalListVersion", {})
        return {"status": "Accepted", "list_version": result["versionNumber"]}

    def _local_list_payload(self, version: int, update_type: str,
                            entries: list[tuple[Any, str, Any]]) -> dict[str, Any]:
        items = []
        for record, token, info in entries:
            item: dict[str, Any] = {"idToken": {
                "idToken": token, "type": record.token_type if record else "ISO14443"}}
            if info is not None:
                item["idTokenInfo"] = info.to_2x()
            items.append(item)
        payload: dict[str, Any] = {"versionNumber": version, "updateType": update_type}
        if items:  # an empty Full list clears the station's list
            payload["localAuthorizationList"] = items
        return payload

    @staticmethod
    def _variable_wire(spec: VariableSpec) -> dict[str, Any]:
        component: dict[str, Any] = {"name": spec.component}
        if spec.component_instance is not None:
            component["instance"] = spec.component_instance
        if spec.evse_id is not None:
            component["evse"] = {"id": spec.evse_id}
            if spec.connector_id is not None:
                component["evse"]["connectorId"] = spec.connector_id
        variable: dict[str, Any] = {"name": spec.variable}
        if spec.variable_instance is not None:
            variable["instance"] = spec.variable_instance
        return {"component": component, "variable": variable,
                "attributeType": spec.attribute_type}

    @staticmethod
    def _results(specs: list[VariableSpec], results: list[dict[str, Any]]
                 ) -> list[tuple[VariableSpec, dict[str, Any] | None]]:
        """Each variable asked about with the station's result for it, matched by
        component, EVSE, variable and attribute type (a station may answer in any
        order); None where it gave none."""
        def key(component: dict[str, Any], variable: dict[str, Any],
                attribute: str | None) -> tuple[Any, ...]:
            evse = component.get("evse") or {}
            return (component["name"].casefold(), component.get("instance"), evse.get("id"),
                    evse.get("connectorId"), variable["name"].casefold(),
                    variable.get("instance"), attribute or "Actual")

        by_key = {key(r["component"], r["variable"], r.get("attributeType")): r
                  for r in results}
        out = []
        for spec in specs:
            wire = Handlers201._variable_wire(spec)
            out.append((spec, by_key.get(key(wire["component"], wire["variable"],
                                             spec.attribute_type))))
        return out

    def _check_components(self, specs: list[VariableSpec], field: str) -> None:
        for n, spec in enumerate(specs):
            if not spec.component:
                raise InvalidOperation(f"{field}.{n}.component",
                                       "OCPP 2.x variables belong to a component")

    async def get_variables(self, items: Sequence[VariableSpec | Mapping[str, Any]]
                            ) -> dict[str, Any]:
        """GetVariables; Accepted values are kept in the device model."""
        specs = as_variables(items, field="variables", need_value=False)
        self._check_components(specs, "variables")
        result = await self.call_json("GetVariables", {
            "getVariableData": [self._variable_wire(v) for v in specs]})
        out, rows = [], []
        for spec, r in self._results(specs, result["getVariableResult"]):
            value = None if r is None else r.get("attributeValue")
            status = "NoAnswer" if r is None else r["attributeStatus"]
            if status == "Accepted" and value is not None:
                rows.append(spec.row(value))
            out.append(spec.out(status, value))
        self._keep_variables(rows, "GetVariables")
        return {"status": "Accepted", "variables": out}

    async def set_variables(self, items: Sequence[VariableSpec | Mapping[str, Any]]
                            ) -> dict[str, Any]:
        """SetVariables; Accepted (and RebootRequired) values are kept."""
        specs = as_variables(items, field="variables", need_value=True)
        self._check_components(specs, "variables")
        result = await self.call_json("SetVariables", {"setVariableData": [
            {**self._variable_wire(v), "attributeValue": v.value} for v in specs]})
        out, rows = [], []
        for spec, r in self._results(specs, result["setVariableResult"]):
            status = "NoAnswer" if r is None else r["attributeStatus"]
            if status in ("Accepted", "RebootRequired"):
                rows.append(spec.row(spec.value))
            out.append(spec.out(status, spec.value))
        self._keep_variables(rows, "SetVariables")
        return {"status": "Accepted", "variables": out}

    async def get_base_report(self, report_base: ReportBase = "FullInventory"
                              ) -> dict[str, Any]:
        """GetBaseReport; the station's NotifyReports fill the device model."""
        request_id = self.core.store.next_counter("request_id")
        result = await self.call_json("GetBaseReport",
                                      {"requestId": request_id, "reportBase": report_base})
        return answer(result, request_id=request_id)

    @wire("NotifyReport")
    def on_notify_report(self, payload: dict[str, Any]) -> dict[str, Any]:
        """NotifyReport: kept as received, and its variables in the device model."""
        self.core.on_station_message(self.id, "NotifyReport", payload)
        rows = []
        for item in payload.get("reportData") or []:
            component, variable = item["component"], item["variable"]
            evse = component.get("evse") or {}
            for attribute in item.get("variableAttribute") or []:
                rows.append({
                    "component": component["name"],
                    "component_instance": component.get("instance"),
                    "evse_id": evse.get("id"), "connector_id": evse.get("connectorId"),
                    "variable": variable["name"], "variable_instance": variable.get("instance"),
                    "attribute_type": attribute.get("type", "Actual"),
                    "value": attribute.get("value"), "mutability": attribute.get("mutability")})
        self._keep_variables(rows, "NotifyReport")
        return {}

    async def get_transaction_status(self, transaction_id: str | None = None
                                     ) -> dict[str, Any]:
        """GetTransactionStatus: is the transaction ongoing, are messages queued?"""
        payload = {} if transaction_id is None else {"transactionId": transaction_id}
        result = await self.call_json("GetTransactionStatus", payload)
        return {"status": "Accepted", "ongoing": result.get("ongoingIndicator"),
                "messages_in_queue": result["messagesInQueue"]}

    async def update_firmware(self, location: str, retrieve_at: datetime, *,
                              retries: int | None = None,
                              retry_interval_s: int | None = None,
                              install_at: datetime | None = None,
                              signing_certificate: str | None = None,
                              signature: str | None = None) -> dict[str, Any]:
        """UpdateFirmware."""
        request_id = self.core.store.next_counter("request_id")
        firmware: dict[str, Any] = {"location": location, "retrieveDateTime": iso(retrieve_at)}
        if install_at is not None:
            firmware["installDateTime"] = iso(install_at)
        if signing_certificate is not None:
            firmware["signingCertificate"] = signing_certificate
        if signature is not None:
            firmware["signature"] = signature
        payload = {"requestId": request_id, "firmware": firmware,
                   **retry_fields(retries, retry_interval_s)}
        return answer(await self.call_json("UpdateFirmware", payload), request_id=request_id)

    async def get_log(self, location: str, log_type: LogType = "DiagnosticsLog", *,
                      oldest: datetime | None = None, latest: datetime | None = None,
                      retries: int | None = None, retry_interval_s: int | None = None
                      ) -> dict[str, Any]:
        """GetLog."""
        if log_type == "DataCollectorLog" and self.version == "2.0.1":
            raise InvalidOperation("log_type", "DataCollectorLog needs OCPP 2.1")
        request_id = self.core.store.next_counter("request_id")
        payload = {"log": log_parameters(location, oldest, latest), "logType": log_type,
                   "requestId": request_id, **retry_fields(retries, retry_interval_s)}
        result = await self.call_json("GetLog", payload)
        return answer(result, request_id=request_id, filename=result.get("filename"))

    async def set_default_tariff(self, evse_id: int = 0, tariff_id: str | None = None
                                 ) -> dict[str, Any]:
        """SetDefaultTariff (2.1) with the CSMS's ``[tariff]``: price per kWh, per minute
        plugged in (charging and idle, as the CSMS bills) and a fixed fee per session
        (the export credit has no place in it)."""
        if self.version == "2.0.1":
            return await super().set_default_tariff(evse_id, tariff_id)
        self._check_evse_arg(evse_id)
        tariff_id = tariff_id or "evtwin-default"
        # The station's site's prices (ToU bands as time-of-day conditions, idle fee).
        spec = self.core.stations.get(self.id)
        tariff = tariff_21(self.core.config.tariff, tariff_id,
                           None if spec is None else spec.site)
        result = await self.call_json("SetDefaultTariff", {"evseId": evse_id, "tariff": tariff})
        return answer(result, tariff_id=tariff_id)

    async def clear_tariffs(self, evse_id: int | None = None,
                            tariff_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """ClearTariffs (2.1): Accepted when every tariff named (or all) was cleared."""
        if self.version == "2.0.1":
            return await super().clear_tariffs(evse_id, tariff_ids)
        self._check_evse_arg(evse_id)
        payload: dict[str, Any] = {}
        if tariff_ids:
            payload["tariffIds"] = list(tariff_ids)
        if evse_id is not None:
            payload["evseId"] = evse_id
        result = await self.call_json("ClearTariffs", payload)
        statuses = [r["status"] for r in result["clearTariffsResult"]]
        return {"status": next((st for st in statuses if st != "Accepted"), "Accepted")}

    async def cost_updated(self, transaction_id: str, total_cost: float) -> dict[str, Any]:
        """CostUpdated: the running cost of a transaction (its answer is empty)."""
        await self.call_json("CostUpdated", {"totalCost": total_cost,
                                             "transactionId": transaction_id})
        return {"status": "Accepted"}


class CSMS201(Handlers201):
    """One connected station speaking OCPP 2.0.1."""

    version: ClassVar[str] = "2.0.1"
    known_actions: ClassVar[frozenset[str]] = frozenset(a.value for a in Action201)
    id_token_max: ClassVar[int] = ID_TOKEN_MAX["2.0.1"]


class CSMS21(Handlers201):
    """One connected station speaking OCPP 2.1."""

    version: ClassVar[str] = "2.1"
    known_actions: ClassVar[frozenset[str]] = frozenset(a.value for a in Action21)
    id_token_max: ClassVar[int] = ID_TOKEN_MAX["2.1"]

    # 2.1's messages for the record (DER, battery swap, payment, priority charging).
    on_battery_swap = recorded("BatterySwap")
    on_notify_der_alarm = recorded("NotifyDERAlarm")
    on_notify_der_start_stop = recorded("NotifyDERStartStop")
    on_report_der_control = recorded("ReportDERControl")
    on_notify_priority_charging = recorded("NotifyPriorityCharging")
    on_notify_settlement = recorded("NotifySettlement")
    on_notify_web_payment_started = recorded("NotifyWebPaymentStarted")
    on_close_periodic_event_stream = recorded("ClosePeriodicEventStream")
    # What this CSMS cannot do is refused as the spec lets it be: no periodic event
    # streams (it would drop their data), no dynamic schedules, no VAT registry.
    on_open_periodic_event_stream = recorded("OpenPeriodicEventStream", {
        "status": "Rejected", "statusInfo": {"reasonCode": "NotSupported"}})
    on_pull_dynamic_schedule_update = recorded("PullDynamicScheduleUpdate", {
        "status": "Rejected", "statusInfo": {"reasonCode": "NoDynamicProfile"}})
    on_vat_number_validation = recorded("VatNumberValidation", lambda p: {
        "vatNumber": p["vatNumber"], **({"evseId": p["evseId"]} if "evseId" in p else {}),
        "status": "Rejected", "statusInfo": {"reasonCode": "NotSupported",
                                             "additionalInfo": "no VAT number registry"}})

    @wire("GetCertificateChainStatus")
    def on_get_certificate_chain_status(self, payload: dict[str, Any]) -> dict[str, Any]:
        """GetCertificateChainStatus: kept; each certificate's status Failed (no OCSP
        responder or CRL to ask), to be asked again in an hour."""
        self.core.on_station_message(self.id, "GetCertificateChainStatus", payload)
        retry = iso(self.core.clock() + timedelta(hours=1))
        return {"certificateStatus": [
            {"certificateHashData": r["certificateHashData"], "source": r["source"],
             "status": "Failed", "nextUpdate": retry}
            for r in payload["certificateStatusRequests"]]}
