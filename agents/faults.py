"""Stations that fail: components, their failure models, and the symptoms before a failure.

Each station is made of components; each component fails after a Weibull
time to failure drawn from its own seeded stream, and (for a share of failures)
shows symptoms for some days before: warnings the station reports over OCPP
(1.6 StatusNotification error codes, 2.x NotifyEvent), missed heartbeats, a
derated power output. The same warnings also come at a low background rate
without any failure ahead, so telling an impending failure from noise is a real
prediction problem for the CSMS.

No simulator here: :class:`FaultPlan` says what happens when, the twin
(:mod:`evtwin.sim.maintenance`) runs it on its clock and the station
(:class:`~evtwin.agents.station.VirtualStation`) turns it into what the CSMS sees.

Sources (the figures that are not cited are labelled assumptions where they are set):

- Rempel, Cullen, Bryan, Cezar (2022), "Reliability of open public electric
  vehicle direct current fast chargers", UC Berkeley (arXiv:2203.16372): 22.7 % of
  657 public CCS connectors in the San Francisco Bay Area did not work at a visit;
  the causes seen were unresponsive screens and payment systems, failed charge
  initiation, network failures and broken connectors/cables. That snapshot is the
  availability a network settles at with slow repairs: the defaults are tuned so a
  network without crews falls towards it within months.
- J.D. Power (2024), "U.S. Electric Vehicle Experience (EVX) Public Charging Study":
  about one public charging visit in six to five ends without a charge.
- US FHWA NEVI rule, 23 CFR 680.116(b) (2023): each port 97 % up over a year;
  ChargeX consortium (2023) "Customer-focused key performance indicators for
  electric vehicle charging": MTBF/MTTR definitions used in the KPIs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

COMPONENTS: tuple[str, ...] = ("power_electronics", "connector", "communication", "payment")

Scope = Literal["evse", "station"]


@dataclass(frozen=True, slots=True)
class ComponentModel:
    """How one kind of component fails and is repaired.

    ``shape``/``scale_days``: Weibull hazard (shape > 1: wear-out). ``precursor_share``
    of failures show symptoms ``precursor_days`` (mean, exponential) ahead; warnings
    then come ``warning_rate_per_day`` a day, and ``background_per_day`` a day at
    any time. ``repair_median_h``/``repair_sigma``: log-normal time on site for a
    repair after a failure; ``service_h`` for swapping the part before it fails.
    """

    name: str
    scope: Scope
    shape: float
    scale_days: float
    precursor_share: float
    precursor_days: float
    warning_rate_per_day: float
    background_per_day: float
    repair_median_h: float
    repair_sigma: float
    service_h: float
    #: OCPP 1.6 ChargePointErrorCode of its warnings and failure.
    error_code_16: str
    #: OCPP 2.x standardized component (Part 2 appendix, device model).
    component_2x: str
    #: 2.x stoppedReason of a transaction the failure ends (1.6: Other).
    stop_reason: str
    #: Output derated to this share while symptoms show (power electronics only).
    derate_share: float = 1.0


# Every figure below is an assumption tuned to the sources of the module docstring
# (no public data give per-component Weibull parameters for AC chargers): a port
# fails about every 50 days in all, so with repairs taking two weeks a network
# settles near the 77 % Rempel et al. saw (A = MTBF / (MTBF + MTTR)).
DEFAULT_MODELS: dict[str, ComponentModel] = {
    # assumption: contactors, relays and boards wear with thermal cycling (shape 1.5).
    "power_electronics": ComponentModel(
        "power_electronics", "evse", shape=1.5, scale_days=230.0, precursor_share=0.7,
        precursor_days=6.0, warning_rate_per_day=1.5, background_per_day=0.03,
        repair_median_h=4.0, repair_sigma=0.5, service_h=1.5,
        error_code_16="HighTemperature", component_2x="PowerContactor",
        stop_reason="OvercurrentFault", derate_share=0.5),
    # assumption: cables and plug locks wear with use and misuse (shape 2).
    "connector": ComponentModel(
        "connector", "evse", shape=2.0, scale_days=170.0, precursor_share=0.6,
        precursor_days=5.0, warning_rate_per_day=1.0, background_per_day=0.03,
        repair_median_h=2.0, repair_sigma=0.4, service_h=1.0,
        error_code_16="ConnectorLockFailure", component_2x="ConnectorPlugRetentionLock",
        stop_reason="Other"),
    # assumption: modems and SIMs fail at random (shape 1); a weak signal comes first.
    "communication": ComponentModel(
        "communication", "station", shape=1.0, scale_days=300.0, precursor_share=0.5,
        precursor_days=4.0, warning_rate_per_day=2.0, background_per_day=0.05,
        repair_median_h=1.5, repair_sigma=0.5, service_h=0.5,
        error_code_16="WeakSignal", component_2x="DataLink", stop_reason="Other"),
    # assumption: card readers and payment terminals fail at random (shape 1.2).
    "payment": ComponentModel(
        "payment", "station", shape=1.2, scale_days=330.0, precursor_share=0.5,
        precursor_days=4.0, warning_rate_per_day=1.5, background_per_day=0.03,
        repair_median_h=1.5, repair_sigma=0.4, service_h=0.5,
        error_code_16="ReaderFailure", component_2x="TokenReader", stop_reason="Other"),
}


def weibull_residual_days(rng: np.random.Generator, shape: float, scale_days: float,
                          age_days: float) -> float:
    """Days until a Weibull(shape, scale) component that has survived ``age_days``
    fails: inverse of the conditional survival S(a + t) / S(a) at a uniform draw."""
    u = rng.random()
    a = age_days / scale_days
    return scale_days * (a ** shape - math.log(1.0 - u)) ** (1.0 / shape) - age_days


@dataclass(slots=True)
class Unit:
    """One component instance: a station's (``evse_id`` 0) or an EVSE's."""

    station_id: str
    evse_id: int
    model: ComponentModel
    installed_s: float
    """When it was (re)installed: its age counts from here (may be before the run)."""
    fails_at_s: float = math.inf
    symptoms_from_s: float = math.inf
    failed: bool = False
    failures: int = 0
    generation: int = 0
    """Counts the lives drawn: a process waiting on an older life stops."""
    index: int = 0
    """Its place in the plan: with the generation, names its own random stream."""
    in_service: bool = False
    """A crew is working on it (another job leaves it alone)."""

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.station_id, self.evse_id, self.model.name)


@dataclass(slots=True)
class FaultPlan:
    """Every component of a network with its own draws (see the module docstring).

    Each life of each part draws from a stream of its own (seed, part, life), so two
    runs of one seed under different maintenance see the same failures until a
    crew's work changes a part's life, and only that part's draws after it.
    """

    units: list[Unit] = field(default_factory=list)
    seed: int = 0

    def stream(self, unit: Unit, purpose: int) -> np.random.Generator:
        """The seeded stream of ``unit``'s current life for ``purpose`` (0: the life,
        1: its warnings, 2: its repair, 3: its false alarms over the whole run)."""
        gen = 0 if purpose == 3 else unit.generation
        return np.random.default_rng([self.seed, 31, unit.index, gen, purpose])

    def draw_life(self, unit: Unit, now_s: float) -> None:
        """Draw the unit's next failure and the start of its symptoms from ``now_s``."""
        m = unit.model
        unit.generation += 1
        rng = self.stream(unit, 0)
        age_days = max(now_s - unit.installed_s, 0.0) / 86400.0
        unit.fails_at_s = now_s + 86400.0 * weibull_residual_days(
            rng, m.shape, m.scale_days, age_days)
        if rng.random() < m.precursor_share:
            lead_s = 86400.0 * float(rng.exponential(m.precursor_days))
            unit.symptoms_from_s = max(unit.fails_at_s - lead_s, now_s)
        else:
            unit.symptoms_from_s = math.inf
        unit.failed = False

    def renew(self, unit: Unit, now_s: float) -> None:
        """The part was replaced (a repair or a swap before it failed): as good as new."""
        unit.installed_s = now_s
        self.draw_life(unit, now_s)

    def repair_hours(self, unit: Unit) -> float:
        """Time on site to repair ``unit`` after it failed (log-normal)."""
        m = unit.model
        z = self.stream(unit, 2).standard_normal()
        return float(m.repair_median_h * math.exp(m.repair_sigma * z))


