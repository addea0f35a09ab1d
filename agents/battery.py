"""EV battery physics over one interval, solved in closed form.

Grid-side power is ``P = min(L, P_max(soc))`` with ``L`` the limit the
station allows and a CC-CV style taper above the transition SoC ``s_t``::

    P_max(soc) = P_ev * min(1, (1 - soc) / (1 - s_t))

and the battery gains ``eta * P``. Below the switch point the power is
constant (SoC linear in time); above it ``d(soc)/dt = k (1 - soc)`` with
``k = eta * P_ev / ((1 - s_t) * C)``, an exponential approach. Charging stops
at the target SoC. Integrating exactly means the result does not depend on
the control step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """What one interval of charging did."""

    soc_end: float
    battery_kwh: float
    grid_kwh: float


def charge(
    *,
    soc: float,
    target_soc: float,
    capacity_kwh: float,
    limit_kw: float,
    ev_max_kw: float,
    efficiency: float,
    taper_soc: float,
    duration_h: float,
) -> ChargeResult:
    """Integrate charging over ``duration_h`` hours; returns energies in kWh."""
    if duration_h <= 0 or soc >= target_soc or limit_kw <= 0 or ev_max_kw <= 0:
        return ChargeResult(soc, 0.0, 0.0)
    p_cc = min(limit_kw, ev_max_kw)
    # SoC above which the taper, not the limit, sets the power.
    s_switch = 1.0 - (p_cc / ev_max_kw) * (1.0 - taper_soc)
    s = soc
    t_left = duration_h
    if s < s_switch:
        s_stop = min(s_switch, target_soc)
        rate = efficiency * p_cc / capacity_kwh  # SoC per hour
        t_cc = (s_stop - s) / rate
        if t_cc >= t_left:
            s += rate * t_left
            t_left = 0.0
        else:
            s = s_stop
            t_left -= t_cc
    if t_left > 0 and s < target_soc:
        k = efficiency * ev_max_kw / ((1.0 - taper_soc) * capacity_kwh)
        s_taper = 1.0 - (1.0 - s) * math.exp(-k * t_left)
        s = min(s_taper, target_soc)
    battery = (s - soc) * capacity_kwh
    return ChargeResult(s, battery, battery / efficiency)


def discharge(
    *,
    soc: float,
    min_soc: float,
    capacity_kwh: float,
    power_kw: float,
    efficiency: float,
    duration_h: float,
) -> ChargeResult:
    """Feed ``power_kw`` (grid side) back for ``duration_h``, never below ``min_soc``.

    The battery gives ``power_kw / efficiency``; the result's energies are
    negative (energy leaving the battery and flowing into the grid).
    """
    if duration_h <= 0 or power_kw <= 0 or soc <= min_soc:
        return ChargeResult(soc, 0.0, 0.0)
    battery_rate = power_kw / efficiency  # kWh out of the battery per hour
    available = (soc - min_soc) * capacity_kwh
    battery = min(available, battery_rate * duration_h)
    soc_end = soc - battery / capacity_kwh
    return ChargeResult(max(soc_end, min_soc), -battery, -battery * efficiency)


def charge_power_kw(*, soc: float, target_soc: float, limit_kw: float, ev_max_kw: float,
                    taper_soc: float) -> float:
    """Grid-side charging power at this instant (what a meter would read now)."""
    if soc >= target_soc or limit_kw <= 0 or ev_max_kw <= 0:
        return 0.0
    return min(limit_kw, ev_max_kw * min(1.0, (1.0 - soc) / (1.0 - taper_soc)))
