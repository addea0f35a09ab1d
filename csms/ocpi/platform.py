"""An OCPI 2.2.1 platform: the HTTP server, the versions and credentials modules,
and the registration handshake in both directions. :class:`~.cpo.CPO` and
:class:`~.emsp.EMSP` add their functional modules.

Credentials (the spec's ``credentials`` chapter):

- the platform that starts (the *sender*) got ``CREDENTIALS_TOKEN_A`` and the other's
  versions URL out of band; it reads the other's versions with token A, makes token B,
  and POSTs its credentials (token B, its versions URL, its roles) with token A;
- the *receiver* reads the sender's versions with token B (3001 if it cannot, 3002 if
  there is no 2.2.1), stores the sender, makes token C and answers with its own
  credentials; token A is used up;
- from then on each side presents the token the other gave it. A POST by a registered
  party, or a PUT or DELETE by an unregistered one, is HTTP 405. Token A (or the token
  of a handshake under way) opens only the versions and credentials modules (else 401).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from .models import (
    BusinessDetails,
    Credentials,
    CredentialsRole,
    Endpoint,
    InterfaceRole,
    ModuleID,
    Role,
    Version,
    VersionDetails,
)
from .registry import Party, Registry, new_credentials_token
from .transport import (
    OCPI_VERSION,
    OCPIClient,
    OCPIError,
    OCPIRemoteError,
    OCPIStatus,
    Routing,
    credentials_token,
    envelope,
    module_address,
    validation_message,
)

log = logging.getLogger("evtwin.csms.ocpi")

__all__ = ["OCPIPlatform", "RegistrationError"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)
#: Bodies larger than this are refused (413).
MAX_BODY_BYTES = 1 << 20


#: What authentication found, kept on the request.
PARTY = web.RequestKey("party", Party)
TOKEN_A = web.RequestKey("token_a", str)


class RegistrationError(Exception):
    """The credentials handshake with another party failed (the message says where)."""


class OCPIPlatform:
    """One OCPI party on one HTTP port: ``/ocpi/versions``, ``/ocpi/2.2.1`` and
    ``/ocpi/2.2.1/credentials``, plus its role's modules under
    ``/ocpi/<role>/2.2.1/<module>``."""

    role: ClassVar[Role]
    #: The modules a subclass serves: (module, interface role, path under the role's prefix).
    modules: ClassVar[tuple[tuple[ModuleID, InterfaceRole, str], ...]] = ()

    def __init__(self, registry: Registry, *, country_code: str, party_id: str, name: str,
                 host: str = "127.0.0.1", port: int = 0, public_url: str | None = None,
                 client: OCPIClient | None = None) -> None:
        self.registry = registry
        self.country_code = country_code.upper()
        self.party_id = party_id.upper()
        self.name = name
        self.host = host
        self.port = port
        self._public_url = public_url
        self.client = client or OCPIClient()
        self.app = web.Application(middlewares=[self._middleware],
                                   client_max_size=MAX_BODY_BYTES)
        r = self.app.router
        r.add_get("/ocpi/versions", self._versions)
        r.add_get(f"/ocpi/{OCPI_VERSION}", self._version_details)
        r.add_route("*", f"/ocpi/{OCPI_VERSION}/credentials", self._credentials)
        self.add_routes(r)
        self._runner: web.AppRunner | None = None

    # -- to be given by roles -----------------------------------------------------------
    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Add the role's module routes."""

    # -- addresses ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self._public_url or f"http://{self.host}:{self.port}"

    @property
    def versions_url(self) -> str:
        return f"{self.base_url}/ocpi/versions"

    @property
    def prefix(self) -> str:
        """Path prefix of the role's modules."""
        return f"/ocpi/{self.role.value.lower()}/{OCPI_VERSION}"

    def credentials_roles(self) -> list[CredentialsRole]:
        return [CredentialsRole(role=self.role, business_details=BusinessDetails(name=self.name),
                                party_id=self.party_id, country_code=self.country_code)]

    def routing_to(self, party: Party, role: str) -> Routing:
        cc, pid = party.identity(role)
        return Routing(self.country_code, self.party_id, cc, pid)

    # -- life ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.client.close()

    # -- plumbing -----------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request.headers.get("X-Request-ID", "")
        correlation_id = request.headers.get("X-Correlation-ID", "")
        try:
            self._authenticate(request)
            response = await handler(request)
        except OCPIError as exc:
            response = web.json_response(envelope(exc.data, exc.status_code, exc.message),
                                         status=exc.http_status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = OCPIStatus.CLIENT_ERROR if exc.status < 500 else OCPIStatus.SERVER_ERROR
            response = web.json_response(envelope(None, code, exc.reason), status=exc.status)
        except Exception:
            # The module only: object ids in the path (token uids) stay out of the log.
            log.exception("OCPI: %s %s failed", request.method, module_address(str(request.url)))
            response = web.json_response(
                envelope(None, OCPIStatus.SERVER_ERROR, "internal error (see the log)"),
                status=500)
        response.headers["X-Request-ID"] = request_id
        response.headers["X-Correlation-ID"] = correlation_id
        party = request.get(PARTY)
        if party is not None and request.path.startswith(self.prefix) and party.roles:
            cc, pid = party.identity()
            response.headers.update(Routing(self.country_code, self.party_id, cc, pid).headers())
        return response

    def _authenticate(self, request: web.Request) -> None:
        token = credentials_token(request.headers.get("Authorization"))
        if token is None:
            raise OCPIError(OCPIStatus.CLIENT_ERROR,
                            "send 'Authorization: Token <base64 credentials token>'",
                            http_status=401)
        # The configuration modules (versions, credentials) live outside the role's prefix.
        configuration = (request.path == "/ocpi/versions"
                         or request.path.startswith(f"/ocpi/{OCPI_VERSION}"))
        party = self.registry.party_by_token(token)
        if party is not None and party.status == "registered":
            request[PARTY] = party
            return
        if configuration and party is None and self.registry.is_token_a(token):
            request[TOKEN_A] = token
            return
        if configuration and party is not None:  # a handshake under way (token B)
            return
        raise OCPIError(OCPIStatus.CLIENT_ERROR, "unknown credentials token"
                        if party is None else "registration not finished", http_status=401)

    @staticmethod
    async def json_body(request: web.Request) -> Any:
        """The request body as JSON (HTTP 400 if it is not JSON)."""
        try:
            return json.loads(await request.text())
        except ValueError:
            raise OCPIError(OCPIStatus.CLIENT_ERROR, "the body is not JSON",
                            http_status=400) from None

    @classmethod
    async def body(cls, request: web.Request, model: type[M]) -> M:
        """The request body as ``model``: HTTP 400 if it is not JSON, OCPI 2001 naming
        every bad field if it is not a valid object."""
        data = await cls.json_body(request)
        try:
            return model.model_validate(data)
        except ValidationError as err:
            raise OCPIError(OCPIStatus.INVALID_PARAMETERS, validation_message(err)) from None

    @staticmethod
    def ok(data: Any = None, *, status: int = 200,
           headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(envelope(data), status=status, headers=headers)

    @staticmethod
    def dump(obj: BaseModel) -> dict[str, Any]:
        return obj.model_dump(mode="json", exclude_none=True)

    @staticmethod
    def party_of(request: web.Request) -> Party:
        """The registered party that sent ``request`` (modules need one)."""
        return request[PARTY]

    # -- versions -----------------------------------------------------------------------
    async def _versions(self, request: web.Request) -> web.Response:
        return self.ok([self.dump(Version(version=OCPI_VERSION,
                                          url=f"{self.base_url}/ocpi/{OCPI_VERSION}"))])

    def endpoints(self) -> list[Endpoint]:
        out = [Endpoint(identifier=ModuleID.CREDENTIALS, role=InterfaceRole.SENDER,
                        url=f"{self.base_url}/ocpi/{OCPI_VERSION}/credentials"),
               Endpoint(identifier=ModuleID.CREDENTIALS, role=InterfaceRole.RECEIVER,
                        url=f"{self.base_url}/ocpi/{OCPI_VERSION}/credentials")]
        out += [Endpoint(identifier=m, role=r, url=f"{self.base_url}{self.prefix}/{path}")
                for m, r, path in self.modules]
        return out

    async def _version_details(self, request: web.Request) -> web.Response:
        details = VersionDetails(version=OCPI_VERSION,
                                 endpoints=self.endpoints())
        return self.ok(self.dump(details))

    def our_credentials(self, token: str) -> Credentials:
        return Credentials(token=token, url=self.versions_url, roles=self.credentials_roles())

    # -- credentials (server side) ------------------------------------------------------
    async def _credentials(self, request: web.Request) -> web.Response:
        party = request.get(PARTY)
        method = request.method
        if method == "GET":
            if party is None:
                raise OCPIError(OCPIStatus.CLIENT_ERROR, "not registered", http_status=405)
            return self.ok(self.dump(self.our_credentials("*" * 8)))  # token never echoed
        if method == "DELETE":
            if party is None:
                raise OCPIError(OCPIStatus.CLIENT_ERROR, "not registered", http_status=405)
            self.registry.unregister(party)
            log.info("OCPI: %s unregistered", party.name(),
                     extra={"event": "ocpi_unregistered", "party": party.name()})
            return self.ok()
        if method not in ("POST", "PUT"):
            raise OCPIError(OCPIStatus.CLIENT_ERROR, f"{method} is not allowed here",
                            http_status=405)
        if method == "POST" and party is not None:
            raise OCPIError(OCPIStatus.CLIENT_ERROR,
                            "already registered (PUT updates, DELETE unregisters)",
                            http_status=405)
        if method == "PUT" and party is None:
            raise OCPIError(OCPIStatus.CLIENT_ERROR, "not registered yet (POST first)",
                            http_status=405)
        creds = await self.body(request, Credentials)
        token_a = request.get(TOKEN_A)
        if token_a is not None and not self.registry.claim_token_a(token_a):
            raise OCPIError(OCPIStatus.CLIENT_ERROR, "this registration token was used",
                            http_status=401)
        target = party or Party(id=None, status="pending", versions_url=creds.url)
        try:
            await self._fetch_endpoints(target, creds.url, creds.token)
            self.check_partner(target, creds)
        except BaseException:
            if token_a is not None:  # not registered: the token may be tried again
                self.registry.release_token_a(token_a)
            raise
        token_c = new_credentials_token()
        target.status = "registered"
        target.versions_url = creds.url
        target.their_token = creds.token
        target.roles = [r.model_dump(mode="json", exclude_none=True) for r in creds.roles]
        self.registry.save(target, our_token=token_c)
        log.info("OCPI: %s registered", target.name(),
                 extra={"event": "ocpi_registered", "party": target.name()})
        await self.on_registered(target)
        return self.ok(self.dump(self.our_credentials(token_c)))

    def check_partner(self, party: Party, creds: Credentials) -> None:
        """Refuse a party whose roles or endpoints this platform cannot work with (3003)."""

    async def on_registered(self, party: Party) -> None:
        """Called once a party is registered (either direction)."""

    async def _fetch_endpoints(self, party: Party, versions_url: str, token: str) -> None:
        """Read the party's 2.2.1 endpoints with ``token`` into ``party`` (3001/3002)."""
        try:
            versions = await self.client.call("GET", versions_url, token)
            listed = [Version.model_validate(v) for v in versions[0] or []]
        except (OCPIRemoteError, ValidationError, TypeError) as exc:
            raise OCPIError(OCPIStatus.UNABLE_TO_USE_CLIENT_API,
                            f"could not read your versions at {versions_url}: {exc}") from None
        mine = [v for v in listed if v.version == OCPI_VERSION]
        if not mine:
            raise OCPIError(OCPIStatus.UNSUPPORTED_VERSION,
                            f"no OCPI {OCPI_VERSION} among your versions "
                            f"({', '.join(v.version for v in listed) or 'none'})")
        try:
            details, _ = await self.client.call("GET", mine[0].url, token)
            parsed = VersionDetails.model_validate(details)
        except (OCPIRemoteError, ValidationError) as exc:
            raise OCPIError(OCPIStatus.UNABLE_TO_USE_CLIENT_API,
                            f"could not read your {OCPI_VERSION} endpoints: {exc}") from None
        party.version = OCPI_VERSION
        party.endpoints = [e.model_dump(mode="json") for e in parsed.endpoints]

    # -- credentials (client side) ------------------------------------------------------
    async def register_with(self, versions_url: str, token_a: str) -> Party:
        """Start the handshake with the platform at ``versions_url`` using its one-time
        ``token_a``; returns the registered party. RegistrationError says what failed."""
        party = Party(id=None, status="pending", versions_url=versions_url)
        try:
            await self._fetch_endpoints(party, versions_url, token_a)
        except OCPIError as exc:
            raise RegistrationError(exc.message) from None
        url = party.endpoint("credentials", "RECEIVER") or party.endpoint("credentials",
                                                                           "SENDER")
        if url is None:
            raise RegistrationError(f"{versions_url}: no credentials endpoint")
        token_b = new_credentials_token()
        self.registry.save(party, our_token=token_b)  # it will read our versions with B
        try:
            data, _ = await self.client.call("POST", url, token_a,
                                             body=self.dump(self.our_credentials(token_b)))
            theirs = Credentials.model_validate(data)
        except (OCPIRemoteError, ValidationError) as exc:
            self.registry.unregister(party)
            raise RegistrationError(f"{url}: registration refused: {exc}") from None
        party.status = "registered"
        party.their_token = theirs.token
        party.roles = [r.model_dump(mode="json", exclude_none=True) for r in theirs.roles]
        self.registry.save(party)
        log.info("OCPI: registered with %s", party.name(),
                 extra={"event": "ocpi_registered", "party": party.name()})
        await self.on_registered(party)
        return party

    async def register_until_done(self, partners: list[tuple[str, str]],
                                  stopping: asyncio.Event | None = None) -> None:
        """Register with each (versions URL, token A) not registered yet, retrying
        (0.2 s doubling to 10 s) those that are not reachable yet."""
        delay = 0.2
        while stopping is None or not stopping.is_set():
            pending = False
            for versions_url, token_a in partners:
                if any(p.versions_url == versions_url for p in self.registry.parties()):
                    continue
                try:
                    await self.register_with(versions_url, token_a)
                except RegistrationError as exc:
                    pending = True
                    log.warning("OCPI: registration with %s failed: %s", versions_url, exc,
                                extra={"event": "ocpi_registration_failed"})
            if not pending:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def partners(self) -> list[dict[str, Any]]:
        """Registered parties, for dashboards: name, roles, versions URL."""
        return [{"id": p.id, "name": p.name(), "roles": [r.get("role") for r in p.roles],
                 "versions_url": p.versions_url} for p in self.registry.parties()]
