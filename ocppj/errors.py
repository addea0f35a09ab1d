"""OCPP-J error codes and how each OCPP version spells them.

Codes are named as in OCPP-J 2.0.1 (section 4.3, table "Valid Error Codes");
:func:`wire_code` gives the spelling a version uses on the wire. OCPP 1.6-J has
no RpcFrameworkError, FormatViolation or MessageTypeNotSupported: it names
FormationViolation for a frame or payload that is not well formed and
NotSupported for what it cannot handle, and keeps the historic spelling
OccurenceConstraintViolation (1.6-J errata 5.1, also kept in 2.0.1; 2.1 spells it
correctly).
"""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal[
    "FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported",
    "NotImplemented", "NotSupported", "OccurrenceConstraintViolation",
    "PropertyConstraintViolation", "ProtocolError", "RpcFrameworkError", "SecurityError",
    "TypeConstraintViolation",
]

#: 2.0.1 name -> 1.6 wire name, where they differ.
CODES_16: dict[str, str] = {
    "FormatViolation": "FormationViolation",
    "RpcFrameworkError": "FormationViolation",
    "MessageTypeNotSupported": "NotSupported",
    "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
}


def wire_code(version: str, code: str) -> str:
    """The spelling of error ``code`` in OCPP ``version`` ("1.6", "2.0.1" or "2.1")."""
    if version == "1.6":
        return CODES_16.get(code, code)
    if version == "2.0.1" and code == "OccurrenceConstraintViolation":
        return "OccurenceConstraintViolation"
    return code
