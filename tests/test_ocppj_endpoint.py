"""The Sans-I/O OCPP-J endpoint (evtwin.ocppj.endpoint): frames in, events and
frames out, time from a clock we pass in. Payloads are checked against the OCPP
specifications' own JSON schemas (as shipped in the ``ocpp`` package), and
error codes against OCPP-J 2.0.1 section 4.3 and 1.6-J section 4.2.3."""

from __future__ import annotations

import json
from typing import Any

import pytest

from evtwin.ocppj.endpoint import (
    CallReceived,
    Endpoint,
    EndpointClosed,
    ErrorReceived,
    Pipe,
    Refused,
    ResultErrorReceived,
    ResultInvalid,
    ResultReceived,
    SendReceived,
    TimedOut,
)
from evtwin.ocppj.schemas import SchemaViolation


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


BOOT_201 = {"reason": "PowerUp",
            "chargingStation": {"model": "M1", "vendorName": "evtwin"}}
BOOT_201_ANSWER = {"currentTime": "2026-12-02T08:00:00Z", "interval": 300,
                   "status": "Accepted"}


def pair(version: str = "2.0.1", **kw: Any) -> tuple[Endpoint, Endpoint, Clock]:
    clock = Clock()
    return (Endpoint(version, clock=clock, id_prefix="s", **kw),
            Endpoint(version, clock=clock, id_prefix="c", **kw), clock)


def test_a_call_and_its_result_cross_a_pipe() -> None:
    station, csms, _ = pair()
    call = station.call("BootNotification", BOOT_201, context="boot")
    pipe = Pipe(station, csms)
    _, at_csms = pipe.flush()
    assert at_csms == [CallReceived("s1", "BootNotification", BOOT_201)]
    csms.reply("s1", BOOT_201_ANSWER)
    at_station, _ = pipe.flush()
    assert at_station == [ResultReceived(call, BOOT_201_ANSWER)]
    assert at_station[0].call.context == "boot" and station.pending is None
    assert pipe.frames == 2


def test_the_wire_form_is_ocpp_j() -> None:
    station, _, _ = pair()
    station.call("Heartbeat", {})
    assert [json.loads(f) for f in station.data_to_send()] == [[2, "s1", "Heartbeat", {}]]
    assert station.data_to_send() == []


def test_one_outstanding_call_at_a_time_and_in_order() -> None:
    station, csms, _ = pair()
    first = station.call("Heartbeat", {})
    second = station.call("Heartbeat", {})
    assert station.pending is first and station.queued == 1
    sent = station.data_to_send()
    assert len(sent) == 1  # the second waits for the first's answer
    csms.receive(sent[0])
    csms.reply(first.message_id, {"currentTime": "2026-12-02T08:00:00Z"})
    events = station.receive(csms.data_to_send()[0])
    assert events == [ResultReceived(first, {"currentTime": "2026-12-02T08:00:00Z"})]
    assert station.pending is second
    assert json.loads(station.data_to_send()[0])[1] == second.message_id


def test_timeout_comes_from_the_clock_and_starts_the_next_call() -> None:
    station, _, clock = pair(response_timeout_s=30.0)
    first = station.call("Heartbeat", {})
    second = station.call("Heartbeat", {})
    assert station.next_deadline() == pytest.approx(1030.0)
    clock.t = 1029.9
    assert station.expire() == []
    clock.t = 1030.0
    assert station.expire() == [TimedOut(first)]
    assert station.pending is second and second.deadline == pytest.approx(1060.0)
    # A late answer to the call that timed out is refused, not matched.
    late = station.receive(json.dumps([3, first.message_id,
                                       {"currentTime": "2026-12-02T08:00:00Z"}]))
    assert isinstance(late[0], Refused) and not late[0].answered


def test_our_own_bad_payload_never_leaves() -> None:
    station, _, _ = pair()
    with pytest.raises(SchemaViolation) as err:
        station.call("BootNotification", {"reason": "PowerUp"})
    assert err.value.code == "OccurrenceConstraintViolation"
    assert station.data_to_send() == [] and station.pending is None
    with pytest.raises(LookupError):
        station.call("NoSuchAction", {})


