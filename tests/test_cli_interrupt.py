"""Ctrl-C stops ``run``, ``sweep``, ``compare`` and ``check`` at once: exit 130, ``interrupted``, no
traceback, no worker process left running and no half result folder.

Real ``evtwin`` processes get SIGINT: from the test to the command alone (as ``kill
-INT``), or to its whole process group as a terminal's Ctrl-C does, which reaches
the worker processes too. (``csms serve``: tests/test_csms_serve_errors.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "scenarios" / "demo.toml")
#: Scales every wait of this module (a loaded CI machine).
TIMEOUT_SCALE = float(os.environ.get("EVTWIN_TEST_TIMEOUT_SCALE", "1"))
#: From SIGINT to exit: the command stops at once (its objects frozen, so the
#: interpreter's teardown does not collect them); a margin for a busy 2-core machine.
STOP_S = 2.0 * TIMEOUT_SCALE


def start(args: list[str], cwd: Path, *, group: bool = False) -> subprocess.Popen[str]:
    """``evtwin ARGS`` with default Ctrl-C handling, whatever pytest does with SIGINT;
    ``group``: in a process group of its own (so a terminal's Ctrl-C can be imitated)."""
    return subprocess.Popen(
        [sys.executable, "-m", "evtwin.sim.cli", *args], cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group,
        preexec_fn=None if group else lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_workers(proc: subprocess.Popen[str], n: int) -> list[psutil.Process]:
    """The command's ``n`` worker processes, as soon as they exist."""
    deadline = time.monotonic() + 60 * TIMEOUT_SCALE
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        workers = [c for c in psutil.Process(proc.pid).children()
                   if "resource_tracker" not in " ".join(c.cmdline())]
        if len(workers) >= n:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"{n} worker processes did not start")


def interrupt(proc: subprocess.Popen[str], *, group: bool = False) -> tuple[str, float]:
    """SIGINT to the command (``group``: to its process group); its stderr once it
    exited, and the seconds that took."""
    t = time.monotonic()
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60 * TIMEOUT_SCALE)
    return err, time.monotonic() - t


def assert_interrupted(proc: subprocess.Popen[str], err: str, took_s: float) -> None:
    assert "Traceback" not in err, err
    # 130 is what a shell reports for both a clean exit(130) and a process that ended
    # by SIGINT itself (-2 here): either way the command stopped and said so.
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)
    assert err.strip().splitlines()[-1] == "interrupted", err
    assert took_s < STOP_S, took_s


