"""What every OCPP version's CSMS shell shares: framing errors, routing, raw calls.

A shell is one connected station. It translates that version's messages into
calls on :class:`~evtwin.csms.core.CSMSCore` and offers the same operations
(``send_limit``, ``request_start``, ...) whatever the version, so the rest of
the CSMS never looks at the protocol version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from ocpp.exceptions import OCPPError, PropertyConstraintViolationError
from ocpp.messages import Call, MessageType, unpack, validate_payload

from .core import CSMSCore, ProfileCommand
from .exceptions import UnknownEvseError

log = logging.getLogger("evtwin.csms.ocpp")

# OCPP-J 2.0.1 §4.3: a frame whose message id cannot be read is answered
# with message id "-1".
UNKNOWN_MESSAGE_ID = "-1"


@contextmanager
def unknown_evse_is_a_property_violation() -> Iterator[None]:
    """Answer a message naming an unprovisioned EVSE with PropertyConstraintViolation."""
    try:
        yield
    except UnknownEvseError as exc:
        raise PropertyConstraintViolationError(description=str(exc)) from exc


class CallFailed(Exception):
    """A CSMS-initiated call was answered with a CALLERROR."""

    def __init__(self, action: str, code: str, description: str) -> None:
        super().__init__(f"{action}: {code} {description}")
        self.action = action
        self.code = code
        self.description = description


class ShellBase:
    """Mixin placed before an ``ocpp`` ChargePoint class in a shell's bases."""

    #: Error codes of this version for a frame that is not an RPC message,
    #: and for an unknown MessageTypeId.
    rpc_error_code: ClassVar[str] = "RpcFrameworkError"
    message_type_error_code: ClassVar[str] = "MessageTypeNotSupported"
    known_actions: ClassVar[frozenset[str]] = frozenset()
    version: ClassVar[str] = ""

    core: CSMSCore
    _raw_payload: dict[str, Any]

    if TYPE_CHECKING:  # provided by ocpp.charge_point.ChargePoint, later in the MRO
        id: str
        route_map: dict[str, Any]
        _ocpp_version: str
        _call_lock: Any
        _response_timeout: float
        _unique_id_generator: Any

        async def _send(self, message: str) -> None: ...

        async def _get_specific_response(self, unique_id: str, timeout: float) -> Any: ...

    def _init_shell(self, core: CSMSCore) -> None:
        self.core = core
        self._raw_payload = {}

    def rpc_error_frame(self, raw: str | bytes) -> str:
        """The CALLERROR for a frame that is not a valid OCPP-J RPC message."""
        try:
            msg = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return json.dumps([4, UNKNOWN_MESSAGE_ID, self.rpc_error_code,
                               "Frame is not valid JSON", {}])
        if not isinstance(msg, list) or len(msg) < 2 or not isinstance(msg[1], str):
            return json.dumps([4, UNKNOWN_MESSAGE_ID, self.rpc_error_code,
                               "Frame is not an OCPP-J array with a message id", {}])
        if msg[0] not in (2, 3, 4):
            return json.dumps([4, msg[1], self.message_type_error_code,
                               f"MessageTypeId {msg[0]!r} is not supported", {}])
        return json.dumps([4, msg[1], self.rpc_error_code, "Frame is missing elements", {}])

    async def route_message(self, raw_msg: str) -> None:
        """Route one frame; malformed frames get a CALLERROR instead of silence."""
        try:
            msg = unpack(raw_msg)
        except OCPPError:
            log.warning("%s: malformed frame %.200r", self.id, raw_msg)
            await self._send(self.rpc_error_frame(raw_msg))
            return
        if msg.message_type_id == MessageType.Call:
            refusal = self._refuse_call(msg.action, msg.payload)
            if refusal is not None:
                code, text = refusal
                await self._send(json.dumps([4, msg.unique_id, code, text, {}]))
                return
            # Handlers read the request in its wire (camelCase) form; the
            # connection handles one message at a time, so this is safe.
            self._raw_payload = msg.payload
        await super().route_message(raw_msg)  # type: ignore[misc]

    def _refuse_call(self, action: Any, payload: Any) -> tuple[str, str] | None:
        """The CALLERROR (code, text) for a CALL that cannot be routed, or None.

        OCPP-J: NotImplemented when the action is not known at all,
        NotSupported when it is a known action this CSMS does not handle (the
        ``ocpp`` library has these two the other way round).
        """
        if not isinstance(action, str) or not isinstance(payload, dict):
            return self.rpc_error_code, "Action must be a string and payload an object"
        if action in self.route_map and "_on_action" in self.route_map[action]:
            return None
        if action in self.known_actions:
            return "NotSupported", f"{action} is not supported by this CSMS"
        return "NotImplemented", f"{action} is not an OCPP {self.version} action"

    async def call_json(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a CALL whose payload is already in wire form; return the result payload.

        The payload goes out exactly as given (no snake/camel conversion, which
        mangles some OCPP 2.1 field names), after validation against the
        version's schema. Raises CallFailed on a CALLERROR.
        """
        call = Call(unique_id=str(self._unique_id_generator()), action=action, payload=payload)
        await validate_payload(call, self._ocpp_version)
        async with self._call_lock:
            await self._send(call.to_json())
            response = await self._get_specific_response(call.unique_id, self._response_timeout)
        if response.message_type_id == MessageType.CallError:
            raise CallFailed(action, response.error_code, response.error_description)
        response.action = action
        await validate_payload(response, self._ocpp_version)
        return dict(response.payload)

    # -- operations every version offers ---------------------------------------
    async def send_limit(self, cmd: ProfileCommand) -> str:
        """Send a TxProfile with one period at ``cmd.limit``; record and return the status."""
        raise NotImplementedError
