"""Scenario files: TOML validated into frozen, strict pydantic models.

Every error in a file is reported at once with the path to its field::

    scenarios/demo.toml: ev.count: must be > 0
    scenarios/demo.toml: control.strategy: unknown strategy 'fastest'; known: ...
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from evtwin.agents.behaviour import DEFAULTS
from evtwin.csms.config import read_toml, validation_problems
from evtwin.csms.strategies import check_strategy_name
from evtwin.grid import NETWORKS

from .exceptions import ScenarioError
from .finance_config import FinanceSettings
from .forecast_config import Forecast, Weather
from .operations_config import Faults, Maintenance
from .tariff_config import DriverTariff, tariff_problems


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BehaviourOverrides(_Strict):
    """Overrides of a site kind's default driver behaviour (see evtwin.agents.behaviour)."""

    arrival_mean_h: float | None = Field(None, ge=0, lt=24)
    arrival_std_h: float | None = Field(None, ge=0)
    arrival_min_h: float | None = Field(None, ge=0, le=24)
    arrival_max_h: float | None = Field(None, ge=0, le=24)
    dwell_median_h: float | None = Field(None, gt=0)
    dwell_sigma: float | None = Field(None, ge=0)
    dwell_min_h: float | None = Field(None, gt=0)
    dwell_max_h: float | None = Field(None, gt=0)
    energy_median_kwh: float | None = Field(None, gt=0)
    energy_sigma: float | None = Field(None, ge=0)
    energy_min_kwh: float | None = Field(None, gt=0)
    energy_max_kwh: float | None = Field(None, gt=0)
    patience_min: float | None = Field(None, ge=0)
    weekend_share: float | None = Field(None, ge=0, le=1)
    """Chance of a weekend day's visit relative to a weekday's (Saturdays and Sundays:
    plugin_share × weekend_share)."""
    plugin_share: float | None = Field(None, ge=0, le=1)
    """Chance that an EV plugs in on a given weekday."""
    arrival_weights: tuple[float, ...] | None = Field(None, min_length=1)
    """Weekday arrival mixture: weight of each component (normalised)."""
    arrival_means_h: tuple[float, ...] | None = Field(None, min_length=1)
    """Weekday arrival mixture: mean hour of each component."""
    arrival_stds_h: tuple[float, ...] | None = Field(None, min_length=1)
    """Weekday arrival mixture: std of each component, hours."""
    dwell_medians_h: tuple[float, ...] | None = Field(None, min_length=1)
    """Median stay of each weekday arrival component, hours."""
    weekend_arrival_weights: tuple[float, ...] | None = Field(None, min_length=1)
    weekend_arrival_means_h: tuple[float, ...] | None = Field(None, min_length=1)
    weekend_arrival_stds_h: tuple[float, ...] | None = Field(None, min_length=1)
    weekend_dwell_medians_h: tuple[float, ...] | None = Field(None, min_length=1)
    """Weekend arrival mixture (unset: the weekday one)."""
    dwell_energy_corr: float | None = Field(None, ge=-1, le=1)
    """Correlation of log stay (within its component) and log energy per visit."""

    @model_validator(mode="after")
    def _mixtures(self) -> BehaviourOverrides:
        problems: list[str] = []
        for prefix in ("", "weekend_"):
            means = getattr(self, f"{prefix}arrival_means_h")
            n = len(means) if means is not None else None
            for name in ("arrival_weights", "arrival_stds_h", "dwell_medians_h"):
                values = getattr(self, f"{prefix}{name}")
                if values is None:
                    continue
                if n is None:
                    problems.append(f"{prefix}{name}: give {prefix}arrival_means_h with it")
                elif len(values) != n:
                    problems.append(f"{prefix}{name}: has {len(values)} values for "
                                    f"{n} components ({prefix}arrival_means_h)")
                elif name == "arrival_weights" and (min(values) < 0 or sum(values) <= 0):
                    problems.append(f"{prefix}{name}: must be >= 0 and not all 0")
                elif name != "arrival_weights" and min(values) <= 0:
                    problems.append(f"{prefix}{name}: must be > 0")
            if means is not None and not all(0 <= m < 24 for m in means):
                problems.append(f"{prefix}arrival_means_h: hours must be in [0, 24)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def zone(name: str) -> tzinfo:
    """An IANA time zone by name; ValueError naming it when unknown."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (give an IANA name, e.g. "
                         "Europe/Amsterdam)") from None


def _known_zone(name: str) -> str:
    zone(name)  # ValueError naming it when unknown
    return name


#: An IANA time zone name, checked when the model is validated.
ZoneName = Annotated[str, AfterValidator(_known_zone)]

SessionsFormat = Literal["evtwin", "acn", "elaad", "ocpi_cdr"]


class SiteSessions(_Strict):
    """A site's charging sessions from a file (see evtwin.sim.sessions): one EV per
    session, or per ``ev_id`` where the file has one, instead of drawn drivers."""

    file: str = Field(min_length=1)
    """CSV or JSON file; a relative path is resolved against the scenario's folder."""
    format: SessionsFormat = "evtwin"
    """Column mapping: ``evtwin`` (our CSV), ``acn`` (ACN-Data JSON or CSV),
    ``elaad`` (ElaadNL open transaction data, CSV), ``ocpi_cdr`` (OCPI 2.2.1 CDRs, JSON)."""
    timezone: ZoneName | None = None
    """IANA zone (``Europe/Amsterdam``) of times without an offset; default: UTC for
    acn, elaad and ocpi_cdr (their times are UTC), none for evtwin (an error)."""


class FleetSessions(SiteSessions):
    """Sessions for the whole fleet: each row names its site (a ``site`` column or one of
    the scenario's station ids); every site takes its EVs from this file."""

    site: str | None = None
    """The site of rows that name none."""


def _file_only(v: Any) -> Any:
    return {"file": v} if isinstance(v, str) else v


class Site(_Strict):
    """A group of stations: where drivers of one kind charge."""

    name: str = Field(min_length=1, max_length=30, pattern=r"^[A-Za-z0-9_.-]+$")
    """Site name; station ids are ``<name>-NNN``."""
    kind: Literal["home", "workplace", "public"] = "home"
    """Which default driver behaviour applies."""
    stations: int = Field(gt=0, le=1000)
    evses_per_station: int = Field(1, gt=0, le=8)
    evse_max_kw: float = Field(11.0, gt=0, le=350)
    """Hardware limit of each EVSE in kW."""
    phases: Literal[1, 3] = 3
    limit_kw: float | None = Field(None, gt=0)
    """Import limit for EV charging at this site in kW (what equal_share enforces)."""
    buses: list[int] | None = None
    """Feeder bus index per station, each a low-voltage bus of the feeder; default:
    spread over the LV buses with a load (see evtwin.grid)."""
    bidirectional: bool = False
    """The site's EVSEs can discharge (V2G over OCPP 2.1)."""
    access: Literal["private", "shared"] | None = None
    """``private``: each EV has a charger of its own (a household's; EVs beyond the
    chargers share one, in order); ``shared``: any EV takes any free EVSE. Default:
    private at home sites, shared elsewhere."""
    visitors_from: str | None = None
    """Another site whose EVs also charge here on this site's kind of visits (commuters
    who charge at home and at work); ``visitor_share`` of them do."""
    visitor_share: float = Field(0.3, ge=0, le=1)
    ev_share: float | None = Field(None, ge=0)
    """Weight of this site when splitting ev.count; default its EVSE count."""
    behaviour: BehaviourOverrides = BehaviourOverrides()
    sessions: SiteSessions | None = None
    """This site's EVs come from a sessions file (``sessions = "file.csv"`` or
    ``sessions = {file = ..., format = ..., timezone = ...}``), not from ``ev.count``."""

    @field_validator("sessions", mode="before")
    @classmethod
    def _sessions_file(cls, v: Any) -> Any:
        return _file_only(v)

    @field_validator("phases", mode="before")
    @classmethod
    def _phases_text(cls, v: Any) -> Any:
        # ``--set sites.0.phases=1`` arrives as text; a Literal of ints takes no text.
        return int(v) if isinstance(v, str) and v.strip() in ("1", "3") else v

    @property
    def private(self) -> bool:
        """Whether each EV has a charger of its own (see ``access``)."""
        return self.access == "private" if self.access is not None else self.kind == "home"

    @model_validator(mode="after")
    def _buses_match(self) -> Site:
        if self.buses is not None and len(self.buses) != self.stations:
            raise ValueError(f"buses: has {len(self.buses)} entries for {self.stations} stations")
        return self


class Grid(_Strict):
    """The feeder and its limits."""

    network: str = "kerber_dorfnetz"
    """A name from pandapower.networks (see evtwin.grid.NETWORKS), a SimBench grid
    ``simbench:<code>`` (``pip install evtwin[simbench]``; see evtwin.grid.load_network)
    or a pandapower JSON file."""
    engine: Literal["pgm", "pandapower"] = "pgm"
    """power-grid-model (fast, built once) or pandapower runpp per step (reference)."""
    base_load_scale: float = Field(1.0, ge=0)
    """Multiplier on the households' nominal load."""
    base_load_noise: float = Field(0.05, ge=0, le=1)
    """Std of the multiplicative noise on each household's load."""
    base_load_profile: Literal["residential", "simbench"] = "residential"
    """``residential``: one H0-like daily shape for every load; ``simbench``: each
    load's own SimBench quarter-hour profile from the scenario's start date (a
    ``simbench:`` network only; see evtwin.grid.LoadTimeSeries)."""
    v_min_pu: float = Field(0.90, gt=0)
    """EN 50160: -10 % of nominal."""
    v_max_pu: float = Field(1.10, gt=0)
    line_loading_max_percent: float = Field(100.0, gt=0)
    trafo_loading_max_percent: float = Field(100.0, gt=0)
    phases: Literal["balanced", "unbalanced"] = "balanced"
    """``unbalanced``: a three-phase unbalanced power flow, households single-phase and
    spread over L1-L3, single-phase sites' stations too (seeded by the scenario's seed);
    voltages per phase, the voltage unbalance factor and the neutral current."""
    vuf_max_percent: float = Field(2.0, gt=0)
    """EN 50160: voltage unbalance up to 2 % (checked on every unbalanced step)."""

    @model_validator(mode="after")
    def _band(self) -> Grid:
        if self.v_min_pu >= self.v_max_pu:
            raise ValueError("v_min_pu must be below v_max_pu")
        if self.phases == "unbalanced" and self.engine != "pgm":
            raise ValueError("engine: an unbalanced feeder is solved by \"pgm\"")
        if self.base_load_profile == "simbench" and not self.network.startswith("simbench:"):
            raise ValueError("base_load_profile: \"simbench\" needs a simbench: network")
        return self


class CSMSSettings(_Strict):
    """How stations report to the CSMS and where it keeps its data."""

    meter_interval_s: int = Field(300, gt=0)
    """SampledDataTxUpdatedInterval: TransactionEvent(Updated) meter samples."""
    aligned_interval_s: int = Field(900, gt=0)
    """AlignedDataInterval: MeterValues of idle EVSEs."""
    heartbeat_interval_s: int = Field(3600, gt=0)
    database: Literal["file", "memory"] = "file"
    """'file' writes csms.sqlite into the run folder; 'memory' only when asked."""
    protocol: Literal["1.6", "2.0.1", "2.1"] = "2.0.1"
    """OCPP version the virtual stations speak (the CSMS speaks all three)."""


class Control(_Strict):
    """The CSMS's smart-charging controller."""

    strategy: str = "uncontrolled"
    interval_s: int = Field(300, gt=0)
    """Control cycle period in simulated seconds."""
    charging_rate_unit: Literal["W", "A"] = "W"
    v2g_peak_target_percent: float = Field(50.0, gt=0, le=100)
    """v2g_peak_shaving: the transformer loading it shaves the peak to, in %
    of the transformer's thermal limit."""

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        return check_strategy_name(v)


class Fleet(_Strict):
    """The EVs."""

    count: int | None = Field(None, gt=0, le=100_000)
    """EVs drawn for the sites without sessions (required when there are such sites)."""
    v2g_share: float = Field(0.0, ge=0, le=1)
    """Share of EVs that can feed back (V2G) when parked at a bidirectional site."""
    min_soc: float = Field(0.3, ge=0, le=1)
    """The drivers' floor for V2G: a battery is never discharged below it."""
    iso15118_share: float = Field(0.5, ge=0, le=1)
    """Share of EVs that tell the station their departure time and energy need
    (ISO 15118 -> OCPP 2.x NotifyEVChargingNeeds); the CSMS assumes site
    defaults for the others and for every EV over OCPP 1.6."""


class TouPeriod(_Strict):
    """One time-of-use band: from ``start_h`` (local hour) until the next band."""

    start_h: float = Field(ge=0, lt=24)
    price_per_kwh: float


class Prices(_Strict):
    """The energy price signal the CSMS sees and the run is billed with."""

    kind: Literal["flat", "tou", "csv"] = "flat"
    flat_per_kwh: float = 0.30
    """kind = "flat": one import price."""
    tou: list[TouPeriod] = Field(default_factory=list)
    """kind = "tou": daily bands, e.g. night 0.20 from 0 h, peak 0.45 from 17 h."""
    csv: str | None = None
    """kind = "csv": a file with columns time (ISO 8601) and price_per_kwh,
    e.g. a day-ahead series; steps hold until the next row."""
    export_per_kwh: float = 0.08
    """What energy fed back (V2G) earns, flat."""
    export_follows_import: bool = False
    """Export earns the import price in force (less ``export_fee_per_kwh``)
    instead of the flat ``export_per_kwh``: a dynamic tariff, where V2G can
    trade on the price spread."""
    export_fee_per_kwh: float = Field(0.0, ge=0)
    """Grid fees and taxes not paid back on exported energy."""
    currency: str = Field("EUR", min_length=3, max_length=3)

    @model_validator(mode="after")
    def _complete(self) -> Prices:
        if self.kind == "tou" and not self.tou:
            raise ValueError("tou: give at least one band for kind = \"tou\"")
        if self.kind == "csv" and not self.csv:
            raise ValueError("csv: give the file for kind = \"csv\"")
        return self


class DemandResponse(_Strict):
    """A grid operator cuts a site's allowed import for a window."""

    site: str
    start_h: float = Field(ge=0)
    """Hours after the scenario start."""
    duration_h: float = Field(gt=0)
    limit_kw: float = Field(ge=0)


class PV(_Strict):
    """A PV plant: generation at feeder buses, behind a site's connection or on its own."""

    name: str = Field(min_length=1, max_length=30, pattern=r"^[A-Za-z0-9_.-]+$")
    site: str | None = None
    """The site whose connection it sits behind: the CSMS gets its forecast and
    the site's storage sees it. Without ``buses`` it goes on the site's station buses."""
    buses: list[int] | None = Field(None, min_length=1)
    """Feeder buses; the peak power is split evenly over them."""
    peak_kw: float = Field(gt=0)
    """Installed power (kWp) of the whole entry."""
    profile: Literal["clear_sky", "csv"] = "clear_sky"
    """A clear-sky daily shape with seeded weather, or a profile file."""
    csv: str | None = None
    """profile = "csv": columns time and p_kw (the plant) or pu (per kWp)."""
    latitude_deg: float = Field(51.0, ge=-90, le=90)
    solar_noon_h: float = Field(12.5, ge=9, le=15)
    """Local clock hour of solar noon (central Germany: 12.3 h CET, 13.3 h CEST)."""
    performance_ratio: float = Field(0.85, gt=0, le=1)
    cloudiness: float = Field(0.3, ge=0, le=1)
    """Mean daily cloud cover: 0 always clear, 1 always overcast."""
    variability: float = Field(0.15, ge=0, le=1)
    """Strength of passing clouds within a day."""

    @model_validator(mode="after")
    def _placed(self) -> PV:
        if self.site is None and self.buses is None:
            raise ValueError("give site or buses")
        if self.profile == "csv" and not self.csv:
            raise ValueError("csv: give the file for profile = \"csv\"")
        return self


class Storage(_Strict):
    """A stationary battery at a site, dispatched by its own controller."""

    name: str = Field(min_length=1, max_length=30, pattern=r"^[A-Za-z0-9_.-]+$")
    site: str
    bus: int | None = None
    """Feeder bus; default the bus of the site's first station."""
    capacity_kwh: float = Field(gt=0)
    power_kw: float = Field(gt=0)
    soc_initial: float = Field(0.5, ge=0, le=1)
    soc_min: float = Field(0.1, ge=0, le=1)
    soc_max: float = Field(0.95, ge=0, le=1)
    efficiency: float = Field(0.95, gt=0, le=1)
    """One way: grid to cells and cells to grid."""
    dispatch: Literal["peak_shaving", "self_consumption", "price"] = "peak_shaving"
    target_kw: float | None = Field(None, ge=0)
    """peak_shaving: the import at the site's connection to stay under; default
    the site's limit_kw."""
    charge_below_price: float | None = None
    """price: charge at or below this price; default the run's 25th percentile."""
    discharge_above_price: float | None = None
    """price: discharge at or above this price; default the run's 75th percentile."""

    @model_validator(mode="after")
    def _window(self) -> Storage:
        if self.soc_min >= self.soc_max:
            raise ValueError("soc_min must be below soc_max")
        return self


class AppSettings(_Strict):
    """Drivers who use the operator's app (evtwin.agents.app): they pick a site by free
    EVSEs, price and detour before leaving, and reserve when it is busy."""

    share: float = Field(0.3, ge=0, le=1)
    """Share of the EVs whose drivers use the app (drawn from the run's seed)."""
    reserve_when_occupancy_above: float = Field(0.7, ge=0, le=1)
    """They reserve when the chosen site's occupancy is above this (0 to 1)."""
    reservation_min: float = Field(15.0, gt=0, le=120)
    """How long a reservation holds, in minutes."""
    lead_min: float = Field(10.0, ge=0, le=240)
    """How long before arriving they decide (and reserve), in minutes."""
    no_show_share: float = Field(0.1, ge=0, le=1)
    """Share of reserving drivers who do not come after all (their reservation expires)."""
    detour_min: float = Field(10.0, ge=0, le=240)
    """Extra minutes of driving to another site of the same kind than their own."""
    value_of_time_per_h: float = Field(15.0, ge=0)
    """What an hour of detour is worth to a driver, in the tariff's currency."""


class RoamingOperator(_Strict):
    """One operator on the twin's CSMS platform: a CPO for its sites and an eMSP for
    its drivers (OCPI lets one platform serve several CPOs, each with its party id)."""

    name: str = Field(min_length=1, max_length=100)
    cpo_party_id: str = Field(pattern=r"^[A-Z0-9]{3}$")
    emsp_party_id: str = Field(pattern=r"^[A-Z0-9]{3}$")
    sites: list[str] = Field(min_length=1)
    """The scenario's sites this operator runs."""
    drivers_share: float = Field(ge=0, le=1)
    """Share of the EVs whose drivers are this operator's customers (its tokens)."""


class RoamingSettings(_Strict):
    """Drivers of another network at the twin's stations (evtwin.sim.roaming): the
    twin's CSMS is an OCPI CPO and an eMSP issues their tokens, over HTTP on loopback."""

    share: float = Field(0.3, ge=0, le=1)
    """Share of the EVs whose drivers are the eMSP's customers (drawn from the seed)."""
    country_code: str = Field("NL", pattern=r"^[A-Z]{2}$")
    cpo_party_id: str = Field("EVA", pattern=r"^[A-Z0-9]{3}$")
    cpo_name: str = Field("evtwin CPO", min_length=1, max_length=100)
    emsp_party_id: str = Field("MSP", pattern=r"^[A-Z0-9]{3}$")
    emsp_name: str = Field("evtwin eMSP", min_length=1, max_length=100)
    whitelist: Literal["NEVER", "ALLOWED", "ALWAYS"] = "NEVER"
    """NEVER: every start is authorized by the eMSP in real time."""
    markup_percent: float = Field(10.0, ge=0, le=1000, allow_inf_nan=False)
    """What the eMSP adds to the CPO's cost on its drivers' bills."""
    fee_per_session: float = Field(0.35, ge=0, allow_inf_nan=False)
    # Where the twin's sites are, for the OCPI Locations (a label; 100 m apart).
    latitude: float = Field(52.0907, ge=-89, le=89, allow_inf_nan=False)
    longitude: float = Field(5.1214, ge=-180, le=180, allow_inf_nan=False)
    country: str = Field("NLD", pattern=r"^[A-Z]{3}$")
    city: str = Field("Utrecht", min_length=1, max_length=45)

    operators: list[RoamingOperator] = Field(default_factory=list)
    """Two or more operators, each with its sites and drivers, roaming on each other's
    stations; then ``share``, ``cpo_party_id``, ``emsp_party_id`` and the names above
    are not used (every driver belongs to an operator)."""

    @model_validator(mode="after")
    def _parties(self) -> RoamingSettings:
        if not self.operators:
            if self.cpo_party_id == self.emsp_party_id:
                raise ValueError("emsp_party_id: must differ from cpo_party_id")
            return self
        if len(self.operators) < 2:
            raise ValueError("operators: give two or more (one operator: leave it out and "
                             "use share)")
        ids = [p for o in self.operators for p in (o.cpo_party_id, o.emsp_party_id)]
        if len(set(ids)) != len(ids):
            raise ValueError("operators: every cpo_party_id and emsp_party_id must differ")
        sites = [x for o in self.operators for x in o.sites]
        if len(set(sites)) != len(sites):
            raise ValueError("operators: a site belongs to one operator")
        if abs(sum(o.drivers_share for o in self.operators) - 1.0) > 1e-9:
            raise ValueError("operators: drivers_share must add up to 1")
        return self


class RunSettings(_Strict):
    """How the twin runs (not what it models): the results do not depend on it."""

    transport: Literal["websocket", "memory", "direct"] = "websocket"
    """How the virtual stations reach evtwin's CSMS: ``websocket`` (real OCPP-J
    over loopback sockets), ``memory`` (the same frames, built, validated and
    handled the same way, through an in-process pipe: no sockets, no websocket
    framing) or ``direct`` (the stations' and the CSMS's logic exchange OCPP's
    messages as objects: no frames, no JSON, no schema checks; for large
    sweeps). The same results on all three. Ignored against an external CSMS."""
    csms_process: bool = False
    """Run evtwin's CSMS in a process of its own (its own event loop and websocket
    server on loopback; the twin drives its clock and inputs over a pipe), as a
    CSMS deployed elsewhere would be. Needs ``transport = "websocket"``; the same
    results as in-process."""

    @model_validator(mode="after")
    def _process_needs_sockets(self) -> RunSettings:
        if self.csms_process and self.transport != "websocket":
            raise ValueError('csms_process = true needs transport = "websocket" '
                             f'(not "{self.transport}")')
        return self


class Scenario(_Strict):
    """A whole twin run."""

    name: str = Field("scenario", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = Field(0, ge=0)
    """Seed of every random stream of the run (a run replays exactly from it)."""
    timezone: ZoneName | None = None
    """IANA time zone of the feeder (``Europe/Berlin``): ``start`` without an offset is
    local time there, and local clocks (household load, driver arrivals, time-of-use
    bands) follow its daylight-saving changes. Unset: the fixed offset of ``start``
    (UTC without one) all run long."""
    start: datetime = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    """Scenario start, local time at the feeder: without an offset it is taken in
    ``timezone`` (UTC without one); a given offset keeps the instant."""
    duration_h: float = Field(24.0, gt=0, le=24 * 366)
    step_s: int = Field(60, gt=0, le=3600)
    """Coupling step: physics, power flow and OCPP traffic run once per step."""
    grid: Grid = Grid()
    csms: CSMSSettings = CSMSSettings()
    control: Control = Control()
    ev: Fleet
    sites: list[Site] = Field(min_length=1)
    prices: Prices = Prices()
    demand_response: list[DemandResponse] = Field(default_factory=list)
    """Grid-operator events, delivered to the CSMS as external constraints."""
    pv: list[PV] = Field(default_factory=list)
    storage: list[Storage] = Field(default_factory=list)
    sessions: FleetSessions | None = None
    """Sessions for the whole fleet (every site takes its EVs from them)."""
    run: RunSettings = RunSettings()
    finance: FinanceSettings | None = None
    faults: Faults | None = None
    """Stations fail (evtwin.agents.faults); without it they never do."""
    maintenance: Maintenance | None = None
    """Crews that repair failed stations (with [faults])."""
    forecast: Forecast | None = None
    """The CSMS's day-ahead demand forecast and procurement (see evtwin.sim.procurement)."""
    weather: Weather | None = None
    """Hourly air temperature: scales visits' energy need; a forecast feature."""
    tariff: DriverTariff | None = None
    """What drivers pay the CSMS and how they answer it (evtwin.sim.tariff_config);
    none: the CSMS's default flat tariff, drivers who ignore prices."""
    app: AppSettings | None = None
    roaming: RoamingSettings | None = None
    """Drivers of another network charging with their own tokens (OCPI); none: nobody."""
    """Drivers who use the operator's app and reserve (evtwin.agents.app); none: nobody."""

    #: The scenario file it was read from (see :attr:`source`); not a field.
    _source: str | None = PrivateAttr(None)

    @field_validator("sessions", mode="before")
    @classmethod
    def _sessions_file(cls, v: Any) -> Any:
        return _file_only(v)

    @field_validator("start")
    @classmethod
    def _local(cls, v: datetime, info: ValidationInfo) -> datetime:
        # Time of day (arrivals, household load) is local time at the feeder, so
        # start keeps a local offset; OCPP timestamps are sent in UTC either way.
        # In a named zone it is the zone's offset at the start: arithmetic on start
        # stays on fixed offsets (exact instants) and local_zone() gives the changes.
        name = info.data.get("timezone")
        if name is None:
            return v.replace(tzinfo=UTC) if v.tzinfo is None else v
        tz = zone(name)
        if v.tzinfo is None:
            local = v.replace(tzinfo=tz)
            if local.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != v:
                raise ValueError(f"{v.isoformat()} does not exist in {name} (the clocks "
                                 "go forward then): give a time after the change")
        else:
            local = v.astimezone(tz)
        offset = local.utcoffset()
        assert offset is not None
        return local.astimezone(timezone(offset))

    @model_validator(mode="after")
    def _cross(self) -> Scenario:
        problems = cross_field_problems(self.model_dump()) + tariff_problems(self)
        if problems:
            # One line per problem: messages may hold "; " themselves (see _model_level).
            raise ValueError("\n".join(f"{p}: {m}" for p, m in problems))
        return self

    @property
    def duration_s(self) -> float:
        """Length of the run in simulated seconds."""
        return self.duration_h * 3600.0

    @property
    def source(self) -> str:
        """Where the scenario came from, for error messages: its file, else its name."""
        return self._source or self.name

    def __eq__(self, other: object) -> bool:
        # The same fields are the same scenario, whichever file it was read from.
        if not isinstance(other, Scenario):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def local_zone(self) -> tzinfo:
        """The time zone of local clocks at the feeder: ``timezone`` when given, else
        the fixed offset of ``start`` (UTC when the file gives none)."""
        if self.timezone is not None:
            return zone(self.timezone)
        return self.start.tzinfo or UTC

    def clock_shift_s(self, t_s: float) -> float:
        """How far local clocks have moved (daylight saving) ``t_s`` seconds after the
        start, in seconds: local clock time then is ``start + t_s + shift``; 0 without
        ``timezone``."""
        if self.timezone is None:
            return 0.0
        at = (self.start + timedelta(seconds=t_s)).astimezone(zone(self.timezone))
        now, then = at.utcoffset(), self.start.utcoffset()
        return 0.0 if now is None or then is None else (now - then).total_seconds()

    def at_local(self, wall: datetime) -> datetime:
        """The instant local clocks read ``wall`` (its date and time of day; any tzinfo
        is ignored), as an aware datetime in ``start``'s offset. A time the clocks skip
        (spring forward) is taken an hour later, a repeated one the first time."""
        naive = wall.replace(tzinfo=None)
        if self.timezone is None:
            return naive.replace(tzinfo=self.start.tzinfo)
        instant = naive.replace(tzinfo=zone(self.timezone))
        tz = self.start.tzinfo
        assert tz is not None
        return instant.astimezone(tz)

    def seconds_at_clock(self, wall_s: float) -> float:
        """Seconds after the start at which local clocks read ``start + wall_s`` (the
        inverse of :meth:`clock_shift_s`); ``wall_s`` itself without ``timezone``."""
        if self.timezone is None:
            return wall_s
        return (self.at_local(self.start + timedelta(seconds=wall_s))
                - self.start).total_seconds()

    def drawn_sites(self) -> list[Site]:
        """The sites whose EVs are drawn (not read from sessions)."""
        return [] if self.sessions is not None else [s for s in self.sites if s.sessions is None]

    def ev_counts(self) -> dict[str, int]:
        """Split ev.count over the drawn sites by weight (largest remainder, deterministic);
        sites with sessions get none."""
        drawn = self.drawn_sites()
        counts = {s.name: 0 for s in self.sites}
        if not drawn or self.ev.count is None:
            return counts
        weights = [s.ev_share if s.ev_share is not None else s.stations * s.evses_per_station
                   for s in drawn]
        total = sum(weights)
        raw = [self.ev.count * w / total for w in weights]
        share = [int(r) for r in raw]
        order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - share[i]), i))
        for i in order[: self.ev.count - sum(share)]:
            share[i] += 1
        counts.update({s.name: c for s, c in zip(drawn, share, strict=True)})
        return counts


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _number(value: Any) -> float | None:
    """A raw value as a number: TOML's numbers, or the text of a ``--set`` override
    (the model coerces it; the checks on the raw mapping must read it too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _whole(value: Any) -> int | None:
    """A raw value as an int when it is a whole number (``60`` or ``"60"``)."""
    number = _number(value)
    if number is None or isinstance(value, float) or number != int(number):
        return None
    return int(number)


_DEFAULT_INTERVALS_S = {
    ("control", "interval_s"): Control.model_fields["interval_s"].default,
    ("csms", "meter_interval_s"): CSMSSettings.model_fields["meter_interval_s"].default,
    ("csms", "aligned_interval_s"): CSMSSettings.model_fields["aligned_interval_s"].default,
}


def cross_field_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems that involve more than one field, as ``(path, message)``.

    Works on the raw mapping, so it can run even when some fields are invalid
    and its problems are reported together with theirs; values of the wrong
    type are skipped here (the field validation reports them).
    """
    problems: list[tuple[str, str]] = []
    maint = data.get("maintenance")
    if isinstance(maint, dict):
        if data.get("faults") is None:
            problems.append(("maintenance", "needs [faults]: without failures there is "
                                            "nothing to repair"))
        run = data.get("run")
        if maint.get("policy", "reactive") != "none" and isinstance(run, dict) \
                and run.get("csms_process") is True:
            problems.append(("maintenance", "crews take the work orders of the CSMS in "
                                            "the twin's process: set run.csms_process = "
                                            "false (or maintenance.policy = \"none\")"))
    sites = data.get("sites")
    if isinstance(sites, list):
        names = [s.get("name") for s in sites if isinstance(s, dict)]
        dupes = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
        if dupes:
            problems.append(("sites", f"duplicate site names {dupes}"))
        with_buses = [isinstance(s, dict) and s.get("buses") is not None for s in sites]
        if any(with_buses) and not all(with_buses):
            problems.append(("sites", "give buses for every site or for none"))
        for i, site in enumerate(sites):
            if not isinstance(site, dict) or site.get("visitors_from") is None:
                continue
            source = site["visitors_from"]
            if source == site.get("name") or source not in names:
                problems.append((f"sites.{i}.visitors_from",
                                 f"name another site, not {source!r}"))
            access = site.get("access")
            if access == "private" or (access is None and site.get("kind", "home") == "home"):
                problems.append((f"sites.{i}.visitors_from",
                                 "visitors need a shared site (access = \"shared\")"))
        fleet_sessions = data.get("sessions") is not None
        drawn = [s for s in sites if isinstance(s, dict) and s.get("sessions") is None
                 and not fleet_sessions]
        shares = [_number(s.get("ev_share")) for s in drawn]
        if shares and all(x == 0 for x in shares):
            problems.append(("sites", "every ev_share is 0: give one site EVs"))
        count = _get(data, "ev", "count")
        if drawn and count is None and isinstance(data.get("ev"), dict):
            problems.append(("ev.count", "give the number of EVs drawn for the sites "
                             "without sessions"))
        elif not drawn and count is not None:
            problems.append(("ev.count", "every site takes its EVs from sessions: "
                             "drop ev.count"))
        fleet_site = _get(data, "sessions", "site")
        if isinstance(fleet_site, str) and fleet_site not in names:
            problems.append(("sessions.site", f"no site {fleet_site!r}"))
    step = _whole(data.get("step_s", 60))
    duration = _number(data.get("duration_h", 24.0))
    if (step is not None and step > 0 and duration is not None
            and duration > 0 and (duration * 3600) % step > 1e-6):
        problems.append(("duration_h", f"must be a whole number of steps ({step} s)"))
    if step is not None and step > 0:
        for path, default in _DEFAULT_INTERVALS_S.items():
            given = _get(data, *path)
            # A default counts too: step_s = 3600 does not fit the 900 s aligned interval.
            value = _whole(default if given is None else given)
            if value is not None and value > 0 and value % step:
                problems.append((".".join(path), f"must be a multiple of step_s ({step})"
                                 + ("" if given is not None else f" (default {value})")))
    events = data.get("demand_response")
    if isinstance(events, list) and isinstance(sites, list):
        site_names = {s.get("name") for s in sites if isinstance(s, dict)}
        for i, event in enumerate(events):
            if isinstance(event, dict) and event.get("site") not in site_names:
                problems.append((f"demand_response.{i}.site",
                                 f"no site {event.get('site')!r}"))
    site_list = [s for s in sites if isinstance(s, dict)] if isinstance(sites, list) else []
    site_by_name = {s.get("name"): s for s in site_list}
    for kind in ("pv", "storage"):
        entries = data.get(kind)
        if not isinstance(entries, list):
            continue
        names = [e.get("name") for e in entries if isinstance(e, dict)]
        dupes = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
        if dupes:
            problems.append((kind, f"duplicate names {dupes}"))
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or entry.get("site") is None:
                continue
            site = site_by_name.get(entry["site"])
            if site is None:
                problems.append((f"{kind}.{i}.site", f"no site {entry['site']!r}"))
            elif (kind == "storage" and entry.get("dispatch", "peak_shaving") == "peak_shaving"
                  and entry.get("target_kw") is None and site.get("limit_kw") is None):
                problems.append((f"{kind}.{i}.target_kw",
                                 "peak_shaving needs target_kw (the site has no limit_kw)"))
    net = _get(data, "grid", "network")
    if (isinstance(net, str) and not net.endswith(".json") and net not in NETWORKS
            and not net.startswith("simbench:")):
        problems.append(("grid.network", f"unknown network {net!r}; known: "
                         f"{', '.join(sorted(NETWORKS))}, simbench:<code> or a "
                         "pandapower .json file"))
    return problems


