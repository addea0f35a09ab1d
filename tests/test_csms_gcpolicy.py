"""The garbage-collector policy of ``csms serve`` (csms.gcpolicy)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from evtwin.csms.gcpolicy import GCPolicy


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    # The policy is process-wide: leave the test process as it was.
    yield
    gc.unfreeze()


def test_tick_freezes_survivors_and_frees_young_cycles() -> None:
    clock = [0.0]
    policy = GCPolicy(check_s=10.0, sweep_growth=0.5, sweep_s=3600.0,
                      monotonic=lambda: clock[0], peak_memory=lambda: 1.0)
    policy.sweep()
    kept = _Cycle()
    young_garbage = _Cycle()
    young = weakref.ref(young_garbage)
    del young_garbage
    policy.tick()
    assert gc.get_freeze_count() > 0 and kept.me is kept
    # The young cycle was collected before the freeze, not frozen with the survivors.
    assert young() is None


@pytest.mark.slow
def test_a_sweep_frees_cycles_that_died_frozen_and_runs_on_growth_or_time() -> None:
    clock = [0.0]
    memory = [1000.0]
    policy = GCPolicy(check_s=10.0, sweep_growth=0.5, sweep_s=100.0,
                      monotonic=lambda: clock[0], peak_memory=lambda: memory[0])
    policy.sweep()
    assert policy.sweeps == 1
    policy.tick()  # no growth, not yet time: no sweep
    assert policy.sweeps == 1
    clock[0] = 100.0
    policy.tick()  # time
    assert policy.sweeps == 2
    frozen_cycles = [_Cycle() for _ in range(1000)]
    memory[0] = 1400.0
    policy.tick()  # +40 %: no sweep
    assert policy.sweeps == 2
    memory[0] = 1600.0
    policy.tick()  # +60 %: growth
    assert policy.sweeps == 3
    one = weakref.ref(frozen_cycles[0])
    del frozen_cycles  # dead while frozen: only the next sweep frees them
    gc.collect()
    assert one() is not None
    policy.sweep()
    assert one() is None


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="check_s=0"):
        GCPolicy(check_s=0)
