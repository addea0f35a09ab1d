"""Messages stations send for the record (OCPP 2.0.1/2.1 blocks B, G, H, J, K, L, M, N,
O, P and 1.6 Core, Firmware Management and the security whitepaper): answered as the
spec says over a real websocket to ``evtwin csms serve`` in its own process, kept as
received, and queryable through the operator API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_csms_api import Client, api_running
from test_csms_standalone import T0, boot, csms_process, station

from evtwin.csms import CSMSServer, Store

pytestmark = pytest.mark.slow

UPLOADED = {"status": "Uploaded", "requestId": 1}
DATA = {"vendorId": "com.example", "messageId": "x", "data": "y"}

#: (action, request, the answer the spec names) per version.
MESSAGES_2X: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # G05/N07: a connector's AvailabilityState changes; every 2.0.1 station sends it.
    ("NotifyEvent", {"generatedAt": T0, "seqNo": 0, "eventData": [{
        "eventId": 1, "timestamp": T0, "trigger": "Delta", "actualValue": "Occupied",
        "eventNotificationType": "HardWiredNotification",
        "component": {"name": "Connector", "evse": {"id": 1, "connectorId": 1}},
        "variable": {"name": "AvailabilityState"}}]}, {}),
    ("SecurityEventNotification", {"type": "FirmwareUpdated", "timestamp": T0}, {}),  # A04
    ("NotifyReport", {"requestId": 1, "generatedAt": T0, "seqNo": 0, "tbc": False,  # B07
                      "reportData": [{"component": {"name": "ChargingStation"},
                                      "variable": {"name": "Model"},
                                      "variableAttribute": [{"type": "Actual",
                                                             "value": "m"}]}]}, {}),
    ("NotifyMonitoringReport", {"requestId": 2, "seqNo": 0, "generatedAt": T0}, {}),  # N02
    ("LogStatusNotification", UPLOADED, {}),  # N01
    ("FirmwareStatusNotification", {"status": "Installed", "requestId": 1}, {}),  # L01
    ("PublishFirmwareStatusNotification", {"status": "Idle"}, {}),  # L03
    ("NotifyCustomerInformation", {"data": "none", "seqNo": 0, "generatedAt": T0,
                                   "requestId": 3}, {}),  # N09
    ("NotifyDisplayMessages", {"requestId": 4}, {}),  # O02
    ("ReservationStatusUpdate", {"reservationId": 1,
                                 "reservationUpdateStatus": "Expired"}, {}),  # H03
    ("NotifyChargingLimit", {"chargingLimit": {"chargingLimitSource": "SO"}}, {}),  # K12
    ("ClearedChargingLimit", {"chargingLimitSource": "SO"}, {}),  # K13
    ("NotifyEVChargingSchedule", {"timeBase": T0, "evseId": 1, "chargingSchedule": {
        "id": 1, "chargingRateUnit": "W",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7000.0}]}},
     {"status": "Accepted"}),  # K17
    ("DataTransfer", DATA, {"status": "UnknownVendorId"}),  # P01
]
MESSAGES_16: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("DataTransfer", DATA, {"status": "UnknownVendorId"}),
    ("DiagnosticsStatusNotification", {"status": "Uploaded"}, {}),
    ("FirmwareStatusNotification", {"status": "Installed"}, {}),
    ("SecurityEventNotification", {"type": "FirmwareUpdated", "timestamp": T0}, {}),
    ("LogStatusNotification", UPLOADED, {}),
    ("SignedFirmwareStatusNotification", {"status": "Installed", "requestId": 1}, {}),
]
CASES = {"ocpp1.6": MESSAGES_16, "ocpp2.0.1": MESSAGES_2X, "ocpp2.1": MESSAGES_2X}


@pytest.mark.parametrize("protocol", list(CASES))
def test_station_messages_are_answered_and_kept(tmp_path: Path, protocol: str) -> None:
    cases = CASES[protocol]
    with csms_process(tmp_path) as server:
        with station(server, "CS1", protocol) as st:
            boot(st, protocol)
            for action, payload, expected in cases:
                reply = st.call(action, payload)
                assert reply[0] == 3, (action, reply)
                assert reply[2] == expected, action
        with station(server, "CS2", protocol) as other:  # still serving everyone
            boot(other, protocol)
    store = Store(tmp_path / "csms.sqlite")
    try:
        kept = store.station_messages("CS1", limit=1000)
    finally:
        store.close()
    assert [m["action"] for m in kept] == [a for a, _, _ in cases]
    for m, (_, sent, _) in zip(kept, cases, strict=True):
        # As received (with the schema's defaults, e.g. tbc = false, filled in).
        assert _has(m["payload"], sent), (m["action"], m["payload"])


def _has(stored: Any, sent: Any) -> bool:
    """Everything ``sent`` holds is in ``stored`` (which may have defaults added)."""
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(
            k in stored and _has(stored[k], v) for k, v in sent.items())
    if isinstance(sent, list):
        return isinstance(stored, list) and len(stored) == len(sent) and all(
            _has(a, b) for a, b in zip(stored, sent, strict=True))
    return bool(stored == sent)


def test_operator_api_lists_a_stations_messages_by_action_and_page() -> None:
    async def scenario(server: CSMSServer, client: Client) -> None:
        core = server.core
        for n in range(5):
            core.on_station_message("CS201", "NotifyEvent", {"n": n})
        core.on_station_message("CS201", "SecurityEventNotification", {"type": "X"})
        core.on_station_message("CS16", "DataTransfer", {"vendorId": "v"})
        status, body, _ = await client("GET", "/stations/CS201/messages?action=NotifyEvent"
                                              "&limit=3")
        assert status == 200
        assert [m["payload"]["n"] for m in body["messages"]] == [0, 1, 2]
        assert body["next_after"] == body["messages"][-1]["id"]
        status, body, _ = await client(
            "GET", f"/stations/CS201/messages?action=NotifyEvent&after={body['next_after']}")
        assert [m["payload"]["n"] for m in body["messages"]] == [3, 4]
        assert body["next_after"] is None
        status, body, _ = await client("GET", "/stations/CS201/messages")
        assert [m["action"] for m in body["messages"]][-1] == "SecurityEventNotification"
        assert all(m["station_id"] == "CS201" for m in body["messages"])
        status, body, _ = await client("GET", "/stations/NOPE/messages")
        assert status == 404
        status, body, _ = await client("GET", "/stations/CS201/messages?limit=0")
        assert status == 422

    async def main() -> None:
        async with api_running() as (server, _api, client):
            await scenario(server, client)

    asyncio.run(main())
