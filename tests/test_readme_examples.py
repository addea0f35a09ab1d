"""Every command example in README.md, run as written (cut to small workloads where
marked) in a scratch folder, with the outputs the README names checked.

``test_every_readme_command_has_an_example`` fails when the README gains, loses or
changes a command that the table below does not know: the README and this file
cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHELL_PREFIXES = (".venv/bin/", "evtwin ", "make ", "$ ")


def readme_commands(text: str | None = None) -> list[str]:
    """The README's commands: lines of ``sh`` blocks and ``$ `` lines of any block,
    continuation lines joined, comments and the ``$`` prompt dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8") if text is None else text
    commands: list[str] = []
    lang: str | None = None
    pending = ""
    for line in text.splitlines():
        if line.startswith("```"):
            lang = None if lang is not None else (line[3:].strip() or "text")
            continue
        if lang is None:
            continue
        if lang != "sh" and not line.startswith("$ "):
            continue
        body = line[2:] if line.startswith("$ ") else line
        body = re.sub(r"\s+#.*$", "", body) if not body.lstrip().startswith("#") else ""
        body = body.strip()
        if not body and not pending:
            continue
        if body.endswith("\\"):
            pending += body[:-1].strip() + " "
            continue
        command = " ".join((pending + body).split())
        pending = ""
        if command:
            commands.append(command)
    return commands


@dataclass
class Example:
    """How the test runs one README command and what it checks afterwards."""

    readme: str
    run: str | None = None  # as run (None: exactly as written)
    exit_code: int = 0
    check: Callable[[Path, subprocess.CompletedProcess[str]], None] | None = None
    before: list[str] = field(default_factory=list)  # README commands this one needs first
    skip: str | None = None  # why it is not run here (said, not hidden)
    by: str | None = None  # run by this test of its own (a server and its clients)


def _as_run(command: str) -> str:
    """A README command with the venv's programs: ``.venv/bin/x`` and bare ``evtwin``."""
    command = command.replace(".venv/bin/", f"{BIN}/")
    return re.sub(r"(^|\s|\()evtwin ", lambda m: f"{m.group(1)}{BIN}/evtwin ", command)


def _one(pattern: str, ws: Path) -> Path:
    found = sorted(ws.glob(pattern))
    assert found, f"nothing matches {pattern} in {ws}"
    return found[-1]


