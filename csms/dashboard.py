"""The operator's live dashboard: a small web app on its own port beside the CSMS.

It shows the network as the CSMS sees it, updated live over server-sent events
(SSE): stations and their EVSEs' status, occupancy, faults (the work orders of
:mod:`evtwin.csms.health`) and reservations; each site's charging power against
its limit; the feeder's bus voltages (p.u.) and line and transformer loading
(%), where there is a feeder (the twin's power flow, or ``csms serve``'s
``[feeder]`` estimate); open sessions and recent charge detail records, with
driver identifiers pseudonymised (:class:`~evtwin.csms.privacy.Pseudonymiser`);
and roaming partners. The page is vanilla HTML, JS and CSS shipped in the
package (``dashboard_static/``): nothing is loaded from elsewhere.

Security, as a second door into the CSMS needs it:

- its own aiohttp app and port (loopback by default), never the operator API's;
- login with user name, the user's token (checked against a
  :func:`~evtwin.csms.api.hash_token` hash, as the operator API checks its
  bearer token) and a TOTP code (RFC 6238, 30 s steps, one step of clock skew
  either way); a code that was accepted once is refused after (RFC 6238 5.2);
- failed logins are throttled per address and per (address, user)
  (:class:`~evtwin.csms.audit.FailureThrottle`: 429) and recorded as security
  events (:class:`~evtwin.csms.audit.SecurityAudit`, never the token or code);
- the session is a random cookie, HttpOnly, SameSite=Strict, that expires;
- roles: ``viewer`` reads; ``admin`` may also make an EVSE (un)available
  (ChangeAvailability) and stop a session (RequestStopTransaction). Those
  actions need the session's CSRF token in ``X-CSRF-Token`` and a same-origin
  request; a viewer gets 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyotp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .api import _AccessLog, _TokenCheck, generate_token, hash_token
from .audit import FailureThrottle, peer_host, safe_identity
from .clock import iso
from .core import live_sessions
from .exceptions import ConfigError, StationNotConnectedError, UnknownStationError
from .privacy import Pseudonymiser
from .security import VerifierBusy
from .server import CSMSServer
from .shell import CallFailed, InvalidCallResult, ShellBase

log = logging.getLogger("evtwin.csms.dashboard")

__all__ = [
    "COOKIE",
    "Dashboard",
    "DashboardUser",
    "Role",
    "feeder_grid",
    "new_user",
    "totp_step",
]

Role = Literal["viewer", "admin"]
#: The session cookie's name.
COOKIE = "evtwin_dashboard"
#: TOTP: RFC 6238's 30 s steps and 6 digits (what authenticator apps use by default).
TOTP_STEP_S = 30
#: Codes of this many steps before and after now are accepted (clock skew).
TOTP_WINDOW = 1
#: Longest user name, token and code looked at (a longer one is simply wrong).
_MAX_FIELD_CHARS = 200
#: Recent charge detail records shown.
RECENT_CDRS = 10
#: The recent CDRs are read again at least this often (s), whatever else happened.
CDRS_REFRESH_S = 30.0
_STATIC = files("evtwin.csms") / "dashboard_static"
_STATIC_FILES = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}
# Checked for an unknown user name, so that refusing one costs what a wrong token costs.
_DUMMY_HASH = hash_token("x" * 40)


@dataclass(frozen=True, slots=True)
class DashboardUser:
    """One operator who may log in: ``token_hash`` as :func:`hash_token` makes it,
    ``totp_secret`` base32 (:func:`new_user`), ``role`` viewer or admin."""

    name: str
    token_hash: str
    totp_secret: str
    role: Role = "viewer"


def new_user(name: str, role: Role = "viewer", *, issuer: str = "evtwin dashboard"
             ) -> tuple[DashboardUser, str, str]:
    """A new user's credentials: the user (hash and secret), its token, and the
    ``otpauth://`` URI an authenticator app takes (as a QR code or typed in)."""
    token = generate_token()
    secret = pyotp.random_base32()
    uri = pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=issuer)
    return DashboardUser(name, hash_token(token), secret, role), token, uri


