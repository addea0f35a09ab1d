"""Load, reconnect-storm, crash and fuzz harness for ``evtwin csms serve`` (loopback only).

The parent (pytest, or ``python tests/loadgen.py``) writes a CSMS config with
N stations, starts a real ``evtwin csms serve`` on 127.0.0.1 and drives it from
one or more *client worker processes* (this file run as a script with the
argument ``worker``). A worker runs thousands of cheap stations on one asyncio
loop over raw ``websockets`` connections (not the ``ocpp`` library, which costs
about 1 ms of CPU per message on the client side). Each station connects with
the OCPP 2.0.1 subprotocol, sends BootNotification, StatusNotification and
TransactionEvent Started, then TransactionEvent Updated every ``period_s`` with
Energy.Active.Import.Register and Power.Active.Import, and times each CALL until
its CALLRESULT. It answers every CALL from the CSMS with ``Accepted``.

Parent and workers talk in JSON lines: the spec and commands go down the
worker's stdin (``phase NAME``, ``drop``, ``watch``, ``stop``), events and the
final report come up its stdout. Every loop here is bounded in count and time:
workers stop on their own at ``hard_deadline`` and the parent kills the CSMS
and the workers in ``finally`` (each in its own process group).

What is measured (see :class:`LoadReport`): round-trip latency per phase
(p50/p95/p99/max), errors by kind, the reconnect storm (all connections dropped
at once; time until every station is back and booted, failures within
``storm_timeout_s``), a second storm with OCPP 2.0.1's reconnect back-off
(``spec_storm_backoff_s``: each station waits RetryBackOffWaitMinimum plus a
random part of RetryBackOffRandomRange before its first attempt, as a real
station does after losing its CSMS; all at once is the worst case, the back-off
the behaviour the specification asks of stations), the CSMS's RSS idle and
loaded (``/proc/<pid>/status``),
its start-up time (spawn to the ``listening`` log line, and to the first
BootNotification accepted), and the client loops' own lag (if the clients are
saturated, latencies are theirs, not the server's).

The crash check (:func:`run_crash_check`) kills the CSMS with SIGKILL during
traffic, restarts it on the same ``--db`` and port, and checks that every
TransactionEvent a station got a CALLRESULT for is in the ``transaction_events``
table. The fuzz check (:func:`run_fuzz_check`) has some stations send garbage
frames while others keep charging, and reports the good stations' latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evtwin.csms.gcpolicy import GCPolicy

HOST = "127.0.0.1"
SUBPROTOCOL = "ocpp2.0.1"
ID_TAG = "LOADTAG"
#: Multiplies every timeout here, like the other socket tests (slow CI machines).
SCALE = float(os.environ.get("EVTWIN_TEST_TIMEOUT_SCALE", "1"))
#: File descriptors a CSMS process needs besides one per station (logs, db, listener).
FD_MARGIN = 200


# --------------------------------------------------------------------------- limits


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _child_setup() -> None:
    """preexec_fn of every child: default signal dispositions, file limit raised.

    A background job of a non-interactive shell starts with SIGINT ignored and
    its children inherit that; restoring SIG_DFL makes SIGINT stop them.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise_nofile_limit()


def fd_problem(stations: int, workers: int) -> str | None:
    """Why the hard file limit is too low for this run, or None if it is enough."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return None
    need_server = stations + FD_MARGIN
    need_worker = math.ceil(stations / workers) + FD_MARGIN
    if hard < max(need_server, need_worker):
        return (f"RLIMIT_NOFILE hard limit {hard} is too low: the CSMS needs about "
                f"{need_server} and each of {workers} client workers about {need_worker} "
                "file descriptors (raise it with `ulimit -Hn` as root or in limits.conf)")
    return None


def rss_kib(pid: int) -> int | None:
    """Resident set size of process ``pid`` in KiB (Linux /proc), or None if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# --------------------------------------------------------------------------- config


