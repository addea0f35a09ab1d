"""Bad input, command by command: one line of error naming what is wrong (one per
problem when a file has several), exit 2, no traceback, and no result folder left behind.

The table runs ``evtwin``'s ``main()`` in this process (fast: one import for all);
a Python exception escaping it fails the test, which is what a traceback would be.
"""

from __future__ import annotations

import io
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from evtwin.sim.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "scenarios" / "demo.toml")
PLANNING = str(ROOT / "scenarios" / "planning.toml")


@dataclass
class Bad:
    """One bad input: the command line (``{out}``, ``{tmp}``, ``{port}`` filled in) and
    words the one error line must hold (lower case)."""

    args: list[str]
    names: list[str]
    setup: Callable[[Path], None] | None = None
    stdin: str | None = None


def _write(name: str, text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).write_text(text, encoding="utf-8")
    return setup


def _demo_with(name: str, *pairs: str) -> Callable[[Path], None]:
    """demo.toml with (old, new) text replaced, written as ``name``."""
    def setup(tmp: Path) -> None:
        text = Path(DEMO).read_text(encoding="utf-8")
        for old, new in zip(pairs[::2], pairs[1::2], strict=True):
            assert old in text, old
            text = text.replace(old, new, 1)
        (tmp / name).write_text(text, encoding="utf-8")
    return setup


