"""Result folders: the tables, the KPIs, the run record and the plots of a run."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .exceptions import RunFolderError
from .records import current_versions, run_record

if TYPE_CHECKING:
    from .runner import RunResult

#: Run folders this process created with :func:`new_run_dir`; the CLI removes them
#: when its command fails or is interrupted (a complete result folder or none).
_created: list[Path] = []


def new_run_dir(root: str | Path, name: str) -> Path:
    """Create ``<root>/<name>-<UTC timestamp>``; never reuses an existing folder.

    RunFolderError naming the folder when it cannot be created (``--out`` on a
    read-only disk, a file in the way).
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = Path(root) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise RunFolderError(f"--out {root}: cannot create the results folder {path}: "
                             f"{exc.strerror or exc}") from None
    _created.append(path)
    return path


def discard_new_run_dirs() -> list[Path]:
    """Remove every folder :func:`new_run_dir` created in this process (after a failure)."""
    removed = []
    while _created:
        path = _created.pop()
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def keep_new_run_dirs() -> None:
    """The command finished: its folders are complete and stay."""
    _created.clear()


def write_results(result: RunResult, out: Path, scenario_text: str | None = None, *,
                  command: list[str] | None = None) -> list[Path]:
    """Write the scenario as run, KPIs, time series, sessions and plots into ``out``.

    ``run.json`` is the self-contained record of the run (exact scenario, seed,
    versions, ``command``: default this process's command line) that
    ``evtwin reproduce`` runs again.
    """

    out.mkdir(parents=True, exist_ok=True)
    written = []
    sc_path = out / "scenario.json"
    sc_path.write_text(result.scenario.model_dump_json(indent=2))
    written.append(sc_path)
    if scenario_text is not None:
        (out / "scenario.toml").write_text(scenario_text)
        written.append(out / "scenario.toml")
    found = current_versions()
    extra: dict[str, object] = {}
    if result.external_csms is not None:
        extra["external_csms"] = result.external_csms
    if result.network is not None and result.loads is not None:
        # What an outside power flow needs (see evtwin.sim.replay and the folder README).
        from .replay import FOLDER_README, write_case

        net_path, loads_path, digest = write_case(result.network, result.loads.frame(), out,
                                                  result.load_phases)
        extra["network_sha256"] = digest
        readme = out / "README.md"
        readme.write_text(FOLDER_README)
        written += [net_path, loads_path, readme]
    kp = out / "kpis.json"
    kp.write_text(json.dumps({"kpis": result.kpis, "performance": result.performance,
                              "seed": result.scenario.seed, "versions": found}, indent=2))
    written.append(kp)
    record = out / "run.json"
    record.write_text(json.dumps(run_record(result.scenario, result.kpis, command=command,
                                            versions=found, extra=extra or None), indent=2))
    written.append(record)
    result.station_power.to_csv(out / "station_power_kw.csv")  # chunk by chunk
    written.append(out / "station_power_kw.csv")
    for name, df in (("timeseries.csv", result.timeseries),
                     ("sessions.csv", result.sessions),
                     ("profiles.csv", result.profiles),
                     ("stations.csv", result.stations),
                     ("unserved.csv", result.unserved),
                     *((f"{name}.csv", df) for name, df in result.tables.items())):
        df.to_csv(out / name, index=False)
        written.append(out / name)
    if not result.forecast.empty:  # [forecast]: day-ahead forecasts per site and hour
        result.forecast.to_csv(out / "forecast.csv", index=False)
        written.append(out / "forecast.csv")
    from .plots import plot_all

    written += plot_all(result, out)
    return written
