"""The CSMS's websocket server: accepts stations and runs the control cycle.

One task per connection; the server keeps strong references to them. Unknown
station identities, failed authentication (security profiles 1-3, see
:mod:`evtwin.csms.security`) and connections without a supported OCPP
subprotocol are refused at the HTTP upgrade, before any OCPP message is
processed; TLS handshakes that fail (profiles 2 and 3) never reach HTTP.

Refusals are recorded through :class:`~evtwin.csms.audit.SecurityAudit`
(bounded detail, rate-limited per peer and kind) and counted by a
:class:`~evtwin.csms.audit.FailureThrottle`: a peer with too many failures
gets HTTP 429 without any slow work until its window ends, while a request
whose credentials check out cheaply still gets in (stations behind one NAT
address must not lock each other out). With Basic auth an unknown station
gets the same 401 as a wrong password, so station identities cannot be
enumerated. Nothing derived from the Authorization header but the username
is ever logged or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http
import logging
import math
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.headers import build_www_authenticate_basic, parse_authorization_basic
from websockets.http11 import Request, Response

from .audit import FailureThrottle, SecurityAudit, auth_scheme, peer_host, safe_identity
from .core import CSMSCore, ProfileCommand
from .direct import DirectShell
from .exceptions import ConfigError, StationNotConnectedError
from .ocpp16 import CSMS16
from .ocpp201 import CSMS21, CSMS201
from .security import (
    PASSWORD_MAX_CHARS,
    PASSWORD_MIN_CHARS,
    PasswordVerifier,
    SecurityConfig,
    VerifierBusy,
    certificate_common_names,
    describe_ssl_error,
    hash_password,
    is_legacy_hash,
    password_length_ok,
    verify_password,
)
from .shell import CallStats, ShellBase

if TYPE_CHECKING:
    from .feeder import FeederMonitor

log = logging.getLogger("evtwin.csms.server")

#: Websocket subprotocol -> the shell that speaks it, in the server's order of preference.
SHELLS: dict[str, type[CSMS16 | CSMS201 | CSMS21]] = {
    "ocpp2.1": CSMS21, "ocpp2.0.1": CSMS201, "ocpp1.6": CSMS16}
SUBPROTOCOLS = tuple(SHELLS)
# OCPP-J: identity is the last path segment, at most 48 characters, no ':'.
_IDENTITY = re.compile(r"^[^:/\x00-\x1f\x7f]{1,48}$")
#: The path stations connect under: ``/ocpp/<identity>``.
PATH_PREFIX = "/ocpp"


def station_identity(path: str) -> tuple[str, str | None]:
    """The station identity of an upgrade's request path, and what is wrong with it.

    OCPP-J appends the identity to the CSMS's URL as one path segment, URL-encoded
    where it needs it: the identity is that segment percent-decoded (``CS%231`` is
    ``CS#1``); a query string is not part of it. The problem is ``"bad_path"`` when
    the path is not ``/ocpp/<identity>``, ``"bad_identity"`` when the identity is not
    one OCPP-J allows (or not UTF-8 once decoded), else None.
    """
    raw = path.split("?", 1)[0]
    prefix, _, segment = raw.rstrip("/").rpartition("/")
    try:
        identity = urllib.parse.unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return segment, "bad_identity"
    if not _IDENTITY.match(identity):
        return identity, "bad_identity"
    if prefix != PATH_PREFIX:
        return identity, "bad_path"
    return identity, None


def check_port(port: int, field: str = "port") -> None:
    """ConfigError naming ``field`` unless ``port`` is a TCP port (0 picks a free one)."""
    if not 0 <= port <= 65535:
        raise ConfigError(field, f"{port} is not a port; give 1 to 65535, or 0 for a free one")


def listen_error(exc: OSError, host: str, port: int, *, what: str = "the CSMS",
                 host_field: str = "host", port_field: str = "port") -> ConfigError:
    """The ConfigError for a socket that cannot be bound: names the address and port
    (the field at fault: ``host_field`` or ``port_field``) and what to do."""
    address = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return ConfigError(host_field, f"{what} cannot listen on {host!r}: not an address of "
                                       f"this machine nor a host name it knows "
                                       f"({exc.strerror}); give an IP address, e.g. "
                                       "127.0.0.1 or 0.0.0.0")
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(port_field, f"{what} cannot listen on {address}: the port is in use "
                                       "(another csms serve?); stop that process or choose "
                                       "another port (0 picks a free one)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(host_field, f"{what} cannot listen on {address}: {host} is not an "
                                       "address of this machine; give one of its addresses, "
                                       "127.0.0.1 or 0.0.0.0")
    if exc.errno == errno.EACCES:
        return ConfigError(port_field, f"{what} cannot listen on {address}: permission denied "
                                       "(ports below 1024 need privileges); choose a port "
                                       "from 1024 up")
    return ConfigError(port_field, f"{what} cannot listen on {address}: "
                                   f"{exc.strerror or exc}")


#: Realm of the Basic auth challenge (profiles 1 and 2).
REALM = "evtwin"
# Checked against for unknown stations so that their refusal costs what a
# wrong password costs (an HMAC): no timing difference to enumerate by.
_DUMMY_HASH = hash_password("x" * 40)
# Headers websockets' debug log must never show.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


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


def _retry_later(status: http.HTTPStatus, reason: str, retry_after_s: float) -> Response:
    response = _refuse(status, reason)
    response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return response


@dataclass(frozen=True)
class _Refusal:
    """Why an upgrade is refused: event kind, bounded detail, the answer, and whether
    it counts as a failed attempt for throttling."""

    kind: str
    detail: str
    response: Response
    counts: bool = True


class _RedactingLogger(logging.LoggerAdapter):
    """websockets' connection logger with secret request headers blanked out.

    At DEBUG websockets logs every request header, Authorization (base64
    credentials) included; this adapter replaces those values and cuts long
    arguments (an 8 KB path) before they reach any handler.
    """

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log with secret header values replaced by ``[redacted]``."""
        if not self.isEnabledFor(level):
            return
        if (args and msg in ("< %s: %s", "> %s: %s")
                and str(args[0]).lower() in _SECRET_HEADERS):
            args = (args[0], "[redacted]", *args[2:])
        args = tuple(a[:200] + "..." if isinstance(a, str) and len(a) > 200 else a
                     for a in args)
        self.logger.log(level, msg, *args, **kwargs)


class _AuditedConnection(ServerConnection):
    """A server connection that reports an opening handshake cut off by ``open_timeout``.

    websockets applies ``open_timeout`` by cancelling :meth:`handshake` and
    then drops the connection silently; ``serve(create_connection=...)`` is
    its documented hook for subclasses, and this one tells the CSMS first.
    """

    csms: CSMSServer | None = None

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        """Run the opening handshake; report it to the CSMS if it times out."""
        try:
            await super().handshake(*args, **kwargs)
        except asyncio.CancelledError:
            # Cancelled while the server still serves: websockets' open_timeout.
            if self.csms is not None and self.server.is_serving():
                self.csms._handshake_timed_out(self)
            raise


class CSMSServer:
    """Serve :class:`CSMSCore` over OCPP-J websockets.

    ``max_frame_bytes`` caps incoming frames; ``response_timeout_s`` bounds
    every CSMS-initiated call. ``security`` picks the OCPP security profile
    (default: profile 0, no authentication, plain ``ws://``);
    ``tls_handshake_timeout_s`` bounds the TLS handshake of profiles 2 and 3
    and ``open_timeout_s`` the HTTP upgrade. ``backlog`` is the listen queue:
    a restart is a reconnect storm, and the kernel drops connection attempts
    beyond the queue (clients then retry only after 1, 3, 7 s).

    Abuse limits (see :mod:`evtwin.csms.audit`): ``auth_failures_per_peer``
    and ``auth_failures_per_identity`` failed handshakes per
    ``auth_failure_window_s`` before a peer is throttled (0: no limit);
    ``security_events_per_minute`` events stored and logged per (peer, kind)
    and ``security_events_total_per_minute`` in all. ``scrypt_workers`` and
    ``scrypt_queue`` bound legacy scrypt password checks.
    ``replaced_close_timeout_s`` is how long the closing handshake of a
    connection replaced by a reconnect may take before its socket is dropped
    (it never delays the new connection).

    ``ping_interval_s`` is how often the server pings every connection and
    ``ping_timeout_s`` how long a pong may take before the connection is
    considered lost (None: no pings / no timeout); websockets' defaults, 20 s
    each. Pings are the CSMS's only way to notice a station whose link died
    without a TCP reset (OCPP heartbeats only tell the station about the CSMS):
    a longer interval costs fewer frames (at 10,000 stations 20 s is 500 pings a
    second beside 1,000 TransactionEvents) but keeps a dead station's connection,
    and its "connected" state, that much longer.

    Every station CALL is timed from its frame's arrival until its answer is
    written (:class:`~evtwin.csms.shell.CallStats` in ``call_stats``; see
    :meth:`take_stats`).
    """

    def __init__(self, core: CSMSCore, *, host: str = "127.0.0.1", port: int = 0,
                 max_frame_bytes: int = 2**16, response_timeout_s: float = 30.0,
                 security: SecurityConfig | None = None,
                 max_frames_per_s: float | None = None, max_frames_burst: float = 200.0,
                 tls_handshake_timeout_s: float = 10.0, open_timeout_s: float = 10.0,
                 backlog: int = 4096, reuse_port: bool = False,
                 auth_failures_per_peer: int = 100, auth_failures_per_identity: int = 10,
                 auth_failure_window_s: float = 60.0,
                 security_events_per_minute: int = 10,
                 security_events_total_per_minute: int = 600,
                 scrypt_workers: int = 1, scrypt_queue: int = 32,
                 replaced_close_timeout_s: float = 2.0,
                 ping_interval_s: float | None = 20.0,
                 ping_timeout_s: float | None = 20.0) -> None:
        self.core = core
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self.response_timeout_s = response_timeout_s
        self.security = security if security is not None else SecurityConfig()
        self.tls_handshake_timeout_s = tls_handshake_timeout_s
        self.open_timeout_s = open_timeout_s
        self.backlog = backlog
        #: Let several processes listen on the same port (Linux SO_REUSEPORT spreads
        #: the connections over them); for processes sharing a PostgreSQL store.
        self.reuse_port = reuse_port
        self.replaced_close_timeout_s = replaced_close_timeout_s
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.frames = {"in": 0, "out": 0}
        #: Handling time of every station CALL since the last :meth:`take_stats`.
        self.call_stats = CallStats()
        self._frames_taken = dict(self.frames)
        # None: no limit (the twin's own stations run faster than any real one).
        self.max_frames_per_s = max_frames_per_s
        self.max_frames_burst = max_frames_burst
        self.audit = SecurityAudit(core.store, core.clock, per_key=security_events_per_minute,
                                   total=security_events_total_per_minute)
        self.throttle = FailureThrottle(per_peer=auth_failures_per_peer,
                                        per_identity=auth_failures_per_identity,
                                        window_s=auth_failure_window_s)
        self.verifier = PasswordVerifier(max_workers=scrypt_workers, max_waiting=scrypt_queue)
        self.connections: dict[str, ShellBase] = {}
        #: Stations on the ``direct`` transport (no connection: called in-process).
        self.direct: dict[str, DirectShell] = {}
        self._sockets: dict[str, ServerConnection] = {}
        self._sockets_by_cp: dict[int, ServerConnection] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._server: Server | None = None
        #: Called with the identity of every station that connects, before its first
        #: message is read (a shared store reloads the station's state there).
        self.on_connect: list[Callable[[str], None]] = []
        #: Where a limit for a station connected to no one here goes (several
        #: processes on one database): returns True if it was passed on.
        self.relay: Callable[[ProfileCommand], bool] | None = None
        #: Updates the core's feeder input from the stations' reports before each
        #: control cycle (``csms serve`` with a ``[feeder]`` network); None: not.
        self.feeder_monitor: FeederMonitor | None = None
        #: With OCPI on: its registry (partners and the OCPI objects exchanged, which name
        #: drivers too: GDPR export and erasure reach them), an evtwin.csms.ocpi.Registry.
        self.ocpi_registry: Any = None

    @property
    def url(self) -> str:
        """The ws:// (wss:// with TLS) base URL stations connect to (append the identity)."""
        scheme = "wss" if self.security.tls else "ws"
        return f"{scheme}://{self.host}:{self.port}/ocpp"

    async def _process_request(self, connection: ServerConnection,
                               request: Request) -> Response | None:
        identity, problem = station_identity(request.path)
        peer = str(connection.remote_address)
        host = peer_host(connection.remote_address)
        retry_after = self.throttle.retry_after(host, identity)
        refusal = await self._check(connection, request, identity, problem,
                                    slow_ok=not retry_after)
        if refusal is None:
            return None
        if retry_after and refusal.counts:
            # Throttled: one rate-limited event, no count, no slow check.
            self.audit.record("throttled", f"{safe_identity(identity)} ({refusal.kind}); "
                              f"{retry_after:.0f} s left", peer=peer, host=host)
            return _retry_later(http.HTTPStatus.TOO_MANY_REQUESTS,
                                "too many failed attempts", retry_after)
        if refusal.counts:
            self.throttle.failure(host, identity)
        self.audit.record(refusal.kind, refusal.detail, peer=peer, host=host)
        return refusal.response

    async def _check(self, connection: ServerConnection, request: Request, identity: str,
                     problem: str | None, *, slow_ok: bool) -> _Refusal | None:
        """Every check of the upgrade in order; None if the station may connect.

        ``slow_ok`` False (a throttled peer): refuse rather than run a slow
        (scrypt) password check.
        """
        sid = safe_identity(identity)
        if problem == "bad_identity":
            return _Refusal("bad_identity", f"identity {sid} is not valid",
                            _refuse(http.HTTPStatus.BAD_REQUEST, "invalid station identity"))
        if problem == "bad_path":
            return _Refusal("bad_path", f"{sid} asked under another path than {PATH_PREFIX}",
                            _refuse(http.HTTPStatus.NOT_FOUND,
                                    f"stations connect at {PATH_PREFIX}/<identity>"))
        known = self.core.knows(identity)
        if self.security.basic_auth:
            # Unknown stations are refused like wrong passwords (401), after
            # the same checks of the header, so identities cannot be probed.
            refusal = await self._check_basic_auth(connection, request, identity, known,
                                                   slow_ok=slow_ok)
        elif not known:
            refusal = _Refusal("unknown_station", f"unknown station {sid}",
                               _refuse(http.HTTPStatus.NOT_FOUND, "unknown station"))
        elif self.security.client_certificates:
            refusal = self._check_certificate(connection, identity)
        else:
            refusal = None
        if refusal is not None:
            return refusal
        offered = request.headers.get_all("Sec-WebSocket-Protocol")
        names = {p.strip()[:32] for h in offered for p in h.split(",")}
        if not names & set(SUBPROTOCOLS):
            return _Refusal("no_subprotocol", f"{sid} offered {sorted(names)[:5]}",
                            _refuse(http.HTTPStatus.BAD_REQUEST,
                                    "no supported OCPP subprotocol; supported: "
                                    + ", ".join(SUBPROTOCOLS)),
                            counts=False)
        return None

    async def _check_basic_auth(self, connection: ServerConnection, request: Request,
                                identity: str, known: bool, *, slow_ok: bool) -> _Refusal | None:
        """Profiles 1 and 2: Basic credentials naming this station, with its password.

        Details never contain the password, the header or its base64 text.
        """
        sid = safe_identity(identity)
        headers = request.headers.get_all("Authorization")
        if not headers:
            return _Refusal("auth_missing", f"{sid} sent no credentials",
                            _unauthorized("credentials required"))
        if len(headers) > 1:
            return _Refusal("auth_malformed", f"{sid} sent {len(headers)} Authorization headers",
                            _unauthorized("malformed credentials"))
        try:
            username, password = parse_authorization_basic(headers[0])
        except InvalidHeader:
            # The exception's text quotes the header (the credentials): not used.
            return _Refusal("auth_malformed", f"{sid}: Authorization is not valid Basic "
                                              f"credentials (scheme "
                                              f"{auth_scheme(headers[0])!r})",
                            _unauthorized("malformed credentials"))
        if username != identity:
            return _Refusal("auth_identity_mismatch", f"username {safe_identity(username)} is "
                                                      f"not the station identity {sid}",
                            _unauthorized("username must be the station identity"))
        if not password_length_ok(password):
            return _Refusal("auth_password_length",
                            f"{sid} sent a password of {len(password)} characters "
                            f"({PASSWORD_MIN_CHARS}-{PASSWORD_MAX_CHARS} required)",
                            _unauthorized("invalid credentials"))
        if not known:
            verify_password(password, _DUMMY_HASH)  # same cost as a real check
            return _Refusal("unknown_station", f"unknown station {sid}",
                            _unauthorized("invalid credentials"))
        encoded = self.security.password_hashes.get(identity)
        if encoded is None:
            return _Refusal("auth_not_provisioned",
                            f"no password hash is configured for {sid}",
                            _unauthorized("invalid credentials"))
        ok = self.verifier.quick(password, encoded)
        if ok is None:
            if not slow_ok:
                return _Refusal("auth_deferred", f"{sid}: scrypt check skipped (throttled)",
                                _unauthorized("invalid credentials"))
            try:
                ok = await self.verifier.verify(password, encoded)
            except VerifierBusy as exc:
                return _Refusal("auth_busy", f"{sid}: {exc}",
                                _retry_later(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                             "busy, try again", 5.0),
                                counts=False)
        if not ok:
            return _Refusal("auth_failed", f"wrong password for {sid}",
                            _unauthorized("invalid credentials"))
        connection.username = identity
        return None

    def _check_certificate(self, connection: ServerConnection,
                           identity: str) -> _Refusal | None:
        """Profile 3: the client certificate (already verified against the CA) names the station.

        Rule: the subject has exactly one CN and it equals the identity in the URL.
        """
        ssl_object = connection.transport.get_extra_info("ssl_object")
        peercert = ssl_object.getpeercert() if ssl_object is not None else None
        sid = safe_identity(identity)
        if not peercert:  # unreachable with CERT_REQUIRED; kept as a guard
            return _Refusal("cert_missing", f"{sid} presented no certificate",
                            _refuse(http.HTTPStatus.FORBIDDEN, "client certificate required"))
        names = certificate_common_names(peercert)
        if names != [identity]:
            return _Refusal("cert_identity_mismatch",
                            f"certificate CN {[n[:64] for n in names[:3]]} does not name "
                            f"station {sid}",
                            _refuse(http.HTTPStatus.FORBIDDEN,
                                    "client certificate does not name this station"))
        connection.username = identity
        return None

    def _tls_handshake_failed(self, exc: ssl.SSLError) -> None:
        # The peer's address is not known here (see server_ssl_context).
        self.audit.record("tls_handshake_failed", describe_ssl_error(exc))

    def _handshake_timed_out(self, connection: ServerConnection) -> None:
        """An opening handshake ran past ``open_timeout_s`` (see :class:`_AuditedConnection`)."""
        peer = str(connection.remote_address)
        host = peer_host(connection.remote_address)
        request = connection.request
        if request is None:
            # Connected and never sent a complete request: counted as a
            # failure (it held a socket for the whole timeout).
            self.throttle.failure(host, "")
            self.audit.record("handshake_timeout",
                              f"no HTTP upgrade request within {self.open_timeout_s:g} s",
                              peer=peer, host=host)
        else:
            # The request came but the server did not answer in time: our
            # fault (overload), not the peer's, so it is not counted.
            self.audit.record("handshake_timeout",
                              f"{safe_identity(station_identity(request.path)[0])}: upgrade not "
                              f"answered within {self.open_timeout_s:g} s",
                              peer=peer, host=host)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, holding a strong reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _retire(self, old: ServerConnection, identity: str) -> None:
        """Close a connection replaced by a reconnect; drop its socket if the close stalls.

        A station that lost its link silently never answers the closing
        handshake, and websockets would wait ``close_timeout`` (10 s) for it,
        so this runs beside the new connection, not before it.
        """
        closing = asyncio.ensure_future(old.close(code=1000,
                                                  reason="replaced by a new connection"))
        done, _ = await asyncio.wait({closing}, timeout=self.replaced_close_timeout_s)
        if not done:
            log.info("%s: the replaced connection did not close within %g s; dropped",
                     identity, self.replaced_close_timeout_s,
                     extra={"event": "replaced_dropped", "station": identity})
            abort = getattr(getattr(old, "transport", None), "abort", None)
            if abort is not None:
                abort()
        with contextlib.suppress(Exception):  # the socket is gone either way
            await closing

    async def _handler(self, connection: ServerConnection) -> None:
        identity = station_identity(connection.request.path if connection.request else "")[0]
        await self.serve_connection(identity, connection.subprotocol or "ocpp2.0.1",
                                    connection)

    async def serve_connection(self, identity: str, subprotocol: str, connection: Any) -> None:
        """Serve one station's OCPP-J connection until it closes.

        The websocket endpoint calls it once the upgrade (identity, subprotocol,
        credentials) is accepted; another transport calls it with any object
        that has async ``recv``/``send``/``close`` and ``remote_address`` (an
        in-memory pipe: :mod:`evtwin.transports.memory`), the identity it
        vouches for and the OCPP subprotocol (``ocpp1.6``, ``ocpp2.0.1``,
        ``ocpp2.1``). Frames are counted, rate limited and handled exactly as
        over a websocket.
        """
        if subprotocol not in SHELLS:
            raise ValueError(f"unknown OCPP subprotocol {subprotocol!r} "
                             f"(one of {', '.join(SUBPROTOCOLS)})")
        shell = SHELLS[subprotocol]
        log.info("%s connected (%s)", identity, subprotocol,
                 extra={"event": "connected", "station": identity,
                        "protocol": subprotocol,
                        "peer": str(connection.remote_address)})
        counting = CountingConnection(connection, self.frames, rate_per_s=self.max_frames_per_s,
                                      burst=self.max_frames_burst)
        cp = shell(identity, counting,
                   self.core, response_timeout=self.response_timeout_s)
        cp.call_stats = self.call_stats
        previous = self.connections.get(identity)
        self.connections[identity] = cp
        self._sockets[identity] = connection
        if previous is not None:
            # The newest connection wins (a station that lost its link and came
            # back); the stale one is closed so no one answers on it, in the
            # background: the new connection is served at once.
            log.info("%s reconnected; closing the old connection", identity,
                     extra={"event": "reconnected", "station": identity})
            old = self._sockets_by_cp.pop(id(previous), None)
            if old is not None:
                self._spawn(self._retire(old, identity))
        self._sockets_by_cp[id(cp)] = connection
        try:
            for hook in self.on_connect:
                hook(identity)
            await cp.start()
        except FloodError as exc:
            self.audit.record("flood", f"{safe_identity(identity)}: {exc}",
                              peer=str(connection.remote_address),
                              host=peer_host(connection.remote_address))
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

        Raises OSError or ssl.SSLError if the TLS files cannot be loaded, ConfigError
        (naming host or port) if the address cannot be bound.
        """
        check_port(self.port)
        ssl_context = self.security.ssl_context(on_handshake_error=self._tls_handshake_failed)
        tls: dict[str, Any] = {}
        if ssl_context is not None:
            tls = {"ssl": ssl_context, "ssl_handshake_timeout": self.tls_handshake_timeout_s}
        connection_class = cast(type[ServerConnection],
                                type("CSMSConnection", (_AuditedConnection,), {"csms": self}))
        try:
            self._server = await serve(
                self._handler, self.host, self.port,
                subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
                process_request=self._process_request,
                max_size=self.max_frame_bytes,
                open_timeout=self.open_timeout_s,
                create_connection=connection_class,
                logger=_RedactingLogger(logging.getLogger("websockets.server"), {}),
                backlog=self.backlog, reuse_port=self.reuse_port or None,
                ping_interval=self.ping_interval_s, ping_timeout=self.ping_timeout_s,
                **tls,
            )
        except OSError as exc:  # busy port, unknown host: the address is the user's
            raise listen_error(exc, self.host, self.port) from None
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        if self.security.profile == 1:
            log.warning("security profile 1 sends station passwords unencrypted; "
                        "use it only on a trusted network", extra={"event": "insecure"})
        if self.security.basic_auth:
            self._warn_legacy_hashes()

    def _warn_legacy_hashes(self, named: int = 20) -> None:
        """Once per start: name the stations whose password hash is still scrypt.

        Each costs ~50 ms of CPU per uncached login; a new hash
        (`evtwin csms hash-password`) costs microseconds. At most ``named``
        stations are named one per line, the rest counted in one line.
        """
        legacy = sorted(sid for sid, h in self.security.password_hashes.items()
                        if is_legacy_hash(h))
        for sid in legacy[:named]:
            log.warning("station %s has a legacy scrypt password hash (slow to check); "
                        "re-hash its password with `evtwin csms hash-password`", sid,
                        extra={"event": "legacy_hash", "station": sid})
        if len(legacy) > named:
            log.warning("%d more stations have legacy scrypt password hashes",
                        len(legacy) - named, extra={"event": "legacy_hash",
                                                    "stations": len(legacy) - named})

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background)
        self.audit.close()  # suppressed counts are written, not lost
        self.verifier.close()

    def take_stats(self) -> dict[str, Any]:
        """The CALL timings (see :meth:`CallStats.take`), frames in and out and open
        connections since the last call, and start a new window."""
        out = self.call_stats.take()
        frames = dict(self.frames)
        out["frames_in"] = frames["in"] - self._frames_taken["in"]
        out["frames_out"] = frames["out"] - self._frames_taken["out"]
        self._frames_taken = frames
        out["connections"] = len(self.connections)
        return out

    async def __aenter__(self) -> CSMSServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def control_cycle(self, *, in_thread: bool = False) -> int:
        """Run the strategy once and send the changed limits; return how many were sent.

        ``in_thread`` (``csms serve``): the connections are served meanwhile instead
        of waiting for the cycle. The view is built in the loop in steps from a
        snapshot of the sessions, yielding between steps (a worker thread would
        hold the interpreter against the loop: measured, its 50 ms at 10,000
        sessions stretched every database call and socket write the loop made
        meanwhile, to 100-200 ms stalls); the strategy then runs in a worker thread
        on that immutable view (an optimising one may take long, and its solver
        runs outside the interpreter). The twin keeps the default: everything in
        the loop, in one deterministic order.

        Calls to different stations run concurrently; calls to one station go
        one after another (OCPP-J allows one outstanding CALL per connection).
        Each station's sends are isolated: one that drops, times out or answers
        wrongly costs one log line, its remaining limits are skipped, and every
        other station still gets its own. A limit that was not confirmed is
        not recorded as sent, so the next cycle sends it again.
        """
        core = self.core
        if in_thread:
            monitor = self.feeder_monitor
            if monitor is not None:
                try:
                    core.inputs.observe_feeder(await asyncio.to_thread(
                        monitor.update, list(core.sessions.values()), core.clock()))
                except Exception as exc:  # keep the last view; control goes on
                    log.warning("feeder model not updated: %s: %s", type(exc).__name__, exc,
                                extra={"event": "feeder_update_failed"})
            steps = core.control_view_steps(sessions=core.start_cycle())
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    view = done.value
                    break
                await asyncio.sleep(0)
            limits = await asyncio.to_thread(core._run_strategy, view)
            commands = core.control_commands(view, limits)
        else:
            commands = core.control_commands()
        # Numbered in the cycle's own order, before any is sent (see ProfileCommand).
        commands = [cmd if cmd.profile_id else replace(cmd, profile_id=core.next_profile_id())
                    for cmd in commands]
        by_station: dict[str, list[Any]] = {}
        for cmd in commands:
            by_station.setdefault(cmd.station_id, []).append(cmd)

        async def send_all(station_id: str, cmds: list[Any]) -> int:
            cp: ShellBase | DirectShell | None = (self.connections.get(station_id)
                                                  or self.direct.get(station_id))
            if cp is None and self.relay is not None:
                # Another process sharing the database may hold the connection.
                return sum(1 for cmd in cmds if self.relay(cmd))
            if cp is None:
                # Keep serving everyone else; the limit is re-sent next cycle
                # because it was never recorded as accepted.
                log.warning("%s", StationNotConnectedError(station_id))
                return 0
            sent = 0
            try:
                for cmd in cmds:
                    await cp.send_limit(cmd)
                    sent += 1
            except Exception as exc:  # one station's trouble must not stop the others
                reason = str(exc)[:120] or type(exc).__name__
                log.warning("control cycle: %s: %d of %d limits not sent: %s: %s", station_id,
                            len(cmds) - sent, len(cmds), type(exc).__name__, reason,
                            extra={"event": "control_send_failed", "station": station_id})
            return sent

        if not self.connections:
            # Only direct stations (or none): each send completes at once, so one
            # after another, without a task per station.
            return sum([await send_all(s, c) for s, c in by_station.items()])
        results = await asyncio.gather(*(send_all(s, c) for s, c in by_station.items()))
        return sum(results)
