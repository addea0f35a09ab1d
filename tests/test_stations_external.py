"""``evtwin stations`` drives a CSMS it does not own: here our standalone server,
started as a separate process exactly as an external CSMS would be."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from evtwin.agents.protocol import PROFILE_COLUMNS
from evtwin.sim.runner import SESSION_COLUMNS
from tests.test_csms_standalone import TIMEOUT_S, csms_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

CSMS_CONFIG = """
[control]
strategy = "equal_share"
interval_s = 0.5

[[sites]]
name = "lot"
limit_kw = 15

{stations}

[tokens]
accepted = [{tokens}]
"""


def scenario_text(hour: float, *, start: str = "2026-06-01T12:00:00Z",
                  strategy: str = "uncontrolled", interval_s: float = 300) -> str:
    return f"""
seed = 5
start = {start}
duration_h = 2
step_s = 60

[grid]
network = "create_cigre_network_lv"

[control]
strategy = "{strategy}"   # for config-for; the external CSMS decides
interval_s = {interval_s}

[ev]
count = 8

[[sites]]
name = "lot"
kind = "public"
stations = 4
evses_per_station = 1
evse_max_kw = 11
limit_kw = 15

[sites.behaviour]
arrival_mean_h = {hour:.3f}
arrival_std_h = 0.1
arrival_min_h = 0
arrival_max_h = 24
dwell_median_h = 3
dwell_sigma = 0.1
"""


def evtwin(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evtwin.sim.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300 * TIMEOUT_S / 20)


def test_stations_against_a_standalone_csms(tmp_path: Path) -> None:
    # Arrivals 20 minutes into the scenario's simulated noon, whatever the hour now:
    # the stations keep the scenario's start and shift their timestamps onto the clock.
    scenario = tmp_path / "lot.toml"
    scenario.write_text(scenario_text(12.3))
    stations = "\n".join(f'[[stations]]\nid = "lot-{i:03d}"\nsite = "lot"\n'
                         for i in range(1, 5))
    tokens = ", ".join(f'"TOKEN{i:04d}"' for i in range(1, 9))
    cfg_dir = tmp_path / "csms"
    cfg_dir.mkdir()
    (cfg_dir / "csms.toml").write_text(CSMS_CONFIG.format(stations=stations, tokens=tokens))
    with csms_process(cfg_dir, config_file=cfg_dir / "csms.toml") as server:
        proc = evtwin("stations", "--csms", f"ws://127.0.0.1:{server.port}/ocpp",
                      "--scenario", str(scenario), "--version", "2.0.1", "--speed", "600",
                      "--out", str(tmp_path / "out"), "--quiet")
        assert proc.returncode == 0, proc.stderr
    (run_dir,) = list((tmp_path / "out").iterdir())
    kpis = json.loads((run_dir / "kpis.json").read_text())["kpis"]
    # The run record says which CSMS it ran against (so it is not "reproduced" with ours).
    assert json.loads((run_dir / "run.json").read_text())["external_csms"].startswith("ws://")
    profiles = pd.read_csv(run_dir / "profiles.csv")
    ts = pd.read_csv(run_dir / "timeseries.csv")
    # The CSMS balanced the lot: profiles arrived, were accepted, and held the limit
    # except in the steps between an arrival and the CSMS's reaction.
    assert kpis["profiles_received"] == len(profiles) > 0
    assert tuple(profiles.columns) == PROFILE_COLUMNS  # also the header of an empty file
    assert set(profiles["status"]) == {"Accepted"}
    assert profiles["limit"].max() <= 15_000 + 1e-6
    assert ts["site_lot_kw"].max() > 0
    assert kpis["minutes_site_limit_exceeded"] <= 10
    assert "energy_billed_kwh" not in kpis
    # And the CSMS, for its part, recorded the transactions of these stations.
    con = sqlite3.connect(cfg_dir / "csms.sqlite")
    n_tx = con.execute("SELECT COUNT(*) FROM transactions WHERE station_id LIKE 'lot-%'"
                       ).fetchone()[0]
    con.close()
    assert n_tx == kpis["evs_served"] + kpis["evs_open_at_end"] > 0


def test_a_csms_from_config_for_runs_the_scenario_at_its_time_of_day(tmp_path: Path) -> None:
    """The README's way: config-for, csms serve, stations; here with security profile 2.

    The scenario starts at 03:00 (simulated) and its drivers arrive at 03:20: before,
    the stations replaced the start with the wall clock and, at most hours of the
    day, nobody came. Now the CSMS sees the run begin now and the visits happen.
    """
    scenario = tmp_path / "lot.toml"
    scenario.write_text(scenario_text(3.333, start="2026-06-01T03:00:00Z"))
    cfg_dir = tmp_path / "csms"
    cfg_dir.mkdir()
    made = evtwin("csms", "config-for", str(scenario), "--out", str(cfg_dir / "csms.toml"),
                  "--security-profile", "2")
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    with csms_process(cfg_dir, config_file=cfg_dir / "csms.toml") as server:
        before = datetime.now(UTC)
        proc = evtwin("stations", "--csms", f"wss://127.0.0.1:{server.port}/ocpp",
                      "--scenario", str(scenario), "--speed", "900", "--set", "duration_h=1",
                      "--password-file", str(cfg_dir / "csms.password"),
                      "--ca", str(cfg_dir / "csms-ca.pem"), "--out", str(out), "--quiet")
        assert proc.returncode == 0, proc.stderr
    (line,) = [s for s in proc.stdout.splitlines() if s.startswith("simulated ")]
    assert line.startswith("simulated 2026-06-01 03:00 UTC runs as ")
    assert "offset " in line
    (run_dir,) = list(out.iterdir())
    sessions = pd.read_csv(run_dir / "sessions.csv")
    ts = pd.read_csv(run_dir / "timeseries.csv")
    # The results keep simulated time; the visits happened in the run.
    assert ts["time"].iloc[0].startswith("2026-06-01T03:00")
    assert len(sessions) > 0 and sessions["transaction_id"].notna().sum() > 0
    assert ts["ev_kw"].max() > 0
    # The CSMS saw the transactions at wall-clock time: started after the run began,
    # within its simulated hour (the stations run ahead of the clock at --speed).
    con = sqlite3.connect(cfg_dir / "csms.sqlite")
    started = [datetime.fromisoformat(r[0].replace("Z", "+00:00")) for r in
               con.execute("SELECT started_at FROM transactions WHERE station_id LIKE 'lot-%'")]
    con.close()
    assert len(started) == sessions["transaction_id"].notna().sum()
    assert all(before <= t <= before + timedelta(hours=1, minutes=5) for t in started), started


def test_a_run_without_visits_writes_headers(tmp_path: Path) -> None:
    """No driver arrives within the run: sessions.csv and profiles.csv carry their header."""
    scenario = tmp_path / "lot.toml"
    scenario.write_text(scenario_text(20.0))  # arrivals at 20:00, the run ends at 14:00
    cfg = tmp_path / "csms.toml"
    assert evtwin("csms", "config-for", str(scenario), "--out", str(cfg)).returncode == 0
    with csms_process(tmp_path, config_file=cfg) as server:
        proc = evtwin("stations", "--csms", f"ws://127.0.0.1:{server.port}/ocpp",
                      "--scenario", str(scenario), "--speed", "3600",
                      "--out", str(tmp_path / "out"), "--quiet")
        assert proc.returncode == 0, proc.stderr
    (run_dir,) = list((tmp_path / "out").iterdir())
    for name, columns in (("sessions.csv", SESSION_COLUMNS), ("profiles.csv", PROFILE_COLUMNS)):
        lines = (run_dir / name).read_text().splitlines()
        assert lines == [",".join(columns)], name
        assert pd.read_csv(run_dir / name).empty


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("url", "extra", "parts"), [
    ("ws://127.0.0.1:{port}/ocpp", [], ["127.0.0.1 port {port}", "connection refused"]),
    ("http://127.0.0.1:{port}/ocpp", [], ["--csms http://", "ws://127.0.0.1:{port}/ocpp"]),
    ("ws://127.0.0.1:70000/ocpp", [], ["--csms", "port"]),
    ("wss://127.0.0.1:{port}/ocpp", ["--ca", "{missing}"], ["--ca", "file not found"]),
    ("wss://127.0.0.1:{port}/ocpp", ["--ca", "{not_pem}"], ["--ca", "not a PEM"]),
    ("ws://127.0.0.1:{port}/ocpp", ["--password-file", "{missing}"], ["--password-file"]),
])
def test_csms_user_errors_are_one_line_and_leave_no_folder(
        tmp_path: Path, url: str, extra: list[str], parts: list[str]) -> None:
    scenario = tmp_path / "lot.toml"
    scenario.write_text(scenario_text(12.3))
    (tmp_path / "not.pem").write_text("not a certificate\n")
    names = {"port": free_port(), "missing": tmp_path / "missing.pem",
             "not_pem": tmp_path / "not.pem"}
    proc = evtwin("stations", "--csms", url.format(**names), "--scenario", str(scenario),
                  *(e.format(**names) for e in extra), "--out", str(tmp_path / "out"),
                  "--quiet")
    assert_one_line_error(proc, *(p.format(**names) for p in parts))
    assert not (tmp_path / "out").exists()


def test_stations_the_csms_does_not_know_are_named(tmp_path: Path) -> None:
    """The shipped example config knows only CS001: every demo station is refused."""
    scenario = tmp_path / "lot.toml"
    scenario.write_text(scenario_text(12.3))
    with csms_process(tmp_path, config_file=ROOT / "docs" / "csms.example.toml") as server:
        url = f"ws://127.0.0.1:{server.port}/ocpp"
        proc = evtwin("stations", "--csms", url, "--scenario", str(scenario),
                      "--out", str(tmp_path / "out"), "--quiet")
    assert_one_line_error(proc, f"CSMS at {url} refused station lot-001 and 3 more (HTTP 404)",
                          "is it in the CSMS config? evtwin csms config-for writes one")
    assert not (tmp_path / "out").exists()
