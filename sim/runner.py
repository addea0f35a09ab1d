"""The co-simulation runner: one simpy clock drives agents, OCPP and the feeder.

Each control step, at simulated time ``t``:

1. discrete events (arrivals, departures) up to ``t`` run as simpy processes;
2. EV physics advance to ``t`` at the limit each station currently allows;
3. the feeder solves a power flow for ``t`` (households + EV charging);
4. stations send the OCPP traffic that is due and wait for every answer;
5. every ``control.interval_s`` the CSMS runs its strategy and sends
   SetChargingProfile to stations whose limit changed;
6. stations apply new limits from the next step on.

Time is virtual: the loop never sleeps; it moves on once every OCPP exchange
of the step is answered.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import numpy as np
import ocpp.messages
import pandas as pd
import simpy
from ocpp.exceptions import OCPPError
from websockets.asyncio.client import connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
)

from evtwin.agents import ChargingModel, SiteConfig, VirtualStation, behaviour_for
from evtwin.agents.ev import EV, VisitRecord
from evtwin.agents.exceptions import ProtocolError
from evtwin.agents.link import DirectLink, EndpointLink, StationLink
from evtwin.agents.pricing import stay
from evtwin.agents.protocol import PROFILE_COLUMNS, StationProtocol
from evtwin.csms import (
    CountingConnection,
    CSMSConfig,
    CSMSCore,
    CSMSServer,
    EvseSpec,
    SiteSpec,
    StationSpec,
    Store,
)
from evtwin.csms.direct import DirectShell
from evtwin.csms.exceptions import InputError
from evtwin.csms.feeder import FeederModel, needs_feeder  # also registers feeder_aware
from evtwin.csms.health import FailureModel, fit_failure_model
from evtwin.grid import (
    Feeder,
    GridLimits,
    base_load,
    load_buses,
    load_network,
    place_stations,
    supplied_buses,
)
from evtwin.transports import MemoryClosed, memory_pair

from .appusers import AppUsers, attach
from .csmslink import CSMSLink, LocalCSMS, ProcessCSMS
from .der import DerSet, Steps, build_der
from .exceptions import ExternalCSMSError, RunError, ScenarioError
from .geography import assign_home_buses, check_station_buses, stations_table, unserved_table
from .kpis import compute_kpis
from .maintenance import Operations
from .prices import export_price_steps, price_at, price_steps
from .roaming import Roaming
from .scenario import Scenario, behaviour_overrides
from .series import Spool, SpoolDir
from .sessions import given_evs, session_columns
from .tariff_config import csms_tariff, price_kpis

log = logging.getLogger("evtwin.sim")

ProgressFn = Callable[[int, int], None]
StationClient: TypeAlias = StationLink

#: sessions.csv's columns: one per field of a visit's record.
SESSION_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(VisitRecord))
#: OCPP version in a scenario -> its websocket subprotocol.
SUBPROTOCOLS: dict[str, str] = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}


@dataclass(frozen=True, slots=True)
class ExternalCSMS:
    """A CSMS that is not ours, for ``evtwin stations``.

    ``url`` is the websocket base (the station identity is appended);
    ``password`` enables HTTP Basic auth (security profiles 1/2) as
    ``identity:password``; ``ca_file`` verifies a ``wss://`` server;
    ``speed`` is simulated seconds per wall-clock second (1 = real time);
    ``cert_dir`` holds ``<station id>.pem`` and ``<station id>.key`` client
    certificates for mutual TLS (security profile 3). ``clock_offset`` is
    added to simulated time in every timestamp the stations send (and taken
    off the CSMS's): ``evtwin stations`` runs the scenario's start as now, so
    its visits keep their time of day in the results. ``open_timeout_s``
    bounds each websocket upgrade.

    Every failure to reach the CSMS is an :class:`ExternalCSMSError` naming
    the option, address or station (:meth:`check`, :meth:`open`).
    """

    url: str
    password: str | None = None
    ca_file: str | None = None
    speed: float = 1.0
    cert_dir: str | None = None
    clock_offset: timedelta = timedelta(0)
    open_timeout_s: float = 10.0

    def check(self) -> None:
        """The URL, ``--ca`` and ``--cert-dir`` before any connection is tried."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("ws", "wss"):
            use = (f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}{parts.path}"
                   if parts.scheme in ("http", "https") and parts.netloc
                   else "ws://HOST:PORT/PATH (wss:// with TLS)")
            raise ExternalCSMSError(f"--csms {self.url}: not a websocket URL: use {use}")
        try:
            port = parts.port
        except ValueError:
            raise ExternalCSMSError(f"--csms {self.url}: the port is not a number "
                                    "from 0 to 65535") from None
        if not parts.hostname or port == 0:
            raise ExternalCSMSError(f"--csms {self.url}: give a host and port, e.g. "
                                    f"{parts.scheme}://127.0.0.1:9000/ocpp")
        if self.ca_file is not None:
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except FileNotFoundError:
                raise ExternalCSMSError(f"--ca {self.ca_file}: file not found") from None
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ExternalCSMSError(f"--ca {self.ca_file}: not a PEM CA certificate "
                                        f"file ({exc})") from None
        if self.cert_dir is not None and not Path(self.cert_dir).is_dir():
            raise ExternalCSMSError(f"--cert-dir {self.cert_dir}: no such folder")

    def ssl_context(self, station_id: str) -> ssl.SSLContext | None:
        """The TLS context of one station (``wss://`` only)."""
        if not self.url.startswith("wss://"):
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_dir is not None:
            folder = Path(self.cert_dir)
            try:
                ctx.load_cert_chain(folder / f"{station_id}.pem", folder / f"{station_id}.key")
            except (OSError, ssl.SSLError) as exc:
                raise ExternalCSMSError(
                    f"--cert-dir {self.cert_dir}: cannot load {station_id}.pem and "
                    f"{station_id}.key: {getattr(exc, 'strerror', None) or exc}") from None
        return ctx

    def headers(self, station_id: str) -> dict[str, str]:
        """HTTP headers of one station's upgrade (Basic auth with a password)."""
        if self.password is None:
            return {}
        token = base64.b64encode(f"{station_id}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def open(self, station_id: str, subprotocol: str) -> Any:
        """One station's websocket to the CSMS; ExternalCSMSError on any failure."""
        url = f"{self.url.rstrip('/')}/{station_id}"
        try:
            return await connect(url, subprotocols=[subprotocol],  # type: ignore[list-item]
                                 compression="deflate", max_size=2**20,
                                 additional_headers=self.headers(station_id),
                                 ssl=self.ssl_context(station_id),
                                 open_timeout=self.open_timeout_s)
        except ExternalCSMSError:
            raise
        except InvalidStatus as exc:
            raise self.refused(station_id, exc.response.status_code) from None
        except ssl.SSLCertVerificationError as exc:
            raise ExternalCSMSError(
                f"CSMS at {self.url}: its TLS certificate is not trusted "
                f"({exc.verify_message}): give its CA with --ca") from None
        except ssl.SSLError as exc:
            raise ExternalCSMSError(f"CSMS at {self.url}: TLS handshake failed ({exc.reason}): "
                                    "is it a wss:// endpoint?") from None
        except TimeoutError:
            raise ExternalCSMSError(f"CSMS at {self.url}: no answer to the websocket upgrade "
                                    f"within {self.open_timeout_s:g} s") from None
        except (InvalidHandshake, InvalidMessage, EOFError) as exc:
            raise ExternalCSMSError(f"CSMS at {self.url}: not an OCPP websocket endpoint for "
                                    f"{subprotocol} ({exc})") from None
        except OSError as exc:
            parts = urlsplit(self.url)
            where = f"{parts.hostname} port {parts.port or (443 if parts.scheme == 'wss' else 80)}"
            if isinstance(exc, ConnectionRefusedError):
                why = "connection refused: is the CSMS running and listening there?"
            elif isinstance(exc, ConnectionResetError):
                why = (f"it closed the connection during the handshake: does it take "
                       f"{'wss:// (TLS)' if parts.scheme == 'wss' else 'ws://'} connections?")
            else:
                why = f"cannot connect: {exc.strerror or exc}"
            raise ExternalCSMSError(f"CSMS at {self.url} ({where}): {why}") from None

    def refused(self, station_id: str, status: int, more: int = 0) -> ExternalCSMSError:
        """The error for a station whose upgrade the CSMS answered with HTTP ``status``."""
        others = f" and {more} more" if more else ""
        hint = {404: "is it in the CSMS config? evtwin csms config-for writes one",
                401: "wrong or missing --password?",
                403: "not allowed: its credentials or certificate?"}.get(
                    status, "see the CSMS's log")
        return ExternalCSMSError(f"CSMS at {self.url} refused station {station_id}{others} "
                                 f"(HTTP {status}): {hint}", station_id=station_id,
                                 http_status=status)

    def probe(self, station_ids: list[str], protocol: str) -> None:
        """Open and close every station's websocket once, before a run (and its
        result folder) starts: one ExternalCSMSError line for whatever fails,
        the stations a CSMS refused with the same status counted together."""

        async def one(station_id: str, gate: asyncio.Semaphore) -> None:
            async with gate:
                ws = await self.open(station_id, SUBPROTOCOLS[protocol])
                await ws.close()

        async def main() -> None:
            if not station_ids:
                return
            # The first alone: a wrong URL, TLS or password fails once, not per station;
            # an unknown station is per station, so the others are tried and counted.
            failed: list[BaseException] = []
            try:
                await one(station_ids[0], asyncio.Semaphore(1))
            except ExternalCSMSError as exc:
                if exc.http_status != 404:
                    raise
                failed.append(exc)
            gate = asyncio.Semaphore(32)
            results = await asyncio.gather(*(one(s, gate) for s in station_ids[1:]),
                                           return_exceptions=True)
            failed += [r for r in results if isinstance(r, BaseException)]
            if not failed:
                return
            first = failed[0]
            if (isinstance(first, ExternalCSMSError) and first.http_status is not None
                    and first.station_id is not None
                    and all(isinstance(f, ExternalCSMSError)
                            and f.http_status == first.http_status for f in failed)):
                raise self.refused(first.station_id, first.http_status, more=len(failed) - 1)
            raise first

        asyncio.run(main())

    def clock_line(self, start: datetime) -> str:
        """One line saying how simulated time maps onto the wall clock."""
        def stamp(ts: datetime) -> str:
            return ts.strftime("%Y-%m-%d %H:%M") + (
                " UTC" if ts.utcoffset() == timedelta(0) else ts.strftime(" UTC%z"))
        seconds = round(self.clock_offset.total_seconds())
        sign, seconds = ("-" if seconds < 0 else "+"), abs(seconds)
        days, rest = divmod(seconds, 86400)
        hours, rest = divmod(rest, 3600)
        minutes, secs = divmod(rest, 60)
        offset = f"{sign}{days} d {hours:02d}:{minutes:02d}" + (f":{secs:02d}" if secs else "")
        return (f"simulated {stamp(start)} runs as "
                f"{stamp((start + self.clock_offset).astimezone(UTC))}: offset {offset} "
                "(timestamps sent to the CSMS; the result files keep simulated time)")


@dataclass
class RunResult:
    """Everything a run produced; ``kpis`` is deterministic for a seed."""

    scenario: Scenario
    kpis: dict[str, float]
    performance: dict[str, float]
    timeseries: pd.DataFrame
    station_power: Spool
    """Every station's mean power per step (kW), kept on disk: read it with
    :attr:`station_power_kw`, or write it with ``station_power.to_csv``."""
    sessions: pd.DataFrame
    transactions: list[dict[str, Any]] = field(default_factory=list)
    database: str = ":memory:"
    profiles: pd.DataFrame = field(default_factory=pd.DataFrame)
    external_csms: str | None = None
    """The URL of the CSMS the stations spoke to, when it was not evtwin's own."""
    stations: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Every station's site, feeder bus, EVSEs and phase connection."""
    loads: Spool | None = None
    """Every ``network`` load's P (MW) and Q (Mvar) per step as solved, on disk."""
    network: Any = None
    """The pandapower network as run (its stations and DER as loads; see ``loads``)."""
    load_phases: list[int] | None = None
    """Unbalanced feeder: each network load's phase (0-2 = L1-L3, -1 = all three)."""
    unserved: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Demand and unserved energy per site and per bus (see evtwin.sim.geography)."""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    """More tables by name, written as ``<name>.csv`` (faults: ``availability``,
    ``work_orders``)."""
    forecast: pd.DataFrame = field(default_factory=pd.DataFrame)
    """``[forecast]``: the CSMS's day-ahead forecasts per site and hour, replayed after
    the run, with what happened (see evtwin.sim.procurement); empty without it."""

    @property
    def station_power_kw(self) -> pd.DataFrame:
        """``t_s`` and one column per station: its mean power over each step (kW)."""
        return self.station_power.frame()


def clock_boundary(t_of_day_s: float, step_s: float, interval_s: float) -> bool:
    """True if a clock-aligned multiple of ``interval_s`` falls in (t - step, t]."""
    return (t_of_day_s // interval_s) > ((t_of_day_s - step_s) // interval_s)


def build_model(sc: Scenario) -> ChargingModel:
    """The mesa model (stations and EVs with their visits) for a scenario."""
    counts = sc.ev_counts()
    behaviours = {s.name: behaviour_for(s.kind, **behaviour_overrides(s)) for s in sc.sites}
    # Sessions from data: EVs of their own, after the drawn ones (which stay as they were).
    plan = given_evs(sc, {name: b.patience_min * 60.0 for name, b in behaviours.items()})
    sites = [SiteConfig(name=s.name, kind=s.kind, stations=s.stations,
                        evses_per_station=s.evses_per_station, evse_max_kw=s.evse_max_kw,
                        phases=s.phases, behaviour=behaviours[s.name],
                        ev_count=counts[s.name], bidirectional=s.bidirectional,
                        private=s.private, visitors_from=s.visitors_from,
                        visitor_share=s.visitor_share)
             for s in sc.sites]
    start_hour = sc.start.hour + sc.start.minute / 60.0 + sc.start.second / 3600.0
    model = ChargingModel(sites, seed=sc.seed, duration_s=sc.duration_s, start_hour=start_hour,
                          iso15118_share=sc.ev.iso15118_share, v2g_share=sc.ev.v2g_share,
                          min_soc=sc.ev.min_soc, start_weekday=sc.start.weekday(),
                          given=plan.evs or None)
    model.sessions_plan = plan  # for sessions.csv's columns
    if sc.timezone is not None:
        # Drivers keep to local clocks: a drawn 18 h arrival after a daylight-saving
        # change is an hour earlier or later after the start. Sessions from data keep
        # the instants their files give.
        from_data = {id(v) for evs in plan.evs.values() for g in evs for v in g.visits}
        for ev in model.evs:
            moved = [v if id(v) in from_data else replace(
                v, arrival_s=sc.seconds_at_clock(v.arrival_s),
                departure_s=sc.seconds_at_clock(v.arrival_s) + v.departure_s - v.arrival_s)
                for v in ev.visits]
            ev.visits = sorted((v for v in moved if v.arrival_s < sc.duration_s),
                               key=lambda v: v.arrival_s)
    if sc.weather is not None:  # a cold day's visits need more energy (sim.procurement)
        from .procurement import apply_weather
        apply_weather(model, sc)
    from .tariff_config import apply_price_plan  # drivers answer [tariff] (none: nothing)
    apply_price_plan(sc, model)
    return model


def build_feeder(sc: Scenario, n_stations: int, station_sites: list[str],
                 prices: Steps = ()) -> tuple[Feeder, DerSet]:
    """The feeder for a scenario, with its stations and distributed resources on buses.

    ``station_sites`` names each station's site (needed to place site PV and
    storage); ``prices`` set a price-dispatched battery's default thresholds.
    """
    buses: list[int] | None = None
    if all(s.buses is not None for s in sc.sites):
        buses = [b for s in sc.sites for b in (s.buses or [])]
    g = sc.grid
    net = load_network(g.network)
    if buses is not None:
        # Name the file and every bad field, not only the first bus the feeder refuses.
        check_station_buses(sc, net)
    else:
        buses = place_stations(net, n_stations)
    der = build_der(sc, buses, station_sites, supplied_buses(net),
                    prices or ((sc.start, 0.0),))
    return Feeder(
        net, n_stations=n_stations, station_buses=buses, engine=g.engine, der_buses=der.buses,
        base_profile=base_load(g.base_load_profile, net, sc.start, scale=g.base_load_scale,
                               noise=g.base_load_noise),
        limits=GridLimits(v_min_pu=g.v_min_pu, v_max_pu=g.v_max_pu,
                          line_loading_max_percent=g.line_loading_max_percent,
                          trafo_loading_max_percent=g.trafo_loading_max_percent,
                          vuf_max_percent=g.vuf_max_percent),
        unbalanced=g.phases == "unbalanced",
        station_phases=[s.phases for s in sc.sites for _ in range(s.stations)]
        if g.phases == "unbalanced" else None,
        phase_seed=sc.seed,
    ), der


def csms_config(sc: Scenario, model: ChargingModel,
                lines: list[int | None] | None = None) -> CSMSConfig:
    """Provision the CSMS with the scenario's stations, sites and tokens; ``lines``: the
    line (1-3) each station is on when single-phase on an unbalanced feeder."""
    lines = lines or [None] * len(model.stations)
    stations = tuple(StationSpec(st.station_id, st.site, tuple(
        EvseSpec(e.evse_id, e.max_power_w, e.phases, line if e.phases == 1 else None)
        for e in st.evses.values()))
        for st, line in zip(model.stations, lines, strict=True))
    return CSMSConfig(
        stations=stations,
        # What the CSMS assumes when an EV does not state its needs: a cautious
        # stay (the lower quartile of the site's dwell distribution, so most
        # drivers stay longer) and the median energy.
        sites=tuple(SiteSpec(s.name, s.limit_kw,
                             default_dwell_h=b.dwell_quantile_h(0.25),
                             default_energy_kwh=b.energy_median_kwh)
                    for s, b in ((s, behaviour_for(s.kind, **behaviour_overrides(s)))
                                 for s in sc.sites)),
        id_tokens=frozenset(ev.id_token for ev in model.evs),
        strategy=sc.control.strategy,
        control_interval_s=sc.control.interval_s,
        charging_rate_unit=sc.control.charging_rate_unit,
        v2g_peak_target_percent=sc.control.v2g_peak_target_percent,
        heartbeat_interval_s=sc.csms.heartbeat_interval_s,
        **({} if sc.tariff is None else {"tariff": csms_tariff(sc)}),
    )


class Twin:
    """One run of a scenario: build, run on virtual time, collect results.

    ``database`` is the CSMS's SQLite path (``":memory:"`` only when asked).
    """

    def __init__(self, scenario: Scenario, *, database: str | Path = ":memory:",
                 progress: ProgressFn | None = None, external: ExternalCSMS | None = None,
                 failure_model: FailureModel | None = None) -> None:
        self.sc = scenario
        self.external = external
        self.database = str(database)
        self.progress = progress
        self.env = simpy.Environment()
        self.model = build_model(scenario)
        self.prices = price_steps(scenario)
        self.export_prices = export_price_steps(scenario, self.prices)
        self.feeder, self.der = build_feeder(scenario, len(self.model.stations),
                                             [st.site for st in self.model.stations],
                                             self.prices)
        self.grid_rng = np.random.default_rng([scenario.seed, 1])
        # The households of the network as given (the feeder's net also holds the
        # stations and DER it added), as evtwin place draws them too.
        assign_home_buses(self.model, self.feeder.station_buses,
                          load_buses(load_network(scenario.grid.network)), scenario.seed)
        self.bus_of = dict(zip((st.station_id for st in self.model.stations),
                               self.feeder.station_buses, strict=True))
        #: Free EVSEs: one pool per shared site, one per EVSE of a private site.
        self.free: dict[str, simpy.Store] = {}
        self.loads: Spool | None = None  # every load's P and Q per step, once a run started
        self.core: CSMSCore | None = None  # our CSMS in this process, once a run has started
        self.csms: CSMSLink | None = None  # how the loop drives our CSMS (here or elsewhere)
        self.dr_limits_kw: dict[str, float] = {}  # grid-operator limits in force
        self.feeder_model: FeederModel | None = None  # the CSMS's feeder model (feeder_aware)
        self.station_by_id = {s.station_id: s for s in self.model.stations}
        for st in self.model.stations:  # the CSMS's ChangeAvailability: the pool follows
            st.on_availability = partial(self._availability_changed, st.station_id)
        self._datetimes: dict[float, datetime] = {}
        #: Faults and crews ([faults], [maintenance]); None: stations never fail.
        self.ops: Operations | None = (
            Operations(self, scenario.faults, scenario.maintenance)
            if scenario.faults is not None and scenario.faults.enabled else None)
        #: The trained failure model the CSMS predicts with (predictive maintenance).
        self.failure_model = failure_model
        self.pool_of: dict[tuple[str, int], str] = {}
        self.pool_members: dict[str, list[tuple[str, int]]] = {}
        self.site_kind: dict[str, str] = {}  # shared pools -> their site's kind
        self.in_use: set[tuple[str, int]] = set()
        self.drivers: dict[str, simpy.Process] = {}  # EV id -> its process while plugged
        #: How a station connects again after its connection dropped, and the task list
        #: its receive loop joins (websocket and memory transports).
        self._reopen: tuple[Callable[[VirtualStation], Awaitable[Any]],
                            list[asyncio.Task[Any]]] | None = None
        self.connections_dropped = 0
        #: Drivers who use the operator's app ([app]); None: nobody does.
        self.app: AppUsers | None = None
        if scenario.app is not None:
            if external is not None or scenario.run.csms_process:
                raise ScenarioError(scenario.name, [("app", "app users reserve through "
                                                    "the CSMS in the twin's process: not "
                                                    "with an external CSMS or "
                                                    "run.csms_process")])
            self.app = AppUsers(self, scenario.app, scenario.seed)
        #: Drivers of another network ([roaming]): an eMSP's tokens, authorized over OCPI.
        self.roaming: Roaming | None = None
        if scenario.roaming is not None:
            if external is not None or scenario.run.csms_process \
                    or scenario.run.transport == "direct":
                raise ScenarioError(scenario.name, [("roaming", "roaming drivers are "
                                                    "authorized over OCPI by the CSMS in the "
                                                    "twin's process: not with an external "
                                                    "CSMS, run.csms_process or the direct "
                                                    "transport")])
            self.roaming = Roaming(self, scenario.roaming, scenario.seed)
        #: Simulated seconds per wall-clock second with our own CSMS (``evtwin run
        #: --pace``), so a person can watch; None: as fast as it goes.
        self.pace: float | None = None
        #: Started (``await c.start(server)``) with our in-process CSMS's server before
        #: the stations connect, stopped (``await c.stop()``) when the run ends: the
        #: dashboard of ``evtwin run --dashboard``.
        self.companions: list[Any] = [] if self.roaming is None else [self.roaming]
        #: The feeder's power flow of the latest step: (simulated s, GridResult).
        self.last_grid: tuple[float, Any] | None = None

    # -- time -----------------------------------------------------------------
    def to_datetime(self, t_s: float) -> datetime:
        """Simulated seconds to an aware datetime (the instants of a step repeat: cached)."""
        ts = self._datetimes.get(t_s)
        if ts is None:
            if len(self._datetimes) > 4096:
                self._datetimes.clear()
            ts = self._datetimes[t_s] = self.sc.start + timedelta(seconds=t_s)
        return ts

    def to_seconds(self, ts: datetime) -> float:
        """An aware datetime to simulated seconds."""
        return (ts - self.sc.start).total_seconds()

    def now(self) -> datetime:
        """The simulated time now (the CSMS's clock in the twin)."""
        return self.to_datetime(self.env.now)

    # -- discrete events --------------------------------------------------------
    def _driver(self, ev: EV) -> Generator[simpy.Event, Any, None]:
        env = self.env
        for visit in ev.visits:
            if self.app is not None:  # an app user decides (and reserves) before leaving
                yield from self.app.before_arrival(ev, visit)
            if visit.arrival_s > env.now + 1e-6:
                yield env.timeout(visit.arrival_s - env.now)
            elif visit.arrival_s < env.now - 1e-6:
                # The previous visit (with its wait) ran past this one's arrival:
                # the car was not there to arrive. Recorded, but nothing requested.
                ev.begin_visit(visit)
                ev.end_visit("skipped", env.now)
                continue
            rec = ev.begin_visit(visit)
            own = visit.site is None  # at its own site (not visiting as a commuter)
            if own and ev.charger is not None:  # its demand is at its own charger
                rec.bus = self.bus_of[ev.charger[0]]
            pool = self._pool(ev) if own else visit.site
            store = self.free[pool]
            booking = self.app.take(ev.ev_id) if self.app is not None else None
            reserved = None
            if booking is not None and self.app is not None:
                if booking.no_show:  # they reserved, then did not come after all
                    ev.end_visit("skipped", env.now)
                    continue
                if booking.pool != pool:  # the app showed a better site
                    rec.site_switched_from = pool
                    pool, store = booking.pool, self.free[booking.pool]
                reserved = self.app.claim(booking)
            # Their reserved EVSE is theirs at once (it is in no pool meanwhile).
            request: Any = store.get() if reserved is None else env.event().succeed(reserved)
            if not request.triggered and self._down_in(pool):
                # Ports out of order here: a driver who sees that goes to another site
                # of the same kind with a free port, if there is one.
                other = self._detour(pool)
                if other is not None:
                    request.cancel()
                    pool, store = other, self.free[other]
                    request = store.get()
                    rec.fault = "rerouted"
            patience = min(visit.patience_s, visit.departure_s - env.now)
            if not request.triggered:
                rec.outcome = "waiting"
                result = yield request | env.timeout(patience)
                if request not in result:
                    request.cancel()
                    if self._down_in(pool):
                        rec.fault = "turned_away"  # a port out of order would have served
                    ev.end_visit("turned_away", env.now)
                    continue
            station_id, evse_id = request.value
            self.in_use.add((station_id, evse_id))
            station = self.station_by_id[station_id]
            rec.station_id, rec.evse_id, rec.plugged_s = station_id, evse_id, env.now
            rec.bus = self.bus_of[station_id]
            rec.transaction_id = station.plug(evse_id, ev, env.now)
            rec.outcome = "plugged"
            self.drivers[ev.ev_id] = self.env.active_process  # type: ignore[assignment]
            outcome = "served"
            try:
                yield from stay(env, ev, rec, visit.departure_s,
                                getattr(self.model, "idle_rule", None))
            except simpy.Interrupt:  # the EVSE failed: its session ended, the driver goes
                outcome, rec.fault = "interrupted", "interrupted"
            self.drivers.pop(ev.ev_id, None)
            station.unplug(evse_id, env.now)
            if outcome == "served" and rec.transaction_id in station.rejected:
                outcome = "rejected"
            ev.end_visit(outcome, env.now)
            self.in_use.discard((station_id, evse_id))
            if not station.down(station.evses[evse_id]):
                store.put((station_id, evse_id))

    # -- faults (see evtwin.sim.maintenance) ---------------------------------------------
    def _down_in(self, pool: str) -> bool:
        """Some port of this pool is out of order."""
        return any(self.station_by_id[sid].down(self.station_by_id[sid].evses[e])
                   for sid, e in self.pool_members.get(pool, ()))

    def _detour(self, pool: str) -> str | None:
        """Another shared pool of a site of the same kind with a free port (by name)."""
        kind = self.site_kind.get(pool)
        if kind is None:
            return None
        for name in sorted(self.site_kind):
            if name != pool and self.site_kind[name] == kind and self.free[name].items:
                return name
        return None

    def evses_down(self, station_id: str, evse_ids: list[int], ended: list[int]) -> None:
        """EVSEs went out of order: no driver gets them; drivers whose session the
        failure ended (``ended``) leave."""
        for e in evse_ids:
            key = (station_id, e)
            store = self.free[self.pool_of[key]]
            if key in store.items:
                store.items.remove(key)
        st = self.station_by_id[station_id]
        for e in ended:
            ev = st.evses[e].ev
            proc = self.drivers.get(ev.ev_id) if ev is not None else None
            if proc is not None and proc.is_alive:
                proc.interrupt("fault")

    def _availability_changed(self, station_id: str, evse_ids: list[int], out: bool) -> None:
        """The CSMS took EVSEs out of service (a session running there goes on) or
        gave them back (before the run's pools exist there is nothing to follow)."""
        evse_ids = [e for e in evse_ids if (station_id, e) in self.pool_of]
        if out:
            self.evses_down(station_id, evse_ids, [])
        else:
            self.evses_up(station_id, evse_ids)

    def evses_up(self, station_id: str, evse_ids: list[int]) -> None:
        """EVSEs work again: the free ones go back to their pool."""
        st = self.station_by_id[station_id]
        for e in evse_ids:
            key = (station_id, e)
            store = self.free[self.pool_of[key]]
            if key not in self.in_use and key not in store.items and not st.down(st.evses[e]) \
                    and not (self.app is not None and self.app.holds(key)):
                store.put(key)

    def station_lines(self) -> list[int | None]:
        """The line (1-3) of each single-phase station on an unbalanced feeder, else None."""
        f = self.feeder
        if not f.unbalanced:
            return [None] * f.n_stations
        phase = f.load_phases[f.n_households:f.n_households + f.n_stations]
        return [int(p) + 1 if p >= 0 else None for p in phase.tolist()]

    @staticmethod
    def _pool(ev: EV) -> str:
        """The key of the free-EVSE pool ``ev`` draws from."""
        return ev.site if ev.charger is None else f"{ev.charger[0]}#{ev.charger[1]}"

    def _setup_events(self) -> None:
        for site in self.sc.sites:
            if not site.private:
                self.site_kind[site.name] = site.kind
            for st in self.model.stations_at(site.name):
                for e in st.evses:
                    key = f"{st.station_id}#{e}" if site.private else site.name
                    self.free.setdefault(key, simpy.Store(self.env)).items.append(
                        (st.station_id, e))
                    self.pool_of[(st.station_id, e)] = key
                    self.pool_members.setdefault(key, []).append((st.station_id, e))
        for ev in self.model.evs:
            self.env.process(self._driver(ev))
        if self.ops is not None:
            self.ops.start(self.core.health if self.core is not None else None)
        for event in self.sc.demand_response:
            self.env.process(self._demand_response(event.site, event.start_h * 3600.0,
                                                   event.duration_h * 3600.0, event.limit_kw))

    def _demand_response(self, site: str, start_s: float, duration_s: float,
                         limit_kw: float) -> Generator[simpy.Event, Any, None]:
        """The grid operator's window: the CSMS gets an external constraint, then its release."""
        yield self.env.timeout(start_s)
        self.dr_limits_kw[site] = limit_kw
        if self.csms is not None:
            self.csms.inputs.set_grid_limit(site, limit_kw)
        yield self.env.timeout(duration_s)
        self.dr_limits_kw.pop(site, None)
        if self.csms is not None:
            self.csms.inputs.set_grid_limit(site, None)

    # -- the run ----------------------------------------------------------------------
    async def _connect(
        self, url: str, frames: dict[str, int] | None = None
    ) -> tuple[list[StationClient], list[asyncio.Task[Any]], list[Any]]:
        clients: list[StationClient] = []
        tasks: list[asyncio.Task[Any]] = []
        sockets: list[Any] = []
        subprotocol = SUBPROTOCOLS[self.sc.csms.protocol]
        ext = self.external

        async def open_(st: VirtualStation) -> Any:
            if ext is not None:  # every failure one line naming the CSMS or station
                ws = await ext.open(st.station_id, subprotocol)
            else:
                # Loopback to our own CSMS: skip permessage-deflate, it only costs
                # CPU here (the server still offers it to real stations).
                ws = await connect(f"{url.rstrip('/')}/{st.station_id}",
                                   subprotocols=[subprotocol],  # type: ignore[list-item]
                                   compression=None, max_size=2**20)
            sockets.append(ws)
            return ws if frames is None else CountingConnection(ws, frames)

        for st in self.model.stations:
            clients.append(self._endpoint_link(st, await open_(st), tasks))
        await asyncio.gather(*(c.boot() for c in clients))
        self._reopen = (open_, tasks)
        return clients, tasks, sockets

    async def _follow_the_air(self, clients: list[StationClient]) -> None:
        """A station whose modem failed drops its connection; repaired, it connects
        again (websocket and memory transports; direct calls have no connection)."""
        if self._reopen is None:
            return
        open_, tasks = self._reopen
        for link in clients:
            if not isinstance(link, EndpointLink):
                continue
            offline = link.station.offline
            if offline and link.connected:
                await link.drop()
                self.connections_dropped += 1
            elif not offline and not link.connected:
                tasks.append(link.resume(await open_(link.station)))

    def _protocol(self, st: VirtualStation) -> StationProtocol:
        to_datetime, to_seconds = self.to_datetime, self.to_seconds
        offset = self.external.clock_offset if self.external is not None else timedelta(0)
        if offset:  # an external CSMS on the wall clock: simulated time shifted onto it
            def to_datetime(t_s: float) -> datetime:
                return self.to_datetime(t_s) + offset

            def to_seconds(ts: datetime) -> float:
                return self.to_seconds(ts - offset)
        return StationProtocol(st, self.sc.csms.protocol, to_datetime=to_datetime,
                               to_seconds=to_seconds, now_s=lambda: float(self.env.now))

    def _endpoint_link(self, st: VirtualStation, conn: Any,
                       tasks: list[asyncio.Task[Any]]) -> StationClient:
        """A station's OCPP-J link on ``conn``, its receive loop started (in ``tasks``)."""
        link = EndpointLink(self._protocol(st), conn)
        tasks.append(asyncio.create_task(link.run()))
        return link

    async def _connect_memory(
        self, server: CSMSServer
    ) -> tuple[list[StationClient], list[asyncio.Task[Any]], list[Any]]:
        """Join every station to ``server`` by an in-memory pipe (``transport = "memory"``)."""
        clients: list[StationClient] = []
        tasks: list[asyncio.Task[Any]] = []
        pipes: list[Any] = []
        subprotocol = SUBPROTOCOLS[self.sc.csms.protocol]

        async def open_(st: VirtualStation) -> Any:
            station_end, csms_end = memory_pair(st.station_id, subprotocol)
            tasks.append(asyncio.create_task(
                server.serve_connection(st.station_id, subprotocol, csms_end)))
            pipes.append(station_end)
            return station_end

        for st in self.model.stations:
            clients.append(self._endpoint_link(st, await open_(st), tasks))
        await asyncio.gather(*(c.boot() for c in clients))
        self._reopen = (open_, tasks)
        return clients, tasks, pipes

    async def _connect_direct(self, server: CSMSServer) -> list[StationClient]:
        """Join every station to ``server``'s core by direct calls (``transport = "direct"``)."""
        links: list[StationClient] = []
        for st in self.model.stations:
            shell = DirectShell(st.station_id, server.core, self.sc.csms.protocol,
                                frames=server.frames)
            link = DirectLink(self._protocol(st), shell.handle)
            shell.peer = link.handle
            server.direct[st.station_id] = shell
            links.append(link)
        for link in links:
            await link.boot()
        return links

    def _needs_training(self) -> bool:
        """Predictive maintenance without a failure model yet: train one first."""
        m = self.sc.maintenance
        return (self.ops is not None and m is not None and m.policy == "predictive"
                and self.failure_model is None)

    async def run_async(self) -> RunResult:
        """Run the scenario to its end: on virtual time with our CSMS, or paced
        to the wall clock against an external one."""
        try:
            return await self._run_async()
        except ProtocolError as exc:  # e.g. a refused BootNotification
            raise RunError(f"OCPP exchange failed: {exc}") from exc

    async def _run_async(self) -> RunResult:
        # Validate in the event loop's thread: the executor hop costs more than
        # validating these small payloads.
        ocpp.messages.ASYNC_VALIDATION = False
        wall0 = time.perf_counter()
        if self.external is not None:
            frames = {"in": 0, "out": 0}
            clients, tasks, sockets = await self._connect(self.external.url, frames)
            try:
                series, power, end_s = await self._loop(clients, None, pace=True)
            finally:
                await self._close(tasks, sockets)
            wall = time.perf_counter() - wall0
            return self._results(series, power, [], frames, wall, end_s, clients)
        config = csms_config(self.sc, self.model, self.station_lines())
        if self.roaming is not None:  # the eMSP's tokens: unknown here, asked about
            config = replace(config, id_tokens=config.id_tokens - self.roaming.tokens)
        transport = self.sc.run.transport
        m = self.sc.maintenance
        if self._needs_training():
            # Its own event loop in a thread: a whole run of the history before this one.
            self.failure_model = await asyncio.to_thread(train_failure_model, self.sc)
        if self.ops is not None and m is not None and m.policy != "none" \
                and self.sc.run.csms_process:
            raise ScenarioError(self.sc.name, [("maintenance", "crews take the work orders "
                                                "of the CSMS in the twin's process: set "
                                                "run.csms_process = false")])
        link: CSMSLink
        if self.sc.run.csms_process:
            link = await ProcessCSMS.start(config, self.database, self.now())
        else:
            store = Store(self.database)
            try:
                self.core = CSMSCore(config, store, clock=self.now)
            except BaseException:
                store.close()
                raise
            self.core.health.model = self.failure_model
            server = CSMSServer(self.core, host="127.0.0.1", port=0)
            link = LocalCSMS(server)
            if self.app is not None:
                attach(self.app, server)
        started: list[Any] = []
        try:
            try:
                # The day-ahead signal, known for the whole run.
                link.inputs.set_prices(self.prices, self.export_prices)
                # PV behind each site's connection: the forecast the CSMS plans with.
                site_pv = self.der.site_forecasts(self.sc.start, self.sc.step_s)
                for site, steps in site_pv.items():
                    link.inputs.set_pv_forecast(steps, site=site)
                await link.sync(self.now())
            except InputError as exc:  # e.g. two price bands starting at the same hour
                raise ScenarioError(self.sc.name, [(exc.field, str(exc).split(": ", 1)[-1])]
                                    ) from None
            self.csms = link
            if isinstance(link, LocalCSMS):
                for companion in self.companions:
                    await companion.start(link.server)
                    started.append(companion)
            # feeder_aware hook: the CSMS's own sensitivity model of the feeder.
            if needs_feeder(self.sc.control.strategy):
                self.feeder_model = FeederModel.from_feeder(
                    self.feeder, [st.station_id for st in self.model.stations])
            tasks, sockets = [], []
            clients = []
            try:
                if isinstance(link, ProcessCSMS):
                    clients, tasks, sockets = await self._connect(link.url)
                elif transport == "memory":
                    clients, tasks, sockets = await self._connect_memory(link.server)
                elif transport == "direct":
                    clients = await self._connect_direct(link.server)
                else:
                    await link.server.start()
                    clients, tasks, sockets = await self._connect(link.server.url)
                series, power, end_s = await self._loop(clients, link, pace=False)
            finally:
                await self._close(tasks, sockets)
            wall = time.perf_counter() - wall0
            transactions = await link.finish()
        finally:
            for companion in reversed(started):
                await companion.stop()
            await link.close()  # also when the run fails: no open file, WAL or process left
        return self._results(series, power, transactions, link.frames, wall, end_s, clients)

    async def _each(self, exchanges: Iterable[Coroutine[Any, Any, None]]) -> None:
        """Run every station's exchange: concurrently over a connection; one after
        another on the direct transport, where each completes without waiting (no
        task per station and step)."""
        if self.sc.run.transport == "direct" and self.external is None:
            for exchange in exchanges:
                await exchange
        else:
            await asyncio.gather(*exchanges)

    @staticmethod
    async def _close(tasks: list[asyncio.Task[Any]], sockets: list[Any]) -> None:
        for t_ in tasks:
            t_.cancel()
        for ws in sockets:
            await ws.close()

    async def _events_until(self, t: float, clients: list[StationClient],
                            csms: CSMSLink | None) -> None:
        """Run the discrete events up to and including ``t``, each at its own time.

        A plug-in or departure is exchanged with the CSMS (StatusNotification,
        Authorize, TransactionEvent) at the event's simulated time, the clock
        held still until every answer is in; if sessions changed, the CSMS's
        control cycle runs right then, as a CSMS reacting to TransactionEvent
        would. So a session charges from its arrival, not from the next step,
        and results do not depend on the step size.
        """
        env = self.env
        while env.peek() <= t:
            env.step()
            if self.ops is not None:
                await self._follow_the_air(clients)
            if csms is not None:
                await csms.sync(self.now())
            if self.app is not None and self.app.pending:
                await self.app.exchange()  # ReserveNow for the reservations just asked for
            busy = [c for c in clients if c.station.events]
            if busy:
                await self._each(c.flush_events(float(env.now)) for c in busy)
            if csms is not None:
                await csms.react(self.now())
        if env.now < t:
            env.run(until=t)

    async def _loop(self, clients: list[StationClient], csms: CSMSLink | None, *,
                    pace: bool) -> tuple[Spool, Spool, float]:
        """The step loop (see the module docstring); returns the per-step series and
        the station powers (both spooled to disk as the run goes) and the end time."""
        sc = self.sc
        spools = SpoolDir()
        power = spools.spool("station_power_kw",
                             ["t_s", *(st.station_id for st in self.model.stations)])
        power.keep = spools
        # Every load's P and Q as solved, per step (with the network as run, an outside
        # power flow solves the same steps: evtwin export-pf).
        load_ids = [int(i) for i in self.feeder.net.load.index]
        self.loads = spools.spool("loads", ["t_s", *(f"p_mw_{i}" for i in load_ids),
                                            *(f"q_mvar_{i}" for i in load_ids)])
        self.loads.keep = spools
        series: Spool | None = None
        monitored = self.feeder.monitored_bus_rows
        speed = self.external.speed if self.external is not None else (self.pace or 1.0)
        loop_t0 = time.monotonic()
        try:
            self._setup_events()
            step = sc.step_s
            n_steps = int(sc.duration_s // step)
            hb_every = max(1, round(clients[0].heartbeat_interval_s / step)) if clients else 1
            start_of_day_s = (sc.start - sc.start.replace(hour=0, minute=0, second=0,
                                                           microsecond=0)).total_seconds()
            site_of = np.array([st.site for st in self.model.stations])
            at_site = {s.name: site_of == s.name for s in sc.sites}
            for k in range(n_steps + 1):
                # One store transaction per step for the CSMS (see CSMSCore.batch).
                async with (csms.step() if csms is not None else contextlib.nullcontext()):
                    t = float(k * step)
                    if pace or self.pace is not None:
                        # Wall-clock pacing for a CSMS that lives in real time.
                        await asyncio.sleep(max(0.0, loop_t0 + t / speed - time.monotonic()))
                    dr_at_step_start = dict(self.dr_limits_kw)
                    if k > 0:
                        await self._events_until(t, clients, csms)
                        self.model.step(t, step)
                    ev_w = np.array([sum(e.power_w for e in st.evses.values())
                                     for st in self.model.stations])
                    ev_kw = ev_w / 1000.0
                    site_ev_kw = {name: float(ev_kw[mask].sum()) for name, mask in at_site.items()}
                    step_start = self.to_datetime(max(t - step, 0.0))
                    price_now = price_at(self.prices, step_start)
                    # The import limit in force at each site's connection (batteries keep it).
                    connection_kw = {
                        s.name: min(x for x in (s.limit_kw, self.dr_limits_kw.get(s.name))
                                    if x is not None)
                        for s in sc.sites
                        if s.limit_kw is not None or s.name in self.dr_limits_kw
                    } if self.der.batteries else None
                    der = self.der.step(k, site_ev_kw, price_now, step / 3600.0, connection_kw)
                    # Household load follows local clocks, daylight-saving changes too.
                    res = self.feeder.solve(start_of_day_s + t + sc.clock_shift_s(t), ev_kw,
                                            self.grid_rng, der_p_kw=der.der_p_kw)
                    self.loads.append(np.concatenate(((t,), self.feeder.load_p_mw,
                                                      self.feeder.load_q_mvar)))
                    self.last_grid = (t, res)
                    if csms is not None and self.feeder_model is not None:
                        # feeder_aware hook: this power flow is the DSO measurement the CSMS sees.
                        csms.inputs.observe_feeder(
                            self.feeder_model.observe(res, ev_kw, self.now()))
                    for st, vm in zip(self.model.stations, res.station_vm_pu, strict=True):
                        st.voltage_v = float(vm) * 230.0
                    row: dict[str, Any] = {
                        "t_s": t, "ev_kw": float(ev_kw.sum()),
                        "base_kw": self.feeder.sum_household_p_kw,
                        "vm_min_pu": res.vm_min_pu, "vm_max_pu": res.vm_max_pu,
                        "line_loading_max_percent": res.line_loading_max_percent,
                        "trafo_loading_percent": res.trafo_loading_percent,
                        "evs_plugged": sum(1 for st in self.model.stations
                                           for e in st.evses.values() if e.ev is not None),
                        # The prices over the step that ends at t.
                        "price_per_kwh": price_now,
                        "export_price_per_kwh": price_at(self.export_prices, step_start),
                        "pv_kw": der.pv_kw, "storage_kw": der.storage_kw,
                    }
                    if res.bus_vm_phase_pu is not None:  # unbalanced: per phase
                        lowest = res.bus_vm_phase_pu[monitored].min(axis=0)
                        row.update({"vm_min_l1_pu": lowest[0], "vm_min_l2_pu": lowest[1],
                                    "vm_min_l3_pu": lowest[2],
                                    "vuf_max_percent": res.vuf_max_percent,
                                    "neutral_current_max_a": res.neutral_current_max_a})
                    for s in sc.sites:
                        here = ev_kw[at_site[s.name]]
                        row[f"site_{s.name}_kw"] = site_ev_kw[s.name]
                        # V2G: what the site's stations fed back (before netting at the site).
                        row[f"site_{s.name}_export_kw"] = float(-here[here < 0].sum())
                        pv_here = der.pv_kw_by_site.get(s.name, 0.0)
                        st_here = der.storage_kw_by_site.get(s.name, 0.0)
                        row[f"site_{s.name}_pv_kw"] = pv_here
                        row[f"site_{s.name}_storage_kw"] = st_here
                        # At the site's grid connection: EVs plus storage minus own PV.
                        row[f"site_{s.name}_net_kw"] = site_ev_kw[s.name] + st_here - pv_here
                        # The limit over the step: where a grid-operator window opened or
                        # closed inside it, the looser of the two ends.
                        ends = [min([x for x in (s.limit_kw, dr.get(s.name)) if x is not None],
                                    default=float("inf"))
                                for dr in (dr_at_step_start, self.dr_limits_kw)]
                        limit = max(ends)
                        row[f"site_{s.name}_limit_kw"] = limit if limit != float("inf") else float(
                            "nan")
                    if series is None:  # its columns are known once the first row is
                        series = spools.spool("timeseries", list(row))
                        series.keep = spools
                    series.append(list(row.values()))
                    power.append(np.concatenate(((t,), ev_kw)))
                    if csms is not None:
                        await csms.sync(self.now())
                    await self._each(c.flush(
                        t, sample=k > 0 and t % sc.csms.meter_interval_s == 0,
                        aligned=k == 0 or clock_boundary(start_of_day_s + t, step,
                                                         sc.csms.aligned_interval_s),
                        heartbeat=k > 0 and k % hb_every == 0) for c in clients)
                    if csms is not None:
                        await csms.control_if_due(self.now())
                    if self.progress is not None:
                        self.progress(k + 1, n_steps + 1)
                # Let the loop breathe once a step: on the direct transport nothing else
                # suspends, and Ctrl-C (a cancelled main task) would wait for the end.
                await asyncio.sleep(0)
            # Sessions still open at the end are integrated to the end and reported open.
            end_s = float(n_steps * step)
            for ev in self.model.evs:
                if ev.current is not None:
                    rec = ev.current
                    ev.end_visit("open" if rec.outcome == "plugged" else "waiting", None)
        except (ConnectionClosed, MemoryClosed) as exc:
            raise RunError(f"a station's connection to the CSMS closed: {exc}") from exc
        except ProtocolError as exc:
            raise RunError(f"OCPP exchange failed: {exc}") from exc
        except (OSError, TimeoutError, OCPPError) as exc:
            raise RunError(f"OCPP exchange failed: {exc!r}") from exc
        assert series is not None  # the loop ran at least step 0
        return series, power, end_s

    def run(self) -> RunResult:
        """Run synchronously (creates an event loop)."""
        results: list[RunResult] = []
        if self._needs_training():
            # Here, not in a thread of the run's loop: Ctrl-C stops it at once.
            self.failure_model = train_failure_model(self.sc)

        async def main() -> None:
            # The result is not the coroutine's: Python 3.11's asyncio.run formats
            # repr() of its finished main task when it restores the SIGINT handler,
            # and the repr of a RunResult (its data frames) took 0.4 s.
            results.append(await self.run_async())

        asyncio.run(main())
        return results[0]

    # -- results ------------------------------------------------------------------------
    def _results(self, series: Spool, power: Spool,
                 transactions: list[dict[str, Any]], frames: dict[str, int], wall_s: float,
                 end_s: float, clients: list[StationClient]) -> RunResult:
        sc = self.sc
        ts = series.frame()
        ts["evs_plugged"] = ts["evs_plugged"].astype(int)
        # In UTC, as every timestamp in the results (figures show the local clock).
        ts.insert(1, "time", [self.to_datetime(t).astimezone(UTC).isoformat()
                              for t in ts["t_s"]])
        # Columns given: a run without visits still writes sessions.csv with its header.
        sessions = pd.DataFrame([asdict(r) for ev in self.model.evs for r in ev.records],
                                columns=SESSION_COLUMNS)
        plan = getattr(self.model, "sessions_plan", None)
        if plan is not None and plan.evs:  # visits from a sessions file: say which, what assumed
            for col, values in session_columns(self.model.evs, plan).items():
                sessions[col] = values
            if "served_in_full" in sessions:
                sessions["served_in_full"] = sessions["served_in_full"].astype("boolean")
        for col in ("bus", "home_bus"):  # bus numbers, empty where there is none
            if col in sessions:
                sessions[col] = sessions[col].astype("Int64")

        kpis = compute_kpis(sc, ts, sessions, transactions, frames, storage_cycles=max(
            (b.equivalent_full_cycles for b in self.der.batteries), default=0.0),
            storage_discharged_kwh=sum(b.discharged_kwh for b in self.der.batteries))
        kpis |= price_kpis(sc, sessions, None if self.core is None else self.core.tariffs,
                           self.model, end_s)
        if plan is not None and plan.evs:
            kpis["sessions_outside_run"] = float(plan.outside)
        perf = {"wall_time_s": wall_s, "simulated_s": end_s,
                "speedup_vs_real_time": end_s / wall_s if wall_s > 0 else float("inf"),
                "steps": float(len(ts))}
        received = [p for c in clients for p in c.received_profiles]
        profiles = pd.DataFrame(received) if received else pd.DataFrame(columns=PROFILE_COLUMNS)
        if not profiles.empty:
            profiles = profiles.sort_values(["t_s", "station_id", "evse_id"], kind="stable")
        kpis["profiles_received"] = float(len(profiles))
        tables: dict[str, pd.DataFrame] = {}
        if self.app is not None:
            kpis.update(self.app.kpis(sessions))
            tables["reservations"] = self.app.table()
        if self.roaming is not None:
            kpis.update(self.roaming.kpis())
            tables.update(self.roaming.tables())
        if self.ops is not None:
            kpis.update(self.ops.kpis(end_s, sessions))
            tables["availability"] = self.ops.port_table(end_s)
            tables["work_orders"] = self.ops.work_order_table()
        if self.external is not None:
            # Billing happened in a CSMS we cannot see into.
            del kpis["energy_billed_kwh"]
        stations = stations_table(self.model, self.feeder.station_buses, self.station_lines())
        forecast = pd.DataFrame()
        if sc.forecast is not None:  # the CSMS's day-ahead forecasts and purchases, replayed
            from .procurement import forecast_run
            extra, forecast = forecast_run(sc, ts, transactions, dict(zip(
                stations["station_id"], stations["site"], strict=True)), self.der)
            kpis.update(extra)
        return RunResult(sc, kpis, perf, ts, power, sessions, transactions,
                         self.database if self.external is None else "", profiles,
                         None if self.external is None else self.external.url,
                         stations=stations, unserved=unserved_table(sessions, stations),
                         forecast=forecast, tables=tables,
                         loads=self.loads, network=self.feeder.net,
                         load_phases=self.feeder.load_phases.tolist()
                         if self.feeder.unbalanced else None)


def train_failure_model(sc: Scenario) -> FailureModel:
    """Predictive maintenance: the CSMS's failure model, trained on its own history.

    The history is the same network over the ``history_days`` before the run,
    under reactive maintenance, on a seed of its own: what the CSMS recorded
    there (warnings, silent stations, failures) is the training table
    (:meth:`StationHealth.training_table`), fitted by
    :func:`evtwin.csms.health.fit_failure_model`.
    """
    m = sc.maintenance
    assert m is not None
    history = sc.model_copy(update={
        "start": sc.start - timedelta(days=m.history_days),
        "duration_h": m.history_days * 24.0, "seed": sc.seed + 100_003,
        "maintenance": m.model_copy(update={"policy": "reactive"}),
        "forecast": None, "finance": None})
    twin = Twin(history)
    twin.run()
    assert twin.core is not None
    x, y = twin.core.health.training_table(m.horizon_days)
    try:
        return fit_failure_model(x, y, horizon_days=m.horizon_days, seed=sc.seed)
    except ValueError as exc:
        raise ScenarioError(sc.name, [("maintenance.history_days", str(exc))]) from None


def run_scenario(scenario: Scenario, *, database: str | Path = ":memory:",
                 progress: ProgressFn | None = None) -> RunResult:
    """Run one scenario and return its results (nothing written to disk but the DB)."""
    return Twin(scenario, database=database, progress=progress).run()


__all__ = ["RunResult", "Twin", "VirtualStation", "run_scenario", "train_failure_model"]
