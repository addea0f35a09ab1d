"""The virtual station's messages in each OCPP version's wire form (OCPP-J payloads).

A :class:`Codec` turns the version-neutral messages of :mod:`evtwin.ocppj.domain`
into an action and its payload, the CSMS's answer payloads into neutral
answers, the CSMS's requests into neutral requests and the station's answers
back. Payloads are built in their camelCase wire form directly (no
snake/camel conversion, which mangles OCPP 2.1 names such as ``targetSoC``);
the endpoint validates them against the specification's schemas both ways.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Any

from evtwin.ocppj import domain as d


def iso(at: datetime) -> str:
    """An OCPP timestamp: UTC, milliseconds, 'Z'."""
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _opt_ts(text: Any) -> datetime | None:
    return parse_ts(text) if text else None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


class Codec(ABC):
    """One OCPP version's wire form of the station's messages."""

    version = ""
    #: CSMS requests the station handles; any other action is answered NotSupported.
    requests: frozenset[str] = frozenset({"SetChargingProfile", "ClearChargingProfile"})

    @staticmethod
    @abstractmethod
    def sampled_value(s: d.Sample, context: str) -> dict[str, Any]:
        """One sampled value in the version's form (without its location)."""

    def meter_value(self, reading: d.Reading) -> dict[str, Any]:
        """A reading as one MeterValue: its timestamp and its sampled values."""
        values = []
        for s in reading.samples():
            value = self.sampled_value(s, reading.context)
            if s.location is not None:
                value["location"] = s.location
            values.append(value)
        return {"timestamp": iso(reading.at), "sampledValue": values}

    @abstractmethod
    def encode(self, message: d.StationMessage) -> tuple[str, dict[str, Any]]:
        """A station message as (action, payload)."""

    @abstractmethod
    def decode_answer(self, message: d.StationMessage, payload: dict[str, Any]) -> Any:
        """The CSMS's answer payload to ``message`` as a neutral answer."""

    @abstractmethod
    def decode_request(self, action: str, payload: dict[str, Any]) -> d.CSMSRequest:
        """A CSMS CALL (one of :attr:`requests`) as a neutral request."""

    @abstractmethod
    def encode_answer(self, answer: d.StationAnswer) -> dict[str, Any]:
        """The station's answer in the version's wire form."""


