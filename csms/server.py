"""The CSMS's websocket server: accepts stations and runs the control cycle.

One task per connection; the server keeps strong references to them. Unknown
station identities, failed authentication (security profiles 1-3, see
:mod:`evtwin.csms.security`) and connections without a supported OCPP
subprotocol are refused at the HTTP upgrade, before any OCPP message is
processed; TLS handshakes that fail (profiles 2 and 3) never reach HTTP.
Every refusal is logged and recorded as a security event.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.headers import build_www_authenticate_basic, parse_authorization_basic
from websockets.http11 import Request, Response

from .clock import iso
from .core import CSMSCore
from .exceptions import StationNotConnectedError
from .ocpp16 import CSMS16
from .ocpp201 import CSMS21, CSMS201
from .security import (
    PASSWORD_MAX_CHARS,
    PASSWORD_MIN_CHARS,
    SecurityConfig,
    certificate_common_names,
    describe_ssl_error,
    password_length_ok,
    verify_password,
)
from .shell import ShellBase

log = logging.getLogger("evtwin.csms.server")

#: Websocket subprotocol -> the shell that speaks it, in the server's order of preference.
SHELLS: dict[str, type[CSMS16 | CSMS201 | CSMS21]] = {
    "ocpp2.1": CSMS21, "ocpp2.0.1": CSMS201, "ocpp1.6": CSMS16}
SUBPROTOCOLS = tuple(SHELLS)
# OCPP-J: identity is the last path segment, at most 48 characters, no ':'.
_IDENTITY = re.compile(r"^[^:/]{1,48}$")
#: Realm of the Basic auth challenge (profiles 1 and 2).
REALM = "evtwin"


class FloodError(ConnectionError):
    """A station sent frames faster than its rate limit allows."""


class CountingConnection:
    """Wraps a connection, counts OCPP frames and (optionally) limits the inbound rate.

    The limit is a token bucket: ``burst`` frames at once, refilled at
    ``rate_per_s``. A station that empties it gets FloodError from ``recv``
    (its connection is then closed) instead of the CSMS's undivided attention.
    """

    def __init__(self, conn: Any, counter: dict[str, int], *, rate_per_s: float | None = None,
                 burst: float = 200.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._conn = conn
        self._counter = counter
        self._rate = rate_per_s
        self._burst = burst
        self._tokens = burst
        self._monotonic = monotonic
        self._last = monotonic()

    async def recv(self) -> Any:
        """Receive one frame."""
        msg = await self._conn.recv()
        self._counter["in"] += 1
        if self._rate is not None:
            now = self._monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens < 1.0:
                raise FloodError(f"more than {self._rate:g} frames/s (burst {self._burst:g})")
            self._tokens -= 1.0
        return msg

    async def send(self, msg: Any) -> None:
        """Send one frame."""
        self._counter["out"] += 1
        await self._conn.send(msg)


def _refuse(status: http.HTTPStatus, reason: str) -> Response:
    body = f"{reason}\n".encode()
    headers = Headers([("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


def _unauthorized(reason: str) -> Response:
    # Every 401 carries the challenge (RFC 7235), whatever was wrong, so a
    # client learns nothing about which check failed.
    response = _refuse(http.HTTPStatus.UNAUTHORIZED, reason)
    response.headers["WWW-Authenticate"] = build_www_authenticate_basic(REALM)
    return response


class CSMSServer:
    """Serve :class:`CSMSCore` over OCPP-J websockets.

    ``max_frame_bytes`` caps incoming frames; ``response_timeout_s`` bounds
    every CSMS-initiated call. ``security`` picks the OCPP security profile
    (default: profile 0, no authentication, plain ``ws://``);
    ``tls_handshake_timeout_s`` bounds the TLS handshake of profiles 2 and 3.
    """

    def __init__(self, core: CSMSCore, *, host: str = "127.0.0.1", port: int = 0,
                 max_frame_bytes: int = 2**16, response_timeout_s: float = 30.0,
                 security: SecurityConfig | None = None,
                 max_frames_per_s: float | None = None, max_frames_burst: float = 200.0,
                 tls_handshake_timeout_s: float = 10.0) -> None:
        self.core = core
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self.response_timeout_s = response_timeout_s
        self.security = security if security is not None else SecurityConfig()
        self.tls_handshake_timeout_s = tls_handshake_timeout_s
        self.frames = {"in": 0, "out": 0}
        # None: no limit (the twin's own stations run faster than any real one).
        self.max_frames_per_s = max_frames_per_s
        self.max_frames_burst = max_frames_burst
        self.connections: dict[str, ShellBase] = {}
        self._sockets: dict[str, ServerConnection] = {}
        self._sockets_by_cp: dict[int, ServerConnection] = {}
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """The ws:// (wss:// with TLS) base URL stations connect to (append the identity)."""
        scheme = "wss" if self.security.tls else "ws"
        return f"{scheme}://{self.host}:{self.port}/ocpp"

    def _identity(self, path: str) -> str:
        return path.rstrip("/").rsplit("/", 1)[-1]

    async def _process_request(self, connection: ServerConnection,
                               request: Request) -> Response | None:
        identity = self._identity(request.path)
        peer = str(connection.remote_address)
        if not _IDENTITY.match(identity):
            self._security_event(peer, "bad_identity", f"identity {identity!r} is not valid")
            return _refuse(http.HTTPStatus.BAD_REQUEST, "invalid station identity")
        if not self.core.knows(identity):
            self._security_event(peer, "unknown_station", f"unknown station {identity!r}")
            return _refuse(http.HTTPStatus.NOT_FOUND, f"unknown station {identity}")
        if self.security.client_certificates:
            refusal = self._check_certificate(connection, identity, peer)
        elif self.security.basic_auth:
            refusal = await self._check_basic_auth(connection, request, identity, peer)
        else:
            refusal = None
        if refusal is not None:
            return refusal
        offered = request.headers.get_all("Sec-WebSocket-Protocol")
        names = {p.strip() for h in offered for p in h.split(",")}
        if not names & set(SUBPROTOCOLS):
            self._security_event(peer, "no_subprotocol", f"{identity} offered {sorted(names)}")
            return _refuse(http.HTTPStatus.BAD_REQUEST,
                           f"no supported OCPP subprotocol; supported: {', '.join(SUBPROTOCOLS)}")
        return None

    async def _check_basic_auth(self, connection: ServerConnection, request: Request,
                                identity: str, peer: str) -> Response | None:
        """Profiles 1 and 2: Basic credentials naming this station, with its password."""
        headers = request.headers.get_all("Authorization")
        if not headers:
            self._security_event(peer, "auth_missing", f"{identity} sent no credentials")
            return _unauthorized("credentials required")
        try:
            if len(headers) > 1:
                raise InvalidHeader("Authorization", "more than one header")
            username, password = parse_authorization_basic(headers[0])
        except InvalidHeader as exc:
            self._security_event(peer, "auth_malformed", f"{identity}: {exc}")
            return _unauthorized("malformed credentials")
        if username != identity:
            self._security_event(peer, "auth_identity_mismatch",
                                 f"username {username[:48]!r} is not the station "
                                 f"identity {identity!r}")
            return _unauthorized("username must be the station identity")
        if not password_length_ok(password):
            self._security_event(peer, "auth_password_length",
                                 f"{identity} sent a password of {len(password)} characters "
                                 f"({PASSWORD_MIN_CHARS}-{PASSWORD_MAX_CHARS} required)")
            return _unauthorized("invalid credentials")
        encoded = self.security.password_hashes.get(identity)
        if encoded is None:
            self._security_event(peer, "auth_not_provisioned",
                                 f"no password hash is configured for {identity}")
            return _unauthorized("invalid credentials")
        # scrypt takes ~50 ms of CPU by design: keep it off the event loop so
        # other stations' traffic goes on while someone guesses passwords.
        if not await asyncio.to_thread(verify_password, password, encoded):
            self._security_event(peer, "auth_failed", f"wrong password for {identity}")
            return _unauthorized("invalid credentials")
        connection.username = identity
        return None

    def _check_certificate(self, connection: ServerConnection, identity: str,
                           peer: str) -> Response | None:
        """Profile 3: the client certificate (already verified against the CA) names the station.

        Rule: the subject has exactly one CN and it equals the identity in the URL.
        """
        ssl_object = connection.transport.get_extra_info("ssl_object")
        peercert = ssl_object.getpeercert() if ssl_object is not None else None
        if not peercert:  # unreachable with CERT_REQUIRED; kept as a guard
            self._security_event(peer, "cert_missing", f"{identity} presented no certificate")
            return _refuse(http.HTTPStatus.FORBIDDEN, "client certificate required")
        names = certificate_common_names(peercert)
        if names != [identity]:
            self._security_event(peer, "cert_identity_mismatch",
                                 f"certificate CN {names} does not name station {identity!r}")
            return _refuse(http.HTTPStatus.FORBIDDEN,
                           "client certificate does not name this station")
        connection.username = identity
        return None

    def _tls_handshake_failed(self, exc: ssl.SSLError) -> None:
        # The peer's address is not known here (see server_ssl_context).
        self._security_event(None, "tls_handshake_failed", describe_ssl_error(exc))

    def _security_event(self, peer: str | None, kind: str, detail: str) -> None:
        log.warning("refused connection from %s: %s", peer or "an unknown peer", detail,
                    extra={"event": "refused", "peer": peer, "kind": kind})
        self.core.store.record_security_event(iso(self.core.clock()), peer, kind, detail)

    async def _handler(self, connection: ServerConnection) -> None:
        identity = self._identity(connection.request.path if connection.request else "")
        shell = SHELLS[connection.subprotocol or "ocpp2.0.1"]
        log.info("%s connected (%s)", identity, connection.subprotocol,
                 extra={"event": "connected", "station": identity,
                        "protocol": connection.subprotocol,
                        "peer": str(connection.remote_address)})
        counting = CountingConnection(connection, self.frames, rate_per_s=self.max_frames_per_s,
                                      burst=self.max_frames_burst)
        cp = shell(identity, counting,
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
            await cp.start()
        except FloodError as exc:
            self._security_event(str(connection.remote_address), "flood", f"{identity}: {exc}")
            await connection.close(code=1008, reason="rate limit exceeded")
        except Exception as exc:
            log.info("%s disconnected: %s", identity, exc,
                     extra={"event": "disconnected", "station": identity})
        finally:
            self._sockets_by_cp.pop(id(cp), None)
            if self.connections.get(identity) is cp:
                del self.connections[identity]
                self._sockets.pop(identity, None)

    async def start(self) -> None:
        """Bind and start accepting stations (port 0 picks a free port).

        Raises OSError or ssl.SSLError if the TLS files cannot be loaded.
        """
        ssl_context = self.security.ssl_context(on_handshake_error=self._tls_handshake_failed)
        tls: dict[str, Any] = {}
        if ssl_context is not None:
            tls = {"ssl": ssl_context, "ssl_handshake_timeout": self.tls_handshake_timeout_s}
        self._server = await serve(
            self._handler, self.host, self.port,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            process_request=self._process_request,
            max_size=self.max_frame_bytes,
            **tls,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        if self.security.profile == 1:
            log.warning("security profile 1 sends station passwords unencrypted; "
                        "use it only on a trusted network", extra={"event": "insecure"})

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
