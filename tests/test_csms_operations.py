"""CSMS-initiated operations against real sockets, one station double per OCPP version.

Each station double is an ``ocpp`` library ChargePoint (v16, v201, v21) whose
``@on`` handlers answer; its transport records every frame it receives, so
the tests check the exact payload that went over the wire, validate it
against the version's JSON schema and check its field names per version.
Loopback only, port 0. Timeouts scale with EVTWIN_TEST_TIMEOUT_SCALE.
"""

from __future__ import annotations

import asyncio
import decimal
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ocpp.exceptions import NotSupportedError, OCPPError
from ocpp.messages import MessageType, get_validator
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v201 import ChargePoint as ChargePoint201
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from evtwin.csms import CSMSConfig, CSMSCore, CSMSServer, EvseSpec, StationSpec, Store
from evtwin.csms import iso as iso_ts
from evtwin.csms.shell import CallFailed, InvalidCallResult, InvalidOperation, ShellBase

TIMEOUT_S = 5.0 * float(os.environ.get("EVTWIN_TEST_TIMEOUT_SCALE", "1"))
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NOW = iso_ts(T0)
STATION_IDS = {"1.6": "CS16", "2.0.1": "CS201", "2.1": "CS21"}


# --------------------------------------------------------------------------- station doubles
class RecordingTransport:
    """The station's side of the websocket; keeps every CALL it receives, raw."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.calls: list[tuple[str, str]] = []  # (action, raw frame)

    async def recv(self) -> Any:
        """Receive one frame and record it if it is a CALL."""
        raw = await self._ws.recv()
        frame = json.loads(raw)
        if frame[0] == MessageType.Call:
            self.calls.append((frame[2], str(raw)))
        return raw

    async def send(self, message: str) -> None:
        """Send one frame."""
        await self._ws.send(message)

    def payloads(self) -> list[tuple[str, dict[str, Any]]]:
        """(action, payload) of every CALL received, in order."""
        return [(action, json.loads(raw)[3]) for action, raw in self.calls]


def assert_valid_on_the_wire(version: str, action: str, raw: str) -> None:
    """The raw frame's payload validates against the version's request schema."""
    # Decimal floats as the ocpp library does it: 1.6 says multipleOf 0.1.
    payload = json.loads(raw, parse_float=decimal.Decimal)[3]
    validator = get_validator(MessageType.Call, action, version, parse_float=decimal.Decimal)
    validator.validate(payload)


class _Answers:
    """Answers of a station double: ``answers[action]`` (snake_case call_result fields),
    ``errors[action]`` (an OCPPError raised as CALLERROR), ``delays[action]`` (seconds)."""

    def _init_answers(self) -> None:
        self.answers: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, OCPPError] = {}
        self.delays: dict[str, float] = {}
        self.reports: list[dict[str, Any]] = []  # ReportChargingProfiles to send

    async def _answer(self, action: str) -> Any:
        if action in self.delays:
            await asyncio.sleep(self.delays[action])
        if action in self.errors:
            raise self.errors[action]
        fields = self.answers.get(action, {"status": "Accepted"})
        return getattr(self._call_result, action)(**fields)  # type: ignore[attr-defined]


class Station16(_Answers, ChargePoint16):
    """An OCPP 1.6 station that answers every CSMS-initiated call this CSMS sends."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._init_answers()

    @on("RemoteStartTransaction")
    async def on_remote_start(self, **_: Any) -> Any:
        return await self._answer("RemoteStartTransaction")

    @on("RemoteStopTransaction")
    async def on_remote_stop(self, **_: Any) -> Any:
        return await self._answer("RemoteStopTransaction")

    @on("SetChargingProfile")
    async def on_set_profile(self, **_: Any) -> Any:
        return await self._answer("SetChargingProfile")

    @on("ClearChargingProfile")
    async def on_clear_profile(self, **_: Any) -> Any:
        return await self._answer("ClearChargingProfile")

    @on("GetCompositeSchedule")
    async def on_composite(self, **_: Any) -> Any:
        return await self._answer("GetCompositeSchedule")

    @on("ChangeAvailability")
    async def on_availability(self, **_: Any) -> Any:
        return await self._answer("ChangeAvailability")

    @on("Reset")
    async def on_reset(self, **_: Any) -> Any:
        return await self._answer("Reset")

    @on("TriggerMessage")
    async def on_trigger(self, **_: Any) -> Any:
        return await self._answer("TriggerMessage")

    @on("ReserveNow")
    async def on_reserve(self, **_: Any) -> Any:
        return await self._answer("ReserveNow")

    @on("CancelReservation", skip_schema_validation=True)
    async def on_cancel(self, **_: Any) -> Any:
        return await self._answer("CancelReservation")


