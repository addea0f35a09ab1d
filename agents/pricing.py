"""How drivers answer the prices they are shown: a documented, seeded response model.

The twin publishes the CSMS's driver tariff to the drivers as a plain function
``price(site, t_s)`` (per kWh at ``t_s`` seconds after the start; agents never see the
CSMS). Before the run each drawn visit is re-planned once (:func:`respond`), in this
order:

(a) **shift** (flexible drivers only, ``flexible_share``): move the arrival, and the
    departure with it, by up to ``shift_window_h`` either way, to a start whose expected
    price of the charge is lower by more than the driver's own threshold (drawn around
    ``shift_threshold_per_kwh``), one of those starts drawn for each visit (drivers
    spread over the cheaper hours they can reach, not all onto a band's edge);
(b) **switch site**: at a public site, go to another public (shared) site of the
    scenario when the charge there is cheaper by more than ``detour_cost`` (a detour
    per visit; every public site of a scenario counts as nearby);
(c) **take less energy**: the energy wanted falls by the constant price elasticity
    ``energy_elasticity`` when the expected price is above the reference price (the
    flat tariff's): ``E' = E · (p / p_ref) ** elasticity``; never up (a battery
    already filled to the driver's target takes no more);

and during the run (:func:`stay`):

(d) **leave when the idle fee would start**: ``idle_response_share`` of drivers unplug
    once the grace period after their EV became full has run out, instead of at their
    planned departure.

Sources and assumptions (each default below says which):

- Motoaki & Shirk (2017), "Consumer behavioral adaption in EV fast charging through
  pricing", Energy Policy 108: drivers moved their DC fast-charging sessions and
  energy when a per-session fee became a per-minute price (the response exists and
  is sizable); it gives no transferable shift share, so ``flexible_share`` is an
  assumption.
- Wolbertus & Gerzon (2018), "Improving electric vehicle charging station efficiency
  through pricing", J. Advanced Transportation 2018:4831951 (PitPoint / TU Delft,
  Netherlands): a time-based fee after charging cut idle time at the stations; PitPoint
  reported that about 80 % of drivers who stay on after charging would move their car
  for a higher price after the battery is full (q-park.com, "Should EV motorists be
  charged extra for hogging charging points?"): ``idle_response_share = 0.8``.
- Price elasticity of EV charging demand at commercial level-2 stations: SDG&E's
  vehicle-grid-integration rate study (Demand Side Analytics, "New evidence on the
  price elasticity of demand for electric vehicle charging") finds drivers respond;
  published estimates for charging energy lie roughly between -0.1 and -0.5
  (Daina, Sivakumar & Polak 2017, "Modelling electric vehicles use: a survey on the
  methods", Renewable and Sustainable Energy Reviews 68, review the choice models
  behind such figures). ``energy_elasticity = -0.2`` is an assumption inside that
  range.

Pure functions on the drawn visits; every draw comes from the generator passed in
(the runner seeds it from the scenario seed, stream 60): three per EV and one per
visit whatever the parameters, so changing one share does not reshuffle the others.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from .behaviour import Vehicle, Visit

PriceFn = Callable[[str, float], float]
"""``price(site, t_s)``: the published price per kWh at a site, ``t_s`` after the start."""

#: Step of the candidate arrival shifts (s): drivers think in quarter hours.
SHIFT_STEP_S = 900.0  # assumption: a quarter hour is the finest shift drivers plan
#: Step at which the expected price over a charge is sampled (s).
PRICE_SAMPLE_S = 300.0


@dataclass(frozen=True, slots=True)
class PriceResponse:
    """Parameters of the response model (see the module docstring for sources)."""

    flexible_share: float = 0.3
    # assumption: Motoaki & Shirk 2017 show drivers shift, not what share; 0.3 is a
    # middle value for drivers with a choice of when to charge.
    shift_window_h: float = 2.0
    # assumption: a flexible driver moves an errand by up to two hours.
    shift_threshold_per_kwh: float = 0.05
    # assumption: a saving below 5 ct/kWh (under 1 EUR on a typical 15 kWh charge)
    # is not worth moving for.
    detour_cost: float = 1.0
    # assumption: about 10 minutes of extra driving and walking per visit.
    energy_elasticity: float = -0.2
    # assumption inside the published -0.1 .. -0.5 range (see the module docstring).
    idle_response_share: float = 0.8
    # Wolbertus & Gerzon 2018 / PitPoint: ~80 % of hogging drivers would move their car.


@dataclass(frozen=True, slots=True)
class Driver:
    """What the response model knows of one EV and its driver's own draws."""

    site: str
    vehicle: Vehicle
    flexible: bool
    threshold_per_kwh: float
    leaves_for_idle_fee: bool


@dataclass(frozen=True, slots=True)
class Response:
    """What a driver changed on one visit (the visit record's columns)."""

    price_shifted_s: float = 0.0
    """Seconds the arrival moved (negative: earlier)."""
    site_switched_from: str | None = None
    energy_reduced_kwh: float = 0.0

    @property
    def changed(self) -> bool:
        """True if the driver changed anything."""
        return bool(self.price_shifted_s or self.site_switched_from
                    or self.energy_reduced_kwh)


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """A site as the drivers see it: its kind, EVSE power and whether any EV may use it."""

    kind: str
    evse_max_kw: float
    shared: bool