CASES: dict[str, Bad] = {
    "run: missing scenario": Bad(["run", "{tmp}/nope.toml", "--out", "{out}"], ["nope.toml"]),
    "run: not TOML": Bad(["run", "{tmp}/x.toml", "--out", "{out}"], ["x.toml"],
                         setup=_write("x.toml", "this is [not toml")),
    "run: unknown --set field": Bad(["run", DEMO, "--set", "ev.colour=red", "--out", "{out}"],
                                    ["ev.colour"]),
    "run: --set without =": Bad(["run", DEMO, "--set", "ev.count", "--out", "{out}"],
                                ["--set"]),
    "run: --set bad value": Bad(["run", DEMO, "--set", "ev.count=many", "--out", "{out}"],
                                ["ev.count", "many"]),
    "run: --set bad protocol": Bad(["run", DEMO, "--set", "csms.protocol=1.5", "--out",
                                    "{out}"], ["csms.protocol"]),
    "run: negative seed": Bad(["run", DEMO, "--seed", "-1", "--out", "{out}"], ["seed"]),
    "run: unknown strategy": Bad(["run", DEMO, "--strategy", "fastest", "--out", "{out}"],
                                 ["fastest"]),
    "run: unwritable --out": Bad(["run", DEMO, "--out", "{tmp}/file/sub"], ["--out", "file"],
                                 setup=_write("file", "")),
    "run: step_s 3600 with default alignment": Bad(
        ["run", DEMO, "--set", "step_s=3600", "--out", "{out}"], ["step_s"]),
    "run: charger on the MV bus 0": Bad(
        ["run", "{tmp}/bus0.toml", "--out", "{out}"], ["bus0.toml", "sites.0.buses.0", "10 kv"],
        setup=_demo_with("bus0.toml", 'name = "street"\n',
                         'name = "street"\nbuses = [0, 3, 5, 7, 9, 11, 13, 15]\n',
                         'name = "office"\n', 'name = "office"\nbuses = [20, 22]\n')),
    "run: unknown option": Bad(["run", DEMO, "--colour", "red"], ["--colour"]),
    "compare: empty --strategies": Bad(["compare", DEMO, "--strategies", "", "--out", "{out}"],
                                       ["--strategies"]),
    "compare: unknown strategy": Bad(["compare", DEMO, "--strategies", "equal_share,nope",
                                      "--out", "{out}"], ["nope"]),
    "sweep: --sample without a range": Bad(
        ["sweep", DEMO, "--set", "ev.count=4,6", "--sample", "lhs:4", "--out", "{out}/sw"],
        ["--sample"]),
    "sweep: --scheduler nobody listens": Bad(
        ["sweep", DEMO, "--set", "ev.count=4,6", "--scheduler", "tcp://127.0.0.1:{port}",
         "--out", "{out}/sw", "--quiet"], ["127.0.0.1:{port}"]),
    "sweep: unknown --kpis": Bad(["sweep", DEMO, "--set", "ev.count=4,6", "--kpis", "speed",
                                  "--out", "{out}/sw"], ["--kpis", "speed"]),
    "check: missing --limits file": Bad(["check", DEMO, "--limits", "{tmp}/limits.toml"],
                                        ["limits.toml"]),
    "check: a limits field under its old name": Bad(
        ["check", DEMO, "--limits", "{tmp}/limits.toml"], ["energy_unmet_max_percent"],
        setup=_write("limits.toml", "energy_unmet_share_max_percent = 2\n")),
    "check: --update-baseline without --baseline": Bad(["check", DEMO, "--update-baseline"],
                                                       ["--baseline"]),
    "hosting-capacity: bad --buses": Bad(["hosting-capacity", PLANNING, "--buses", "x",
                                          "--out", "{out}"], ["--buses"]),
    "hosting-capacity: --buses on the MV side": Bad(
        ["hosting-capacity", PLANNING, "--buses", "0", "--draws", "0", "--out", "{out}"],
        ["--buses", "bus 0", "10 kv"]),
    "place: --candidates on the MV side": Bad(
        ["place", PLANNING, "--add", "1", "--candidates", "0", "--top", "0", "--out", "{out}"],
        ["--candidates", "bus 0"]),
    "sweep: --scheduler not a Dask scheme": Bad(
        ["sweep", DEMO, "--set", "ev.count=4,6", "--scheduler", "http://127.0.0.1:{port}",
         "--out", "{out}/sw", "--quiet"], ["--scheduler"]),
    "hosting-capacity: --penetration above 1": Bad(
        ["hosting-capacity", PLANNING, "--penetration", "2", "--out", "{out}"],
        ["--penetration"]),
    "place: --add 0": Bad(["place", PLANNING, "--add", "0", "--out", "{out}"], ["--add"]),
    "fit-behaviour: missing file": Bad(["fit-behaviour", "{tmp}/s.csv", "--out", "{out}"],
                                       ["s.csv"]),
    "fit-behaviour: bad time zone": Bad(["fit-behaviour",
                                         str(ROOT / "scenarios/data/sessions_sample.csv"),
                                         "--timezone", "Mars/Olympus", "--out", "{out}"],
                                        ["mars/olympus"]),
    "csms config-for: --out is a folder": Bad(
        ["csms", "config-for", DEMO, "--out", "{tmp}"], ["--out", "is a folder"]),
    "csms config-for: missing scenario": Bad(
        ["csms", "config-for", "{tmp}/nope.toml", "--out", "{tmp}/c.toml"], ["nope.toml"]),
    "reproduce: not a run folder": Bad(["reproduce", "{tmp}"], ["run.json"]),
    "export-pf: not a run folder": Bad(["export-pf", "{tmp}", "--out", "{out}"], ["{tmp}"]),
    "stations: http:// URL": Bad(["stations", "--csms", "http://127.0.0.1:{port}/ocpp",
                                  "--out", "{out}", "--quiet"], ["http://"]),
    "stations: nobody listens": Bad(["stations", "--csms", "ws://127.0.0.1:{port}/ocpp",
                                     "--scenario", DEMO,
                                     "--duration-h", "0.1", "--out", "{out}", "--quiet"],
                                    ["127.0.0.1:{port}"]),
    "csms serve: port out of range": Bad(["csms", "serve", "--port", "70000", "--db",
                                          "{tmp}/c.sqlite"], ["70000"]),
    "csms serve: unwritable --db": Bad(["csms", "serve", "--port", "0", "--db",
                                        "{tmp}/file/c.sqlite"], ["c.sqlite"],
                                       setup=_write("file", "")),
    "csms serve: missing --config": Bad(["csms", "serve", "--port", "0", "--config",
                                         "{tmp}/csms.toml", "--db", "{tmp}/c.sqlite"],
                                        ["csms.toml"]),
    "csms hash-password: nothing on stdin": Bad(["csms", "hash-password", "--stdin"],
                                                ["stdin"], stdin=""),
}


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """``csms serve`` sends logs to stderr through a thread of its own; in this process
    that stderr is pytest's capture, closed after the test: put logging back."""
    import logging

    from evtwin.csms.service import stop_json_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("ocpp", "websockets")}
    yield
    stop_json_logging()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lv in levels.items():
        logging.getLogger(name).setLevel(lv)


@pytest.fixture()
def closed_port() -> Iterator[int]:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_no_folder(
        case: Bad, tmp_path: Path, closed_port: int, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    if case.setup is not None:
        case.setup(tmp_path)

    def fill(text: str) -> str:
        return (text.replace("{out}", str(out)).replace("{tmp}", str(tmp_path))
                .replace("{port}", str(closed_port)))

    if case.stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(case.stdin))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        code = main([fill(a) for a in case.args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, (code, captured.err, captured.out[-500:])
    # One line; several problems in one file: one line each, every one naming the file.
    assert lines and lines[0].startswith("error: "), captured.err
    source = lines[0].removeprefix("error: ").split(": ", 1)[0]
    assert all(more.startswith(f"{source}: ") for more in lines[1:]), captured.err
    line = " ".join(lines).lower()
    assert "traceback" not in captured.err.lower()
    for word in case.names:
        assert fill(word).lower() in line, (word, line)
    assert not out.exists() or not any(out.iterdir()), list(out.rglob("*"))
    after = sorted(p.name for p in tmp_path.iterdir() if p.name != "out")
    assert after == [b for b in before if b != "out"], "a file was left in the working folder"
