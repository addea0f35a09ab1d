"""The OCPI 2.2.1 endpoints of the CPO (``evtwin csms serve`` with ``[ocpi]``) and the eMSP,
over real HTTP on loopback, against the spec's rules: the credentials handshake and its
tokens, the objects they send (validated by the 2.2.1 object models: required fields,
enums, lengths, DateTime form), pagination, and the status codes a bad request gets
(HTTP 400/401/404/405; OCPI 2001, 2003, 2004). Commands reach a station over OCPP and
their result comes back to the eMSP; an EVSE status change is pushed to it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from evtwin.csms.config import ServeConfig
from evtwin.csms.ocpi.emsp import EMSP, EMSPConfig
from evtwin.csms.ocpi.models import (
    CommandType,
    Credentials,
    Location,
    Tariff,
    VersionDetails,
)
from evtwin.csms.ocpi.registry import Party, Registry
from evtwin.csms.ocpi.transport import authorization_header, credentials_token
from evtwin.csms.service import serve
from tests.test_ocpi_roaming import CPO, SITE

TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    cpo_url: str
    ocpp_url: str
    emsp: EMSP
    party: Party
    """The CPO as the eMSP registered it."""
    cpo_registry: Path
    http: aiohttp.ClientSession
    used_token_a: str = ""

    @property
    def token(self) -> str:
        """The token the eMSP presents to the CPO (CREDENTIALS_TOKEN_C)."""
        assert self.party.their_token is not None
        return self.party.their_token

    def endpoint(self, module: str, role: str = "SENDER") -> str:
        url = self.party.endpoint(module, role)
        assert url is not None
        return url

    async def call(self, method: str, url: str, *, token: str | None = None,
                   body: Any = None, raw: str | None = None,
                   header: str | None = None) -> tuple[int, dict[str, Any], Any]:
        headers = {"X-Request-ID": "req-1", "X-Correlation-ID": "corr-1"}
        if header is not None:
            headers["Authorization"] = header
        elif token is not None or self.party.their_token is not None:
            headers["Authorization"] = authorization_header(token or self.token)
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.http.request(method, url, data=data, headers=headers) as r:
            return r.status, dict(r.headers), json.loads(await r.text())


@asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ocpi_port, ocpp_port = free_port(), free_port()
    text = CPO.format(price=0.40, fee=0.5, station="S1", site="markt", party="CPA",
                      site_block=SITE.format(site="markt", lat=52.0907)
                      + SITE.format(site="plein", lat=52.1), ocpi_port=ocpi_port)
    text += '\n[[stations]]\nid = "S2"\nsite = "plein"\nevse_max_kw = [11, 11]\nphases = 1\n'
    data = tomllib.loads(text)
    data["ocpi"]["registry"] = str(tmp_path / "ocpi.sqlite")
    config = ServeConfig.model_validate(data)
    registry = Registry(tmp_path / "ocpi.sqlite")
    token_a = registry.add_token_a()
    registry.close()
    stop = asyncio.Event()
    listening = asyncio.Event()
    task = asyncio.create_task(serve(config, tmp_path / "csms.sqlite", port=ocpp_port,
                                     stop=stop, on_listening=listening.set))
    await asyncio.wait_for(listening.wait(), TIMEOUT_S)
    cpo_url = f"http://127.0.0.1:{ocpi_port}"
    emsp = EMSP(EMSPConfig.model_validate({
        "emsp": {"country_code": "NL", "party_id": "MSP", "name": "Roam Easy", "port": 0},
        "drivers": [{"id": "d1", "tokens": [{"uid": "TOKEN1", "contract_id": "NL-MSP-1"}]}],
    }), Registry(":memory:"))
    await emsp.start()
    try:
        async with aiohttp.ClientSession() as http:
            w = World(cpo_url, f"ws://127.0.0.1:{ocpp_port}", emsp, None,  # type: ignore[arg-type]
                      tmp_path / "ocpi.sqlite", http)
            # Before registering: token A opens the versions, and nothing else.
            status, _, body = await w.call("GET", f"{cpo_url}/ocpi/versions", token=token_a)
            assert status == 200 and body["status_code"] == 1000
            details_url = body["data"][0]["url"]
            status, _, body = await w.call("GET", details_url, token=token_a)
            details = VersionDetails.model_validate(body["data"])
            locations = next(e.url for e in details.endpoints if e.identifier == "locations")
            status, _, body = await w.call("GET", locations, token=token_a)
            assert status == 401 and body["status_code"] == 2000
            w.party = await emsp.register_with(f"{cpo_url}/ocpi/versions", token_a)
            w.used_token_a = token_a
            yield w
    finally:
        await emsp.stop()
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)


def test_credentials_tokens_are_base64_in_the_header() -> None:
    header = authorization_header("example-token")
    assert header == "Token " + base64.b64encode(b"example-token").decode()
    assert credentials_token(header) == "example-token"
    assert credentials_token("Token raw-2.1.1-style") == "raw-2.1.1-style"
    assert credentials_token("Bearer abc") is None and credentials_token(None) is None


async def _test_registration_and_what_the_credentials_tokens_open(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        assert w.party.status == "registered" and w.party.has_role("CPO")
        assert w.party.identity("CPO") == ("NL", "CPA")
        creds = f"{w.cpo_url}/ocpi/2.2.1/credentials"
        # The registered party's token (C) works everywhere; a POST again is 405.
        status, headers, body = await w.call("GET", creds)
        assert status == 200 and Credentials.model_validate(body["data"]).roles[0].role == "CPO"
        assert headers["X-Request-ID"] == "req-1" and headers["X-Correlation-ID"] == "corr-1"
        assert body["data"]["token"] != w.token  # never echoed
        status, _, body = await w.call("POST", creds, body=w.emsp.dump(
            w.emsp.our_credentials("another-token")))
        assert status == 405
        # No token, an unknown token, a used token A: 401 with an OCPI body.
        for header in (None, authorization_header("nope"), "Basic abc"):
            status, _, body = await w.call("GET", w.endpoint("locations"),
                                           header=header or "")
            assert status == 401 and body["status_code"] == 2000 and "timestamp" in body
        # The CPO called the eMSP back with token B during the handshake, and sends
        # with it since: the eMSP knows the CPO by it.
        cpo_side = Registry(w.cpo_registry)
        try:
            (emsp_party,) = cpo_side.parties()
            assert emsp_party.identity("EMSP") == ("NL", "MSP")
            assert w.emsp.registry.party_by_token(emsp_party.their_token or "") is not None
        finally:
            cpo_side.close()
        # The used token A registers nobody again.
        status, _, body = await w.call("POST", creds, token=w.used_token_a, body=w.emsp.dump(
            w.emsp.our_credentials("yet-another-token")))
        assert status == 401 and body["status_code"] == 2000
        # Unregistering (DELETE) ends it: the token is refused from then on.
        status, _, _ = await w.call("DELETE", creds)
        assert status == 200
        status, _, _ = await w.call("GET", w.endpoint("locations"))
        assert status == 401


async def _test_locations_and_tariffs_are_valid_ocpi_objects_and_paginate(
        tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        url = w.endpoint("locations")
        status, headers, body = await w.call("GET", url + "?limit=1")
        assert status == 200 and body["status_code"] == 1000
        assert headers["X-Total-Count"] == "2" and headers["X-Limit"] == "100"
        assert 'rel="next"' in headers["Link"] and "offset=1" in headers["Link"]
        first = Location.model_validate(body["data"][0])
        assert first.id == "markt" and first.coordinates.latitude == "52.090700"
        assert first.evses[0].uid == "S1*1" and first.evses[0].status == "UNKNOWN"  # offline
        assert first.evses[0].connectors[0].max_electric_power == 22000
        next_url = headers["Link"].split(">")[0].lstrip("<")
        status, headers, body = await w.call("GET", next_url)
        second = Location.model_validate(body["data"][0])
        assert second.id == "plein" and len(second.evses) == 2 and "Link" not in headers
        assert second.evses[0].connectors[0].power_type == "AC_1_PHASE"
        # One object; an unknown one is 404 with OCPI 2003.
        status, _, body = await w.call("GET", f"{url}/markt/S1*1")
        assert status == 200 and body["data"]["uid"] == "S1*1"
        status, _, body = await w.call("GET", f"{url}/nowhere")
        assert status == 404 and body["status_code"] == 2003
        # Bad pagination parameters: 2001 naming the parameter.
        for query in ("?offset=-1", "?limit=x", "?date_from=2026-01-01T00:00:00+01:00"):
            status, _, body = await w.call("GET", url + query)
            assert status == 200 and body["status_code"] == 2001, query
            assert query[1:].split("=")[0] in body["status_message"]
        status, _, body = await w.call("GET", url + "?date_from=2999-01-01T00:00:00Z")
        assert body["data"] == []
        status, _, body = await w.call("GET", w.endpoint("tariffs"))
        tariffs = [Tariff.model_validate(t) for t in body["data"]]
        assert {t.id for t in tariffs} == {"markt", "plein"}
        energy = tariffs[0].elements[0].price_components
        assert {(c.type.value, c.price) for c in energy} == {("ENERGY", 0.40), ("FLAT", 0.5)}
        # Sessions GET needs date_from (2.2.1: required).
        status, _, body = await w.call("GET", w.endpoint("sessions"))
        assert body["status_code"] == 2001 and "date_from" in body["status_message"]


async def _test_tokens_receiver_checks_objects_and_urls(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        base = w.endpoint("tokens", "RECEIVER")
        token = w.emsp.dump(w.emsp.token("TOKEN1"))
        status, _, body = await w.call("PUT", f"{base}/NL/MSP/TOKEN1", body=token)
        assert status == 201 and body["status_code"] == 1000
        status, _, body = await w.call("PUT", f"{base}/NL/MSP/TOKEN1", body=token)
        assert status == 200  # updated, not created
        cases: list[tuple[str, str, Any, int, int, str]] = [
            ("PUT", "NL/MSP/TOKEN1", {k: v for k, v in token.items() if k != "issuer"},
             200, 2001, "issuer"),
            ("PUT", "NL/MSP/TOKEN1", {**token, "whitelist": "SOMETIMES"}, 200, 2001,
             "whitelist"),
            ("PUT", "NL/MSP/TOKEN1", {**token, "contract_id": "x" * 37}, 200, 2001,
             "contract_id"),
            ("PUT", "NL/MSP/TOKEN1", {**token, "last_updated": "2026-12-03 10:00"}, 200, 2001,
             "last_updated"),
            ("PUT", "NL/MSP/OTHER", token, 200, 2001, "uid"),
            ("PUT", "DE/XYZ/TOKEN1", token, 404, 2000, "not a role you registered"),
            ("PUT", "NL/MSP/LOCAL-ONLY", {**token, "uid": "LOCAL-ONLY"}, 200, 2001,
             "one of this CPO's own"),
            ("PATCH", "NL/MSP/TOKEN1", {"valid": False}, 200, 2001, "last_updated"),
            ("PATCH", "NL/MSP/NOPE", {"valid": False, "last_updated": "2026-12-03T10:00:00Z"},
             404, 2004, "unknown token"),
        ]
        for method, path, payload, http, code, word in cases:
            status, _, body = await w.call(method, f"{base}/{path}", body=payload)
            assert (status, body["status_code"]) == (http, code), (method, path, body)
            assert word in body["status_message"], body
        status, _, body = await w.call("PUT", f"{base}/NL/MSP/TOKEN1", raw="{not json")
        assert status == 400 and body["status_code"] == 2000
        status, _, body = await w.call("PATCH", f"{base}/NL/MSP/TOKEN1", body={
            "valid": False, "last_updated": "2026-12-03T10:00:00Z"})
        assert status == 200
        status, _, body = await w.call("GET", f"{base}/NL/MSP/TOKEN1")
        assert body["data"]["valid"] is False


async def _test_emsp_endpoints_answer_with_ocpi_status_codes(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        cpo_side = Registry(w.cpo_registry)
        try:
            (emsp_party,) = cpo_side.parties()
        finally:
            cpo_side.close()
        assert emsp_party.their_token is not None
        tokens = emsp_party.endpoint("tokens", "SENDER")
        assert tokens is not None
        # Real-time authorization: a known token is ALLOWED with a reference; an
        # unknown one is 2004; a wrong type is unknown too.
        status, _, body = await w.call("POST", f"{tokens}/TOKEN1/authorize?type=RFID",
                                       token=emsp_party.their_token,
                                       body={"location_id": "markt", "evse_uids": ["S1*1"]})
        assert status == 200 and body["status_code"] == 1000
        assert body["data"]["allowed"] == "ALLOWED"
        assert body["data"]["authorization_reference"]
        for path in ("NOBODY/authorize", "TOKEN1/authorize?type=APP_USER"):
            _status, _, body = await w.call("POST", f"{tokens}/{path}",
                                           token=emsp_party.their_token)
            assert body["status_code"] == 2004, path
        _, _, body = await w.call("POST", f"{tokens}/TOKEN1/authorize",
                                  token=emsp_party.their_token, body={"evse_uids": ["S1*1"]})
        assert body["status_code"] == 2001 and "location_id" in body["status_message"]
        _, headers, body = await w.call("GET", tokens, token=emsp_party.their_token)
        assert [t["uid"] for t in body["data"]] == ["TOKEN1"] and headers["X-Total-Count"] == "1"
        # A CDR with a bad date and a missing field: 2001 naming both.
        cdrs = emsp_party.endpoint("cdrs", "RECEIVER")
        assert cdrs is not None
        _, _, body = await w.call("POST", cdrs, token=emsp_party.their_token,
                                  body={"country_code": "NL", "party_id": "CPA",
                                        "id": "c1", "start_date_time": "yesterday"})
        assert body["status_code"] == 2001
        assert "start_date_time" in body["status_message"]
        assert "end_date_time" in body["status_message"]


class ScriptedStation:
    """An OCPP 2.0.1 station on a real websocket: boots, reports, answers the CSMS's
    calls with Accepted and keeps what it was asked."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.calls: list[list[Any]] = []
        self._n = 0
        self._replies: dict[str, asyncio.Future[list[Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for text in self.ws:
            frame = json.loads(text)
            if frame[0] == 2:
                self.calls.append(frame)
                await self.ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
            elif frame[1] in self._replies:
                self._replies.pop(frame[1]).set_result(frame)

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        self._n += 1
        uid = f"m{self._n}"
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._replies[uid] = future
        await self.ws.send(json.dumps([2, uid, action, payload]))
        return await asyncio.wait_for(future, TIMEOUT_S)


async def _wait_for(check: Any, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while asyncio.get_running_loop().time() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {what}")


async def _test_commands_reach_the_station_and_their_results_the_emsp(tmp_path: Path) -> None:
    async with world(tmp_path) as w, websockets.connect(
            f"{w.ocpp_url}/ocpp/S1", subprotocols=["ocpp2.0.1"]) as ws:
        st = ScriptedStation(ws)
        await st.call("BootNotification", {"chargingStation": {"vendorName": "t",
                                                               "model": "m"},
                                           "reason": "PowerUp"})
        await st.call("StatusNotification", {
            "timestamp": "2026-12-03T08:00:00Z", "connectorStatus": "Available",
            "evseId": 1, "connectorId": 1})
        # The CPO sent its Locations once the eMSP registered (PUT), nobody pulled them.
        loc = await _wait_for(lambda: w.emsp.registry.get_object("location", "NL", "CPA",
                                                                 "markt"), "location push")
        assert Location.model_validate(loc).evses[0].uid == "S1*1"
        token = w.emsp.dump(w.emsp.token("TOKEN1"))
        # Commands with a token that is not the eMSP's own, or is the CPO's: refused.
        for bad in ({**token, "party_id": "XYZ"}, {**token, "uid": "LOCAL-ONLY"}):
            with pytest.raises(Exception, match="2001"):
                await w.emsp.send_command(w.party, CommandType.START_SESSION,
                                          {"token": bad, "location_id": "markt"})
        response, result = await w.emsp.send_command(
            w.party, CommandType.START_SESSION,
            {"token": token, "location_id": "markt", "evse_uid": "S1*1"},
            result_timeout_s=TIMEOUT_S)
        assert response.result == "ACCEPTED" and response.timeout > 0
        assert result is not None and result.result == "ACCEPTED"
        start = next(c for c in st.calls if c[2] == "RequestStartTransaction")
        assert start[3]["idToken"]["idToken"] == "TOKEN1" and start[3]["evseId"] == 1
        response, result = await w.emsp.send_command(
            w.party, CommandType.RESERVE_NOW,
            {"token": token, "location_id": "markt", "evse_uid": "S1*1",
             "reservation_id": "R-1", "expiry_date": "2030-01-01T00:00:00Z"},
            result_timeout_s=TIMEOUT_S)
        assert result is not None and result.result == "ACCEPTED"
        reserve = next(c for c in st.calls if c[2] == "ReserveNow")
        assert reserve[3]["idToken"]["idToken"] == "TOKEN1"
        # Unknown location: OCPI 2003 at once; unknown session: UNKNOWN_SESSION.
        with pytest.raises(Exception, match="2003"):
            await w.emsp.send_command(w.party, CommandType.START_SESSION,
                                      {"token": token, "location_id": "elsewhere"})
        response, result = await w.emsp.send_command(
            w.party, CommandType.STOP_SESSION, {"session_id": "no-such"})
        assert response.result == "UNKNOWN_SESSION" and result is None
        # The station starts the commanded session: pushed to the eMSP (COMMAND).
        id_token = {"idToken": "TOKEN1", "type": "Central"}
        meter = [{"timestamp": "2026-12-03T08:01:00Z", "sampledValue": [
            {"value": 1000.0, "measurand": "Energy.Active.Import.Register"}]}]
        await st.call("TransactionEvent", {
            "eventType": "Started", "timestamp": "2026-12-03T08:01:00Z",
            "triggerReason": "RemoteStart", "seqNo": 0,
            "transactionInfo": {"transactionId": "T-9"}, "idToken": id_token,
            "evse": {"id": 1, "connectorId": 1}, "meterValue": meter})
        session = await _wait_for(lambda: w.emsp.registry.get_object(
            "session", "NL", "CPA", "S1-T-9"), "session push")
        assert session["auth_method"] == "COMMAND" and session["status"] == "ACTIVE"
        # Another eMSP may not stop it (it is not its session); its owner may.
        cpo_side = Registry(w.cpo_registry)
        try:
            other = EMSP(EMSPConfig.model_validate({
                "emsp": {"country_code": "NL", "party_id": "OTH", "name": "Other", "port": 0},
                "drivers": [{"id": "o1", "tokens": [{"uid": "OTHER1", "contract_id": "O-1"}]}],
            }), Registry(":memory:"))
            await other.start()
            try:
                other_party = await other.register_with(f"{w.cpo_url}/ocpi/versions",
                                                        cpo_side.add_token_a())
                response, _ = await other.send_command(other_party, CommandType.STOP_SESSION,
                                                       {"session_id": "S1-T-9"})
                assert response.result == "UNKNOWN_SESSION"
            finally:
                await other.stop()
        finally:
            cpo_side.close()
        response, result = await w.emsp.send_command(
            w.party, CommandType.STOP_SESSION, {"session_id": "S1-T-9"},
            result_timeout_s=TIMEOUT_S)
        assert response.result == "ACCEPTED" and result is not None
        assert any(c[2] == "RequestStopTransaction" for c in st.calls)
        meter = [{"timestamp": "2026-12-03T09:01:00Z", "sampledValue": [
            {"value": 11000.0, "measurand": "Energy.Active.Import.Register"}]}]
        await st.call("TransactionEvent", {
            "eventType": "Ended", "timestamp": "2026-12-03T09:01:00Z",
            "triggerReason": "RemoteStop", "seqNo": 1,
            "transactionInfo": {"transactionId": "T-9", "stoppedReason": "Remote"},
            "meterValue": meter})
        bills = await _wait_for(lambda: w.emsp.bills(), "bill")
        assert bills[0]["cpo_cost"] == pytest.approx(0.5 + 0.40 * 10.0)
        # A CDR whose push was lost is pulled (GET cdrs) and billed once.
        w.emsp.registry.execute("DELETE FROM bills")
        w.emsp.registry.delete_object("cdr", "NL", "CPA", "S1-T-9")
        assert await w.emsp.pull_cdrs(w.party) == 1
        assert await w.emsp.pull_cdrs(w.party) == 0
        assert [b["cpo_cost"] for b in w.emsp.bills()] == [bills[0]["cpo_cost"]]
        # A crafted idTag that would walk the authorize URL to TOKEN1 is no token.
        r = await st.call("Authorize", {"idToken": {"idToken": "a/../TOKEN1",
                                                    "type": "Central"}})
        assert r[2]["idTokenInfo"]["status"] == "Invalid"
        # A fault at the station: the EVSE's OCPI status at the eMSP follows (PATCH).
        await st.call("StatusNotification", {
            "timestamp": "2026-12-03T09:05:00Z", "connectorStatus": "Faulted",
            "evseId": 1, "connectorId": 1})
        await _wait_for(lambda: (w.emsp.registry.get_object("location", "NL", "CPA", "markt")
                                 or {"evses": [{}]})["evses"][0].get("status")
                        == "OUTOFORDER", "status PATCH")
        st._reader.cancel()


def test_a_site_without_a_place_is_a_config_error_with_ocpi() -> None:
    data = tomllib.loads(CPO.format(price=0.3, fee=0, station="S1", site="markt", party="CPA",
                                    site_block=SITE.format(site="markt", lat=52.0),
                                    ocpi_port=0))
    del data["sites"][0]["latitude"]
    from evtwin.csms.config import _cross_problems

    assert ("sites.0.latitude", "required with [ocpi] (the site is an OCPI Location)") in \
        _cross_problems(data)


def test_registration_and_what_the_credentials_tokens_open(tmp_path: Path) -> None:
    asyncio.run(_test_registration_and_what_the_credentials_tokens_open(tmp_path))


def test_tokens_receiver_checks_objects_and_urls(tmp_path: Path) -> None:
    asyncio.run(_test_tokens_receiver_checks_objects_and_urls(tmp_path))


def test_emsp_endpoints_answer_with_ocpi_status_codes(tmp_path: Path) -> None:
    asyncio.run(_test_emsp_endpoints_answer_with_ocpi_status_codes(tmp_path))


def test_commands_reach_the_station_and_their_results_the_emsp(tmp_path: Path) -> None:
    asyncio.run(_test_commands_reach_the_station_and_their_results_the_emsp(tmp_path))


def test_locations_and_tariffs_are_valid_ocpi_objects_and_paginate(tmp_path: Path) -> None:
    asyncio.run(_test_locations_and_tariffs_are_valid_ocpi_objects_and_paginate(tmp_path))


async def _cpo_registers_with_an_emsp_named_in_its_config(tmp_path: Path) -> None:
    emsp_registry = Registry(":memory:")
    emsp = EMSP(EMSPConfig.model_validate({
        "emsp": {"country_code": "NL", "party_id": "MSP", "name": "Roam Easy", "port": 0},
        "drivers": [{"id": "d1", "tokens": [{"uid": "TOKEN1", "contract_id": "NL-MSP-1"}]}],
    }), emsp_registry)
    await emsp.start()
    token_a = emsp_registry.add_token_a()
    data = tomllib.loads(CPO.format(price=0.3, fee=0, station="S1", site="markt", party="CPA",
                                    site_block=SITE.format(site="markt", lat=52.0),
                                    ocpi_port=0))
    data["ocpi"]["registry"] = str(tmp_path / "ocpi.sqlite")
    data["ocpi"]["partners"] = [{"versions_url": emsp.versions_url, "token_a": token_a}]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(ServeConfig.model_validate(data), tmp_path / "csms.sqlite",
                                     port=0, stop=stop))
    try:
        deadline = asyncio.get_running_loop().time() + TIMEOUT_S
        while not emsp_registry.parties() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        (cpo,) = emsp_registry.parties()
        assert cpo.identity("CPO") == ("NL", "CPA") and cpo.endpoint("commands", "RECEIVER")
        assert not emsp_registry.is_token_a(token_a)  # used up
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)
        await emsp.stop()


def test_cpo_registers_with_an_emsp_named_in_its_config(tmp_path: Path) -> None:
    asyncio.run(_cpo_registers_with_an_emsp_named_in_its_config(tmp_path))


def test_retention_erases_tokens_of_old_sessions_and_cdrs_only() -> None:
    from datetime import UTC, datetime

    registry = Registry(":memory:")
    token = {"country_code": "NL", "party_id": "MSP", "uid": "TOKEN1", "type": "RFID",
             "contract_id": "NL-MSP-1"}
    for sid, updated in (("old", "2025-01-01T00:00:00Z"), ("new", "2026-12-01T00:00:00Z")):
        registry.put_object("cdr", "NL", "CPA", sid, {"id": sid, "cdr_token": dict(token),
                                                      "total_cost": {"excl_vat": 4.2},
                                                      "last_updated": updated})
    assert registry.prune_before(datetime(2026, 1, 1, tzinfo=UTC)) == 1
    old = registry.get_object("cdr", "NL", "CPA", "old")
    new = registry.get_object("cdr", "NL", "CPA", "new")
    assert old is not None and new is not None
    assert old["cdr_token"]["uid"] == "(erased)" and old["total_cost"]["excl_vat"] == 4.2
    assert new["cdr_token"]["uid"] == "TOKEN1"
    assert registry.prune_before(datetime(2026, 1, 1, tzinfo=UTC)) == 0  # once
    assert registry.identifiers_of("token1") == ["token1", "NL-MSP-1"]
    assert registry.erase_identifiers(["TOKEN1", "NL-MSP-1"]) == 1
    assert "TOKEN1" not in json.dumps(registry.objects("cdr"))


def test_ocpi_command_line_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "evtwin.sim.cli", *args],
                              capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)

    cfg = tmp_path / "cpo.toml"
    cfg.write_text(CPO.format(price=0.3, fee=0, station="S1", site="markt", party="CPA",
                              site_block=SITE.format(site="markt", lat=52.0), ocpi_port=0))
    emsp = tmp_path / "emsp.toml"
    emsp.write_text('[emsp]\ncountry_code = "NL"\nparty_id = "MSP"\nname = "x"\n'
                    'registry = "not-a-registry.txt"\n')
    (tmp_path / "not-a-registry.txt").write_text("hello")
    long_site = cfg.read_text().replace('name = "markt"', f'name = "{"m" * 40}"').replace(
        'site = "markt"', f'site = "{"m" * 40}"')
    (tmp_path / "long.toml").write_text(long_site)
    tou = cfg.read_text().replace('currency = "EUR"', 'currency = "EUR"\nkind = "tou"\n'
                                  'bands = [{start_h = 0, price_per_kwh = 0.2}]')
    (tmp_path / "tou.toml").write_text(tou)
    for args, words in (
            (("csms", "ocpi-token", "--config", str(cfg)), "ocpi.public_url"),
            (("emsp", "report", str(emsp)), "emsp.registry"),
            (("emsp", "serve", str(tmp_path / "nope.toml")), "no such file"),
            (("csms", "ocpi-token", "--config", str(tmp_path / "long.toml")), "sites.0.name"),
            (("csms", "ocpi-token", "--config", str(tmp_path / "tou.toml")),
             "sites.0.time_zone")):
        proc = run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr
