"""The operator API: a small HTTP JSON API beside the CSMS's websocket endpoint.

Dashboards and test tools read stations, sessions, meter values and charge
detail records, and ask a station to start or stop a transaction, take a
charging profile, send a message or reset. It runs on aiohttp in the CSMS's
own event loop and reads the same core and store, so there is nothing to
synchronise.

Every endpoint except ``GET /api/v1/openapi.json`` needs ``Authorization:
Bearer <token>``; only a salted hash of the token is configured
(:func:`hash_token`, the format of station password hashes). A token in the
query string (``?token=``, ``?access_token=``) is refused and never logged:
URLs end up in proxy and access logs. Missing and wrong tokens are recorded
as security events (rate-limited, see :mod:`evtwin.csms.audit`). Errors are
JSON objects with ``error`` and ``message``: 400 for a body that is not JSON
or nests deeper than 64 levels, 401 without a valid token, 404 for an
unknown station or transaction, 409 when the station is not connected, 413
for a body that is too large, 422 with the path of every bad field, 502 when
the station answers with a CALLERROR (its ``code``) or an invalid answer, 503
when legacy token checks are saturated, 504 when the station does not answer.
"""

from __future__ import annotations

import http
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Literal

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from websockets.exceptions import ConnectionClosed

from .audit import auth_scheme, peer_host
from .exceptions import (
    ConfigError,
    PersonalDataError,
    StationNotConnectedError,
    UnknownStationError,
)
from .model import EVChargingNeeds, Session
from .privacy import (
    audit_log,
    erase_driver,
    export_driver,
    on_behalf,
    pseudonymiser_for,
    redact,
)
from .security import PasswordVerifier, VerifierBusy, check_password_hash, hash_password
from .server import CSMSServer
from .shell import (
    CallFailed,
    IdTokenType,
    InvalidCallResult,
    InvalidOperation,
    LogType,
    ProfileSpec,
    Purpose,
    PurposeFilter,
    ReportBase,
    ShellBase,
    TriggerMessageName,
    UpdateType,
    VariableSpec,
)

log = logging.getLogger("evtwin.csms.api")

__all__ = [
    "API_PREFIX",
    "OperatorAPI",
    "generate_token",
    "hash_token",
    "openapi_document",
]

API_PREFIX = "/api/v1"
OPENAPI_PATH = f"{API_PREFIX}/openapi.json"
#: API tokens: 32 to 40 characters (the upper bound is the password hash's).
TOKEN_MIN_CHARS = 32
TOKEN_MAX_CHARS = 40
#: Query parameters that would carry a token in the URL: refused.
TOKEN_QUERY_PARAMS = frozenset({"token", "access_token", "api_token", "bearer"})
#: JSON bodies may nest this deep (ours need 5); deeper is refused before parsing.
MAX_JSON_DEPTH = 64


# --------------------------------------------------------------------------- tokens
def generate_token() -> str:
    """A new random API token: 40 URL-safe characters, 240 bits."""
    return secrets.token_urlsafe(30)


def hash_token(token: str) -> str:
    """The salted hash to configure for ``token`` (``sha256$salt$hash``).

    A fast salted hash is enough: tokens are 32 to 40 random characters
    (:func:`generate_token`: 240 bits), far beyond any offline guessing; see
    :mod:`evtwin.csms.security`.
    """
    if not TOKEN_MIN_CHARS <= len(token) <= TOKEN_MAX_CHARS:
        raise ConfigError("api_token", f"must be {TOKEN_MIN_CHARS} to {TOKEN_MAX_CHARS} "
                                       f"characters, got {len(token)} (see generate_token())")
    return hash_password(token)


class _TokenCheck:
    """Checks bearer tokens against one hash without stalling the event loop.

    A ``sha256$`` hash is checked inline in microseconds. A legacy
    ``scrypt$`` hash (about 50 ms and 16 MiB) runs on the verifier's own
    one-thread pool, never the loop's default executor, with a short queue
    (beyond it: :class:`VerifierBusy`, answered 503); a token that passed once
    is then recognised by its SHA-256 digest, and any other token is rejected
    without scrypt (see :class:`~evtwin.csms.security.PasswordVerifier`).
    """

    def __init__(self, encoded: str) -> None:
        try:
            check_password_hash(encoded)
        except ValueError as exc:
            raise ConfigError("api_token_hash", str(exc)) from None
        self._encoded = encoded
        self._verifier = PasswordVerifier(max_workers=1, max_waiting=8)

    async def __call__(self, token: str) -> bool:
        return await self._verifier.verify(token, self._encoded)

    def close(self) -> None:
        """Stop the scrypt worker thread, if one was started."""
        self._verifier.close()


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """How deep the arrays and objects of the JSON text ``text`` nest (strings skipped).

    Two linear regex passes, so an absurdly nested body is measured without
    recursing (``json.loads`` would hit the recursion limit: a 500).
    """
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


class _AccessLog(AbstractAccessLogger):
    """aiohttp's access log without query strings (they may carry a token) or headers.

    One line per request on ``evtwin.csms.api.access``: peer, method, path,
    status, time.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Log one request."""
        path = request.path if len(request.path) <= 200 else request.path[:200] + "..."
        self.logger.info("%s %s %s %d %.1f ms", request.remote, request.method, path,
                         response.status, time * 1000.0,
                         extra={"event": "api_access", "peer": request.remote,
                                "method": request.method, "path": path,
                                "status": response.status})


# --------------------------------------------------------------------------- models
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class FieldProblem(_Model):
    """One bad field of a request."""

    path: str
    """Dotted path of the field in the body or query (``charging_profile.periods.0.limit``)."""
    message: str


class Problem(_Model):
    """Every error answer."""

    error: str
    """Short machine-readable kind: unauthorized, token_in_query, not_found, not_connected,
    invalid_request, bad_json, call_error, invalid_call_result, timeout, busy, ..."""
    message: str
    code: str | None = None
    """The station's CALLERROR code (502)."""
    action: str | None = None
    """The OCPP action that failed (502, 504)."""
    problems: list[FieldProblem] | None = None
    """Every bad field (422)."""