def station_ids(n: int, prefix: str = "LS") -> list[str]:
    """``n`` station identities, ``LS00000``, ``LS00001``, ..."""
    width = max(5, len(str(n)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def write_config(path: Path, ids: Sequence[str], *, strategy: str = "uncontrolled",
                 site_size: int = 0, site_limit_kw: float | None = None,
                 max_frames_per_s: float = 20.0, max_frames_burst: float = 200.0,
                 max_frame_bytes: int = 65536, interval_s: float = 10.0,
                 ping_interval_s: float = 20.0, stats_interval_s: float = 5.0,
                 stall_report_ms: float = 0.0) -> Path:
    """A CSMS config TOML accepting ``ids`` (one EVSE of 11 kW each) and the token ID_TAG.

    ``site_size`` > 0 groups the stations into sites of that many, each with
    ``site_limit_kw`` (so a controlling strategy has something to share);
    0 puts them all on one site without a limit. ``ping_interval_s`` is the CSMS's
    websocket ping interval (0: none); ``stats_interval_s`` how often it logs its
    ``stats`` line (server-side CALL handling time); ``stall_report_ms`` > 0 makes it
    log where its event loop was each time it was blocked longer than that.
    """
    lines = ["[server]", f"max_frames_per_s = {max_frames_per_s}",
             f"ping_interval_s = {ping_interval_s}", f"stats_interval_s = {stats_interval_s}",
             f"stall_report_ms = {stall_report_ms}",
             f"max_frames_burst = {max_frames_burst}", f"max_frame_bytes = {max_frame_bytes}",
             "", "[control]", f'strategy = "{strategy}"', f"interval_s = {interval_s}", "",
             "[tokens]", f'accepted = ["{ID_TAG}"]', ""]
    size = site_size if site_size > 0 else max(1, len(ids))
    n_sites = max(1, math.ceil(len(ids) / size))
    for s in range(n_sites):
        lines += ["[[sites]]", f'name = "site{s}"']
        if site_limit_kw is not None:
            lines.append(f"limit_kw = {site_limit_kw}")
        lines.append("")
    for i, ident in enumerate(ids):
        lines += ["[[stations]]", f'id = "{ident}"', f'site = "site{i // size}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the CSMS


class CsmsProcess:
    """One ``evtwin csms serve`` child in its own process group; stderr JSON logs drained.

    Use as a context manager: the process group is killed on any exit.
    """

    #: Log lines kept verbatim (the rest are only counted by ``event``).
    KEEP_LINES = 300

    def __init__(self, config: Path, db: Path, *, port: int = 0) -> None:
        self.config = config
        self.db = db
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.spawned_at = 0.0
        self.listening_at: float | None = None
        self.events: Counter[str] = Counter()
        self.lines: list[dict[str, Any]] = []
        self.listening: dict[str, Any] = {}
        #: Every ``stats`` line (server-side CALL timings), in order.
        self.stats: list[dict[str, Any]] = []
        #: Every ``loop_stall`` line (where the CSMS's event loop was blocked).
        self.stalls: list[dict[str, Any]] = []
        #: The garbage-collector policy's slow ticks and sweeps.
        self.gc: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __enter__(self) -> CsmsProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self) -> None:
        """Spawn the server (same port as before if it ran already)."""
        self.listening_at = None
        self.listening = {}
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evtwin.sim.cli", "csms", "serve", "--host", HOST,
             "--port", str(self.port), "--db", str(self.db), "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, start_new_session=True, preexec_fn=_child_setup)
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"raw": line.rstrip()}
            if not isinstance(entry, dict):
                entry = {"raw": line.rstrip()}
            event = str(entry.get("event", entry.get("level", "raw")))
            with self._lock:
                self.events[event] += 1
                if event == "stats":
                    self.stats.append(entry)
                    continue
                if event in ("loop_stall", "gc_tick", "gc_sweep"):
                    entry["_window"] = len(self.stats)  # the stats window it fell in
                    (self.stalls if event == "loop_stall" else self.gc).append(entry)
                    continue
                if event == "listening" and self.listening_at is None:
                    self.listening_at = time.monotonic()
                    self.listening = entry
                if len(self.lines) < self.KEEP_LINES or entry.get("level") in ("error",
                                                                               "critical"):
                    self.lines.append(entry)

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.proc is not None and self.proc.poll() is None

    def wait_listening(self, timeout_s: float = 60.0) -> float:
        """Wait for the ``listening`` line; return seconds from spawn. Sets ``port``."""
        deadline = time.monotonic() + timeout_s * SCALE
        while time.monotonic() < deadline:
            if self.listening_at is not None:
                self.port = int(self.listening["port"])
                return self.listening_at - self.spawned_at
            if not self.alive():
                raise RuntimeError(f"csms serve exited {self.proc and self.proc.returncode}: "
                                   f"{self.lines[-20:]}")
            time.sleep(0.005)
        raise RuntimeError(f"csms serve did not log 'listening' within {timeout_s} s")

    def mark(self, timeout_s: float = 30.0) -> int:
        """Close the server's statistics window now (SIGUSR1); return the number of
        ``stats`` lines up to and including the one that closed it (-1 if none came)."""
        with self._lock:
            seen = len(self.stats)
        if not self.alive():
            return -1
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s * SCALE
        while time.monotonic() < deadline and self.alive():
            with self._lock:
                for i in range(seen, len(self.stats)):
                    if self.stats[i].get("trigger") == "signal":
                        return i + 1
            time.sleep(0.01)
        return -1

    def url(self, station: str) -> str:
        """The websocket URL of ``station``."""
        return f"ws://{HOST}:{self.port}/ocpp/{station}"

    def rss_kib(self) -> int | None:
        """The server's resident memory in KiB."""
        return rss_kib(self.pid) if self.alive() else None

    def kill9(self) -> None:
        """SIGKILL the server's process group (a crash: nothing is flushed)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop. Returns the exit status."""
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s * SCALE)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode

    def kill(self) -> None:
        """Make sure the server is gone (used in ``finally``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill9()


def first_boot_probe(server: CsmsProcess, station: str, timeout_s: float = 60.0) -> float | None:
    """Seconds from the server's spawn until ``station``'s BootNotification is accepted.

    Tries to connect every 20 ms from now on (call right after ``start()``).
    None if it did not succeed within ``timeout_s``.
    """
    from websockets.sync.client import connect

    deadline = time.monotonic() + timeout_s * SCALE
    while time.monotonic() < deadline:
        if server.listening_at is None:  # the port is not known before the log line
            if not server.alive():
                return None
            time.sleep(0.002)
            continue
        if server.port == 0:
            server.port = int(server.listening["port"])
        try:
            with connect(server.url(station), subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                         open_timeout=5, compression=None) as ws:
                ws.send(json.dumps([2, "probe", "BootNotification", _boot_payload()]))
                while True:
                    frame = json.loads(ws.recv(timeout=10))
                    if frame[0] == 2:
                        ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
                    elif frame[1] == "probe":
                        if frame[0] == 3 and frame[2].get("status") == "Accepted":
                            return time.monotonic() - server.spawned_at
                        return None
        except (OSError, TimeoutError, ValueError):
            time.sleep(0.02)
        except Exception:  # websockets' InvalidStatus, ConnectionClosed: server not ready
            time.sleep(0.02)
    return None


# --------------------------------------------------------------------------- OCPP payloads


def _now() -> str:
    ts = datetime.now(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _boot_payload() -> dict[str, Any]:
    return {"chargingStation": {"vendorName": "evtwin", "model": "loadgen"}, "reason": "PowerUp"}


def _status_payload() -> dict[str, Any]:
    return {"timestamp": _now(), "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}


def _tx_payload(kind: str, tx_id: str, seq: int, energy_wh: float,
                power_w: float) -> dict[str, Any]:
    ts = _now()
    payload: dict[str, Any] = {
        "eventType": kind, "timestamp": ts, "seqNo": seq,
        "triggerReason": "Authorized" if kind == "Started" else "MeterValuePeriodic",
        "transactionInfo": {"transactionId": tx_id},
        "meterValue": [{"timestamp": ts, "sampledValue": [
            {"value": round(energy_wh, 1), "context": "Sample.Periodic",
             "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}},
            {"value": round(power_w, 1), "context": "Sample.Periodic",
             "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}}]}],
    }
    if kind == "Started":
        payload["evse"] = {"id": 1, "connectorId": 1}
        payload["idToken"] = {"idToken": ID_TAG, "type": "ISO14443"}
    return payload


# --------------------------------------------------------------------------- client worker


class StationDown(Exception):
    """The station's connection is gone (closed, refused or timed out)."""


@dataclass
class WorkerSpec:
    """What one client worker process does (sent as JSON on its stdin)."""

    url_base: str
    ids: list[str]
    period_s: float = 10.0
    ramp_per_s: float = 500.0
    call_timeout_s: float = 30.0
    open_timeout_s: float = 60.0
    storm_timeout_s: float = 60.0
    hard_deadline_s: float = 600.0
    retry_s: tuple[float, float] = (0.2, 1.0)
    """Backoff range (s) between reconnect attempts after a failed one."""
    reconnect_delay_s: tuple[float, float] = (0.0, 0.0)
    """Before the first reconnect attempt after a drop: (RetryBackOffWaitMinimum,
    RetryBackOffRandomRange) of OCPP 2.0.1 (B.10, reconnection); a station waits the
    minimum plus a uniformly random part of the range. Set by ``drop MIN RANGE``."""
    fuzz_ids: list[str] = field(default_factory=list)
    fuzz_frames: int = 0
    fuzz_per_s: float = 10.0
    seed: int = 1


