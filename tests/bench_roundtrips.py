"""Benchmark: OCPP round trips per second over websockets, CSMS and stations in
separate processes, against a plain ``ocpp``-library pair measured in the same run.

Both pairs run the same exchange: ``EVTWIN_RT_STATIONS`` (20) stations on
127.0.0.1, each sending OCPP 2.0.1 MeterValues (three sampled values) one
after another for ``EVTWIN_RT_SECONDS`` (8) seconds after a 1 s warm-up; the
figure is answered calls per second.

- evtwin: the stations are the Sans-I/O :class:`~evtwin.ocppj.Endpoint` on
  websockets (every request and answer checked against the specification's
  schema on both ends), the server evtwin's CSMS (:class:`CSMSServer` over
  :class:`CSMSCore`), which also stores every reading in its SQLite file.
- baseline: ``ocpp.v201.ChargePoint`` on both ends, as the library's own
  examples do (its jsonschema validation on both ends), a handler that stores
  nothing.

Nothing asserts a number; the figures are printed for the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

STATIONS = int(os.environ.get("EVTWIN_RT_STATIONS", "20"))
SECONDS = float(os.environ.get("EVTWIN_RT_SECONDS", "8"))

_EVTWIN_SERVER = """
import asyncio, sys
from evtwin.csms import CSMSConfig, CSMSCore, CSMSServer, EvseSpec, StationSpec, Store

async def main():
    n, db = int(sys.argv[1]), sys.argv[2]
    config = CSMSConfig(stations=tuple(StationSpec(f"S{i}", "site", (EvseSpec(1, 11000.0),))
                                       for i in range(n)))
    store = Store(db)
    server = CSMSServer(CSMSCore(config, store), host="127.0.0.1", port=0)
    await server.start()
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

_OCPP_SERVER = """
import asyncio, logging, sys
import websockets
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call_result

logging.getLogger("ocpp").setLevel(logging.WARNING)

class CSMS(ChargePoint):
    @on("MeterValues")
    def on_meter_values(self, evse_id, meter_value, **_):
        return call_result.MeterValues()

async def handler(ws):
    await CSMS(ws.request.path.strip("/"), ws).start()

async def main():
    async with websockets.serve(handler, "127.0.0.1", 0, subprotocols=["ocpp2.0.1"]) as srv:
        print(srv.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""

_CLIENT = """
import asyncio, json, logging, sys, time
from datetime import UTC, datetime
import websockets

kind, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
logging.getLogger("ocpp").setLevel(logging.WARNING)

def meter_value():
    ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return [{"timestamp": ts, "sampledValue": [
        {"value": 1234.5, "measurand": "Energy.Active.Import.Register",
         "unitOfMeasure": {"unit": "Wh"}},
        {"value": 7200.0, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
        {"value": 231.2, "measurand": "Voltage", "unitOfMeasure": {"unit": "V"}}]}]

counts = [0, 0]  # warm-up, measured

async def evtwin_station(i, start, stop):
    from evtwin.ocppj import Endpoint, ResultReceived
    async with websockets.connect(f"ws://127.0.0.1:{port}/ocpp/S{i}",
                                  subprotocols=["ocpp2.0.1"], compression=None) as ws:
        ep = Endpoint("2.0.1", clock=time.monotonic)
        while time.monotonic() < stop:
            ep.call("MeterValues", {"evseId": 1, "meterValue": meter_value()})
            for frame in ep.data_to_send():
                await ws.send(frame)
            events = ep.receive(await ws.recv())
            assert isinstance(events[0], ResultReceived), events
            counts[time.monotonic() >= start] += 1

async def ocpp_station(i, start, stop):
    from ocpp.v201 import ChargePoint, call
    async with websockets.connect(f"ws://127.0.0.1:{port}/S{i}",
                                  subprotocols=["ocpp2.0.1"], compression=None) as ws:
        cp = ChargePoint(f"S{i}", ws)
        reader = asyncio.create_task(cp.start())
        while time.monotonic() < stop:
            mv = [{"timestamp": m["timestamp"], "sampled_value": [
                {"value": s["value"], "measurand": s["measurand"],
                 "unit_of_measure": s["unitOfMeasure"]} for s in m["sampledValue"]]}
                  for m in meter_value()]
            await cp.call(call.MeterValues(evse_id=1, meter_value=mv))
            counts[time.monotonic() >= start] += 1
        reader.cancel()

async def main():
    t0 = time.monotonic()
    start, stop = t0 + 1.0, t0 + 1.0 + seconds
    station = evtwin_station if kind == "evtwin" else ocpp_station
    await asyncio.gather(*(station(i, start, stop) for i in range(n)))
    print(json.dumps({"calls": counts[1], "seconds": seconds}))

asyncio.run(main())
"""


def _pair(server_script: str, kind: str, tmp_path: Path) -> float:
    server = subprocess.Popen([sys.executable, "-c", server_script, str(STATIONS),
                               str(tmp_path / f"{kind}.sqlite")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        assert port.isdigit(), server.stderr.read() if server.stderr else ""
        done = subprocess.run([sys.executable, "-c", _CLIENT, kind, port, str(STATIONS),
                               str(SECONDS)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return result["calls"] / result["seconds"]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.benchmark(group="roundtrips")
def test_round_trips_against_a_plain_ocpp_pair(benchmark: Any, tmp_path: Path) -> None:
    rates: dict[str, list[float]] = {"evtwin": [], "ocpp": []}

    def once() -> None:
        rates["ocpp"].append(_pair(_OCPP_SERVER, "ocpp", tmp_path))
        rates["evtwin"].append(_pair(_EVTWIN_SERVER, "evtwin", tmp_path))

    benchmark.pedantic(once, rounds=2, iterations=1, warmup_rounds=0)
    best = {k: max(v) for k, v in rates.items()}
    ratio = best["evtwin"] / best["ocpp"]
    benchmark.extra_info.update({f"{k}_round_trips_per_s": round(v) for k, v in best.items()})
    benchmark.extra_info["ratio"] = round(ratio, 2)
    print(f"\n{STATIONS} stations, MeterValues 2.0.1 over websockets, best of 2, "
          f"{time.strftime('%H:%M')}: evtwin {best['evtwin']:,.0f}/s, plain ocpp pair "
          f"{best['ocpp']:,.0f}/s: {ratio:.2f}x")
    assert best["evtwin"] > 0 and best["ocpp"] > 0
