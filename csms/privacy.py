"""Data protection: driver identifiers pseudonymised wherever people read them,
erased after a retention period or on request, and every access or erasure audited.

An id token (RFID uid, eMAID, app token) or an eMSP contract id is personal data
(it identifies a driver). Logs, exports, the operator API and the dashboard
show a pseudonym instead: a keyed hash (HMAC-SHA256) of the identifier, the
same for the same driver under one key, so sessions can still be grouped per
driver, but not reversible without the key, and different under another key
(another operator). No log call passes a raw identifier; ``csms serve`` puts a
:class:`PseudonymFilter` on its JSON log handler as a safety net.

**The key.** Each CSMS database holds its own: 32 random bytes made the first
time it is asked for (:func:`stored_key`, table ``privacy_key``), so every
``csms serve`` process sharing a PostgreSQL database, and every later start,
writes the same pseudonyms; the twin's CSMS uses its run's store the same way.
``[privacy] key_file`` in the CSMS config names a file with the key instead
(64 hex digits, e.g. ``openssl rand -hex 32 > privacy.key``): to keep it
apart from the data, or to give several databases the same pseudonyms.
:func:`pseudonymiser_for` is the one place to get a store's pseudonymiser.

**What is erased.** A transaction's personal data is its id token: in
``transactions.id_token`` and ``cdrs.id_token`` and inside the messages kept
as received (``transaction_events.payload``, ``station_messages.payload``,
``commands.command``; JSON). Erasing replaces it by :data:`ERASED` and keeps
everything else (station, times, energy, cost), so every aggregate (sessions,
energy, revenue, per site) is the same before and after. Meter values carry
no identifier. Erased event rows also lose their content digest (an unkeyed
hash of a 1.6 message that contained the token). :func:`prune_personal_data`
does it for every transaction that ended more than ``retention_days`` ago
(``[privacy] retention_days``, run hourly by ``evtwin csms serve`` and once by
``evtwin csms privacy prune``); :func:`erase_driver` for every transaction of
one driver (GDPR erasure; refused while one of theirs is open, as the CSMS would
write the token again), :func:`export_driver` gives all of one driver's data
(GDPR access). Both are the ``evtwin csms privacy`` commands and the operator
API's ``/privacy`` endpoints. Tokens configured in ``[tokens]`` live in the config file,
not the database: an erasure leaves them to the operator (and the stations'
local lists to the next SendLocalList).

**The audit log** (table ``privacy_audit``, :func:`audit_log`): who (the actor
named on the command line), when (UTC), what (``export``, ``erase``,
``prune``), whose (the pseudonym, never the raw identifier; none for a
prune) and how many rows.

**Other stores (the eMSP).** Nothing here is tied to the CSMS's tables but
:func:`export_driver`, :func:`erase_driver` and :func:`prune_personal_data`.
A store of its own (the eMSP's SQLite file with contract ids) uses the same
pieces: :data:`SQLITE_SCHEMA` creates the same ``privacy_key`` and
``privacy_audit`` tables, :class:`SQLiteSQL` wraps a ``sqlite3`` connection as
the :class:`SQL` these functions take, :func:`stored_key` and
:func:`record_audit` / :func:`audit_log` work on it unchanged, :func:`redact`
erases identifiers in any JSON it keeps, and :class:`PseudonymFilter`
pseudonymises its log lines. Its erasure is then, in one ``sql.atomic()``:
``UPDATE ... SET contract_id = ERASED WHERE LOWER(contract_id) = LOWER(?)`` per
table that holds it, :func:`redact` ``(tokens=[contract_id])`` over its JSON
columns, and :func:`record_audit` with the pseudonym.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import sqlite3
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .clock import iso
from .exceptions import ConfigError, PersonalDataError

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("evtwin.csms.privacy")

__all__ = [
    "AUDIT_OPERATIONS",
    "ERASED",
    "MAX_RETENTION_DAYS",
    "PERSONAL_FIELDS",
    "PSEUDONYM_PREFIX",
    "SQL",
    "SQLITE_SCHEMA",
    "TOKEN_KEYS",
    "AuditEntry",
    "PrivacySection",
    "PseudonymFilter",
    "Pseudonymiser",
    "SQLiteSQL",
    "audit_log",
    "erase_driver",
    "export_driver",
    "load_key_file",
    "on_behalf",
    "open_store",
    "prune_personal_data",
    "pseudonymiser_for",
    "record_audit",
    "redact",
    "retention_housekeeping",
    "stored_key",
]

#: Every pseudonym starts so (``pid-`` and 16 hex digits), which tells it from a raw id.
PSEUDONYM_PREFIX = "pid-"
#: What an erased identifier becomes, in every column and message.
ERASED = "(erased)"
#: Keys under which OCPP (1.6, 2.x) and OCPI messages carry a driver identifier.
TOKEN_KEYS = frozenset({"idToken", "idTag", "parentIdTag", "groupIdToken",
                        "additionalIdToken", "contract_id", "id_token", "emaid"})
#: Log record fields (``extra=``) that hold a driver identifier: pseudonymised.
PERSONAL_FIELDS = frozenset({"id_token", "idToken", "idTag", "contract_id", "token_uid"})
#: What an audit entry records.
AUDIT_OPERATIONS = ("export", "erase", "prune")
#: A token shorter than this is matched only as a whole string, never inside text.
MIN_SUBSTRING_TOKEN = 6

#: The privacy tables for a SQLite store of its own (the eMSP's): the same
#: shape as the CSMS's (schema v7).
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_key (
    id INTEGER PRIMARY KEY CHECK (id = 1), key_hex TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS privacy_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
    operation TEXT NOT NULL, subject TEXT, row_count INTEGER NOT NULL, detail TEXT);
"""