class _Handlers2x(_Answers):
    """OCPP 2.0.1/2.1 handlers; GetChargingProfiles is followed by ``reports``."""

    @on("RequestStartTransaction")
    async def on_request_start(self, **_: Any) -> Any:
        return await self._answer("RequestStartTransaction")

    @on("RequestStopTransaction")
    async def on_request_stop(self, **_: Any) -> Any:
        return await self._answer("RequestStopTransaction")

    @on("SetChargingProfile")
    async def on_set_profile(self, **_: Any) -> Any:
        return await self._answer("SetChargingProfile")

    @on("ClearChargingProfile")
    async def on_clear_profile(self, **_: Any) -> Any:
        return await self._answer("ClearChargingProfile")

    @on("GetCompositeSchedule")
    async def on_composite(self, **_: Any) -> Any:
        return await self._answer("GetCompositeSchedule")

    @on("ChangeAvailability")
    async def on_availability(self, **_: Any) -> Any:
        return await self._answer("ChangeAvailability")

    @on("Reset")
    async def on_reset(self, **_: Any) -> Any:
        return await self._answer("Reset")

    @on("TriggerMessage")
    async def on_trigger(self, **_: Any) -> Any:
        return await self._answer("TriggerMessage")

    @on("ReserveNow")
    async def on_reserve(self, **_: Any) -> Any:
        return await self._answer("ReserveNow")

    @on("CancelReservation", skip_schema_validation=True)
    async def on_cancel(self, **_: Any) -> Any:
        return await self._answer("CancelReservation")

    @on("GetChargingProfiles")
    async def on_get_profiles(self, **_: Any) -> Any:
        return await self._answer("GetChargingProfiles")

    @after("GetChargingProfiles")
    async def after_get_profiles(self, request_id: int, **_: Any) -> None:
        # An @after hook runs as its own task: calling from here cannot deadlock.
        for report in self.reports:
            await self.call_raw("ReportChargingProfiles", {"requestId": request_id, **report})

    async def call_raw(self, action: str, payload: dict[str, Any]) -> list[Any]:
        """Send a CALL in wire form (no snake/camel conversion); return the reply frame."""
        unique_id = str(self._unique_id_generator())  # type: ignore[attr-defined]
        async with self._call_lock:  # type: ignore[attr-defined]
            await self._send(json.dumps([2, unique_id, action, payload]))  # type: ignore[attr-defined]
            reply = await self._get_specific_response(  # type: ignore[attr-defined]
                unique_id, TIMEOUT_S)
        return [reply.message_type_id, reply.unique_id,
                getattr(reply, "payload", None) or getattr(reply, "error_code", None)]


class Station201(_Handlers2x, ChargePoint201):
    """An OCPP 2.0.1 station double."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._init_answers()


class Station21(_Handlers2x, ChargePoint21):
    """An OCPP 2.1 station double."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._init_answers()


STATIONS: dict[str, type[Any]] = {"1.6": Station16, "2.0.1": Station201, "2.1": Station21}


# --------------------------------------------------------------------------- harness
def make_core(store: Store | None = None) -> CSMSCore:
    """A CSMS with one two-EVSE station per version, on a fixed clock."""
    config = CSMSConfig(
        stations=tuple(StationSpec(sid, "site", (EvseSpec(1, 22_000.0), EvseSpec(2, 22_000.0)))
                       for sid in STATION_IDS.values()),
        id_tokens=frozenset({"TOKEN1"}),
    )
    return CSMSCore(config, store or Store(":memory:"), clock=lambda: T0)


@asynccontextmanager
async def connected_station(server: CSMSServer, version: str,
                            station_id: str | None = None,
                            ) -> AsyncIterator[tuple[ShellBase, Any, RecordingTransport]]:
    """Connect a station double; yield (the CSMS's shell for it, the double, its transport)."""
    station_id = station_id or STATION_IDS[version]
    async with connect(f"{server.url}/{station_id}",
                       subprotocols=[Subprotocol(f"ocpp{version}")],
                       open_timeout=TIMEOUT_S) as ws:
        transport = RecordingTransport(ws)
        station = STATIONS[version](station_id, transport, response_timeout=TIMEOUT_S)
        task = asyncio.create_task(station.start())
        try:
            for _ in range(int(TIMEOUT_S / 0.01)):
                if station_id in server.connections:
                    break
                await asyncio.sleep(0.01)
            yield server.connections[station_id], station, transport
        finally:
            task.cancel()


def run(scenario: Callable[[CSMSServer], Awaitable[None]], *, core: CSMSCore | None = None,
        response_timeout_s: float = TIMEOUT_S) -> CSMSServer:
    """Start a CSMS on 127.0.0.1:0, run ``scenario`` against it, stop it."""

    async def main() -> CSMSServer:
        async with CSMSServer(core or make_core(), host="127.0.0.1", port=0,
                              response_timeout_s=response_timeout_s) as server:
            await asyncio.wait_for(scenario(server), 6 * TIMEOUT_S)
        return server

    return asyncio.run(main())