class Codec2x(Codec):
    """OCPP 2.0.1 and 2.1 (the station's messages are the same in both)."""

    def __init__(self, version: str) -> None:
        self.version = version
        # 2.x stations show the running cost; 2.1 ones also take a default tariff.
        self.requests = Codec.requests | {
            "CostUpdated", "ReserveNow", "CancelReservation", "RequestStartTransaction",
            "RequestStopTransaction", "ChangeAvailability"} | (
                {"SetDefaultTariff"} if version == "2.1" else set())

    @staticmethod
    def sampled_value(s: d.Sample, context: str) -> dict[str, Any]:
        return {"value": s.value, "context": context, "measurand": s.measurand,
                "unitOfMeasure": {"unit": s.unit}}

    def encode(self, message: d.StationMessage) -> tuple[str, dict[str, Any]]:
        m = message
        if isinstance(m, d.TransactionUpdated):  # the most frequent first
            return "TransactionEvent", {
                "eventType": "Updated", "timestamp": iso(m.at),
                "triggerReason": "MeterValuePeriodic", "seqNo": m.seq_no,
                "transactionInfo": {"transactionId": m.transaction_id,
                                    "chargingState": m.charging_state},
                "meterValue": [self.meter_value(m.reading)]}
        if isinstance(m, d.StatusChanged):
            return "StatusNotification", {"timestamp": iso(m.at), "connectorStatus": m.status,
                                          "evseId": m.evse_id, "connectorId": 1}
        if isinstance(m, d.MeterReport):
            return "MeterValues", {"evseId": m.evse_id,
                                   "meterValue": [self.meter_value(m.reading)]}
        if isinstance(m, d.Heartbeat):
            return "Heartbeat", {}
        if isinstance(m, d.AuthorizeRequest):
            return "Authorize", {"idToken": {"idToken": m.id_token, "type": "ISO14443"}}
        if isinstance(m, d.TransactionStarted):
            info: dict[str, Any] = {"transactionId": m.transaction_id,
                                    "chargingState": "EVConnected"}
            remote = m.remote_start_id is not None
            if remote:
                info["remoteStartId"] = m.remote_start_id
            started: dict[str, Any] = {
                "eventType": "Started", "timestamp": iso(m.at),
                "triggerReason": "RemoteStart" if remote else "Authorized",
                "seqNo": 0, "transactionInfo": info,
                "evse": {"id": m.evse_id, "connectorId": 1},
                "idToken": {"idToken": m.id_token,
                            "type": "Central" if remote else "ISO14443"},
                "meterValue": [self.meter_value(m.reading)]}
            if m.reservation_id is not None:
                started["reservationId"] = m.reservation_id
            return "TransactionEvent", started
        if isinstance(m, d.ReservationEnded):
            return "ReservationStatusUpdate", {"reservationId": m.reservation_id,
                                               "reservationUpdateStatus": m.status}
        if isinstance(m, d.TransactionEnded):
            return "TransactionEvent", {
                "eventType": "Ended", "timestamp": iso(m.at), "triggerReason": m.trigger,
                "seqNo": m.seq_no,
                "transactionInfo": {"transactionId": m.transaction_id,
                                    "chargingState": m.charging_state,
                                    "stoppedReason": m.reason},
                "evse": {"id": m.evse_id, "connectorId": 1},
                "meterValue": [self.meter_value(m.reading)]}
        if isinstance(m, d.ChargingNeeds):
            needs: dict[str, Any] = {
                "requestedEnergyTransfer": m.energy_transfer,
                "departureTime": iso(m.departure),
                "acChargingParameters": {"energyAmount": m.energy_wh,
                                         "evMinCurrent": m.min_current_a,
                                         "evMaxCurrent": m.max_current_a,
                                         "evMaxVoltage": m.max_voltage_v}}
            if m.v2x is not None:
                v = m.v2x
                needs["v2xChargingParameters"] = {
                    "evMinEnergyRequest": v.min_energy_wh,
                    "evTargetEnergyRequest": v.target_energy_wh,
                    "evMaxEnergyRequest": v.max_energy_wh, "targetSoC": v.target_soc_percent,
                    "maxChargePower": v.max_charge_w, "maxDischargePower": v.max_discharge_w}
            return "NotifyEVChargingNeeds", {"evseId": m.evse_id, "chargingNeeds": needs}
        if isinstance(m, d.Boot):
            return "BootNotification", {
                "chargingStation": {"model": m.model, "vendorName": m.vendor},
                "reason": m.reason}
        if isinstance(m, d.ProblemReport):
            component: dict[str, Any] = {"name": m.component}
            if m.evse_id:
                component["evse"] = {"id": m.evse_id, "connectorId": 1}
            event: dict[str, Any] = {
                "eventId": m.event_id, "timestamp": iso(m.at), "trigger": "Alerting",
                "actualValue": "false" if m.severity == "cleared" else "true",
                "techCode": m.code, "techInfo": m.severity, "component": component,
                "variable": {"name": "Problem"},
                "eventNotificationType": "HardWiredNotification"}
            if m.severity == "cleared":
                event["cleared"] = True
            return "NotifyEvent", {"generatedAt": iso(m.at), "seqNo": 0, "eventData": [event]}
        raise TypeError(f"no OCPP {self.version} form for {type(m).__name__}")

    def decode_answer(self, message: d.StationMessage, payload: dict[str, Any]) -> Any:
        if isinstance(message, d.TransactionStarted | d.TransactionUpdated | d.TransactionEnded):
            info = payload.get("idTokenInfo")
            return d.TransactionAnswer(None if info is None else info["status"])
        if isinstance(message, d.AuthorizeRequest):
            info = payload["idTokenInfo"]
            return d.AuthorizeAnswer(info["status"],
                                     (info.get("groupIdToken") or {}).get("idToken"))
        if isinstance(message, d.Boot):
            return d.BootAnswer(payload["status"], float(payload["interval"]))
        return d.Ack()

    def decode_request(self, action: str, payload: dict[str, Any]) -> d.CSMSRequest:
        if action == "ReserveNow":
            group = payload.get("groupIdToken")
            return d.ReserveNow(int(payload["id"]), payload["idToken"]["idToken"],
                                parse_ts(payload["expiryDateTime"]), payload.get("evseId"),
                                None if group is None else group["idToken"])
        if action == "CancelReservation":
            return d.CancelReservation(int(payload["reservationId"]))
        if action == "ChangeAvailability":  # no evse: the whole station
            return d.ChangeAvailability(int((payload.get("evse") or {}).get("id", 0)),
                                        payload["operationalStatus"] == "Operative")
        if action == "RequestStartTransaction":
            return d.RequestStart(payload["idToken"]["idToken"], payload.get("evseId"),
                                  int(payload["remoteStartId"]))
        if action == "RequestStopTransaction":
            return d.RequestStop(str(payload["transactionId"]))
        if action == "CostUpdated":
            return d.CostUpdate(str(payload["transactionId"]), float(payload["totalCost"]))
        if action == "SetDefaultTariff":
            tariff = payload["tariff"]
            return d.DefaultTariff(int(payload["evseId"]), str(tariff["tariffId"]), tariff)
        if action == "SetChargingProfile":
            cp = payload["chargingProfile"]
            schedule = cp["chargingSchedule"][0]
            periods = tuple(d.PeriodData(
                float(p["startPeriod"]), _opt_float(p.get("limit")), p.get("numberPhases"),
                _opt_float(p.get("setpoint"))) for p in schedule["chargingSchedulePeriod"])
            return d.SetChargingProfile(payload["evseId"], d.ProfileData(
                profile_id=int(cp["id"]), purpose=cp["chargingProfilePurpose"],
                stack_level=int(cp["stackLevel"]), kind=cp["chargingProfileKind"],
                unit=schedule["chargingRateUnit"], periods=periods,
                start=_opt_ts(schedule.get("startSchedule")),
                duration_s=_opt_float(schedule.get("duration")),
                transaction_id=cp.get("transactionId"),
                valid_from=_opt_ts(cp.get("validFrom")), valid_to=_opt_ts(cp.get("validTo")),
                recurrency=cp.get("recurrencyKind")))
        crit = payload.get("chargingProfileCriteria") or {}
        return d.ClearChargingProfile(
            profile_id=payload.get("chargingProfileId"), evse_id=crit.get("evseId"),
            purpose=crit.get("chargingProfilePurpose"), stack_level=crit.get("stackLevel"))

    def encode_answer(self, answer: d.StationAnswer) -> dict[str, Any]:
        if isinstance(answer, d.Ack):  # CostUpdated: an empty answer
            return {}
        if isinstance(answer, d.ProfileAnswer) and answer.reason is not None:
            return {"status": answer.status,
                    "statusInfo": {"reasonCode": "InvalidValue",
                                   "additionalInfo": answer.reason[:512]}}
        return {"status": answer.status}


