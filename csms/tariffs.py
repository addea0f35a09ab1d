"""Driver-facing tariff policies: what a charging session costs the driver.

A :class:`~evtwin.csms.model.Tariff` names one policy (``kind``) and its prices:

``flat``
    one price per kWh (``energy_per_kwh``), today's tariff;
``tou``
    time-of-use: daily bands of a price per kWh in local time (``bands``: a band from
    its start hour until the next band's, the last one wrapping past midnight). The
    energy a session takes is split over the bands by the meter readings the CSMS
    received: between two readings the energy is spread evenly over the time;
``occupancy``
    ``energy_per_kwh`` plus ``occupancy_surcharge_per_kwh`` on the whole session when,
    at its start, the share of its site's EVSEs in use (this one included) was at or
    above ``occupancy_threshold``.

Any kind may add an idle fee (``idle_fee_per_min``): per minute the EV stays plugged in
after charging stopped (the last time its energy register rose: the EV is full or took
what it wanted), beyond a grace period (``idle_grace_min``), at most ``idle_fee_cap``
per session. ``site_offsets_per_kwh`` adds a per-site amount to every per-kWh price
there (a cheaper or dearer site). Session fee, time price and export credit are as for
the flat tariff.

The CSMS bills only what its stations told it (meter readings and their times), so the
costs here are functions of those readings; :func:`energy_price` and
:func:`price_schedule` give the same tariff as a published schedule (what drivers and
OCPP 2.1 stations are told). Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .model import Tariff

#: Tariff kinds the CSMS knows.
TARIFF_KINDS = ("flat", "tou", "occupancy")

MeterPoint = tuple[datetime, float]
"""(time, energy import register in Wh): one meter reading of a session."""


@lru_cache(maxsize=64)
def tariff_zone(name: str) -> tzinfo:
    """The zone of a tariff's local clock: ``UTC``, a fixed offset ``+02:00`` or an IANA
    name (``Europe/Amsterdam``). ValueError naming it when unknown."""
    if name.upper() in ("UTC", "Z"):
        return UTC
    if name[:1] in "+-" and len(name) == 6 and name[3] == ":":
        try:
            hours, minutes = int(name[1:3]), int(name[4:6])
        except ValueError:
            pass
        else:
            sign = -1 if name[0] == "-" else 1
            return timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (give UTC, an offset like +01:00 "
                         "or an IANA name like Europe/Amsterdam)") from None


def check_tariff(t: Tariff) -> None:
    """ValueError naming the field when a tariff cannot be used."""
    if t.kind not in TARIFF_KINDS:
        raise ValueError(f"kind: unknown tariff kind {t.kind!r}; known: "
                         + ", ".join(TARIFF_KINDS))
    if t.kind == "tou" and not t.bands:
        raise ValueError('bands: give at least one band for kind = "tou"')
    starts = [h for h, _ in t.bands]
    if len(set(starts)) != len(starts):
        raise ValueError("bands: two bands start at the same hour")
    if any(not 0.0 <= h < 24.0 for h in starts):
        raise ValueError("bands: a band's start hour must be in [0, 24)")
    try:
        tariff_zone(t.timezone)
    except ValueError as exc:
        raise ValueError(f"timezone: {exc}") from None


def is_plain(t: Tariff) -> bool:
    """True for today's flat tariff (no bands, surcharge or idle fee apply): its CDR is
    computed from the session's totals alone, as it always was."""
    return t.kind == "flat" and t.idle_fee_per_min <= 0.0 and not t.site_offsets_per_kwh


def site_offset(t: Tariff, site: str | None) -> float:
    """The per-kWh amount added at ``site`` (0 when the tariff gives it none)."""
    for name, offset in t.site_offsets_per_kwh:
        if name == site:
            return offset
    return 0.0


def _band_price(t: Tariff, local_hour: float) -> float:
    """The ToU band's price per kWh at a local clock hour (the last band wraps)."""
    bands = sorted(t.bands)
    price = bands[-1][1]
    for start_h, band_price in bands:
        if start_h <= local_hour:
            price = band_price
    return price


def energy_price(t: Tariff, at: datetime, site: str | None = None,
                 surcharged: bool = False) -> float:
    """The price per kWh at instant ``at`` (aware) at ``site``: the band's (``tou``) or
    ``energy_per_kwh``, plus the site's offset, plus the occupancy surcharge when
    ``surcharged`` (``occupancy``: the session started at high occupancy)."""
    if t.kind == "tou":
        local = at.astimezone(tariff_zone(t.timezone))
        price = _band_price(t, local.hour + local.minute / 60.0 + local.second / 3600.0)
    else:
        price = t.energy_per_kwh
    if t.kind == "occupancy" and surcharged:
        price += t.occupancy_surcharge_per_kwh
    return price + site_offset(t, site)