# --------------------------------------------------------------------------- the operations
EXPIRY = T0 + timedelta(hours=1)
DAY_START = datetime(2026, 6, 1, tzinfo=UTC)
VALID_TO = T0 + timedelta(days=30)
TX_PROFILE = {"purpose": "TxProfile", "unit": "A", "periods": [{"start_s": 0, "limit": 16}]}
STATION_MAX = {"purpose": "ChargingStationMaxProfile", "unit": "W",
               "periods": [{"start_s": 0, "limit": 22000}, {"start_s": 3600, "limit": 11000.5}]}
RELATIVE_TX = {"purpose": "TxProfile", "transaction_id": "42", "stack_level": 1, "kind": "Relative",
               "unit": "A", "duration_s": 7200,
               "periods": [{"start_s": 0, "limit": 16, "number_phases": 3}]}
RECURRING = {"purpose": "TxDefaultProfile", "kind": "Recurring", "recurrency": "Daily",
             "start_schedule": DAY_START, "duration_s": 86400, "valid_from": T0,
             "valid_to": VALID_TO, "unit": "W", "min_charging_rate": 1400,
             "periods": [{"start_s": 0, "limit": 11000}, {"start_s": 61200, "limit": 3700}]}

Op = Callable[[ShellBase], Awaitable[dict[str, Any]]]

# The same version-neutral calls for every version.
OPERATIONS: list[tuple[str, Op]] = [
    ("start", lambda s: s.request_start(1, "TOKEN1", remote_start_id=7)),
    ("start+profile", lambda s: s.request_start(None, "TOKEN1", remote_start_id=8,
                                                charging_profile=TX_PROFILE)),
    ("stop", lambda s: s.request_stop("42")),
    ("station max", lambda s: s.set_charging_profile(0, STATION_MAX)),
    ("relative tx", lambda s: s.set_charging_profile(1, RELATIVE_TX)),
    ("recurring", lambda s: s.set_charging_profile(1, RECURRING)),
    ("clear id", lambda s: s.clear_charging_profile(profile_id=5)),
    ("clear criteria", lambda s: s.clear_charging_profile(evse_id=1, purpose="TxDefaultProfile",
                                                          stack_level=0)),
    ("composite", lambda s: s.get_composite_schedule(1, 600, "W")),
    ("inoperative", lambda s: s.change_availability(0, False)),
    ("operative", lambda s: s.change_availability(1, True)),
    ("hard reset", lambda s: s.reset(True)),
    ("soft reset", lambda s: s.reset(False)),
    ("trigger status", lambda s: s.trigger_message("StatusNotification", 1)),
    ("trigger heartbeat", lambda s: s.trigger_message("Heartbeat")),
    ("reserve", lambda s: s.reserve_now(3, "TOKEN1", EXPIRY, evse_id=1)),
    ("cancel", lambda s: s.cancel_reservation(3)),
]

