"""OCPI 2.2.1 objects (Locations, Tokens, Sessions, CDRs) as strict pydantic models.

The first part of OCPI in the CSMS (issue 16): what a CPO publishes about its
charging locations, with the spec's required fields, string lengths, enums and
formats enforced (OCPI 2.2.1, ``mod_locations`` and ``types``), and how an OCPP
connector status becomes an OCPI EVSE status. The HTTP endpoints, the other
modules and the credentials handshake build on these.

Types as the spec defines them: ``CiString(n)`` (``CiStringN`` here) printable ASCII of at most n
characters, compared case-insensitively; ``string(n)`` (``StringN``) any UTF-8 of at most n;
``DateTime`` RFC 3339 in UTC with ``Z`` or no designator (``+00:00`` is not
allowed), fractional seconds allowed; ``URL`` a string of at most 255.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)

_PRINTABLE_ASCII = r"^[\x20-\x7E]*$"
_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?Z?$")


# OCPI's CiString(n) and string(n), one name per length used.
CiString2 = Annotated[str, StringConstraints(max_length=2, pattern=_PRINTABLE_ASCII)]
CiString3 = Annotated[str, StringConstraints(max_length=3, pattern=_PRINTABLE_ASCII)]
CiString4 = Annotated[str, StringConstraints(max_length=4, pattern=_PRINTABLE_ASCII)]
CiString36 = Annotated[str, StringConstraints(max_length=36, pattern=_PRINTABLE_ASCII)]
CiString48 = Annotated[str, StringConstraints(max_length=48, pattern=_PRINTABLE_ASCII)]
CiString39 = Annotated[str, StringConstraints(max_length=39, pattern=_PRINTABLE_ASCII)]
String2 = Annotated[str, StringConstraints(max_length=2)]
String3 = Annotated[str, StringConstraints(min_length=3, max_length=3)]
String20 = Annotated[str, StringConstraints(max_length=20)]
String4 = Annotated[str, StringConstraints(max_length=4)]
String10 = Annotated[str, StringConstraints(max_length=10)]
String16 = Annotated[str, StringConstraints(max_length=16)]
String45 = Annotated[str, StringConstraints(max_length=45)]
String64 = Annotated[str, StringConstraints(max_length=64)]
String100 = Annotated[str, StringConstraints(max_length=100)]
String255 = Annotated[str, StringConstraints(max_length=255)]
String512 = Annotated[str, StringConstraints(max_length=512)]
URL = Annotated[str, StringConstraints(max_length=255, min_length=1)]


def parse_datetime(value: Any) -> datetime:
    """An OCPI DateTime (or an aware datetime) as an aware UTC datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if not isinstance(value, str) or len(value) > 25 or not _DATETIME.match(value):
        raise ValueError("not an OCPI DateTime (RFC 3339 in UTC: 2015-06-29T20:39:09Z; "
                         "no offset, at most 25 characters)")
    return datetime.fromisoformat(value.rstrip("Z")).replace(tzinfo=UTC)


def format_datetime(at: datetime) -> str:
    """An aware time as OCPI writes it: UTC, milliseconds at most, ``Z``."""
    at = at.astimezone(UTC)
    text = at.strftime("%Y-%m-%dT%H:%M:%S")
    if at.microsecond:
        text += f".{at.microsecond // 1000:03d}"
    return text + "Z"


DateTime = Annotated[datetime, BeforeValidator(parse_datetime),
                     PlainSerializer(format_datetime, return_type=str)]


def _hhmm(value: str) -> str:
    if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", value):
        raise ValueError("a time of day as HH:MM (24 h)")
    return value


HourMinute = Annotated[str, AfterValidator(_hhmm)]


