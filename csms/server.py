"""The CSMS's websocket server: accepts stations and runs the control cycle.

One task per connection; the server keeps strong references to them. Unknown
station identities and connections without a supported OCPP subprotocol are
refused at the HTTP upgrade, before any OCPP message is processed.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .clock import iso
from .core import CSMSCore
from .exceptions import StationNotConnectedError
from .ocpp16 import CSMS16
from .ocpp201 import CSMS21, CSMS201
from .shell import ShellBase

log = logging.getLogger("evtwin.csms.server")

#: Websocket subprotocol -> the shell that speaks it, in the server's order of preference.
SHELLS: dict[str, type[ShellBase]] = {"ocpp2.1": CSMS21, "ocpp2.0.1": CSMS201, "ocpp1.6": CSMS16}
SUBPROTOCOLS = tuple(SHELLS)
# OCPP-J: identity is the last path segment, at most 48 characters, no ':'.
_IDENTITY = re.compile(r"^[^:/]{1,48}$")


class CountingConnection:
    """Wraps a connection and counts OCPP frames in each direction."""

    def __init__(self, conn: Any, counter: dict[str, int]) -> None:
        self._conn = conn
        self._counter = counter

    async def recv(self) -> Any:
        """Receive one frame."""
        msg = await self._conn.recv()
        self._counter["in"] += 1
        return msg

    async def send(self, msg: Any) -> None:
        """Send one frame."""
        self._counter["out"] += 1
        await self._conn.send(msg)


def _refuse(status: http.HTTPStatus, reason: str) -> Response:
    body = f"{reason}\n".encode()
    headers = Headers([("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


class CSMSServer:
    """Serve :class:`CSMSCore` over OCPP-J websockets.

    ``max_frame_bytes`` caps incoming frames; ``response_timeout_s`` bounds
    every CSMS-initiated call.
    """

    def __init__(self, core: CSMSCore, *, host: str = "127.0.0.1", port: int = 0,
                 max_frame_bytes: int = 2**16, response_timeout_s: float = 30.0) -> None:
        self.core = core
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self.response_timeout_s = response_timeout_s
        self.frames = {"in": 0, "out": 0}
        self.connections: dict[str, ShellBase] = {}
        self._sockets: dict[str, ServerConnection] = {}
        self._sockets_by_cp: dict[int, ServerConnection] = {}
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """The ws:// base URL stations connect to (append the identity)."""
        return f"ws://{self.host}:{self.port}/ocpp"

    def _identity(self, path: str) -> str:
        return path.rstrip("/").rsplit("/", 1)[-1]

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        identity = self._identity(request.path)
        peer = str(connection.remote_address)
        if not _IDENTITY.match(identity):
            self._security_event(peer, "bad_identity", f"identity {identity!r} is not valid")
            return _refuse(http.HTTPStatus.BAD_REQUEST, "invalid station identity")
        if not self.core.knows(identity):
            self._security_event(peer, "unknown_station", f"unknown station {identity!r}")
            return _refuse(http.HTTPStatus.NOT_FOUND, f"unknown station {identity}")
        offered = request.headers.get_all("Sec-WebSocket-Protocol")
        names = {p.strip() for h in offered for p in h.split(",")}
        if not names & set(SUBPROTOCOLS):
            self._security_event(peer, "no_subprotocol", f"{identity} offered {sorted(names)}")
            return _refuse(http.HTTPStatus.BAD_REQUEST,
                           f"no supported OCPP subprotocol; supported: {', '.join(SUBPROTOCOLS)}")
        return None

    def _security_event(self, peer: str, kind: str, detail: str) -> None:
        log.warning("refused connection from %s: %s", peer, detail,
                    extra={"event": "refused", "peer": peer, "kind": kind})
        self.core.store.record_security_event(iso(self.core.clock()), peer, kind, detail)

    async def _handler(self, connection: ServerConnection) -> None:
        identity = self._identity(connection.request.path if connection.request else "")
        shell = SHELLS[connection.subprotocol or "ocpp2.0.1"]
        log.info("%s connected (%s)", identity, connection.subprotocol,
                 extra={"event": "connected", "station": identity,
                        "protocol": connection.subprotocol,
                        "peer": str(connection.remote_address)})
        cp = shell(identity, CountingConnection(connection, self.frames),  # type: ignore[call-arg]
                   self.core, response_timeout=self.response_timeout_s)
        previous = self.connections.get(identity)
        self.connections[identity] = cp
        self._sockets[identity] = connection
        if previous is not None:
            # The newest connection wins (a station that lost its link and came
            # back); the stale one is closed so no one answers on it.
            log.info("%s reconnected; closing the old connection", identity)
            old = self._sockets_by_cp.pop(id(previous), None)
            if old is not None:
                await old.close(code=1000, reason="replaced by a new connection")
        self._sockets_by_cp[id(cp)] = connection
        try:
            await cp.start()  # type: ignore[attr-defined]
        except Exception as exc:
            log.info("%s disconnected: %s", identity, exc,
                     extra={"event": "disconnected", "station": identity})
        finally:
            self._sockets_by_cp.pop(id(cp), None)
            if self.connections.get(identity) is cp:
                del self.connections[identity]
                self._sockets.pop(identity, None)

    async def start(self) -> None:
        """Bind and start accepting stations (port 0 picks a free port)."""
        self._server = await serve(
            self._handler, self.host, self.port,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            process_request=self._process_request,
            max_size=self.max_frame_bytes,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> CSMSServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def control_cycle(self) -> int:
        """Run the strategy once and send the changed limits; return how many were sent.

        Calls to different stations run concurrently; calls to one station go
        one after another (OCPP-J allows one outstanding CALL per connection).
        """
        by_station: dict[str, list[Any]] = {}
        for cmd in self.core.control_commands():
            by_station.setdefault(cmd.station_id, []).append(cmd)

        async def send_all(station_id: str, cmds: list[Any]) -> int:
            cp = self.connections.get(station_id)
            if cp is None:
                # Keep serving everyone else; the limit is re-sent next cycle
                # because it was never recorded as accepted.
                log.warning("%s", StationNotConnectedError(station_id))
                return 0
            for cmd in cmds:
                await cp.send_limit(cmd)
            return len(cmds)

        results = await asyncio.gather(*(send_all(s, c) for s, c in by_station.items()))
        return sum(results)
