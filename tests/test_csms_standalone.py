"""The standalone CSMS (``evtwin csms serve``) as a separate process, over real sockets.

Per OCPP version: a full charging session whose CDR energy equals the metered
energy, with the CSMS killed (SIGKILL) and restarted mid-session on the same
database; and bad frames that get CALLERRORs while another station is served.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

SCALE = float(os.environ.get("EVTWIN_TEST_TIMEOUT_SCALE", "1"))
TIMEOUT_S = 20.0 * SCALE

CONFIG = """
[server]
max_frame_bytes = 4096
max_frames_per_s = 20
max_frames_burst = 50

[control]
strategy = "equal_share"
interval_s = 1

[ocpp]
heartbeat_interval_s = 60

[tariff]
energy_per_kwh = 0.40
session_fee = 1.0
currency = "EUR"

[[sites]]
name = "depot"
limit_kw = 7

[[stations]]
id = "CS1"
site = "depot"
evse_max_kw = [11, 11]

[[stations]]
id = "CS2"
site = "depot"

[tokens]
accepted = ["TAG1"]
"""

pytestmark = pytest.mark.slow


@dataclass
class ServerProcess:
    """A running ``evtwin csms serve``; ``logs`` fills from its stderr (JSON lines)."""

    proc: subprocess.Popen[str]
    logs: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    def url(self, station: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp/{station}"

    def event(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            for entry in list(self.logs):
                if entry.get("event") == name:
                    return entry
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.logs}")
            time.sleep(0.02)
        raise AssertionError(f"no {name!r} log event: {self.logs}")


@contextmanager
def csms_process(tmp_path: Path, config_file: Path | None = None, *, db: str | None = None,
                 port: int = 0) -> Iterator[ServerProcess]:
    """Run ``evtwin csms serve`` with its database in ``tmp_path`` (or ``db``, a URL)."""
    cfg = config_file or tmp_path / "csms.toml"
    if config_file is None:
        cfg.write_text(CONFIG)
    proc = subprocess.Popen(
        [sys.executable, "-m", "evtwin.sim.cli", "csms", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--db", db or str(tmp_path / "csms.sqlite"), "--config",
         str(cfg)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    server = ServerProcess(proc)

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                server.logs.append(json.loads(line))
            except ValueError:
                server.logs.append({"raw": line})

    threading.Thread(target=drain, daemon=True).start()
    try:
        server.port = int(server.event("listening")["port"])
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT_S)


class Station:
    """A raw OCPP-J station: sends CALLs, answers the CSMS's CALLs with Accepted."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received_calls: list[list[Any]] = []
        self._n = 0

    def _answer(self, frame: list[Any]) -> None:
        self.received_calls.append(frame)
        self.ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))

    def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        self._n += 1
        uid = f"m{self._n}"
        self.ws.send(json.dumps([2, uid, action, payload]))
        return self.reply_to(uid)

    def reply_to(self, uid: str) -> list[Any]:
        while True:
            frame = json.loads(self.ws.recv(timeout=TIMEOUT_S))
            if frame[0] == 2:
                self._answer(frame)
            elif frame[1] == uid:
                return list(frame)

    def raw(self, text: str) -> list[Any]:
        self.ws.send(text)
        while True:
            frame = json.loads(self.ws.recv(timeout=TIMEOUT_S))
            if frame[0] == 2:
                self._answer(frame)
            else:
                return list(frame)

    def wait_for_call(self, action: str, where: Any = None) -> list[Any]:
        """The first CALL ``action`` from the CSMS whose payload satisfies ``where``."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            for frame in self.received_calls:
                if frame[2] == action and (where is None or where(frame[3])):
                    return frame
            try:
                frame = json.loads(self.ws.recv(timeout=0.2))
            except TimeoutError:
                continue
            if frame[0] == 2:
                self._answer(frame)
        raise AssertionError(f"no {action} from the CSMS")


@contextmanager
def station(server: ServerProcess, name: str, protocol: str) -> Iterator[Station]:
    with connect(server.url(name), subprotocols=[protocol],  # type: ignore[list-item]
                 open_timeout=TIMEOUT_S) as ws:
        yield Station(ws)


# Timestamps on yesterday's date: the CSMS runs on the wall clock and refuses
# events far from its time.
_DAY = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")


def at(hh_mm: str) -> str:
    """An OCPP timestamp at ``hh_mm`` yesterday (UTC)."""
    return f"{_DAY}T{hh_mm}:00.000Z"


T0 = at("08:00")


def boot(st: Station, protocol: str) -> None:
    if protocol == "ocpp1.6":
        r = st.call("BootNotification", {"chargePointVendor": "t", "chargePointModel": "m"})
    else:
        r = st.call("BootNotification", {"chargingStation": {"vendorName": "t", "model": "m"},
                                         "reason": "PowerUp"})
    assert r[0] == 3 and r[2]["status"] == "Accepted", r


def energy(wh: float, ts: str, context: str, v16: bool) -> list[dict[str, Any]]:
    if v16:
        return [{"timestamp": ts, "sampledValue": [
            {"value": f"{wh}", "context": context, "measurand": "Energy.Active.Import.Register",
             "unit": "Wh"}]}]
    return [{"timestamp": ts, "sampledValue": [
        {"value": wh, "context": context, "measurand": "Energy.Active.Import.Register",
         "unitOfMeasure": {"unit": "Wh"}}]}]


def tx_event(kind: str, seq: int, wh: float, ts: str, extra: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "eventType": kind, "timestamp": ts, "seqNo": seq,
        "triggerReason": {"Started": "Authorized", "Updated": "MeterValuePeriodic",
                          "Ended": "EVDeparted"}[kind],
        "transactionInfo": {"transactionId": "TX-A"},
        "meterValue": energy(wh, ts, "Sample.Periodic", False)}
    if kind == "Started":
        payload["evse"] = {"id": 1, "connectorId": 1}
        payload["idToken"] = {"idToken": "TAG1", "type": "ISO14443"}
    if kind == "Ended":
        payload["transactionInfo"]["stoppedReason"] = "EVDisconnected"
    payload.update(extra or {})
    return payload


def limit_of(payload: dict[str, Any], tx_id: Any) -> float | None:
    """The limit (W) a SetChargingProfile sets for ``tx_id``, in either version's form."""
    profile = payload.get("chargingProfile") or payload.get("csChargingProfiles") or {}
    if str(profile.get("transactionId")) != str(tx_id):
        return None
    schedule = profile["chargingSchedule"]
    schedule = schedule[0] if isinstance(schedule, list) else schedule
    assert schedule["chargingRateUnit"] == "W"
    return float(schedule["chargingSchedulePeriod"][0]["limit"])


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"])
def test_session_survives_a_killed_csms_and_bills_the_metered_energy(
        tmp_path: Path, protocol: str) -> None:
    v16 = protocol == "ocpp1.6"
    tx_id: Any = "TX-A"
    with csms_process(tmp_path) as server, station(server, "CS1", protocol) as st:
        boot(st, protocol)
        if v16:
            st.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                           "status": "Preparing"})
            assert st.call("Authorize", {"idTag": "TAG1"})[2]["idTagInfo"]["status"] == "Accepted"
            r = st.call("StartTransaction", {"connectorId": 1, "idTag": "TAG1",
                                             "meterStart": 1000, "timestamp": T0})
            tx_id = r[2]["transactionId"]
            assert isinstance(tx_id, int)
            st.call("MeterValues", {"connectorId": 1, "transactionId": tx_id,
                                    "meterValue": energy(3000, at("08:30"),
                                                         "Sample.Periodic", True)})
        else:
            st.call("StatusNotification", {"timestamp": T0, "connectorStatus": "Occupied",
                                           "evseId": 1, "connectorId": 1})
            r = st.call("TransactionEvent", tx_event("Started", 0, 1000, T0))
            assert r[2]["idTokenInfo"]["status"] == "Accepted"
            st.call("TransactionEvent", tx_event("Updated", 1, 3000, at("08:30")))
        # The CSMS enforces the 7 kW site limit on the session.
        profile = st.wait_for_call("SetChargingProfile")
        server.proc.send_signal(signal.SIGKILL)  # no chance to flush anything
        server.proc.wait(timeout=TIMEOUT_S)
    assert limit_of(profile[3], tx_id) == 7000

    with csms_process(tmp_path) as server:
        assert server.event("listening")["open_transactions"] == 1
        with station(server, "CS1", protocol) as st:
            boot(st, protocol)
            if v16:
                st.call("MeterValues", {"connectorId": 1, "transactionId": tx_id,
                                        "meterValue": energy(6000, at("09:00"),
                                                             "Sample.Periodic", True)})
            else:
                st.call("TransactionEvent", tx_event("Updated", 2, 6000, at("09:00")))
            # After the restart the CSMS still knows the open session: a second
            # session on the site makes it halve the restored one's limit.
            if v16:
                r = st.call("StartTransaction", {"connectorId": 2, "idTag": "TAG1",
                                                 "meterStart": 0, "timestamp": T0})
                second = r[2]["transactionId"]
                assert second > tx_id  # transaction ids keep counting across restarts
            else:
                second = "TX-B"
                st.call("TransactionEvent", tx_event("Started", 0, 0, T0, {
                    "transactionInfo": {"transactionId": second},
                    "evse": {"id": 2, "connectorId": 1}}))
            halved = st.wait_for_call("SetChargingProfile", lambda p: limit_of(p, tx_id) == 3500)
            assert halved[1] != profile[1]
            if v16:
                r = st.call("StopTransaction", {"meterStop": 9000, "timestamp":
                                                at("09:30"), "transactionId": tx_id,
                                                "reason": "EVDisconnected"})
                assert r[0] == 3
            else:
                r = st.call("TransactionEvent", tx_event("Ended", 3, 9000,
                                                         at("09:30")))
                assert r[0] == 3
                # E06: the final cost comes back in the Ended answer.
                assert r[2]["totalCost"] == pytest.approx(1.0 + 0.40 * 8.0)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=TIMEOUT_S) == 0
        assert server.event("stopped")

    con = sqlite3.connect(tmp_path / "csms.sqlite")
    con.row_factory = sqlite3.Row
    cdr = dict(con.execute("SELECT * FROM cdrs WHERE transaction_id=?", (str(tx_id),)).fetchone())
    tx = dict(con.execute("SELECT * FROM transactions WHERE transaction_id=?",
                          (str(tx_id),)).fetchone())
    kinds = [r[0] for r in con.execute(
        "SELECT event_type FROM transaction_events WHERE transaction_id=? ORDER BY seq_no",
        (str(tx_id),))]
    readings = [r[0] for r in con.execute(
        "SELECT value FROM meter_values WHERE transaction_id=? AND "
        "measurand='Energy.Active.Import.Register' ORDER BY timestamp", (str(tx_id),))]
    con.close()
    assert kinds == ["Started", "Updated", "Updated", "Ended"]
    assert readings == [1000, 3000, 6000, 9000]  # nothing committed before the kill was lost
    assert tx["meter_stop_wh"] - tx["meter_start_wh"] == 8000
    assert cdr["energy_wh"] == pytest.approx(8000)
    assert cdr["duration_s"] == pytest.approx(5400)
    assert cdr["cost"] == pytest.approx(1.0 + 0.40 * 8.0)
    assert cdr["currency"] == "EUR"