class Pseudonymiser:
    """Keyed pseudonyms of driver identifiers (case-insensitive, as OCPP compares them)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a pseudonymisation key needs at least 16 bytes")
        self._key = key

    def __call__(self, identifier: str | None) -> str | None:
        """The pseudonym of ``identifier`` (None stays None; a pseudonym, and
        :data:`ERASED`, stay themselves)."""
        if identifier is None or identifier.startswith(PSEUDONYM_PREFIX) \
                or identifier == ERASED:
            return identifier
        digest = hmac.new(self._key, identifier.casefold().encode(), hashlib.sha256)
        return PSEUDONYM_PREFIX + digest.hexdigest()[:16]


#: The longest retention period (days; 100 years): beyond it dates overflow.
MAX_RETENTION_DAYS = 36500


class PrivacySection(BaseModel):
    """``[privacy]`` of the CSMS config: the pseudonymisation key and how long
    personal data (the id tokens of sessions and CDRs) is kept."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    retention_days: float | None = Field(365.0, ge=0, le=36500, allow_inf_nan=False)
    """Personal data of transactions that ended longer ago than this is erased
    (checked hourly); sessions, energy and cost stay. 0: kept for ever."""
    key_file: Path | None = None
    """File with the pseudonymisation key (64 hex digits; relative to the config
    file's folder). Default: a random key kept in the database."""

    @field_validator("retention_days")
    @classmethod
    def _zero_keeps(cls, v: float | None) -> float | None:
        return None if v == 0 else v

    def resolved(self, base: Path) -> PrivacySection:
        """This section with a relative ``key_file`` taken from the folder ``base``."""
        if self.key_file is None or self.key_file.is_absolute():
            return self
        return self.model_copy(update={"key_file": base / self.key_file})

    def file_problems(self) -> list[tuple[str, str]]:
        """A key file that cannot be read or holds no key, as ``(field, message)``."""
        if self.key_file is None:
            return []
        try:
            load_key_file(self.key_file)
        except ConfigError as exc:
            return [("privacy.key_file", str(exc).removeprefix("privacy.key_file: "))]
        return []


# -- SQL on either kind of store --------------------------------------------------------
class SQL(Protocol):
    """What these functions need of a database: the CSMS's :class:`~.store.Store`
    has it; :class:`SQLiteSQL` gives it to a plain ``sqlite3`` connection. SQL uses
    ``?`` placeholders."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows of one SELECT, as dicts."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the rows it changed."""
        ...

    def atomic(self) -> contextlib.AbstractContextManager[None]:
        """One transaction: all or nothing."""
        ...


