"""The driver's side of the CSMS: find a charger, reserve it, start, follow, stop, pay.

Two layers, as elsewhere in the CSMS:

- :class:`DriverService` is what a driver may do, for one id token at a time:
  find stations near a place (live availability per EVSE and what the tariff
  charges there now, nearest first), reserve an EVSE (ReserveNow over OCPP
  through the station's shell) and cancel it, start and stop a charge remotely
  (RequestStartTransaction / RemoteStartTransaction, RequestStop...), follow a
  session (power, energy, SoC, cost so far) and get its bill (the CDR). It does
  no HTTP: the twin's app users and OCPI commands call it directly. A driver
  sees only their own sessions, bills and reservations; anyone else's is
  "not found" (its existence is not revealed).
- :class:`DriverAPI` serves it as HTTP JSON (aiohttp) on a port of its own
  (``[driver_api]`` in the CSMS config). Each driver account is an id token
  with an app token: ``Authorization: Bearer <app token>``; only a salted hash
  of the app token is configured (``evtwin csms driver-token ID_TOKEN`` makes
  one). Errors are JSON ``{"error", "message"}`` (422 also ``problems``, each
  naming its field): 400 bad JSON, 401 no or wrong app token, 404 unknown or
  someone else's, 409 the station is offline, busy or refused, 422 invalid
  fields, 502 the station answered with an error, 504 no answer.
- The same port serves the driver's app view, a page for the phone, at
  ``/driver/app/`` (:data:`DRIVER_APP_PREFIX`; its files are package data in
  ``driverapp_static/``, nothing is loaded from elsewhere). The page itself is
  public; it calls the API with the app token the driver pastes into it.

Driver identifiers never reach the log in clear: log lines carry the
pseudonym (:class:`~evtwin.csms.privacy.Pseudonymiser`) when one is given.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib.resources import files
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from websockets.exceptions import ConnectionClosed

from evtwin.ocppj.domain import ms_time

from .core import CSMSCore
from .exceptions import (
    ConfigError,
    CSMSError,
    StationNotConnectedError,
    UnknownEvseError,
    UnknownStationError,
)
from .reservations import Reservation
from .security import check_password_hash, hash_password, verify_password
from .tariffs import energy_price, surcharged_at_start

log = logging.getLogger("evtwin.csms.driverapi")

__all__ = [
    "DRIVER_API_PREFIX",
    "DRIVER_APP_PREFIX",
    "DriverAPI",
    "DriverError",
    "DriverService",
    "SiteLocation",
    "Stations",
    "distance_km",
    "driver_token_lines",
]

DRIVER_API_PREFIX = "/driver/v1"
#: Where the driver's app view (the page) is served, on the driver API's port.
DRIVER_APP_PREFIX = "/driver/app/"
_APP_STATIC = files("evtwin.csms") / "driverapp_static"
_APP_FILES = {"": ("index.html", "text/html"), "app.js": ("app.js", "application/javascript"),
              "app.css": ("app.css", "text/css")}
#: The app view's headers: only its own files, no frames; geolocation for itself only.
_APP_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer", "Permissions-Policy": "geolocation=(self)"}
EARTH_RADIUS_KM = 6371.0088


# --------------------------------------------------------------------------- the service


class DriverError(CSMSError):
    """What a driver asked cannot be done: ``kind`` says why (``not_found``,
    ``conflict``, ``refused``: the station said no, with its ``status``)."""

    def __init__(self, kind: str, message: str, *, status: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        #: The request field that is wrong (``invalid``), named in the 422's problems.
        self.field = field


@dataclass(frozen=True, slots=True)
class SiteLocation:
    """Where a site is (WGS 84 degrees) and its postal address, as drivers see it."""

    name: str
    latitude: float
    longitude: float
    display_name: str | None = None
    address: str | None = None
    city: str | None = None


class StationOps(Protocol):
    """What the service asks of a station's shell (a wire shell or the direct one)."""

    async def reserve_now(self, reservation_id: int, id_token: str, expiry: datetime, *,
                          evse_id: int | None = None,
                          group_id_token: str | None = None) -> dict[str, Any]: ...

    async def cancel_reservation(self, reservation_id: int) -> dict[str, Any]: ...

    async def request_start(self, evse_id: int | None, id_token: str) -> dict[str, Any]: ...

    async def request_stop(self, transaction_id: str) -> dict[str, Any]: ...


