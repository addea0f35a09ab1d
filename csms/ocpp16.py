"""OCPP 1.6J shell of the CSMS: 1.6 messages translated into the one domain.

1.6 has no TransactionEvent: StartTransaction, MeterValues (with a
transactionId) and StopTransaction become the domain's Started, Updated and
Ended events, with the CSMS numbering them (1.6 stations send no seqNo) and
assigning the integer transactionId. Connectors map one-to-one onto EVSEs.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from ocpp.routing import on
from ocpp.v16 import ChargePoint as _ChargePoint16
from ocpp.v16.enums import Action as Action16

from .clock import iso
from .core import ENERGY, CSMSCore, ProfileCommand
from .shell import CallFailed, ShellBase, unknown_evse_is_a_property_violation

# 1.6 spells two OCPP-J error codes differently from 2.0.1, and the ``ocpp``
# library emits the 2.0.1 spellings whatever the version.
_CODES_16 = {"FormatViolation": "FormationViolation",
             "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
             "RpcFrameworkError": "FormationViolation",
             "MessageTypeNotSupported": "NotSupported"}

# 1.6 StopTransaction reasons -> 2.0.1 stoppedReason.
_STOP_REASONS = {"EVDisconnected": "EVDisconnected", "Local": "Local", "Remote": "Remote",
                 "EmergencyStop": "EmergencyStop", "HardReset": "ImmediateReset",
                 "SoftReset": "ImmediateReset", "PowerLoss": "PowerLoss", "Reboot": "Reboot",
                 "DeAuthorized": "DeAuthorized", "UnlockCommand": "Local", "Other": "Other"}


def _samples_201(meter_value: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """1.6 meterValue (string values, flat unit) in the 2.0.1 shape the core reads."""
    out = []
    for mv in meter_value:
        sampled = []
        for sv in mv.get("sampledValue", []):
            item: dict[str, Any] = {"value": float(sv["value"]),
                                    "measurand": sv.get("measurand", ENERGY)}
            if sv.get("phase"):
                item["phase"] = sv["phase"]
            if sv.get("unit"):
                item["unitOfMeasure"] = {"unit": sv["unit"]}
            if sv.get("context"):
                item["context"] = sv["context"]
            sampled.append(item)
        out.append({"timestamp": mv["timestamp"], "sampledValue": sampled})
    return out


class CSMS16(ShellBase, _ChargePoint16):
    """One connected station speaking OCPP 1.6J."""

    version: ClassVar[str] = "1.6"
    rpc_error_code: ClassVar[str] = "FormationViolation"
    message_type_error_code: ClassVar[str] = "NotSupported"
    known_actions: ClassVar[frozenset[str]] = frozenset(a.value for a in Action16)

    def __init__(self, station_id: str, connection: Any, core: CSMSCore, **kw: Any) -> None:
        super().__init__(station_id, connection, **kw)
        self._init_shell(core)

    async def _send(self, message: str) -> None:
        if message.startswith("[4"):
            frame = json.loads(message)
            if frame[2] in _CODES_16:
                frame[2] = _CODES_16[frame[2]]
                message = json.dumps(frame)
        await super()._send(message)

    def _next_seq(self, tx_id: str) -> int:
        session = self.core.sessions.get((self.id, tx_id))
        return 0 if session is None else session.last_seq_no + 1

    # -- station-initiated --------------------------------------------------
    @on("BootNotification")
    def on_boot_notification(self, charge_point_vendor: str, charge_point_model: str,
                             **_: Any) -> Any:
        r = self.core.on_boot(self.id, charge_point_vendor, charge_point_model)
        return self._call_result.BootNotification(
            current_time=r["current_time"], interval=r["interval"], status=r["status"])

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return self._call_result.Heartbeat(
            current_time=self.core.on_heartbeat(self.id))

    @on("StatusNotification")
    def on_status_notification(self, connector_id: int, error_code: str, status: str,
                               timestamp: str | None = None, **_: Any) -> Any:
        if connector_id != 0:  # 0 is the whole charge point
            with unknown_evse_is_a_property_violation():
                self.core.on_status(self.id, connector_id, status,
                                    timestamp or iso(self.core.clock()))
        return self._call_result.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_tag: str, **_: Any) -> Any:
        return self._call_result.Authorize(
            id_tag_info={"status": self.core.authorize(id_tag)})

    @on("StartTransaction")
    def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int,
                             timestamp: str, **_: Any) -> Any:
        with unknown_evse_is_a_property_violation():
            self.core.check_evse(self.id, connector_id)
        tx_id = self.core.next_transaction_id()
        self.core.on_transaction_event(self.id, {
            "eventType": "Started", "timestamp": timestamp, "triggerReason": "Authorized",
            "seqNo": 0, "transactionInfo": {"transactionId": tx_id},
            "evse": {"id": connector_id, "connectorId": 1},
            "idToken": {"idToken": id_tag, "type": "Central"},
            "meterValue": [{"timestamp": timestamp, "sampledValue": [{
                "value": float(meter_start), "measurand": ENERGY, "context": "Transaction.Begin",
                "unitOfMeasure": {"unit": "Wh"}}]}],
        })
        return self._call_result.StartTransaction(
            transaction_id=int(tx_id), id_tag_info={"status": self.core.authorize(id_tag)})

    @on("MeterValues")
    def on_meter_values(self, connector_id: int, meter_value: list[Any],
                        transaction_id: int | None = None, **_: Any) -> Any:
        samples = _samples_201(self._raw_payload["meterValue"])
        if transaction_id is not None:
            tx_id = str(transaction_id)
            with unknown_evse_is_a_property_violation():
                self.core.on_transaction_event(self.id, {
                    "eventType": "Updated", "timestamp": samples[0]["timestamp"],
                    "triggerReason": "MeterValuePeriodic", "seqNo": self._next_seq(tx_id),
                    "transactionInfo": {"transactionId": tx_id},
                    "evse": {"id": connector_id} if connector_id else None,
                    "meterValue": samples,
                })
        else:
            if connector_id != 0:
                with unknown_evse_is_a_property_violation():
                    self.core.check_evse(self.id, connector_id)
            self.core.on_meter_values(self.id, connector_id, samples)
        return self._call_result.MeterValues()

    @on("StopTransaction")
    def on_stop_transaction(self, meter_stop: int, timestamp: str, transaction_id: int,
                            reason: str | None = None, id_tag: str | None = None,
                            **_: Any) -> Any:
        tx_id = str(transaction_id)
        # meterStop first: a Transaction.End register in transactionData (which
        # may carry decimals where meterStop is whole Wh) then refines it.
        samples = [{"timestamp": timestamp, "sampledValue": [{
            "value": float(meter_stop), "measurand": ENERGY, "context": "Transaction.End",
            "unitOfMeasure": {"unit": "Wh"}}]}]
        samples += _samples_201(self._raw_payload.get("transactionData") or [])
        session = self.core.sessions.get((self.id, tx_id))
        payload: dict[str, Any] = {
            "eventType": "Ended", "timestamp": timestamp, "triggerReason": "EVDeparted",
            "seqNo": self._next_seq(tx_id),
            "transactionInfo": {"transactionId": tx_id,
                                "stoppedReason": _STOP_REASONS.get(reason or "Local", "Other")},
            "meterValue": samples,
        }
        if session is None:
            # A transaction this CSMS never saw start: 1.6 still expects it billed.
            payload["evse"] = {"id": 1}
        with unknown_evse_is_a_property_violation():
            self.core.on_transaction_event(self.id, payload)
        result: dict[str, Any] = {}
        if id_tag is not None:
            result["id_tag_info"] = {"status": self.core.authorize(id_tag)}
        return self._call_result.StopTransaction(**result)

    # -- CSMS-initiated ---------------------------------------------------------
    async def send_limit(self, cmd: ProfileCommand) -> str:
        """Send a TxProfile (1.6 csChargingProfiles) at ``cmd.limit``; record the status."""
        profile_id = self.core.next_profile_id()
        payload = {"connectorId": cmd.evse_id, "csChargingProfiles": {
            "chargingProfileId": profile_id, "transactionId": int(cmd.transaction_id),
            "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "startSchedule": iso(self.core.clock()), "chargingRateUnit": cmd.unit,
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": cmd.limit}]},
        }}
        try:
            status = str((await self.call_json("SetChargingProfile", payload))["status"])
        except CallFailed as exc:
            status = f"CallError:{exc.code}"
        self.core.profile_sent(cmd, profile_id, status)
        return status
