"""``evtwin csms serve`` starts without importing the twin.

A CSMS restart is a reconnect storm, so its start-up time is downtime; it used
to take 10-20 s because the CLI imported pandapower, power-grid-model, mesa,
matplotlib and scipy. These tests check *what* is imported (an assertion that
can fail), not how long it takes.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from evtwin.csms import strategies

SCALE = float(os.environ.get("EVTWIN_TEST_TIMEOUT_SCALE", "1"))
ROOT = Path(__file__).resolve().parents[1]

#: Modules a CSMS running equal_share must not import.
HEAVY = ("pandapower", "power_grid_model", "power_grid_model_io", "matplotlib", "mesa",
         "pandas", "dask", "scipy", "simpy", "pyarrow", "evtwin.agents", "evtwin.grid.feeder",
         "evtwin.grid.networks", "evtwin.sim.runner", "evtwin.sim.scenario",
         "evtwin.csms.feeder", "evtwin.csms.scheduling", "evtwin.csms.v2g")

CONFIG = """
[control]
strategy = "{strategy}"
interval_s = 1

[[sites]]
name = "depot"
limit_kw = 7

[[stations]]
id = "CS1"
site = "depot"
"""

# Runs `evtwin csms serve` in-process (the CLI's own main) with the serve
# coroutine replaced by one that reports the loaded modules and returns, so the
# whole serve path is imported, the config loaded and the strategy looked up.
SERVE_PROBE = """
import json, sys
import evtwin.csms.service as service
from evtwin.csms.core import CSMSCore
from evtwin.csms.store import Store

async def probe(config, db_path, **kwargs):
    store = Store(":memory:")
    CSMSCore(config.csms_config(), store)  # looks the strategy up
    store.close()
    print(json.dumps(sorted(sys.modules)))

service.serve = probe
from evtwin.sim.cli import main
sys.exit(main(["csms", "serve", "--config", sys.argv[1], "--db", ":memory:", "--port", "0"]))
"""


def loaded_by_serve(tmp_path: Path, strategy: str) -> set[str]:
    cfg = tmp_path / "csms.toml"
    cfg.write_text(CONFIG.format(strategy=strategy))
    out = subprocess.run([sys.executable, "-c", SERVE_PROBE, str(cfg)], capture_output=True,
                         text=True, timeout=120 * SCALE, check=True, cwd=tmp_path)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules for h in HEAVY if m == h or m.startswith(h + "."))


@pytest.mark.parametrize("strategy", ["uncontrolled", "equal_share"])
@pytest.mark.slow
def test_csms_serve_imports_nothing_of_the_twin(tmp_path: Path, strategy: str) -> None:
    modules = loaded_by_serve(tmp_path, strategy)
    assert "evtwin.csms.service" in modules and "evtwin.csms.server" in modules
    assert heavy_in(modules) == []


@pytest.mark.slow
def test_a_strategy_module_is_imported_when_configured(tmp_path: Path) -> None:
    modules = loaded_by_serve(tmp_path, "edf")
    assert "evtwin.csms.scheduling" in modules
    # edf needs no LP: scipy and the grid model stay out.
    assert not {"scipy", "pandapower", "power_grid_model"} & modules


def test_cli_help_and_package_imports_stay_light() -> None:
    code = ("import sys, evtwin.sim.cli, evtwin.csms, evtwin.grid, evtwin.sim; "
            "from evtwin.csms import ConfigError; from evtwin.grid import GridError; "
            "from evtwin.sim import ScenarioError; import json; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60 * SCALE, check=True)
    assert heavy_in(set(json.loads(out.stdout))) == []
    helped = subprocess.run([sys.executable, "-m", "evtwin.sim.cli", "--help"],
                            capture_output=True, text=True, timeout=60 * SCALE, check=True)
    assert "csms" in helped.stdout


def test_public_names_still_import() -> None:
    import evtwin.csms
    import evtwin.grid
    import evtwin.sim

    for package in (evtwin.csms, evtwin.grid, evtwin.sim):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
    from evtwin.csms import CSMSCore, get_strategy

    assert CSMSCore.__name__ == "CSMSCore"
    assert evtwin.csms.core.CSMSCore is CSMSCore  # submodules stay reachable as attributes
    assert callable(get_strategy("v2g_price"))
    with pytest.raises(AttributeError):
        _ = evtwin.csms.no_such_name


def test_lazy_strategy_table_matches_the_register_calls() -> None:
    """Every ``@register("name")`` in a lazily imported module is in ``_LAZY`` and back."""
    found: dict[str, str] = {}
    for module in sorted(set(strategies._LAZY.values())):
        path = ROOT / "csms" / f"{module.rsplit('.', 1)[1]}.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "register" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                found[str(node.args[0].value)] = module
    assert found == strategies._LAZY
    names = strategies.strategy_names()
    assert set(found) <= set(names) and {"uncontrolled", "equal_share"} <= set(names)
    for name in found:
        assert callable(strategies.get_strategy(name))


@pytest.mark.slow
def test_serve_process_logs_listening_and_stops_on_sigint(tmp_path: Path) -> None:
    """The real process: starts, listens, and a SIGINT stops it cleanly."""
    cfg = tmp_path / "csms.toml"
    cfg.write_text(CONFIG.format(strategy="equal_share"))

    def default_signals() -> None:  # a background shell job would ignore SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(
        [sys.executable, "-m", "evtwin.sim.cli", "csms", "serve", "--host", "127.0.0.1",
         "--port", "0", "--db", str(tmp_path / "csms.sqlite"), "--config", str(cfg)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        start_new_session=True, preexec_fn=default_signals)
    watchdog = threading.Timer(60 * SCALE, proc.kill)  # bounds the read loop below
    watchdog.start()
    try:
        assert proc.stderr is not None
        listening = None
        for line in proc.stderr:
            entry = json.loads(line)
            if entry.get("event") == "listening":
                listening = entry
                break
        assert listening is not None and listening["port"] > 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30 * SCALE) == 130
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