Stations = Callable[[str], StationOps | None]
"""The connected shell of a station id, or None when it is not connected."""


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) between two points in degrees, in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _same(a: str | None, b: str) -> bool:
    return a is not None and a.casefold() == b.casefold()


class DriverService:
    """What drivers may do with the CSMS ``core`` (see the module docstring).

    ``stations`` gives a station's shell; ``sites`` the sites drivers can find
    (sites without a location are not found, but their stations can still be
    reserved and started by id). ``reservation_minutes`` is how long a
    reservation holds when the driver names no time, ``max_reservation_minutes``
    the most they may ask for. ``pseudonymise`` turns id tokens into what the
    log shows (None: the log names no driver).
    """

    def __init__(self, core: CSMSCore, stations: Stations, sites: Sequence[SiteLocation] = (),
                 *, reservation_minutes: float = 15.0, max_reservation_minutes: float = 60.0,
                 pseudonymise: Callable[[str | None], str | None] | None = None) -> None:
        if not 0 < reservation_minutes <= max_reservation_minutes:
            raise ConfigError("driver_api.reservation_minutes",
                              f"must be above 0 and at most max_reservation_minutes "
                              f"({max_reservation_minutes:g}), got {reservation_minutes:g}")
        self.core = core
        self.stations = stations
        self.sites = {s.name: s for s in sites}
        self.reservation_minutes = reservation_minutes
        self.max_reservation_minutes = max_reservation_minutes
        self._pseudonym = pseudonymise or (lambda _t: None)

    # -- finding a charger ----------------------------------------------------------
    def price(self, site: str, now: datetime | None = None) -> dict[str, Any]:
        """What the tariff charges at ``site`` for a session that starts ``now``:
        per kWh (with the occupancy surcharge if the site is that busy), per hour
        plugged in, per session, and the currency."""
        now = now or self.core.clock()
        t = self.core.config.tariff
        evses = [(s.station_id, e.evse_id) for s in self.core.stations.values()
                 if s.site == site for e in s.evses]
        in_use = sum(1 for key in evses if self.core.status.get(key) not in (None, "Available",
                                                                               "Unavailable",
                                                                               "Faulted"))
        surcharged = surcharged_at_start(t, in_use + 1, len(evses))
        return {"energy_per_kwh": round(energy_price(t, now, site, surcharged), 4),
                "time_per_hour": t.time_per_hour, "session_fee": t.session_fee,
                "currency": t.currency}

    def evse_state(self, station_id: str, evse_id: int, now: datetime) -> str:
        """An EVSE as a driver sees it: Available, Reserved, Occupied, Faulted,
        Unavailable or Unknown (offline, or nothing heard yet)."""
        if self.stations(station_id) is None:
            return "Unknown"
        if self.core.reservations.holding(station_id, evse_id, now) is not None:
            return "Reserved"
        status = self.core.status.get((station_id, evse_id))
        if status is None:
            return "Unknown"
        if status in ("Available", "Reserved", "Faulted", "Unavailable"):
            return status
        return "Occupied"  # Occupied, and 1.6's Preparing, Charging, Suspended..., Finishing

    def station_view(self, station_id: str, now: datetime | None = None) -> dict[str, Any]:
        """One station with each EVSE's state and power, and its site's price now."""
        now = now or self.core.clock()
        spec = self.core.station(station_id)
        evses = [{"evse_id": e.evse_id, "max_power_kw": e.max_power_w / 1000.0,
                  "status": self.evse_state(station_id, e.evse_id, now)} for e in spec.evses]
        return {"station_id": station_id, "site": spec.site,
                "connected": self.stations(station_id) is not None,
                "available_evses": sum(1 for e in evses if e["status"] == "Available"),
                "evses": evses, "price": self.price(spec.site, now)}

    def find(self, latitude: float, longitude: float, *, radius_km: float | None = None,
             limit: int = 20, available_only: bool = False,
             now: datetime | None = None) -> list[dict[str, Any]]:
        """Stations at sites near (``latitude``, ``longitude``), nearest first (then by
        id), within ``radius_km`` if given, at most ``limit``: each with its site's
        location, the distance in km, every EVSE's live state and the price now."""
        now = now or self.core.clock()
        found = []
        for spec in self.core.stations.values():
            site = self.sites.get(spec.site)
            if site is None:
                continue
            km = distance_km(latitude, longitude, site.latitude, site.longitude)
            if radius_km is not None and km > radius_km:
                continue
            view = self.station_view(spec.station_id, now)
            if available_only and not view["available_evses"]:
                continue
            view.update(distance_km=round(km, 3), latitude=site.latitude,
                        longitude=site.longitude, site_name=site.display_name or site.name,
                        address=site.address, city=site.city)
            found.append(view)
        found.sort(key=lambda v: (v["distance_km"], v["station_id"]))
        return found[:limit]

    # -- reservations ---------------------------------------------------------------
    def _ops(self, station_id: str) -> StationOps:
        self.core.station(station_id)
        ops = self.stations(station_id)
        if ops is None:
            raise StationNotConnectedError(station_id)
        return ops

    def reservations(self, id_token: str) -> list[Reservation]:
        """The driver's reservations, newest first."""
        return self.core.reservations.of_token(id_token)

    def _own_reservation(self, id_token: str, reservation_id: int) -> Reservation:
        r = self.core.reservations.by_id.get(reservation_id)
        if r is None or not _same(r.id_token, id_token):
            raise DriverError("not_found", f"no reservation {reservation_id}")
        return r

    async def reserve(self, id_token: str, station_id: str, evse_id: int | None = None,
                      minutes: float | None = None, *,
                      group_id_token: str | None = None) -> Reservation:
        """Reserve an EVSE of ``station_id`` (None: any) for ``minutes`` (the default
        if None) with ReserveNow; ``group_id_token``: any token of that group may use
        it too. A driver holds at most one reservation in force.
        Returns the reservation (Accepted); raises :class:`DriverError` ``refused``
        with the station's status when it says no."""
        core = self.core
        now = core.clock()
        if evse_id is not None:
            core.check_evse(station_id, evse_id)
        minutes = self.reservation_minutes if minutes is None else minutes
        if not 0 < minutes <= self.max_reservation_minutes:
            raise DriverError("invalid", f"minutes: at most {self.max_reservation_minutes:g}",
                              field="minutes")
        held = [r for r in core.reservations.of_token(id_token) if r.active and r.expiry > now]
        if held:
            raise DriverError("conflict", f"you hold reservation {held[0].reservation_id} "
                                          "already: cancel it first")
        ops = self._ops(station_id)
        rid = core.store.next_counter("reservation_id")
        # Whole milliseconds, as the station gets it: expiry means the same on both sides.
        expiry = ms_time(now + timedelta(minutes=minutes))
        # The station's shell records it in the reservation book (every path does).
        result = await ops.reserve_now(rid, id_token, expiry, evse_id=evse_id,
                                       group_id_token=group_id_token)
        status = str(result["status"])
        reservation = core.reservations.by_id[rid]
        log.info("reservation %d on %s: %s", rid, station_id, status, extra={
            "event": "driver_reserve", "station": station_id, "reservation": rid,
            "status": status, "driver": self._pseudonym(id_token)})
        if status != "Accepted":
            raise DriverError("refused", f"station {station_id} answered {status}",
                              status=status)
        return reservation

    async def cancel(self, id_token: str, reservation_id: int) -> Reservation:
        """Cancel one of the driver's reservations in force (CancelReservation)."""
        r = self._own_reservation(id_token, reservation_id)
        if not r.active:
            raise DriverError("conflict", f"reservation {reservation_id} is {r.status}")
        book = self.core.reservations
        ops = self._ops(r.station_id)
        # The shell records the cancellation (or that the reservation holds on).
        status = str((await ops.cancel_reservation(reservation_id))["status"])
        if status == "Accepted":
            return r
        if r.expiry <= self.core.clock():
            book.on_update(reservation_id, "Expired", self.core.clock())
        else:
            raise DriverError("refused", f"station {r.station_id} answered {status}",
                              status=status)
        return r

    # -- charging ---------------------------------------------------------------------
    async def start(self, id_token: str, station_id: str,
                    evse_id: int | None = None) -> dict[str, Any]:
        """Ask the station to start charging for the driver (on ``evse_id``, or where
        the station chooses). Returns ``status`` (Accepted) and, 2.x, ``remote_start_id``;
        the session appears once the station reports it started."""
        self.core.station(station_id)
        if evse_id is not None:
            self.core.check_evse(station_id, evse_id)
        held = self.core.reservations.holding(station_id, evse_id, self.core.clock()) \
            if evse_id is not None else None
        if held is not None and not _same(held.id_token, id_token):
            raise DriverError("refused", f"EVSE {evse_id} of {station_id} is reserved",
                              status="Reserved")
        result = await self._ops(station_id).request_start(evse_id, id_token)
        status = str(result["status"])
        log.info("remote start on %s: %s", station_id, status, extra={
            "event": "driver_start", "station": station_id, "status": status,
            "driver": self._pseudonym(id_token)})
        if status != "Accepted":
            raise DriverError("refused", f"station {station_id} answered {status}",
                              status=status)
        return {k: v for k, v in result.items() if k in ("status", "remote_start_id")}

    def _own_session(self, id_token: str, station_id: str, transaction_id: str) -> Any:
        session = self.core.sessions.get((station_id, transaction_id))
        if session is None:
            session = self.core.load_session(station_id, transaction_id)
        if session is None or not _same(session.id_token, id_token):
            raise DriverError("not_found", f"no session {transaction_id} at {station_id}")
        return session

    async def stop(self, id_token: str, station_id: str, transaction_id: str) -> dict[str, Any]:
        """Ask the station to stop one of the driver's running sessions."""
        session = self._own_session(id_token, station_id, transaction_id)
        if not session.is_open:
            raise DriverError("conflict", f"session {transaction_id} has ended")
        result = await self._ops(station_id).request_stop(transaction_id)
        status = str(result["status"])
        if status != "Accepted":
            raise DriverError("refused", f"station {station_id} answered {status}",
                              status=status)
        return {"status": status}

    def session(self, id_token: str, station_id: str, transaction_id: str) -> dict[str, Any]:
        """One of the driver's sessions as it stands: power (kW, 0 once ended), energy
        (kWh), SoC (% if the EV says it), cost so far (or the final cost)."""
        s = self._own_session(id_token, station_id, transaction_id)
        cost = self.core.running_cost(station_id, transaction_id) if s.is_open else \
            self.core.store.cdr_cost(station_id, transaction_id)
        return {"station_id": station_id, "transaction_id": transaction_id,
                "evse_id": s.evse_id, "open": s.is_open,
                "started_at": s.started_at.isoformat(),
                "ended_at": s.ended_at.isoformat() if s.ended_at is not None else None,
                "power_kw": round(s.power_w / 1000.0, 3) if s.is_open else 0.0,
                "energy_kwh": round(s.billed_energy_wh / 1000.0, 4),
                "soc_percent": s.soc_percent,
                "cost": None if cost is None else round(cost, 2),
                "currency": self.core.config.tariff.currency}

    def sessions(self, id_token: str) -> list[dict[str, Any]]:
        """The driver's sessions, newest first (open ones as they stand now)."""
        rows = [r for r in self.core.store.transactions_of(id_token)
                if _same(r["id_token"], id_token)]
        rows.sort(key=lambda r: (r["started_at"], r["transaction_id"]), reverse=True)
        return [self.session(id_token, r["station_id"], r["transaction_id"]) for r in rows]

    def bill(self, id_token: str, station_id: str, transaction_id: str) -> dict[str, Any]:
        """The charge detail record of one of the driver's ended sessions."""
        session = self._own_session(id_token, station_id, transaction_id)
        if session.is_open:
            raise DriverError("conflict", f"session {transaction_id} is still running")
        cdr = self.core.store.cdr(station_id, transaction_id)
        if cdr is None:
            raise DriverError("not_found", f"no bill for session {transaction_id} yet")
        return {"station_id": station_id, "transaction_id": transaction_id,
                "started_at": cdr["started_at"], "ended_at": cdr["ended_at"],
                "duration_s": cdr["duration_s"],
                "energy_kwh": round(cdr["energy_wh"] / 1000.0, 4),
                "cost": round(cdr["cost"], 2), "currency": cdr["currency"]}


