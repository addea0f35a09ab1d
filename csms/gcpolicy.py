"""Garbage-collector settings for a long-running ``csms serve`` process.

A CSMS with 10,000 connections holds on the order of a million objects tracked
by CPython's cyclic garbage collector, nearly all of them living as long as
their connection. A full (generation 2) collection walks every one of them and
stops the event loop meanwhile: measured 0.2-0.4 s at 3,000 stations (380,000
objects) and about three times that at 10,000, which alone breaks a 100 ms p99.
The default thresholds run one each time the long-lived objects have grown by
a quarter, so all through a ramp-up or a reconnect storm, and now and then in
steady traffic.

:class:`GCPolicy` moves the long-lived objects out of the collector's way
(``gc.freeze``): every ``check_s`` (1 s) it first collects the youngest
generation (the cyclic garbage of the messages just handled goes there and then)
and freezes what survives, so automatic collections only look at objects younger
than ``check_s``. (With a 10 s period and generations 0 and 1 collected, the
stall watch measured automatic generation-1 collections of 70-150 ms every few
seconds at 10,000 stations: ten seconds of survivors, every TransactionEvent's
new session state among them.) Frozen objects are still freed by reference counting; only a
reference cycle that dies after it was frozen (a closed connection's objects)
waits for the next *sweep*: unfreeze, one full collection, freeze again. A sweep
runs when the process's peak resident memory has grown by ``sweep_growth`` since
the last one (a ramp-up, or a storm that replaced many connections) and at least
every ``sweep_s``, so the memory such cycles hold is bounded. (Peak RSS, not
``gc.get_freeze_count()``: counting walks every frozen object, a pause of its
own at a million objects.) This is the policy of large Python servers
(Instagram's ``gc.freeze`` is the origin of the API); it is process-wide, so only
the ``csms serve`` command line installs it, never the twin or a test.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import time
from collections.abc import Callable

log = logging.getLogger("evtwin.csms.gc")


class GCPolicy:
    """Freeze long-lived objects every ``check_s`` s; sweep after ``sweep_growth``
    growth of the peak RSS (a fraction: 0.5 is +50 %) or every ``sweep_s`` s.
    ``peak_memory`` returns the peak RSS in any unit (tests pass their own)."""

    def __init__(self, *, check_s: float = 1.0, sweep_growth: float = 0.5,
                 sweep_s: float = 3600.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 peak_memory: Callable[[], float] | None = None) -> None:
        if check_s <= 0 or sweep_growth <= 0 or sweep_s <= 0:
            raise ValueError(f"GCPolicy needs positive periods and growth, got check_s="
                             f"{check_s}, sweep_growth={sweep_growth}, sweep_s={sweep_s}")
        self.check_s = check_s
        self.sweep_growth = sweep_growth
        self.sweep_s = sweep_s
        self._monotonic = monotonic
        self._peak_memory = peak_memory or _peak_rss
        self._base = 0.0
        self._last_sweep = monotonic()
        #: Sweeps run so far and the longest one (s), for the logs and tests.
        self.sweeps = 0
        self.longest_sweep_s = 0.0

    def tick(self) -> None:
        """Collect the youngest generation, freeze the survivors, sweep if due."""
        started = time.perf_counter()
        counts = gc.get_count()
        collected = gc.collect(0)
        gc.freeze()
        took_s = time.perf_counter() - started
        if took_s >= 0.05:
            log.info("young garbage collection took %.0f ms (%d freed)", took_s * 1000.0,
                     collected, extra={"event": "gc_tick", "ms": round(took_s * 1000.0, 1),
                                       "collected": collected, "counts": list(counts)})
        if self._peak_memory() > self._base * (1.0 + self.sweep_growth) \
                or self._monotonic() - self._last_sweep >= self.sweep_s:
            self.sweep()

    def sweep(self) -> None:
        """One full collection of everything (the only pause this policy costs)."""
        started = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        took_s = time.perf_counter() - started
        self._base = self._peak_memory()
        self._last_sweep = self._monotonic()
        self.sweeps += 1
        self.longest_sweep_s = max(self.longest_sweep_s, took_s)
        log.info("full garbage collection: %d objects freed in %.0f ms", collected,
                 took_s * 1000.0, extra={"event": "gc_sweep", "collected": collected,
                                         "ms": round(took_s * 1000.0, 1)})

    async def run(self) -> None:
        """Tick every ``check_s`` until cancelled (the first sweep right away sets the base)."""
        self.sweep()
        while True:
            await asyncio.sleep(self.check_s)
            try:
                self.tick()
            except Exception:  # the policy must never take the CSMS down
                log.exception("garbage-collector policy failed")


def _peak_rss() -> float:
    """The process's peak resident memory (KiB on Linux, bytes on macOS)."""
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
