"""What ``csms serve`` tells about itself and does off its event loop: the per-CALL
timing histogram and its ``stats`` log lines (timer and SIGUSR1), logging through
a thread (last lines flushed at exit), the WAL checkpoint thread, websocket ping
options, and the OCPP 1.6 wire handlers."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evtwin.csms.config import ServerSection
from evtwin.csms.ocpp16 import CSMS16
from evtwin.csms.shell import CallStats
from evtwin.csms.store import Store
from tests.loadgen import SCALE, CsmsProcess, _boot_payload, write_config

# --------------------------------------------------------------------------- CallStats


def test_call_stats_percentiles_bucket_edges_and_reset() -> None:
    stats = CallStats()
    for _ in range(98):
        stats.record("TransactionEvent", 0.001)  # 1 ms
    stats.record("Heartbeat", 0.050)
    stats.record("(unknown)", 0.200, error=True)
    out = stats.take()
    assert out["calls"] == 100 and out["errors"] == 1
    assert out["by_action"] == {"(unknown)": 1, "Heartbeat": 1, "TransactionEvent": 98}
    # A percentile is its bucket's upper edge: at most ~19 % above the true value.
    assert 1.0 <= out["p50_ms"] <= 1.0 * 2 ** 0.25 + 1e-9
    assert 50.0 <= out["p99_ms"] <= 50.0 * 2 ** 0.25 + 1e-9
    assert out["max_ms"] == pytest.approx(200.0)
    stats.record("Heartbeat", 0.0011)
    assert stats.take()["p99_ms"] == pytest.approx(1.1)  # capped at the max
    assert sum(out["hist"].values()) == 100
    empty = stats.take()  # a new window
    assert empty["calls"] == 0 and empty["p99_ms"] is None and empty["hist"] == {}


def test_call_stats_extremes_stay_in_range() -> None:
    stats = CallStats()
    stats.record("Heartbeat", 0.0)
    stats.record("Heartbeat", 1e-9)
    stats.record("Heartbeat", 1e6)  # eleven days: the last bucket
    hist = stats.take()["hist"]
    assert min(hist) == 0 and max(hist) == CallStats.N_BUCKETS - 1
    assert math.isnan(CallStats.percentile_ms({}, 99))


# --------------------------------------------------------------------------- OCPP 1.6


def test_ocpp16_hot_messages_take_the_wire_path() -> None:
    assert set(CSMS16.wire_handlers) >= {
        "BootNotification", "Heartbeat", "StatusNotification", "Authorize",
        "StartTransaction", "MeterValues", "StopTransaction"}


# --------------------------------------------------------------------------- config


def test_ping_and_stats_options() -> None:
    section = ServerSection()
    assert (section.ping_interval_s, section.ping_timeout_s) == (20.0, 20.0)  # websockets'
    off = ServerSection(ping_interval_s=0, ping_timeout_s=0, stats_interval_s=0)
    assert (off.ping_interval_s or None, off.stats_interval_s or None) == (None, None)
    with pytest.raises(ValueError):
        ServerSection(ping_interval_s=-1)


# --------------------------------------------------------------------------- WAL


def _wal_size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_wal_is_checkpointed_by_the_thread_and_readers_see_every_commit(
        tmp_path: Path) -> None:
    db = tmp_path / "csms.sqlite"
    store = Store(db)
    try:
        assert store.checkpointer is not None
        assert store._db is not None
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        store.checkpointer.restart_frames = 50
        for i in range(300):
            store.upsert_station(f"CS{i}", "site", [(1, 11000.0)])
        # Another process sees every committed row (from the WAL or the file).
        out = subprocess.run(
            [sys.executable, "-c", "import sqlite3, sys; print(sqlite3.connect(sys.argv[1])"
             ".execute('SELECT count(*) FROM stations').fetchone()[0])", str(db)],
            capture_output=True, text=True, timeout=60 * SCALE, check=True)
        assert int(out.stdout) == 300
        grown = _wal_size(db)
        assert grown > 0
        # One round by hand (the thread does the same every second).
        con = sqlite3.connect(db, isolation_level=None)
        try:
            store.checkpointer.checkpoint(con)
        finally:
            con.close()
        assert store.checkpointer.passive >= 1 and store.checkpointer.restarts >= 1
        store.upsert_station("after", "site", [(1, 11000.0)])  # the log starts over ...
        assert _wal_size(db) <= grown  # ... instead of growing
    finally:
        thread = store.checkpointer._thread if store.checkpointer else None
        store.close()
    assert thread is not None and not thread.is_alive()  # stopped on close
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM stations").fetchone()[0] == 301


def test_memory_store_has_no_checkpointer() -> None:
    store = Store(":memory:")
    try:
        assert store.checkpointer is None
    finally:
        store.close()


# --------------------------------------------------------------------------- logging

LOGGING_SCRIPT = """
import logging
from evtwin.csms.service import setup_json_logging
setup_json_logging()
log = logging.getLogger("probe")
for i in range(2000):
    log.info("line %d", i, extra={"event": "probe", "i": i})
