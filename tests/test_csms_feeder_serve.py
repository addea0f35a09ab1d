"""``feeder_aware`` in a standalone ``evtwin csms serve`` process: the CSMS builds
its feeder model from the ``[feeder]`` network it is configured with and
estimates the feeder's state from what the stations report (power, voltage).

The test plays the stations and the physical feeder: six stations at the far
end of the Kerber Dorfnetz, each with an EV that would take 22 kW, report the
voltage pandapower's own power flow (the reference, not evtwin's engine)
gives at their bus for the power they draw, and draw what the CSMS's
SetChargingProfile allows. Uncontrolled, the feeder would fall to 0.865 pu
and overload its transformer; under the CSMS the plant must stay inside the
configured limits while still charging."""

from __future__ import annotations

import asyncio
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.loadgen import ID_TAG, SCALE, CsmsProcess, _boot_payload, _now

pytestmark = pytest.mark.slow

NETWORK = "kerber_dorfnetz"
WANT_KW = 22.0
V_MIN_PU = 0.93
TRAFO_MAX = 100.0


def plant(buses: list[int], p_kw: list[float]) -> tuple[list[float], float, float]:
    """pandapower's power flow with the stations' loads: (station vm, min vm, trafo %)."""
    import pandapower as pp

    from evtwin.grid import load_network

    net = load_network(NETWORK)
    for bus, p in zip(buses, p_kw, strict=True):
        pp.create_load(net, bus, p_mw=p / 1000.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(net, numba=False, trafo_loading="power")
    vm = net.res_bus["vm_pu"]
    return ([float(vm[b]) for b in buses], float(vm.min()),
            float(net.res_trafo["loading_percent"].max()))


def far_buses(n: int) -> list[int]:
    import pandapower as pp

    from evtwin.grid import load_network

    net = load_network(NETWORK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(net, numba=False)
    vm = net.res_bus["vm_pu"]
    return [int(b) for b in vm.loc[net.load["bus"].to_numpy()].sort_values().index[:n]]


def write_config(path: Path, ids: list[str], buses: list[int]) -> Path:
    lines = ["[server]", "ping_interval_s = 0", "stats_interval_s = 0", "",
             "[control]", 'strategy = "feeder_aware"', "interval_s = 1", "",
             "[tokens]", f'accepted = ["{ID_TAG}"]', "",
             "[feeder]", f'network = "{NETWORK}"', f"v_min_pu = {V_MIN_PU}",
             f"trafo_loading_max_percent = {TRAFO_MAX}", "",
             "[[sites]]", 'name = "village"', ""]
    for ident, bus in zip(ids, buses, strict=True):
        lines += ["[[stations]]", f'id = "{ident}"', 'site = "village"',
                  f"evse_max_kw = [{WANT_KW}]", f"bus = {bus}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Station:
    """A raw OCPP 2.0.1 station: sends its reports, obeys SetChargingProfile."""

    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.limit_kw = WANT_KW
        self.profiles = 0
        self.energy_wh = 0.0
        self.seq = 0
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._n = 0
        self.ws: Any = None

    @property
    def power_kw(self) -> float:
        return min(WANT_KW, self.limit_kw)

    async def reader(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg[0] == 2:
                if msg[2] == "SetChargingProfile":
                    period = msg[3]["chargingProfile"]["chargingSchedule"][0][
                        "chargingSchedulePeriod"][0]
                    unit = msg[3]["chargingProfile"]["chargingSchedule"][0]["chargingRateUnit"]
                    limit = float(period["limit"])
                    self.limit_kw = limit / 1000.0 if unit == "W" else limit * 230 * 3 / 1000
                    self.profiles += 1
                    await self.ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
                else:
                    await self.ws.send(json.dumps([4, msg[1], "NotSupported", "", {}]))
            elif msg[1] in self._pending:
                self._pending.pop(msg[1]).set_result(msg)

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        self._n += 1
        mid = f"{self.ident}-{self._n}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        await self.ws.send(json.dumps([2, mid, action, payload]))
        msg = await asyncio.wait_for(fut, 10 * SCALE)
        assert msg[0] == 3, msg
        return msg[2]

    async def report(self, kind: str, voltage_pu: float, dt_s: float) -> None:
        self.energy_wh += self.power_kw * 1000.0 * dt_s / 3600.0
        ts = _now()
        payload: dict[str, Any] = {
            "eventType": kind, "timestamp": ts, "seqNo": self.seq,
            "triggerReason": "Authorized" if kind == "Started" else "MeterValuePeriodic",
            "transactionInfo": {"transactionId": f"tx-{self.ident}"},
            "meterValue": [{"timestamp": ts, "sampledValue": [
                {"value": round(self.energy_wh, 1), "measurand": "Energy.Active.Import.Register",
                 "unitOfMeasure": {"unit": "Wh"}},
                {"value": round(self.power_kw * 1000.0, 1), "measurand": "Power.Active.Import",
                 "unitOfMeasure": {"unit": "W"}},
                {"value": round(voltage_pu * 230.0, 2), "measurand": "Voltage",
                 "unitOfMeasure": {"unit": "V"}}]}],
        }
        if kind == "Started":
            payload["evse"] = {"id": 1, "connectorId": 1}
            payload["idToken"] = {"idToken": ID_TAG, "type": "ISO14443"}
        self.seq += 1
        await self.call("TransactionEvent", payload)


def test_feeder_aware_in_csms_serve_keeps_the_feeder_inside_its_limits(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect

    ids = [f"FA{i}" for i in range(6)]
    buses = far_buses(len(ids))
    _, vmin_uncontrolled, trafo_uncontrolled = plant(buses, [WANT_KW] * len(ids))
    assert vmin_uncontrolled < V_MIN_PU - 0.03 and trafo_uncontrolled > TRAFO_MAX + 10
    config = write_config(tmp_path / "csms.toml", ids, buses)

    async def drive(url_of: Any) -> list[Station]:
        stations = [Station(i) for i in ids]
        readers = []
        for st in stations:
            st.ws = await connect(url_of(st.ident), subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
            readers.append(asyncio.create_task(st.reader()))
            boot = await st.call("BootNotification", _boot_payload())
            assert boot["status"] == "Accepted"
        vm, _, _ = plant(buses, [s.power_kw for s in stations])
        for st, v in zip(stations, vm, strict=True):
            await st.report("Started", v, 0.0)
        for _ in range(16):  # 8 s of reports, every 0.5 s; the CSMS controls every 1 s
            await asyncio.sleep(0.5)
            vm, _, _ = plant(buses, [s.power_kw for s in stations])
            await asyncio.gather(*(st.report("Updated", v, 0.5)
                                   for st, v in zip(stations, vm, strict=True)))
        for st, r in zip(stations, readers, strict=True):
            r.cancel()
            await st.ws.close()
        return stations

    with CsmsProcess(config, tmp_path / "csms.sqlite") as server:
        server.wait_listening()
        stations = asyncio.run(drive(server.url))
        errors = [line for line in server.lines if line.get("level") in ("error", "critical")]
        failed = server.events["feeder_update_failed"]
    assert errors == [] and failed == 0
    assert all(st.profiles >= 1 for st in stations)
    powers = [st.power_kw for st in stations]
    _, vmin, trafo = plant(buses, powers)
    assert vmin >= V_MIN_PU - 0.002, (powers, vmin)
    assert trafo <= TRAFO_MAX + 1.0, (powers, trafo)
    assert sum(powers) >= 10.0, powers  # it holds the limits by sharing, not by stopping
    print(f"\nfeeder_aware in csms serve: {[round(p, 1) for p in powers]} kW, "
          f"min {vmin:.4f} pu (uncontrolled {vmin_uncontrolled:.4f}), trafo {trafo:.1f} % "
          f"(uncontrolled {trafo_uncontrolled:.1f})")


@pytest.mark.parametrize(("feeder", "bus", "field"), [
    (f'network = "{NETWORK}"', None, "stations.0.bus"),
    ('network = "no_such_network"', 3, "feeder.network"),
    (f'network = "{NETWORK}"', 99999, "stations.0.bus"),
])
def test_a_bad_feeder_setting_is_one_line_naming_the_field(
        tmp_path: Path, feeder: str, bus: int | None, field: str) -> None:
    import subprocess
    import sys

    station = ['[[stations]]', 'id = "CS1"'] + ([f"bus = {bus}"] if bus is not None else [])
    config = tmp_path / "csms.toml"
    config.write_text("\n".join(['[control]', 'strategy = "feeder_aware"', "", "[feeder]",
                                 feeder, "", *station, ""]), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "evtwin.sim.cli", "csms", "serve", "--port", "0",
         "--db", str(tmp_path / "c.sqlite"), "--config", str(config)],
        capture_output=True, text=True, timeout=60 * SCALE)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in proc.stderr