BAD_FRAMES: dict[str, list[tuple[str, str]]] = {
    # (frame, expected CALLERROR code)
    "ocpp2.0.1": [
        ("not json", "RpcFrameworkError"),
        ('{"a": 1}', "RpcFrameworkError"),
        ('[7, "x1", {}]', "MessageTypeNotSupported"),
        ('[2, "x2", "FooBar", {}]', "NotImplemented"),
        ('[2, "x3", "Reset", {"type": "Immediate"}]', "NotSupported"),  # a CSMS-to-station action
        ('[2, "x4", "Heartbeat", {"surprise": 1}]', "FormatViolation"),
        ('[2, "x5", "BootNotification", {"reason": "PowerUp"}]', "OccurenceConstraintViolation"),
        ('[2, "x6", "StatusNotification", {"timestamp": 5, "connectorStatus": "Occupied", '
         '"evseId": 1, "connectorId": 1}]', "TypeConstraintViolation"),
    ],
    "ocpp2.1": [
        ('[2, "z1", "BootNotification", {"reason": "PowerUp"}]', "OccurrenceConstraintViolation"),
        ('[2, "z2", "FooBar", {}]', "NotImplemented"),
    ],
    "ocpp1.6": [
        ("not json", "FormationViolation"),
        ('[2, "y0", "BootNotification", {"chargePointVendor": "v"}]',
         "OccurenceConstraintViolation"),
        ('[2, "y1", "FooBar", {}]', "NotImplemented"),
        ('[2, "y2", "Heartbeat", {"surprise": 1}]', "FormationViolation"),
        ('[2, "y3", "StatusNotification", {"connectorId": "one", "errorCode": "NoError", '
         '"status": "Available"}]', "TypeConstraintViolation"),
    ],
}


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"])
def test_bad_frames_get_the_spec_callerror_and_others_are_served(
        tmp_path: Path, protocol: str) -> None:
    with (csms_process(tmp_path) as server, station(server, "CS1", protocol) as noisy,
          station(server, "CS2", protocol) as quiet):
        boot(quiet, protocol)
        codes = {}
        for frame, _expected in BAD_FRAMES[protocol]:
            reply = noisy.raw(frame)
            assert reply[0] == 4, (frame, reply)
            codes[frame] = reply[2]
            assert quiet.call("Heartbeat", {})[0] == 3  # the other station is unaffected
        assert codes == dict(BAD_FRAMES[protocol])
        # A CALLRESULT for a message id the CSMS never sent is dropped, not queued.
        noisy.ws.send(json.dumps([3, "never-sent", {}]))
        boot(noisy, protocol)  # and the noisy one's connection still works
        assert server.proc.poll() is None


def test_flood_and_oversized_frames_close_only_that_connection(tmp_path: Path) -> None:
    from websockets.exceptions import ConnectionClosed

    with (csms_process(tmp_path) as server, station(server, "CS1", "ocpp2.0.1") as flood,
          station(server, "CS2", "ocpp2.0.1") as quiet):
        boot(quiet, "ocpp2.0.1")
        heartbeat = json.dumps([2, "f", "Heartbeat", {}])
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(500):
                flood.ws.send(heartbeat)
            while True:
                flood.ws.recv(timeout=TIMEOUT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert quiet.call("Heartbeat", {})[0] == 3
        with station(server, "CS1", "ocpp2.0.1") as big:
            with pytest.raises(ConnectionClosed) as too_big:
                big.ws.send(json.dumps([2, "big", "Heartbeat", {"x": "y" * 5000}]))
                big.ws.recv(timeout=TIMEOUT_S)
            assert too_big.value.rcvd is not None and too_big.value.rcvd.code == 1009
        assert quiet.call("Heartbeat", {})[0] == 3
    con = sqlite3.connect(tmp_path / "csms.sqlite")
    kinds = [r[0] for r in con.execute("SELECT kind FROM security_events")]
    con.close()
    assert "flood" in kinds
