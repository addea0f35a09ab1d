"""OCPP smart-charging arithmetic: one set of rules for the stations and the CSMS.

What limit a set of charging profiles puts on an EVSE at an instant (OCPP
2.0.1 K01/K08, 1.6 §3.13), so that a virtual station charging under its
profiles and the CSMS predicting what it installed compute the same number:

- a profile is active from ``valid_from_s`` (inclusive) to ``valid_to_s``
  (exclusive); its schedule starts at ``start_s`` (Absolute), at the
  transaction's start (Relative) or at the last daily/weekly recurrence of
  ``start_s`` (Recurring; not before ``start_s`` itself), and ends after
  ``duration_s`` if given; the period in force is the last one started;
- for an EVSE, a TxProfile of its running transaction overrides every
  TxDefaultProfile; within a purpose the highest stack level wins, and at
  equal stack level an EVSE's own profile beats a station-wide one (EVSE 0);
- ChargingStationMaxProfile and ChargingStationExternalConstraints cap the
  station as a whole: the EVSEs that draw power share the cap equally
  (``sharing``: how many), the lowest cap applies;
- the EVSE's own hardware limit caps everything; limits are never negative.

Times are seconds on whatever clock the caller uses throughout (a
simulation's seconds, POSIX time); limits are in the profile's unit (W or A,
converted with the nominal voltage and the number of phases). No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NOMINAL_VOLTAGE_V = 230.0
RECURRENCE_S = {"Daily": 86400.0, "Weekly": 7 * 86400.0}
STATION_CAPS = ("ChargingStationMaxProfile", "ChargingStationExternalConstraints")

PeriodTuple = tuple[float, float, int | None]
"""(start_s after the schedule's start, limit in the profile's unit, number of phases)."""


def to_unit(value: float, unit: str, target: str, phases: int) -> float:
    """Convert a limit between W and A (nominal voltage, ``phases`` phases)."""
    if unit == target:
        return value
    if unit == "A":
        return value * NOMINAL_VOLTAGE_V * phases
    return value / (NOMINAL_VOLTAGE_V * phases)


@dataclass(slots=True)
class Profile:
    """A charging profile on a clock of seconds (see the module docstring)."""

    profile_id: int
    purpose: str
    stack_level: int
    kind: str
    unit: str
    periods: Sequence[PeriodTuple]
    start_s: float | None  # schedule start (Absolute, Recurring)
    duration_s: float | None
    transaction_id: str | None
    valid_from_s: float | None = None
    valid_to_s: float | None = None
    recurrency: str | None = None  # "Daily" | "Weekly" for kind Recurring
    setpoints: Sequence[float | None] | None = None
    """OCPP 2.1 CentralSetpoint per period, in the profile's unit (negative =
    discharge); None where a period has none."""

    def origin(self, t: float, tx_start_s: float | None) -> float | None:
        """When the schedule in force at ``t`` started (None: it has no start)."""
        if self.kind == "Relative":
            return tx_start_s if tx_start_s is not None else t
        origin = self.start_s if self.start_s is not None else t
        period = RECURRENCE_S.get(self.recurrency or "") if self.kind == "Recurring" else None
        if period is not None and t >= origin:
            origin += period * ((t - origin) // period)
        return origin

    def period_index(self, t: float, tx_start_s: float | None) -> int | None:
        """The index of the period in force at ``t`` (None: the profile is not active)."""
        if self.valid_from_s is not None and t < self.valid_from_s:
            return None
        if self.valid_to_s is not None and t >= self.valid_to_s:
            return None
        origin = self.origin(t, tx_start_s)
        if origin is None:
            return None
        elapsed = t - origin
        if elapsed < 0 or (self.duration_s is not None and elapsed >= self.duration_s):
            return None
        current: int | None = None
        for i, period in enumerate(self.periods):
            if period[0] <= elapsed:
                current = i
        return current

    def limit(self, t: float, tx_start_s: float | None, unit: str, phases: int
              ) -> float | None:
        """The limit this profile sets at ``t`` in ``unit`` (None: not active). A period's
        own number of phases, where it gives one, converts its current."""
        i = self.period_index(t, tx_start_s)
        if i is None:
            return None
        _, value, n_phases = self.periods[i]
        return to_unit(value, self.unit, unit, n_phases or phases)

    def limit_w(self, t: float, tx_start_s: float | None, phases: int) -> float | None:
        """The limit at ``t`` in W (None: not active)."""
        return self.limit(t, tx_start_s, "W", phases)

    def setpoint_w(self, t: float, tx_start_s: float | None, phases: int) -> float | None:
        """The 2.1 setpoint in force at ``t`` in W (negative = discharge), if any."""
        if self.setpoints is None:
            return None
        i = self.period_index(t, tx_start_s)
        if i is None:
            return None
        value = self.setpoints[i]
        return None if value is None else to_unit(value, self.unit, "W", phases)

    def switch_times(self, t0: float, t1: float, tx_start_s: float | None) -> list[float]:
        """Instants in (t0, t1) at which this profile's limit may change."""
        points = {self.valid_from_s, self.valid_to_s}
        origins = {self.origin(t0, tx_start_s), self.origin(t1, tx_start_s)}
        step = RECURRENCE_S.get(self.recurrency or "") if self.kind == "Recurring" else None
        if step is not None:
            origin = self.origin(t0, tx_start_s)
            while origin is not None and origin < t1:
                origins.add(origin)
                origin += step
        for origin in origins:
            if origin is None:
                continue
            points.update(origin + p[0] for p in self.periods)
            if self.duration_s is not None:
                points.add(origin + self.duration_s)
        return sorted(p for p in points if p is not None and t0 < p < t1)


