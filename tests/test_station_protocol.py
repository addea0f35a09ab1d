"""The virtual station's OCPP behaviour as a state machine, its wire codecs, and the
thin links that drive it.

The codecs are checked against the OCPP specification's own JSON schemas (the
OCA's files, as the ``ocpp`` library ships them) for every message a station
sends in every version; the state machine against the message sequences the
specification's use cases describe (E01/E02 in 2.0.1, §4/§5 of 1.6).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import mesa
import numpy as np
import pytest

from evtwin.agents import EV, Vehicle, VirtualStation, Visit
from evtwin.agents.exceptions import ProtocolError
from evtwin.agents.link import DirectLink, EndpointLink
from evtwin.agents.protocol import StationProtocol
from evtwin.agents.wire import codec
from evtwin.ocppj import CallReceived, Endpoint, schemas
from evtwin.ocppj import domain as d
from evtwin.transports import memory_pair

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _station(*, bidirectional: bool = False, token: str = "TOK1",
             states_needs: bool = True) -> tuple[VirtualStation, EV]:
    model = mesa.Model(rng=np.random.default_rng(0))
    st = VirtualStation(model, "CS1", "site", [11_000.0, 11_000.0])
    vehicle = Vehicle(capacity_kwh=60.0, max_power_kw=11.0, phases=3,
                      bidirectional=bidirectional, max_discharge_kw=7.0 if bidirectional else 0)
    visit = Visit(0.0, 36_000.0, 0.3, 0.9, 900.0)
    ev = EV(model, "EV1", "site", vehicle, [visit], id_token=token)
    ev.begin_visit(visit)
    ev.states_needs = states_needs
    return st, ev


def _protocol(st: VirtualStation, version: str, clock: list[float]) -> StationProtocol:
    return StationProtocol(st, version, to_datetime=lambda s: START + timedelta(seconds=s),
                           to_seconds=lambda t: (t - START).total_seconds(),
                           now_s=lambda: clock[0])


class ScriptedCSMS:
    """Answers as a CSMS would, with a few knobs; records every message."""

    def __init__(self, version: str, *, token_ok: bool = True) -> None:
        self.version = version
        self.token_ok = token_ok
        self.seen: list[d.StationMessage] = []
        self.refuse: type | None = None
        self.next_tx = 41

    def __call__(self, m: d.StationMessage) -> Any:
        self.seen.append(m)
        if self.refuse is not None and isinstance(m, self.refuse):
            raise d.Refusal("PropertyConstraintViolation", "scripted refusal")
        if isinstance(m, d.Boot):
            return d.BootAnswer("Accepted", 300)
        if isinstance(m, d.AuthorizeRequest):
            return d.AuthorizeAnswer("Accepted" if self.token_ok else "Invalid")
        if isinstance(m, d.TransactionStarted):
            self.next_tx += 1
            return d.TransactionAnswer("Accepted",
                                       str(self.next_tx) if self.version == "1.6" else None)
        if isinstance(m, d.TransactionEnded | d.TransactionUpdated):
            return d.TransactionAnswer()
        return d.Ack()


def _session(version: str, **kw: Any) -> tuple[StationProtocol, ScriptedCSMS, VirtualStation]:
    """Boot, plug at 60 s, a periodic sample and a clock-aligned reading at 900 s,
    unplug at 1800 s: everything a station sends in a session, exchanged directly."""
    st, ev = _station(bidirectional=version == "2.1")
    clock = [0.0]
    proto = _protocol(st, version, clock)
    csms = ScriptedCSMS(version, **kw)
    link = DirectLink(proto, csms)
    proto.boot()
    link.drain()
    clock[0] = 60.0
    st.plug(1, ev, 60.0)
    proto.queue_due(60.0, sample=False, aligned=False, heartbeat=False)
    link.drain()
    clock[0] = 900.0
    st.advance(900.0, 840.0)
    proto.queue_due(900.0, sample=True, aligned=True, heartbeat=True)
    link.drain()
    clock[0] = 1800.0
    st.unplug(1, 1800.0)
    proto.queue_due(1800.0, sample=False, aligned=False, heartbeat=False)
    link.drain()
    assert proto.idle
    return proto, csms, st


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_every_message_of_a_session_passes_the_specifications_schema(version: str) -> None:
    _, csms, _ = _session(version)
    c = codec(version)
    actions = []
    for m in csms.seen:
        action, payload = c.encode(m)
        schemas.validate(version, action, payload, request=True)
        actions.append(action)
    expected = {"1.6": {"BootNotification", "StatusNotification", "Authorize",
                        "StartTransaction", "MeterValues", "Heartbeat", "StopTransaction"},
                "2.0.1": {"BootNotification", "StatusNotification", "Authorize",
                          "TransactionEvent", "NotifyEVChargingNeeds", "MeterValues",
                          "Heartbeat"}}
    assert set(actions) == expected["2.0.1" if version == "2.1" else version]


def test_a_2x_session_follows_the_use_case_sequence() -> None:
    """2.0.1 E02 (cable plugged in first): Occupied, Authorize, Started, the EV's needs;
    Updated with seqNo counting on; Ended; Available."""
    _, csms, st = _session("2.0.1")
    kinds = [type(m).__name__ for m in csms.seen]
    assert kinds[:3] == ["Boot", "StatusChanged", "StatusChanged"]
    session = kinds[3:]
    assert session[:4] == ["StatusChanged", "AuthorizeRequest", "TransactionStarted",
                           "ChargingNeeds"]
    assert session[-2:] == ["TransactionEnded", "StatusChanged"]
    started = next(m for m in csms.seen if isinstance(m, d.TransactionStarted))
    updated = next(m for m in csms.seen if isinstance(m, d.TransactionUpdated))
    ended = next(m for m in csms.seen if isinstance(m, d.TransactionEnded))
    assert started.transaction_id == updated.transaction_id == ended.transaction_id
    assert (updated.seq_no, ended.seq_no) == (1, 2)
    assert updated.charging_state == "Charging" and updated.reading.power_w == 11_000.0
    assert ended.reading.register_wh == pytest.approx(11_000.0 * 1740 / 3600, rel=1e-6)
    statuses = [m.status for m in csms.seen if isinstance(m, d.StatusChanged)]
    assert statuses[2:] == ["Occupied", "Available"]
    # The clock-aligned reading is for the free EVSE only.
    assert [m.evse_id for m in csms.seen if isinstance(m, d.MeterReport)] == [2]
    assert st.evses[1].transaction_id is None


def test_a_16_session_takes_the_csms_transaction_id() -> None:
    proto, csms, _ = _session("1.6")
    started = next(m for m in csms.seen if isinstance(m, d.TransactionStarted))
    updated = next(m for m in csms.seen if isinstance(m, d.TransactionUpdated))
    ended = next(m for m in csms.seen if isinstance(m, d.TransactionEnded))
    assert started.transaction_id.startswith("CS1-1-")  # the station's own
    assert updated.transaction_id == ended.transaction_id == "42"  # the CSMS's
    assert updated.seq_no is None and ended.seq_no is None
    assert started.reading.register_wh == 0.0 and float(started.reading.register_wh).is_integer()
    statuses = [m.status for m in csms.seen if isinstance(m, d.StatusChanged)]
    assert statuses == ["Available", "Available", "Preparing", "Charging", "Available"]
    assert not any(isinstance(m, d.ChargingNeeds) for m in csms.seen)  # no ISO 15118 in 1.6
    assert proto.calls_sent == len(csms.seen)


def test_only_21_states_bidirectional_needs() -> None:
    _, csms, _ = _session("2.1")
    needs = next(m for m in csms.seen if isinstance(m, d.ChargingNeeds))
    assert needs.energy_transfer == "AC_BPT" and needs.v2x is not None
    assert needs.v2x.max_discharge_w == 7000
    _action, payload = codec("2.1").encode(needs)
    assert payload["chargingNeeds"]["v2xChargingParameters"]["targetSoC"] == 90


def test_a_refused_token_starts_no_transaction() -> None:
    _, csms, st = _session("2.0.1", token_ok=False)
    assert not any(isinstance(m, d.TransactionStarted | d.TransactionUpdated
                              | d.TransactionEnded) for m in csms.seen)
    assert st.rejected and st.evses[1].register_wh == 0.0


def test_a_refused_report_is_counted_a_refused_transaction_is_fatal() -> None:
    st, ev = _station()
    clock = [0.0]
    proto = _protocol(st, "2.0.1", clock)
    csms = ScriptedCSMS("2.0.1")
    csms.refuse = d.StatusChanged
    link = DirectLink(proto, csms)
    proto.boot()
    link.drain()
    assert proto.call_errors == 2 and proto.idle  # both EVSEs' statuses refused, boot went on
    csms.refuse = d.TransactionStarted
    st.plug(1, ev, 0.0)
    proto.queue_events(0.0)
    with pytest.raises(ProtocolError, match="TransactionStarted refused: "
                                            "PropertyConstraintViolation"):
        link.drain()


def test_events_are_sent_in_the_order_they_happened() -> None:
    """A plug-in and the departure queued before either was exchanged: the departure's
    messages wait for the whole start chain (Authorize's answer decides it)."""
    st, ev = _station(states_needs=False)
    proto = _protocol(st, "2.0.1", [10.0])
    csms = ScriptedCSMS("2.0.1")
    st.plug(1, ev, 5.0)
    st.unplug(1, 10.0)
    proto.queue_events(10.0)
    DirectLink(proto, csms).drain()
    assert [type(m).__name__ for m in csms.seen] == [
        "StatusChanged", "AuthorizeRequest", "TransactionStarted", "TransactionEnded",
        "StatusChanged"]


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_profiles_from_the_wire_are_applied_and_answered_in_schema(version: str) -> None:
    st, _ev = _station()
    clock = [0.0]
    proto = _protocol(st, version, clock)
    c = codec(version)
    if version == "1.6":
        request = {"connectorId": 0, "csChargingProfiles": {
            "chargingProfileId": 7, "stackLevel": 1,
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": {
                "chargingRateUnit": "W", "startSchedule": "2026-06-01T12:00:00.000Z",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 4000.0}]}}}
    else:
        request = {"evseId": 0, "chargingProfile": {
            "id": 7, "stackLevel": 1, "chargingProfilePurpose": "ChargingStationMaxProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": [{
                "id": 1, "chargingRateUnit": "W", "startSchedule": "2026-06-01T12:00:00.000Z",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 4000.0}]}]}}
    schemas.validate(version, "SetChargingProfile", request, request=True)
    answer = proto.handle(c.decode_request("SetChargingProfile", request))
    payload = c.encode_answer(answer)
    schemas.validate(version, "SetChargingProfile", payload, request=False)
    assert payload["status"] == "Accepted"
    assert st.station_cap_w(0.0, 3) == 4000.0
    # A TxProfile for a transaction the station does not have is rejected, with why (2.x).
    if version != "1.6":
        bad = {"evseId": 1, "chargingProfile": {**request["chargingProfile"], "id": 8,
                                                "chargingProfilePurpose": "TxProfile",
                                                "transactionId": "nope"}}
        payload = c.encode_answer(proto.handle(c.decode_request("SetChargingProfile", bad)))
        schemas.validate(version, "SetChargingProfile", payload, request=False)
        assert payload["status"] == "Rejected"
        assert "transaction" in payload["statusInfo"]["additionalInfo"]
    clear = ({"id": 7} if version == "1.6" else {"chargingProfileId": 7})
    payload = c.encode_answer(proto.handle(c.decode_request("ClearChargingProfile", clear)))
    assert payload == {"status": "Accepted"} and st.station_cap_w(0.0, 3) is None
    assert next(p["status"] for p in proto.received_profiles) == "Accepted"