class _Object(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ------------------------------------------------------------------------------- enums


class Status(StrEnum):
    AVAILABLE = "AVAILABLE"
    BLOCKED = "BLOCKED"
    CHARGING = "CHARGING"
    INOPERATIVE = "INOPERATIVE"
    OUTOFORDER = "OUTOFORDER"
    PLANNED = "PLANNED"
    REMOVED = "REMOVED"
    RESERVED = "RESERVED"
    UNKNOWN = "UNKNOWN"


class Capability(StrEnum):
    CHARGING_PROFILE_CAPABLE = "CHARGING_PROFILE_CAPABLE"
    CHARGING_PREFERENCES_CAPABLE = "CHARGING_PREFERENCES_CAPABLE"
    CHIP_CARD_SUPPORT = "CHIP_CARD_SUPPORT"
    CONTACTLESS_CARD_SUPPORT = "CONTACTLESS_CARD_SUPPORT"
    CREDIT_CARD_PAYABLE = "CREDIT_CARD_PAYABLE"
    DEBIT_CARD_PAYABLE = "DEBIT_CARD_PAYABLE"
    PED_TERMINAL = "PED_TERMINAL"
    REMOTE_START_STOP_CAPABLE = "REMOTE_START_STOP_CAPABLE"
    RESERVABLE = "RESERVABLE"
    RFID_READER = "RFID_READER"
    START_SESSION_CONNECTOR_REQUIRED = "START_SESSION_CONNECTOR_REQUIRED"
    TOKEN_GROUP_CAPABLE = "TOKEN_GROUP_CAPABLE"
    UNLOCK_CAPABLE = "UNLOCK_CAPABLE"


class ConnectorFormat(StrEnum):
    SOCKET = "SOCKET"
    CABLE = "CABLE"


class ConnectorType(StrEnum):
    CHADEMO = "CHADEMO"
    CHAOJI = "CHAOJI"
    DOMESTIC_A = "DOMESTIC_A"
    DOMESTIC_B = "DOMESTIC_B"
    DOMESTIC_C = "DOMESTIC_C"
    DOMESTIC_D = "DOMESTIC_D"
    DOMESTIC_E = "DOMESTIC_E"
    DOMESTIC_F = "DOMESTIC_F"
    DOMESTIC_G = "DOMESTIC_G"
    DOMESTIC_H = "DOMESTIC_H"
    DOMESTIC_I = "DOMESTIC_I"
    DOMESTIC_J = "DOMESTIC_J"
    DOMESTIC_K = "DOMESTIC_K"
    DOMESTIC_L = "DOMESTIC_L"
    DOMESTIC_M = "DOMESTIC_M"
    DOMESTIC_N = "DOMESTIC_N"
    DOMESTIC_O = "DOMESTIC_O"
    GBT_AC = "GBT_AC"
    GBT_DC = "GBT_DC"
    IEC_62196_T1 = "IEC_62196_T1"
    IEC_62196_T1_COMBO = "IEC_62196_T1_COMBO"
    IEC_62196_T2 = "IEC_62196_T2"
    IEC_62196_T2_COMBO = "IEC_62196_T2_COMBO"
    IEC_62196_T3A = "IEC_62196_T3A"
    IEC_62196_T3C = "IEC_62196_T3C"
    NEMA_5_20 = "NEMA_5_20"
    NEMA_6_30 = "NEMA_6_30"
    NEMA_6_50 = "NEMA_6_50"
    NEMA_10_30 = "NEMA_10_30"
    NEMA_10_50 = "NEMA_10_50"
    NEMA_14_30 = "NEMA_14_30"
    NEMA_14_50 = "NEMA_14_50"
    TESLA_R = "TESLA_R"
    TESLA_S = "TESLA_S"


class PowerType(StrEnum):
    AC_1_PHASE = "AC_1_PHASE"
    AC_2_PHASE = "AC_2_PHASE"
    AC_2_PHASE_SPLIT = "AC_2_PHASE_SPLIT"
    AC_3_PHASE = "AC_3_PHASE"
    DC = "DC"


class ParkingType(StrEnum):
    ALONG_MOTORWAY = "ALONG_MOTORWAY"
    PARKING_GARAGE = "PARKING_GARAGE"
    PARKING_LOT = "PARKING_LOT"
    ON_DRIVEWAY = "ON_DRIVEWAY"
    ON_STREET = "ON_STREET"
    UNDERGROUND_GARAGE = "UNDERGROUND_GARAGE"


class Facility(StrEnum):
    HOTEL = "HOTEL"
    RESTAURANT = "RESTAURANT"
    CAFE = "CAFE"
    MALL = "MALL"
    SUPERMARKET = "SUPERMARKET"
    SPORT = "SPORT"
    RECREATION_AREA = "RECREATION_AREA"
    NATURE = "NATURE"
    MUSEUM = "MUSEUM"
    BIKE_SHARING = "BIKE_SHARING"
    BUS_STOP = "BUS_STOP"
    TAXI_STAND = "TAXI_STAND"
    TRAM_STOP = "TRAM_STOP"
    METRO_STATION = "METRO_STATION"
    TRAIN_STATION = "TRAIN_STATION"
    AIRPORT = "AIRPORT"
    PARKING_LOT = "PARKING_LOT"
    CARPOOL_PARKING = "CARPOOL_PARKING"
    FUEL_STATION = "FUEL_STATION"
    WIFI = "WIFI"


class ParkingRestriction(StrEnum):
    EV_ONLY = "EV_ONLY"
    PLUGGED = "PLUGGED"
    DISABLED = "DISABLED"
    CUSTOMERS = "CUSTOMERS"
    MOTORCYCLES = "MOTORCYCLES"


class ImageCategory(StrEnum):
    CHARGER = "CHARGER"
    ENTRANCE = "ENTRANCE"
    LOCATION = "LOCATION"
    NETWORK = "NETWORK"
    OPERATOR = "OPERATOR"
    OTHER = "OTHER"
    OWNER = "OWNER"


# ------------------------------------------------------------------------------- classes


class DisplayText(_Object):
    language: String2
    text: String512


class GeoLocation(_Object):
    latitude: Annotated[str, StringConstraints(max_length=10,
                                               pattern=r"^-?[0-9]{1,2}\.[0-9]{5,7}$")]
    longitude: Annotated[str, StringConstraints(max_length=11,
                                                pattern=r"^-?[0-9]{1,3}\.[0-9]{5,7}$")]


class AdditionalGeoLocation(GeoLocation):
    name: DisplayText | None = None


class Image(_Object):
    url: URL
    thumbnail: URL | None = None
    category: ImageCategory
    type: CiString4
    width: int | None = Field(None, ge=0, le=99999)
    height: int | None = Field(None, ge=0, le=99999)


class BusinessDetails(_Object):
    name: String100
    website: URL | None = None
    logo: Image | None = None


class RegularHours(_Object):
    weekday: int = Field(ge=1, le=7)
    period_begin: HourMinute
    period_end: HourMinute

    @model_validator(mode="after")
    def _order(self) -> RegularHours:
        if self.period_end <= self.period_begin:
            raise ValueError("period_end: must be later than period_begin")
        return self


class ExceptionalPeriod(_Object):
    period_begin: DateTime
    period_end: DateTime


class Hours(_Object):
    twentyfourseven: bool
    regular_hours: list[RegularHours] = Field(default_factory=list)
    exceptional_openings: list[ExceptionalPeriod] = Field(default_factory=list)
    exceptional_closings: list[ExceptionalPeriod] = Field(default_factory=list)

    @model_validator(mode="after")
    def _regular(self) -> Hours:
        if self.twentyfourseven and self.regular_hours:
            raise ValueError("regular_hours: only when twentyfourseven is false")
        return self


class PublishTokenType(_Object):
    uid: CiString36 | None = None
    type: str | None = None
    visual_number: String64 | None = None
    issuer: String64 | None = None
    group_id: CiString36 | None = None


class StatusSchedule(_Object):
    period_begin: DateTime
    period_end: DateTime | None = None
    status: Status


class Connector(_Object):
    id: CiString36
    standard: ConnectorType
    format: ConnectorFormat
    power_type: PowerType
    max_voltage: int = Field(ge=0)
    max_amperage: int = Field(ge=0)
    max_electric_power: int | None = Field(None, ge=0)
    tariff_ids: list[CiString36] = Field(default_factory=list)
    terms_and_conditions: URL | None = None
    last_updated: DateTime


class EVSE(_Object):
    uid: CiString36
    evse_id: CiString48 | None = None
    status: Status
    status_schedule: list[StatusSchedule] = Field(default_factory=list)
    capabilities: list[Capability] = Field(default_factory=list)
    connectors: list[Connector] = Field(min_length=1)
    floor_level: String4 | None = None
    coordinates: GeoLocation | None = None
    physical_reference: String16 | None = None
    directions: list[DisplayText] = Field(default_factory=list)
    parking_restrictions: list[ParkingRestriction] = Field(default_factory=list)
    images: list[Image] = Field(default_factory=list)
    last_updated: DateTime


class Location(_Object):
    country_code: CiString2
    party_id: CiString3
    id: CiString36
    publish: bool
    publish_allowed_to: list[PublishTokenType] = Field(default_factory=list)
    name: String255 | None = None
    address: String255
    city: String45
    postal_code: String10 | None = None
    state: String45 | None = None
    country: Annotated[str, StringConstraints(min_length=3, max_length=3)]
    coordinates: GeoLocation
    related_locations: list[AdditionalGeoLocation] = Field(default_factory=list)
    parking_type: ParkingType | None = None
    evses: list[EVSE] = Field(default_factory=list)
    directions: list[DisplayText] = Field(default_factory=list)
    operator: BusinessDetails | None = None
    suboperator: BusinessDetails | None = None
    owner: BusinessDetails | None = None
    facilities: list[Facility] = Field(default_factory=list)
    time_zone: String255
    opening_times: Hours | None = None
    charging_when_closed: bool | None = None
    images: list[Image] = Field(default_factory=list)
    energy_mix: dict[str, Any] | None = None
    last_updated: DateTime

    @model_validator(mode="after")
    def _publish(self) -> Location:
        if self.publish and self.publish_allowed_to:
            raise ValueError("publish_allowed_to: only when publish is false")
        return self

    def to_json(self) -> dict[str, Any]:
        """As sent: fields without a value left out, times in OCPI's form."""
        return self.model_dump(mode="json", exclude_none=True)


# ------------------------------------------------------------------------------- Tokens


class TokenType(StrEnum):
    AD_HOC_USER = "AD_HOC_USER"
    APP_USER = "APP_USER"
    OTHER = "OTHER"
    RFID = "RFID"


class WhitelistType(StrEnum):
    ALWAYS = "ALWAYS"
    ALLOWED = "ALLOWED"
    ALLOWED_OFFLINE = "ALLOWED_OFFLINE"
    NEVER = "NEVER"


class AllowedType(StrEnum):
    ALLOWED = "ALLOWED"
    BLOCKED = "BLOCKED"
    EXPIRED = "EXPIRED"
    NO_CREDIT = "NO_CREDIT"
    NOT_ALLOWED = "NOT_ALLOWED"


class ProfileType(StrEnum):
    CHEAP = "CHEAP"
    FAST = "FAST"
    GREEN = "GREEN"
    REGULAR = "REGULAR"


class EnergyContract(_Object):
    supplier_name: String64
    contract_id: String64 | None = None


class Token(_Object):
    country_code: CiString2
    party_id: CiString3
    uid: CiString36
    type: TokenType
    contract_id: CiString36
    visual_number: String64 | None = None
    issuer: String64
    group_id: CiString36 | None = None
    valid: bool
    whitelist: WhitelistType
    language: String2 | None = None
    default_profile_type: ProfileType | None = None
    energy_contract: EnergyContract | None = None
    last_updated: DateTime


class LocationReferences(_Object):
    location_id: CiString36
    evse_uids: list[CiString36] = Field(default_factory=list)


class AuthorizationInfo(_Object):
    allowed: AllowedType
    token: Token
    location: LocationReferences | None = None
    authorization_reference: CiString36 | None = None
    info: DisplayText | None = None


# ------------------------------------------------------------------------------- Sessions, CDRs


class AuthMethod(StrEnum):
    AUTH_REQUEST = "AUTH_REQUEST"
    COMMAND = "COMMAND"
    WHITELIST = "WHITELIST"


class SessionStatus(StrEnum):
    ACTIVE = "ACTIVE"
    COMPLETED = "COMPLETED"
    INVALID = "INVALID"
    PENDING = "PENDING"
    RESERVATION = "RESERVATION"


class CdrDimensionType(StrEnum):
    CURRENT = "CURRENT"
    ENERGY = "ENERGY"
    ENERGY_EXPORT = "ENERGY_EXPORT"
    ENERGY_IMPORT = "ENERGY_IMPORT"
    MAX_CURRENT = "MAX_CURRENT"
    MIN_CURRENT = "MIN_CURRENT"
    MAX_POWER = "MAX_POWER"
    MIN_POWER = "MIN_POWER"
    PARKING_TIME = "PARKING_TIME"
    POWER = "POWER"
    RESERVATION_TIME = "RESERVATION_TIME"
    STATE_OF_CHARGE = "STATE_OF_CHARGE"
    TIME = "TIME"


class Price(_Object):
    excl_vat: float
    incl_vat: float | None = None


class CdrToken(_Object):
    country_code: CiString2
    party_id: CiString3
    uid: CiString36
    type: TokenType
    contract_id: CiString36


class CdrDimension(_Object):
    type: CdrDimensionType
    volume: float


class ChargingPeriod(_Object):
    start_date_time: DateTime
    dimensions: list[CdrDimension] = Field(min_length=1)
    tariff_id: CiString36 | None = None


class Session(_Object):
    country_code: CiString2
    party_id: CiString3
    id: CiString36
    start_date_time: DateTime
    end_date_time: DateTime | None = None
    kwh: float = Field(ge=0)
    cdr_token: CdrToken
    auth_method: AuthMethod
    authorization_reference: CiString36 | None = None
    location_id: CiString36
    evse_uid: CiString36
    connector_id: CiString36
    meter_id: String255 | None = None
    currency: String3
    charging_periods: list[ChargingPeriod] = Field(default_factory=list)
    total_cost: Price | None = None
    status: SessionStatus
    last_updated: DateTime


class CdrLocation(_Object):
    id: CiString36
    name: String255 | None = None
    address: String45
    city: String45
    postal_code: String10 | None = None
    state: String20 | None = None
    country: String3
    coordinates: GeoLocation
    evse_uid: CiString36
    evse_id: CiString48
    connector_id: CiString36
    connector_standard: ConnectorType
    connector_format: ConnectorFormat
    connector_power_type: PowerType


class CDR(_Object):
    country_code: CiString2
    party_id: CiString3
    id: CiString39
    start_date_time: DateTime
    end_date_time: DateTime
    session_id: CiString36 | None = None
    cdr_token: CdrToken
    auth_method: AuthMethod
    authorization_reference: CiString36 | None = None
    cdr_location: CdrLocation
    meter_id: String255 | None = None
    currency: String3
    tariffs: list[Tariff] = Field(default_factory=list)
    """The Tariff objects that applied."""
    charging_periods: list[ChargingPeriod] = Field(min_length=1)
    signed_data: dict[str, Any] | None = None
    total_cost: Price
    total_fixed_cost: Price | None = None
    total_energy: float
    total_energy_cost: Price | None = None
    total_time: float = Field(ge=0)
    total_time_cost: Price | None = None
    total_parking_time: float | None = Field(None, ge=0)
    total_parking_cost: Price | None = None
    total_reservation_cost: Price | None = None
    remark: String255 | None = None
    invoice_reference_id: CiString39 | None = None
    credit: bool | None = None
    credit_reference_id: CiString39 | None = None
    home_charging_compensation: bool | None = None
    last_updated: DateTime

    @model_validator(mode="after")
    def _times(self) -> CDR:
        if self.end_date_time < self.start_date_time:
            raise ValueError("end_date_time: before start_date_time")
        if self.credit and not self.credit_reference_id:
            raise ValueError("credit_reference_id: required for a credit CDR")
        return self


# ------------------------------------------------------------------------------- Tariffs


class TariffType(StrEnum):
    AD_HOC_PAYMENT = "AD_HOC_PAYMENT"
    PROFILE_CHEAP = "PROFILE_CHEAP"
    PROFILE_FAST = "PROFILE_FAST"
    PROFILE_GREEN = "PROFILE_GREEN"
    REGULAR = "REGULAR"


class TariffDimensionType(StrEnum):
    ENERGY = "ENERGY"
    FLAT = "FLAT"
    PARKING_TIME = "PARKING_TIME"
    TIME = "TIME"


class DayOfWeek(StrEnum):
    MONDAY = "MONDAY"
    TUESDAY = "TUESDAY"
    WEDNESDAY = "WEDNESDAY"
    THURSDAY = "THURSDAY"
    FRIDAY = "FRIDAY"
    SATURDAY = "SATURDAY"
    SUNDAY = "SUNDAY"


class ReservationRestrictionType(StrEnum):
    RESERVATION = "RESERVATION"
    RESERVATION_EXPIRES = "RESERVATION_EXPIRES"


def _date(value: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError(f"{value!r} is not a date YYYY-MM-DD")
    datetime.strptime(value, "%Y-%m-%d")  # a real date
    return value


Date = Annotated[str, AfterValidator(_date)]


class PriceComponent(_Object):
    type: TariffDimensionType
    price: float = Field(ge=0, allow_inf_nan=False)
    """Per unit, excluding VAT: per kWh (ENERGY), per hour (TIME, PARKING_TIME) or once (FLAT)."""
    vat: float | None = Field(None, ge=0, allow_inf_nan=False)
    step_size: int = Field(ge=1)
    """Billed in blocks of this many Wh (ENERGY) or seconds (TIME); 1 for FLAT."""


class TariffRestrictions(_Object):
    start_time: HourMinute | None = None
    end_time: HourMinute | None = None
    start_date: Date | None = None
    end_date: Date | None = None
    min_kwh: float | None = Field(None, ge=0)
    max_kwh: float | None = Field(None, ge=0)
    min_current: float | None = Field(None, ge=0)
    max_current: float | None = Field(None, ge=0)
    min_power: float | None = Field(None, ge=0)
    max_power: float | None = Field(None, ge=0)
    min_duration: int | None = Field(None, ge=0)
    max_duration: int | None = Field(None, ge=0)
    day_of_week: list[DayOfWeek] = Field(default_factory=list)
    reservation: ReservationRestrictionType | None = None


class TariffElement(_Object):
    price_components: list[PriceComponent] = Field(min_length=1)
    restrictions: TariffRestrictions | None = None


class Tariff(_Object):
    country_code: CiString2
    party_id: CiString3
    id: CiString36
    currency: String3
    type: TariffType | None = None
    tariff_alt_text: list[DisplayText] = Field(default_factory=list)
    tariff_alt_url: URL | None = None
    min_price: Price | None = None
    max_price: Price | None = None
    elements: list[TariffElement] = Field(min_length=1)
    start_date_time: DateTime | None = None
    end_date_time: DateTime | None = None
    energy_mix: dict[str, Any] | None = None
    last_updated: DateTime


# ------------------------------------------------------------------------------- Commands


class CommandType(StrEnum):
    CANCEL_RESERVATION = "CANCEL_RESERVATION"
    RESERVE_NOW = "RESERVE_NOW"
    START_SESSION = "START_SESSION"
    STOP_SESSION = "STOP_SESSION"
    UNLOCK_CONNECTOR = "UNLOCK_CONNECTOR"


class CommandResponseType(StrEnum):
    """The CPO's immediate answer to a command."""

    NOT_SUPPORTED = "NOT_SUPPORTED"
    REJECTED = "REJECTED"
    ACCEPTED = "ACCEPTED"
    UNKNOWN_SESSION = "UNKNOWN_SESSION"


class CommandResultType(StrEnum):
    """What the charge point did, sent to the command's response_url."""

    ACCEPTED = "ACCEPTED"
    CANCELED_RESERVATION = "CANCELED_RESERVATION"
    EVSE_OCCUPIED = "EVSE_OCCUPIED"
    EVSE_INOPERATIVE = "EVSE_INOPERATIVE"
    FAILED = "FAILED"
    NOT_SUPPORTED = "NOT_SUPPORTED"
    REJECTED = "REJECTED"
    TIMEOUT = "TIMEOUT"
    UNKNOWN_RESERVATION = "UNKNOWN_RESERVATION"


class CommandResponse(_Object):
    result: CommandResponseType
    timeout: int = Field(ge=0)
    message: list[DisplayText] = Field(default_factory=list)


class CommandResult(_Object):
    result: CommandResultType
    message: list[DisplayText] = Field(default_factory=list)


class CommandRequest(_Object):
    """What every command's body carries: where its CommandResult goes."""

    response_url: URL


class StartSession(CommandRequest):
    token: Token
    location_id: CiString36
    evse_uid: CiString36 | None = None
    connector_id: CiString36 | None = None
    authorization_reference: CiString36 | None = None

    @model_validator(mode="after")
    def _connector_needs_evse(self) -> StartSession:
        if self.connector_id is not None and self.evse_uid is None:
            raise ValueError("evse_uid: required when connector_id is given")
        return self


class StopSession(CommandRequest):
    session_id: CiString36


class ReserveNow(CommandRequest):
    token: Token
    expiry_date: DateTime
    reservation_id: CiString36
    location_id: CiString36
    evse_uid: CiString36 | None = None
    authorization_reference: CiString36 | None = None


class CancelReservation(CommandRequest):
    reservation_id: CiString36


class UnlockConnector(CommandRequest):
    location_id: CiString36
    evse_uid: CiString36
    connector_id: CiString36


#: Command -> the model of its request body.
COMMAND_BODIES: dict[CommandType, type[CommandRequest]] = {
    CommandType.START_SESSION: StartSession,
    CommandType.STOP_SESSION: StopSession,
    CommandType.RESERVE_NOW: ReserveNow,
    CommandType.CANCEL_RESERVATION: CancelReservation,
    CommandType.UNLOCK_CONNECTOR: UnlockConnector,
}


# ------------------------------------------------------------------------ Credentials, versions


class Role(StrEnum):
    CPO = "CPO"
    EMSP = "EMSP"
    HUB = "HUB"
    NAP = "NAP"
    NSP = "NSP"
    OTHER = "OTHER"
    SCSP = "SCSP"


class CredentialsRole(_Object):
    role: Role
    business_details: BusinessDetails
    party_id: CiString3
    country_code: CiString2


CredentialsToken = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                                    pattern=r"^[\x21-\x7E]+$")]
"""Printable non-whitespace ASCII, at most 64."""


