"""OCPP 2.0.1 and 2.1 shells of the CSMS.

2.1 keeps 2.0.1's messages for everything this CSMS handles, so both share
the handlers; they differ in schemas (checked by the ``ocpp`` library per
version) and in what 2.1 adds (V2X fields in charging schedules).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ocpp.routing import on
from ocpp.v21 import ChargePoint as _ChargePoint21
from ocpp.v21.enums import Action as Action21
from ocpp.v201 import ChargePoint as _ChargePoint201
from ocpp.v201.enums import Action as Action201

from .clock import iso
from .core import CSMSCore, ProfileCommand
from .shell import CallFailed, ShellBase, unknown_evse_is_a_property_violation


class Handlers201(ShellBase):
    """Handlers for station-initiated 2.0.1/2.1 messages, answered in wire form."""

    @on("BootNotification")
    def on_boot_notification(self, charging_station: dict[str, Any], reason: str,
                             **_: Any) -> Any:
        r = self.core.on_boot(self.id, charging_station.get("vendor_name", ""),
                              charging_station.get("model", ""))
        return self._call_result.BootNotification(**r)  # type: ignore[attr-defined]

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return self._call_result.Heartbeat(  # type: ignore[attr-defined]
            current_time=self.core.on_heartbeat(self.id))

    @on("StatusNotification")
    def on_status_notification(self, timestamp: str, connector_status: str, evse_id: int,
                               connector_id: int, **_: Any) -> Any:
        with unknown_evse_is_a_property_violation():
            self.core.on_status(self.id, evse_id, connector_status, timestamp)
        return self._call_result.StatusNotification()  # type: ignore[attr-defined]

    @on("Authorize")
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        status = self.core.authorize(id_token["id_token"])
        return self._call_result.Authorize(  # type: ignore[attr-defined]
            id_token_info={"status": status})

    @on("TransactionEvent")
    def on_transaction_event(self, **_: Any) -> Any:
        with unknown_evse_is_a_property_violation():
            r = self.core.on_transaction_event(self.id, self._raw_payload)
        return self._call_result.TransactionEvent(**r)  # type: ignore[attr-defined]

    @on("MeterValues")
    def on_meter_values(self, evse_id: int, **_: Any) -> Any:
        if evse_id != 0:  # 0 is the station's main meter
            with unknown_evse_is_a_property_violation():
                self.core.check_evse(self.id, evse_id)
        self.core.on_meter_values(self.id, evse_id, self._raw_payload["meterValue"])
        return self._call_result.MeterValues()  # type: ignore[attr-defined]

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
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": cmd.limit}],
            }],
        }

    async def send_limit(self, cmd: ProfileCommand) -> str:
        """Send a TxProfile with one period at ``cmd.limit``; record and return the status."""
        profile_id = self.core.next_profile_id()
        payload = {"evseId": cmd.evse_id, "chargingProfile": self._tx_profile(profile_id, cmd)}
        try:
            status = str((await self.call_json("SetChargingProfile", payload))["status"])
        except CallFailed as exc:
            status = f"CallError:{exc.code}"
        self.core.profile_sent(cmd, profile_id, status)
        return status


class CSMS201(Handlers201, _ChargePoint201):
    """One connected station speaking OCPP 2.0.1."""

    version: ClassVar[str] = "2.0.1"
    known_actions: ClassVar[frozenset[str]] = frozenset(a.value for a in Action201)

    def __init__(self, station_id: str, connection: Any, core: CSMSCore, **kw: Any) -> None:
        super().__init__(station_id, connection, **kw)
        self._init_shell(core)


class CSMS21(Handlers201, _ChargePoint21):
    """One connected station speaking OCPP 2.1."""

    version: ClassVar[str] = "2.1"
    known_actions: ClassVar[frozenset[str]] = frozenset(a.value for a in Action21)

    def __init__(self, station_id: str, connection: Any, core: CSMSCore, **kw: Any) -> None:
        super().__init__(station_id, connection, **kw)
        self._init_shell(core)


# Kept for code written against the first, 2.0.1-only CSMS.
CSMSChargePoint = CSMS201
