"""The transports carry the same OCPP: a run over the in-memory pipe gives exactly
the results of the same run over websockets (KPIs, sessions, time series,
profiles, transactions), and the pipe itself behaves like a websocket's messages."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from evtwin.sim import Twin, load_scenario
from evtwin.transports import MemoryClosed, memory_pair

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- the pipe


def test_pipe_delivers_whole_frames_in_order_then_the_close() -> None:
    async def main() -> None:
        station, csms = memory_pair("CS1", "ocpp2.0.1")
        await station.send("[2,\"1\",\"Heartbeat\",{}]")
        await station.send(b"\x00binary")
        got: list[Any] = []
        reader = asyncio.create_task(csms.recv())
        got.append(await reader)
        got.append(await csms.recv())
        waiting = asyncio.create_task(csms.recv())
        await asyncio.sleep(0)
        await station.send("[2,\"2\",\"Heartbeat\",{}]")
        got.append(await waiting)
        await csms.send("late")
        await station.close(1000, "bye")
        assert got == ["[2,\"1\",\"Heartbeat\",{}]", b"\x00binary", "[2,\"2\",\"Heartbeat\",{}]"]
        assert await station.recv() == "late"  # sent before the close: still read
        with pytest.raises(MemoryClosed):
            await station.recv()
        with pytest.raises(MemoryClosed, match="1000 bye"):
            await csms.send("x")
        assert csms.closed and csms.close_code == 1000 and station.sent == 3

    asyncio.run(main())


def test_a_waiting_reader_sees_the_close() -> None:
    async def main() -> None:
        station, csms = memory_pair("CS1", "ocpp1.6")
        waiting = asyncio.create_task(csms.recv())
        await asyncio.sleep(0)
        await station.close()
        with pytest.raises(MemoryClosed):
            await waiting

    asyncio.run(main())


def test_two_readers_on_one_end_are_refused() -> None:
    async def main() -> None:
        _, csms = memory_pair("CS1", "ocpp2.0.1")
        first = asyncio.create_task(csms.recv())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already waiting"):
            await csms.recv()
        first.cancel()

    asyncio.run(main())


# --------------------------------------------------------------------------- whole runs


def _run(path: Path, transport: str, overrides: dict[str, Any]) -> Any:
    return Twin(load_scenario(path, {**overrides, "run.transport": transport})).run()


def _same_frame(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True),
                                  check_exact=True)


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "overrides"), [
    ("demo.toml", {}),
    ("v2g.toml", {}),
    ("pv_storage.toml", {}),
    ("demo.toml", {"duration_h": 6, "csms.protocol": "1.6"}),
    ("v2g.toml", {"duration_h": 12, "csms.protocol": "2.0.1"}),
])
def test_the_three_transports_give_identical_runs(scenario: str,
                                                  overrides: dict[str, Any]) -> None:
    """websocket (real sockets), memory (the same frames through a pipe) and direct
    (no frames at all): the same KPIs, sessions, time series, profiles and
    transactions, to the last bit."""
    ws = _run(ROOT / "scenarios" / scenario, "websocket", overrides)
    assert ws.kpis["ocpp_messages"] > 0 and ws.kpis["profiles_received"] > 0
    for transport in ("memory", "direct"):
        other = _run(ROOT / "scenarios" / scenario, transport, overrides)
        assert other.kpis == ws.kpis, transport
        _same_frame(ws.sessions, other.sessions)
        _same_frame(ws.timeseries, other.timeseries)
        _same_frame(ws.station_power_kw, other.station_power_kw)
        _same_frame(ws.profiles, other.profiles)
        assert other.transactions == ws.transactions, transport


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "overrides"), [
    # Grid-operator windows (the input port) and V2G set points.
    ("v2g.toml", {"duration_h": 12}),
    # feeder_aware: a feeder measurement crosses the pipe every step.
    ("feeder_stress.toml", {"control.strategy": "feeder_aware", "duration_h": 6}),
])
def test_csms_in_its_own_process_gives_the_same_run(scenario: str,
                                                    overrides: dict[str, Any]) -> None:
    """``[run] csms_process = true``: the CSMS in a child process (its own event loop
    and websocket server), clock and inputs sent over a pipe, the same results."""
    here = _run(ROOT / "scenarios" / scenario, "websocket", overrides)
    apart = _run(ROOT / "scenarios" / scenario, "websocket",
                 {**overrides, "run.csms_process": True})
    assert here.kpis["ocpp_messages"] > 0 and here.kpis["profiles_received"] > 0
    assert apart.kpis == here.kpis
    _same_frame(here.timeseries, apart.timeseries)
    _same_frame(here.sessions, apart.sessions)
    _same_frame(here.profiles, apart.profiles)
    assert apart.transactions == here.transactions


@pytest.mark.slow
def test_csms_process_that_cannot_start_fails_the_run_with_its_reason(tmp_path: Path) -> None:
    from evtwin.sim.exceptions import RunError

    sc = load_scenario(ROOT / "scenarios" / "demo.toml",
                       {"duration_h": 1, "run.csms_process": True})
    with pytest.raises(RunError, match="CSMS process stopped") as err:
        Twin(sc, database=tmp_path / "missing" / "csms.sqlite").run()
    assert "missing/csms.sqlite" in str(err.value)
    assert "missing does not exist" in str(err.value)


def test_csms_process_needs_the_websocket_transport() -> None:
    from evtwin.sim import ScenarioError

    with pytest.raises(ScenarioError, match="csms_process"):
        load_scenario(ROOT / "scenarios" / "demo.toml",
                      {"run.csms_process": True, "run.transport": "direct"})


@pytest.mark.slow
def test_a_failed_run_leaves_the_same_csms_database_in_and_out_of_process(
        tmp_path: Path) -> None:
    """The step a run fails in is rolled back, whether the CSMS runs here or apart."""
    import sqlite3

    seen = {}
    for apart in (False, True):
        db = tmp_path / f"apart-{apart}.sqlite"
        sc = load_scenario(ROOT / "scenarios" / "demo.toml",
                           {"duration_h": 8, "run.csms_process": apart})

        def progress(done: int, total: int) -> None:
            if done == 301:  # the step at 5 h: a meter sample is due in it
                raise RuntimeError("stop here")

        with pytest.raises(RuntimeError, match="stop here"):
            Twin(sc, database=db, progress=progress).run()
        con = sqlite3.connect(db)
        seen[apart] = con.execute("SELECT COUNT(*), MAX(timestamp) FROM meter_values").fetchone()
        con.close()
    assert seen[True] == seen[False]
    assert seen[True][0] > 0


@pytest.mark.slow
def test_csms_process_knows_a_strategy_registered_in_an_importable_module(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.strategy_plugin  # noqa: F401  (registers half_share here)
    from evtwin.csms import strategies
    from evtwin.sim.exceptions import RunError

    overrides = {"duration_h": 4, "start": "2026-06-01T16:00:00",
                 "control.strategy": "half_share"}
    here = _run(ROOT / "scenarios" / "demo.toml", "websocket", overrides)
    apart = _run(ROOT / "scenarios" / "demo.toml", "websocket",
                 {**overrides, "run.csms_process": True})
    assert apart.kpis == here.kpis and here.kpis["profiles_received"] > 0

    def in_main(view: Any) -> Any:
        return {}

    in_main.__module__ = "__main__"
    monkeypatch.setitem(strategies._REGISTRY, "from_main", in_main)
    with pytest.raises(RunError, match="registered in the main script"):
        _run(ROOT / "scenarios" / "demo.toml", "websocket",
             {"duration_h": 1, "control.strategy": "from_main", "run.csms_process": True})
