"""evtwin's CSMS as an OCPI 2.2.1 CPO: what other networks' eMSPs see of it and do in it.

Modules (interface role in brackets):

- ``locations`` (SENDER): one Location per configured site with coordinates and an
  address, one EVSE per station EVSE; its status follows the OCPP connector status
  (``Faulted`` -> ``OUTOFORDER``, a disconnected station -> ``UNKNOWN``) and every
  change is PATCHed to each eMSP's locations receiver;
- ``sessions`` and ``cdrs`` (SENDER): sessions of roaming tokens, PUT to the token's
  eMSP as they start, update and end, and a CDR POSTed when they end, with its cost
  and, for V2G, the energy fed back (``ENERGY_EXPORT``); both can also be pulled;
- ``tariffs`` (SENDER): the CSMS's tariff, per site, as OCPI Tariff objects;
- ``tokens`` (RECEIVER): eMSPs push their drivers' tokens; a token pushed as
  ``ALWAYS`` is authorized locally, every other one in real time (``POST
  .../tokens/{uid}/authorize`` to its eMSP), and an unknown token is asked about at
  every registered eMSP (``2004`` from one means: not ours);
- ``commands`` (RECEIVER): START_SESSION, STOP_SESSION, RESERVE_NOW,
  CANCEL_RESERVATION and UNLOCK_CONNECTOR go to the station over OCPP; the immediate
  answer is a CommandResponse, the station's answer goes to ``response_url`` as a
  CommandResult.

The core stays free of HTTP: this class is its :class:`~evtwin.csms.auth.RoamingPort`
and one of its observers; pushes go through a queue and a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from ..auth import TokenRecord
from ..model import CoreEvent, Session, SessionChanged, StatusChanged
from ..tariffs import site_offset
from .models import (
    CDR,
    COMMAND_BODIES,
    EVSE,
    AllowedType,
    AuthMethod,
    AuthorizationInfo,
    CancelReservation,
    CdrDimension,
    CdrDimensionType,
    CdrLocation,
    CdrToken,
    ChargingPeriod,
    CommandResponse,
    CommandResponseType,
    CommandResult,
    CommandResultType,
    CommandType,
    Connector,
    ConnectorFormat,
    ConnectorType,
    DisplayText,
    GeoLocation,
    InterfaceRole,
    Location,
    LocationReferences,
    ModuleID,
    PowerType,
    Price,
    PriceComponent,
    ReserveNow,
    Role,
    SessionStatus,
    StartSession,
    StopSession,
    Tariff,
    TariffDimensionType,
    TariffElement,
    TariffRestrictions,
    Token,
    UnlockConnector,
    WhitelistType,
    evse_status,
    format_datetime,
    parse_datetime,
)
from .models import Session as OCPISession
from .platform import OCPIPlatform
from .registry import Party, Registry
from .transport import OCPIClient, OCPIError, OCPIRemoteError, OCPIStatus, paginate, segment

if TYPE_CHECKING:
    from ..config import ServeConfig
    from ..server import CSMSServer

log = logging.getLogger("evtwin.csms.ocpi.cpo")

__all__ = ["CPO", "ocpi_id"]

#: OCPI AllowedType -> the OCPP authorization status the station gets.
_ALLOWED_TO_OCPP = {AllowedType.ALLOWED: "Accepted", AllowedType.BLOCKED: "Blocked",
                    AllowedType.EXPIRED: "Expired", AllowedType.NO_CREDIT: "NoCredit",
                    AllowedType.NOT_ALLOWED: "NotAllowedTypeAtEVSE"}
#: A token uid OCPI can carry (CiString(36): printable ASCII, and no character that
#: would change a URL it is put in).
_VALID_UID = re.compile(r"[\x21-\x7E]{1,36}")
#: mod_commands: after START_SESSION the token is not real-time authorized again.
COMMAND_AUTH_WINDOW = timedelta(minutes=15)
#: An open roaming session is pushed to its eMSP at most this often (session time).
SESSION_PUSH_S = 900.0
#: How long a station's answer to a command may take (CommandResponse.timeout).
COMMAND_TIMEOUT_S = 30


def ocpi_id(station_id: str, transaction_id: str) -> str:
    """The OCPI Session/CDR id of an OCPP transaction: readable when it fits
    CiString(36), else a hash of both."""
    text = f"{station_id}-{transaction_id}"
    if len(text) <= 36 and text.isascii() and text.isprintable():
        return text
    return hashlib.sha256(f"{station_id}\0{transaction_id}".encode()).hexdigest()[:36]


def _reservation_number(party_key: str, reservation_id: str) -> int:
    """OCPP reservation ids are integers; OCPI's are strings: a stable 31-bit number."""
    digest = hashlib.sha256(f"{party_key}\0{reservation_id.upper()}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _coordinates(latitude: float, longitude: float) -> GeoLocation:
    return GeoLocation(latitude=f"{latitude:.6f}", longitude=f"{longitude:.6f}")


class CPO(OCPIPlatform):
    """The CSMS of ``server`` as a CPO (see the module docstring)."""

    role = Role.CPO
    modules = ((ModuleID.LOCATIONS, InterfaceRole.SENDER, "locations"),
               (ModuleID.SESSIONS, InterfaceRole.SENDER, "sessions"),
               (ModuleID.CDRS, InterfaceRole.SENDER, "cdrs"),
               (ModuleID.TARIFFS, InterfaceRole.SENDER, "tariffs"),
               (ModuleID.TOKENS, InterfaceRole.RECEIVER, "tokens"),
               (ModuleID.COMMANDS, InterfaceRole.RECEIVER, "commands"))

    def __init__(self, server: CSMSServer, config: ServeConfig, registry: Registry, *,
                 country_code: str, party_id: str, name: str, host: str = "127.0.0.1",
                 port: int = 0, public_url: str | None = None,
                 client: OCPIClient | None = None, authorize_timeout_s: float = 5.0,
                 partners: list[tuple[str, str]] | None = None,
                 roaming_port: bool = True) -> None:
        super().__init__(registry, country_code=country_code, party_id=party_id, name=name,
                         host=host, port=port, public_url=public_url, client=client)
        self.server = server
        self.core = server.core
        self.config = config
        self.authorize_timeout_s = authorize_timeout_s
        #: Whether it is the core's roaming port (False: several CPOs share the core,
        #: one per operator, and a dispatcher by station is; see evtwin.sim.roaming).
        self.roaming_port = roaming_port
        #: eMSPs to register with at start: (versions URL, their token A).
        self.partners_to_register = list(partners or [])
        self.started = datetime.now(UTC)
        self._sites = {s.name: s for s in config.sites}
        #: (station, evse) -> (location id, EVSE uid); and back.
        self._evse_uid: dict[tuple[str, int], tuple[str, str]] = {}
        self._evse_at: dict[tuple[str, str], tuple[str, int]] = {}
        self._evse_updated: dict[tuple[str, int], datetime] = {}
        for st in config.stations:
            for n in range(1, len(st.evse_max_kw) + 1):
                uid = f"{st.id}*{n}"
                self._evse_uid[(st.id, n)] = (st.site, uid)
                self._evse_at[(st.site.upper(), uid.upper())] = (st.id, n)
        #: OCPI session id -> (station, transaction, owner country code, party id):
        #: STOP_SESSION finds it, and only its owner may stop it. Kept in the registry.
        self._sessions: dict[str, tuple[str, str, str, str]] = {}
        #: Tokens eMSPs pushed or authorized (uid upper -> Token), from the registry.
        self._tokens: dict[str, Token] = {}
        #: How each token's latest session was authorized (CDR auth_method), and when
        #: a command authorized it (no real-time request for 15 min after).
        self._auth_method: dict[str, AuthMethod] = {}
        self._commanded_at: dict[str, datetime] = {}
        #: When each open roaming session was last pushed (its own time).
        self._pushed_at: dict[str, datetime] = {}
        #: Authorization references of tokens authorized in real time.
        self._auth_refs: dict[str, str] = {}
        #: Reservations: (party key, OCPI id) -> (station, OCPP id).
        self._reservations: dict[tuple[str, str], tuple[str, int]] = {}
        self._queue: asyncio.Queue[CoreEvent] = asyncio.Queue()
        self._pusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Tokens pushed earlier (kept in the registry) are known again after a restart,
        # and so are the sessions an eMSP may stop.
        for data in registry.objects("token"):
            self._learn_token(Token.model_validate(data))
        for ref in registry.objects("session_ref"):
            self._sessions[str(ref["id"]).upper()] = (ref["station_id"], ref["transaction_id"],
                                                      ref["country_code"], ref["party_id"])

    # -- life ---------------------------------------------------------------------------
    async def start(self) -> None:
        await super().start()
        if self.roaming_port:
            self.core.roaming = self
        self.core.observers.append(self._observe)
        self._pusher = asyncio.create_task(self._push_loop())
        for party in self.registry.parties(role="EMSP"):  # registered before this start
            self._spawn(self.push_locations(party))
        if self.partners_to_register:
            self._spawn(self.register_until_done(self.partners_to_register))
        if self.config.privacy.retention_days is not None:
            self._spawn(self._retention(self.config.privacy.retention_days))

    async def stop(self) -> None:
        if self.core.roaming is self:
            self.core.roaming = None
        with contextlib.suppress(ValueError):
            self.core.observers.remove(self._observe)
        if self._pusher is not None:
            await self.flush(timeout_s=2.0)
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
        for task in list(self._tasks):
            task.cancel()
        await super().stop()

    async def _retention(self, days: float, every_s: float = 3600.0) -> None:
        """Erase drivers' tokens from Sessions and CDRs older than the retention
        period (``[privacy] retention_days``), at start and hourly, as the CSMS
        does for its own tables."""
        while True:
            erased = self.registry.prune_before(datetime.now(UTC) - timedelta(days=days))
            if erased:
                log.info("OCPI: erased the tokens of %d sessions and CDRs older than %g days",
                         erased, days, extra={"event": "ocpi_retention", "objects": erased})
            await asyncio.sleep(every_s)

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every change so far has been pushed (or ``timeout_s``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- routes -------------------------------------------------------------------------
    def add_routes(self, router: web.UrlDispatcher) -> None:
        p = self.prefix
        router.add_get(f"{p}/locations", self._get_locations)
        router.add_get(f"{p}/locations/{{location_id}}", self._get_location)
        router.add_get(f"{p}/locations/{{location_id}}/{{evse_uid}}", self._get_location)
        router.add_get(f"{p}/locations/{{location_id}}/{{evse_uid}}/{{connector_id}}",
                       self._get_location)
        router.add_get(f"{p}/sessions", self._get_sessions)
        router.add_get(f"{p}/cdrs", self._get_cdrs)
        router.add_get(f"{p}/tariffs", self._get_tariffs)
        router.add_route("*", f"{p}/tokens/{{country_code}}/{{party_id}}/{{uid}}", self._token)
        router.add_post(f"{p}/commands/{{command}}", self._command)

    # -- Locations ----------------------------------------------------------------------
    def _site_ready(self, site: str) -> bool:
        s = self._sites.get(site)
        return s is not None and None not in (s.address, s.city, s.country, s.latitude,
                                              s.longitude)

    def _connector(self, station_id: str, n: int, updated: datetime) -> Connector:
        st = next(s for s in self.config.stations if s.id == station_id)
        max_kw = st.evse_max_kw[n - 1]
        phases = st.phases
        volts = 230
        amps = math.ceil(max_kw * 1000 / (volts * phases))
        return Connector(id="1", standard=ConnectorType.IEC_62196_T2,
                         format=ConnectorFormat.SOCKET,
                         power_type=PowerType.AC_3_PHASE if phases == 3 else PowerType.AC_1_PHASE,
                         max_voltage=volts, max_amperage=amps,
                         max_electric_power=round(max_kw * 1000),
                         tariff_ids=[self._tariff_id(st.site)], last_updated=updated)

    def _evse(self, station_id: str, n: int) -> EVSE:
        updated = self._evse_updated.get((station_id, n), self.started)
        _, uid = self._evse_uid[(station_id, n)]
        online = station_id in self.server.connections
        return EVSE(uid=uid, evse_id=f"{self.country_code}*{self.party_id}*E{uid}"[:48],
                    status=evse_status(self.core.status.get((station_id, n)), online=online),
                    connectors=[self._connector(station_id, n, updated)], last_updated=updated)

    def location(self, site: str) -> Location:
        s = self._sites[site]
        assert s.latitude is not None and s.longitude is not None
        evses = [self._evse(sid, n) for (sid, n), (loc, _) in self._evse_uid.items()
                 if loc == site]
        updated = max([self.started, *(e.last_updated for e in evses)])
        return Location(country_code=self.country_code, party_id=self.party_id, id=site,
                        publish=True, name=s.display_name or site, address=s.address or "",
                        city=s.city or "", postal_code=s.postal_code, country=s.country or "",
                        coordinates=_coordinates(s.latitude, s.longitude), evses=evses,
                        time_zone=s.time_zone or "UTC", last_updated=updated)

    def locations(self) -> list[Location]:
        return [self.location(name) for name in self._sites if self._site_ready(name)
                and any(loc == name for loc, _ in self._evse_uid.values())]

    async def _get_locations(self, request: web.Request) -> web.Response:
        page = paginate(request, self.locations(), lambda loc: loc.last_updated,
                        base_url=self._public_url)
        return self.ok([self.dump(x) for x in page.items], headers=page.headers)

    async def _get_location(self, request: web.Request) -> web.Response:
        loc_id = request.match_info["location_id"]
        site = next((n for n in self._sites if n.upper() == loc_id.upper()
                     and self._site_ready(n)), None)
        if site is None:
            raise OCPIError(OCPIStatus.UNKNOWN_LOCATION, f"unknown location {loc_id!r}",
                            http_status=404)
        loc = self.location(site)
        uid = request.match_info.get("evse_uid")
        if uid is None:
            return self.ok(self.dump(loc))
        evse = next((e for e in loc.evses if e.uid.upper() == uid.upper()), None)
        if evse is None:
            raise OCPIError(OCPIStatus.UNKNOWN_LOCATION, f"unknown EVSE {uid!r}",
                            http_status=404)
        conn_id = request.match_info.get("connector_id")
        if conn_id is None:
            return self.ok(self.dump(evse))
        conn = next((c for c in evse.connectors if c.id.upper() == conn_id.upper()), None)
        if conn is None:
            raise OCPIError(OCPIStatus.UNKNOWN_LOCATION, f"unknown connector {conn_id!r}",
                            http_status=404)
        return self.ok(self.dump(conn))

    # -- Tariffs ------------------------------------------------------------------------
    @staticmethod
    def _tariff_id(site: str) -> str:
        return f"{site}"[:36]

    def tariff(self, site: str) -> Tariff:
        """The CSMS's tariff at ``site`` as OCPI writes tariffs (prices excluding VAT:
        evtwin's tariffs carry no VAT). A time-of-use tariff is one element per band;
        what OCPI cannot express (the export credit, the occupancy surcharge, an idle
        fee's grace and cap) is said in ``tariff_alt_text``."""
        t = self.core.config.tariff
        offset = site_offset(t, site)
        fixed: list[PriceComponent] = []
        if t.time_per_hour > 0:
            fixed.append(PriceComponent(type=TariffDimensionType.TIME, price=t.time_per_hour,
                                        step_size=1))
        if t.session_fee > 0:
            fixed.append(PriceComponent(type=TariffDimensionType.FLAT, price=t.session_fee,
                                        step_size=1))
        if t.idle_fee_per_min > 0:
            fixed.append(PriceComponent(type=TariffDimensionType.PARKING_TIME,
                                        price=t.idle_fee_per_min * 60, step_size=60))
        elements: list[TariffElement] = []
        if t.kind == "tou" and t.bands:
            bands = sorted(t.bands)
            for i, (start_h, price) in enumerate(bands):
                end_h = bands[(i + 1) % len(bands)][0]
                energy = PriceComponent(type=TariffDimensionType.ENERGY,
                                        price=max(price + offset, 0.0), step_size=1)
                elements.append(TariffElement(
                    price_components=[energy, *fixed],
                    restrictions=TariffRestrictions(start_time=_hhmm(start_h),
                                                    end_time=_hhmm(end_h))))
        else:
            energy = PriceComponent(type=TariffDimensionType.ENERGY,
                                    price=max(t.energy_per_kwh + offset, 0.0), step_size=1)
            elements.append(TariffElement(price_components=[energy, *fixed]))
        notes = []
        if t.export_per_kwh > 0:
            notes.append(f"energy fed back (V2G) is credited at {t.export_per_kwh:.2f} "
                         f"{t.currency}/kWh")
        if t.kind == "occupancy" and t.occupancy_surcharge_per_kwh > 0:
            notes.append(f"+{t.occupancy_surcharge_per_kwh:.2f} {t.currency}/kWh when "
                         f"{t.occupancy_threshold:.0%} of the site is in use at the start")
        if t.idle_fee_per_min > 0:
            notes.append(f"idle fee after {t.idle_grace_min:g} min"
                         + (f", at most {t.idle_fee_cap:.2f} {t.currency}"
                            if t.idle_fee_cap is not None else ""))
        return Tariff(country_code=self.country_code, party_id=self.party_id,
                      id=self._tariff_id(site), currency=t.currency,
                      tariff_alt_text=[DisplayText(language="en", text="; ".join(notes)[:512])]
                      if notes else [], elements=elements, last_updated=self.started)

    async def _get_tariffs(self, request: web.Request) -> web.Response:
        tariffs = [self.tariff(loc.id) for loc in self.locations()]
        page = paginate(request, tariffs, lambda x: x.last_updated, base_url=self._public_url)
        return self.ok([self.dump(x) for x in page.items], headers=page.headers)

    # -- Tokens (receiver) and real-time authorization ------------------------------------
    def is_local(self, uid: str) -> bool:
        """Whether ``uid`` is one of the CSMS's own provisioned tokens (no eMSP may
        push, replace or use it)."""
        record = self.core.authorizer.record(uid)
        return record is not None and not record.roaming

    def _add_record(self, record: TokenRecord) -> None:
        """A roaming token's answer into the core (never over a provisioned token)."""
        if self.is_local(record.id_token):
            return
        self.core.add_token(replace(record, roaming=True))

    def _learn_token(self, token: Token) -> None:
        """Know a pushed token: ALWAYS-whitelisted tokens are authorized locally."""
        self._tokens[token.uid.upper()] = token
        if token.whitelist == WhitelistType.ALWAYS:
            self._add_record(TokenRecord(token.uid, "Accepted" if token.valid else "Blocked",
                                         group=token.group_id, local=False,
                                         token_type="Central"))
        elif not token.valid:
            self._add_record(TokenRecord(token.uid, "Blocked", local=False))

    def _keep_token(self, token: Token) -> None:
        self.registry.put_object("token", token.country_code, token.party_id, token.uid,
                                 self.dump(token))
        self._tokens[token.uid.upper()] = token

    def _known_token(self, uid: str) -> Token | None:
        return self._tokens.get(uid.upper())

    def _owned_by(self, party: Party, token: Token) -> bool:
        return any(str(r.get("country_code", "")).upper() == token.country_code.upper()
                   and str(r.get("party_id", "")).upper() == token.party_id.upper()
                   for r in party.roles)

    def _check_token_use(self, party: Party, token: Token) -> None:
        """A token an eMSP pushes or commands with: its own (mod_commands: 'SHALL only
        use Token that are owned by this eMSP'), not the CSMS's, not another's."""
        if not self._owned_by(party, token):
            raise OCPIError(OCPIStatus.INVALID_PARAMETERS,
                            "token: country_code/party_id are not a role you registered")
        if self.is_local(token.uid):
            raise OCPIError(OCPIStatus.INVALID_PARAMETERS,
                            "token: uid is one of this CPO's own tokens")
        other = self._known_token(token.uid)
        if other is not None and (other.country_code.upper(), other.party_id.upper()) != (
                token.country_code.upper(), token.party_id.upper()):
            raise OCPIError(OCPIStatus.INVALID_PARAMETERS,
                            "token: uid belongs to another party")

    def _check_owner(self, request: web.Request, cc: str, pid: str) -> Party:
        party = self.party_of(request)
        if not any(str(r.get("country_code", "")).upper() == cc.upper()
                   and str(r.get("party_id", "")).upper() == pid.upper() for r in party.roles):
            raise OCPIError(OCPIStatus.CLIENT_ERROR,
                            f"{cc}/{pid} is not a role you registered", http_status=404)
        return party

    async def _token(self, request: web.Request) -> web.Response:
        cc, pid = request.match_info["country_code"], request.match_info["party_id"]
        uid = request.match_info["uid"]
        self._check_owner(request, cc, pid)
        stored = self.registry.get_object("token", cc, pid, uid)
        if request.method == "GET":
            if stored is None:
                raise OCPIError(OCPIStatus.UNKNOWN_TOKEN, f"unknown token {uid!r}",
                                http_status=404)
            return self.ok(stored)
        if request.method == "PUT":
            token = await self.body(request, Token)
        elif request.method == "PATCH":
            patch = await self.body(request, _Patch)
            if patch.last_updated is None:
                raise OCPIError(OCPIStatus.INVALID_PARAMETERS,
                                "last_updated: required in a PATCH")
            if stored is None:
                raise OCPIError(OCPIStatus.UNKNOWN_TOKEN, f"unknown token {uid!r}",
                                http_status=404)
            try:
                token = Token.model_validate({**stored, **patch.model_dump(exclude_unset=True)})
            except ValidationError as err:
                raise OCPIError(OCPIStatus.INVALID_PARAMETERS, str(err).splitlines()[0]
                                ) from None
        else:
            raise OCPIError(OCPIStatus.CLIENT_ERROR, f"{request.method} is not allowed",
                            http_status=405)
        if (token.uid.upper(), token.country_code.upper(), token.party_id.upper()) != (
                uid.upper(), cc.upper(), pid.upper()):
            raise OCPIError(OCPIStatus.INVALID_PARAMETERS,
                            "uid, country_code and party_id must be those of the URL")
        self._check_token_use(self.party_of(request), token)
        created = self.registry.put_object("token", cc, pid, uid, self.dump(token))
        self._learn_token(token)
        return self.ok(status=201 if created else 200)

    def wants(self, id_token: str) -> bool:
        """RoamingPort: ask an eMSP about tokens the CSMS does not know, and about
        pushed tokens that are not whitelisted ALWAYS."""
        if not self.registry.parties(role="EMSP") or self.is_local(id_token):
            return False
        commanded = self._commanded_at.get(id_token.upper())
        if commanded is not None and datetime.now(UTC) - commanded < COMMAND_AUTH_WINDOW:
            return False  # mod_commands: a START_SESSION token is not asked about again
        token = self._known_token(id_token)
        if token is not None:
            if token.whitelist == WhitelistType.ALWAYS:
                self._auth_method[id_token.upper()] = AuthMethod.WHITELIST
                return False
            return True
        return self.core.authorizer.record(id_token) is None

    async def authorize(self, id_token: str, station_id: str,
                        evse_id: int | None) -> TokenRecord | None:
        """RoamingPort: real-time authorization at the token's eMSP (or each eMSP in
        turn for a token nobody pushed). ALLOWED -> Accepted; a token whose eMSP cannot
        be reached is accepted only when it was pushed as ALLOWED (the spec's
        'authorized when the eMSP is offline')."""
        if not _VALID_UID.fullmatch(id_token) or id_token in (".", ".."):
            return None  # not an OCPI token uid: no eMSP issued it
        known = self._known_token(id_token)
        parties = self.registry.parties(role="EMSP")
        if known is not None:
            parties = [p for p in parties if any(
                str(r.get("country_code", "")).upper() == known.country_code.upper()
                and str(r.get("party_id", "")).upper() == known.party_id.upper()
                for r in p.roles)]
        site = next((loc for (sid, _n), (loc, _u) in self._evse_uid.items()
                     if sid == station_id), None)
        refs = None
        if site is not None:
            uids = [u for (sid, n), (_l, u) in self._evse_uid.items()
                    if sid == station_id and (evse_id is None or n == evse_id)]
            refs = LocationReferences(location_id=site, evse_uids=uids)
        for party in parties:
            url = party.endpoint("tokens", "SENDER")
            if url is None or party.their_token is None:
                continue
            type_ = known.type.value if known is not None else "RFID"
            try:
                data, _ = await asyncio.wait_for(self.client.call(
                    "POST", f"{url.rstrip('/')}/{segment(id_token)}/authorize?type={type_}",
                    party.their_token, body=None if refs is None else self.dump(refs),
                    routing=self.routing_to(party, "EMSP")), self.authorize_timeout_s)
                info = AuthorizationInfo.model_validate(data)
            except OCPIRemoteError as exc:
                if exc.status_code == OCPIStatus.UNKNOWN_TOKEN or exc.http_status == 404:
                    continue  # not this eMSP's token
                log.warning("OCPI: real-time authorization at %s failed: %s", party.name(),
                            exc, extra={"event": "ocpi_authorize_failed"})
                if _offline_allowed(known):
                    return self._remember(id_token, TokenRecord(id_token, "Accepted",
                                                                local=False))
                continue
            except (TimeoutError, ValidationError) as exc:
                log.warning("OCPI: real-time authorization at %s failed: %s", party.name(),
                            type(exc).__name__, extra={"event": "ocpi_authorize_failed"})
                if _offline_allowed(known):
                    return self._remember(id_token, TokenRecord(id_token, "Accepted",
                                                                local=False))
                continue
            if info.token.uid.upper() != id_token.upper() or not self._owned_by(party,
                                                                               info.token):
                log.warning("OCPI: %s answered for a token that is not the one asked about "
                            "or not its own", party.name(),
                            extra={"event": "ocpi_authorize_failed"})
                continue
            self._keep_token(info.token)
            if info.authorization_reference:
                self._auth_refs[id_token.upper()] = info.authorization_reference
            self._auth_method[id_token.upper()] = AuthMethod.AUTH_REQUEST
            return self._remember(id_token, TokenRecord(
                id_token, _ALLOWED_TO_OCPP[info.allowed], group=info.token.group_id,
                local=False))
        return None

    def _remember(self, id_token: str, record: TokenRecord) -> TokenRecord | None:
        """The core takes the record (authorize_remote adds it); never over a provisioned
        token (None: the core answers from its own record)."""
        if self.is_local(id_token):
            return None
        return replace(record, roaming=True)

    # -- Sessions and CDRs ----------------------------------------------------------------
    def _observe(self, event: CoreEvent) -> None:
        self._queue.put_nowait(event)

    async def _push_loop(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                if isinstance(event, StatusChanged):
                    await self._push_status(event)
                else:
                    await self._push_session(event)
            except Exception:
                log.exception("OCPI: push failed")
            finally:
                self._queue.task_done()

    async def _push_status(self, event: StatusChanged) -> None:
        key = (event.station_id, event.evse_id)
        if key not in self._evse_uid:
            return
        try:
            at = parse_datetime(event.timestamp)
        except ValueError:
            at = datetime.now(UTC)
        self._evse_updated[key] = max(self._evse_updated.get(key, self.started), at)
        site, uid = self._evse_uid[key]
        if not self._site_ready(site):
            return
        status = evse_status(event.status)
        body = {"status": status.value, "last_updated": format_datetime(self._evse_updated[key])}
        for party in self.registry.parties(role="EMSP"):
            url = party.endpoint("locations", "RECEIVER")
            if url is None or party.their_token is None:
                continue
            try:
                await self.client.call(
                    "PATCH", f"{url.rstrip('/')}/{self.country_code}/{self.party_id}/"
                             f"{segment(site)}/{segment(uid)}",
                    party.their_token, body=body, routing=self.routing_to(party, "EMSP"))
            except OCPIRemoteError as exc:
                if exc.status_code == OCPIStatus.UNKNOWN_LOCATION or exc.http_status == 404:
                    # transport_and_format: a PATCH of an object the receiver lacks is
                    # followed by a PUT of the whole object.
                    await self.push_locations(party, only=site)
                    continue
                log.warning("OCPI: status push to %s failed: %s", party.name(), exc,
                            extra={"event": "ocpi_push_failed"})

    async def on_registered(self, party: Party) -> None:
        """An eMSP registered (either way): send it every Location (PUT), so that the
        status updates that follow (PATCH) have something to change."""
        if party.has_role("EMSP"):
            self._spawn(self.push_locations(party))

    async def push_locations(self, party: Party, only: str | None = None) -> int:
        """PUT every Location (or the one ``only``) to ``party``'s locations receiver;
        how many it took."""
        url = party.endpoint("locations", "RECEIVER")
        if url is None or party.their_token is None:
            return 0
        done = 0
        for loc in self.locations():
            if only is not None and loc.id != only:
                continue
            try:
                await self.client.call(
                    "PUT", f"{url.rstrip('/')}/{self.country_code}/{self.party_id}/"
                           f"{segment(loc.id)}",
                    party.their_token, body=self.dump(loc), routing=self.routing_to(party,
                                                                                    "EMSP"))
                done += 1
            except OCPIRemoteError as exc:
                log.warning("OCPI: location push to %s failed: %s", party.name(), exc,
                            extra={"event": "ocpi_push_failed"})
        return done

    def _token_party(self, id_token: str | None) -> tuple[Token, Party] | None:
        if id_token is None:
            return None
        token = self._known_token(id_token)
        if token is None:
            return None
        for party in self.registry.parties(role="EMSP"):
            if any(str(r.get("country_code", "")).upper() == token.country_code.upper()
                   and str(r.get("party_id", "")).upper() == token.party_id.upper()
                   for r in party.roles):
                return token, party
        return None

    def _cdr_token(self, token: Token) -> CdrToken:
        return CdrToken(country_code=token.country_code, party_id=token.party_id,
                        uid=token.uid, type=token.type, contract_id=token.contract_id)

    def _session(self, s: Session, token: Token, event_type: str,
                 cdr: dict[str, Any] | None) -> OCPISession:
        site, uid = self._evse_uid.get((s.station_id, s.evse_id), ("", ""))
        now = datetime.now(UTC)
        ended = cdr is not None
        kwh = (float(cdr["energy_wh"]) if cdr else s.billed_energy_wh) / 1000.0
        cost = (float(cdr["cost"]) if cdr else self.core.running_cost(s.station_id,
                                                                      s.transaction_id))
        currency = self.core.config.tariff.currency
        dims = [CdrDimension(type=CdrDimensionType.ENERGY, volume=round(kwh, 4))]
        if s.power_w > 0 and not ended:
            dims.append(CdrDimension(type=CdrDimensionType.POWER, volume=round(s.power_w / 1000,
                                                                               3)))
        if s.soc_percent is not None:
            dims.append(CdrDimension(type=CdrDimensionType.STATE_OF_CHARGE,
                                     volume=s.soc_percent))
        return OCPISession(
            country_code=self.country_code, party_id=self.party_id,
            id=ocpi_id(s.station_id, s.transaction_id), start_date_time=s.started_at,
            end_date_time=s.ended_at if ended else None, kwh=round(kwh, 4),
            cdr_token=self._cdr_token(token),
            auth_method=self._auth_method.get((s.id_token or "").upper(),
                                              AuthMethod.AUTH_REQUEST),
            authorization_reference=self._auth_refs.get((s.id_token or "").upper()),
            location_id=site, evse_uid=uid, connector_id="1", currency=currency,
            charging_periods=[ChargingPeriod(start_date_time=s.started_at, dimensions=dims)],
            total_cost=None if cost is None else Price(excl_vat=round(cost, 4)),
            status=SessionStatus.COMPLETED if ended else SessionStatus.ACTIVE,
            last_updated=now)

    def _cdr(self, s: Session, token: Token, cdr: dict[str, Any]) -> CDR:
        site, uid = self._evse_uid[(s.station_id, s.evse_id)]
        place = self._sites[site]
        assert place.latitude is not None and place.longitude is not None
        conn = self._connector(s.station_id, s.evse_id, self.started)
        energy_kwh = float(cdr["energy_wh"]) / 1000.0
        hours = float(cdr["duration_s"]) / 3600.0
        dims = [CdrDimension(type=CdrDimensionType.ENERGY, volume=round(energy_kwh, 4)),
                CdrDimension(type=CdrDimensionType.TIME, volume=round(hours, 4))]
        exported_kwh = float(cdr.get("exported_wh") or 0.0) / 1000.0
        if exported_kwh > 0:
            dims.append(CdrDimension(type=CdrDimensionType.ENERGY_EXPORT,
                                     volume=round(exported_kwh, 4)))
        started = parse_datetime(cdr["started_at"].replace("+00:00", "Z"))
        ended = parse_datetime(cdr["ended_at"].replace("+00:00", "Z"))
        return CDR(
            country_code=self.country_code, party_id=self.party_id,
            id=ocpi_id(s.station_id, s.transaction_id), start_date_time=started,
            end_date_time=ended, session_id=ocpi_id(s.station_id, s.transaction_id),
            cdr_token=self._cdr_token(token),
            auth_method=self._auth_method.get((s.id_token or "").upper(),
                                              AuthMethod.AUTH_REQUEST),
            authorization_reference=self._auth_refs.get((s.id_token or "").upper()),
            cdr_location=CdrLocation(
                id=site, name=place.display_name or site, address=place.address or "",
                city=place.city or "", postal_code=place.postal_code,
                country=place.country or "",
                coordinates=_coordinates(place.latitude, place.longitude), evse_uid=uid,
                evse_id=f"{self.country_code}*{self.party_id}*E{uid}"[:48], connector_id="1",
                connector_standard=conn.standard, connector_format=conn.format,
                connector_power_type=conn.power_type),
            currency=str(cdr["currency"]), tariffs=[self.tariff(site)],
            charging_periods=[ChargingPeriod(start_date_time=started, dimensions=dims,
                                             tariff_id=self._tariff_id(site))],
            total_cost=Price(excl_vat=round(float(cdr["cost"]), 4)),
            total_energy=round(energy_kwh, 4), total_time=round(hours, 4),
            total_parking_time=None, last_updated=datetime.now(UTC))

    def has_station(self, station_id: str) -> bool:
        """Whether ``station_id`` is one of this CPO's."""
        return any(sid == station_id for sid, _n in self._evse_uid)

    async def _push_session(self, event: SessionChanged) -> None:
        s = event.session
        if (s.station_id, s.evse_id) not in self._evse_uid:
            return  # another CPO's station on a shared CSMS
        found = self._token_party(s.id_token)
        if found is None:
            return  # not a roaming session
        token, party = found
        sid = ocpi_id(s.station_id, s.transaction_id)
        if sid.upper() not in self._sessions:
            self._sessions[sid.upper()] = (s.station_id, s.transaction_id, token.country_code,
                                           token.party_id)
            self.registry.put_object("session_ref", self.country_code, self.party_id, sid, {
                "id": sid, "station_id": s.station_id, "transaction_id": s.transaction_id,
                "country_code": token.country_code, "party_id": token.party_id,
                "last_updated": format_datetime(datetime.now(UTC))})
        # Updates at most every SESSION_PUSH_S of the session's own time (its meter
        # readings): the eMSP follows the session without a PUT per meter value.
        at = s.meter_last_at or s.started_at
        last = self._pushed_at.get(sid)
        if event.event_type == "Updated" and last is not None \
                and (at - last).total_seconds() < SESSION_PUSH_S:
            return
        self._pushed_at[sid] = at
        if event.event_type == "Ended":
            self._pushed_at.pop(sid, None)
        session = self._session(s, token, event.event_type, event.cdr)
        self.registry.put_object("session", self.country_code, self.party_id, sid,
                                 self.dump(session))
        routing = self.routing_to(party, "EMSP")
        url = party.endpoint("sessions", "RECEIVER")
        if url is not None and party.their_token is not None:
            try:
                await self.client.call(
                    "PUT", f"{url.rstrip('/')}/{self.country_code}/{self.party_id}/"
                           f"{segment(sid)}",
                    party.their_token, body=self.dump(session), routing=routing)
            except OCPIRemoteError as exc:
                log.warning("OCPI: session push to %s failed: %s", party.name(), exc,
                            extra={"event": "ocpi_push_failed"})
        if event.cdr is None:
            return
        cdr = self._cdr(s, token, event.cdr)
        # How it was authorized belongs to this session only; an ended session can no
        # longer be stopped.
        self._auth_method.pop((s.id_token or "").upper(), None)
        self._auth_refs.pop((s.id_token or "").upper(), None)
        if self._sessions.pop(sid.upper(), None) is not None:
            self.registry.delete_object("session_ref", self.country_code, self.party_id, sid)
        self.registry.put_object("cdr", self.country_code, self.party_id, cdr.id,
                                 self.dump(cdr))
        url = party.endpoint("cdrs", "RECEIVER")
        if url is not None and party.their_token is not None:
            try:
                await self.client.call("POST", url, party.their_token, body=self.dump(cdr),
                                       routing=routing)
            except OCPIRemoteError as exc:
                log.warning("OCPI: CDR push to %s failed: %s", party.name(), exc,
                            extra={"event": "ocpi_push_failed"})

    def _mine(self, request: web.Request, objects: list[dict[str, Any]]
              ) -> list[dict[str, Any]]:
        """The objects whose token belongs to the asking party."""
        party = self.party_of(request)
        owners = {(str(r.get("country_code", "")).upper(), str(r.get("party_id", "")).upper())
                  for r in party.roles}
        return [o for o in objects
                if (o["cdr_token"]["country_code"].upper(),
                    o["cdr_token"]["party_id"].upper()) in owners]

    async def _get_sessions(self, request: web.Request) -> web.Response:
        if "date_from" not in request.query:
            raise OCPIError(OCPIStatus.INVALID_PARAMETERS, "date_from: required")
        items = self._mine(request, self.registry.objects("session"))
        page = paginate(request, items, lambda o: parse_datetime(o["last_updated"]),
                        base_url=self._public_url)
        return self.ok(page.items, headers=page.headers)

    async def _get_cdrs(self, request: web.Request) -> web.Response:
        items = self._mine(request, self.registry.objects("cdr"))
        page = paginate(request, items, lambda o: parse_datetime(o["last_updated"]),
                        base_url=self._public_url)
        return self.ok(page.items, headers=page.headers)

    # -- Commands -------------------------------------------------------------------------
    async def _command(self, request: web.Request) -> web.Response:
        party = self.party_of(request)
        name = request.match_info["command"].upper()
        try:
            command = CommandType(name)
        except ValueError:
            raise OCPIError(OCPIStatus.INVALID_PARAMETERS,
                            f"command: unknown {name!r}", http_status=404) from None
        body = await self.body(request, COMMAND_BODIES[command])
        try:
            response, work = self._accept_command(party, command, body)
        except OCPIError as exc:
            if exc.status_code == OCPIStatus.UNKNOWN_LOCATION:  # as the spec's example
                exc.data = self.dump(CommandResponse(result=CommandResponseType.REJECTED,
                                                     timeout=0))
            raise
        if work is not None:
            self._spawn(self._run_command(party, str(body.response_url), work))
        return self.ok(self.dump(response))

    def _locate(self, location_id: str, evse_uid: str | None) -> tuple[str, int]:
        if not any(n.upper() == location_id.upper() and self._site_ready(n)
                   for n in self._sites):
            raise OCPIError(OCPIStatus.UNKNOWN_LOCATION, f"unknown location {location_id!r}")
        if evse_uid is None:
            for (sid, n), (loc, _u) in self._evse_uid.items():
                if loc.upper() == location_id.upper():
                    return sid, n
        else:
            found = self._evse_at.get((location_id.upper(), evse_uid.upper()))
            if found is not None:
                return found
        raise OCPIError(OCPIStatus.UNKNOWN_LOCATION,
                        f"unknown EVSE {evse_uid!r} at {location_id!r}")

    def _accept_command(self, party: Party, command: CommandType, body: Any
                        ) -> tuple[CommandResponse, Any]:
        accepted = CommandResponse(result=CommandResponseType.ACCEPTED,
                                   timeout=COMMAND_TIMEOUT_S)
        party_key = str(party.id)
        if command == CommandType.START_SESSION:
            assert isinstance(body, StartSession)
            self._check_token_use(party, body.token)
            station_id, evse_id = self._locate(body.location_id, body.evse_uid)
            self._keep_token(body.token)
            # The eMSP authorized it by sending the command (auth_method COMMAND).
            self._add_record(TokenRecord(body.token.uid, "Accepted", local=False))
            self._auth_method[body.token.uid.upper()] = AuthMethod.COMMAND
            self._commanded_at[body.token.uid.upper()] = datetime.now(UTC)
            if body.authorization_reference:
                self._auth_refs[body.token.uid.upper()] = body.authorization_reference
            return accepted, ("start", station_id, evse_id, body.token.uid)
        if command == CommandType.STOP_SESSION:
            assert isinstance(body, StopSession)
            found = self._sessions.get(body.session_id.upper())
            # Another party's session is unknown to this one (it may not stop it).
            if found is None or (found[0], found[1]) not in self.core.sessions \
                    or not any(str(r.get("country_code", "")).upper() == found[2].upper()
                               and str(r.get("party_id", "")).upper() == found[3].upper()
                               for r in party.roles):
                return CommandResponse(result=CommandResponseType.UNKNOWN_SESSION,
                                       timeout=0), None
            return accepted, ("stop", found[0], found[1])
        if command == CommandType.RESERVE_NOW:
            assert isinstance(body, ReserveNow)
            self._check_token_use(party, body.token)
            station_id, evse_id = self._locate(body.location_id, body.evse_uid)
            number = _reservation_number(party_key, body.reservation_id)
            self._reservations[(party_key, body.reservation_id.upper())] = (station_id, number)
            self._keep_token(body.token)
            self._add_record(TokenRecord(body.token.uid, "Accepted", local=False))
            self._auth_method[body.token.uid.upper()] = AuthMethod.COMMAND
            self._commanded_at[body.token.uid.upper()] = datetime.now(UTC)
            return accepted, ("reserve", station_id, evse_id if body.evse_uid else None,
                              number, body.token.uid, body.expiry_date)
        if command == CommandType.CANCEL_RESERVATION:
            assert isinstance(body, CancelReservation)
            found_r = self._reservations.get((party_key, body.reservation_id.upper()))
            if found_r is None:
                return CommandResponse(result=CommandResponseType.REJECTED, timeout=0,
                                       message=[DisplayText(language="en",
                                                            text="unknown reservation")]), None
            return accepted, ("cancel", *found_r)
        assert isinstance(body, UnlockConnector)
        station_id, evse_id = self._locate(body.location_id, body.evse_uid)
        return accepted, ("unlock", station_id, evse_id)

    async def _run_command(self, party: Party, response_url: str, work: tuple[Any, ...]
                           ) -> None:
        kind, station_id = work[0], work[1]
        shell = self.server.connections.get(station_id)
        result = CommandResultType.FAILED
        message = ""
        if shell is None:
            result, message = CommandResultType.EVSE_INOPERATIVE, "the station is offline"
        else:
            status_now = None
            if kind in ("start", "reserve", "unlock") and work[2] is not None:
                status_now = self.core.status.get((station_id, work[2]))
            try:
                if kind in ("start", "reserve") and status_now in ("Faulted", "Unavailable"):
                    result = CommandResultType.EVSE_INOPERATIVE
                elif kind == "start":
                    answer = await shell.request_start(work[2], work[3])
                    result = _result(answer.get("status"), status_now)
                elif kind == "stop":
                    answer = await shell.request_stop(work[2])
                    result = _result(answer.get("status"), None)
                elif kind == "reserve":
                    _k, _s, evse_id, number, uid, expiry = work
                    answer = await shell.reserve_now(number, uid, expiry, evse_id=evse_id)
                    result = _result(answer.get("status"), status_now)
                elif kind == "cancel":
                    answer = await shell.cancel_reservation(work[2])
                    result = (CommandResultType.ACCEPTED if answer.get("status") == "Accepted"
                              else CommandResultType.UNKNOWN_RESERVATION)
                else:
                    answer = await shell.unlock_connector(work[2])
                    result = (CommandResultType.ACCEPTED
                              if answer.get("status") in ("Unlocked", "Accepted")
                              else CommandResultType.FAILED)
            except TimeoutError:
                result, message = CommandResultType.TIMEOUT, "the station did not answer"
            except Exception as exc:  # a CALLERROR, a closed connection, ...
                result, message = CommandResultType.FAILED, f"{type(exc).__name__}: {exc}"[:200]
        outcome = CommandResult(result=result, message=[DisplayText(language="en",
                                                                    text=message)]
                                if message else [])
        if party.their_token is None:
            return
        try:
            await self.client.call("POST", response_url, party.their_token,
                                   body=self.dump(outcome), routing=self.routing_to(party,
                                                                                    "EMSP"))
        except OCPIRemoteError as exc:
            log.warning("OCPI: command result to %s failed: %s", party.name(), exc,
                        extra={"event": "ocpi_push_failed"})


def _offline_allowed(token: Token | None) -> bool:
    """mod_tokens: a valid token pushed as ALLOWED or ALLOWED_OFFLINE is accepted when
    its eMSP cannot be reached."""
    return token is not None and token.valid and token.whitelist in (
        WhitelistType.ALLOWED, WhitelistType.ALLOWED_OFFLINE)


def _result(ocpp_status: Any, evse_status_now: str | None) -> CommandResultType:
    """An OCPP answer (RequestStart, RemoteStart, ReserveNow, ...) as a CommandResult."""
    if ocpp_status == "Accepted":
        return CommandResultType.ACCEPTED
    if ocpp_status in ("Occupied",) or evse_status_now in ("Occupied", "Charging",
                                                           "Preparing", "SuspendedEV",
                                                           "SuspendedEVSE", "Finishing"):
        return CommandResultType.EVSE_OCCUPIED
    if ocpp_status in ("Faulted", "Unavailable"):
        return CommandResultType.EVSE_INOPERATIVE
    return CommandResultType.REJECTED


def _hhmm(hour: float) -> str:
    minutes = round(hour * 60) % (24 * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


class _Patch(BaseModel):
    """A PATCH body: some of an object's fields (checked once merged), and
    ``last_updated``, which every PATCH must carry."""

    model_config = ConfigDict(extra="allow", frozen=True)
    last_updated: str | None = None