class SQLiteSQL:
    """A ``sqlite3`` connection (in autocommit mode, ``isolation_level=None``, or
    not) as :class:`SQL`; creates the privacy tables (:data:`SQLITE_SCHEMA`)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(SQLITE_SCHEMA)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows of one SELECT, as dicts."""
        cur = self.db.execute(sql, params)
        names = [c[0] for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the rows it changed."""
        return int(self.db.execute(sql, params).rowcount)

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction (a savepoint inside one already open)."""
        self.db.execute("SAVEPOINT privacy")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK TO privacy")
            self.db.execute("RELEASE privacy")
            raise
        self.db.execute("RELEASE privacy")


# -- the key --------------------------------------------------------------------------
def stored_key(sql: SQL, *, now: datetime) -> bytes:
    """The database's pseudonymisation key, made (32 random bytes) the first time:
    every process sharing the database gets the same one."""
    rows = sql.query("SELECT key_hex FROM privacy_key WHERE id = 1")
    if not rows:
        with sql.atomic():
            sql.execute("INSERT INTO privacy_key(id, key_hex, created_at) VALUES (1, ?, ?) "
                        "ON CONFLICT(id) DO NOTHING", (secrets.token_hex(32), iso(now)))
        rows = sql.query("SELECT key_hex FROM privacy_key WHERE id = 1")
    return bytes.fromhex(str(rows[0]["key_hex"]))


def load_key_file(path: str | Path) -> bytes:
    """The key in ``path``: 64 (or more) hex digits on its first line.

    ConfigError naming ``privacy.key_file`` when it cannot be read or holds no key.
    """
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not a text file"
        raise ConfigError("privacy.key_file", f"{path}: {why}") from None
    first = text.splitlines()[0].strip() if text else ""
    try:
        key = bytes.fromhex(first)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise ConfigError("privacy.key_file", f"{path}: needs a key of 64 hex digits on its "
                                              "first line (openssl rand -hex 32)")
    return key


_pseudonymisers: weakref.WeakKeyDictionary[Any, Pseudonymiser] = weakref.WeakKeyDictionary()


def pseudonymiser_for(store: Store, *, key_file: str | Path | None = None,
                      now: datetime | None = None) -> Pseudonymiser:
    """The pseudonymiser of a CSMS store: the key of ``key_file`` if given (and from
    then on for this store), else the one kept in the database (:func:`stored_key`)."""
    if key_file is not None:
        made = Pseudonymiser(load_key_file(key_file))
        _pseudonymisers[store] = made
        return made
    found = _pseudonymisers.get(store)
    if found is None:
        from .clock import wall_clock

        found = Pseudonymiser(stored_key(store, now=now or wall_clock()))
        _pseudonymisers[store] = found
    return found


# -- identifiers inside messages ------------------------------------------------------------
#: Splits log text into words and what is between them (kept, to join it again).
_WORDS = re.compile(r"""([\s,;:'"()\[\]{}<>=|]+)""")


#: Up to this many ``tokens``, :func:`redact` finds them inside words too; beyond (a
#: whole token list) it compares whole words, which a set lookup does at any size.
SUBSTRING_SEARCH_MAX = 16


def redact(value: Any, *, tokens: Iterable[str] = (), keep: str | None = None,
           replace: Callable[[str], str] | None = None) -> Any:
    """``value`` (decoded JSON) with driver identifiers replaced (a copy).

    Replaced: every string under a key of :data:`TOKEN_KEYS` (except one equal to
    ``keep``, the data subject's own in an export), every string that is one of
    ``tokens``, and in other text each occurrence of a token of at least
    :data:`MIN_SUBSTRING_TOKEN` characters (as a whole word only when more than
    :data:`SUBSTRING_SEARCH_MAX` tokens are given). Case-insensitive. ``replace``
    gives the replacement (default: :data:`ERASED`; a :class:`Pseudonymiser` writes
    pseudonyms instead).
    """
    swap: Callable[[str], str] = replace or (lambda _: ERASED)
    given = [t for t in tokens if t]
    whole = {t.casefold() for t in given}
    long = {t for t in whole if len(t) >= MIN_SUBSTRING_TOKEN}
    inside = (re.compile("|".join(re.escape(t) for t in sorted(long, key=len, reverse=True)),
                         re.IGNORECASE)
              if long and len(given) <= SUBSTRING_SEARCH_MAX else None)
    kept = keep.casefold() if keep is not None else None

    def text(s: str) -> str:
        if s.casefold() in whole:
            return swap(s)
        if inside is not None:
            return inside.sub(lambda m: swap(m.group()), s)
        if long:
            words = _WORDS.split(s)
            if any(w.casefold() in long for w in words):
                return "".join(swap(w) if w.casefold() in long else w for w in words)
        return s

    def walk(v: Any, under_key: bool) -> Any:
        if isinstance(v, dict):
            # Only the values of these keys: {"idToken": ..., "type": ...} keeps its type.
            return {k: walk(x, k in TOKEN_KEYS) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, under_key) for x in v]
        if isinstance(v, str):
            if under_key and v != ERASED and (kept is None or v.casefold() != kept):
                return swap(v)
            return text(v)
        return v

    return walk(value, False)


