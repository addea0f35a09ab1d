"""The CSMS domain model: provisioning, sessions and the view strategies see."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .auth import TokenRecord

ChargingRateUnit = Literal["W", "A"]


@dataclass(frozen=True, slots=True)
class EvseSpec:
    """One EVSE as provisioned: its hardware limit and phases."""

    evse_id: int
    max_power_w: float
    phases: int = 3
    line: int | None = None
    """The line (1, 2, 3 for L1-L3) a single-phase EVSE is on, when known; strategies
    then keep each phase of a site within its share of the site's limit."""


@dataclass(frozen=True, slots=True)
class StationSpec:
    """A station the CSMS accepts: identity, the site it belongs to, its EVSEs."""

    station_id: str
    site: str
    evses: tuple[EvseSpec, ...]

    def evse(self, evse_id: int) -> EvseSpec:
        """Return the EVSE with this id (KeyError if the station has none)."""
        for spec in self.evses:
            if spec.evse_id == evse_id:
                return spec
        raise KeyError(evse_id)


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """A group of stations behind one connection, with an optional import limit.

    ``default_dwell_h`` and ``default_energy_kwh`` are what the CSMS assumes
    for a session whose EV does not state its needs (OCPP 1.6, or a 2.x EV
    without ISO 15118): departure after the dwell, that much energy wanted.
    """

    name: str
    limit_kw: float | None = None
    default_dwell_h: float = 8.0
    default_energy_kwh: float = 15.0


@dataclass(frozen=True, slots=True)
class Tariff:
    """What a session costs: a fee, a price per kWh and a price per hour plugged in,
    less a credit per kWh fed back."""

    energy_per_kwh: float = 0.30
    time_per_hour: float = 0.0
    session_fee: float = 0.0
    currency: str = "EUR"
    export_per_kwh: float = 0.0
    """Credit per kWh a session feeds back (V2G), taken off its cost."""
    cost_updated_interval_s: float = 0.0
    """OCPP 2.x: send a charging session's running cost (CostUpdated) at most this
    often, when its meter reports (0: never)."""
    # Driver-facing policies (evtwin.csms.tariffs); the defaults are the flat tariff.
    kind: str = "flat"
    """``flat``, ``tou`` (``bands``) or ``occupancy`` (surcharge at high occupancy)."""
    bands: tuple[tuple[float, float], ...] = ()
    """tou: ``(local start hour, price per kWh)``, each until the next band's start."""
    timezone: str = "UTC"
    """The local clock of the bands: UTC, an offset (+01:00) or an IANA name."""
    occupancy_threshold: float = 0.8
    """occupancy: share of the site's EVSEs in use at a session's start from which
    the surcharge applies to it."""
    occupancy_surcharge_per_kwh: float = 0.0
    idle_fee_per_min: float = 0.0
    """Per minute plugged in after charging stopped, beyond ``idle_grace_min``."""
    idle_grace_min: float = 0.0
    idle_fee_cap: float | None = None
    """Most idle fee per session (None: no cap)."""
    site_offsets_per_kwh: tuple[tuple[str, float], ...] = ()
    """``(site, amount)`` added to every per-kWh price at that site."""
    push_to_stations: bool = False
    """OCPP 2.1: send each station this tariff (SetDefaultTariff) once it has booted."""


#: Grid-to-battery efficiency the CSMS assumes when an EV does not say (AC charging).
ASSUMED_CHARGE_EFFICIENCY = 0.9
#: Battery-to-grid efficiency the CSMS assumes for energy an EV feeds back.
ASSUMED_DISCHARGE_EFFICIENCY = 0.92


@dataclass(frozen=True, slots=True)
class CSMSConfig:
    """Everything the CSMS core is provisioned with.

    ``control_interval_s`` is the period of the smart-charging cycle on the
    injected clock; ``nominal_voltage_v`` converts W to A for stations that are
    sent limits in amperes.
    """

    stations: tuple[StationSpec, ...]
    sites: tuple[SiteSpec, ...] = ()
    id_tokens: frozenset[str] = frozenset()
    """Tokens that are simply Accepted."""
    tokens: tuple[TokenRecord, ...] = ()
    """Tokens with a status, group or expiry of their own."""
    master_pass_group: str | None = None
    allow_concurrent_tx: bool = True
    strategy: str = "uncontrolled"
    control_interval_s: float = 300.0
    charging_rate_unit: ChargingRateUnit = "W"
    nominal_voltage_v: float = 230.0
    heartbeat_interval_s: int = 3600
    limit_deadband_w: float = 50.0
    tariff: Tariff = field(default_factory=Tariff)
    assumed_efficiency: float = ASSUMED_CHARGE_EFFICIENCY
    """Grid-to-battery efficiency the CSMS assumes when it turns the battery
    energy an EV asks for into the grid energy its meters will show."""
    assumed_discharge_efficiency: float = ASSUMED_DISCHARGE_EFFICIENCY
    """Battery-to-grid efficiency the CSMS assumes for energy an EV feeds back."""
    v2g_peak_target_percent: float = 50.0
    """v2g_peak_shaving: the transformer loading to shave to, in % of its limit."""
    max_event_age_s: float = 400 * 86400.0
    """Oldest timestamp accepted on a station event, before the CSMS's now (a station
    offline for a long time still delivers its queue; older is a broken clock)."""
    max_event_lead_s: float = 86400.0
    """Latest timestamp accepted on a station event, after the CSMS's now (clock skew)."""