try:
    1 / 0
except ZeroDivisionError:
    log.exception("boom", extra={"event": "boom"})
log.info("last", extra={"event": "stopped"})
"""


@pytest.mark.slow
def test_logging_thread_writes_every_line_by_exit() -> None:
    out = subprocess.run([sys.executable, "-c", LOGGING_SCRIPT], capture_output=True,
                         text=True, timeout=60 * SCALE, check=True)
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert [e["i"] for e in lines if e.get("event") == "probe"] == list(range(2000))
    boom = next(e for e in lines if e.get("event") == "boom")
    assert boom["msg"] == "boom" and "ZeroDivisionError" in boom["exc"]
    assert lines[-1]["event"] == "stopped" and lines[-1]["msg"] == "last"


# --------------------------------------------------------------------------- serve


@pytest.mark.slow
def test_serve_logs_stats_on_sigusr1_and_stops_cleanly(tmp_path: Path) -> None:
    from websockets.sync.client import connect

    config = write_config(tmp_path / "csms.toml", ["CS1"], stats_interval_s=0,
                          ping_interval_s=0)
    with CsmsProcess(config, tmp_path / "csms.sqlite") as server:
        server.wait_listening()
        with connect(server.url("CS1"), subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                     open_timeout=10 * SCALE) as ws:
            for i in range(3):
                ws.send(json.dumps([2, f"b{i}", "BootNotification", _boot_payload()]))
                assert json.loads(ws.recv(timeout=10 * SCALE))[0] == 3
            ws.send(json.dumps([2, "x", "NoSuchAction", {}]))
            assert json.loads(ws.recv(timeout=10 * SCALE))[0] == 4
            time.sleep(0.3)  # a few loop-lag samples (one every 0.1 s)
            upto = server.mark()
        assert upto >= 1
        line = server.stats[upto - 1]
        assert line["trigger"] == "signal"
        assert line["calls"] == 4 and line["errors"] == 1
        assert line["by_action"] == {"(unknown)": 1, "BootNotification": 3}
        assert line["p50_ms"] > 0 and line["max_ms"] >= line["p99_ms"] >= line["p50_ms"]
        assert sum(line["hist"].values()) == 4
        assert line["loop_lag_p99_ms"] is not None and "wal_frames" in line
        assert server.stop() == 0
        deadline = time.monotonic() + 10 * SCALE  # the drain thread reads the pipe to its end
        while not server.events["stopped"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.events["stopped"] == 1


# --------------------------------------------------------------------------- StallWatch


def _hold_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)  # stands for any blocking call made in the loop


def test_stall_watch_names_the_code_that_blocked_the_loop() -> None:
    import asyncio

    from evtwin.csms.stallwatch import StallWatch

    reports: list[tuple[float, list[tuple[int, list[str]]]]] = []

    class Collect(StallWatch):
        def report(self, took_s: float, stacks: list[tuple[int, list[str]]], *,
                   gc_s: float = 0.0, gc_generation: int = -1,
                   others: list[tuple[int, list[str]]] | None = None) -> None:
            reports.append((took_s, stacks))

    async def main() -> Collect:
        watch = Collect(asyncio.get_running_loop(), threshold_s=0.05)
        watch.start()
        await asyncio.sleep(0.2)  # a healthy loop: nothing to report
        healthy = len(reports)
        _hold_the_loop_for(0.3)
        await asyncio.sleep(0.2)  # the watchdog sees the beat and reports
        watch.stop()
        assert healthy == 0
        return watch

    watch = asyncio.run(main())
    assert watch.stalls == 1 and len(reports) == 1
    took_s, stacks = reports[0]
    assert 0.25 <= took_s <= 0.3 + 0.5 * SCALE
    assert stacks and any("_hold_the_loop_for" in frame for frame in stacks[0][1])


def test_stall_report_option() -> None:
    assert ServerSection().stall_report_ms == 0
    with pytest.raises(ValueError, match="stall_report_ms"):
        ServerSection(stall_report_ms=-1)


# --------------------------------------------------------------------------- lock waits


def test_a_write_waits_for_another_connections_lock_in_short_steps(tmp_path: Path) -> None:
    """SQLite's own busy handler sleeps up to 25-100 ms between tries; the store
    polls, so it goes on within about a millisecond of the lock's release."""
    import threading

    from evtwin.csms.store import _wait_unlocked

    store = Store(tmp_path / "csms.sqlite")
    try:
        other = sqlite3.connect(tmp_path / "csms.sqlite", isolation_level=None,
                                check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # holds the write lock, like a WAL restart
        released = threading.Event()
        commit_at: list[float] = []

        def release() -> None:
            time.sleep(0.06)
            commit_at.append(time.perf_counter())
            other.execute("COMMIT")
            released.set()

        threading.Thread(target=release).start()
        t0 = time.perf_counter()
        store.upsert_station("CS1", "site", [(1, 11000.0)])
        done = time.perf_counter()
        waited = done - t0
        # The write went through only once the other connection committed (the
        # release thread may not have marked it yet: the lock goes inside COMMIT).
        assert released.wait(5.0) and done >= commit_at[0]
        assert 0.055 <= waited <= 0.06 + 0.02 * SCALE
        assert store._one("SELECT COUNT(*) AS n FROM stations") == {"n": 1}
        # A lock that is never released fails after the wait, naming the cause.
        other.execute("BEGIN IMMEDIATE")
        db = store._db
        assert db is not None
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            _wait_unlocked(lambda: db.execute("BEGIN IMMEDIATE"), wait_s=0.05)
        other.execute("ROLLBACK")
        other.close()
    finally:
        store.close()


@pytest.mark.slow
def test_stall_watch_reports_a_long_garbage_collection() -> None:
    """The collector holds the GIL: the watchdog cannot even send a beat while it
    runs, so the gc callback reports a collection that is itself a stall."""
    import asyncio
    import gc

    from evtwin.csms.stallwatch import StallWatch

    reports: list[tuple[float, list[tuple[int, list[str]]], float, int]] = []

    class Collect(StallWatch):
        def report(self, took_s: float, stacks: list[tuple[int, list[str]]], *,
                   gc_s: float = 0.0, gc_generation: int = -1,
                   others: list[tuple[int, list[str]]] | None = None) -> None:
            reports.append((took_s, stacks, gc_s, gc_generation))

    async def main() -> None:
        watch = Collect(asyncio.get_running_loop(), threshold_s=0.01)
        watch.start()
        garbage = [[i] for i in range(600_000)]  # tracked containers for the collector
        t0 = time.perf_counter()
        gc.collect()
        took = time.perf_counter() - t0
        del garbage
        await asyncio.sleep(0.1)
        watch.stop()
        if took < 0.01:
            pytest.skip(f"a full collection took only {took * 1000:.1f} ms here")

    asyncio.run(main())
    # Ours, and the automatic ones that building the garbage set off.
    gc_reports = [r for r in reports if r[3] == 2]
    assert gc_reports
    for took_s, stacks, gc_s, _ in gc_reports:
        assert took_s == gc_s >= 0.01 and "garbage collection" in stacks[0][1][0]
