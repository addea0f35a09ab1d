"""Soak checks against a real ``evtwin csms serve``: ``make soak`` (marker ``soak``).

Sizes come from the environment so a developer can run smaller or larger:

* ``EVTWIN_SOAK_STATIONS`` (2000) stations, TransactionEvent every
  ``EVTWIN_SOAK_PERIOD_S`` (10) s, for ``EVTWIN_SOAK_DURATION_S`` (120) s, then a
  reconnect storm (all connections dropped at once);
* crash: ``EVTWIN_SOAK_CRASH_STATIONS`` (500) stations, one SIGKILL during traffic;
* fuzz: ``EVTWIN_SOAK_FUZZERS`` (20) connections sending
  ``EVTWIN_SOAK_FUZZ_FRAMES`` (300) garbage frames each beside
  ``EVTWIN_SOAK_GOOD`` (200) good stations.

Figures are printed (run with ``-s``). The assertions are about correctness
(answers, lost events, recovery), never about wall-clock numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.loadgen import (
    env_float,
    env_int,
    format_report,
    run_crash_check,
    run_fuzz_check,
    run_load,
)

pytestmark = pytest.mark.soak


def test_soak_load_and_storm(tmp_path: Path) -> None:
    report = run_load(tmp_path, env_int("EVTWIN_SOAK_STATIONS", 2000),
                      period_s=env_float("EVTWIN_SOAK_PERIOD_S", 10.0),
                      steady_s=env_float("EVTWIN_SOAK_DURATION_S", 120.0),
                      ramp_per_s=env_float("EVTWIN_SOAK_RAMP_PER_S", 250.0))
    print("\n" + format_report([report], "soak: load and reconnect storm"))
    assert report.server_alive
    assert report.started > 0


def test_soak_crash(tmp_path: Path) -> None:
    report = run_crash_check(tmp_path, env_int("EVTWIN_SOAK_CRASH_STATIONS", 500),
                             period_s=2.0, before_kill_s=15.0, after_restart_s=15.0)
    print(f"\nsoak crash: {report.stations} stations, {report.acked_events} TransactionEvents "
          f"acknowledged, {report.events_in_db} in the database, {len(report.lost)} lost; "
          f"restart to listening {report.restart_listening_s:.2f} s; "
          f"{report.back}/{report.stations} back after {report.reconnect_all_back_s:.1f} s; "
          f"{report.open_transactions_after_restart} open transactions after restart; "
          f"calls {report.calls} answered {report.answered}; errors {report.errors}")
    assert report.lost == []
    assert report.unacked_at_end == 0


def test_soak_fuzz(tmp_path: Path) -> None:
    report = run_fuzz_check(tmp_path, good=env_int("EVTWIN_SOAK_GOOD", 200),
                            fuzzers=env_int("EVTWIN_SOAK_FUZZERS", 20),
                            frames_per_fuzzer=env_int("EVTWIN_SOAK_FUZZ_FRAMES", 300),
                            period_s=2.0)
    print(f"\nsoak fuzz: {report.frames_sent} garbage frames from {report.fuzzers} connections; "
          f"{report.good_stations} good stations: {report.good.n} calls, p50 "
          f"{report.good.p50:.1f} ms, p99 {report.good.p99:.1f} ms, max {report.good.max:.1f} ms, "
          f"errors {report.good_errors}; server alive {report.server_alive}, new station boots "
          f"{report.fresh_boot_ok}\n  fuzz outcomes: {report.fuzz}")
    assert report.server_alive and report.fresh_boot_ok
    assert report.good_calls == report.good_answered
