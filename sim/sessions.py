"""Charging sessions from data: read a sessions file, fill what it lacks, give the EVs.

:func:`read_sessions` reads a file into one canonical table (:data:`COLUMNS`),
whatever its source's shape (``format``):

``evtwin``
    Our CSV: ``arrival``, ``departure``, ``energy_kwh`` and optionally
    ``session_id``, ``energy_source`` (``requested`` | ``delivered``, default
    requested), ``station_id``, ``site``, ``max_power_kw``, ``capacity_kwh``,
    ``soc_arrival`` (a share, 0-1) and ``ev_id``. Times ISO 8601.
``acn``
    Caltech ACN-Data, the API's JSON (``{"_items": [...]}`` or a list) or the
    same fields as CSV columns: ``connectionTime``, ``disconnectTime``,
    ``kWhDelivered``, ``sessionID``, ``stationID``, ``userID`` and
    ``userInputs`` (the driver's last entry's ``kWhRequested``, when there is
    one, is the energy requested; otherwise ``kWhDelivered`` is taken as
    delivered). Dates RFC 1123 in GMT (``Wed, 25 Apr 2018 11:08:04 GMT``).
``elaad``
    ElaadNL open transaction data (CSV, ``,`` or ``;``): ``TransactionId``,
    ``ChargePoint``, ``UTCTransactionStart``, ``UTCTransactionStop`` (else
    start + ``ConnectedTime`` h), ``TotalEnergy`` (kWh delivered),
    ``MaxPower`` (kW), ``StartCard`` (the EV).
``ocpi_cdr``
    OCPI 2.2.1 CDRs (JSON: a list or a ``{"data": [...]}`` response):
    ``id``, ``start_date_time``, ``end_date_time``, ``total_energy`` (kWh
    delivered), ``cdr_location.evse_uid`` (else ``evse_id``), ``cdr_token.uid``.

Times without an offset are local times in ``timezone`` (an IANA name); a
local time that a DST change skips or repeats takes the offset before the
change. acn, elaad and ocpi_cdr default to UTC (their times are UTC);
evtwin has no default. Every bad value is reported at once, each naming the
file, the line (CSV) or item (JSON) and the column, as a ScenarioError (the
CLI prints one line per problem and exits 2).

:func:`given_evs` turns a scenario's sessions into EVs for the model. What a
file lacks is assumed, seeded by the scenario's seed (stream ``[seed, 7]``),
and named per session in sessions.csv's ``assumed`` column:

- ``max_power``: the EV takes the EVSE's rating (the data do not say what
  the car could take; the EVSE's rating keeps the file's energy reachable
  where the stay allows it).
- ``capacity``: drawn from the default fleet mix (40/58/77/100 kWh with
  p = 0.2/0.35/0.3/0.15, evtwin.agents.behaviour); if the EV's largest
  session would not fit below 80 % SoC (the taper point), the smallest size
  of the mix that fits, else exactly what fits.
- ``soc``: drawn uniform in 0.15-0.6 as for drawn drivers, lowered so that
  the session's energy ends at or below 80 % SoC: charged at the full power
  of the EVSE (above it the battery tapers), so a session is served in full
  exactly when power x 0.92 (efficiency) x stay >= its energy.

A session's ``energy_wanted_kwh`` is the file's energy, into the battery
(where the battery holds it: a given SoC and capacity that cannot take it
cap it, shown by ``energy_file_kwh``). The file's station id pins the visit
to that charger at a private site; at a shared site a driver takes any free
EVSE (the file's ids are another site's) and waits for one as the site's
behaviour says (``patience_min``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from evtwin.agents.behaviour import BATTERY_KWH, BATTERY_P, TAPER_SOC, Vehicle, Visit
from evtwin.agents.model import GivenEV

from .exceptions import ScenarioError

if TYPE_CHECKING:
    from evtwin.agents.ev import EV

    from .scenario import Scenario

from .scenario import zone

log = logging.getLogger("evtwin.sim")

#: The canonical table's columns, in order.
COLUMNS = ("session_id", "arrival", "departure", "energy_kwh", "energy_source", "station_id",
           "site", "max_power_kw", "capacity_kwh", "soc_arrival", "ev_id")
FORMATS = ("evtwin", "acn", "elaad", "ocpi_cdr")
#: Where a format's times are when they carry no offset (None: the scenario must say).
DEFAULT_ZONE: dict[str, str | None] = {"evtwin": None, "acn": "UTC", "elaad": "UTC",
                                       "ocpi_cdr": "UTC"}
SOC_ASSUMED_RANGE = (0.15, 0.6)
#: Sessions are fitted below the taper SoC: charged at full power throughout.
FIT_SOC = TAPER_SOC
#: Stream of the seeded assumptions (see the module docstring).
ASSUMPTION_STREAM = 7
MAX_PROBLEMS = 20


class _Problems:
    """Every problem of one file, each at a line/item and column."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, column: str | None, message: str) -> None:
        place = f"{where}, column {column}" if column else where
        self.items.append((place, message))

    def raise_any(self) -> None:
        if self.items:
            shown = self.items[:MAX_PROBLEMS]
            if len(self.items) > MAX_PROBLEMS:
                shown.append(("", f"... and {len(self.items) - MAX_PROBLEMS} more problems"))
            raise ScenarioError(self.source, shown)


