"""evtwin.ocppj: OCPP-J framing and schema validation without I/O, shared by both sides.

- :mod:`.frames`: bounded decoding of one websocket frame into a CALL, CALLRESULT,
  CALLERROR (and OCPP 2.1's CALLRESULTERROR and SEND), or a :class:`FrameError`
  naming the OCPP-J error code the frame earns;
- :mod:`.schemas`: each action's JSON schema compiled once (formats included) and
  the OCPP-J error code a payload that fails it earns;
- :mod:`.errors`: the error codes and their spelling in each OCPP version;
- :mod:`.endpoint`: one side of a connection as a protocol object: frames in,
  typed events and frames to send out, pending calls and their timeouts on a
  clock it is given (the Sans-I/O core both the stations and the CSMS build on).

Never imports evtwin.csms, evtwin.agents, evtwin.sim or evtwin.grid.
"""

from .endpoint import (
    CallReceived,
    Endpoint,
    EndpointClosed,
    ErrorReceived,
    Event,
    OutgoingCall,
    Pipe,
    Refused,
    ResultErrorReceived,
    ResultInvalid,
    ResultReceived,
    SendReceived,
    TimedOut,
)
from .errors import CODES_16, ErrorCode, wire_code
from .frames import (
    MAX_DEPTH,
    Call,
    CallError,
    CallResult,
    CallResultError,
    Frame,
    FrameError,
    Send,
    decode_frame,
    encode_call_error,
)
from .schemas import SchemaViolation, validate

__all__ = [
    "CODES_16",
    "MAX_DEPTH",
    "Call",
    "CallError",
    "CallReceived",
    "CallResult",
    "CallResultError",
    "Endpoint",
    "EndpointClosed",
    "ErrorCode",
    "ErrorReceived",
    "Event",
    "Frame",
    "FrameError",
    "OutgoingCall",
    "Pipe",
    "Refused",
    "ResultErrorReceived",
    "ResultInvalid",
    "ResultReceived",
    "SchemaViolation",
    "Send",
    "SendReceived",
    "TimedOut",
    "decode_frame",
    "encode_call_error",
    "validate",
    "wire_code",
]