class PseudonymFilter(logging.Filter):
    """A logging filter (on a handler) that pseudonymises driver identifiers: in the
    fields of :data:`PERSONAL_FIELDS` and under :data:`TOKEN_KEYS` in any structured
    field, and in the message text the identifiers in ``known`` (the configured
    tokens). A safety net: log calls should not pass raw identifiers at all."""

    def __init__(self, pseudonymise: Pseudonymiser, known: Iterable[str] = ()) -> None:
        super().__init__()
        self.pseudonymise = pseudonymise
        # Looked up word by word (a set, not one pattern of 10,000 alternatives: a
        # reconnect storm logs thousands of lines).
        self._known = frozenset(t.casefold() for t in known if len(t) >= 4)

    def _swap(self, s: str) -> str:
        return self.pseudonymise(s) or s

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place; never drops it."""
        for key, value in list(record.__dict__.items()):
            if key in PERSONAL_FIELDS and isinstance(value, str):
                setattr(record, key, self._swap(value))
            elif isinstance(value, dict | list) and key not in ("args",):
                setattr(record, key, redact(value, replace=self._swap))
        if self._known:
            message = record.getMessage()
            words = _WORDS.split(message)
            if any(w.casefold() in self._known for w in words):
                record.msg = "".join(self._swap(w) if w.casefold() in self._known else w
                                     for w in words)
                record.args = None
        return True


# -- the audit log ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One access to or erasure of personal data."""

    id: int
    at: str
    """When (UTC)."""
    actor: str
    """Who: the operator or process named when it was done."""
    operation: str
    """``export``, ``erase`` or ``prune``."""
    subject: str | None
    """Whose data: the driver's pseudonym (none for a prune, which is everyone's)."""
    row_count: int
    """Rows exported or changed."""
    detail: str | None
    """The reason given (erase), the cut-off (prune)."""

    def as_dict(self) -> dict[str, Any]:
        """The entry as a plain dict (JSON)."""
        return asdict(self)


def _check_actor(actor: str) -> str:
    actor = actor.strip()
    if not actor or len(actor) > 100 or any(ord(c) < 32 for c in actor):
        raise PersonalDataError("--actor", "name who does it: 1 to 100 printable characters")
    return actor


def on_behalf(declared: str | None, principal: str) -> str:
    """The audit log's "who": the name the caller declared with the principal that was
    authenticated (``"dpo@example.org (os user ada)"``, ``"dpo (api token, peer
    10.0.0.5)"``), so a declared name alone never stands for who did it. The declared
    part is cut to fit the 100 characters of an actor."""
    principal = " ".join(principal.split())[:60]
    declared = (declared or "").strip()
    if not declared:
        return principal
    return f"{declared[:100 - len(principal) - 3]} ({principal})"