#: ``"field: message"``: how a model validator names a field in its message.
_NAMED = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): (.+)$", re.DOTALL)


def _split_joined(path: str, message: str) -> list[tuple[str, str]]:
    """A validator's ``"a: m1; b: m2"`` (several problems in one message) as one
    problem each, ``b`` a sibling of the field ``path`` names (``sites.0.behaviour.b``)."""
    parts = message.split("; ")
    heads = [_NAMED.match(part) for part in parts[1:]]
    # Only where each part names a scenario field ("...; known: a, b" is one message).
    fields = {name for model in _Strict.__subclasses__() for name in model.model_fields}
    if len(parts) == 1 or not all(m and m.group(1) in fields for m in heads):
        return [(path, message)]
    parent = path.rpartition(".")[0]
    out = [(path, parts[0])]
    for part in parts[1:]:
        m = _NAMED.match(part)
        assert m is not None
        out.append((f"{parent}.{m.group(1)}" if parent else m.group(1), m.group(2)))
    return out


def _model_level(err: ValidationError) -> list[tuple[str, str]]:
    """Messages of the Scenario's own validator (no field location in pydantic's
    report): a line per problem, each naming its field, ``"path: message"``."""
    problems: list[tuple[str, str]] = []
    for e in err.errors():
        if not e["loc"]:
            text = str(e["msg"]).removeprefix("Value error, ").strip()
            for line in text.splitlines():
                m = _NAMED.match(line)
                problems.append((m.group(1), m.group(2)) if m else ("", line))
    return problems


