"""Scenario sections for stations that fail and the crews that repair them.

``[faults]`` turns failures on (component models: :mod:`evtwin.agents.faults`);
``[maintenance]`` says who repairs them and how (:mod:`evtwin.sim.maintenance`).
Defaults that are not cited are labelled assumptions where they are set.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from evtwin.agents.faults import COMPONENTS


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ComponentOverride(_Strict):
    """Change one component's failure model (see evtwin.agents.faults.DEFAULT_MODELS)."""

    shape: float | None = Field(None, gt=0)
    scale_days: float | None = Field(None, gt=0)
    precursor_share: float | None = Field(None, ge=0, le=1)
    precursor_days: float | None = Field(None, gt=0)
    warning_rate_per_day: float | None = Field(None, ge=0)
    background_per_day: float | None = Field(None, ge=0)
    repair_median_h: float | None = Field(None, gt=0)
    repair_sigma: float | None = Field(None, ge=0)
    service_h: float | None = Field(None, gt=0)


class Faults(_Strict):
    """Stations fail: every component of every station on its own seeded stream."""

    enabled: bool = True
    components: list[Literal["power_electronics", "connector", "communication", "payment"]] = (
        Field(default_factory=lambda: list(COMPONENTS)))
    """Which components can fail."""
    power_electronics: ComponentOverride = ComponentOverride()
    connector: ComponentOverride = ComponentOverride()
    communication: ComponentOverride = ComponentOverride()
    payment: ComponentOverride = ComponentOverride()


class Spares(_Strict):
    """Spare parts in the crews' van stock, per component, and how long a reorder takes."""

    stock: int = Field(2, ge=0)
    """assumption: two of each part on hand."""
    reorder_days: float = Field(3.0, ge=0)
    """assumption: a distributor delivers in three working days."""


class Contract(_Strict):
    """An outsourced service contract: a response-time promise and its price."""

    response_h: float = Field(24.0, gt=0)
    """Time from a work order to the technician on site (assumption: a next-day
    promise, common in EVSE service-level agreements)."""
    callout_cost: float = Field(150.0, ge=0)
    """Per visit (assumption)."""
    hourly_cost: float = Field(95.0, ge=0)
    """Per hour on site (assumption: a contractor's electrician)."""
    monthly_fee_per_station: float = Field(15.0, ge=0)
    """Retainer per station and month (assumption)."""


class Maintenance(_Strict):
    """Who repairs the stations and when (see evtwin.sim.maintenance)."""

    policy: Literal["none", "reactive", "preventive", "predictive"] = "reactive"
    """none: nobody repairs; reactive: the CSMS's work orders on failures and silent
    stations; preventive: reactive plus a visit to every station every
    ``preventive_every_days`` that swaps worn and failing parts; predictive:
    reactive plus the CSMS's failure model's work orders."""
    crew: Literal["in_house", "contract"] = "in_house"
    crews: int = Field(1, ge=0, le=100)
    """In-house crews (one technician and a van each)."""
    shift_start_h: float = Field(7.0, ge=0, lt=24)
    shift_end_h: float = Field(17.0, gt=0, le=24)
    """In-house shift, local time, Monday to Friday (assumption: a day shift)."""
    weekends: bool = False
    travel_min: float = Field(30.0, ge=0)
    """Drive from the depot or the last site to a site (assumption: an urban network)."""
    hourly_cost: float = Field(60.0, ge=0)
    """In-house technician and van per paid hour (assumption: about twice the EU's
    average hourly labour cost of 31.8 EUR in 2023, Eurostat lc_lci_lev)."""
    part_cost: dict[str, float] = Field(default_factory=lambda: {
        "power_electronics": 450.0, "connector": 300.0, "communication": 120.0,
        "payment": 250.0})
    """Per part swapped (assumption: list prices of AC wallbox spares)."""
    spares: Spares = Spares()
    contract: Contract = Contract()
    preventive_every_days: float = Field(14.0, gt=0)
    replace_after_days: float = Field(120.0, gt=0)
    """Preventive visits swap wear parts (power electronics, connector) older than
    this (assumption)."""
    horizon_days: float = Field(5.0, gt=0)
    """Predictive: the failure model's question is 'fails within this many days'."""
    history_days: float = Field(60.0, gt=0)
    """Predictive: days of the CSMS's own history (under reactive maintenance, the
    same network before the run) the failure model is trained on."""

    @model_validator(mode="after")
    def _shift(self) -> Maintenance:
        if self.shift_end_h <= self.shift_start_h:
            raise ValueError("shift_end_h: must be after shift_start_h")
        unknown = sorted(set(self.part_cost) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"part_cost: unknown component {unknown[0]!r} (known: "
                             f"{', '.join(COMPONENTS)})")
        if self.crew == "in_house" and self.crews == 0 and self.policy != "none":
            raise ValueError("crews: an in-house policy needs at least one crew "
                             "(policy = \"none\" for none)")
        return self


__all__ = ["ComponentOverride", "Contract", "Faults", "Maintenance", "Spares"]
