"""The standalone CSMS's configuration file (TOML), as strict pydantic models.

Every error is reported at once with its file and field, like scenario files::

    csms.toml: stations.0.evse_max_kw: must be > 0
"""

from __future__ import annotations

import re
import ssl
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .auth import IdTokenType, TokenRecord, TokenStatus
from .certs import StationCA
from .exceptions import ConfigError
from .model import CSMSConfig, EvseSpec, SiteSpec, StationSpec, Tariff
from .privacy import PrivacySection
from .security import SecurityConfig, check_password_hash, server_ssl_context
from .strategies import check_strategy_name
from .tariffs import check_tariff

_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
}


def read_toml(path: str | Path) -> tuple[dict[str, Any] | None, str]:
    """A TOML file as a mapping, or (None, what went wrong) for an error line."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8")), ""
    except FileNotFoundError:
        return None, "file not found"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read the file: {exc}"
    except tomllib.TOMLDecodeError as exc:
        return None, f"TOML syntax error: {exc}"


def validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    """pydantic errors as ``(dotted.path, short message)`` pairs, all of them."""
    out = []
    for e in err.errors():
        if not e["loc"] and e["type"] == "value_error":
            continue  # a model-level validator: callers report those themselves
        path = ".".join(str(p) for p in e["loc"])
        template = _MESSAGES.get(e["type"])
        msg = template.format(**e.get("ctx", {})) if template else e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        # Errors of a sub-model's own validator name their field first.
        if ": " in msg and msg.split(": ", 1)[0].replace(".", "").replace("_", "").isalnum():
            head, msg = msg.split(": ", 1)
            path = f"{path}.{head}" if path else head
        out.append((path, msg))
    return out


class FileConfigError(ConfigError):
    """A configuration file with problems; ``str()`` gives one line per problem."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        Exception.__init__(self, "\n".join(f"{source}: {p}: {m}" if p else f"{source}: {m}"
                                           for p, m in problems))
        self.field = problems[0][0] if problems else ""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSection(_Strict):
    """Where and how the websocket endpoint listens."""

    host: str = "127.0.0.1"
    port: int = Field(9000, ge=0, le=65535)
    max_frame_bytes: int = Field(65536, gt=0)
    """Frames larger than this close the connection (1009)."""
    response_timeout_s: float = Field(30.0, gt=0)
    max_frames_per_s: float | None = Field(20.0, gt=0)
    """Inbound frame rate a station may keep up; beyond it (after the burst) its
    connection is closed (1008). Real stations send a few frames a minute."""
    max_frames_burst: float = Field(200.0, ge=1)
    open_timeout_s: float = Field(10.0, gt=0)
    """Time a connection has to complete its HTTP upgrade; longer ones are dropped
    and recorded (``handshake_timeout``)."""
    backlog: int = Field(4096, ge=1)
    """Listen queue for connections not yet accepted (a restart is a reconnect storm:
    connections beyond it are dropped and retried by the stations' TCP after 1, 3,
    7 s...). Linux caps it at ``net.core.somaxconn`` (4096 since kernel 5.4)."""
    reuse_port: bool | None = None
    """Let several ``csms serve`` processes listen on this port (Linux SO_REUSEPORT);
    default: on when the database is a shared PostgreSQL server."""
    auth_failures_per_peer: int = Field(100, ge=0)
    """Failed upgrades (bad credentials, unknown or invalid identity) from one IP
    address (IPv6: one /64) per ``auth_failure_window_s`` before it is throttled
    (HTTP 429; correct credentials that check cheaply still get in). 0: no limit."""
    auth_failures_per_identity: int = Field(10, ge=0)
    """The same for one station identity from one address. 0: no limit."""
    auth_failure_window_s: float = Field(60.0, gt=0)
    security_events_per_minute: int = Field(10, ge=1)
    """Security events stored and logged per (peer address, kind) per minute; the
    rest are counted and summarised in one later event."""
    security_events_total_per_minute: int = Field(600, ge=1)
    """The same cap over all peers together."""
    security_event_retention_days: float | None = Field(90.0, gt=0)
    """Security events older than this are deleted (checked hourly). None: kept."""
    security_event_max_rows: int | None = Field(100_000, ge=1)
    """At most this many security events are kept (the newest). None: no cap."""
    ping_interval_s: float = Field(20.0, ge=0)
    """Websocket ping to every station this often (0: never). Pings are how the
    CSMS notices a station whose link died without a TCP reset; each costs a frame
    each way (10,000 stations at 20 s: 500 pings a second). A longer interval saves
    that CPU but keeps a dead station "connected" longer."""
    ping_timeout_s: float = Field(20.0, ge=0)
    """A ping not answered within this closes the connection (0: never)."""
    stats_interval_s: float = Field(60.0, ge=0)
    """Log a ``stats`` line this often: CALLs handled, server-side handling time
    (p50/p99/max in ms, frame in to answer written) and event-loop lag since the
    last line (also on SIGUSR1). 0: only on SIGUSR1."""
    stall_report_ms: float = Field(0.0, ge=0)
    """Log a ``loop_stall`` line, with the code the event loop was running, each
    time the loop is blocked longer than this (a watchdog thread samples its
    stack; see :mod:`evtwin.csms.stallwatch`). 0: off."""


