"""The driver API over real HTTP on 127.0.0.1, against a virtual station connected to
the CSMS over a real websocket: find, reserve, start, follow, stop, bill; and a
driver sees only their own sessions, bills and reservations."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from evtwin.csms.api import hash_token
from evtwin.csms.config import ServeConfig, load_config
from evtwin.csms.driverapi import (
    DriverAPI,
    DriverError,
    DriverService,
    SiteLocation,
    distance_km,
    driver_token_lines,
)
from evtwin.csms.exceptions import ConfigError
from tests.test_reservations import Rig, rig

APP1 = "a" * 12 + "-app-token-of-driver-one-x"
APP2 = "b" * 12 + "-app-token-of-driver-two-y"
# Two sites: Berlin Mitte (the station's) and Potsdam (no station of this rig).
SITES = [SiteLocation("site", 52.5200, 13.4050, "Mitte", "Unter den Linden 1", "Berlin"),
         SiteLocation("far", 52.3906, 13.0645, "Potsdam")]


@dataclass
class App:
    rig: Rig
    api: DriverAPI
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, token: str | None = APP1,
                   **kw: Any) -> tuple[int, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, self.api.url + path, headers=headers,
                                     **kw) as response:
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def app(version: str, tmp_path: Path) -> AsyncIterator[App]:
    async with rig(version, tmp_path) as r:
        service = DriverService(r.core, r.server.connections.get, SITES)
        api = DriverAPI(service, {"TOK1": hash_token(APP1), "TOK2": hash_token(APP2)})
        async with api, aiohttp.ClientSession() as http:
            yield App(r, api, http)


def test_distance_is_the_great_circle() -> None:
    # Berlin - Potsdam: about 26.5 km; a degree of latitude: 111.2 km.
    assert distance_km(52.52, 13.405, 52.3906, 13.0645) == pytest.approx(26.7, abs=0.5)
    assert distance_km(0, 0, 1, 0) == pytest.approx(111.19, abs=0.01)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_find_reserve_start_follow_stop_and_bill_over_http(version: str,
                                                           tmp_path: Path) -> None:
    async def main() -> None:
        async with app(version, tmp_path) as a:
            r = a.rig
            # Find: the station near Alexanderplatz, nearest first, with live EVSEs and price.
            status, found = await a.call("GET", "/stations?lat=52.5219&lon=13.4132")
            assert status == 200
            [st] = found["stations"]
            assert st["station_id"] == "CS1" and st["distance_km"] == pytest.approx(0.59, abs=0.05)
            assert [e["status"] for e in st["evses"]] == ["Available", "Available"]
            assert st["price"] == {"energy_per_kwh": 0.3, "time_per_hour": 0.0,
                                   "session_fee": 0.0, "currency": "EUR"}
            assert (await a.call("GET", "/stations?lat=52.39&lon=13.06&radius_km=5"))[1] == {
                "stations": []}
            # Reserve EVSE 2 (ReserveNow over OCPP): the map shows it Reserved.
            status, reservation = await a.call("POST", "/reservations",
                                               json={"station_id": "CS1", "evse_id": 2,
                                                     "minutes": 20})
            assert status == 201 and reservation["status"] == "Accepted"
            await r.settle(30)
            assert r.evse_status(2) == "Reserved"
            st = (await a.call("GET", "/stations/CS1"))[1]
            assert [e["status"] for e in st["evses"]] == ["Available", "Reserved"]
            # One reservation at a time; the other driver cannot start on it.
            assert (await a.call("POST", "/reservations", json={"station_id": "CS1"}))[0] == 409
            status, body = await a.call("POST", "/sessions", APP2,
                                        json={"station_id": "CS1", "evse_id": 2})
            assert status == 409 and body["station_status"] == "Reserved"
            # Driver 2 sees none of driver 1's reservations and cannot cancel them.
            assert (await a.call("GET", "/reservations", APP2))[1] == {"reservations": []}
            rid = reservation["reservation_id"]
            assert (await a.call("DELETE", f"/reservations/{rid}", APP2))[0] == 404
            # The driver arrives, plugs in and starts from the app.
            r.station.plug_waiting(2, r.ev("TOK1"), 600.0)
            await r.settle(600)
            status, started = await a.call("POST", "/sessions",
                                           json={"station_id": "CS1", "evse_id": 2})
            assert status == 202 and started["status"] == "Accepted"
            await r.settle(601)
            status, sessions = await a.call("GET", "/sessions")
            [session] = sessions["sessions"]
            assert session["open"] and session["evse_id"] == 2
            tx = session["transaction_id"]
            assert r.core.reservations.by_id[rid].status == "Used"
            # Follow: energy, power and cost grow as it charges.
            r.clock[0] = 2400.0
            r.station.advance(2400.0, 1799.0)
            await r.link.flush(2400.0, sample=True, aligned=False, heartbeat=False)
            status, follow = await a.call("GET", f"/sessions/CS1/{tx}")
            assert status == 200 and follow["open"]
            assert follow["power_kw"] == pytest.approx(11.0, rel=0.02)
            assert follow["energy_kwh"] == pytest.approx(11.0 * 1799 / 3600, rel=0.02)
            assert follow["cost"] == pytest.approx(0.3 * follow["energy_kwh"], abs=0.01)
            # Someone else's session, bill or stop: not found.
            for method, path in (("GET", f"/sessions/CS1/{tx}"),
                                 ("GET", f"/sessions/CS1/{tx}/bill"),
                                 ("POST", f"/sessions/CS1/{tx}/stop")):
                assert (await a.call(method, path, APP2))[0] == 404, path
            assert (await a.call("GET", "/sessions", APP2))[1] == {"sessions": []}
            # No bill while it runs; stop remotely; the EV stays plugged in.
            assert (await a.call("GET", f"/sessions/CS1/{tx}/bill"))[0] == 409
            status, _ = await a.call("POST", f"/sessions/CS1/{tx}/stop")
            assert status == 202
            await r.settle(2401)
            assert r.station.evses[2].ev is not None and not r.station.evses[2].charging
            status, bill = await a.call("GET", f"/sessions/CS1/{tx}/bill")
            assert status == 200
            assert bill["energy_kwh"] == pytest.approx(follow["energy_kwh"], rel=1e-3)
            assert bill["cost"] == pytest.approx(0.3 * bill["energy_kwh"], abs=0.01)
            assert bill["currency"] == "EUR"
            done = (await a.call("GET", f"/sessions/CS1/{tx}"))[1]
            assert not done["open"] and done["power_kw"] == 0.0
            # A stopped session cannot be stopped again.
            assert (await a.call("POST", f"/sessions/CS1/{tx}/stop"))[0] == 409
            # Sessions and bills are read by the driver's token and by key, never by
            # reading every transaction or CDR.
            def whole_table() -> Any:
                raise AssertionError("a full-table read")

            r.core.store.transactions = whole_table  # type: ignore[method-assign]
            r.core.store.cdrs = whole_table  # type: ignore[method-assign]
            status, sessions = await a.call("GET", "/sessions")
            assert status == 200 and [s["transaction_id"] for s in sessions["sessions"]] == [tx]
            assert (await a.call("GET", "/sessions", APP2))[1] == {"sessions": []}
            assert (await a.call("GET", f"/sessions/CS1/{tx}/bill"))[1] == bill

    asyncio.run(main())


def test_cancel_and_the_errors_name_their_field(tmp_path: Path) -> None:
    async def main() -> None:
        async with app("2.0.1", tmp_path) as a:
            assert (await a.call("GET", "/stations?lat=1&lon=2", token=None))[0] == 401
            assert (await a.call("GET", "/stations?lat=1&lon=2", token="x" * 40))[0] == 401
            status, body = await a.call("GET", "/stations?lat=91&lon=2")
            assert status == 422 and body["problems"][0]["path"] == "lat"
            status, body = await a.call("POST", "/reservations",
                                        json={"station_id": "CS1", "evse": 1})
            assert status == 422 and body["problems"][0]["path"] == "evse"
            assert (await a.call("POST", "/reservations",
                                 json={"station_id": "CS9"}))[0] == 404
            assert (await a.call("POST", "/reservations",
                                 json={"station_id": "CS1", "evse_id": 7}))[0] == 404
            assert (await a.call("POST", "/reservations", data="{"))[0] == 400
            # Minutes above max_reservation_minutes (60): a 422 that names the field.
            status, body = await a.call("POST", "/reservations",
                                        json={"station_id": "CS1", "minutes": 61})
            assert (status, body["error"], body["problems"]) == (
                422, "invalid_request", [{"path": "minutes", "message": "at most 60"}]), body
            status, r = await a.call("POST", "/reservations", json={"station_id": "CS1"})
            assert status == 201
            await a.rig.settle(1)
            assert a.rig.evse_status(r["evse_id"] or 1) == "Reserved"
            status, cancelled = await a.call("DELETE", f"/reservations/{r['reservation_id']}")
            assert status == 200 and cancelled["status"] == "Cancelled"
            await a.rig.settle(2)
            assert a.rig.evse_status(1) == "Available"
            listed = (await a.call("GET", "/reservations"))[1]["reservations"]
            assert [x["status"] for x in listed] == ["Cancelled"]
            # The station refuses: a faulted EVSE.
            a.rig.station.fail(1, "Connector", "ConnectorLockFailure", "Other", 3.0)
            await a.rig.settle(3)
            status, body = await a.call("POST", "/reservations",
                                        json={"station_id": "CS1", "evse_id": 1})
            assert status == 409 and body["station_status"] == "Faulted"
            # Offline: 409 station_offline.
            await a.rig.link.close()
            await asyncio.sleep(0.2)
            status, body = await a.call("POST", "/reservations",
                                        json={"station_id": "CS1", "evse_id": 2})
            assert status == 409 and body["error"] == "station_offline"

    asyncio.run(main())


def test_the_service_works_without_http(tmp_path: Path) -> None:
    """What the twin and OCPI commands call: the same rules, no HTTP."""
    async def main() -> None:
        async with rig("2.1", tmp_path) as r:
            service = DriverService(r.core, r.server.connections.get, SITES)
            res = await service.reserve("TOK2", "CS1", None, 5)
            assert res.status == "Accepted"
            with pytest.raises(DriverError) as refused:
                await service.reserve("TOK1", "CS1", res.evse_id or 1)
            assert refused.value.kind == "refused" and refused.value.status == "Occupied"
            await r.settle(400)  # past the 5 minutes: the station lets it go
            assert res.status == "Expired"
            assert r.core.reservations.counts() == {"Expired": 1, "Occupied": 1}

    asyncio.run(main())


def test_driver_accounts_in_the_config(tmp_path: Path) -> None:
    lines = driver_token_lines("TOK1", app_token=APP1)
    assert lines[0].endswith(APP1) and lines[1] == "[[driver_api.drivers]]"
    path = tmp_path / "csms.toml"
    path.write_text("[driver_api]\nport = 0\n" + "\n".join(lines[1:]) + "\n")
    config = load_config(path)
    assert isinstance(config, ServeConfig)
    assert [d.id_token for d in config.driver_api.drivers] == ["TOK1"]
    path.write_text('[driver_api]\nport = 0\n[[driver_api.drivers]]\nid_token = "T"\n'
                    'token_hash = "nope"\n')
    with pytest.raises(ConfigError, match=r"driver_api\.drivers\.0\.token_hash"):
        load_config(path)
    path.write_text("[driver_api]\nreservation_minutes = 90\n")
    with pytest.raises(ConfigError, match=r"driver_api\.reservation_minutes"):
        load_config(path)


def test_serve_builds_the_driver_api_from_the_config(tmp_path: Path) -> None:
    """What ``csms serve`` runs for ``[driver_api]``: located sites, accounts, minutes."""
    from evtwin.csms.driverapi import driver_api_for

    lines = driver_token_lines("TOK1", app_token=APP1)
    path = tmp_path / "csms.toml"
    path.write_text('[[sites]]\nname = "site"\nlatitude = 52.52\nlongitude = 13.405\n'
                    'address = "Unter den Linden 1"\n[[sites]]\nname = "nowhere"\n'
                    "[driver_api]\nport = 0\nreservation_minutes = 5\n"
                    + "\n".join(lines[1:]) + "\n")
    config = load_config(path)
    assert driver_api_for(None, ServeConfig()) is None  # no port: no driver API

    async def main() -> None:
        async with rig("2.0.1", tmp_path) as r:
            api = driver_api_for(r.server, config)
            assert api is not None and api.service.reservation_minutes == 5
            async with api, aiohttp.ClientSession() as http:
                a = App(r, api, http)
                status, found = await a.call("GET", "/stations?lat=52.5&lon=13.4")
                assert status == 200
                assert [(s["station_id"], s["address"]) for s in found["stations"]] == [
                    ("CS1", "Unter den Linden 1")]
                assert (await a.call("GET", "/sessions", APP2))[0] == 401  # no account
                status, res = await a.call("POST", "/reservations", json={"station_id": "CS1"})
                assert status == 201
                assert res["expiry"] == r.at(300).isoformat()

    asyncio.run(main())


def test_csms_serve_runs_the_driver_api_and_logs_its_url(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from evtwin.csms.security import hash_password
    from evtwin.csms.service import serve

    config = ServeConfig.model_validate({
        "stations": [{"id": "CS1", "site": "site"}],
        "sites": [{"name": "site", "latitude": 52.52, "longitude": 13.405}],
        "driver_api": {"port": 0, "drivers": [{"id_token": "TOK1",
                                               "token_hash": hash_password(APP1)}]}})

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(config, tmp_path / "csms.sqlite", port=0, stop=stop))
        listening: list[Any] = []
        for _ in range(1000):
            listening = [r for r in caplog.records if getattr(r, "event", "") == "listening"]
            if listening or task.done():
                break
            await asyncio.sleep(0.01)
        url = listening[0].driver_api_url
        assert url.startswith("http://127.0.0.1:") and url.endswith("/driver/v1")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/stations?lat=52.5&lon=13.4",
                                headers={"Authorization": f"Bearer {APP1}"}) as resp:
                assert resp.status == 200
                [st] = (await resp.json())["stations"]
            # Not connected: the driver sees it, but nothing there is known to be free.
            assert st["station_id"] == "CS1" and not st["connected"]
            assert [e["status"] for e in st["evses"]] == ["Unknown"]
            async with http.post(f"{url}/reservations", json={"station_id": "CS1"},
                                 headers={"Authorization": f"Bearer {APP1}"}) as resp:
                assert resp.status == 409
                assert (await resp.json())["error"] == "station_offline"
        stop.set()
        await asyncio.wait_for(task, 10)

    with caplog.at_level(logging.INFO, logger="evtwin.csms.service"):
        asyncio.run(main())