class EvseOut(_Model):
    """One EVSE of a station."""

    id: int
    max_power_kw: float
    phases: int
    line: int | None
    """The line (1-3) a single-phase EVSE is on, when configured."""
    status: str | None
    """Last connector status the station reported (StatusNotification)."""
    status_at: str | None
    limit_w: float | None
    """Last limit the station accepted from the control cycle, in W."""
    effective_limit_w: float | None
    """Composite limit the CSMS believes applies now (profiles the station accepted,
    capped by the EVSE's maximum), in W."""
    external_limit_w: float | None = None
    """Lowest limit the station reported from outside the CSMS (NotifyChargingLimit:
    an EMS, the grid operator), on the EVSE or the whole station, in W."""


class StationOut(_Model):
    """A provisioned station."""

    id: str
    site: str
    connected: bool
    protocol: str | None
    """Websocket subprotocol of the open connection (ocpp1.6, ocpp2.0.1, ocpp2.1)."""
    vendor: str | None
    model: str | None
    booted_at: str | None
    evses: list[EvseOut]


class StationList(_Model):
    """All provisioned stations."""

    stations: list[StationOut]


class SessionOut(_Model):
    """A transaction and its energy."""

    station_id: str
    transaction_id: str
    evse_id: int
    id_token: str | None
    """The driver's pseudonym (``pid-`` and 16 hex digits, see :mod:`evtwin.csms.privacy`),
    never the raw id token; ``(erased)`` once the driver's data was erased."""
    started_at: str
    ended_at: str | None
    open: bool
    energy_wh: float | None
    """Metered energy so far (open) or billed (ended), in Wh."""
    meter_start_wh: float | None
    meter_stop_wh: float | None
    stopped_reason: str | None
    power_w: float | None
    """Last reported power (open sessions the CSMS holds in memory)."""
    soc_percent: float | None
    limit_w: float | None
    """Last limit the station accepted for this transaction, in W."""
    ev_needs: EVChargingNeeds | None
    """What the EV reported (NotifyEVChargingNeeds, OCPP 2.x), while the session is in memory."""


class SessionList(_Model):
    """Transactions, oldest first."""

    sessions: list[SessionOut]


class StationDetail(StationOut):
    """A station with its open sessions and what EVs told it."""

    open_sessions: list[SessionOut]
    ev_charging_needs: list[EVChargingNeeds]
    """The last NotifyEVChargingNeeds per EVSE on the current connection."""


class MeterValueOut(_Model):
    """One sampled value."""

    evse_id: int
    timestamp: str
    measurand: str
    phase: str | None
    value: float
    unit: str | None


class MeterValues(_Model):
    """Every sampled value of one transaction, in time order."""

    station_id: str
    transaction_id: str
    meter_values: list[MeterValueOut]


class CdrOut(_Model):
    """A charge detail record."""

    station_id: str
    transaction_id: str
    id_token: str | None
    """The driver's pseudonym (``pid-`` and 16 hex digits, see :mod:`evtwin.csms.privacy`),
    never the raw id token; ``(erased)`` once the driver's data was erased."""
    started_at: str
    ended_at: str
    duration_s: float
    energy_wh: float
    cost: float
    """Fee, energy and time, less the credit for energy fed back."""
    currency: str
    exported_wh: float = 0.0
    """Energy the session fed back to the grid (V2G)."""
    export_credit: float = 0.0


class CdrList(_Model):
    """All charge detail records, oldest first."""

    cdrs: list[CdrOut]


class StationMessagesQuery(_Model):
    """Filters of ``GET /stations/{station_id}/messages``."""

    action: str | None = Field(None, pattern=r"^[A-Za-z0-9]{1,64}$")
    """Only messages of this OCPP action (e.g. NotifyEvent, SecurityEventNotification)."""
    after: int = Field(0, ge=0, le=2**63 - 1)
    """Only messages after this id (the previous page's ``next_after``)."""
    limit: int = Field(100, ge=1, le=1000)


class StationMessageOut(_Model):
    """A message a station sent for the record, as received."""

    id: int
    station_id: str
    action: str
    received_at: str
    payload: dict[str, Any]


class StationMessageList(_Model):
    """A page of a station's kept messages, oldest first."""

    messages: list[StationMessageOut]
    next_after: int | None
    """Pass as ``after`` for the next page; null when this page is the last."""


class SecurityEventsQuery(_Model):
    """Filters of ``GET /security-events``."""

    kind: str | None = Field(None, pattern=r"^[A-Za-z0-9_]{1,64}$")
    """Only events of this kind (bad_password, tls_failed, api_token_invalid, ...)."""
    after: int = Field(0, ge=0, le=2**63 - 1)
    limit: int = Field(100, ge=1, le=1000)


class SecurityEventOut(_Model):
    """Something the CSMS refused or noticed at its doors (never a credential)."""

    id: int
    at: str
    peer: str | None
    kind: str
    detail: str | None


class SecurityEventList(_Model):
    """A page of the CSMS's security events, oldest first."""

    events: list[SecurityEventOut]
    next_after: int | None


class SessionsQuery(_Model):
    """Filters of ``GET /sessions``."""

    open: bool | None = None
    """true: only open transactions; false: only ended ones; absent: all."""
    station: str | None = None
    """Only this station's transactions."""


class RequestStartBody(_Model):
    """Ask the station to start a transaction (RemoteStartTransaction / RequestStartTransaction)."""

    evse_id: int | None = Field(None, ge=1)
    """EVSE (1.6: connector) to start on; absent lets the station choose."""
    id_token: str = Field(min_length=1, max_length=255)
    """1.6 allows 20 characters, 2.0.1 36, 2.1 255."""
    id_token_type: IdTokenType = "Central"
    """OCPP 2.x only."""
    remote_start_id: int | None = Field(None, ge=0)
    """OCPP 2.x; assigned by the CSMS when absent."""
    charging_profile: ProfileSpec | None = None
    """A TxProfile to start with."""


class RequestStopBody(_Model):
    """Ask the station to stop a transaction."""

    transaction_id: str = Field(min_length=1, max_length=36)


class ChargingProfileBody(_Model):
    """Install a charging profile (SetChargingProfile)."""

    evse_id: int = Field(ge=0)
    """0: the whole station (purpose ChargingStationMaxProfile)."""
    profile: ProfileSpec
    profile_id: int | None = Field(None, ge=1, le=2**30)
    """Your own id (at most 2^30, so the CSMS's own ids, which continue after it, stay
    within OCPP's 32-bit integers): replaces the station's profile of that id.
    Absent: the CSMS assigns a fresh one."""


