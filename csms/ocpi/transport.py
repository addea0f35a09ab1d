"""OCPI 2.2.1 over HTTP: the response envelope, status codes, the credentials-token
header, pagination and a client for calling another party.

What the spec's ``transport_and_format`` and ``status_codes`` chapters ask for:

- every response body is ``{"data", "status_code", "status_message", "timestamp"}``;
- ``status_code`` 1000 is success; 2001 invalid or missing parameters, 2002 not enough
  information, 2003 unknown Location, 2004 unknown Token; 3000 server error, 3001 the
  other party's API unusable (during registration), 3002 unsupported version, 3003 no
  matching endpoints;
- a request that reaches the OCPI layer gets HTTP 200 with its OCPI status code; HTTP
  errors are for the transport: 400 for a body that is not JSON, 401 for a missing or
  unknown credentials token (or token A used beyond credentials and versions), 404 for a
  GET of an object that does not exist, 405 for a registration in the wrong state;
- ``Authorization: Token <base64 of the credentials token>`` (2.2.1 requires the
  Base64 form; a raw token from a 2.1.1-style peer is accepted too);
- ``X-Request-ID`` and ``X-Correlation-ID`` on every request and answer, and the four
  ``OCPI-from/to-country-code/party-id`` routing headers on functional modules;
- list GETs take ``offset``, ``limit``, ``date_from`` (inclusive) and ``date_to``
  (exclusive) and answer with ``X-Total-Count``, ``X-Limit`` and a ``Link`` to the next
  page while there is one.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web
from pydantic import ValidationError

from .models import format_datetime, parse_datetime

log = logging.getLogger("evtwin.csms.ocpi")

__all__ = [
    "OCPI_VERSION",
    "OCPIClient",
    "OCPIError",
    "OCPIRemoteError",
    "OCPIStatus",
    "Page",
    "authorization_header",
    "credentials_token",
    "envelope",
    "module_address",
    "paginate",
    "segment",
    "validation_message",
]

OCPI_VERSION = "2.2.1"
#: The most objects one page carries (X-Limit).
MAX_PAGE = 100


class OCPIStatus(IntEnum):
    SUCCESS = 1000
    CLIENT_ERROR = 2000
    INVALID_PARAMETERS = 2001
    NOT_ENOUGH_INFORMATION = 2002
    UNKNOWN_LOCATION = 2003
    UNKNOWN_TOKEN = 2004
    SERVER_ERROR = 3000
    UNABLE_TO_USE_CLIENT_API = 3001
    UNSUPPORTED_VERSION = 3002
    NO_MATCHING_ENDPOINTS = 3003


class OCPIError(Exception):
    """A request this party refuses: its OCPI status code, a message, and the HTTP
    status it goes with (200 once the request reached the OCPI layer)."""

    def __init__(self, status_code: int, message: str, *, http_status: int = 200,
                 data: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.http_status = http_status
        self.data = data


class OCPIRemoteError(Exception):
    """Another party answered with an HTTP error, a non-success OCPI status, or
    something that is not an OCPI response."""

    def __init__(self, url: str, message: str, *, http_status: int | None = None,
                 status_code: int | None = None) -> None:
        # Said with the module's address only: object ids in the path (token uids)
        # are driver identifiers and never go into a message that may be logged.
        super().__init__(f"{module_address(url)}: {message}")
        self.url = url
        self.http_status = http_status
        self.status_code = status_code


def module_address(url: str) -> str:
    """``url`` up to its OCPI module (``.../ocpi/emsp/2.2.1/tokens``): no object ids,
    no query."""
    parts = urlsplit(url)
    segments = parts.path.split("/")
    if OCPI_VERSION in segments:
        i = segments.index(OCPI_VERSION)
        segments = segments[:i + 2]
    return f"{parts.scheme}://{parts.netloc}{'/'.join(segments)}"


def segment(value: str) -> str:
    """One path segment built from data (a uid, an id): percent-encoded, so that
    ``/``, ``..``, ``?`` or ``#`` in it can never change the URL's meaning."""
    return quote(value, safe="")


def envelope(data: Any = None, status_code: int = OCPIStatus.SUCCESS,
             message: str | None = None, *, now: datetime | None = None) -> dict[str, Any]:
    """An OCPI response body."""
    out: dict[str, Any] = {"status_code": int(status_code),
                           "timestamp": format_datetime(now or datetime.now(UTC))}
    if data is not None:
        out["data"] = data
    if message:
        out["status_message"] = message[:512]
    return out


def authorization_header(token: str) -> str:
    """``Token`` and the Base64 of the UTF-8 credentials token (OCPI 2.2.1)."""
    return "Token " + base64.b64encode(token.encode()).decode()


