"""Persistence for the CSMS: an embedded SQLite file, or a PostgreSQL server.

SQLite is the default: one file, one ``csms serve`` process. The schema is
versioned (``PRAGMA user_version``) and migrated on open; the file runs in WAL
mode with ``synchronous=NORMAL``, which keeps commits durable across a crash
of the process (WAL's documented trade-off: the last commits may be lost on
power loss).

PostgreSQL (``postgresql://user@host:port/db``) lets several ``csms serve``
processes share stations, transactions and CDRs (:attr:`Store.shared`); the
schema is created at the current version (``schema_meta``).

Either way every write is committed before the handler that made it returns,
so a CALLRESULT never goes out for data that is not stored, and each
station message's changes are one transaction: all stored or none. The SQL is
written once (``?`` placeholders, ``ON CONFLICT``, a ``rowid`` column that
PostgreSQL's tables declare) and adapted per backend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .exceptions import StoreError

SCHEMA_VERSION = 7
#: Variables kept per station at most (a station's full inventory is a few thousand).
MAX_DEVICE_MODEL_ROWS = 20_000

log = logging.getLogger("evtwin.csms.store")


T = TypeVar("T")

#: Longest a statement waits for another connection's lock (s) before it fails.
LOCK_WAIT_S = 5.0
_SQLITE_BUSY = 5


def _wait_unlocked(run: Callable[[], T], *, wait_s: float = LOCK_WAIT_S,
                   poll_s: float = 0.0005) -> T:
    """``run()``, tried again every ``poll_s`` while SQLite says the database is
    busy or locked (another connection holds the lock), for at most ``wait_s``."""
    deadline: float | None = None
    while True:
        try:
            return run()
        except sqlite3.OperationalError as exc:
            code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
            # SQLITE_LOCKED (a lock of this same connection) would never clear.
            if code != _SQLITE_BUSY:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + wait_s
            elif now >= deadline:
                raise
        time.sleep(poll_s)


class WalCheckpointer:
    """Checkpoints a SQLite file's write-ahead log from a thread of its own.

    SQLite's automatic checkpoint runs inside the commit that fills the WAL, on
    the connection that commits: in the CSMS that is the event loop, so every
    station waited for the copy and its two fsyncs. With the serving
    connection's ``wal_autocheckpoint`` off, this thread runs a PASSIVE
    checkpoint on its own connection every ``interval_s``: it copies what was
    committed without ever blocking the writer. Under steady writes a passive
    checkpoint never catches up with the end of the log, so the log would only
    grow; once it holds ``restart_frames`` frames a RESTART follows the passive
    one: it blocks the writer only while it copies the few frames written since
    (and syncs), and the next commit starts the log again from the beginning.

    A restart takes the write lock and then waits for readers still on the old
    log; it waits at most ``busy_timeout_s`` (10 ms) for either and is otherwise
    tried again next round, so a long reader (another process, a backup) never
    holds the CSMS's writes up for long.

    Durability is unchanged: a commit is in the WAL (synchronous=NORMAL) before
    the CSMS answers, whoever copies it later; other processes read the WAL too.
    """

    def __init__(self, path: str, *, interval_s: float = 0.25, restart_frames: int = 4096,
                 busy_timeout_s: float = 0.01) -> None:
        self.path = path
        self.interval_s = interval_s
        self.restart_frames = restart_frames
        self.busy_timeout_s = busy_timeout_s
        #: Checkpoints run (passive, restart), the log's size in frames after the
        #: last one, and the longest restart (s): for the ``stats`` log line.
        self.passive = 0
        self.restarts = 0
        self.wal_frames = 0
        self.longest_restart_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (a daemon: an unclosed store does not keep a process alive)."""
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failing = False
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                 timeout=self.busy_timeout_s)
        except sqlite3.Error as exc:
            log.warning("%s: WAL checkpoints off: %s", self.path, exc,
                        extra={"event": "wal_checkpoint_failed"})
            return
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    self.checkpoint(db)
                    failing = False
                except sqlite3.Error as exc:  # retried next round; logged once per streak
                    if not failing:
                        log.warning("%s: WAL checkpoint failed: %s", self.path, exc,
                                    extra={"event": "wal_checkpoint_failed"})
                    failing = True
        finally:
            db.close()

    def checkpoint(self, db: sqlite3.Connection) -> None:
        """One round: a passive checkpoint, and a restart if the log is long."""
        _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.passive += 1
        self.wal_frames = frames
        if frames >= self.restart_frames:
            started = time.perf_counter()
            busy, frames, _ = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy:
                self.restarts += 1
                self.wal_frames = frames
                self.longest_restart_s = max(self.longest_restart_s,
                                             time.perf_counter() - started)

    def halt(self) -> None:
        """Ask the thread to stop after its current round, without waiting."""
        self._stop.set()

    def stop(self) -> None:
        """Stop the thread and wait for it (its connection closes with it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

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
    CREATE UNIQUE INDEX transaction_events_digest
        ON transaction_events(station_id, transaction_id, digest) WHERE digest IS NOT NULL;
    CREATE INDEX transaction_events_by_digest ON transaction_events(station_id, digest)
        WHERE digest IS NOT NULL;
    ALTER TABLE transactions ADD COLUMN meter_last_wh REAL;
    ALTER TABLE transactions ADD COLUMN meter_last_at TEXT;
    ALTER TABLE transactions ADD COLUMN power_w REAL;
    ALTER TABLE transactions ADD COLUMN voltage_v REAL;
    ALTER TABLE transactions ADD COLUMN soc_percent REAL;
    ALTER TABLE transactions ADD COLUMN export_start_wh REAL;
    ALTER TABLE transactions ADD COLUMN export_last_wh REAL;
    ALTER TABLE transactions ADD COLUMN charging_state TEXT;
    ALTER TABLE transactions ADD COLUMN limit_w REAL;
    CREATE INDEX transactions_open ON transactions(station_id) WHERE ended_at IS NULL;
    CREATE TABLE commands (
        id          INTEGER PRIMARY KEY,
        station_id  TEXT NOT NULL,
        command     TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    """,
    5: """
    CREATE TABLE station_messages (
        id          INTEGER PRIMARY KEY,
        station_id  TEXT NOT NULL,
        action      TEXT NOT NULL,
        received_at TEXT NOT NULL,
        payload     TEXT NOT NULL
    );
    CREATE INDEX station_messages_by_station ON station_messages(station_id, action, id);
    ALTER TABLE cdrs ADD COLUMN exported_wh REAL NOT NULL DEFAULT 0;
    ALTER TABLE cdrs ADD COLUMN export_credit REAL NOT NULL DEFAULT 0;
    """,
    6: """
    CREATE TABLE device_model (
        station_id         TEXT NOT NULL,
        component          TEXT NOT NULL,
        component_instance TEXT NOT NULL,
        evse_id            INTEGER NOT NULL,
        connector_id       INTEGER NOT NULL,
        variable           TEXT NOT NULL,
        variable_instance  TEXT NOT NULL,
        attribute_type     TEXT NOT NULL,
        value              TEXT,
        mutability         TEXT,
        source             TEXT NOT NULL,
        updated_at         TEXT NOT NULL,
        PRIMARY KEY (station_id, component, component_instance, evse_id, connector_id,
                     variable, variable_instance, attribute_type)
    );
    CREATE TABLE local_lists (
        station_id  TEXT PRIMARY KEY,
        version     INTEGER NOT NULL,
        sent_at     TEXT NOT NULL
    );
    CREATE TABLE security_events_v6 (
        rowid    INTEGER PRIMARY KEY AUTOINCREMENT,
        at       TEXT NOT NULL,
        peer     TEXT,
        kind     TEXT NOT NULL,
        detail   TEXT
    );
    INSERT INTO security_events_v6(rowid, at, peer, kind, detail)
        SELECT rowid, at, peer, kind, detail FROM security_events ORDER BY rowid;
    DROP TABLE security_events;
    ALTER TABLE security_events_v6 RENAME TO security_events;
    CREATE TABLE external_limits (
        station_id  TEXT NOT NULL,
        evse_id     INTEGER NOT NULL,
        source      TEXT NOT NULL,
        schedules   TEXT NOT NULL,
        received_at TEXT NOT NULL,
        PRIMARY KEY (station_id, evse_id, source)
    );
    """,
    7: """
    CREATE TABLE privacy_key (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        key_hex     TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    CREATE TABLE privacy_audit (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          TEXT NOT NULL,
        actor       TEXT NOT NULL,
        operation   TEXT NOT NULL,
        subject     TEXT,
        row_count   INTEGER NOT NULL,
        detail      TEXT
    );
    CREATE INDEX transactions_ended ON transactions(ended_at) WHERE ended_at IS NOT NULL;
    """,
}
#: A database from before v4 keeps each session's live values only as meter
#: values: copied into the transactions row once, on migration.
_BACKFILL_V4 = """
UPDATE transactions SET
    meter_last_wh = (SELECT value * CASE unit WHEN 'kWh' THEN 1000.0 ELSE 1.0 END
                     FROM meter_values m WHERE m.station_id = transactions.station_id
                     AND m.transaction_id = transactions.transaction_id AND phase IS NULL
                     AND measurand = 'Energy.Active.Import.Register'
                     ORDER BY timestamp DESC, rowid DESC LIMIT 1),
    meter_last_at = (SELECT timestamp FROM meter_values m
                     WHERE m.station_id = transactions.station_id
                     AND m.transaction_id = transactions.transaction_id AND phase IS NULL
                     AND measurand = 'Energy.Active.Import.Register'
                     ORDER BY timestamp DESC, rowid DESC LIMIT 1),
    power_w = CASE WHEN ended_at IS NOT NULL THEN 0.0 ELSE
                (SELECT value * CASE unit WHEN 'kW' THEN 1000.0 ELSE 1.0 END
                 FROM meter_values m WHERE m.station_id = transactions.station_id
                 AND m.transaction_id = transactions.transaction_id AND phase IS NULL
                 AND measurand = 'Power.Active.Import'
                 ORDER BY timestamp DESC, rowid DESC LIMIT 1) END,
    voltage_v = (SELECT value FROM meter_values m WHERE m.station_id = transactions.station_id
                 AND m.transaction_id = transactions.transaction_id AND phase IS NULL
                 AND measurand = 'Voltage' ORDER BY timestamp DESC, rowid DESC LIMIT 1),
    soc_percent = (SELECT value FROM meter_values m
                   WHERE m.station_id = transactions.station_id
                   AND m.transaction_id = transactions.transaction_id AND phase IS NULL
                   AND measurand = 'SoC' ORDER BY timestamp DESC, rowid DESC LIMIT 1)
"""

