"""OCPP 2.0.1 shell of the CSMS: translates messages into :class:`CSMSCore` calls."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ocpp.exceptions import OCPPError, PropertyConstraintViolationError
from ocpp.messages import unpack
from ocpp.routing import on
from ocpp.v201 import ChargePoint as _ChargePoint
from ocpp.v201 import call, call_result
from ocpp.v201.enums import Action

from .clock import iso
from .core import CSMSCore, ProfileCommand
from .exceptions import UnknownEvseError

log = logging.getLogger("evtwin.csms.ocpp")

_KNOWN_ACTIONS = frozenset(a.value for a in Action)

# OCPP-J 2.0.1 §4.3: a frame whose message id cannot be read is answered
# with message id "-1".
UNKNOWN_MESSAGE_ID = "-1"


def rpc_error_frame(raw: str | bytes) -> str:
    """Build the CALLERROR for a frame that is not a valid OCPP-J RPC message.

    RpcFrameworkError when the frame is not a JSON array with a readable
    message id; MessageTypeNotSupported for an unknown MessageTypeId.
    """
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return json.dumps([4, UNKNOWN_MESSAGE_ID, "RpcFrameworkError",
                           "Frame is not valid JSON", {}])
    if not isinstance(msg, list) or len(msg) < 2 or not isinstance(msg[1], str):
        return json.dumps([4, UNKNOWN_MESSAGE_ID, "RpcFrameworkError",
                           "Frame is not an OCPP-J array with a message id", {}])
    if msg[0] not in (2, 3, 4):
        return json.dumps([4, msg[1], "MessageTypeNotSupported",
                           f"MessageTypeId {msg[0]!r} is not supported", {}])
    return json.dumps([4, msg[1], "RpcFrameworkError", "Frame is missing elements", {}])


@contextmanager
def _unknown_evse_is_a_property_violation() -> Iterator[None]:
    """Answer a message naming an unprovisioned EVSE with PropertyConstraintViolation."""
    try:
        yield
    except UnknownEvseError as exc:
        raise PropertyConstraintViolationError(description=str(exc)) from exc


class CSMSChargePoint(_ChargePoint):
    """One connected station, as seen from the CSMS, speaking OCPP 2.0.1."""

    def __init__(self, station_id: str, connection: Any, core: CSMSCore, **kw: Any) -> None:
        super().__init__(station_id, connection, **kw)
        self.core = core
        self._raw_payload: dict[str, Any] = {}

    async def route_message(self, raw_msg: str) -> None:
        """Route one frame; malformed frames get a CALLERROR instead of silence."""
        try:
            msg = unpack(raw_msg)
        except OCPPError:
            log.warning("%s: malformed frame %.200r", self.id, raw_msg)
            await self._send(rpc_error_frame(raw_msg))
            return
        if msg.message_type_id == 2:
            refusal = self._refuse_call(msg.action, msg.payload)
            if refusal is not None:
                code, text = refusal
                await self._send(json.dumps([4, msg.unique_id, code, text, {}]))
                return
            # Handlers read the request in its wire (camelCase) form; the
            # connection handles one message at a time, so this is safe.
            self._raw_payload = msg.payload
        await super().route_message(raw_msg)

    def _refuse_call(self, action: Any, payload: Any) -> tuple[str, str] | None:
        """The CALLERROR (code, text) for a CALL that cannot be routed, or None.

        OCPP-J: NotImplemented when the action is not known at all,
        NotSupported when it is a known action this CSMS does not handle (the
        ``ocpp`` library has these two the other way round).
        """
        if not isinstance(action, str) or not isinstance(payload, dict):
            return "RpcFrameworkError", "Action must be a string and payload an object"
        if action in self.route_map and "_on_action" in self.route_map[action]:
            return None
        if action in _KNOWN_ACTIONS:
            return "NotSupported", f"{action} is not supported by this CSMS"
        return "NotImplemented", f"{action} is not an OCPP 2.0.1 action"

    @on("BootNotification")
    def on_boot_notification(self, charging_station: dict[str, Any], reason: str, **_: Any) -> Any:
        r = self.core.on_boot(self.id, charging_station.get("vendor_name", ""),
                              charging_station.get("model", ""))
        return call_result.BootNotification(**r)

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return call_result.Heartbeat(current_time=self.core.on_heartbeat(self.id))

    @on("StatusNotification")
    def on_status_notification(self, timestamp: str, connector_status: str, evse_id: int,
                               connector_id: int, **_: Any) -> Any:
        with _unknown_evse_is_a_property_violation():
            self.core.on_status(self.id, evse_id, connector_status, timestamp)
        return call_result.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        status = self.core.authorize(id_token["id_token"])
        return call_result.Authorize(id_token_info={"status": status})

    @on("TransactionEvent")
    def on_transaction_event(self, **_: Any) -> Any:
        with _unknown_evse_is_a_property_violation():
            r = self.core.on_transaction_event(self.id, self._raw_payload)
        return call_result.TransactionEvent(**r)

    @on("MeterValues")
    def on_meter_values(self, evse_id: int, **_: Any) -> Any:
        if evse_id != 0:  # 0 is the station's main meter
            with _unknown_evse_is_a_property_violation():
                self.core.check_evse(self.id, evse_id)
        self.core.on_meter_values(self.id, evse_id, self._raw_payload["meterValue"])
        return call_result.MeterValues()

    async def send_limit(self, cmd: ProfileCommand) -> str:
        """Send a TxProfile with one period at ``cmd.limit`` and record the answer."""
        profile_id = self.core.next_profile_id()
        request = call.SetChargingProfile(
            evse_id=cmd.evse_id,
            charging_profile={
                "id": profile_id,
                "stack_level": 0,
                "charging_profile_purpose": "TxProfile",
                "charging_profile_kind": "Absolute",
                "transaction_id": cmd.transaction_id,
                "charging_schedule": [{
                    "id": profile_id,
                    "start_schedule": iso(self.core.clock()),
                    "charging_rate_unit": cmd.unit,
                    "charging_schedule_period": [{"start_period": 0, "limit": cmd.limit}],
                }],
            },
        )
        response = await self.call(request)
        status = response.status if response is not None else "CallError"
        self.core.profile_sent(cmd, profile_id, status)
        return str(status)