def totp_step(secret: str, code: str, now_s: float, window: int = TOTP_WINDOW) -> int | None:
    """The 30 s step (RFC 6238 ``T``) whose code ``code`` is, within ``window`` steps
    of ``now_s``; None if it is none of them."""
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    now_step = int(now_s // TOTP_STEP_S)
    found = None
    for step in range(now_step - window, now_step + window + 1):
        # Every candidate compared in constant time, none skipped.
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


# --------------------------------------------------------------------------- grid views
#: A feeder's values per bus, line or transformer (None: not known).
Values = Sequence[float] | npt.NDArray[np.float64] | None


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def grid_view(bus_names: Sequence[str], bus_vm_pu: Values,
              line_names: Sequence[str], line_loading_percent: Values,
              trafo_names: Sequence[str], trafo_loading_percent: Values,
              *, v_min_pu: float, v_max_pu: float, line_max_percent: float,
              trafo_max_percent: float, source: str, at: str | None) -> dict[str, Any]:
    """The grid part of a snapshot from a feeder's arrays (any of them None: unknown)."""
    def rows(names: Sequence[str], values: Values, key: str
             ) -> list[dict[str, Any]]:
        if values is None:
            return []
        return [{"name": n, key: _finite(v)} for n, v in zip(names, values, strict=False)]

    buses = rows(bus_names, bus_vm_pu, "vm_pu")
    lines = rows(line_names, line_loading_percent, "loading_percent")
    trafos = rows(trafo_names, trafo_loading_percent, "loading_percent")
    vms = [b["vm_pu"] for b in buses if b["vm_pu"] is not None]
    return {
        "source": source, "at": at,
        "limits": {"v_min_pu": v_min_pu, "v_max_pu": v_max_pu,
                   "line_loading_max_percent": line_max_percent,
                   "trafo_loading_max_percent": trafo_max_percent},
        "vm_min_pu": min(vms) if vms else None, "vm_max_pu": max(vms) if vms else None,
        "buses": buses,
        # The most loaded first: a feeder has hundreds of lines, an operator looks at a few.
        "lines": sorted(lines, key=lambda r: -(r["loading_percent"] or 0.0))[:10],
        "line_count": len(lines),
        "trafos": trafos,
    }


def names(table: Any, kind: str) -> list[str]:
    """The names of a pandapower element table's rows, ``"<kind> <index>"`` where unnamed."""
    return [n if isinstance(n, str) and n else f"{kind} {i}"
            for i, n in zip(table.index, table["name"], strict=True)]


def feeder_grid(server: CSMSServer) -> Callable[[], dict[str, Any] | None]:
    """``csms serve``'s grid view: the CSMS's own estimate of its ``[feeder]`` (None
    without a feeder monitor; the page then says "no feeder")."""
    def view() -> dict[str, Any] | None:
        monitor = server.feeder_monitor
        fv = server.core.inputs.feeder
        if monitor is None:
            return None
        if fv is None:
            return {"source": "csms estimate", "at": None, "buses": [], "lines": [],
                    "trafos": [], "line_count": 0, "vm_min_pu": None, "vm_max_pu": None,
                    "limits": {}}
        net = monitor.model.feeder.net
        limits = fv.limits
        return grid_view(
            names(net.bus, "bus"), fv.bus_vm_pu, names(net.line, "line"),
            fv.line_loading_percent, names(net.trafo, "trafo"), fv.trafo_loading_percent,
            v_min_pu=limits.v_min_pu, v_max_pu=limits.v_max_pu,
            line_max_percent=limits.line_loading_max_percent,
            trafo_max_percent=limits.trafo_loading_max_percent, source="csms estimate",
            at=iso(fv.measured_at) if fv.measured_at is not None else None)
    return view


# --------------------------------------------------------------------------- requests
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AvailabilityBody(_Body):
    """Make an EVSE (0: the station) operative or inoperative."""

    station_id: str = Field(min_length=1, max_length=48)
    evse_id: int = Field(ge=0, le=2**31 - 1)
    operative: bool


class StopBody(_Body):
    """Stop a session."""

    station_id: str = Field(min_length=1, max_length=48)
    transaction_id: str = Field(min_length=1, max_length=36)


@dataclass(slots=True)
class _Session:
    user: str
    role: Role
    csrf: str
    expires_s: float  # monotonic


class _NoActions(Exception):
    """The station is on the twin's direct transport: no OCPP to act through."""


def _problem(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


# --------------------------------------------------------------------------- the app
@dataclass
class _Cache:
    text: str = ""
    content: str = ""
    made_s: float = -math.inf
    cdr_marker: str | None = None
    cdrs_read_s: float = -math.inf
    cdrs: list[dict[str, Any]] = field(default_factory=list)


class Dashboard:
    """The dashboard of one :class:`CSMSServer`, in the server's event loop.

    ``users`` may log in (see the module docstring). ``grid`` gives the feeder
    view (None: "no feeder"; :func:`feeder_grid` for ``csms serve``, the twin
    passes its power flow's); ``partners`` the roaming partners (dicts shown as
    they are: name, role, status, ...); ``run`` facts about a twin run (its
    simulated time, pace). ``pseudonymiser`` maps driver ids to pseudonyms (a
    key of this process's own by default). Snapshots are pushed at most every
    ``push_interval_s``, and only when something changed; a session lasts
    ``session_ttl_s``. ``wall`` is the clock TOTP codes are checked against.
    ``public_url``: the address browsers use when a TLS proxy is in front; logins
    and actions must then come from its origin, and the cookie is Secure if https;
    ``trusted_proxy``: that proxy's address, whose X-Forwarded-For then names the
    client for throttling and security events.
    """

    def __init__(self, server: CSMSServer, *, users: Sequence[DashboardUser],
                 host: str = "127.0.0.1", port: int = 0,
                 grid: Callable[[], dict[str, Any] | None] | None = None,
                 partners: Callable[[], list[dict[str, Any]]] = list,
                 run: Callable[[], dict[str, Any] | None] | None = None,
                 pseudonymiser: Pseudonymiser | None = None,
                 push_interval_s: float = 0.5, session_ttl_s: float = 8 * 3600.0,
                 failures_per_peer: int = 20, failures_per_user: int = 5,
                 failure_window_s: float = 300.0, max_streams: int = 50,
                 wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 public_url: str | None = None, trusted_proxy: str | None = None) -> None:
        if not users:
            raise ConfigError("dashboard.users", "give at least one user (make one with "
                                                 "`evtwin csms dashboard-user NAME`)")
        self.server = server
        self.core = server.core
        self.audit = server.audit
        self.host = host
        self.port = port
        self.grid = grid
        self.partners = partners
        self.run = run
        self.pseudonymise = pseudonymiser or Pseudonymiser(secrets.token_bytes(32))
        self.push_interval_s = push_interval_s
        self.session_ttl_s = session_ttl_s
        self.max_streams = max_streams
        #: The origin browsers use behind a proxy (``https://dash.example.org``), or None.
        self.public_origin = public_url.rstrip("/") if public_url else None
        #: The proxy's address: its X-Forwarded-For names the client (throttling, events).
        self.trusted_proxy = trusted_proxy
        self._wall = wall
        self._monotonic = monotonic
        self._users: dict[str, DashboardUser] = {}
        self._checks: dict[str, _TokenCheck] = {}
        for i, u in enumerate(users):
            if u.name in self._users:
                raise ConfigError(f"dashboard.users.{i}.name", f"user {u.name!r} is given twice")
            try:
                pyotp.TOTP(u.totp_secret).now()
            except (ValueError, TypeError):
                raise ConfigError(f"dashboard.users.{i}.totp_secret",
                                  "not a base32 secret") from None
            try:
                self._checks[u.name] = _TokenCheck(u.token_hash)
            except ConfigError as exc:
                raise ConfigError(f"dashboard.users.{i}.token_hash",
                                  str(exc).split(": ", 1)[-1]) from None
            self._users[u.name] = u
        self._dummy = _TokenCheck(_DUMMY_HASH)
        self._throttle = FailureThrottle(per_peer=failures_per_peer,
                                         per_identity=failures_per_user,
                                         window_s=failure_window_s, monotonic=monotonic)
        self._last_step: dict[str, int] = {}
        self._sessions: dict[str, _Session] = {}
        self._streams = 0
        self._closing = asyncio.Event()
        self._cache = _Cache()
        self._stored_status: dict[tuple[str, int], str] | None = None
        self.app = web.Application(middlewares=[self._middleware], client_max_size=2**14)
        r = self.app.router
        r.add_get("/", self.index)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/static/{name}", self.static)
        r.add_get("/api/me", self.me)
        r.add_get("/api/snapshot", self.snapshot_json)
        r.add_get("/api/events", self.events)
        r.add_post("/api/evse/availability", self.change_availability)
        r.add_post("/api/sessions/stop", self.stop_session)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The dashboard's address (``http://host:port/``)."""
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        """Bind and serve (port 0 picks a free port)."""
        self._closing.clear()
        self._runner = web.AppRunner(
            self.app, access_log_class=_AccessLog, shutdown_timeout=2.0,
            access_log=logging.getLogger("evtwin.csms.dashboard.access"))
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """End every event stream and stop serving."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for check in (*self._checks.values(), self._dummy):
            check.close()

    async def __aenter__(self) -> Dashboard:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- plumbing -------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                error = http.HTTPStatus(exc.status).phrase.lower().replace(" ", "_")
                response = _problem(exc.status, error, exc.reason)
            else:
                raise
        if not response.prepared:
            h = response.headers
            h["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                            "frame-ancestors 'none'; form-action 'self'")
            h["X-Content-Type-Options"] = "nosniff"
            h["X-Frame-Options"] = "DENY"
            # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null"
            # on its form posts, and the origin check could not tell ours from others.
            h["Referrer-Policy"] = "same-origin"
            h.setdefault("Cache-Control", "no-store")
        return response

    def _event(self, request: web.Request, kind: str, detail: str) -> None:
        peer = self._client(request)
        self.audit.record(kind, detail, peer=peer, host=peer_host(peer),
                          message="dashboard: refused request from %s: %s")

    def _client(self, request: web.Request) -> str | None:
        """The client's address: the peer's, or behind ``trusted_proxy`` the address that
        proxy appended last to X-Forwarded-For (what a client sends itself comes before
        it and is not believed), so one client's failures do not lock out everyone."""
        remote = request.remote
        if self.trusted_proxy is None or remote != self.trusted_proxy:
            return remote
        forwarded = request.headers.getall("X-Forwarded-For", [])
        last = ",".join(forwarded).split(",")[-1].strip()[:64] if forwarded else ""
        return last or remote

    def _same_origin(self, request: web.Request) -> bool:
        """A browser's request from this dashboard's own pages (Origin, else Referer,
        naming this host); a request with neither is not a browser's cross-site one."""
        origin = request.headers.get("Origin") or request.headers.get("Referer")
        if origin is None:
            return True
        # Behind a TLS proxy the request comes in as http, often with the upstream's
        # Host: the configured public address is what the browser's pages are on.
        expected = self.public_origin or f"{request.scheme}://{request.host}"
        return origin == expected or origin.startswith(expected + "/")

    def _session(self, request: web.Request) -> _Session | None:
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if self._monotonic() >= session.expires_s:
            del self._sessions[sid]
            return None
        return session

    def _require(self, request: web.Request) -> _Session:
        session = self._session(request)
        if session is None:
            raise web.HTTPUnauthorized(reason="Log in first")
        return session

    def _require_admin(self, request: web.Request) -> _Session:
        session = self._require(request)
        if not self._same_origin(request):
            self._event(request, "dashboard_cross_origin",
                        f"{request.method} {request.path[:100]} from another origin "
                        f"(user {safe_identity(session.user)})")
            raise web.HTTPForbidden(reason="Cross-origin request refused")
        sent = request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            self._event(request, "dashboard_csrf",
                        f"{request.method} {request.path[:100]} without the session's CSRF "
                        f"token (user {safe_identity(session.user)})")
            raise web.HTTPForbidden(reason="Missing or wrong CSRF token")
        if session.role != "admin":
            self._event(request, "dashboard_forbidden",
                        f"{request.method} {request.path[:100]} by viewer "
                        f"{safe_identity(session.user)}")
            raise web.HTTPForbidden(reason="Admins only")
        return session

    # -- pages ------------------------------------------------------------------------
    @staticmethod
    def _page(name: str, status: int = 200, message: str = "") -> web.Response:
        text = (_STATIC / name).read_text(encoding="utf-8")
        # The message is ours, never the user's input: no escaping needed beyond this.
        text = text.replace("<!--message-->", message.replace("<", "&lt;"))
        return web.Response(text=text, status=status, content_type="text/html")

    async def index(self, request: web.Request) -> web.StreamResponse:
        """``GET /``: the dashboard, or the login page."""
        if self._session(request) is None:
            raise web.HTTPSeeOther("/login")
        return self._page("index.html")

    async def login_page(self, request: web.Request) -> web.Response:
        """``GET /login``."""
        return self._page("login.html")

    async def static(self, request: web.Request) -> web.Response:
        """``GET /static/{name}``: the page's script and style (public: no data in them)."""
        name = request.match_info["name"]
        if name not in _STATIC_FILES:
            raise web.HTTPNotFound()
        return web.Response(body=(_STATIC / name).read_bytes(),
                            content_type=_STATIC_FILES[name],
                            headers={"Cache-Control": "no-cache"})

    async def login(self, request: web.Request) -> web.Response:
        """``POST /login`` (form: user, token, code): a session cookie, or the login
        page again with one message whatever was wrong (401; 429 when throttled)."""
        peer = self._client(request)
        host = peer_host(peer)
        if not self._same_origin(request):
            self._event(request, "dashboard_cross_origin", "login form posted from another "
                                                           "origin")
            return self._page("login.html", 403, "Log in from this page.")
        form = await request.post()
        name = str(form.get("user", ""))[:_MAX_FIELD_CHARS].strip()
        token = str(form.get("token", ""))[:_MAX_FIELD_CHARS].strip()
        code = str(form.get("code", ""))[:_MAX_FIELD_CHARS].strip().replace(" ", "")
        wait_s = self._throttle.retry_after(host, name)
        # Only a configured user's name is recorded: anything else may be a token
        # typed into the wrong field.
        who = (f"user {safe_identity(name)}" if name in self._users
               else f"unknown user ({len(name)} characters)")
        if wait_s:
            self._event(request, "dashboard_login_throttled", f"{who}; {wait_s:.0f} s left")
            response = self._page("login.html", 429, "Too many failed logins: wait "
                                                     f"{math.ceil(wait_s)} s.")
            response.headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
            return response
        user = self._users.get(name)
        check = self._checks.get(name, self._dummy)
        try:
            token_ok = await check(token) if token else False
        except VerifierBusy:  # a scrypt hash given in code (the config takes sha256$ only)
            response = self._page("login.html", 503, "Busy: try again in a moment.")
            response.headers["Retry-After"] = "1"
            return response
        why = None
        step = None
        if user is None:
            why = "unknown user"
        elif not token_ok:
            why = "wrong token"
        else:
            step = totp_step(user.totp_secret, code, self._wall())
            if step is None:
                why = "wrong TOTP code"
            elif step <= self._last_step.get(name, -1):
                why = "TOTP code used before"
        if why is not None or user is None or step is None:
            self._throttle.failure(host, name)
            detail = who if user is None else f"{who}: {why}"
            self.audit.record("dashboard_login_failed", detail,
                              peer=peer, host=host,
                              message="dashboard: refused login from %s: %s")
            return self._page("login.html", 401, "Wrong user name, token or code.")
        self._last_step[name] = step
        sid = secrets.token_urlsafe(32)
        self._prune_sessions()
        self._sessions[sid] = _Session(user.name, user.role, secrets.token_urlsafe(24),
                                       self._monotonic() + self.session_ttl_s)
        log.info("dashboard: %s logged in (%s)", user.name, user.role,
                 extra={"event": "dashboard_login", "user": user.name, "role": user.role,
                        "peer": peer})
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(COOKIE, sid, max_age=int(self.session_ttl_s), path="/",
                            httponly=True, samesite="Strict", secure=self._secure(request))
        return response

    def _secure(self, request: web.Request) -> bool:
        """Whether the browser reaches us over https (the cookie is then Secure)."""
        if self.public_origin is not None:
            return self.public_origin.startswith("https://")
        return request.secure

    def _prune_sessions(self) -> None:
        now = self._monotonic()
        for sid in [s for s, v in self._sessions.items() if now >= v.expires_s]:
            del self._sessions[sid]

    async def logout(self, request: web.Request) -> web.Response:
        """``POST /logout``: the session ends (CSRF token needed, any role)."""
        session = self._require(request)
        sent = request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise web.HTTPForbidden(reason="Missing or wrong CSRF token")
        sid = request.cookies.get(COOKIE, "")
        self._sessions.pop(sid, None)
        response = web.json_response({"status": "logged_out"})
        response.del_cookie(COOKIE, path="/")
        return response

    async def me(self, request: web.Request) -> web.Response:
        """``GET /api/me``: who is logged in, the role and the CSRF token for actions."""
        s = self._require(request)
        return web.json_response({"user": s.user, "role": s.role, "csrf": s.csrf})

    # -- data ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, units in the keys (see the module docstring)."""
        core = self.core
        if self._stored_status is None:  # after a restart: the statuses stations last sent
            self._stored_status = {(s["station_id"], e["evse_id"]): e["status"]
                                   for s in core.store.stations() for e in s["evses"]
                                   if e.get("status")}
        live = {(s.station_id, s.evse_id): s for s in live_sessions(core.sessions.values())}
        orders = core.health.open_orders()
        faults: dict[str, list[dict[str, Any]]] = {}
        for o in orders:
            faults.setdefault(o.station_id, []).append({
                "order_id": o.order_id, "evse_id": o.evse_id, "component": o.component,
                "reason": o.reason, "raised_at": iso(o.raised_at),
                "risk": None if o.risk is None else round(o.risk, 3)})
        stations = []
        sites: dict[str, dict[str, Any]] = {}
        reserved = []
        for sid in sorted(core.stations):
            spec = core.stations[sid]
            shell = self.server.connections.get(sid)
            connected = shell is not None or sid in self.server.direct
            site = sites.setdefault(spec.site, {
                "name": spec.site, "power_kw": 0.0,
                "limit_kw": core.effective_site_limit_kw(spec.site),
                "evses": 0, "occupied": 0, "faulted": 0})
            evses = []
            for e in spec.evses:
                key = (sid, e.evse_id)
                status = core.status.get(key) or self._stored_status.get(key)
                s = live.get(key)
                power_kw = s.power_w / 1000.0 if s is not None else 0.0
                site["evses"] += 1
                site["power_kw"] += power_kw
                site["occupied"] += s is not None or status in ("Occupied", "Charging",
                                                                "SuspendedEV", "SuspendedEVSE",
                                                                "Finishing", "Preparing")
                site["faulted"] += status == "Faulted"
                if status == "Reserved":
                    reserved.append({"station_id": sid, "evse_id": e.evse_id})
                limit = core.sent_limits_w.get(key)
                # What an operator calls the EVSE's state: OCPP 2.x says Occupied and
                # reports Charging (SuspendedEV, ...) on the transaction; 1.6 says it
                # in the status.
                state = status
                if s is not None and s.charging_state and status in (None, "Occupied"):
                    state = s.charging_state
                evses.append({
                    "evse_id": e.evse_id, "status": status, "state": state,
                    "charging_state": s.charging_state if s is not None else None,
                    "max_power_kw": e.max_power_w / 1000.0,
                    "power_kw": round(power_kw, 3),
                    "limit_kw": None if limit is None else round(limit / 1000.0, 3),
                    "transaction_id": s.transaction_id if s is not None else None})
            stations.append({"id": sid, "site": spec.site, "connected": connected,
                             # Admin actions go over OCPP: a station on the twin's direct
                             # transport has no ChangeAvailability to take them.
                             "actions": shell is not None,
                             "protocol": f"ocpp{shell.version}" if shell is not None else None,
                             "evses": evses, "faults": faults.get(sid, [])})
        for site in sites.values():
            site["power_kw"] = round(site["power_kw"], 3)
            site["occupancy_percent"] = (round(100.0 * site["occupied"] / site["evses"], 1)
                                         if site["evses"] else None)
        sessions = [{
            "station_id": s.station_id, "evse_id": s.evse_id,
            "transaction_id": s.transaction_id, "id_token": self.pseudonymise(s.id_token),
            "started_at": iso(s.started_at), "power_kw": round(s.power_w / 1000.0, 3),
            "energy_kwh": round(s.energy_wh / 1000.0, 3),
            "soc_percent": None if s.soc_percent is None else round(s.soc_percent, 1),
            "charging_state": s.charging_state,
        } for s in sorted(live.values(), key=lambda s: (s.station_id, s.evse_id))]
        return {
            "stations": stations, "sites": sorted(sites.values(), key=lambda s: s["name"]),
            "work_orders": [f | {"station_id": sid} for sid, fs in sorted(faults.items())
                            for f in fs],
            "reservations": self._reservations(reserved),
            "sessions": sessions, "cdrs": self._recent_cdrs(),
            "grid": self.grid() if self.grid is not None else None,
            "partners": self.partners(),
            "run": self.run() if self.run is not None else None,
        }

    def _reservations(self, reserved: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The reservations in force now as the core's reservation book records them
        (every ReserveNow the CSMS sent), then the EVSEs whose status is Reserved that
        no such reservation explains (made before a restart, say)."""
        in_force = sorted(self.core.reservations.in_force(self.core.clock()),
                          key=lambda r: r.reservation_id)
        known = {(r.station_id, r.evse_id) for r in in_force}
        return [{"reservation_id": r.reservation_id, "station_id": r.station_id,
                 "evse_id": r.evse_id, "id_token": self.pseudonymise(r.id_token),
                 "expiry": iso(r.expiry), "status": r.status} for r in in_force] + [
            {**e, "status": "Reserved"} for e in reserved
            if (e["station_id"], e["evse_id"]) not in known]

    def _recent_cdrs(self) -> list[dict[str, Any]]:
        """The newest CDRs, read again when a transaction ended since (one indexed
        look-up per push), and at least every ``CDRS_REFRESH_S`` (an erasure, say)."""
        cache = self._cache
        marker = self.core.store.last_ended_at()
        now = time.monotonic()
        if marker != cache.cdr_marker or now - cache.cdrs_read_s >= CDRS_REFRESH_S:
            cache.cdr_marker, cache.cdrs_read_s = marker, now
            cache.cdrs = [{
                "station_id": c["station_id"], "transaction_id": c["transaction_id"],
                "id_token": self.pseudonymise(c.get("id_token")),
                "started_at": c["started_at"], "ended_at": c["ended_at"],
                "duration_min": round(float(c["duration_s"]) / 60.0, 1),
                "energy_kwh": round(float(c["energy_wh"]) / 1000.0, 3),
                "cost": round(float(c["cost"]), 2), "currency": c["currency"],
            } for c in self.core.store.recent_cdrs(RECENT_CDRS)]
        return cache.cdrs

    def _snapshot_text(self) -> str:
        """The latest snapshot as JSON, made at most every ``push_interval_s``; ``at``
        is when its content last changed (the CSMS's clock)."""
        now = time.monotonic()  # the real push cadence, whatever clock sessions use
        cache = self._cache
        if now - cache.made_s >= self.push_interval_s:
            cache.made_s = now
            data = self.snapshot()
            content = json.dumps(data, sort_keys=True, default=str)
            if content != cache.content:
                cache.content = content
                cache.text = json.dumps({"at": iso(self.core.clock()), **data}, default=str)
        return cache.text

    async def snapshot_json(self, request: web.Request) -> web.Response:
        """``GET /api/snapshot``: the snapshot once."""
        self._require(request)
        return web.Response(text=self._snapshot_text(), content_type="application/json")

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/events``: the snapshot as server-sent events, each time it changed
        (at most every ``push_interval_s``); ``event: expired`` when the session ends."""
        self._require(request)
        if self._streams >= self.max_streams:
            raise web.HTTPServiceUnavailable(reason="Too many open event streams")
        sid = request.cookies.get(COOKIE, "")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        self._streams += 1
        last = ""
        quiet_since = time.monotonic()
        try:
            while not self._closing.is_set():
                if sid not in self._sessions or self._session(request) is None:
                    await response.write(b"event: expired\ndata: {}\n\n")
                    break
                text = self._snapshot_text()
                if text != last:
                    await response.write(f"data: {text}\n\n".encode())
                    last, quiet_since = text, time.monotonic()
                elif time.monotonic() - quiet_since > 15.0:
                    await response.write(b": still here\n\n")  # keeps proxies from closing
                    quiet_since = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.push_interval_s)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self._streams -= 1
        return response

    # -- actions ------------------------------------------------------------------------
    async def _body(self, request: web.Request, model: type[_Body]) -> Any:
        try:
            data = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(reason="The body is not JSON") from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise web.HTTPUnprocessableEntity(reason=f"{where}: {first['msg']}") from None

    def _shell(self, station_id: str) -> ShellBase:
        self.core.station(station_id)
        shell = self.server.connections.get(station_id)
        if shell is None:
            if station_id in self.server.direct:
                raise _NoActions(station_id)
            raise StationNotConnectedError(station_id)
        return shell

    async def _act(self, request: web.Request, session: _Session, what: str, station_id: str,
                   call: Callable[[ShellBase], Any]) -> web.Response:
        try:
            result = await call(self._shell(station_id))
        except UnknownStationError as exc:
            return _problem(404, "not_found", str(exc))
        except _NoActions as exc:
            return _problem(409, "no_actions", f"station {exc} is on the direct transport: "
                                               "no admin actions")
        except StationNotConnectedError as exc:
            return _problem(409, "not_connected", str(exc))
        except (CallFailed, InvalidCallResult) as exc:
            return _problem(502, "call_error", f"{exc.code}: {exc.description}")
        except TimeoutError:
            return _problem(504, "timeout", "the station did not answer")
        except ConnectionError:
            return _problem(409, "not_connected", "the station disconnected during the call")
        log.info("dashboard: %s %s on %s: %s", session.user, what, station_id, result["status"],
                 extra={"event": "dashboard_action", "user": session.user, "action": what,
                        "station": station_id, "status": result["status"],
                        "peer": self._client(request)})
        return web.json_response({"status": result["status"]})

    async def change_availability(self, request: web.Request) -> web.Response:
        """``POST /api/evse/availability`` (admin): ChangeAvailability."""
        session = self._require_admin(request)
        b: AvailabilityBody = await self._body(request, AvailabilityBody)
        what = f"{'available' if b.operative else 'unavailable'} EVSE {b.evse_id}"
        return await self._act(request, session, what, b.station_id,
                               lambda shell: shell.change_availability(b.evse_id, b.operative))

    async def stop_session(self, request: web.Request) -> web.Response:
        """``POST /api/sessions/stop`` (admin): RequestStopTransaction."""
        session = self._require_admin(request)
        b: StopBody = await self._body(request, StopBody)
        return await self._act(request, session, f"stop {b.transaction_id}", b.station_id,
                               lambda shell: shell.request_stop(b.transaction_id))
