"""Authorization of id tokens: what the CSMS answers for a token, in every version.

The rules of OCPP 2.0.1 C01-C16 and 1.6 (Authorize, StartTransaction, local lists),
written once and free of I/O:

- a token the CSMS was not given is ``Invalid``;
- a provisioned token has its own status (``Accepted``, ``Blocked``, ...) and is
  ``Expired`` after its expiry time;
- with ``allow_concurrent_tx`` false, a token already in an open transaction
  is ``ConcurrentTx`` in the answer to a transaction's start (the only answer the
  status is meant for: 1.6 StartTransaction, 2.x TransactionEvent Started; an
  Authorize to stop a session is never refused so), never for a master pass;
- id tokens are case-insensitive (CiString in both versions): ``tag1`` is ``TAG1``;
- a token's group goes with every answer (2.x ``groupIdToken``, 1.6
  ``parentIdTag``), so a station lets any token of the group stop the
  transaction (C09); a token of the master pass group stops any transaction
  (C16: the station compares the group with its ``MasterPassGroupId``);
- the expiry goes with the answer as the auth cache's expiry (2.x
  ``cacheExpiryDateTime``, 1.6 ``expiryDate``).

Local authorization lists (D01-D04, 1.6 Local Auth List Management) carry the
same information per token (:meth:`TokenInfo.to_16` / :meth:`TokenInfo.to_2x`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from .clock import iso

IdTokenType = Literal["Central", "eMAID", "ISO14443", "ISO15693", "KeyCode", "Local",
                      "MacAddress", "NoAuthorization"]
"""OCPP 2.x id token types (1.6 id tags have none)."""

#: Statuses a provisioned token can be given (2.0.1 AuthorizationStatusEnumType;
#: 1.6 knows Accepted, Blocked, Expired, Invalid and ConcurrentTx).
TokenStatus = Literal["Accepted", "Blocked", "Expired", "Invalid", "NoCredit",
                      "NotAllowedTypeAtEVSE", "NotAtThisLocation", "NotAtThisTime",
                      "Unknown"]

#: What a 1.6 station understands of the 2.x statuses (the others refuse as Invalid).
_STATUS_16 = {"Accepted": "Accepted", "Blocked": "Blocked", "Expired": "Expired",
              "Invalid": "Invalid", "ConcurrentTx": "ConcurrentTx"}


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token the CSMS was provisioned with."""

    id_token: str
    status: str = "Accepted"
    group: str | None = None
    """Group id token (2.x groupIdToken, 1.6 parentIdTag)."""
    expires_at: datetime | None = None
    """After this the token is Expired."""
    local: bool = True
    """Sent to stations in their local authorization list."""
    token_type: str = "ISO14443"
    """2.x IdTokenEnumType, for the local list (the type the token is presented as)."""
    roaming: bool = False
    """A roaming partner's token, learned over OCPI (never one the CSMS was given)."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """The CSMS's answer about one token (2.x IdTokenInfo, 1.6 IdTagInfo)."""

    status: str
    group: str | None = None
    expires_at: datetime | None = None

    def to_2x(self) -> dict[str, Any]:
        """IdTokenInfoType in OCPP 2.0.1/2.1 wire form."""
        out: dict[str, Any] = {"status": self.status}
        if self.expires_at is not None:
            out["cacheExpiryDateTime"] = iso(self.expires_at)
        if self.group is not None:
            out["groupIdToken"] = {"idToken": self.group, "type": "Central"}
        return out

    def to_16(self) -> dict[str, Any]:
        """IdTagInfo in OCPP 1.6 wire form (statuses 1.6 lacks become Invalid)."""
        out: dict[str, Any] = {"status": _STATUS_16.get(self.status, "Invalid")}
        if self.expires_at is not None:
            out["expiryDate"] = iso(self.expires_at)
        if self.group is not None and len(self.group) <= 20:  # 1.6: CiString20
            out["parentIdTag"] = self.group
        return out


class Authorizer:
    """Answers for tokens from the provisioned records and the open transactions."""

    def __init__(self, records: Iterable[TokenRecord], *, master_pass_group: str | None = None,
                 allow_concurrent_tx: bool = True) -> None:
        self.records = {r.id_token.casefold(): r for r in records}
        self.master_pass_group = master_pass_group
        self.allow_concurrent_tx = allow_concurrent_tx

    def record(self, id_token: str) -> TokenRecord | None:
        """The provisioned token, matched case-insensitively."""
        return self.records.get(id_token.casefold())

    def is_master_pass(self, id_token: str) -> bool:
        record = self.record(id_token)
        return (record is not None and self.master_pass_group is not None
                and record.group == self.master_pass_group)

    def info(self, id_token: str, now: datetime, *, in_open_tx: bool = False) -> TokenInfo:
        """The answer for ``id_token`` at ``now``; ``in_open_tx``: a transaction starts
        with it while it is already in another open one."""
        record = self.record(id_token)
        if record is None:
            return TokenInfo("Invalid")
        status = record.status
        if status == "Accepted" and record.expires_at is not None and now >= record.expires_at:
            status = "Expired"
        if (status == "Accepted" and in_open_tx and not self.allow_concurrent_tx
                and not self.is_master_pass(id_token)):
            status = "ConcurrentTx"
        return TokenInfo(status, record.group, record.expires_at)

    def local_list(self, now: datetime, ids: Iterable[str] | None = None
                   ) -> list[tuple[TokenRecord | None, str, TokenInfo | None]]:
        """Entries of a local authorization list: (record, id, info) for the tokens
        ``ids`` (None: every token marked ``local``), info None for an id the CSMS
        does not know (a differential update removes it)."""
        if ids is None:
            chosen = [r.id_token for r in self.records.values() if r.local]
        else:
            chosen = list(dict.fromkeys(ids))
        out: list[tuple[TokenRecord | None, str, TokenInfo | None]] = []
        for token in chosen:
            record = self.record(token)
            out.append((record, token, None if record is None else self.info(token, now)))
        return out


class RoamingPort(Protocol):
    """Where the CSMS asks about tokens of other networks' drivers (OCPI: the eMSPs
    it roams with). Implemented outside the core; the core only awaits it."""

    def wants(self, id_token: str) -> bool:
        """Whether ``id_token`` is to be authorized in real time now (unknown here,
        or a partner's token that must always be asked about)."""
        ...

    async def authorize(self, id_token: str, station_id: str,
                        evse_id: int | None) -> TokenRecord | None:
        """The partner's answer as a token record (None: no partner knows it)."""
        ...
