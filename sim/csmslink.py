"""How the twin drives its CSMS: in the twin's own process, or in a process of its own.

The twin's step loop needs a few things of its CSMS beyond the OCPP traffic
its stations exchange with it: the simulated time (the CSMS's clock), the
typed input port (prices, forecasts, grid-operator limits, feeder
measurements), a control cycle when sessions changed or one is due, and one
store transaction per step. :class:`LocalCSMS` does these by calling the core;
:class:`ProcessCSMS` (``[run] csms_process = true``) starts ``evtwin``'s CSMS in
a child process with its own event loop and websocket server, and sends them
over a pipe, so the stations' OCPP-J crosses real sockets between two
processes, as it does to a CSMS deployed elsewhere. The results are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import multiprocessing.connection
import socket
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from evtwin.csms import CSMSConfig, CSMSCore, CSMSServer, Store
from evtwin.csms.exceptions import InputError
from evtwin.csms.strategies import strategy_module

from .exceptions import RunError

InputCall = tuple[str, tuple[Any, ...], dict[str, Any]]


class CSMSLink(ABC):
    """The twin's side of its CSMS (see the module docstring)."""

    #: OCPP-J frames the CSMS received and sent (``in``/``out``), for the KPIs.
    frames: dict[str, int]
    url: str

    @property
    @abstractmethod
    def inputs(self) -> Any:
        """The CSMS's input port (:class:`evtwin.csms.inputs.InputPort`'s methods)."""

    @abstractmethod
    async def sync(self, now: datetime) -> None:
        """Before stations speak at ``now``: the CSMS's clock and inputs are up to date."""

    @abstractmethod
    async def react(self, now: datetime) -> None:
        """Run a control cycle now if sessions changed since the last one."""

    @abstractmethod
    async def control_if_due(self, now: datetime) -> None:
        """Run a control cycle now if one is due."""

    @abstractmethod
    def step(self) -> contextlib.AbstractAsyncContextManager[None]:
        """One store transaction around a simulation step."""

    @abstractmethod
    async def finish(self) -> list[dict[str, Any]]:
        """Stop the CSMS; returns its transactions (the rows of its store)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the CSMS (server, store, process), also after a failure; idempotent."""


class LocalCSMS(CSMSLink):
    """The CSMS in the twin's process and event loop: every call goes to the core."""

    def __init__(self, server: CSMSServer) -> None:
        self.server = server
        self.core = server.core
        self.frames = server.frames
        self.url = ""

    @property
    def inputs(self) -> Any:
        return self.core.inputs

    async def sync(self, now: datetime) -> None:
        return None  # the core reads the twin's clock itself

    async def react(self, now: datetime) -> None:
        if self.core.sessions_changed:
            await self.server.control_cycle()

    async def control_if_due(self, now: datetime) -> None:
        if self.core.control_due():
            await self.server.control_cycle()

    @contextlib.asynccontextmanager
    async def step(self) -> AsyncIterator[None]:
        with self.core.batch():
            yield

    async def finish(self) -> list[dict[str, Any]]:
        await self.server.stop()
        return self.core.store.transactions()

    async def close(self) -> None:
        await self.server.stop()
        self.core.store.close()


class _BufferedInputs:
    """The input port of a CSMS in another process: calls wait for the next sync."""

    def __init__(self, pending: list[InputCall]) -> None:
        self._pending = pending

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> None:
            self._pending.append((name, args, kwargs))

        return call


