"""Benchmark: the same run over each transport (``make bench``).

Runs ``overload.toml`` (48 stations, 24 h at 60 s steps, OCPP 2.0.1) over the
``websocket`` transport (the baseline, measured in the same run) and over
``memory``, interleaved, best of ``EVTWIN_BENCH_ROUNDS`` (2) each, and prints
station-steps per second of the step loop and the ratio. The KPIs of the two
must be identical (they are compared here too; tests/test_transports.py is the
test of record). Nothing asserts wall-clock numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from evtwin.sim import Twin, load_scenario

OVERLOAD = Path(__file__).resolve().parents[1] / "scenarios" / "overload.toml"


@pytest.mark.benchmark(group="transports")
def test_memory_transport_against_websockets(benchmark: Any) -> None:
    rounds = int(os.environ.get("EVTWIN_BENCH_ROUNDS", "2"))
    best: dict[str, float] = {}
    kpis: dict[str, dict[str, float]] = {}
    stations = steps = 0

    def once() -> None:
        nonlocal stations, steps
        for transport in ("websocket", "memory"):
            scenario = load_scenario(OVERLOAD, {"run.transport": transport})
            twin = Twin(scenario)
            result = twin.run()
            stations = len(twin.model.stations)
            steps = int(scenario.duration_s // scenario.step_s)
            rate = stations * steps / result.performance["wall_time_s"]
            best[transport] = max(best.get(transport, 0.0), rate)
            kpis[transport] = result.kpis

    benchmark.pedantic(once, rounds=rounds, iterations=1, warmup_rounds=0)
    assert kpis["websocket"] == kpis["memory"]
    ratio = best["memory"] / best["websocket"]
    benchmark.extra_info.update({f"{k}_station_steps_per_s": round(v) for k, v in best.items()})
    benchmark.extra_info["memory_vs_websocket"] = round(ratio, 2)
    print(f"\noverload.toml, {stations} stations x {steps} steps, best of {rounds}: "
          f"websocket {best['websocket']:,.0f} station-steps/s, memory "
          f"{best['memory']:,.0f} station-steps/s: memory is {ratio:.2f}x")
