"""Who an OCPI platform talks to: registered parties and their credentials, in SQLite.

A party is the other platform of one credentials handshake: the token it sends us
(kept only as a SHA-256 hash: tokens are long random strings, so a plain hash is
enough and a request's lookup is one indexed query), the token we send it (kept as
is: we must present it), its versions URL, the endpoints of the version in use and
the roles it declared. One-time registration tokens (``CREDENTIALS_TOKEN_A``) are kept
hashed too, and refused once used.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .models import format_datetime

__all__ = ["Party", "Registry", "erase_roaming_data", "hash_credentials_token",
           "new_credentials_token"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS token_a (
    hash       TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    used_at    TEXT
);
CREATE TABLE IF NOT EXISTS parties (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    status         TEXT NOT NULL,
    our_token_hash TEXT UNIQUE,
    their_token    TEXT,
    versions_url   TEXT NOT NULL,
    version        TEXT,
    endpoints      TEXT NOT NULL DEFAULT '[]',
    roles          TEXT NOT NULL DEFAULT '[]',
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    kind         TEXT NOT NULL,
    country_code TEXT NOT NULL,
    party_id     TEXT NOT NULL,
    id           TEXT NOT NULL,
    data         TEXT NOT NULL,
    last_updated TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    PRIMARY KEY (kind, country_code, party_id, id)
);
CREATE INDEX IF NOT EXISTS objects_by_seq ON objects(kind, seq);
"""


def hash_credentials_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_credentials_token() -> str:
    """A fresh credentials token: 43 printable characters, 256 random bits."""
    return secrets.token_urlsafe(32)


@dataclass
class Party:
    """The other side of one registration."""

    id: int | None
    status: str
    """``pending`` (handshake under way), ``registered`` or ``unregistered``."""
    versions_url: str
    our_token_hash: str | None = None
    their_token: str | None = None
    version: str | None = None
    endpoints: list[dict[str, str]] = field(default_factory=list)
    """The version's endpoints: ``identifier``, ``role`` (SENDER/RECEIVER), ``url``."""
    roles: list[dict[str, Any]] = field(default_factory=list)
    """Its CredentialsRoles as sent."""

    def endpoint(self, module: str, role: str) -> str | None:
        """The URL of the party's ``module`` interface in ``role`` (None: it has none)."""
        for e in self.endpoints:
            if e.get("identifier") == module and e.get("role") == role:
                return e.get("url")
        return None

    def has_role(self, role: str) -> bool:
        return any(r.get("role") == role for r in self.roles)

    def identity(self, role: str | None = None) -> tuple[str, str]:
        """(country_code, party_id) of its first role (of ``role``, if given)."""
        for r in self.roles:
            if role is None or r.get("role") == role:
                return str(r["country_code"]), str(r["party_id"])
        raise LookupError(f"party {self.id} has no role {role}")

    def name(self) -> str:
        for r in self.roles:
            return f"{r['country_code']}*{r['party_id']} ({r['role']})"
        return self.versions_url


