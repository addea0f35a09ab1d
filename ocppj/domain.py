"""What a charging station and a CSMS tell each other, in one version-neutral vocabulary.

These are OCPP's messages without a wire form: no action names, no camelCase,
no JSON. The virtual stations' protocol state machine speaks them; each OCPP
version's codec turns them into OCPP-J payloads and back; the ``direct``
transport hands them to the CSMS as they are. So one station logic and one
CSMS logic serve every version and every transport.

Conventions: times are aware datetimes cut to whole milliseconds (what an
OCPP timestamp carries, so a message means the same with or without a wire
form in between: :func:`ms_time`); energies in Wh, powers in W (negative:
fed back to the grid), currents in A, voltages in V. Values are rounded as a
meter reports them (:meth:`Reading.samples`) before any transport sees them.

Never imports evtwin.csms, evtwin.agents, evtwin.sim or evtwin.grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ENERGY = "Energy.Active.Import.Register"
ENERGY_EXPORT = "Energy.Active.Export.Register"
POWER = "Power.Active.Import"
POWER_EXPORT = "Power.Active.Export"
SOC = "SoC"
VOLTAGE = "Voltage"


def ms_time(at: datetime) -> datetime:
    """``at`` in UTC, cut to whole milliseconds (what an OCPP timestamp holds)."""
    at = at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


# --------------------------------------------------------------------------- readings


@dataclass(frozen=True, slots=True)
class Sample:
    """One sampled value: measurand, value in ``unit``, and where it was measured."""

    measurand: str
    value: float
    unit: str
    location: str | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """What an EVSE's meter shows at ``at``, in one sampling ``context``.

    ``export_wh`` is left out (None) by a meter that has never fed back;
    ``power_w`` (negative: export), ``soc_percent`` and ``voltage_v`` are None
    where the reading does not carry them.
    """

    at: datetime
    context: str  # Transaction.Begin | Sample.Periodic | Sample.Clock | Transaction.End
    register_wh: float
    export_wh: float | None = None
    power_w: float | None = None
    soc_percent: float | None = None
    voltage_v: float | None = None

    def samples(self) -> list[Sample]:
        """The sampled values, in the order a meter sends them, rounded as it reports them
        (energy to 1 mWh, power to 0.1 W, SoC and voltage to 0.01)."""
        out = [Sample(ENERGY, round(self.register_wh, 3), "Wh")]
        if self.export_wh is not None:
            out.append(Sample(ENERGY_EXPORT, round(self.export_wh, 3), "Wh"))
        if self.power_w is not None:
            out.append(Sample(POWER, round(max(self.power_w, 0.0), 1), "W"))
            if self.power_w < 0:
                out.append(Sample(POWER_EXPORT, round(-self.power_w, 1), "W"))
        if self.soc_percent is not None:
            out.append(Sample(SOC, round(self.soc_percent, 2), "Percent", "EV"))
        if self.voltage_v is not None:
            out.append(Sample(VOLTAGE, round(self.voltage_v, 2), "V"))
        return out


# --------------------------------------------------------------------------- station -> CSMS


@dataclass(frozen=True, slots=True)
class Boot:
    """The station (re)starts: BootNotification."""

    vendor: str
    model: str
    reason: str = "PowerUp"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The station is alive."""


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """A connector's status (in the vocabulary of the station's OCPP version)."""

    evse_id: int
    status: str
    at: datetime


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    """May this token charge?"""

    id_token: str


@dataclass(frozen=True, slots=True)
class TransactionStarted:
    """A transaction began on an EVSE (2.x TransactionEvent Started, 1.6 StartTransaction).

    ``transaction_id`` is the station's own; a CSMS that assigns ids (1.6)
    answers with its own in :class:`TransactionAnswer`.
    """

    evse_id: int
    transaction_id: str
    at: datetime
    id_token: str
    reading: Reading
    reservation_id: int | None = None
    """The reservation this transaction uses (the token's reservation on the EVSE)."""
    remote_start_id: int | None = None
    """2.x: the RequestStartTransaction that started it (None: started at the station)."""


