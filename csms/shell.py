"""What every OCPP version's CSMS shell shares: framing errors, routing, raw calls,
and the version-neutral CSMS-initiated operations.

A shell is one connected station. It translates that version's messages into
calls on :class:`~evtwin.csms.core.CSMSCore` and offers the same operations
(``send_limit``, ``request_start``, ``set_charging_profile``, ...) whatever the
version, so the rest of the CSMS never looks at the protocol version.

Operations take version-neutral arguments (a :class:`ProfileSpec` is one
model for 1.6, 2.0.1 and 2.1, in the vocabulary of :mod:`evtwin.csms.profiles`:
2.x names, 1.6's ChargePointMaxProfile is ChargingStationMaxProfile) and
return the station's answer as a small dict with snake_case keys, always with
``status``. A CALLERROR raises :class:`CallFailed`; a request the station's
version cannot express raises :class:`InvalidOperation` naming the argument;
no answer within the response timeout raises :class:`TimeoutError`.
Operations must never be awaited from an ``@on`` handler: the connection reads
one message at a time, so the answer would never be read (a deadlock).
"""

from __future__ import annotations

import asyncio
import decimal
import inspect
import json
import logging
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, cast

from ocpp.exceptions import OCPPError, PropertyConstraintViolationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from evtwin.ocppj import (
    CallReceived,
    Endpoint,
    EndpointClosed,
    ErrorReceived,
    Refused,
    ResultInvalid,
    ResultReceived,
    SchemaViolation,
    domain,
)

from .auth import IdTokenType
from .certs import CertificateRequestError
from .clock import iso
from .core import CSMSCore, ProfileCommand
from .exceptions import CSMSError, InvalidMessageError, UnknownEvseError
from .model import EVChargingNeeds
from .profiles import ChargingProfile, Period, ProfileError

log = logging.getLogger("evtwin.csms.ocpp")
#: Compact JSON for the frames the CSMS sends (one encoder, made once).
_dumps = json.JSONEncoder(separators=(",", ":")).encode

#: OCPP versions in order; a feature "needs 2.1" when the station speaks less.
VERSIONS = ("1.6", "2.0.1", "2.1")


@contextmanager
def unknown_evse_is_a_property_violation() -> Iterator[None]:
    """Answer a message naming an unprovisioned EVSE with PropertyConstraintViolation."""
    try:
        yield
    except UnknownEvseError as exc:
        raise PropertyConstraintViolationError(description=str(exc)) from exc


class StationMessageError(OCPPError):
    """A station message the core refused (InvalidMessageError), as its OCPP-J error."""

    default_description = "the message was refused"

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description=description)
        self.code = code


@contextmanager
def invalid_message_is_a_call_error() -> Iterator[None]:
    """Answer a message the core refuses with the CALLERROR it names."""
    try:
        yield
    except InvalidMessageError as exc:
        raise StationMessageError(exc.code, str(exc)) from exc


class CallFailed(CSMSError):
    """A CSMS-initiated call was answered with a CALLERROR (``code`` is its error code)."""

    def __init__(self, action: str, code: str, description: str) -> None:
        super().__init__(f"{action}: {code} {description}")
        self.action = action
        self.code = code
        self.description = description


class InvalidCallResult(CallFailed):
    """The station answered a call with a CALLRESULT that fails the version's schema.

    ``code`` is the CALLERROR code the payload would have earned.
    """


