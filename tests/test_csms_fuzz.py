"""Property-based fuzzing of the CSMS's frame path over a real websocket (hypothesis).

A CSMS server runs in a thread on 127.0.0.1; hypothesis generates frames of
every kind (text and binary garbage, JSON of the wrong shape, NaN and huge
integers, deep nesting, lone surrogates, CALLs of every OCPP action of the
version with random and mutated payloads) and sends them from one station while
another station sends Heartbeats. For every generated frame:

- a frame that is a CALL by OCPP-J's grammar gets exactly one answer with its
  message id (a CALLRESULT or a CALLERROR with a code OCPP-J names);
- a frame whose message id cannot be read gets a CALLERROR with id ``"-1"``
  or none at all, and a reply frame gets nothing;
- no handler raised (no ``handler_failed`` log record) and the server's error
  log stays empty;
- the good station's Heartbeat is never answered later than 1 s.

The expected answers come from OCPP-J's grammar written out here, not from the
server's own decoder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from evtwin.csms import CSMSConfig, CSMSCore, CSMSServer, EvseSpec, SiteSpec, StationSpec, Store
from evtwin.csms import iso as iso_ts

pytestmark = pytest.mark.slow

VERSIONS = ("ocpp1.6", "ocpp2.0.1", "ocpp2.1")
CODES = {
    "ocpp2.0.1": {"FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported",
                  "NotImplemented", "NotSupported", "OccurenceConstraintViolation",
                  "PropertyConstraintViolation", "ProtocolError", "RpcFrameworkError",
                  "SecurityError", "TypeConstraintViolation"},
    "ocpp1.6": {"NotImplemented", "NotSupported", "InternalError", "ProtocolError",
                "SecurityError", "FormationViolation", "PropertyConstraintViolation",
                "OccurenceConstraintViolation", "TypeConstraintViolation", "GenericError"},
}
CODES["ocpp2.1"] = (CODES["ocpp2.0.1"] - {"OccurenceConstraintViolation"}) | {
    "OccurrenceConstraintViolation"}

NOW = datetime.now(UTC).replace(microsecond=0)
STAMP = iso_ts(NOW - timedelta(minutes=5))

# Good payloads to mutate, per version (what a station sends most).
TEMPLATES: dict[str, dict[str, dict[str, Any]]] = {
    "ocpp2.0.1": {
        "TransactionEvent": {
            "eventType": "Started", "timestamp": STAMP, "triggerReason": "Authorized",
            "seqNo": 0, "transactionInfo": {"transactionId": "T1"},
            "evse": {"id": 1, "connectorId": 1}, "idToken": {"idToken": "TOKEN1",
                                                            "type": "ISO14443"},
            "meterValue": [{"timestamp": STAMP, "sampledValue": [
                {"value": 1000.0, "measurand": "Energy.Active.Import.Register",
                 "unitOfMeasure": {"unit": "Wh"}}]}]},
        "StatusNotification": {"timestamp": STAMP, "connectorStatus": "Occupied",
                               "evseId": 1, "connectorId": 1},
        "BootNotification": {"reason": "PowerUp",
                             "chargingStation": {"model": "m", "vendorName": "v"}},
        "MeterValues": {"evseId": 1, "meterValue": [{"timestamp": STAMP, "sampledValue": [
            {"value": 5.0}]}]},
        "Heartbeat": {},
    },
    "ocpp1.6": {
        "StartTransaction": {"connectorId": 1, "idTag": "TOKEN1", "meterStart": 100,
                             "timestamp": STAMP},
        "MeterValues": {"connectorId": 1, "transactionId": 1, "meterValue": [
            {"timestamp": STAMP, "sampledValue": [{"value": "1200", "unit": "Wh"}]}]},
        "StopTransaction": {"meterStop": 2000, "timestamp": STAMP, "transactionId": 1},
        "StatusNotification": {"connectorId": 1, "errorCode": "NoError",
                               "status": "Charging"},
        "BootNotification": {"chargePointVendor": "v", "chargePointModel": "m"},
        "Heartbeat": {},
    },
}
TEMPLATES["ocpp2.1"] = TEMPLATES["ocpp2.0.1"]

json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                           max_leaves=12)


def _mutate(payload: Any, path: list[Any], value: Any) -> Any:
    """``payload`` with the item at ``path`` (indices into its containers) replaced."""
    if not path or not isinstance(payload, dict | list) or not payload:
        return value
    if isinstance(payload, dict):
        keys = sorted(payload)
        key = keys[path[0] % len(keys)]
        return {**payload, key: _mutate(payload[key], path[1:], value)}
    i = path[0] % len(payload)
    return [*payload[:i], _mutate(payload[i], path[1:], value), *payload[i + 1:]]


@st.composite
def frames(draw: st.DrawFn, version: str) -> str | bytes:
    kind = draw(st.sampled_from(["call", "mutated", "shape", "text", "binary", "special"]))
    mid = draw(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=36))
    actions = sorted(TEMPLATES[version])
    if kind == "call":
        action = draw(st.sampled_from([*actions, "DataTransfer", "NotAnAction",
                                       "SetChargingProfile", "Reset"]))
        payload = draw(st.dictionaries(st.text(max_size=20), json_values, max_size=5))
        return json.dumps([2, mid, action, payload])
    if kind == "mutated":
        action = draw(st.sampled_from(actions))
        path = draw(st.lists(st.integers(0, 20), min_size=1, max_size=5))
        value = draw(json_values)
        return json.dumps([2, mid, action, _mutate(TEMPLATES[version][action], path, value)])
    if kind == "shape":
        return json.dumps(draw(st.lists(json_values, max_size=6)))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "binary":
        return draw(st.binary(max_size=200))
    special = draw(st.sampled_from([
        '[2, "%s", "Heartbeat", {"x": NaN}]', '[2, "%s", "Heartbeat", {"x": -Infinity}]',
        '[2, "%s", "Heartbeat", {"x": ' + "9" * 5000 + "}]",
        '[2, "%s", "Heartbeat", ' + "[" * 2000 + "]" * 2000 + "]",
        '[2, "%s", "Heartbeat", {"x": "\\udc00"}]', '[2.0, "%s", "Heartbeat", {}]',
        '[2, 17, "Heartbeat", {}]', '[3, "%s", {}]', '[4, "%s", "InternalError", "", {}]',
        '[5, "%s", "InternalError", "", {}]', '[6, "%s", "NotifyPeriodicEventStream", {}]',
        '[9, "%s"]', '[2, "%s", "Heartbeat"]', '[2, "%s", "Heartbeat", {}, 1]']))
    return special.replace("%s", json.dumps(mid)[1:-1]) if "%s" in special else special


def expected_answer(frame: str | bytes, version: str) -> str | None:
    """The message id OCPP-J says the CSMS must answer with, "" for "-1 or nothing",
    None for no answer at all."""
    if isinstance(frame, bytes):
        return ""
    try:
        msg = json.loads(frame)
    except (ValueError, RecursionError):
        # Valid grammar up to a bad value keeps its id; "" accepts either.
        return ""
    if not isinstance(msg, list) or len(msg) < 2 or not isinstance(msg[1], str) \
            or not 0 < len(msg[1]) <= 36:
        return ""
    if type(msg[0]) is int and msg[0] in (3, 4, 5, 6):
        return None if version == "ocpp2.1" or msg[0] in (3, 4) else msg[1]
    return msg[1]


class Harness:
    """A CSMS on 127.0.0.1 in a thread, its log records, a fuzzing and a good station."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.records: list[logging.LogRecord] = []
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        config = CSMSConfig(
            stations=tuple(StationSpec(sid, "site", (EvseSpec(1, 11_000.0),))
                           for sid in ("FUZZ", "GOOD")),
            sites=(SiteSpec("site", 20.0),), id_tokens=frozenset({"TOKEN1"}))
        core = CSMSCore(config, Store(":memory:"))
        async with CSMSServer(core, host="127.0.0.1", port=0) as server:
            self.port = server.port
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            self.ready.set()
            await self.stop.wait()
        core.store.close()

    def __enter__(self) -> Harness:
        handler = logging.Handler(logging.DEBUG)
        handler.emit = self.records.append  # type: ignore[method-assign]
        self._handler = handler
        logging.getLogger("evtwin").addHandler(handler)
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        logging.getLogger("evtwin").removeHandler(self._handler)

    def connect(self, identity: str) -> ClientConnection:
        return connect(f"ws://127.0.0.1:{self.port}/ocpp/{identity}",
                       subprotocols=[self.version],  # type: ignore[list-item]
                       open_timeout=10, max_size=2**20)