WIRE_16: list[tuple[str, dict[str, Any]]] = [
    ("RemoteStartTransaction", {"connectorId": 1, "idTag": "TOKEN1"}),
    ("RemoteStartTransaction", {"idTag": "TOKEN1", "chargingProfile": {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {
            "startSchedule": NOW, "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16}]}}}),
    ("RemoteStopTransaction", {"transactionId": 42}),
    ("SetChargingProfile", {"connectorId": 0, "csChargingProfiles": {
        "chargingProfileId": 2, "stackLevel": 0, "chargingProfilePurpose": "ChargePointMaxProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {
            "startSchedule": NOW, "chargingRateUnit": "W", "chargingSchedulePeriod": [
                {"startPeriod": 0, "limit": 22000}, {"startPeriod": 3600, "limit": 11000.5}]}}}),
    ("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 3, "transactionId": 42, "stackLevel": 1,
        "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Relative",
        "chargingSchedule": {"duration": 7200, "chargingRateUnit": "A", "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 16, "numberPhases": 3}]}}}),
    ("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 4, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Recurring", "recurrencyKind": "Daily", "validFrom": NOW,
        "validTo": iso_ts(VALID_TO), "chargingSchedule": {
            "duration": 86400, "startSchedule": iso_ts(DAY_START), "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000},
                                       {"startPeriod": 61200, "limit": 3700}],
            "minChargingRate": 1400}}}),
    ("ClearChargingProfile", {"id": 5}),
    ("ClearChargingProfile", {"connectorId": 1, "chargingProfilePurpose": "TxDefaultProfile",
                              "stackLevel": 0}),
    ("GetCompositeSchedule", {"connectorId": 1, "duration": 600, "chargingRateUnit": "W"}),
    ("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}),
    ("ChangeAvailability", {"connectorId": 1, "type": "Operative"}),
    ("Reset", {"type": "Hard"}),
    ("Reset", {"type": "Soft"}),
    ("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}),
    ("TriggerMessage", {"requestedMessage": "Heartbeat"}),
    ("ReserveNow", {"connectorId": 1, "expiryDate": iso_ts(EXPIRY), "idTag": "TOKEN1",
                    "reservationId": 3}),
    ("CancelReservation", {"reservationId": 3}),
]


def _schedule_2x(profile_id: int, **fields: Any) -> dict[str, Any]:
    return {"id": profile_id, **fields}


WIRE_2X: list[tuple[str, dict[str, Any]]] = [
    ("RequestStartTransaction", {"evseId": 1, "idToken": {"idToken": "TOKEN1", "type": "Central"},
                                 "remoteStartId": 7}),
    ("RequestStartTransaction", {
        "idToken": {"idToken": "TOKEN1", "type": "Central"}, "remoteStartId": 8,
        "chargingProfile": {
            "id": 1, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": [_schedule_2x(
                1, startSchedule=NOW, chargingRateUnit="A",
                chargingSchedulePeriod=[{"startPeriod": 0, "limit": 16}])]}}),
    ("RequestStopTransaction", {"transactionId": "42"}),
    ("SetChargingProfile", {"evseId": 0, "chargingProfile": {
        "id": 2, "stackLevel": 0, "chargingProfilePurpose": "ChargingStationMaxProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": [_schedule_2x(
            2, startSchedule=NOW, chargingRateUnit="W", chargingSchedulePeriod=[
                {"startPeriod": 0, "limit": 22000}, {"startPeriod": 3600, "limit": 11000.5}])]}}),
    ("SetChargingProfile", {"evseId": 1, "chargingProfile": {
        "id": 3, "stackLevel": 1, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative", "transactionId": "42", "chargingSchedule": [
            _schedule_2x(3, duration=7200, chargingRateUnit="A", chargingSchedulePeriod=[
                {"startPeriod": 0, "limit": 16, "numberPhases": 3}])]}}),
    ("SetChargingProfile", {"evseId": 1, "chargingProfile": {
        "id": 4, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Recurring", "recurrencyKind": "Daily", "validFrom": NOW,
        "validTo": iso_ts(VALID_TO), "chargingSchedule": [_schedule_2x(
            4, startSchedule=iso_ts(DAY_START), duration=86400, chargingRateUnit="W",
            chargingSchedulePeriod=[{"startPeriod": 0, "limit": 11000},
                                    {"startPeriod": 61200, "limit": 3700}],
            minChargingRate=1400)]}}),
    ("ClearChargingProfile", {"chargingProfileId": 5}),
    ("ClearChargingProfile", {"chargingProfileCriteria": {
        "evseId": 1, "chargingProfilePurpose": "TxDefaultProfile", "stackLevel": 0}}),
    ("GetCompositeSchedule", {"duration": 600, "chargingRateUnit": "W", "evseId": 1}),
    ("ChangeAvailability", {"operationalStatus": "Inoperative"}),
    ("ChangeAvailability", {"evse": {"id": 1}, "operationalStatus": "Operative"}),
    ("Reset", {"type": "Immediate"}),
    ("Reset", {"type": "OnIdle"}),
    ("TriggerMessage", {"requestedMessage": "StatusNotification", "evse": {"id": 1}}),
    ("TriggerMessage", {"requestedMessage": "Heartbeat"}),
    ("ReserveNow", {"id": 3, "expiryDateTime": iso_ts(EXPIRY),
                    "idToken": {"idToken": "TOKEN1", "type": "Central"}, "evseId": 1}),
    ("CancelReservation", {"reservationId": 3}),
]

WIRE = {"1.6": WIRE_16, "2.0.1": WIRE_2X, "2.1": WIRE_2X}

COMPOSITE_ANSWER = {
    "1.6": {"status": "Accepted", "connector_id": 1, "schedule_start": NOW,
            "charging_schedule": {"duration": 600, "start_schedule": NOW,
                                  "charging_rate_unit": "W", "charging_schedule_period": [
                                      {"start_period": 0, "limit": 7400.0},
                                      {"start_period": 300, "limit": 3700.0}]}},
    "2.0.1": {"status": "Accepted", "schedule": {
        "evse_id": 1, "duration": 600, "schedule_start": NOW, "charging_rate_unit": "W",
        "charging_schedule_period": [{"start_period": 0, "limit": 7400.0},
                                     {"start_period": 300, "limit": 3700.0}]}},
}
COMPOSITE_ANSWER["2.1"] = COMPOSITE_ANSWER["2.0.1"]
COMPOSITE_SCHEDULE = {"evse_id": 1, "schedule_start": NOW, "duration_s": 600, "unit": "W",
                      "periods": [{"start_s": 0, "limit": 7400.0},
                                  {"start_s": 300, "limit": 3700.0}]}


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_every_operation_goes_out_in_the_versions_wire_form(version: str) -> None:
    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, version) as (shell, station, transport):
            station.answers["GetCompositeSchedule"] = COMPOSITE_ANSWER[version]
            answers = {}
            for name, op in OPERATIONS:
                answers[name] = await op(shell)
            sent = transport.payloads()
            assert [a for a, _ in sent] == [a for a, _ in WIRE[version]]
            for (_action, payload), (name, _), (_, expected) in zip(
                    sent, OPERATIONS, WIRE[version], strict=True):
                assert payload == expected, name
            for action, raw in transport.calls:
                assert_valid_on_the_wire(version, action, raw)
            assert all(a["status"] == "Accepted" for a in answers.values())
            assert answers["composite"]["schedule"] == COMPOSITE_SCHEDULE
            assert [answers[n]["profile_id"] for n in (
                "start+profile", "station max", "relative tx", "recurring")] == [1, 2, 3, 4]
            if version != "1.6":
                assert answers["start"]["remote_start_id"] == 7
            # Every profile sent is on record with the station's answer.
            assert server.core.store.max_profile_id() == 4
            assert server.core.next_profile_id() == 5

    run(scenario)


