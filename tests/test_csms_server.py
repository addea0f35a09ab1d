"""Tests for the CSMS websocket server: raw OCPP-J frames and refusals at the upgrade.

Loopback only, port 0. Timeouts scale with EVTWIN_TEST_TIMEOUT_SCALE.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode
from websockets.typing import Subprotocol

from evtwin.csms import CSMSConfig, CSMSCore, CSMSServer, EvseSpec, SiteSpec, StationSpec, Store
from evtwin.csms import iso as iso_ts

TIMEOUT_S = 5.0 * float(os.environ.get("EVTWIN_TEST_TIMEOUT_SCALE", "1"))
OCPP201 = [Subprotocol("ocpp2.0.1")]
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LONG_ID = "L" * 48  # the longest identity OCPP-J allows

# OCPP-J 2.0.1 §4.3 CALLERROR codes (with the occurrence code's historic
# spelling, which 2.0.1 kept from 1.6; 2.1 corrects it).
OCPP_J_CODES = {
    "FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported",
    "NotImplemented", "NotSupported", "OccurenceConstraintViolation",
    "PropertyConstraintViolation", "ProtocolError", "RpcFrameworkError", "SecurityError",
    "TypeConstraintViolation",
}

BOOT = {"reason": "PowerUp", "chargingStation": {"model": "virtual", "vendorName": "evtwin"}}


def call(unique_id: str, action: str, payload: dict[str, Any]) -> str:
    return json.dumps([2, unique_id, action, payload])


def make_core() -> CSMSCore:
    config = CSMSConfig(
        stations=tuple(StationSpec(sid, "site", (EvseSpec(1, 11_000.0),))
                       for sid in ("CS1", "CS2", LONG_ID, "CS#1 ü")),
        sites=(SiteSpec("site", 20.0),),
        id_tokens=frozenset({"TOKEN1"}),
    )
    return CSMSCore(config, Store(":memory:"), clock=lambda: T0)


def run(scenario: Callable[[CSMSServer], Awaitable[None]], **server_kw: Any) -> CSMSServer:
    """Start a server on 127.0.0.1:0, run ``scenario`` against it, stop it."""

    async def main() -> CSMSServer:
        async with CSMSServer(make_core(), host="127.0.0.1", port=0, **server_kw) as server:
            assert server.port != 0
            await asyncio.wait_for(scenario(server), 4 * TIMEOUT_S)
        return server

    server = asyncio.run(main())
    server.core.store.close()
    return server


@asynccontextmanager
async def station(server: CSMSServer, identity: str = "CS1") -> AsyncIterator[ClientConnection]:
    async with connect(f"{server.url}/{identity}", subprotocols=OCPP201,
                       open_timeout=TIMEOUT_S) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
        yield ws


async def recv(ws: ClientConnection) -> list[Any]:
    msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
    assert isinstance(msg, list)
    return msg


async def rpc(ws: ClientConnection, frame: str) -> list[Any]:
    await ws.send(frame)
    return await recv(ws)


async def heartbeat_ok(ws: ClientConnection, unique_id: str = "hb") -> None:
    reply = await rpc(ws, call(unique_id, "Heartbeat", {}))
    assert reply == [3, unique_id, {"currentTime": iso_ts(T0)}]


def assert_call_error(reply: list[Any], unique_id: str, code: str) -> None:
    assert len(reply) == 5, reply
    assert reply[0] == 4
    assert reply[1] == unique_id
    assert reply[2] == code
    assert isinstance(reply[3], str)
    assert isinstance(reply[4], dict)


# --------------------------------------------------------------------------- malformed frames
@pytest.mark.parametrize(("frame", "unique_id", "code"), [
    ("this is not json", "-1", "RpcFrameworkError"),
    ('{"messageTypeId": 2, "id": "x"}', "-1", "RpcFrameworkError"),
    ("[]", "-1", "RpcFrameworkError"),
    ('[7, "m-7", "Heartbeat", {}]', "m-7", "MessageTypeNotSupported"),
    ('[2, "m-2", "Heartbeat"]', "m-2", "RpcFrameworkError"),
], ids=["invalid-json", "json-object", "empty-array", "type-7", "missing-payload"])
def test_malformed_frames_get_a_call_error(frame: str, unique_id: str, code: str) -> None:
    async def scenario(server: CSMSServer) -> None:
        async with station(server) as ws:
            assert_call_error(await rpc(ws, frame), unique_id, code)
            await heartbeat_ok(ws)  # the connection is still usable

    run(scenario)


def test_boot_notification_is_accepted() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with station(server) as ws:
            reply = await rpc(ws, call("boot-1", "BootNotification", BOOT))
            assert reply[:2] == [3, "boot-1"]
            assert reply[2]["status"] == "Accepted"
            assert reply[2]["currentTime"] == iso_ts(T0)
            assert reply[2]["interval"] == server.core.config.heartbeat_interval_s
            assert "CS1" in server.core.booted
            assert server.frames["in"] >= 1 and server.frames["out"] >= 1

    run(scenario)


def test_boot_missing_required_field_is_rejected_and_connection_survives() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with station(server) as ws:
            reply = await rpc(ws, call("bad-boot", "BootNotification", {"reason": "PowerUp"}))
            # A required field that does not occur: an occurrence violation
            # (the ocpp library would say ProtocolError; the shell corrects it).
            assert_call_error(reply, "bad-boot", "OccurenceConstraintViolation")
            assert reply[2] in OCPP_J_CODES
            assert "CS1" not in server.core.booted
            good = await rpc(ws, call("boot-2", "BootNotification", BOOT))
            assert good[:2] == [3, "boot-2"] and good[2]["status"] == "Accepted"

    run(scenario)


@pytest.mark.parametrize("action", ["FooBar", "Reset"])
def test_unknown_or_unhandled_action(action: str) -> None:
    async def scenario(server: CSMSServer) -> None:
        async with station(server) as ws:
            reply = await rpc(ws, call("u-1", action, {"vendorId": "x"}))
            assert_call_error(reply, "u-1", reply[2])
            assert reply[2] in {"NotImplemented", "NotSupported"}
            await heartbeat_ok(ws)

    run(scenario)


def test_unknown_action_codes_follow_ocpp_j() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with station(server) as ws:
            unknown = await rpc(ws, call("u-1", "FooBar", {}))
            unhandled = await rpc(ws, call("u-2", "Reset", {"type": "Immediate"}))
            # NotImplemented: "Requested Action is not known by receiver";
            # NotSupported: "Requested Action is recognized but not supported".
            assert unknown[2] == "NotImplemented"
            assert unhandled[2] == "NotSupported"

    run(scenario)


def test_call_with_non_string_action_gets_a_call_error() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with station(server) as ws:
            reply = await rpc(ws, '[2, "odd", {"action": "Heartbeat"}, {}]')
            assert reply[0] == 4 and reply[1] == "odd"
            await heartbeat_ok(ws)

    run(scenario)


def test_transaction_event_reaches_the_core_in_wire_form() -> None:
    payload = {
        "eventType": "Started", "timestamp": iso_ts(T0), "triggerReason": "Authorized",
        "seqNo": 0, "transactionInfo": {"transactionId": "tx-1"},
        "evse": {"id": 1, "connectorId": 1},
        "idToken": {"idToken": "TOKEN1", "type": "ISO14443"},
        "meterValue": [{"timestamp": iso_ts(T0), "sampledValue": [{
            "value": 1234.5, "measurand": "Energy.Active.Import.Register",
            "unitOfMeasure": {"unit": "Wh"}}]}],
    }

    async def scenario(server: CSMSServer) -> None:
        async with station(server) as ws:
            reply = await rpc(ws, call("tx", "TransactionEvent", payload))
            assert reply == [3, "tx", {"idTokenInfo": {"status": "Accepted"}}]
        session = server.core.sessions[("CS1", "tx-1")]
        assert session.meter_start_wh == 1234.5
        assert session.id_token == "TOKEN1"
        assert server.core.store.count("transaction_events") == 1

    run(scenario)


def test_garbage_on_one_station_does_not_block_another() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with station(server, "CS1") as noisy, station(server, "CS2") as quiet:
            garbage = ["nope", "{}", '[9, "g", {}]', "[2]", '[2, "g2", "BootNotification", {}]']
            for frame in garbage * 20:
                await noisy.send(frame)
            await heartbeat_ok(quiet, "quiet-hb")
            replies = [await recv(noisy) for _ in range(len(garbage) * 20)]
            assert all(r[0] == 4 for r in replies)
            await heartbeat_ok(noisy, "noisy-hb")

    run(scenario)


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("identity", "subprotocols", "status", "kind"), [
    ("CS9", OCPP201, 404, "unknown_station"),
    ("CS1", [Subprotocol("ocpp1.5")], 400, "no_subprotocol"),
    ("CS1", None, 400, "no_subprotocol"),
    ("CS:1", OCPP201, 400, "bad_identity"),
    (LONG_ID + "L", OCPP201, 400, "bad_identity"),
], ids=["unknown", "wrong-subprotocol", "no-subprotocol", "colon", "49-chars"])
def test_upgrade_refusals_are_recorded(identity: str, subprotocols: list[Subprotocol] | None,
                                       status: int, kind: str) -> None:
    async def scenario(server: CSMSServer) -> None:
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{server.url}/{identity}", subprotocols=subprotocols,
                               open_timeout=TIMEOUT_S):
                pass
        assert info.value.response.status_code == status
        events = server.core.store.security_events()
        assert [e["kind"] for e in events] == [kind]
        assert events[0]["at"] == iso_ts(T0)
        assert events[0]["peer"] and "127.0.0.1" in events[0]["peer"]
        assert server.connections == {}

    run(scenario)


def test_identity_is_the_percent_decoded_segment_after_ocpp_without_the_query() -> None:
    """OCPP-J: the identity is URL-encoded into the last path segment under the CSMS's
    path; a query string is not part of it; other paths are not the OCPP endpoint."""
    async def scenario(server: CSMSServer) -> None:
        base = server.url  # ws://127.0.0.1:port/ocpp
        # Provisioned as "CS#1 ü": only its decoded form is known.
        async with connect(f"{base}/CS%231%20%C3%BC", subprotocols=OCPP201,
                           open_timeout=TIMEOUT_S) as ws:
            await heartbeat_ok(ws)
        async with connect(f"{base}/CS1?vendor=x", subprotocols=OCPP201,
                           open_timeout=TIMEOUT_S) as ws:
            await heartbeat_ok(ws)
        root = base.rsplit("/", 1)[0]
        for path, status in ((f"{root}/CS1", 404), (f"{root}/elsewhere/CS1", 404),
                             (f"{base}/CS%3A1", 400), (f"{base}/CS%FF", 400),
                             (f"{base}/CS%0A1", 400)):
            with pytest.raises(InvalidStatus) as info:
                async with connect(path, subprotocols=OCPP201, open_timeout=TIMEOUT_S):
                    pass
            assert info.value.response.status_code == status, path
        kinds = [e["kind"] for e in server.core.store.security_events()]
        assert kinds == ["bad_path", "bad_path", "bad_identity", "bad_identity", "bad_identity"]

    run(scenario)


def test_longest_valid_identity_is_accepted() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with station(server, LONG_ID) as ws:
            await heartbeat_ok(ws)
        assert server.core.store.security_events() == []

    run(scenario)


# --------------------------------------------------------------------------- frame size
def test_oversized_frame_closes_with_1009_and_others_keep_working() -> None:
    limit = 1024

    async def scenario(server: CSMSServer) -> None:
        async with station(server, "CS2") as other, station(server, "CS1") as big:
            # Just under the limit is still an (invalid) frame that gets an answer.
            small = await rpc(big, "x" * (limit - 1))
            assert small[2] == "RpcFrameworkError"
            await big.send(json.dumps([2, "big", "Heartbeat", {"pad": "y" * 2 * limit}]))
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(big.recv(), TIMEOUT_S)
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
            await heartbeat_ok(other)
        async with station(server, "CS1") as again:
            await heartbeat_ok(again)

    run(scenario, max_frame_bytes=limit)


def test_reconnect_drops_the_old_connection() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with station(server, "CS1") as old, station(server, "CS1") as new:
            await heartbeat_ok(new)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(old.recv(), min(TIMEOUT_S, 1.0))

    run(scenario)


@pytest.mark.parametrize("shell_name", ["CSMS16", "CSMS201", "CSMS21"])
def test_shells_stand_on_the_ocppj_endpoint_not_the_ocpp_library(shell_name: str) -> None:
    """A shell is the CSMS's side of one connection on evtwin's Sans-I/O endpoint: no
    ``ocpp`` ChargePoint in its bases, and every message a station sends all the time
    has a wire handler."""
    import evtwin.csms.server as server_module

    shell_cls = next(c for c in server_module.SHELLS.values() if c.__name__ == shell_name)
    assert not [c for c in shell_cls.__mro__ if c.__module__.startswith("ocpp")]

    async def main() -> None:
        core = make_core()
        shell = shell_cls("CS1", object(), core, response_timeout=7)
        assert shell._endpoint.response_timeout_s == 7
        assert shell._endpoint.version == shell_cls.version
        assert set(shell.wire_handlers) >= {
            "BootNotification", "Heartbeat", "StatusNotification", "Authorize",
            "MeterValues"}
        core.store.close()

    asyncio.run(main())


def test_a_call_given_up_before_it_is_sent_never_reaches_the_station() -> None:
    """Calls to one station queue (one outstanding CALL per direction); a caller that
    gives up while its call waits takes it back: the station never sees it."""
    import contextlib

    from evtwin.csms.ocpp201 import CSMS201

    sent: list[str] = []

    class Conn:
        async def send(self, frame: str) -> None:
            sent.append(frame)

    async def main() -> None:
        core = make_core()
        shell = CSMS201("CS1", Conn(), core, response_timeout=5)
        first = asyncio.create_task(shell.call_json("Reset", {"type": "Immediate"}))
        await asyncio.sleep(0)
        second = asyncio.create_task(shell.call_json("Reset", {"type": "OnIdle"}))
        await asyncio.sleep(0)
        assert len(sent) == 1
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
        await shell.route_message(json.dumps([3, json.loads(sent[0])[1],
                                              {"status": "Accepted"}]))
        assert (await first)["status"] == "Accepted"
        assert len(sent) == 1  # the withdrawn call never went out
        core.store.close()

    asyncio.run(main())