@dataclass(frozen=True, slots=True)
class TransactionUpdated:
    """A periodic meter reading of a running transaction; ``seq_no`` None where
    the version numbers no events (1.6)."""

    evse_id: int
    transaction_id: str
    at: datetime
    seq_no: int | None
    charging_state: str
    reading: Reading


@dataclass(frozen=True, slots=True)
class TransactionEnded:
    """A transaction ended (2.x TransactionEvent Ended, 1.6 StopTransaction)."""

    evse_id: int
    transaction_id: str
    at: datetime
    seq_no: int | None
    reason: str
    reading: Reading
    trigger: str = "EVDeparted"
    """2.x triggerReason: EVDeparted, or AbnormalCondition when a failure ended it."""
    charging_state: str = "Idle"
    """2.x chargingState at the end: Idle, or EVConnected (still plugged in)."""


@dataclass(frozen=True, slots=True)
class MeterReport:
    """Clock-aligned readings of an EVSE outside a transaction."""

    evse_id: int
    reading: Reading


@dataclass(frozen=True, slots=True)
class V2XNeeds:
    """ISO 15118-20 bidirectional parameters (OCPP 2.1 V2XChargingParameters)."""

    min_energy_wh: int
    target_energy_wh: int
    max_energy_wh: int
    target_soc_percent: int
    max_charge_w: int
    max_discharge_w: int


@dataclass(frozen=True, slots=True)
class ChargingNeeds:
    """What the EV said over ISO 15118 (NotifyEVChargingNeeds, OCPP 2.x)."""

    evse_id: int
    energy_transfer: str  # AC_single_phase | AC_three_phase | AC_BPT
    departure: datetime
    energy_wh: int
    min_current_a: int
    max_current_a: int
    max_voltage_v: int
    v2x: V2XNeeds | None = None


@dataclass(frozen=True, slots=True)
class ProblemReport:
    """A component's problem: a warning, a failure, or its clearing.

    OCPP 2.x: NotifyEvent on the component's ``Problem`` variable (``techCode``
    the code, ``techInfo`` the severity: warning | fault | cleared). OCPP 1.6:
    StatusNotification with ``code`` as its errorCode and ``status`` (the
    connector's status it goes with: Faulted for a failure; a warning keeps the
    status it has). ``evse_id`` 0 is the station as a whole.
    """

    evse_id: int
    component: str
    code: str
    severity: str  # warning | fault | cleared
    status: str
    at: datetime
    event_id: int


@dataclass(frozen=True, slots=True)
class ReservationEnded:
    """A reservation ended without being used (2.x ReservationStatusUpdate): ``status``
    Expired (its expiry passed) or Removed (the station dropped it)."""

    reservation_id: int
    status: str  # Expired | Removed


StationMessage = (Boot | Heartbeat | StatusChanged | AuthorizeRequest | TransactionStarted
                  | TransactionUpdated | TransactionEnded | MeterReport | ChargingNeeds
                  | ProblemReport | ReservationEnded)


# --------------------------------------------------------------------------- CSMS answers


@dataclass(frozen=True, slots=True)
class BootAnswer:
    status: str
    interval_s: float


@dataclass(frozen=True, slots=True)
class AuthorizeAnswer:
    """The token's status, and its group (2.x groupIdToken, 1.6 parentIdTag) if it has one."""

    status: str
    group_id_token: str | None = None


@dataclass(frozen=True, slots=True)
class TransactionAnswer:
    """``id_token_status`` when the CSMS rated a token; ``transaction_id`` when the
    CSMS assigns the ids (1.6)."""

    id_token_status: str | None = None
    transaction_id: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """An answer that says nothing but "received" (Heartbeat, StatusNotification, ...)."""


CSMSAnswer = BootAnswer | AuthorizeAnswer | TransactionAnswer | Ack


class Refusal(Exception):
    """A message the other side refused: the OCPP-J error ``code`` (2.0.1 spelling) it
    would have earned on the wire, and why."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


# --------------------------------------------------------------------------- CSMS -> station


@dataclass(frozen=True, slots=True)
class PeriodData:
    """One schedule period: from ``start_s`` after the schedule's start, a ``limit``
    (None: no cap, an OCPP 2.1 setpoint alone), phases, and an OCPP 2.1
    ``setpoint`` (negative: discharge), in the profile's unit."""

    start_s: float
    limit: float | None
    phases: int | None = None
    setpoint: float | None = None


