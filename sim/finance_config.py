"""The scenario's ``[finance]`` section: tariff plans, costs and money over time.

Read by :mod:`evtwin.sim.finance` (``evtwin finance``); a scenario without it runs as
before. Amounts are in the scenario's currency (``prices.currency``): fields ending in
``_cur``. Every default cites its source or says ``assumption:`` and why; costs from
US sources are converted at :data:`EUR_PER_USD`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: assumption: about the 2019-2024 average exchange rate (ECB reference rates moved
#: between 0.84 and 0.98 EUR per USD), used only to bring US cost studies into EUR.
EUR_PER_USD = 0.92


class _Strict(BaseModel):
    # The scenario's own convention (see evtwin.sim.scenario._Strict): frozen, and a
    # field the model does not know is an error naming it.
    model_config = ConfigDict(frozen=True, extra="forbid")


PlanKind = Literal["pay_per_use", "subscription", "membership"]


class TariffPlan(_Strict):
    """A driver group on one tariff plan: what its drivers pay.

    ``pay_per_use``: a price per kWh and a fee per session (ad hoc, roaming);
    ``subscription``: a monthly fee and a lower price per kWh; ``membership``: a
    yearly fee and a smaller discount.
    """

    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: PlanKind
    share: float = Field(ge=0, le=1)
    """Share of the drivers (EV ids) on this plan; the plans' shares sum to 1."""
    price_per_kwh_cur: float = Field(ge=0)
    """Price per kWh metered at the station (what a driver is billed)."""
    # The fees default to 0: a plan has no fee unless the scenario gives one.
    session_fee_cur: float = Field(0.0, ge=0)
    """Fee per charging session (pay_per_use only)."""
    monthly_fee_cur: float = Field(0.0, ge=0)
    """Subscription fee per driver and month (subscription only)."""
    yearly_fee_cur: float = Field(0.0, ge=0)
    """Membership fee per driver and year (membership only)."""

    @model_validator(mode="after")
    def _fees_fit_kind(self) -> TariffPlan:
        allowed = {"pay_per_use": "session_fee_cur", "subscription": "monthly_fee_cur",
                   "membership": "yearly_fee_cur"}[self.kind]
        for fee in ("session_fee_cur", "monthly_fee_cur", "yearly_fee_cur"):
            if fee != allowed and getattr(self, fee) != 0:
                raise ValueError(f"{fee}: a {self.kind} plan has no such fee "
                                 f"(its fee is {allowed})")
        return self


def _default_plans() -> list[TariffPlan]:
    # assumption: every driver pays ad hoc when the scenario names no plans; the price is
    # the ad hoc AC price below.
    return [TariffPlan(name="pay_per_use", kind="pay_per_use", share=1.0,
                       price_per_kwh_cur=AD_HOC_PRICE_PER_KWH, session_fee_cur=0.0)]


#: assumption: German public AC ad hoc prices in 2024-25 mostly lay between 0.49 and
#: 0.79 EUR/kWh (operators' published price lists); a price in that band.
AD_HOC_PRICE_PER_KWH = 0.59


class PowerClass(_Strict):
    """Capex of one EVSE up to a power (``up_to_kw``): hardware and installation."""

    up_to_kw: float = Field(gt=0)
    hardware_per_evse_cur: float = Field(ge=0)
    installation_per_evse_cur: float = Field(ge=0)


def _default_power_classes() -> list[PowerClass]:
    return [
        # AC up to 22 kW: RMI 2014 (Agenbroad & Holland, "Pulling back the veil on EV
        # charging station costs"): a public single-port Level 2 station's hardware
        # about USD 2,300, up to USD 6,000 with payment and networking (we take 4,000);
        # installation "typically about USD 6,000" in a parking garage, the cheapest case.
        PowerClass(up_to_kw=22, hardware_per_evse_cur=round(4000 * EUR_PER_USD),
                   installation_per_evse_cur=round(6000 * EUR_PER_USD)),
        # DC: hardware per charger from ICCT 2019 (Nicholas, "Estimating electric vehicle
        # charging infrastructure costs across major U.S. metropolitan areas", working
        # paper 2019-14): about USD 28,400 at 50 kW, 75,000 at 150 kW, 140,000 at 350 kW.
        # assumption: installation (labour, materials, permits) as much as the hardware.
        # ICCT 2019 puts hardware at about 25 % of all charging infrastructure cost
        # (labour 50 %, materials 20 %, permits 5 %), a share set mostly by Level 2
        # sites; a DC charger's hardware is a larger share, so we take half.
        PowerClass(up_to_kw=50, hardware_per_evse_cur=round(28_400 * EUR_PER_USD),
                   installation_per_evse_cur=round(28_400 * EUR_PER_USD)),
        PowerClass(up_to_kw=150, hardware_per_evse_cur=round(75_000 * EUR_PER_USD),
                   installation_per_evse_cur=round(75_000 * EUR_PER_USD)),
        PowerClass(up_to_kw=350, hardware_per_evse_cur=round(140_000 * EUR_PER_USD),
                   installation_per_evse_cur=round(140_000 * EUR_PER_USD)),
    ]


