"""Running the CSMS on its own: wall clock, control loop, structured logs, signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .api import OperatorAPI
from .clock import iso, wall_clock
from .cluster import Cluster
from .config import ServeConfig
from .core import CSMSCore
from .exceptions import ConfigError
from .server import CSMSServer
from .store import Store, redact_url

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
        return json.dumps(out, default=str)


def setup_json_logging(level: int = logging.INFO) -> None:
    """Send structured logs to stderr (the ``ocpp`` library's per-frame logs stay quiet)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("ocpp").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)


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


async def serve(config: ServeConfig, db_path: str | Path, *, host: str | None = None,
                port: int | None = None, stop: asyncio.Event | None = None,
                api_port: int | None = None, api_token_hash: str | None = None,
                api_host: str = "127.0.0.1") -> None:
    """Run the CSMS until ``stop`` is set or SIGINT/SIGTERM arrives.

    With ``api_port`` (0 picks a free port) the operator API runs beside the
    websocket endpoint on ``api_host`` (loopback by default); it needs
    ``api_token_hash`` (:func:`evtwin.csms.api.hash_token`), there is no API
    without a token. ``api_port`` None: no API.
    """
    if api_port is not None and api_token_hash is None:
        raise ConfigError("api_token_hash", "required when the operator API is on (api_port)")
    store = Store(db_path)
    try:
        core = CSMSCore(config.csms_config(), store, clock=wall_clock)
        s = config.server
        server = CSMSServer(core, host=host or s.host, port=s.port if port is None else port,
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
                            else store.shared)
        api = None
        if api_port is not None:
            assert api_token_hash is not None  # checked above
            api = OperatorAPI(server, token_hash=api_token_hash, host=api_host, port=api_port)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(sig, stop.set)
        await server.start()
        try:
            if api is not None:
                await api.start()
            log.info("listening", extra={
                "event": "listening", "url": server.url, "port": server.port,
                "api_url": api.url if api is not None else None,
                "security_profile": server.security.profile, "db": redact_url(db_path),
                "schema_version": store.schema_version,
                "open_transactions": len(core.open_sessions()), "stations": len(core.stations),
                "shared_store": store.shared})
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
            try:
                await stop.wait()
            finally:
                if controller is not None:
                    controller.cancel()
                if cluster is not None:
                    await cluster.stop()
                housekeeper.cancel()
        finally:
            if api is not None:
                await api.stop()
            await server.stop()
    finally:
        store.close()
    log.info("stopped", extra={"event": "stopped"})