def assert_gone(workers: list[psutil.Process]) -> None:
    """No worker keeps running (and computing) after the command ended."""
    deadline = time.monotonic() + 2 * TIMEOUT_SCALE
    while time.monotonic() < deadline:
        running = [w for w in workers
                   if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
        if not running:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker processes left running: {running}")


@pytest.mark.slow
def test_ctrl_c_stops_compare_during_its_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start(["compare", DEMO, "--strategies", "uncontrolled,equal_share", "--workers",
                  "2", "--out", str(out)], tmp_path)
    workers = wait_for_workers(proc, 2)
    time.sleep(2.0 * TIMEOUT_SCALE)  # the runs are under way (each takes several seconds)
    err, took_s = interrupt(proc)
    assert_interrupted(proc, err, took_s)
    assert_gone(workers)
    # compare makes its folder once every run is done: none, not a half one.
    assert not out.exists() or not any(out.iterdir()), list(out.rglob("*"))


@pytest.mark.slow
def test_terminal_ctrl_c_while_compare_starts_its_workers(tmp_path: Path) -> None:
    # A terminal sends SIGINT to every process of the group. The workers, spawned a
    # moment ago and still importing, must leave it to the command: no traceback of
    # theirs, no worker dead before the command stops them. Which process handles the
    # signal first is a race; the workers are given it first, so the test is not.
    out = tmp_path / "out"
    proc = start(["compare", DEMO, "--strategies", "uncontrolled,equal_share", "--workers",
                  "2", "--out", str(out)], tmp_path, group=True)
    workers = wait_for_workers(proc, 2)
    time.sleep(0.2)  # spawned, and busy importing
    for worker in workers:
        os.kill(worker.pid, signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    err, took_s = interrupt(proc, group=True)
    assert_interrupted(proc, err, took_s)
    assert_gone(workers)
    assert not out.exists() or not any(out.iterdir()), list(out.rglob("*"))


@pytest.mark.slow
def test_ctrl_c_stops_check(tmp_path: Path) -> None:
    proc = start(["check", DEMO], tmp_path)
    # One scenario runs in the command's own process: give it time to be running.
    time.sleep(4.0 * TIMEOUT_SCALE)
    assert proc.poll() is None, proc.communicate()
    err, took_s = interrupt(proc)
    assert_interrupted(proc, err, took_s)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_stops_check_with_workers_without_waiting_for_their_runs(tmp_path: Path
                                                                         ) -> None:
    proc = start(["check", DEMO, DEMO, "--workers", "2"], tmp_path)
    workers = wait_for_workers(proc, 2)
    time.sleep(2.0 * TIMEOUT_SCALE)
    err, took_s = interrupt(proc)
    assert_interrupted(proc, err, took_s)
    assert_gone(workers)
    assert list(tmp_path.iterdir()) == []


def _wait_for(path_glob: str, root: Path, proc: subprocess.Popen[str]) -> list[Path]:
    deadline = time.monotonic() + 60 * TIMEOUT_SCALE
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        found = list(root.glob(path_glob))
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{path_glob} did not appear in {root}")


@pytest.mark.slow
def test_ctrl_c_stops_run_and_removes_its_half_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start(["run", DEMO, "--out", str(out), "--quiet"], tmp_path)
    _wait_for("demo-*/csms.sqlite", out, proc)  # the run is under way
    time.sleep(0.5 * TIMEOUT_SCALE)
    err, took_s = interrupt(proc)
    assert_interrupted(proc, err, took_s)
    assert not any(out.iterdir()), list(out.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["reactive", "predictive"])
def test_ctrl_c_stops_a_direct_transport_run_and_its_failure_model_training(
        tmp_path: Path, policy: str) -> None:
    """operations.toml runs on the direct transport, where nothing else suspends the
    loop, and predictive maintenance first trains on a 60-day history: Ctrl-C stops
    either at once."""
    out = tmp_path / "out"
    proc = start(["run", str(Path(DEMO).parent / "operations.toml"), "--set",
                  f"maintenance.policy={policy}", "--out", str(out), "--quiet"], tmp_path)
    _wait_for("operations-*/csms.sqlite" if policy == "reactive" else "operations-*",
              out, proc)
    time.sleep(2.0 * TIMEOUT_SCALE)
    err, took_s = interrupt(proc)
    assert_interrupted(proc, err, took_s)
    assert not any(out.iterdir()), list(out.rglob("*"))


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_which_the_same_command_resumes(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", DEMO, "--set", "ev.count=4,6,8,10,12,14", "--set", "duration_h=1",
            "--workers", "2", "--out", str(out), "--quiet"]
    proc = start(args, tmp_path)
    workers = wait_for_workers(proc, 2)
    (journal,) = _wait_for("journal.jsonl", out, proc)
    deadline = time.monotonic() + 60 * TIMEOUT_SCALE
    while not journal.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)  # at least one run done
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=60 * TIMEOUT_SCALE)
    assert time.monotonic() - t < STOP_S
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "run the same command again to resume" in stdout
    assert_gone(workers)
    kept = len(journal.read_text().splitlines())
    assert 1 <= kept < 6
    again = subprocess.run([sys.executable, "-m", "evtwin.sim.cli", *args], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300 * TIMEOUT_SCALE)
    assert again.returncode == 0, again.stderr
    assert f"{kept} found done and not run again" in again.stdout
