"""One live transaction per EVSE, over a real websocket to ``evtwin csms serve`` in its
own process: a station reboots mid-session (its Ended is never sent) and starts a new
transaction on the same EVSE; the CSMS ends the ghost, and the site's whole limit and
the TxProfile go to the live transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_csms_standalone import at, boot, csms_process, energy, limit_of, station, tx_event

pytestmark = pytest.mark.slow


def _start(st: Any, protocol: str, tx: str, meter_wh: int, ts: str) -> Any:
    if protocol == "ocpp1.6":
        r = st.call("StartTransaction", {"connectorId": 1, "idTag": "TAG1",
                                         "meterStart": meter_wh, "timestamp": ts})
        return r[2]["transactionId"]
    r = st.call("TransactionEvent", tx_event("Started", 0, meter_wh, ts,
                                             {"transactionInfo": {"transactionId": tx}}))
    assert r[0] == 3, r
    return tx


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
def test_a_reboot_mid_session_leaves_one_open_transaction_with_the_whole_limit(
        tmp_path: Path, protocol: str) -> None:
    v16 = protocol == "ocpp1.6"
    with csms_process(tmp_path) as server:
        with station(server, "CS1", protocol) as st:
            boot(st, protocol)
            old = _start(st, protocol, "TX-OLD", 1000, at("08:00"))
            if v16:
                st.call("MeterValues", {"connectorId": 1, "transactionId": old,
                                        "meterValue": energy(3000, at("08:30"),
                                                             "Sample.Periodic", True)})
            else:
                st.call("TransactionEvent", tx_event(
                    "Updated", 1, 3000, at("08:30"), {"transactionInfo": {"transactionId": old}}))
            st.wait_for_call("SetChargingProfile", lambda p: limit_of(p, old) == 7000)
        # The station reboots (power loss): its Ended for the old session is lost.
        with station(server, "CS1", protocol) as st:
            boot(st, protocol)
            new = _start(st, protocol, "TX-NEW", 3100, at("09:00"))
            assert new != old
            # The whole 7 kW site limit goes to the live transaction: the ghost holds no share.
            st.wait_for_call("SetChargingProfile", lambda p: limit_of(p, new) == 7000)
    db = sqlite3.connect(tmp_path / "csms.sqlite")
    try:
        open_tx = [r[0] for r in db.execute(
            "SELECT transaction_id FROM transactions WHERE ended_at IS NULL")]
        ghost = db.execute("SELECT ended_at, stopped_reason FROM transactions "
                           "WHERE transaction_id = ?", (str(old),)).fetchone()
        cdr = db.execute("SELECT energy_wh FROM cdrs WHERE transaction_id = ?",
                         (str(old),)).fetchone()
    finally:
        db.close()
    assert open_tx == [str(new)]
    assert ghost == (at("08:30"), "Other")
    assert cdr is not None and cdr[0] == pytest.approx(2000.0)