#: Decimals of a 1.6 sampled value (a decimal string), by measurand.
_DECIMALS_16 = {d.ENERGY: 3, d.POWER: 1}


class Codec16(Codec):
    """OCPP 1.6J: StartTransaction/StopTransaction, string sample values, integer ids."""

    version = "1.6"
    requests = Codec.requests | {"ReserveNow", "CancelReservation", "RemoteStartTransaction",
                                 "RemoteStopTransaction", "ChangeAvailability"}

    @staticmethod
    def sampled_value(s: d.Sample, context: str) -> dict[str, Any]:
        return {"value": f"{s.value:.{_DECIMALS_16.get(s.measurand, 2)}f}", "context": context,
                "measurand": s.measurand, "unit": s.unit}

    def encode(self, message: d.StationMessage) -> tuple[str, dict[str, Any]]:
        m = message
        if isinstance(m, d.TransactionUpdated):
            return "MeterValues", {"connectorId": m.evse_id,
                                   "transactionId": int(m.transaction_id),
                                   "meterValue": [self.meter_value(m.reading)]}
        if isinstance(m, d.StatusChanged):
            return "StatusNotification", {"connectorId": m.evse_id, "errorCode": "NoError",
                                          "status": m.status, "timestamp": iso(m.at)}
        if isinstance(m, d.MeterReport):
            return "MeterValues", {"connectorId": m.evse_id,
                                   "meterValue": [self.meter_value(m.reading)]}
        if isinstance(m, d.Heartbeat):
            return "Heartbeat", {}
        if isinstance(m, d.AuthorizeRequest):
            return "Authorize", {"idTag": m.id_token}
        if isinstance(m, d.TransactionStarted):
            start: dict[str, Any] = {"connectorId": m.evse_id, "idTag": m.id_token,
                                     "meterStart": round(m.reading.register_wh),
                                     "timestamp": iso(m.at)}
            if m.reservation_id is not None:
                start["reservationId"] = m.reservation_id
            return "StartTransaction", start
        if isinstance(m, d.TransactionEnded):
            # 1.6 meters are whole Wh: the register goes with the rest in
            # transactionData so the CSMS can bill it exactly.
            return "StopTransaction", {
                "meterStop": round(m.reading.register_wh), "timestamp": iso(m.at),
                "transactionId": int(m.transaction_id), "reason": m.reason,
                "transactionData": [self.meter_value(m.reading)]}
        if isinstance(m, d.Boot):
            return "BootNotification", {"chargePointModel": m.model,
                                        "chargePointVendor": m.vendor}
        if isinstance(m, d.ProblemReport):
            # 1.6 says a problem with the connector's status: Faulted for a failure,
            # the status it has for a warning; info names the component.
            # vendorErrorCode says whether it is a warning or a failure (1.6 has no
            # field for it: a warning on an EVSE already Faulted would read as one).
            return "StatusNotification", {
                "connectorId": m.evse_id,
                "errorCode": "NoError" if m.severity == "cleared" else m.code,
                "status": m.status, "timestamp": iso(m.at), "info": m.component[:50],
                "vendorErrorCode": m.severity}
        raise TypeError(f"no OCPP 1.6 form for {type(m).__name__}")

    def decode_answer(self, message: d.StationMessage, payload: dict[str, Any]) -> Any:
        if isinstance(message, d.TransactionStarted):
            return d.TransactionAnswer(payload["idTagInfo"]["status"],
                                       str(payload["transactionId"]))
        if isinstance(message, d.TransactionEnded):
            info = payload.get("idTagInfo")
            return d.TransactionAnswer(None if info is None else info["status"])
        if isinstance(message, d.AuthorizeRequest):
            info = payload["idTagInfo"]
            return d.AuthorizeAnswer(info["status"], info.get("parentIdTag"))
        if isinstance(message, d.Boot):
            return d.BootAnswer(payload["status"], float(payload["interval"]))
        return d.Ack()

    @staticmethod
    def _purpose(purpose: str | None) -> str | None:
        return "ChargingStationMaxProfile" if purpose == "ChargePointMaxProfile" else purpose

    def decode_request(self, action: str, payload: dict[str, Any]) -> d.CSMSRequest:
        if action == "ReserveNow":
            return d.ReserveNow(int(payload["reservationId"]), payload["idTag"],
                                parse_ts(payload["expiryDate"]), payload["connectorId"] or None,
                                payload.get("parentIdTag"))
        if action == "CancelReservation":
            return d.CancelReservation(int(payload["reservationId"]))
        if action == "ChangeAvailability":  # connector 0: the whole charge point
            return d.ChangeAvailability(int(payload["connectorId"]),
                                        payload["type"] == "Operative")
        if action == "RemoteStartTransaction":
            return d.RequestStart(payload["idTag"], payload.get("connectorId") or None)
        if action == "RemoteStopTransaction":
            return d.RequestStop(str(payload["transactionId"]))
        if action == "SetChargingProfile":
            cp = payload["csChargingProfiles"]
            schedule = cp["chargingSchedule"]
            tx = cp.get("transactionId")
            periods = tuple(d.PeriodData(float(p["startPeriod"]), float(p["limit"]),
                                         p.get("numberPhases"))
                            for p in schedule["chargingSchedulePeriod"])
            return d.SetChargingProfile(payload["connectorId"], d.ProfileData(
                profile_id=int(cp["chargingProfileId"]),
                purpose=self._purpose(cp["chargingProfilePurpose"]) or "",
                stack_level=int(cp["stackLevel"]), kind=cp["chargingProfileKind"],
                unit=schedule["chargingRateUnit"], periods=periods,
                start=_opt_ts(schedule.get("startSchedule")),
                duration_s=_opt_float(schedule.get("duration")),
                transaction_id=str(tx) if tx is not None else None,
                valid_from=_opt_ts(cp.get("validFrom")), valid_to=_opt_ts(cp.get("validTo")),
                recurrency=cp.get("recurrencyKind")))
        return d.ClearChargingProfile(
            profile_id=payload.get("id"), evse_id=payload.get("connectorId"),
            purpose=self._purpose(payload.get("chargingProfilePurpose")),
            stack_level=payload.get("stackLevel"))

    def encode_answer(self, answer: d.StationAnswer) -> dict[str, Any]:
        return {} if isinstance(answer, d.Ack) else {"status": answer.status}


def codec(version: str) -> Codec:
    """The codec of an OCPP version ("1.6", "2.0.1", "2.1")."""
    if version == "1.6":
        return Codec16()
    if version in ("2.0.1", "2.1"):
        return Codec2x(version)
    raise ValueError(f"unknown OCPP version {version!r}")
