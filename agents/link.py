"""Thin transports that drive a station's :class:`~evtwin.agents.protocol.StationProtocol`.

- :class:`EndpointLink`: OCPP-J over any connection with async ``recv``/``send``
  (a websocket, or an in-memory pipe): every message encoded for the station's
  version (:mod:`evtwin.agents.wire`), framed, numbered and validated both ways
  by the Sans-I/O :class:`~evtwin.ocppj.Endpoint`, answers matched and timed
  out there.
- :class:`DirectLink`: the neutral messages handed to a CSMS's direct port as
  they are (no wire form, no JSON), the answer taken back at once.

Both offer what the runner needs: :meth:`StationLink.boot` and
:meth:`StationLink.flush` return once every exchange they started is answered
(the barrier that keeps virtual time honest).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from evtwin.ocppj import (
    CallReceived,
    Endpoint,
    ErrorReceived,
    Refused,
    ResultErrorReceived,
    ResultInvalid,
    ResultReceived,
    TimedOut,
)
from evtwin.ocppj import domain as d

from .exceptions import ProtocolError
from .protocol import StationProtocol
from .station import VirtualStation
from .wire import codec

log = logging.getLogger("evtwin.agents.link")


class StationLink(ABC):
    """A station's protocol and the way its messages reach a CSMS."""

    def __init__(self, protocol: StationProtocol) -> None:
        self.protocol = protocol

    @property
    def station(self) -> VirtualStation:
        return self.protocol.station

    @property
    def heartbeat_interval_s(self) -> float:
        return self.protocol.heartbeat_interval_s

    @property
    def received_profiles(self) -> list[dict[str, Any]]:
        return self.protocol.received_profiles

    async def boot(self) -> None:
        """BootNotification and every EVSE's status; returns when all are answered."""
        self.protocol.boot()
        await self._drain()

    async def flush_events(self, now_s: float) -> None:
        """Tell the CSMS about plug-ins and departures queued so far, in order."""
        self.protocol.queue_events(now_s)
        await self._drain()

    async def flush(self, now_s: float, *, sample: bool, aligned: bool, heartbeat: bool) -> None:
        """Send everything due at ``now_s`` and wait for every answer."""
        self.protocol.queue_due(now_s, sample=sample, aligned=aligned, heartbeat=heartbeat)
        await self._drain()

    @abstractmethod
    async def _drain(self) -> None:
        """Exchange everything the protocol has queued; return when all is answered."""

    async def close(self) -> None:
        """Let go of the connection (nothing to do for a direct link)."""
        return None


class DirectLink(StationLink):
    """Hand the station's messages to ``port`` (a CSMS's direct entry for this station),
    which returns the answer or raises :class:`~evtwin.ocppj.domain.Refusal`."""

    def __init__(self, protocol: StationProtocol,
                 port: Callable[[d.StationMessage], Any]) -> None:
        super().__init__(protocol)
        self.port = port

    def drain(self) -> None:
        """Exchange every queued message now (synchronously)."""
        protocol = self.protocol
        port = self.port
        while (message := protocol.next_message()) is not None:
            try:
                answer = port(message)
            except d.Refusal as exc:
                protocol.on_refused(exc.code, exc.description)
            else:
                protocol.on_answer(answer)

    async def _drain(self) -> None:
        self.drain()

    def handle(self, request: d.CSMSRequest) -> d.StationAnswer:
        """What the CSMS asks of this station (its direct shell calls this)."""
        return self.protocol.handle(request)