_B64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def credentials_token(header: str | None) -> str | None:
    """The credentials token of an ``Authorization: Token ...`` header (None without
    one). The Base64 form is decoded; a value that is not Base64 of printable ASCII is
    taken as sent (OCPI 2.1.1 peers send the token raw)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "token" or not value:
        return None
    if _B64.match(value) and len(value) % 4 == 0:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return value
        if decoded and all(0x21 <= ord(c) <= 0x7E for c in decoded):
            return decoded
    return value


def validation_message(err: ValidationError) -> str:
    """Every problem of a body, each naming its field path."""
    parts = []
    for e in err.errors()[:10]:
        where = ".".join(str(x) for x in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    """One page of a list GET: its objects and the headers that go with them."""

    items: list[Any]
    headers: dict[str, str] = field(default_factory=dict)


def _query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise OCPIError(OCPIStatus.INVALID_PARAMETERS, f"{name}: not an integer: {raw[:20]!r}"
                        ) from None
    if value < 0:
        raise OCPIError(OCPIStatus.INVALID_PARAMETERS, f"{name}: must not be negative")
    return value


def _query_time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return parse_datetime(raw)
    except ValueError as exc:
        raise OCPIError(OCPIStatus.INVALID_PARAMETERS, f"{name}: {exc}") from None


def paginate(request: web.Request, items: Sequence[T], last_updated: Callable[[T], datetime],
             *, max_limit: int = MAX_PAGE, base_url: str | None = None) -> Page:
    """The page of ``items`` (oldest first, as they come) a list GET asks for, with
    ``X-Total-Count``, ``X-Limit`` and a ``Link`` to the next page."""
    offset = _query_int(request, "offset", 0)
    limit = min(_query_int(request, "limit", max_limit), max_limit)
    date_from = _query_time(request, "date_from")
    date_to = _query_time(request, "date_to")
    chosen = [x for x in items
              if (date_from is None or last_updated(x) >= date_from)
              and (date_to is None or last_updated(x) < date_to)]
    page = chosen[offset:offset + limit]
    headers = {"X-Total-Count": str(len(chosen)), "X-Limit": str(max_limit)}
    if offset + limit < len(chosen) and limit > 0:
        rel = request.rel_url.update_query({"offset": str(offset + limit), "limit": str(limit)})
        # Behind a proxy, the address partners use (public_url), not the one we bind.
        base = base_url.rstrip("/") if base_url else f"{request.scheme}://{request.host}"
        headers["Link"] = f'<{base}{rel}>; rel="next"'
    return Page(page, headers)


_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True)
class Routing:
    """Who a request is from and to (the OCPI-from/to headers)."""

    from_country_code: str
    from_party_id: str
    to_country_code: str
    to_party_id: str

    def headers(self) -> dict[str, str]:
        return {"OCPI-from-country-code": self.from_country_code,
                "OCPI-from-party-id": self.from_party_id,
                "OCPI-to-country-code": self.to_country_code,
                "OCPI-to-party-id": self.to_party_id}


class OCPIClient:
    """Calls another OCPI party: the token header, request and correlation ids,
    routing headers, the envelope checked and unwrapped, pages followed."""

    def __init__(self, *, timeout_s: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def call(self, method: str, url: str, token: str, *, body: Any = None,
                   routing: Routing | None = None, correlation_id: str | None = None,
                   ) -> tuple[Any, dict[str, str]]:
        """``method`` ``url`` with ``body`` (JSON); the response's ``data`` and
        headers. Raises OCPIRemoteError unless HTTP 2xx and an OCPI 1xxx status."""
        headers = {"Authorization": authorization_header(token),
                   "X-Request-ID": str(uuid.uuid4()),
                   "X-Correlation-ID": correlation_id or str(uuid.uuid4())}
        if routing is not None:
            headers.update(routing.headers())
        try:
            async with self._http().request(method, url, json=body, headers=headers) as resp:
                text = await resp.text()
                answer_headers = dict(resp.headers)
                http_status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise OCPIRemoteError(url, f"{method} failed: {type(exc).__name__}: {exc}"
                                  ) from None
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = None
        status_code = payload.get("status_code") if isinstance(payload, dict) else None
        message = payload.get("status_message") if isinstance(payload, dict) else None
        if not 200 <= http_status < 300:
            raise OCPIRemoteError(url, f"{method}: HTTP {http_status}"
                                  + (f" (OCPI {status_code}: {message})" if status_code else ""),
                                  http_status=http_status, status_code=status_code)
        if not isinstance(payload, dict) or not isinstance(status_code, int):
            raise OCPIRemoteError(url, f"{method}: not an OCPI response", http_status=http_status)
        if not 1000 <= status_code < 2000:
            raise OCPIRemoteError(url, f"{method}: OCPI {status_code}: {message or ''}",
                                  http_status=http_status, status_code=status_code)
        return payload.get("data"), answer_headers

    async def get_all(self, url: str, token: str, *, routing: Routing | None = None,
                      max_pages: int = 1000) -> list[Any]:
        """Every object of a paginated list, following the ``Link`` headers."""
        out: list[Any] = []
        next_url: str | None = url
        for _ in range(max_pages):
            if next_url is None:
                break
            data, headers = await self.call("GET", next_url, token, routing=routing)
            if not isinstance(data, list):
                raise OCPIRemoteError(next_url, "GET: data is not a list")
            out.extend(data)
            link = headers.get("Link") or headers.get("link")
            match = _NEXT.search(link) if link else None
            next_url = match.group(1) if match else None
        return out