def draw_driver(rng: np.random.Generator, site: str, vehicle: Vehicle,
                params: PriceResponse) -> Driver:
    """One driver's own draws: flexible or not, threshold, leaves for idle fees.
    Always three draws, whatever the parameters."""
    u_flex, u_threshold, u_idle = rng.random(3)
    # assumption: thresholds spread evenly from half to one and a half times the mean.
    threshold = params.shift_threshold_per_kwh * (0.5 + float(u_threshold))
    return Driver(site, vehicle, bool(u_flex < params.flexible_share), threshold,
                  bool(u_idle < params.idle_response_share))


def grid_energy_kwh(visit: Visit, vehicle: Vehicle) -> float:
    """Energy through the meter for the visit's wanted battery energy."""
    return max(visit.target_soc - visit.soc_initial, 0.0) * vehicle.capacity_kwh \
        / vehicle.efficiency


def charge_hours(visit: Visit, vehicle: Vehicle, evse_max_kw: float) -> float:
    """How long the charge takes at full power, no longer than the stay."""
    power_kw = min(vehicle.max_power_kw, evse_max_kw)
    hours = grid_energy_kwh(visit, vehicle) / power_kw if power_kw > 0 else 0.0
    return min(hours, max(visit.departure_s - visit.arrival_s, 0.0) / 3600.0)


def expected_price(price: PriceFn, site: str, start_s: float, hours: float) -> float:
    """The mean published price over a charge of ``hours`` from ``start_s`` (constant
    power: every moment of the charge weighs the same)."""
    n = max(1, int(np.ceil(hours * 3600.0 / PRICE_SAMPLE_S)))
    step = hours * 3600.0 / n
    return float(np.mean([price(site, start_s + (k + 0.5) * step) for k in range(n)]))


