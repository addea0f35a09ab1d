"""An in-process pipe with a websocket connection's face (``recv``, ``send``, ``close``).

The OCPP shells on both sides only need an object whose ``recv()`` returns the
next text frame and whose ``send()`` delivers one; :func:`memory_pair` gives two
such ends joined back to back. Frames are delivered whole and in order, like a
websocket's messages; ``close()`` on either end ends both, and a ``recv`` that
waits, or comes later, raises :class:`MemoryClosed` (a ConnectionError, as a
closed websocket raises ConnectionClosed).

What it does not do, by design: no HTTP upgrade, so no subprotocol negotiation
(the caller picks the OCPP version for both ends), no Basic auth or TLS (both
ends are in one process), no frame size limit or compression.
"""

from __future__ import annotations

import asyncio
from collections import deque


class MemoryClosed(ConnectionError):
    """The pipe was closed (by either end)."""


class MemoryConnection:
    """One end of an in-memory pipe (see :func:`memory_pair`)."""

    def __init__(self, name: str, subprotocol: str) -> None:
        self.name = name
        #: The OCPP subprotocol both ends speak (``ocpp2.0.1``, ...), as a
        #: websocket connection reports the one it negotiated.
        self.subprotocol = subprotocol
        self.remote_address: tuple[str, int] = ("memory", 0)
        self.peer: MemoryConnection | None = None
        self._inbox: deque[str | bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        #: Frames sent from this end.
        self.sent = 0

    async def recv(self) -> str | bytes:
        """The next frame from the other end; MemoryClosed once the pipe is closed."""
        if self._waiter is not None:
            raise RuntimeError(f"{self.name}: another coroutine is already waiting in recv()")
        while not self._inbox:
            if self.closed:
                raise MemoryClosed(f"{self.name}: closed ({self.close_code} {self.close_reason})")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._inbox.popleft()

    async def send(self, message: str | bytes) -> None:
        """Deliver one frame to the other end (in order, whole)."""
        peer = self.peer
        if self.closed or peer is None:
            raise MemoryClosed(f"{self.name}: closed ({self.close_code} {self.close_reason})")
        if not isinstance(message, str):
            # A websocket carries binary frames too; OCPP-J refuses them, as it
            # would over a socket: pass them on for the receiver to judge.
            message = bytes(message)
        self.sent += 1
        peer._deliver(message)

    def _deliver(self, message: str | bytes) -> None:
        self._inbox.append(message)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close both ends. As on a websocket, the frames delivered before the close
        are still read; the ``recv`` after them raises MemoryClosed."""
        for end in (self, self.peer):
            if end is not None and not end.closed:
                end.closed = True
                end.close_code = code
                end.close_reason = reason
                end._wake()

    async def wait_closed(self) -> None:
        """Return at once (closing is immediate)."""

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<MemoryConnection {self.name} {self.subprotocol}{state}>"


def memory_pair(name: str, subprotocol: str) -> tuple[MemoryConnection, MemoryConnection]:
    """Two joined ends: (station side, CSMS side), both speaking ``subprotocol``."""
    station = MemoryConnection(f"{name}/station", subprotocol)
    csms = MemoryConnection(f"{name}/csms", subprotocol)
    station.peer, csms.peer = csms, station
    return station, csms