_BACKFILL_V4_LIMITS = """
UPDATE transactions SET limit_w = (
    SELECT limit_w FROM charging_profiles c WHERE c.station_id = transactions.station_id
    AND c.evse_id = transactions.evse_id AND status = 'Accepted' AND limit_w IS NOT NULL
    ORDER BY rowid DESC LIMIT 1)
WHERE ended_at IS NULL
"""

#: The same schema for PostgreSQL at v4 (where PostgreSQL support began); the
#: migrations below bring it to the current version.
_POSTGRES_V4 = """
CREATE TABLE schema_meta (version INTEGER NOT NULL);
CREATE TABLE stations (
    station_id TEXT PRIMARY KEY, site TEXT NOT NULL, vendor TEXT, model TEXT, booted_at TEXT);
CREATE TABLE evses (
    station_id TEXT NOT NULL REFERENCES stations(station_id), evse_id INTEGER NOT NULL,
    max_power_w DOUBLE PRECISION NOT NULL, status TEXT, status_at TEXT,
    PRIMARY KEY (station_id, evse_id));
CREATE TABLE transactions (
    transaction_id TEXT NOT NULL, station_id TEXT NOT NULL, evse_id INTEGER NOT NULL,
    id_token TEXT, started_at TEXT NOT NULL, ended_at TEXT,
    meter_start_wh DOUBLE PRECISION, meter_stop_wh DOUBLE PRECISION, stopped_reason TEXT,
    last_seq_no BIGINT NOT NULL DEFAULT -1,
    meter_last_wh DOUBLE PRECISION, meter_last_at TEXT, power_w DOUBLE PRECISION,
    voltage_v DOUBLE PRECISION, soc_percent DOUBLE PRECISION,
    export_start_wh DOUBLE PRECISION, export_last_wh DOUBLE PRECISION, charging_state TEXT,
    limit_w DOUBLE PRECISION, PRIMARY KEY (station_id, transaction_id));
CREATE INDEX transactions_open ON transactions(station_id) WHERE ended_at IS NULL;
CREATE TABLE transaction_events (
    station_id TEXT NOT NULL, transaction_id TEXT NOT NULL, seq_no BIGINT NOT NULL,
    event_type TEXT NOT NULL, trigger_reason TEXT NOT NULL, timestamp TEXT NOT NULL,
    payload TEXT NOT NULL, digest TEXT, PRIMARY KEY (station_id, transaction_id, seq_no));
CREATE UNIQUE INDEX transaction_events_digest
    ON transaction_events(station_id, transaction_id, digest) WHERE digest IS NOT NULL;
CREATE INDEX transaction_events_by_digest ON transaction_events(station_id, digest)
    WHERE digest IS NOT NULL;
CREATE TABLE meter_values (
    rowid BIGSERIAL PRIMARY KEY, station_id TEXT NOT NULL, evse_id INTEGER NOT NULL,
    transaction_id TEXT, timestamp TEXT NOT NULL, measurand TEXT NOT NULL, phase TEXT,
    value DOUBLE PRECISION NOT NULL, unit TEXT);
CREATE INDEX meter_values_tx ON meter_values(station_id, transaction_id);
CREATE TABLE charging_profiles (
    rowid BIGSERIAL PRIMARY KEY, station_id TEXT NOT NULL, evse_id INTEGER NOT NULL,
    profile_id BIGINT NOT NULL, purpose TEXT NOT NULL, stack_level INTEGER NOT NULL,
    limit_value DOUBLE PRECISION NOT NULL, unit TEXT NOT NULL, sent_at TEXT NOT NULL,
    status TEXT NOT NULL, limit_w DOUBLE PRECISION);
CREATE TABLE security_events (
    rowid BIGSERIAL PRIMARY KEY, at TEXT NOT NULL, peer TEXT, kind TEXT NOT NULL, detail TEXT);
CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE cdrs (
    station_id TEXT NOT NULL, transaction_id TEXT NOT NULL, id_token TEXT,
    started_at TEXT NOT NULL, ended_at TEXT NOT NULL, duration_s DOUBLE PRECISION NOT NULL,
    energy_wh DOUBLE PRECISION NOT NULL, cost DOUBLE PRECISION NOT NULL,
    currency TEXT NOT NULL, PRIMARY KEY (station_id, transaction_id));
CREATE TABLE installed_profiles (
    station_id TEXT NOT NULL, position INTEGER NOT NULL, profile TEXT NOT NULL,
    PRIMARY KEY (station_id, position));
CREATE TABLE commands (
    id BIGSERIAL PRIMARY KEY, station_id TEXT NOT NULL, command TEXT NOT NULL,
    created_at TEXT NOT NULL);
"""
#: PostgreSQL databases made by an earlier evtwin: what each version adds.
_POSTGRES_MIGRATIONS: dict[int, str] = {
    5: """
CREATE TABLE station_messages (
    id BIGSERIAL PRIMARY KEY, station_id TEXT NOT NULL, action TEXT NOT NULL,
    received_at TEXT NOT NULL, payload TEXT NOT NULL);
CREATE INDEX station_messages_by_station ON station_messages(station_id, action, id);
ALTER TABLE cdrs ADD COLUMN exported_wh DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE cdrs ADD COLUMN export_credit DOUBLE PRECISION NOT NULL DEFAULT 0;
""",
    6: """
CREATE TABLE device_model (
    station_id TEXT NOT NULL, component TEXT NOT NULL, component_instance TEXT NOT NULL,
    evse_id INTEGER NOT NULL, connector_id INTEGER NOT NULL, variable TEXT NOT NULL,
    variable_instance TEXT NOT NULL, attribute_type TEXT NOT NULL, value TEXT,
    mutability TEXT, source TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (station_id, component, component_instance, evse_id, connector_id,
                 variable, variable_instance, attribute_type));
CREATE TABLE local_lists (
    station_id TEXT PRIMARY KEY, version BIGINT NOT NULL, sent_at TEXT NOT NULL);
CREATE TABLE external_limits (
    station_id TEXT NOT NULL, evse_id INTEGER NOT NULL, source TEXT NOT NULL,
    schedules TEXT NOT NULL, received_at TEXT NOT NULL,
    PRIMARY KEY (station_id, evse_id, source));
""",
    7: """
CREATE TABLE privacy_key (
    id INTEGER PRIMARY KEY CHECK (id = 1), key_hex TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE privacy_audit (
    id BIGSERIAL PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, operation TEXT NOT NULL,
    subject TEXT, row_count BIGINT NOT NULL, detail TEXT);
CREATE INDEX transactions_ended ON transactions(ended_at) WHERE ended_at IS NOT NULL;
""",
}
#: A new PostgreSQL database: created at the current version in one go.
_POSTGRES_SCHEMA = _POSTGRES_V4 + "".join(_POSTGRES_MIGRATIONS[v]
                                          for v in sorted(_POSTGRES_MIGRATIONS))