class ControlSection(_Strict):
    """Smart charging."""

    strategy: str = "uncontrolled"
    interval_s: float = Field(60.0, gt=0)
    charging_rate_unit: Literal["W", "A"] = "W"
    v2g_peak_target_percent: float = Field(50.0, gt=0, le=100)
    """v2g_peak_shaving: transformer loading to shave to, in % of its limit."""

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        return check_strategy_name(v)


class OCPPSection(_Strict):
    """Protocol settings."""

    heartbeat_interval_s: int = Field(300, gt=0)
    max_event_age_days: float = Field(400.0, gt=0)
    """Oldest timestamp accepted on a station's event, in days before the CSMS's time
    (a station offline for long still delivers its queue); older is refused."""
    max_event_lead_h: float = Field(24.0, gt=0)
    """Latest timestamp accepted, in hours after the CSMS's time (clock skew; raise it
    for virtual stations that run faster than the wall clock, ``evtwin stations
    --speed``)."""


class TariffBand(_Strict):
    """One time-of-use band of the driver tariff: from ``start_h`` (local) to the next."""

    start_h: float = Field(ge=0, lt=24, allow_inf_nan=False)
    price_per_kwh: float = Field(ge=0, allow_inf_nan=False)


class TariffSection(_Strict):
    """Prices for charge detail records."""

    energy_per_kwh: float = Field(0.30, ge=0, allow_inf_nan=False)
    time_per_hour: float = Field(0.0, ge=0, allow_inf_nan=False)
    session_fee: float = Field(0.0, ge=0, allow_inf_nan=False)
    currency: str = Field("EUR", min_length=3, max_length=3)
    export_per_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    """Credit per kWh a session feeds back to the grid (V2G)."""
    cost_updated_interval_s: float = Field(0.0, ge=0, le=86400, allow_inf_nan=False)
    """OCPP 2.x: tell stations a session's running cost (CostUpdated) at most this often,
    as its meter reports; 0 (default) never does."""
    kind: Literal["flat", "tou", "occupancy"] = "flat"
    """Driver-facing policy (see evtwin.csms.tariffs): ``flat`` (``energy_per_kwh``),
    ``tou`` (``bands``) or ``occupancy`` (a surcharge when the site is busy)."""
    bands: list[TariffBand] = Field(default_factory=list)
    """tou: daily bands of a price per kWh, each from its local start hour."""
    timezone: str = "UTC"
    """The bands' local clock: UTC, an offset (+01:00) or an IANA name."""
    occupancy_threshold: float = Field(0.8, gt=0, le=1, allow_inf_nan=False)
    occupancy_surcharge_per_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    idle_fee_per_min: float = Field(0.0, ge=0, allow_inf_nan=False)
    idle_grace_min: float = Field(0.0, ge=0, allow_inf_nan=False)
    idle_fee_cap: float | None = Field(None, ge=0, allow_inf_nan=False)
    site_offsets_per_kwh: dict[str, float] = Field(default_factory=dict)
    """Added to every per-kWh price at the named site (negative: cheaper there)."""
    push_to_stations: bool = False
    """OCPP 2.1: send each station the tariff (SetDefaultTariff) once it has booted."""

    @model_validator(mode="after")
    def _usable(self) -> TariffSection:
        check_tariff(self.tariff())  # ValueError naming the field
        return self

    def tariff(self) -> Tariff:
        """The core's tariff."""
        return Tariff(self.energy_per_kwh, self.time_per_hour, self.session_fee,
                      self.currency, self.export_per_kwh, self.cost_updated_interval_s,
                      kind=self.kind, bands=tuple((b.start_h, b.price_per_kwh)
                                                  for b in self.bands),
                      timezone=self.timezone, occupancy_threshold=self.occupancy_threshold,
                      occupancy_surcharge_per_kwh=self.occupancy_surcharge_per_kwh,
                      idle_fee_per_min=self.idle_fee_per_min,
                      idle_grace_min=self.idle_grace_min, idle_fee_cap=self.idle_fee_cap,
                      site_offsets_per_kwh=tuple(sorted(self.site_offsets_per_kwh.items())),
                      push_to_stations=self.push_to_stations)