@pytest.fixture(params=VERSIONS)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    with Harness(request.param) as h:
        yield h


def _heartbeats(ws: ClientConnection, stop: threading.Event, latencies: list[float]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        sent = time.monotonic()
        ws.send(json.dumps([2, f"hb{n}", "Heartbeat", {}]))
        while True:
            reply = json.loads(ws.recv(timeout=5))
            if reply[1] == f"hb{n}":
                break
        latencies.append(time.monotonic() - sent)
        time.sleep(0.05)


def test_no_frame_goes_unanswered_or_breaks_a_handler(harness: Harness) -> None:
    version = harness.version
    latencies: list[float] = []
    stop = threading.Event()
    with harness.connect("FUZZ") as fuzz, harness.connect("GOOD") as good:
        beat = threading.Thread(target=_heartbeats, args=(good, stop, latencies), daemon=True)
        beat.start()
        sent = 0

        @settings(max_examples=400, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(frames(version))
        def check(frame: str | bytes) -> None:
            nonlocal sent
            sent += 1
            want = expected_answer(frame, version)
            fuzz.send(frame)
            # A probe after each frame: its answer must be the next frame unless the
            # fuzzed frame earned one first.
            probe = f"probe{sent}"
            fuzz.send(json.dumps([2, probe, "Heartbeat", {}]))
            got = []
            while True:  # everything up to the probe's answer (never out of step)
                reply = json.loads(fuzz.recv(timeout=5))
                if reply[:2] == [3, probe]:
                    break
                if reply[0] == 2:
                    # A call of the CSMS's own (after an accepted BootNotification it
                    # may ask the station things), not an answer; whether it comes
                    # before the probe's answer is timing.
                    continue
                got.append(reply)
            if want is None:
                assert got == [], (frame, "answered a frame that gets no answer", got)
                return
            if want == "":  # the id cannot be read by OCPP-J's grammar: "-1", or nothing
                assert len(got) <= 1, (frame, got)
            else:
                assert len(got) == 1 and got[0][1] == want, (frame, got)
            for reply in got:
                assert reply[0] in (3, 4), (frame, reply)
                if reply[0] == 4:
                    assert reply[2] in CODES[version], (frame, reply)
                if want == "":
                    assert reply[0] == 4, (frame, reply)

        check()
        stop.set()
        beat.join(10)
    failed = [r for r in harness.records if getattr(r, "event", None) == "handler_failed"
              or r.levelno >= logging.ERROR]
    assert not failed, [r.getMessage() for r in failed]
    assert sent >= 400
    assert latencies and max(latencies) < 1.0, max(latencies, default=math.nan)
