"""Benchmark: sweep throughput (runs per minute) on 1 and on 2 local workers.

Run with ``make bench`` (pytest-benchmark; skipped in the default test run).
The same sweep, ``scenarios/demo.toml`` (24 h, 14 EVs, ~4-5 s a run) over 16
seeds, runs on one local worker and on two, twice each and interleaved (the
best of each counts), every sweep into a fresh folder (nothing resumed), pool
start-up included: that is the throughput a user gets. The target is a ratio
measured in the same run, so it holds on any machine with two free cores: two
workers reach >= 1.7x the runs per minute of one.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from evtwin.sim.sweep import plan_sweep, run_sweep

DEMO = Path(__file__).resolve().parents[1] / "scenarios" / "demo.toml"
RUNS = 16


def _runs_per_min(tmp_path: Path, workers: int) -> float:
    plan = plan_sweep(DEMO, ["csms.database=memory"], seeds=str(RUNS))
    t0 = time.perf_counter()
    outcome = run_sweep(plan, tmp_path / f"workers-{workers}", workers=workers, figures=False)
    wall_s = time.perf_counter() - t0
    assert outcome.ran == RUNS and outcome.failed == 0
    return RUNS / (wall_s / 60.0)


@pytest.mark.benchmark(group="sweep")
def test_sweep_throughput_on_one_and_two_workers(benchmark, tmp_path: Path) -> None:
    rates: dict[int, list[float]] = {1: [], 2: []}

    def measure() -> None:
        # Interleaved, best of two each: a burst of other load on the machine
        # slows one sweep, not the comparison.
        for i in range(2):
            for workers in (1, 2):
                rates[workers].append(_runs_per_min(tmp_path / f"round-{i}", workers))

    benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
    one, two = max(rates[1]), max(rates[2])
    ratio = two / one
    benchmark.extra_info.update(runs=RUNS, runs_per_min_1_worker=round(one, 1),
                                runs_per_min_2_workers=round(two, 1), ratio=round(ratio, 2),
                                all_runs_per_min={str(k): [round(r, 1) for r in v]
                                                  for k, v in rates.items()})
    print(f"\nsweep of {RUNS} demo runs: {one:.1f} runs/min on 1 worker, {two:.1f} on 2 "
          f"workers: {ratio:.2f}x (all: {rates})")
    assert ratio >= 1.7