def test_the_endpoint_link_times_out_and_answers_what_it_does_not_support() -> None:
    """Over a pipe to a CSMS endpoint that never answers the boot: the flush fails after
    the response timeout; a CALL the station does not handle gets NotSupported."""
    async def main() -> None:
        st, _ = _station()
        proto = _protocol(st, "2.0.1", [0.0])
        station_end, csms_end = memory_pair("CS1", "ocpp2.0.1")
        link = EndpointLink(proto, station_end, response_timeout_s=0.05)
        reader = asyncio.create_task(link.run())
        csms = Endpoint("2.0.1", clock=asyncio.get_running_loop().time)
        csms.call("Reset", {"type": "Immediate"})
        for frame in csms.data_to_send():
            await csms_end.send(frame)
        with pytest.raises(ProtocolError, match=r"no answer to BootNotification within 0\.05 s"):
            await link.boot()
        events = []
        while len(events) < 2:
            events += csms.receive(await csms_end.recv())
        boot = [e for e in events if isinstance(e, CallReceived)]
        assert boot and boot[0].action == "BootNotification"
        errors = [e for e in events if type(e).__name__ == "ErrorReceived"]
        assert errors and errors[0].code == "NotSupported"
        reader.cancel()

    asyncio.run(main())


def test_the_direct_shell_refuses_what_the_wire_shell_refuses(tmp_path: Any) -> None:
    from evtwin.csms import CSMSConfig, CSMSCore, EvseSpec, StationSpec, Store
    from evtwin.csms.direct import DirectShell

    store = Store(str(tmp_path / "c.sqlite"))
    core = CSMSCore(CSMSConfig(stations=(StationSpec("CS1", "site", (EvseSpec(1, 11e3),)),),
                               id_tokens=frozenset({"TOK1"})), store, clock=lambda: START)
    shell = DirectShell("CS1", core, "2.0.1")
    assert shell.handle(d.Boot("v", "m")).status == "Accepted"
    with pytest.raises(d.Refusal) as refused:
        shell.handle(d.StatusChanged(9, "Available", START))
    assert refused.value.code == "PropertyConstraintViolation"
    assert shell.handle(d.AuthorizeRequest("nobody")).status == "Invalid"
    reading = d.Reading(START, "Transaction.Begin", 100.0)
    answer = shell.handle(d.TransactionStarted(1, "T1", START, "TOK1", reading))
    assert answer.id_token_status == "Accepted"
    assert [s.transaction_id for s in core.open_sessions()] == ["T1"]
    assert shell.frames == {"in": 4, "out": 4}
    store.close()