def _best(candidates: list[tuple[int, Profile]], t: float, tx_start_s: float | None,
          unit: str, phases: int) -> float | None:
    """The limit of the winning active profile: highest stack level, then the EVSE's own."""
    if len(candidates) > 1:
        candidates = sorted(candidates, key=lambda c: (-c[1].stack_level, -c[0]))
    for _, p in candidates:
        value = p.limit(t, tx_start_s, unit, phases)
        if value is not None:
            return value
    return None


def composite_limit(profiles: Iterable[tuple[int, Profile]], t: float, *, evse_id: int,
                    unit: str, phases: int, evse_max: float | None = None,
                    transaction_id: str | None = None, tx_start_s: float | None = None,
                    sharing: int = 1) -> float | None:
    """The limit on EVSE ``evse_id`` at ``t`` in ``unit`` (None: nothing limits it).

    ``profiles`` are (EVSE id, profile) pairs of one station, 0 for station-wide
    ones; ``sharing`` is how many EVSEs share a station cap (those drawing power).
    """
    # One pass sorts them by purpose (this runs for every integration step of a station).
    tx: list[tuple[int, Profile]] = []
    default: list[tuple[int, Profile]] = []
    caps: list[tuple[int, Profile]] = []
    for e, p in profiles:
        if e != 0 and e != evse_id:
            continue
        purpose = p.purpose
        if purpose == "TxProfile":
            if e == evse_id and transaction_id is not None \
                    and p.transaction_id == transaction_id:
                tx.append((e, p))
        elif purpose == "TxDefaultProfile":
            default.append((e, p))
        elif purpose in STATION_CAPS:
            caps.append((e, p))
    limit = _best(tx, t, tx_start_s, unit, phases) if tx else None
    if limit is None and default:
        limit = _best(default, t, tx_start_s, unit, phases)
    if caps:
        levels = [(0, max(sharing, 1))] + ([(evse_id, 1)] if evse_id != 0 else [])
        for purpose in STATION_CAPS:
            # A cap on the station is shared; one set on this EVSE (external
            # constraints may be) applies to it in full. A Relative cap on the whole
            # station is not timed from one EVSE's transaction (its start: now).
            for level, divide in levels:
                found = [(e, p) for e, p in caps if e == level and p.purpose == purpose]
                cap = _best(found, t, tx_start_s if level != 0 else None, unit, phases) \
                    if found else None
                if cap is not None:
                    limit = cap / divide if limit is None else min(limit, cap / divide)
    if evse_max is not None:
        limit = evse_max if limit is None else min(limit, evse_max)
    return None if limit is None else max(limit, 0.0)