def test_v2x_schedule_goes_out_with_the_spec_field_names() -> None:
    """OCPP 2.1 per-phase fields keep their underscore (``limit_L2``) on the wire."""
    profile = {"purpose": "PriorityCharging", "kind": "Dynamic", "unit": "W", "periods": [
        {"start_s": 0, "limit": 11000, "limit_l2": 7000, "limit_l3": 7000,
         "operation_mode": "ChargingOnly"},
        {"start_s": 900, "operation_mode": "CentralSetpoint", "setpoint": -5000,
         "setpoint_l2": -1000, "setpoint_l3": -1000, "discharge_limit": -7000,
         "discharge_limit_l2": -2000, "discharge_limit_l3": -2000, "setpoint_reactive": 500,
         "setpoint_reactive_l2": 100, "setpoint_reactive_l3": 100, "v2x_baseline": 0}]}

    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, "2.1") as (shell, _station, transport):
            result = await shell.set_charging_profile(1, profile)
            assert result == {"status": "Accepted", "profile_id": 1}
            (action, raw), = transport.calls
            assert_valid_on_the_wire("2.1", action, raw)
            wire = json.loads(raw)[3]["chargingProfile"]
            assert wire["chargingProfilePurpose"] == "PriorityCharging"
            assert wire["chargingProfileKind"] == "Dynamic"
            first, second = wire["chargingSchedule"][0]["chargingSchedulePeriod"]
            assert first == {"startPeriod": 0, "limit": 11000, "limit_L2": 7000,
                             "limit_L3": 7000, "operationMode": "ChargingOnly"}
            assert second == {
                "startPeriod": 900, "operationMode": "CentralSetpoint", "setpoint": -5000,
                "setpoint_L2": -1000, "setpoint_L3": -1000, "dischargeLimit": -7000,
                "dischargeLimit_L2": -2000, "dischargeLimit_L3": -2000,
                "setpointReactive": 500, "setpointReactive_L2": 100,
                "setpointReactive_L3": 100, "v2xBaseline": 0}

    run(scenario)


def test_station_answers_come_back_with_reason_and_transaction() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, "2.0.1") as (shell, station, _transport):
            station.answers["RequestStartTransaction"] = {"status": "Accepted",
                                                          "transaction_id": "T-9"}
            station.answers["Reset"] = {"status": "Rejected", "status_info": {
                "reason_code": "TxInProgress", "additional_info": "charging"}}
            started = await shell.request_start(2, "TOKEN1")
            assert started["status"] == "Accepted"
            assert started["transaction_id"] == "T-9"
            assert started["remote_start_id"] == 1  # assigned by the CSMS, persistent counter
            assert (await shell.request_start(2, "TOKEN1"))["remote_start_id"] == 2
            assert await shell.reset(False) == {"status": "Rejected", "reason_code": "TxInProgress",
                                                "additional_info": "charging"}

    run(scenario)


