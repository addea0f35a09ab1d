"""``evtwin stations`` drives a CSMS it does not own: here our standalone server,
started as a separate process exactly as an external CSMS would be."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from tests.test_csms_standalone import TIMEOUT_S, csms_process

pytestmark = pytest.mark.slow

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


def scenario_text(hour: float) -> str:
    return f"""
seed = 5
duration_h = 2
step_s = 60

[grid]
network = "create_cigre_network_lv"

[control]
strategy = "uncontrolled"   # ignored: the external CSMS decides

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


def test_stations_against_a_standalone_csms(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    hour = (now.hour + now.minute / 60 + 0.3) % 24  # arrivals 20 minutes into the run
    scenario = tmp_path / "lot.toml"
    scenario.write_text(scenario_text(hour))
    stations = "\n".join(f'[[stations]]\nid = "lot-{i:03d}"\nsite = "lot"\n'
                         for i in range(1, 5))
    tokens = ", ".join(f'"TOKEN{i:04d}"' for i in range(1, 9))
    cfg_dir = tmp_path / "csms"
    cfg_dir.mkdir()
    (cfg_dir / "csms.toml").write_text(CSMS_CONFIG.format(stations=stations, tokens=tokens))
    with csms_process(cfg_dir, config_file=cfg_dir / "csms.toml") as server:
        proc = subprocess.run(
            [sys.executable, "-m", "evtwin.sim.cli", "stations",
             "--csms", f"ws://127.0.0.1:{server.port}/ocpp", "--scenario", str(scenario),
             "--version", "2.0.1", "--speed", "600", "--out", str(tmp_path / "out"), "--quiet"],
            capture_output=True, text=True, timeout=300 * TIMEOUT_S / 20)
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
