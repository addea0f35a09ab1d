"""PostgreSQL as the CSMS's store, and two ``csms serve`` processes sharing it.

A real PostgreSQL server (tests/pg.py) on 127.0.0.1. The store keeps the
same guarantees as SQLite (duplicates change nothing, counters are atomic
across processes); two CSMS processes share stations, transactions and CDRs:
a station that reconnects to the other process continues its transaction,
one site's limit is shared out across stations connected to different
processes, and when the controlling process is killed the other takes over.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evtwin.csms import CSMSConfig, CSMSCore, EvseSpec, SiteSpec, StationSpec, Store, iso
from evtwin.csms.store import SCHEMA_VERSION
from tests.pg import postgres_server
from tests.test_csms_standalone import (
    TIMEOUT_S,
    at,
    boot,
    csms_process,
    limit_of,
    station,
    tx_event,
)

pytestmark = pytest.mark.slow

CONFIG = """
[control]
strategy = "equal_share"
interval_s = 1

[[sites]]
name = "depot"
limit_kw = 7

[[stations]]
id = "CS1"
site = "depot"

[[stations]]
id = "CS2"
site = "depot"

[tokens]
accepted = ["TAG1"]
"""


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh database on the shared server for each test."""
    import psycopg

    name = f"t{threading.get_ident()}_{datetime.now(UTC).strftime('%H%M%S%f')}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _core(url: str, now: datetime) -> CSMSCore:
    config = CSMSConfig(stations=(StationSpec("CS1", "depot", (EvseSpec(1, 11_000.0),)),),
                        sites=(SiteSpec("depot", 7.0),), id_tokens=frozenset({"TAG1"}))
    return CSMSCore(config, Store(url), clock=lambda: now)


def _event(kind: str, seq: int, wh: float, ts: datetime) -> dict[str, object]:
    return tx_event(kind, seq, wh, iso(ts))