class SiteSection(_Strict):
    """A site and its import limit for EV charging."""

    name: str = Field(min_length=1)
    limit_kw: float | None = Field(None, gt=0)
    # Where the site is: OCPI publishes it as a Location (its stations' EVSEs in
    # it) and the driver API finds it by distance. Lengths are OCPI 2.2.1's.
    display_name: str | None = Field(None, min_length=1, max_length=255)
    address: str | None = Field(None, min_length=1, max_length=45)
    city: str | None = Field(None, min_length=1, max_length=45)
    postal_code: str | None = Field(None, min_length=1, max_length=10)
    country: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    """ISO 3166-1 alpha-3 (``DEU``)."""
    latitude: float | None = Field(None, ge=-90, le=90, allow_inf_nan=False)
    longitude: float | None = Field(None, ge=-180, le=180, allow_inf_nan=False)
    time_zone: str | None = None
    """IANA time zone (``Europe/Berlin``)."""

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r} (an IANA name like "
                                 "Europe/Berlin)") from None
        return v


class StationSection(_Strict):
    """A station the CSMS accepts."""

    id: str = Field(min_length=1, max_length=48, pattern=r"^[^:/]+$")
    """OCPP-J identity: at most 48 characters, no ':'."""
    site: str = "default"
    evse_max_kw: list[float] = Field(default_factory=lambda: [11.0], min_length=1)
    """Hardware limit of each EVSE (connector) in kW; EVSE ids are 1, 2, ..."""
    phases: Literal[1, 3] = 3
    line: Literal[1, 2, 3] | None = None
    """The line (L1, L2, L3) a single-phase station is on; with it, strategies keep each
    phase of the site within a third of the site's limit."""
    bus: int | None = None
    """The feeder bus the station is connected to (index in the ``[feeder]``
    network's bus table); needed for every station when ``[feeder]`` is set."""
    password_hash: str | None = None
    """Basic auth password hash for security profiles 1 and 2, as printed by
    ``evtwin csms hash-password`` (``sha256$salt$hash``; older ``scrypt$N$r$p$salt$hash``
    hashes still work but are slow to check); never the password."""

    @field_validator("password_hash")
    @classmethod
    def _readable_hash(cls, v: str | None) -> str | None:
        if v is not None:
            check_password_hash(v)
        return v

    @field_validator("line")
    @classmethod
    def _line_of_one_phase(cls, v: int | None, info: ValidationInfo) -> int | None:
        # (An invalid phases is reported on its own.)
        if v is not None and "phases" in info.data and info.data["phases"] != 1:
            raise ValueError("a line only for a single-phase station (phases = 1)")
        return v