def reservation_out(r: Reservation) -> dict[str, Any]:
    """A reservation as the driver API shows it."""
    return {"reservation_id": r.reservation_id, "station_id": r.station_id,
            "evse_id": r.evse_id, "status": r.status, "expiry": r.expiry.isoformat(),
            "created_at": r.created_at.isoformat(),
            "transaction_id": r.transaction_id}


# --------------------------------------------------------------------------- accounts


def driver_token_lines(id_token: str, *, app_token: str | None = None) -> list[str]:
    """What ``evtwin csms driver-token ID_TOKEN`` prints: the new app token (a comment)
    and the ``[[driver_api.drivers]]`` entry to add to the CSMS config."""
    if not 1 <= len(id_token) <= 255 or '"' in id_token or "\\" in id_token:
        raise ConfigError("ID_TOKEN", "must be 1 to 255 characters, without quotes or "
                                      f"backslashes, got {len(id_token)} characters")
    token = app_token or secrets.token_urlsafe(30)
    return [f"# app token for the driver (keep it secret; it is shown only now): {token}",
            "[[driver_api.drivers]]", f'id_token = "{id_token}"',
            f'token_hash = "{hash_password(token)}"']


class _Accounts:
    """App token -> the driver's id token, checked against salted ``sha256$`` hashes."""

    def __init__(self, accounts: Mapping[str, str]) -> None:
        for encoded in accounts.values():
            if not encoded.startswith("sha256$"):
                raise ConfigError("driver_api.drivers.token_hash",
                                  "the hash for one driver is not a sha256$ hash (make it "
                                  "with `evtwin csms driver-token`)")
            try:
                check_password_hash(encoded)
            except ValueError as exc:
                raise ConfigError("driver_api.drivers.token_hash", str(exc)) from None
        self._accounts = list(accounts.items())

    def driver(self, app_token: str) -> str | None:
        """The id token whose app token this is, or None (every hash is checked, so a
        wrong token takes as long as a right one)."""
        found = None
        for id_token, encoded in self._accounts:
            if verify_password(app_token, encoded) and found is None:
                found = id_token
        return found


