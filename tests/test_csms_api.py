"""The operator API over real sockets: a CSMSServer and its OperatorAPI in-process on
port 0, station doubles from test_csms_operations, aiohttp as the client.

Every answer the tests receive is validated against the schema the API's own
``openapi.json`` documents for that path, method and status.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from ocpp.exceptions import NotSupportedError
from test_csms_operations import (
    NOW,
    T0,
    TIMEOUT_S,
    connected_station,
    make_core,
)
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from evtwin.csms import CSMSServer
from evtwin.csms.api import (
    API_PREFIX,
    ROUTES,
    OperatorAPI,
    generate_token,
    hash_token,
    openapi_document,
)
from evtwin.csms.config import ServeConfig
from evtwin.csms.exceptions import ConfigError
from evtwin.csms.security import hash_password
from evtwin.csms.service import serve

TOKEN = generate_token()
TOKEN_HASH = hash_token(TOKEN)  # scrypt once for the module
DOC = openapi_document()


def _documented_schema(method: str, path: str, status: int) -> dict[str, Any]:
    """The response schema openapi.json gives for a concrete request path."""
    for template, ops in DOC["paths"].items():
        pattern = "^" + "/".join("[^/]+" if p.startswith("{") else p
                                 for p in template.split("/")) + "$"
        if re.match(pattern, path.split("?")[0]) and method.lower() in ops:
            responses = ops[method.lower()]["responses"]
            assert str(status) in responses, f"{method} {path}: {status} is not documented"
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            return {**schema, "components": DOC["components"]}
    raise AssertionError(f"{method} {path} is not documented")


class Client:
    """Requests to the API; checks every answer against the documented schema."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def __call__(self, method: str, path: str, *, token: str | None = TOKEN,
                       body: Any = None, raw: str | None = None,
                       headers: dict[str, str] | None = None, check: bool = True,
                       ) -> tuple[int, Any, Any]:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        kw: dict[str, Any] = {"headers": hdrs}
        if body is not None:
            kw["json"] = body
        if raw is not None:
            kw["data"] = raw
        async with self.session.request(method, self.base + path, **kw) as resp:
            data = await resp.json()
            if check:
                schema = _documented_schema(method, API_PREFIX + path, resp.status)
                jsonschema.Draft202012Validator(schema).validate(data)
            return resp.status, data, resp.headers


@asynccontextmanager
async def api_running(**server_kw: Any) -> AsyncIterator[tuple[CSMSServer, OperatorAPI, Client]]:
    """A CSMS (stations CS16, CS201, CS21; none connected) and its API, both on port 0."""
    async with (CSMSServer(make_core(), host="127.0.0.1", port=0, **server_kw) as server,
                OperatorAPI(server, token_hash=TOKEN_HASH) as api,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3 * TIMEOUT_S))
                as session):
        assert api.port != 0 and api.host == "127.0.0.1"
        yield server, api, Client(session, api.url)


def run(scenario: Callable[[CSMSServer, Client], Awaitable[None]], **server_kw: Any) -> None:
    async def main() -> None:
        async with api_running(**server_kw) as (server, _api, client):
            await asyncio.wait_for(scenario(server, client), 6 * TIMEOUT_S)

    asyncio.run(main())


