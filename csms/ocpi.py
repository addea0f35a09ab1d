"""OCPI 2.2.1 objects of the Locations module, as strict pydantic models.

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
String2 = Annotated[str, StringConstraints(max_length=2)]
String4 = Annotated[str, StringConstraints(max_length=4)]
String10 = Annotated[str, StringConstraints(max_length=10)]
String16 = Annotated[str, StringConstraints(max_length=16)]
String45 = Annotated[str, StringConstraints(max_length=45)]
String64 = Annotated[str, StringConstraints(max_length=64)]
String100 = Annotated[str, StringConstraints(max_length=100)]
String255 = Annotated[str, StringConstraints(max_length=255)]
String512 = Annotated[str, StringConstraints(max_length=512)]
URL = Annotated[str, StringConstraints(max_length=255, min_length=1)]


def _parse_datetime(value: Any) -> datetime:
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


DateTime = Annotated[datetime, BeforeValidator(_parse_datetime),
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


__all__ = ["EVSE", "OCPP_TO_OCPI_STATUS", "BusinessDetails", "Capability", "Connector",
           "ConnectorFormat", "ConnectorType", "DisplayText", "Facility", "GeoLocation",
           "Hours", "Image", "Location", "ParkingType", "PowerType", "RegularHours",
           "Status", "evse_status", "format_datetime"]