def test_the_store_on_postgres_keeps_the_sqlite_guarantees(pg_url: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    core = _core(pg_url, now)
    assert core.store.shared and core.store.schema_version == SCHEMA_VERSION
    t0 = now - timedelta(hours=2)
    core.on_transaction_event("CS1", _event("Started", 0, 1000, t0))
    core.on_transaction_event("CS1", _event("Updated", 1, 4000, t0 + timedelta(hours=1)))
    ended = _event("Ended", 2, 9000, t0 + timedelta(hours=1, minutes=30))
    core.on_transaction_event("CS1", ended)
    (cdr,) = core.store.cdrs()
    assert cdr["energy_wh"] == pytest.approx(8000) and cdr["duration_s"] == 5400
    # A second process's view: the same rows; a re-sent Ended changes nothing.
    other = _core(pg_url, now)
    other.on_transaction_event("CS1", ended)
    assert other.store.cdrs() == [cdr]
    assert other.store.count("transaction_events") == 3
    assert other.store.count("meter_values") == 3
    # Counters are atomic across processes.
    ids = {core.store.next_counter("transaction_id") for _ in range(5)}
    ids |= {other.store.next_counter("transaction_id") for _ in range(5)}
    assert ids == set(range(1, 11))
    profile_ids = {core.next_profile_id(), other.next_profile_id(), core.next_profile_id()}
    assert len(profile_ids) == 3
    core.store.close()
    other.store.close()


def test_two_processes_share_stations_sessions_and_control(tmp_path: Path, pg_url: str
                                                           ) -> None:
    cfg = tmp_path / "csms.toml"
    cfg.write_text(CONFIG)
    protocol = "ocpp2.0.1"
    with csms_process(tmp_path, cfg, db=pg_url) as a, csms_process(tmp_path, cfg,
                                                                    db=pg_url) as b:
        assert a.event("listening")["shared_store"] is True
        with station(a, "CS1", protocol) as cs1, station(b, "CS2", protocol) as cs2:
            boot(cs1, protocol)
            boot(cs2, protocol)
            assert cs1.call("TransactionEvent", tx_event("Started", 0, 1000, at("08:00")))[0] == 3
            cs2_start = tx_event("Started", 0, 0, at("08:00"),
                                 {"transactionInfo": {"transactionId": "TX-B"}})
            assert cs2.call("TransactionEvent", cs2_start)[0] == 3
            # One controller shares the 7 kW site limit across both processes' stations.
            assert cs1.wait_for_call("SetChargingProfile", lambda p: limit_of(p, "TX-A") == 3500)
            assert cs2.wait_for_call("SetChargingProfile", lambda p: limit_of(p, "TX-B") == 3500)
        leaders = [p for p in (a, b) if any(e.get("event") == "cluster_leader" for e in p.logs)]
        assert len(leaders) == 1
        # CS1 comes back on the other process and continues its transaction there.
        with station(b, "CS1", protocol) as cs1:
            boot(cs1, protocol)
            assert cs1.call("TransactionEvent", tx_event("Updated", 1, 4000, at("08:30")))[0] == 3
            ended = tx_event("Ended", 2, 9000, at("09:30"))
            assert cs1.call("TransactionEvent", ended)[0] == 3
        # The controlling process dies; the other takes over and gives CS2 the whole site.
        leader = leaders[0]
        follower = b if leader is a else a
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(timeout=TIMEOUT_S)
        with station(follower, "CS2", protocol) as cs2:
            boot(cs2, protocol)
            assert cs2.wait_for_call("SetChargingProfile", lambda p: limit_of(p, "TX-B") == 7000)
            # The re-sent Ended, answered by the survivor, changes nothing.
            with station(follower, "CS1", protocol) as cs1:
                boot(cs1, protocol)
                assert cs1.call("TransactionEvent", ended)[0] == 3
        assert follower.proc.poll() is None
    store = Store(pg_url)
    try:
        (cdr,) = [c for c in store.cdrs() if c["transaction_id"] == "TX-A"]
        assert cdr["energy_wh"] == pytest.approx(8000)
        assert cdr["duration_s"] == pytest.approx(5400)
        assert [e["seq_no"] for e in store._rows(
            "SELECT seq_no FROM transaction_events WHERE transaction_id='TX-A' ORDER BY seq_no"
        )] == [0, 1, 2]
        open_ids = [t["transaction_id"] for t in store.open_transactions()]
        assert open_ids == ["TX-B"]
    finally:
        store.close()


def test_processes_can_share_one_port(tmp_path: Path, pg_url: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cfg = tmp_path / "csms.toml"
    cfg.write_text(CONFIG)
    with csms_process(tmp_path, cfg, db=pg_url, port=port) as a, \
            csms_process(tmp_path, cfg, db=pg_url, port=port) as b:
        assert a.port == b.port == port
        seen = set()
        for i in range(12):  # the kernel spreads connections over both listeners
            with station(a, "CS1", "ocpp2.0.1") as st:
                boot(st, "ocpp2.0.1")
            for name, proc in (("a", a), ("b", b)):
                if sum(e.get("event") == "connected" for e in proc.logs) > 0:
                    seen.add(name)
            if seen == {"a", "b"} and i >= 1:
                break
        assert seen == {"a", "b"}


def _two_station_config() -> CSMSConfig:
    return CSMSConfig(stations=tuple(StationSpec(s, "depot", (EvseSpec(1, 11_000.0),))
                                     for s in ("CS1", "CS2")),
                      sites=(SiteSpec("depot", 7.0),), id_tokens=frozenset({"TAG1"}),
                      strategy="equal_share")


def test_the_controller_sees_limits_that_other_processes_had_accepted(pg_url: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    a = CSMSCore(_two_station_config(), Store(pg_url), clock=lambda: now)
    b = CSMSCore(_two_station_config(), Store(pg_url), clock=lambda: now)
    a.on_transaction_event("CS1", _event("Started", 0, 0, now - timedelta(minutes=5)))
    started = _event("Started", 0, 0, now - timedelta(minutes=5))
    started["transactionInfo"] = {"transactionId": "TX-B"}
    b.on_transaction_event("CS2", started)
    a.refresh_sessions()
    cmds = a.control_commands()
    assert sorted((c.station_id, c.limit_w) for c in cmds) == [("CS1", 3500.0),
                                                               ("CS2", 3500.0)]
    for cmd in cmds:  # CS2's limit is sent and recorded by the process holding CS2
        (a if cmd.station_id == "CS1" else b).profile_sent(cmd, a.next_profile_id(),
                                                           "Accepted")
    a.refresh_sessions()
    assert a.control_commands() == []  # nothing is sent again
    a.store.close()
    b.store.close()


def test_a_controller_that_loses_its_lock_session_stops_controlling(pg_url: str) -> None:
    import asyncio

    import psycopg

    from evtwin.csms import CSMSServer
    from evtwin.csms.cluster import LEADER_LOCK, Cluster

    async def scenario() -> None:
        now = datetime.now(UTC)
        servers = [CSMSServer(CSMSCore(_two_station_config(), Store(pg_url),
                                       clock=lambda: now)) for _ in range(2)]
        clusters = [Cluster(s, interval_s=0.5, poll_s=0.05, leader_retry_s=0.1)
                    for s in servers]
        for c in clusters:
            await c.start()
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while sum(c.is_leader for c in clusters) != 1:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            first = next(c for c in clusters if c.is_leader)
            # The database ends the leader's session (restart, idle timeout, a NAT).
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE "
                              "locktype = 'advisory' AND objid = %s",
                              (LEADER_LOCK & 0xFFFFFFFF,))
            # The old controller notices at its next check (before any further cycle,
            # within a loop period) and exactly one process controls again.
            t0 = asyncio.get_running_loop().time()
            while first.is_leader or sum(c.is_leader for c in clusters) != 1:
                assert asyncio.get_running_loop().time() - t0 < 5, "no single controller"
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)
            assert sum(c.is_leader for c in clusters) == 1
        finally:
            for c in clusters:
                await c.stop()
            for s in servers:
                s.core.store.close()

    asyncio.run(scenario())


def test_a_v4_postgres_database_is_migrated_in_place(pg_url: str) -> None:
    """A database an earlier evtwin made (schema v4) gets the tables added since."""
    import psycopg

    from evtwin.csms.store import _POSTGRES_V4

    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(_POSTGRES_V4)
        db.execute("INSERT INTO schema_meta VALUES (4)")
        db.execute("INSERT INTO stations VALUES ('CS1', 'depot', NULL, NULL, NULL)")
    store = Store(pg_url)
    try:
        assert store.schema_version == SCHEMA_VERSION and store.opened_schema_version == 4
        store.record_station_message("CS1", "NotifyEvent", "2026-06-01T12:00:00Z", {"seqNo": 0})
        assert [m["action"] for m in store.station_messages("CS1")] == ["NotifyEvent"]
        assert store.cdrs() == []  # the v5 CDR columns are there to be read
        store.record_cdr(station_id="CS1", transaction_id="t", id_token=None,
                         started_at="2026-06-01T10:00:00Z", ended_at="2026-06-01T11:00:00Z",
                         duration_s=3600.0, energy_wh=1000.0, cost=0.3, currency="EUR",
                         exported_wh=500.0, export_credit=0.05)
        assert store.cdrs()[0]["exported_wh"] == 500.0
    finally:
        store.close()
