"""Small versions of the soak checks against a real ``evtwin csms serve`` (default run).

Each is bounded (tens of stations, seconds of traffic, one crash, a few hundred
garbage frames) and asserts what must hold at any size: every CALL answered,
every station back after a storm, no acknowledged TransactionEvent lost after
SIGKILL, a fuzzed server still serving its good stations promptly. The large
versions are ``make soak`` (tests/soak_csms.py) and ``make bench``
(tests/bench_csms_load.py). Harness: tests/loadgen.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.loadgen import SCALE, format_report, run_crash_check, run_fuzz_check, run_load

pytestmark = pytest.mark.slow


def test_every_call_is_answered_and_a_storm_recovers(tmp_path: Path) -> None:
    report = run_load(tmp_path, 50, period_s=1.0, steady_s=6.0, ramp_per_s=200.0,
                      storm_timeout_s=30.0, spec_storm_backoff_s=(0.0, 2.0))
    print("\n" + format_report([report], "CSMS load, 50 stations"))
    assert report.server_alive
    assert report.started == 50 and report.start_failed == 0
    # Only CALLs in flight when the harness itself cut the connections go unanswered.
    cut = sum(n for kind, n in report.errors.items() if kind.startswith("dropped_by_storm"))
    assert report.calls - report.answered == cut, report.errors
    assert {k: n for k, n in report.errors.items() if not k.startswith("dropped_by_storm")} == {}
    assert report.steady.n >= 50 * 4  # about 6 updates each; the harness really ran
    # The CSMS's own timings (its stats lines) cover the same steady phase.
    assert report.server_steady.n >= report.steady.n * 0.9
    assert report.server_steady.p99 <= report.server_steady.max
    assert report.storm_dropped == 50 and report.storm_back == 50
    # The second storm: every station back after OCPP's random reconnect back-off.
    assert report.spec_storm is not None
    assert report.spec_storm.dropped == 50 and report.spec_storm.back == 50


def test_no_acknowledged_transaction_event_is_lost_after_kill_9(tmp_path: Path) -> None:
    report = run_crash_check(tmp_path, 30, period_s=0.5, before_kill_s=4.0,
                             after_restart_s=3.0)
    print(f"\ncrash: {report.acked_events} events acknowledged, {report.events_in_db} in the "
          f"database, restart listening after {report.restart_listening_s:.2f} s, all "
          f"stations back after {report.reconnect_all_back_s:.2f} s")
    assert report.acked_events > 30 * 4  # traffic before and after the kill
    assert report.lost == []
    assert report.open_transactions_after_restart == 30
    assert report.back == 30
    assert report.unacked_at_end == 0  # what was in flight at the kill was sent again


def test_garbage_frames_do_not_delay_good_stations(tmp_path: Path) -> None:
    report = run_fuzz_check(tmp_path, good=10, fuzzers=4, frames_per_fuzzer=60,
                            period_s=0.5, fuzz_per_s=10.0)
    print(f"\nfuzz: {report.frames_sent} garbage frames; good stations p99 "
          f"{report.good.p99:.1f} ms, max {report.good.max:.1f} ms; {report.fuzz}")
    assert report.frames_sent == 4 * 60
    assert report.server_alive and report.fresh_boot_ok
    assert report.good.n > 10 * 5
    assert report.good_calls == report.good_answered and report.good_errors == {}
    assert report.good.max < 1000.0 * SCALE