class SecuritySection(_Strict):
    """OCPP security profile of the websocket endpoint (one profile per port).

    Relative paths are read from the config file's folder.
    """

    profile: Literal[0, 1, 2, 3] = 0
    """0 none (ws://), 1 Basic auth (ws://), 2 Basic auth over TLS 1.2+ (wss://),
    3 mutual TLS (wss://, station certificate CN = station identity)."""
    tls_cert: Path | None = None
    """Server certificate chain, PEM (profiles 2 and 3)."""
    tls_key: Path | None = None
    """Server private key, PEM, unencrypted (profiles 2 and 3)."""
    ca_cert: Path | None = None
    """CA certificate(s), PEM, that station certificates must chain to (profile 3)."""
    tls_cert_2: Path | None = None
    """A second server certificate of the other key type (RSA beside ECDSA), PEM:
    OCPP 2.0.1's TLS suites need both (A00.FR.318)."""
    tls_key_2: Path | None = None
    """Its private key, PEM, unencrypted."""
    tls_ciphers: Literal["spec", "ecdhe"] = "spec"
    """TLS 1.2 suites: ``spec`` (the four OCPP 2.0.1 names, ECDHE-RSA too) or ``ecdhe``
    (forward secrecy only: no TLS_RSA_WITH_AES_* static-RSA suites)."""
    station_ca_cert: Path | None = None
    """CA certificate, PEM, that signs stations' certificate requests (SignCertificate);
    without it they are answered Rejected."""
    station_ca_key: Path | None = None
    """Its private key, PEM, unencrypted."""
    station_cert_days: int = Field(365, ge=1, le=3650)
    """Validity of the certificates it signs."""

    def station_ca(self) -> StationCA | None:
        """The CA that signs station certificates, if configured (paths resolved)."""
        if self.station_ca_cert is None or self.station_ca_key is None:
            return None
        return StationCA(self.station_ca_cert, self.station_ca_key,
                         validity_days=self.station_cert_days)

    def resolved(self, base: Path) -> SecuritySection:
        """This section with relative paths taken from the folder ``base``."""
        update = {name: base / p for name in ("tls_cert", "tls_key", "ca_cert", "tls_cert_2",
                                              "tls_key_2", "station_ca_cert", "station_ca_key")
                  if (p := getattr(self, name)) is not None and not p.is_absolute()}
        return self.model_copy(update=update)

    def file_problems(self) -> list[tuple[str, str]]:
        """Missing or unloadable files among those configured, as ``(path, message)``."""
        return self._station_ca_problems() + self._tls_problems()

    def _station_ca_problems(self) -> list[tuple[str, str]]:
        if self.station_ca_cert is not None and self.profile < 2:
            return [("security.station_ca_cert", "signs station certificates only for "
                     "stations that authenticate over TLS (profile 2 or 3)")]
        if (self.station_ca_cert is None) != (self.station_ca_key is None):
            missing = "station_ca_key" if self.station_ca_key is None else "station_ca_cert"
            return [(f"security.{missing}", "station_ca_cert and station_ca_key go together")]
        try:
            self.station_ca()
        except FileNotFoundError as exc:
            name = ("station_ca_cert" if exc.filename == str(self.station_ca_cert)
                    else "station_ca_key")
            return [(f"security.{name}", f"file not found: {exc.filename}")]
        except (OSError, ValueError, TypeError) as exc:
            return [("security.station_ca_key", f"cannot load with station_ca_cert: {exc}")]
        return []

    def _tls_problems(self) -> list[tuple[str, str]]:
        used = {2: ("tls_cert", "tls_key"), 3: ("tls_cert", "tls_key", "ca_cert")}
        problems = []
        for name in used.get(self.profile, ()):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                problems.append((f"security.{name}", f"file not found: {path}"))
        if problems or self.tls_cert is None or self.tls_key is None or self.profile < 2:
            return problems
        try:
            server_ssl_context(self.tls_cert, self.tls_key)
        except (ssl.SSLError, OSError) as exc:
            problems.append(("security.tls_key", f"cannot load with tls_cert: {exc}"))
        if (self.tls_cert_2 is None) != (self.tls_key_2 is None):
            missing = "tls_key_2" if self.tls_key_2 is None else "tls_cert_2"
            problems.append((f"security.{missing}", "tls_cert_2 and tls_key_2 go together"))
        elif self.tls_cert_2 is not None and self.tls_key_2 is not None and not problems:
            for name in ("tls_cert_2", "tls_key_2"):
                if not getattr(self, name).is_file():
                    problems.append((f"security.{name}", f"file not found: "
                                                         f"{getattr(self, name)}"))
            if not problems:
                try:
                    server_ssl_context(self.tls_cert, self.tls_key,
                                       second=(self.tls_cert_2, self.tls_key_2))
                except (ssl.SSLError, OSError) as exc:
                    problems.append(("security.tls_key_2", f"cannot load with tls_cert_2: "
                                                           f"{exc}"))
        if self.profile == 3 and self.ca_cert is not None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=self.ca_cert)
            except (ssl.SSLError, OSError) as exc:
                problems.append(("security.ca_cert", f"cannot load: {exc}"))
        return problems