def tx_event(event: str, seq: int, tx: str, wh: float, *, at_s: int = 0, evse: int = 1,
             power_w: float | None = None) -> dict[str, Any]:
    sampled: list[dict[str, Any]] = [{"value": wh, "measurand": "Energy.Active.Import.Register",
                                      "unitOfMeasure": {"unit": "Wh"}}]
    if power_w is not None:
        sampled.append({"value": power_w, "measurand": "Power.Active.Import",
                        "unitOfMeasure": {"unit": "W"}})
    ts = NOW if at_s == 0 else (T0 + timedelta(seconds=at_s)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    payload: dict[str, Any] = {
        "eventType": event, "timestamp": ts, "seqNo": seq,
        "triggerReason": {"Started": "Authorized", "Updated": "MeterValuePeriodic",
                          "Ended": "EVDeparted"}[event],
        "transactionInfo": {"transactionId": tx}, "evse": {"id": evse, "connectorId": 1},
        "meterValue": [{"timestamp": ts, "sampledValue": sampled}]}
    if event == "Started":
        payload["idToken"] = {"idToken": "TOKEN1", "type": "ISO14443"}
    if event == "Ended":
        payload["transactionInfo"]["stoppedReason"] = "EVDisconnected"
    return payload


# --------------------------------------------------------------------------- auth
def test_every_endpoint_but_openapi_needs_the_bearer_token() -> None:
    async def scenario(server: CSMSServer, client: Client) -> None:
        for route in ROUTES:
            path = route.path.format(station_id="CS201", transaction_id="tx")
            for token, headers in ((None, None), ("wrong-" + TOKEN[6:], None),
                                   (None, {"Authorization": f"Basic {TOKEN}"})):
                status, body, hdrs = await client(route.method, path, token=token,
                                                  headers=headers, body={})
                if route.public:
                    assert status == 200
                    continue
                assert status == 401, (route.path, token, headers)
                assert body["error"] == "unauthorized"
                assert hdrs["WWW-Authenticate"].startswith("Bearer")
        assert (await client("GET", "/stations"))[0] == 200
        # A second request with the right token is served from the digest cache.
        assert (await client("GET", "/cdrs"))[0] == 200
        # Unknown paths ask for the token first, then say 404.
        assert (await client("GET", "/nothing", token=None, check=False))[0] == 401
        status, body, _ = await client("GET", "/nothing", check=False)
        assert status == 404 and body["error"] == "not_found"

    run(scenario)


def test_a_token_hash_that_cannot_be_read_is_a_config_error() -> None:
    async def main() -> None:
        async with CSMSServer(make_core(), port=0) as server:
            with pytest.raises(ConfigError, match="api_token_hash"):
                OperatorAPI(server, token_hash="sha1$abc")

    asyncio.run(main())
    with pytest.raises(ConfigError, match="api_token"):
        hash_token("short")


# --------------------------------------------------------------------------- reading
def test_stations_show_connection_protocol_and_evse_status() -> None:
    async def scenario(server: CSMSServer, client: Client) -> None:
        async with connected_station(server, "2.0.1") as (_shell, station, _t):
            await station.call_raw("BootNotification", {
                "reason": "PowerUp", "chargingStation": {"model": "M1", "vendorName": "V1"}})
            await station.call_raw("StatusNotification", {
                "timestamp": NOW, "connectorStatus": "Occupied", "evseId": 2, "connectorId": 1})
            status, body, _ = await client("GET", "/stations")
            assert status == 200
            by_id = {s["id"]: s for s in body["stations"]}
            assert sorted(by_id) == ["CS16", "CS201", "CS21"]
            cs = by_id["CS201"]
            assert (cs["connected"], cs["protocol"], cs["vendor"], cs["model"]) == (
                True, "ocpp2.0.1", "V1", "M1")
            assert cs["site"] == "site"
            assert [(e["id"], e["status"], e["max_power_kw"]) for e in cs["evses"]] == [
                (1, None, 22.0), (2, "Occupied", 22.0)]
            assert [e["effective_limit_w"] for e in cs["evses"]] == [22_000, 22_000]
            assert by_id["CS21"]["connected"] is False and by_id["CS21"]["protocol"] is None

            await station.call_raw("TransactionEvent", tx_event("Started", 0, "tx-1", 1000))
            await station.call_raw("NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {
                "requestedEnergyTransfer": "AC_three_phase",
                "departureTime": "2026-06-01T20:00:00.000Z",
                "acChargingParameters": {"energyAmount": 20000, "evMinCurrent": 6,
                                         "evMaxCurrent": 32, "evMaxVoltage": 400}}})
            status, detail, _ = await client("GET", "/stations/CS201")
            assert status == 200
            assert [s["transaction_id"] for s in detail["open_sessions"]] == ["tx-1"]
            needs, = detail["ev_charging_needs"]
            assert needs["energy_amount_wh"] == 20000
            assert needs["departure_time"].startswith("2026-06-01T20:00:00")
            assert detail["open_sessions"][0]["ev_needs"]["ev_max_current_a"] == 32

            status, body, _ = await client("GET", "/stations/NOPE")
            assert status == 404 and body["error"] == "not_found"
        # After the station left.
        for _ in range(100):
            if "CS201" not in server.connections:
                break
            await asyncio.sleep(0.01)
        status, body, _ = await client("GET", "/stations/CS201")
        assert body["connected"] is False and body["ev_charging_needs"] == []

    run(scenario)