def _run_folder(prefix: str) -> Callable[[Path, subprocess.CompletedProcess[str]], None]:
    """A complete run folder ``results/<prefix>-*`` with the files the README lists."""
    def check(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
        run_dir = _one(f"results/{prefix}-*", ws)
        names = {p.name for p in run_dir.iterdir()}
        assert {"scenario.toml", "scenario.json", "kpis.json", "timeseries.csv",
                "station_power_kw.csv", "sessions.csv", "stations.csv", "unserved.csv",
                "network.json", "loads.parquet", "README.md", "run.json", "grid.png",
                "ev_power.png", "soc_at_departure.png"} <= names, names
        kpis = json.loads((run_dir / "kpis.json").read_text())["kpis"]
        assert kpis["ocpp_messages"] > 0
        assert "results written to" in proc.stdout
    return check


def _write_bad_toml(ws: Path) -> None:
    text = (ROOT / "scenarios" / "demo.toml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^count = \d+", "count = 0", text, count=1)
    text = text.replace("[[sites]]\n", "[[sites]]\ncolour = \"blue\"\n", 1)
    (ws / "bad.toml").write_text(text, encoding="utf-8")


def _check_bad_toml(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("$ evtwin run bad.toml\n", 1)[1].split("```", 1)[0]
    assert proc.stderr.strip().splitlines() == block.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert not (ws / "results").exists() or not any((ws / "results").glob("bad-*"))


def _check_export_pf(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    import pandapower as pp

    case = _one("results/replay/demo-*/pf/step_*.json", ws)
    net = pp.from_json(str(case))
    pp.runpp(net, trafo_loading="power")
    assert net.converged


def _check_fit(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    fit_dir = _one("results/fit/sessions_sample-fit-*", ws)
    block = (fit_dir / "sessions_sample-behaviour.toml").read_text()
    assert "[sites.behaviour]" in block or "behaviour" in block
    assert (fit_dir / "sessions_sample-behaviour.png").stat().st_size > 10_000


def _check_sessions_sample(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    made = ws / "gen" / "sessions_sample.csv"
    assert made.read_bytes() == (ROOT / "scenarios" / "data" / "sessions_sample.csv").read_bytes()


def _check_compare(prefix: str, strategies: list[str]) -> Callable[..., None]:
    def check(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
        out = _one(f"results/{prefix}-compare-*", ws)
        table = (out / "compare.csv").read_text().splitlines()
        assert [line.split(",")[0] for line in table[1:]] == strategies
        for png in ("compare_kpis.png", "compare_grid.png"):
            assert (out / png).stat().st_size > 10_000
    return check


def _check_sweep(folder_glob: str, runs: int) -> Callable[..., None]:
    def check(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
        import pandas as pd

        out = _one(folder_glob, ws)
        table = pd.read_parquet(out / "sweep.parquet")
        assert len(table) == runs and (table["status"] == "ok").all(), table
        assert (out / "sweep.csv").exists() and (out / "journal.jsonl").exists()
        assert list(out.glob("*.png")), "a figure per KPI"
    return check


def _check_operations(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    """A run with failures and crews: the tables the README names and their KPIs."""
    import pandas as pd

    _run_folder("operations")(ws, proc)
    run_dir = _one("results/operations-*", ws)
    ports = pd.read_csv(run_dir / "availability.csv")
    assert len(ports) == 24 and ports["availability_percent"].between(0, 100).all()
    assert (run_dir / "work_orders.csv").exists() and (run_dir / "forecast.csv").exists()
    kpis = json.loads((run_dir / "kpis.json").read_text())["kpis"]
    assert 0 < kpis["availability_percent"] <= 100
    assert "Port availability" in proc.stdout


def _check_finance(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    out = _one("results/business-finance-*", ws)
    for name in ("finance.csv", "finance.json", "tornado.png"):
        assert (out / name).exists(), name
    summary = json.loads((out / "finance.json").read_text())
    assert "npv" in json.dumps(summary).lower()


def _check_roaming_run(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    """The roaming KPIs are in the run's table, and its bills in roaming.csv."""
    run = _one("results/roaming-*", ws)
    kpis = json.loads((run / "kpis.json").read_text())["kpis"]
    assert kpis["roaming_sessions"] >= 1 and kpis["roaming_owed_to_cpo"] > 0
    rows = (run / "roaming.csv").read_text().splitlines()
    assert len(rows) == kpis["roaming_sessions"] + 1 and "pid-" in rows[1]
    assert "owed by the eMSP to the CPO" in proc.stdout


def _check_dashboard_user(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    """The token it prints verifies against the hash of the entry it prints, and the
    authenticator URI carries the entry's secret."""
    import tomllib

    from evtwin.csms.security import verify_password

    # The secrets on stderr, only the entry on stdout (so `>> csms.toml` is safe).
    secrets = proc.stderr.strip().splitlines()
    token = next(x for x in secrets if x.startswith("# token")).rsplit(" ", 1)[-1]
    uri = next(x for x in secrets if "otpauth://" in x).rsplit(" ", 1)[-1]
    assert token not in proc.stdout and "otpauth://" not in proc.stdout
    [user] = tomllib.loads(proc.stdout)["dashboard"]["users"]
    assert (user["name"], user["role"]) == ("ada", "admin")
    assert verify_password(token, user["token_hash"])
    assert f"secret={user['totp_secret']}" in uri


def _check_run_dashboard(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    """The run's admin login and the dashboard's address are printed; the run completes."""
    assert re.search(r"(?m)^dashboard token: \S{40}$", proc.stdout), proc.stdout
    assert re.search(r"(?m)^dashboard TOTP secret: [A-Z2-7]{32}$", proc.stdout)
    assert re.search(r"(?m)^dashboard: http://127\.0\.0\.1:\d+/$", proc.stdout)
    _run_folder("demo")(ws, proc)


def _check_driver_token(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    """The app token it prints verifies against the hash of the entry it prints."""
    import tomllib

    from evtwin.csms.security import verify_password

    # The app token on stderr, only the entry on stdout (so `>> csms.toml` is safe).
    token = proc.stderr.strip().rsplit(" ", 1)[-1]
    assert token not in proc.stdout
    [driver] = tomllib.loads(proc.stdout)["driver_api"]["drivers"]
    assert driver["id_token"] == "04A2B3C4D5E6F7"
    assert verify_password(token, driver["token_hash"])


def _check_junit(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    xml = (ws / "report.xml").read_text()
    assert "overload[" in xml and "<failure" in xml
    assert "check failed" in proc.stdout


def _check_baseline(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    assert json.loads((ws / "ci" / "baseline.json").read_text())
    assert "baseline recorded" in proc.stdout


def _check_hosting(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    out = _one("results/*-hosting-*", ws)
    assert (out / "hosting_capacity.csv").exists()
    assert "hosting capacity" in proc.stdout


def _check_place(ws: Path, proc: subprocess.CompletedProcess[str]) -> None:
    out = _one("results/planning-place-*", ws)
    assert (out / "winner.toml").exists() and (out / "placement.png").exists()


EXAMPLES: list[Example] = [
    Example("make demo", skip="`make demo` is `evtwin run scenarios/demo.toml` after the "
                              "install; run below as `evtwin run scenarios/demo.toml ...`"),
    Example("make test", skip="this test suite is what `make test` runs"),
    Example(".venv/bin/evtwin run scenarios/demo.toml --set run.csms_process=true",
            run=".venv/bin/evtwin run scenarios/demo.toml --set run.csms_process=true "
                "--set duration_h=2 --quiet", check=_run_folder("demo")),
    Example(".venv/bin/evtwin run scenarios/demo.toml --set duration_h=2 --out results/replay"),
    Example('.venv/bin/evtwin export-pf "$(ls -d results/replay/demo-* | tail -1)"',
            before=[".venv/bin/evtwin run scenarios/demo.toml --set duration_h=2 "
                    "--out results/replay"], check=_check_export_pf),
    Example("evtwin run bad.toml", exit_code=2, check=_check_bad_toml),
    Example(".venv/bin/evtwin run scenarios/overload.toml", check=_run_folder("overload")),
    Example(".venv/bin/evtwin run scenarios/overload.toml --strategy equal_share",
            check=_run_folder("overload")),
    Example(".venv/bin/evtwin run scenarios/demo.toml --set ev.count=20 --seed 3",
            check=_run_folder("demo")),
    Example(".venv/bin/evtwin csms serve --host 127.0.0.1 --port 9000 --db csms.sqlite "
            "--config docs/csms.example.toml", by="test_readme_csms_serve_example"),
    Example(".venv/bin/evtwin csms config-for scenarios/demo.toml --out csms.demo.toml",
            by="test_readme_stations_against_a_served_csms"),
    *(Example(f".venv/bin/evtwin csms privacy {c}", by="test_readme_privacy_commands") for c in (
        "export --db csms.sqlite --id-token 04A2B3C4D5E6F7 --actor dpo@example.org "
        "--out driver.json",
        'erase --db csms.sqlite --id-token 04A2B3C4D5E6F7 --actor dpo@example.org --reason '
        '"request 2026-117"',
        "prune --db csms.sqlite --retention-days 30",
        "audit --db csms.sqlite")),
    Example(".venv/bin/evtwin csms driver-token 04A2B3C4D5E6F7", check=_check_driver_token),
    *(Example(f".venv/bin/evtwin {c}", by="test_readme_roaming_commands") for c in (
        "csms ocpi-token --config docs/roaming/cpo.toml",
        "csms serve --config docs/roaming/cpo.toml --db cpo.sqlite &",
        "emsp serve docs/roaming/emsp.toml &",
        "emsp report docs/roaming/emsp.toml")),
    Example(".venv/bin/evtwin run scenarios/roaming.toml", check=_check_roaming_run),
    Example(".venv/bin/evtwin csms dashboard-user ada --role admin",
            check=_check_dashboard_user),
    Example(".venv/bin/evtwin run scenarios/demo.toml --dashboard 8080 --pace 600",
            run=".venv/bin/evtwin run scenarios/demo.toml --dashboard 0 --pace 7200 "
                "--set duration_h=1 --quiet", check=_check_run_dashboard),
    Example(".venv/bin/evtwin csms serve --config csms.demo.toml &",
            by="test_readme_stations_against_a_served_csms"),
    Example(".venv/bin/evtwin stations --csms ws://127.0.0.1:9000/ocpp --scenario "
            "scenarios/demo.toml --version 2.0.1 --speed 60 --duration-h 2",
            by="test_readme_stations_against_a_served_csms"),
    Example(".venv/bin/evtwin fit-behaviour scenarios/data/sessions_sample.csv --kind public "
            "--timezone Europe/Amsterdam --out results/fit", check=_check_fit),
    Example(".venv/bin/evtwin run scenarios/sessions.toml",
            run=".venv/bin/evtwin run scenarios/sessions.toml --set duration_h=48 --quiet",
            check=_run_folder("sessions")),
    Example(".venv/bin/python scenarios/data/make_sessions_sample.py",
            run=".venv/bin/python gen/make_sessions_sample.py", check=_check_sessions_sample),
    Example(".venv/bin/evtwin compare scenarios/v2g.toml --strategies uncontrolled,equal_share,"
            "edf,feeder_aware,v2g_peak_shaving --set sites.0.limit_kw=150 --workers 2",
            run=".venv/bin/evtwin compare scenarios/v2g.toml --strategies uncontrolled,"
                "equal_share,edf,feeder_aware,v2g_peak_shaving --set sites.0.limit_kw=150 "
                "--workers 2 --set duration_h=4",
            check=_check_compare("v2g", ["uncontrolled", "equal_share", "edf", "feeder_aware",
                                         "v2g_peak_shaving"])),
    Example(".venv/bin/evtwin compare scenarios/v2g_price.toml --strategies price,"
            "v2g_peak_shaving,v2g_price --workers 2",
            check=_check_compare("v2g_price", ["price", "v2g_peak_shaving", "v2g_price"])),
    Example(".venv/bin/evtwin sweep scenarios/demo.toml --set ev.count=10,20,40 --set "
            "control.strategy=equal_share,edf --seeds 5 --workers 2",
            run=".venv/bin/evtwin sweep scenarios/demo.toml --set ev.count=10,20,40 --set "
                "control.strategy=equal_share,edf --seeds 1 --workers 2 --set duration_h=1 "
                "--quiet", check=_check_sweep("results/demo-sweep*", 6)),
    Example(".venv/bin/evtwin sweep scenarios/demo.toml --set ev.count=10:60 --set "
            "sites.0.limit_kw=22:88 --sample lhs:64 --seeds 2",
            run=".venv/bin/evtwin sweep scenarios/demo.toml --set ev.count=10:60 --set "
                "sites.0.limit_kw=22:88 --sample lhs:3 --seeds 1 --set duration_h=1 --quiet "
                "--out results/lhs", check=_check_sweep("results/lhs", 3)),
    Example(".venv/bin/evtwin sweep scenarios/demo.toml --set ev.count=10:60:10 --scheduler "
            "tcp://10.0.0.5:8786", by="test_readme_sweep_on_a_dask_cluster"),
    Example(".venv/bin/evtwin run scenarios/operations.toml",
            run=".venv/bin/evtwin run scenarios/operations.toml --set duration_h=48 "
                "--set forecast.warmup_days=1 --quiet", check=_check_operations),
    Example(".venv/bin/evtwin run scenarios/operations.toml --set maintenance.policy=predictive",
            run=".venv/bin/evtwin run scenarios/operations.toml --set maintenance.policy="
                "predictive --set duration_h=48 --set maintenance.history_days=30 "
                "--set forecast.warmup_days=1 --quiet", check=_check_operations),
    Example(".venv/bin/evtwin sweep scenarios/operations.toml --set maintenance.policy=none,"
            "reactive,preventive --seeds 5 --workers 2",
            run=".venv/bin/evtwin sweep scenarios/operations.toml --set maintenance.policy="
                "none,reactive,preventive --seeds 1 --workers 2 --set duration_h=48 "
                "--set forecast.warmup_days=1 --quiet",
            check=_check_sweep("results/operations-sweep*", 3)),
    Example(".venv/bin/evtwin sweep scenarios/prices.toml --set tariff.kind=flat,tou,occupancy "
            "--workers 2",
            run=".venv/bin/evtwin sweep scenarios/prices.toml --set tariff.kind=flat,tou,"
                "occupancy --workers 2 --set duration_h=6 --quiet",
            check=_check_sweep("results/prices-sweep*", 3)),
    Example(".venv/bin/evtwin finance scenarios/business.toml", check=_check_finance),
    Example(".venv/bin/evtwin check scenarios/overload.toml --junit report.xml",
            exit_code=1, check=_check_junit),
    Example(".venv/bin/evtwin check scenarios/overload.toml --strategy equal_share --baseline "
            "ci/baseline.json --update-baseline", check=_check_baseline),
    Example(".venv/bin/evtwin check scenarios/overload.toml --strategy equal_share --limits "
            "docs/limits.example.toml --baseline ci/baseline.json",
            before=[".venv/bin/evtwin check scenarios/overload.toml --strategy equal_share "
                    "--baseline ci/baseline.json --update-baseline"]),
    Example(".venv/bin/evtwin hosting-capacity scenarios/planning.toml", check=_check_hosting),
    Example(".venv/bin/evtwin hosting-capacity scenarios/planning.toml --day --all",
            run=".venv/bin/evtwin hosting-capacity scenarios/planning.toml --day --all "
                "--draws 10", check=_check_hosting),
    Example(".venv/bin/evtwin place scenarios/planning.toml --add 4 --set duration_h=6",
            check=_check_place),
    Example(".venv/bin/evtwin hosting-capacity scenarios/planning.toml --set "
            "grid.phases=unbalanced --set sites.0.phases=1",
            run=".venv/bin/evtwin hosting-capacity scenarios/planning.toml --set "
                "grid.phases=unbalanced --set sites.0.phases=1 --draws 10",
            check=_check_hosting),
    Example(".venv/bin/pip install -e '.[simbench]'",
            skip="installation: `make test` installs the extra before the tests run"),
    Example(".venv/bin/evtwin run scenarios/district.toml",
            run=".venv/bin/evtwin run scenarios/district.toml --set duration_h=2 --quiet",
            check=_run_folder("district")),
    Example(".venv/bin/evtwin hosting-capacity scenarios/district.toml",
            run=".venv/bin/evtwin hosting-capacity scenarios/district.toml --draws 5",
            check=_check_hosting),
]


def test_every_readme_command_has_an_example() -> None:
    in_readme = readme_commands()
    known = [e.readme for e in EXAMPLES]
    missing = [c for c in in_readme if c not in known]
    stale = [c for c in known if c not in in_readme]
    assert not missing, f"README commands this test does not run: {missing}"
    assert not stale, f"commands this test runs that the README no longer has: {stale}"
    assert all(callable(globals().get(e.by)) for e in EXAMPLES if e.by is not None)


def test_readme_commands_parse_continuations() -> None:
    text = ("```sh\n.venv/bin/evtwin a \\\n    --b 1   # note\nmake x\n```\n"
            "```\n$ evtwin y\nout\n```\n")
    assert readme_commands(text) == [".venv/bin/evtwin a --b 1", "make x", "evtwin y"]


def _workspace(ws: Path) -> Path:
    """A scratch folder that looks like the checkout: scenarios and docs as they ship."""
    os.symlink(ROOT / "scenarios", ws / "scenarios")
    os.symlink(ROOT / "docs", ws / "docs")
    (ws / "ci").mkdir()
    (ws / "gen").mkdir()
    shutil.copy(ROOT / "scenarios" / "data" / "make_sessions_sample.py", ws / "gen")
    _write_bad_toml(ws)
    return ws


def _shell(command: str, ws: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(["bash", "-c", _as_run(command)], cwd=ws, capture_output=True,
                          text=True, timeout=900, env=env)


def _params() -> list[object]:
    params = []
    for e in EXAMPLES:
        if e.by is not None:
            continue
        marks = [pytest.mark.skip(reason=e.skip)] if e.skip else []
        params.append(pytest.param(e, id=e.readme[:70], marks=marks))
    return params


@pytest.mark.parametrize("example", _params())
@pytest.mark.slow
def test_readme_example(example: Example, tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    for command in example.before:
        first = _shell(command, ws)
        assert first.returncode in (0, 1), first.stderr
    proc = _shell(example.run or example.readme, ws)
    assert proc.returncode == example.exit_code, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    if example.check is not None:
        example.check(ws, proc)


def _example(readme_start: str) -> Example:
    (found,) = [e for e in EXAMPLES if e.readme.startswith(readme_start)]
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(command: str, ws: Path, port: int) -> subprocess.Popen[str]:
    """Start a README ``csms serve`` line on ``port`` (instead of 9000); wait until it
    listens."""
    command = command.rstrip(" &")
    command = command.replace("--port 9000", f"--port {port}")
    if "--port" not in command:
        command += f" --port {port}"
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {_as_run(command)}"], cwd=ws, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{command} did not listen on {port}")


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err


@pytest.mark.slow
def test_readme_privacy_commands(tmp_path: Path) -> None:
    """The Data protection commands, in order, on a database where the README's
    driver charged twice (a year ago and yesterday) and another driver once."""
    from datetime import UTC, datetime, timedelta

    from evtwin.csms import Store
    from tests.test_privacy import _core, _session

    token = "04A2B3C4D5E6F7"
    now = datetime.now(UTC)
    store = Store(tmp_path / "csms.sqlite")
    clock = [now - timedelta(days=400)]
    core = _core(store, clock, tokens=(token, "BOB-RFID-0002"))
    _session(core, "OLD", "BOB-RFID-0002", clock[0], 1)
    for tx, ago in (("T1", 60), ("T2", 1)):
        clock[0] = now - timedelta(days=ago)
        _session(core, tx, token, clock[0], 1)
    store.close()
    commands = [e.readme for e in EXAMPLES if e.by == "test_readme_privacy_commands"]
    outs = []
    for command in commands:
        proc = _shell(command, tmp_path)
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
        outs.append(proc.stdout)
    exported = json.loads((tmp_path / "driver.json").read_text())
    assert [s["transaction_id"] for s in exported["sessions"]] == ["T1", "T2"]
    assert "erased pid-" in outs[1] and "2 transactions, 2 CDRs" in " ".join(outs[1].split())
    assert "30 days ago: 4 rows" in outs[2]  # Bob's session of a year ago
    lines = [line.split("\t") for line in outs[3].splitlines()]
    assert [line[3] for line in lines[1:]] == ["export", "erase", "prune"]
    assert token not in outs[3] and token not in (tmp_path / "csms.sqlite").read_text(
        errors="replace")


@pytest.mark.slow
def test_readme_roaming_commands(tmp_path: Path) -> None:
    """The Roaming commands in order, on copies of docs/roaming (free ports instead of
    9300 and 9400): token A pasted into the eMSP's file as the README says, the eMSP
    registers, its driver charges at the CPO's station (a scripted OCPP 1.6 station),
    and the report shows the session at the CPO's price."""
    import sqlite3

    from websockets.sync.client import connect

    from tests.test_csms_standalone import Station

    commands = [e.readme for e in EXAMPLES if e.by == "test_readme_roaming_commands"]
    (tmp_path / "docs").mkdir()
    shutil.copytree(ROOT / "docs" / "roaming", tmp_path / "docs" / "roaming")
    cpo_port, emsp_port, ocpp_port = _free_port(), _free_port(), _free_port()
    for name, old, new in (("cpo.toml", "9300", cpo_port), ("emsp.toml", "9300", cpo_port),
                           ("emsp.toml", "port = 9400", f"port = {emsp_port}")):
        f = tmp_path / "docs" / "roaming" / name
        f.write_text(f.read_text().replace(old, str(new)))
    made = _shell(commands[0], tmp_path)
    assert made.returncode == 0, made.stderr
    token_a = made.stdout.strip().splitlines()[-1]
    assert f"http://127.0.0.1:{cpo_port}/ocpi/versions" in made.stdout
    emsp_file = tmp_path / "docs" / "roaming" / "emsp.toml"
    emsp_file.write_text(emsp_file.read_text().replace(
        "paste-the-token-from-evtwin-csms-ocpi-token", token_a))
    cpo = _serve(commands[1], tmp_path, ocpp_port)
    emsp = subprocess.Popen(["bash", "-c", f"exec {_as_run(commands[2].rstrip(' &'))}"],
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        registry = tmp_path / "docs" / "roaming" / "ocpi.sqlite"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # registered, and both tokens pushed
            con = sqlite3.connect(registry)
            try:
                n = con.execute("SELECT COUNT(*) FROM objects WHERE kind = 'token'").fetchone()
            except sqlite3.OperationalError:
                n = (0,)
            finally:
                con.close()
            if n[0] >= 2:
                break
            assert emsp.poll() is None, emsp.communicate()
            time.sleep(0.2)
        else:
            raise AssertionError("the eMSP did not register and push its tokens")
        with connect(f"ws://127.0.0.1:{ocpp_port}/ocpp/MARKT-01",
                     subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            st = Station(ws)
            st.call("BootNotification", {"chargePointVendor": "t", "chargePointModel": "m"})
            r = st.call("Authorize", {"idTag": "04A2B3C4D5E6F7"})
            assert r[2]["idTagInfo"]["status"] == "Accepted"
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
            end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            r = st.call("StartTransaction", {"connectorId": 1, "idTag": "04A2B3C4D5E6F7",
                                             "meterStart": 0, "timestamp": now})
            st.call("StopTransaction", {"transactionId": r[2]["transactionId"],
                                        "meterStop": 10000, "timestamp": end})
        bills = tmp_path / "docs" / "roaming" / "emsp.sqlite"
        report = None
        while time.monotonic() < deadline:
            proc = _shell(commands[3], tmp_path)
            assert proc.returncode == 0, proc.stderr
            if "1 roaming session(s)" in proc.stdout:
                report = proc.stdout
                break
            time.sleep(0.2)
        assert report is not None and bills.exists()
        # 10 kWh at 0.45 EUR plus 1.00 EUR: 5.50 owed to NL*EVA; the driver pays
        # 5.50 x 1.10 + 0.35 = 6.40.
        assert "NL*EVA" in report and "5.50 EUR" in report and "6.40 EUR" in report
        assert "driver-1" in report and "04A2B3C4D5E6F7" not in report
    finally:
        emsp.send_signal(signal.SIGINT)
        _, err = emsp.communicate(timeout=20)
        code, cpo_err = _stop(cpo)
    assert emsp.returncode == 130 and "Traceback" not in err, err
    assert code == 130 and "Traceback" not in cpo_err, cpo_err


@pytest.mark.slow
def test_readme_csms_serve_example(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    port = _free_port()
    proc = _serve(_example(".venv/bin/evtwin csms serve --host").readme, ws, port)
    code, err = _stop(proc)
    assert code == 130 and "Traceback" not in err, err
    assert (ws / "csms.sqlite").exists()


@pytest.mark.slow
def test_readme_stations_against_a_served_csms(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    port = _free_port()
    made = _shell(_example(".venv/bin/evtwin csms config-for").readme, ws)
    assert made.returncode == 0, made.stderr
    assert (ws / "csms.demo.toml").exists()
    server = _serve(_example(".venv/bin/evtwin csms serve --config csms.demo.toml").readme, ws,
                    port)
    try:
        # Cut: 30 simulated minutes at 600x instead of 2 h at 60x.
        command = (_example(".venv/bin/evtwin stations").readme
                   .replace("9000", str(port)).replace("--speed 60", "--speed 600")
                   .replace("--duration-h 2", "--duration-h 0.5") + " --quiet")
        proc = _shell(command, ws)
        assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
        assert "runs as" in proc.stdout
        run_dir = _one("results/demo-stations-*", ws)
        assert (run_dir / "profiles.csv").read_text().splitlines()[0]
        assert json.loads((run_dir / "kpis.json").read_text())["kpis"]["ocpp_messages"] > 0
    finally:
        _, err = _stop(server)
    assert "Traceback" not in err, err
    assert (ws / "csms.sqlite").exists()


@pytest.mark.slow
def test_readme_demo_fails_check_on_its_unmet_energy_as_the_scenario_table_says(
        tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    proc = _shell(".venv/bin/evtwin check scenarios/demo.toml --junit demo.xml "
                  "--transport direct", ws)
    assert proc.returncode == 1, proc.stderr
    xml = (ws / "demo.xml").read_text()
    failed = re.findall(r'<testcase[^>]*name="([^"]+)"[^>]*>\s*<failure', xml)
    assert failed == ["energy_unmet_percent"], xml


@pytest.mark.slow
def test_readme_sweep_on_a_dask_cluster(tmp_path: Path) -> None:
    """The README's cluster address replaced by a local cluster's on 127.0.0.1; cut to
    two values of an hour each."""
    from distributed import LocalCluster

    ws = _workspace(tmp_path)
    command = _example(".venv/bin/evtwin sweep scenarios/demo.toml --set ev.count=10:60:10").readme
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        proc = _shell(command.replace("tcp://10.0.0.5:8786", cluster.scheduler_address)
                      .replace("10:60:10", "10:20:10") + " --set duration_h=1 --quiet", ws)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "on dask" in proc.stdout.lower()
    _check_sweep("results/demo-sweep*", 2)(ws, proc)
