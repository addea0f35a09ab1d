"""Bills survive retries and hostile input: the CSMS as its own process (``csms serve``).

Per OCPP version: a re-sent Ended/StopTransaction after ``kill -9`` and a
restart leaves the charge detail record as it was; an event the CSMS refused
changes nothing, so its corrected re-send is stored; a far-future, offset-less,
NaN or out-of-range event gets the CALLERROR the spec names and every other
site keeps getting its limits; over 1.6 a re-sent StartTransaction gets the
transaction it opened, not a second one, and a re-sent MeterValues is stored once.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.test_csms_standalone import (
    TIMEOUT_S,
    Station,
    at,
    boot,
    csms_process,
    energy,
    limit_of,
    station,
    tx_event,
)

pytestmark = pytest.mark.slow

T0 = at("08:00")
T1 = at("08:30")
T2 = at("09:30")

CONFIG = """
[control]
strategy = "equal_share"
interval_s = 1

[[sites]]
name = "north"
limit_kw = 7

[[sites]]
name = "south"
limit_kw = 5

[[stations]]
id = "CS1"
site = "north"
evse_max_kw = [11, 11]

[[stations]]
id = "CS2"
site = "south"

[tokens]
accepted = ["TAG1"]
"""


def _db(tmp_path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(tmp_path / "csms.sqlite")
    con.row_factory = sqlite3.Row
    return con


def _cdrs(tmp_path: Path) -> list[dict[str, Any]]:
    con = _db(tmp_path)
    try:
        return [dict(r) for r in con.execute("SELECT * FROM cdrs ORDER BY transaction_id")]
    finally:
        con.close()


def _start(st: Station, v16: bool) -> Any:
    if v16:
        r = st.call("StartTransaction", {"connectorId": 1, "idTag": "TAG1",
                                         "meterStart": 1000, "timestamp": T0})
        return r[2]["transactionId"]
    r = st.call("TransactionEvent", tx_event("Started", 0, 1000, T0))
    assert r[0] == 3, r
    return "TX-A"


def _stop(v16: bool, tx_id: Any, wh: float) -> tuple[str, dict[str, Any]]:
    if v16:
        return "StopTransaction", {"meterStop": int(wh), "timestamp": T2,
                                   "transactionId": tx_id, "reason": "EVDisconnected"}
    return "TransactionEvent", tx_event("Ended", 2, wh, T2)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "csms.toml"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"])
def test_resent_end_after_kill_and_restart_leaves_the_cdr(tmp_path: Path, config: Path,
                                                          protocol: str) -> None:
    v16 = protocol == "ocpp1.6"
    with csms_process(tmp_path, config) as server, station(server, "CS1", protocol) as st:
        boot(st, protocol)
        tx_id = _start(st, v16)
        if v16:
            st.call("MeterValues", {"connectorId": 1, "transactionId": tx_id,
                                    "meterValue": energy(4000, T1, "Sample.Periodic", True)})
        else:
            st.call("TransactionEvent", tx_event("Updated", 1, 4000, T1))
        action, stop = _stop(v16, tx_id, 9000)
        assert st.call(action, stop)[0] == 3
        # The CALLRESULT is "lost": the CSMS dies before the station sees it.
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=TIMEOUT_S)
    (before,) = _cdrs(tmp_path)
    assert before["energy_wh"] == pytest.approx(8000)

    with csms_process(tmp_path, config) as server, station(server, "CS1", protocol) as st:
        boot(st, protocol)
        for _ in range(2):  # the station's retry, twice for good measure
            r = st.call(action, stop)
            assert r[0] == 3, r
    after = _cdrs(tmp_path)
    assert after == [before]
    con = _db(tmp_path)
    try:
        events = con.execute("SELECT COUNT(*) FROM transaction_events WHERE transaction_id=?",
                             (str(tx_id),)).fetchone()[0]
        readings = con.execute(
            "SELECT COUNT(*) FROM meter_values WHERE transaction_id=?", (str(tx_id),)
        ).fetchone()[0]
    finally:
        con.close()
    assert events == 3  # Started, Updated, Ended: the re-sends added nothing
    assert readings == 3


BAD_EVENTS = [
    # (what is wrong, the change to a good Updated event, expected code)
    ("far future", {"timestamp": "9999-12-31T23:59:59Z"}, "PropertyConstraintViolation"),
    ("no offset", {"timestamp": at("08:40").removesuffix(".000Z")}, "FormatViolation"),
    ("not a date", {"timestamp": at("08:40")[:5] + "02-31" + at("08:40")[10:]},
     "FormatViolation"),
    ("huge seqNo", {"seqNo": 2**63 + 5}, "FormatViolation"),
    ("seqNo over int32", {"seqNo": 2**40}, "PropertyConstraintViolation"),
]


@pytest.mark.parametrize("protocol", ["ocpp2.0.1", "ocpp2.1"])
def test_refused_events_change_nothing_and_every_site_keeps_its_limits(
        tmp_path: Path, config: Path, protocol: str) -> None:
    import json

    with (csms_process(tmp_path, config) as server, station(server, "CS1", protocol) as north,
          station(server, "CS2", protocol) as south):
        boot(north, protocol)
        boot(south, protocol)
        _start(north, False)
        for what, change, code in BAD_EVENTS:
            payload = tx_event("Updated", 1, 5000, at("08:40"))
            payload.update(change)
            reply = north.raw(json.dumps([2, f"bad-{what}", "TransactionEvent", payload]))
            assert reply[:3] == [4, f"bad-{what}", code], (what, reply)
        # NaN is not JSON: the frame's own id, FormatViolation.
        nan = json.dumps([2, "bad-nan", "TransactionEvent",
                          tx_event("Updated", 1, 5000, at("08:40"))])
        nan = nan.replace("5000", "NaN")
        assert north.raw(nan)[:3] == [4, "bad-nan", "FormatViolation"]
        # A far-future Started on the other site is refused: it cannot disable control.
        future = tx_event("Started", 0, 0, "9999-12-31T23:59:59Z",
                          {"transactionInfo": {"transactionId": "TX-F"}})
        r = south.call("TransactionEvent", future)
        assert r[2] == "PropertyConstraintViolation"
        # The corrected re-sends (same seqNo 1) are stored and applied.
        assert north.call("TransactionEvent",
                          tx_event("Updated", 1, 5000, at("08:40")))[0] == 3
        south_tx = tx_event("Started", 0, 0, T0, {"transactionInfo": {"transactionId": "TX-S"}})
        assert south.call("TransactionEvent", south_tx)[0] == 3
        # Both sites get their limits: 7 kW north, 5 kW south.
        assert north.wait_for_call("SetChargingProfile", lambda p: limit_of(p, "TX-A") == 7000)
        assert south.wait_for_call("SetChargingProfile", lambda p: limit_of(p, "TX-S") == 5000)
        assert server.proc.poll() is None
    con = _db(tmp_path)
    try:
        seqs = [r[0] for r in con.execute(
            "SELECT seq_no FROM transaction_events WHERE transaction_id='TX-A' ORDER BY seq_no")]
        values = [r[0] for r in con.execute(
            "SELECT value FROM meter_values WHERE transaction_id='TX-A' ORDER BY timestamp")]
        ghosts = con.execute("SELECT COUNT(*) FROM transactions WHERE transaction_id='TX-F'"
                             ).fetchone()[0]
    finally:
        con.close()
    assert seqs == [0, 1]
    assert values == [1000, 5000]
    assert ghosts == 0


def test_16_resent_start_and_meter_values_are_applied_once(tmp_path: Path,
                                                          config: Path) -> None:
    with csms_process(tmp_path, config) as server, station(server, "CS1", "ocpp1.6") as st:
        boot(st, "ocpp1.6")
        first = _start(st, True)
        again = _start(st, True)  # the answer was lost; the station sends it again
        assert again == first
        meter = {"connectorId": 1, "transactionId": first,
                 "meterValue": energy(4000, T1, "Sample.Periodic", True)}
        for _ in range(3):
            assert st.call("MeterValues", meter)[0] == 3
        # A value that is not a number is refused, and changes nothing.
        bad = {"connectorId": 1, "transactionId": first,
               "meterValue": energy(5000, T1, "Sample.Periodic", True)}
        bad["meterValue"][0]["sampledValue"][0]["value"] = "12abc"
        r = st.call("MeterValues", bad)
        assert r[:3][0] == 4 and r[2] == "PropertyConstraintViolation", r
        action, stop = _stop(True, first, 9000)
        assert st.call(action, stop)[0] == 3
        assert st.call(action, stop)[0] == 3
    con = _db(tmp_path)
    try:
        txs = con.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]
        open_txs = con.execute("SELECT COUNT(*) FROM transactions WHERE ended_at IS NULL"
                               ).fetchone()[0]
        readings = [r[0] for r in con.execute(
            "SELECT value FROM meter_values ORDER BY timestamp, rowid")]
    finally:
        con.close()
    assert (txs, open_txs) == (1, 0)
    assert readings == [1000, 4000, 9000]
    (cdr,) = _cdrs(tmp_path)
    assert cdr["energy_wh"] == pytest.approx(8000)
