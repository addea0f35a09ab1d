"""SQLite persistence for the CSMS.

The schema is versioned (``PRAGMA user_version``) and migrated on open. The
file runs in WAL mode; every write is committed before the handler that made
it returns, so a CALLRESULT never goes out for data that is not on disk.
``synchronous=NORMAL`` keeps commits durable across a crash of the process
(WAL's documented trade-off: the last commits may be lost on power loss).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 4

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE stations (
        station_id   TEXT PRIMARY KEY,
        site         TEXT NOT NULL,
        vendor       TEXT,
        model        TEXT,
        booted_at    TEXT
    );
    CREATE TABLE evses (
        station_id   TEXT NOT NULL REFERENCES stations(station_id),
        evse_id      INTEGER NOT NULL,
        max_power_w  REAL NOT NULL,
        status       TEXT,
        status_at    TEXT,
        PRIMARY KEY (station_id, evse_id)
    );
    CREATE TABLE transactions (
        transaction_id TEXT NOT NULL,
        station_id     TEXT NOT NULL,
        evse_id        INTEGER NOT NULL,
        id_token       TEXT,
        started_at     TEXT NOT NULL,
        ended_at       TEXT,
        meter_start_wh REAL,
        meter_stop_wh  REAL,
        stopped_reason TEXT,
        last_seq_no    INTEGER NOT NULL DEFAULT -1,
        PRIMARY KEY (station_id, transaction_id)
    );
    CREATE TABLE transaction_events (
        station_id     TEXT NOT NULL,
        transaction_id TEXT NOT NULL,
        seq_no         INTEGER NOT NULL,
        event_type     TEXT NOT NULL,
        trigger_reason TEXT NOT NULL,
        timestamp      TEXT NOT NULL,
        payload        TEXT NOT NULL,
        PRIMARY KEY (station_id, transaction_id, seq_no)
    );
    CREATE TABLE meter_values (
        station_id     TEXT NOT NULL,
        evse_id        INTEGER NOT NULL,
        transaction_id TEXT,
        timestamp      TEXT NOT NULL,
        measurand      TEXT NOT NULL,
        phase          TEXT,
        value          REAL NOT NULL,
        unit           TEXT
    );
    CREATE INDEX meter_values_tx ON meter_values(station_id, transaction_id);
    CREATE TABLE charging_profiles (
        station_id   TEXT NOT NULL,
        evse_id      INTEGER NOT NULL,
        profile_id   INTEGER NOT NULL,
        purpose      TEXT NOT NULL,
        stack_level  INTEGER NOT NULL,
        limit_value  REAL NOT NULL,
        unit         TEXT NOT NULL,
        sent_at      TEXT NOT NULL,
        status       TEXT NOT NULL
    );
    CREATE TABLE security_events (
        at       TEXT NOT NULL,
        peer     TEXT,
        kind     TEXT NOT NULL,
        detail   TEXT
    );
    """,
    2: """
    CREATE TABLE counters (
        name   TEXT PRIMARY KEY,
        value  INTEGER NOT NULL
    );
    CREATE TABLE cdrs (
        station_id     TEXT NOT NULL,
        transaction_id TEXT NOT NULL,
        id_token       TEXT,
        started_at     TEXT NOT NULL,
        ended_at       TEXT NOT NULL,
        duration_s     REAL NOT NULL,
        energy_wh      REAL NOT NULL,
        cost           REAL NOT NULL,
        currency       TEXT NOT NULL,
        PRIMARY KEY (station_id, transaction_id)
    );
    ALTER TABLE charging_profiles ADD COLUMN limit_w REAL;
    """,
    3: """
    CREATE TABLE installed_profiles (
        station_id  TEXT NOT NULL,
        position    INTEGER NOT NULL,
        profile     TEXT NOT NULL,
        PRIMARY KEY (station_id, position)
    );
    """,
    4: """
    ALTER TABLE transaction_events ADD COLUMN digest TEXT;
    CREATE INDEX transaction_events_digest ON transaction_events(station_id, digest)
        WHERE digest IS NOT NULL;
    """,
}