def record_audit(sql: SQL, *, at: datetime, actor: str, operation: str,
                 subject: str | None, row_count: int, detail: str | None = None) -> None:
    """Add an entry to the audit log (``subject``: a pseudonym, never a raw id)."""
    if operation not in AUDIT_OPERATIONS:
        raise ValueError(f"unknown audit operation {operation!r}")
    if subject is not None and not subject.startswith(PSEUDONYM_PREFIX):
        raise ValueError("the audit log names drivers by their pseudonym only")
    sql.execute("INSERT INTO privacy_audit(at, actor, operation, subject, row_count, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (iso(at), _check_actor(actor), operation, subject, row_count, detail))


def audit_log(sql: SQL) -> list[AuditEntry]:
    """Every audit entry, oldest first."""
    return [AuditEntry(id=int(r["id"]), at=r["at"], actor=r["actor"], operation=r["operation"],
                       subject=r["subject"], row_count=int(r["row_count"]), detail=r["detail"])
            for r in sql.query("SELECT id, at, actor, operation, subject, row_count, detail "
                               "FROM privacy_audit ORDER BY id")]


# -- the CSMS's personal data -------------------------------------------------------------
#: Tables whose kept messages (JSON text) may carry an id token: (table, key, column).
_MESSAGE_TABLES = (("transaction_events", ("station_id", "transaction_id", "seq_no"), "payload"),
                   ("station_messages", ("id",), "payload"),
                   ("commands", ("id",), "command"))


def _like(token: str) -> str:
    """A ``LOWER(column) LIKE ? ESCAPE '!'`` pattern for ``token`` inside JSON text."""
    escaped = json.dumps(token.casefold())[1:-1]
    return "%" + re.sub(r"([!%_])", r"!\1", escaped) + "%"


def _token_rows(store: SQL, table: str, token: str, *, extra: str = ""
                ) -> list[dict[str, Any]]:
    """The rows of ``table`` (transactions, cdrs) with this id token (any case)."""
    return store.query(f"SELECT * FROM {table} WHERE LOWER(id_token) = LOWER(?) {extra}",
                       (token,))


def _check_token(id_token: str) -> str:
    token = id_token.strip()
    if not token or token == ERASED or token.startswith(PSEUDONYM_PREFIX):
        raise PersonalDataError("--id-token", "give the driver's raw id token (not empty, "
                                              "not a pseudonym)")
    return token


def _messages_with(store: SQL, token: str) -> Iterator[tuple[str, tuple[str, ...], str,
                                                              dict[str, Any], Any]]:
    """Kept messages whose text holds ``token``: (table, key columns, column, row, decoded)."""
    for table, key, column in _MESSAGE_TABLES:
        for row in store.query(f"SELECT * FROM {table} WHERE LOWER({column}) LIKE ? "
                               f"ESCAPE '!' ORDER BY {', '.join(key)}", (_like(token),)):
            try:
                decoded = json.loads(row[column])
            except (TypeError, ValueError):
                continue
            yield table, key, column, row, decoded


def export_driver(store: Store, id_token: str, *, actor: str,
                  now: datetime) -> dict[str, Any]:
    """All of one driver's data (GDPR access), JSON-ready, and an audit entry.

    Their sessions (transactions), CDRs, the events and meter values of their
    transactions, and kept station messages that name them; identifiers of other
    drivers in those messages are erased (:func:`redact`). PersonalDataError naming
    ``--id-token`` when the database has nothing of this driver.
    """
    token = _check_token(id_token)
    actor = _check_actor(actor)
    pseudonym = pseudonymiser_for(store)(token)
    sessions = _token_rows(store, "transactions", token,
                           extra="ORDER BY started_at, station_id, transaction_id")
    cdrs = _token_rows(store, "cdrs", token,
                       extra="ORDER BY ended_at, station_id, transaction_id")
    events: list[dict[str, Any]] = []
    meter_values: list[dict[str, Any]] = []
    for tx in sessions:
        key = (tx["station_id"], tx["transaction_id"])
        for ev in store.query("SELECT seq_no, event_type, trigger_reason, timestamp, payload "
                              "FROM transaction_events WHERE station_id = ? AND "
                              "transaction_id = ? ORDER BY seq_no", key):
            ev["payload"] = redact(json.loads(ev["payload"]), keep=token)
            events.append({"station_id": key[0], "transaction_id": key[1], **ev})
        meter_values += [{"station_id": key[0], "transaction_id": key[1], **mv}
                         for mv in store.query(
                             "SELECT evse_id, timestamp, measurand, phase, value, unit "
                             "FROM meter_values WHERE station_id = ? AND transaction_id = ? "
                             "ORDER BY timestamp, rowid", key)]
    mine = {(tx["station_id"], tx["transaction_id"]) for tx in sessions}
    messages = []
    for table, _, column, row, decoded in _messages_with(store, token):
        if table == "transaction_events" and (row["station_id"], row["transaction_id"]) in mine:
            continue  # already there, with its transaction
        if redact(decoded, tokens=[token]) == decoded:
            continue  # the text matched, no identifier did
        messages.append({"table": table, **{k: v for k, v in row.items()
                                            if k not in (column, "digest")},
                         column: redact(decoded, keep=token)})
    rows = len(sessions) + len(cdrs) + len(events) + len(meter_values) + len(messages)
    if rows == 0:
        raise PersonalDataError("--id-token", f"no data of this id token ({pseudonym}) in "
                                              "the database", reason="unknown")
    with store.atomic():
        record_audit(store, at=now, actor=actor, operation="export", subject=pseudonym,
                     row_count=rows)
    return {"format": "evtwin-driver-export/1", "exported_at": iso(now), "id_token": token,
            "pseudonym": pseudonym, "sessions": sessions, "cdrs": cdrs,
            "transaction_events": events, "meter_values": meter_values,
            "other_messages": messages}


def _erase_messages(store: SQL, token: str) -> int:
    """Erase ``token`` in every kept message that holds it; the rows changed."""
    changed = 0
    for table, key, column, row, decoded in list(_messages_with(store, token)):
        cleaned = redact(decoded, tokens=[token])
        if cleaned == decoded:
            continue
        sets = f"{column} = ?" + (", digest = NULL" if "digest" in row else "")
        where = " AND ".join(f"{k} = ?" for k in key)
        changed += store.execute(f"UPDATE {table} SET {sets} WHERE {where}",
                                 (json.dumps(cleaned, separators=(",", ":")),
                                  *(row[k] for k in key)))
    return changed


def erase_driver(store: Store, id_token: str, *, actor: str, reason: str,
                 now: datetime) -> dict[str, int]:
    """Erase one driver's identifier everywhere in the database (GDPR erasure), in
    one transaction with its audit entry; returns the rows changed per table.

    Sessions, CDRs and events stay, with :data:`ERASED` for the token. Refused
    (PersonalDataError naming ``--id-token``) while the driver has an open transaction
    (the CSMS would write the token again) and when the database has nothing of them.
    """
    token = _check_token(id_token)
    actor = _check_actor(actor)
    reason = reason.strip()
    if not reason:
        raise PersonalDataError("--reason", "say why (e.g. the request's reference)")
    pseudonym = pseudonymiser_for(store)(token)
    open_tx = _token_rows(store, "transactions", token, extra="AND ended_at IS NULL")
    if open_tx:
        names = ", ".join(f"{t['station_id']}/{t['transaction_id']}" for t in open_tx[:5])
        raise PersonalDataError("--id-token", f"{pseudonym} has {len(open_tx)} open "
                                              f"transaction(s) ({names}); erase after they "
                                              "end", reason="charging")
    with store.atomic():
        counts = {
            table: store.execute(f"UPDATE {table} SET id_token = ? "
                                 "WHERE LOWER(id_token) = LOWER(?)", (ERASED, token))
            for table in ("transactions", "cdrs")}
        counts["messages"] = _erase_messages(store, token)
        total = sum(counts.values())
        if total == 0:
            raise PersonalDataError("--id-token", f"no data of this id token ({pseudonym}) "
                                                  "in the database", reason="unknown")
        record_audit(store, at=now, actor=actor, operation="erase", subject=pseudonym,
                     row_count=total, detail=reason[:500])
    return counts


def prune_personal_data(store: Store, *, retention_days: float, now: datetime,
                        actor: str = "retention", max_transactions: int = 2000) -> int:
    """Erase the id tokens of transactions that ended more than ``retention_days``
    before ``now``: in their rows, their CDRs and their events; and under
    :data:`TOKEN_KEYS` in station messages received before then. At most
    ``max_transactions`` per call (a serving CSMS waits meanwhile; the next call
    goes on). Returns the rows changed; records an audit entry when there were any.
    """
    if not 0 < retention_days <= MAX_RETENTION_DAYS:
        raise ValueError(f"retention_days must be above 0 and at most {MAX_RETENTION_DAYS}, "
                         f"not {retention_days}")
    cutoff = iso(now - timedelta(days=retention_days))
    old = store.query(
        "SELECT station_id, transaction_id, id_token FROM transactions WHERE ended_at IS NOT "
        "NULL AND ended_at < ? AND id_token IS NOT NULL AND id_token <> ? "
        "ORDER BY ended_at LIMIT ?", (cutoff, ERASED, max_transactions))
    changed = 0
    with store.atomic():
        if store.shared and not store.query(  # csms serve processes sharing PostgreSQL:
                "SELECT pg_try_advisory_xact_lock(7315002) AS mine")[0]["mine"]:
            return 0  # another one is pruning right now
        for tx in old:
            key = (tx["station_id"], tx["transaction_id"])
            changed += store.execute("UPDATE transactions SET id_token = ? WHERE "
                                     "station_id = ? AND transaction_id = ?", (ERASED, *key))
            changed += store.execute("UPDATE cdrs SET id_token = ? WHERE station_id = ? AND "
                                     "transaction_id = ?", (ERASED, *key))
            for ev in store.query("SELECT seq_no, payload FROM transaction_events WHERE "
                                  "station_id = ? AND transaction_id = ?", key):
                decoded = json.loads(ev["payload"])
                cleaned = redact(decoded, tokens=[tx["id_token"]])
                if cleaned != decoded:
                    changed += store.execute(
                        "UPDATE transaction_events SET payload = ?, digest = NULL WHERE "
                        "station_id = ? AND transaction_id = ? AND seq_no = ?",
                        (json.dumps(cleaned, separators=(",", ":")), *key, ev["seq_no"]))
        # CDRs whose transaction row is gone or was written without the token.
        changed += store.execute("UPDATE cdrs SET id_token = ? WHERE ended_at < ? AND "
                                 "id_token IS NOT NULL AND id_token <> ?",
                                 (ERASED, cutoff, ERASED))
        for msg in store.query("SELECT id, payload FROM station_messages WHERE received_at < ? "
                               "AND (LOWER(payload) LIKE ? OR LOWER(payload) LIKE ?)",
                               (cutoff, "%idtoken%", "%idtag%")):
            decoded = json.loads(msg["payload"])
            cleaned = redact(decoded)
            if cleaned != decoded:
                changed += store.execute("UPDATE station_messages SET payload = ? WHERE id = ?",
                                         (json.dumps(cleaned, separators=(",", ":")),
                                          msg["id"]))
        if changed:
            record_audit(store, at=now, actor=actor, operation="prune", subject=None,
                         row_count=changed, detail=f"ended before {cutoff}")
    return changed


async def retention_housekeeping(store: Store, *, retention_days: float | None,
                                 clock: Callable[[], datetime], prune_s: float = 3600.0,
                                 busy_s: float = 10.0, max_transactions: int = 500) -> None:
    """``evtwin csms serve``'s retention task: :func:`prune_personal_data` at once and
    every ``prune_s`` (sooner, every ``busy_s``, while there may be more: a round does
    at most ``max_transactions``, so the stations' messages wait for it only briefly).
    Runs until cancelled; a failing round is logged and the next one tried. None:
    nothing to do."""
    import asyncio

    if retention_days is None:
        return
    while True:
        wait_s = prune_s
        try:
            changed = prune_personal_data(store, retention_days=retention_days, now=clock(),
                                          max_transactions=max_transactions)
            if changed:
                log.info("erased personal data of transactions older than %g days (%d rows)",
                         retention_days, changed,
                         extra={"event": "personal_data_pruned", "rows": changed})
                wait_s = busy_s  # perhaps more to do: the round's cap was reached
        except Exception:  # housekeeping must outlive one bad round
            log.exception("personal data retention failed")
        await asyncio.sleep(wait_s)


def open_store(target: str) -> Store:
    """The CSMS database at ``target`` for the ``privacy`` commands: a SQLite file that
    must exist and be a CSMS database (never made anew), or a ``postgresql://`` URL.
    ConfigError naming ``--db`` otherwise."""
    from .store import Store, is_database_url

    if not is_database_url(target):
        path = Path(target)
        if not path.is_file():
            raise ConfigError("--db", f"{target}: no such file (give the CSMS's database)")
        try:
            with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro",
                                                    uri=True)) as db:
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                tables = {r[0] for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            raise ConfigError("--db", f"{target}: not a SQLite database ({exc})") from None
        if version < 1 or "transactions" not in tables:
            raise ConfigError("--db", f"{target}: not a CSMS database (no evtwin tables)")
    return Store(target)
