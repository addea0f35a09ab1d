"""A run's power flows, replayable from its folder alone: ``evtwin export-pf RUN_DIR``.

A run folder holds ``network.json`` (the pandapower network as run: the network's
own loads are the households, then one load per station, then one per distributed
resource, PV and storage feeding in as negative load) and ``loads.parquet`` (every
load's P and Q at every step, exactly as the power flow got them). With plain
pandapower, ``net.load.p_mw``/``q_mvar`` set from a row and
``pandapower.runpp(net, trafo_loading="power")`` solve that step (transformer loading
on apparent power, as the run's engine rates it). ``run.json`` records the network
file's SHA-256, so a changed file is noticed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pandapower as pp
import pandas as pd

from .exceptions import RunFolderError

__all__ = ["FOLDER_README", "case_at", "export_pf", "file_sha256", "read_case",
           "write_case"]

#: The timing conventions, written as ``README.md`` into every run folder.
FOLDER_README = """\
# evtwin run folder

Times: `t_s` is seconds since the scenario's `start` (`time` in timeseries.csv is
the same instant in the scenario's offset). Row `k` of timeseries.csv,
station_power_kw.csv and loads.parquet is the state at `t = k * step_s`, the end of
step `k`; row 0 is the start.

- EV and station power: the mean over the step that ends at `t` (its energy over
  the step length), negative when feeding back (V2G).
- Household load: the base-load profile at the instant `t`, with its noise (one
  draw per household per step).
- PV and storage: the mean over the step that ends at `t`.
- The power flow of row `k` solves exactly the loads of row `k` of loads.parquet:
  voltages and loadings in timeseries.csv are that flow's instantaneous results.
- `vm_min_pu` / `vm_max_pu`: lowest and highest voltage over every in-service bus
  the external grid supplies (both sides of the transformer).
- `line_loading_max_percent`: the most loaded in-service line, current against
  `max_i_ka * df * parallel`; `trafo_loading_percent`: the most loaded transformer,
  apparent power against its rating.
- Unbalanced runs (`grid.phases = "unbalanced"`): per-phase minima, loadings on the
  most loaded phase; loads.parquet holds each load's total, `network.json`'s
  `load.evtwin_phase` its phase (0-2 = L1-L3, -1 = all three).

Replay a step with plain pandapower (balanced runs):

    import pandapower as pp, pandas as pd
    net = pp.from_json("network.json")
    loads = pd.read_parquet("loads.parquet")
    row = loads.iloc[k]
    net.load["p_mw"] = [row[f"p_mw_{i}"] for i in net.load.index]
    net.load["q_mvar"] = [row[f"q_mvar_{i}"] for i in net.load.index]
    pp.runpp(net, trafo_loading="power")

or `evtwin export-pf RUN_DIR --step k` writes that case as a pandapower JSON file.
"""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_case(network: pp.pandapowerNet, loads: pd.DataFrame, out: Path,
               load_phases: Sequence[int] | None = None) -> tuple[Path, Path, str]:
    """``network.json`` and ``loads.parquet`` into ``out``; returns their paths and the
    network file's SHA-256. ``load_phases``: each load's phase on an unbalanced feeder."""
    net = copy.deepcopy(network)
    # The loads' values are per step in loads.parquet; the file keeps zeros for them.
    net.load["p_mw"] = 0.0
    net.load["q_mvar"] = 0.0
    if load_phases is not None:
        net.load["evtwin_phase"] = list(load_phases)
    for table in [t for t in net if isinstance(t, str) and t.startswith("res_")]:
        net[table] = net[table].iloc[0:0]  # results are in timeseries.csv, per step
    net_path = out / "network.json"
    pp.to_json(net, str(net_path))
    loads_path = out / "loads.parquet"
    loads.to_parquet(loads_path, index=False)
    return net_path, loads_path, file_sha256(net_path)


def read_case(run_dir: Path) -> tuple[pp.pandapowerNet, pd.DataFrame]:
    """The network and the per-step loads of a run folder, the network checked against
    the hash in ``run.json``."""
    net_path, loads_path = run_dir / "network.json", run_dir / "loads.parquet"
    for path in (net_path, loads_path):
        if not path.is_file():
            raise RunFolderError(f"{path}: no such file (a run folder written by evtwin run "
                           "has it)")
    record_path = run_dir / "run.json"
    if record_path.is_file():
        try:
            expected = json.loads(record_path.read_text()).get("network_sha256")
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"{record_path}: not a run record ({exc})") from None
        if expected is not None and expected != file_sha256(net_path):
            raise RunFolderError(f"{net_path}: changed since the run (its SHA-256 is not the one "
                           f"in {record_path.name})")
    try:
        net = pp.from_json(str(net_path))
        loads = pd.read_parquet(loads_path)
    except Exception as exc:  # pandapower and pyarrow raise many types for a bad file
        raise RunFolderError(f"{run_dir}: cannot read the network or loads ({exc})") from None
    return net, loads


def case_at(net: pp.pandapowerNet, loads: pd.DataFrame, row: int) -> pp.pandapowerNet:
    """A copy of ``net`` with every load at row ``row`` of ``loads``."""
    case = copy.deepcopy(net)
    values = loads.iloc[row]
    case.load["p_mw"] = [float(values[f"p_mw_{i}"]) for i in case.load.index]
    case.load["q_mvar"] = [float(values[f"q_mvar_{i}"]) for i in case.load.index]
    return case


def export_pf(run_dir: Path, out: Path, steps: Sequence[int] | None = None
              ) -> list[Path]:
    """Write ``step_<k>.json`` (a pandapower network with the loads of step ``k``) into
    ``out`` for each of ``steps`` (default: the step with the lowest voltage)."""
    net, loads = read_case(run_dir)
    n = len(loads)
    if steps is None:
        ts_path = run_dir / "timeseries.csv"
        if not ts_path.is_file():
            raise RunFolderError(f"{ts_path}: no such file (needed to find the worst step)")
        try:
            steps = [int(pd.read_csv(ts_path)["vm_min_pu"].idxmin())]
        except (KeyError, ValueError, TypeError) as exc:
            raise RunFolderError(f"{ts_path}: no vm_min_pu to find the worst step by ({exc}); "
                                 "give --step") from None
    bad = [k for k in steps if not 0 <= k < n]
    if bad:
        raise RunFolderError(f"--step: the run has steps 0 to {n - 1}, not {bad[0]}")
    if "evtwin_phase" in net.load.columns:
        raise RunFolderError(f"{run_dir}: an unbalanced run; its cases need pandapower's "
                             "runpp_3ph with asymmetric loads, which export-pf does not write "
                             "(network.json's load.evtwin_phase gives each load's phase)")
    out.mkdir(parents=True, exist_ok=True)
    width = len(str(n - 1))
    paths = []
    for k in steps:
        path = out / f"step_{k:0{width}d}.json"
        pp.to_json(case_at(net, loads, k), str(path))
        paths.append(path)
    return paths