class Worker:
    """The stations of one client process, their counters and latency samples."""

    def __init__(self, spec: WorkerSpec, emit: Callable[[dict[str, Any]], None]) -> None:
        self.spec = spec
        self.emit = emit
        self.rng = random.Random(spec.seed)
        self.phase = "ramp"
        self.latency_ms: dict[str, list[float]] = {}
        self.latency_by_action: dict[str, list[float]] = {}
        self.errors: Counter[str] = Counter()
        self.calls = 0
        self.answered = 0
        self.stopping = asyncio.Event()
        self.stations = [Station(self, ident) for ident in spec.ids]
        self.fuzzers = [Fuzzer(self, ident, i) for i, ident in enumerate(spec.fuzz_ids)]
        self.started = 0
        self.start_failed = 0
        self.loop_lag_ms: list[float] = []
        self.loop_lag_by_phase: dict[str, list[float]] = {}
        self.watch_at: float | None = None
        self.fuzz_stats: Counter[str] = Counter()

    def record(self, action: str, ms: float) -> None:
        """One answered CALL's round trip."""
        self.latency_ms.setdefault(self.phase, []).append(round(ms, 3))
        if self.phase in ("steady", "fuzz"):
            self.latency_by_action.setdefault(action, []).append(round(ms, 3))

    async def run(self) -> dict[str, Any]:
        """Run until ``stop`` or the hard deadline; return the report."""
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[str] = asyncio.Queue()

        def read_stdin() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, line.strip())
            loop.call_soon_threadsafe(commands.put_nowait, "stop")

        threading.Thread(target=read_stdin, daemon=True).start()
        tasks = [asyncio.create_task(s.run(i / self.spec.ramp_per_s))
                 for i, s in enumerate(self.stations)]
        fuzz_tasks = [asyncio.create_task(f.run()) for f in self.fuzzers]
        tasks += fuzz_tasks
        if fuzz_tasks:
            tasks.append(asyncio.create_task(self._fuzz_watch(fuzz_tasks)))
        tasks.append(asyncio.create_task(self._lag_monitor()))
        tasks.append(asyncio.create_task(self._ready_watch()))
        # The CSMS's own garbage-collector policy: without it the clients' full
        # collections over thousands of connections (hundreds of ms each) are
        # counted as the server's latency.
        gc_policy = asyncio.create_task(GCPolicy().run())
        deadline = loop.time() + self.spec.hard_deadline_s
        try:
            while not self.stopping.is_set():
                try:
                    cmd = await asyncio.wait_for(commands.get(), deadline - loop.time())
                except TimeoutError:
                    self.errors["hard_deadline"] += 1
                    break
                if cmd == "stop":
                    break
                if cmd.startswith("phase "):
                    self.phase = cmd.split(" ", 1)[1]
                elif cmd == "watch":
                    self._start_watch()
                elif cmd == "drop" or cmd.startswith("drop "):
                    # "drop MIN RANGE": reconnect with OCPP's back-off (see WorkerSpec).
                    args = [float(a) for a in cmd.split()[1:3]]
                    self.spec.reconnect_delay_s = (args[0], args[1]) if len(args) == 2 \
                        else (0.0, 0.0)
                    self._start_watch()
                    for s in self.stations:
                        s.drop()
        finally:
            gc_policy.cancel()
            self.stopping.set()
            for s in self.stations:
                s.wake.set()
            for f in self.fuzzers:
                f.wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
            for t in tasks:
                t.cancel()
        return self.report()

    def _start_watch(self) -> None:
        self.watch_at = time.monotonic()
        for s in self.stations:
            s.back_at = None
            s.was_up = s.ws is not None
        asyncio.get_running_loop().create_task(self._storm_watch(self.watch_at))

    async def _storm_watch(self, since: float) -> None:
        """Report once every station that was up is back (booted), or at the storm timeout."""
        timeout = self.spec.storm_timeout_s
        watched = [s for s in self.stations if s.was_up]
        while not self.stopping.is_set():
            back = [s for s in watched if s.back_at is not None and s.back_at >= since]
            if len(back) == len(watched) or time.monotonic() - since > timeout:
                break
            await asyncio.sleep(0.05)
        back_s = sorted(s.back_at - since for s in watched
                        if s.back_at is not None and s.back_at >= since)
        self.emit({"event": "storm", "watched": len(watched), "back": len(back_s),
                   "back_s": [round(b, 3) for b in back_s],
                   "within_timeout": sum(1 for b in back_s if b <= timeout),
                   "connect_failures": self.errors["storm_connect_failed"]})

    async def _ready_watch(self) -> None:
        """Tell the parent when every station has started its transaction (or failed to)."""
        while not self.stopping.is_set():
            if self.started + self.start_failed >= len(self.stations):
                break
            await asyncio.sleep(0.1)
        self.emit({"event": "ready", "started": self.started, "failed": self.start_failed})

    async def _fuzz_watch(self, fuzz_tasks: list[asyncio.Task[None]]) -> None:
        """Tell the parent when every fuzzer has sent its frames."""
        await asyncio.gather(*fuzz_tasks, return_exceptions=True)
        self.emit({"event": "fuzz_done", "sent": self.fuzz_stats["sent"]})

    async def _lag_monitor(self) -> None:
        """The loop's own lateness: if it is large, the clients are the bottleneck."""
        while not self.stopping.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.1)
            lag = round((time.perf_counter() - t - 0.1) * 1000, 2)
            self.loop_lag_ms.append(lag)
            self.loop_lag_by_phase.setdefault(self.phase, []).append(lag)

    def report(self) -> dict[str, Any]:
        """Everything the parent aggregates (raw samples, so workers merge exactly)."""
        acked = {s.ident: s.acked for s in self.stations}
        return {"event": "report", "latency_ms": self.latency_ms,
                "latency_by_action": self.latency_by_action, "errors": dict(self.errors),
                "calls": self.calls, "answered": self.answered, "started": self.started,
                "start_failed": self.start_failed, "acked": acked,
                "unacked_pending": sum(1 for s in self.stations if s.pending is not None),
                "loop_lag_ms": self.loop_lag_ms, "loop_lag_by_phase": self.loop_lag_by_phase,
                "fuzz": dict(self.fuzz_stats),
                "connects": sum(s.connects for s in self.stations)}


class Connection:
    """A raw OCPP-J client connection: CALLs with futures, CSMS CALLs answered Accepted."""

    def __init__(self, ws: Any, worker: Worker, on_close: Callable[[], None]) -> None:
        self.ws = ws
        self.worker = worker
        self.pending: dict[str, asyncio.Future[tuple[float, list[Any]]]] = {}
        self.n = 0
        self.closed = False
        self.aborted = False
        self._on_close = on_close
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                t = time.perf_counter()
                try:
                    frame = json.loads(message)
                except ValueError:
                    self.worker.errors["bad_frame_from_csms"] += 1
                    continue
                if frame[0] == 2:
                    await self.ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
                    self.worker.fuzz_stats["csms_calls_answered"] += 1
                else:
                    fut = self.pending.pop(frame[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result((t, frame))
        except Exception:  # ConnectionClosed and friends: the station notices below
            pass
        finally:
            self.closed = True
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(StationDown("closed"))
            self.pending.clear()
            self._on_close()

    async def call(self, action: str, payload: dict[str, Any], timeout_s: float) -> list[Any]:
        """Send a CALL and return its CALLRESULT or CALLERROR frame; record the latency.

        Raises StationDown if the connection closes or the answer is late.
        """
        if self.closed:
            raise StationDown("closed")
        self.n += 1
        uid = f"{self.n}"
        fut: asyncio.Future[tuple[float, list[Any]]] = asyncio.get_running_loop().create_future()
        self.pending[uid] = fut
        text = json.dumps([2, uid, action, payload], separators=(",", ":"))
        self.worker.calls += 1
        t0 = time.perf_counter()
        try:
            await self.ws.send(text)
            t_answer, frame = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            self.pending.pop(uid, None)
            self.worker.errors[f"timeout:{action}"] += 1
            raise StationDown("timeout") from None
        except StationDown:
            self.worker.errors[f"{self._lost()}:{action}"] += 1
            raise
        except Exception as exc:  # ConnectionClosed on send
            self.pending.pop(uid, None)
            self.worker.errors[f"{self._lost()}:{action}"] += 1
            raise StationDown(type(exc).__name__) from None
        self.worker.answered += 1
        self.worker.record(action, (t_answer - t0) * 1000.0)
        if frame[0] == 4:
            self.worker.errors[f"callerror:{action}:{frame[2]}"] += 1
        return list(frame)

    def _lost(self) -> str:
        """Error kind of a CALL whose connection went away: ours (storm) or not."""
        return "dropped_by_storm" if self.aborted else "closed_in_call"

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (a network loss)."""
        self.aborted = True
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def close(self) -> None:
        """Close politely."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        self.reader.cancel()


async def open_connection(url: str, worker: Worker, on_close: Callable[[], None],
                          open_timeout_s: float) -> Connection:
    """Connect with the 2.0.1 subprotocol and no compression (cheap clients)."""
    from websockets.asyncio.client import connect
    from websockets.typing import Subprotocol

    try:
        ws = await connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)], compression=None,
                           open_timeout=open_timeout_s, ping_interval=None, close_timeout=5,
                           max_queue=16)
    except Exception as exc:
        raise StationDown(type(exc).__name__) from None
    if ws.subprotocol != SUBPROTOCOL:
        await ws.close()
        raise StationDown("subprotocol")
    return Connection(ws, worker, on_close)