class ClearChargingProfileBody(_Model):
    """Clear charging profiles (ClearChargingProfile): one by id, or all that match."""

    profile_id: int | None = Field(None, ge=1, le=2**31 - 1)
    evse_id: int | None = Field(None, ge=0)
    purpose: Purpose | None = None
    stack_level: int | None = Field(None, ge=0)


class CompositeScheduleBody(_Model):
    """Ask for the schedule an EVSE's profiles make (GetCompositeSchedule)."""

    evse_id: int = Field(ge=0)
    duration_s: int = Field(gt=0, le=2**31 - 1)
    unit: Literal["W", "A"] | None = None


class ChargingProfilesBody(_Model):
    """Ask a 2.x station which profiles it has (GetChargingProfiles + reports)."""

    evse_id: int | None = Field(None, ge=0)
    purpose: PurposeFilter | None = None
    stack_level: int | None = Field(None, ge=0)
    profile_ids: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(
        None, min_length=1, max_length=100)


class ChangeAvailabilityBody(_Model):
    """Make an EVSE (0: the station) operative or inoperative."""

    evse_id: int = Field(0, ge=0)
    operative: bool


class ReserveNowBody(_Model):
    """Reserve an EVSE (absent: any) for a token until ``expiry``."""

    reservation_id: int | None = Field(None, ge=0, le=2**30)
    """Assigned by the CSMS when absent (its own ids continue after yours)."""
    id_token: str = Field(min_length=1, max_length=255)
    id_token_type: IdTokenType = "Central"
    expiry: AwareDatetime
    evse_id: int | None = Field(None, ge=1)
    group_id_token: str | None = Field(None, min_length=1, max_length=36)


class CancelReservationBody(_Model):
    reservation_id: int = Field(ge=0, le=2**31 - 1)


class UnlockConnectorBody(_Model):
    """Release a connector's cable."""

    evse_id: int = Field(ge=1)
    connector_id: int = Field(1, ge=1)


class EmptyBody(_Model):
    """No fields."""


class LocalListBody(_Model):
    """Send the local authorization list."""

    update_type: UpdateType = "Full"
    version: int | None = Field(None, ge=1, le=2**31 - 1)
    """Absent: one more than the version the station last accepted."""
    tokens: list[Annotated[str, Field(min_length=1, max_length=255)]] | None = Field(
        None, min_length=1, max_length=10_000)
    """Absent: every token marked local; a Differential update removes an id the
    CSMS does not know."""


class VariablesBody(_Model):
    """Variables to read or write (1.6: configuration keys, component empty)."""

    variables: list[VariableSpec] = Field(min_length=1)


class BaseReportBody(_Model):
    report_base: ReportBase = "FullInventory"


class TransactionStatusBody(_Model):
    """GetTransactionStatus (2.x)."""

    transaction_id: str | None = Field(None, min_length=1, max_length=36)


class UpdateFirmwareBody(_Model):
    """Download and install firmware (progress: FirmwareStatusNotification messages)."""

    location: str = Field(min_length=1, max_length=512)
    retrieve_at: AwareDatetime
    install_at: AwareDatetime | None = None
    retries: int | None = Field(None, ge=0, le=1000)
    retry_interval_s: int | None = Field(None, ge=0, le=86400)
    signing_certificate: str | None = Field(None, min_length=1, max_length=5500)
    signature: str | None = Field(None, min_length=1, max_length=800)


class GetLogBody(_Model):
    """Upload a log (progress: LogStatusNotification / DiagnosticsStatusNotification)."""

    location: str = Field(min_length=1, max_length=512)
    log_type: LogType = "DiagnosticsLog"
    oldest: AwareDatetime | None = None
    latest: AwareDatetime | None = None
    retries: int | None = Field(None, ge=0, le=1000)
    retry_interval_s: int | None = Field(None, ge=0, le=86400)


class DefaultTariffBody(_Model):
    """Send the CSMS's [tariff] to a 2.1 station (SetDefaultTariff)."""

    evse_id: int = Field(0, ge=0)
    """0: every EVSE of the station."""
    tariff_id: str | None = Field(None, min_length=1, max_length=60)
    """Absent: evtwin-default."""


class ClearTariffsBody(_Model):
    """Remove tariffs from a 2.1 station (ClearTariffs)."""

    evse_id: int | None = Field(None, ge=0)
    tariff_ids: list[Annotated[str, Field(min_length=1, max_length=60)]] | None = Field(
        None, min_length=1, max_length=100)


class VariablesQuery(_Model):
    """Filters of ``GET /stations/{station_id}/variables``."""

    component: str | None = Field(None, max_length=50)
    variable: str | None = Field(None, max_length=50)


class VariableOut(_Model):
    """A variable of the station's device model as last reported."""

    component: str
    component_instance: str
    evse_id: int
    """0: not an EVSE's."""
    connector_id: int
    variable: str
    variable_instance: str
    attribute_type: str
    value: str | None
    mutability: str | None
    source: str
    """What reported it: NotifyReport, GetVariables, SetVariables, GetConfiguration, ..."""
    updated_at: str


class VariableList(_Model):
    """A station's device model (2.x) or configuration keys (1.6)."""

    station_id: str
    local_list_version: int
    """The local authorization list version the station last accepted (0: none)."""
    variables: list[VariableOut]


class TriggerMessageBody(_Model):
    """Ask the station to send a message now."""

    message: TriggerMessageName
    """Wire name; each OCPP version allows its own subset."""
    evse_id: int | None = Field(None, ge=0)


class ResetBody(_Model):
    """Reboot the station (2.x: or one EVSE)."""

    hard: bool = False
    """true: 1.6 Hard / 2.x Immediate; false: 1.6 Soft / 2.x OnIdle."""
    evse_id: int | None = Field(None, ge=1)
    """2.x only: reset this EVSE alone."""


class OperationAnswer(_Model):
    """The station's answer to a CSMS-initiated call."""

    status: str
    reason_code: str | None = None
    additional_info: str | None = None
    transaction_id: str | None = None
    """RequestStartTransaction (2.x): the transaction the station already has."""
    remote_start_id: int | None = None
    profile_id: int | None = None
    """Id of the charging profile sent."""
    reservation_id: int | None = None
    request_id: int | None = None
    """Request id of an operation the station answers later (reports, logs, firmware)."""
    list_version: int | None = None
    """Local authorization list version (sent, or the station's)."""
    filename: str | None = None
    """Log / diagnostics upload: the file the station will upload."""
    ongoing: bool | None = None
    """GetTransactionStatus: the transaction is still ongoing."""
    messages_in_queue: bool | None = None
    """GetTransactionStatus: the station still has messages of it queued."""
    complete: bool | None = None
    """GetChargingProfiles: every report came."""
    schedule: dict[str, Any] | None = None
    """GetCompositeSchedule: evse_id, schedule_start, duration_s, unit, periods."""
    profiles: list[dict[str, Any]] | None = None
    """GetChargingProfiles: evse_id, charging_limit_source, charging_profile (as sent)."""
    variables: list[dict[str, Any]] | None = None
    """get/set-variables, base-report (1.6): per variable its status and value."""
    tariff_id: str | None = None
    """default-tariff: the id the tariff was sent under."""