class Credentials(_Object):
    token: CredentialsToken
    url: URL
    roles: list[CredentialsRole] = Field(min_length=1)


class VersionNumber(StrEnum):
    V2_0 = "2.0"
    V2_1 = "2.1"
    V2_1_1 = "2.1.1"
    V2_2 = "2.2"
    V2_2_1 = "2.2.1"


class InterfaceRole(StrEnum):
    SENDER = "SENDER"
    RECEIVER = "RECEIVER"


class ModuleID(StrEnum):
    CDRS = "cdrs"
    CHARGING_PROFILES = "chargingprofiles"
    COMMANDS = "commands"
    CREDENTIALS = "credentials"
    HUB_CLIENT_INFO = "hubclientinfo"
    LOCATIONS = "locations"
    SESSIONS = "sessions"
    TARIFFS = "tariffs"
    TOKENS = "tokens"


class Version(_Object):
    version: VersionNumber
    url: URL


class Endpoint(_Object):
    identifier: ModuleID
    role: InterfaceRole
    url: URL


class VersionDetails(_Object):
    version: VersionNumber
    endpoints: list[Endpoint] = Field(min_length=1)


#: OCPP connector status (1.6 and 2.x) -> OCPI EVSE status.
OCPP_TO_OCPI_STATUS: dict[str, Status] = {
    "Available": Status.AVAILABLE,
    "Preparing": Status.CHARGING, "Charging": Status.CHARGING,
    "SuspendedEV": Status.CHARGING, "SuspendedEVSE": Status.CHARGING,
    "Finishing": Status.CHARGING, "Occupied": Status.CHARGING,
    "Reserved": Status.RESERVED,
    "Unavailable": Status.INOPERATIVE,
    "Faulted": Status.OUTOFORDER,
}