def test_sessions_meter_values_and_cdrs() -> None:
    async def scenario(server: CSMSServer, client: Client) -> None:
        async with connected_station(server, "2.0.1") as (_shell, station, _t):
            for event in (tx_event("Started", 0, "tx-1", 1000),
                          tx_event("Updated", 1, "tx-1", 3000, at_s=900, power_w=7000),
                          tx_event("Ended", 2, "tx-1", 5000, at_s=1800),
                          tx_event("Started", 0, "tx-2", 200, at_s=60, evse=2),
                          tx_event("Updated", 1, "tx-2", 1200, at_s=960, evse=2,
                                   power_w=11000)):
                reply = await station.call_raw("TransactionEvent", event)
                assert reply[0] == 3, reply

        status, body, _ = await client("GET", "/sessions?open=true")
        assert status == 200
        (open_tx,) = body["sessions"]
        assert (open_tx["transaction_id"], open_tx["open"], open_tx["energy_wh"],
                open_tx["power_w"], open_tx["evse_id"]) == ("tx-2", True, 1000, 11000, 2)

        _, body, _ = await client("GET", "/sessions?open=false")
        (ended,) = body["sessions"]
        assert (ended["transaction_id"], ended["energy_wh"], ended["stopped_reason"]) == (
            "tx-1", 4000, "EVDisconnected")
        assert ended["power_w"] is None and ended["ended_at"] is not None

        _, body, _ = await client("GET", "/sessions")
        assert [s["transaction_id"] for s in body["sessions"]] == ["tx-1", "tx-2"]
        _, body, _ = await client("GET", "/sessions?station=CS16")
        assert body["sessions"] == []

        status, body, _ = await client("GET", "/sessions?open=maybe")
        assert status == 422 and body["problems"][0]["path"] == "open"
        status, body, _ = await client("GET", "/sessions?colour=red")
        assert status == 422 and body["problems"][0]["path"] == "colour"

        status, body, _ = await client("GET", "/sessions/CS201/tx-1/meter-values")
        assert status == 200
        energy = [m["value"] for m in body["meter_values"]
                  if m["measurand"] == "Energy.Active.Import.Register"]
        assert energy == [1000, 3000, 5000]
        assert {m["evse_id"] for m in body["meter_values"]} == {1}
        status, body, _ = await client("GET", "/sessions/CS201/tx-9/meter-values")
        assert status == 404 and body["error"] == "not_found"

        status, body, _ = await client("GET", "/cdrs")
        assert status == 200
        (cdr,) = body["cdrs"]
        assert (cdr["transaction_id"], cdr["energy_wh"], cdr["duration_s"]) == (
            "tx-1", 4000, 1800)
        assert cdr["cost"] == pytest.approx(0.30 * 4.0)

    run(scenario)


