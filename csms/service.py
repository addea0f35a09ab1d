"""Running the CSMS on its own: wall clock, control loop, structured logs, signals."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import logging.handlers
import math
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from .api import OperatorAPI
from .clock import iso, wall_clock
from .cluster import Cluster
from .config import ServeConfig
from .core import CSMSCore
from .driverapi import driver_api_for
from .exceptions import ConfigError
from .privacy import PseudonymFilter, pseudonymiser_for, retention_housekeeping
from .server import CSMSServer, check_port, listen_error
from .stallwatch import StallWatch
from .store import Store, is_database_url, redact_url

log = logging.getLogger("evtwin.csms.service")


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message and any ``extra`` fields."""

    _STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already (a record that came through a queue)
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


class _LogQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the logging thread; drops (and counts) them if it is far behind.

    Only the message's %-formatting and the traceback text happen in the caller
    (so the record no longer refers to mutable arguments or frames); the JSON
    and the write to stderr happen in the thread.
    """

    def __init__(self, q: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(q)
        #: Records dropped because the queue was full (stderr not keeping up).
        self.dropped = 0
        self._exc_formatter = logging.Formatter()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """A copy of ``record`` with its message formatted and its traceback as text."""
        record = logging.makeLogRecord(record.__dict__)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue the record, or count it as dropped if the queue is full."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


#: The logging thread of :func:`setup_json_logging` (None before it ran).
_listener: logging.handlers.QueueListener | None = None
_queue_handler: _LogQueueHandler | None = None
_listener_lock = threading.Lock()


def stop_json_logging() -> None:
    """Write every queued log line and stop the logging thread (idempotent; also at exit)."""
    global _listener, _queue_handler
    with _listener_lock:
        listener, _listener = _listener, None
        if listener is not None:
            listener.stop()  # processes what is queued, then joins the thread
            for handler in listener.handlers:
                # At exit stderr may be closed already (or replaced, in tests).
                with contextlib.suppress(ValueError, OSError):
                    handler.flush()


def log_lines_dropped() -> int:
    """Log records dropped so far because the logging thread fell behind."""
    return _queue_handler.dropped if _queue_handler is not None else 0


def setup_json_logging(level: int = logging.INFO, *, max_queued: int = 100_000) -> None:
    """Send structured logs to stderr (the ``ocpp`` library's per-frame logs stay quiet).

    Formatting and writing happen in a thread (a QueueListener), so a reconnect
    storm's thousands of lines, or a slow reader of stderr, do not stall the
    event loop. At most ``max_queued`` records wait; beyond that new ones are
    dropped and counted (:func:`log_lines_dropped`) rather than let memory grow.
    What is queued is written at interpreter exit (or by :func:`stop_json_logging`);
    a SIGKILL loses it.
    """
    global _listener, _queue_handler
    stop_json_logging()
    stream = logging.StreamHandler()
    stream.setFormatter(JsonFormatter())
    q: queue.Queue[logging.LogRecord] = queue.Queue(max_queued)
    handler = _LogQueueHandler(q)
    with _listener_lock:
        _queue_handler = handler
        _listener = logging.handlers.QueueListener(q, stream)
        _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("ocpp").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    # Imported with a [feeder] network; says on import that plotly is missing.
    logging.getLogger("pandapower").setLevel(logging.WARNING)


# At exit, before the interpreter tears down: the last lines ("stopped") get out.
atexit.register(stop_json_logging)


class LoopLag:
    """How late the event loop wakes a task that sleeps ``period_s`` (its lag, in ms).

    Large lag means frames wait in buffers before any handler runs: time the
    per-CALL handling figures do not include.
    """

    def __init__(self, period_s: float = 0.1) -> None:
        self.period_s = period_s
        self.samples_ms: list[float] = []

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.period_s)
            self.samples_ms.append((time.perf_counter() - t - self.period_s) * 1000.0)

    def take(self) -> dict[str, float | None]:
        """p50, p99 and max lag (ms) since the last call, and start anew."""
        s = sorted(self.samples_ms)
        self.samples_ms = []
        if not s:
            return {"loop_lag_p50_ms": None, "loop_lag_p99_ms": None, "loop_lag_max_ms": None}

        def q(p: float) -> float:
            return round(s[min(len(s), max(1, math.ceil(p / 100.0 * len(s)))) - 1], 2)

        return {"loop_lag_p50_ms": q(50), "loop_lag_p99_ms": q(99),
                "loop_lag_max_ms": round(s[-1], 2)}


def log_stats(server: CSMSServer, lag: LoopLag | None, trigger: str) -> dict[str, Any]:
    """Log one ``stats`` line (the window since the last one) and return its fields."""
    fields: dict[str, Any] = {"event": "stats", "trigger": trigger, **server.take_stats()}
    if lag is not None:
        fields.update(lag.take())
    fields["log_dropped"] = log_lines_dropped()
    wal = server.core.store.checkpointer
    if wal is not None:
        fields.update(wal_frames=wal.wal_frames, wal_restarts=wal.restarts,
                      wal_restart_max_ms=round(wal.longest_restart_s * 1000.0, 1))
    hist = fields.pop("hist")
    # Bucket -> count as strings, so the line stays plain JSON (see CallStats).
    fields["hist"] = {str(k): v for k, v in hist.items()}
    log.info("stats: %d calls, p50 %s ms, p99 %s ms, max %s ms", fields["calls"],
             fields["p50_ms"], fields["p99_ms"], fields["max_ms"], extra=fields)
    return fields


async def stats_loop(server: CSMSServer, interval_s: float | None, wake: asyncio.Event, *,
                     lag: LoopLag | None = None) -> None:
    """Log a ``stats`` line every ``interval_s`` (None: never by time) and whenever
    ``wake`` is set (SIGUSR1); runs until cancelled."""
    while True:
        try:
            await asyncio.wait_for(wake.wait(), interval_s)
            trigger = "signal"
            wake.clear()  # only here: a signal that came just after a timeout is kept
        except TimeoutError:
            trigger = "timer"
        try:
            log_stats(server, lag, trigger)
        except Exception:  # statistics must never take the CSMS down
            log.exception("stats line failed")


async def control_loop(server: CSMSServer, interval_s: float, *, poll_s: float = 0.5,
                       monotonic: Callable[[], float] = time.monotonic) -> None:
    """Run the control cycle every ``interval_s`` and as soon as a session starts or ends.

    The strategy runs in a worker thread (see :meth:`CSMSServer.control_cycle`): at
    10,000 sessions a cycle takes a good part of a second, which the stations'
    messages would otherwise wait for.
    """
    last = monotonic()
    while True:
        await asyncio.sleep(min(poll_s, interval_s))
        now = monotonic()
        if now - last >= interval_s or server.core.sessions_changed:
            last = now
            try:
                sent = await server.control_cycle(in_thread=True)
            except Exception:  # the loop must outlive one bad cycle
                log.exception("control cycle failed")
                continue
            if sent:
                log.info("control cycle", extra={"event": "control", "profiles_sent": sent})


def prune_security_events(server: CSMSServer, *, retention_days: float | None,
                          max_rows: int | None) -> int:
    """Delete security events older than ``retention_days`` and beyond the newest
    ``max_rows`` (None: no such limit); log and return how many went."""
    if retention_days is None and max_rows is None:
        return 0
    before = (iso(server.core.clock() - timedelta(days=retention_days))
              if retention_days is not None else None)
    deleted = server.core.store.prune_security_events(before=before, max_rows=max_rows)
    if deleted:
        log.info("pruned %d security events", deleted,
                 extra={"event": "security_events_pruned", "deleted": deleted})
    # What stations sent for the record is kept as long, and up to ten times as many.
    messages = server.core.store.prune_station_messages(
        before=before, max_rows=None if max_rows is None else 10 * max_rows)
    if messages:
        log.info("pruned %d station messages", messages,
                 extra={"event": "station_messages_pruned", "deleted": messages})
    return deleted


async def security_housekeeping(server: CSMSServer, *, retention_days: float | None = 90.0,
                                max_rows: int | None = 100_000, flush_s: float = 10.0,
                                prune_s: float = 3600.0,
                                monotonic: Callable[[], float] = time.monotonic) -> None:
    """Write suppressed-event summaries every ``flush_s`` and prune every ``prune_s``.

    Pruning runs at once too, so a database left large by an older version
    shrinks at start-up. Runs until cancelled; a failing round is logged and
    the next one tried.
    """
    last_prune: float | None = None
    while True:
        try:
            server.audit.flush()
            now = monotonic()
            if last_prune is None or now - last_prune >= prune_s:
                last_prune = now
                prune_security_events(server, retention_days=retention_days,
                                      max_rows=max_rows)
        except Exception:  # housekeeping must outlive one bad round
            log.exception("security event housekeeping failed")
        await asyncio.sleep(flush_s)


def _new_sqlite_files(db_path: str | Path) -> list[Path]:
    """The files of a SQLite database about to be created at ``db_path`` (none if it
    exists already, or is not a file): removed again if the CSMS never starts."""
    if is_database_url(db_path) or str(db_path) == ":memory:" or Path(db_path).exists():
        return []
    path = Path(db_path)
    files = [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))]
    return [f for f in files if not f.exists()]


async def serve(config: ServeConfig, db_path: str | Path, *, host: str | None = None,
                port: int | None = None, stop: asyncio.Event | None = None,
                api_port: int | None = None, api_token_hash: str | None = None,
                api_host: str = "127.0.0.1",
                on_listening: Callable[[], None] | None = None,
                partners: Callable[[], list[dict[str, Any]]] | None = None
                ) -> signal.Signals | None:
    """Run the CSMS until ``stop`` is set or SIGINT/SIGTERM arrives; returns the signal
    that stopped it (None: ``stop``).

    With ``api_port`` (0 picks a free port) the operator API runs beside the
    websocket endpoint on ``api_host`` (loopback by default); it needs
    ``api_token_hash`` (:func:`evtwin.csms.api.hash_token`), there is no API
    without a token. ``api_port`` None: no API. ``on_listening`` is called once
    both listen.

    Raises ConfigError (StoreError) naming the field at fault when the database
    cannot be opened or an address cannot be bound; a SQLite file it created for
    this start is then removed again.
    """
    s = config.server
    port = s.port if port is None else port
    check_port(port)
    if api_port is not None:
        check_port(api_port, "api_port")
        if api_token_hash is None:
            raise ConfigError("api_token_hash",
                              "required when the operator API is on (api_port)")
    created = _new_sqlite_files(db_path)
    listening = False
    store = Store(db_path)
    received: list[signal.Signals] = []
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    log_filter: PseudonymFilter | None = None
    try:
        core = CSMSCore(config.csms_config(), store, clock=wall_clock)
        core.station_ca = config.security.station_ca()
        # Driver identifiers in log lines become pseudonyms (a safety net: the log
        # calls pass none; see evtwin.csms.privacy).
        log_filter = PseudonymFilter(
            pseudonymiser_for(store, key_file=config.privacy.key_file),
            known=[*config.tokens.accepted, *(e.id for e in config.tokens.entries)])
        for handler in logging.getLogger().handlers:
            handler.addFilter(log_filter)
        server = CSMSServer(core, host=host or s.host, port=port,
                            max_frame_bytes=s.max_frame_bytes,
                            response_timeout_s=s.response_timeout_s,
                            security=config.security_config(),
                            max_frames_per_s=s.max_frames_per_s,
                            max_frames_burst=s.max_frames_burst,
                            open_timeout_s=s.open_timeout_s, backlog=s.backlog,
                            auth_failures_per_peer=s.auth_failures_per_peer,
                            auth_failures_per_identity=s.auth_failures_per_identity,
                            auth_failure_window_s=s.auth_failure_window_s,
                            security_events_per_minute=s.security_events_per_minute,
                            security_events_total_per_minute=s.security_events_total_per_minute,
                            reuse_port=s.reuse_port if s.reuse_port is not None
                            else store.shared,
                            ping_interval_s=s.ping_interval_s or None,
                            ping_timeout_s=s.ping_timeout_s or None)
        if config.feeder is not None:
            # Only with a [feeder] network: it imports pandapower and power-grid-model.
            from evtwin.grid import GridLimits

            from .feeder import FeederMonitor, build_feeder_model, needs_feeder

            if needs_feeder(config.control.strategy):
                f = config.feeder
                model = build_feeder_model(
                    f.network, [(st.id, int(st.bus)) for st in config.stations
                                if st.bus is not None],
                    GridLimits(v_min_pu=f.v_min_pu, v_max_pu=f.v_max_pu,
                               line_loading_max_percent=f.line_loading_max_percent,
                               trafo_loading_max_percent=f.trafo_loading_max_percent))
                server.feeder_monitor = FeederMonitor(model, core.config.nominal_voltage_v)
        api = None
        if api_port is not None:
            assert api_token_hash is not None  # checked above
            api = OperatorAPI(server, token_hash=api_token_hash, host=api_host, port=api_port)
        # OCPI 2.2.1 as a CPO on its own port ([ocpi]; see evtwin.csms.ocpi.cpo).
        cpo = None
        if config.ocpi is not None:
            from .ocpi.cpo import CPO
            from .ocpi.registry import Registry

            o = config.ocpi
            try:
                registry = Registry(o.registry)
            except sqlite3.Error as exc:
                raise ConfigError("ocpi.registry", f"{o.registry}: cannot open: {exc}"
                                  ) from None
            cpo = CPO(server, config, registry, country_code=o.country_code,
                      party_id=o.party_id, name=o.name, host=o.host, port=o.port,
                      public_url=o.public_url, authorize_timeout_s=o.authorize_timeout_s,
                      partners=[(p.versions_url, p.token_a) for p in o.partners])
            server.ocpi_registry = registry
            if partners is None:
                partners = cpo.partners
        dashboard = None
        if config.dashboard is not None:
            # The live dashboard on its own port ([dashboard]); ``partners``: the roaming
            # partners it lists (none until OCPI gives them).
            from .dashboard import Dashboard, DashboardUser, feeder_grid

            d = config.dashboard
            dashboard = Dashboard(
                server, users=[DashboardUser(u.name, u.token_hash, u.totp_secret, u.role)
                               for u in d.users],
                host=d.host, port=d.port, grid=feeder_grid(server),
                partners=partners or list, session_ttl_s=d.session_ttl_h * 3600.0,
                pseudonymiser=pseudonymiser_for(store), public_url=d.public_url,
                trusted_proxy=d.trusted_proxy)
        # The driver API on its own port ([driver_api] port; see evtwin.csms.driverapi).
        driver_api = driver_api_for(server, config, pseudonymise=pseudonymiser_for(store))
        stopping = stop or asyncio.Event()
        stats_wake = asyncio.Event()

        def on_stop_signal(sig: signal.Signals) -> None:
            received.append(sig)
            stopping.set()

        for sig, callback in ((signal.SIGINT, partial(on_stop_signal, signal.SIGINT)),
                              (signal.SIGTERM, partial(on_stop_signal, signal.SIGTERM)),
                              (signal.SIGUSR1, stats_wake.set)):
            with contextlib.suppress(NotImplementedError, RuntimeError,  # not the main thread
                                     AttributeError):  # no SIGUSR1 (Windows)
                loop.add_signal_handler(sig, callback)
                handled.append(sig)
        await server.start()
        try:
            # The HTTP apps beside the websocket endpoint, each on its own port: a port
            # that cannot be bound is one line naming its field.
            for app, app_host, what, host_field, port_field in (
                    (api, api_host, "the operator API", "api.host", "api_port"),
                    (dashboard, None, "the dashboard", "dashboard.host", "dashboard.port"),
                    (driver_api, None, "the driver API", "driver_api.host", "driver_api.port"),
                    (cpo, None, "OCPI", "ocpi.host", "ocpi.port")):
                if app is None:
                    continue
                try:
                    await app.start()
                except OSError as exc:
                    raise listen_error(exc, app_host or app.host, app.port, what=what,
                                       host_field=host_field, port_field=port_field) from None
            listening = True
            log.info("listening", extra={
                "ocpi_url": cpo.versions_url if cpo is not None else None,
                "event": "listening", "url": server.url, "port": server.port,
                "api_url": api.url if api is not None else None,
                "dashboard_url": dashboard.url if dashboard is not None else None,
                "driver_api_url": driver_api.url if driver_api is not None else None,
                "driver_app_url": driver_api.app_url if driver_api is not None else None,
                "security_profile": server.security.profile, "db": redact_url(db_path),
                "schema_version": store.schema_version,
                "open_transactions": len(core.open_sessions()), "stations": len(core.stations),
                "shared_store": store.shared})
            if on_listening is not None:
                on_listening()
            cluster: Cluster | None = None
            controller: asyncio.Task[None] | None = None
            if store.shared:
                # Several processes on one database: one of them controls charging.
                cluster = Cluster(server, interval_s=config.control.interval_s)
                await cluster.start()
            else:
                controller = asyncio.create_task(control_loop(server,
                                                              config.control.interval_s))
            housekeeper = asyncio.create_task(security_housekeeping(
                server, retention_days=s.security_event_retention_days,
                max_rows=s.security_event_max_rows))
            retention = asyncio.create_task(retention_housekeeping(
                store, retention_days=config.privacy.retention_days, clock=core.clock))
            lag = LoopLag()
            lag_task = asyncio.create_task(lag.run())
            stall_watch: StallWatch | None = None
            if s.stall_report_ms > 0:
                stall_watch = StallWatch(loop, threshold_s=s.stall_report_ms / 1000.0)
                stall_watch.start()
            stats_task = asyncio.create_task(stats_loop(
                server, s.stats_interval_s or None, stats_wake, lag=lag))
            try:
                await stopping.wait()
            finally:
                if stall_watch is not None:
                    stall_watch.stop()
                lag_task.cancel()
                stats_task.cancel()
                if controller is not None:
                    controller.cancel()
                if cluster is not None:
                    await cluster.stop()
                housekeeper.cancel()
                retention.cancel()
        finally:
            if api is not None:
                await api.stop()
            if dashboard is not None:
                await dashboard.stop()
            if driver_api is not None:
                await driver_api.stop()
            if cpo is not None:
                await cpo.stop()
                cpo.registry.close()
            await server.stop()
    finally:
        store.close()
        if log_filter is not None:
            for handler in logging.getLogger().handlers:
                handler.removeFilter(log_filter)
        for sig in handled:  # a Ctrl-C from now on is the caller's again
            loop.remove_signal_handler(sig)
        if not listening:  # never started: leave no new, empty database behind
            for path in created:
                with contextlib.suppress(OSError):
                    path.unlink()
    by = received[0] if received else None
    log.info("stopped", extra={"event": "stopped", "signal": by.name if by else None})
    return by