class Station:
    """One station: boots, starts a transaction, sends meter values; reconnects when dropped.

    A TransactionEvent that got no CALLRESULT is kept (``pending``) and sent again
    after reconnecting, with the same seqNo, like a real station's offline queue.
    """

    def __init__(self, worker: Worker, ident: str) -> None:
        self.w = worker
        self.ident = ident
        self.conn: Connection | None = None
        self.wake = asyncio.Event()
        self.tx_id = f"TX-{ident}"
        self.seq = 0
        self.energy_wh = 0.0
        self.power_w = 7000.0 + 4000.0 * worker.rng.random()
        self.tx_started = False
        self.pending: dict[str, Any] | None = None
        self.acked: list[int] = []
        self.connects = 0
        self.back_at: float | None = None
        self.was_up = False
        self.counted_start = False
        self.reconnect_wait = False

    @property
    def ws(self) -> Connection | None:
        """The open connection, if any."""
        return self.conn if self.conn is not None and not self.conn.closed else None

    def drop(self) -> None:
        """Lose the connection now (storm); reconnect after the spec's back-off."""
        if self.conn is not None:
            self.reconnect_wait = True
            self.conn.abort()

    def _closed(self) -> None:
        self.wake.set()

    async def _up(self) -> None:
        """Connect and boot; start the transaction or resend what is pending."""
        spec = self.w.spec
        self.conn = await open_connection(f"{spec.url_base}/{self.ident}", self.w, self._closed,
                                          spec.open_timeout_s)
        self.connects += 1
        r = await self.conn.call("BootNotification", _boot_payload(), spec.call_timeout_s)
        if r[0] != 3 or r[2].get("status") != "Accepted":
            raise StationDown("boot not accepted")
        self.back_at = time.monotonic()
        await self.conn.call("StatusNotification", _status_payload(), spec.call_timeout_s)
        if not self.tx_started:
            self.pending = _tx_payload("Started", self.tx_id, self.seq, self.energy_wh,
                                       self.power_w)
        await self._flush()
        self.tx_started = True
        if not self.counted_start:
            self.counted_start = True
            self.w.started += 1

    async def _flush(self) -> None:
        """Send the pending TransactionEvent until it is answered."""
        assert self.conn is not None
        if self.pending is None:
            return
        r = await self.conn.call("TransactionEvent", self.pending, self.w.spec.call_timeout_s)
        if r[0] == 3:
            self.acked.append(int(self.pending["seqNo"]))
        self.pending = None
        self.seq += 1

    async def _sleep(self, seconds: float) -> None:
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), max(0.0, seconds))

    async def run(self, start_delay_s: float) -> None:
        """The station's life until the worker stops."""
        spec = self.w.spec
        await self._sleep(start_delay_s)
        next_update = time.monotonic() + spec.period_s * (0.5 + self.w.rng.random())
        failures = 0
        while not self.w.stopping.is_set():
            if self.ws is None and self.reconnect_wait:
                # Dropped: OCPP's back-off before the first attempt (0 when all at once).
                self.reconnect_wait = False
                low, span = spec.reconnect_delay_s
                until = time.monotonic() + low + self.w.rng.uniform(0.0, span)
                while not self.w.stopping.is_set() and time.monotonic() < until:
                    await self._sleep(until - time.monotonic())
                continue
            if self.ws is None:
                try:
                    await self._up()
                    failures = 0
                except StationDown as exc:
                    failures += 1
                    if self.w.watch_at is not None and self.was_up:
                        self.w.errors["storm_connect_failed"] += 1
                    self.w.errors[f"up_failed:{exc}"] += 1
                    if not self.counted_start and failures >= 3:
                        self.counted_start = True
                        self.w.start_failed += 1
                    if self.conn is not None:
                        await self.conn.close()
                    await self._sleep(self.w.rng.uniform(*spec.retry_s) * min(failures, 5))
                    continue
            now = time.monotonic()
            if now < next_update:
                await self._sleep(next_update - now)
                continue
            next_update += spec.period_s
            if next_update < now:  # far behind (a long outage): do not burst
                next_update = now + spec.period_s
            self.energy_wh += self.power_w * spec.period_s / 3600.0
            if self.pending is None:
                self.pending = _tx_payload("Updated", self.tx_id, self.seq, self.energy_wh,
                                           self.power_w)
            with contextlib.suppress(StationDown):
                await self._flush()
        if self.conn is not None:
            await self.conn.close()


#: Garbage for the fuzzers, each a function of a seeded Random returning a text or bytes frame.
def _fuzz_frames() -> list[Callable[[random.Random], str | bytes]]:
    def rand_text(r: random.Random) -> str:
        return "".join(chr(r.randint(1, 0x2FF)) for _ in range(r.randint(0, 200)))

    def rand_bytes(r: random.Random) -> bytes:
        return bytes(r.getrandbits(8) for _ in range(r.randint(1, 200)))

    def truncated(r: random.Random) -> str:
        frame = json.dumps([2, "f", "TransactionEvent", _tx_payload("Updated", "TX-F", 1, 5, 5)])
        return frame[: r.randint(1, len(frame) - 1)]

    def wrong_shape(r: random.Random) -> str:
        return json.dumps(r.choice([{}, [], [2], [2, 1, 2, 3], [3, "x"], [4, "x", "y"], None, 7,
                                    "str", [2, "u", None, {}], [2, "u", "Heartbeat", []],
                                    [9, "u", "Heartbeat", {}], [2, "u" * 100, "Heartbeat", {}],
                                    [-1], [2.5, "u", "Heartbeat", {}]]))

    def bad_payload(r: random.Random) -> str:
        action = r.choice(["BootNotification", "TransactionEvent", "StatusNotification",
                           "MeterValues", "Heartbeat", "Authorize", "NotifyEVChargingNeeds",
                           "SecurityEventNotification", "Nope"])
        junk: Any = r.choice([{"a": 1}, {"seqNo": "x"}, {"eventType": "Started"}, [1, 2],
                              {"meterValue": [{"sampledValue": [{"value": "NaN"}]}]},
                              {"chargingStation": {"vendorName": "x" * 500}}, None, 1e308])
        return json.dumps([2, f"u{r.randint(0, 10**6)}", action, junk])

    def unsolicited_result(r: random.Random) -> str:
        return json.dumps([r.choice([3, 4]), f"nope{r.randint(0, 99)}", {}])

    def deep(r: random.Random) -> str:
        depth = r.choice([100, 1000, 20000])  # 20000 levels: RecursionError in json.loads
        return "[" * depth + "]" * depth

    def oversized(r: random.Random) -> str:
        return json.dumps([2, "big", "DataTransfer", {"vendorId": "v", "data": "x" * 70000}])

    def valid_call(r: random.Random) -> str:  # sanity: not everything is garbage
        return json.dumps([2, f"ok{r.randint(0, 10**6)}", "Heartbeat", {}])

    return [rand_text, rand_bytes, truncated, wrong_shape, bad_payload, unsolicited_result,
            deep, oversized, valid_call]


class Fuzzer:
    """A connection that sends garbage frames at a modest rate, reconnecting when closed."""

    def __init__(self, worker: Worker, ident: str, index: int) -> None:
        self.w = worker
        self.ident = ident
        self.rng = random.Random(worker.spec.seed * 1000 + index)
        self.wake = asyncio.Event()

    async def run(self) -> None:
        """Send ``fuzz_frames`` frames (bounded), answering nothing properly."""
        from websockets.asyncio.client import connect
        from websockets.typing import Subprotocol

        spec = self.w.spec
        kinds = _fuzz_frames()
        sent = 0
        attempts = 0
        while sent < spec.fuzz_frames and not self.w.stopping.is_set() and attempts < 200:
            attempts += 1
            try:
                async with connect(f"{spec.url_base}/{self.ident}", compression=None,
                                   subprotocols=[Subprotocol(SUBPROTOCOL)],
                                   open_timeout=spec.open_timeout_s, ping_interval=None,
                                   close_timeout=2, max_size=2**22) as ws:
                    while sent < spec.fuzz_frames and not self.w.stopping.is_set():
                        make = self.rng.choice(kinds)
                        await ws.send(make(self.rng))
                        sent += 1
                        self.w.fuzz_stats["sent"] += 1
                        self.w.fuzz_stats[f"kind:{make.__name__}"] += 1
                        with contextlib.suppress(TimeoutError):
                            reply = await asyncio.wait_for(ws.recv(), 1.0)
                            self.w.fuzz_stats["replies"] += 1
                            with contextlib.suppress(ValueError, TypeError, IndexError,
                                                     KeyError):
                                frame = json.loads(reply)
                                if frame[0] == 4:
                                    self.w.fuzz_stats[f"callerror:{frame[2]}"] += 1
                                elif frame[0] == 2:
                                    await ws.send(json.dumps([4, frame[1], "NotSupported",
                                                              "fuzzer", {}]))
                        await asyncio.sleep(1.0 / spec.fuzz_per_s)
            except Exception as exc:  # closed by the server (1009, 1008, ...) or refused
                code = getattr(getattr(exc, "rcvd", None), "code", None)
                self.w.fuzz_stats[f"closed:{code or type(exc).__name__}"] += 1
                await asyncio.sleep(0.2)


