"""What every virtual station's OCPP shell shares, whatever the version."""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ocpp.exceptions import (
    FormatViolationError,
    OccurenceConstraintViolationError,
    OCPPError,
    PropertyConstraintViolationError,
    TypeConstraintViolationError,
)
from ocpp.messages import MessageType

from evtwin.ocppj import schemas

from .station import Profile, VirtualStation

log = logging.getLogger("evtwin.agents.client")

#: Messages whose CALLERROR is logged and counted rather than fatal.
_REPORTS = frozenset({"Heartbeat", "MeterValues", "StatusNotification"})

ENERGY = "Energy.Active.Import.Register"

#: OCPP-J error code of a schema violation -> the ``ocpp`` library's exception.
_VIOLATIONS: dict[str, type[OCPPError]] = {
    "OccurrenceConstraintViolation": OccurenceConstraintViolationError,
    "PropertyConstraintViolation": PropertyConstraintViolationError,
    "TypeConstraintViolation": TypeConstraintViolationError,
}


def record_profile(log: list[dict[str, Any]], client: Any, evse_id: int, profile: Profile,
                   status: str) -> None:
    """Append one received SetChargingProfile to ``log`` (what the CSMS asked for)."""
    now = client.now_s()
    evse = client.station.evses.get(evse_id)
    phases = evse.phases if evse is not None else 3
    first = profile.periods[0] if profile.periods else (0.0, float("nan"), None)
    log.append({
        "t_s": now, "station_id": client.station.station_id, "evse_id": evse_id,
        "profile_id": profile.profile_id, "purpose": profile.purpose,
        "stack_level": profile.stack_level, "unit": profile.unit, "limit": first[1],
        "limit_w_now": profile.limit_w(now, evse.tx_started_s if evse else None, phases),
        "transaction_id": profile.transaction_id, "status": status,
    })


def iso_ts(ts: datetime) -> str:
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def parse_ts(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


class ClientBase(ABC):
    """Mixin placed before an ``ocpp`` ChargePoint class in a station client's bases.

    ``to_datetime`` maps simulated seconds to aware datetimes and
    ``to_seconds`` maps back; every timestamp sent is simulated time.
    """

    if TYPE_CHECKING:  # provided by the ocpp ChargePoint class later in the MRO
        id: str
        _ocpp_version: str

        async def call(self, payload: Any, suppress: bool = True,
                       skip_schema_validation: bool = False) -> Any: ...

        async def start(self) -> None: ...

    def __init__(self, station: VirtualStation, connection: Any, *,
                 to_datetime: Callable[[float], datetime],
                 to_seconds: Callable[[datetime], float],
                 now_s: Callable[[], float], response_timeout: float = 30.0) -> None:
        super().__init__(station.station_id, connection,  # type: ignore[call-arg]
                         response_timeout=response_timeout)
        self.station = station
        self.to_datetime = to_datetime
        self.to_seconds = to_seconds
        self.now_s = now_s
        self.calls_sent = 0
        self.heartbeat_interval_s = 3600.0
        self.profiles_received = 0
        self.call_errors = 0
        #: Every SetChargingProfile received, with its answer (what a CSMS did).
        self.received_profiles: list[dict[str, Any]] = []
        #: The action of the call being made (for its answer's schema).
        self._calling = ""

    async def _send_call(self, payload: Any) -> Any:
        self.calls_sent += 1
        # The library's generic validator (jsonschema, ~0.4 ms a message and no
        # formats) is skipped for the compiled schemas of evtwin.ocppj (a few us,
        # formats checked): the request in _send, the answer in
        # _get_specific_response, both against the specification's schemas.
        try:
            return await self.call(payload, suppress=False, skip_schema_validation=True)
        except OCPPError as exc:
            # A CSMS that refuses a report does not stop the station; one that
            # refuses a boot or a transaction message does (the caller decides).
            if type(payload).__name__ not in _REPORTS:
                raise
            self.call_errors += 1
            log.warning("%s: %s answered %s", self.id, type(payload).__name__, exc)
            return None

    async def _send(self, message: str) -> None:
        """Send one frame; a CALL is checked against its schema first (a payload
        the station builds wrong is a bug: SchemaViolation, nothing sent)."""
        if message.startswith("[2,"):
            frame = json.loads(message)
            schemas.validate(self._ocpp_version, frame[2], frame[3], request=True)
            # Set here, under the library's call lock: the action whose answer
            # _get_specific_response checks next.
            self._calling = frame[2]
        await super()._send(message)  # type: ignore[misc]

    async def _get_specific_response(self, unique_id: str, timeout: float) -> Any:
        """The answer to the pending call, its payload checked against the
        action's response schema (an OCPPError naming the violation otherwise)."""
        response = await super()._get_specific_response(unique_id, timeout)  # type: ignore[misc]
        if response.message_type_id == MessageType.CallResult:
            try:
                schemas.validate(self._ocpp_version, self._calling, response.payload,
                                 request=False)
            except schemas.SchemaViolation as exc:
                raise _VIOLATIONS.get(exc.code, FormatViolationError)(
                    description=f"{self._calling} answer: {exc}") from None
        return response

    def _ts(self, at_s: float) -> str:
        return iso_ts(self.to_datetime(at_s))

    @abstractmethod
    async def boot(self) -> None:
        """BootNotification, then the status of every EVSE."""

    @abstractmethod
    async def flush(self, now_s: float, *, sample: bool, aligned: bool, heartbeat: bool) -> None:
        """Send everything due at ``now_s`` and wait for every answer."""

    @abstractmethod
    async def _on_plug(self, evse_id: int, at_s: float, info: dict[str, Any],
                       now_s: float) -> None:
        """Tell the CSMS an EV plugged in (status, authorization, transaction start)."""

    @abstractmethod
    async def _on_unplug(self, evse_id: int, at_s: float, info: dict[str, Any]) -> None:
        """Tell the CSMS the EV left (transaction end, status)."""

    async def flush_events(self, now_s: float) -> None:
        """Tell the CSMS about plug-ins and departures queued so far, in order."""
        st = self.station
        while st.events:
            event = st.events.popleft()
            if event.kind == "plug":
                await self._on_plug(event.evse_id, event.at_s, event.payload, now_s)
            else:
                await self._on_unplug(event.evse_id, event.at_s, event.payload)
