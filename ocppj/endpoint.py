"""One side of an OCPP-J connection as a protocol object without I/O.

The design is the websockets library's (``protocol.py``): an :class:`Endpoint`
is fed what arrived (:meth:`Endpoint.receive`, one websocket text message at a
time) and the time (the ``clock`` it was given), and hands back what happened as
typed events and what must be sent as text frames (:meth:`Endpoint.data_to_send`).
It never touches a socket, a loop or a thread, so the same object serves a real
websocket, an in-memory pipe and a test that feeds it frames by hand.

What it does, per OCPP-J (1.6, 2.0.1 and 2.1):

- **Incoming frames** are decoded with bounded work (:func:`.frames.decode_frame`)
  and each payload checked against its action's schema (:mod:`.schemas`). A
  frame that is not valid OCPP-J, a CALL of an action the version does not have
  (NotImplemented) or a payload that fails its schema is answered with the
  CALLERROR the specification names, queued here, and reported as
  :class:`Refused`; nothing reaches the application.
- **Calls it makes** are validated before they leave (a payload our own code
  builds wrong is a bug, raised as :class:`.schemas.SchemaViolation`), numbered
  with ids of its own, and kept pending. OCPP-J allows one outstanding CALL per
  direction, so further calls wait in order and the next goes out when the
  current one is answered or times out (``response_timeout_s`` on ``clock``).
- **Answers** are matched to the pending call by id; one with an unknown id is
  reported and otherwise ignored; a CALLRESULT that fails the response schema
  completes its call as :class:`ResultInvalid` (OCPP 2.1 also answers it with a
  CALLRESULTERROR).

Times come only from ``clock``: a driver calls :meth:`Endpoint.expire` at
:meth:`Endpoint.next_deadline` (a real loop's timer, or a simulation's virtual
time).
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import wire_code
from .frames import (
    Call,
    CallError,
    CallResult,
    CallResultError,
    FrameError,
    Send,
    decode_frame,
    encode_call_error,
)
from .schemas import SchemaViolation, has_schema, validate

VERSIONS = ("1.6", "2.0.1", "2.1")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# --------------------------------------------------------------------------- events


@dataclass(slots=True, eq=False)
class OutgoingCall:
    """A CALL this endpoint makes: queued, then sent and pending until answered.

    ``context`` is the caller's own (the endpoint never looks at it): whatever
    the application needs to continue when the answer comes.
    """

    message_id: str
    action: str
    payload: dict[str, Any]
    context: Any = None
    sent_at: float | None = None
    deadline: float | None = None
    frame: str = ""
    """The CALL as it goes on the wire (encoded when the call is made)."""


@dataclass(frozen=True, slots=True)
class CallReceived:
    """A valid CALL to answer with :meth:`Endpoint.reply` or :meth:`Endpoint.reply_error`."""

    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SendReceived:
    """A valid OCPP 2.1 SEND (never answered)."""

    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResultReceived:
    """A valid CALLRESULT to one of our calls."""

    call: OutgoingCall
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """A CALLERROR to one of our calls (code as the peer spelled it)."""

    call: OutgoingCall
    code: str
    description: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResultInvalid:
    """A CALLRESULT to one of our calls that fails the response schema."""

    call: OutgoingCall
    payload: Any
    violation: SchemaViolation


@dataclass(frozen=True, slots=True)
class TimedOut:
    """One of our calls got no answer within the response timeout."""

    call: OutgoingCall


@dataclass(frozen=True, slots=True)
class Refused:
    """An incoming frame that was not accepted: ``code`` (2.0.1 spelling), the id
    it carried (``"-1"`` if unreadable) and why; ``answered`` if a CALLERROR (or
    2.1 CALLRESULTERROR) was queued for it."""

    code: str
    message_id: str
    reason: str
    answered: bool
    action: str | None = None


@dataclass(frozen=True, slots=True)
class ResultErrorReceived:
    """OCPP 2.1 CALLRESULTERROR: the peer could not process one of *our* answers."""

    message_id: str
    code: str
    description: str


Event = (CallReceived | SendReceived | ResultReceived | ErrorReceived | ResultInvalid
         | TimedOut | Refused | ResultErrorReceived)


class EndpointClosed(Exception):
    """A call made on an endpoint that was closed."""


# --------------------------------------------------------------------------- endpoint


@dataclass(slots=True)
class _Answering:
    """A received CALL we have not answered yet (its action, for the response schema)."""

    action: str


class Endpoint:
    """One side of an OCPP-J connection for ``version`` ("1.6", "2.0.1", "2.1").

    ``clock`` returns seconds (monotonic; virtual in a simulation).
    ``validate``: check payloads against their schemas both ways (on by
    default; turn it off only to talk to a peer known to be non-conformant).
    ``id_prefix``: message ids are ``f"{id_prefix}{n}"`` with n counting from 1
    (deterministic; OCPP-J only asks for ids unique per sender and connection).
    """

    def __init__(self, version: str, *, clock: Callable[[], float],
                 response_timeout_s: float = 30.0, validate: bool = True,
                 id_prefix: str = "",
                 supported: Callable[[str], bool] | None = None) -> None:
        if version not in VERSIONS:
            raise ValueError(f"unknown OCPP version {version!r} (one of {', '.join(VERSIONS)})")
        if response_timeout_s <= 0:
            raise ValueError(f"response_timeout_s must be positive, got {response_timeout_s}")
        self.version = version
        self.clock = clock
        self.response_timeout_s = response_timeout_s
        self.validate = validate
        self._ids: Iterator[int] = itertools.count(1)
        self._id_prefix = id_prefix
        self._queue: deque[OutgoingCall] = deque()
        self._active: OutgoingCall | None = None
        self._answering: dict[str, _Answering] = {}
        self._out: list[str] = []
        self.closed = False
        #: Which of the version's actions the application handles (None: all). A CALL
        #: of one it does not is answered NotSupported before its payload is checked.
        self.supported = supported

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> list[str]:
        """The text frames to send, in order (and forget them)."""
        out, self._out = self._out, []
        return out

    @property
    def pending(self) -> OutgoingCall | None:
        """The call sent and awaiting its answer, if any."""
        return self._active

    @property
    def queued(self) -> int:
        """Calls waiting for the pending one to finish."""
        return len(self._queue)

    def next_deadline(self) -> float | None:
        """When :meth:`expire` must next be called (None: nothing pending)."""
        return self._active.deadline if self._active is not None else None

    # ------------------------------------------------------------------ our calls

    def call(self, action: str, payload: dict[str, Any], *, context: Any = None
             ) -> OutgoingCall:
        """Queue a CALL; it is sent at once if no other call is pending.

        Raises SchemaViolation if ``payload`` fails the action's request schema,
        LookupError if the version has no such action, EndpointClosed after close.
        """
        if self.closed:
            raise EndpointClosed(f"OCPP {self.version} endpoint is closed")
        if self.validate:
            validate(self.version, action, payload, request=True)
        message_id = f"{self._id_prefix}{next(self._ids)}"
        # Encoded now: a payload JSON cannot carry (NaN, a set) fails here, not
        # later inside another call's receive().
        frame = _dumps([2, message_id, action, payload])
        call = OutgoingCall(message_id, action, payload, context, frame=frame)
        self._queue.append(call)
        if self._active is None:
            self._start_next()
        return call

    def _start_next(self) -> None:
        self._active = None
        if self._queue:
            call = self._queue.popleft()
            now = self.clock()
            call.sent_at = now
            call.deadline = now + self.response_timeout_s
            self._active = call
            self._out.append(call.frame)

    def withdraw(self, call: OutgoingCall) -> bool:
        """Take back a call that has not been sent yet (its caller gave up); True if it
        was. One already sent stays pending until answered or timed out: OCPP-J
        allows no second call before that."""
        try:
            self._queue.remove(call)
        except ValueError:
            return False
        return True

    def send(self, action: str, payload: dict[str, Any]) -> None:
        """An OCPP 2.1 SEND (an unanswered message, e.g. NotifyPeriodicEventStream)."""
        if self.closed:
            raise EndpointClosed(f"OCPP {self.version} endpoint is closed")
        if self.version != "2.1":
            raise ValueError(f"SEND frames are OCPP 2.1; this endpoint speaks {self.version}")
        if self.validate:
            validate(self.version, action, payload, request=True)
        self._out.append(_dumps([6, f"{self._id_prefix}{next(self._ids)}", action, payload]))

    def expire(self) -> list[Event]:
        """Time out the pending call if its deadline has passed (and start the next)."""
        events: list[Event] = []
        while self._active is not None and self._active.deadline is not None \
                and self.clock() >= self._active.deadline:
            events.append(TimedOut(self._active))
            self._start_next()
        return events

    def close(self) -> list[Event]:
        """The connection is gone: every pending and queued call times out now."""
        self.closed = True
        events: list[Event] = []
        if self._active is not None:
            events.append(TimedOut(self._active))
        events.extend(TimedOut(c) for c in self._queue)
        self._active = None
        self._queue.clear()
        self._answering.clear()
        return events

    # ------------------------------------------------------------------ their calls

    def reply(self, message_id: str, payload: dict[str, Any]) -> None:
        """Answer a received CALL with a CALLRESULT.

        Raises SchemaViolation (the answer is not sent) if ``payload`` fails the
        response schema, KeyError for an id that awaits no answer.
        """
        answering = self._answering[message_id]
        if self.validate:
            validate(self.version, answering.action, payload, request=False)
        frame = _dumps([3, message_id, payload])  # may fail (NaN): still answerable then
        del self._answering[message_id]
        self._out.append(frame)

    def reply_error(self, message_id: str, code: str, description: str = "",
                    details: dict[str, Any] | None = None) -> None:
        """Answer a received CALL with a CALLERROR; ``code`` in 2.0.1 spelling
        (converted for 1.6, e.g. FormatViolation -> FormationViolation). KeyError
        for an id that awaits no answer (answered already, or never received)."""
        del self._answering[message_id]
        self._out.append(encode_call_error(message_id, wire_code(self.version, code),
                                           description[:255], details))

    def awaiting_reply(self) -> list[str]:
        """Ids of received CALLs not answered yet."""
        return list(self._answering)

    # ------------------------------------------------------------------ input

    def receive(self, raw: str | bytes) -> list[Event]:
        """Take one websocket message; return what it means (often one event)."""
        try:
            frame = decode_frame(raw, version=self.version)
        except FrameError as exc:
            if exc.answer:
                self._out.append(encode_call_error(
                    exc.message_id, wire_code(self.version, exc.code), exc.description[:255]))
            return [Refused(exc.code, exc.message_id, exc.description, exc.answer)]
        if isinstance(frame, Call):
            return [self._on_call(frame)]
        if isinstance(frame, CallResult):
            return self._on_result(frame)
        if isinstance(frame, CallError):
            return self._on_error(frame)
        if isinstance(frame, Send):
            return [self._on_send(frame)]
        assert isinstance(frame, CallResultError)
        return [ResultErrorReceived(frame.message_id, frame.code, frame.description)]

    def _on_call(self, frame: Call) -> Event:
        if not has_schema(self.version, frame.action, request=True):
            return self._refuse_call(frame, "NotImplemented",
                                     f"OCPP {self.version} has no action {frame.action!r}")
        if self.supported is not None and not self.supported(frame.action):
            return self._refuse_call(frame, "NotSupported",
                                     f"{frame.action} is not supported here")
        if frame.message_id in self._answering:
            # OCPP-J: ids are unique per sender; a second CALL with the id of one
            # still unanswered cannot be told apart from it.
            return self._refuse_call(frame, "GenericError",
                                     f"message id {frame.message_id!r} is already in use")
        if self.validate:
            try:
                validate(self.version, frame.action, frame.payload, request=True)
            except SchemaViolation as exc:
                return self._refuse_call(frame, exc.code, str(exc))
        self._answering[frame.message_id] = _Answering(frame.action)
        return CallReceived(frame.message_id, frame.action, frame.payload)

    def _refuse_call(self, frame: Call, code: str, reason: str) -> Refused:
        self._out.append(encode_call_error(frame.message_id, wire_code(self.version, code),
                                           reason[:255]))
        return Refused(code, frame.message_id, reason, True, frame.action)

    def _on_send(self, frame: Send) -> Event:
        if not has_schema(self.version, frame.action, request=True):
            return Refused("NotImplemented", frame.message_id,
                           f"OCPP {self.version} has no action {frame.action!r}", False,
                           frame.action)
        if self.validate:
            try:
                validate(self.version, frame.action, frame.payload, request=True)
            except (SchemaViolation, LookupError) as exc:
                # A SEND is never answered, not even with an error.
                return Refused(getattr(exc, "code", "NotImplemented"), frame.message_id,
                               str(exc), False, frame.action)
        return SendReceived(frame.action, frame.payload)

    def _match(self, message_id: str, what: str) -> OutgoingCall | Refused:
        call = self._active
        if call is None or call.message_id != message_id:
            return Refused("GenericError", message_id,
                           f"{what} for message id {message_id!r}, which is not pending", False)
        return call

    def _on_result(self, frame: CallResult) -> list[Event]:
        call = self._match(frame.message_id, "CALLRESULT")
        if isinstance(call, Refused):
            return [call]
        self._start_next()
        if self.validate:
            try:
                validate(self.version, call.action, frame.payload, request=False)
            except SchemaViolation as exc:
                if self.version == "2.1":
                    self._out.append(_dumps([5, frame.message_id, exc.code,
                                             str(exc)[:255], {}]))
                return [ResultInvalid(call, frame.payload, exc)]
        return [ResultReceived(call, frame.payload)]

    def _on_error(self, frame: CallError) -> list[Event]:
        call = self._match(frame.message_id, "CALLERROR")
        if isinstance(call, Refused):
            return [call]
        self._start_next()
        return [ErrorReceived(call, frame.code, frame.description, frame.details)]


@dataclass
class Pipe:
    """Two endpoints joined back to back: every frame one sends, the other receives.

    For tests and the in-memory transport: :meth:`flush` moves frames until both
    sides are quiet and returns the events each side saw, in order.
    """

    a: Endpoint
    b: Endpoint
    frames: int = field(default=0)

    def flush(self) -> tuple[list[Event], list[Event]]:
        seen_a: list[Event] = []
        seen_b: list[Event] = []
        while True:
            out_a, out_b = self.a.data_to_send(), self.b.data_to_send()
            if not out_a and not out_b:
                return seen_a, seen_b
            for text in out_a:
                self.frames += 1
                seen_b.extend(self.b.receive(text))
            for text in out_b:
                self.frames += 1
                seen_a.extend(self.a.receive(text))
