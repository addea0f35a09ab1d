"""OCPP 1.6J shell of the CSMS: 1.6 messages translated into the one domain.

1.6 has no TransactionEvent: StartTransaction, MeterValues (with a
transactionId) and StopTransaction become the domain's Started, Updated and
Ended events, with the CSMS numbering them (1.6 stations send no seqNo) and
assigning the integer transactionId. Connectors map one-to-one onto EVSEs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar, Literal

from ocpp.v16.enums import Action as Action16

from evtwin.ocppj.domain import ENERGY

from .clock import iso
from .core import ProfileCommand
from .exceptions import InvalidMessageError
from .model import ParsedSample, TxEvent
from .parse import INT32_MAX, energy_wh, event_time, samples_16
from .shell import (
    DATA_TRANSFER_ANSWER,
    PURPOSES_16,
    STOP_REASONS_16,
    CallFailed,
    IdTokenType,
    InvalidOperation,
    LogType,
    ProfileSpec,
    Purpose,
    ReportBase,
    ShellBase,
    TriggerMessageName,
    VariableSpec,
    answer,
    as_variables,
    invalid_message_is_a_call_error,
    limit_period,
    log_parameters,
    periods_from_wire,
    profile_to_wire_16,
    recorded,
    retry_fields,
    unknown_evse_is_a_property_violation,
    wire,
)

#: 1.6 ``idTag``: CiString20.
ID_TAG_MAX = 20

#: What a 1.6 TriggerMessage may ask for.
TRIGGER_MESSAGES_16 = frozenset({"BootNotification", "DiagnosticsStatusNotification",
                                 "FirmwareStatusNotification", "Heartbeat", "MeterValues",
                                 "StatusNotification"})

#: Asked for with the security whitepaper's ExtendedTriggerMessage (its wire name).
EXTENDED_TRIGGERS_16 = {"LogStatusNotification": "LogStatusNotification",
                        "SignChargingStationCertificate": "SignChargePointCertificate"}

# 1.6 StopTransaction reasons -> 2.0.1 stoppedReason.

def message_digest(action: str, payload: dict[str, Any]) -> str:
    """A 1.6 message's identity by content (1.6 has no seqNo): a hash of action and payload."""
    text = json.dumps([action, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CSMS16(ShellBase):
    """One connected station speaking OCPP 1.6J."""

    version: ClassVar[str] = "1.6"
    known_actions: ClassVar[frozenset[str]] = frozenset(a.value for a in Action16)

    # What stations send for the record (Core, Firmware Management and the security
    # whitepaper's messages): kept as received, answered as the spec says.
    on_data_transfer = recorded("DataTransfer", DATA_TRANSFER_ANSWER)
    on_diagnostics_status_notification = recorded("DiagnosticsStatusNotification")
    on_firmware_status_notification = recorded("FirmwareStatusNotification")
    on_security_event_notification = recorded("SecurityEventNotification")
    on_log_status_notification = recorded("LogStatusNotification")
    on_signed_firmware_status_notification = recorded("SignedFirmwareStatusNotification")

    # -- station-initiated --------------------------------------------------
    # Wire handlers (see shell.wire): the request as received, the answer as sent,
    # no snake/camel conversion and no dataclasses on the way.
    @wire("BootNotification")
    def on_boot_notification(self, payload: dict[str, Any]) -> dict[str, Any]:
        r = self.core.on_boot(self.id, payload["chargePointVendor"],
                              payload["chargePointModel"])
        return {"currentTime": r["current_time"], "interval": r["interval"],
                "status": r["status"]}

    @wire("StatusNotification")
    def on_status_notification(self, payload: dict[str, Any]) -> dict[str, Any]:
        connector_id = payload["connectorId"]
        if connector_id != 0:  # 0 is the whole charge point
            with unknown_evse_is_a_property_violation():
                self.core.on_status(self.id, connector_id, payload["status"],
                                    payload.get("timestamp") or iso(self.core.clock()))
            if payload["status"] == "Available":
                self.core.available_after_boot(self.id, connector_id)
        code = payload.get("errorCode", "NoError")
        if code != "NoError":  # 1.6 tells a problem with the status
            # evtwin's stations say warning/fault in vendorErrorCode; others: a Faulted
            # status is a failure, any other status with an error code a warning.
            severity = payload.get("vendorErrorCode")
            if severity not in ("warning", "fault"):
                severity = "fault" if payload["status"] == "Faulted" else "warning"
            self.core.on_problem(self.id, connector_id, payload.get("info") or "", code,
                                 severity, payload.get("timestamp") or iso(self.core.clock()))
        return {}

    @wire("Authorize")
    def on_authorize(self, payload: dict[str, Any]
                     ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        id_tag = payload["idTag"]
        if self.core.needs_remote_authorization(id_tag):  # a roaming token: ask its eMSP
            return self._authorize_remote(id_tag)
        return {"idTagInfo": self.core.token_info(id_tag).to_16()}

    async def _authorize_remote(self, id_tag: str) -> dict[str, Any]:
        return {"idTagInfo": (await self.core.authorize_remote(id_tag, self.id)).to_16()}

    # 1.6's transaction messages go to the core as the neutral TxEvent it takes from
    # every version; their events are numbered by the CSMS (no seqNo in 1.6) and a
    # re-sent one is recognised by its digest (a hash of its content).
    def _tx_event(self, transaction_id: str, event_type: str, timestamp: Any,
                  samples: tuple[ParsedSample, ...], *, evse_id: int = 0, seq_no: int | None = None,
                  trigger: str, id_token: str | None = None,
                  stopped_reason: str | None = None) -> TxEvent:
        at = event_time(timestamp, "timestamp", self.core.clock(), self.core.config)
        return TxEvent(transaction_id=transaction_id, event_type=event_type, seq_no=seq_no,
                       evse_id=evse_id, at=at, timestamp=str(timestamp), trigger_reason=trigger,
                       id_token=id_token, charging_state=None, stopped_reason=stopped_reason,
                       samples=samples, energy_wh=energy_wh(samples))

    def _register(self, text: Any, value: float, at_text: Any) -> ParsedSample:
        """meterStart/meterStop: a whole-Wh register reading at the message's time."""
        at = event_time(at_text, "timestamp", self.core.clock(), self.core.config)
        return (str(at_text), ENERGY, None, value, "Wh", at)

    @wire("StartTransaction")
    def on_start_transaction(self, payload: dict[str, Any]) -> dict[str, Any]:
        connector_id = payload["connectorId"]
        id_tag = payload["idTag"]
        timestamp = payload["timestamp"]
        with unknown_evse_is_a_property_violation():
            self.core.check_evse(self.id, connector_id)
        digest = message_digest("StartTransaction", payload)
        # A re-sent StartTransaction (its answer was lost) gets the transaction it
        # opened, not a second one.
        tx_id = self.core.store.transaction_with_digest(self.id, digest)
        if tx_id is None:
            with invalid_message_is_a_call_error():
                start = self._register("meterStart", float(payload["meterStart"]), timestamp)
                ev = self._tx_event("", "Started", timestamp, (start,), evse_id=connector_id,
                                    seq_no=0, trigger="Authorized", id_token=id_tag)
                tx_id = self.core.next_transaction_id()
                self.core.transaction_event(self.id, replace(ev, transaction_id=tx_id),
                                            record=payload, digest=digest)
        # The token's status as it was when the transaction started (ConcurrentTx
        # counts transactions other than this one).
        info = self.core.token_info(id_tag, starting=(self.id, tx_id))
        return {"transactionId": int(tx_id), "idTagInfo": info.to_16()}

    @wire("MeterValues")
    def on_meter_values(self, payload: dict[str, Any]) -> dict[str, Any]:
        connector_id = payload["connectorId"]
        transaction_id = payload.get("transactionId")
        now, config = self.core.clock(), self.core.config
        with unknown_evse_is_a_property_violation(), invalid_message_is_a_call_error():
            if not 0 <= connector_id <= INT32_MAX:
                raise InvalidMessageError("PropertyConstraintViolation", "connectorId",
                                          "must be an integer from 0 to 2147483647")
            samples = samples_16(payload["meterValue"], now, config)
            if transaction_id is not None:
                ev = self._tx_event(str(transaction_id), "Updated",
                                    payload["meterValue"][0]["timestamp"], samples,
                                    evse_id=connector_id, trigger="MeterValuePeriodic")
                self.core.transaction_event(self.id, ev, record=payload,
                                            digest=message_digest("MeterValues", payload))
            else:
                if connector_id != 0:
                    self.core.check_evse(self.id, connector_id)
                self.core.meter_samples(self.id, connector_id, samples)
        return {}

    @wire("StopTransaction")
    def on_stop_transaction(self, payload: dict[str, Any]) -> dict[str, Any]:
        timestamp = payload["timestamp"]
        reason = payload.get("reason")
        # A transaction this CSMS never saw start is still billed (1.6 expects it),
        # on connector 1: the core's default for a session it creates.
        with unknown_evse_is_a_property_violation(), invalid_message_is_a_call_error():
            # meterStop first: a Transaction.End register in transactionData (which
            # may carry decimals where meterStop is whole Wh) then refines it.
            samples = (self._register("meterStop", float(payload["meterStop"]), timestamp),
                       *samples_16(payload.get("transactionData") or [], self.core.clock(),
                                   self.core.config, path="transactionData"))
            ev = self._tx_event(str(payload["transactionId"]), "Ended", timestamp, samples,
                                trigger="EVDeparted",
                                stopped_reason=STOP_REASONS_16.get(reason or "Local", "Other"))
            self.core.transaction_event(self.id, ev, record=payload,
                                        digest=message_digest("StopTransaction", payload))
        id_tag = payload.get("idTag")
        if id_tag is None:
            return {}
        return {"idTagInfo": self.core.token_info(id_tag).to_16()}

    # -- CSMS-initiated ---------------------------------------------------------
    async def send_limit(self, cmd: ProfileCommand) -> str:
        """Send a TxProfile (1.6 csChargingProfiles) at ``cmd.limit``; record the status."""
        profile_id = cmd.profile_id or self.core.next_profile_id()
        payload = {"connectorId": cmd.evse_id, "csChargingProfiles": {
            "chargingProfileId": profile_id, "transactionId": int(cmd.transaction_id),
            "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "startSchedule": iso(self.core.clock()), "chargingRateUnit": cmd.unit,
                # 1.6 has no discharge: a negative (V2G) limit only stops charging.
                "chargingSchedulePeriod": [{
                    "startPeriod": 0, "limit": limit_period(cmd.limit, self.version).limit,
                    **({"numberPhases": 1} if cmd.phases == 1 else {})}]},
        }}
        try:
            status = str((await self.call_json("SetChargingProfile", payload))["status"])
        except CallFailed as exc:
            status = f"CallError:{exc.code}"
        self.core.profile_sent(cmd, profile_id, status)
        return status

    # -- version-neutral operations (see ShellBase for the contracts) ----------
    async def request_start(self, evse_id: int | None, id_token: str, *,
                            remote_start_id: int | None = None,
                            id_token_type: IdTokenType = "Central",
                            charging_profile: ProfileSpec | Mapping[str, Any] | None = None,
                            ) -> dict[str, Any]:
        """RemoteStartTransaction (1.6 has no remoteStartId and no token types)."""
        self._check_evse_arg(evse_id, station_wide=False)
        if len(id_token) > ID_TAG_MAX:
            raise InvalidOperation("id_token", f"OCPP 1.6 id tags have at most {ID_TAG_MAX} "
                                               "characters")
        payload: dict[str, Any] = {}
        if evse_id is not None:
            payload["connectorId"] = evse_id
        payload["idTag"] = id_token
        if charging_profile is None:
            return answer(await self.call_json("RemoteStartTransaction", payload))
        profile = self._start_profile(charging_profile)
        profile_id = self.core.next_profile_id()
        payload["chargingProfile"] = profile_to_wire_16(profile, profile_id, self.core.clock(),
                                                        path="charging_profile")
        result = await self._send_profile("RemoteStartTransaction", payload, evse_id or 0,
                                          profile_id, profile)
        return answer(result, profile_id=profile_id)

    async def request_stop(self, transaction_id: str) -> dict[str, Any]:
        """RemoteStopTransaction (integer transaction ids)."""
        try:
            tx = int(transaction_id)
        except ValueError:
            raise InvalidOperation("transaction_id",
                                   "OCPP 1.6 transaction ids are integers") from None
        return answer(await self.call_json("RemoteStopTransaction", {"transactionId": tx}))

    def _set_profile_payload(self, evse_id: int, prof: ProfileSpec, profile_id: int,
                             now: datetime) -> dict[str, Any]:
        """SetChargingProfile in 1.6 form (ChargingStationMaxProfile is ChargePointMaxProfile)."""
        return {"connectorId": evse_id, "csChargingProfiles": profile_to_wire_16(
            prof, profile_id, now, path="profile")}

    async def clear_charging_profile(self, *, profile_id: int | None = None,
                                     evse_id: int | None = None,
                                     purpose: Purpose | None = None,
                                     stack_level: int | None = None) -> dict[str, Any]:
        """ClearChargingProfile."""
        self._check_evse_arg(evse_id)
        payload: dict[str, Any] = {}
        if profile_id is not None:
            payload["id"] = profile_id
        if evse_id is not None:
            payload["connectorId"] = evse_id
        if purpose is not None:
            if purpose not in PURPOSES_16:
                raise InvalidOperation("purpose", f"{purpose} needs OCPP 2.1; "
                                                  "the station speaks 1.6")
            payload["chargingProfilePurpose"] = PURPOSES_16[purpose]
        if stack_level is not None:
            payload["stackLevel"] = stack_level
        result = await self.call_json("ClearChargingProfile", payload)
        self._forget_profiles(result, profile_id=profile_id, evse_id=evse_id, purpose=purpose,
                              stack_level=stack_level)
        return answer(result)

    async def get_composite_schedule(self, evse_id: int, duration_s: int,
                                     unit: Literal["W", "A"] | None = None) -> dict[str, Any]:
        """GetCompositeSchedule."""
        self._check_evse_arg(evse_id)
        payload: dict[str, Any] = {"connectorId": evse_id, "duration": duration_s}
        if unit is not None:
            payload["chargingRateUnit"] = unit
        result = await self.call_json("GetCompositeSchedule", payload)
        wire = result.get("chargingSchedule")
        schedule = None
        if result["status"] == "Accepted" and wire is not None:
            schedule = {
                "evse_id": result.get("connectorId", evse_id),
                "schedule_start": result.get("scheduleStart", wire.get("startSchedule")),
                "duration_s": wire.get("duration", duration_s),
                "unit": wire["chargingRateUnit"],
                "periods": periods_from_wire(wire["chargingSchedulePeriod"]),
            }
        return answer(result, schedule=schedule)

    async def change_availability(self, evse_id: int, operative: bool) -> dict[str, Any]:
        """ChangeAvailability (connector 0 is the whole charge point)."""
        self._check_evse_arg(evse_id)
        return answer(await self.call_json("ChangeAvailability", {
            "connectorId": evse_id, "type": "Operative" if operative else "Inoperative"}))

    async def reset(self, hard: bool, evse_id: int | None = None) -> dict[str, Any]:
        """Reset Hard or Soft (1.6 resets the whole charge point only)."""
        if evse_id is not None:
            raise InvalidOperation("evse_id", "OCPP 1.6 resets the whole charge point; "
                                              "resetting one EVSE needs 2.0.1")
        return answer(await self.call_json("Reset", {"type": "Hard" if hard else "Soft"}))

    async def trigger_message(self, message: TriggerMessageName,
                              evse_id: int | None = None) -> dict[str, Any]:
        """TriggerMessage; the security whitepaper's ExtendedTriggerMessage for a log
        status or a new station certificate (SignChargePointCertificate)."""
        extended = EXTENDED_TRIGGERS_16.get(message)
        if message not in TRIGGER_MESSAGES_16 and extended is None:
            allowed = sorted(TRIGGER_MESSAGES_16 | EXTENDED_TRIGGERS_16.keys())
            raise InvalidOperation("message", f"OCPP 1.6 can trigger only {', '.join(allowed)}")
        self._check_evse_arg(evse_id)
        payload: dict[str, Any] = {"requestedMessage": extended or message}
        if evse_id is not None:
            payload["connectorId"] = evse_id
        action = "TriggerMessage" if extended is None else "ExtendedTriggerMessage"
        return answer(await self.call_json(action, payload))

    async def _reserve_now(self, reservation_id: int, id_token: str, expiry: datetime, *,
                           evse_id: int | None, id_token_type: IdTokenType,
                           group_id_token: str | None) -> dict[str, Any]:
        """ReserveNow (connector 0 reserves any connector; ``group_id_token`` is parentIdTag)."""
        self._check_evse_arg(evse_id)
        for name, value in (("id_token", id_token), ("group_id_token", group_id_token)):
            if value is not None and len(value) > ID_TAG_MAX:
                raise InvalidOperation(name, f"OCPP 1.6 id tags have at most {ID_TAG_MAX} "
                                             "characters")
        payload: dict[str, Any] = {"connectorId": evse_id or 0, "expiryDate": iso(expiry),
                                   "idTag": id_token}
        if group_id_token is not None:
            payload["parentIdTag"] = group_id_token
        payload["reservationId"] = reservation_id
        return answer(await self.call_json("ReserveNow", payload))


    # -- connectors, local authorization, configuration, firmware and logs -------
    async def unlock_connector(self, evse_id: int, connector_id: int = 1) -> dict[str, Any]:
        """UnlockConnector (a 1.6 connector is an EVSE here)."""
        self._check_evse_arg(evse_id, station_wide=False)
        if connector_id != 1:
            raise InvalidOperation("connector_id", "OCPP 1.6 names the connector by evse_id")
        return answer(await self.call_json("UnlockConnector", {"connectorId": evse_id}))

    async def get_local_list_version(self) -> dict[str, Any]:
        """GetLocalListVersion."""
        result = await self.call_json("GetLocalListVersion", {})
        return {"status": "Accepted", "list_version": result["listVersion"]}

    def _local_list_payload(self, version: int, update_type: str,
                            entries: list[tuple[Any, str, Any]]) -> dict[str, Any]:
        items = []
        for _record, token, info in entries:
            item: dict[str, Any] = {"idTag": token}
            if info is not None:
                item["idTagInfo"] = info.to_16()
            items.append(item)
        return {"listVersion": version, "localAuthorizationList": items,
                "updateType": update_type}

    @staticmethod
    def _keys(specs: list[VariableSpec], field: str) -> list[str]:
        for n, spec in enumerate(specs):
            if (spec.component or spec.component_instance or spec.evse_id is not None
                    or spec.variable_instance or spec.attribute_type != "Actual"):
                raise InvalidOperation(f"{field}.{n}", "OCPP 1.6 configuration keys have no "
                                                       "component, EVSE, instance or "
                                                       "attribute type")
        return [spec.variable for spec in specs]

    def _keep_configuration(self, result: dict[str, Any]) -> dict[str, VariableSpec]:
        known = {}
        rows = []
        for item in result.get("configurationKey") or []:
            spec = VariableSpec(variable=item["key"][:50])
            known[item["key"]] = spec
            rows.append(spec.row(item.get("value"),
                                 "ReadOnly" if item["readonly"] else "ReadWrite"))
        self._keep_variables(rows, "GetConfiguration")
        return known

    async def get_variables(self, items: Sequence[VariableSpec | Mapping[str, Any]]
                            ) -> dict[str, Any]:
        """GetConfiguration of the keys named; known keys are kept in the device model."""
        specs = as_variables(items, field="variables", need_value=False)
        keys = self._keys(specs, "variables")
        result = await self.call_json("GetConfiguration", {"key": keys})
        values = {item["key"]: item for item in result.get("configurationKey") or []}
        self._keep_configuration(result)
        out = []
        for spec in specs:
            item = values.get(spec.variable)
            if item is None:
                out.append(spec.out("UnknownVariable"))
            else:
                out.append(spec.out("Accepted", item.get("value"),
                                    mutability="ReadOnly" if item["readonly"] else "ReadWrite"))
        return {"status": "Accepted", "variables": out}

    async def set_variables(self, items: Sequence[VariableSpec | Mapping[str, Any]]
                            ) -> dict[str, Any]:
        """ChangeConfiguration, one key after another; accepted values are kept."""
        specs = as_variables(items, field="variables", need_value=True)
        self._keys(specs, "variables")
        for n, spec in enumerate(specs):
            if spec.value is not None and len(spec.value) > 500:
                raise InvalidOperation(f"variables.{n}.value",
                                       "OCPP 1.6 values have at most 500 characters")
        out, rows = [], []
        for spec in specs:
            result = await self.call_json("ChangeConfiguration",
                                          {"key": spec.variable, "value": spec.value})
            status = result["status"]
            if status in ("Accepted", "RebootRequired"):
                rows.append(spec.row(spec.value))
            out.append(spec.out(status, spec.value))
        self._keep_variables(rows, "ChangeConfiguration")
        return {"status": "Accepted", "variables": out}

    async def get_base_report(self, report_base: ReportBase = "FullInventory"
                              ) -> dict[str, Any]:
        """GetConfiguration of every key (1.6 has no base reports): all kept."""
        if report_base == "SummaryInventory":
            raise InvalidOperation("report_base", "OCPP 1.6 reports its whole configuration")
        known = self._keep_configuration(await self.call_json("GetConfiguration", {}))
        return {"status": "Accepted", "variables": [
            spec.out("Accepted") for spec in known.values()]}

    async def update_firmware(self, location: str, retrieve_at: datetime, *,
                              retries: int | None = None,
                              retry_interval_s: int | None = None,
                              install_at: datetime | None = None,
                              signing_certificate: str | None = None,
                              signature: str | None = None) -> dict[str, Any]:
        """UpdateFirmware, or SignedUpdateFirmware (security whitepaper) when signed."""
        extra = retry_fields(retries, retry_interval_s)
        if signing_certificate is None and signature is None:
            if install_at is not None:
                raise InvalidOperation("install_at", "OCPP 1.6 UpdateFirmware has no "
                                                     "install time (only a signed update)")
            await self.call_json("UpdateFirmware", {"location": location,
                                                    "retrieveDate": iso(retrieve_at), **extra})
            return {"status": "Accepted"}  # 1.6 UpdateFirmware.conf is empty
        if signing_certificate is None or signature is None:
            raise InvalidOperation("signature", "a signed update needs both the signature "
                                                "and the signing certificate")
        request_id = self.core.store.next_counter("request_id")
        firmware: dict[str, Any] = {"location": location, "retrieveDateTime": iso(retrieve_at),
                                    "signingCertificate": signing_certificate,
                                    "signature": signature}
        if install_at is not None:
            firmware["installDateTime"] = iso(install_at)
        result = await self.call_json("SignedUpdateFirmware", {
            "requestId": request_id, "firmware": firmware, **extra})
        return answer(result, request_id=request_id)

    async def get_log(self, location: str, log_type: LogType = "DiagnosticsLog", *,
                      oldest: datetime | None = None, latest: datetime | None = None,
                      retries: int | None = None, retry_interval_s: int | None = None
                      ) -> dict[str, Any]:
        """GetDiagnostics (DiagnosticsLog) or the security whitepaper's GetLog (SecurityLog)."""
        extra = retry_fields(retries, retry_interval_s)
        if log_type == "DiagnosticsLog":
            payload: dict[str, Any] = {"location": location, **extra}
            if oldest is not None:
                payload["startTime"] = iso(oldest)
            if latest is not None:
                payload["stopTime"] = iso(latest)
            result = await self.call_json("GetDiagnostics", payload)
            # GetDiagnostics.conf names the file, or nothing when there is none.
            return {"status": "Accepted" if result.get("fileName") else "NoFile",
                    **({"filename": result["fileName"]} if result.get("fileName") else {})}
        if log_type != "SecurityLog":
            raise InvalidOperation("log_type", "OCPP 1.6 stations upload a DiagnosticsLog or "
                                               "a SecurityLog")
        request_id = self.core.store.next_counter("request_id")
        result = await self.call_json("GetLog", {"log": log_parameters(location, oldest, latest),
                                                 "logType": log_type,
                                                 "requestId": request_id, **extra})
        return answer(result, request_id=request_id, filename=result.get("filename"))