class PrivacyExportBody(_Model):
    """Ask for all of one driver's data (GDPR access); written to the audit log."""

    id_token: str = Field(min_length=1, max_length=255)
    """The driver's raw id token (in the body: never in a URL, which proxies log)."""
    actor: str = Field(min_length=1, max_length=100)
    """Who asks: the audit log names them."""


class PrivacyEraseBody(PrivacyExportBody):
    """Erase one driver's id token everywhere (GDPR erasure); written to the audit log."""

    reason: str = Field(min_length=1, max_length=500)
    """Why (e.g. the request's reference)."""


class PrivacyErased(_Model):
    """What an erasure changed."""

    pseudonym: str
    """The driver's pseudonym, as the audit log names them."""
    transactions: int
    cdrs: int
    messages: int
    """Kept messages (transaction events, station messages, queued commands) changed."""
    ocpi_objects: int = 0
    """OCPI Sessions, CDRs and Tokens exchanged with roaming partners ([ocpi]) changed."""


class AuditEntryOut(_Model):
    """One access to or erasure of personal data."""

    id: int
    at: str
    """When (UTC)."""
    actor: str
    operation: str
    """``export``, ``erase`` or ``prune``."""
    subject: str | None
    """Whose: the driver's pseudonym (none for a prune)."""
    row_count: int
    detail: str | None


class AuditLogOut(_Model):
    """The privacy audit log, oldest first."""

    entries: list[AuditEntryOut]


# --------------------------------------------------------------------------- routes
@dataclass(frozen=True)
class Route:
    """One endpoint: what aiohttp serves and what the OpenAPI document says."""

    method: str
    path: str
    """Below :data:`API_PREFIX`, with ``{name}`` path parameters."""
    handler: str
    """Name of the :class:`OperatorAPI` method that serves it."""
    summary: str
    response: type[BaseModel] | None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    public: bool = False


_OPERATION_ERRORS = (400, 404, 409, 422, 502, 504)


def _operation(path: str, handler: str, body: type[BaseModel], summary: str) -> Route:
    """A CSMS-initiated operation on one station: ``POST /stations/{id}/<path>``."""
    return Route("POST", "/stations/{station_id}/" + path, handler, summary, OperationAnswer,
                 body=body, errors=_OPERATION_ERRORS)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/stations", "list_stations", "List stations with connection and EVSE status",
          StationList),
    Route("GET", "/stations/{station_id}", "get_station",
          "One station with its open sessions and EV charging needs", StationDetail,
          errors=(404,)),
    Route("GET", "/sessions", "list_sessions", "List transactions with their energy",
          SessionList, query=SessionsQuery, errors=(422,)),
    Route("GET", "/sessions/{station_id}/{transaction_id}/meter-values", "get_meter_values",
          "Every meter value of one transaction", MeterValues, errors=(404,)),
    Route("GET", "/cdrs", "list_cdrs", "List charge detail records", CdrList),
    Route("GET", "/security-events", "list_security_events",
          "What the CSMS refused at its doors (connections, credentials, API tokens)",
          SecurityEventList, query=SecurityEventsQuery, errors=(422,)),
    Route("GET", "/stations/{station_id}/messages", "list_station_messages",
          "Events, security events, reports and status notices a station sent",
          StationMessageList, query=StationMessagesQuery, errors=(404, 422)),
    Route("POST", "/stations/{station_id}/request-start", "request_start",
          "Ask the station to start a transaction", OperationAnswer, body=RequestStartBody,
          errors=_OPERATION_ERRORS),
    Route("POST", "/stations/{station_id}/request-stop", "request_stop",
          "Ask the station to stop a transaction", OperationAnswer, body=RequestStopBody,
          errors=_OPERATION_ERRORS),
    Route("POST", "/stations/{station_id}/charging-profile", "charging_profile",
          "Send the station a charging profile", OperationAnswer, body=ChargingProfileBody,
          errors=_OPERATION_ERRORS),
    Route("POST", "/stations/{station_id}/trigger-message", "trigger_message",
          "Ask the station to send a message now", OperationAnswer, body=TriggerMessageBody,
          errors=_OPERATION_ERRORS),
    Route("POST", "/stations/{station_id}/reset", "reset", "Reboot the station",
          OperationAnswer, body=ResetBody, errors=_OPERATION_ERRORS),
    _operation("clear-charging-profile", "clear_charging_profile", ClearChargingProfileBody,
               "Clear charging profiles"),
    _operation("composite-schedule", "composite_schedule", CompositeScheduleBody,
               "The schedule an EVSE's profiles make (GetCompositeSchedule)"),
    _operation("charging-profiles", "charging_profiles", ChargingProfilesBody,
               "The profiles a 2.x station has (GetChargingProfiles)"),
    _operation("change-availability", "change_availability", ChangeAvailabilityBody,
               "Make an EVSE or the station (in)operative"),
    _operation("reserve-now", "reserve_now", ReserveNowBody,
               "Reserve an EVSE for a token"),
    _operation("cancel-reservation", "cancel_reservation", CancelReservationBody,
               "Cancel a reservation"),
    _operation("unlock-connector", "unlock_connector", UnlockConnectorBody,
               "Release a connector's cable"),
    _operation("clear-cache", "clear_cache", EmptyBody,
               "Empty the station's authorization cache"),
    _operation("local-list", "send_local_list", LocalListBody,
               "Send the local authorization list"),
    _operation("local-list-version", "local_list_version", EmptyBody,
               "The station's local list version"),
    _operation("get-variables", "get_variables", VariablesBody,
               "Read variables (1.6: configuration keys)"),
    _operation("set-variables", "set_variables", VariablesBody,
               "Write variables (1.6: ChangeConfiguration)"),
    _operation("base-report", "base_report", BaseReportBody,
               "Ask for the device model (2.x GetBaseReport; 1.6 every configuration key)"),
    _operation("transaction-status", "transaction_status", TransactionStatusBody,
               "Ask a 2.x station about a transaction (GetTransactionStatus)"),
    _operation("update-firmware", "update_firmware", UpdateFirmwareBody,
               "Have the station install firmware"),
    _operation("get-log", "get_log", GetLogBody,
               "Have the station upload a log or diagnostics"),
    _operation("default-tariff", "default_tariff", DefaultTariffBody,
               "Send the CSMS's tariff to a 2.1 station (SetDefaultTariff)"),
    _operation("clear-tariffs", "clear_tariffs", ClearTariffsBody,
               "Remove tariffs from a 2.1 station (ClearTariffs)"),
    Route("GET", "/stations/{station_id}/variables", "list_variables",
          "The station's device model (2.x) or configuration (1.6) as last reported",
          VariableList, query=VariablesQuery, errors=(404, 422)),
    Route("POST", "/privacy/export", "privacy_export",
          "All of one driver's data as JSON (GDPR access; audited)", None,
          body=PrivacyExportBody, errors=(404, 422)),
    Route("POST", "/privacy/erase", "privacy_erase",
          "Erase one driver's id token everywhere (GDPR erasure; audited)", PrivacyErased,
          body=PrivacyEraseBody, errors=(404, 409, 422)),
    Route("GET", "/privacy/audit", "privacy_audit",
          "The privacy audit log: who exported, erased or pruned whose data", AuditLogOut),
    Route("GET", "/openapi.json", "openapi", "This API's OpenAPI 3.1 description", None,
          public=True),
)