class TokenEntry(_Strict):
    """One token with more than "accepted": its status, group, expiry."""

    id: str = Field(min_length=1, max_length=255)
    status: TokenStatus = "Accepted"
    group: str | None = Field(None, min_length=1, max_length=20)
    """Group id token (2.x groupIdToken, 1.6 parentIdTag, at most 20 characters as
    1.6 allows): any token of the group may stop a transaction another one started."""
    expires: AwareDatetime | None = None
    """After this the token is Expired (and the auth cache drops it then)."""
    local: bool = True
    """Sent in stations' local authorization lists."""
    type: IdTokenType = "ISO14443"
    """How the token is presented (2.x IdTokenEnumType), for the local list."""


class TokensSection(_Strict):
    """Id tokens (RFID uids, contract ids) the CSMS accepts."""

    accepted: list[str] = Field(default_factory=list)
    """Tokens that are simply Accepted."""
    entries: list[TokenEntry] = Field(default_factory=list)
    """Tokens with a status, group or expiry of their own."""
    master_pass_group: str | None = Field(None, min_length=1, max_length=20)
    """Tokens of this group are master passes: they stop any transaction (OCPP 2.0.1
    C16; set the stations' MasterPassGroupId to the same value)."""
    allow_concurrent_tx: bool = True
    """false: a token already in an open transaction is answered ConcurrentTx."""


class ApiSection(_Strict):
    """Operator HTTP API (off unless ``port`` is set)."""

    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=0, le=65535)
    token_hash: str | None = None
    """Salted hash of the bearer token: ``evtwin csms api-token`` makes one."""

    @field_validator("token_hash")
    @classmethod
    def _readable(cls, v: str | None) -> str | None:
        if v is not None:
            check_password_hash(v)
        return v


class DashboardUserEntry(_Strict):
    """One operator who may log in to the dashboard (``evtwin csms dashboard-user``)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    token_hash: str
    """Salted hash of the user's token, as the operator API's (``sha256$salt$hash``)."""
    totp_secret: str = Field(min_length=16, max_length=128, pattern=r"^[A-Z2-7]+=*$")
    """Base32 secret of the user's authenticator app (RFC 6238 TOTP)."""
    role: Literal["viewer", "admin"] = "viewer"
    """viewer: read only; admin: may also make EVSEs (un)available and stop sessions."""

    @field_validator("token_hash")
    @classmethod
    def _readable(cls, v: str) -> str:
        # sha256$ only: a scrypt check can be refused when busy (the dashboard's login
        # has no use for a slow hash of a 240-bit token).
        if not v.startswith("sha256$"):
            raise ValueError("must be a sha256$ hash (make one with `evtwin csms "
                             "dashboard-user NAME`)")
        check_password_hash(v)
        return v