def _boundaries(t: Tariff, start: datetime, end: datetime) -> list[datetime]:
    """The instants in (start, end) where a ToU band begins (local clock)."""
    if t.kind != "tou" or end <= start:
        return []
    zone = tariff_zone(t.timezone)
    out: list[datetime] = []
    day = start.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    day = day.replace(tzinfo=None)
    while True:
        for start_h, _ in sorted(t.bands):
            naive = day + timedelta(hours=start_h)
            instant = _local_instant(naive, zone)
            if instant >= end:
                return out
            if instant > start:
                out.append(instant)
        day += timedelta(days=1)


def _local_instant(naive: datetime, zone: tzinfo) -> datetime:
    """The instant local clocks in ``zone`` read ``naive`` (the first one in a repeat)."""
    return naive.replace(tzinfo=zone).astimezone(UTC)


def energy_cost(t: Tariff, readings: Sequence[MeterPoint], site: str | None = None,
                surcharged: bool = False) -> tuple[float, float]:
    """(cost of the energy, kWh) over a session's meter readings, oldest first.

    Between two readings the energy is spread evenly over the time and priced band by
    band (a reading that goes down, a meter reset, adds nothing).
    """
    cost = 0.0
    kwh = 0.0
    for (t0, e0), (t1, e1) in pairwise(readings):
        delta_kwh = max(e1 - e0, 0.0) / 1000.0
        if delta_kwh <= 0.0:
            continue
        kwh += delta_kwh
        span_s = (t1 - t0).total_seconds()
        if span_s <= 0.0 or t.kind != "tou":
            cost += delta_kwh * energy_price(t, t1 if span_s <= 0.0 else t0, site, surcharged)
            continue
        cuts = [t0, *_boundaries(t, t0, t1), t1]
        for a, b in pairwise(cuts):
            share = (b - a).total_seconds() / span_s
            cost += delta_kwh * share * energy_price(t, a, site, surcharged)
    return cost, kwh


def charging_end(readings: Sequence[MeterPoint]) -> datetime | None:
    """When charging stopped: the time of the first reading that shows the session's
    final register (None without readings)."""
    if not readings:
        return None
    final = max(e for _, e in readings)
    for at, energy in readings:
        if energy >= final:
            return at
    return readings[-1][0]


def idle_fee(t: Tariff, readings: Sequence[MeterPoint], ended_at: datetime) -> float:
    """The idle fee of a session that ended (or is costed) at ``ended_at``: per minute
    plugged in after charging stopped beyond the grace period, capped."""
    if t.idle_fee_per_min <= 0.0:
        return 0.0
    stopped = charging_end(readings)
    if stopped is None:
        return 0.0
    idle_min = max((ended_at - stopped).total_seconds() / 60.0 - t.idle_grace_min, 0.0)
    fee = idle_min * t.idle_fee_per_min
    return fee if t.idle_fee_cap is None else min(fee, t.idle_fee_cap)


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """What one session costs the driver, by part (currency units)."""

    energy: float
    """Energy at the prices in force (bands, site offset, surcharge included)."""
    time: float
    session_fee: float
    idle_fee: float
    export_credit: float
    surcharge: float = 0.0
    """The part of ``energy`` that is the occupancy surcharge."""
    energy_kwh: float = 0.0

    @property
    def total(self) -> float:
        """The session's cost: fee + energy + time + idle fee - export credit."""
        return self.session_fee + self.energy + self.time + self.idle_fee - self.export_credit


def session_cost(t: Tariff, readings: Sequence[MeterPoint], *, started_at: datetime,
                 ended_at: datetime, exported_wh: float = 0.0, site: str | None = None,
                 surcharged: bool = False) -> CostBreakdown:
    """A session's cost under ``t`` from its meter readings (the start reading first,
    the end reading last), its start and end and what it fed back."""
    energy, kwh = energy_cost(t, readings, site, surcharged)
    surcharge = kwh * t.occupancy_surcharge_per_kwh if (
        t.kind == "occupancy" and surcharged) else 0.0
    duration_s = max((ended_at - started_at).total_seconds(), 0.0)
    return CostBreakdown(
        energy=energy, time=t.time_per_hour * duration_s / 3600.0,
        session_fee=t.session_fee, idle_fee=idle_fee(t, readings, ended_at),
        export_credit=t.export_per_kwh * max(exported_wh, 0.0) / 1000.0,
        surcharge=surcharge, energy_kwh=kwh)


def surcharged_at_start(t: Tariff, in_use: int, evses: int) -> bool:
    """Whether a session that starts with ``in_use`` of its site's ``evses`` EVSEs busy
    (itself included) pays the occupancy surcharge."""
    return t.kind == "occupancy" and evses > 0 and in_use / evses >= t.occupancy_threshold


