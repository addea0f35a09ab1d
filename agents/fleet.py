"""The battery state of every EV in one set of numpy arrays.

Each :class:`~evtwin.agents.ev.EV` owns one row; its ``soc``, energies and
vehicle figures are properties that read and write that row, so the mesa
agents stay the behaviour API while a control step integrates every
charging EV at once (:func:`charge_rows`, the vector form of
:func:`evtwin.agents.battery.charge`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: One array per column, one entry per EV.
COLUMNS = (
    "soc", "target_soc", "min_soc", "capacity_kwh", "max_power_kw", "max_discharge_kw",
    "efficiency", "taper_soc", "energy_battery_kwh", "energy_grid_kwh", "discharged_kwh",
    "throughput_kwh",
)
_COL = {name: i for i, name in enumerate(COLUMNS)}


class Fleet:
    """Rows of EV state (see :data:`COLUMNS`); grows as EVs are added."""

    def __init__(self, capacity: int = 64) -> None:
        self._data = np.zeros((len(COLUMNS), max(capacity, 1)))
        self.size = 0

    def add(self) -> int:
        """A new zeroed row; returns its index."""
        if self.size == self._data.shape[1]:
            grown = np.zeros((len(COLUMNS), 2 * self._data.shape[1]))
            grown[:, :self.size] = self._data[:, :self.size]
            self._data = grown
        self.size += 1
        return self.size - 1

    def column(self, name: str) -> np.ndarray:
        """One column over all EVs (a view: writing it writes the fleet)."""
        return self._data[_COL[name], :self.size]

    def get(self, name: str, row: int) -> float:
        return float(self._data[_COL[name], row])

    def set(self, name: str, row: int, value: float) -> None:
        self._data[_COL[name], row] = value


class FleetField:
    """An agent's attribute that lives in its row of the fleet (``obj.fleet``, ``obj.row``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        if name not in _COL:
            raise TypeError(f"{owner.__name__}.{name}: no fleet column {name!r}")
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return obj.fleet.get(self.name, obj.row)

    def __set__(self, obj: Any, value: float) -> None:
        obj.fleet.set(self.name, obj.row, value)


def fleet_of(model: object) -> Fleet:
    """The fleet of a mesa model, created on first use."""
    fleet = getattr(model, "fleet", None)
    if fleet is None:
        fleet = Fleet()
        model.fleet = fleet  # type: ignore[attr-defined]
    return fleet


@dataclass(frozen=True, slots=True)
class RowsCharged:
    """What one interval of charging did to a set of rows (arrays, one per row)."""

    soc_end: np.ndarray
    battery_kwh: np.ndarray
    grid_kwh: np.ndarray


def charge_rows(fleet: Fleet, rows: np.ndarray, limit_kw: np.ndarray,
                duration_h: np.ndarray) -> RowsCharged:
    """Integrate charging of ``rows`` at constant limits, in closed form.

    The same model as :func:`evtwin.agents.battery.charge` (constant power up
    to the taper SoC, then an exponential approach; stop at the target), for
    every row at once. Does not write the fleet: :func:`apply_charge` does.
    """
    d = fleet._data
    soc = d[_COL["soc"], rows]
    target = d[_COL["target_soc"], rows]
    cap = d[_COL["capacity_kwh"], rows]
    ev_max = d[_COL["max_power_kw"], rows]
    eff = d[_COL["efficiency"], rows]
    taper = d[_COL["taper_soc"], rows]
    active = (duration_h > 0) & (soc < target) & (limit_kw > 0) & (ev_max > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p_cc = np.minimum(limit_kw, ev_max)
        s_switch = 1.0 - (p_cc / ev_max) * (1.0 - taper)
        in_cc = soc < s_switch
        s_stop = np.minimum(s_switch, target)
        rate = eff * p_cc / cap  # SoC per hour
        t_cc = (s_stop - soc) / rate
        cc_all = in_cc & (t_cc >= duration_h)
        s = np.where(in_cc, np.where(cc_all, soc + rate * duration_h, s_stop), soc)
        t_left = np.where(in_cc, np.where(cc_all, 0.0, duration_h - t_cc), duration_h)
        k = eff * ev_max / ((1.0 - taper) * cap)
        tapering = (t_left > 0) & (s < target)
        s_taper = 1.0 - (1.0 - s) * np.exp(-k * t_left)
        s = np.where(tapering, np.minimum(s_taper, target), s)
    s = np.where(active, s, soc)
    battery = (s - soc) * cap
    return RowsCharged(s, battery, battery / eff)


def apply_charge(fleet: Fleet, rows: np.ndarray, result: RowsCharged) -> None:
    """Write an interval's charging into the rows' SoC and energy counters."""
    d = fleet._data
    d[_COL["soc"], rows] = result.soc_end
    # np.add.at: a row listed twice gets both intervals' energy (``+=`` would keep one).
    np.add.at(d[_COL["energy_battery_kwh"]], rows, result.battery_kwh)
    np.add.at(d[_COL["energy_grid_kwh"]], rows, result.grid_kwh)
    np.add.at(d[_COL["throughput_kwh"]], rows, np.abs(result.battery_kwh))
