"""Price signals: flat, time-of-use or a day-ahead series from a CSV file."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd

from evtwin.grid.pv import csv_times

from .exceptions import ScenarioError
from .scenario import Scenario


def price_steps(sc: Scenario) -> tuple[tuple[datetime, float], ...]:
    """The scenario's import price as (start, price per kWh) steps covering the run."""
    p = sc.prices
    end = sc.start + timedelta(seconds=sc.duration_s)
    if p.kind == "flat":
        return ((sc.start, p.flat_per_kwh),)
    if p.kind == "tou":
        bands = sorted(p.tou, key=lambda b: b.start_h)
        day = sc.start.replace(hour=0, minute=0, second=0, microsecond=0)
        steps: list[tuple[datetime, float]] = []
        while day < end:
            for band in bands:
                steps.append((sc.at_local(day + timedelta(hours=band.start_h)), band.price_per_kwh))
            day += timedelta(days=1)
        # The band in force at the start began the day before (or earlier today).
        first = [s for s in steps if s[0] <= sc.start]
        before = first[-1][1] if first else bands[-1].price_per_kwh
        return ((sc.start, before), *[s for s in steps if sc.start < s[0] < end])
    assert p.csv is not None
    try:
        frame = pd.read_csv(p.csv)
        # Without an offset: local times of the scenario's zone (as PV files).
        times = csv_times(frame["time"], sc.local_zone())
        prices = frame["price_per_kwh"].astype(float)
    except (OSError, KeyError, ValueError) as exc:
        raise ScenarioError(p.csv, [("prices.csv", f"cannot read the price series: {exc}")]
                            ) from None
    rows = sorted(zip((t.to_pydatetime() for t in times), prices, strict=True))
    if not rows or rows[0][0] > sc.start:
        raise ScenarioError(p.csv, [("prices.csv", "the series must start at or before "
                                                   f"the scenario start {sc.start.isoformat()}")])
    opening = [r for r in rows if r[0] <= sc.start][-1]
    return ((sc.start, float(opening[1])),
            *[(t, float(v)) for t, v in rows if sc.start < t < end])


def export_price_steps(sc: Scenario, imports: tuple[tuple[datetime, float], ...]
                       ) -> tuple[tuple[datetime, float], ...]:
    """What feeding back earns, as (start, price per kWh) steps covering the run.

    Flat ``prices.export_per_kwh``, or, with ``prices.export_follows_import``,
    the import price at each step less ``prices.export_fee_per_kwh`` (a dynamic
    tariff that pays back what it charges, minus grid fees).
    """
    p = sc.prices
    if not p.export_follows_import:
        return ((sc.start, p.export_per_kwh),)
    return tuple((t, price - p.export_fee_per_kwh) for t, price in imports)


def price_at(steps: tuple[tuple[datetime, float], ...], at: datetime) -> float:
    """The price in force at ``at``."""
    current = steps[0][1]
    for start, value in steps:
        if start <= at:
            current = value
        else:
            break
    return current