class InvalidOperation(CSMSError, ValueError):
    """An operation's arguments cannot be sent to this station.

    ``field`` is the dotted path of the offending argument (``"evse_id"``,
    ``"profile.periods.0.setpoint"``), empty when no single argument is to blame.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def version_at_least(version: str, minimum: str) -> bool:
    """Whether OCPP ``version`` has what ``minimum`` introduced."""
    return VERSIONS.index(version) >= VERSIONS.index(minimum)


#: OCPP 1.6 stop reasons in OCPP 2.x's stoppedReason vocabulary.
STOP_REASONS_16 = {"EVDisconnected": "EVDisconnected", "Local": "Local", "Remote": "Remote",
                   "EmergencyStop": "EmergencyStop", "HardReset": "ImmediateReset",
                   "SoftReset": "ImmediateReset", "PowerLoss": "PowerLoss", "Reboot": "Reboot",
                   "DeAuthorized": "DeAuthorized", "UnlockCommand": "Local", "Other": "Other"}


def limit_period(limit: float, version: str) -> domain.PeriodData:
    """The one schedule period of a limit the control cycle sends; a negative one is V2G.

    OCPP 2.1: operationMode CentralSetpoint with a negative setpoint (the
    spec's combination for a CSMS-controlled discharge in a TxProfile) and
    dischargeLimit as its floor. 1.6 and 2.0.1 give a negative limit no
    meaning, so there the station is only stopped from charging (limit 0).
    """
    if limit >= 0:
        return domain.PeriodData(0.0, limit)
    if version != "2.1":
        return domain.PeriodData(0.0, 0.0)
    return domain.PeriodData(0.0, None, setpoint=limit)


WireHandler = Callable[[Any, dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]
"""A shell method that takes a CALL's payload and returns its CALLRESULT payload,
both in wire (camelCase) form."""


def wire(action: str) -> Callable[[WireHandler], WireHandler]:
    """Mark a shell method as the handler of ``action`` in wire form.

    The method gets the request payload as received (already checked against the
    version's schema) and returns the response payload as sent (checked against
    the schema before it goes out), with no snake/camel conversion and no
    dataclasses on the way: the cheap path for the messages every station sends
    all the time. It must be synchronous; errors are raised as for ``@on``
    handlers (an OCPPError names the CALLERROR). A wire handler takes precedence
    over an ``@on`` handler of the same action.
    """
    def mark(func: WireHandler) -> WireHandler:
        func._wire_action = action  # type: ignore[attr-defined]
        return func
    return mark


def recorded(action: str, answer: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]
             | None = None) -> WireHandler:
    """The wire handler of a message a station sends for the record (events,
    reports, firmware/log/diagnostics status, data transfers): kept as received
    (:meth:`CSMSCore.on_station_message`, queryable through the operator API) and
    answered with ``answer`` (the spec's response, or a function of the request;
    ``{}`` when it has no fields)."""
    reply = answer if callable(answer) else (lambda _p, fixed=dict(answer or {}): dict(fixed))

    def handler(self: Any, payload: dict[str, Any]) -> dict[str, Any]:
        self.core.on_station_message(self.id, action, payload)
        return reply(payload)

    handler.__name__ = handler.__qualname__ = f"on_{action}"
    return wire(action)(handler)


#: DataTransfer: this CSMS has no vendor extensions (the spec's answer for an unknown vendor).
DATA_TRANSFER_ANSWER = {"status": "UnknownVendorId"}


class CallStats:
    """Server-side handling time of station CALLs: frame received until its
    CALLRESULT (or CALLERROR) is written to the transport, in a fixed log-scale
    histogram.

    Bucket ``i`` holds times up to ``2 ** ((i + 1) / BUCKETS_PER_DOUBLING)`` µs
    (about 19 % wide), so recording is a log and two increments, and windows from
    several log lines (or processes) merge exactly by adding their buckets.
    :meth:`take` returns the window's figures and starts a new one.
    """

    BUCKETS_PER_DOUBLING = 4
    #: Bucket 0 holds everything up to 2 ** (1/4) µs; the last everything from ~18 min.
    N_BUCKETS = 4 * 30

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.counts = [0] * self.N_BUCKETS
        self.by_action: dict[str, int] = {}
        self.errors = 0
        self.n = 0
        self.max_s = 0.0
        self.since = time.monotonic()

    def record(self, action: str, took_s: float, *, error: bool = False) -> None:
        """Count one handled CALL that took ``took_s`` seconds."""
        us = took_s * 1e6
        i = int(math.log2(us) * self.BUCKETS_PER_DOUBLING) if us > 1.0 else 0
        self.counts[i if i < self.N_BUCKETS else self.N_BUCKETS - 1] += 1
        self.n += 1
        self.by_action[action] = self.by_action.get(action, 0) + 1
        if error:
            self.errors += 1
        if took_s > self.max_s:
            self.max_s = took_s

    @classmethod
    def upper_ms(cls, bucket: int) -> float:
        """The upper edge of ``bucket`` in ms (what a percentile in it reports)."""
        return 2.0 ** ((bucket + 1) / cls.BUCKETS_PER_DOUBLING) / 1000.0

    @classmethod
    def percentile_ms(cls, counts: Mapping[int, int], q: float) -> float:
        """Nearest-rank percentile ``q`` (0-100) of a histogram, as its bucket's upper
        edge in ms (an overestimate of at most one bucket width); NaN if empty."""
        total = sum(counts.values())
        if not total:
            return math.nan
        rank = max(1, math.ceil(q / 100.0 * total))
        seen = 0
        for bucket in sorted(counts):
            seen += counts[bucket]
            if seen >= rank:
                return cls.upper_ms(bucket)
        return math.nan  # unreachable

    def take(self) -> dict[str, Any]:
        """The window so far (counts, p50/p99/max in ms, the sparse histogram) and a new one."""
        hist = {i: c for i, c in enumerate(self.counts) if c}
        out = {"window_s": round(time.monotonic() - self.since, 3), "calls": self.n,
               "errors": self.errors, "by_action": dict(sorted(self.by_action.items())),
               # A bucket's edge may lie above the largest time in it: capped at the max.
               "p50_ms": round(min(self.percentile_ms(hist, 50), self.max_s * 1000.0), 3)
               if self.n else None,
               "p99_ms": round(min(self.percentile_ms(hist, 99), self.max_s * 1000.0), 3)
               if self.n else None,
               "max_ms": round(self.max_s * 1000.0, 3) if self.n else None,
               "hist": hist}
        self._reset()
        return out


def answer(payload: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A station's CALLRESULT as the operations return it: status, reason, extras."""
    out: dict[str, Any] = {"status": payload["status"]}
    info = payload.get("statusInfo")
    if info:
        out["reason_code"] = info["reasonCode"]
        if "additionalInfo" in info:
            out["additional_info"] = info["additionalInfo"]
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def _plain(value: Any) -> Any:
    # The ocpp library re-parses some 1.6 payloads with Decimal floats.
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- neutral forms
Purpose = Literal["ChargingStationMaxProfile", "TxDefaultProfile", "TxProfile",
                  "PriorityCharging", "LocalGeneration"]
"""Charging-profile purposes a CSMS may set (ChargingStationMaxProfile is 1.6's
ChargePointMaxProfile; the last two need 2.1)."""

PurposeFilter = Literal["ChargingStationMaxProfile", "TxDefaultProfile", "TxProfile",
                        "PriorityCharging", "LocalGeneration",
                        "ChargingStationExternalConstraints"]
"""Purposes a CSMS may ask about; external constraints (2.x) are set by an EMS, not the CSMS."""

Kind = Literal["Absolute", "Recurring", "Relative", "Dynamic"]
"""Charging-profile kinds; Dynamic needs 2.1."""

OperationMode = Literal["Idle", "ChargingOnly", "CentralSetpoint", "ExternalSetpoint",
                        "ExternalLimits", "CentralFrequency", "LocalFrequency",
                        "LocalLoadBalancing"]
"""OCPP 2.1 V2X operation modes of a schedule period."""

TriggerMessageName = Literal[
    "BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
    "Heartbeat", "LogStatusNotification", "MeterValues", "PublishFirmwareStatusNotification",
    "SignChargingStationCertificate", "SignCombinedCertificate", "SignV2GCertificate",
    "SignV2G20Certificate", "StatusNotification", "TransactionEvent"]
"""Messages any version can be asked to send; each shell accepts its version's subset."""

#: Purpose -> wire purpose, per version (only 1.6 names one differently).
PURPOSES_16 = {"ChargingStationMaxProfile": "ChargePointMaxProfile",
               "TxDefaultProfile": "TxDefaultProfile", "TxProfile": "TxProfile"}
PURPOSES_201 = {p: p for p in ("ChargingStationMaxProfile", "TxDefaultProfile", "TxProfile",
                               "ChargingStationExternalConstraints")}
PURPOSES_21 = {**PURPOSES_201, "PriorityCharging": "PriorityCharging",
               "LocalGeneration": "LocalGeneration"}

#: Neutral period field -> (wire name, first version that has it).
PERIOD_FIELDS: dict[str, tuple[str, str]] = {
    "start_s": ("startPeriod", "1.6"),
    "limit": ("limit", "1.6"),
    "number_phases": ("numberPhases", "1.6"),
    "phase_to_use": ("phaseToUse", "2.0.1"),
    # OCPP 2.1. The per-phase names keep their underscore on the wire (the
    # ocpp library's dataclasses get these wrong; we write the wire form).
    "limit_l2": ("limit_L2", "2.1"),
    "limit_l3": ("limit_L3", "2.1"),
    "operation_mode": ("operationMode", "2.1"),
    "setpoint": ("setpoint", "2.1"),
    "setpoint_l2": ("setpoint_L2", "2.1"),
    "setpoint_l3": ("setpoint_L3", "2.1"),
    "discharge_limit": ("dischargeLimit", "2.1"),
    "discharge_limit_l2": ("dischargeLimit_L2", "2.1"),
    "discharge_limit_l3": ("dischargeLimit_L3", "2.1"),
    "setpoint_reactive": ("setpointReactive", "2.1"),
    "setpoint_reactive_l2": ("setpointReactive_L2", "2.1"),
    "setpoint_reactive_l3": ("setpointReactive_L3", "2.1"),
    "v2x_baseline": ("v2xBaseline", "2.1"),
}
_PERIOD_FROM_WIRE = {wire: name for name, (wire, _) in PERIOD_FIELDS.items()}


class _Neutral(BaseModel):
    # Attribute docstrings become field descriptions (and so the API's docs).
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class PeriodSpec(_Neutral):
    """One period of a charging schedule; values in the schedule's unit (W or A)."""

    start_s: int = Field(ge=0)
    """Start of the period, in seconds from the start of the schedule."""
    limit: float | None = Field(None, ge=0)
    """Charging limit (all phases, or L1 with ``limit_l2``/``limit_l3``); required before 2.1."""
    number_phases: int | None = Field(None, ge=1, le=3)
    phase_to_use: int | None = Field(None, ge=1, le=3)
    """OCPP 2.x: the phase to charge on, with ``number_phases`` 1."""
    limit_l2: float | None = Field(None, ge=0)
    """OCPP 2.1: limit on L2."""
    limit_l3: float | None = Field(None, ge=0)
    """OCPP 2.1: limit on L3."""
    operation_mode: OperationMode | None = None
    """OCPP 2.1: V2X operation mode (default on the station: ChargingOnly)."""
    setpoint: float | None = None
    """OCPP 2.1: power or current set point; negative discharges."""
    setpoint_l2: float | None = None
    setpoint_l3: float | None = None
    discharge_limit: float | None = Field(None, le=0)
    """OCPP 2.1: discharge limit, zero or negative."""
    discharge_limit_l2: float | None = Field(None, le=0)
    discharge_limit_l3: float | None = Field(None, le=0)
    setpoint_reactive: float | None = None
    """OCPP 2.1: reactive power set point (var)."""
    setpoint_reactive_l2: float | None = None
    setpoint_reactive_l3: float | None = None
    v2x_baseline: float | None = None
    """OCPP 2.1: power baseline of the V2X modes."""

    @model_validator(mode="after")
    def _has_a_value(self) -> PeriodSpec:
        if self.limit is None and self.setpoint is None and self.operation_mode is None:
            raise ValueError("limit: a period needs a limit (or, OCPP 2.1, a setpoint "
                             "or an operation_mode)")
        if self.phase_to_use is not None and self.number_phases != 1:
            raise ValueError("phase_to_use: only allowed with number_phases 1")
        return self


class ProfileSpec(_Neutral):
    """A charging profile to send, in the CSMS's version-neutral form.

    Each shell writes it in its version's wire form and refuses
    (:class:`InvalidOperation`) what the version cannot say. The CSMS assigns
    the profile id. Absolute and Recurring schedules start at
    ``start_schedule``, or when the CSMS sends them if it is not given.
    """

    purpose: Purpose
    stack_level: int = Field(0, ge=0)
    kind: Kind = "Absolute"
    recurrency: Literal["Daily", "Weekly"] | None = None
    """Required for kind Recurring, not allowed otherwise."""
    unit: Literal["W", "A"] = "W"
    periods: list[PeriodSpec] = Field(min_length=1, max_length=1024)
    """Periods in time order; the first starts at 0 s."""
    start_schedule: AwareDatetime | None = None
    duration_s: int | None = Field(None, gt=0)
    min_charging_rate: float | None = Field(None, ge=0)
    """In ``unit``."""
    transaction_id: str | None = Field(None, min_length=1, max_length=36)
    """Only for purpose TxProfile: the transaction the profile belongs to."""
    valid_from: AwareDatetime | None = None
    valid_to: AwareDatetime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ProfileSpec:
        if self.periods[0].start_s != 0:
            raise ValueError("periods.0.start_s: the first period must start at 0")
        for i in range(1, len(self.periods)):
            if self.periods[i].start_s <= self.periods[i - 1].start_s:
                raise ValueError(f"periods.{i}.start_s: must be after the previous "
                                 f"period's start ({self.periods[i - 1].start_s} s)")
        if (self.kind == "Recurring") != (self.recurrency is not None):
            raise ValueError("recurrency: required for kind Recurring and only for it")
        if self.kind == "Relative" and self.start_schedule is not None:
            raise ValueError("start_schedule: not allowed for kind Relative")
        if self.transaction_id is not None and self.purpose != "TxProfile":
            raise ValueError("transaction_id: only allowed for purpose TxProfile")
        if (self.valid_from is not None and self.valid_to is not None
                and self.valid_to <= self.valid_from):
            raise ValueError("valid_to: must be after valid_from")
        return self

    def to_domain(self, profile_id: int, evse_id: int, sent_at: datetime
                  ) -> ChargingProfile | None:
        """The profile as the core keeps it (:mod:`evtwin.csms.profiles`), or None where
        that model cannot hold it (2.1 purposes, Dynamic, V2X or per-phase periods)."""
        plain = {"start_s", "limit", "number_phases", "phase_to_use"}
        if (self.purpose not in PURPOSES_201 or self.kind == "Dynamic"
                or any(p.limit is None or p.model_dump(exclude_none=True).keys() - plain
                       for p in self.periods)):
            return None
        return ChargingProfile(
            profile_id, evse_id, cast(Any, self.purpose), self.stack_level,
            cast(Any, self.kind), self.unit,
            tuple(Period(p.start_s, cast(float, p.limit), p.number_phases)
                  for p in self.periods),
            start_schedule=None if self.kind == "Relative" else (self.start_schedule or sent_at),
            duration_s=self.duration_s, recurrency=self.recurrency,
            valid_from=self.valid_from, valid_to=self.valid_to,
            transaction_id=self.transaction_id)

    @property
    def first_value(self) -> float:
        """The first period's limit (or set point) for the CSMS's profile log."""
        p = self.periods[0]
        return p.limit if p.limit is not None else (p.setpoint or 0.0)


def _one_decimal(value: float) -> bool:
    # 1.6 schemas say multipleOf 0.1; 8.1 / 0.1 is not an integer in floats.
    return decimal.Decimal(repr(float(value))) % decimal.Decimal("0.1") == 0


def periods_to_wire(profile: ProfileSpec, version: str, path: str) -> list[dict[str, Any]]:
    """The schedule periods in ``version``'s wire form; InvalidOperation if it cannot say them."""
    out = []
    for i, period in enumerate(profile.periods):
        item: dict[str, Any] = {}
        for name, value in period.model_dump(exclude_none=True).items():
            wire, since = PERIOD_FIELDS[name]
            if not version_at_least(version, since):
                raise InvalidOperation(f"{path}.periods.{i}.{name}",
                                       f"needs OCPP {since}; the station speaks {version}")
            if version == "1.6" and name == "limit" and not _one_decimal(value):
                raise InvalidOperation(f"{path}.periods.{i}.limit",
                                       f"OCPP 1.6 allows one decimal, got {value}")
            item[wire] = value
        if "limit" not in item and not version_at_least(version, "2.1"):
            raise InvalidOperation(f"{path}.periods.{i}.limit",
                                   f"required in OCPP {version}")
        out.append(item)
    return out


def periods_from_wire(periods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Schedule periods from the wire in the neutral form (unknown fields keep their name)."""
    return [{_PERIOD_FROM_WIRE.get(k, k): v for k, v in p.items()} for p in periods]


def _schedule_start(profile: ProfileSpec, now: datetime) -> str | None:
    if profile.kind == "Relative":
        return None
    return iso(profile.start_schedule or now)


def profile_to_wire_16(profile: ProfileSpec, profile_id: int, now: datetime, *,
                       path: str) -> dict[str, Any]:
    """``csChargingProfiles`` of OCPP 1.6 (also RemoteStartTransaction's ``chargingProfile``)."""
    if profile.purpose not in PURPOSES_16:
        raise InvalidOperation(f"{path}.purpose",
                               f"{profile.purpose} needs OCPP 2.1; the station speaks 1.6")
    if profile.kind == "Dynamic":
        raise InvalidOperation(f"{path}.kind", "Dynamic needs OCPP 2.1; the station speaks 1.6")
    if profile.min_charging_rate is not None and not _one_decimal(profile.min_charging_rate):
        raise InvalidOperation(f"{path}.min_charging_rate", "OCPP 1.6 allows one decimal")
    wire: dict[str, Any] = {"chargingProfileId": profile_id}
    if profile.transaction_id is not None:
        try:
            wire["transactionId"] = int(profile.transaction_id)
        except ValueError:
            raise InvalidOperation(f"{path}.transaction_id",
                                   "OCPP 1.6 transaction ids are integers") from None
    wire.update({"stackLevel": profile.stack_level,
                 "chargingProfilePurpose": PURPOSES_16[profile.purpose],
                 "chargingProfileKind": profile.kind})
    if profile.recurrency is not None:
        wire["recurrencyKind"] = profile.recurrency
    if profile.valid_from is not None:
        wire["validFrom"] = iso(profile.valid_from)
    if profile.valid_to is not None:
        wire["validTo"] = iso(profile.valid_to)
    schedule: dict[str, Any] = {}
    if profile.duration_s is not None:
        schedule["duration"] = profile.duration_s
    start = _schedule_start(profile, now)
    if start is not None:
        schedule["startSchedule"] = start
    schedule["chargingRateUnit"] = profile.unit
    schedule["chargingSchedulePeriod"] = periods_to_wire(profile, "1.6", path)
    if profile.min_charging_rate is not None:
        schedule["minChargingRate"] = profile.min_charging_rate
    wire["chargingSchedule"] = schedule
    return wire


def profile_to_wire_2x(profile: ProfileSpec, profile_id: int, now: datetime,
                       version: str, *, path: str) -> dict[str, Any]:
    """``chargingProfile`` of OCPP 2.0.1 or 2.1 (one charging schedule, id = profile id)."""
    purposes = PURPOSES_21 if version_at_least(version, "2.1") else PURPOSES_201
    if profile.purpose not in purposes:
        raise InvalidOperation(f"{path}.purpose",
                               f"{profile.purpose} needs OCPP 2.1; the station speaks {version}")
    if profile.kind == "Dynamic" and not version_at_least(version, "2.1"):
        raise InvalidOperation(f"{path}.kind",
                               f"Dynamic needs OCPP 2.1; the station speaks {version}")
    wire: dict[str, Any] = {
        "id": profile_id, "stackLevel": profile.stack_level,
        "chargingProfilePurpose": purposes[profile.purpose],
        "chargingProfileKind": profile.kind,
    }
    if profile.recurrency is not None:
        wire["recurrencyKind"] = profile.recurrency
    if profile.valid_from is not None:
        wire["validFrom"] = iso(profile.valid_from)
    if profile.valid_to is not None:
        wire["validTo"] = iso(profile.valid_to)
    if profile.transaction_id is not None:
        wire["transactionId"] = profile.transaction_id
    schedule: dict[str, Any] = {"id": profile_id}
    start = _schedule_start(profile, now)
    if start is not None:
        schedule["startSchedule"] = start
    if profile.duration_s is not None:
        schedule["duration"] = profile.duration_s
    schedule["chargingRateUnit"] = profile.unit
    schedule["chargingSchedulePeriod"] = periods_to_wire(profile, version, path)
    if profile.min_charging_rate is not None:
        schedule["minChargingRate"] = profile.min_charging_rate
    wire["chargingSchedule"] = [schedule]
    return wire


AttributeType = Literal["Actual", "Target", "MinSet", "MaxSet"]
ReportBase = Literal["ConfigurationInventory", "FullInventory", "SummaryInventory"]
LogType = Literal["DiagnosticsLog", "SecurityLog", "DataCollectorLog"]
UpdateType = Literal["Full", "Differential"]


class VariableSpec(_Neutral):
    """A variable of a station's device model (2.x), or a 1.6 configuration key
    (``component`` empty, ``variable`` the key)."""

    component: str = Field("", max_length=50)
    """2.x component name (OCPPCommCtrlr, EVSE, ...); empty for a 1.6 configuration key."""
    component_instance: str | None = Field(None, min_length=1, max_length=50)
    evse_id: int | None = Field(None, ge=1)
    """The component's EVSE, if it belongs to one."""
    connector_id: int | None = Field(None, ge=1)
    variable: str = Field(min_length=1, max_length=50)
    """2.x variable name, or the 1.6 configuration key."""
    variable_instance: str | None = Field(None, min_length=1, max_length=50)
    attribute_type: AttributeType = "Actual"
    value: str | None = Field(None, max_length=1000)
    """The value to set (set-variables; 1.6 allows 500 characters)."""

    @model_validator(mode="after")
    def _connector_on_an_evse(self) -> VariableSpec:
        if self.connector_id is not None and self.evse_id is None:
            raise ValueError("connector_id: a connector belongs to an EVSE (give evse_id)")
        return self

    def row(self, value: str | None, mutability: str | None = None) -> dict[str, Any]:
        """The device-model row the store keeps for it."""
        return {"component": self.component, "component_instance": self.component_instance,
                "evse_id": self.evse_id, "connector_id": self.connector_id,
                "variable": self.variable, "variable_instance": self.variable_instance,
                "attribute_type": self.attribute_type, "value": value,
                "mutability": mutability}

    def out(self, status: str, value: str | None = None, **extra: Any) -> dict[str, Any]:
        """One result of get/set-variables as the operations return it."""
        return {**{k: v for k, v in self.model_dump().items() if v is not None},
                "status": status, **({"value": value} if value is not None else {}),
                **{k: v for k, v in extra.items() if v is not None}}


def retry_fields(retries: int | None, retry_interval_s: int | None) -> dict[str, Any]:
    """``retries`` / ``retryInterval`` of an upload or download request, those given."""
    out: dict[str, Any] = {}
    if retries is not None:
        out["retries"] = retries
    if retry_interval_s is not None:
        out["retryInterval"] = retry_interval_s
    return out


def log_parameters(location: str, oldest: datetime | None, latest: datetime | None
                   ) -> dict[str, Any]:
    """LogParametersType (2.x GetLog, 1.6 security whitepaper GetLog)."""
    log_params: dict[str, Any] = {"remoteLocation": location}
    if oldest is not None:
        log_params["oldestTimestamp"] = iso(oldest)
    if latest is not None:
        log_params["latestTimestamp"] = iso(latest)
    return log_params


def as_variables(items: Sequence[VariableSpec | Mapping[str, Any]], *, field: str,
                 need_value: bool) -> list[VariableSpec]:
    """Variables given to get/set-variables, checked (InvalidOperation names the item)."""
    out = [i if isinstance(i, VariableSpec) else VariableSpec.model_validate(i) for i in items]
    if not out:
        raise InvalidOperation(field, "name at least one variable")
    for n, spec in enumerate(out):
        if need_value and spec.value is None:
            raise InvalidOperation(f"{field}.{n}.value", "required to set a variable")
    return out


@dataclass
class ProfileReport:
    """ReportChargingProfiles messages collected for one GetChargingProfiles request."""

    profiles: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def as_profile(profile: ProfileSpec | Mapping[str, Any]) -> ProfileSpec:
    """Accept a profile as the model or as a dict of its fields (pydantic errors propagate)."""
    return profile if isinstance(profile, ProfileSpec) else \
        ProfileSpec.model_validate(profile)


class ShellBase(ABC):
    """One connected station: its version's messages in, the core's answers out, over
    the Sans-I/O :class:`~evtwin.ocppj.Endpoint` (framing, message ids, pending calls,
    timeouts, schema checks both ways); this class only reads, writes and routes."""

    known_actions: ClassVar[frozenset[str]] = frozenset()
    version: ClassVar[str] = ""
    #: The longest id token the version carries (1.6 idTag: 20).
    id_token_max: ClassVar[int] = 20
    #: Action -> wire handler (see :func:`wire`), collected once per class.
    wire_handlers: ClassVar[dict[str, WireHandler]] = {}
    #: Where handled CALLs are timed (the server sets it per connection); None: not timed.
    call_stats: CallStats | None = None

    core: CSMSCore
    ev_charging_needs: dict[int, EVChargingNeeds]
    _profile_reports: dict[int, ProfileReport]

    @wire("Heartbeat")
    def on_heartbeat(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Heartbeat, the same in every version: the CSMS's current time."""
        return {"currentTime": self.core.on_heartbeat(self.id)}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # By name, so a subclass that overrides a wire method replaces it.
        names = {name for klass in cls.__mro__ for name, attr in vars(klass).items()
                 if isinstance(getattr(attr, "_wire_action", None), str)}
        handlers: dict[str, WireHandler] = {}
        for name in sorted(names):
            attr = getattr(cls, name)
            action = getattr(attr, "_wire_action", None)
            if isinstance(action, str):
                handlers[action] = attr
        cls.wire_handlers = handlers

    def __init__(self, station_id: str, connection: Any, core: CSMSCore, *,
                 response_timeout: float = 30) -> None:
        self.id = station_id
        self._response_timeout = response_timeout
        self._connection = connection
        # Ids unique beyond this connection too (OCPP-J asks only within it): a
        # station must never mistake a restarted CSMS's call for one it answered.
        self._endpoint = Endpoint(self.version, clock=time.monotonic,
                                  response_timeout_s=response_timeout,
                                  id_prefix=f"{uuid.uuid4().hex[:12]}-",
                                  supported=self.wire_handlers.__contains__)
        self._timer: asyncio.TimerHandle | None = None
        self._writers: set[asyncio.Task[None]] = set()
        self._init_shell(core)

    def _init_shell(self, core: CSMSCore) -> None:
        self.core = core
        #: Calls the CSMS makes after answering a station (reconciliation, certificates).
        self._background: set[asyncio.Future[None]] = set()
        #: A signed certificate is on its way to the station (one at a time).
        self._signing = False
        #: The last NotifyEVChargingNeeds per EVSE (2.x), also kept on the open session.
        self.ev_charging_needs: dict[int, EVChargingNeeds] = {}
        self._profile_reports: dict[int, ProfileReport] = {}

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` after the current answer is out (its calls queue behind it)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- certificates (2.0.1 A02/A03; 1.6 security whitepaper) ---------------------
    @wire("SignCertificate")
    def on_sign_certificate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """SignCertificate: checked, answered, and (Accepted) the certificate sent with
        CertificateSigned once the CSMS's station CA has signed it."""
        self.core.on_station_message(self.id, "SignCertificate", payload)
        ca = self.core.station_ca
        kind = payload.get("certificateType", "ChargingStationCertificate")
        if ca is None:
            return self._sign_refused("NoCA", "this CSMS signs no station certificates")
        if kind != "ChargingStationCertificate":
            return self._sign_refused("UnsupportedType",
                                      f"this CSMS signs no {kind} (no V2G PKI)")
        if self._signing:
            return self._sign_refused("Busy", "a certificate for this station is on its way")
        try:
            csr = ca.check(payload["csr"], self.id)
        except CertificateRequestError as exc:
            return self._sign_refused("InvalidCSR", str(exc))
        self._signing = True
        self._in_background(self._send_certificate(ca.sign(csr), kind,
                                                   payload.get("requestId")))
        return {"status": "Accepted"}

    def _sign_refused(self, reason: str, why: str) -> dict[str, Any]:
        log.info("%s: certificate request refused: %s", self.id, why, extra={
            "event": "certificate_request_refused", "station": self.id, "reason": reason})
        out: dict[str, Any] = {"status": "Rejected"}
        if self.version != "1.6":
            out["statusInfo"] = {"reasonCode": reason, "additionalInfo": why[:512]}
        return out

    async def _send_certificate(self, chain: str, kind: str, request_id: int | None) -> None:
        payload: dict[str, Any] = {"certificateChain": chain}
        if self.version != "1.6":
            payload["certificateType"] = kind
        if request_id is not None:  # 2.1: the request it answers
            payload["requestId"] = request_id
        try:
            result = await self.call_json("CertificateSigned", payload)
        except (CallFailed, TimeoutError, ConnectionError) as exc:
            log.warning("%s: CertificateSigned not delivered: %s", self.id, exc,
                        extra={"event": "certificate_not_delivered", "station": self.id})
            return
        finally:
            self._signing = False
        log.info("%s: certificate signed, station answers %s", self.id, result["status"],
                 extra={"event": "certificate_signed", "station": self.id,
                        "status": result["status"]})

    def _refuse_call(self, action: str) -> tuple[str, str] | None:
        """The CALLERROR (code, text) for a CALL that cannot be routed, or None.

        OCPP-J: NotImplemented when the action is not known at all (the endpoint
        answers those), NotSupported when it is a known action this CSMS does not
        handle.
        """
        if action in self.wire_handlers:
            return None
        if action in self.known_actions:
            return "NotSupported", f"{action} is not supported by this CSMS"
        return "NotImplemented", f"{action[:64]!r} is not an OCPP {self.version} action"

    # ------------------------------------------------------------------ I/O

    async def _write(self) -> None:
        """Send what the endpoint has queued (answers, CALLs, CALLERRORs), in order."""
        send = self._connection.send
        for frame in self._endpoint.data_to_send():
            await send(frame)

    def _write_soon(self) -> None:
        task = asyncio.ensure_future(self._write())
        self._writers.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("%s: a frame could not be sent: %s", self.id, task.exception())

    def _arm(self) -> None:
        """Time the pending call out at its deadline (the endpoint's clock is monotonic)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._endpoint.next_deadline()
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, deadline - time.monotonic()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        for event in self._endpoint.expire():
            self._settle(event)
        self._arm()
        self._write_soon()  # the next queued call, if any, goes out now

    def _settle(self, event: Any) -> None:
        """Complete one of our calls with what came back (or did not)."""
        call = event.call
        future = call.context
        if future is None or future.done():
            return  # the caller gave up (cancelled)
        if isinstance(event, ResultReceived):
            future.set_result(event.payload)
        elif isinstance(event, ErrorReceived):
            future.set_exception(CallFailed(call.action, event.code, event.description))
        elif isinstance(event, ResultInvalid):
            future.set_exception(InvalidCallResult(
                call.action, event.violation.code,
                f"the station's answer fails the schema: {event.violation}"))
        else:  # TimedOut
            future.set_exception(TimeoutError(f"{self.id}: no answer to {call.action} "
                                              f"within {self._response_timeout} s"))

    async def route_message(self, raw_msg: str | bytes) -> None:
        """Handle one frame: answer every CALL (with a CALLRESULT or the CALLERROR OCPP-J
        names), hand replies to the pending call, never let an exception out.

        A handler that fails on purpose raises an OCPPError (its code goes to the
        station); any other exception is a bug or a broken store: it is logged once,
        in one line with the station and action and never the payload, and the
        station gets InternalError. Either way nothing was applied (the core
        validates before it changes state), so a corrected re-send is handled as new.
        """
        received = time.perf_counter()
        self.core.health.seen(self.id)  # the station is online
        handled: list[tuple[str, bool]] = []  # timed once the answer is written
        for event in self._endpoint.receive(raw_msg):
            if isinstance(event, CallReceived):
                handled.append((event.action, await self._answer_call(event)))
            elif isinstance(event, Refused):
                if self._refused(event):
                    handled.append((event.action or "", True))
            elif isinstance(event, ResultReceived | ErrorReceived | ResultInvalid):
                self._settle(event)
            else:  # OCPP 2.1 CALLRESULTERROR or SEND: never answered
                log.info("%s: ignoring an OCPP 2.1 %s frame", self.id, type(event).__name__,
                         extra={"event": "frame_ignored", "station": self.id})
        self._arm()
        await self._write()
        for action, failed in handled:
            self._record_call(action, received, failed)

    def _record_call(self, action: str, received: float, failed: bool) -> None:
        stats = self.call_stats
        if stats is not None:
            # Only known names: a fuzzer's made-up actions must not grow the counts.
            name = action if action in self.known_actions else "(unknown)"
            stats.record(name, time.perf_counter() - received, error=failed)

    def _refused(self, event: Refused) -> bool:
        """Log a frame the endpoint refused; True if it was a CALL (answered with a
        CALLERROR, timed like any other)."""
        if event.action is not None and event.answered:  # a CALL the endpoint refused
            if event.code != "NotImplemented":
                self._log_refusal(event.action, event.code, event.reason)
            return True
        if event.answered or "not pending" not in event.reason:
            log.warning("%s: refused a frame: %s %s", self.id, event.code, event.reason,
                        extra={"event": "frame_refused", "station": self.id,
                               "code": event.code})
        else:
            # A CALLRESULT/CALLERROR whose id is not the one of the pending call.
            log.warning("%s: ignoring a reply to a call that is not pending (id %r)",
                        self.id, event.message_id)
        return False

    async def start(self) -> None:
        """Read and handle frames until the connection closes; then every call still
        waiting for its answer fails with ConnectionError."""
        recv = self._connection.recv
        try:
            while True:
                await self.route_message(await recv())
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            for task in list(self._background):  # nobody left to ask or tell
                task.cancel()
            for event in self._endpoint.close():
                future = event.call.context
                if future is not None and not future.done():
                    future.set_exception(ConnectionError(
                        f"{self.id}: the connection closed before {event.call.action} "
                        "was answered"))

    async def _answer_call(self, call: CallReceived) -> bool:
        """Answer one CALL; True if the answer was a CALLERROR."""
        endpoint = self._endpoint
        refusal = self._refuse_call(call.action)
        if refusal is not None:
            endpoint.reply_error(call.message_id, *refusal)
            return True
        try:
            payload = self.wire_handlers[call.action](self, call.payload)
            if inspect.isawaitable(payload):
                payload = await payload
            # Checked against the response schema: our own answer failing it is a bug.
            endpoint.reply(call.message_id, payload)
        except SchemaViolation as exc:
            self._log_refusal(call.action, exc.code, exc.message)
            endpoint.reply_error(call.message_id, exc.code, exc.message)
            return True
        except OCPPError as exc:
            description = str(exc.description or exc.code)
            self._log_refusal(call.action, exc.code, description)
            endpoint.reply_error(call.message_id, exc.code, description)
            return True
        except Exception as exc:
            log.error("%s: %s failed: %s: %.200s", self.id, call.action, type(exc).__name__,
                      exc, extra={"event": "handler_failed", "station": self.id,
                                  "action": call.action})
            endpoint.reply_error(call.message_id, "InternalError",
                                 f"{call.action} could not be processed")
            return True
        return False

    def _log_refusal(self, action: str, code: str, description: str) -> None:
        log.info("%s: %s refused: %s %.200s", self.id, action, code, description,
                 extra={"event": "call_refused", "station": self.id, "action": action,
                        "code": code})

    async def call_json(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a CALL whose payload is already in wire form; return the result payload.

        The payload goes out exactly as given, after validation against the
        version's schema (InvalidOperation if it fails). Calls to one station go
        one after another (the endpoint queues them: OCPP-J allows one outstanding
        CALL per direction). Raises CallFailed on a CALLERROR, InvalidCallResult on
        an answer that fails the schema, TimeoutError when no answer comes within
        the response timeout and ConnectionError when the connection closes first.
        """
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        try:
            call = self._endpoint.call(action, payload, context=future)
        except SchemaViolation as exc:
            raise InvalidOperation("", f"{action} fails the OCPP {self.version} schema: "
                                       f"{exc}") from exc
        except LookupError as exc:
            raise InvalidOperation("", f"{action} is not an OCPP {self.version} call"
                                   ) from exc
        except EndpointClosed as exc:
            raise ConnectionError(f"{self.id}: the connection is closed") from exc
        try:
            self._arm()
            await self._write()
            return dict(_plain(await future))
        except BaseException:
            # Given up (cancelled, or the write failed): a call still queued is never
            # sent; one already sent stays pending until answered or timed out.
            self._endpoint.withdraw(call)
            if not future.done():
                future.cancel()
            raise

    # -- helpers for the operations ---------------------------------------------
    def _check_evse_arg(self, evse_id: int | None, *, field: str = "evse_id",
                        station_wide: bool = True) -> None:
        """InvalidOperation unless ``evse_id`` is None, 0 (if ``station_wide``) or provisioned."""
        if evse_id is None or (evse_id == 0 and station_wide):
            return
        try:
            self.core.check_evse(self.id, evse_id)
        except UnknownEvseError as exc:
            raise InvalidOperation(field, str(exc)) from None

    def _check_profile_target(self, evse_id: int, profile: ProfileSpec,
                              field: str = "evse_id") -> None:
        # 1.6 and 2.x alike: a station maximum applies to EVSE 0, a TxProfile to an EVSE.
        if profile.purpose == "ChargingStationMaxProfile" and evse_id != 0:
            raise InvalidOperation(field, "a ChargingStationMaxProfile is set on EVSE 0")
        if profile.purpose == "TxProfile" and evse_id == 0:
            raise InvalidOperation(field, "a TxProfile is set on an EVSE, not on 0")
        self._check_evse_arg(evse_id, field=field)

    @staticmethod
    def _start_profile(charging_profile: ProfileSpec | Mapping[str, Any]) -> ProfileSpec:
        profile = as_profile(charging_profile)
        if profile.purpose != "TxProfile":
            raise InvalidOperation("charging_profile.purpose",
                                   "a start request can only carry a TxProfile")
        if profile.transaction_id is not None:
            raise InvalidOperation("charging_profile.transaction_id",
                                   "the transaction does not exist yet")
        return profile

    def _record_profile(self, evse_id: int, profile_id: int, profile: ProfileSpec,
                        status: str) -> None:
        # Every id sent is stored: next_profile_id() continues after the
        # highest one, also after a restart, so no later profile replaces it.
        self.core.store.record_profile(
            self.id, evse_id, profile_id, profile.purpose, profile.stack_level,
            profile.first_value, profile.unit, iso(self.core.clock()), status)

    async def _send_profile(self, action: str, payload: dict[str, Any], evse_id: int,
                            profile_id: int, profile: ProfileSpec, *,
                            install_at: datetime | None = None) -> dict[str, Any]:
        """Send a call carrying a new profile and record the profile with the answer.

        With ``install_at`` (when the profile was written), an accepted profile
        also joins the profiles the core believes installed on the station.
        """
        try:
            result = await self.call_json(action, payload)
        except InvalidOperation:
            raise  # never sent: the id is simply skipped
        except CallFailed as exc:
            self._record_profile(evse_id, profile_id, profile, f"CallError:{exc.code}")
            raise
        except BaseException:  # no answer (timeout, lost connection, cancelled)
            self._record_profile(evse_id, profile_id, profile, "NoAnswer")
            raise
        self._record_profile(evse_id, profile_id, profile, str(result["status"]))
        if install_at is not None and result["status"] == "Accepted":
            domain = profile.to_domain(profile_id, evse_id, install_at)
            if domain is not None:
                try:
                    self.core.profile_set(self.id).install(domain)
                    self.core.persist_profiles(self.id)
                except ProfileError as exc:  # accepted by the station all the same
                    log.warning("%s: profile %s not kept: %s", self.id, profile_id, exc)
        return result

    def _forget_profiles(self, result: Mapping[str, Any], *, profile_id: int | None,
                         evse_id: int | None, purpose: str | None,
                         stack_level: int | None) -> None:
        """After an accepted ClearChargingProfile, forget what the station cleared."""
        if result["status"] != "Accepted":
            return
        if profile_id is not None:  # an id alone selects the profile
            self.core.profile_set(self.id).clear(profile_id=profile_id)
        else:
            self.core.profile_set(self.id).clear(evse_id=evse_id, purpose=purpose,
                                                 stack_level=stack_level)
        self.core.profiles_cleared(self.id)

    # -- operations every version offers ---------------------------------------
    @abstractmethod
    async def send_limit(self, cmd: ProfileCommand) -> str:
        """Send a TxProfile with one period at ``cmd.limit``; record and return the status."""

    @abstractmethod
    async def request_start(self, evse_id: int | None, id_token: str, *,
                            remote_start_id: int | None = None,
                            id_token_type: IdTokenType = "Central",
                            charging_profile: ProfileSpec | Mapping[str, Any] | None = None,
                            ) -> dict[str, Any]:
        """Ask the station to start a transaction (1.6 RemoteStartTransaction,
        2.x RequestStartTransaction).

        ``evse_id`` None lets the station choose. ``remote_start_id`` (2.x) is
        assigned by the CSMS when None; 1.6 has none. ``charging_profile``, a
        TxProfile without a transaction id, goes with the request.
        Returns ``status``, and ``remote_start_id``, ``transaction_id`` (2.x,
        if the station already has one) and ``profile_id`` when they apply.
        """

    @abstractmethod
    async def request_stop(self, transaction_id: str) -> dict[str, Any]:
        """Ask the station to stop a transaction (1.6 RemoteStopTransaction, whose ids are
        integers; 2.x RequestStopTransaction). Returns ``status``."""

    async def set_charging_profile(self, evse_id: int,
                                   profile: ProfileSpec | Mapping[str, Any], *,
                                   profile_id: int | None = None) -> dict[str, Any]:
        """Install a charging profile on an EVSE (0: the whole station).

        ``profile_id`` None: the CSMS assigns a fresh id; an operator's own id
        replaces the station's profile of that id (K01.FR.05), and the CSMS
        never assigns it to another profile. The profile is recorded with the
        answer. Returns ``status`` and ``profile_id``.
        """
        prof = as_profile(profile)
        self._check_profile_target(evse_id, prof)
        if profile_id is None:
            profile_id = self.core.next_profile_id()
        else:
            self.core.claim_profile_id(profile_id)
        now = self.core.clock()
        payload = self._set_profile_payload(evse_id, prof, profile_id, now)
        result = await self._send_profile("SetChargingProfile", payload, evse_id, profile_id,
                                          prof, install_at=now)
        return answer(result, profile_id=profile_id)

    @abstractmethod
    def _set_profile_payload(self, evse_id: int, prof: ProfileSpec, profile_id: int,
                             now: datetime) -> dict[str, Any]:
        """The SetChargingProfile request in this version's wire form."""

    @abstractmethod
    async def clear_charging_profile(self, *, profile_id: int | None = None,
                                     evse_id: int | None = None,
                                     purpose: Purpose | None = None,
                                     stack_level: int | None = None) -> dict[str, Any]:
        """Clear the profile ``profile_id``, or those matching every criterion given
        (none given: all of them). Returns ``status`` (Accepted or Unknown)."""

    @abstractmethod
    async def get_composite_schedule(self, evse_id: int, duration_s: int,
                                     unit: Literal["W", "A"] | None = None) -> dict[str, Any]:
        """Ask the station for the schedule that results from its profiles.

        Returns ``status`` and, when Accepted, ``schedule``: ``evse_id``,
        ``schedule_start``, ``duration_s``, ``unit`` and ``periods`` in the
        neutral period form.
        """

    @abstractmethod
    async def change_availability(self, evse_id: int, operative: bool) -> dict[str, Any]:
        """Make an EVSE (0: the whole station) operative or inoperative.
        Returns ``status`` (Accepted, Rejected or Scheduled)."""

    @abstractmethod
    async def reset(self, hard: bool, evse_id: int | None = None) -> dict[str, Any]:
        """Reboot the station (or, 2.x, one EVSE): ``hard`` is 1.6 Hard / 2.x
        Immediate, else 1.6 Soft / 2.x OnIdle. Returns ``status``."""

    @abstractmethod
    async def trigger_message(self, message: TriggerMessageName,
                              evse_id: int | None = None) -> dict[str, Any]:
        """Ask the station to send ``message`` (for ``evse_id`` if given); the
        message names are the wire names of the station's version. Returns ``status``."""

    async def reserve_now(self, reservation_id: int, id_token: str, expiry: datetime, *,
                          evse_id: int | None = None, id_token_type: IdTokenType = "Central",
                          group_id_token: str | None = None) -> dict[str, Any]:
        """Reserve an EVSE (None: any; 1.6 connector 0) for ``id_token`` until ``expiry``.
        Returns ``status``. Recorded in the core's reservation book, whoever asks."""
        try:
            return await self.core.reservations.reserve(
                lambda: self._reserve_now(reservation_id, id_token, expiry, evse_id=evse_id,
                                          id_token_type=id_token_type,
                                          group_id_token=group_id_token),
                reservation_id, self.id, evse_id, id_token, expiry, self.core.clock,
                group_id_token)
        except InvalidOperation:
            raise
        except ValueError as exc:  # the id is in force at another station
            raise InvalidOperation("reservation_id", str(exc)) from None

    @abstractmethod
    async def _reserve_now(self, reservation_id: int, id_token: str, expiry: datetime, *,
                           evse_id: int | None, id_token_type: IdTokenType,
                           group_id_token: str | None) -> dict[str, Any]:
        """ReserveNow in this version's wire form; the answer with ``status``."""

    async def cancel_reservation(self, reservation_id: int) -> dict[str, Any]:
        """Cancel a reservation. Returns ``status``. Recorded in the reservation book."""
        return await self.core.reservations.cancel(
            lambda: self._cancel_reservation(reservation_id), reservation_id, self.core.clock)

    async def _cancel_reservation(self, reservation_id: int) -> dict[str, Any]:
        """CancelReservation (the same in every version)."""
        return answer(await self.call_json("CancelReservation",
                                           {"reservationId": reservation_id}))

    async def get_charging_profiles(self, *, request_id: int | None = None,
                                    evse_id: int | None = None,
                                    purpose: PurposeFilter | None = None,
                                    stack_level: int | None = None,
                                    profile_ids: list[int] | None = None,
                                    report_timeout_s: float | None = None) -> dict[str, Any]:
        """Ask a 2.x station which profiles it has (InvalidOperation on 1.6)."""
        raise InvalidOperation("", f"GetChargingProfiles needs OCPP 2.0.1; "
                                   f"the station speaks {self.version}")

    # -- connectors, local authorization, device model, firmware and logs ---------
    @abstractmethod
    async def unlock_connector(self, evse_id: int, connector_id: int = 1) -> dict[str, Any]:
        """Release the cable of a connector (1.6: connector ``evse_id``). Returns ``status``."""

    async def clear_cache(self) -> dict[str, Any]:
        """Empty the station's authorization cache (ClearCache). Returns ``status``."""
        return answer(await self.call_json("ClearCache", {}))

    @abstractmethod
    async def get_local_list_version(self) -> dict[str, Any]:
        """The version of the station's local authorization list: ``list_version``
        (0: none, -1 on 1.6: no list support)."""

    async def send_local_list(self, update_type: UpdateType, *, version: int | None = None,
                              tokens: Sequence[str] | None = None) -> dict[str, Any]:
        """Send the local authorization list (SendLocalList).

        ``tokens`` None: every token the CSMS marks ``local``; otherwise those ids,
        where a Differential update removes an id the CSMS does not know. The
        version is the last one the station accepted plus one unless given; an
        accepted version is kept (``Store.local_list_version``). Returns
        ``status`` and ``list_version``.
        """
        now = self.core.clock()
        entries = self.core.authorizer.local_list(now, tokens)
        unknown = [token for record, token, _ in entries if record is None]
        if update_type == "Full" and unknown:
            raise InvalidOperation("tokens", f"unknown tokens in a full list: {unknown}")
        too_long = [token for _, token, _ in entries if len(token) > self.id_token_max]
        if too_long and tokens is not None:
            raise InvalidOperation("tokens", f"OCPP {self.version} id tokens have at most "
                                             f"{self.id_token_max} characters: {too_long}")
        if too_long:  # configured tokens this version cannot carry: left out, said so
            log.warning("%s: %d tokens too long for OCPP %s left out of the local list",
                        self.id, len(too_long), self.version, extra={
                            "event": "local_list_tokens_left_out", "station": self.id})
            entries = [e for e in entries if len(e[1]) <= self.id_token_max]
        if version is None:
            version = self.core.store.local_list_version(self.id) + 1
        payload = self._local_list_payload(version, update_type, entries)
        result = await self.call_json("SendLocalList", payload)
        if result["status"] == "Accepted":
            self.core.store.record_local_list(self.id, version, iso(now))
        return answer(result, list_version=version)

    @abstractmethod
    def _local_list_payload(self, version: int, update_type: str,
                            entries: list[tuple[Any, str, Any]]) -> dict[str, Any]:
        """SendLocalList in this version's wire form."""

    @abstractmethod
    async def get_variables(self, items: Sequence[VariableSpec | Mapping[str, Any]]
                            ) -> dict[str, Any]:
        """Read variables (2.x GetVariables, 1.6 GetConfiguration); what the station
        reports is kept in the device model. Returns ``status`` and ``variables``."""

    @abstractmethod
    async def set_variables(self, items: Sequence[VariableSpec | Mapping[str, Any]]
                            ) -> dict[str, Any]:
        """Write variables (2.x SetVariables, 1.6 ChangeConfiguration per key); accepted
        values are kept in the device model. Returns ``status`` and ``variables``."""

    @abstractmethod
    async def get_base_report(self, report_base: ReportBase = "FullInventory"
                              ) -> dict[str, Any]:
        """Ask for the station's device model (2.x GetBaseReport, answered later by
        NotifyReport; 1.6 GetConfiguration of every key). Returns ``status``."""

    async def get_transaction_status(self, transaction_id: str | None = None
                                     ) -> dict[str, Any]:
        """Ask a 2.x station about a transaction (E14). InvalidOperation on 1.6."""
        raise InvalidOperation("", f"GetTransactionStatus needs OCPP 2.0.1; "
                                   f"the station speaks {self.version}")

    @abstractmethod
    async def update_firmware(self, location: str, retrieve_at: datetime, *,
                              retries: int | None = None,
                              retry_interval_s: int | None = None,
                              install_at: datetime | None = None,
                              signing_certificate: str | None = None,
                              signature: str | None = None) -> dict[str, Any]:
        """Have the station download and install firmware from ``location``; progress
        comes as (Signed)FirmwareStatusNotification. Returns ``status`` and
        ``request_id`` (1.6 UpdateFirmware answers nothing: status Accepted)."""

    @abstractmethod
    async def get_log(self, location: str, log_type: LogType = "DiagnosticsLog", *,
                      oldest: datetime | None = None, latest: datetime | None = None,
                      retries: int | None = None, retry_interval_s: int | None = None
                      ) -> dict[str, Any]:
        """Have the station upload a log to ``location`` (2.x GetLog; 1.6
        GetDiagnostics for DiagnosticsLog, the security whitepaper's GetLog else).
        Returns ``status``, ``filename`` and ``request_id`` where they apply."""

    async def set_default_tariff(self, evse_id: int = 0, tariff_id: str | None = None
                                 ) -> dict[str, Any]:
        """Tell a 2.1 station the CSMS's tariff (SetDefaultTariff). InvalidOperation
        before 2.1."""
        raise InvalidOperation("", f"SetDefaultTariff needs OCPP 2.1; the station speaks "
                                   f"{self.version}")

    async def clear_tariffs(self, evse_id: int | None = None,
                            tariff_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """Remove tariffs from a 2.1 station (ClearTariffs). InvalidOperation before 2.1."""
        raise InvalidOperation("", f"ClearTariffs needs OCPP 2.1; the station speaks "
                                   f"{self.version}")

    def _keep_variables(self, rows: list[dict[str, Any]], source: str) -> None:
        self.core.store.record_variables(self.id, rows, source=source,
                                         at=iso(self.core.clock()))
