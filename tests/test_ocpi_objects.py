"""OCPI 2.2.1 objects (Locations, Tokens, Sessions, CDRs): the spec's required fields,
lengths, enums and formats (mod_locations, mod_tokens, mod_sessions, mod_cdrs, types)
hold, and OCPP statuses map onto OCPI's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from evtwin.csms.ocpi import (
    CDR,
    EVSE,
    AuthorizationInfo,
    Location,
    Session,
    Status,
    Token,
    evse_status,
    format_datetime,
)

NOW = "2026-12-03T10:00:00Z"


def connector(**kw: Any) -> dict[str, Any]:
    return {"id": "1", "standard": "IEC_62196_T2", "format": "SOCKET",
            "power_type": "AC_3_PHASE", "max_voltage": 230, "max_amperage": 32,
            "max_electric_power": 22000, "tariff_ids": ["AC22"], "last_updated": NOW, **kw}


def evse(**kw: Any) -> dict[str, Any]:
    return {"uid": "market-001-1", "evse_id": "DE*EVT*Emarket001*1", "status": "AVAILABLE",
            "capabilities": ["RFID_READER", "REMOTE_START_STOP_CAPABLE", "RESERVABLE"],
            "connectors": [connector()], "physical_reference": "1", "last_updated": NOW,
            **kw}


def location(**kw: Any) -> dict[str, Any]:
    return {"country_code": "DE", "party_id": "EVT", "id": "market", "publish": True,
            "name": "Market car park", "address": "Marktplatz 1", "city": "Berlin",
            "postal_code": "10115", "country": "DEU",
            "coordinates": {"latitude": "52.520008", "longitude": "13.404954"},
            "parking_type": "PARKING_LOT", "evses": [evse()], "time_zone": "Europe/Berlin",
            "opening_times": {"twentyfourseven": True}, "last_updated": NOW, **kw}


def test_a_complete_location_validates_and_is_sent_as_ocpi_writes_it() -> None:
    loc = Location.model_validate(location())
    out = loc.to_json()
    assert out["last_updated"] == NOW
    assert out["evses"][0]["connectors"][0]["standard"] == "IEC_62196_T2"
    assert "state" not in out  # a field without a value is left out, not null
    assert Location.model_validate(out) == loc  # what we send, we read back


@pytest.mark.parametrize("change, field", [
    ({"address": "x" * 256}, "address"),                 # string(255)
    ({"city": "x" * 46}, "city"),                        # string(45)
    ({"postal_code": "12345678901"}, "postal_code"),      # string(10)
    ({"country_code": "DEU"}, "country_code"),            # CiString(2)
    ({"party_id": "EVTX"}, "party_id"),                   # CiString(3)
    ({"id": "m\tarket"}, "id"),                           # CiString: printable ASCII only
    ({"country": "DE"}, "country"),                       # ISO 3166-1 alpha-3
    ({"parking_type": "CAR_PARK"}, "parking_type"),       # enum
    ({"last_updated": "2026-12-03T10:00:00+00:00"}, "last_updated"),  # +00:00 is not UTC
    ({"last_updated": "2026-12-03 10:00:00"}, "last_updated"),
    ({"coordinates": {"latitude": "52.52", "longitude": "13.404954"}}, "coordinates"),
    ({"publish": True, "publish_allowed_to": [{"uid": "A"}]}, "publish_allowed_to"),
    ({"opening_times": {"twentyfourseven": True, "regular_hours": [
        {"weekday": 1, "period_begin": "08:00", "period_end": "20:00"}]}}, "opening_times"),
    ({"colour": "green"}, "colour"),                      # no fields beyond the spec's
])
def test_what_the_spec_forbids_is_refused_naming_the_field(change: dict[str, Any],
                                                           field: str) -> None:
    with pytest.raises(ValidationError) as err:
        Location.model_validate(location(**change))
    assert field in str(err.value)


@pytest.mark.parametrize("missing", ["country_code", "party_id", "id", "publish", "address",
                                     "city", "country", "coordinates", "time_zone",
                                     "last_updated"])
def test_every_required_location_field_is_required(missing: str) -> None:
    data = location()
    del data[missing]
    with pytest.raises(ValidationError, match=missing):
        Location.model_validate(data)


def test_evse_and_connector_rules() -> None:
    with pytest.raises(ValidationError, match="connectors"):
        EVSE.model_validate(evse(connectors=[]))          # Card. + : at least one
    with pytest.raises(ValidationError, match="standard"):
        EVSE.model_validate(evse(connectors=[connector(standard="TYPE2")]))
    with pytest.raises(ValidationError, match="physical_reference"):
        EVSE.model_validate(evse(physical_reference="x" * 17))  # string(16)
    with pytest.raises(ValidationError, match="evse_id"):
        EVSE.model_validate(evse(evse_id="x" * 49))        # CiString(48)
    with pytest.raises(ValidationError, match="period_end"):
        Location.model_validate(location(opening_times={
            "twentyfourseven": False, "regular_hours": [
                {"weekday": 1, "period_begin": "20:00", "period_end": "08:00"}]}))


@pytest.mark.parametrize("text, expected", [
    ("2015-06-29T20:39:09Z", datetime(2015, 6, 29, 20, 39, 9, tzinfo=UTC)),
    ("2015-06-29T20:39:09", datetime(2015, 6, 29, 20, 39, 9, tzinfo=UTC)),
    ("2016-12-29T17:45:09.2Z", datetime(2016, 12, 29, 17, 45, 9, 200000, tzinfo=UTC)),
    ("2018-01-01T01:08:01.123", datetime(2018, 1, 1, 1, 8, 1, 123000, tzinfo=UTC)),
])
def test_the_spec_s_datetime_forms_are_read_as_utc(text: str, expected: datetime) -> None:
    loc = Location.model_validate(location(last_updated=text))
    assert loc.last_updated == expected
    assert format_datetime(expected).endswith("Z")


@pytest.mark.parametrize("ocpp, ocpi", [
    ("Available", Status.AVAILABLE), ("Occupied", Status.CHARGING),
    ("Charging", Status.CHARGING), ("SuspendedEV", Status.CHARGING),
    ("Preparing", Status.CHARGING), ("Reserved", Status.RESERVED),
    ("Unavailable", Status.INOPERATIVE), ("Faulted", Status.OUTOFORDER),
    ("Nonsense", Status.UNKNOWN), (None, Status.UNKNOWN),
])
def test_ocpp_connector_status_maps_onto_ocpi_evse_status(ocpp: str | None,
                                                          ocpi: Status) -> None:
    assert evse_status(ocpp) is ocpi


def test_a_station_that_is_not_connected_is_unknown() -> None:
    assert evse_status("Available", online=False) is Status.UNKNOWN


# ------------------------------------------------------------------ Tokens, Sessions, CDRs

def token(**kw: Any) -> dict[str, Any]:
    return {"country_code": "NL", "party_id": "EMS", "uid": "04A1B2C3D4", "type": "RFID",
            "contract_id": "NL-EMS-C12345678-X", "issuer": "eMSP NL", "valid": True,
            "whitelist": "ALLOWED", "last_updated": NOW, **kw}


def cdr_token() -> dict[str, Any]:
    t = token()
    return {k: t[k] for k in ("country_code", "party_id", "uid", "type", "contract_id")}


def session(**kw: Any) -> dict[str, Any]:
    return {"country_code": "DE", "party_id": "EVT", "id": "tx-101",
            "start_date_time": "2026-12-03T08:00:00Z", "kwh": 12.5, "cdr_token": cdr_token(),
            "auth_method": "AUTH_REQUEST", "location_id": "market",
            "evse_uid": "market-001-1", "connector_id": "1", "currency": "EUR",
            "status": "ACTIVE", "last_updated": NOW, **kw}


def cdr(**kw: Any) -> dict[str, Any]:
    return {"country_code": "DE", "party_id": "EVT", "id": "cdr-101",
            "start_date_time": "2026-12-03T08:00:00Z", "end_date_time": "2026-12-03T09:30:00Z",
            "session_id": "tx-101", "cdr_token": cdr_token(), "auth_method": "AUTH_REQUEST",
            "cdr_location": {"id": "market", "address": "Marktplatz 1", "city": "Berlin",
                             "country": "DEU",
                             "coordinates": {"latitude": "52.520008",
                                             "longitude": "13.404954"},
                             "evse_uid": "market-001-1", "evse_id": "DE*EVT*Emarket001*1",
                             "connector_id": "1", "connector_standard": "IEC_62196_T2",
                             "connector_format": "SOCKET",
                             "connector_power_type": "AC_3_PHASE"},
            "currency": "EUR",
            "charging_periods": [{"start_date_time": "2026-12-03T08:00:00Z",
                                  "dimensions": [{"type": "ENERGY", "volume": 15.2},
                                                 {"type": "ENERGY_EXPORT", "volume": 2.1}]}],
            "total_cost": {"excl_vat": 5.32, "incl_vat": 6.33}, "total_energy": 15.2,
            "total_time": 1.5, "last_updated": NOW, **kw}


def test_token_session_and_cdr_validate_and_round_trip() -> None:
    for model, data in ((Token, token()), (Session, session()), (CDR, cdr())):
        obj = model.model_validate(data)
        assert model.model_validate(obj.model_dump(mode="json", exclude_none=True)) == obj
    info = AuthorizationInfo.model_validate({"allowed": "ALLOWED", "token": token()})
    assert info.token.uid == "04A1B2C3D4"


@pytest.mark.parametrize("model, data, field", [
    (Token, token(type="NFC"), "type"),
    (Token, token(whitelist="SOMETIMES"), "whitelist"),
    (Token, token(issuer="x" * 65), "issuer"),               # string(64)
    (Token, token(uid="x" * 37), "uid"),                     # CiString(36)
    (Session, session(status="RUNNING"), "status"),
    (Session, session(currency="EURO"), "currency"),         # string(3)
    (Session, session(auth_method="CARD"), "auth_method"),
    (CDR, cdr(id="x" * 40), "id"),                           # CiString(39)
    (CDR, cdr(charging_periods=[]), "charging_periods"),     # Card. +
    (CDR, cdr(end_date_time="2026-12-03T07:00:00Z"), "end_date_time"),
    (CDR, cdr(credit=True), "credit_reference_id"),          # a credit CDR names the old one
    (CDR, cdr(cdr_location={**cdr()["cdr_location"], "address": "x" * 46}), "address"),
])
def test_token_session_and_cdr_rules(model: Any, data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    assert field in str(err.value)


def test_authorization_info_needs_the_token() -> None:
    with pytest.raises(ValidationError, match="token"):
        AuthorizationInfo.model_validate({"allowed": "ALLOWED"})