# --------------------------------------------------------------------------- operations
def test_request_start_on_201_and_16_goes_out_in_each_wire_form() -> None:
    async def scenario(server: CSMSServer, client: Client) -> None:
        async with (connected_station(server, "2.0.1") as (_s1, station201, wire201),
                    connected_station(server, "1.6") as (_s2, _station16, wire16)):
            station201.answers["RequestStartTransaction"] = {"status": "Accepted",
                                                             "transaction_id": "T-5"}
            status, body, _ = await client("POST", "/stations/CS201/request-start", body={
                "evse_id": 1, "id_token": "TOKEN1", "charging_profile": {
                    "purpose": "TxProfile", "unit": "A", "periods": [{"start_s": 0, "limit": 16}]}})
            assert status == 200
            assert body == {"status": "Accepted", "transaction_id": "T-5",
                            "remote_start_id": 1, "profile_id": 1}
            (action, payload), = wire201.payloads()
            assert action == "RequestStartTransaction"
            assert payload["idToken"] == {"idToken": "TOKEN1", "type": "Central"}
            assert payload["chargingProfile"]["chargingProfilePurpose"] == "TxProfile"

            status, body, _ = await client("POST", "/stations/CS16/request-start",
                                           body={"evse_id": 2, "id_token": "TOKEN1"})
            assert status == 200 and body == {"status": "Accepted"}
            assert wire16.payloads() == [("RemoteStartTransaction",
                                          {"connectorId": 2, "idTag": "TOKEN1"})]
            # What 1.6 cannot carry is a 422 naming the field.
            status, body, _ = await client("POST", "/stations/CS16/request-start",
                                           body={"id_token": "T" * 21})
            assert status == 422 and body["problems"] == [
                {"path": "id_token", "message": "OCPP 1.6 id tags have at most 20 characters"}]

    run(scenario)


def test_stop_profile_trigger_and_reset() -> None:
    async def scenario(server: CSMSServer, client: Client) -> None:
        async with connected_station(server, "2.0.1") as (_shell, _station, wire):
            calls = [
                ("/request-stop", {"transaction_id": "tx-1"}, "RequestStopTransaction",
                 {"transactionId": "tx-1"}),
                ("/charging-profile", {"evse_id": 0, "profile": {
                    "purpose": "ChargingStationMaxProfile",
                    "periods": [{"start_s": 0, "limit": 9000}]}},
                 "SetChargingProfile", None),
                ("/trigger-message", {"message": "StatusNotification", "evse_id": 1},
                 "TriggerMessage", {"requestedMessage": "StatusNotification", "evse": {"id": 1}}),
                ("/reset", {"hard": True}, "Reset", {"type": "Immediate"}),
                ("/reset", {}, "Reset", {"type": "OnIdle"}),
            ]
            for path, body, action, expected in calls:
                status, answer, _ = await client("POST", "/stations/CS201" + path, body=body)
                assert status == 200 and answer["status"] == "Accepted", (path, answer)
                sent_action, payload = wire.payloads()[-1]
                assert sent_action == action
                if expected is not None:
                    assert payload == expected
            _, payload = wire.payloads()[1]
            assert payload["evseId"] == 0
            _, station, _ = await client("GET", "/stations/CS201")
            assert [e["effective_limit_w"] for e in station["evses"]] == [9000, 9000]
            assert payload["chargingProfile"]["chargingProfilePurpose"] == \
                "ChargingStationMaxProfile"
            assert payload["chargingProfile"]["chargingSchedule"][0][
                "chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 9000}]

    run(scenario)


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("/request-start", {}, "id_token"),
    ("/request-start", {"id_token": "TOKEN1", "evse_id": 0}, "evse_id"),
    ("/request-start", {"id_token": "TOKEN1", "colour": "red"}, "colour"),
    ("/request-start", {"id_token": "TOKEN1", "charging_profile": {
        "purpose": "TxProfile", "periods": [{"start_s": 0}]}}, "charging_profile.periods.0.limit"),
    ("/request-stop", {"transaction_id": ""}, "transaction_id"),
    ("/charging-profile", {"evse_id": 1, "profile": {"purpose": "TxDefaultProfile", "periods": [
        {"start_s": 0, "limit": 1}, {"start_s": 0, "limit": 2}]}}, "profile.periods.1.start_s"),
    ("/charging-profile", {"evse_id": 1, "profile": {"purpose": "TxDefaultProfile", "periods": [
        {"start_s": 0, "limit": 1, "setpoint": -2000}]}}, "profile.periods.0.setpoint"),
    ("/charging-profile", {"evse_id": 1, "profile": {
        "purpose": "ChargingStationMaxProfile", "periods": [{"start_s": 0, "limit": 1}]}},
     "evse_id"),
    ("/charging-profile", {"evse_id": 9, "profile": {"purpose": "TxDefaultProfile", "periods": [
        {"start_s": 0, "limit": 1}]}}, "evse_id"),
    ("/charging-profile", {"evse_id": 1, "profile": {"purpose": "TxDefaultProfile", "periods": [
        {"start_s": 0, "limit": -1}]}}, "profile.periods.0.limit"),
    ("/trigger-message", {"message": "Coffee"}, "message"),
    ("/trigger-message", {"message": "DiagnosticsStatusNotification"}, "message"),
    ("/reset", {"hard": "very"}, "hard"),
    ("/reset", [], ""),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD_BODIES,
                         ids=[f"{p[1:]}-{f or 'root'}" for p, _, f in BAD_BODIES])
