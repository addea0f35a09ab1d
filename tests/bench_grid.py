"""Benchmark: one Feeder.solve step, power-grid-model vs pandapower runpp.

Skipped by default (``addopts = --benchmark-skip``); run with
``pytest tests/bench_grid.py --benchmark-only -s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from evtwin.grid import Feeder, load_network

N_STATIONS = 40
PGM_REPS = 500
RUNPP_REPS = 30


def _step_fn(feeder: Feeder, rng: np.random.Generator) -> Callable[[], object]:
    """One runner step: a new time, fresh EV powers, a fresh household draw."""
    ev_p_kw = np.zeros(N_STATIONS)
    state = {"t_s": 0.0}

    def step() -> object:
        state["t_s"] += 60.0
        ev_p_kw[:] = rng.uniform(0.0, 11.0, N_STATIONS)
        return feeder.solve(state["t_s"], ev_p_kw, rng)

    return step


def _mean_step_s(step: Callable[[], object], reps: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        step()
    return (time.perf_counter() - start) / reps


@pytest.mark.benchmark(group="grid-step")
def test_bench_solve_step_pgm_vs_runpp(benchmark: BenchmarkFixture) -> None:
    net = load_network("kerber_dorfnetz")
    pgm_step = _step_fn(Feeder(net, n_stations=N_STATIONS, engine="pgm"), np.random.default_rng(1))
    runpp_step = _step_fn(
        Feeder(net, n_stations=N_STATIONS, engine="pandapower"), np.random.default_rng(1)
    )

    # Both engines timed in the same run, same machine state.
    pgm_s = _mean_step_s(pgm_step, PGM_REPS)
    runpp_s = _mean_step_s(runpp_step, RUNPP_REPS)
    speedup = runpp_s / pgm_s

    # pytest-benchmark's own statistics for the fast step.
    benchmark(pgm_step)

    benchmark.extra_info["pgm_ms_per_step"] = pgm_s * 1e3
    benchmark.extra_info["runpp_ms_per_step"] = runpp_s * 1e3
    benchmark.extra_info["speedup_vs_runpp"] = speedup
    print(
        f"\nkerber_dorfnetz, {N_STATIONS} stations: pgm {pgm_s * 1e3:.3f} ms/step, "
        f"runpp {runpp_s * 1e3:.2f} ms/step, speedup {speedup:.0f}x (target >= 30x)"
    )
    assert speedup > 1.0
