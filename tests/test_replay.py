"""A run's power flows replayed from its folder alone with plain pandapower."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandapower as pp
import pandas as pd
import pytest

from evtwin.sim.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, scenario: str, *sets: str) -> Path:
    args = ["run", str(ROOT / "scenarios" / scenario), "--out", str(tmp_path), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]
    return run_dir


def _replay(run_dir: Path) -> None:
    """Every step, from network.json and loads.parquet with pandapower.runpp only (no
    evtwin code), against the run's own timeseries.csv."""
    net = pp.from_json(str(run_dir / "network.json"))
    loads = pd.read_parquet(run_dir / "loads.parquet")
    ts = pd.read_csv(run_dir / "timeseries.csv")
    assert len(loads) == len(ts) and (loads["t_s"].to_numpy() == ts["t_s"].to_numpy()).all()
    p_cols = [f"p_mw_{i}" for i in net.load.index]
    q_cols = [f"q_mvar_{i}" for i in net.load.index]
    for k in range(len(loads)):
        net.load["p_mw"] = loads.loc[k, p_cols].to_numpy(dtype=float)
        net.load["q_mvar"] = loads.loc[k, q_cols].to_numpy(dtype=float)
        pp.runpp(net, trafo_loading="power", numba=False)
        vm = net.res_bus["vm_pu"].dropna()
        row = ts.iloc[k]
        assert abs(vm.min() - row["vm_min_pu"]) < 1e-4, k
        assert abs(vm.max() - row["vm_max_pu"]) < 1e-4, k
        lines = net.res_line["loading_percent"][net.line["in_service"]]
        assert abs(lines.max() - row["line_loading_max_percent"]) < 0.1, k
        assert abs(net.res_trafo["loading_percent"].max() - row["trafo_loading_percent"]) < 0.1
    # The EV stations drew what the run says they drew: their loads sum to the EV power.
    ev_cols = [f"p_mw_{i}" for i, name in zip(net.load.index, net.load["name"], strict=True)
               if str(name).startswith("ev_station_")]
    np.testing.assert_allclose(loads[ev_cols].sum(axis=1) * 1000.0, ts["ev_kw"], atol=1e-9)


@pytest.mark.slow
def test_demo_run_replays_from_its_folder_with_plain_pandapower(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "demo.toml", "duration_h=8")
    record = json.loads((run_dir / "run.json").read_text())
    import hashlib

    assert record["network_sha256"] == hashlib.sha256(
        (run_dir / "network.json").read_bytes()).hexdigest()
    assert "instant" in (run_dir / "README.md").read_text()
    _replay(run_dir)


@pytest.mark.slow
def test_pv_and_storage_replay_too(tmp_path: Path) -> None:
    """DER feed in as negative loads of their own: a sunny midday replays as well."""
    run_dir = _run(tmp_path, "pv_storage.toml", "duration_h=6", "start=2026-06-15T10:00:00+02:00")
    loads = pd.read_parquet(run_dir / "loads.parquet")
    net = pp.from_json(str(run_dir / "network.json"))
    der = [f"p_mw_{i}" for i, name in zip(net.load.index, net.load["name"], strict=True)
           if str(name).startswith("der_")]
    assert der and (loads[der].to_numpy() < 0).any()  # PV feeding in
    _replay(run_dir)


@pytest.mark.slow
def test_export_pf_writes_a_case_plain_pandapower_solves(tmp_path: Path) -> None:
    run_dir = _run(tmp_path / "runs", "demo.toml", "duration_h=2")
    assert main(["export-pf", str(run_dir), "--out", str(tmp_path / "pf")]) == 0
    [case] = list((tmp_path / "pf").iterdir())
    ts = pd.read_csv(run_dir / "timeseries.csv")
    worst = int(ts["vm_min_pu"].idxmin())
    assert case.name == f"step_{worst:03d}.json"
    net = pp.from_json(str(case))
    pp.runpp(net, trafo_loading="power", numba=False)
    assert net.res_bus["vm_pu"].min() == pytest.approx(ts.loc[worst, "vm_min_pu"], abs=1e-4)
    # Bad input: one line naming what is wrong, exit 2.
    for args, says in ((["--step", "99999"], "--step"), (["--step", "x"], "--step")):
        proc = subprocess.run([sys.executable, "-m", "evtwin.sim.cli", "export-pf",
                               str(run_dir), *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr
    (run_dir / "network.json").write_text((run_dir / "network.json").read_text() + " ")
    proc = subprocess.run([sys.executable, "-m", "evtwin.sim.cli", "export-pf", str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "changed since the run" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "evtwin.sim.cli", "export-pf",
                           str(tmp_path / "nowhere")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "network.json: no such file" in proc.stderr