@dataclass(frozen=True, slots=True)
class LimitSchedule:
    """A limit set from outside the CSMS (OCPP 2.x NotifyChargingLimit: an EMS, the grid
    operator), as a schedule: ``periods`` are (start s, limit or None, phases or None)
    in ``unit`` (W or A) from ``start``, for ``duration_s`` (None: open-ended)."""

    start: datetime
    unit: str
    periods: tuple[tuple[float, float | None, int | None], ...]
    duration_s: float | None = None

    def limit_w(self, at: datetime, *, volts: float, phases: int) -> float | None:
        """The limit in force at ``at`` in W (A at ``volts`` per phase), or None."""
        elapsed = (at - self.start).total_seconds()
        if elapsed < 0 or (self.duration_s is not None and elapsed >= self.duration_s):
            return None
        limit: float | None = None
        n: int | None = None
        for start_s, period_limit, period_phases in self.periods:
            if start_s <= elapsed:
                limit, n = period_limit, period_phases
        if limit is None:
            return None
        return limit * volts * (n or phases) if self.unit == "A" else limit

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "unit": self.unit,
                "periods": [list(p) for p in self.periods], "duration_s": self.duration_s}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LimitSchedule:
        return cls(datetime.fromisoformat(data["start"]), data["unit"],
                   tuple((float(a), None if b is None else float(b), None if c is None
                          else int(c)) for a, b, c in data["periods"]),
                   data.get("duration_s"))


@dataclass(frozen=True, slots=True)
class EVChargingNeeds:
    """What an EV told its station it needs (OCPP 2.x NotifyEVChargingNeeds).

    Energies in Wh, powers in W, currents in A, voltages in V, as on the wire.
    The ``v2x_*`` fields come only from OCPP 2.1 (``v2xChargingParameters``);
    ``charging_needs`` keeps the whole ``chargingNeeds`` object as sent.
    """

    evse_id: int
    received_at: datetime
    energy_transfer: str
    departure_time: datetime | None = None
    energy_amount_wh: float | None = None
    ev_min_current_a: float | None = None
    ev_max_current_a: float | None = None
    ev_max_voltage_v: float | None = None
    ev_max_power_w: float | None = None
    ev_energy_capacity_wh: float | None = None
    soc_percent: float | None = None
    v2x_min_charge_power_w: float | None = None
    v2x_max_charge_power_w: float | None = None
    v2x_min_discharge_power_w: float | None = None
    v2x_max_discharge_power_w: float | None = None
    v2x_target_energy_wh: float | None = None
    v2x_min_energy_wh: float | None = None
    v2x_max_energy_wh: float | None = None
    v2x_target_soc_percent: float | None = None
    charging_needs: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Session:
    """A transaction as the CSMS knows it, built only from OCPP messages."""

    transaction_id: str
    station_id: str
    evse_id: int
    id_token: str | None
    started_at: datetime
    meter_start_wh: float | None = None
    meter_last_wh: float | None = None
    power_w: float = 0.0
    voltage_v: float | None = None
    soc_percent: float | None = None
    last_seq_no: int = -1
    ended_at: datetime | None = None
    stopped_reason: str | None = None
    limit_w: float | None = None
    meter_last_at: datetime | None = None
    meter_stop_wh: float | None = None
    export_start_wh: float | None = None
    export_last_wh: float | None = None
    charging_state: str | None = None

    @property
    def exported_wh(self) -> float:
        """Energy fed back to the grid during the session (V2G), Wh."""
        if self.export_start_wh is None or self.export_last_wh is None:
            return 0.0
        return self.export_last_wh - self.export_start_wh
    ev_needs: EVChargingNeeds | None = None
    """The EV's last NotifyEVChargingNeeds on this session's EVSE (OCPP 2.x), in memory only."""
    surcharged: bool = False
    """Occupancy tariff: its site was busy when it started (evtwin.csms.tariffs), in
    memory only (after a restart the CSMS bills it without the surcharge)."""

    @property
    def energy_wh(self) -> float:
        """Energy metered since the transaction started, in Wh (latest reading)."""
        if self.meter_start_wh is None or self.meter_last_wh is None:
            return 0.0
        return self.meter_last_wh - self.meter_start_wh

    @property
    def billed_energy_wh(self) -> float:
        """Energy for the CDR: the Ended reading when there is one, else the latest."""
        if self.meter_start_wh is None:
            return 0.0
        stop = self.meter_stop_wh if self.meter_stop_wh is not None else self.meter_last_wh
        return 0.0 if stop is None else stop - self.meter_start_wh

    @property
    def is_open(self) -> bool:
        """True until the station reports the transaction Ended."""
        return self.ended_at is None