def test_bad_bodies_get_422_with_the_field_path(path: str, body: Any, field: str) -> None:
    async def scenario(server: CSMSServer, client: Client) -> None:
        async with connected_station(server, "2.0.1") as (_shell, _station, wire):
            status, answer, _ = await client("POST", "/stations/CS201" + path, body=body)
            assert status == 422, answer
            assert answer["error"] == "invalid_request"
            assert field in [p["path"] for p in answer["problems"]], answer
            assert wire.calls == []  # nothing reached the station

    run(scenario)


def test_unknown_disconnected_unparsable_and_failing() -> None:
    async def scenario(server: CSMSServer, client: Client) -> None:
        status, body, _ = await client("POST", "/stations/NOPE/reset", body={})
        assert status == 404 and body["error"] == "not_found"
        status, body, _ = await client("POST", "/stations/CS21/reset", body={})
        assert status == 409 and body["error"] == "not_connected"
        status, body, _ = await client("POST", "/stations/CS21/reset", raw="{not json")
        assert status == 400 and body["error"] == "bad_json"
        status, body, _ = await client("GET", "/stations/CS21/reset", check=False)
        assert status == 405 and body["error"] == "method_not_allowed"
        async with connected_station(server, "2.0.1") as (_shell, station, _wire):
            station.errors["Reset"] = NotSupportedError(description="not today")
            status, body, _ = await client("POST", "/stations/CS201/reset", body={"hard": True})
            assert status == 502
            assert (body["error"], body["code"], body["action"], body["message"]) == (
                "call_error", "NotSupported", "Reset", "not today")
            station.answers["SetChargingProfile"] = {"status": "Rejected", "status_info": {
                "reason_code": "InvalidSchedule"}}
            status, body, _ = await client("POST", "/stations/CS201/charging-profile", body={
                "evse_id": 1, "profile": {"purpose": "TxDefaultProfile",
                                          "periods": [{"start_s": 0, "limit": 1}]}})
            assert status == 200
            assert body == {"status": "Rejected", "reason_code": "InvalidSchedule",
                            "profile_id": 1}

    run(scenario)


def test_a_station_that_does_not_answer_gives_504() -> None:
    async def scenario(server: CSMSServer, client: Client) -> None:
        async with connected_station(server, "2.0.1") as (_shell, station, _wire):
            station.delays["Reset"] = 1.0
            status, body, _ = await client("POST", "/stations/CS201/reset", body={})
            assert status == 504 and body["error"] == "timeout"

    run(scenario, response_timeout_s=0.2)


def test_oversized_body_is_refused() -> None:
    async def scenario(server: CSMSServer, client: Client) -> None:
        status, body, _ = await client("POST", "/stations/CS201/reset", check=False,
                                       raw=json.dumps({"hard": True, "x": "a" * 100_000}))
        assert status == 413 and body["error"] == "request_entity_too_large"

    run(scenario)