def parse_scenario(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate a scenario mapping; raises ScenarioError listing every problem."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as err:
        problems = [split for path, msg in validation_problems(err)
                    for split in _split_joined(path, msg)]
        problems += cross_field_problems(data)
        # The model's own validator sees defaults and coerced values that the raw
        # mapping does not show: whatever it says beyond the rest is reported too.
        named = {path for path, _ in problems}
        problems += [p for p in _model_level(err) if p[0] not in named or not p[0]]
        if not problems:  # never an empty "error:" line
            problems = [("", str(err).splitlines()[0])]
        raise ScenarioError(source, list(dict.fromkeys(problems))) from None


def _override(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set ``value`` at a dotted path; list items by index (``sites.0.limit_kw``)."""
    node: Any = data
    *parents, leaf = dotted.split(".")
    for key in [*parents, leaf]:
        if not key:
            raise ScenarioError(source, [(dotted, "empty key in override path")])
    try:
        for key in parents:
            if isinstance(node, list):
                node = node[int(key)]
            elif isinstance(node, dict):
                node = node.setdefault(key, {})
            else:
                raise TypeError(key)
        if isinstance(node, list):
            node[int(leaf)] = value
        elif isinstance(node, dict):
            node[leaf] = value
        else:
            raise TypeError(leaf)
    except (ValueError, IndexError, TypeError):
        raise ScenarioError(source, [(dotted, "override path does not name a field")]) from None


def load_scenario(path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read and validate a scenario file; ``overrides`` are dotted paths to values.

    A relative ``grid.network`` JSON path (and a prices, PV or sessions file) is
    resolved against the file's folder.
    """
    p = Path(path)
    source = str(path)
    data, error = read_toml(p)
    if data is None:
        raise ScenarioError(source, [("", error)])
    data.setdefault("name", p.stem)
    for dotted, value in (overrides or {}).items():
        _override(data, dotted, value, source)
    try:
        scenario = _resolve_and_parse(data, p, source)
    except ScenarioError as err:
        # An overridden field's error shows what was given: it is in no file.
        given = overrides or {}
        raise ScenarioError(source, [(path, f"{msg} (given {given[path]!r})"
                                      if path in given and repr(given[path]) not in msg
                                      else msg) for path, msg in err.problems]) from None
    scenario._source = source
    return scenario


def _resolve_and_parse(data: dict[str, Any], p: Path, source: str) -> Scenario:
    """Resolve the file paths a scenario names against its folder, then validate it."""
    _transport_from_environment(data, source)
    net = (data.get("grid") or {}).get("network")
    if isinstance(net, str) and net.endswith(".json") and not Path(net).is_absolute():
        data["grid"]["network"] = str((p.parent / net).resolve())
    price_csv = (data.get("prices") or {}).get("csv")
    if isinstance(price_csv, str) and not Path(price_csv).is_absolute():
        data["prices"]["csv"] = str((p.parent / price_csv).resolve())
    weather_csv = (data.get("weather") or {}).get("csv")
    if isinstance(weather_csv, str) and not Path(weather_csv).is_absolute():
        data["weather"]["csv"] = str((p.parent / weather_csv).resolve())
    for plant in data.get("pv") or []:
        pv_csv = plant.get("csv") if isinstance(plant, dict) else None
        if isinstance(pv_csv, str) and not Path(pv_csv).is_absolute():
            plant["csv"] = str((p.parent / pv_csv).resolve())
    holders: list[dict[str, Any]] = [data, *(s for s in data.get("sites") or []
                                              if isinstance(s, dict))]
    for holder in holders:
        given: Any = holder.get("sessions")
        if isinstance(given, str):
            given = holder["sessions"] = {"file": given}
        file = given.get("file") if isinstance(given, dict) else None
        if isinstance(file, str) and file and not Path(file).is_absolute():
            given["file"] = str((p.parent / file).resolve())
    return parse_scenario(data, source)


#: Environment variable: the transport of every run whose scenario (file or
#: overrides) does not choose one, e.g. to run a whole test suite over ``direct``.
TRANSPORT_ENV = "EVTWIN_TRANSPORT"


def _transport_from_environment(data: dict[str, Any], source: str) -> None:
    wanted = os.environ.get(TRANSPORT_ENV)
    run = data.get("run")
    process = run.get("csms_process") if isinstance(run, dict) else None
    if isinstance(process, str):  # a --set override's text, coerced by the model later
        process = process.strip().lower() not in ("false", "0", "no", "off", "")
    if not wanted or (isinstance(run, dict) and ("transport" in run or process)):
        return
    if wanted not in ("websocket", "memory", "direct"):
        raise ScenarioError(source, [("run.transport", f"{TRANSPORT_ENV}={wanted!r} is not "
                                      "one of websocket, memory, direct")])
    if run is None:
        data["run"] = {"transport": wanted}
    elif isinstance(run, dict):
        run["transport"] = wanted


def behaviour_overrides(site: Site) -> dict[str, Any]:
    """The behaviour fields a site overrides (None fields dropped); mixture fields are
    tuples of floats, the others floats."""
    return {k: v for k, v in site.behaviour.model_dump().items() if v is not None}


__all__ = [
    "DEFAULTS",
    "PV",
    "FleetSessions",
    "Scenario",
    "ScenarioError",
    "Site",
    "SiteSessions",
    "Storage",
    "behaviour_overrides",
    "load_scenario",
    "parse_scenario",
]