class DashboardSection(_Strict):
    """The live operator dashboard (its own port; off unless this table is given)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    users: list[DashboardUserEntry] = Field(min_length=1)
    session_ttl_h: float = Field(8.0, gt=0, le=720)
    """A login lasts this long."""
    public_url: str | None = Field(None, max_length=200, pattern=r"^https?://[^/\s]+/?$")
    """The address browsers use when a proxy is in front (``https://dash.example.org``):
    logins and actions must come from this origin, and an https one makes the
    session cookie Secure."""
    trusted_proxy: str | None = None
    """The proxy's IP address as the dashboard sees it (``127.0.0.1``): the client
    address it appends to X-Forwarded-For is then used to throttle failed logins."""

    @field_validator("trusted_proxy")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is not None:
            import ipaddress

            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise ValueError(f"not an IP address: {v[:50]!r}") from None
        return v

    @field_validator("users")
    @classmethod
    def _unique(cls, v: list[DashboardUserEntry]) -> list[DashboardUserEntry]:
        names = Counter(u.name for u in v)
        dupes = sorted(n for n, k in names.items() if k > 1)
        if dupes:
            raise ValueError(f"user names given twice: {dupes}")
        return v


class DriverAccount(_Strict):
    """A driver of the driver API: their id token and the hash of their app token."""

    id_token: str = Field(min_length=1, max_length=255)
    token_hash: str
    """Salted ``sha256$`` hash of the app token: ``evtwin csms driver-token ID_TOKEN``."""

    @field_validator("token_hash")
    @classmethod
    def _fast_hash(cls, v: str) -> str:
        if not v.startswith("sha256$"):
            raise ValueError("must be a sha256$ hash (make one with `evtwin csms "
                             "driver-token ID_TOKEN`)")
        check_password_hash(v)
        return v


class DriverApiSection(_Strict):
    """The driver API (:mod:`evtwin.csms.driverapi`; off unless ``port`` is set)."""

    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=0, le=65535)
    reservation_minutes: float = Field(15.0, gt=0, allow_inf_nan=False)
    """How long a reservation holds when the driver names no time."""
    max_reservation_minutes: float = Field(60.0, gt=0, le=24 * 60, allow_inf_nan=False)
    """The longest reservation a driver may ask for."""
    drivers: list[DriverAccount] = Field(default_factory=list)


class OCPIPartnerEntry(_Strict):
    """A party to register with at start (it gave its versions URL and a one-time
    token A out of band); a party that registers with us needs no entry."""

    versions_url: str = Field(pattern=r"^https?://\S+$")
    token_a: str = Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7E]+$")


class OCPISection(_Strict):
    """OCPI 2.2.1: the CSMS as a CPO to other networks' eMSPs (its own HTTP port; off
    unless this table is given). Every site with stations needs an address, city,
    country and coordinates: it is published as an OCPI Location."""

    country_code: str = Field(pattern=r"^[A-Z]{2}$")
    """ISO 3166-1 alpha-2 of the operator (``DE``)."""
    party_id: str = Field(pattern=r"^[A-Z0-9]{3}$")
    """The operator's 3-character party id (``EVA``)."""
    name: str = Field(min_length=1, max_length=100)
    host: str = "127.0.0.1"
    port: int = Field(9300, ge=0, le=65535)
    public_url: str | None = Field(None, pattern=r"^https?://[^/\s]+$")
    """How partners reach this port (``https://ocpi.example.com``), if not host:port."""
    registry: Path = Path("ocpi.sqlite")
    """The SQLite file of partners, their credentials and the OCPI objects exchanged
    (relative to the configuration file)."""
    authorize_timeout_s: float = Field(5.0, gt=0, le=60)
    """How long a real-time authorization at an eMSP may take."""
    partners: list[OCPIPartnerEntry] = Field(default_factory=list)


class FeederSection(_Strict):
    """The network the stations are connected to, for ``feeder_aware`` (and
    ``v2g_peak_shaving``): the CSMS builds its sensitivity model of the feeder
    from it and estimates the feeder's state each control cycle from the power
    and voltage the stations report."""

    network: str = Field(min_length=1)
    """A network evtwin knows by name (``kerber_dorfnetz``, ``cigre_lv``, ...) or a
    pandapower JSON file (its name ending in ``.json``; relative to the working
    directory)."""
    v_min_pu: float = Field(0.90, gt=0)
    v_max_pu: float = Field(1.10, gt=0)
    line_loading_max_percent: float = Field(100.0, gt=0)
    trafo_loading_max_percent: float = Field(100.0, gt=0)