def _core(tmp_path: Any) -> Any:
    from evtwin.csms import CSMSConfig, CSMSCore, EvseSpec, StationSpec, Store

    store = Store(str(tmp_path / "c.sqlite"))
    return CSMSCore(CSMSConfig(stations=(StationSpec("CS1", "site", (EvseSpec(1, 11e3),)),),
                               id_tokens=frozenset({"TOK1"})), store, clock=lambda: START)


def test_a_batch_commits_once_and_undoes_a_failed_write_alone(tmp_path: Any) -> None:
    import sqlite3

    core = _core(tmp_path)
    store = core.store
    other = sqlite3.connect(tmp_path / "c.sqlite")  # a reader sees only committed data

    def status() -> str:
        return str(other.execute("SELECT status FROM evses WHERE station_id='CS1'").fetchone()[0])

    before = status()
    with core.batch():
        store.record_status("CS1", 1, "Occupied", "2026-06-01T12:00:00.000Z")
        assert status() == before  # not committed yet
        with pytest.raises(sqlite3.IntegrityError), store._tx():
            store._run("UPDATE evses SET status='Faulted' WHERE station_id='CS1'")
            store._run("INSERT INTO evses(station_id, evse_id) VALUES ('nobody', 1)")
        # Inside the batch: the failed write is undone, the one before it kept.
        assert store._run("SELECT status FROM evses WHERE station_id='CS1'"
                          ).fetchone()[0] == "Occupied"
        store.record_status("CS1", 1, "Charging", "2026-06-01T12:00:01.000Z")
    assert status() == "Charging"  # committed at the end
    with pytest.raises(RuntimeError), core.batch():
        store.record_status("CS1", 1, "Available", "2026-06-01T12:00:02.000Z")
        raise RuntimeError("the step failed")
    assert status() == "Charging"  # a failed batch leaves nothing behind
    other.close()
    store.close()


def test_an_unexpected_failure_in_the_direct_shell_is_an_internal_error(tmp_path: Any) -> None:
    from evtwin.csms.direct import DirectShell

    core = _core(tmp_path)
    shell = DirectShell("CS1", core, "2.0.1")
    core.store.close()  # every write now fails inside the core
    with pytest.raises(d.Refusal) as refused:
        shell.handle(d.StatusChanged(1, "Available", START))
    assert refused.value.code == "InternalError"