class EndpointLink(StationLink):
    """Run the protocol over OCPP-J on ``connection`` (async ``recv``/``send``/``close``).

    :meth:`run` is the receive loop (a task); ``response_timeout_s`` bounds every
    call. A CALLERROR to a transaction message, an answer that fails its schema,
    a timeout or a closed connection fails the flush that waits for it
    (:class:`ProtocolError`, or the connection's own exception).
    """

    def __init__(self, protocol: StationProtocol, connection: Any, *,
                 response_timeout_s: float = 30.0) -> None:
        super().__init__(protocol)
        self.connection = connection
        self.codec = codec(protocol.version)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.endpoint = Endpoint(protocol.version, clock=loop.time,
                                 response_timeout_s=response_timeout_s)
        self._waiter: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: False while the station is off the air (see :meth:`drop`).
        self.connected = True

    # ------------------------------------------------------------------ driving

    async def _drain(self) -> None:
        if self._failure is not None:
            raise self._failure
        if not self.connected or self.station.offline:
            return  # off the air: the protocol keeps its messages until it is back
        self._pump()
        await self._write()
        if self.protocol.idle or self._failure is not None:
            if self._failure is not None:
                raise self._failure
            return
        if self._waiter is not None:
            raise RuntimeError(f"{self.station.station_id}: a flush is already waiting")
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _pump(self) -> None:
        """Hand the endpoint the next message if none is in flight; wake the waiter when idle."""
        protocol = self.protocol
        endpoint = self.endpoint
        if self._failure is not None:
            return  # the exchange cannot go on: nothing more is sent
        try:
            if endpoint.pending is None:
                message = protocol.next_message()
                if message is not None:
                    action, payload = self.codec.encode(message)
                    endpoint.call(action, payload, context=message)
                    self._arm_timer()
        except Exception as exc:  # a bug in our own payload, or a continuation's refusal
            self._fail(exc)
            return
        if protocol.idle and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _arm_timer(self) -> None:
        deadline = self.endpoint.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        for event in self.endpoint.expire():
            if isinstance(event, TimedOut):
                self._fail(ProtocolError(
                    f"{self.station.station_id}: no answer to {event.call.action} within "
                    f"{self.endpoint.response_timeout_s:g} s"))
        self._arm_timer()

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def _write(self) -> None:
        frames = self.endpoint.data_to_send()
        send = self.connection.send
        for frame in frames:
            await send(frame)

    # ------------------------------------------------------------------ receiving

    async def run(self) -> None:
        """Read frames until the connection closes (then the waiting flush fails too,
        unless the station dropped it itself: :meth:`drop`)."""
        connection = self.connection
        recv = connection.recv
        try:
            while True:
                raw = await recv()
                for event in self.endpoint.receive(raw):
                    self._on_event(event)
                self._pump()
                await self._write()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.connected or connection is not self.connection:
                return  # dropped on purpose (the modem failed): not a failure
            self._fail(exc)
            raise

    # ------------------------------------------------------------------ off the air

    async def drop(self) -> None:
        """The station's connection goes down (a failed modem): closed from its side;
        nothing more is sent until :meth:`resume` (the protocol keeps what it has to say)."""
        if not self.connected:
            return
        self.connected = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.connection.close()

    def resume(self, connection: Any) -> asyncio.Task[None]:
        """Back on the air over a new ``connection`` (no reboot, so no BootNotification:
        what the station kept goes out in order); returns the new receive loop's task."""
        self.connection = connection
        self.endpoint = Endpoint(self.protocol.version, clock=self._loop.time,
                                 response_timeout_s=self.endpoint.response_timeout_s)
        self._failure = None
        self.connected = True
        return asyncio.create_task(self.run())

    def _on_event(self, event: Any) -> None:
        protocol = self.protocol
        try:
            if isinstance(event, ResultReceived):
                answer = self.codec.decode_answer(event.call.context, event.payload)
                self._arm_timer()
                protocol.on_answer(answer)
            elif isinstance(event, CallReceived):
                self._answer(event)
            elif isinstance(event, ErrorReceived):
                self._arm_timer()
                protocol.on_refused(event.code, event.description)
            elif isinstance(event, ResultInvalid):
                self._arm_timer()
                protocol.on_refused(event.violation.code,
                                    f"{event.call.action} answer: {event.violation}")
            elif isinstance(event, Refused | ResultErrorReceived):
                log.warning("%s: the CSMS sent a frame that was refused: %s",
                            self.station.station_id, event)
        except Exception as exc:
            self._fail(exc)

    def _answer(self, event: CallReceived) -> None:
        if event.action not in self.codec.requests:
            self.endpoint.reply_error(event.message_id, "NotSupported",
                                      f"{event.action} is not supported by this station")
            return
        try:
            request = self.codec.decode_request(event.action, event.payload)
            payload = self.codec.encode_answer(self.protocol.handle(request))
        except Exception as exc:  # our bug: answered, logged, and the station goes on
            log.error("%s: %s failed: %s: %.200s", self.station.station_id, event.action,
                      type(exc).__name__, exc)
            self.endpoint.reply_error(event.message_id, "InternalError",
                                      f"{event.action} could not be processed")
            return
        self.endpoint.reply(event.message_id, payload)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await self.connection.close()