class _Bad(ValueError):
    """A value that cannot be read: ``column`` and ``message``."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column
        self.message = message


# -- values -------------------------------------------------------------------------------
def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    text = str(raw).strip()
    return text or None


def _number(record: dict[str, Any], column: str, *, decimal_comma: bool = False) -> float | None:
    raw = record.get(column)
    if isinstance(raw, bool):
        raise _Bad(column, f"not a number: {raw!r}")
    if isinstance(raw, int | float):
        value = float(raw)
    else:
        text = _text(raw)
        if text is None:
            return None
        if decimal_comma:
            text = text.replace(",", ".")
        try:
            value = float(text)
        except ValueError:
            raise _Bad(column, f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise _Bad(column, f"not a finite number: {raw!r}")
    return value


def _time(record: dict[str, Any], column: str, tz: tzinfo | None,
          *, required: bool = True) -> datetime | None:
    text = _text(record.get(column))
    if text is None:
        if required:
            raise _Bad(column, "missing")
        return None
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        try:
            ts = parsedate_to_datetime(text)  # RFC 1123 / 2822 (ACN-Data)
        except (TypeError, ValueError, IndexError):
            raise _Bad(column, f"not a time: {text!r} (ISO 8601 or RFC 1123)") from None
    if ts.tzinfo is None:
        if tz is None:
            raise _Bad(column, f"{text!r} has no UTC offset: give the sessions' timezone")
        # fold=0: a local time repeated or skipped by a DST change takes the
        # offset before the change.
        ts = ts.replace(tzinfo=tz)
    return ts.astimezone(UTC)


# -- the formats: one raw record -> one canonical row ---------------------------------------
Row = dict[str, Any]
Mapper = Callable[[dict[str, Any], "tzinfo | None", bool], Row]


def _row(**values: Any) -> Row:
    row: Row = dict.fromkeys(COLUMNS)
    row.update(values)
    return row


_EVTWIN_KNOWN = frozenset(COLUMNS)


def _map_evtwin(r: dict[str, Any], tz: tzinfo | None, comma: bool) -> Row:
    source = _text(r.get("energy_source")) or "requested"
    if source not in ("requested", "delivered"):
        raise _Bad("energy_source", f"{source!r} is not requested or delivered")
    energy = _number(r, "energy_kwh", decimal_comma=comma)
    if energy is None:
        raise _Bad("energy_kwh", "missing")
    return _row(session_id=_text(r.get("session_id")), arrival=_time(r, "arrival", tz),
                departure=_time(r, "departure", tz), energy_kwh=energy, energy_source=source,
                station_id=_text(r.get("station_id")), site=_text(r.get("site")),
                max_power_kw=_number(r, "max_power_kw", decimal_comma=comma),
                capacity_kwh=_number(r, "capacity_kwh", decimal_comma=comma),
                soc_arrival=_number(r, "soc_arrival", decimal_comma=comma),
                ev_id=_text(r.get("ev_id")))


def _map_acn(r: dict[str, Any], tz: tzinfo | None, comma: bool) -> Row:
    inputs = r.get("userInputs")
    if isinstance(inputs, str) and inputs.strip():
        try:
            inputs = json.loads(inputs)
        except json.JSONDecodeError:
            raise _Bad("userInputs", "not JSON") from None
    last = inputs[-1] if isinstance(inputs, list) and inputs else None
    requested = _number(last, "kWhRequested") if isinstance(last, dict) else None
    if requested is None:
        requested = _number(r, "kWhRequested", decimal_comma=comma)  # a flattened CSV
    delivered = _number(r, "kWhDelivered", decimal_comma=comma)
    if requested is None and delivered is None:
        raise _Bad("kWhDelivered", "missing (and no kWhRequested)")
    user = r.get("userID")
    return _row(session_id=_text(r.get("sessionID")), arrival=_time(r, "connectionTime", tz),
                departure=_time(r, "disconnectTime", tz),
                energy_kwh=requested if requested is not None else delivered,
                energy_source="requested" if requested is not None else "delivered",
                station_id=_text(r.get("stationID")),
                ev_id=None if user in (None, "None", "") else _text(user))


def _map_elaad(r: dict[str, Any], tz: tzinfo | None, comma: bool) -> Row:
    arrival = _time(r, "UTCTransactionStart", tz)
    departure = _time(r, "UTCTransactionStop", tz, required=False)
    if departure is None:
        hours = _number(r, "ConnectedTime", decimal_comma=comma)
        if hours is None or arrival is None:
            raise _Bad("UTCTransactionStop", "missing (and no ConnectedTime)")
        try:
            departure = arrival + timedelta(hours=hours)
        except (OverflowError, ValueError):
            raise _Bad("ConnectedTime", f"not a stay in hours: {hours}") from None
    energy = _number(r, "TotalEnergy", decimal_comma=comma)
    max_kw = _number(r, "MaxPower", decimal_comma=comma)
    if energy is None:
        raise _Bad("TotalEnergy", "missing")
    return _row(session_id=_text(r.get("TransactionId")), arrival=arrival, departure=departure,
                energy_kwh=energy, energy_source="delivered",
                station_id=_text(r.get("ChargePoint")),
                # ElaadNL gives MaxPower 0 for sessions that drew nothing: unknown, not 0.
                max_power_kw=max_kw if max_kw is not None and max_kw > 0 else None,
                ev_id=_text(r.get("StartCard")))


def _map_ocpi(r: dict[str, Any], tz: tzinfo | None, comma: bool) -> Row:
    location = r.get("cdr_location")
    if not isinstance(location, dict):
        location = {}
    token = r.get("cdr_token")
    energy = _number(r, "total_energy")
    if energy is None:
        raise _Bad("total_energy", "missing")
    return _row(session_id=_text(r.get("id")), arrival=_time(r, "start_date_time", tz),
                departure=_time(r, "end_date_time", tz), energy_kwh=energy,
                energy_source="delivered",
                station_id=_text(location.get("evse_uid")) or _text(location.get("evse_id")),
                ev_id=_text(token.get("uid")) if isinstance(token, dict) else None)


MAPPERS: dict[str, Mapper] = {"evtwin": _map_evtwin, "acn": _map_acn, "elaad": _map_elaad,
                              "ocpi_cdr": _map_ocpi}
#: The columns a CSV of each format must have.
REQUIRED: dict[str, tuple[str, ...]] = {
    "evtwin": ("arrival", "departure", "energy_kwh"),
    "acn": ("connectionTime", "disconnectTime"),
    "elaad": ("UTCTransactionStart",),
    "ocpi_cdr": ("start_date_time", "end_date_time", "total_energy"),
}


# -- files ------------------------------------------------------------------------------------
def _records(path: Path, problems: _Problems
             ) -> tuple[list[tuple[str, dict[str, Any]]], bool, list[str] | None]:
    """``(where, record)`` for every line or item of a file; whether decimals use commas;
    a CSV's header."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ScenarioError(str(path), [("", "sessions file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), [("", f"cannot read the sessions file: {exc}")]) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScenarioError(str(path), [(f"line {exc.lineno}", f"not JSON: {exc.msg}")]
                                ) from None
        # A list, or the ACN-Data API's {"_items": [...]}, or an OCPI response's {"data": [...]}.
        items = data.get("_items", data.get("data")) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ScenarioError(str(path), [("", "expected a list of sessions (or _items / "
                                             "data holding one)")])
        out = []
        for i, item in enumerate(items, start=1):
            if isinstance(item, dict):
                out.append((f"item {i}", item))
            else:
                problems.add(f"item {i}", None, "not an object")
        return out, False, None
    lines = text.splitlines()
    delimiter = ";" if lines and lines[0].count(";") > lines[0].count(",") else ","
    reader = csv.DictReader(lines, delimiter=delimiter)
    rows: list[tuple[str, dict[str, Any]]] = []
    for record in reader:
        if None in record:
            problems.add(f"line {reader.line_num}", None, "more fields than the header has")
            continue
        if all(v in (None, "") for v in record.values()):
            continue
        rows.append((f"line {reader.line_num}", record))
    return rows, delimiter == ";", [str(f).strip() for f in reader.fieldnames or []]


