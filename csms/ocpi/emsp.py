"""An e-mobility service provider (eMSP) over OCPI 2.2.1: it issues tokens to its
drivers, authorizes them at partner CPOs in real time, receives their sessions and
CDRs, bills its drivers and settles with each CPO.

Run on its own (``evtwin emsp serve emsp.toml``) with a file such as::

    [emsp]
    country_code = "NL"
    party_id = "MSP"
    name = "Roam Easy"
    port = 9400
    registry = "emsp.sqlite"

    [billing]
    markup_percent = 10.0      # on what the CPO charged
    fee_per_session = 0.35     # per roaming session

    [[drivers]]
    id = "driver-1"
    tokens = [{ uid = "04A2B3C4D5E6F7", contract_id = "NL-MSP-C00000001-X" }]

    [[partners]]               # CPOs to register with (their token A, out of band)
    versions_url = "http://127.0.0.1:9300/ocpi/versions"
    token_a = "..."

Modules: ``tokens`` (SENDER: the list, and ``POST {uid}/authorize``), ``locations``,
``sessions``, ``cdrs`` and ``tariffs`` (RECEIVER), ``commands`` (SENDER: it sends
START_SESSION and the others, and takes the CommandResult at its ``response_url``).
After registering with a CPO it pushes its tokens there (PUT), so the CPO knows whose
they are; a token's ``whitelist`` says whether the CPO must ask in real time.

Bills: a driver pays the CPO's ``total_cost`` plus the markup plus the session fee;
the eMSP owes the CPO the ``total_cost`` (settlement). Driver identifiers (token uids,
contract ids) are written pseudonymised in logs and reports
(:class:`evtwin.csms.privacy.Pseudonymiser`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tomllib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..exceptions import ConfigError
from ..privacy import Pseudonymiser
from .models import (
    CDR,
    AllowedType,
    AuthorizationInfo,
    CommandResponse,
    CommandResult,
    CommandType,
    InterfaceRole,
    LocationReferences,
    ModuleID,
    Role,
    Token,
    TokenType,
    WhitelistType,
    format_datetime,
    parse_datetime,
)
from .models import Session as OCPISession
from .platform import OCPIPlatform
from .registry import Party, Registry
from .transport import (
    OCPIError,
    OCPIRemoteError,
    OCPIStatus,
    paginate,
    segment,
    validation_message,
)

log = logging.getLogger("evtwin.csms.ocpi.emsp")

__all__ = ["EMSP", "EMSPConfig", "load_emsp_config", "serve_emsp", "settlement"]

_BILLS = """
CREATE TABLE IF NOT EXISTS bills (
    cdr_key       TEXT PRIMARY KEY,
    driver        TEXT NOT NULL,
    token_uid     TEXT NOT NULL,
    cpo           TEXT NOT NULL,
    session_id    TEXT,
    energy_kwh    REAL NOT NULL,
    exported_kwh  REAL NOT NULL,
    cpo_cost      REAL NOT NULL,
    driver_amount REAL NOT NULL,
    currency      TEXT NOT NULL,
    ended_at      TEXT NOT NULL,
    billed_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS authorizations (
    reference  TEXT PRIMARY KEY,
    token_uid  TEXT NOT NULL,
    location   TEXT,
    allowed    TEXT NOT NULL,
    at         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS command_results (
    id       TEXT PRIMARY KEY,
    command  TEXT NOT NULL,
    result   TEXT,
    sent_at  TEXT NOT NULL,
    done_at  TEXT
);
"""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EMSPSection(_Strict):
    country_code: str = Field(pattern=r"^[A-Z]{2}$")
    party_id: str = Field(pattern=r"^[A-Z0-9]{3}$")
    name: str = Field(min_length=1, max_length=100)
    host: str = "127.0.0.1"
    port: int = Field(9400, ge=0, le=65535)
    public_url: str | None = Field(None, pattern=r"^https?://[^/\s]+$")
    registry: Path = Path("emsp.sqlite")
    """Partners, tokens, sessions, CDRs and bills (relative to this file)."""


class BillingSection(_Strict):
    currency: str = Field("EUR", min_length=3, max_length=3)
    markup_percent: float = Field(0.0, ge=0, le=1000, allow_inf_nan=False)
    fee_per_session: float = Field(0.0, ge=0, allow_inf_nan=False)


class TokenEntry(_Strict):
    uid: str = Field(min_length=1, max_length=36, pattern=r"^[\x21-\x7E]+$")
    contract_id: str = Field(min_length=1, max_length=36, pattern=r"^[\x21-\x7E]+$")
    type: TokenType = TokenType.RFID
    whitelist: WhitelistType = WhitelistType.NEVER
    """NEVER: every start is authorized in real time; ALWAYS: the CPO may decide alone."""
    valid: bool = True
    visual_number: str | None = Field(None, max_length=64)


class DriverEntry(_Strict):
    id: str = Field(min_length=1, max_length=64)
    """The driver's account (not personal: a number the eMSP gives)."""
    tokens: list[TokenEntry] = Field(min_length=1)
    blocked: bool = False


class PartnerEntry(_Strict):
    versions_url: str = Field(pattern=r"^https?://\S+$")
    token_a: str = Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7E]+$")


class EMSPConfig(_Strict):
    emsp: EMSPSection
    billing: BillingSection = BillingSection()
    drivers: list[DriverEntry] = Field(default_factory=list)
    partners: list[PartnerEntry] = Field(default_factory=list)


def load_emsp_config(path: str | Path) -> EMSPConfig:
    """Read an eMSP file; ConfigError names the file and field at fault."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(str(p), "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), f"cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), f"not TOML: {exc}") from None
    try:
        config = EMSPConfig.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(x) for x in e["loc"])
        raise ConfigError(f"{p}: {where}", e["msg"]) from None
    uids = [t.uid.upper() for d in config.drivers for t in d.tokens]
    dupes = sorted({u for u in uids if uids.count(u) > 1})
    if dupes:
        raise ConfigError(f"{p}: drivers", f"token uid(s) given twice: {dupes}")
    base = p.resolve().parent
    return config.model_copy(update={"emsp": config.emsp.model_copy(
        update={"registry": base / config.emsp.registry})})


class EMSP(OCPIPlatform):
    """The eMSP's OCPI platform (see the module docstring)."""

    role = Role.EMSP
    modules = ((ModuleID.TOKENS, InterfaceRole.SENDER, "tokens"),
               (ModuleID.LOCATIONS, InterfaceRole.RECEIVER, "locations"),
               (ModuleID.SESSIONS, InterfaceRole.RECEIVER, "sessions"),
               (ModuleID.CDRS, InterfaceRole.RECEIVER, "cdrs"),
               (ModuleID.TARIFFS, InterfaceRole.RECEIVER, "tariffs"),
               (ModuleID.COMMANDS, InterfaceRole.SENDER, "commands"))

    def __init__(self, config: EMSPConfig, registry: Registry, *,
                 pseudonymise: Callable[[str | None], str | None] | None = None) -> None:
        e = config.emsp
        super().__init__(registry, country_code=e.country_code, party_id=e.party_id,
                         name=e.name, host=e.host, port=e.port, public_url=e.public_url)
        self.config = config
        registry.executescript(_BILLS)
        self.pseudonymise = pseudonymise or Pseudonymiser(self._key())
        self.started = datetime.now(UTC)
        #: token uid (upper) -> (driver, Token).
        self.tokens: dict[str, tuple[DriverEntry, Token]] = {}
        for driver in config.drivers:
            for t in driver.tokens:
                self.tokens[t.uid.upper()] = (driver, Token(
                    country_code=e.country_code, party_id=e.party_id, uid=t.uid, type=t.type,
                    contract_id=t.contract_id, visual_number=t.visual_number,
                    issuer=e.name, valid=t.valid and not driver.blocked,
                    whitelist=t.whitelist, last_updated=self.started))
        self._results: dict[str, asyncio.Future[CommandResult]] = {}

    def _key(self) -> bytes:
        """This eMSP's pseudonymisation key, made once and kept in its registry."""
        self.registry.executescript(
            "CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        rows = self.registry.execute("SELECT value FROM secrets WHERE name = 'pseudonym_key'")
        if rows:
            return bytes.fromhex(rows[0]["value"])
        key = uuid.uuid4().bytes + uuid.uuid4().bytes
        self.registry.execute("INSERT OR IGNORE INTO secrets VALUES ('pseudonym_key', ?)",
                              (key.hex(),))
        return bytes.fromhex(self.registry.execute(
            "SELECT value FROM secrets WHERE name = 'pseudonym_key'")[0]["value"])

    # -- routes -------------------------------------------------------------------------
    def add_routes(self, router: web.UrlDispatcher) -> None:
        p = self.prefix
        router.add_get(f"{p}/tokens", self._get_tokens)
        router.add_post(f"{p}/tokens/{{uid}}/authorize", self._authorize)
        base = f"{p}/locations/{{country_code}}/{{party_id}}/{{location_id}}"
        for path in (base, base + "/{evse_uid}", base + "/{evse_uid}/{connector_id}"):
            router.add_route("*", path, self._location)
        router.add_route("*", f"{p}/sessions/{{country_code}}/{{party_id}}/{{session_id}}",
                         self._session)
        router.add_post(f"{p}/cdrs", self._post_cdr)
        router.add_get(f"{p}/cdrs/{{key}}", self._get_cdr)
        router.add_route("*", f"{p}/tariffs/{{country_code}}/{{party_id}}/{{tariff_id}}",
                         self._tariff)
        router.add_post(f"{p}/commands/{{command}}/{{uid}}", self._command_result)

    def _sender_of(self, request: web.Request, cc: str, pid: str) -> Party:
        party = self.party_of(request)
        if not any(str(r.get("country_code", "")).upper() == cc.upper()
                   and str(r.get("party_id", "")).upper() == pid.upper() for r in party.roles):
            raise OCPIError(OCPIStatus.CLIENT_ERROR, f"{cc}/{pid} is not a role you registered",
                            http_status=404)
        return party

    # -- Tokens (sender) ------------------------------------------------------------------
    async def _get_tokens(self, request: web.Request) -> web.Response:
        tokens = [t for _d, t in self.tokens.values()]
        page = paginate(request, tokens, lambda t: t.last_updated, base_url=self._public_url)
        return self.ok([self.dump(t) for t in page.items], headers=page.headers)

    async def _authorize(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        type_ = request.query.get("type", "RFID")
        found = self.tokens.get(uid.upper())
        if found is None or found[1].type.value != type_:
            # mod_tokens: an unknown Token is HTTP 404 (with OCPI 2004).
            raise OCPIError(OCPIStatus.UNKNOWN_TOKEN, "unknown token", http_status=404)
        token = found[1]
        location: LocationReferences | None = None
        if await request.text():
            location = await self.body(request, LocationReferences)
        allowed = AllowedType.ALLOWED if token.valid else AllowedType.BLOCKED
        reference = uuid.uuid4().hex[:36]
        self.registry.execute(
            "INSERT INTO authorizations VALUES (?, ?, ?, ?, ?)",
            (reference, token.uid, location.location_id if location else None, allowed.value,
             format_datetime(datetime.now(UTC))))
        log.info("OCPI: authorized %s for %s: %s", self.pseudonymise(token.uid),
                 self.party_of(request).name(), allowed.value,
                 extra={"event": "emsp_authorize", "token": self.pseudonymise(token.uid),
                        "allowed": allowed.value})
        info = AuthorizationInfo(allowed=allowed, token=token, location=location,
                                 authorization_reference=reference)
        return self.ok(self.dump(info))

    async def on_registered(self, party: Party) -> None:
        """Push every token to a CPO we registered with (Tokens is client-owned)."""
        if party.has_role("CPO"):
            self._spawn_push_tokens(party)

    def _spawn_push_tokens(self, party: Party) -> None:
        task = asyncio.ensure_future(self.push_tokens(party))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def push_tokens(self, party: Party) -> int:
        """PUT every token to the CPO's tokens receiver; returns how many it took."""
        url = party.endpoint("tokens", "RECEIVER")
        if url is None or party.their_token is None:
            return 0
        done = 0
        for _driver, token in self.tokens.values():
            try:
                await self.client.call(
                    "PUT", f"{url.rstrip('/')}/{token.country_code}/{token.party_id}/"
                           f"{segment(token.uid)}?type={token.type.value}", party.their_token,
                    body=self.dump(token), routing=self.routing_to(party, "CPO"))
                done += 1
            except OCPIRemoteError as exc:
                log.warning("OCPI: token push to %s failed: %s", party.name(), exc,
                            extra={"event": "ocpi_push_failed"})
        return done

    # -- receivers ------------------------------------------------------------------------
    async def _client_owned(self, request: web.Request, kind: str, object_id: str,
                            model: type[BaseModel] | None) -> web.Response:
        """GET/PUT/PATCH of a client-owned object (Locations, Sessions, Tariffs)."""
        cc, pid = request.match_info["country_code"], request.match_info["party_id"]
        self._sender_of(request, cc, pid)
        stored = self.registry.get_object(kind, cc, pid, object_id)
        if request.method == "GET":
            if stored is None:
                raise OCPIError(OCPIStatus.CLIENT_ERROR, f"unknown {kind} {object_id!r}",
                                http_status=404)
            return self.ok(stored)
        if request.method == "DELETE" and kind == "tariff":
            self.registry.delete_object(kind, cc, pid, object_id)
            return self.ok()
        data = await self.json_body(request)
        if not isinstance(data, dict):
            raise OCPIError(OCPIStatus.INVALID_PARAMETERS, "the body is not an object")
        if request.method == "PATCH":
            if "last_updated" not in data:
                raise OCPIError(OCPIStatus.INVALID_PARAMETERS,
                                "last_updated: required in a PATCH")
            if stored is None:
                raise OCPIError(OCPIStatus.CLIENT_ERROR, f"unknown {kind} {object_id!r}",
                                http_status=404)
            data = {**stored, **data}
        elif request.method != "PUT":
            raise OCPIError(OCPIStatus.CLIENT_ERROR, f"{request.method} is not allowed",
                            http_status=405)
        if model is not None:
            try:
                obj = model.model_validate(data)
            except ValidationError as err:
                raise OCPIError(OCPIStatus.INVALID_PARAMETERS, validation_message(err)
                                ) from None
            data = self.dump(obj)
            if str(data.get("id", object_id)).upper() != object_id.upper():
                raise OCPIError(OCPIStatus.INVALID_PARAMETERS, "id: not the URL's id")
        created = self.registry.put_object(kind, cc, pid, object_id, data)
        return self.ok(status=201 if created else 200)

    async def _location(self, request: web.Request) -> web.Response:
        from .models import EVSE, Connector, Location

        loc_id = request.match_info["location_id"]
        uid = request.match_info.get("evse_uid")
        conn = request.match_info.get("connector_id")
        cc, pid = request.match_info["country_code"], request.match_info["party_id"]
        if uid is None:
            return await self._client_owned(request, "location", loc_id, Location)
        # An EVSE or connector inside a stored Location: patched in place.
        self._sender_of(request, cc, pid)
        stored = self.registry.get_object("location", cc, pid, loc_id)
        if stored is None:
            raise OCPIError(OCPIStatus.UNKNOWN_LOCATION, f"unknown location {loc_id!r}",
                            http_status=404 if request.method == "GET" else 200)
        evses = stored.get("evses", [])
        index = next((i for i, e in enumerate(evses) if e["uid"].upper() == uid.upper()), None)
        if request.method == "GET":
            if index is None:
                raise OCPIError(OCPIStatus.UNKNOWN_LOCATION, f"unknown EVSE {uid!r}",
                                http_status=404)
            if conn is None:
                return self.ok(evses[index])
            c = next((c for c in evses[index]["connectors"] if c["id"].upper() == conn.upper()),
                     None)
            if c is None:
                raise OCPIError(OCPIStatus.UNKNOWN_LOCATION, f"unknown connector {conn!r}",
                                http_status=404)
            return self.ok(c)
        data = await self.body(request, _Patch) if request.method == "PATCH" else None
        if request.method == "PATCH":
            assert data is not None
            if data.last_updated is None:
                raise OCPIError(OCPIStatus.INVALID_PARAMETERS,
                                "last_updated: required in a PATCH")
            if index is None:
                raise OCPIError(OCPIStatus.UNKNOWN_LOCATION, f"unknown EVSE {uid!r}")
            patch = data.model_dump(exclude_unset=True)
            try:
                if conn is None:
                    evses[index] = self.dump(EVSE.model_validate({**evses[index], **patch}))
                else:
                    conns = evses[index]["connectors"]
                    k = next(i for i, c in enumerate(conns) if c["id"].upper() == conn.upper())
                    conns[k] = self.dump(Connector.model_validate({**conns[k], **patch}))
            except (ValidationError, StopIteration) as exc:
                raise OCPIError(OCPIStatus.INVALID_PARAMETERS, str(exc).splitlines()[0]
                                ) from None
        elif request.method == "PUT":
            if conn is None:
                evse = await self.body(request, EVSE)
                if index is None:
                    evses.append(self.dump(evse))
                else:
                    evses[index] = self.dump(evse)
            else:
                raise OCPIError(OCPIStatus.CLIENT_ERROR, "PUT a connector with its EVSE",
                                http_status=405)
        else:
            raise OCPIError(OCPIStatus.CLIENT_ERROR, f"{request.method} is not allowed",
                            http_status=405)
        stored["evses"] = evses
        stored["last_updated"] = max(str(stored["last_updated"]),
                                     str(patch.get("last_updated", ""))
                                     if request.method == "PATCH" else "")
        self.registry.put_object("location", cc, pid, loc_id, stored)
        return self.ok()

    async def _session(self, request: web.Request) -> web.Response:
        return await self._client_owned(request, "session", request.match_info["session_id"],
                                        OCPISession)

    async def _tariff(self, request: web.Request) -> web.Response:
        from .models import Tariff

        return await self._client_owned(request, "tariff", request.match_info["tariff_id"],
                                        Tariff)

    async def _post_cdr(self, request: web.Request) -> web.Response:
        cdr = await self.body(request, CDR)
        party = self._sender_of(request, cdr.country_code, cdr.party_id)
        key = f"{cdr.country_code}-{cdr.party_id}-{cdr.id}"
        if self.registry.get_object("cdr", cdr.country_code, cdr.party_id, cdr.id) is not None:
            # CDRs are immutable: the same one again changes nothing (a retried POST).
            return self.ok(headers={"Location": f"{self.base_url}{self.prefix}/cdrs/{key}"})
        self.registry.put_object("cdr", cdr.country_code, cdr.party_id, cdr.id, self.dump(cdr))
        self._bill(cdr, party)
        return self.ok(status=201,
                       headers={"Location": f"{self.base_url}{self.prefix}/cdrs/{key}"})

    async def _get_cdr(self, request: web.Request) -> web.Response:
        parts = request.match_info["key"].split("-", 2)
        if len(parts) != 3:
            raise OCPIError(OCPIStatus.CLIENT_ERROR, "unknown CDR", http_status=404)
        cc, pid, cdr_id = parts
        self._sender_of(request, cc, pid)
        stored = self.registry.get_object("cdr", cc, pid, cdr_id)
        if stored is None:
            raise OCPIError(OCPIStatus.CLIENT_ERROR, "unknown CDR", http_status=404)
        return self.ok(stored)

    # -- billing --------------------------------------------------------------------------
    def _bill(self, cdr: CDR, party: Party) -> None:
        """Bill the driver of a CDR of one of our tokens, in our currency; any other
        CDR is kept (it was received) but neither billed nor settled."""
        found = self.tokens.get(cdr.cdr_token.uid.upper())
        b = self.config.billing
        ours = (found is not None and cdr.cdr_token.country_code.upper() == self.country_code
                and cdr.cdr_token.party_id.upper() == self.party_id)
        if not ours or cdr.currency != b.currency:
            log.warning("OCPI: CDR %s from %s not billed: %s", cdr.id, party.name(),
                        "not one of our tokens" if not ours else
                        f"in {cdr.currency}, not {b.currency}",
                        extra={"event": "emsp_not_billed"})
            return
        assert found is not None
        driver = found[0].id
        cost = cdr.total_cost.excl_vat
        amount = round(cost * (1 + b.markup_percent / 100.0) + b.fee_per_session, 2)
        exported = sum(d.volume for p in cdr.charging_periods for d in p.dimensions
                       if d.type.value == "ENERGY_EXPORT")
        cpo = f"{cdr.country_code}*{cdr.party_id}"
        self.registry.execute(
            "INSERT OR IGNORE INTO bills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (f"{cpo}*{cdr.id}", driver, cdr.cdr_token.uid, cpo, cdr.session_id,
             cdr.total_energy, exported, cost, amount, cdr.currency,
             format_datetime(cdr.end_date_time), format_datetime(datetime.now(UTC))))
        log.info("OCPI: CDR %s from %s billed: %.2f %s to %s", cdr.id, cpo, amount, cdr.currency,
                 driver, extra={"event": "emsp_billed", "cpo": cpo, "driver": driver,
                                "token": self.pseudonymise(cdr.cdr_token.uid)})

    def bills(self) -> list[dict[str, Any]]:
        rows = self.registry.execute("SELECT * FROM bills ORDER BY ended_at, cdr_key")
        return [dict(r) | {"token_uid": self.pseudonymise(r["token_uid"])} for r in rows]

    def report(self) -> dict[str, Any]:
        """Roaming KPIs: sessions, energy, what each driver paid, what is owed each CPO."""
        return settlement(self.registry)

    async def pull_cdrs(self, party: Party) -> int:
        """GET the CPO's CDRs (all pages) and keep and bill the ones not received yet (a
        push lost in an outage); returns how many were new."""
        url = party.endpoint("cdrs", "SENDER")
        if url is None or party.their_token is None:
            return 0
        # Only what changed since the last pull that worked (less 5 minutes for the
        # clocks; date_from is inclusive and duplicates are skipped): a CDR whose push
        # was lost was made after it.
        cc, pid = party.identity("CPO")
        last = self.registry.get_object("pull", cc, pid, "cdrs")
        started = datetime.now(UTC)
        query = ""
        if last is not None:
            since = parse_datetime(last["at"]) - timedelta(minutes=5)
            query = f"?date_from={format_datetime(since)}"
        try:
            found = await self.client.get_all(url + query, party.their_token,
                                              routing=self.routing_to(party, "CPO"))
        except OCPIRemoteError as exc:
            log.warning("OCPI: CDR pull from %s failed: %s", party.name(), exc,
                        extra={"event": "ocpi_pull_failed"})
            return 0
        at = format_datetime(started)
        self.registry.put_object("pull", cc, pid, "cdrs", {"at": at, "last_updated": at})
        new = 0
        for data in found:
            try:
                cdr = CDR.model_validate(data)
            except ValidationError:
                continue  # the spec: process the valid objects of a list
            if not any(str(r.get("country_code", "")).upper() == cdr.country_code.upper()
                       and str(r.get("party_id", "")).upper() == cdr.party_id.upper()
                       for r in party.roles):
                continue
            if self.registry.get_object("cdr", cdr.country_code, cdr.party_id,
                                        cdr.id) is None:
                self.registry.put_object("cdr", cdr.country_code, cdr.party_id, cdr.id,
                                         self.dump(cdr))
                self._bill(cdr, party)
                new += 1
        return new

    async def catch_up(self) -> None:
        """For every CPO registered before: push the tokens again (blocked drivers,
        new tokens) and pull the CDRs missed while either side was down."""
        for party in self.registry.parties(role="CPO"):
            await self.push_tokens(party)
            await self.pull_cdrs(party)

    # -- commands (sender) ----------------------------------------------------------------
    async def send_command(self, party: Party, command: CommandType, body: dict[str, Any], *,
                           result_timeout_s: float = 60.0
                           ) -> tuple[CommandResponse, CommandResult | None]:
        """Send ``command`` (its body without ``response_url``) to a CPO; the CPO's
        answer and, once it comes, the CommandResult (None if it does not come in time)."""
        url = party.endpoint("commands", "RECEIVER")
        if url is None or party.their_token is None:
            raise OCPIError(OCPIStatus.NO_MATCHING_ENDPOINTS,
                            f"{party.name()} has no commands receiver")
        uid = uuid.uuid4().hex
        response_url = f"{self.base_url}{self.prefix}/commands/{command.value}/{uid}"
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._results[uid] = future
        self.registry.execute("INSERT INTO command_results(id, command, sent_at) "
                              "VALUES (?, ?, ?)", (uid, command.value,
                                                   format_datetime(datetime.now(UTC))))
        try:
            data, _ = await self.client.call(
                "POST", f"{url.rstrip('/')}/{command.value}", party.their_token,
                body={**body, "response_url": response_url}, routing=self.routing_to(party,
                                                                                     "CPO"))
            response = CommandResponse.model_validate(data)
            result = None
            if response.result.value == "ACCEPTED":
                with contextlib.suppress(TimeoutError):
                    result = await asyncio.wait_for(asyncio.shield(future), result_timeout_s)
            return response, result
        finally:
            self._results.pop(uid, None)

    async def _command_result(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        result = await self.body(request, CommandResult)
        self.registry.execute("UPDATE command_results SET result = ?, done_at = ? WHERE id = ?",
                              (result.result.value, format_datetime(datetime.now(UTC)), uid))
        future = self._results.get(uid)
        if future is not None and not future.done():
            future.set_result(result)
        return self.ok()

    def token(self, uid: str) -> Token:
        return self.tokens[uid.upper()][1]


class _Patch(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    last_updated: str | None = None


def settlement(registry: Registry) -> dict[str, Any]:
    """The eMSP's roaming KPIs from its bills: per CPO (sessions, kWh, owed) and per
    driver (sessions, kWh, paid), and the totals."""
    rows = registry.execute("SELECT * FROM bills")
    cpos: dict[str, dict[str, Any]] = {}
    drivers: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = cpos.setdefault(r["cpo"], {"sessions": 0, "energy_kwh": 0.0, "owed": 0.0,
                                       "currency": r["currency"]})
        c["sessions"] += 1
        c["energy_kwh"] += r["energy_kwh"]
        c["owed"] += r["cpo_cost"]
        d = drivers.setdefault(r["driver"], {"sessions": 0, "energy_kwh": 0.0, "paid": 0.0,
                                             "currency": r["currency"]})
        d["sessions"] += 1
        d["energy_kwh"] += r["energy_kwh"]
        d["paid"] += r["driver_amount"]
    for group in (cpos, drivers):
        for v in group.values():
            v["energy_kwh"] = round(v["energy_kwh"], 4)
            for k in ("owed", "paid"):
                if k in v:
                    v[k] = round(v[k], 2)
    return {"roaming_sessions": len(rows),
            "energy_kwh": round(sum(r["energy_kwh"] for r in rows), 4),
            "owed_to_cpos": round(sum(r["cpo_cost"] for r in rows), 2),
            "paid_by_drivers": round(sum(r["driver_amount"] for r in rows), 2),
            "margin": round(sum(r["driver_amount"] - r["cpo_cost"] for r in rows), 2),
            "cpos": cpos, "drivers": drivers}


async def serve_emsp(config: EMSPConfig, *, stop: asyncio.Event | None = None,
                     on_listening: Callable[[EMSP], None] | None = None) -> signal.Signals | None:
    """Run the eMSP until ``stop`` or SIGINT/SIGTERM; register with its partners."""
    try:
        registry = Registry(config.emsp.registry)
    except Exception as exc:  # sqlite3.Error, OSError
        raise ConfigError("emsp.registry", f"{config.emsp.registry}: cannot open: {exc}"
                          ) from None
    emsp = EMSP(config, registry)
    loop = asyncio.get_running_loop()
    stopping = stop or asyncio.Event()
    received: list[signal.Signals] = []
    handled = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
            handled.append(sig)
    try:
        try:
            await emsp.start()
        except OSError as exc:
            from ..server import listen_error

            raise listen_error(exc, emsp.host, emsp.port, what="the eMSP",
                               host_field="emsp.host", port_field="emsp.port") from None
        log.info("listening", extra={"event": "listening", "ocpi_url": emsp.versions_url})
        if on_listening is not None:
            on_listening(emsp)
        catching_up = asyncio.ensure_future(_catch_up_every(emsp, CATCH_UP_S))
        registering = asyncio.ensure_future(emsp.register_until_done(
            [(p.versions_url, p.token_a) for p in config.partners], stopping))
        await stopping.wait()
        registering.cancel()
        catching_up.cancel()
    finally:
        await emsp.stop()
        registry.close()
        for sig in handled:
            loop.remove_signal_handler(sig)
    return received[0] if received else None


#: How often ``emsp serve`` pushes its tokens again and pulls missed CDRs, in seconds.
CATCH_UP_S = 900.0


async def _catch_up_every(emsp: EMSP, interval_s: float) -> None:
    while True:
        try:
            await emsp.catch_up()
        except Exception:  # a partner's bad answer must not end the eMSP
            log.exception("OCPI: catch-up failed")
        await asyncio.sleep(interval_s)