# --------------------------------------------------------------------------- HTTP


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FindQuery(_Model):
    """``GET /stations`` query."""

    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)
    radius_km: float | None = Field(None, gt=0, le=20_000, allow_inf_nan=False)
    limit: int = Field(20, ge=1, le=100)
    available: bool = False


class ReserveBody(_Model):
    """``POST /reservations``."""

    station_id: str = Field(min_length=1, max_length=48)
    evse_id: int | None = Field(None, ge=1, le=2**31 - 1)
    minutes: float | None = Field(None, gt=0, le=24 * 60, allow_inf_nan=False)


class StartBody(_Model):
    """``POST /sessions``: start charging."""

    station_id: str = Field(min_length=1, max_length=48)
    evse_id: int | None = Field(None, ge=1, le=2**31 - 1)


class _Problem(Exception):
    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": error, "message": message, **extra}


def _problems(err: ValidationError) -> list[dict[str, str]]:
    return [{"path": ".".join(str(p) for p in e["loc"]) or "body",
             "message": e["msg"].removeprefix("Value error, ")} for e in err.errors()]


def _to_problem(exc: Exception) -> _Problem | None:
    from .shell import CallFailed, InvalidOperation

    if isinstance(exc, _Problem):
        return exc
    if isinstance(exc, DriverError):
        status = {"not_found": 404, "conflict": 409, "refused": 409, "invalid": 422}[exc.kind]
        extra: dict[str, Any] = {"station_status": exc.status} if exc.status is not None \
            else {}
        if exc.field is not None:  # a 422 that names the field, as validation errors do
            return _Problem(422, "invalid_request", "the request has invalid fields",
                            problems=[{"path": exc.field, "message":
                                       exc.message.removeprefix(f"{exc.field}: ")}])
        return _Problem(status, exc.kind, exc.message, **extra)
    if isinstance(exc, UnknownEvseError | UnknownStationError):
        return _Problem(404, "not_found", str(exc))
    if isinstance(exc, StationNotConnectedError | ConnectionClosed | ConnectionError):
        return _Problem(409, "station_offline", "the station is not connected")
    if isinstance(exc, ValidationError):
        return _Problem(422, "invalid_request", "the request has invalid fields",
                        problems=_problems(exc))
    if isinstance(exc, InvalidOperation):
        return _Problem(422, "invalid_request", str(exc),
                        problems=[{"path": exc.field, "message": exc.message}])
    if isinstance(exc, CallFailed):
        return _Problem(502, "station_error", exc.description or exc.code)
    if isinstance(exc, TimeoutError):
        return _Problem(504, "timeout", "the station did not answer")
    if isinstance(exc, web.HTTPException):
        return _Problem(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The id token of the driver a request is from (set once the app token is checked).
DRIVER = web.RequestKey("driver", str)


class DriverAPI:
    """The driver API over HTTP (see the module docstring) for ``service``.

    ``accounts`` maps each driver's id token to the salted hash of their app
    token. Binds ``host`` (loopback unless told otherwise) and ``port`` (0: a
    free one).
    """

    def __init__(self, service: DriverService, accounts: Mapping[str, str], *,
                 host: str = "127.0.0.1", port: int = 0, max_body_bytes: int = 2**14) -> None:
        self.service = service
        self.host = host
        self.port = port
        self._accounts = _Accounts(accounts)
        self.app = web.Application(middlewares=[self._middleware],
                                   client_max_size=max_body_bytes)
        p = DRIVER_API_PREFIX
        for method, path, handler in (
                ("GET", "/stations", self.find), ("GET", "/stations/{station_id}", self.station),
                ("GET", "/reservations", self.list_reservations),
                ("POST", "/reservations", self.reserve),
                ("DELETE", "/reservations/{reservation_id}", self.cancel),
                ("GET", "/sessions", self.list_sessions),
                ("POST", "/sessions", self.start_session),
                ("GET", "/sessions/{station_id}/{transaction_id}", self.follow),
                ("POST", "/sessions/{station_id}/{transaction_id}/stop", self.stop_session),
                ("GET", "/sessions/{station_id}/{transaction_id}/bill", self.bill)):
            self.app.router.add_route(method, p + path, handler)
        self.app.router.add_get(DRIVER_APP_PREFIX.rstrip("/"), self.app_redirect)
        self.app.router.add_get(DRIVER_APP_PREFIX + "{name:[a-z.]*}", self.app_file)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Base URL (``http://host:port/driver/v1``)."""
        return f"http://{self.host}:{self.port}{DRIVER_API_PREFIX}"

    @property
    def app_url(self) -> str:
        """The driver's app view (``http://host:port/driver/app/``)."""
        return f"http://{self.host}:{self.port}{DRIVER_APP_PREFIX}"

    async def start(self) -> None:
        """Bind and serve."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DriverAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- plumbing ---------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if any(k.lower() in ("token", "access_token") for k in request.query):
                raise _Problem(400, "token_in_query", "send the app token in "
                                                      "'Authorization: Bearer <token>'")
            # The app view's files are public (they hold no data); all else needs a driver.
            if not (request.path + "/").startswith(DRIVER_APP_PREFIX):
                request[DRIVER] = self._driver(request)
            response = await handler(request)
        except Exception as exc:
            problem = _to_problem(exc)
            if problem is None:
                log.exception("driver API: %s %s failed", request.method, request.path)
                problem = _Problem(500, "internal_error", "internal error")
            response = web.json_response(problem.body, status=problem.status)
            if problem.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="evtwin-driver"'
        response.headers["Cache-Control"] = "no-store"
        return response

    def _driver(self, request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Problem(401, "unauthorized", "send Authorization: Bearer <app token>")
        driver = self._accounts.driver(token.strip())
        if driver is None:
            log.warning("driver API: wrong app token from %s", request.remote,
                        extra={"event": "driver_token_invalid", "peer": request.remote})
            raise _Problem(401, "unauthorized", "invalid app token")
        return driver

    @staticmethod
    async def _body(request: web.Request, model: type[_Model]) -> Any:
        try:
            data = json.loads(await request.text())
        except (ValueError, RecursionError):
            raise _Problem(400, "bad_json", "the body is not valid JSON") from None
        return model.model_validate(data)

    @staticmethod
    def _tx(request: web.Request) -> tuple[str, str]:
        return request.match_info["station_id"], request.match_info["transaction_id"]

    # -- handlers ---------------------------------------------------------------------
    async def find(self, request: web.Request) -> web.Response:
        """``GET /stations?lat=&lon=&radius_km=&limit=&available=``."""
        q = FindQuery.model_validate(dict(request.query))
        return web.json_response({"stations": self.service.find(
            q.lat, q.lon, radius_km=q.radius_km, limit=q.limit, available_only=q.available)})

    async def station(self, request: web.Request) -> web.Response:
        """``GET /stations/{station_id}``."""
        return web.json_response(self.service.station_view(request.match_info["station_id"]))

    async def list_reservations(self, request: web.Request) -> web.Response:
        """``GET /reservations``: the driver's own."""
        return web.json_response({"reservations": [
            reservation_out(r) for r in self.service.reservations(request[DRIVER])]})

    async def reserve(self, request: web.Request) -> web.Response:
        """``POST /reservations``."""
        b = await self._body(request, ReserveBody)
        r = await self.service.reserve(request[DRIVER], b.station_id, b.evse_id, b.minutes)
        return web.json_response(reservation_out(r), status=201)

    async def cancel(self, request: web.Request) -> web.Response:
        """``DELETE /reservations/{reservation_id}``."""
        text = request.match_info["reservation_id"]
        if not text.isdigit() or len(text) > 10:
            raise _Problem(404, "not_found", f"no reservation {text[:20]}")
        r = await self.service.cancel(request[DRIVER], int(text))
        return web.json_response(reservation_out(r))

    async def list_sessions(self, request: web.Request) -> web.Response:
        """``GET /sessions``: the driver's own, newest first."""
        return web.json_response({"sessions": self.service.sessions(request[DRIVER])})

    async def start_session(self, request: web.Request) -> web.Response:
        """``POST /sessions``: start charging remotely."""
        b = await self._body(request, StartBody)
        result = await self.service.start(request[DRIVER], b.station_id, b.evse_id)
        return web.json_response(result, status=202)

    async def follow(self, request: web.Request) -> web.Response:
        """``GET /sessions/{station_id}/{transaction_id}``."""
        return web.json_response(self.service.session(request[DRIVER], *self._tx(request)))

    async def stop_session(self, request: web.Request) -> web.Response:
        """``POST /sessions/{station_id}/{transaction_id}/stop``."""
        return web.json_response(await self.service.stop(request[DRIVER],
                                                         *self._tx(request)), status=202)

    async def bill(self, request: web.Request) -> web.Response:
        """``GET /sessions/{station_id}/{transaction_id}/bill``."""
        return web.json_response(self.service.bill(request[DRIVER], *self._tx(request)))

    # -- the app view -----------------------------------------------------------------
    async def app_redirect(self, request: web.Request) -> web.Response:
        """``GET /driver/app``: to ``/driver/app/`` (the page's relative links need it)."""
        return web.Response(status=308, headers={"Location": DRIVER_APP_PREFIX})

    async def app_file(self, request: web.Request) -> web.Response:
        """``GET /driver/app/{name}``: the page, its script and its style (public: they
        hold no data; the script asks the API with the driver's app token)."""
        found = _APP_FILES.get(request.match_info["name"])
        if found is None:
            raise _Problem(404, "not_found", "no such file")
        name, content_type = found
        return web.Response(body=(_APP_STATIC / name).read_bytes(), content_type=content_type,
                            charset="utf-8", headers=_APP_HEADERS)


def site_locations(sites: Sequence[Any]) -> list[SiteLocation]:
    """The located sites of a CSMS config's ``[[sites]]`` (those with coordinates)."""
    return [SiteLocation(s.name, s.latitude, s.longitude, s.display_name, s.address, s.city)
            for s in sites if s.latitude is not None and s.longitude is not None]


def driver_api_for(server: Any, config: Any, *,
                   pseudonymise: Callable[[str | None], str | None] | None = None
                   ) -> DriverAPI | None:
    """The driver API ``csms serve`` runs for ``config`` (a ServeConfig) beside
    ``server`` (a CSMSServer), or None when ``[driver_api] port`` is not set."""
    section = config.driver_api
    if section.port is None:
        return None
    service = DriverService(server.core, server.connections.get, site_locations(config.sites),
                            reservation_minutes=section.reservation_minutes,
                            max_reservation_minutes=section.max_reservation_minutes,
                            pseudonymise=pseudonymise)
    return DriverAPI(service, {d.id_token: d.token_hash for d in section.drivers},
                     host=section.host, port=section.port)