class ProcessCSMS(CSMSLink):
    """evtwin's CSMS in a child process, driven over a pipe (see the module docstring).

    Create with :meth:`start`. A failure in the child comes back as the
    exception it raised (an :class:`InputError` as itself, anything else as a
    :class:`RunError` that names it).
    """

    def __init__(self, process: subprocess.Popen[bytes],
                 conn: multiprocessing.connection.Connection, stderr: Any) -> None:
        self._process = process
        self._conn = conn
        self._stderr = stderr
        self.url = ""
        self.frames = {"in": 0, "out": 0}
        self._pending: list[InputCall] = []
        self._inputs = _BufferedInputs(self._pending)
        self._clock: datetime | None = None

    @classmethod
    async def start(cls, config: CSMSConfig, database: str, now: datetime) -> ProcessCSMS:
        # A fresh interpreter (not a fork of this one's running event loop, and not
        # multiprocessing's spawn, which would re-run the caller's main script),
        # joined to this one by a socket pair; its output goes to a file we read on failure.
        # A strategy registered in this process must be importable there too.
        module = strategy_module(config.strategy)
        if module == "__main__":
            raise RunError(f"strategy {config.strategy!r} is registered in the main script; "
                           "with run.csms_process = true the CSMS process imports it, so it "
                           "must live in an importable module")
        ours, theirs = socket.socketpair()
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _stop)
        code = f"from evtwin.sim.csmslink import child_main; child_main({theirs.fileno()})"
        process = subprocess.Popen([sys.executable, "-c", code], pass_fds=(theirs.fileno(),),
                                   stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        theirs.close()
        link = cls(process, multiprocessing.connection.Connection(ours.detach()), stderr)
        try:
            link._conn.send((config, database, now, module))
            link.url = await link._call("hello")
        except BaseException:
            await link.close()
            raise
        link._clock = now
        return link

    def _last_words(self) -> str:
        """The last line the child wrote (its error), for the twin's error message."""
        try:
            self._stderr.seek(0)
            lines = [x for x in self._stderr.read().decode(errors="replace").splitlines()
                     if x.strip()]
        except (OSError, ValueError):
            return ""
        return f": {lines[-1].strip()}" if lines else ""

    @property
    def inputs(self) -> Any:
        return self._inputs

    async def _call(self, command: str, *args: Any) -> Any:
        """Send one command with the inputs queued so far; await its answer
        without blocking the loop (the child may talk to our stations meanwhile)."""
        pending = list(self._pending)
        self._pending.clear()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        fd = self._conn.fileno()

        def readable() -> None:
            loop.remove_reader(fd)
            try:
                answer.set_result(self._conn.recv())
            except (EOFError, OSError):
                answer.set_exception(RunError(self._stopped()))

        try:
            self._conn.send((command, args, pending))
        except OSError:
            raise RunError(self._stopped()) from None
        loop.add_reader(fd, readable)
        try:
            status, value = await answer
        finally:
            loop.remove_reader(fd)
        if status == "ok":
            return value
        kind, field, message = value
        if kind == "InputError":
            raise InputError(field, message)
        raise RunError(f"the CSMS process failed: {kind}: {message}")

    async def sync(self, now: datetime) -> None:
        if now != self._clock or self._pending:
            self._clock = now
            await self._call("sync", now)

    async def react(self, now: datetime) -> None:
        self._clock = now
        await self._call("react", now)

    async def control_if_due(self, now: datetime) -> None:
        self._clock = now
        await self._call("due", now)

    @contextlib.asynccontextmanager
    async def step(self) -> AsyncIterator[None]:
        await self._call("begin")
        try:
            yield
        except BaseException:
            # As in-process: what the failed step wrote is rolled back, not committed.
            with contextlib.suppress(Exception):
                await self._call("abort")
            raise
        await self._call("end")

    async def finish(self) -> list[dict[str, Any]]:
        transactions, frames = await self._call("finish")
        self.frames.update(frames)
        return list(transactions)

    def _stopped(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5)
        return (f"the CSMS process stopped (exit status {self._process.returncode})"
                f"{self._last_words()}")

    async def close(self) -> None:
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        """Stop the child (also when the run failed); idempotent."""
        with contextlib.suppress(OSError):
            self._conn.close()  # the child sees the end of its pipe and shuts down
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        with contextlib.suppress(OSError):
            self._stderr.close()


# -- the child process ---------------------------------------------------------------
def child_main(fd: int) -> None:
    """The CSMS process: serve OCPP on loopback, obey the twin's commands until
    ``finish`` or until the twin's end of the pipe closes."""
    import signal

    # Ctrl-C reaches the whole process group: the twin stops us, in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = multiprocessing.connection.Connection(fd)
    try:
        config, database, now, module = conn.recv()
        if module is not None:
            importlib.import_module(module)  # registers the run's own strategy
        asyncio.run(_child(conn, config, database, now))
    except EOFError:
        pass
    finally:
        conn.close()


async def _child(conn: multiprocessing.connection.Connection, config: CSMSConfig,
                 database: str, now: datetime) -> None:
    clock = [now]
    store = Store(Path(database) if database != ":memory:" else database)
    core = CSMSCore(config, store, clock=lambda: clock[0])
    server = CSMSServer(core, host="127.0.0.1", port=0)
    batch = contextlib.ExitStack()
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()

    def readable() -> None:
        try:
            commands.put_nowait(conn.recv())
        except (EOFError, OSError):  # the twin is gone
            loop.remove_reader(conn.fileno())
            commands.put_nowait(None)

    await server.start()
    loop.add_reader(conn.fileno(), readable)
    try:
        while True:
            message = await commands.get()
            if message is None:
                return
            command, args, inputs = message
            try:
                for name, a, kw in inputs:
                    getattr(core.inputs, name)(*a, **kw)
                if command in ("sync", "react", "due"):
                    clock[0] = args[0]
                value: Any = None
                if command == "hello":
                    value = server.url
                elif ((command == "react" and core.sessions_changed)
                      or (command == "due" and core.control_due())):
                    await server.control_cycle()
                elif command == "begin":
                    batch.enter_context(core.batch())
                elif command == "end":
                    batch.close()
                elif command == "abort":
                    _roll_back(batch)
                elif command == "finish":
                    batch.close()
                    await server.stop()
                    value = (store.transactions(), dict(server.frames))
                conn.send(("ok", value))
                if command == "finish":
                    return
            except Exception as exc:  # reported to the twin, which fails the run
                field = exc.field if isinstance(exc, InputError) else ""
                conn.send(("error", (type(exc).__name__, field,
                                     str(exc).split(": ", 1)[-1] if field else str(exc))))
    finally:
        _roll_back(batch)  # the twin went away mid-step: that step is not committed
        await server.stop()
        store.close()


def _roll_back(batch: contextlib.ExitStack) -> None:
    """Leave an open store batch as a failure does: rolled back."""
    batch.__exit__(RuntimeError, RuntimeError("the twin abandoned the step"), None)