def read_sessions(path: str | Path, *, format: str = "evtwin",
                  timezone: str | None = None) -> pd.DataFrame:
    """Read a sessions file into the canonical table (:data:`COLUMNS`), one row a session.

    ``arrival`` and ``departure`` are aware UTC timestamps; ``energy_kwh`` is what the
    ``energy_source`` says (``requested``, or ``delivered`` when that is all the data
    has); ``session_id`` defaults to the line or item (``line 7``). Raises ScenarioError
    naming the file, line or item and column of every bad value.
    """
    p = Path(path)
    if format not in MAPPERS:
        raise ScenarioError(str(p), [("format", f"unknown format {format!r}; known: "
                                      f"{', '.join(FORMATS)}")])
    zone_name = timezone if timezone is not None else DEFAULT_ZONE[format]
    try:
        tz = zone(zone_name) if zone_name is not None else None
    except ValueError as exc:
        raise ScenarioError(str(p), [("timezone", str(exc))]) from None
    problems = _Problems(str(p))
    records, comma, fields = _records(p, problems)
    if fields is not None:
        header = set(fields)
        missing = [c for c in REQUIRED[format] if c not in header]
        if missing:
            raise ScenarioError(str(p), [("line 1", f"no column {', '.join(missing)} (format "
                                          f"{format!r})")])
        if format == "evtwin":
            unknown = sorted(header - _EVTWIN_KNOWN)
            if unknown:
                raise ScenarioError(str(p), [("line 1", f"unknown columns {unknown}; known: "
                                              f"{', '.join(COLUMNS)}")])
    mapper = MAPPERS[format]
    rows: list[Row] = []
    for where, record in records:
        try:
            row = mapper(record, tz, comma)
        except _Bad as bad:
            problems.add(where, bad.column, bad.message)
            continue
        for problem in _row_problems(row, format):
            problems.add(where, problem.column, problem.message)
        row["session_id"] = row["session_id"] or where.replace(" ", "")
        rows.append(row)
    problems.raise_any()
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("arrival", "departure"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    for col in ("energy_kwh", "max_power_kw", "capacity_kwh", "soc_arrival"):
        frame[col] = frame[col].astype(float)
    dupes = frame["session_id"][frame["session_id"].duplicated()]
    if len(dupes):
        raise ScenarioError(str(p), [("", f"duplicate session ids {sorted(set(dupes))[:5]}")])
    return frame


#: Column names as each format spells them (for problems about a mapped value).
_SPELLING: dict[str, dict[str, str]] = {
    "acn": {"arrival": "connectionTime", "departure": "disconnectTime",
            "energy_kwh": "kWhDelivered"},
    "elaad": {"arrival": "UTCTransactionStart", "departure": "UTCTransactionStop",
              "energy_kwh": "TotalEnergy", "max_power_kw": "MaxPower"},
    "ocpi_cdr": {"arrival": "start_date_time", "departure": "end_date_time",
                 "energy_kwh": "total_energy"},
}


def _row_problems(row: Row, format: str) -> Iterator[_Bad]:
    name = _SPELLING.get(format, {})
    if row["departure"] <= row["arrival"]:
        yield _Bad(name.get("departure", "departure"), "not after the arrival")
    if row["energy_kwh"] < 0:
        yield _Bad(name.get("energy_kwh", "energy_kwh"), f"negative: {row['energy_kwh']}")
    for col in ("max_power_kw", "capacity_kwh"):
        if row[col] is not None and row[col] <= 0:
            yield _Bad(name.get(col, col), f"must be > 0: {row[col]}")
    soc = row["soc_arrival"]
    if soc is not None and not 0.0 <= soc <= 1.0:
        yield _Bad("soc_arrival", f"a share between 0 and 1, not {soc}")


# -- sessions -> EVs -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SessionsPlan:
    """The EVs a scenario's sessions give, per site, and what was left out."""

    evs: dict[str, list[GivenEV]]
    outside: int
    """Sessions arriving outside [start, start + duration): dropped."""
    energy_source: dict[str, str]
    """Session id -> ``requested`` or ``delivered``."""
    energy_file_kwh: dict[str, float]


def scenario_sessions(sc: Scenario) -> pd.DataFrame:
    """Every session of a scenario (its sites' files and the fleet's), with their ``site``."""
    frames: list[pd.DataFrame] = []
    names = {s.name for s in sc.sites}
    station_site = {f"{s.name}-{k + 1:03d}": s.name for s in sc.sites for k in range(s.stations)}
    for site in sc.sites:
        if site.sessions is not None:
            f = read_sessions(site.sessions.file, format=site.sessions.format,
                              timezone=site.sessions.timezone)
            f["site"] = site.name
            frames.append(f)
    if sc.sessions is not None:
        given = sc.sessions
        f = read_sessions(given.file, format=given.format, timezone=given.timezone)
        problems: list[tuple[str, str]] = []
        sites: list[str | None] = []
        for sid, site_col, station in zip(f["session_id"], f["site"], f["station_id"],
                                          strict=True):
            site_name = site_col or station_site.get(station) or given.site
            if site_name not in names:
                problems.append((f"session {sid}", f"no site {site_name!r} in the scenario"
                                 if site_name else "names no site: give a site column, one of "
                                 "the scenario's station ids or sessions.site"))
            sites.append(site_name)
        if problems:
            raise ScenarioError(given.file, problems[:MAX_PROBLEMS])
        f["site"] = sites
        frames.append(f)
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    out = pd.concat(frames, ignore_index=True)
    dupes = out["session_id"][out["session_id"].duplicated()]
    if len(dupes):
        # Two files, the same ids: keep them apart by site.
        out["session_id"] = out["site"] + ":" + out["session_id"]
    return out


def given_evs(sc: Scenario, patience_s: dict[str, float]) -> SessionsPlan:
    """The EVs of a scenario's sessions (one per session, or per ``ev_id``), per site.

    ``patience_s``: how long a driver of each site waits for a free EVSE. Sessions
    arriving outside the run are dropped (logged). See the module docstring for what
    is assumed where the file says nothing.
    """
    table = scenario_sessions(sc)
    if table.empty:
        return SessionsPlan({}, 0, {}, {})
    rng = np.random.default_rng([sc.seed, ASSUMPTION_STREAM])
    start = pd.Timestamp(sc.start).tz_convert(UTC)
    table["arrival_s"] = (table["arrival"] - start).dt.total_seconds()
    table["departure_s"] = (table["departure"] - start).dt.total_seconds()
    inside = (table["arrival_s"] >= 0) & (table["arrival_s"] < sc.duration_s)
    outside = int((~inside).sum())
    if outside:
        log.info("sessions: %d of %d arrive outside the run (%s + %.0f h): dropped",
                 outside, len(table), sc.start.isoformat(), sc.duration_h)
    table = table[inside].sort_values(["arrival_s", "session_id"], kind="stable")
    site_of = {s.name: s for s in sc.sites}
    evs: dict[str, list[GivenEV]] = {}
    # One EV per ev_id at a site, else one per session; in order of first arrival. An
    # id whose sessions overlap (a fleet card, a shared token) is several cars: each
    # session goes to the first of its cars that has left by then.
    key = table["ev_id"].where(table["ev_id"].notna(), "#" + table["session_id"])
    cars: dict[tuple[str, str], list[float]] = {}
    split = []
    for site_name, ev_key, arrival, departure in zip(table["site"], key, table["arrival_s"],
                                                      table["departure_s"], strict=True):
        left = cars.setdefault((str(site_name), str(ev_key)), [])
        car = next((i for i, t in enumerate(left) if t <= arrival), None)
        if car is None:
            left.append(departure)
            car = len(left) - 1
        else:
            left[car] = departure
        split.append(f"{ev_key}" if car == 0 else f"{ev_key}~{car}")
    key = pd.Series(split, index=table.index)
    for (site_name, _), group in table.groupby([table["site"], key], sort=False):
        site = site_of[str(site_name)]
        evs.setdefault(site.name, []).append(
            _given_ev(group, site.evse_max_kw, site.phases, patience_s[site.name], rng,
                      {f"{site.name}-{k + 1:03d}" for k in range(site.stations)}))
    return SessionsPlan(evs, outside, dict(zip(table["session_id"], table["energy_source"],
                                               strict=True)),
                        dict(zip(table["session_id"], table["energy_kwh"], strict=True)))


def _given_ev(group: pd.DataFrame, evse_kw: float, phases: int, patience_s: float,
              rng: np.random.Generator, station_ids: set[str]) -> GivenEV:
    rows = group.to_dict("records")
    ev_assumed: list[str] = []
    powers = [r["max_power_kw"] for r in rows if not pd.isna(r["max_power_kw"])]
    if powers:
        power = float(max(powers))
    else:
        power = evse_kw
        ev_assumed.append("max_power")
    capacities = [r["capacity_kwh"] for r in rows if not pd.isna(r["capacity_kwh"])]
    if capacities:
        capacity = float(capacities[0])
    else:
        capacity = float(rng.choice(BATTERY_KWH, p=BATTERY_P))
        need = max(r["energy_kwh"] / _room(r["soc_arrival"]) for r in rows)
        if capacity < need:
            fits = [float(c) for c in BATTERY_KWH if c >= need]
            # The largest battery of the mix at most; what does not fit shows as
            # energy_file_kwh above energy_wanted_kwh.
            capacity = fits[0] if fits else float(BATTERY_KWH.max())
        ev_assumed.append("capacity")
    visits: list[Visit] = []
    tags: list[tuple[str, str]] = []
    for r in rows:
        assumed = list(ev_assumed)
        energy = float(r["energy_kwh"])
        if pd.isna(r["soc_arrival"]):
            soc0 = float(rng.uniform(*SOC_ASSUMED_RANGE))
            ceiling = FIT_SOC if energy / capacity <= FIT_SOC else 1.0
            soc0 = max(0.0, min(soc0, ceiling - energy / capacity))
            assumed.append("soc")
        else:
            soc0 = float(r["soc_arrival"])
        target = min(1.0, soc0 + energy / capacity)
        visits.append(Visit(float(r["arrival_s"]), float(r["departure_s"]), soc0, target,
                            patience_s))
        tags.append((str(r["session_id"]), ",".join(assumed)))
    pinned = next((r["station_id"] for r in rows if r["station_id"] in station_ids), None)
    return GivenEV(Vehicle(capacity_kwh=capacity, max_power_kw=power, phases=phases),
                   tuple(visits), tuple(tags), None if pinned is None else (str(pinned), 1))


def _room(soc: float | None) -> float:
    """The share of a battery a session can fill: up to the taper SoC, or to full above it."""
    lowest = 0.05 if soc is None or pd.isna(soc) else float(soc)
    return FIT_SOC - lowest if lowest < FIT_SOC - 0.05 else max(1.0 - lowest, 1e-3)


def session_columns(evs: list[EV], plan: SessionsPlan) -> dict[str, Any]:
    """sessions.csv's columns for data-driven visits, in the table's row order (every EV's
    records in turn): ``session_id``, ``assumed``, ``energy_source``, ``energy_file_kwh``
    and ``served_in_full`` (within 1 Wh or 0.1 %); empty for drawn visits."""
    cols: dict[str, Any] = {k: [] for k in ("session_id", "assumed", "energy_source",
                                                  "energy_file_kwh", "served_in_full")}
    for ev in evs:
        for rec, visit in zip(ev.records, ev.visits, strict=False):
            tag = ev.session_tags.get(visit)
            sid, assumed = tag if tag is not None else (None, None)
            cols["session_id"].append(sid)
            cols["assumed"].append(assumed)
            cols["energy_source"].append(plan.energy_source.get(sid) if sid else None)
            cols["energy_file_kwh"].append(plan.energy_file_kwh.get(sid) if sid else None)
            cols["served_in_full"].append(
                None if sid is None else bool(
                    rec.outcome in ("served", "open") and rec.energy_battery_kwh
                    >= rec.energy_wanted_kwh - max(1e-3, 1e-3 * rec.energy_wanted_kwh)))
    cols["served_in_full"] = pd.array(cols["served_in_full"], dtype="boolean")
    return cols


__all__ = ["COLUMNS", "FORMATS", "SessionsPlan", "given_evs", "read_sessions",
           "scenario_sessions", "session_columns", "zone"]
