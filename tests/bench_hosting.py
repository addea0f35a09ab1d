"""Benchmark: batched power flows for planning studies against pandapower ``runpp``.

Issue 12's targets: batched power flows per second at least 200x pandapower's on the
same cases, and the hosting-capacity study of ``scenarios/planning.toml`` (every bus,
100 draws x 5 penetration levels) in under 2 minutes on 2 cores. Both engines are
timed in the same run; nothing asserts a wall-clock number, the figures are printed
for the README. Run with ``make bench`` (or ``pytest tests/bench_hosting.py
--benchmark-only -s``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from evtwin.grid import Feeder, load_buses, load_cases, load_network
from evtwin.sim import load_scenario
from evtwin.sim.planning import SCREEN_STRATEGIES, hosting_study, penetration_study

PLANNING = Path(__file__).resolve().parents[1] / "scenarios" / "planning.toml"
BATCH = 1460        # ten load levels on each of the 146 house buses
RUNPP_CASES = 40    # pandapower is timed on a sample of the same cases


def _cases(feeder: Feeder, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    p, q, _ = load_cases(feeder)
    n = feeder.n_stations
    ev = np.zeros((BATCH, n))
    ev[np.arange(BATCH), np.arange(BATCH) % n] = rng.uniform(0.0, 80.0, BATCH)
    return np.repeat(p, BATCH, axis=0), np.repeat(q, BATCH, axis=0), ev


@pytest.mark.benchmark(group="planning")
def test_bench_batched_power_flows_vs_runpp(benchmark: BenchmarkFixture) -> None:
    sc = load_scenario(PLANNING)
    net = load_network(sc.grid.network)
    buses = load_buses(net)
    pgm = Feeder(net, n_stations=len(buses), station_buses=buses, engine="pgm")
    ref = Feeder(net, n_stations=len(buses), station_buses=buses, engine="pandapower")
    p, q, ev = _cases(pgm, np.random.default_rng(3))
    pgm.solve_batch(p[:10], q[:10], ev[:10])  # warm-up
    start = time.perf_counter()
    bus, _, _ = pgm.solve_batch(p, q, ev)
    pgm_s = (time.perf_counter() - start) / BATCH
    start = time.perf_counter()
    ref_bus, _, _ = ref.solve_batch(p[:RUNPP_CASES], q[:RUNPP_CASES], ev[:RUNPP_CASES])
    runpp_s = (time.perf_counter() - start) / RUNPP_CASES
    # The same answers: the batch is the reference's power flow, faster.
    assert np.abs(bus[:RUNPP_CASES] - ref_bus).max() < 1e-6
    benchmark.pedantic(pgm.solve_batch, args=(p, q, ev), rounds=3, iterations=1)
    ratio = runpp_s / pgm_s
    benchmark.extra_info.update({"batched_pf_per_s": 1 / pgm_s, "runpp_pf_per_s": 1 / runpp_s,
                                 "ratio": ratio})
    print(f"\nbatched power flows ({sc.grid.network}, {len(net.bus)} buses, batch {BATCH}): "
          f"{1 / pgm_s:,.0f}/s; pandapower runpp: {1 / runpp_s:,.1f}/s; "
          f"ratio {ratio:,.0f}x (target >= 200x)")


@pytest.mark.benchmark(group="planning")
def test_bench_hosting_study_of_the_planning_feeder(benchmark: BenchmarkFixture) -> None:
    sc = load_scenario(PLANNING)

    def study() -> None:
        hosting_study(sc)
        penetration_study(sc, [0.2, 0.4, 0.6, 0.8, 1.0], draws=100)

    start = time.perf_counter()
    study()
    took_s = time.perf_counter() - start
    benchmark.pedantic(study, rounds=1, iterations=1)
    benchmark.extra_info["study_s"] = took_s
    print(f"\nhosting-capacity study of planning.toml (146 buses; 100 draws x 5 levels x "
          f"{len(SCREEN_STRATEGIES)} strategies): {took_s:.1f} s (target < 120 s)")