def build_plan(stations: list[tuple[str, int]], models: dict[str, ComponentModel], *,
               seed: int) -> FaultPlan:
    """A plan for ``stations`` (id, number of EVSEs), its first failures drawn.

    A network in service has replaced parts as they failed, so each part's age at
    the start is drawn uniformly up to its characteristic life (assumption)."""
    plan = FaultPlan(seed=seed)
    ages = np.random.default_rng([seed, 30])
    for station_id, n_evses in stations:
        for name in COMPONENTS:
            m = models.get(name)
            if m is None:
                continue
            for evse_id in (range(1, n_evses + 1) if m.scope == "evse" else (0,)):
                age_s = float(ages.uniform(0.0, m.scale_days)) * 86400.0
                unit = Unit(station_id, evse_id, m, installed_s=-age_s,
                            index=len(plan.units))
                plan.draw_life(unit, 0.0)
                plan.units.append(unit)
    return plan


def warning_times(rng: np.random.Generator, rate_per_day: float, t0_s: float,
                  t1_s: float) -> list[float]:
    """Poisson warning times in [t0, t1) at ``rate_per_day``."""
    if rate_per_day <= 0 or t1_s <= t0_s:
        return []
    n = int(rng.poisson(rate_per_day * (t1_s - t0_s) / 86400.0))
    return sorted(float(x) for x in rng.uniform(t0_s, t1_s, n))


__all__ = ["COMPONENTS", "DEFAULT_MODELS", "ComponentModel", "FaultPlan", "Unit",
           "build_plan", "warning_times", "weibull_residual_days"]
