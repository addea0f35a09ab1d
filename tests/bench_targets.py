"""Benchmarks: the speed targets of issue 10, each against a baseline in the same run.

- ``district_250.toml`` (250 stations, 112 steps of 15 min, ``equal_share``,
  Kerber Dorfnetz, grid on) over ``websocket``, ``memory`` and ``direct``:
  station-steps per second of the step loop, and the whole ``evtwin run``
  process (imports, build, run, results and plots written) timed from outside.
  The baseline is the default transport, websocket, in the same run; the KPIs
  of the three must be identical.
- ``workplace_edf_54.toml`` (54 EVSEs, one day at 5 min, EDF, 150 kW site
  limit): the whole process over websocket and over direct.
- One week (``EVTWIN_WEEK_DAYS``, default 7) of ``district_250.toml`` at
  1-minute steps over websocket: run time, and resident memory after the first
  day and at the end (read from ``/proc`` by a thread of the run's own
  process), against the same scenario's first day.

Every run is a real subprocess (``evtwin run``), the way a user runs it.
Nothing asserts a wall-clock number; the figures are printed for the README.
Run: ``make bench`` or ``pytest tests/bench_targets.py --benchmark-only -s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "bench_scenarios"
EVTWIN = [sys.executable, "-m", "evtwin.sim.cli"]


def _evtwin_run(scenario: Path, out: Path, *args: str) -> tuple[dict[str, Any], float]:
    """Run ``evtwin run`` in a subprocess; its kpis.json and the process's wall time."""
    t0 = time.perf_counter()
    done = subprocess.run([*EVTWIN, "run", str(scenario), "--quiet", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=3600)
    took = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    folder = max(out.iterdir(), key=lambda p: p.stat().st_mtime)
    return json.loads((folder / "kpis.json").read_text()), took


@pytest.mark.benchmark(group="targets")
def test_district_250_on_three_transports(benchmark: Any, tmp_path: Path) -> None:
    scenario = SCENARIOS / "district_250.toml"
    station_steps = 250 * 112
    results: dict[str, tuple[dict[str, Any], float]] = {}

    def once() -> None:
        for transport in ("websocket", "memory", "direct"):
            results[transport] = _evtwin_run(scenario, tmp_path / transport,
                                             "--transport", transport)

    benchmark.pedantic(once, rounds=1, iterations=1, warmup_rounds=0)
    kpis = {t: r[0]["kpis"] for t, r in results.items()}
    assert kpis["memory"] == kpis["websocket"] == kpis["direct"]
    base = results["websocket"][0]["performance"]["wall_time_s"]
    print(f"\ndistrict_250.toml, {station_steps:,} station-steps, "
          f"{kpis['websocket']['ocpp_messages']:,.0f} OCPP messages:")
    for transport, (record, process_s) in results.items():
        loop_s = record["performance"]["wall_time_s"]
        rate = station_steps / loop_s
        benchmark.extra_info[f"{transport}_station_steps_per_s"] = round(rate)
        benchmark.extra_info[f"{transport}_process_s"] = round(process_s, 2)
        print(f"  {transport:9} loop {loop_s:6.2f} s = {rate:8,.0f} station-steps/s "
              f"({base / loop_s:4.1f}x websocket); whole process {process_s:6.2f} s")


@pytest.mark.benchmark(group="targets")
def test_edf_day_54_evses(benchmark: Any, tmp_path: Path) -> None:
    scenario = SCENARIOS / "workplace_edf_54.toml"
    results: dict[str, tuple[dict[str, Any], float]] = {}

    def once() -> None:
        for transport in ("websocket", "direct"):
            results[transport] = _evtwin_run(scenario, tmp_path / transport,
                                             "--transport", transport)

    benchmark.pedantic(once, rounds=1, iterations=1, warmup_rounds=0)
    assert results["websocket"][0]["kpis"] == results["direct"][0]["kpis"]
    print("\nworkplace_edf_54.toml (54 EVSEs, 288 steps, EDF, 150 kW):")
    for transport, (record, process_s) in results.items():
        loop_s = record["performance"]["wall_time_s"]
        benchmark.extra_info[f"{transport}_process_s"] = round(process_s, 2)
        print(f"  {transport:9} loop {loop_s:5.2f} s; whole process {process_s:5.2f} s")


_WEEK_SCRIPT = """
import json, sys, threading, time
from evtwin.sim import Twin, load_scenario

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")

days = float(sys.argv[2])
sc = load_scenario(sys.argv[1], {"duration_h": 24 * days, "step_s": 60,
                                 "csms.meter_interval_s": 300, "control.interval_s": 300})
marks = {}
peak = [0.0]

def sample():
    while True:
        peak[0] = max(peak[0], rss_mib())
        time.sleep(0.5)

threading.Thread(target=sample, daemon=True).start()
steps_per_day = 1440

def progress(done, total):
    if done % steps_per_day == 1 and done > 1:
        marks[f"day_{(done - 1) // steps_per_day}"] = {"rss_mib": rss_mib(),
                                                       "peak_mib": peak[0]}

twin = Twin(sc, database=sys.argv[3], progress=progress)
result = twin.run()
print(json.dumps({"wall_s": result.performance["wall_time_s"], "marks": marks,
                  "end_rss_mib": rss_mib(), "peak_mib": max(peak[0], rss_mib()),
                  "energy_kwh": result.kpis["energy_delivered_kwh"]}))
"""


@pytest.mark.benchmark(group="targets")
def test_week_of_250_stations_at_one_minute(benchmark: Any, tmp_path: Path) -> None:
    days = float(os.environ.get("EVTWIN_WEEK_DAYS", "7"))
    scenario = SCENARIOS / "district_250.toml"
    out: dict[str, Any] = {}

    def once() -> None:
        done = subprocess.run([sys.executable, "-c", _WEEK_SCRIPT, str(scenario), str(days),
                               str(tmp_path / "csms.sqlite")],
                              capture_output=True, text=True, timeout=4 * 3600)
        assert done.returncode == 0, done.stderr[-2000:]
        out.update(json.loads(done.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(once, rounds=1, iterations=1, warmup_rounds=0)
    station_steps = 250 * 1440 * days
    benchmark.extra_info.update({"wall_s": round(out["wall_s"], 1),
                                 "peak_mib": round(out["peak_mib"])})
    print(f"\ndistrict_250.toml, {days:g} day(s) at 1-minute steps over websocket: "
          f"{out['wall_s']:.0f} s ({station_steps / out['wall_s']:,.0f} station-steps/s), "
          f"peak RSS {out['peak_mib']:.0f} MiB, at the end {out['end_rss_mib']:.0f} MiB")
    for day, mark in sorted(out["marks"].items()):
        print(f"  after {day.replace('_', ' ')}: RSS {mark['rss_mib']:.0f} MiB "
              f"(peak so far {mark['peak_mib']:.0f} MiB)")
