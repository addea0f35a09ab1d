"""Unit tests of evtwin.ocppj: frame decoding and schema checks against OCPP-J's rules.

Expected codes come from OCPP-J 2.0.1 section 4.3 (and 1.6-J's names via
``wire_code``), not from the decoder's own tables.
"""

from __future__ import annotations

import json

import pytest

from evtwin.ocppj import (
    Call,
    CallError,
    CallResult,
    CallResultError,
    FrameError,
    SchemaViolation,
    Send,
    decode_frame,
    validate,
    wire_code,
)


def refused(raw: str | bytes, version: str = "2.0.1") -> tuple[str, str, bool]:
    with pytest.raises(FrameError) as err:
        decode_frame(raw, version=version)
    return err.value.code, err.value.message_id, err.value.answer


def test_valid_frames_decode_to_their_types() -> None:
    assert decode_frame('[2, "a", "Heartbeat", {}]') == Call("a", "Heartbeat", {})
    assert decode_frame('[3, "a", {"x": 1}]') == CallResult("a", {"x": 1})
    assert decode_frame('[4, "a", "InternalError", "d", {}]') == CallError(
        "a", "InternalError", "d", {})
    assert decode_frame('[5, "a", "InternalError", "d", {}]', version="2.1") == \
        CallResultError("a", "InternalError", "d", {})
    assert decode_frame('[6, "a", "NotifyPeriodicEventStream", {}]', version="2.1") == \
        Send("a", "NotifyPeriodicEventStream", {})


@pytest.mark.parametrize(("raw", "expected"), [
    (b'[2, "a", "Heartbeat", {}]', ("RpcFrameworkError", "-1", True)),
    ("not json", ("RpcFrameworkError", "-1", True)),
    ('{"a": 1}', ("RpcFrameworkError", "-1", True)),
    ('[2, 17, "Heartbeat", {}]', ("RpcFrameworkError", "-1", True)),
    ('[2, "' + "x" * 37 + '", "Heartbeat", {}]', ("RpcFrameworkError", "-1", True)),
    ('[2.0, "a", "Heartbeat", {}]', ("RpcFrameworkError", "a", True)),
    ('[null, "a", 1]', ("RpcFrameworkError", "a", True)),
    ('[7, "a", {}]', ("MessageTypeNotSupported", "a", True)),
    ('[5, "a", "X", "d", {}]', ("MessageTypeNotSupported", "a", True)),
    ('[2, "a", "Heartbeat"]', ("RpcFrameworkError", "a", True)),
    ('[3, "a", []]', ("RpcFrameworkError", "a", False)),
    # Values JSON's grammar (or Python's parser) lets through but OCPP-J cannot carry:
    ('[2, "a", "Heartbeat", {"x": NaN}]', ("FormatViolation", "a", True)),
    ('[2, "a", "Heartbeat", {"x": -Infinity}]', ("FormatViolation", "a", True)),
    ('[2, "a", "Heartbeat", {"x": 1e999}]', ("FormatViolation", "a", True)),
    ('[2, "a", "Heartbeat", {"x": ' + "9" * 5000 + "}]", ("FormatViolation", "a", True)),
    ('[2, "a", "Heartbeat", {"x": 9223372036854775808}]', ("FormatViolation", "a", True)),
    ('[2, "a", "Heartbeat", ' + "[" * 3000 + "]" * 3000 + "]", ("FormatViolation", "a", True)),
    ('[2, "a", "Heartbeat", {"x": ' + "[" * 40 + "]" * 40 + "}]",
     ("FormatViolation", "a", True)),
    ('[2, "a", "Heartbeat", []]', ("RpcFrameworkError", "a", True)),
    ('[2, "a", "Heartbeat", {"x": "\\ud800"}]', ("FormatViolation", "a", True)),
    ('[2, "a", "Heartbeat", {"x": "a\\u0000b"}]', ("FormatViolation", "a", True)),
    ('[3, "a", {"x": NaN}]', ("FormatViolation", "a", False)),
    # The structure around a bad value still decides the code and the id.
    ('[null, "0", 9223372036854775808]', ("RpcFrameworkError", "0", True)),
    ('[9, "b", NaN]', ("MessageTypeNotSupported", "b", True)),
    ('[2, "\\ud800\\udc00\\ud800\\udc00", "Heartbeat", {"x": NaN}]',
     ("FormatViolation", "\U00010000\U00010000", True)),
])
def test_invalid_frames_earn_the_code_and_id_ocpp_j_names(
        raw: str | bytes, expected: tuple[str, str, bool]) -> None:
    assert refused(raw) == expected


def test_error_codes_are_spelled_per_version() -> None:
    assert wire_code("1.6", "FormatViolation") == "FormationViolation"
    assert wire_code("1.6", "RpcFrameworkError") == "FormationViolation"
    assert wire_code("1.6", "MessageTypeNotSupported") == "NotSupported"
    assert wire_code("2.0.1", "OccurrenceConstraintViolation") == "OccurenceConstraintViolation"
    assert wire_code("2.1", "OccurrenceConstraintViolation") == "OccurrenceConstraintViolation"


STARTED = {"eventType": "Started", "timestamp": "2026-12-01T08:00:00Z",
           "triggerReason": "Authorized", "seqNo": 0,
           "transactionInfo": {"transactionId": "T1"}}


@pytest.mark.parametrize(("change", "code", "field"), [
    ({"timestamp": "2026-12-01T08:00:00"}, "FormatViolation", "timestamp"),
    ({"timestamp": "yesterday"}, "FormatViolation", "timestamp"),
    ({"seqNo": "0"}, "TypeConstraintViolation", "seqNo"),
    ({"eventType": "Begun"}, "PropertyConstraintViolation", "eventType"),
    ({"surprise": 1}, "FormatViolation", ""),
    ({"transactionInfo": {"transactionId": "x" * 37}}, "TypeConstraintViolation",
     "transactionInfo.transactionId"),
])
def test_schemas_check_formats_and_name_the_field(change: dict[str, object], code: str,
                                                  field: str) -> None:
    payload = json.loads(json.dumps({**STARTED, **change}))
    with pytest.raises(SchemaViolation) as err:
        validate("2.0.1", "TransactionEvent", payload)
    assert (err.value.code, err.value.field) == (code, field)


def test_a_missing_field_is_an_occurrence_violation_in_every_version() -> None:
    for version, action, payload in (("2.0.1", "TransactionEvent", {"eventType": "Started"}),
                                     ("2.1", "BootNotification", {"reason": "PowerUp"}),
                                     ("1.6", "StartTransaction", {"connectorId": 1})):
        with pytest.raises(SchemaViolation) as err:
            validate(version, action, payload)
        assert err.value.code == "OccurrenceConstraintViolation"
    validate("2.0.1", "TransactionEvent", STARTED)  # and a good one passes
