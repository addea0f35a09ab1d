"""Data protection: driver identifiers pseudonymised wherever people read them.

An id token (RFID uid, eMAID, app token) or an eMSP contract id is personal data
(it identifies a driver). Logs, exports and the dashboard show a pseudonym
instead: a keyed hash (HMAC-SHA256) of the identifier, the same for the same
driver under one key, so sessions can still be grouped per driver, but not
reversible without the key, and different under another key (another operator).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["PSEUDONYM_PREFIX", "Pseudonymiser"]

#: Every pseudonym starts so (``pid-`` and 16 hex digits), which tells it from a raw id.
PSEUDONYM_PREFIX = "pid-"


class Pseudonymiser:
    """Keyed pseudonyms of driver identifiers (case-insensitive, as OCPP compares them)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a pseudonymisation key needs at least 16 bytes")
        self._key = key

    def __call__(self, identifier: str | None) -> str | None:
        """The pseudonym of ``identifier`` (None stays None; a pseudonym stays itself)."""
        if identifier is None or identifier.startswith(PSEUDONYM_PREFIX):
            return identifier
        digest = hmac.new(self._key, identifier.casefold().encode(), hashlib.sha256)
        return PSEUDONYM_PREFIX + digest.hexdigest()[:16]