class ServeConfig(_Strict):
    """The whole file."""

    server: ServerSection = ServerSection()
    control: ControlSection = ControlSection()
    ocpp: OCPPSection = OCPPSection()
    tariff: TariffSection = TariffSection()
    sites: list[SiteSection] = Field(default_factory=list)
    stations: list[StationSection] = Field(default_factory=list)
    tokens: TokensSection = TokensSection()
    security: SecuritySection = SecuritySection()
    api: ApiSection = ApiSection()
    driver_api: DriverApiSection = DriverApiSection()
    feeder: FeederSection | None = None
    dashboard: DashboardSection | None = None
    ocpi: OCPISection | None = None
    privacy: PrivacySection = PrivacySection()

    def security_config(self) -> SecurityConfig:
        """The server's security settings (pass to ``CSMSServer(security=...)``)."""
        s = self.security
        return SecurityConfig(
            profile=s.profile,
            password_hashes={st.id: st.password_hash for st in self.stations
                             if st.password_hash is not None},
            tls_cert=s.tls_cert, tls_key=s.tls_key, ca_cert=s.ca_cert,
            tls_cert_2=s.tls_cert_2, tls_key_2=s.tls_key_2, tls_ciphers=s.tls_ciphers,
        )

    def csms_config(self) -> CSMSConfig:
        """The core's configuration."""
        return CSMSConfig(
            stations=tuple(StationSpec(s.id, s.site, tuple(
                EvseSpec(i + 1, kw * 1000.0, s.phases, s.line)
                for i, kw in enumerate(s.evse_max_kw)))
                for s in self.stations),
            sites=tuple(SiteSpec(s.name, s.limit_kw) for s in self.sites),
            id_tokens=frozenset(self.tokens.accepted),
            tokens=tuple(TokenRecord(e.id, e.status, e.group, e.expires, e.local, e.type)
                         for e in self.tokens.entries),
            master_pass_group=self.tokens.master_pass_group,
            allow_concurrent_tx=self.tokens.allow_concurrent_tx,
            strategy=self.control.strategy,
            control_interval_s=self.control.interval_s,
            charging_rate_unit=self.control.charging_rate_unit,
            v2g_peak_target_percent=self.control.v2g_peak_target_percent,
            heartbeat_interval_s=self.ocpp.heartbeat_interval_s,
            max_event_age_s=self.ocpp.max_event_age_days * 86400.0,
            max_event_lead_s=self.ocpp.max_event_lead_h * 3600.0,
            tariff=self.tariff.tariff(),
        )