@dataclass(frozen=True, slots=True)
class ProfileData:
    """A charging profile as sent, whatever the version (1.6's ChargePointMaxProfile is
    ChargingStationMaxProfile here)."""

    profile_id: int
    purpose: str
    stack_level: int
    kind: str
    unit: str
    periods: tuple[PeriodData, ...]
    start: datetime | None = None
    duration_s: float | None = None
    transaction_id: str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    recurrency: str | None = None


@dataclass(frozen=True, slots=True)
class SetChargingProfile:
    evse_id: int
    profile: ProfileData


@dataclass(frozen=True, slots=True)
class ClearChargingProfile:
    profile_id: int | None = None
    evse_id: int | None = None
    purpose: str | None = None
    stack_level: int | None = None


@dataclass(frozen=True, slots=True)
class CostUpdate:
    """A running transaction's cost so far (2.x CostUpdated), in the tariff's currency."""

    transaction_id: str
    total_cost: float


@dataclass(frozen=True, slots=True)
class DefaultTariff:
    """The tariff to show drivers at an EVSE (0: every EVSE), as 2.1 SetDefaultTariff
    carries it (``tariff`` is the wire's TariffType: prices stay as the CSMS gave them)."""

    evse_id: int
    tariff_id: str
    tariff: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReserveNow:
    """Hold an EVSE (None: any, 1.6 connector 0) for ``id_token`` (or its group) until
    ``expiry``."""

    reservation_id: int
    id_token: str
    expiry: datetime
    evse_id: int | None = None
    group_id_token: str | None = None


@dataclass(frozen=True, slots=True)
class CancelReservation:
    reservation_id: int


@dataclass(frozen=True, slots=True)
class RequestStart:
    """Start a transaction for ``id_token`` (1.6 RemoteStartTransaction, 2.x
    RequestStartTransaction); ``evse_id`` None: the station chooses."""

    id_token: str
    evse_id: int | None = None
    remote_start_id: int | None = None


@dataclass(frozen=True, slots=True)
class RequestStop:
    """Stop a running transaction (1.6 RemoteStopTransaction, 2.x RequestStopTransaction)."""

    transaction_id: str


@dataclass(frozen=True, slots=True)
class ChangeAvailability:
    """Make an EVSE (0: the whole station; 1.6 connector 0) operative or inoperative."""

    evse_id: int
    operative: bool


CSMSRequest = (SetChargingProfile | ClearChargingProfile | CostUpdate | DefaultTariff
               | ReserveNow | CancelReservation | RequestStart | RequestStop
               | ChangeAvailability)


@dataclass(frozen=True, slots=True)
class ProfileAnswer:
    """Accepted or Rejected, with why (``reason``) when rejected."""

    status: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ClearAnswer:
    status: str  # Accepted | Unknown


@dataclass(frozen=True, slots=True)
class TariffAnswer:
    """SetDefaultTariff's answer: Accepted | Rejected | TooManyElements | ..."""

    status: str


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    """An answer that is a status (ReserveNow: Accepted | Occupied | Faulted |
    Unavailable | Rejected; CancelReservation, RequestStart/Stop: Accepted | Rejected;
    ChangeAvailability: Accepted | Rejected | Scheduled),
    with the running transaction's id where RequestStartTransaction has one (2.x)."""

    status: str
    transaction_id: str | None = None


StationAnswer = ProfileAnswer | ClearAnswer | TariffAnswer | StatusAnswer | Ack


def record(message: Any) -> dict[str, Any]:
    """A message as a JSON-able dict (an event log's entry for a message with no wire form)."""
    out: dict[str, Any] = {"message": type(message).__name__}
    for name in message.__slots__:
        value = getattr(message, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Reading):
            value = {"at": value.at.isoformat(), "context": value.context,
                     "samples": [[s.measurand, s.value, s.unit] for s in value.samples()]}
        elif hasattr(value, "__slots__"):
            value = record(value)
        out[name] = value
    return out
