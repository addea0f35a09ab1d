"""The CSMS core: registry, authorization, sessions and the control cycle.

Protocol-neutral and free of I/O: the OCPP shells translate messages into
calls on :class:`CSMSCore` and turn its answers back into messages. Time comes
only from the injected clock.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any

from evtwin.ocppj.domain import ENERGY, ENERGY_EXPORT, POWER, POWER_EXPORT, SOC, VOLTAGE

from .auth import Authorizer, RoamingPort, TokenInfo, TokenRecord
from .certs import StationCA
from .clock import Clock, iso, parse_iso, wall_clock
from .exceptions import UnknownEvseError, UnknownStationError
from .health import StationHealth
from .inputs import InputPort
from .model import (
    ControlView,
    CoreEvent,
    CSMSConfig,
    EVChargingNeeds,
    EvseSpec,
    LimitSchedule,
    ParsedSample,
    Session,
    SessionChanged,
    SessionView,
    SiteView,
    StationSpec,
    StatusChanged,
    TxEvent,
)
from .parse import WH_PER_UNIT, samples_2x, tx_event_2x
from .profiles import (
    ChargingProfile,
    Period,
    ProfileError,
    ProfileSet,
    profile_from_json,
    profile_to_json,
)
from .reservations import ReservationBook
from .store import Store
from .strategies import EvseKey, get_strategy
from .tariffs import (
    CostBreakdown,
    TariffBook,
    is_plain,
    readings_from_store,
    session_cost,
    surcharged_at_start,
)

log = logging.getLogger("evtwin.csms")


_W_PER_UNIT = {"W": 1.0, "kW": 1000.0}
#: External limits (NotifyChargingLimit sources) kept per station at most.
MAX_LIMIT_SOURCES = 16

Sample = tuple[str, str, str | None, float, str | None]
"""(timestamp as sent, measurand, phase, value, unit): a sampled value as stored."""


@dataclass(frozen=True, slots=True)
class ProfileCommand:
    """A limit the control cycle decided to send to one EVSE."""

    station_id: str
    evse_id: int
    transaction_id: str
    limit: float
    unit: str
    limit_w: float
    profile_id: int = 0
    phases: int = 3
    """The EVSE's phases: a single-phase EVSE's profile says numberPhases 1."""
    """The id of the profile that carries it (0: a fresh one when it is sent). The
    control cycle numbers its commands in their order before sending any, so the
    ids do not depend on which station answers first."""


def _state_row(s: Session) -> dict[str, Any]:
    """A session's state as the store's transactions row keeps it."""
    return {"evse_id": s.evse_id, "id_token": s.id_token, "started_at": iso(s.started_at),
            "ended_at": iso(s.ended_at) if s.ended_at is not None else None,
            "meter_start_wh": s.meter_start_wh, "meter_stop_wh": s.meter_stop_wh,
            "stopped_reason": s.stopped_reason, "last_seq_no": s.last_seq_no,
            "meter_last_wh": s.meter_last_wh,
            "meter_last_at": iso(s.meter_last_at) if s.meter_last_at is not None else None,
            "power_w": s.power_w, "voltage_v": s.voltage_v, "soc_percent": s.soc_percent,
            "export_start_wh": s.export_start_wh, "export_last_wh": s.export_last_wh,
            "charging_state": s.charging_state}


#: OCPP 1.6 connector statuses that are a running session's charging state.
CHARGING_STATES = frozenset({"Charging", "SuspendedEV", "SuspendedEVSE"})


def _last_seen(session: Session) -> datetime:
    """The last time a session showed life: its latest meter reading, or its start."""
    last = session.meter_last_at
    return session.started_at if last is None or last < session.started_at else last


def live_sessions(sessions: Iterable[Session]) -> list[Session]:
    """The open sessions the control cycle steers: on each EVSE the one that showed
    life last (an EVSE serves one EV; another open one there is a transaction whose
    Ended is lost or still queued, which must take no share of a site's limit and
    whose id must not get the EVSE's profile)."""
    live: dict[tuple[str, int], Session] = {}
    for s in sessions:
        if not s.is_open:
            continue
        key = (s.station_id, s.evse_id)
        other = live.get(key)
        if other is None or (_last_seen(s), s.started_at, s.transaction_id) > (
                _last_seen(other), other.started_at, other.transaction_id):
            live[key] = s
    return list(live.values())


def _note_charging_state(session: Session, state: str) -> None:
    """A session's charging state as reported. An EV seen taking nothing
    (SuspendedEV) stays so while the station holds it at 0 (SuspendedEVSE): only
    drawing again clears it. Else a full EV would look hungry every time its
    limit is cut."""
    if not (state == "SuspendedEVSE" and session.charging_state == "SuspendedEV"):
        session.charging_state = state


class CSMSCore:
    """Business logic of the CSMS, written once for every transport.

    ``store`` persists everything; ``clock`` gives the time for every
    timestamp and the control cycle.
    """

    def __init__(self, config: CSMSConfig, store: Store, *, clock: Clock = wall_clock) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        #: Inside :meth:`batch`: stations whose installed profiles await writing.
        self._dirty_profiles: set[str] | None = None
        self.stations: dict[str, StationSpec] = {s.station_id: s for s in config.stations}
        self.site_limits = {s.name: s.limit_kw for s in config.sites}
        self.sites = {s.name: s for s in config.sites}
        #: What the CSMS learns from other systems than its stations (prices, PV
        #: forecasts, grid-operator limits, the feeder model): the one way in.
        self.inputs = InputPort(self.sites, on_change=self._input_changed)
        self.strategy = get_strategy(config.strategy)
        self.authorizer = Authorizer(
            [*(TokenRecord(t) for t in sorted(config.id_tokens)), *config.tokens],
            master_pass_group=config.master_pass_group,
            allow_concurrent_tx=config.allow_concurrent_tx)
        self.sessions: dict[tuple[str, str], Session] = {}
        #: Reservations sent to stations and what became of them (see :mod:`.reservations`).
        self.reservations = ReservationBook()
        #: Told of every status and session change, in the order they happen (OCPI
        #: pushes, dashboards). Each must be quick and must not raise.
        self.observers: list[Callable[[CoreEvent], None]] = []
        #: Where tokens the CSMS does not know are authorized in real time (a roaming
        #: partner: OCPI's eMSPs); None: such tokens are Invalid.
        self.roaming: RoamingPort | None = None
        #: What each ended session cost, by part (idle fees, surcharges): tariffs.
        self.tariffs = TariffBook()
        self.status: dict[EvseKey, str] = {}
        #: Problems, outages and work orders of the stations (see :mod:`.health`).
        self.health = StationHealth(
            {sid: tuple(e.evse_id for e in spec.evses) for sid, spec in self.stations.items()},
            float(config.heartbeat_interval_s), clock)
        self.sent_limits_w: dict[EvseKey, float | None] = {}
        #: Profiles each station accepted, as the CSMS believes them installed.
        self.profiles: dict[str, ProfileSet] = {}
        self.booted: set[str] = set()
        self.open_at_boot: dict[str, set[str]] = {}
        #: External limits stations reported (NotifyChargingLimit), as schedules, by
        #: (station, EVSE or 0 for the station, source).
        self.external_limits: dict[tuple[str, int, str], tuple[LimitSchedule, ...]] = {}
        #: The CA that signs stations' certificate requests (None: they are refused).
        self.station_ca: StationCA | None = None
        self._profile_floor = store.max_profile_id()
        self._profile_ids = itertools.count(self._profile_floor + 1)
        # Set when a session starts or ends: the control cycle should run now
        # rather than wait for its next interval (a new EV must not run
        # unlimited until then).
        self.sessions_changed = False
        self._last_control: datetime | None = None
        self._warned: set[tuple[str, ...]] = set()
        for spec in config.stations:
            self.site_limits.setdefault(spec.site, None)
        store.upsert_stations([(spec.station_id, spec.site,
                                [(e.evse_id, e.max_power_w) for e in spec.evses])
                               for spec in config.stations])
        self._restore()

    def _restore(self) -> None:
        """Reload open transactions, installed profiles and accepted limits (after a restart)."""
        self._load_profiles(None)
        self._load_external_limits(None)
        for tx in self.store.open_transactions():
            session = self._session_from_store(tx)
            self.sessions[(session.station_id, session.transaction_id)] = session
        self._restore_limits(None)

    def _restore_limits(self, station_id: str | None) -> None:
        """The limits the open sessions' EVSEs accepted (all stations, or one), from
        the transactions' rows, where only a limit whose TxProfile is still installed
        counts (a cleared one stays cleared)."""
        for key in [k for k in self.sent_limits_w if station_id in (None, k[0])]:
            del self.sent_limits_w[key]
        open_sessions = [s for s in self.sessions.values()
                         if s.is_open and station_id in (None, s.station_id)]
        if 0 < self.store.opened_schema_version < 3:
            # A database from before installed profiles were kept: the last
            # accepted limit is all there is.
            tx_of = {(s.station_id, s.evse_id): s.transaction_id for s in open_sessions}
            for key, limit_w in self.store.last_accepted_limits_w().items():
                if key in tx_of:
                    self.sent_limits_w[key] = limit_w
                    self._install_tx_limit(key[0], key[1], tx_of[key], limit_w, self.clock())
            return
        for s in open_sessions:
            if s.limit_w is not None and self._has_tx_profile(s.station_id, s.transaction_id):
                self.sent_limits_w[(s.station_id, s.evse_id)] = s.limit_w

    # -- registry ------------------------------------------------------------
    def knows(self, station_id: str) -> bool:
        """True if ``station_id`` was provisioned."""
        return station_id in self.stations

    def station(self, station_id: str) -> StationSpec:
        """The provisioned station, or UnknownStationError."""
        try:
            return self.stations[station_id]
        except KeyError:
            raise UnknownStationError(station_id) from None

    # -- handlers (called by protocol shells) -------------------------------
    def on_boot(self, station_id: str, vendor: str, model: str) -> dict[str, Any]:
        """BootNotification: accept provisioned stations, give time and interval."""
        self.station(station_id)
        now = self.clock()
        self.store.record_boot(station_id, vendor, model, iso(now))
        self.booted.add(station_id)
        #: Transactions open when the station (re)booted: to reconcile (1.6: its
        #: connector's next Available ends them; 2.x: GetTransactionStatus).
        self.open_at_boot[station_id] = set(self.open_transactions(station_id))
        return {"status": "Accepted", "current_time": iso(now),
                "interval": self.config.heartbeat_interval_s}

    def on_heartbeat(self, station_id: str) -> str:
        """Heartbeat: the CSMS's current time."""
        self.health.seen(station_id, heartbeat=True)
        return iso(self.clock())

    def on_problem(self, station_id: str, evse_id: int, component: str, code: str,
                   severity: str, timestamp: str) -> None:
        """A station reports a component's problem (warning, fault, cleared): to the
        station-health record, which raises work orders (see :mod:`.health`)."""
        self.station(station_id)
        self.health.on_problem(station_id, evse_id, component, code, severity,
                               parse_iso(timestamp))

    def on_notify_event(self, station_id: str, payload: dict[str, Any]) -> None:
        """OCPP 2.x NotifyEvent: events on a component's ``Problem`` variable are
        problem reports (``techInfo`` warning | fault | cleared; without it a true
        value is a fault)."""
        for e in payload.get("eventData") or ():
            if (e.get("variable") or {}).get("name") != "Problem":
                continue
            comp = e.get("component") or {}
            evse_id = int((comp.get("evse") or {}).get("id") or 0)
            cleared = bool(e.get("cleared")) or str(e.get("actualValue")).lower() == "false"
            severity = "cleared" if cleared else str(e.get("techInfo") or "fault")
            if severity not in ("warning", "fault", "cleared"):
                severity = "fault"
            self.on_problem(station_id, evse_id, str(comp.get("name", "")),
                            str(e.get("techCode") or ""), severity, str(e["timestamp"]))

    def check_evse(self, station_id: str, evse_id: int) -> None:
        """Raise UnknownStationError/UnknownEvseError unless both were provisioned."""
        try:
            self.station(station_id).evse(evse_id)
        except KeyError:
            raise UnknownEvseError(station_id, evse_id) from None

    def on_status(self, station_id: str, evse_id: int, status: str, timestamp: str) -> None:
        """StatusNotification: remember and persist the connector status. OCPP 1.6's
        Charging, SuspendedEV and SuspendedEVSE are the running session's charging
        state (2.x reports it in TransactionEvent), so strategies see the same."""
        self.check_evse(station_id, evse_id)
        self.status[(station_id, evse_id)] = status
        self.store.record_status(station_id, evse_id, status, timestamp)
        if self.reservations.by_id:
            self.reservations.on_status(station_id, evse_id, status, parse_iso(timestamp))
        if self.observers:
            self._notify(StatusChanged(station_id, evse_id, status, timestamp))
        if status in CHARGING_STATES:
            at = parse_iso(timestamp)
            for session in self._open_on(station_id, evse_id):
                if session.meter_last_at is None or at >= session.meter_last_at:
                    _note_charging_state(session, status)
                    self.store.record_charging_state(station_id, session.transaction_id,
                                                     session.charging_state)

    def available_after_boot(self, station_id: str, evse_id: int) -> list[str]:
        """OCPP 1.6: an EVSE reports Available after the station rebooted, so no
        transaction that was open there at the reboot goes on (a 1.6 transaction
        needs its EV plugged in): they are ended with reason Reboot (their Ended was
        lost in the reboot; one still queued applies when it comes). Returns their ids."""
        pending = self.open_at_boot.get(station_id)
        if not pending:
            return []
        ended = []
        for tx_id in self.open_transactions(station_id, evse_id):
            if tx_id in pending:
                pending.discard(tx_id)
                if self.close_transaction(station_id, tx_id, "Reboot",
                                          f"EVSE {evse_id} Available after a reboot"):
                    ended.append(tx_id)
        return ended

    def on_station_message(self, station_id: str, action: str, payload: dict[str, Any]) -> None:
        """A message a station sends for the record (NotifyEvent, SecurityEventNotification,
        NotifyReport, firmware, log and diagnostics status, DataTransfer, ...): kept as
        received with the time it came (``Store.station_messages``)."""
        self.station(station_id)
        self.store.record_station_message(station_id, action, iso(self.clock()), payload)
        if action == "NotifyEvent":
            self.on_notify_event(station_id, payload)
        if action == "ReservationStatusUpdate":
            self.reservations.on_update(int(payload["reservationId"]),
                                        str(payload["reservationUpdateStatus"]), self.clock())
        if action == "SecurityEventNotification":
            log.info("station %s reports security event %s", station_id, payload.get("type"),
                     extra={"event": "station_security_event", "station": station_id,
                            "type": payload.get("type")})

    def token_info(self, id_token: str, *, starting: tuple[str, str] | None = None
                   ) -> TokenInfo:
        """What the CSMS answers for ``id_token`` (status, group, expiry: see
        :mod:`.auth`). ``starting`` (station, transaction id): the transaction that
        starts with it, the one answer ConcurrentTx is meant for (when the token is in
        another open transaction)."""
        in_open_tx = (starting is not None and not self.authorizer.allow_concurrent_tx
                      and any(s.is_open and key != starting and s.id_token is not None
                              and s.id_token.casefold() == id_token.casefold()
                              for key, s in self.sessions.items()))
        return self.authorizer.info(id_token, self.clock(), in_open_tx=in_open_tx)

    def authorize(self, id_token: str) -> str:
        """Authorization status of an id token (:meth:`token_info`'s status)."""
        return self.token_info(id_token).status

    def on_transaction_event(self, station_id: str, payload: dict[str, Any], *,
                             digest: str | None = None) -> dict[str, Any]:
        """A TransactionEvent in OCPP 2.x's wire (camelCase) form: checked
        (:func:`.parse.tx_event_2x`) and applied (:meth:`transaction_event`)."""
        return self.transaction_event(station_id, tx_event_2x(payload, self.clock(), self.config),
                                      record=payload, digest=digest)

    def transaction_event(self, station_id: str, ev: TxEvent, *, record: dict[str, Any],
                          digest: str | None = None) -> dict[str, Any]:
        """A transaction event, whatever the version or transport (each shell translates
        its messages into a checked :class:`TxEvent`): track the session, persist it,
        return idTokenInfo if asked.

        ``record`` is what the event log keeps (the message as received, or the
        message of a transport with no wire form). ``ev.seq_no`` is None when the
        CSMS numbers the events itself (OCPP 1.6, whose messages are then told
        apart by ``digest``, a hash of their content).

        Idempotent and atomic: the event is validated completely first
        (InvalidMessageError, nothing changed); a duplicate (a seqNo or digest
        this transaction already has, also after a restart and after the
        transaction ended) is answered as the original was and changes nothing;
        otherwise the new state is computed on a copy of the session, written to
        the store in one transaction together with the charge detail record, and
        only then becomes the CSMS's state. An exception anywhere leaves memory
        and database as they were, so a corrected re-send is applied as new.

        Events may come late or out of order (a station that was offline sends
        its queue): the meter reading with the latest timestamp wins and Started
        fixes the start reading whenever it arrives. An ended transaction leaves
        memory (the store keeps it; a late event reloads it).
        """
        key = (station_id, ev.transaction_id)
        current = self.sessions.get(key)
        if current is None:
            current = self.load_session(station_id, ev.transaction_id)
        if current is None:
            evse_id = ev.evse_id or 1
            # Checked before anything is stored: a session on an EVSE the CSMS
            # does not know would break every later control cycle.
            self.check_evse(station_id, evse_id)
            session = Session(transaction_id=ev.transaction_id, station_id=station_id,
                              evse_id=evse_id, id_token=ev.id_token, started_at=ev.at)
        else:
            session = replace(current)
        evse_id = ev.evse_id or session.evse_id
        # 2.x numbers a transaction's events from 0: a number beyond the next one
        # means events are missing (lost, or still in the station's queue).
        gap = ev.seq_no is not None and ev.seq_no > session.last_seq_no + 1
        seq_no = ev.seq_no if ev.seq_no is not None else session.last_seq_no + 1
        self._apply_event(session, ev, seq_no)
        cdr = self._cdr(session) if session.ended_at is not None else None
        # One live transaction per EVSE: a new one Started there, on a named EVSE,
        # after the open one's last sign of life, ends what the station never ended
        # (its Ended was lost). A late event of an older transaction ends nothing.
        stale = [] if (current is not None or not session.is_open
                       or ev.event_type != "Started" or ev.evse_id is None) else [
            self._closed(old, ev.at, "Other")
            for old in self._open_on(station_id, session.evse_id) if _last_seen(old) < ev.at]
        # The new event and the ghosts it ends are stored in one transaction.
        applied = self.store.record_transaction_event(
            station_id=station_id, transaction_id=ev.transaction_id, seq_no=seq_no,
            event_type=ev.event_type, trigger_reason=ev.trigger_reason,
            timestamp=ev.timestamp, payload=record,
            samples=[sample[:5] for sample in ev.samples], evse_id=evse_id,
            state=_state_row(session), digest=digest, cdr=cdr,
            closes=[(old.transaction_id, _state_row(old), self._cdr(old)) for old in stale])
        if not applied:
            # A re-sent message (its seqNo or content is stored): answered as the
            # original was; the copy is dropped and nothing changes.
            response = self._tx_response(ev.id_token, key, ev.event_type)
            if ev.event_type == "Ended":
                cost = self.store.cdr_cost(station_id, ev.transaction_id)
                if cost is not None:
                    response["total_cost"] = cost
            return response
        for old in stale:
            self._forget(old, f"transaction {ev.transaction_id} started on its EVSE")
            if self.observers:  # ended too, as close_transaction's are
                self._notify(SessionChanged(replace(old), "Ended", self._cdr(old, final=False)))
        # Stored: from here on it is the CSMS's state (the session object others
        # hold stays the one in use).
        was_open = None if current is None else current.is_open
        if current is not None and self.sessions.get(key) is current:
            for f in fields(Session):
                setattr(current, f.name, getattr(session, f.name))
            session = current
        if session.is_open:
            self.sessions[key] = session
        else:
            self.sessions.pop(key, None)
        if was_open is None or was_open != session.is_open:
            self.sessions_changed = True
        if ev.event_type == "Started" and self.reservations.by_id:
            group = None if session.id_token is None else self.authorizer.info(
                session.id_token, self.clock()).group
            self.reservations.on_started(station_id, session.evse_id, session.id_token,
                                         ev.transaction_id, ev.at, group)
        if ev.event_type in ("Started", "Ended"):
            log.info("transaction %s %s", ev.transaction_id, ev.event_type.lower(), extra={
                "event": f"transaction_{ev.event_type.lower()}", "station": station_id,
                "transaction": ev.transaction_id, "evse": session.evse_id,
                "energy_wh": round(session.billed_energy_wh, 3)})
        if self.observers:
            self._notify(SessionChanged(replace(session), ev.event_type, cdr))
        if ev.event_type == "Ended" and was_open is not False:
            self.sent_limits_w.pop((station_id, session.evse_id), None)
            self.profile_set(station_id).end_transaction(ev.transaction_id)
            self.persist_profiles(station_id)
        response = self._tx_response(ev.id_token, key, ev.event_type)
        if gap and session.is_open:
            response["seq_gap"] = True
        if ev.event_type == "Ended" and cdr is not None:
            response["total_cost"] = cdr["cost"]  # 2.x: the final cost, in the Ended answer
        return response

    def close_transaction(self, station_id: str, transaction_id: str, reason: str,
                          why: str) -> bool:
        """End an open transaction the station reports over (GetTransactionStatus: not
        ongoing, nothing queued; 1.6: its connector Available after a reboot) though its
        Ended never came: at its last sign of life, with ``reason`` and a CDR. A late
        Ended still applies. False if it is not open (any more)."""
        session = self.sessions.get((station_id, transaction_id))
        if session is None or not session.is_open:
            return False
        closed = self._closed(session, self.clock(), reason)
        cdr = self._cdr(closed)
        self.store.close_transactions(station_id, [(transaction_id, _state_row(closed), cdr)])
        self._forget(closed, why)
        if self.observers:
            self._notify(SessionChanged(replace(closed), "Ended", cdr))
        return True

    def _notify(self, event: CoreEvent) -> None:
        for observer in list(self.observers):
            try:
                observer(event)
            except Exception:  # an observer's bug must not fail a station's message
                log.exception("observer %r failed on %s", observer, type(event).__name__)

    def add_token(self, record: TokenRecord) -> None:
        """Know ``record`` from now on (a roaming partner's token, authorized by it or
        pushed by it), replacing what the CSMS knew of that token."""
        self.authorizer.records[record.id_token.casefold()] = record

    def needs_remote_authorization(self, id_token: str) -> bool:
        """Whether ``id_token`` is to be authorized by the roaming port, in real time."""
        return self.roaming is not None and self.roaming.wants(id_token)

    async def authorize_remote(self, id_token: str, station_id: str,
                               evse_id: int | None = None) -> TokenInfo:
        """Ask the roaming port about ``id_token`` (its answer is remembered with
        :meth:`add_token`), then answer as :meth:`token_info` does."""
        assert self.roaming is not None
        record = await self.roaming.authorize(id_token, station_id, evse_id)
        if record is not None:
            self.add_token(record)
        return self.token_info(id_token)

    def open_transactions(self, station_id: str, evse_id: int | None = None) -> list[str]:
        """Ids of a station's open transactions (on one EVSE), oldest first."""
        return [s.transaction_id for s in sorted(
            (s for s in self.sessions.values() if s.station_id == station_id and s.is_open
             and evse_id in (None, s.evse_id)), key=lambda s: s.started_at)]

    @staticmethod
    def _closed(session: Session, by: datetime, reason: str) -> Session:
        """A copy of an open session, ended by the CSMS: at its last sign of life
        (its last meter reading, not after ``by``), with ``reason``. Its billed
        energy stays its latest reading, so a late reading still counts."""
        closed = replace(session)
        closed.ended_at = min(_last_seen(session), max(by, session.started_at))
        closed.stopped_reason = reason
        closed.power_w = 0.0
        return closed

    def _forget(self, closed: Session, why: str) -> None:
        """Drop a session the CSMS ended itself (stored already) from the live state."""
        key = (closed.station_id, closed.transaction_id)
        self.sessions.pop(key, None)
        self.sessions_changed = True
        self.sent_limits_w.pop((closed.station_id, closed.evse_id), None)
        self.profile_set(closed.station_id).end_transaction(closed.transaction_id)
        self.persist_profiles(closed.station_id)
        log.warning("transaction %s on %s EVSE %d ended by the CSMS (%s): %s",
                    closed.transaction_id, closed.station_id, closed.evse_id,
                    closed.stopped_reason, why, extra={
                        "event": "transaction_closed_stale", "station": closed.station_id,
                        "transaction": closed.transaction_id, "evse": closed.evse_id,
                        "energy_wh": round(closed.billed_energy_wh, 3)})

    def _apply_event(self, session: Session, ev: TxEvent, seq_no: int) -> None:
        """Apply a validated event to ``session`` (a copy the caller commits)."""
        if ev.id_token and session.id_token is None:
            session.id_token = ev.id_token
        at = ev.at
        state = ev.charging_state
        fresh = session.meter_last_at is None or at >= session.meter_last_at
        if state and fresh:
            _note_charging_state(session, state)
        self._apply_samples(session, ev.samples)
        energy_wh = ev.energy_wh
        if ev.event_type == "Started":
            session.started_at = at
            if energy_wh is not None:
                session.meter_start_wh = energy_wh
        elif session.meter_start_wh is None and energy_wh is not None:
            session.meter_start_wh = energy_wh  # provisional until Started arrives
        if at < session.started_at:
            session.started_at = at
        if ev.event_type == "Ended":
            session.ended_at = at
            session.stopped_reason = ev.stopped_reason or "Local"
            session.power_w = 0.0
            if energy_wh is not None:
                session.meter_stop_wh = energy_wh
        session.last_seq_no = max(session.last_seq_no, seq_no)

    def _cdr(self, session: Session, *, final: bool = True) -> dict[str, Any]:
        """The charge detail record of an ended session, as the store keeps it
        (``final``: the session really ended; its cost breakdown is kept)."""
        assert session.ended_at is not None
        energy_wh = session.billed_energy_wh
        duration_s = max((session.ended_at - session.started_at).total_seconds(), 0.0)
        t = self.config.tariff
        exported_wh = max(session.exported_wh, 0.0)
        credit = t.export_per_kwh * exported_wh / 1000.0
        if is_plain(t):
            cost = (t.session_fee + t.energy_per_kwh * energy_wh / 1000.0
                    + t.time_per_hour * duration_s / 3600.0 - credit)
            if final:
                self.tariffs.note((session.station_id, session.transaction_id), CostBreakdown(
                    energy=t.energy_per_kwh * energy_wh / 1000.0,
                    time=t.time_per_hour * duration_s / 3600.0, session_fee=t.session_fee,
                    idle_fee=0.0, export_credit=credit, energy_kwh=energy_wh / 1000.0))
        else:  # bands, surcharge or idle fee: priced reading by reading
            parts = self._session_cost(session)
            cost = parts.total
            if final:
                self.tariffs.note((session.station_id, session.transaction_id), parts)
        return {"station_id": session.station_id, "transaction_id": session.transaction_id,
                "id_token": session.id_token, "started_at": iso(session.started_at),
                "ended_at": iso(session.ended_at), "duration_s": duration_s,
                "energy_wh": energy_wh, "cost": round(cost, 4), "currency": t.currency,
                "exported_wh": exported_wh, "export_credit": round(credit, 4)}

    def running_cost(self, station_id: str, transaction_id: str) -> float | None:
        """What an open session costs so far (its CDR if it ended now), or None."""
        session = self.sessions.get((station_id, transaction_id))
        if session is None or not session.is_open:
            return None
        # Energy so far, time plugged in until now.
        now = max(self.clock(), session.started_at)
        return float(self._cdr(replace(session, ended_at=now), final=False)["cost"])

    def _session_cost(self, session: Session) -> CostBreakdown:
        """A session's cost under a tariff that needs its readings over time (ToU bands,
        idle fee): the stored readings between the start and the last (or end) one."""
        assert session.ended_at is not None
        readings = readings_from_store(
            self.store.meter_values(session.station_id, session.transaction_id),
            ENERGY, WH_PER_UNIT)
        if session.meter_start_wh is not None:
            readings = [(session.started_at, session.meter_start_wh),
                        *[r for r in readings if r[0] > session.started_at]]
        stop = (session.meter_stop_wh if session.meter_stop_wh is not None
                else session.meter_last_wh)
        if stop is not None:
            end_at = session.ended_at if session.meter_stop_wh is not None else (
                session.meter_last_at or session.ended_at)
            readings = [*(r for r in readings if r[0] < end_at), (end_at, stop)]
        spec = self.stations.get(session.station_id)
        return session_cost(self.config.tariff, readings, started_at=session.started_at,
                            ended_at=session.ended_at,
                            exported_wh=max(session.exported_wh, 0.0),
                            site=None if spec is None else spec.site,
                            surcharged=session.surcharged)

    def load_session(self, station_id: str, transaction_id: str) -> Session | None:
        """A transaction as the store has it (ended ones leave memory), or None if unknown."""
        tx = self.store.transaction_state(station_id, transaction_id)
        return None if tx is None else self._session_from_store(tx)

    @staticmethod
    def _session_from_store(tx: dict[str, Any]) -> Session:
        def at(text: str | None) -> datetime | None:
            return parse_iso(text) if text else None

        started = at(tx["started_at"])
        assert started is not None
        return Session(
            transaction_id=tx["transaction_id"], station_id=tx["station_id"],
            evse_id=int(tx["evse_id"]), id_token=tx["id_token"], started_at=started,
            meter_start_wh=tx["meter_start_wh"], meter_last_wh=tx["meter_last_wh"],
            power_w=0.0 if tx["ended_at"] else (tx["power_w"] or 0.0),
            voltage_v=tx["voltage_v"], soc_percent=tx["soc_percent"],
            last_seq_no=int(tx["last_seq_no"]), ended_at=at(tx["ended_at"]),
            stopped_reason=tx["stopped_reason"], meter_last_at=at(tx["meter_last_at"]),
            meter_stop_wh=tx["meter_stop_wh"], export_start_wh=tx["export_start_wh"],
            export_last_wh=tx["export_last_wh"], charging_state=tx["charging_state"],
            limit_w=tx["limit_w"])

    def _tx_response(self, id_token: str | None, key: tuple[str, str], event_type: str
                     ) -> dict[str, Any]:
        response: dict[str, Any] = {}
        session = self.sessions.get(key)
        if event_type == "Started" and session is not None and (
                self.config.tariff.kind == "occupancy"):
            # The occupancy tariff's surcharge is decided at the start (this one counts).
            site = self.stations[key[0]].site
            in_use = sum(1 for s in self.sessions.values() if s.is_open
                         and self.stations[s.station_id].site == site)
            evses = sum(len(st.evses) for st in self.stations.values() if st.site == site)
            session.surcharged = surcharged_at_start(self.config.tariff, in_use, evses)
        if id_token is not None:
            response["id_token_info"] = self.token_info(
                id_token, starting=key if event_type == "Started" else None)
        return response

    def _apply_samples(self, session: Session, samples: tuple[ParsedSample, ...]) -> None:
        """Apply meter samples to the session's live values.

        Only samples at least as new as the newest seen update the session's
        live values (power, voltage, SoC, last register).
        """
        for _ts, measurand, phase, value, unit, at in samples:
            fresh = session.meter_last_at is None or at >= session.meter_last_at
            if measurand == ENERGY and phase is None:
                if fresh:
                    session.meter_last_wh = value * WH_PER_UNIT.get(unit or "Wh", 1.0)
                    session.meter_last_at = at
            elif not fresh:
                continue
            elif measurand == ENERGY_EXPORT and phase is None:
                session.export_last_wh = value * WH_PER_UNIT.get(unit or "Wh", 1.0)
                if session.export_start_wh is None:
                    session.export_start_wh = session.export_last_wh
            elif measurand == POWER and phase is None:
                session.power_w = value * _W_PER_UNIT.get(unit or "W", 1.0)
            elif measurand == POWER_EXPORT and phase is None and value > 0:
                # V2G (sent after the import sample): the session's power is negative.
                session.power_w = -value * _W_PER_UNIT.get(unit or "W", 1.0)
            elif measurand == VOLTAGE:
                session.voltage_v = value
            elif measurand == SOC:
                session.soc_percent = value

    def on_meter_values(self, station_id: str, evse_id: int,
                        meter_value: list[dict[str, Any]]) -> None:
        """MeterValues outside a transaction: check (InvalidMessageError) and persist them."""
        self.meter_samples(station_id, evse_id,
                           samples_2x(meter_value, self.clock(), self.config))

    def meter_samples(self, station_id: str, evse_id: int,
                      samples: tuple[ParsedSample, ...]) -> None:
        """Persist checked meter samples taken outside a transaction."""
        if samples:
            self.store.record_meter_values(station_id, evse_id, [s[:5] for s in samples])

    def note_ev_needs(self, station_id: str, needs: EVChargingNeeds) -> None:
        """An EV's charging needs (ISO 15118 via NotifyEVChargingNeeds): kept on the open
        session of its EVSE, where strategies see them. The control cycle is due at
        once (K15-K17: the CSMS answers needs with a schedule, not at its next turn)."""
        for session in self._open_on(station_id, needs.evse_id):
            old = session.ev_needs
            changed = old is None or replace(needs, received_at=old.received_at) != old
            session.ev_needs = needs
            # Only new needs make a cycle due: a station repeating itself
            # cannot make the CSMS re-plan twice a second.
            self.sessions_changed |= changed

    def note_charging_limit(self, station_id: str, evse_id: int, source: str,
                            schedules: tuple[LimitSchedule, ...]) -> None:
        """An external limit a station reports (NotifyChargingLimit, K12: from an EMS,
        the grid operator, ...) on an EVSE (0: the whole station, shared by the EVSEs
        with a session), as schedules evaluated at every control cycle until the
        station reports the limit cleared (:meth:`clear_charging_limit`); none: the
        source limits without a schedule, which caps nothing. Kept in the store (a
        restarted CSMS, or another process sharing the database, keeps to it).
        A station has at most :data:`MAX_LIMIT_SOURCES` of them (ValueError)."""
        key = (station_id, evse_id, source)
        if schedules and key not in self.external_limits and sum(
                1 for k in self.external_limits if k[0] == station_id) >= MAX_LIMIT_SOURCES:
            raise ValueError(f"at most {MAX_LIMIT_SOURCES} external limits per station")
        self.store.save_external_limit(
            station_id, evse_id, source,
            [sc.to_json() for sc in schedules] if schedules else None, iso(self.clock()))
        if schedules:
            self.external_limits[key] = schedules
        else:
            self.external_limits.pop(key, None)
        self.sessions_changed = True

    def clear_charging_limit(self, station_id: str, evse_id: int | None, source: str) -> None:
        """ClearedChargingLimit (K13): the source's limit on an EVSE (None: on all) ends."""
        gone = [k for k in self.external_limits if k[0] == station_id and k[2] == source
                and evse_id in (None, k[1])]
        self.store.clear_external_limits(station_id, evse_id, source)
        for key in gone:
            del self.external_limits[key]
        self.sessions_changed |= bool(gone)

    def _load_external_limits(self, station_id: str | None) -> None:
        for key in [k for k in self.external_limits if station_id in (None, k[0])]:
            del self.external_limits[key]
        for row in self.store.external_limits(station_id):
            try:
                schedules = tuple(LimitSchedule.from_json(d) for d in row["schedules"])
            except (KeyError, TypeError, ValueError) as exc:
                self._warn_once(("limit", row["station_id"]), "%s: stored external limit "
                                "not restored: %s", row["station_id"], exc)
                continue
            self.external_limits[(row["station_id"], row["evse_id"], row["source"])] = schedules

    def external_limit_w(self, station_id: str, evse_id: int, sharing: int = 1,
                         at: datetime | None = None) -> float | None:
        """The lowest external limit on an EVSE at ``at`` (now), in W: its own, or its
        share of the station's (``sharing``: the EVSEs with a session); None if none
        is in force."""
        if not self.external_limits:
            return None
        at = at or self.clock()
        spec = self.stations.get(station_id)
        phases = 3
        if spec is not None and evse_id:
            phases = next((e.phases for e in spec.evses if e.evse_id == evse_id), 3)
        volts = self.config.nominal_voltage_v
        out = None
        for (sid, e, _), schedules in self.external_limits.items():
            if sid != station_id or e not in (0, evse_id):
                continue
            for schedule in schedules:
                w = schedule.limit_w(at, volts=volts, phases=phases)
                if w is None:
                    continue
                w = w / max(sharing, 1) if e == 0 else w
                out = w if out is None else min(out, w)
        return out

    def evses_in_use(self, station_id: str) -> int:
        """How many of a station's EVSEs have a live session (they share its limits)."""
        return sum(1 for s in live_sessions(self.sessions.values())
                   if s.station_id == station_id)

    def _open_on(self, station_id: str, evse_id: int) -> list[Session]:
        """The open sessions on one EVSE (one, unless a ghost is about to be ended);
        unsorted, unlike :meth:`open_sessions`, which sorts every session."""
        return [s for s in self.sessions.values()
                if s.station_id == station_id and s.evse_id == evse_id and s.is_open]

    # -- control -------------------------------------------------------------
    def open_sessions(self) -> list[Session]:
        """Sessions not yet Ended, in a stable order."""
        return sorted((s for s in self.sessions.values() if s.is_open),
                      key=lambda s: (s.station_id, s.evse_id, s.transaction_id))

    def start_cycle(self) -> list[Session]:
        """Start a control cycle: it is no longer due (a session that starts or ends
        from now on makes the next one due). Returns the sessions it looks at, a
        snapshot a :meth:`control_view` can be built from off the event loop."""
        self.sessions_changed = False
        self._last_control = self.clock()
        return list(self.sessions.values())

    def control_view(self, now: datetime | None = None, *,
                     start_cycle: bool = False,
                     sessions: list[Session] | None = None) -> ControlView:
        """Build the read-only view the strategy sees.

        ``start_cycle``: this view starts a control cycle (see :meth:`start_cycle`).
        ``sessions``: the snapshot :meth:`start_cycle` returned (the view may then be
        built in steps, see :meth:`control_view_steps`, while the sessions change).
        """
        if start_cycle:
            sessions = self.start_cycle()
        steps = self.control_view_steps(now, sessions=sessions)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                view: ControlView = done.value
                return view

    def control_view_steps(self, now: datetime | None = None, *,
                           sessions: list[Session] | None = None, chunk: int = 100
                           ) -> Generator[None, None, ControlView]:
        """:meth:`control_view` in steps of ``chunk`` sessions: a generator that yields
        between steps and returns the view. ``csms serve`` lets the event loop serve
        the stations between steps: at 10,000 sessions the whole view takes ~50 ms,
        and built in a worker thread instead it would fight the loop for the
        interpreter (every socket write or database call the loop makes would
        wait up to a GIL switch interval for it)."""
        if sessions is None:
            sessions = list(self.sessions.values())
        by_site: dict[str, list[SessionView]] = {name: [] for name in self.site_limits}
        stations = self.stations
        ordered = sorted(live_sessions(sessions),
                         key=lambda s: (s.station_id, s.evse_id, s.transaction_id))
        for i, s in enumerate(ordered):
            if i and i % chunk == 0:
                yield
            spec = stations.get(s.station_id)
            evse = None
            if spec is not None:
                for e in spec.evses:
                    if e.evse_id == s.evse_id:
                        evse = e
                        break
            if spec is None or evse is None:
                continue  # not provisioned (only possible for a hand-built session)
            try:
                by_site[spec.site].append(self._session_view(s, spec, evse))
            except (ArithmeticError, ValueError) as exc:
                # One session's data must not stop everyone's control (a date at
                # the end of the calendar overflows its assumed departure).
                self._warn_once(("session", s.station_id, s.transaction_id),
                                "%s/%s left out of control: %s", s.station_id,
                                s.transaction_id, exc)
        inputs = self.inputs
        sites = tuple(SiteView(name=n, limit_kw=self.effective_site_limit_kw(n),
                               sessions=tuple(v),
                               pv_forecast_kw=inputs.site_pv_forecast_kw.get(n, ()))
                      for n, v in sorted(by_site.items()))
        return ControlView(now=now or self.clock(), sites=sites, feeder=inputs.feeder,
                           prices=inputs.prices, pv_forecast_kw=inputs.pv_forecast_kw,
                           export_prices=inputs.export_prices,
                           charge_efficiency=self.config.assumed_efficiency,
                           discharge_efficiency=self.config.assumed_discharge_efficiency,
                           v2g_peak_target_percent=self.config.v2g_peak_target_percent)

    def _session_view(self, s: Session, spec: StationSpec,
                      evse: EvseSpec | None = None) -> SessionView:
        """One session as a strategy sees it, with its needs: stated or assumed
        (``evse``: the session's EVSE of ``spec``, if the caller looked it up)."""
        if evse is None:
            evse = spec.evse(s.evse_id)
        site = self.sites.get(spec.site)
        needs = s.ev_needs
        departure = needs.departure_time if needs is not None else None
        wanted_wh = needs.energy_amount_wh if needs is not None else None
        stated = departure is not None or wanted_wh is not None
        if departure is None and site is not None:
            departure = s.started_at + timedelta(hours=site.default_dwell_h)
        if wanted_wh is None and site is not None:
            wanted_wh = site.default_energy_kwh * 1000.0
        ev_max_kw = None
        if needs is not None and needs.ev_max_power_w is not None:
            ev_max_kw = needs.ev_max_power_w / 1000.0
        elif needs is not None and needs.ev_max_current_a is not None:
            ev_max_kw = needs.ev_max_current_a * self.config.nominal_voltage_v * evse.phases / 1e3
        # Energy fed back (V2G) must be charged again, with the losses both ways:
        # exporting E took E / eta_discharge from the battery, which takes
        # E / (eta_discharge * eta_charge) from the grid to put back.
        net_wh = s.energy_wh - s.exported_wh / (
            self.config.assumed_efficiency * self.config.assumed_discharge_efficiency)
        remaining = None if wanted_wh is None else max(
            0.0, (wanted_wh / self.config.assumed_efficiency - net_wh) / 1000.0)
        limit = self.sent_limits_w.get((s.station_id, s.evse_id))
        v2x_kw, spare = self._v2x(s)
        max_w = evse.max_power_w
        if self.external_limits:
            external = self.external_limit_w(s.station_id, s.evse_id,
                                             self.evses_in_use(s.station_id))
            if external is not None:
                max_w = min(max_w, external)
        return SessionView(
            station_id=s.station_id, evse_id=s.evse_id, transaction_id=s.transaction_id,
            max_power_kw=max_w / 1000.0, power_kw=s.power_w / 1000.0,
            energy_kwh=s.energy_wh / 1000.0, voltage_v=s.voltage_v, soc_percent=s.soc_percent,
            started_at=s.started_at, departure=departure, energy_remaining_kwh=remaining,
            needs_stated=stated, ev_max_kw=ev_max_kw,
            limit_kw=None if limit is None else limit / 1000.0, phases=evse.phases,
            line=evse.line if evse.phases == 1 else None,
            v2x_max_discharge_kw=v2x_kw, v2x_spare_kwh=spare,
            charging_state=s.charging_state)

    @staticmethod
    def _v2x(s: Session) -> tuple[float | None, float | None]:
        """(max discharge kW, spare kWh above the minimum SoC now) of a V2X session.

        From ISO 15118-20 style needs: energies to the minimum, the target and
        full (at notification) and the target SoC give the capacity and the
        minimum SoC; the latest SoC reading then gives what can be spared.
        """
        n = s.ev_needs
        if n is None or not n.v2x_max_discharge_power_w:
            return None, None
        kw = n.v2x_max_discharge_power_w / 1000.0
        e_min, e_t, e_max = n.v2x_min_energy_wh, n.v2x_target_energy_wh, n.v2x_max_energy_wh
        t = n.v2x_target_soc_percent
        if e_min is None or e_t is None or e_max is None or t is None or t >= 100:
            return kw, None
        if s.soc_percent is None:
            return kw, None
        capacity_wh = (e_max - e_t) / (1.0 - t / 100.0)
        if capacity_wh <= 0:
            return kw, None
        min_soc = (1.0 - e_max / capacity_wh) + e_min / capacity_wh
        return kw, max(0.0, (s.soc_percent / 100.0 - min_soc) * capacity_wh / 1000.0)

    def effective_site_limit_kw(self, site: str) -> float | None:
        """A site's own import limit or the grid operator's, whichever is lower."""
        limits = [x for x in (self.site_limits.get(site), self.inputs.grid_limits_kw.get(site))
                  if x is not None]
        return min(limits) if limits else None

    def _input_changed(self) -> None:
        """An outside input changed what control would decide: control at once."""
        self.sessions_changed = True

    def control_due(self, now: datetime | None = None) -> bool:
        """True when the control cycle should run: its interval has passed on the
        CSMS's clock since the last cycle, or a session started or ended."""
        if self.sessions_changed or self._last_control is None:
            return True
        elapsed = ((now or self.clock()) - self._last_control).total_seconds()
        return elapsed >= self.config.control_interval_s - 1e-9

    def control_commands(self, view: ControlView | None = None,
                         limits: dict[EvseKey, float | None] | None = None
                         ) -> list[ProfileCommand]:
        """Run the strategy and return the limits that changed since last sent.

        With ``view`` (taken with ``control_view(start_cycle=True)``) and ``limits``
        (the strategy's result on it, computed elsewhere, e.g. in a worker thread
        while the connections are served) only the last step runs: the limits are
        compared with what was sent, and a limit for an EVSE whose transaction is no
        longer the one in the view is dropped (the change made the next cycle due).
        """
        if limits is None:
            view = self.control_view(start_cycle=True)
            limits = self._run_strategy(view)
            viewed = None
        else:
            assert view is not None, "limits come with the view they were computed on"
            viewed = {(v.station_id, v.evse_id): v.transaction_id
                      for site in view.sites for v in site.sessions}
        tx_of = {(s.station_id, s.evse_id): s.transaction_id
                 for s in live_sessions(self.sessions.values())}
        commands: list[ProfileCommand] = []
        for key, limit_kw in sorted(limits.items()):
            if limit_kw is None or key not in tx_of:
                continue  # the station's own maximum applies
            if viewed is not None and viewed.get(key) != tx_of[key]:
                continue  # another transaction now: the next cycle decides
            limit_w = limit_kw * 1000.0
            previous = self.sent_limits_w.get(key)
            # Small increases of a charging limit are not worth a message;
            # decreases always go out (or the site limit could be exceeded by
            # the deadband), and so does every change to a discharge setpoint
            # (-49 W to 0 must stop the discharge).
            if (previous is not None and previous >= 0
                    and 0 <= limit_w - previous < self.config.limit_deadband_w):
                continue
            station_id, evse_id = key
            phases = self.stations[station_id].evse(evse_id).phases
            if self.config.charging_rate_unit == "A":
                # Round down to 0.1 A (OCPP 1.6 allows one decimal): never above the share.
                amps = limit_w / (self.config.nominal_voltage_v * phases)
                value = math.floor(amps * 10 + 1e-9) / 10
            else:
                value = round(limit_w, 1)
            commands.append(ProfileCommand(station_id, evse_id, tx_of[key], value,
                                           self.config.charging_rate_unit, limit_w,
                                           phases=phases))
        return commands

    def _run_strategy(self, view: ControlView) -> dict[EvseKey, float | None]:
        """The strategy's limits; if it fails on the whole view, site by site, so one
        site's bad data leaves every other site controlled (a failing site keeps the
        limits its stations last accepted, and it is logged once)."""
        try:
            return self.strategy(view)
        except Exception as exc:
            self._warn_once(("strategy",), "strategy %s failed on the whole view (%s: %s); "
                            "controlling site by site", self.config.strategy,
                            type(exc).__name__, exc)
        limits: dict[EvseKey, float | None] = {}
        for site in view.sites:
            try:
                limits.update(self.strategy(replace(view, sites=(site,))))
            except Exception as exc:
                self._warn_once(("site", site.name), "site %s left out of control: %s: %s",
                                site.name, type(exc).__name__, exc)
        return limits

    def _warn_once(self, key: tuple[str, ...], message: str, *args: Any) -> None:
        """Log a control problem once per cause (the cycle runs every few seconds)."""
        if key in self._warned:
            return
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned.add(key)
        log.warning(message, *args, extra={"event": "control_degraded"})

    def profile_set(self, station_id: str) -> ProfileSet:
        """The profiles the CSMS believes installed on a station.

        After changing it, call :meth:`persist_profiles` so a restart finds it.
        """
        return self.profiles.setdefault(station_id, ProfileSet())

    def _has_tx_profile(self, station_id: str, transaction_id: str) -> bool:
        return any(p.purpose == "TxProfile" and p.transaction_id == transaction_id
                   for p in self.profile_set(station_id).profiles)

    def profiles_cleared(self, station_id: str) -> None:
        """After a station cleared profiles: persist, and forget the controller's
        limits whose TxProfile went with them (the next cycle sends them again)."""
        self.persist_profiles(station_id)
        for s in live_sessions(self.sessions.values()):
            if s.station_id == station_id and not self._has_tx_profile(station_id,
                                                                        s.transaction_id):
                self.sent_limits_w.pop((station_id, s.evse_id), None)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Write what happens inside in one store transaction (:meth:`Store.batch`); a
        station's installed profiles, rewritten whole on every change, are written
        once, at the end. The twin runs each simulation step in one batch."""
        if self._dirty_profiles is not None:
            yield
            return
        with self.store.batch():
            self._dirty_profiles = set()
            try:
                yield
            except BaseException:
                self._dirty_profiles = None  # the batch is rolled back
                raise
            dirty, self._dirty_profiles = self._dirty_profiles, None
            for station_id in sorted(dirty):
                self.persist_profiles(station_id)

    def persist_profiles(self, station_id: str) -> None:
        """Write a station's installed profiles to the store (replacing the old set)."""
        if self._dirty_profiles is not None:
            self._dirty_profiles.add(station_id)
            return
        self.store.save_installed_profiles(
            station_id, [profile_to_json(p) for p in self.profile_set(station_id).profiles])

    def _install_tx_limit(self, station_id: str, evse_id: int, transaction_id: str,
                          limit_w: float, at: datetime, profile_id: int = 0) -> None:
        self.profile_set(station_id).install(ChargingProfile(
            profile_id or self.next_profile_id(), evse_id, "TxProfile", 0, "Absolute", "W",
            (Period(0, limit_w),), start_schedule=at, transaction_id=transaction_id))
        self.persist_profiles(station_id)

    def effective_limit_w(self, station_id: str, evse_id: int, at: datetime | None = None
                          ) -> float | None:
        """The composite limit (W) the CSMS believes an EVSE has, from accepted profiles
        (by the rules the station follows: :mod:`evtwin.ocppj.smartcharging`)."""
        spec = self.station(station_id)
        evse = spec.evse(evse_id)
        here = [s for s in live_sessions(self.sessions.values())
                if s.station_id == station_id]
        tx = next((s for s in here if s.evse_id == evse_id), None)
        return self.profile_set(station_id).limit_at(
            at or self.clock(), evse_id=evse_id, unit="W", phases=evse.phases,
            evse_max=evse.max_power_w, transaction_id=tx.transaction_id if tx else None,
            tx_start=tx.started_at if tx else None,
            # A station-wide maximum is shared by the EVSEs with a session, as the
            # station shares it among those charging.
            sharing=len(here))

    def claim_profile_id(self, profile_id: int) -> None:
        """An id an operator chose: the CSMS's own ids continue after it."""
        if self.store.shared:
            self.store.raise_counter("charging_profile_id", max(profile_id, self._profile_floor))
        else:
            self._profile_ids = itertools.count(max(profile_id + 1, next(self._profile_ids)))

    def next_profile_id(self) -> int:
        """A fresh charging-profile id (deterministic per CSMS instance; from the
        database's counter when several processes share it)."""
        if self.store.shared:
            return self.store.next_counter("charging_profile_id", floor=self._profile_floor)
        return next(self._profile_ids)

    # -- several processes on one database (a shared store) --------------------
    def reload_station(self, station_id: str) -> None:
        """Take a station's state from the store (it may have been served by another
        process sharing the database since this one last saw it): its open sessions,
        installed profiles and the limits its EVSEs accepted."""
        evs_needs = {s.transaction_id: s.ev_needs for s in self.sessions.values()
                     if s.station_id == station_id}
        for key in [k for k in self.sessions if k[0] == station_id]:
            del self.sessions[key]
        for tx in self.store.open_transactions(station_id):
            session = self._session_from_store(tx)
            session.ev_needs = evs_needs.get(session.transaction_id)
            self.sessions[(station_id, session.transaction_id)] = session
        self._load_profiles(station_id)
        self._load_external_limits(station_id)
        self._restore_limits(station_id)
        self.sessions_changed = True

    def refresh_sessions(self) -> None:
        """Take every open session's state from the store (the controlling process of
        several sharing a database, before each control cycle). What only this process
        knew (an EV's stated needs) is kept."""
        needs = {k: s.ev_needs for k, s in self.sessions.items() if s.ev_needs is not None}
        fresh = {}
        for tx in self.store.open_transactions():
            session = self._session_from_store(tx)
            key = (session.station_id, session.transaction_id)
            session.ev_needs = needs.get(key)
            fresh[key] = session
        self.sessions = fresh
        # Profiles other processes installed on the stations they hold, and the
        # external limits those stations reported.
        self._load_profiles(None)
        self._load_external_limits(None)
        self._restore_limits(None)

    def _load_profiles(self, station_id: str | None) -> None:
        """Take the installed profiles of every station (or one) from the store."""
        if station_id is None:
            self.profiles = {}
        else:
            self.profiles[station_id] = ProfileSet()
        for sid, texts in self.store.installed_profiles(station_id).items():
            profiles = self.profile_set(sid)
            for text in texts:
                try:
                    profiles.install(profile_from_json(text))
                except (ProfileError, ValueError, KeyError, TypeError) as exc:
                    self._warn_once(("profile", sid), "%s: stored profile not restored: %s",
                                    sid, exc)

    def profile_sent(self, cmd: ProfileCommand, profile_id: int, status: str) -> None:
        """Record the station's answer to a SetChargingProfile."""
        if status == "Accepted":
            self.sent_limits_w[(cmd.station_id, cmd.evse_id)] = cmd.limit_w
            self._install_tx_limit(cmd.station_id, cmd.evse_id, cmd.transaction_id, cmd.limit_w,
                                   self.clock(), profile_id)
            session = self.sessions.get((cmd.station_id, cmd.transaction_id))
            if session is not None:
                session.limit_w = cmd.limit_w
        self.store.record_profile(cmd.station_id, cmd.evse_id, profile_id, "TxProfile", 0,
                                  cmd.limit, cmd.unit, iso(self.clock()), status,
                                  limit_w=cmd.limit_w, transaction_id=cmd.transaction_id)

    def next_transaction_id(self) -> str:
        """A new CSMS-assigned transaction id (OCPP 1.6 uses integers), persistent."""
        return str(self.store.next_counter("transaction_id"))