def shifts(price: PriceFn, site: str, visit: Visit, hours: float, window_s: float,
           duration_s: float) -> list[tuple[float, float]]:
    """``(shift s, saving per kWh)`` of every start within ``window_s`` either way
    (quarter-hour steps, earliest first) that stays inside the run and saves
    something."""
    here = expected_price(price, site, visit.arrival_s, hours)
    out = []
    steps = int(window_s // SHIFT_STEP_S)
    for k in range(-steps, steps + 1):
        start = visit.arrival_s + k * SHIFT_STEP_S
        if not k or start < 0.0 or start >= duration_s:
            continue
        saving = here - expected_price(price, site, start, hours)
        if saving > 1e-12:
            out.append((k * SHIFT_STEP_S, saving))
    return out


def pick_shift(candidates: Sequence[tuple[float, float]], threshold_per_kwh: float,
               pick: float) -> float:
    """The shift a flexible driver takes: one of the moves that save more than their
    threshold, chosen by ``pick`` in [0, 1) in time order (0: the earliest). Drivers
    who move do not all take the first cheap quarter hour: they pick a time that suits
    them within the cheaper hours they can reach (# assumption: uniformly), which keeps
    a tariff's band edge from becoming a new peak. 0 when no move is worth it."""
    good = [shift for shift, saving in candidates if saving > threshold_per_kwh]
    if not good:
        return 0.0
    return good[min(int(pick * len(good)), len(good) - 1)]


def reduced_target_soc(visit: Visit, price_per_kwh: float, reference_per_kwh: float,
                       elasticity: float) -> float:
    """The target SoC after the elasticity response: the wanted energy times
    ``(price / reference) ** elasticity`` when the price is above the reference."""
    if price_per_kwh <= reference_per_kwh or reference_per_kwh <= 0.0 or elasticity >= 0.0:
        return visit.target_soc
    factor = (price_per_kwh / reference_per_kwh) ** elasticity
    return visit.soc_initial + (visit.target_soc - visit.soc_initial) * factor


def respond(visit: Visit, driver: Driver, *, price: PriceFn, sites: Mapping[str, SiteInfo],
            params: PriceResponse, reference_per_kwh: float, duration_s: float,
            pick: float = 0.0) -> tuple[Visit, Response]:
    """One visit re-planned by (a) shift, (b) site choice, (c) less energy; ``pick``
    chooses among the moves worth making (:func:`pick_shift`)."""
    site = visit.site or driver.site
    info = sites[site]
    hours = charge_hours(visit, driver.vehicle, info.evse_max_kw)
    shifted = 0.0
    if driver.flexible and params.shift_window_h > 0 and hours > 0:
        shift = pick_shift(shifts(price, site, visit, hours, params.shift_window_h * 3600.0,
                                  duration_s), driver.threshold_per_kwh, pick)
        if shift:
            shifted = shift
            visit = replace(visit, arrival_s=visit.arrival_s + shift,
                            departure_s=visit.departure_s + shift)
    switched_from: str | None = None
    kwh = grid_energy_kwh(visit, driver.vehicle)
    here = expected_price(price, site, visit.arrival_s, hours)
    if info.kind == "public" and info.shared and kwh > 0:
        best_site, best_cost = site, here * kwh
        for name, other in sorted(sites.items()):
            if name == site or other.kind != "public" or not other.shared:
                continue
            other_hours = charge_hours(visit, driver.vehicle, other.evse_max_kw)
            cost = expected_price(price, name, visit.arrival_s, other_hours) * kwh \
                + params.detour_cost
            if cost < best_cost - 1e-12:
                best_site, best_cost = name, cost
        if best_site != site:
            switched_from = site
            here = expected_price(price, best_site, visit.arrival_s,
                                  charge_hours(visit, driver.vehicle,
                                               sites[best_site].evse_max_kw))
            visit = replace(visit, site=None if best_site == driver.site else best_site)
    target = reduced_target_soc(visit, here, reference_per_kwh, params.energy_elasticity)
    reduced = 0.0
    if target < visit.target_soc:
        reduced = (visit.target_soc - target) * driver.vehicle.capacity_kwh
        visit = replace(visit, target_soc=target)
    return visit, Response(shifted, switched_from, reduced)


class _PlannedEV(Protocol):
    ev_id: str
    site: str
    vehicle: Vehicle
    visits: list[Visit]
    price_responses: dict[Visit, Response]


def respond_all(evs: Sequence[_PlannedEV], rng: np.random.Generator, *, price: PriceFn,
                sites: Mapping[str, SiteInfo], params: PriceResponse,
                reference_per_kwh: float, duration_s: float,
                skip: frozenset[str] = frozenset()) -> dict[str, Driver]:
    """Re-plan every EV's visits (in place, sorted by arrival); each changed visit's
    :class:`Response` is kept in ``ev.price_responses``. EVs named in ``skip`` (visits
    from data) keep theirs but still draw, so the others do not depend on them.
    Returns each EV's driver draws (by EV id)."""
    drivers: dict[str, Driver] = {}
    for ev in evs:
        driver = draw_driver(rng, ev.site, ev.vehicle, params)
        drivers[ev.ev_id] = driver
        if ev.ev_id in skip:
            rng.random(len(ev.visits))
            continue
        planned: list[Visit] = []
        picks = rng.random(len(ev.visits))  # one per visit, whoever moves
        for visit, pick in zip(ev.visits, picks.tolist(), strict=True):
            new, response = respond(visit, driver, price=price, sites=sites, params=params,
                                    reference_per_kwh=reference_per_kwh,
                                    duration_s=duration_s, pick=pick)
            planned.append(new)
            if response.changed:
                ev.price_responses[new] = response
        ev.visits = sorted((v for v in planned if v.arrival_s < duration_s),
                           key=lambda v: v.arrival_s)
    return drivers


@dataclass(frozen=True, slots=True)
class IdleRule:
    """Who leaves when the idle fee would start, and when: ``grace_s`` after the EV is
    full, seen at the twin's steps (``step_s``)."""

    grace_s: float
    step_s: float
    leavers: frozenset[str] = field(default_factory=frozenset)
    """EV ids whose drivers leave for the idle fee."""


class _Env(Protocol):
    @property
    def now(self) -> float: ...

    def timeout(self, delay: float) -> Any: ...


class _Charging(Protocol):
    ev_id: str

    @property
    def soc(self) -> float: ...

    @property
    def target_soc(self) -> float: ...


def stay(env: _Env, ev: _Charging, record: Any, departure_s: float,
         rule: IdleRule | None) -> Generator[Any, Any, None]:
    """The plugged-in part of a visit as a simpy process body: wait until the planned
    departure; a driver who answers the idle fee leaves ``grace_s`` after the EV became
    full (checked at each step boundary; full at a boundary's check means full since
    the boundary before) if that is earlier, and the record's ``left_for_idle_fee``
    says so. Without a rule (or for other drivers) exactly the
    one timeout the twin always waited."""
    if rule is None or ev.ev_id not in rule.leavers:
        yield env.timeout(max(departure_s - env.now, 0.0))
        return
    polled = False
    while env.now < departure_s - 1e-9:
        if ev.soc >= ev.target_soc - 1e-9:
            # A poll at a step boundary sees the physics of the step before: the EV was
            # full at the previous boundary already (the car's app tells the time).
            full_since = env.now - rule.step_s if polled else env.now
            leave_s = max(env.now, full_since + rule.grace_s)
            if leave_s < departure_s - 1e-9:
                record.left_for_idle_fee = True
                yield env.timeout(leave_s - env.now)
                return
            break
        next_step = (np.floor(env.now / rule.step_s + 1e-9) + 1.0) * rule.step_s
        yield env.timeout(min(next_step, departure_s) - env.now)
        polled = True
    yield env.timeout(max(departure_s - env.now, 0.0))


__all__ = ["Driver", "IdleRule", "PriceFn", "PriceResponse", "Response", "SiteInfo",
           "charge_hours", "draw_driver", "expected_price", "grid_energy_kwh", "pick_shift",
           "reduced_target_soc", "respond", "respond_all", "shifts", "stay"]