class Store:
    """The CSMS's SQLite database. ``path=":memory:"`` only when asked for."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        #: The schema the file had when opened (0: a new file).
        self.opened_schema_version = int(version)
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: database schema v{version} is newer than "
                f"this evtwin (v{SCHEMA_VERSION})"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._tx():
                self._db.executescript(_MIGRATIONS[target])
                self._db.execute(f"PRAGMA user_version={target}")

    def _tx(self) -> sqlite3.Connection:
        # sqlite3's context manager commits on success and rolls back on error;
        # with isolation_level=None we open the transaction ourselves.
        self._db.execute("BEGIN")
        return self._db

    @property
    def schema_version(self) -> int:
        """The schema version of the open file."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Close the database file."""
        self._db.close()

    # -- provisioning ------------------------------------------------------
    def upsert_station(self, station_id: str, site: str,
                       evses: Iterable[tuple[int, float]]) -> None:
        """Record a provisioned station and its EVSEs (idempotent)."""
        with self._tx():
            self._db.execute(
                "INSERT INTO stations(station_id, site) VALUES (?, ?) "
                "ON CONFLICT(station_id) DO UPDATE SET site=excluded.site",
                (station_id, site),
            )
            self._db.executemany(
                "INSERT INTO evses(station_id, evse_id, max_power_w) VALUES (?, ?, ?) "
                "ON CONFLICT(station_id, evse_id) DO UPDATE SET max_power_w=excluded.max_power_w",
                [(station_id, e, p) for e, p in evses],
            )

    def record_boot(self, station_id: str, vendor: str, model: str, at: str) -> None:
        """Store the vendor/model a station reported at boot."""
        with self._tx():
            self._db.execute(
                "UPDATE stations SET vendor=?, model=?, booted_at=? WHERE station_id=?",
                (vendor, model, at, station_id),
            )

    def record_status(self, station_id: str, evse_id: int, status: str, at: str) -> None:
        """Store a connector status change."""
        with self._tx():
            self._db.execute(
                "UPDATE evses SET status=?, status_at=? WHERE station_id=? AND evse_id=?",
                (status, at, station_id, evse_id),
            )

    # -- transactions ------------------------------------------------------
    def record_transaction_event(
        self,
        *,
        station_id: str,
        transaction_id: str,
        evse_id: int,
        seq_no: int,
        event_type: str,
        trigger_reason: str,
        timestamp: str,
        id_token: str | None,
        meter_wh: float | None,
        stopped_reason: str | None,
        payload: dict[str, Any],
        samples: Sequence[tuple[str, str, str | None, float, str | None]],
        digest: str | None = None,
        cdr: dict[str, Any] | None = None,
    ) -> None:
        """Store one TransactionEvent, its sampled values and, for an ended transaction,
        its charge detail record ``cdr`` (the columns of ``cdrs`` by name), all in one
        transaction: all of it is on disk or none of it.

        ``samples`` are ``(timestamp, measurand, phase, value, unit)`` tuples;
        ``digest`` identifies an OCPP 1.6 message by content. A repeated ``seq_no``
        is ignored rather than stored twice (the core answers duplicates before
        they get here).
        """
        with self._tx():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO transaction_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (station_id, transaction_id, seq_no, event_type, trigger_reason, timestamp,
                 json.dumps(payload, separators=(",", ":")), digest),
            )
            if cur.rowcount == 0:
                return
            # Any event creates the transaction row (events may arrive out of
            # order); Started and Ended then fix their own columns.
            self._db.execute(
                "INSERT OR IGNORE INTO transactions(transaction_id, station_id, evse_id, "
                "id_token, started_at, last_seq_no) VALUES (?, ?, ?, ?, ?, ?)",
                (transaction_id, station_id, evse_id, id_token, timestamp, seq_no),
            )
            self._db.execute(
                "UPDATE transactions SET last_seq_no=MAX(last_seq_no, ?), "
                "id_token=COALESCE(id_token, ?), "
                "started_at=CASE WHEN ? < started_at THEN ? ELSE started_at END "
                "WHERE station_id=? AND transaction_id=?",
                (seq_no, id_token, timestamp, timestamp, station_id, transaction_id),
            )
            if event_type == "Started":
                self._db.execute(
                    "UPDATE transactions SET started_at=?, meter_start_wh=? "
                    "WHERE station_id=? AND transaction_id=?",
                    (timestamp, meter_wh, station_id, transaction_id),
                )
            if event_type == "Ended":
                self._db.execute(
                    "UPDATE transactions SET ended_at=?, meter_stop_wh=?, stopped_reason=? "
                    "WHERE station_id=? AND transaction_id=?",
                    (timestamp, meter_wh, stopped_reason, station_id, transaction_id),
                )
            if samples:
                self._db.executemany(
                    "INSERT INTO meter_values VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(station_id, evse_id, transaction_id, *s) for s in samples],
                )
            if cdr is not None:
                self._write_cdr(cdr)

    def record_meter_values(
        self,
        station_id: str,
        evse_id: int,
        samples: Sequence[tuple[str, str, str | None, float, str | None]],
    ) -> None:
        """Store sampled values reported outside a transaction (MeterValues)."""
        with self._tx():
            self._db.executemany(
                "INSERT INTO meter_values VALUES (?, ?, NULL, ?, ?, ?, ?, ?)",
                [(station_id, evse_id, *s) for s in samples],
            )

    def record_profile(
        self, station_id: str, evse_id: int, profile_id: int, purpose: str, stack_level: int,
        limit_value: float, unit: str, sent_at: str, status: str, limit_w: float | None = None,
    ) -> None:
        """Store a charging profile the CSMS sent and the station's answer."""
        with self._tx():
            self._db.execute(
                "INSERT INTO charging_profiles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (station_id, evse_id, profile_id, purpose, stack_level, limit_value, unit,
                 sent_at, status, limit_w),
            )

    def save_installed_profiles(self, station_id: str, profiles: list[str]) -> None:
        """Replace what a station has installed: its profiles as JSON, in install order."""
        with self._tx():
            self._db.execute("DELETE FROM installed_profiles WHERE station_id=?", (station_id,))
            self._db.executemany("INSERT INTO installed_profiles VALUES (?, ?, ?)",
                                 [(station_id, i, p) for i, p in enumerate(profiles)])

    def installed_profiles(self) -> dict[str, list[str]]:
        """Every station's installed profiles (JSON, in install order)."""
        out: dict[str, list[str]] = {}
        for r in self._db.execute(
                "SELECT station_id, profile FROM installed_profiles ORDER BY station_id, position"):
            out.setdefault(r[0], []).append(r[1])
        return out

    def max_profile_id(self) -> int:
        """The highest charging-profile id ever sent (0 if none)."""
        row = self._db.execute("SELECT MAX(profile_id) FROM charging_profiles").fetchone()
        return int(row[0] or 0)

    def next_counter(self, name: str) -> int:
        """Increment and return a persistent counter (e.g. OCPP 1.6 transaction ids)."""
        with self._tx():
            self._db.execute(
                "INSERT INTO counters(name, value) VALUES (?, 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1", (name,))
            row = self._db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return int(row[0])

    def record_cdr(self, **cdr: Any) -> None:
        """Store (or replace, if late events changed it) a charge detail record."""
        with self._tx():
            self._write_cdr(cdr)

    def _write_cdr(self, cdr: dict[str, Any]) -> None:
        # Inside a transaction. Rewritten only when a value changed.
        self._db.execute(
            "INSERT INTO cdrs VALUES (:station_id, :transaction_id, :id_token, :started_at, "
            ":ended_at, :duration_s, :energy_wh, :cost, :currency) "
            "ON CONFLICT(station_id, transaction_id) DO UPDATE SET id_token=excluded.id_token, "
            "started_at=excluded.started_at, ended_at=excluded.ended_at, "
            "duration_s=excluded.duration_s, energy_wh=excluded.energy_wh, cost=excluded.cost, "
            "currency=excluded.currency WHERE (cdrs.id_token, cdrs.started_at, cdrs.ended_at, "
            "cdrs.duration_s, cdrs.energy_wh, cdrs.cost, cdrs.currency) IS NOT "
            "(excluded.id_token, excluded.started_at, excluded.ended_at, excluded.duration_s, "
            "excluded.energy_wh, excluded.cost, excluded.currency)", cdr)

    def cdrs(self) -> list[dict[str, Any]]:
        """All charge detail records, oldest first."""
        return [dict(r) for r in self._db.execute("SELECT * FROM cdrs ORDER BY ended_at")]

    def open_transactions(self) -> list[dict[str, Any]]:
        """Transactions not Ended, each as :meth:`transaction_state` gives it."""
        rows = self._db.execute(
            "SELECT * FROM transactions WHERE ended_at IS NULL "
            "ORDER BY started_at, station_id, transaction_id").fetchall()
        return [self._state(r) for r in rows]

    def transaction_state(self, station_id: str, transaction_id: str) -> dict[str, Any] | None:
        """One transaction's row with what it takes to rebuild the session: ``last``
        (latest value and unit per measurand), ``last_at`` (time of the latest energy
        register), ``seq_nos`` and ``digests`` of the events applied; None if unknown."""
        row = self._db.execute(
            "SELECT * FROM transactions WHERE station_id=? AND transaction_id=?",
            (station_id, transaction_id)).fetchone()
        return None if row is None else self._state(row)

    def _state(self, row: sqlite3.Row) -> dict[str, Any]:
        tx = dict(row)
        key = (tx["station_id"], tx["transaction_id"])
        last: dict[str, tuple[float, str | None] | None] = {}
        for measurand in ("Energy.Active.Import.Register", "Power.Active.Import",
                          "Voltage", "SoC"):
            found = self._db.execute(
                "SELECT value, unit, timestamp FROM meter_values WHERE station_id=? AND "
                "transaction_id=? AND measurand=? AND phase IS NULL "
                "ORDER BY timestamp DESC, rowid DESC LIMIT 1", (*key, measurand)).fetchone()
            last[measurand] = (found[0], found[1]) if found else None
            if measurand == "Energy.Active.Import.Register":
                tx["last_at"] = found[2] if found else None
        tx["last"] = last
        events = self._db.execute(
            "SELECT seq_no, digest FROM transaction_events WHERE station_id=? AND "
            "transaction_id=?", key).fetchall()
        tx["seq_nos"] = [e[0] for e in events]
        tx["digests"] = [e[1] for e in events if e[1] is not None]
        return tx

    def transaction_with_digest(self, station_id: str, digest: str) -> str | None:
        """The transaction an event with this content digest (OCPP 1.6) belongs to."""
        row = self._db.execute(
            "SELECT transaction_id FROM transaction_events WHERE station_id=? AND digest=? "
            "LIMIT 1", (station_id, digest)).fetchone()
        return None if row is None else str(row[0])

    def last_accepted_limits_w(self) -> dict[tuple[str, int], float]:
        """The last limit (W) each EVSE accepted, by (station, evse)."""
        out: dict[tuple[str, int], float] = {}
        for r in self._db.execute(
                "SELECT station_id, evse_id, limit_w FROM charging_profiles "
                "WHERE status='Accepted' AND limit_w IS NOT NULL ORDER BY rowid"):
            out[(r[0], r[1])] = float(r[2])
        return out

    def record_security_event(self, at: str, peer: str | None, kind: str,
                              detail: str) -> None:
        """Store a refused connection or other security-relevant event."""
        with self._tx():
            self._db.execute(
                "INSERT INTO security_events VALUES (?, ?, ?, ?)", (at, peer, kind, detail)
            )

    def prune_security_events(self, *, before: str | None = None,
                              max_rows: int | None = None) -> int:
        """Delete security events older than ``before`` (ISO time) and all but the newest
        ``max_rows``; return how many were deleted."""
        deleted = 0
        with self._tx():
            if before is not None:
                deleted += self._db.execute(
                    "DELETE FROM security_events WHERE at < ?", (before,)).rowcount
            if max_rows is not None:
                deleted += self._db.execute(
                    "DELETE FROM security_events WHERE rowid NOT IN (SELECT rowid FROM "
                    "security_events ORDER BY rowid DESC LIMIT ?)", (max_rows,)).rowcount
        return deleted

    # -- queries -----------------------------------------------------------
    def transactions(self) -> list[dict[str, Any]]:
        """All transactions with their metered energy (Wh), oldest first."""
        rows = self._db.execute(
            "SELECT *, meter_stop_wh - meter_start_wh AS energy_wh FROM transactions "
            "ORDER BY started_at, station_id, transaction_id"
        ).fetchall()
        return [dict(r) for r in rows]

    def transaction(self, station_id: str, transaction_id: str) -> dict[str, Any] | None:
        """One transaction with its metered energy (Wh), or None if unknown."""
        row = self._db.execute(
            "SELECT *, meter_stop_wh - meter_start_wh AS energy_wh FROM transactions "
            "WHERE station_id=? AND transaction_id=?", (station_id, transaction_id)).fetchone()
        return None if row is None else dict(row)

    def meter_values(self, station_id: str, transaction_id: str) -> list[dict[str, Any]]:
        """Every sampled value stored for one transaction, in time order."""
        return [dict(r) for r in self._db.execute(
            "SELECT evse_id, timestamp, measurand, phase, value, unit FROM meter_values "
            "WHERE station_id=? AND transaction_id=? ORDER BY timestamp, rowid",
            (station_id, transaction_id))]

    def stations(self) -> list[dict[str, Any]]:
        """Every station with its boot data and its EVSEs' last status, by station id."""
        out = []
        for r in self._db.execute("SELECT * FROM stations ORDER BY station_id").fetchall():
            station = dict(r)
            station["evses"] = [dict(e) for e in self._db.execute(
                "SELECT evse_id, max_power_w, status, status_at FROM evses "
                "WHERE station_id=? ORDER BY evse_id", (station["station_id"],))]
            out.append(station)
        return out

    def count(self, table: str) -> int:
        """Number of rows in one of the CSMS's tables."""
        if table not in {"stations", "evses", "transactions", "transaction_events",
                         "meter_values", "charging_profiles", "security_events",
                         "installed_profiles"}:
            raise ValueError(f"unknown table {table!r}")
        return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def security_events(self) -> list[dict[str, Any]]:
        """All recorded security events, oldest first."""
        return [dict(r) for r in self._db.execute("SELECT * FROM security_events ORDER BY rowid")]