@pytest.mark.parametrize(("version", "payload", "code"), [
    # 2.0.1 keeps the historic spelling "Occurence" on the wire (errata), 2.1 fixes it.
    ("2.0.1", {"reason": "PowerUp"}, "OccurenceConstraintViolation"),
    ("2.1", {"reason": "PowerUp"}, "OccurrenceConstraintViolation"),
    ("2.0.1", {"reason": "Sunshine", "chargingStation": {"model": "M", "vendorName": "V"}},
     "PropertyConstraintViolation"),
    ("2.0.1", {"reason": 7, "chargingStation": {"model": "M", "vendorName": "V"}},
     "TypeConstraintViolation"),
])
def test_a_call_failing_its_schema_gets_the_named_callerror(
        version: str, payload: dict[str, Any], code: str) -> None:
    _, csms, _ = pair(version)
    events = csms.receive(json.dumps([2, "m7", "BootNotification", payload]))
    assert isinstance(events[0], Refused) and events[0].answered
    assert json.loads(csms.data_to_send()[0])[:3] == [4, "m7", code]
    assert csms.awaiting_reply() == []


def test_ocpp16_spellings_and_actions() -> None:
    _, csms, _ = pair("1.6")
    csms.receive(json.dumps([2, "a", "BootNotification", {"chargePointModel": "M"}]))
    csms.receive(json.dumps([2, "b", "TransactionEvent", {}]))  # a 2.x action
    csms.receive("[2, \"c\", \"Heartbeat\", {}")  # not JSON
    codes = [json.loads(f)[2] for f in csms.data_to_send()]
    assert codes == ["OccurenceConstraintViolation", "NotImplemented", "FormationViolation"]


def test_unknown_action_is_not_implemented_and_bad_json_is_rpc_framework_error() -> None:
    _, csms, _ = pair()
    csms.receive(json.dumps([2, "x1", "MakeCoffee", {}]))
    csms.receive('[2, "x2", "Heartbeat", {"a": NaN}]')
    csms.receive(b'[2, "x3", "Heartbeat", {}]')
    frames = [json.loads(f) for f in csms.data_to_send()]
    assert [f[2] for f in frames] == ["NotImplemented", "FormatViolation", "RpcFrameworkError"]
    assert [f[1] for f in frames][:2] == ["x1", "x2"]


def test_a_reused_id_of_an_unanswered_call_is_refused() -> None:
    _, csms, _ = pair()
    assert isinstance(csms.receive(json.dumps([2, "d", "Heartbeat", {}]))[0], CallReceived)
    again = csms.receive(json.dumps([2, "d", "Heartbeat", {}]))
    assert isinstance(again[0], Refused) and again[0].code == "GenericError"
    csms.reply("d", {"currentTime": "2026-12-02T08:00:00Z"})
    assert json.loads(csms.data_to_send()[-1]) == [3, "d", {"currentTime": "2026-12-02T08:00:00Z"}]


def test_our_answer_is_checked_too() -> None:
    _, csms, _ = pair()
    csms.receive(json.dumps([2, "h", "Heartbeat", {}]))
    with pytest.raises(SchemaViolation):
        csms.reply("h", {"currentTime": "yesterday"})
    assert csms.data_to_send() == [] and csms.awaiting_reply() == ["h"]
    csms.reply_error("h", "InternalError", "x" * 400)
    frame = json.loads(csms.data_to_send()[0])
    assert frame[:3] == [4, "h", "InternalError"] and len(frame[3]) == 255
    with pytest.raises(KeyError):
        csms.reply("h", {"currentTime": "2026-12-02T08:00:00Z"})


def test_errors_and_invalid_results_complete_the_call() -> None:
    station, _, _ = pair()
    call = station.call("Heartbeat", {})
    station.data_to_send()
    events = station.receive(json.dumps([4, call.message_id, "NotSupported", "no", {"k": 1}]))
    assert events == [ErrorReceived(call, "NotSupported", "no", {"k": 1})]
    call2 = station.call("Heartbeat", {})
    station.data_to_send()
    events = station.receive(json.dumps([3, call2.message_id, {"currentTime": 5}]))
    assert isinstance(events[0], ResultInvalid) and events[0].call is call2
    assert station.data_to_send() == []  # 2.0.1 has no CALLRESULTERROR
    assert station.pending is None


def test_ocpp21_result_error_and_send() -> None:
    station, csms, _ = pair("2.1")
    call = station.call("Heartbeat", {})
    station.data_to_send()
    station.receive(json.dumps([3, call.message_id, {"currentTime": 5}]))
    assert json.loads(station.data_to_send()[0])[:3] == [5, call.message_id,
                                                          "TypeConstraintViolation"]
    got = csms.receive(json.dumps([5, "c9", "FormatViolation", "bad", {}]))
    assert got == [ResultErrorReceived("c9", "FormatViolation", "bad")]
    station.send("NotifyPeriodicEventStream", {"id": 1, "pending": 0, "basetime":
                                               "2026-12-02T08:00:00Z",
                                               "data": [{"t": 0, "v": "11000"}]})
    got = csms.receive(station.data_to_send()[0])
    assert isinstance(got[0], SendReceived) and got[0].action == "NotifyPeriodicEventStream"
    assert csms.data_to_send() == []  # a SEND is never answered
    with pytest.raises(ValueError):
        pair("2.0.1")[0].send("Heartbeat", {})


