"""Exceptions of the CSMS core: one base class, structured fields on domain errors."""

from __future__ import annotations


class CSMSError(Exception):
    """Base class of every error the CSMS raises on purpose."""


class ConfigError(CSMSError):
    """The CSMS configuration is inconsistent (names the offending field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnknownStationError(CSMSError):
    """A station identity that the CSMS was not provisioned with."""

    def __init__(self, station_id: str) -> None:
        super().__init__(f"unknown station {station_id!r}")
        self.station_id = station_id


class UnknownStrategyError(ConfigError):
    """A smart-charging strategy name that is not registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__("strategy", f"unknown strategy {name!r}; known: {', '.join(known)}")
        self.name = name


class StationNotConnectedError(CSMSError):
    """A CSMS-initiated call was addressed to a station with no open connection."""

    def __init__(self, station_id: str) -> None:
        super().__init__(f"station {station_id!r} is not connected")
        self.station_id = station_id


class UnknownEvseError(CSMSError):
    """A message names an EVSE the station was not provisioned with."""

    def __init__(self, station_id: str, evse_id: int) -> None:
        super().__init__(f"station {station_id!r} has no EVSE {evse_id}")
        self.station_id = station_id
        self.evse_id = evse_id


class InvalidMessageError(CSMSError):
    """A station message the CSMS refuses before it changes anything.

    ``code`` is the OCPP-J error code (2.0.1 name: FormatViolation for a value
    that cannot be read, PropertyConstraintViolation for one that can but is
    not acceptable), ``field`` the dotted path of the offending field.
    """

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.code = code
        self.field = field
        self.message = message


class StoreError(ConfigError):
    """The database cannot be opened or reached (names it, never its password)."""

    def __init__(self, message: str) -> None:
        super().__init__("db", message)


class InputError(CSMSError, ValueError):
    """An input from outside the OCPP traffic (prices, forecasts, grid limits) that
    the CSMS refuses; names the field and what is wrong. Nothing was changed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class PersonalDataError(ConfigError):
    """A request about one driver's personal data that cannot be met (names the field).

    ``reason``: ``unknown`` (nothing of them is stored), ``charging`` (a transaction
    of theirs is open: erased once it ends) or ``invalid`` (the request itself).
    """

    def __init__(self, field: str, message: str, *, reason: str = "invalid") -> None:
        super().__init__(field, message)
        self.message = message
        self.reason = reason
