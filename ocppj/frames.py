"""Decoding OCPP-J frames with bounded work, and the CALLERROR a bad frame earns.

:func:`decode_frame` turns one websocket message into a typed frame or raises
:class:`FrameError` with the OCPP-J error code (2.0.1 names, see
:mod:`.errors`) and the message id to answer with. It never lets an exception
other than FrameError out, whatever the input, and its work is bounded:

- only text frames carry OCPP-J (a binary frame is refused);
- JSON is parsed by the standard library with NaN, Infinity and -Infinity
  refused (RFC 8259 has no such numbers), integers limited to 64 bits
  (SQLite's range; Python would otherwise parse 4,300 digits and raise on more)
  and nesting limited to :data:`MAX_DEPTH` levels (the parser itself stops at the
  interpreter's recursion limit; OCPP payloads nest fewer than ten levels);
- strings with lone UTF-16 surrogates (``"\\ud800"``) or NUL characters are
  refused: the first are not Unicode text, neither can be stored everywhere;
- numbers too large for a double (``1e999``, which would parse as infinity) are
  refused;
- the array must be ``[2, id, action, {payload}]``, ``[3, id, {payload}]``,
  ``[4, id, code, description, {details}]`` or, in OCPP 2.1, ``[5, ...]`` (a
  CALLRESULTERROR) and ``[6, id, action, {payload}]`` (a SEND). MessageTypeId
  must be an integer (``2.0`` is not), the message id a string of at most 36
  characters (OCPP-J: "maximum of 36 characters").

When the frame's structure can be read but a value in the payload is what is
wrong (a NaN, an over-long integer, a lone surrogate), the error names the
frame's own message id and FormatViolation, so the sender learns which call
failed; when even the id cannot be trusted the id is ``"-1"`` (OCPP-J 2.0.1
section 4.3).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

#: OCPP-J 2.0.1 section 4.3: the message id of a CALLERROR for a frame whose id
#: cannot be read.
UNKNOWN_MESSAGE_ID = "-1"
#: Deepest nesting of arrays and objects accepted (the frame's array is level 1).
MAX_DEPTH = 32
#: OCPP-J: "The message ID ... MUST be a maximum of 36 characters".
MAX_MESSAGE_ID_CHARS = 36
_INT_LIMIT = 2**63
_ID_PREFIX = re.compile(r'\s*\[\s*([2-6])\s*,\s*"((?:[^"\\]|\\.){1,432})"\s*,')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


class FrameError(Exception):
    """A frame that is not valid OCPP-J: ``code`` (2.0.1 name) and the id to answer with.

    ``answer`` is False for frames that get no CALLERROR: a malformed reply
    (CALLRESULT/CALLERROR) or a SEND, which OCPP-J never answers.
    """

    def __init__(self, code: str, message_id: str, description: str, *,
                 answer: bool = True) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.message_id = message_id
        self.description = description
        self.answer = answer


@dataclass(frozen=True, slots=True)
class Call:
    """A request: ``[2, message_id, action, payload]``."""

    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    """A successful answer: ``[3, message_id, payload]``."""

    message_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    """An error answer: ``[4, message_id, code, description, details]``."""

    message_id: str
    code: str
    description: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResultError:
    """OCPP 2.1: the receiver of a CALLRESULT could not process it (``[5, ...]``)."""

    message_id: str
    code: str
    description: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Send:
    """OCPP 2.1: an unconfirmed message, ``[6, message_id, action, payload]``."""

    message_id: str
    action: str
    payload: dict[str, Any]


Frame = Call | CallResult | CallError | CallResultError | Send


class _BadValue(Exception):
    """A value JSON allows syntactically but OCPP-J does not (found while parsing)."""


def _refuse_constant(name: str) -> Any:
    raise _BadValue(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    # Refuse on length first: int() of a huge literal is itself slow.
    if len(text.lstrip("-")) > 19:
        raise _BadValue("an integer outside the 64-bit range")
    value = int(text)
    if not -_INT_LIMIT <= value < _INT_LIMIT:
        raise _BadValue("an integer outside the 64-bit range")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):  # 1e999: a literal too large for a double
        raise _BadValue(f"a number outside the floating-point range ({text[:20]})")
    return value


#: The strict parser, built once (``json.loads`` with hooks builds a decoder per call).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_int=_bounded_int,
                            parse_float=_finite_float)
#: After the strict parser found a bad value: the frame's structure, values blanked,
#: so the answer can still name the right code and message id.
_LENIENT = json.JSONDecoder(parse_constant=lambda _: 0.0, parse_float=lambda _: 0.0,
                            parse_int=lambda t: int(t) if len(t) <= 20 else 0)


def _too_deep_or_surrogate(value: Any, max_depth: int, check_strings: bool) -> str | None:
    """What is wrong with a decoded value (nesting, lone surrogates), or None; iterative."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                return f"nested deeper than {max_depth} levels"
            for k, v in item.items():
                if check_strings and _lone_surrogate(k):
                    return "a string with a lone UTF-16 surrogate or a NUL"
                stack.append((v, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                return f"nested deeper than {max_depth} levels"
            stack.extend((v, depth + 1) for v in item)
        elif check_strings and isinstance(item, str) and _lone_surrogate(item):
            return "a string with a lone UTF-16 surrogate or a NUL"
    return None


def _lone_surrogate(text: str) -> bool:
    """A lone UTF-16 surrogate (not Unicode text) or a NUL (which PostgreSQL and most
    C code cannot store): neither belongs in an OCPP string."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _peek_message_id(raw: str) -> tuple[str, bool]:
    """The message id of a frame whose payload failed to parse, if the prefix is sound,
    and whether the frame is a CALL (the only kind answered with a CALLERROR)."""
    # 36 characters may take up to 12 escaped characters each (a surrogate pair).
    m = _ID_PREFIX.match(raw)
    if m is None:
        return UNKNOWN_MESSAGE_ID, True
    try:
        value = json.loads(f'"{m.group(2)}"')
    except ValueError:
        return UNKNOWN_MESSAGE_ID, True
    if not isinstance(value, str) or not 0 < len(value) <= MAX_MESSAGE_ID_CHARS \
            or _lone_surrogate(value):
        return UNKNOWN_MESSAGE_ID, True
    return value, m.group(1) == "2"


def decode_frame(raw: str | bytes, *, version: str = "2.0.1",
                 max_depth: int = MAX_DEPTH) -> Frame:
    """Decode one frame; FrameError (with the code and message id to answer) if it is not
    valid OCPP-J. ``version`` decides whether 2.1's message types 5 and 6 exist."""
    if not isinstance(raw, str):
        raise FrameError("RpcFrameworkError", UNKNOWN_MESSAGE_ID,
                         "binary frame: OCPP-J is sent in text frames")
    bad: str | None = None
    try:
        msg = _DECODER.decode(raw)
    except _BadValue as exc:
        bad = str(exc)
        msg = _LENIENT.decode(raw)  # the same text parsed once already: cannot fail
    except RecursionError:
        # Too deep for the parser itself: only the prefix can be trusted.
        message_id, is_call = _peek_message_id(raw)
        code = "FormatViolation" if message_id != UNKNOWN_MESSAGE_ID else "RpcFrameworkError"
        raise FrameError(code, message_id, f"payload contains nesting deeper than "
                         f"{max_depth} levels", answer=is_call) from None
    except ValueError:
        raise FrameError("RpcFrameworkError", UNKNOWN_MESSAGE_ID,
                         "frame is not valid JSON") from None
    if not isinstance(msg, list) or len(msg) < 2:
        raise FrameError("RpcFrameworkError", UNKNOWN_MESSAGE_ID,
                         "frame is not an OCPP-J array with a message id")
    type_id, message_id = msg[0], msg[1]
    if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID_CHARS \
            or _lone_surrogate(message_id.replace("\x00", "")):
        raise FrameError("RpcFrameworkError", UNKNOWN_MESSAGE_ID,
                         f"message id must be a string of 1 to {MAX_MESSAGE_ID_CHARS} "
                         "characters")
    if type(type_id) is not int:  # 2.0 and True are not MessageTypeIds
        raise FrameError("RpcFrameworkError", message_id, "MessageTypeId must be an integer")
    known = (2, 3, 4, 5, 6) if version == "2.1" else (2, 3, 4)
    if type_id not in known:
        raise FrameError("MessageTypeNotSupported", message_id,
                         f"MessageTypeId {type_id} is not supported in OCPP {version}")
    frame = _typed(msg, type_id, message_id)
    if bad is None:
        check_strings = _SURROGATE_ESCAPE.search(raw) is not None
        check_nul = "\\u0000" in raw
        if check_strings or check_nul or raw.count("[") + raw.count("{") > max_depth:
            bad = _too_deep_or_surrogate(msg, max_depth, check_strings or check_nul)
    if bad is not None:
        raise FrameError("FormatViolation", message_id, f"payload contains {bad}",
                         answer=type_id == 2)
    return frame


def _typed(msg: list[Any], type_id: int, message_id: str) -> Frame:
    answer = type_id == 2  # only a CALL is answered with a CALLERROR
    if type_id in (2, 6):
        if len(msg) != 4 or not isinstance(msg[2], str) or not isinstance(msg[3], dict):
            raise FrameError("RpcFrameworkError", message_id,
                             "expected [MessageTypeId, messageId, action, {payload}]",
                             answer=answer)
        cls = Call if type_id == 2 else Send
        return cls(message_id, msg[2], msg[3])
    if type_id == 3:
        if len(msg) != 3 or not isinstance(msg[2], dict):
            raise FrameError("RpcFrameworkError", message_id,
                             "expected [3, messageId, {payload}]", answer=False)
        return CallResult(message_id, msg[2])
    if len(msg) != 5 or not isinstance(msg[2], str) or not isinstance(msg[3], str) \
            or not isinstance(msg[4], dict):
        raise FrameError("RpcFrameworkError", message_id,
                         f"expected [{type_id}, messageId, errorCode, errorDescription, "
                         "{details}]", answer=False)
    err_cls = CallError if type_id == 4 else CallResultError
    return err_cls(message_id, msg[2], msg[3], msg[4])


def encode_call_error(message_id: str, code: str, description: str,
                      details: dict[str, Any] | None = None) -> str:
    """A CALLERROR frame; the description is cut to 255 characters (OCPP-J's limit)."""
    return json.dumps([4, message_id, code, description[:255], details or {}],
                      separators=(",", ":"))
