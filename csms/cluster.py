"""Several ``csms serve`` processes on one PostgreSQL database.

Stations may connect to any of the processes (behind one address, e.g. a TCP
load balancer); whichever process holds a station's connection handles its
messages, and every message's effect is in the shared database before it is
answered. So a station that reconnects to another process continues where it
was: on connect, that process takes the station's open sessions, installed
profiles and accepted limits from the database (:meth:`CSMSCore.reload_station`).

Smart charging needs every session of a site at once, so one process at a
time is the controller: the one holding a PostgreSQL advisory lock (released
by the database when that process or its connection dies, when another takes
over within ``leader_retry_s``). Before each cycle the controller takes every
open session from the database (:meth:`CSMSCore.refresh_sessions`); a limit for
a station connected to another process is left in the ``commands`` table, and
that process sends it within ``poll_s`` and records the station's answer in the
database, where the controller's next cycle finds it.

What stays local to a process: an EV's charging needs (NotifyEVChargingNeeds)
reach the controller only if its station is connected to the controller;
elsewhere the controller assumes the site's defaults, as it does for OCPP 1.6.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from datetime import timedelta
from typing import Any

from .clock import iso
from .core import ProfileCommand
from .server import CSMSServer

log = logging.getLogger("evtwin.csms.cluster")

#: Advisory lock key of the controlling process ("evtwin" in a 64-bit number).
LEADER_LOCK = 0x657674776E
#: A relayed command no process claimed within this time is dropped (the
#: controller sends the limit again if it still applies).
COMMAND_TTL_S = 60.0


class Cluster:
    """Makes one :class:`CSMSServer` a member of a group sharing a PostgreSQL store."""

    def __init__(self, server: CSMSServer, *, interval_s: float, poll_s: float = 0.2,
                 leader_retry_s: float = 1.0) -> None:
        if not server.core.store.shared:
            raise ValueError("a cluster needs a shared (PostgreSQL) store")
        self.server = server
        self.core = server.core
        self.interval_s = interval_s
        self.poll_s = poll_s
        self.leader_retry_s = leader_retry_s
        self.is_leader = False
        self._lock_conn: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._pending: dict[str, dict[int, ProfileCommand]] = {}

    async def start(self) -> None:
        """Join: reload stations on connect, relay limits, compete for control."""
        self.server.on_connect.append(self.core.reload_station)
        self.server.relay = self._relay
        self._tasks = [asyncio.create_task(self._take_commands_forever()),
                       asyncio.create_task(self._control_forever())]

    async def stop(self) -> None:
        """Leave: stop the loops and give up control (the lock goes with the connection)."""
        for task in [*self._tasks, *self._senders.values()]:
            task.cancel()
        for task in [*self._tasks, *self._senders.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._lock_conn is not None:
            self._lock_conn.close()
            self._lock_conn = None
        self.is_leader = False

    # -- control -----------------------------------------------------------------
    def _lock_query(self) -> bool:
        """Take the control lock, or (holding it) prove the session that holds it is
        alive: a session lock lasts exactly as long as its connection. Blocking: run
        in a thread."""
        import psycopg

        try:
            if self._lock_conn is None or self._lock_conn.closed or self._lock_conn.broken:
                self._lock_conn = psycopg.connect(
                    self.core.store.path, autocommit=True, connect_timeout=5, keepalives=1,
                    keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
                row = self._lock_conn.execute("SELECT pg_try_advisory_lock(%s)",
                                              (LEADER_LOCK,)).fetchone()
                return bool(row and row[0])
            if not self.is_leader:
                row = self._lock_conn.execute("SELECT pg_try_advisory_lock(%s)",
                                              (LEADER_LOCK,)).fetchone()
                return bool(row and row[0])
            self._lock_conn.execute("SELECT 1")
            return True
        except psycopg.Error as exc:
            log.warning("cluster: control lock: %s", str(exc).strip()[:200],
                        extra={"event": "cluster_lock_lost" if self.is_leader else
                               "cluster_lock_unavailable"})
            if self._lock_conn is not None:
                self._lock_conn.close()
                self._lock_conn = None
            return False

    async def _control_forever(self) -> None:
        last = 0.0
        failures = 0
        while True:
            was_leader = self.is_leader
            self.is_leader = await asyncio.to_thread(self._lock_query)
            if not self.is_leader:
                if was_leader:
                    log.warning("cluster: this process no longer controls charging",
                                extra={"event": "cluster_follower"})
                await asyncio.sleep(self.leader_retry_s)
                continue
            if not was_leader:
                log.info("cluster: this process controls charging",
                         extra={"event": "cluster_leader"})
                last = 0.0
            now = time.monotonic()
            if now - last >= self.interval_s or self.core.sessions_changed:
                last = now
                try:
                    self.core.refresh_sessions()
                    sent = await self.server.control_cycle(in_thread=True)
                    failures = 0
                except Exception as exc:  # the loop must outlive one bad cycle
                    failures += 1
                    log.warning("cluster: control cycle failed: %s: %s", type(exc).__name__,
                                str(exc)[:200], extra={"event": "control_failed"})
                    if failures >= 3:
                        # Let a process that can reach the database take over.
                        await asyncio.to_thread(self._resign)
                else:
                    if sent:
                        log.info("control cycle", extra={"event": "control",
                                                         "profiles_sent": sent})
            await asyncio.sleep(min(self.poll_s * 2.5, self.interval_s))

    def _resign(self) -> None:
        if self._lock_conn is not None:
            self._lock_conn.close()
            self._lock_conn = None
        self.is_leader = False

    # -- limits for stations connected elsewhere ---------------------------------
    def _relay(self, cmd: ProfileCommand) -> bool:
        self.core.store.queue_command(cmd.station_id, json.dumps(dataclasses.asdict(cmd)),
                                      iso(self.core.clock()))
        return True

    async def _take_commands_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                expired = iso(self.core.clock() - timedelta(seconds=COMMAND_TTL_S))
                taken = self.core.store.take_commands(self.server.connections,
                                                      older_than=expired)
            except Exception as exc:
                log.warning("cluster: cannot read relayed commands: %s", exc)
                continue
            for station_id, text in taken:
                cmd = ProfileCommand(**json.loads(text))
                # Only the newest limit per EVSE waits to be sent (a slow station
                # must not collect a queue of stale ones).
                self._pending.setdefault(station_id, {})[cmd.evse_id] = cmd
                if station_id not in self._senders:
                    self._senders[station_id] = asyncio.create_task(self._send(station_id))

    async def _send(self, station_id: str) -> None:
        try:
            while self._pending.get(station_id):
                cmds = self._pending.pop(station_id)
                cp = self.server.connections.get(station_id)
                if cp is None:
                    return
                for cmd in cmds.values():
                    await cp.send_limit(cmd)
        except Exception as exc:  # the controller sends it again next cycle
            log.warning("cluster: relayed limit for %s not sent: %s: %s", station_id,
                        type(exc).__name__, str(exc)[:200],
                        extra={"event": "control_send_failed", "station": station_id})
        finally:
            self._pending.pop(station_id, None)
            del self._senders[station_id]