def test_close_times_out_everything_and_refuses_new_calls() -> None:
    station, _, _ = pair()
    a = station.call("Heartbeat", {})
    b = station.call("Heartbeat", {})
    assert station.close() == [TimedOut(a), TimedOut(b)]
    with pytest.raises(EndpointClosed):
        station.call("Heartbeat", {})


def test_ids_are_deterministic_and_validation_can_be_turned_off() -> None:
    one, _, _ = pair()
    two, _, _ = pair()
    for ep in (one, two):
        ep.call("Heartbeat", {})
    assert one.data_to_send() == two.data_to_send()
    lax = Endpoint("2.0.1", clock=Clock(), validate=False)
    lax.receive(json.dumps([2, "z", "BootNotification", {"reason": "Sunshine"}]))
    lax.reply("z", {"status": "whatever"})
    assert json.loads(lax.data_to_send()[0]) == [3, "z", {"status": "whatever"}]


def test_a_payload_json_cannot_carry_fails_when_the_call_is_made() -> None:
    station, _, _ = pair(validate=False)
    with pytest.raises(ValueError):
        station.call("Heartbeat", {"x": float("nan")})
    assert station.pending is None and station.data_to_send() == []


def test_only_the_versions_own_action_names_are_looked_up() -> None:
    _, csms, _ = pair("2.1")
    for action in ("../../v16/schemas/BootNotification", "BootNotificationResponse"):
        events = csms.receive(json.dumps([2, "t", action, {}]))
        assert isinstance(events[0], Refused) and events[0].code == "NotImplemented"
    assert [json.loads(f)[2] for f in csms.data_to_send()] == ["NotImplemented"] * 2


def test_each_received_call_is_answered_once() -> None:
    _, csms, _ = pair()
    csms.receive(json.dumps([2, "q", "Heartbeat", {}]))
    csms.reply_error("q", "GenericError", "no")
    with pytest.raises(KeyError):
        csms.reply_error("q", "GenericError", "again")
    with pytest.raises(KeyError):
        csms.reply_error("never-received", "GenericError", "x")
    assert len(csms.data_to_send()) == 1


def test_a_queued_call_can_be_withdrawn_a_sent_one_cannot() -> None:
    station, _, _ = pair()
    first = station.call("Heartbeat", {})
    second = station.call("Heartbeat", {})
    assert station.queued == 1 and len(station.data_to_send()) == 1
    assert station.withdraw(second) and station.queued == 0
    assert not station.withdraw(first)  # on the wire: pending until answered or timed out
    assert station.pending is first
    station.receive(json.dumps([3, first.message_id, {"currentTime": "2026-12-02T08:00:00Z"}]))
    assert station.pending is None and station.data_to_send() == []  # the second never went


def test_an_action_the_application_does_not_handle_is_not_supported_whatever_its_payload(
) -> None:
    csms = Endpoint("2.0.1", clock=Clock(), supported=lambda action: action != "DataTransfer")
    events = csms.receive(json.dumps([2, "7", "DataTransfer", {"bad": True}]))
    assert isinstance(events[0], Refused) and events[0].code == "NotSupported"
    assert json.loads(csms.data_to_send()[0])[:3] == [4, "7", "NotSupported"]
    # A handled action still gets its schema's verdict.
    events = csms.receive(json.dumps([2, "8", "Heartbeat", {"x": 1}]))
    assert isinstance(events[0], Refused) and events[0].code != "NotSupported"


def test_an_answer_json_cannot_carry_leaves_the_call_answerable() -> None:
    csms = Endpoint("2.0.1", clock=Clock(), validate=False)
    csms.receive(json.dumps([2, "9", "Heartbeat", {}]))
    with pytest.raises(ValueError):
        csms.reply("9", {"currentTime": float("nan")})
    assert csms.awaiting_reply() == ["9"]
    csms.reply_error("9", "InternalError", "Heartbeat could not be processed")
    assert json.loads(csms.data_to_send()[0])[:3] == [4, "9", "InternalError"]
