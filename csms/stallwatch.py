"""Find what blocks the event loop: a watchdog thread that samples its stack.

Every connection of a ``csms serve`` process is served by one event loop, so
anything that holds it (a long computation, a garbage collection, a slow
database call made in the loop) delays every station at once. The ``stats``
lines say *that* the loop lagged; :class:`StallWatch` says *where*: a daemon
thread asks the loop to run a tiny callback every ``period_s`` and, while that
callback is late by more than ``threshold_s``, samples the loop thread's stack
(``sys._current_frames``) every ``sample_s``. When the loop comes back it logs
one ``loop_stall`` line with the stall's length and the innermost frames seen
most often during it (a poor man's profiler, but one that costs nothing while
the loop is healthy: one ``call_soon_threadsafe`` per period).

Off by default (``[server] stall_report_ms = 0``); operators turn it on to find
the cause of a latency spike, and ``make bench`` turns it on to report it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import sys
import threading
import time
from types import FrameType

log = logging.getLogger("evtwin.csms.stall")


class StallWatch:
    """Report event-loop stalls longer than ``threshold_s`` with where the loop was.

    ``report`` is called (from the watchdog thread) with the stall's length in
    seconds and a list of ``(count, frames)``: the distinct stacks sampled,
    most frequent first, each its ``depth`` innermost frames as
    ``"file:line function"`` strings.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, threshold_s: float = 0.05,
                 period_s: float = 0.01, sample_s: float = 0.005, depth: int = 8,
                 max_reports_per_minute: int = 30) -> None:
        if threshold_s <= 0 or period_s <= 0 or sample_s <= 0:
            raise ValueError("StallWatch needs positive threshold_s, period_s and sample_s")
        self.loop = loop
        self.threshold_s = threshold_s
        self.period_s = period_s
        self.sample_s = sample_s
        self.depth = depth
        self.max_reports_per_minute = max_reports_per_minute
        self._loop_thread_id = threading.get_ident()
        self._beat = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Stalls seen (reported or not) and the longest, for tests and stats.
        self.stalls = 0
        self.longest_s = 0.0
        self._window_start = time.monotonic()
        self._window_reports = 0
        # Garbage collections in the loop's thread, timed by a gc callback: the
        # collector holds the GIL, so the watchdog cannot even send a beat while
        # one runs; a collection that is itself a stall is reported from here.
        self._gc_started = 0.0
        self._gc_total_s = 0.0
        self._gc_last_gen = -1
        self._report_lock = threading.Lock()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != self._loop_thread_id:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took_s = time.perf_counter() - self._gc_started
        self._gc_total_s += took_s
        generation = int(info.get("generation", 0))
        self._gc_last_gen = generation
        if took_s >= self.threshold_s:
            self._stall(took_s, [(1, [f"(garbage collection of generation {generation})"])],
                        gc_s=took_s, gc_generation=generation)

    def _stall(self, took_s: float, stacks: list[tuple[int, list[str]]], *, gc_s: float,
               gc_generation: int, others: list[tuple[int, list[str]]] | None = None) -> None:
        """Count a stall and report it, at most ``max_reports_per_minute`` a minute."""
        with self._report_lock:
            self.stalls += 1
            self.longest_s = max(self.longest_s, took_s)
            now = time.monotonic()
            if now - self._window_start >= 60.0:
                self._window_start, self._window_reports = now, 0
            if self._window_reports >= self.max_reports_per_minute:
                return
            self._window_reports += 1
        self.report(took_s, stacks, gc_s=gc_s, gc_generation=gc_generation, others=others)

    def start(self) -> None:
        """Start watching; call from the loop's own thread."""
        self._loop_thread_id = threading.get_ident()
        gc.callbacks.append(self._on_gc)
        self._thread = threading.Thread(target=self._run, name="evtwin-stallwatch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        self._stop.set()
        self._beat.set()  # wakes a watchdog waiting for a beat
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        try:
            self._watch()
        except Exception:  # a diagnostic must never take anything down
            log.exception("event-loop stall watch stopped")

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._beat.clear()
            sent = time.perf_counter()
            gc_before = self._gc_total_s
            try:
                self.loop.call_soon_threadsafe(self._beat.set)
            except RuntimeError:  # the loop is closed
                return
            if not self._beat.wait(self.threshold_s):
                self._sample_until_beat(sent, gc_before)
            self._stop.wait(self.period_s)

    def _sample_until_beat(self, sent: float, gc_before: float) -> None:
        stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
        # Another thread of the process holding the interpreter (the GIL) stalls
        # the loop too: where the others were, by thread name and innermost frames.
        others: collections.Counter[tuple[str, ...]] = collections.Counter()
        names = {t.ident: t.name for t in threading.enumerate()}
        me = threading.get_ident()
        while not self._beat.wait(self.sample_s):
            if self._stop.is_set():
                return
            frames = sys._current_frames()
            frame = frames.get(self._loop_thread_id)
            if frame is None:
                return
            stacks[_where(frame, self.depth)] += 1
            for ident, other in frames.items():
                if ident not in (me, self._loop_thread_id):
                    others[(names.get(ident, str(ident)), *_where(other, 3))] += 1
        took_s = time.perf_counter() - sent
        gc_s = self._gc_total_s - gc_before
        if gc_s >= self.threshold_s and gc_s >= 0.8 * took_s:
            return  # a collection, already reported by the gc callback
        self._stall(took_s, [(n, list(st)) for st, n in stacks.most_common(3)], gc_s=gc_s,
                    gc_generation=self._gc_last_gen if gc_s > 0 else -1,
                    others=[(n, list(st)) for st, n in others.most_common(4)])

    def report(self, took_s: float, stacks: list[tuple[int, list[str]]], *,
               gc_s: float = 0.0, gc_generation: int = -1,
               others: list[tuple[int, list[str]]] | None = None) -> None:
        """Log one ``loop_stall`` line (override to collect them elsewhere).

        ``gc_s`` is the time the loop's thread spent in garbage collection
        during the stall (about; its oldest generation ``gc_generation``, -1: none).
        ``others``: the other threads' samples, each the thread's name followed by
        its innermost frames.
        """
        top = stacks[0][1][-1] if stacks and stacks[0][1] else "unknown"
        log.warning("event loop blocked %.0f ms (%.0f ms of it collecting garbage), "
                    "mostly in %s", took_s * 1000.0, gc_s * 1000.0, top,
                    extra={"event": "loop_stall", "ms": round(took_s * 1000.0, 1),
                           "gc_ms": round(gc_s * 1000.0, 1), "gc_generation": gc_generation,
                           "stacks": [{"samples": n, "frames": s} for n, s in stacks],
                           "other_threads": [{"samples": n, "thread": s[0], "frames": s[1:]}
                                             for n, s in (others or [])]})


def _where(frame: FrameType, depth: int) -> tuple[str, ...]:
    """The ``depth`` innermost frames of a stack as ``"file:line function"``,
    outermost first (no source lookup: this runs while the loop is stuck)."""
    out: list[str] = []
    f: FrameType | None = frame
    while f is not None and len(out) < depth:
        out.append(f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}")
        f = f.f_back
    return tuple(reversed(out))
