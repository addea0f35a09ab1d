"""Hosting capacity: how much charging power each bus of a feeder takes before a limit breaks.

For every candidate bus, the largest extra active power (unity power factor, as the
twin's chargers draw) that can be added there, on top of the households' load, with
every bus voltage, line loading and transformer loading inside the feeder's limits.
It is found by bisection on all buses and load cases at once: each step is one
batched power flow (power-grid-model, one model and many load cases), so a study of
a hundred buses over a day's 24 hours takes a few dozen batches, not thousands of
single power flows.

The load cases are the households' powers: the worst hour of the base-load profile
(or of a SimBench grid's per-load profiles on the scenario's first day),
or every hour of a day (the capacity is then the lowest over the day, with the hour
where it binds). What binds is named: the element whose limit breaks first just
above the capacity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from evtwin.grid.feeder import Feeder, distance_from_source_km
from evtwin.grid.profiles import LoadTimeSeries

__all__ = ["HostingCapacity", "hosting_capacity", "limits_broken", "load_cases"]

FloatArray = npt.NDArray[np.float64]

_SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class HostingCapacity:
    """What one bus takes.

    Attributes:
        bus: pandapower bus index.
        capacity_kw: the largest extra load (kW, unity power factor) with every limit
            held in every load case; 0 when a limit is broken already without it;
            ``max_kw`` when even that breaks nothing.
        binding: what breaks just above the capacity (``"bus 17 voltage"``, ``"line 4
            loading"``, ``"trafo 0 loading"``), or ``"none"`` (the search's upper
            bound holds).
        case: the load case where it binds (an hour of the day in a day study).
        distance_km: electrical distance from the external grid along the lines.
    """

    bus: int
    capacity_kw: float
    binding: str
    case: int
    distance_km: float


def load_cases(feeder: Feeder, hours: Sequence[int] | None = None
               ) -> tuple[FloatArray, FloatArray, list[int]]:
    """Household powers (MW, Mvar; one row per case) at the base-load profile's
    noise-free shape: at ``hours`` of the day, or at its worst (highest) hour.

    With a :class:`~evtwin.grid.profiles.LoadTimeSeries` (SimBench profiles) an hour
    ``h`` is the quarter hour from ``h``:00 of the series' first day, every load at
    its own profile's value, and the worst hour is the one with the highest total
    active power.
    """
    profile = feeder.base_profile
    nominal_p = feeder.household_nominal_p_kw / 1000.0
    nominal_q = feeder.household_nominal_q_kvar / 1000.0
    if isinstance(profile, LoadTimeSeries):
        series = profile

        def at(h: int) -> tuple[FloatArray, FloatArray]:
            p_pu, q_pu = series.factors(h * _SECONDS_PER_HOUR)
            return nominal_p * p_pu, nominal_q * q_pu

        if hours is None:
            hours = [int(np.argmax([at(h)[0].sum() for h in range(24)]))]
        cases = [at(h) for h in hours]
        return (np.array([c[0] for c in cases]).reshape(len(cases), -1),
                np.array([c[1] for c in cases]).reshape(len(cases), -1), list(hours))
    shape = profile
    if hours is None:
        day = [shape.shape_pu(h * _SECONDS_PER_HOUR) for h in range(24)]
        hours = [int(np.argmax(day))]
    factors = np.array([shape.shape_pu(h * _SECONDS_PER_HOUR) for h in hours])
    p = np.outer(factors, nominal_p)
    q = np.outer(factors, nominal_q)
    return p, q, list(hours)


def hosting_capacity(feeder: Feeder, household_p_mw: npt.ArrayLike,
                     household_q_mvar: npt.ArrayLike, *, max_kw: float = 500.0,
                     tol_kw: float = 0.1) -> list[HostingCapacity]:
    """The hosting capacity of every station bus of ``feeder`` (one extra load each).

    Args:
        feeder: a feeder whose stations stand on the candidate buses (one station per
            bus); its ``limits`` are the limits that must hold.
        household_p_mw, household_q_mvar: the load cases, shape ``(cases,
            n_households)`` (see :func:`load_cases`).
        max_kw: the search's upper bound per bus.
        tol_kw: the bisection stops when the bracket is narrower than this.

    Returns one result per station, in station order.

    A load case that does not converge at all (a voltage collapse) counts as broken.
    """
    p = np.atleast_2d(np.asarray(household_p_mw, dtype=np.float64))
    q = np.atleast_2d(np.asarray(household_q_mvar, dtype=np.float64))
    n_cases, n_bus = p.shape[0], feeder.n_stations
    if n_bus == 0:
        return []
    # Scenario (case c, bus b) is row c * n_bus + b: the households of case c and
    # `added[c, b]` kW at station b alone.
    p_rows = np.repeat(p, n_bus, axis=0)
    q_rows = np.repeat(q, n_bus, axis=0)
    eye = np.eye(n_bus)

    def breaks(added_kw: FloatArray) -> FloatArray:
        """How far each scenario is beyond its worst limit (<= 0: every limit holds)."""
        ev = (added_kw[:, :, None] * eye[None, :, :]).reshape(n_cases * n_bus, n_bus)
        bus, line, trafo = feeder.solve_batch(p_rows, q_rows, ev, diverged_nan=True)
        return _excess(feeder, bus, line, trafo).max(axis=1).reshape(n_cases, n_bus)

    lo = np.zeros((n_cases, n_bus))
    hi = np.full((n_cases, n_bus), float(max_kw))
    already = breaks(lo) > 0
    holds_at_max = breaks(hi) <= 0
    # Bisection on every (case, bus) at once; those settled keep their bracket.
    steps = max(0, math.ceil(math.log2(max_kw / tol_kw))) if max_kw > tol_kw else 0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        bad = breaks(mid) > 0
        hi = np.where(bad, mid, hi)
        lo = np.where(bad, lo, mid)
    lo[already] = 0.0
    lo[holds_at_max & ~already] = max_kw
    capacity = lo.min(axis=0)
    worst_case = lo.argmin(axis=0)
    # What breaks first just above the capacity, in the case where it binds.
    # One scenario per bus: its binding case's households and the load just above.
    above = np.where(already | holds_at_max, lo, hi)
    cols = np.arange(n_bus)
    bus_v, line, trafo = feeder.solve_batch(p[worst_case], q[worst_case],
                                            eye * above[worst_case, cols][:, None],
                                            diverged_nan=True)
    excess = _excess(feeder, bus_v, line, trafo)
    names = _element_names(feeder)
    distance = distance_from_source_km(feeder.net)
    out = []
    for b, bus in enumerate(feeder.station_buses):
        c = int(worst_case[b])
        row = excess[b]
        binding = "none" if holds_at_max[c, b] and not already[c, b] else \
            names[int(np.argmax(row))]
        out.append(HostingCapacity(bus=int(bus), capacity_kw=float(capacity[b]),
                                   binding=binding, case=c,
                                   distance_km=float(distance.get(int(bus), math.nan))))
    return out


def _excess(feeder: Feeder, bus_vm: FloatArray, line: FloatArray, trafo: FloatArray
            ) -> FloatArray:
    """Per scenario and element, how far beyond its limit it is (in units of the
    limit: 0.01 = 1 % of the limit; negative = inside), columns in
    :func:`_element_names` order."""
    lim = feeder.limits
    rows = feeder.monitored_bus_rows
    v = bus_vm[:, rows]
    high = feeder.batch_vm_high_pu  # unbalanced: bus_vm is each bus's lowest phase
    v_high_pu = v if high is None else high[:, rows]
    v_low = (lim.v_min_pu - v) / lim.v_min_pu
    v_high = (v_high_pu - lim.v_max_pu) / lim.v_max_pu
    v_excess = np.maximum(v_low, v_high)
    line_excess = (line - lim.line_loading_max_percent) / lim.line_loading_max_percent
    trafo_excess = (trafo - lim.trafo_loading_max_percent) / lim.trafo_loading_max_percent
    parts = [v_excess, line_excess, trafo_excess]
    vuf = feeder.batch_unbalance_percent
    if vuf is not None:  # unbalanced: the voltage unbalance limit too
        parts.append((vuf[:, rows] - lim.vuf_max_percent) / lim.vuf_max_percent)
    out = np.nan_to_num(np.hstack(parts), nan=-np.inf)
    # A scenario that did not converge (a voltage collapse: all NaN) breaks every limit,
    # named by the last column (see _element_names); a single NaN (an element out of
    # service) breaks none.
    diverged = np.isnan(bus_vm).all(axis=1)
    out[diverged] = 0.0
    out = np.hstack([out, np.where(diverged, np.inf, -np.inf)[:, None]])
    return out


def _element_names(feeder: Feeder) -> list[str]:
    buses = feeder.bus_index[feeder.monitored_bus_rows]
    names = ([f"bus {int(b)} voltage" for b in buses]
             + [f"line {int(i)} loading" for i in feeder.net.line.index]
             + [f"trafo {int(i)} loading" for i in feeder.net.trafo.index])
    if feeder.unbalanced:
        names += [f"bus {int(b)} unbalance" for b in buses]
    return [*names, "no convergence (voltage collapse)"]


def limits_broken(feeder: Feeder, household_p_mw: npt.ArrayLike,
                  household_q_mvar: npt.ArrayLike, ev_p_kw: npt.ArrayLike
                  ) -> tuple[npt.NDArray[np.bool_], list[str]]:
    """Which scenarios break a limit, and what breaks worst in each (``""`` if none).

    Args: as :meth:`Feeder.solve_batch`, one row per scenario. A scenario that does
    not converge breaks every limit.
    """
    bus, line, trafo = feeder.solve_batch(household_p_mw, household_q_mvar, ev_p_kw,
                                          diverged_nan=True)
    excess = _excess(feeder, bus, line, trafo)
    worst = excess.max(axis=1)
    names = _element_names(feeder)
    broken = worst > 0
    return broken, [names[int(np.argmax(row))] if b else "" for row, b in
                    zip(excess, broken, strict=True)]