def _cross_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    api = data.get("api")
    if isinstance(api, dict) and api.get("port") is not None and not api.get("token_hash"):
        problems.append(("api.token_hash", "required when api.port is set"))
    drivers = data.get("driver_api")
    if isinstance(drivers, dict):
        minutes, most = drivers.get("reservation_minutes"), drivers.get("max_reservation_minutes")
        if isinstance(minutes, int | float) and minutes > (most if isinstance(most, int | float)
                                                           else 60.0):
            problems.append(("driver_api.reservation_minutes",
                             "must be at most max_reservation_minutes"))
        if isinstance(drivers.get("drivers"), list):
            ids = Counter(str(d["id_token"]).casefold() for d in drivers["drivers"]
                          if isinstance(d, dict) and isinstance(d.get("id_token"), str))
            problems.extend(("driver_api.drivers", f"id token {t!r} has two accounts")
                            for t, n in sorted(ids.items()) if n > 1)
    tokens = data.get("tokens")
    if isinstance(tokens, dict) and isinstance(tokens.get("entries"), list):
        seen = set(t for t in tokens.get("accepted") or [] if isinstance(t, str))
        for i, entry in enumerate(tokens["entries"]):
            token = entry.get("id") if isinstance(entry, dict) else None
            if isinstance(token, str):
                if token in seen:
                    problems.append((f"tokens.entries.{i}.id",
                                     f"token {token!r} is given twice"))
                seen.add(token)
    stations = data.get("stations")
    if isinstance(data.get("ocpi"), dict) and isinstance(stations, list):
        # OCPI publishes each site with stations as a Location: it needs a place.
        given = data.get("sites")
        sites: list[Any] = given if isinstance(given, list) else []
        by_name = {s.get("name"): (i, s) for i, s in enumerate(sites) if isinstance(s, dict)}
        used = dict.fromkeys(str(st.get("site", "default")) for st in stations
                             if isinstance(st, dict))
        for name in used:
            if name not in by_name:
                problems.append(("sites", f"site {name!r} has stations but no [[sites]] entry "
                                 "(OCPI publishes it as a Location: give its address, city, "
                                 "country, latitude and longitude)"))
                continue
            i, site = by_name[name]
            problems.extend((f"sites.{i}.{field}", "required with [ocpi] (the site is an "
                             "OCPI Location)")
                            for field in ("address", "city", "country", "latitude",
                                          "longitude") if site.get(field) is None)
            if isinstance(name, str) and not re.fullmatch(r"[\x21-\x7E]{1,36}", name):
                problems.append((f"sites.{i}.name", "with [ocpi] at most 36 printable "
                                 "characters without spaces (it is the Location id)"))
            tariff = data.get("tariff")
            if isinstance(tariff, dict) and tariff.get("kind") == "tou" \
                    and tariff.get("timezone", "UTC") != (site.get("time_zone") or "UTC"):
                problems.append((f"sites.{i}.time_zone", "with [ocpi] and a time-of-use "
                                 "tariff, the tariff's timezone (OCPI publishes band times "
                                 "in the Location's time zone)"))
        for j, st in enumerate(stations):
            if isinstance(st, dict) and isinstance(st.get("id"), str):
                n = len(st.get("evse_max_kw") or [1])
                if len(f"{st['id']}*{n}") > 36:
                    problems.append((f"stations.{j}.id", "with [ocpi] at most "
                                     f"{35 - len(str(n))} characters (the EVSE uids "
                                     "'<id>*<n>' are OCPI CiString(36))"))
    if isinstance(stations, list):
        counts = Counter(str(s["id"]) for s in stations
                         if isinstance(s, dict) and isinstance(s.get("id"), str))
        dupes = sorted(i for i, n in counts.items() if n > 1)
        if dupes:
            problems.append(("stations", f"duplicate station ids {dupes}"))
    security = data.get("security")
    profile = security.get("profile", 0) if isinstance(security, dict) else 0
    if isinstance(security, dict) and profile in (2, 3):
        required = ("tls_cert", "tls_key", "ca_cert") if profile == 3 else ("tls_cert", "tls_key")
        problems.extend((f"security.{name}", f"required for security profile {profile}")
                        for name in required if name not in security)
    if profile in (1, 2) and isinstance(stations, list):
        problems.extend(
            (f"stations.{i}.password_hash", f"required for security profile {profile} "
                                            "(make one with `evtwin csms hash-password`)")
            for i, st in enumerate(stations) if isinstance(st, dict) and "password_hash" not in st)
    if isinstance(data.get("feeder"), dict) and isinstance(stations, list):
        problems.extend((f"stations.{i}.bus", "required when [feeder] is set (the station's "
                                              "bus in the feeder network)")
                        for i, st in enumerate(stations) if isinstance(st, dict)
                        and "bus" not in st)
    return problems


def load_config(path: str | Path | None) -> ServeConfig:
    """Read and validate a CSMS config file (None gives the defaults)."""
    if path is None:
        return ServeConfig()
    source = str(path)
    data, error = read_toml(path)
    if data is None:
        raise FileConfigError(source, [("", error)])
    problems = _cross_problems(data)
    try:
        config = ServeConfig.model_validate(data)
    except ValidationError as err:
        raise FileConfigError(source, validation_problems(err) + problems) from None
    if problems:
        raise FileConfigError(source, problems)
    base = Path(path).resolve().parent
    config = config.model_copy(update={"security": config.security.resolved(base),
                                       "privacy": config.privacy.resolved(base),
                                       "ocpi": None if config.ocpi is None else
                                       config.ocpi.model_copy(update={
                                           "registry": base / config.ocpi.registry})})
    problems = config.security.file_problems() + config.privacy.file_problems()
    if problems:
        raise FileConfigError(source, problems)
    return config