class Registry:
    """The parties of one platform, in a SQLite file (``:memory:`` for tests)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _now() -> str:
        return format_datetime(datetime.now(UTC))

    # -- registration tokens ----------------------------------------------------------
    def add_token_a(self, token: str | None = None) -> str:
        """Make (or keep) a one-time registration token; returns it."""
        token = token or new_credentials_token()
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO token_a(hash, created_at) VALUES (?, ?)",
                             (hash_credentials_token(token), self._now()))
        return token

    def is_token_a(self, token: str) -> bool:
        row = self._db.execute("SELECT used_at FROM token_a WHERE hash = ?",
                               (hash_credentials_token(token),)).fetchone()
        return row is not None and row["used_at"] is None

    def claim_token_a(self, token: str) -> bool:
        """Use up ``token`` (atomically: of two registrations racing with one token A,
        one gets it); False if it is unknown or used."""
        with self._lock:
            cur = self._db.execute("UPDATE token_a SET used_at = ? WHERE hash = ? "
                                   "AND used_at IS NULL",
                                   (self._now(), hash_credentials_token(token)))
        return cur.rowcount == 1

    def release_token_a(self, token: str) -> None:
        """Give a claimed token A back (its registration failed)."""
        with self._lock:
            self._db.execute("UPDATE token_a SET used_at = NULL WHERE hash = ?",
                             (hash_credentials_token(token),))

    # -- parties ----------------------------------------------------------------------
    def _party(self, row: sqlite3.Row) -> Party:
        return Party(id=row["id"], status=row["status"], versions_url=row["versions_url"],
                     our_token_hash=row["our_token_hash"], their_token=row["their_token"],
                     version=row["version"], endpoints=json.loads(row["endpoints"]),
                     roles=json.loads(row["roles"]))

    def party_by_token(self, token: str) -> Party | None:
        """The party that presents ``token`` (pending or registered)."""
        row = self._db.execute(
            "SELECT * FROM parties WHERE our_token_hash = ? AND status != 'unregistered'",
            (hash_credentials_token(token),)).fetchone()
        return None if row is None else self._party(row)

    def party(self, party_id: int) -> Party | None:
        row = self._db.execute("SELECT * FROM parties WHERE id = ?", (party_id,)).fetchone()
        return None if row is None else self._party(row)

    def parties(self, *, role: str | None = None) -> list[Party]:
        """Registered parties (with ``role``), oldest first."""
        rows = self._db.execute(
            "SELECT * FROM parties WHERE status = 'registered' ORDER BY id").fetchall()
        out = [self._party(r) for r in rows]
        return [p for p in out if role is None or p.has_role(role)]

    def save(self, party: Party, *, our_token: str | None = None) -> Party:
        """Insert or update ``party``; ``our_token`` (the token it will present) is
        stored hashed."""
        if our_token is not None:
            party.our_token_hash = hash_credentials_token(our_token)
        now = self._now()
        values = (party.status, party.our_token_hash, party.their_token, party.versions_url,
                  party.version, json.dumps(party.endpoints), json.dumps(party.roles), now)
        with self._lock:
            if party.id is None:
                cur = self._db.execute(
                    "INSERT INTO parties(status, our_token_hash, their_token, versions_url, "
                    "version, endpoints, roles, updated_at, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*values, now))
                party.id = cur.lastrowid
            else:
                self._db.execute(
                    "UPDATE parties SET status = ?, our_token_hash = ?, their_token = ?, "
                    "versions_url = ?, version = ?, endpoints = ?, roles = ?, updated_at = ? "
                    "WHERE id = ?", (*values, party.id))
        return party

    # -- OCPI objects (locations, tokens, sessions, CDRs, tariffs) ---------------------
    def put_object(self, kind: str, country_code: str, party_id: str, object_id: str,
                   data: dict[str, Any]) -> bool:
        """Store an object (ids compared case-insensitively, as CiStrings are); True if
        it is new. A new object goes to the end of its kind's list; an update keeps
        its place (stable pagination)."""
        key = (kind, country_code.upper(), party_id.upper(), object_id.upper())
        with self._lock:
            row = self._db.execute("SELECT seq FROM objects WHERE kind = ? AND country_code = ? "
                                   "AND party_id = ? AND id = ?", key).fetchone()
            if row is None:
                seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM objects "
                                       "WHERE kind = ?", (kind,)).fetchone()[0]
            else:
                seq = row["seq"]
            self._db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (*key, json.dumps(data), str(data.get("last_updated", "")), seq))
        return row is None

    def get_object(self, kind: str, country_code: str, party_id: str,
                   object_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT data FROM objects WHERE kind = ? AND country_code = ? AND party_id = ? "
            "AND id = ?", (kind, country_code.upper(), party_id.upper(), object_id.upper())
        ).fetchone()
        return None if row is None else dict(json.loads(row["data"]))

    def objects(self, kind: str) -> list[dict[str, Any]]:
        """Every object of ``kind``, oldest first."""
        rows = self._db.execute("SELECT data FROM objects WHERE kind = ? ORDER BY seq",
                                (kind,)).fetchall()
        return [dict(json.loads(r["data"])) for r in rows]

    def delete_object(self, kind: str, country_code: str, party_id: str,
                      object_id: str) -> bool:
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM objects WHERE kind = ? AND country_code = ? AND party_id = ? "
                "AND id = ?", (kind, country_code.upper(), party_id.upper(), object_id.upper()))
        return cur.rowcount > 0

    # -- personal data (see evtwin.csms.privacy) -----------------------------------------
    def identifiers_of(self, token_uid: str) -> list[str]:
        """A token uid and the contract ids it goes with in the kept objects."""
        out = [token_uid]
        for kind in ("token", "session", "cdr"):
            for data in self.objects(kind):
                t = data.get("cdr_token", data) if kind != "token" else data
                if str(t.get("uid", "")).casefold() == token_uid.casefold():
                    contract = t.get("contract_id")
                    if isinstance(contract, str) and contract not in out:
                        out.append(contract)
        return out

    def objects_of(self, identifiers: Iterable[str]) -> list[dict[str, Any]]:
        """Every kept object that names one of ``identifiers`` (a driver's export)."""
        wanted = {i.casefold() for i in identifiers}
        rows = self._db.execute("SELECT kind, data FROM objects ORDER BY kind, seq").fetchall()
        return [{"kind": r["kind"], "object": json.loads(r["data"])} for r in rows
                if wanted & {str(v).casefold() for v in _strings(json.loads(r["data"]))}]

    def erase_identifiers(self, identifiers: Iterable[str]) -> int:
        """Replace driver identifiers in every kept object by ``(erased)`` (energy,
        times and cost stay); a pushed Token object of them is deleted. Returns the
        objects changed."""
        from ..privacy import redact

        ids = [i for i in identifiers if i]
        wanted = {i.casefold() for i in ids}
        changed = 0
        with self._lock:
            rows = self._db.execute("SELECT rowid, kind, data FROM objects").fetchall()
            self._db.execute("BEGIN")
            try:
                for r in rows:
                    data = json.loads(r["data"])
                    if not wanted & {str(v).casefold() for v in _strings(data)}:
                        continue
                    if r["kind"] == "token":
                        self._db.execute("DELETE FROM objects WHERE rowid = ?", (r["rowid"],))
                    else:
                        self._db.execute("UPDATE objects SET data = ? WHERE rowid = ?",
                                         (json.dumps(redact(data, tokens=ids)), r["rowid"]))
                    changed += 1
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return changed

    def prune_before(self, cutoff: datetime) -> int:
        """Erase the token of every Session and CDR last updated before ``cutoff``
        (the retention period); returns the objects changed."""
        from ..privacy import ERASED

        limit = format_datetime(cutoff)
        changed = 0
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, data FROM objects WHERE kind IN ('session', 'cdr') "
                "AND last_updated < ?", (limit,)).fetchall()
            for r in rows:
                data = json.loads(r["data"])
                t = data.get("cdr_token")
                if not isinstance(t, dict) or t.get("uid") == ERASED:
                    continue
                t["uid"] = t["contract_id"] = ERASED
                data.pop("authorization_reference", None)
                self._db.execute("UPDATE objects SET data = ? WHERE rowid = ?",
                                 (json.dumps(data), r["rowid"]))
                changed += 1
        return changed

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """A statement on the same database (the roles' own tables)."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def executescript(self, sql: str) -> None:
        with self._lock:
            self._db.executescript(sql)

    def unregister(self, party: Party) -> None:
        """Forget the party's tokens; it stays listed as unregistered."""
        party.status = "unregistered"
        party.our_token_hash = None
        party.their_token = None
        self.save(party)


def _strings(value: Any) -> Iterator[str]:
    """Every string in decoded JSON."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def erase_roaming_data(registry: Registry, store: Any, id_token: str, *, actor: str,
                       now: datetime) -> int:
    """GDPR erasure in the OCPI objects: the token uid and its contract ids in every
    kept Session, CDR and Token (:meth:`Registry.erase_identifiers`), with its own
    audit entry in the CSMS's audit log (``store``) when anything changed."""
    from ..privacy import pseudonymiser_for, record_audit

    changed = registry.erase_identifiers(registry.identifiers_of(id_token))
    if changed:
        record_audit(store, at=now, actor=actor, operation="erase",
                     subject=pseudonymiser_for(store)(id_token), row_count=changed,
                     detail="OCPI objects (roaming partners' sessions, CDRs, tokens)")
    return changed
