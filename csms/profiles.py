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

Purpose = Literal["ChargingStationMaxProfile", "TxDefaultProfile", "TxProfile",
                  "ChargingStationExternalConstraints"]
Kind = Literal["Absolute", "Recurring", "Relative"]
Unit = Literal["W", "A"]

_RECURRENCE = {"Daily": timedelta(days=1), "Weekly": timedelta(days=7)}
NOMINAL_VOLTAGE_V = 230.0


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

    def _origin(self, at: datetime, tx_start: datetime | None) -> datetime | None:
        if self.kind == "Relative":
            return tx_start
        origin = self.start_schedule
        if origin is None:
            return None
        if self.kind == "Recurring" and self.recurrency in _RECURRENCE:
            period = _RECURRENCE[self.recurrency]
            if at >= origin:
                origin += period * ((at - origin) // period)
        return origin

    def limit_at(self, at: datetime, tx_start: datetime | None) -> Period | None:
        """The period in force at ``at``, or None if the profile is not active then."""
        if self.valid_from is not None and at < self.valid_from:
            return None
        if self.valid_to is not None and at >= self.valid_to:
            return None
        origin = self._origin(at, tx_start)
        if origin is None:
            return None
        elapsed = (at - origin).total_seconds()
        if elapsed < 0 or (self.duration_s is not None and elapsed >= self.duration_s):
            return None
        current = None
        for p in self.periods:
            if p.start_s <= elapsed:
                current = p
        return current

    def changes_between(self, t0: datetime, t1: datetime, tx_start: datetime | None
                        ) -> list[datetime]:
        """Instants in (t0, t1) at which this profile's limit may change."""
        points = {self.valid_from, self.valid_to}
        origins = {self._origin(t0, tx_start), self._origin(t1, tx_start)}
        if self.kind == "Recurring" and self.recurrency in _RECURRENCE:
            origin = self._origin(t0, tx_start)
            step = _RECURRENCE[self.recurrency]
            while origin is not None and origin < t1:
                origins.add(origin)
                origin += step
        for origin in origins:
            if origin is None:
                continue
            points.update(origin + timedelta(seconds=p.start_s) for p in self.periods)
            if self.duration_s is not None:
                points.add(origin + timedelta(seconds=self.duration_s))
        return sorted(p for p in points if p is not None and t0 < p < t1)


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
    if unit == target:
        return value
    if unit == "A":
        return value * NOMINAL_VOLTAGE_V * phases
    return value / (NOMINAL_VOLTAGE_V * phases)


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
                 tx_start: datetime | None = None) -> float | None:
        """The composite limit on an EVSE at ``at`` in ``unit`` (None: unlimited)."""

        def best(candidates: list[ChargingProfile]) -> float | None:
            for p in sorted(candidates, key=lambda p: (-p.stack_level, -p.evse_id)):
                period = p.limit_at(at, tx_start)
                if period is not None:
                    return to_unit(period.limit, p.unit, unit, period.phases or phases)
            return None

        mine = [p for p in self.profiles if p.evse_id in (0, evse_id)]
        tx = best([p for p in mine if p.purpose == "TxProfile" and p.evse_id == evse_id
                   and transaction_id is not None and p.transaction_id == transaction_id])
        limit = tx if tx is not None else best(
            [p for p in mine if p.purpose == "TxDefaultProfile"])
        for purpose in ("ChargingStationMaxProfile", "ChargingStationExternalConstraints"):
            cap = best([p for p in mine if p.purpose == purpose])
            if cap is not None:
                limit = cap if limit is None else min(limit, cap)
        if evse_max is not None:
            limit = evse_max if limit is None else min(limit, evse_max)
        return limit

    def composite_schedule(self, start: datetime, duration_s: float, *, evse_id: int,
                           unit: Unit, phases: int, evse_max: float | None = None,
                           transaction_id: str | None = None,
                           tx_start: datetime | None = None) -> list[Period]:
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
                                  tx_start=tx_start)
            value = float("inf") if limit is None else limit
            if not out or out[-1].limit != value:
                out.append(Period((at - start).total_seconds(), value))
        return out