def evse_status(ocpp_status: str | None, *, online: bool = True) -> Status:
    """The OCPI status of an EVSE from its OCPP connector status: UNKNOWN when the
    station is not connected (its status cannot be known) or never reported one."""
    if not online or ocpp_status is None:
        return Status.UNKNOWN
    return OCPP_TO_OCPI_STATUS.get(ocpp_status, Status.UNKNOWN)


__all__ = [
    "CDR",
    "COMMAND_BODIES",
    "EVSE",
    "OCPP_TO_OCPI_STATUS",
    "AllowedType",
    "AuthMethod",
    "AuthorizationInfo",
    "BusinessDetails",
    "CancelReservation",
    "Capability",
    "CdrDimension",
    "CdrDimensionType",
    "CdrLocation",
    "CdrToken",
    "ChargingPeriod",
    "CommandRequest",
    "CommandResponse",
    "CommandResponseType",
    "CommandResult",
    "CommandResultType",
    "CommandType",
    "Connector",
    "ConnectorFormat",
    "ConnectorType",
    "Credentials",
    "CredentialsRole",
    "DayOfWeek",
    "DisplayText",
    "Endpoint",
    "EnergyContract",
    "Facility",
    "GeoLocation",
    "Hours",
    "Image",
    "InterfaceRole",
    "Location",
    "LocationReferences",
    "ModuleID",
    "ParkingType",
    "PowerType",
    "Price",
    "PriceComponent",
    "ProfileType",
    "RegularHours",
    "ReservationRestrictionType",
    "ReserveNow",
    "Role",
    "Session",
    "SessionStatus",
    "StartSession",
    "Status",
    "StopSession",
    "Tariff",
    "TariffDimensionType",
    "TariffElement",
    "TariffRestrictions",
    "TariffType",
    "Token",
    "TokenType",
    "UnlockConnector",
    "Version",
    "VersionDetails",
    "VersionNumber",
    "WhitelistType",
    "evse_status",
    "format_datetime",
    "parse_datetime",
]