@dataclass(slots=True)
class TariffBook:
    """The CSMS's record of what each ended session cost, by part: the charge detail
    records keep the total; this keeps the breakdown (idle fees, surcharges) for
    reports. In memory: a restarted CSMS starts an empty book."""

    final: dict[tuple[str, str], CostBreakdown] = field(default_factory=dict)

    def note(self, key: tuple[str, str], cost: CostBreakdown) -> None:
        """Keep the breakdown of an ended session (a later, corrected one replaces it)."""
        self.final[key] = cost

    def totals(self) -> dict[str, float]:
        """Sums over every ended session: revenue, idle fees, surcharges, energy."""
        costs = list(self.final.values())
        return {"revenue": sum(c.total for c in costs),
                "idle_fees": sum(c.idle_fee for c in costs),
                "surcharges": sum(c.surcharge for c in costs),
                "energy_kwh": sum(c.energy_kwh for c in costs),
                "sessions": float(len(costs))}


def readings_from_store(rows: Iterable[dict[str, Any]], energy_measurand: str,
                        wh_per_unit: dict[str, float]) -> list[MeterPoint]:
    """A transaction's energy register readings from its stored sampled values (rows of
    ``Store.meter_values``), in time order."""
    out: list[MeterPoint] = []
    for row in rows:
        if row["measurand"] != energy_measurand or row["phase"] is not None:
            continue
        at = datetime.fromisoformat(str(row["timestamp"]).replace("Z", "+00:00"))
        out.append((at, float(row["value"]) * wh_per_unit.get(row["unit"] or "Wh", 1.0)))
    out.sort(key=lambda p: p[0])
    return out


def price_schedule(t: Tariff, site: str | None = None) -> list[tuple[float, float]]:
    """The published per-kWh schedule at ``site``: ``(local start hour, price)`` pairs,
    sorted (one pair for a tariff without bands; the occupancy surcharge, which depends
    on the moment, is not in it)."""
    offset = site_offset(t, site)
    if t.kind == "tou":
        return [(h, p + offset) for h, p in sorted(t.bands)]
    return [(0.0, t.energy_per_kwh + offset)]


def _hhmm(hour: float) -> str:
    minutes = round(hour * 60.0) % (24 * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def tariff_21(t: Tariff, tariff_id: str, site: str | None = None) -> dict[str, Any]:
    """The tariff as OCPP 2.1's ``TariffType`` (SetDefaultTariff, AuthorizeResponse):
    per-kWh prices (ToU bands as ``startTimeOfDay``/``endTimeOfDay`` conditions in
    local time, as the schema defines them), the time price for charging and idle time,
    the idle fee as an idle-time price from ``minIdleTime`` = the grace period, and the
    fixed fee. What TariffType cannot say (the occupancy surcharge, which depends on
    the site at the session's start, and the idle fee's cap on its own) the CSMS's
    ``totalCost`` carries."""
    offset = site_offset(t, site)
    prices: list[dict[str, Any]]
    if t.kind == "tou":
        bands = sorted(t.bands)
        prices = []
        for i, (start_h, price) in enumerate(bands):
            end_h = bands[(i + 1) % len(bands)][0]
            entry: dict[str, Any] = {"priceKwh": round(price + offset, 6)}
            if len(bands) > 1:
                entry["conditions"] = {"startTimeOfDay": _hhmm(start_h),
                                       "endTimeOfDay": _hhmm(end_h)}
            prices.append(entry)
    else:
        prices = [{"priceKwh": round(t.energy_per_kwh + offset, 6)}]
    tariff: dict[str, Any] = {"tariffId": tariff_id, "currency": t.currency,
                              "energy": {"prices": prices}}
    idle: list[dict[str, Any]] = []
    if t.idle_fee_per_min > 0.0:
        # First: the first element whose conditions hold is the price in force.
        idle.append({"priceMinute": t.idle_fee_per_min + t.time_per_hour / 60.0,
                     "conditions": {"minIdleTime": round(t.idle_grace_min * 60.0)}})
    if t.time_per_hour:  # the CSMS bills all the time plugged in: charging or idle
        tariff["chargingTime"] = {"prices": [{"priceMinute": t.time_per_hour / 60.0}]}
        idle.append({"priceMinute": t.time_per_hour / 60.0})
    if idle:
        tariff["idleTime"] = {"prices": idle}
    if t.session_fee:
        tariff["fixedFee"] = {"prices": [{"priceFixed": t.session_fee}]}
    return tariff


__all__ = [
    "TARIFF_KINDS",
    "CostBreakdown",
    "MeterPoint",
    "TariffBook",
    "charging_end",
    "check_tariff",
    "energy_cost",
    "energy_price",
    "idle_fee",
    "is_plain",
    "price_schedule",
    "readings_from_store",
    "session_cost",
    "site_offset",
    "surcharged_at_start",
    "tariff_21",
    "tariff_zone",
]