_PATH_PARAM = re.compile(r"{(\w+)}")


def _package_version() -> str:
    try:
        return version("evtwin")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def openapi_document(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.1 description of ``routes``, schemas taken from the pydantic models."""
    inputs = {m for r in routes for m in (r.body,) if m is not None}
    outputs = {m for r in routes for m in (r.response,) if m is not None} | {Problem}
    keyed: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "validation") for m in sorted(inputs, key=lambda m: m.__name__)),
        *((m, "serialization") for m in sorted(outputs, key=lambda m: m.__name__))]
    refs, top = models_json_schema(keyed, ref_template="#/components/schemas/{model}")

    def content(schema: dict[str, Any]) -> dict[str, Any]:
        return {"application/json": {"schema": schema}}

    problem = refs[(Problem, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(r.path)]
        if r.query is not None:
            schema = r.query.model_json_schema()
            params += [{"name": name, "in": "query", "required": False,
                        "description": prop.get("description", ""), "schema": prop}
                       for name, prop in schema["properties"].items()]
        ok_schema = refs[(r.response, "serialization")] if r.response else {"type": "object"}
        responses: dict[str, Any] = {"200": {"description": "OK", "content": content(ok_schema)}}
        # 400: a token in the query string (any route); 401/503: token checks.
        for status in sorted({*r.errors, 400, *(() if r.public else (401, 503))}):
            responses[str(status)] = {"description": http.HTTPStatus(status).phrase,
                                      "content": content(problem)}
        op: dict[str, Any] = {"operationId": r.handler, "summary": r.summary,
                              "responses": responses}
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True,
                                 "content": content(refs[(r.body, "validation")])}
        if r.public:
            op["security"] = []
        paths.setdefault(API_PREFIX + r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "evtwin CSMS operator API", "version": _package_version(),
                 "description": (__doc__ or "").strip().split("\n\n")[0]},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {}),
                       "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearerAuth": []}],
    }


# --------------------------------------------------------------------------- errors
class _HTTPProblem(Exception):
    """Ends a request with a :class:`Problem` answer."""

    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.problem = Problem(error=error, message=message, **extra)


def _field_problems(err: ValidationError) -> list[FieldProblem]:
    out = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        # Model validators name their field first: "periods.1.start_s: ...".
        head, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[\w.]+", head):
            path, msg = (f"{path}.{head}" if path else head), rest
        out.append(FieldProblem(path=path, message=msg))
    return out


def _problem(exc: Exception) -> _HTTPProblem | None:
    """The HTTP answer for an exception a handler may raise, or None if it is a bug."""
    if isinstance(exc, _HTTPProblem):
        return exc
    if isinstance(exc, UnknownStationError):
        return _HTTPProblem(404, "not_found", str(exc))
    if isinstance(exc, StationNotConnectedError):
        return _HTTPProblem(409, "not_connected", str(exc))
    if isinstance(exc, ConnectionClosed | ConnectionError):  # a websocket or a pipe
        return _HTTPProblem(409, "not_connected", "the station disconnected during the call")
    if isinstance(exc, ValidationError):
        return _HTTPProblem(422, "invalid_request", "the request has invalid fields",
                            problems=_field_problems(exc))
    if isinstance(exc, PersonalDataError):
        status, error = {"unknown": (404, "not_found"),
                         "charging": (409, "driver_charging")}.get(exc.reason,
                                                                    (422, "invalid_request"))
        field = exc.field.removeprefix("--").replace("-", "_")
        return _HTTPProblem(status, error, f"{field}: {exc.message}",
                            problems=[FieldProblem(path=field, message=exc.message)])
    if isinstance(exc, InvalidOperation):
        return _HTTPProblem(422, "invalid_request", str(exc),
                            problems=[FieldProblem(path=exc.field, message=exc.message)])
    if isinstance(exc, InvalidCallResult):
        return _HTTPProblem(502, "invalid_call_result", exc.description, code=exc.code,
                            action=exc.action)
    if isinstance(exc, CallFailed):
        return _HTTPProblem(502, "call_error", exc.description or exc.code, code=exc.code,
                            action=exc.action)
    if isinstance(exc, TimeoutError):
        return _HTTPProblem(504, "timeout", str(exc) or "the station did not answer")
    if isinstance(exc, web.HTTPException):  # unknown path, wrong method, body too large
        slug = exc.reason.lower().replace(" ", "_")
        return _HTTPProblem(exc.status, slug, exc.reason)
    return None


def _json(model: BaseModel, *, exclude_none: bool = False, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json", exclude_none=exclude_none),
                             status=status)


# --------------------------------------------------------------------------- the API
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OperatorAPI:
    """The operator API of one :class:`CSMSServer`, in the server's event loop.

    ``token_hash`` is a :func:`hash_token` hash of the bearer token. Binds
    ``host`` (loopback unless told otherwise) and ``port`` (0 picks a free
    one); bodies above ``max_body_bytes`` are refused (413).
    """

    def __init__(self, server: CSMSServer, *, token_hash: str, host: str = "127.0.0.1",
                 port: int = 0, max_body_bytes: int = 2**16) -> None:
        self.server = server
        self.core = server.core
        self.host = host
        self.port = port
        self._check_token = _TokenCheck(token_hash)
        self.audit = server.audit
        #: Driver identifiers leave the API as pseudonyms only.
        self.pseudonymise = pseudonymiser_for(self.core.store)
        self._openapi = openapi_document()
        self.app = web.Application(middlewares=[self._middleware],
                                   client_max_size=max_body_bytes)
        for r in ROUTES:
            self.app.router.add_route(r.method, API_PREFIX + r.path, getattr(self, r.handler))
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Base URL of the API (``http://host:port/api/v1``)."""
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    async def start(self) -> None:
        """Bind and serve (port 0 picks a free port)."""
        self._runner = web.AppRunner(
            self.app, access_log_class=_AccessLog,
            access_log=logging.getLogger("evtwin.csms.api.access"))
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._check_token.close()

    async def __aenter__(self) -> OperatorAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- plumbing ---------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            self._refuse_token_in_query(request)
            if request.path != OPENAPI_PATH:
                await self._authenticate(request)
            response = await handler(request)
        except Exception as exc:
            answer = _problem(exc)
            if answer is None:
                log.exception("operator API: %s %s failed", request.method, request.path)
                answer = _HTTPProblem(500, "internal_error", "internal error (see the CSMS log)")
            response = _json(answer.problem, exclude_none=True, status=answer.status)
            if answer.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="evtwin"'
            if answer.status == 503:
                response.headers["Retry-After"] = "5"
        response.headers["Cache-Control"] = "no-store"
        return response

    def _security_event(self, request: web.Request, kind: str, detail: str) -> None:
        self.audit.record(kind, detail, peer=request.remote, host=peer_host(request.remote),
                          message="operator API: refused request from %s: %s")

    def _refuse_token_in_query(self, request: web.Request) -> None:
        """400 for a token in the URL; the event names the parameter, never its value."""
        names = sorted(TOKEN_QUERY_PARAMS.intersection(k.lower() for k in request.query))
        if names:
            self._security_event(request, "api_token_in_query",
                                 f"{request.method} {request.path[:100]} with query "
                                 f"parameter {names[0]!r}")
            raise _HTTPProblem(400, "token_in_query",
                               "send the token in 'Authorization: Bearer <token>', never in "
                               "the URL (URLs are logged by proxies); replace this token")

    async def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self._security_event(request, "api_token_missing",
                                 f"{request.method} {request.path[:100]} without a bearer "
                                 f"token (scheme {auth_scheme(header)!r})")
            raise _HTTPProblem(401, "unauthorized", "send Authorization: Bearer <token>")
        try:
            ok = await self._check_token(token.strip())
        except VerifierBusy:
            raise _HTTPProblem(503, "busy", "too many token checks at once; retry") from None
        if not ok:
            self._security_event(request, "api_token_invalid",
                                 f"{request.method} {request.path[:100]} with a wrong token")
            raise _HTTPProblem(401, "unauthorized", "invalid token")

    async def _body(self, request: web.Request, model: type[BaseModel]) -> Any:
        text = await request.text()  # client_max_size applies: 413 beyond it
        if json_depth(text) > MAX_JSON_DEPTH:
            raise _HTTPProblem(400, "bad_json",
                               f"the body nests deeper than {MAX_JSON_DEPTH} levels")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise _HTTPProblem(400, "bad_json", "the body is not valid JSON") from None
        return model.model_validate(data)

    def _shell(self, station_id: str) -> ShellBase:
        shell = self.server.connections.get(station_id)
        if shell is None:
            raise StationNotConnectedError(station_id)
        return shell

    async def _operate(self, request: web.Request, body_model: type[BaseModel],
                       op: Callable[[ShellBase, Any], Awaitable[dict[str, Any]]]
                       ) -> web.Response:
        """Check station, body and connection in that order, run ``op``, answer."""
        station_id = request.match_info["station_id"]
        self.core.station(station_id)
        body = await self._body(request, body_model)
        result = await op(self._shell(station_id), body)
        log.info("operator %s on %s: %s", request.path.rsplit("/", 1)[-1], station_id,
                 result["status"], extra={
                     "event": "operator_call", "station": station_id,
                     "operation": request.path.rsplit("/", 1)[-1], "status": result["status"],
                     "peer": request.remote})
        return _json(OperationAnswer.model_validate(result), exclude_none=True)

    # -- views ----------------------------------------------------------------------
    def _station_out(self, station_id: str, info: dict[str, Any]) -> dict[str, Any]:
        spec = self.core.stations[station_id]
        shell = self.server.connections.get(station_id)
        stored = {e["evse_id"]: e for e in info.get("evses", [])}
        return {
            "id": station_id, "site": spec.site, "connected": shell is not None,
            "protocol": f"ocpp{shell.version}" if shell is not None else None,
            "vendor": info.get("vendor"), "model": info.get("model"),
            "booted_at": info.get("booted_at"),
            "evses": [{
                "id": e.evse_id, "max_power_kw": e.max_power_w / 1000.0, "phases": e.phases,
                "line": e.line,
                "status": stored.get(e.evse_id, {}).get("status"),
                "status_at": stored.get(e.evse_id, {}).get("status_at"),
                "limit_w": self.core.sent_limits_w.get((station_id, e.evse_id)),
                "effective_limit_w": self.core.effective_limit_w(station_id, e.evse_id),
                "external_limit_w": self.core.external_limit_w(
                    station_id, e.evse_id, self.core.evses_in_use(station_id)),
            } for e in spec.evses],
        }

    def _pseudonym_of(self, identifier: str) -> str:
        return self.pseudonymise(identifier) or identifier

    def _session_out(self, row: dict[str, Any]) -> SessionOut:
        live: Session | None = self.core.sessions.get((row["station_id"], row["transaction_id"]))
        energy = row["energy_wh"]
        if live is not None and live.meter_start_wh is not None:
            energy = live.billed_energy_wh
        is_open = row["ended_at"] is None
        return SessionOut(
            station_id=row["station_id"], transaction_id=row["transaction_id"],
            evse_id=row["evse_id"], id_token=self.pseudonymise(row["id_token"]),
            started_at=row["started_at"],
            ended_at=row["ended_at"], open=is_open, energy_wh=energy,
            meter_start_wh=row["meter_start_wh"], meter_stop_wh=row["meter_stop_wh"],
            stopped_reason=row["stopped_reason"],
            power_w=live.power_w if live is not None and is_open else None,
            soc_percent=live.soc_percent if live is not None else None,
            limit_w=live.limit_w if live is not None else None,
            ev_needs=live.ev_needs if live is not None else None)

    # -- handlers ---------------------------------------------------------------------
    async def list_stations(self, request: web.Request) -> web.Response:
        """``GET /stations``."""
        info = {s["station_id"]: s for s in self.core.store.stations()}
        return _json(StationList.model_validate({"stations": [
            self._station_out(sid, info.get(sid, {})) for sid in sorted(self.core.stations)]}))

    async def get_station(self, request: web.Request) -> web.Response:
        """``GET /stations/{station_id}``."""
        station_id = request.match_info["station_id"]
        self.core.station(station_id)
        info = {s["station_id"]: s for s in self.core.store.stations()}.get(station_id, {})
        shell = self.server.connections.get(station_id)
        rows = [r for r in self.core.store.transactions()
                if r["station_id"] == station_id and r["ended_at"] is None]
        return _json(StationDetail.model_validate({
            **self._station_out(station_id, info),
            "open_sessions": [self._session_out(r) for r in rows],
            "ev_charging_needs": sorted(shell.ev_charging_needs.values(),
                                        key=lambda n: n.evse_id) if shell is not None else [],
        }))

    async def list_sessions(self, request: web.Request) -> web.Response:
        """``GET /sessions?open=true&station=...``."""
        query = SessionsQuery.model_validate(dict(request.query))
        rows = self.core.store.transactions()
        sessions = [self._session_out(r) for r in rows
                    if (query.open is None or (r["ended_at"] is None) == query.open)
                    and (query.station is None or r["station_id"] == query.station)]
        return _json(SessionList(sessions=sessions))

    async def get_meter_values(self, request: web.Request) -> web.Response:
        """``GET /sessions/{station_id}/{transaction_id}/meter-values``."""
        station_id = request.match_info["station_id"]
        tx_id = request.match_info["transaction_id"]
        if self.core.store.transaction(station_id, tx_id) is None:
            raise _HTTPProblem(404, "not_found",
                               f"no transaction {tx_id!r} on station {station_id!r}")
        return _json(MeterValues.model_validate({
            "station_id": station_id, "transaction_id": tx_id,
            "meter_values": self.core.store.meter_values(station_id, tx_id)}))

    async def list_station_messages(self, request: web.Request) -> web.Response:
        """``GET /stations/{station_id}/messages?action=...&after=...&limit=...``."""
        station_id = request.match_info["station_id"]
        self.core.station(station_id)
        query = StationMessagesQuery.model_validate(dict(request.query))
        rows = self.core.store.station_messages(station_id, query.action,
                                                after_id=query.after, limit=query.limit + 1)
        page = rows[:query.limit]
        # Identifiers under OCPP's token keys, and configured tokens in free text (a
        # DataTransfer's data), leave as pseudonyms; one pass over the page.
        payloads = redact([row["payload"] for row in page], replace=self._pseudonym_of,
                          tokens=self.core.authorizer.records)
        page = [{**row, "payload": p} for row, p in zip(page, payloads, strict=True)]
        return _json(StationMessageList.model_validate({
            "messages": page,
            "next_after": page[-1]["id"] if len(rows) > query.limit else None}))

    async def list_security_events(self, request: web.Request) -> web.Response:
        """``GET /security-events?kind=...&after=...&limit=...``."""
        query = SecurityEventsQuery.model_validate(dict(request.query))
        rows = self.core.store.security_events_page(after_id=query.after,
                                                    limit=query.limit + 1, kind=query.kind)
        page = rows[:query.limit]
        return _json(SecurityEventList.model_validate({
            "events": page, "next_after": page[-1]["id"] if len(rows) > query.limit else None}))

    async def privacy_export(self, request: web.Request) -> web.Response:
        """``POST /privacy/export``: one driver's data, with their raw id token (it is
        their data); other drivers' identifiers in it are erased."""
        body = await self._body(request, PrivacyExportBody)
        data = export_driver(self.core.store, body.id_token, actor=self._who(request, body.actor),
                             now=self.core.clock())
        registry = self.server.ocpi_registry
        if registry is not None:
            data["ocpi_objects"] = registry.objects_of(
                registry.identifiers_of(body.id_token.strip()))
        return web.json_response(data)

    async def privacy_erase(self, request: web.Request) -> web.Response:
        """``POST /privacy/erase``: 409 while the driver charges, 404 if nothing is kept."""
        body = await self._body(request, PrivacyEraseBody)
        registry = self.server.ocpi_registry
        actor = self._who(request, body.actor)
        missing: PersonalDataError | None = None
        try:  # first the store: 'still charging' refuses before anything changes
            counts = erase_driver(self.core.store, body.id_token, actor=actor,
                                  reason=body.reason, now=self.core.clock())
        except PersonalDataError as exc:
            if exc.reason != "unknown" or registry is None:
                raise
            missing = exc
            counts = {"transactions": 0, "cdrs": 0, "messages": 0}
        ocpi = 0
        if registry is not None:
            from .ocpi.registry import erase_roaming_data

            ocpi = erase_roaming_data(registry, self.core.store, body.id_token.strip(),
                                      actor=actor, now=self.core.clock())
            if missing is not None and not ocpi:
                raise missing
        return _json(PrivacyErased(pseudonym=self._pseudonym_of(body.id_token.strip()),
                                   ocpi_objects=ocpi, **counts))

    @staticmethod
    def _who(request: web.Request, declared: str) -> str:
        """The audit log's "who": the declared actor with what authenticated the
        request (the API token, from this peer)."""
        return on_behalf(declared, f"api token, peer {request.remote}")

    async def privacy_audit(self, request: web.Request) -> web.Response:
        """``GET /privacy/audit``."""
        return _json(AuditLogOut(entries=[AuditEntryOut(**e.as_dict())
                                          for e in audit_log(self.core.store)]))

    async def list_cdrs(self, request: web.Request) -> web.Response:
        """``GET /cdrs``."""
        return _json(CdrList.model_validate({"cdrs": [
            {**cdr, "id_token": self.pseudonymise(cdr["id_token"])}
            for cdr in self.core.store.cdrs()]}))

    async def request_start(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/request-start``."""
        def op(shell: ShellBase, b: RequestStartBody) -> Awaitable[dict[str, Any]]:
            return shell.request_start(b.evse_id, b.id_token, remote_start_id=b.remote_start_id,
                                       id_token_type=b.id_token_type,
                                       charging_profile=b.charging_profile)
        return await self._operate(request, RequestStartBody, op)

    async def request_stop(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/request-stop``."""
        return await self._operate(request, RequestStopBody,
                                   lambda shell, b: shell.request_stop(b.transaction_id))

    async def charging_profile(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/charging-profile``."""
        return await self._operate(request, ChargingProfileBody, lambda shell, b: (
            shell.set_charging_profile(b.evse_id, b.profile, profile_id=b.profile_id)))

    async def trigger_message(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/trigger-message``."""
        return await self._operate(request, TriggerMessageBody,
                                   lambda shell, b: shell.trigger_message(b.message, b.evse_id))

    async def reset(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/reset``."""
        return await self._operate(request, ResetBody,
                                   lambda shell, b: shell.reset(b.hard, b.evse_id))

    async def clear_charging_profile(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/clear-charging-profile``."""
        return await self._operate(request, ClearChargingProfileBody, lambda shell, b: (
            shell.clear_charging_profile(profile_id=b.profile_id, evse_id=b.evse_id,
                                         purpose=b.purpose, stack_level=b.stack_level)))

    async def composite_schedule(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/composite-schedule``."""
        return await self._operate(request, CompositeScheduleBody, lambda shell, b: (
            shell.get_composite_schedule(b.evse_id, b.duration_s, b.unit)))

    async def charging_profiles(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/charging-profiles``."""
        return await self._operate(request, ChargingProfilesBody, lambda shell, b: (
            shell.get_charging_profiles(evse_id=b.evse_id, purpose=b.purpose,
                                        stack_level=b.stack_level, profile_ids=b.profile_ids)))

    async def change_availability(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/change-availability``."""
        return await self._operate(request, ChangeAvailabilityBody, lambda shell, b: (
            shell.change_availability(b.evse_id, b.operative)))

    async def reserve_now(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/reserve-now``."""
        async def op(shell: ShellBase, b: ReserveNowBody) -> dict[str, Any]:
            rid = b.reservation_id
            if rid is None:
                rid = self.core.store.next_counter("reservation_id")
            else:  # the CSMS's own ids continue after the operator's
                self.core.store.raise_counter("reservation_id", rid)
            result = await shell.reserve_now(rid, b.id_token, b.expiry, evse_id=b.evse_id,
                                             id_token_type=b.id_token_type,
                                             group_id_token=b.group_id_token)
            return {**result, "reservation_id": rid}
        return await self._operate(request, ReserveNowBody, op)

    async def cancel_reservation(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/cancel-reservation``."""
        return await self._operate(request, CancelReservationBody, lambda shell, b: (
            shell.cancel_reservation(b.reservation_id)))

    async def unlock_connector(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/unlock-connector``."""
        return await self._operate(request, UnlockConnectorBody, lambda shell, b: (
            shell.unlock_connector(b.evse_id, b.connector_id)))

    async def clear_cache(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/clear-cache``."""
        return await self._operate(request, EmptyBody, lambda shell, b: shell.clear_cache())

    async def send_local_list(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/local-list``."""
        return await self._operate(request, LocalListBody, lambda shell, b: (
            shell.send_local_list(b.update_type, version=b.version, tokens=b.tokens)))

    async def local_list_version(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/local-list-version``."""
        return await self._operate(request, EmptyBody,
                                   lambda shell, b: shell.get_local_list_version())

    async def get_variables(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/get-variables``."""
        return await self._operate(request, VariablesBody,
                                   lambda shell, b: shell.get_variables(b.variables))

    async def set_variables(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/set-variables``."""
        return await self._operate(request, VariablesBody,
                                   lambda shell, b: shell.set_variables(b.variables))

    async def base_report(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/base-report``."""
        return await self._operate(request, BaseReportBody,
                                   lambda shell, b: shell.get_base_report(b.report_base))

    async def transaction_status(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/transaction-status``."""
        return await self._operate(request, TransactionStatusBody, lambda shell, b: (
            shell.get_transaction_status(b.transaction_id)))

    async def update_firmware(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/update-firmware``."""
        return await self._operate(request, UpdateFirmwareBody, lambda shell, b: (
            shell.update_firmware(b.location, b.retrieve_at, retries=b.retries,
                                  retry_interval_s=b.retry_interval_s, install_at=b.install_at,
                                  signing_certificate=b.signing_certificate,
                                  signature=b.signature)))

    async def get_log(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/get-log``."""
        return await self._operate(request, GetLogBody, lambda shell, b: (
            shell.get_log(b.location, b.log_type, oldest=b.oldest, latest=b.latest,
                          retries=b.retries, retry_interval_s=b.retry_interval_s)))

    async def default_tariff(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/default-tariff``."""
        return await self._operate(request, DefaultTariffBody, lambda shell, b: (
            shell.set_default_tariff(b.evse_id, b.tariff_id)))

    async def clear_tariffs(self, request: web.Request) -> web.Response:
        """``POST /stations/{station_id}/clear-tariffs``."""
        return await self._operate(request, ClearTariffsBody, lambda shell, b: (
            shell.clear_tariffs(b.evse_id, b.tariff_ids)))

    async def list_variables(self, request: web.Request) -> web.Response:
        """``GET /stations/{station_id}/variables?component=...&variable=...``."""
        station_id = request.match_info["station_id"]
        self.core.station(station_id)
        query = VariablesQuery.model_validate(dict(request.query))
        return _json(VariableList.model_validate({
            "station_id": station_id,
            "local_list_version": self.core.store.local_list_version(station_id),
            "variables": self.core.store.variables(station_id, query.component,
                                                   query.variable)}))

    async def openapi(self, request: web.Request) -> web.Response:
        """``GET /openapi.json`` (no token needed)."""
        return web.json_response(self._openapi)


def main() -> None:
    """``python -m evtwin.csms.api``: print a new token and the hash to configure for it."""
    token = generate_token()
    print(f"# API token (give it to the operator's tools, keep it secret): {token}")
    print(f'api_token_hash = "{hash_token(token)}"')


if __name__ == "__main__":
    main()
