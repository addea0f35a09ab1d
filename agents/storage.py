"""A stationary battery at a site, with its own dispatch.

The battery's controller is local, like a real site energy-management system:
each step it measures the site's net demand at the connection point (EV
charging minus the site's own PV) and the price, and sets its power. It does
not talk to the CSMS; the CSMS sees its effect only through the grid.

Dispatch rules:

``peak_shaving``
    Keep the site's net import at or below ``target_kw``: discharge what is above
    it, recharge with what is left below it.
``self_consumption``
    Store PV surplus the site does not use, give it back when the site draws
    from the grid.
``price``
    Charge when the price is at or below ``charge_below_price``, discharge (to
    cover the site's demand, never exporting) at or above
    ``discharge_above_price``.

Power is positive when charging (a load), negative when discharging. Energy
is integrated exactly over the step with a one-way efficiency on each side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Dispatch = Literal["peak_shaving", "self_consumption", "price"]


@dataclass
class StationaryBattery:
    """One battery and its dispatch state.

    Attributes:
        name: label in results.
        site: the site whose connection point it measures.
        capacity_kwh: usable energy capacity.
        power_kw: inverter rating (charge and discharge).
        soc: state of charge now (0..1).
        soc_min, soc_max: operating window.
        efficiency: one-way efficiency (grid to cells, and cells to grid).
        dispatch: which rule sets the power.
        target_kw: peak_shaving's import target at the connection point.
        charge_below_price, discharge_above_price: price thresholds per kWh.
    """

    name: str
    site: str
    capacity_kwh: float
    power_kw: float
    soc: float = 0.5
    soc_min: float = 0.1
    soc_max: float = 0.95
    efficiency: float = 0.95
    dispatch: Dispatch = "peak_shaving"
    target_kw: float = 0.0
    charge_below_price: float = 0.0
    discharge_above_price: float = float("inf")
    #: Grid-side energy in and out so far (kWh), for throughput and cycles.
    charged_kwh: float = field(default=0.0)
    discharged_kwh: float = field(default=0.0)
    power_now_kw: float = field(default=0.0)

    def __post_init__(self) -> None:
        if self.capacity_kwh <= 0 or self.power_kw <= 0:
            raise ValueError("capacity_kwh and power_kw must be > 0")
        if not 0.0 <= self.soc_min < self.soc_max <= 1.0:
            raise ValueError("need 0 <= soc_min < soc_max <= 1")
        if not 0.0 < self.efficiency <= 1.0:
            raise ValueError("efficiency must be within (0, 1]")
        self.soc = min(max(self.soc, self.soc_min), self.soc_max)

    def max_charge_kw(self, step_h: float) -> float:
        """The most it can take (grid side) over a step of ``step_h`` hours."""
        room_kwh = (self.soc_max - self.soc) * self.capacity_kwh / self.efficiency
        return max(0.0, min(self.power_kw, room_kwh / step_h))

    def max_discharge_kw(self, step_h: float) -> float:
        """The most it can give (grid side) over a step of ``step_h`` hours."""
        avail_kwh = (self.soc - self.soc_min) * self.capacity_kwh * self.efficiency
        return max(0.0, min(self.power_kw, avail_kwh / step_h))

    def decide_kw(self, site_net_kw: float, price_per_kwh: float, step_h: float,
                  import_cap_kw: float = float("inf")) -> float:
        """The dispatch rule's power for the next step (kW, + charging).

        ``site_net_kw`` is the site's demand at the connection point without the
        battery (EV charging minus the site's PV; negative = surplus). The
        battery never charges the site's import above ``import_cap_kw``.
        """
        if self.dispatch == "peak_shaving":
            want = self.target_kw - site_net_kw
        elif self.dispatch == "self_consumption":
            want = -site_net_kw
        elif self.charge_below_price >= self.discharge_above_price:
            want = 0.0  # no spread to trade on (e.g. a flat price)
        elif price_per_kwh <= self.charge_below_price:
            want = self.power_kw
        elif price_per_kwh >= self.discharge_above_price:
            want = -max(site_net_kw, 0.0)
        else:
            want = 0.0
        if want >= 0.0:
            headroom = max(0.0, import_cap_kw - site_net_kw)
            return min(want, self.max_charge_kw(step_h), headroom)
        return -min(-want, self.max_discharge_kw(step_h))

    def apply(self, power_kw: float, step_h: float) -> None:
        """Run at ``power_kw`` (grid side, + charging) for ``step_h`` hours."""
        if power_kw >= 0.0:
            energy = min(power_kw, self.max_charge_kw(step_h)) * step_h
            self.soc += energy * self.efficiency / self.capacity_kwh
            self.charged_kwh += energy
            self.power_now_kw = energy / step_h
        else:
            energy = min(-power_kw, self.max_discharge_kw(step_h)) * step_h
            self.soc -= energy / self.efficiency / self.capacity_kwh
            self.discharged_kwh += energy
            self.power_now_kw = -energy / step_h
        # Rounding must not leave the window.
        self.soc = min(max(self.soc, self.soc_min), self.soc_max)

    def step(self, site_net_kw: float, price_per_kwh: float, step_h: float,
             import_cap_kw: float = float("inf")) -> float:
        """Decide and run one step; returns the grid-side power (kW, + charging)."""
        self.apply(self.decide_kw(site_net_kw, price_per_kwh, step_h, import_cap_kw), step_h)
        return self.power_now_kw

    @property
    def equivalent_full_cycles(self) -> float:
        """Discharged cell energy over usable capacity: a simple ageing figure."""
        window = (self.soc_max - self.soc_min) * self.capacity_kwh
        return self.discharged_kwh / self.efficiency / window