def worker_main() -> int:
    """Entry point of a client worker process: spec on stdin, JSON lines out."""
    raise_nofile_limit()
    spec_data = json.loads(sys.stdin.readline())
    spec_data["retry_s"] = tuple(spec_data.get("retry_s", (0.2, 1.0)))
    spec = WorkerSpec(**spec_data)
    out_lock = threading.Lock()

    def emit(obj: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
            sys.stdout.flush()

    report = asyncio.run(Worker(spec, emit).run())
    emit(report)
    return 0


# --------------------------------------------------------------------------- parent side


class WorkerProcess:
    """A client worker child: send it commands, collect its JSON events."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, preexec_fn=_child_setup)
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        self.send(json.dumps(asdict(spec)))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if len(self.stderr) < 200:
                self.stderr.append(line.rstrip())

    def send(self, line: str) -> None:
        """One command line (ignored if the worker is gone)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def event(self, name: str, after: int = 0) -> dict[str, Any] | None:
        """The first event ``name`` at index >= ``after``, if it arrived."""
        for e in self.events[after:]:
            if e.get("event") == name:
                return e
        return None

    def kill(self) -> None:
        """Kill the worker's process group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def workers_for(url_base: str, ids: Sequence[str], n_workers: int, **spec: Any
                ) -> Iterator[list[WorkerProcess]]:
    """Start ``n_workers`` worker processes sharing ``ids``; killed on exit."""
    n_workers = max(1, min(n_workers, len(ids) or 1))
    chunks = [list(ids[i::n_workers]) for i in range(n_workers)]
    ramp = float(spec.pop("ramp_per_s", 500.0)) / n_workers
    fuzz_ids: list[str] = list(spec.pop("fuzz_ids", []))
    procs: list[WorkerProcess] = []
    try:
        for i, chunk in enumerate(chunks):
            procs.append(WorkerProcess(WorkerSpec(
                url_base=url_base, ids=chunk, ramp_per_s=ramp, seed=i + 1,
                fuzz_ids=fuzz_ids if i == 0 else [], **spec)))
        yield procs
    finally:
        for p in procs:
            p.kill()


def wait_all(procs: Sequence[WorkerProcess], name: str, timeout_s: float,
             after: Sequence[int] | None = None) -> list[dict[str, Any] | None]:
    """Wait until every worker emitted ``name`` (or the timeout); return the events."""
    deadline = time.monotonic() + timeout_s
    marks = list(after) if after is not None else [0] * len(procs)
    while True:
        got = [p.event(name, m) for p, m in zip(procs, marks, strict=True)]
        if all(g is not None for g in got) or time.monotonic() > deadline:
            return got
        if any(g is None and p.proc.poll() is not None for g, p in zip(got, procs, strict=True)):
            return got
        time.sleep(0.05)


def broadcast(procs: Sequence[WorkerProcess], line: str) -> list[int]:
    """Send a command to every worker; return their event counts before it (for wait_all)."""
    marks = [len(p.events) for p in procs]
    for p in procs:
        p.send(line)
    return marks


def finish(procs: Sequence[WorkerProcess], timeout_s: float = 60.0,
           notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Stop every worker and collect their final reports (a missing one is noted,
    with the end of the worker's stderr)."""
    marks = broadcast(procs, "stop")
    reports = wait_all(procs, "report", timeout_s, marks)
    for i, (r, p) in enumerate(zip(reports, procs, strict=True)):
        if r is None and notes is not None:
            tail = " | ".join(p.stderr[-3:]) or "no stderr"
            notes.append(f"worker {i} sent no report (exit {p.proc.poll()}): {tail}")
    return [r for r in reports if r is not None]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of already sorted values; NaN if empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


@dataclass
class Latency:
    """Round trips in ms."""

    n: int = 0
    p50: float = math.nan
    p95: float = math.nan
    p99: float = math.nan
    max: float = math.nan

    @classmethod
    def of(cls, samples: Sequence[float]) -> Latency:
        """Summary of raw samples."""
        s = sorted(samples)
        return cls(len(s), percentile(s, 50), percentile(s, 95), percentile(s, 99),
                   s[-1] if s else math.nan)


@dataclass
class ServerLatency:
    """The CSMS's own figures for a phase, from its ``stats`` lines: CALL handling time
    (frame received until the answer is written; ms, to one bucket of ~19 %),
    answers per second and its event-loop lag (ms; lag is time frames wait before
    any handler runs, which the handling time does not include)."""

    n: int = 0
    p50: float = math.nan
    p99: float = math.nan
    max: float = math.nan
    answers_per_s: float = math.nan
    loop_lag_p99: float = math.nan
    """The worst of the windows' p99 loop lag."""
    loop_lag_max: float = math.nan
    windows: int = 0

    @classmethod
    def of(cls, lines: Sequence[dict[str, Any]]) -> ServerLatency:
        """Merge the histograms of consecutive ``stats`` lines."""
        from evtwin.csms.shell import CallStats

        hist: Counter[int] = Counter()
        out = cls(windows=len(lines))
        window_s = 0.0

        def worst(key: str) -> float:
            values = [float(line[key]) for line in lines if line.get(key) is not None]
            return max(values) if values else math.nan

        for line in lines:
            hist.update({int(k): int(v) for k, v in line.get("hist", {}).items()})
            out.n += int(line.get("calls", 0))
            window_s += float(line.get("window_s", 0.0))
        out.max = worst("max_ms")
        out.loop_lag_p99 = worst("loop_lag_p99_ms")
        out.loop_lag_max = worst("loop_lag_max_ms")
        # A bucket's upper edge may lie above the largest time seen: capped at the max.
        out.p50 = min(CallStats.percentile_ms(hist, 50), out.max)
        out.p99 = min(CallStats.percentile_ms(hist, 99), out.max)
        if window_s > 0:
            out.answers_per_s = out.n / window_s
        return out


@dataclass
class LoadReport:
    """The figures of one load run (times in s, latencies in ms, memory in KiB)."""

    stations: int
    period_s: float
    workers: int
    startup_listening_s: float = math.nan
    startup_first_boot_s: float = math.nan
    ramp_s: float = math.nan
    started: int = 0
    start_failed: int = 0
    latency: dict[str, Latency] = field(default_factory=dict)
    latency_by_action: dict[str, Latency] = field(default_factory=dict)
    calls: int = 0
    answered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    rss_idle_kib: int | None = None
    rss_loaded_kib: int | None = None
    storm_dropped: int = 0
    storm_back: int = 0
    storm_back_within_timeout: int = 0
    storm_all_back_s: float = math.nan
    storm_p50_back_s: float = math.nan
    storm_connect_failures: int = 0
    spec_storm: Storm | None = None
    """The second storm, with OCPP's reconnect back-off (see ``run_load``)."""
    client_lag_p99_ms: float = math.nan
    client_lag_max_ms: float = math.nan
    client_lag_steady_p99_ms: float = math.nan
    client_lag_steady_max_ms: float = math.nan
    steady_s: float = math.nan
    """How long the steady phase lasted (s)."""
    server: dict[str, ServerLatency] = field(default_factory=dict)
    """The CSMS's own figures per phase (``steady``, ``storm``), from its stats lines."""
    server_alive: bool = True
    server_warnings: int = 0
    notes: list[str] = field(default_factory=list)
    #: Where the CSMS's event loop was blocked (see :func:`stall_summary`).
    stalls: list[str] = field(default_factory=list)

    @property
    def kib_per_station(self) -> float:
        """Server memory per connected station with an open transaction."""
        if self.rss_idle_kib is None or self.rss_loaded_kib is None or not self.started:
            return math.nan
        return (self.rss_loaded_kib - self.rss_idle_kib) / self.started

    @property
    def steady(self) -> Latency:
        """Latency of every CALL in the steady phase."""
        return self.latency.get("steady", Latency())

    @property
    def steady_answers_per_s(self) -> float:
        """CALLRESULTs the clients got per second in the steady phase."""
        if not self.steady.n or not self.steady_s or math.isnan(self.steady_s):
            return math.nan
        return self.steady.n / self.steady_s

    @property
    def server_steady(self) -> ServerLatency:
        """The CSMS's own figures for the steady phase."""
        return self.server.get("steady", ServerLatency())


def merge_reports(report: LoadReport, parts: Sequence[dict[str, Any]]) -> None:
    """Fold the workers' final reports into ``report``."""
    lat: dict[str, list[float]] = {}
    by_action: dict[str, list[float]] = {}
    errors: Counter[str] = Counter()
    lag: list[float] = []
    steady_lag: list[float] = []
    for part in parts:
        for phase, samples in part["latency_ms"].items():
            lat.setdefault(phase, []).extend(samples)
        for action, samples in part["latency_by_action"].items():
            by_action.setdefault(action, []).extend(samples)
        errors.update(part["errors"])
        report.calls += part["calls"]
        report.answered += part["answered"]
        report.started += part["started"]
        report.start_failed += part["start_failed"]
        lag.extend(part["loop_lag_ms"])
        steady_lag.extend(part.get("loop_lag_by_phase", {}).get("steady", []))
    report.latency = {k: Latency.of(v) for k, v in lat.items()}
    report.latency_by_action = {k: Latency.of(v) for k, v in by_action.items()}
    report.errors = dict(errors)
    lag.sort()
    report.client_lag_p99_ms = percentile(lag, 99)
    report.client_lag_max_ms = lag[-1] if lag else math.nan
    steady_lag.sort()
    report.client_lag_steady_p99_ms = percentile(steady_lag, 99)
    report.client_lag_steady_max_ms = steady_lag[-1] if steady_lag else math.nan


@dataclass
class Storm:
    """One reconnect storm's figures (times in s from the drop)."""

    dropped: int = 0
    back: int = 0
    back_within_timeout: int = 0
    all_back_s: float = math.nan
    p50_back_s: float = math.nan
    connect_failures: int = 0

    @classmethod
    def of(cls, storms: Sequence[dict[str, Any] | None], notes: list[str]) -> Storm:
        """Fold the workers' storm events (a missing one is noted)."""
        out = cls()
        back: list[float] = []
        for s in storms:
            if s is None:
                notes.append("a worker did not report its storm")
                continue
            out.dropped += s["watched"]
            out.back += s["back"]
            out.back_within_timeout += s["within_timeout"]
            out.connect_failures += s["connect_failures"]
            back.extend(s["back_s"])
        back.sort()
        if back and out.back == out.dropped:
            out.all_back_s = back[-1]
        out.p50_back_s = percentile(back, 50)
        return out


def merge_storm(report: LoadReport, storms: Sequence[dict[str, Any] | None]) -> None:
    """Fold the workers' events of the all-at-once storm into ``report``."""
    st = Storm.of(storms, report.notes)
    report.storm_dropped = st.dropped
    report.storm_back = st.back
    report.storm_back_within_timeout = st.back_within_timeout
    report.storm_all_back_s = st.all_back_s
    report.storm_p50_back_s = st.p50_back_s
    report.storm_connect_failures = st.connect_failures


def default_workers(stations: int) -> int:
    """Client processes: one per 5,000 stations, at most the CPUs (the CSMS needs one too)."""
    return max(1, min(os.cpu_count() or 1, math.ceil(stations / 5000)))


def run_load(tmp: Path, stations: int, *, period_s: float = 10.0, steady_s: float = 60.0,
             ramp_per_s: float = 500.0, workers: int | None = None, storm: bool = True,
             storm_timeout_s: float = 60.0,
             spec_storm_backoff_s: tuple[float, float] | None = (0.0, 30.0),
             strategy: str = "uncontrolled",
             site_size: int = 0, site_limit_kw: float | None = None,
             ping_interval_s: float = 20.0, stall_report_ms: float = 0.0,
             log: Callable[[str], None] = print) -> LoadReport:
    """Start a CSMS with ``stations`` stations, load it, storm it, and report.

    Bounded: the ramp waits at most ``3 * stations / ramp_per_s + 120`` s, the
    steady phase ``steady_s``, the storm ``storm_timeout_s`` (+30 s slack).
    The CSMS's own CALL timings are read from its ``stats`` lines, with a window
    closed (SIGUSR1) at each phase boundary. ``ping_interval_s``: the CSMS's
    websocket pings (0: none). ``stall_report_ms`` > 0: the CSMS reports where its
    event loop was blocked longer than that, summarised in ``report.stalls``.
    """
    n_workers = workers or default_workers(stations)
    report = LoadReport(stations=stations, period_s=period_s, workers=n_workers)
    problem = fd_problem(stations, n_workers)
    soft, hard = raise_nofile_limit()
    if problem:
        report.notes.append(problem)
        log(f"WARNING: {problem}")
    ids = station_ids(stations)
    probe = "PROBE"
    config = write_config(tmp / f"csms-{stations}.toml", [*ids, probe], strategy=strategy,
                          site_size=site_size, site_limit_kw=site_limit_kw,
                          interval_s=period_s, ping_interval_s=ping_interval_s,
                          stall_report_ms=stall_report_ms)
    db = tmp / f"csms-{stations}.sqlite"
    with CsmsProcess(config, db) as server:
        first_boot = first_boot_probe(server, probe)
        report.startup_listening_s = server.wait_listening()
        report.startup_first_boot_s = first_boot if first_boot is not None else math.nan
        time.sleep(1.0)  # let the start-up garbage settle before the idle reading
        report.rss_idle_kib = server.rss_kib()
        log(f"[{stations}] csms up: listening after {report.startup_listening_s:.2f} s, "
            f"first boot after {report.startup_first_boot_s:.2f} s, "
            f"RSS {report.rss_idle_kib} KiB; fd limit {soft}/{hard}")
        url_base = f"ws://{HOST}:{server.port}/ocpp"
        ramp_timeout = 3.0 * stations / ramp_per_s + 120.0
        with workers_for(url_base, ids, n_workers, period_s=period_s, ramp_per_s=ramp_per_s,
                         storm_timeout_s=storm_timeout_s,
                         hard_deadline_s=ramp_timeout + steady_s + 2 * storm_timeout_s + 300.0
                         ) as procs:
            t0 = time.monotonic()
            ready = wait_all(procs, "ready", ramp_timeout * SCALE)
            report.ramp_s = time.monotonic() - t0
            if any(r is None for r in ready):
                report.notes.append(f"ramp not finished after {report.ramp_s:.0f} s")
            up = sum(r["started"] for r in ready if r)
            log(f"[{stations}] ramp: {up} stations in transaction after {report.ramp_s:.1f} s")
            broadcast(procs, "phase steady")
            steady_from = server.mark()
            t_steady = time.monotonic()
            end = t_steady + steady_s
            while time.monotonic() < end and server.alive():
                time.sleep(0.2)
            broadcast(procs, "phase steady-end")
            steady_to = server.mark()
            report.steady_s = time.monotonic() - t_steady
            if 0 <= steady_from < steady_to:
                report.server["steady"] = ServerLatency.of(server.stats[steady_from:steady_to])
            else:
                report.notes.append("no server stats for the steady phase")
            report.rss_loaded_kib = server.rss_kib()
            log(f"[{stations}] steady {steady_s:.0f} s done; RSS {report.rss_loaded_kib} KiB")
            if storm and server.alive():
                broadcast(procs, "phase storm")
                storm_from = server.mark()
                marks = broadcast(procs, "drop")
                storms = wait_all(procs, "storm", (storm_timeout_s + 30.0) * SCALE, marks)
                storm_to = server.mark()
                if 0 <= storm_from < storm_to:
                    report.server["storm"] = ServerLatency.of(server.stats[storm_from:storm_to])
                merge_storm(report, storms)
                log(f"[{stations}] storm: {report.storm_back}/{report.storm_dropped} back, "
                    f"all after {report.storm_all_back_s:.1f} s")
                broadcast(procs, "phase after")
                time.sleep(min(period_s, 10.0))
                if spec_storm_backoff_s is not None and server.alive():
                    # Real stations reconnect after RetryBackOffWaitMinimum plus a
                    # random part of RetryBackOffRandomRange (OCPP 2.0.1 B.10).
                    wait_min, random_range = spec_storm_backoff_s
                    marks = broadcast(procs, f"drop {wait_min} {random_range}")
                    report.spec_storm = Storm.of(
                        wait_all(procs, "storm", (storm_timeout_s + 30.0) * SCALE, marks),
                        report.notes)
                    log(f"[{stations}] storm with back-off {wait_min:g} + 0-{random_range:g} s: "
                        f"{report.spec_storm.back}/{report.spec_storm.dropped} back, all after "
                        f"{report.spec_storm.all_back_s:.1f} s")
                    time.sleep(min(period_s, 10.0))
            merge_reports(report, finish(procs, notes=report.notes))
        report.server_alive = server.alive()
        report.server_warnings = sum(n for e, n in server.events.items()
                                     if e in ("warning", "error", "critical", "refused")
                                     ) - len(server.stalls)
        server.stop()
        steady_stalls = [e for e in server.stalls
                         if steady_from <= e["_window"] < steady_to]
        report.stalls = stall_summary(steady_stalls)
        if server.stalls:
            dump = tmp / f"stalls-{stations}.json"
            dump.write_text(json.dumps({"stalls": server.stalls, "stats": server.stats,
                                        "gc": server.gc, "lines": server.lines},
                                       indent=1), encoding="utf-8")
            log(f"[{stations}] {len(server.stalls)} loop stalls in all phases: {dump}")
        for line in report.stalls:
            log(f"[{stations}] steady {line}")
    return report


def stall_summary(stalls: Sequence[dict[str, Any]], top: int = 6) -> list[str]:
    """The CSMS's ``loop_stall`` lines folded by the code the loop was in (its
    innermost frame in evtwin, else the innermost frame), longest total first."""
    if not stalls:
        return []
    total: dict[str, float] = {}
    count: Counter[str] = Counter()
    for entry in stalls:
        stacks = entry.get("stacks") or []
        frames: list[str] = stacks[0]["frames"] if stacks else []
        ours = [f for f in frames if "/evtwin/" in f or "/csms/" in f or "/ocppj/" in f]
        where = (ours or frames or ["unknown"])[-1]
        total[where] = total.get(where, 0.0) + float(entry.get("ms", 0.0))
        count[where] += 1
    out = [f"loop stalls: {len(stalls)}, {sum(total.values()):.0f} ms in all, longest "
           f"{max(float(e.get('ms', 0.0)) for e in stalls):.0f} ms"]
    for where, ms in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {ms:8.0f} ms in {count[where]:4d} stalls at {where}")
    return out


def measure_startup(tmp: Path, stations: int, runs: int = 5) -> list[float]:
    """Seconds from spawn to the ``listening`` line of ``csms serve`` with a config
    of ``stations`` stations and a new database, ``runs`` times, one after another
    on a quiet machine (nothing else of the bench is running)."""
    config = write_config(tmp / f"startup-{stations}.toml", station_ids(stations))
    out: list[float] = []
    for i in range(runs):
        with CsmsProcess(config, tmp / f"startup-{stations}-{i}.sqlite") as server:
            out.append(server.wait_listening())
            server.stop()
    return out


def _fmt(v: float | int | None, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def format_report(reports: Sequence[LoadReport], title: str = "CSMS load") -> str:
    """A plain-text figures table, one column per run."""
    rows: list[tuple[str, list[str]]] = [
        ("stations", [_fmt(r.stations, ",d") for r in reports]),
        ("TransactionEvent period (s)", [_fmt(r.period_s, "g") for r in reports]),
        ("client worker processes", [str(r.workers) for r in reports]),
        ("start-up: spawn -> listening (s)", [_fmt(r.startup_listening_s, ".2f")
                                              for r in reports]),
        ("start-up: spawn -> 1st Boot accepted (s)", [_fmt(r.startup_first_boot_s, ".2f")
                                                      for r in reports]),
        ("ramp: all in transaction (s)", [_fmt(r.ramp_s) for r in reports]),
        ("stations in transaction / failed", [f"{r.started:,} / {r.start_failed:,}"
                                              for r in reports]),
    ]
    # End to end: what the client stations measured (send -> CALLRESULT read),
    # including their own loop's lag; server-side: the CSMS's stats lines.
    for phase in ("ramp", "steady", "storm", "after"):
        if any(phase in r.latency for r in reports):
            rows.append((f"end-to-end {phase}: n", [
                _fmt(r.latency.get(phase, Latency()).n, ",d") for r in reports]))
            for q in ("p50", "p95", "p99", "max"):
                rows.append((f"end-to-end {phase}: {q} (ms)",
                             [_fmt(getattr(r.latency.get(phase, Latency()), q))
                              for r in reports]))
    rows.append(("end-to-end steady TransactionEvent p99 (ms)", [
        _fmt(r.latency_by_action.get("TransactionEvent", Latency()).p99) for r in reports]))
    rows.append(("end-to-end steady answers/s", [_fmt(r.steady_answers_per_s)
                                                 for r in reports]))
    for phase in ("steady", "storm"):
        if any(phase in r.server for r in reports):
            rows.append((f"server-side {phase}: CALLs handled", [
                _fmt(r.server.get(phase, ServerLatency()).n, ",d") for r in reports]))
            rows.append((f"server-side {phase}: answers/s", [
                _fmt(r.server.get(phase, ServerLatency()).answers_per_s) for r in reports]))
            rows.append((f"server-side {phase}: p50 / p99 / max (ms)", [
                " / ".join(_fmt(getattr(r.server.get(phase, ServerLatency()), q),
                                ".2f" if q != "max" else ".1f")
                           for q in ("p50", "p99", "max")) for r in reports]))
            rows.append((f"server loop lag {phase}: p99 / max (ms)", [
                f"{_fmt(r.server.get(phase, ServerLatency()).loop_lag_p99)} / "
                f"{_fmt(r.server.get(phase, ServerLatency()).loop_lag_max)}"
                for r in reports]))
    rows += [
        ("CALLs sent / answered", [f"{r.calls:,} / {r.answered:,}" for r in reports]),
        ("errors (excl. CALLs cut by the storm's drop)", [
            _fmt(sum(n for k, n in r.errors.items() if not k.startswith("dropped_by_storm")),
                 ",d") for r in reports]),
        ("storm: dropped / back", [f"{r.storm_dropped:,} / {r.storm_back:,}" for r in reports]),
        ("storm: back within 60 s", [_fmt(r.storm_back_within_timeout, ",d") for r in reports]),
        ("storm: all back after (s)", [_fmt(r.storm_all_back_s) for r in reports]),
        ("storm: median back after (s)", [_fmt(r.storm_p50_back_s) for r in reports]),
        ("storm: failed connect attempts", [_fmt(r.storm_connect_failures, ",d")
                                            for r in reports]),
        ("storm w/ back-off: dropped / back", [
            f"{r.spec_storm.dropped:,} / {r.spec_storm.back:,}" if r.spec_storm else "n/a"
            for r in reports]),
        ("storm w/ back-off: back within 60 s", [
            _fmt(r.spec_storm.back_within_timeout if r.spec_storm else None, ",d")
            for r in reports]),
        ("storm w/ back-off: all back after (s)", [
            _fmt(r.spec_storm.all_back_s if r.spec_storm else None) for r in reports]),
        ("CSMS RSS idle (MiB)", [_fmt((r.rss_idle_kib or math.nan) / 1024) for r in reports]),
        ("CSMS RSS loaded (MiB)", [_fmt((r.rss_loaded_kib or math.nan) / 1024)
                                   for r in reports]),
        ("CSMS memory per station (KiB)", [_fmt(r.kib_per_station) for r in reports]),
        ("client loop lag steady p99 / max (ms)", [
            f"{_fmt(r.client_lag_steady_p99_ms)} / {_fmt(r.client_lag_steady_max_ms)}"
            for r in reports]),
        ("client loop lag (all phases) p99 / max (ms)", [f"{_fmt(r.client_lag_p99_ms)} / "
                                            f"{_fmt(r.client_lag_max_ms)}" for r in reports]),
        ("CSMS alive at the end", [str(r.server_alive) for r in reports]),
    ]
    width = max(len(name) for name, _ in rows) + 2
    colw = max(14, *(len(v) + 2 for _, vals in rows for v in vals))
    lines = [title, "-" * (width + colw * len(reports))]
    lines += [name.ljust(width) + "".join(v.rjust(colw) for v in vals) for name, vals in rows]
    for r in reports:
        if r.errors:
            top = sorted(r.errors.items(), key=lambda kv: -kv[1])[:8]
            lines.append(f"errors at {r.stations:,}: " + ", ".join(f"{k}={v}" for k, v in top))
        lines += [f"note at {r.stations:,}: {n}" for n in r.notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- crash check


@dataclass
class CrashReport:
    """The crash check's figures."""

    stations: int
    acked_events: int = 0
    events_in_db: int = 0
    lost: list[tuple[str, str, int]] = field(default_factory=list)
    restart_listening_s: float = math.nan
    open_transactions_after_restart: int = -1
    reconnect_all_back_s: float = math.nan
    back: int = 0
    unacked_at_end: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    answered: int = 0


def run_crash_check(tmp: Path, stations: int = 50, *, period_s: float = 1.0,
                    before_kill_s: float = 5.0, after_restart_s: float = 5.0,
                    log: Callable[[str], None] = print) -> CrashReport:
    """SIGKILL the CSMS during traffic, restart it on the same db, count lost events."""
    report = CrashReport(stations=stations)
    ids = station_ids(stations, "CR")
    config = write_config(tmp / "crash.toml", ids, interval_s=period_s)
    db = tmp / "crash.sqlite"
    server = CsmsProcess(config, db)
    try:
        server.start()
        server.wait_listening()
        url_base = f"ws://{HOST}:{server.port}/ocpp"
        with workers_for(url_base, ids, 1, period_s=period_s, ramp_per_s=200.0,
                         call_timeout_s=10.0, open_timeout_s=10.0, retry_s=(0.05, 0.3),
                         storm_timeout_s=30.0, hard_deadline_s=180.0) as procs:
            wait_all(procs, "ready", 60.0 * SCALE)
            broadcast(procs, "phase steady")
            time.sleep(before_kill_s)
            marks = broadcast(procs, "watch")
            server.kill9()
            log(f"crash: CSMS killed (SIGKILL) with {stations} stations sending every "
                f"{period_s:g} s; restarting on the same database and port")
            server.start()
            report.restart_listening_s = server.wait_listening()
            report.open_transactions_after_restart = int(
                server.listening.get("open_transactions", -1))
            storms = wait_all(procs, "storm", 45.0 * SCALE, marks)
            s = storms[0]
            if s is not None:
                report.back = s["back"]
                if s["back"] == s["watched"] and s["back_s"]:
                    report.reconnect_all_back_s = max(s["back_s"])
            broadcast(procs, "phase after")
            time.sleep(after_restart_s)
            parts = finish(procs)
        server.stop()
    finally:
        server.kill()
    acked = {(ident, f"TX-{ident}", seq) for part in parts
             for ident, seqs in part["acked"].items() for seq in seqs}
    report.unacked_at_end = sum(p["unacked_pending"] for p in parts)
    report.errors = dict(sum((Counter(p["errors"]) for p in parts), Counter()))
    report.calls = sum(p["calls"] for p in parts)
    report.answered = sum(p["answered"] for p in parts)
    con = sqlite3.connect(db)
    try:
        in_db = {(r[0], r[1], int(r[2])) for r in con.execute(
            "SELECT station_id, transaction_id, seq_no FROM transaction_events")}
    finally:
        con.close()
    report.acked_events = len(acked)
    report.events_in_db = len(in_db)
    report.lost = sorted(acked - in_db)
    return report


# --------------------------------------------------------------------------- fuzz check


@dataclass
class FuzzReport:
    """The fuzz check's figures."""

    good_stations: int
    fuzzers: int
    frames_sent: int = 0
    fuzz: dict[str, int] = field(default_factory=dict)
    good: Latency = field(default_factory=Latency)
    good_calls: int = 0
    good_answered: int = 0
    good_errors: dict[str, int] = field(default_factory=dict)
    server_alive: bool = False
    fresh_boot_ok: bool = False
    client_lag_max_ms: float = math.nan


def run_fuzz_check(tmp: Path, good: int = 20, fuzzers: int = 5, frames_per_fuzzer: int = 60,
                   *, period_s: float = 1.0, fuzz_per_s: float = 10.0,
                   log: Callable[[str], None] = print) -> FuzzReport:
    """Garbage from ``fuzzers`` connections while ``good`` stations charge; bounded in frames."""
    report = FuzzReport(good_stations=good, fuzzers=fuzzers)
    ids = station_ids(good, "GD")
    fz = station_ids(fuzzers, "FZ")
    config = write_config(tmp / "fuzz.toml", [*ids, *fz, "PROBE"], interval_s=period_s,
                          max_frame_bytes=65536)
    with CsmsProcess(config, tmp / "fuzz.sqlite") as server:
        server.wait_listening()
        url_base = f"ws://{HOST}:{server.port}/ocpp"
        fuzz_time = frames_per_fuzzer / fuzz_per_s
        with workers_for(url_base, ids, 1, period_s=period_s, ramp_per_s=200.0,
                         call_timeout_s=10.0, hard_deadline_s=fuzz_time + 120.0) as good_procs:
            wait_all(good_procs, "ready", 60.0 * SCALE)
            broadcast(good_procs, "phase fuzz")
            # A worker without stations: its fuzzers send their frames and say fuzz_done.
            with workers_for(url_base, [], 1, hard_deadline_s=fuzz_time + 120.0,
                             fuzz_ids=fz, fuzz_frames=frames_per_fuzzer,
                             fuzz_per_s=fuzz_per_s) as bad_procs:
                wait_all(bad_procs, "fuzz_done", (fuzz_time * 3 + 30.0) * SCALE)
                bad_parts = finish(bad_procs)
            good_parts = finish(good_procs)
        report.server_alive = server.alive()
        if report.server_alive:
            # The server must still take a new station after all that.
            from websockets.sync.client import connect
            try:
                with connect(server.url("PROBE"), subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                             open_timeout=10) as ws:
                    ws.send(json.dumps([2, "p", "BootNotification", _boot_payload()]))
                    frame = json.loads(ws.recv(timeout=10))
                    report.fresh_boot_ok = frame[0] == 3 and frame[2]["status"] == "Accepted"
            except Exception as exc:
                log(f"fuzz: fresh station could not boot: {exc!r}")
    fuzz: Counter[str] = Counter()
    for p in bad_parts:
        fuzz.update(p["fuzz"])
    report.fuzz = dict(fuzz)
    report.frames_sent = fuzz["sent"]
    samples = [x for p in good_parts for x in p["latency_ms"].get("fuzz", [])]
    report.good = Latency.of(samples)
    report.good_calls = sum(p["calls"] for p in good_parts)
    report.good_answered = sum(p["answered"] for p in good_parts)
    report.good_errors = dict(sum((Counter(p["errors"]) for p in good_parts), Counter()))
    lag = [x for p in good_parts for x in p["loop_lag_ms"]]
    report.client_lag_max_ms = max(lag) if lag else math.nan
    return report


def env_int(name: str, default: int) -> int:
    """An integer size parameter from the environment."""
    return int(os.environ.get(name, str(default)))


def env_float(name: str, default: float) -> float:
    """A float size parameter from the environment."""
    return float(os.environ.get(name, str(default)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker_main())
    sys.exit(f"usage: {sys.argv[0]} worker  (run the checks with `make soak`)")