@dataclass(frozen=True, slots=True)
class SessionView:
    """What a strategy may know about one active session (read-only)."""

    station_id: str
    evse_id: int
    transaction_id: str
    max_power_kw: float
    power_kw: float
    energy_kwh: float
    voltage_v: float | None
    soc_percent: float | None
    started_at: datetime
    departure: datetime | None = None
    """When the EV leaves: stated by the EV, else the site's default dwell."""
    energy_remaining_kwh: float | None = None
    """Energy still wanted (kWh): stated energy minus energy delivered so far."""
    needs_stated: bool = False
    """True if departure/energy came from the EV (ISO 15118 NotifyEVChargingNeeds)."""
    ev_max_kw: float | None = None
    """The EV's own maximum charging power, when it said so."""
    limit_kw: float | None = None
    """The limit the CSMS last had accepted for this EVSE."""
    phases: int = 3
    line: int | None = None
    """The line (1-3) a single-phase EVSE is on, when the CSMS knows it."""
    v2x_max_discharge_kw: float | None = None
    """Bidirectional EV (OCPP 2.1 V2X parameters): the most it may feed back."""
    v2x_spare_kwh: float | None = None
    """Battery energy above the driver's minimum SoC now (kWh), if the EV said
    enough to know it."""
    charging_state: str | None = None
    """Latest 2.x chargingState: Charging, SuspendedEV (the EV takes nothing),
    SuspendedEVSE (held at 0 by the station), EVConnected, Idle."""


@dataclass(frozen=True, slots=True)
class SiteView:
    """One site's active sessions and its import limit for EV charging."""

    name: str
    limit_kw: float | None
    sessions: tuple[SessionView, ...]
    pv_forecast_kw: tuple[tuple[datetime, float], ...] = ()
    """PV generation behind this site's connection: (start time, kW) steps, sorted."""


@dataclass(frozen=True, slots=True)
class ControlView:
    """The CSMS's whole view handed to a strategy: time and sites, nothing else."""

    now: datetime
    sites: tuple[SiteView, ...] = field(default_factory=tuple)
    feeder: Any = None
    """The CSMS's model of the feeder and its latest measurements, when it has
    one (see evtwin.csms.feeder); None when the CSMS knows nothing of the grid."""
    prices: tuple[tuple[datetime, float], ...] = ()
    """Energy price forecast: (start time, price per kWh) steps, sorted."""
    pv_forecast_kw: tuple[tuple[datetime, float], ...] = ()
    """PV surplus forecast of the whole CSMS: (start time, kW) steps, sorted;
    per-site PV is in :attr:`SiteView.pv_forecast_kw`."""
    export_prices: tuple[tuple[datetime, float], ...] = ()
    """What energy fed back earns (V2G): (start time, price per kWh) steps, sorted."""
    charge_efficiency: float = ASSUMED_CHARGE_EFFICIENCY
    """The CSMS's grid-to-battery efficiency (``energy_remaining_kwh`` is grid kWh)."""
    discharge_efficiency: float = ASSUMED_DISCHARGE_EFFICIENCY
    """The CSMS's battery-to-grid efficiency for energy fed back."""
    v2g_peak_target_percent: float = 50.0
    """v2g_peak_shaving: the transformer loading to shave to, in % of its limit."""
    max_event_age_s: float = 400 * 86400.0
    """Oldest timestamp accepted on a station event, before the CSMS's now (a station
    offline for a long time still delivers its queue; older is a broken clock)."""
    max_event_lead_s: float = 86400.0
    """Latest timestamp accepted on a station event, after the CSMS's now (clock skew)."""


ParsedSample = tuple[str, str, str | None, float, str | None, datetime]
"""A sampled value: (timestamp as sent, measurand, phase, value, unit, timestamp parsed)."""


@dataclass(frozen=True, slots=True)
class TxEvent:
    """A transaction event as the core takes it, whatever the version or transport
    (2.x TransactionEvent, 1.6 Start/MeterValues/StopTransaction, a direct message),
    every field checked."""

    transaction_id: str
    event_type: str  # Started | Updated | Ended
    seq_no: int | None  # None: the CSMS numbers the events (1.6)
    evse_id: int  # 0: not stated (the session's own is kept)
    at: datetime
    timestamp: str
    trigger_reason: str
    id_token: str | None
    charging_state: str | None
    stopped_reason: str | None
    samples: tuple[ParsedSample, ...]
    energy_wh: float | None


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """An EVSE reported a connector status (what :attr:`CSMSCore.observers` are told)."""

    station_id: str
    evse_id: int
    status: str
    timestamp: str


@dataclass(frozen=True, slots=True)
class SessionChanged:
    """A transaction event was applied: the session as it is now (a copy), and its
    charge detail record once it ended (the store's row)."""

    session: Session
    event_type: str
    """Started, Updated or Ended."""
    cdr: dict[str, Any] | None = None


CoreEvent = StatusChanged | SessionChanged