BAD_REQUESTS: list[tuple[str, str, Op]] = [
    ("1.6", "profile.periods.0.setpoint", lambda s: s.set_charging_profile(1, {
        "purpose": "TxDefaultProfile", "periods": [{"start_s": 0, "limit": 10, "setpoint": 5}]})),
    ("1.6", "profile.purpose", lambda s: s.set_charging_profile(1, {
        "purpose": "PriorityCharging", "periods": [{"start_s": 0, "limit": 10}]})),
    ("1.6", "profile.periods.0.limit", lambda s: s.set_charging_profile(1, {
        "purpose": "TxDefaultProfile", "unit": "A", "periods": [{"start_s": 0, "limit": 8.15}]})),
    ("1.6", "profile.transaction_id", lambda s: s.set_charging_profile(1, {
        "purpose": "TxProfile", "transaction_id": "abc",
        "periods": [{"start_s": 0, "limit": 10}]})),
    ("1.6", "transaction_id", lambda s: s.request_stop("tx-abc")),
    ("1.6", "id_token", lambda s: s.request_start(1, "X" * 21)),
    ("1.6", "message", lambda s: s.trigger_message("TransactionEvent")),
    ("1.6", "", lambda s: s.get_charging_profiles()),
    ("2.0.1", "profile.periods.1.setpoint", lambda s: s.set_charging_profile(1, {
        "purpose": "TxDefaultProfile", "periods": [{"start_s": 0, "limit": 10},
                                             {"start_s": 60, "setpoint": -3000}]})),
    ("2.0.1", "profile.periods.0.operation_mode", lambda s: s.set_charging_profile(1, {
        "purpose": "TxDefaultProfile", "periods": [{"start_s": 0, "operation_mode": "Idle"}]})),
    ("1.6", "profile.periods.0.phase_to_use", lambda s: s.set_charging_profile(1, {
        "purpose": "TxDefaultProfile", "periods": [{"start_s": 0, "limit": 1, "number_phases": 1,
                                              "phase_to_use": 2}]})),
    ("2.0.1", "profile.kind", lambda s: s.set_charging_profile(1, {
        "purpose": "TxDefaultProfile", "kind": "Dynamic",
        "periods": [{"start_s": 0, "limit": 1}]})),
    ("2.0.1", "profile.purpose", lambda s: s.set_charging_profile(1, {
        "purpose": "LocalGeneration", "periods": [{"start_s": 0, "limit": 1}]})),
    ("2.0.1", "id_token", lambda s: s.request_start(1, "X" * 37)),
    ("2.0.1", "message", lambda s: s.trigger_message("SignV2G20Certificate")),
    ("2.0.1", "purpose", lambda s: s.clear_charging_profile(purpose="PriorityCharging")),
    ("2.1", "evse_id", lambda s: s.set_charging_profile(3, {
        "purpose": "TxDefaultProfile", "periods": [{"start_s": 0, "limit": 1}]})),
    ("2.1", "evse_id", lambda s: s.set_charging_profile(1, {
        "purpose": "ChargingStationMaxProfile", "periods": [{"start_s": 0, "limit": 1}]})),
    ("2.1", "evse_id", lambda s: s.set_charging_profile(0, {
        "purpose": "TxProfile", "periods": [{"start_s": 0, "limit": 1}]})),
    ("2.1", "evse_id", lambda s: s.request_start(0, "TOKEN1")),
    ("2.1", "charging_profile.purpose", lambda s: s.request_start(1, "TOKEN1", charging_profile={
        "purpose": "TxDefaultProfile", "periods": [{"start_s": 0, "limit": 1}]})),
    ("2.1", "charging_profile.transaction_id", lambda s: s.request_start(
        1, "TOKEN1", charging_profile={"purpose": "TxProfile", "transaction_id": "T",
                                       "periods": [{"start_s": 0, "limit": 1}]})),
]


@pytest.mark.parametrize(("version", "field", "op"), BAD_REQUESTS,
                         ids=[f"{v}-{f or 'version'}-{i}" for i, (v, f, _) in
                              enumerate(BAD_REQUESTS)])
def test_what_the_version_cannot_say_is_refused_before_sending(
        version: str, field: str, op: Op) -> None:
    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, version) as (shell, _station, transport):
            with pytest.raises(InvalidOperation) as err:
                await op(shell)
            assert err.value.field == field
            assert transport.calls == []
            assert server.core.store.count("charging_profiles") == 0

    run(scenario)


def test_neutral_profile_errors_name_the_field() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, "2.1") as (shell, _station, transport):
            with pytest.raises(ValueError, match=r"periods\.1\.start_s"):
                await shell.set_charging_profile(1, {"purpose": "TxDefaultProfile", "periods": [
                    {"start_s": 0, "limit": 1}, {"start_s": 0, "limit": 2}]})
            with pytest.raises(ValueError, match="recurrency"):
                await shell.set_charging_profile(1, {
                    "purpose": "TxDefaultProfile", "kind": "Recurring",
                    "periods": [{"start_s": 0, "limit": 1}]})
            assert transport.calls == []

    run(scenario)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_a_call_error_raises_call_failed_and_is_recorded(version: str) -> None:
    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, version) as (shell, station, _transport):
            station.errors["Reset"] = NotSupportedError(description="no resets here")
            with pytest.raises(CallFailed) as err:
                await shell.reset(True)
            assert err.value.code == "NotSupported"
            assert err.value.action == "Reset"
            station.errors["SetChargingProfile"] = NotSupportedError(description="no")
            with pytest.raises(CallFailed):
                await shell.set_charging_profile(0, STATION_MAX)
            row = server.core.store._db.execute(
                "SELECT profile_id, purpose, status FROM charging_profiles").fetchone()
            assert tuple(row) == (1, "ChargingStationMaxProfile", "CallError:NotSupported")
            # The connection is still usable.
            del station.errors["Reset"]
            assert (await shell.reset(False))["status"] == "Accepted"

    run(scenario)


def test_an_answer_that_fails_the_schema_raises_invalid_call_result() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, "2.0.1") as (shell, station, _transport):
            station.answers["CancelReservation"] = {"status": "Perhaps"}
            with pytest.raises(InvalidCallResult) as err:
                await shell.cancel_reservation(1)
            assert isinstance(err.value, CallFailed)
            assert err.value.action == "CancelReservation"

    run(scenario)


