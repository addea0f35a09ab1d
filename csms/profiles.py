"""Smart-charging semantics: charging profiles and the composite schedule.

Version-neutral (OCPP 1.6 ChargePointMaxProfile is ChargingStationMaxProfile
here). Times are aware datetimes; limits are in the profile's unit, and the
composite schedule is computed in W or A as asked (conversion with the
nominal voltage and the number of phases). Pure functions, no I/O.

Rules (OCPP 2.0.1 K01/K08, 1.6 §3.13):

- within a purpose, the active profile with the highest stack level wins;
- for an EVSE, a TxProfile of its running transaction overrides any
  TxDefaultProfile; at equal stack level an EVSE-specific profile beats a
  station-wide one (EVSE 0);
- ChargingStationMaxProfile and ChargingStationExternalConstraints cap the
  result (the lowest applies);
- a profile is active between ``valid_from`` and ``valid_to``; its schedule
  starts at ``start_schedule`` (Absolute), at the transaction start
  (Relative) or at the last daily/weekly recurrence of ``start_schedule``
  (Recurring), and ends after ``duration_s`` if given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Literal

from evtwin.ocppj import smartcharging as sc

Purpose = Literal["ChargingStationMaxProfile", "TxDefaultProfile", "TxProfile",
                  "ChargingStationExternalConstraints"]
Kind = Literal["Absolute", "Recurring", "Relative"]
Unit = Literal["W", "A"]

NOMINAL_VOLTAGE_V = sc.NOMINAL_VOLTAGE_V


class ProfileError(ValueError):
    """A charging profile that breaks the OCPP rules; the message says which."""


@dataclass(frozen=True, slots=True)
class Period:
    """One schedule period: from ``start_s`` after the schedule start, ``limit``."""

    start_s: float
    limit: float
    phases: int | None = None


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    """A charging profile as the CSMS keeps it, whatever the OCPP version."""

    profile_id: int
    evse_id: int
    purpose: Purpose
    stack_level: int
    kind: Kind
    unit: Unit
    periods: tuple[Period, ...]
    start_schedule: datetime | None = None
    duration_s: float | None = None
    recurrency: Literal["Daily", "Weekly"] | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: str | None = None

    def validate(self) -> None:
        """Raise ProfileError if the profile breaks a rule the spec states."""
        if not self.periods:
            raise ProfileError("a schedule needs at least one period")
        if self.periods[0].start_s != 0:
            raise ProfileError("the first period must start at 0")
        starts = [p.start_s for p in self.periods]
        if starts != sorted(set(starts)):
            raise ProfileError("period starts must increase")
        if self.purpose == "TxProfile" and self.evse_id == 0:
            raise ProfileError("a TxProfile needs an EVSE id > 0")
        if self.purpose in ("ChargingStationMaxProfile",) and self.evse_id != 0:
            raise ProfileError(f"{self.purpose} must target EVSE 0")
        if self.kind == "Recurring" and (self.recurrency is None or self.start_schedule is None):
            raise ProfileError("a Recurring profile needs recurrency and start_schedule")
        if self.kind == "Absolute" and self.start_schedule is None:
            raise ProfileError("an Absolute profile needs start_schedule")
        if self.stack_level < 0:
            raise ProfileError("stack level must be >= 0")

    def rules(self) -> sc.Profile:
        """This profile on POSIX seconds, for the shared rules of
        :mod:`evtwin.ocppj.smartcharging` (the stations' too)."""
        def secs(at: datetime | None) -> float | None:
            return None if at is None else at.timestamp()
        return sc.Profile(
            profile_id=self.profile_id, purpose=self.purpose, stack_level=self.stack_level,
            kind=self.kind, unit=self.unit,
            periods=[(p.start_s, p.limit, p.phases) for p in self.periods],
            start_s=secs(self.start_schedule), duration_s=self.duration_s,
            transaction_id=self.transaction_id, valid_from_s=secs(self.valid_from),
            valid_to_s=secs(self.valid_to), recurrency=self.recurrency)

    def limit_at(self, at: datetime, tx_start: datetime | None) -> Period | None:
        """The period in force at ``at``, or None if the profile is not active then."""
        i = self.rules().period_index(at.timestamp(),
                                      None if tx_start is None else tx_start.timestamp())
        return None if i is None else self.periods[i]

    def changes_between(self, t0: datetime, t1: datetime, tx_start: datetime | None
                        ) -> list[datetime]:
        """Instants in (t0, t1) at which this profile's limit may change."""
        times = self.rules().switch_times(
            t0.timestamp(), t1.timestamp(), None if tx_start is None else tx_start.timestamp())
        return [datetime.fromtimestamp(t, t0.tzinfo) for t in times]


_TIME_FIELDS = ("start_schedule", "valid_from", "valid_to")
_FIELDS = fields(ChargingProfile)


def profile_to_json(profile: ChargingProfile) -> str:
    """A profile as JSON text, for the store (times in ISO 8601)."""
    # Field by field, not dataclasses.asdict (which deep-copies every value: it was
    # a fifth of a 250-station run, the control cycle persisting each new limit).
    record: dict[str, Any] = {f.name: getattr(profile, f.name) for f in _FIELDS}
    record["periods"] = [{"start_s": p.start_s, "limit": p.limit, "phases": p.phases}
                         for p in profile.periods]
    for name in _TIME_FIELDS:
        if record[name] is not None:
            record[name] = record[name].isoformat()
    return json.dumps(record, sort_keys=True)


def profile_from_json(text: str) -> ChargingProfile:
    """The inverse of :func:`profile_to_json`."""
    record = json.loads(text)
    for name in _TIME_FIELDS:
        if record[name] is not None:
            record[name] = datetime.fromisoformat(record[name])
    record["periods"] = tuple(Period(**p) for p in record["periods"])
    return ChargingProfile(**record)


def to_unit(value: float, unit: Unit, target: Unit, phases: int) -> float:
    """Convert a limit between W and A at the nominal voltage."""
    return sc.to_unit(value, unit, target, phases)


@dataclass
class ProfileSet:
    """The profiles installed on one station, by EVSE (0 = station-wide)."""

    profiles: list[ChargingProfile] = field(default_factory=list)

    def install(self, profile: ChargingProfile) -> None:
        """Install; replaces the same id anywhere and the same purpose/stack on the EVSE.

        (OCPP 2.0.1 K01.FR.05 and K01.FR.06.) Raises ProfileError if invalid.
        """
        profile.validate()
        self.profiles = [p for p in self.profiles if p.profile_id != profile.profile_id and not (
            p.evse_id == profile.evse_id and p.purpose == profile.purpose
            and p.stack_level == profile.stack_level)]
        self.profiles.append(profile)

    def clear(self, *, profile_id: int | None = None, evse_id: int | None = None,
              purpose: str | None = None, stack_level: int | None = None) -> int:
        """Remove matching profiles; returns how many."""
        keep = [p for p in self.profiles if not (
            (profile_id is None or p.profile_id == profile_id)
            and (evse_id is None or p.evse_id == evse_id)
            and (purpose is None or p.purpose == purpose)
            and (stack_level is None or p.stack_level == stack_level))]
        removed = len(self.profiles) - len(keep)
        self.profiles = keep
        return removed

    def end_transaction(self, transaction_id: str) -> None:
        """A TxProfile lives only as long as its transaction."""
        self.profiles = [p for p in self.profiles if not (
            p.purpose == "TxProfile" and p.transaction_id == transaction_id)]

    def limit_at(self, at: datetime, *, evse_id: int, unit: Unit, phases: int,
                 evse_max: float | None = None, transaction_id: str | None = None,
                 tx_start: datetime | None = None, sharing: int = 1) -> float | None:
        """The composite limit on an EVSE at ``at`` in ``unit`` (None: unlimited), by the
        rules the stations follow (:func:`evtwin.ocppj.smartcharging.composite_limit`);
        ``sharing``: how many EVSEs share a station-wide maximum."""
        return sc.composite_limit(
            ((p.evse_id, p.rules()) for p in self.profiles), at.timestamp(),
            evse_id=evse_id, unit=unit, phases=phases, evse_max=evse_max,
            transaction_id=transaction_id,
            tx_start_s=None if tx_start is None else tx_start.timestamp(), sharing=sharing)

    def composite_schedule(self, start: datetime, duration_s: float, *, evse_id: int,
                           unit: Unit, phases: int, evse_max: float | None = None,
                           transaction_id: str | None = None,
                           tx_start: datetime | None = None, sharing: int = 1
                           ) -> list[Period]:
        """The composite schedule on an EVSE from ``start`` for ``duration_s``.

        Periods are relative to ``start``; consecutive equal limits are
        merged; where nothing limits the EVSE the period's limit is
        ``evse_max`` (or ``inf`` if that is not given either).
        """
        end = start + timedelta(seconds=duration_s)
        cuts = {start}
        for p in self.profiles:
            if p.evse_id in (0, evse_id):
                cuts.update(p.changes_between(start, end, tx_start))
        out: list[Period] = []
        for at in sorted(cuts):
            limit = self.limit_at(at, evse_id=evse_id, unit=unit, phases=phases,
                                  evse_max=evse_max, transaction_id=transaction_id,
                                  tx_start=tx_start, sharing=sharing)
            value = float("inf") if limit is None else limit
            if not out or out[-1].limit != value:
                out.append(Period((at - start).total_seconds(), value))
        return out