#: A CDR's columns besides its key (rewritten when any of them changes).
_CDR_VALUES = ("id_token", "started_at", "ended_at", "duration_s", "energy_wh", "cost",
               "currency", "exported_wh", "export_credit")

#: Columns of a transaction's row that the core writes from the session's state.
TRANSACTION_STATE = (
    "evse_id", "id_token", "started_at", "ended_at", "meter_start_wh", "meter_stop_wh",
    "stopped_reason", "last_seq_no", "meter_last_wh", "meter_last_at", "power_w",
    "voltage_v", "soc_percent", "export_start_wh", "export_last_wh", "charging_state")
_MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Voltage", "SoC")


def redact_url(target: str | Path) -> str:
    """``target`` fit for a log: a database URL without its password."""
    text = str(target)
    if not is_database_url(text):
        return text
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", text)


def is_database_url(target: str | Path) -> bool:
    """Whether ``target`` names a PostgreSQL server (else it is a SQLite file)."""
    return str(target).startswith(("postgresql://", "postgres://"))


#: SQLite's (primary) result codes that mean the file, its folder or its disk: the
#: user's to fix.
_FILE_ERRORS = frozenset({sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY,
                          sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_PERM,
                          sqlite3.SQLITE_FULL, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def sqlite_open_error(path: str, exc: sqlite3.Error) -> StoreError:
    """The StoreError for a SQLite file that cannot be opened: names the file and what
    to do (a folder given, a missing or read-only folder, not a database)."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        return StoreError(f"{path} is a folder; give a file in it, e.g. {target / 'csms.sqlite'}")
    if not folder.is_dir():
        return StoreError(f"{path}: the folder {folder} does not exist; create it or give "
                          "another file")
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_NOTADB:
        return StoreError(f"{path}: not a SQLite database ({text}); give another file")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreError(f"{path}: locked by another process ({text}); stop it or give "
                          "another file")
    if code == sqlite3.SQLITE_FULL:
        return StoreError(f"{path}: the disk is full ({text})")
    # SQLite writes its journal beside the file, so the folder must be writable too.
    return StoreError(f"{path}: cannot open the database for writing ({text}); check that "
                      f"the file and its folder {folder} are writable")


class Store:
    """The CSMS's database: a SQLite file (``path``; ``":memory:"`` only when asked
    for) or a PostgreSQL server (a ``postgresql://`` URL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        #: True when several CSMS processes may share this database (PostgreSQL).
        self.shared = is_database_url(self.path)
        self._pg: Any = None
        self._db: sqlite3.Connection | None = None
        #: Inside :meth:`batch`: each transaction is a savepoint of the batch's one.
        self._batching = False
        #: Checkpoints a SQLite file's WAL off the committing thread (None for
        #: ":memory:" and PostgreSQL).
        self.checkpointer: WalCheckpointer | None = None
        if self.shared:
            self._open_postgres()
        else:
            self._open_sqlite()

    # -- backends ----------------------------------------------------------
    def _open_sqlite(self) -> None:
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA user_version").fetchone()
            self._prepare_sqlite()
        except sqlite3.Error as exc:
            self._close_sqlite()
            # Also what fails after the file opened: the WAL (created beside the
            # file) or a migration in a read-only folder or file. Anything else (a
            # failed migration statement) is a bug, raised as it is.
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _FILE_ERRORS:
                raise sqlite_open_error(self.path, exc) from None
            raise
        except BaseException:
            self._close_sqlite()
            raise

    def _close_sqlite(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _prepare_sqlite(self) -> None:
        assert self._db is not None
        self._db.row_factory = sqlite3.Row
        wal = self.path != ":memory:" and str(self._db.execute(
            "PRAGMA journal_mode=WAL").fetchone()[0]).lower() == "wal"
        self._db.execute("PRAGMA synchronous=NORMAL")
        if wal:
            # No SQLite busy handler: it sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50
            # ... ms between tries, so a write lock held 30 ms by a WAL restart kept
            # the serving loop waiting 53-78 ms; _wait_unlocked polls every 0.5 ms
            # instead. (In WAL mode a COMMIT never waits: the writer holds the lock
            # from BEGIN IMMEDIATE. Without WAL it would, so the handler stays.)
            self._db.execute("PRAGMA busy_timeout=0")
            # A checkpoint (copying the WAL into the database, with the only
            # fsyncs of synchronous=NORMAL) would run inside the commit that fills
            # the WAL, so in the event loop: a thread does it (WalCheckpointer).
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            # When the log starts over, its file is cut back to this (bytes).
            self._db.execute("PRAGMA journal_size_limit=67108864")
        self._db.execute("PRAGMA foreign_keys=ON")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        #: The schema the database had when opened (0: a new one).
        self.opened_schema_version = int(version)
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: database schema v{version} is newer than "
                f"this evtwin (v{SCHEMA_VERSION})"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # Statement by statement inside one transaction (executescript would
            # commit first): a migration that fails or is killed leaves the file
            # as it was, at its old version.
            with self._tx():
                statements = _MIGRATIONS[target].split(";")
                if target == 4 and version > 0:
                    statements += [_BACKFILL_V4, _BACKFILL_V4_LIMITS]
                for statement in statements:
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={target}")
        if wal:
            self.checkpointer = WalCheckpointer(self.path)
            self.checkpointer.start()
            # A store dropped without close() (tests) must not leave its thread running.
            weakref.finalize(self, self.checkpointer.halt)

    def _connect_postgres(self) -> Any:
        import psycopg  # only a shared store needs it
        from psycopg.rows import dict_row

        # Keepalives: a connection a NAT or firewall dropped is noticed in ~30 s.
        return psycopg.connect(self.path, autocommit=True, row_factory=dict_row,
                               connect_timeout=10, keepalives=1, keepalives_idle=10,
                               keepalives_interval=5, keepalives_count=3)

    def _live_pg(self) -> Any:
        """The PostgreSQL connection, opened again if the last one broke (a server
        restart): the statement that found it broken failed; the next ones work."""
        if self._pg.closed or self._pg.broken:
            self._pg = self._connect_postgres()
        return self._pg

    def _open_postgres(self) -> None:
        import psycopg

        try:
            self._pg = self._connect_postgres()
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())[:200]
            raise StoreError(f"{redact_url(self.path)}: cannot connect: {reason}") from None
        with self._tx():
            # One process creates the schema; the others wait on the lock.
            self._pg.execute("SELECT pg_advisory_xact_lock(7315001)")
            exists = self._pg.execute(
                "SELECT to_regclass('schema_meta') IS NOT NULL AS e").fetchone()["e"]
            if not exists:
                self._pg.execute(_POSTGRES_SCHEMA)
                self._pg.execute("INSERT INTO schema_meta VALUES (%s)", (SCHEMA_VERSION,))
                self.opened_schema_version = 0
            else:
                version = int(self._pg.execute(
                    "SELECT version FROM schema_meta").fetchone()["version"])
                if version > SCHEMA_VERSION or (
                        version < SCHEMA_VERSION and version + 1 not in _POSTGRES_MIGRATIONS):
                    raise RuntimeError(f"{redact_url(self.path)}: database schema "
                                       f"v{version}; this evtwin needs v{SCHEMA_VERSION}")
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    self._pg.execute(_POSTGRES_MIGRATIONS[target])
                    self._pg.execute("UPDATE schema_meta SET version = %s", (target,))
                self.opened_schema_version = version

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction: committed on success, rolled back on any error."""
        if self._pg is not None:
            with self._live_pg().transaction():
                yield
            return
        assert self._db is not None
        # sqlite3's context manager commits on success and rolls back on error;
        # with isolation_level=None we open the transaction ourselves, taking the
        # write lock at once (IMMEDIATE): the statements inside never wait for it.
        db = self._db
        if self._batching:
            if not db.in_transaction:
                # SQLite rolled the batch back on its own (disk full, I/O error):
                # nothing more is written in it, not even on its own.
                raise StoreError(f"{self.path}: the batch's transaction was rolled back")
            db.execute("SAVEPOINT tx")
            try:
                yield
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK TO tx")
                    db.execute("RELEASE tx")
                raise
            db.execute("RELEASE tx")
            return
        _wait_unlocked(lambda: db.execute("BEGIN IMMEDIATE"))
        with db:
            yield

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Commit everything written inside at once, at the end (SQLite).

        Each write keeps its own all-or-nothing transaction, as a savepoint of
        the batch's one: a write that fails is undone alone. What the batch
        gives up is durability in between: a crash loses the whole batch. The
        twin, whose CSMS runs on virtual time in the same process, writes each
        simulation step as one batch (a commit per OCPP message was a third of
        a run); ``csms serve`` never batches. A no-op on PostgreSQL and when
        already batching.
        """
        db = self._db
        if self._pg is not None or db is None or self._batching:
            yield
            return
        _wait_unlocked(lambda: db.execute("BEGIN IMMEDIATE"))
        self._batching = True
        try:
            yield
        except BaseException:
            self._batching = False
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._batching = False
        if not db.in_transaction:
            raise StoreError(f"{self.path}: the batch's transaction was rolled back")
        db.execute("COMMIT")

    @staticmethod
    def _sql(sql: str, named: bool = False) -> str:
        """A statement in PostgreSQL's placeholder style (``%s``, ``%(name)s``)."""
        return _NAMED.sub(r"%(\1)s", sql) if named else sql.replace("?", "%s")

    def _run(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        """Execute one statement; returns the cursor (``rowcount``, ``fetchone``, ...)."""
        if self._pg is not None:
            return self._live_pg().execute(self._sql(sql, isinstance(params, dict)), params)
        db = self._db
        assert db is not None
        if db.in_transaction:  # holds the write lock (BEGIN IMMEDIATE): never busy
            return db.execute(sql, params)
        return _wait_unlocked(lambda: db.execute(sql, params))

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self._pg is not None:
            with self._live_pg().cursor() as cur:
                cur.executemany(self._sql(sql), rows)
            return
        assert self._db is not None
        self._db.executemany(sql, rows)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._run(sql, params).fetchall()]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        row = self._run(sql, params).fetchone()
        return None if row is None else dict(row)

    # -- for modules that work on the tables in SQL of their own (privacy) ----
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows of one SELECT (``?`` placeholders, either backend), as dicts."""
        return self._rows(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement (``?`` placeholders, either backend); the rows it changed."""
        return int(self._run(sql, params).rowcount)

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction around :meth:`query` and :meth:`execute`: all or nothing."""
        with self._tx():
            yield

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        if self._pg is not None:
            return int(self._pg.execute("SELECT version FROM schema_meta").fetchone()["version"])
        assert self._db is not None
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None
        if self._pg is not None:
            self._pg.close()
        elif self._db is not None:
            self._db.close()

    # -- provisioning ------------------------------------------------------
    def upsert_station(self, station_id: str, site: str,
                       evses: Iterable[tuple[int, float]]) -> None:
        """Record a provisioned station and its EVSEs (idempotent)."""
        self.upsert_stations([(station_id, site, list(evses))])

    def upsert_stations(self, stations: Sequence[tuple[str, str, Sequence[tuple[int, float]]]]
                        ) -> None:
        """Record many provisioned stations in one transaction: ``(id, site, evses)``."""
        with self._tx():
            self._many("INSERT INTO stations(station_id, site) VALUES (?, ?) "
                       "ON CONFLICT(station_id) DO UPDATE SET site=excluded.site",
                       [(sid, site) for sid, site, _ in stations])
            self._many(
                "INSERT INTO evses(station_id, evse_id, max_power_w) VALUES (?, ?, ?) "
                "ON CONFLICT(station_id, evse_id) DO UPDATE SET max_power_w=excluded.max_power_w",
                [(sid, e, p) for sid, _, evses in stations for e, p in evses])

    def record_boot(self, station_id: str, vendor: str, model: str, at: str) -> None:
        """Store the vendor/model a station reported at boot."""
        with self._tx():
            self._run(
                "UPDATE stations SET vendor=?, model=?, booted_at=? WHERE station_id=?",
                (vendor, model, at, station_id),
            )

    def record_station_message(self, station_id: str, action: str, received_at: str,
                               payload: dict[str, Any]) -> int:
        """Keep a message a station reported (events, reports, status of its firmware,
        logs and diagnostics, data transfers) as received; returns its id."""
        sql = ("INSERT INTO station_messages(station_id, action, received_at, payload) "
               "VALUES (?, ?, ?, ?)")
        values = (station_id, action, received_at, json.dumps(payload, separators=(",", ":")))
        with self._tx():
            if self._pg is not None:
                return int(self._run(sql + " RETURNING id", values).fetchone()["id"])
            # (No RETURNING: SQLite has it only since 3.35.)
            return int(self._run(sql, values).lastrowid)

    def station_messages(self, station_id: str | None = None, action: str | None = None, *,
                         after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Kept station messages, oldest first from ``after_id`` (payloads decoded)."""
        where: list[str] = ["id > ?"]
        params: list[Any] = [after_id]
        if station_id is not None:
            where.append("station_id = ?")
            params.append(station_id)
        if action is not None:
            where.append("action = ?")
            params.append(action)
        rows = self._rows(
            "SELECT id, station_id, action, received_at, payload FROM station_messages "
            f"WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", [*params, limit])
        for row in rows:
            row["payload"] = json.loads(row["payload"])
        return rows

    def record_variables(self, station_id: str, rows: Sequence[dict[str, Any]], *,
                         source: str, at: str) -> None:
        """Keep what a station reported of its device model (2.x NotifyReport,
        Get/SetVariables results; 1.6 configuration keys): one row per component,
        variable and attribute, the latest report winning."""
        if not rows:
            return
        kept = self._one("SELECT COUNT(*) AS n FROM device_model WHERE station_id = ?",
                         (station_id,))
        if int((kept or {}).get("n") or 0) + len(rows) > MAX_DEVICE_MODEL_ROWS:
            # A station reporting without end: what it has is updated, nothing added.
            with self._tx():
                self._many(
                    "UPDATE device_model SET value = ?, source = ?, updated_at = ? "
                    "WHERE station_id = ? AND component = ? AND component_instance = ? "
                    "AND evse_id = ? AND connector_id = ? AND variable = ? "
                    "AND variable_instance = ? AND attribute_type = ?",
                    [(r.get("value"), source, at, station_id, r["component"],
                      r.get("component_instance") or "", r.get("evse_id") or 0,
                      r.get("connector_id") or 0, r["variable"],
                      r.get("variable_instance") or "", r.get("attribute_type") or "Actual")
                     for r in rows])
            log.warning("%s: device model full (%d rows): new variables not kept",
                        station_id, MAX_DEVICE_MODEL_ROWS)
            return
        with self._tx():
            self._many(
                "INSERT INTO device_model(station_id, component, component_instance, evse_id, "
                "connector_id, variable, variable_instance, attribute_type, value, mutability, "
                "source, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(station_id, component, component_instance, evse_id, connector_id, "
                "variable, variable_instance, attribute_type) DO UPDATE SET "
                "value = excluded.value, mutability = COALESCE(excluded.mutability, "
                "device_model.mutability), source = excluded.source, "
                "updated_at = excluded.updated_at",
                [(station_id, r["component"], r.get("component_instance") or "",
                  r.get("evse_id") or 0, r.get("connector_id") or 0, r["variable"],
                  r.get("variable_instance") or "", r.get("attribute_type") or "Actual",
                  r.get("value"), r.get("mutability"), source, at) for r in rows])

    def variables(self, station_id: str, component: str | None = None,
                  variable: str | None = None) -> list[dict[str, Any]]:
        """A station's device model as reported, by component and variable."""
        where, params = ["station_id = ?"], [station_id]
        if component is not None:
            where.append("component = ?")
            params.append(component)
        if variable is not None:
            where.append("variable = ?")
            params.append(variable)
        return self._rows(
            "SELECT component, component_instance, evse_id, connector_id, variable, "
            "variable_instance, attribute_type, value, mutability, source, updated_at "
            f"FROM device_model WHERE {' AND '.join(where)} ORDER BY component, "
            "component_instance, evse_id, connector_id, variable, variable_instance, "
            "attribute_type", params)

    def record_local_list(self, station_id: str, version: int, at: str) -> None:
        """The local authorization list version a station accepted."""
        with self._tx():
            self._run("INSERT INTO local_lists(station_id, version, sent_at) VALUES (?, ?, ?) "
                      "ON CONFLICT(station_id) DO UPDATE SET version = excluded.version, "
                      "sent_at = excluded.sent_at", (station_id, version, at))

    def save_external_limit(self, station_id: str, evse_id: int, source: str,
                            schedules: list[dict[str, Any]] | None, at: str) -> None:
        """Keep (or, ``schedules`` None, drop) a limit a station reported from outside."""
        with self._tx():
            self._run("DELETE FROM external_limits WHERE station_id = ? AND evse_id = ? "
                      "AND source = ?", (station_id, evse_id, source))
            if schedules is not None:
                self._run("INSERT INTO external_limits(station_id, evse_id, source, "
                          "schedules, received_at) VALUES (?, ?, ?, ?, ?)",
                          (station_id, evse_id, source,
                           json.dumps(schedules, separators=(",", ":")), at))

    def clear_external_limits(self, station_id: str, evse_id: int | None, source: str) -> None:
        """Drop a source's limits on one EVSE (None: on all of the station's)."""
        with self._tx():
            if evse_id is None:
                self._run("DELETE FROM external_limits WHERE station_id = ? AND source = ?",
                          (station_id, source))
            else:
                self._run("DELETE FROM external_limits WHERE station_id = ? AND evse_id = ? "
                          "AND source = ?", (station_id, evse_id, source))

    def external_limits(self, station_id: str | None = None) -> list[dict[str, Any]]:
        """Kept external limits (schedules decoded)."""
        rows = self._rows("SELECT station_id, evse_id, source, schedules FROM external_limits"
                          + (" WHERE station_id = ?" if station_id is not None else ""),
                          (station_id,) if station_id is not None else ())
        for row in rows:
            row["schedules"] = json.loads(row["schedules"])
        return rows

    def local_list_version(self, station_id: str) -> int:
        """The last local list version the station accepted (0: none)."""
        row = self._one("SELECT version FROM local_lists WHERE station_id = ?", (station_id,))
        return int(row["version"]) if row else 0

    def record_status(self, station_id: str, evse_id: int, status: str, at: str) -> None:
        """Store a connector status change."""
        with self._tx():
            self._run(
                "UPDATE evses SET status=?, status_at=? WHERE station_id=? AND evse_id=?",
                (status, at, station_id, evse_id),
            )

    # -- transactions ------------------------------------------------------
    def record_transaction_event(
        self,
        *,
        station_id: str,
        transaction_id: str,
        seq_no: int,
        event_type: str,
        trigger_reason: str,
        timestamp: str,
        payload: dict[str, Any],
        samples: Sequence[tuple[str, str, str | None, float, str | None]],
        evse_id: int,
        state: dict[str, Any],
        digest: str | None = None,
        cdr: dict[str, Any] | None = None,
        closes: Sequence[tuple[str, dict[str, Any], dict[str, Any]]] = (),
    ) -> bool:
        """Store one TransactionEvent, its sampled values, the transaction's new
        ``state`` (the columns in :data:`TRANSACTION_STATE`) and, for an ended
        transaction, its charge detail record ``cdr`` (the columns of ``cdrs`` by
        name), all in one transaction: all of it is stored or none of it.

        ``samples`` are ``(timestamp, measurand, phase, value, unit)`` tuples on
        ``evse_id``. Returns False, storing nothing, when the transaction already
        has an event with this ``seq_no`` or (OCPP 1.6) content ``digest``: a re-sent
        message, which must change nothing.
        """
        with self._tx():
            cur = self._run(
                "INSERT INTO transaction_events(station_id, transaction_id, seq_no, "
                "event_type, trigger_reason, timestamp, payload, digest) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (station_id, transaction_id, seq_no, event_type, trigger_reason, timestamp,
                 json.dumps(payload, separators=(",", ":")), digest),
            )
            if cur.rowcount == 0:
                return False
            self._write_state(station_id, transaction_id, state)
            self._many(
                "INSERT INTO meter_values(station_id, evse_id, transaction_id, timestamp, "
                "measurand, phase, value, unit) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(station_id, evse_id, transaction_id, *s) for s in samples])
            if cdr is not None:
                self._write_cdr(cdr)
            # Transactions the CSMS ends because this one supersedes them: final
            # state and CDR, no event logged (a late Ended still applies as new).
            for closed_id, closed_state, closed_cdr in closes:
                self._write_state(station_id, closed_id, closed_state)
                self._write_cdr(closed_cdr)
        return True

    def close_transactions(self, station_id: str,
                           closes: Sequence[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
        """Transactions the CSMS ends itself (the station said they are over but its
        Ended never came): final state and CDR each, all in one transaction."""
        with self._tx():
            for closed_id, closed_state, closed_cdr in closes:
                self._write_state(station_id, closed_id, closed_state)
                self._write_cdr(closed_cdr)

    def _write_state(self, station_id: str, transaction_id: str, state: dict[str, Any]) -> None:
        # Inside a transaction.
        cols = ("station_id", "transaction_id", *TRANSACTION_STATE)
        values = [station_id, transaction_id, *(state[c] for c in TRANSACTION_STATE)]
        self._run(
            f"INSERT INTO transactions({', '.join(cols)}) "
            f"VALUES ({', '.join('?' * len(cols))}) "
            "ON CONFLICT(station_id, transaction_id) DO UPDATE SET "
            + ", ".join(f"{c}=excluded.{c}" for c in TRANSACTION_STATE), values)

    def record_charging_state(self, station_id: str, transaction_id: str,
                              state: str | None) -> None:
        """A running transaction's charging state, reported outside its events (1.6)."""
        with self._tx():
            self._run("UPDATE transactions SET charging_state=? WHERE station_id=? AND "
                      "transaction_id=?", (state, station_id, transaction_id))

    def record_meter_values(
        self,
        station_id: str,
        evse_id: int,
        samples: Sequence[tuple[str, str, str | None, float, str | None]],
    ) -> None:
        """Store sampled values reported outside a transaction (MeterValues)."""
        with self._tx():
            self._many(
                "INSERT INTO meter_values(station_id, evse_id, transaction_id, timestamp, "
                "measurand, phase, value, unit) VALUES (?, ?, NULL, ?, ?, ?, ?, ?)",
                [(station_id, evse_id, *s) for s in samples])

    def record_profile(
        self, station_id: str, evse_id: int, profile_id: int, purpose: str, stack_level: int,
        limit_value: float, unit: str, sent_at: str, status: str, limit_w: float | None = None,
        transaction_id: str | None = None,
    ) -> None:
        """Store a charging profile the CSMS sent and the station's answer; an accepted
        controller limit (``limit_w`` for ``transaction_id``) is also kept on the
        transaction's row, where a restart or another process finds it."""
        with self._tx():
            self._run(
                "INSERT INTO charging_profiles(station_id, evse_id, profile_id, purpose, "
                "stack_level, limit_value, unit, sent_at, status, limit_w) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (station_id, evse_id, profile_id, purpose, stack_level, limit_value, unit,
                 sent_at, status, limit_w),
            )
            if status == "Accepted" and limit_w is not None and transaction_id is not None:
                self._run("UPDATE transactions SET limit_w=? WHERE station_id=? AND "
                          "transaction_id=?", (limit_w, station_id, transaction_id))

    def save_installed_profiles(self, station_id: str, profiles: list[str]) -> None:
        """Replace what a station has installed: its profiles as JSON, in install order."""
        with self._tx():
            self._run("DELETE FROM installed_profiles WHERE station_id=?", (station_id,))
            self._many("INSERT INTO installed_profiles(station_id, position, profile) "
                       "VALUES (?, ?, ?)", [(station_id, i, p) for i, p in enumerate(profiles)])

    def installed_profiles(self, station_id: str | None = None) -> dict[str, list[str]]:
        """Every station's (or one station's) installed profiles, JSON in install order."""
        out: dict[str, list[str]] = {}
        where, params = ("WHERE station_id=? ", (station_id,)) if station_id else ("", ())
        for r in self._rows(f"SELECT station_id, profile FROM installed_profiles {where}"
                            "ORDER BY station_id, position", params):
            out.setdefault(r["station_id"], []).append(r["profile"])
        return out

    def max_profile_id(self) -> int:
        """The highest charging-profile id ever sent (0 if none)."""
        row = self._one("SELECT MAX(profile_id) AS m FROM charging_profiles")
        return int((row or {}).get("m") or 0)

    def next_counter(self, name: str, *, floor: int = 0) -> int:
        """Increment and return a persistent counter (OCPP 1.6 transaction ids, request
        ids, ...); atomic, so processes sharing the database never get the same value.
        A new counter starts after ``floor``."""
        with self._tx():
            # (No RETURNING: SQLite has it only since 3.35.)
            self._run("INSERT INTO counters(name, value) VALUES (?, ?) "
                      "ON CONFLICT(name) DO UPDATE SET value = counters.value + 1",
                      (name, floor + 1))
            row = self._one("SELECT value FROM counters WHERE name=?", (name,))
        assert row is not None
        return int(row["value"])

    def raise_counter(self, name: str, value: int) -> None:
        """Make sure the counter's next value is above ``value``."""
        with self._tx():
            self._run("INSERT INTO counters(name, value) VALUES (?, ?) "
                      "ON CONFLICT(name) DO UPDATE SET value = "
                      "CASE WHEN counters.value < excluded.value THEN excluded.value "
                      "ELSE counters.value END", (name, value))

    def record_cdr(self, **cdr: Any) -> None:
        """Store (or replace, if late events changed it) a charge detail record."""
        with self._tx():
            self._write_cdr(cdr)

    def _write_cdr(self, cdr: dict[str, Any]) -> None:
        # Inside a transaction. Rewritten only when a value changed.
        same = "IS NOT DISTINCT FROM" if self._pg is not None else "IS"
        self._run(
            "INSERT INTO cdrs(station_id, transaction_id, id_token, started_at, ended_at, "
            "duration_s, energy_wh, cost, currency, exported_wh, export_credit) VALUES "
            "(:station_id, :transaction_id, :id_token, :started_at, :ended_at, :duration_s, "
            ":energy_wh, :cost, :currency, :exported_wh, :export_credit) "
            "ON CONFLICT(station_id, transaction_id) DO UPDATE SET "
            + ", ".join(f"{c}=excluded.{c}" for c in _CDR_VALUES)
            + " WHERE NOT (" + " AND ".join(f"cdrs.{c} {same} excluded.{c}"
                                            for c in _CDR_VALUES) + ")", cdr)

    def cdr_cost(self, station_id: str, transaction_id: str) -> float | None:
        """The cost on a transaction's charge detail record (None: it has none)."""
        row = self._one("SELECT cost FROM cdrs WHERE station_id = ? AND transaction_id = ?",
                        (station_id, transaction_id))
        return None if row is None else float(row["cost"])

    def cdrs(self) -> list[dict[str, Any]]:
        """All charge detail records, oldest first."""
        return self._rows("SELECT * FROM cdrs ORDER BY ended_at, station_id, transaction_id")

    def cdr(self, station_id: str, transaction_id: str) -> dict[str, Any] | None:
        """One transaction's charge detail record, or None (by its key: one row read)."""
        return self._one("SELECT * FROM cdrs WHERE station_id = ? AND transaction_id = ?",
                         (station_id, transaction_id))

    def recent_cdrs(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` newest charge detail records, newest first."""
        return self._rows("SELECT * FROM cdrs ORDER BY ended_at DESC, station_id DESC, "
                          "transaction_id DESC LIMIT ?", (limit,))

    def last_ended_at(self) -> str | None:
        """When the latest transaction ended (its CDR is written then), from the index of
        ended transactions: a cheap sign that there is a new CDR."""
        row = self._one("SELECT MAX(ended_at) AS m FROM transactions WHERE ended_at IS NOT NULL")
        return None if row is None else row.get("m")

    def transactions_of(self, id_token: str) -> list[dict[str, Any]]:
        """One driver's transactions (id token compared case-insensitively, as the
        driver API does) with their metered energy (Wh), oldest first."""
        return self._rows(
            "SELECT *, COALESCE(meter_stop_wh, meter_last_wh) - meter_start_wh AS energy_wh "
            "FROM transactions WHERE LOWER(id_token) = LOWER(?) "
            "ORDER BY started_at, station_id, transaction_id", (id_token,))

    def open_transactions(self, station_id: str | None = None) -> list[dict[str, Any]]:
        """Transactions not Ended (of one station, if given), with their live state."""
        where, params = ("AND station_id=? ", (station_id,)) if station_id else ("", ())
        return self._rows(f"SELECT * FROM transactions WHERE ended_at IS NULL {where}"
                          "ORDER BY started_at, station_id, transaction_id", params)

    def transaction_state(self, station_id: str, transaction_id: str) -> dict[str, Any] | None:
        """One transaction's row with its live state, or None if unknown."""
        return self._one("SELECT * FROM transactions WHERE station_id=? AND transaction_id=?",
                         (station_id, transaction_id))

    def transaction_with_digest(self, station_id: str, digest: str) -> str | None:
        """The open transaction an event with this content digest (OCPP 1.6) belongs to
        (an ended one is history: the same content again is a new message)."""
        row = self._one(
            "SELECT e.transaction_id FROM transaction_events e JOIN transactions t ON "
            "t.station_id = e.station_id AND t.transaction_id = e.transaction_id "
            "WHERE e.station_id=? AND e.digest=? AND t.ended_at IS NULL LIMIT 1",
            (station_id, digest))
        return None if row is None else str(row["transaction_id"])

    def last_accepted_limits_w(self) -> dict[tuple[str, int], float]:
        """The last limit (W) each EVSE accepted, by (station, evse)."""
        out: dict[tuple[str, int], float] = {}
        for r in self._rows(
                "SELECT station_id, evse_id, limit_w FROM charging_profiles "
                "WHERE status='Accepted' AND limit_w IS NOT NULL ORDER BY rowid"):
            out[(r["station_id"], r["evse_id"])] = float(r["limit_w"])
        return out

    def record_security_event(self, at: str, peer: str | None, kind: str,
                              detail: str) -> None:
        """Store a refused connection or other security-relevant event."""
        with self._tx():
            self._run("INSERT INTO security_events(at, peer, kind, detail) VALUES (?, ?, ?, ?)",
                      (at, peer, kind, detail))

    def prune_station_messages(self, *, before: str | None = None,
                               max_rows: int | None = None) -> int:
        """Delete kept station messages received before ``before`` (ISO time) and all
        but the newest ``max_rows``; return how many were deleted."""
        return self._prune("station_messages", "received_at", "id", before, max_rows)

    def prune_security_events(self, *, before: str | None = None,
                              max_rows: int | None = None) -> int:
        """Delete security events older than ``before`` (ISO time) and all but the newest
        ``max_rows``; return how many were deleted."""
        return self._prune("security_events", "at", "rowid", before, max_rows)

    def _prune(self, table: str, time_column: str, id_column: str, before: str | None,
               max_rows: int | None) -> int:
        deleted = 0
        with self._tx():
            if before is not None:
                deleted += self._run(f"DELETE FROM {table} WHERE {time_column} < ?",
                                     (before,)).rowcount
            if max_rows is not None:
                deleted += self._run(
                    f"DELETE FROM {table} WHERE {id_column} NOT IN (SELECT {id_column} "
                    f"FROM {table} ORDER BY {id_column} DESC LIMIT ?)", (max_rows,)).rowcount
        return deleted

    # -- commands between processes sharing the database -------------------
    def queue_command(self, station_id: str, command: str, at: str) -> None:
        """Leave a command (JSON) for whichever process holds the station's connection."""
        with self._tx():
            self._run("INSERT INTO commands(station_id, command, created_at) VALUES (?, ?, ?)",
                      (station_id, command, at))

    def take_commands(self, station_ids: Container[str], *, older_than: str | None = None
                      ) -> list[tuple[str, str]]:
        """Claim (delete and return) the queued commands for the stations in
        ``station_ids``, oldest first; commands created before ``older_than`` are dropped
        unclaimed."""
        out: list[tuple[str, str]] = []
        with self._tx():
            if older_than is not None:
                self._run("DELETE FROM commands WHERE created_at < ?", (older_than,))
            pending = [r["station_id"] for r in self._rows(
                "SELECT DISTINCT station_id FROM commands")]
            mine = [sid for sid in pending if sid in station_ids]
            for i in range(0, len(mine), 500):
                chunk = mine[i:i + 500]
                marks = ", ".join("?" * len(chunk))
                if self._pg is not None:  # claimed atomically against other processes
                    rows = self._rows(f"DELETE FROM commands WHERE station_id IN ({marks}) "
                                      "RETURNING id, station_id, command", chunk)
                else:
                    rows = self._rows(f"SELECT id, station_id, command FROM commands "
                                      f"WHERE station_id IN ({marks})", chunk)
                    self._run(f"DELETE FROM commands WHERE station_id IN ({marks})", chunk)
                out += [(r["station_id"], r["command"])
                        for r in sorted(rows, key=lambda r: r["id"])]
        return out

    # -- queries -----------------------------------------------------------
    def transactions(self) -> list[dict[str, Any]]:
        """All transactions with their metered energy (Wh), oldest first."""
        return self._rows(
            "SELECT *, COALESCE(meter_stop_wh, meter_last_wh) - meter_start_wh AS energy_wh "
            "FROM transactions "
            "ORDER BY started_at, station_id, transaction_id")

    def transaction(self, station_id: str, transaction_id: str) -> dict[str, Any] | None:
        """One transaction with its metered energy (Wh), or None if unknown."""
        return self._one(
            "SELECT *, COALESCE(meter_stop_wh, meter_last_wh) - meter_start_wh AS energy_wh "
            "FROM transactions "
            "WHERE station_id=? AND transaction_id=?", (station_id, transaction_id))

    def meter_values(self, station_id: str, transaction_id: str) -> list[dict[str, Any]]:
        """Every sampled value stored for one transaction, in time order."""
        return self._rows(
            "SELECT evse_id, timestamp, measurand, phase, value, unit FROM meter_values "
            "WHERE station_id=? AND transaction_id=? ORDER BY timestamp, rowid",
            (station_id, transaction_id))

    def stations(self) -> list[dict[str, Any]]:
        """Every station with its boot data and its EVSEs' last status, by station id."""
        out = []
        for station in self._rows("SELECT * FROM stations ORDER BY station_id"):
            station["evses"] = self._rows(
                "SELECT evse_id, max_power_w, status, status_at FROM evses "
                "WHERE station_id=? ORDER BY evse_id", (station["station_id"],))
            out.append(station)
        return out

    def count(self, table: str) -> int:
        """Number of rows in one of the CSMS's tables."""
        if table not in {"stations", "evses", "transactions", "transaction_events",
                         "meter_values", "charging_profiles", "security_events",
                         "installed_profiles", "cdrs", "commands", "station_messages",
                         "device_model", "local_lists", "external_limits",
                         "privacy_key", "privacy_audit"}:
            raise ValueError(f"unknown table {table!r}")
        row = self._one(f"SELECT COUNT(*) AS n FROM {table}")
        return int((row or {}).get("n") or 0)

    def security_events_page(self, *, after_id: int = 0, limit: int = 100,
                             kind: str | None = None) -> list[dict[str, Any]]:
        """Security events after ``after_id``, oldest first, with their ``id``."""
        where: list[str] = ["rowid > ?"]
        params: list[Any] = [after_id]
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        return self._rows("SELECT rowid AS id, at, peer, kind, detail FROM security_events "
                          f"WHERE {' AND '.join(where)} ORDER BY rowid LIMIT ?",
                          [*params, limit])

    def security_events(self) -> list[dict[str, Any]]:
        """All recorded security events, oldest first."""
        return self._rows("SELECT at, peer, kind, detail FROM security_events ORDER BY rowid")


_NAMED = re.compile(r":([a-z_]+)\b")