def test_no_answer_raises_timeout_error() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, "2.0.1") as (shell, station, _transport):
            station.delays["Reset"] = 1.0
            with pytest.raises(TimeoutError, match="Reset"):
                await shell.reset(True)

    run(scenario, response_timeout_s=0.2)


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
def test_get_charging_profiles_collects_the_reports(version: str) -> None:
    def schedule(profile_id: int) -> list[dict[str, Any]]:
        return [{"id": profile_id, "startSchedule": NOW, "chargingRateUnit": "W",
                 "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7400.0}]}]

    reported = {"id": 12, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Absolute", "chargingSchedule": schedule(12)}
    station_max = {**reported, "id": 13, "chargingProfilePurpose": "ChargingStationMaxProfile",
                   "chargingSchedule": schedule(13)}

    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, version) as (shell, station, transport):
            station.reports = [
                {"chargingLimitSource": "CSO", "evseId": 1, "chargingProfile": [reported],
                 "tbc": True},
                {"chargingLimitSource": "CSO", "evseId": 0, "chargingProfile": [station_max]},
            ]
            result = await shell.get_charging_profiles(evse_id=1, purpose="TxDefaultProfile")
            assert result["status"] == "Accepted" and result["complete"] is True
            assert result["request_id"] == 1
            assert result["profiles"] == [
                {"evse_id": 1, "charging_limit_source": "CSO", "charging_profile": reported},
                {"evse_id": 0, "charging_limit_source": "CSO", "charging_profile": station_max}]
            (action, raw), = transport.calls
            assert_valid_on_the_wire(version, action, raw)
            assert json.loads(raw)[3] == {"requestId": 1, "evseId": 1, "chargingProfile": {
                "chargingProfilePurpose": "TxDefaultProfile"}}
            station.answers["GetChargingProfiles"] = {"status": "NoProfiles"}
            station.reports = []
            empty = await shell.get_charging_profiles(profile_ids=[99])
            assert empty["status"] == "NoProfiles" and empty["profiles"] == []

    run(scenario)


def test_get_charging_profiles_without_the_last_report_is_incomplete() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, "2.0.1") as (shell, station, _transport):
            station.reports = []  # Accepted, but no report ever comes
            result = await shell.get_charging_profiles(report_timeout_s=0.1)
            assert result["status"] == "Accepted"
            assert result["complete"] is False and result["profiles"] == []

    run(scenario)


# --------------------------------------------------------------------------- NotifyEVChargingNeeds
TX_STARTED = {
    "eventType": "Started", "timestamp": NOW, "triggerReason": "CablePluggedIn", "seqNo": 0,
    "transactionInfo": {"transactionId": "tx-1"}, "evse": {"id": 1, "connectorId": 1},
}
DEPARTURE = iso_ts(T0 + timedelta(hours=8))


def test_notify_ev_charging_needs_201_is_kept_on_the_session() -> None:
    needs = {"requestedEnergyTransfer": "AC_three_phase", "departureTime": DEPARTURE,
             "acChargingParameters": {"energyAmount": 30000, "evMinCurrent": 6,
                                      "evMaxCurrent": 16, "evMaxVoltage": 400}}

    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, "2.0.1") as (shell, station, _transport):
            assert (await station.call_raw("TransactionEvent", TX_STARTED))[0] == 3
            reply = await station.call_raw("NotifyEVChargingNeeds",
                                           {"evseId": 1, "chargingNeeds": needs})
            assert reply == [3, reply[1], {"status": "Accepted"}]
            ev = server.core.sessions[("CS201", "tx-1")].ev_needs
            assert ev is not None
            assert ev.departure_time == T0 + timedelta(hours=8)
            assert ev.energy_amount_wh == 30000
            assert (ev.ev_min_current_a, ev.ev_max_current_a, ev.ev_max_voltage_v) == (6, 16, 400)
            assert ev.energy_transfer == "AC_three_phase"
            assert ev.charging_needs == needs
            assert shell.ev_charging_needs[1] == ev
            # An EVSE the station does not have is a property violation.
            bad = await station.call_raw("NotifyEVChargingNeeds",
                                         {"evseId": 7, "chargingNeeds": needs})
            assert bad[0] == 4 and bad[2] == "PropertyConstraintViolation"

    run(scenario)


def test_notify_ev_charging_needs_21_keeps_the_v2x_limits() -> None:
    needs = {"requestedEnergyTransfer": "DC_BPT", "availableEnergyTransfer": ["DC", "DC_BPT"],
             "controlMode": "DynamicControl", "departureTime": DEPARTURE,
             "dcChargingParameters": {"evMaxCurrent": 200, "evMaxVoltage": 800,
                                      "evMaxPower": 50000, "evEnergyCapacity": 77000,
                                      "stateOfCharge": 40},
             "v2xChargingParameters": {"minChargePower": 1000, "maxChargePower": 50000,
                                       "minDischargePower": 1000, "maxDischargePower": 11000,
                                       "evTargetEnergyRequest": 30000,
                                       "evMinEnergyRequest": 10000,
                                       "evMaxEnergyRequest": 45000, "targetSoC": 80}}

    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, "2.1") as (shell, station, _transport):
            reply = await station.call_raw("NotifyEVChargingNeeds", {
                "evseId": 2, "chargingNeeds": needs, "timestamp": NOW})
            assert reply[0] == 3 and reply[2] == {"status": "Accepted"}
            ev = shell.ev_charging_needs[2]  # no session yet: kept on the connection
            assert ev.v2x_max_discharge_power_w == 11000
            assert ev.v2x_max_charge_power_w == 50000
            assert (ev.v2x_min_energy_wh, ev.v2x_target_energy_wh, ev.v2x_max_energy_wh) == (
                10000, 30000, 45000)
            assert ev.v2x_target_soc_percent == 80 and ev.soc_percent == 40
            assert ev.ev_max_power_w == 50000 and ev.ev_energy_capacity_wh == 77000
            assert ev.received_at == T0
            assert all(s.ev_needs is None for s in server.core.sessions.values())

    run(scenario)


