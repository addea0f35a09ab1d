"""EV/driver agents."""

from __future__ import annotations

from dataclasses import dataclass

import mesa

from .behaviour import Vehicle, Visit
from .fleet import Fleet, FleetField, fleet_of
from .pricing import Response


@dataclass(slots=True)
class VisitRecord:
    """What happened on one visit; one row of the sessions table."""

    ev_id: str
    site: str
    arrival_s: float
    departure_s: float
    soc_initial: float
    target_soc: float
    energy_wanted_kwh: float
    outcome: str = "pending"  # pending|waiting|plugged|served|open|turned_away|rejected
    station_id: str | None = None
    evse_id: int | None = None
    bus: int | None = None
    """Feeder bus of the station it charged at (or, turned away from its own charger, that
    charger's bus); empty when turned away from a shared site."""
    home_bus: int | None = None
    """Feeder bus of the EV's household."""
    transaction_id: str | None = None
    plugged_s: float | None = None
    unplugged_s: float | None = None
    soc_final: float | None = None
    energy_battery_kwh: float = 0.0
    energy_grid_kwh: float = 0.0
    bidirectional: bool = False
    min_soc: float = 0.0
    discharged_kwh: float = 0.0
    throughput_kwh: float = 0.0
    """Energy through the battery in either direction (charging and V2G)."""
    equivalent_full_cycles: float = 0.0
    """throughput / (2 x capacity): a simple cycle-ageing figure."""
    fault: str = ""
    """What a failed port did to the visit: interrupted (its session ended), rerouted
    (the driver went to another site), turned_away (while a port here was out of order)."""
    # The driver's answers to prices (evtwin.agents.pricing); empty without a tariff.
    price_shifted_s: float = 0.0
    """Seconds the driver moved the arrival for a lower price (negative: earlier)."""
    site_switched_from: str | None = None
    """The site the driver left for a cheaper one."""
    energy_reduced_kwh: float = 0.0
    """Battery energy the driver did not ask for because of the price."""
    left_for_idle_fee: bool = False
    """The driver unplugged before the planned departure to avoid the idle fee."""


class EV(mesa.Agent):
    """An EV and its driver: a vehicle, a home site, and visits to charge."""

    # Battery state: views of this EV's row in the fleet arrays (kWh; V2G counts negative).
    soc = FleetField()
    target_soc = FleetField()
    min_soc = FleetField()
    """The driver's floor: V2G never takes the battery below it."""
    energy_battery_kwh = FleetField()
    """Energy into the battery this visit."""
    energy_grid_kwh = FleetField()
    """Energy through the meter this visit."""
    discharged_kwh = FleetField()
    """Energy that went out of the battery to the grid this visit (>= 0)."""
    throughput_kwh = FleetField()
    """Energy moved through the battery in either direction, for ageing."""

    def __init__(self, model: mesa.Model, ev_id: str, site: str, vehicle: Vehicle,
                 visits: list[Visit], id_token: str) -> None:
        super().__init__(model)
        self.ev_id = ev_id
        self.site = site
        #: This EV's row in the model's fleet arrays (its battery state lives there).
        self.fleet: Fleet = fleet_of(model)
        self.row = self.fleet.add()
        self.vehicle = vehicle
        self.visits = visits
        self.id_token = id_token
        self.soc = visits[0].soc_initial if visits else 0.5
        self.target_soc = self.soc
        self.records: list[VisitRecord] = []
        self.current: VisitRecord | None = None
        #: Talks ISO 15118: tells the station its departure time and energy need.
        self.states_needs = False
        self.min_soc = 0.2
        #: ``(station id, EVSE id)`` of this EV's own charger (a private home site).
        self.charger: tuple[str, int] | None = None
        #: The feeder bus the EV's household is on (set by the runner, which knows the feeder).
        self.home_bus: int | None = None
        #: Visits from a sessions file: ``visit -> (session id, what was assumed)``.
        self.session_tags: dict[Visit, tuple[str, str]] = {}
        #: Visits the driver re-planned for prices: ``visit -> what changed``.
        self.price_responses: dict[Visit, Response] = {}

    # -- the vehicle: its figures are copied into the fleet row ----------------------
    @property
    def vehicle(self) -> Vehicle:
        return self._vehicle

    @vehicle.setter
    def vehicle(self, vehicle: Vehicle) -> None:
        self._vehicle = vehicle
        for name in ("capacity_kwh", "max_power_kw", "max_discharge_kw", "efficiency",
                     "taper_soc"):
            self.fleet.set(name, self.row, getattr(vehicle, name))

    def begin_visit(self, visit: Visit) -> VisitRecord:
        """Reset the per-visit state at arrival and open its record."""
        self.soc = visit.soc_initial
        self.target_soc = visit.target_soc
        self.energy_battery_kwh = 0.0
        self.energy_grid_kwh = 0.0
        self.discharged_kwh = 0.0
        self.throughput_kwh = 0.0
        wanted = (visit.target_soc - visit.soc_initial) * self.vehicle.capacity_kwh
        self.current = VisitRecord(self.ev_id, visit.site or self.site, visit.arrival_s,
                                   visit.departure_s,
                                   visit.soc_initial, visit.target_soc, wanted,
                                   home_bus=self.home_bus)
        answered = self.price_responses.get(visit)
        if answered is not None:
            self.current.price_shifted_s = answered.price_shifted_s
            self.current.site_switched_from = answered.site_switched_from
            self.current.energy_reduced_kwh = answered.energy_reduced_kwh
        self.records.append(self.current)
        return self.current

    def end_visit(self, outcome: str, at_s: float | None = None) -> None:
        """Close the current visit's record with its energies and final SoC."""
        rec = self.current
        if rec is None:
            return
        rec.outcome = outcome
        rec.unplugged_s = at_s
        rec.soc_final = self.soc
        rec.energy_battery_kwh = self.energy_battery_kwh
        rec.energy_grid_kwh = self.energy_grid_kwh
        rec.bidirectional = self.vehicle.bidirectional
        rec.min_soc = self.min_soc
        rec.discharged_kwh = self.discharged_kwh
        rec.throughput_kwh = self.throughput_kwh
        rec.equivalent_full_cycles = self.throughput_kwh / (2.0 * self.vehicle.capacity_kwh)
        self.current = None
