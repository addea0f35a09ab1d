"""Station messages in their wire form -> the core's checked domain events.

The OCPP 2.x shell hands TransactionEvent and MeterValues payloads to
:func:`tx_event_2x` and :func:`samples_2x`; the 1.6 shell reads its own
messages with :func:`event_time` and :func:`samples_16`. Each raises
:class:`InvalidMessageError` naming the field of the first problem and the
OCPP-J code it earns; nothing is changed. Times outside the window the CSMS
accepts (``max_event_age_s`` before, ``max_event_lead_s`` after its clock)
are refused.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from evtwin.ocppj.domain import ENERGY

from .clock import parse_iso
from .exceptions import InvalidMessageError
from .model import CSMSConfig, ParsedSample, TxEvent

#: OCPP's integer: 32 bits, signed (OCPP 2.0.1 Part 2, primitive datatypes).
INT32_MAX = 2**31 - 1
WH_PER_UNIT = {"Wh": 1.0, "kWh": 1000.0}


def event_time(text: Any, field: str, now: datetime, config: CSMSConfig) -> datetime:
    """A station timestamp: RFC 3339 with an offset, within the accepted window."""
    if not isinstance(text, str):
        raise InvalidMessageError("FormatViolation", field, "a date-time is required")
    try:
        at = parse_iso(text)
    except (ValueError, OverflowError):
        raise InvalidMessageError("FormatViolation", field,
                                  f"{text[:40]!r} is not an RFC 3339 date-time") from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidMessageError("FormatViolation", field, f"{text[:40]!r} has no UTC offset")
    try:
        lead_s = (at - now).total_seconds()
    except OverflowError:  # pragma: no cover - aware datetimes subtract safely
        lead_s = math.inf
    if lead_s > config.max_event_lead_s or -lead_s > config.max_event_age_s:
        raise InvalidMessageError(
            "PropertyConstraintViolation", field,
            f"{text[:40]} is outside the accepted window (at most "
            f"{config.max_event_age_s / 86400:g} days before and "
            f"{config.max_event_lead_s / 3600:g} h after the CSMS's time)")
    return at


def energy_wh(samples: tuple[ParsedSample, ...]) -> float | None:
    """The last whole-meter energy register among ``samples`` (Wh), if any."""
    value: float | None = None
    for _ts, measurand, phase, number, unit, _at in samples:
        if measurand == ENERGY and phase is None:
            value = number * WH_PER_UNIT.get(unit or "Wh", 1.0)
    return value


def samples_2x(meter_value: list[dict[str, Any]], now: datetime, config: CSMSConfig,
               path: str = "meterValue") -> tuple[ParsedSample, ...]:
    """OCPP 2.x sampled values (numbers, ``unitOfMeasure``) with their timestamps parsed."""
    samples: list[ParsedSample] = []
    for i, mv in enumerate(meter_value):
        where = f"{path}.{i}"
        mv_at = event_time(mv.get("timestamp"), f"{where}.timestamp", now, config)
        for j, sv in enumerate(mv.get("sampledValue") or ()):
            value = sv.get("value")
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise InvalidMessageError("PropertyConstraintViolation",
                                          f"{where}.sampledValue.{j}.value",
                                          "must be a finite number")
            unit = (sv.get("unitOfMeasure") or {}).get("unit")
            samples.append((mv["timestamp"], sv.get("measurand", ENERGY), sv.get("phase"),
                            float(value), unit, mv_at))
    return tuple(samples)


def samples_16(meter_value: list[dict[str, Any]], now: datetime, config: CSMSConfig,
               path: str = "meterValue") -> tuple[ParsedSample, ...]:
    """OCPP 1.6 sampled values (decimal strings, a flat ``unit``) with their timestamps
    parsed; values in SignedData format are left out (no number the CSMS can use)."""
    samples: list[ParsedSample] = []
    for i, mv in enumerate(meter_value):
        where = f"{path}.{i}"
        mv_at = event_time(mv.get("timestamp"), f"{where}.timestamp", now, config)
        for j, sv in enumerate(mv.get("sampledValue") or ()):
            if sv.get("format") == "SignedData":
                continue
            try:
                value = float(sv["value"])
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise InvalidMessageError(
                    "PropertyConstraintViolation", f"{where}.sampledValue.{j}.value",
                    f"{str(sv.get('value'))[:40]!r} is not a finite decimal number")
            samples.append((mv["timestamp"], sv.get("measurand", ENERGY),
                            sv.get("phase") or None, value, sv.get("unit") or None, mv_at))
    return tuple(samples)


def tx_event_2x(payload: dict[str, Any], now: datetime, config: CSMSConfig) -> TxEvent:
    """Everything the core reads from a 2.x TransactionEvent, checked."""
    tx = payload.get("transactionInfo")
    if not isinstance(tx, dict) or not isinstance(tx.get("transactionId"), str) \
            or not tx["transactionId"]:
        raise InvalidMessageError("FormatViolation", "transactionInfo.transactionId",
                                  "a transaction id is required")
    seq_no = payload.get("seqNo")
    if seq_no is not None and (type(seq_no) is not int or not 0 <= seq_no <= INT32_MAX):
        raise InvalidMessageError("PropertyConstraintViolation", "seqNo",
                                  f"must be an integer from 0 to {INT32_MAX}")
    evse_id = (payload.get("evse") or {}).get("id", 0)
    if type(evse_id) is not int or not 0 <= evse_id <= INT32_MAX:
        raise InvalidMessageError("PropertyConstraintViolation", "evse.id",
                                  "must be a non-negative integer")
    timestamp = payload.get("timestamp")
    at = event_time(timestamp, "timestamp", now, config)
    samples = samples_2x(payload.get("meterValue") or [], now, config)
    id_token = (payload.get("idToken") or {}).get("idToken")
    return TxEvent(
        transaction_id=tx["transactionId"], event_type=str(payload.get("eventType")),
        seq_no=seq_no, evse_id=evse_id, at=at, timestamp=str(timestamp),
        trigger_reason=str(payload.get("triggerReason")),
        id_token=id_token if isinstance(id_token, str) else None,
        charging_state=tx.get("chargingState"), stopped_reason=tx.get("stoppedReason"),
        samples=samples, energy_wh=energy_wh(samples))
