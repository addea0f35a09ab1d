"""Security events with bounded cost, and per-peer throttling of failed handshakes.

Two pieces the websocket server and the operator API share:

:class:`SecurityAudit` records refusals (bad credentials, unknown stations,
timed-out handshakes, wrong API tokens) in the store's ``security_events``
table and the log, with three bounds so that an attacker cannot turn the
audit trail into a denial of service on the disk:

- every field is bounded: identities are cut to 48 characters and
  ``repr``-escaped (:func:`safe_identity`), details to 200 characters; callers
  never pass passwords, Authorization headers or base64 credentials;
- at most ``per_key`` events per (peer address, kind) and ``total`` events
  overall are stored and logged per ``window_s``; the excess is counted and
  summarised in one later event of the same kind ("N similar events
  suppressed");
- retention is the service's job (:meth:`evtwin.csms.store.Store.prune_security_events`).

:class:`FailureThrottle` counts failed handshakes per peer address and per
(peer address, identity) in fixed windows. A peer over its budget is refused
cheaply (HTTP 429 with Retry-After) until its window ends, *except* for a
request whose credentials the server can check in microseconds and that
passes: many real stations share one public address (site routers, mobile
carriers' NAT), so a throttle that refused everyone behind an address would
let one broken or hostile device lock out its neighbours. What the throttle
saves is the expensive part: no legacy scrypt check, no stored event, no log
line per refused attempt. IPv6 peers are grouped by their /64, the block one
subscriber usually gets, so rotating addresses within it does not escape the
count. Memory is bounded: at most ``max_tracked`` counters, the oldest
evicted first.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .clock import iso

__all__ = [
    "DETAIL_MAX_CHARS",
    "FailureThrottle",
    "SecurityAudit",
    "peer_host",
    "safe_identity",
]

log = logging.getLogger("evtwin.csms.security")

#: Longest detail stored or logged for one security event.
DETAIL_MAX_CHARS = 200
#: Identities in events are cut to the longest valid OCPP-J identity.
IDENTITY_MAX_CHARS = 48


def safe_identity(identity: str) -> str:
    """``repr`` of at most the first 48 characters, saying how many more there were."""
    if len(identity) <= IDENTITY_MAX_CHARS:
        return repr(identity)
    return f"{identity[:IDENTITY_MAX_CHARS]!r}... ({len(identity)} characters)"


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9_-]{0,15}) ")


def auth_scheme(header: str) -> str:
    """The scheme of an Authorization header, safe to log: the token before its first
    space if it looks like a scheme name, else ``"none"`` (a header that is only
    credentials, ``Authorization: <base64>``, must not be quoted)."""
    m = _SCHEME.match(header)
    return m.group(1) if m else "none"


def _cap(text: str, limit: int = DETAIL_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def peer_host(address: Any) -> str | None:
    """The throttling key of a peer: its IP address, or the /64 of an IPv6 address."""
    if isinstance(address, tuple | list) and address:
        address = address[0]
    if not isinstance(address, str):
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class _EventSink(Protocol):
    def record_security_event(self, at: str, peer: str | None, kind: str,
                              detail: str) -> None: ...


@dataclass
class _Window:
    start: float
    stored: int = 0
    suppressed: int = 0
    peer: str | None = None


class SecurityAudit:
    """Stores and logs security events, at most ``per_key`` per (peer, kind) per window.

    ``store`` gets the rows, ``clock`` stamps them (the CSMS's clock), and
    ``monotonic`` measures the windows of ``window_s`` seconds. ``total``
    caps all events per window whatever their peer (many addresses at once);
    ``max_keys`` bounds the (peer, kind) counters held in memory.
    """

    def __init__(self, store: _EventSink, clock: Callable[[], datetime], *,
                 per_key: int = 10, total: int = 600, window_s: float = 60.0,
                 max_keys: int = 4096, monotonic: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log) -> None:
        if per_key < 1 or total < 1 or window_s <= 0:
            raise ValueError(f"per_key {per_key} and total {total} must be >= 1, "
                             f"window_s {window_s} > 0")
        self.store = store
        self.clock = clock
        self.per_key = per_key
        self.total = total
        self.window_s = window_s
        self.max_keys = max_keys
        self._monotonic = monotonic
        self._log = logger
        self._windows: OrderedDict[tuple[str | None, str], _Window] = OrderedDict()
        self._total_start = monotonic()
        self._total_stored = 0
        #: Events seen and events suppressed since start (for tests and metrics).
        self.seen = 0
        self.suppressed = 0

    def record(self, kind: str, detail: str, *, peer: str | None = None,
               host: str | None = None, message: str = "refused connection from %s: %s",
               **extra: Any) -> bool:
        """Record one event unless its (``host``, ``kind``) budget is spent; True if stored.

        ``peer`` is stored as given (e.g. ``"('10.0.0.1', 51234)"``); ``host``
        (default: ``peer``) is what the budget is counted by, so one address
        with many source ports shares one budget. ``message`` is the log
        format, given ``peer`` and the detail; ``extra`` goes into the log
        record.
        """
        self.seen += 1
        now = self._monotonic()
        if now - self._total_start >= self.window_s:
            self._total_start, self._total_stored = now, 0
        key = (host if host is not None else peer, kind)
        window = self._windows.get(key)
        if window is not None and now - window.start >= self.window_s:
            self._summarise(key, window)
            window = None
        if window is None:
            window = self._windows[key] = _Window(now, peer=peer)
            while len(self._windows) > self.max_keys:
                old_key, old = self._windows.popitem(last=False)
                self._summarise(old_key, old)
        if window.stored >= self.per_key or self._total_stored >= self.total:
            window.suppressed += 1
            self.suppressed += 1
            return False
        window.stored += 1
        self._total_stored += 1
        self._emit(kind, _cap(detail), peer, message, extra)
        return True

    def flush(self) -> int:
        """Write the summary of every window that has ended; return how many were written.

        Call it now and then (the service does) and before shutting down, so
        suppressed counts are not lost when a peer goes quiet.
        """
        now = self._monotonic()
        done = [k for k, w in self._windows.items() if now - w.start >= self.window_s]
        written = 0
        for key in done:
            written += self._summarise(key, self._windows.pop(key))
        return written

    def close(self) -> int:
        """Summarise every open window now (at shutdown)."""
        written = 0
        while self._windows:
            key, window = self._windows.popitem(last=False)
            written += self._summarise(key, window)
        return written

    def _summarise(self, key: tuple[str | None, str], window: _Window) -> int:
        self._windows.pop(key, None)
        if not window.suppressed:
            return 0
        host, kind = key
        # The summary speaks for the whole address, not the first event's port.
        self._emit(kind, f"{window.suppressed} similar events suppressed "
                         f"(more than {self.per_key} per {self.window_s:g} s)",
                   host if host is not None else window.peer,
                   "security events from %s: %s", {})
        return 1

    def _emit(self, kind: str, detail: str, peer: str | None, message: str,
              extra: dict[str, Any]) -> None:
        self._log.warning(message, peer or "an unknown peer", detail,
                          extra={"event": "security", "kind": kind, "peer": peer, **extra})
        self.store.record_security_event(iso(self.clock()), peer, kind, detail)


@dataclass
class _Count:
    start: float
    failures: int = 0


class FailureThrottle:
    """Failed handshakes per peer and per (peer, identity), in fixed windows of ``window_s``.

    After ``per_identity`` failures for one identity from one peer, or
    ``per_peer`` failures from one peer whatever the identity, within one
    window, :meth:`retry_after` says how long that peer (for that identity)
    is throttled: until the window that filled up ends. See the module
    docstring for what "throttled" means and why correct credentials still
    pass. Limits of 0 turn the respective count off.
    """

    def __init__(self, *, per_peer: int = 100, per_identity: int = 10, window_s: float = 60.0,
                 max_tracked: int = 10_000,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if per_peer < 0 or per_identity < 0 or window_s <= 0 or max_tracked < 1:
            raise ValueError(f"bad throttle settings per_peer={per_peer} "
                             f"per_identity={per_identity} window_s={window_s} "
                             f"max_tracked={max_tracked}")
        self.per_peer = per_peer
        self.per_identity = per_identity
        self.window_s = window_s
        self.max_tracked = max_tracked
        self._monotonic = monotonic
        self._counts: OrderedDict[tuple[str, ...], _Count] = OrderedDict()

    @staticmethod
    def _keys(host: str, identity: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        # Identities beyond 48 characters are invalid anyway; 64 keeps keys small.
        return ("peer", host), ("id", host, identity[:64])

    def _blocked_for(self, key: tuple[str, ...], limit: int, now: float) -> float:
        count = self._counts.get(key)
        if count is None or not limit:
            return 0.0
        left = count.start + self.window_s - now
        if left <= 0:
            del self._counts[key]
            return 0.0
        return left if count.failures >= limit else 0.0

    def retry_after(self, host: str | None, identity: str) -> float:
        """Seconds until ``host`` may try ``identity`` again normally; 0 if not throttled."""
        if host is None:
            return 0.0
        now = self._monotonic()
        by_peer, by_identity = self._keys(host, identity)
        return max(self._blocked_for(by_peer, self.per_peer, now),
                   self._blocked_for(by_identity, self.per_identity, now))

    def failure(self, host: str | None, identity: str) -> None:
        """Count one failed handshake of ``host`` for ``identity``."""
        if host is None:
            return
        now = self._monotonic()
        for key in self._keys(host, identity):
            count = self._counts.get(key)
            if count is None or now - count.start >= self.window_s:
                count = self._counts[key] = _Count(now)
            self._counts.move_to_end(key)
            count.failures += 1
        while len(self._counts) > self.max_tracked:
            self._counts.popitem(last=False)

    def __len__(self) -> int:
        return len(self._counts)