def test_an_operation_in_flight_does_not_block_station_messages() -> None:
    """The station keeps talking while a CSMS-initiated call waits for its answer."""
    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, "2.0.1") as (shell, station, _transport):
            station.delays["Reset"] = 0.3
            reset = asyncio.create_task(shell.reset(True))
            await asyncio.sleep(0.05)
            # Sent from outside the station's handler: its reader is busy with
            # the delayed Reset, so the CSMS's answer is read once it is done.
            heartbeat = asyncio.create_task(station.call_raw("Heartbeat", {}))
            assert (await reset)["status"] == "Accepted"
            assert (await heartbeat)[0] == 3

    run(scenario)


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_accepted_profiles_join_what_the_core_believes_installed(version: str) -> None:
    cap = {"purpose": "ChargingStationMaxProfile", "periods": [{"start_s": 0, "limit": 7000}]}

    async def scenario(server: CSMSServer) -> None:
        core = server.core
        async with connected_station(server, version) as (shell, station, _transport):
            station_id = STATION_IDS[version]
            assert core.effective_limit_w(station_id, 1) == 22_000  # the EVSE's own maximum
            station.answers["SetChargingProfile"] = {"status": "Rejected"}
            await shell.set_charging_profile(0, cap)
            assert core.effective_limit_w(station_id, 1) == 22_000  # rejected: not installed
            del station.answers["SetChargingProfile"]
            accepted = await shell.set_charging_profile(0, cap)
            assert core.effective_limit_w(station_id, 1) == 7000
            assert core.effective_limit_w(station_id, 2) == 7000
            await shell.clear_charging_profile(profile_id=accepted["profile_id"])
            assert core.effective_limit_w(station_id, 1) == 22_000
            await shell.set_charging_profile(0, cap)
            await shell.clear_charging_profile(purpose="ChargingStationMaxProfile")
            assert core.profile_set(station_id).profiles == []

    run(scenario)


def test_v2x_profiles_are_sent_but_not_modelled_by_the_core() -> None:
    async def scenario(server: CSMSServer) -> None:
        async with connected_station(server, "2.1") as (shell, _station, _transport):
            result = await shell.set_charging_profile(1, {
                "purpose": "TxDefaultProfile", "periods": [
                    {"start_s": 0, "limit": 11000, "setpoint": -3000,
                     "operation_mode": "CentralSetpoint"}]})
            assert result["status"] == "Accepted"
            assert server.core.profile_set("CS21").profiles == []

    run(scenario)


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_installed_profiles_survive_a_restart_and_so_do_clears(tmp_path: Any,
                                                              version: str) -> None:
    """Profiles an operator set (not only the controller's limits) are there after a restart."""
    db = tmp_path / "csms.sqlite"
    station_id = STATION_IDS[version]
    core = make_core(Store(db))

    async def install(server: CSMSServer) -> None:
        async with connected_station(server, version) as (shell, _station, _transport):
            assert (await shell.set_charging_profile(0, STATION_MAX))["status"] == "Accepted"
            assert (await shell.set_charging_profile(1, RECURRING))["status"] == "Accepted"

    run(install, core=core)
    before = core.profile_set(station_id).profiles
    assert {p.purpose for p in before} == {"ChargingStationMaxProfile", "TxDefaultProfile"}
    limit_before = core.effective_limit_w(station_id, 1, T0 + timedelta(hours=5))
    core.store.close()

    restarted = make_core(Store(db))
    assert restarted.profile_set(station_id).profiles == before  # every field, times too
    assert restarted.effective_limit_w(station_id, 1, T0 + timedelta(hours=5)) == limit_before
    assert limit_before == 3700.0  # the recurring profile's evening period, under the max

    async def clear(server: CSMSServer) -> None:
        async with connected_station(server, version) as (shell, _station, _transport):
            max_id = next(p.profile_id for p in before
                          if p.purpose == "ChargingStationMaxProfile")
            assert (await shell.clear_charging_profile(profile_id=max_id))["status"] == "Accepted"

    run(clear, core=restarted)
    restarted.store.close()
    again = make_core(Store(db))
    assert [p.purpose for p in again.profile_set(station_id).profiles] == ["TxDefaultProfile"]