class FinanceSettings(_Strict):
    """The operator's business case for the scenario's sites (``evtwin finance``)."""

    sites: list[str] | None = Field(None, min_length=1)
    """The operator's sites (default: every site of the scenario)."""
    plans: list[TariffPlan] = Field(default_factory=_default_plans, min_length=1)
    """Driver groups and their tariff plans; shares sum to 1."""

    # ---- capex (year 0)
    power_classes: list[PowerClass] = Field(default_factory=_default_power_classes,
                                            min_length=1)
    """Charger and installation cost per EVSE by power class (an EVSE takes the first
    class whose ``up_to_kw`` covers its ``evse_max_kw``)."""
    grid_connection_per_kw_cur: float = Field(150.0, ge=0)
    """Grid connection per kW of a site's ``limit_kw`` (else its EVSEs' total power).
    assumption: German DSOs' construction cost contributions (Baukostenzuschuss) for
    low-voltage connections above 30 kW are of this order per kW; they vary by DSO."""
    subsidy_share: float = Field(0.0, ge=0, le=1)
    """Share of the capex paid by a subsidy programme (e.g. 0.4); 0 (none) unless given,
    as is the grant: programmes differ by country, year and site."""
    grant_cur: float = Field(0.0, ge=0)
    """A fixed grant, paid in year 0 (added to subsidy_share's amount, up to the capex)."""

    # ---- opex (every year)
    demand_charge_per_kw_month_cur: float = Field(round(34.29 / 12, 2), ge=0)
    """Per kW of each site's yearly peak import, per month. Stadtwerke Malchow
    Netznutzungsentgelte 2025 (a German DSO's published price sheet, StromNEV § 17):
    low voltage, under 2,500 h/a of use, 34.29 EUR/kW/a."""
    maintenance_per_evse_year_cur: float = Field(400.0, ge=0)
    """assumption: service contracts for networked AC chargers cost a few hundred EUR
    per charge point and year (about 10 % of hardware). Used when the run has no
    ``maintenance_cost`` KPI (a run with failures and crews counts its own)."""
    communication_per_station_month_cur: float = Field(10.0, ge=0)
    """assumption: a mobile data contract and a CSMS/back-end licence per charge point,
    together commonly offered at 5-20 EUR per month."""
    roaming_fee_share: float = Field(0.05, ge=0, le=1)
    """Share of pay-per-use revenue paid as roaming and payment fees. assumption: about
    a third of ad hoc sessions start through an e-mobility provider's app or card, and
    hubs and providers keep about 15 % of those."""

    # ---- time and money
    lifetime_years: int = Field(10, ge=1, le=40)
    """Years of operation analysed. assumption: the usual design life of charger
    hardware; no residual value at the end."""
    discount_rate: float = Field(0.07, gt=-1, lt=1)
    """Yearly rate the cash flows are discounted at. assumption: a weighted cost of
    capital for a small infrastructure operator."""
    energy_price_escalation: float = Field(0.02, gt=-1, lt=1)
    """Yearly change of the energy price (energy cost). assumption: about inflation."""
    tariff_escalation: float = Field(0.02, gt=-1, lt=1)
    """Yearly change of the drivers' prices and fees. assumption: about inflation."""
    opex_escalation: float = Field(0.02, gt=-1, lt=1)
    """Yearly change of maintenance, communication and demand charges. assumption:
    about inflation."""
    demand_growth: float = Field(0.05, gt=-1, lt=1)
    """Yearly change of charging demand (sessions, energy, drivers, peak; the peak held
    at a site's connection). assumption: a modest growth of the EV fleet using the sites."""
    sensitivity_percent: float = Field(20.0, gt=0, lt=100)
    """The tornado chart moves each input this many percent down and up. assumption: a
    range wide enough to cover the spread of the cited cost and price figures."""

    @model_validator(mode="after")
    def _consistent(self) -> FinanceSettings:
        total = sum(p.share for p in self.plans)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"plans: the shares sum to {total:g}, not 1")
        names = [p.name for p in self.plans]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"plans: duplicate plan names {dupes}")
        bounds = [c.up_to_kw for c in self.power_classes]
        if bounds != sorted(set(bounds)):
            raise ValueError("power_classes: give them by rising up_to_kw, each once")
        return self


__all__ = ["EUR_PER_USD", "FinanceSettings", "PowerClass", "TariffPlan"]