# --------------------------------------------------------------------------- openapi
def test_openapi_document_describes_every_route() -> None:
    async def scenario(server: CSMSServer, client: Client) -> None:
        status, doc, _ = await client("GET", "/openapi.json", token=None)
        assert status == 200
        assert doc == json.loads(json.dumps(DOC))
        assert doc["openapi"].startswith("3.1")
        assert {"title", "version"} <= set(doc["info"])
        assert doc["components"]["securitySchemes"]["bearerAuth"] == {"type": "http",
                                                                      "scheme": "bearer"}
        for route in ROUTES:
            op = doc["paths"][API_PREFIX + route.path][route.method.lower()]
            assert op["responses"] and "200" in op["responses"], route.path
            assert op["operationId"] and op["summary"]
            assert ("401" in op["responses"]) is not route.public
            for param in op.get("parameters", []):
                assert param["in"] in {"path", "query"}
            path_params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert path_params == {seg[1:-1] for seg in route.path.split("/")
                                   if seg.startswith("{")}
            assert ("requestBody" in op) is (route.body is not None)
        # Every $ref resolves and every schema is a valid JSON Schema 2020-12.
        schemas = doc["components"]["schemas"]
        refs: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if "$ref" in node:
                    refs.append(node["$ref"])
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(doc)
        assert refs
        for ref in refs:
            assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas
        for schema in schemas.values():
            jsonschema.Draft202012Validator.check_schema(schema)
        # Field docs reach the description.
        period = schemas["PeriodSpec"]["properties"]
        assert "negative discharges" in period["setpoint"]["description"]

    run(scenario)


# --------------------------------------------------------------------------- the service
def test_serve_runs_the_api_beside_the_websocket_and_logs_its_url(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = ServeConfig.model_validate({"stations": [{"id": "CS1"}]})

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(config, tmp_path / "csms.sqlite", port=0, stop=stop,
                                         api_port=0, api_token_hash=TOKEN_HASH))
        for _ in range(int(TIMEOUT_S / 0.01)):
            listening = [r for r in caplog.records if getattr(r, "event", "") == "listening"]
            if listening:
                break
            await asyncio.sleep(0.01)
        api_url = listening[0].api_url  # type: ignore[attr-defined]
        assert api_url.startswith("http://127.0.0.1:") and api_url.endswith(API_PREFIX)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with (aiohttp.ClientSession() as session,
                    session.get(f"{api_url}/stations", headers=auth) as resp):
            assert resp.status == 200
            assert [s["id"] for s in (await resp.json())["stations"]] == ["CS1"]
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)

    with caplog.at_level(logging.INFO, logger="evtwin.csms.service"):
        asyncio.run(main())


def test_serve_refuses_an_api_without_a_readable_token_hash(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="api_token_hash"):
        asyncio.run(serve(ServeConfig(), tmp_path / "csms.sqlite", port=0, api_port=0))
    with pytest.raises(ConfigError, match="api_token_hash"):
        asyncio.run(serve(ServeConfig(), tmp_path / "csms.sqlite", port=0, api_port=0,
                          api_token_hash="md5$0123"))


def test_serve_applies_the_configured_security_profile(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    password = "p" * 20
    config = ServeConfig.model_validate({"security": {"profile": 1}, "stations": [
        {"id": "CS1", "password_hash": hash_password(password)}]})

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(config, tmp_path / "csms.sqlite", port=0, stop=stop))
        for _ in range(int(TIMEOUT_S / 0.01)):
            listening = [r for r in caplog.records if getattr(r, "event", "") == "listening"]
            if listening:
                break
            await asyncio.sleep(0.01)
        record = listening[0]
        assert record.security_profile == 1  # type: ignore[attr-defined]
        assert record.api_url is None  # type: ignore[attr-defined]
        url = f"{record.url}/CS1"  # type: ignore[attr-defined]
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, subprotocols=[Subprotocol("ocpp2.0.1")]):
                pass
        assert refused.value.response.status_code == 401
        auth = "Basic " + base64.b64encode(f"CS1:{password}".encode()).decode()
        async with connect(url, subprotocols=[Subprotocol("ocpp2.0.1")],
                           additional_headers={"Authorization": auth}) as ws:
            assert ws.subprotocol == "ocpp2.0.1"
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)

    with caplog.at_level(logging.INFO, logger="evtwin.csms.service"):
        asyncio.run(main())
