"""Reservations between evtwin's CSMS and its virtual stations, over real websockets.

ReserveNow and CancelReservation in OCPP 1.6, 2.0.1 and 2.1 (every frame checked
against the specification's schemas by both endpoints): the EVSE goes Reserved,
only the reserving token starts there, the reservation is used by that token's
transaction, expiry frees the EVSE (2.x: ReservationStatusUpdate Expired; 1.6:
StatusNotification Available) and the CSMS's reservation table follows it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mesa
import numpy as np
import pytest
from websockets.asyncio.client import connect

from evtwin.agents import EV, Vehicle, VirtualStation, Visit
from evtwin.agents.link import EndpointLink
from evtwin.agents.protocol import StationProtocol
from evtwin.csms import CSMSConfig, CSMSCore, EvseSpec, StationSpec, Store
from evtwin.csms.auth import TokenRecord
from evtwin.csms.server import CSMSServer
from evtwin.csms.shell import ShellBase

START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}
VERSIONS = ["1.6", "2.0.1", "2.1"]


@dataclass
class Rig:
    """One CSMS and one virtual station (two EVSEs) connected over a websocket."""

    core: CSMSCore
    server: CSMSServer
    station: VirtualStation
    link: EndpointLink
    clock: list[float]
    model: mesa.Model

    @property
    def shell(self) -> ShellBase:
        return self.server.connections["CS1"]

    def at(self, t_s: float) -> datetime:
        return START + timedelta(seconds=t_s)

    def ev(self, token: str, ev_id: str = "EV1") -> EV:
        vehicle = Vehicle(capacity_kwh=60.0, max_power_kw=11.0, phases=3)
        visit = Visit(self.clock[0], self.clock[0] + 36_000.0, 0.3, 0.9, 900.0)
        ev = EV(self.model, ev_id, "site", vehicle, [visit], id_token=token)
        ev.begin_visit(visit)
        return ev

    async def settle(self, t_s: float | None = None) -> None:
        """Move the clock to ``t_s`` and exchange everything the station has to say."""
        if t_s is not None:
            self.clock[0] = t_s
        await self.link.flush_events(self.clock[0])

    def evse_status(self, evse_id: int) -> str:
        return self.core.status[("CS1", evse_id)]


@contextlib.asynccontextmanager
async def rig(version: str, tmp_path: Path, tokens: frozenset[str] = frozenset({"TOK1", "TOK2"}),
              records: tuple[TokenRecord, ...] = ()) -> AsyncIterator[Rig]:
    """A CSMS on 127.0.0.1 (a free port) and station CS1 connected to it, booted."""
    clock = [0.0]
    store = Store(str(tmp_path / "csms.sqlite"))
    config = CSMSConfig(stations=(StationSpec("CS1", "site", (EvseSpec(1, 11e3),
                                                              EvseSpec(2, 11e3))),),
                        id_tokens=tokens, tokens=records)
    core = CSMSCore(config, store, clock=lambda: START + timedelta(seconds=clock[0]))
    server = CSMSServer(core, host="127.0.0.1", port=0)
    await server.start()
    model = mesa.Model(rng=np.random.default_rng(0))
    station = VirtualStation(model, "CS1", "site", [11e3, 11e3])
    protocol = StationProtocol(station, version,
                               to_datetime=lambda s: START + timedelta(seconds=s),
                               to_seconds=lambda t: (t - START).total_seconds(),
                               now_s=lambda: clock[0])
    ws = await connect(f"{server.url.rstrip('/')}/CS1", subprotocols=[SUBPROTOCOL[version]])  # type: ignore[list-item]
    link = EndpointLink(protocol, ws, response_timeout_s=10.0)
    reader = asyncio.create_task(link.run())
    try:
        await link.boot()
        yield Rig(core, server, station, link, clock, model)
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        await ws.close()
        await server.stop()
        store.close()


def _messages(core: CSMSCore, action: str) -> list[dict[str, Any]]:
    return [json.loads(r["payload"]) if isinstance(r["payload"], str) else r["payload"]
            for r in core.store.station_messages("CS1", action)]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_reservation_is_held_for_its_token_and_used_by_it(version: str,
                                                            tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(version, tmp_path) as r:
            book = r.core.reservations
            book.requested(7, "CS1", 1, "TOK1", r.at(1800), r.at(0))
            answer = await r.shell.reserve_now(7, "TOK1", r.at(1800), evse_id=1)
            assert answer["status"] == "Accepted"
            book.answered(7, answer["status"], r.at(0))
            await r.settle(10)
            assert r.evse_status(1) == "Reserved"
            assert r.station.evses[1].status == "Reserved"
            # The same EVSE again, for another reservation: Occupied (it is held).
            assert (await r.shell.reserve_now(8, "TOK2", r.at(1800), evse_id=1)
                    )["status"] == "Occupied"
            # Someone else plugs in there: the station starts nothing for them.
            tx_other = r.station.plug(1, r.ev("TOK2", "EV2"), 60.0)
            await r.settle(60)
            assert tx_other in r.station.rejected
            assert r.core.open_sessions() == []
            r.station.unplug(1, 120.0)
            await r.settle(120)
            # The EVSE is held again for TOK1 once the intruder has left.
            assert r.evse_status(1) == "Reserved" and r.station.evses[1].ev is None
            assert book.by_id[7].status == "Accepted"
            # The token it is for plugs in: the transaction uses the reservation.
            r.station.plug(1, r.ev("TOK1"), 300.0)
            await r.settle(300)
            sessions = r.core.open_sessions()
            assert [s.id_token for s in sessions] == ["TOK1"]
            assert r.station.reservations == {} and r.station.reservations_used == 1
            assert book.by_id[7].status == "Used"
            assert book.by_id[7].transaction_id == sessions[0].transaction_id
            # The start said which reservation it used (StartTransaction reservationId,
            # TransactionEvent reservationId), as received by the CSMS.
            with sqlite3.connect(tmp_path / "csms.sqlite") as db:
                [(payload,)] = db.execute("SELECT payload FROM transaction_events WHERE "
                                          "event_type = 'Started'").fetchall()
            assert json.loads(payload)["reservationId"] == 7
            assert book.in_force(r.at(300)) == []

    asyncio.run(main())


@pytest.mark.parametrize("version", VERSIONS)
def test_an_unused_reservation_expires_and_frees_the_evse(version: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(version, tmp_path) as r:
            book = r.core.reservations
            book.requested(3, "CS1", None, "TOK1", r.at(600), r.at(0))
            answer = await r.shell.reserve_now(3, "TOK1", r.at(600))  # any EVSE
            book.answered(3, answer["status"], r.at(0))
            assert answer["status"] == "Accepted"
            await r.settle(5)
            assert book.by_id[3].evse_id == 1  # the station said which one it holds
            assert r.evse_status(1) == "Reserved"
            assert [x.reservation_id for x in book.in_force(r.at(5))] == [3]
            await r.settle(599)
            assert r.evse_status(1) == "Reserved"
            await r.settle(660)  # past the expiry: the station lets go
            assert r.evse_status(1) == "Available"
            assert r.station.reservations == {} and r.station.reservations_expired == 1
            assert book.by_id[3].status == "Expired"
            updates = _messages(r.core, "ReservationStatusUpdate")
            if version == "1.6":
                assert updates == []  # 1.6 says it only by the connector's status
            else:
                assert updates == [{"reservationId": 3, "reservationUpdateStatus": "Expired"}]

    asyncio.run(main())


@pytest.mark.parametrize("version", VERSIONS)
def test_a_cancelled_reservation_frees_the_evse(version: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(version, tmp_path) as r:
            assert (await r.shell.reserve_now(11, "TOK1", r.at(3600), evse_id=2)
                    )["status"] == "Accepted"
            await r.settle(1)
            assert r.evse_status(2) == "Reserved"
            assert (await r.shell.cancel_reservation(11))["status"] == "Accepted"
            await r.settle(2)
            assert r.evse_status(2) == "Available"
            assert (await r.shell.cancel_reservation(11))["status"] == "Rejected"
            # A faulted EVSE cannot be reserved.
            r.station.fail(2, "Connector", "ConnectorLockFailure", "Other", 3.0)
            await r.settle(3)
            assert (await r.shell.reserve_now(12, "TOK1", r.at(3600), evse_id=2)
                    )["status"] == "Faulted"

    asyncio.run(main())


@pytest.mark.parametrize("version", VERSIONS)
def test_a_group_reservation_admits_any_token_of_the_group(version: str,
                                                           tmp_path: Path) -> None:
    """Reserved for a fleet's group: a colleague's token (the CSMS's Authorize answer
    names its group) starts there, a token of no group does not."""
    async def main() -> None:
        records = (TokenRecord("FLEET-1", group="FLEET"), TokenRecord("FLEET-2", group="FLEET"))
        async with rig(version, tmp_path, records=records) as r:
            book = r.core.reservations
            book.requested(5, "CS1", 1, "FLEET-1", r.at(3600), r.at(0), "FLEET")
            answer = await r.shell.reserve_now(5, "FLEET-1", r.at(3600), evse_id=1,
                                               group_id_token="FLEET")
            book.answered(5, answer["status"], r.at(0))
            assert answer["status"] == "Accepted"
            await r.settle(10)
            stranger = r.station.plug(1, r.ev("TOK2", "EV2"), 20.0)
            await r.settle(20)
            assert stranger in r.station.rejected and r.core.open_sessions() == []
            r.station.unplug(1, 30.0)
            await r.settle(30)
            assert r.evse_status(1) == "Reserved" and book.by_id[5].status == "Accepted"
            r.station.plug(1, r.ev("FLEET-2"), 60.0)
            await r.settle(60)
            assert [s.id_token for s in r.core.open_sessions()] == ["FLEET-2"]
            assert r.station.reservations == {} and book.by_id[5].status == "Used"

    asyncio.run(main())


def test_a_remote_start_waits_for_the_ev_within_the_connection_timeout() -> None:
    from evtwin.agents.station import CONNECTION_TIMEOUT_S

    model = mesa.Model(rng=np.random.default_rng(0))
    st = VirtualStation(model, "CS1", "site", [11e3, 11e3])

    def ev(token: str) -> EV:
        visit = Visit(0.0, 36_000.0, 0.3, 0.9, 900.0)
        car = EV(model, token, "site", Vehicle(capacity_kwh=60.0, max_power_kw=11.0,
                                               phases=3), [visit], id_token=token)
        car.begin_visit(visit)
        return car

    assert st.remote_start("APP1", 1, 42, 0.0) == "Accepted"
    assert st.reserve(1, "TOK9", 600.0, 1, 0.0) == "Occupied"  # the remote start holds it
    st.plug(1, ev("CARD1"), 60.0)
    plug = st.events[-1].payload
    assert (plug["id_token"], plug["remote"], plug["remote_start_id"]) == ("APP1", True, 42)
    assert st.remote_start("APP2", 1, 43, 70.0) == "Rejected"  # a transaction runs there
    assert st.remote_start("APP2", 9, 44, 70.0) == "Rejected"  # no such EVSE
    # Too late: the EV that plugs in after the timeout starts with its own card.
    assert st.remote_start("APP3", 2, 45, 100.0) == "Accepted"
    st.plug(2, ev("CARD2"), 100.0 + CONNECTION_TIMEOUT_S + 1.0)
    assert st.events[-1].payload["id_token"] == "CARD2"
    assert "remote" not in st.events[-1].payload
    # Stopped remotely: the transaction ends, the EV stays plugged in.
    tx = st.evses[1].transaction_id
    assert tx is not None and st.remote_stop(tx, 500.0)
    assert st.evses[1].ev is not None and st.evses[1].transaction_id is None
    assert st.events[-1].payload["reason"] == "Remote"
    assert not st.remote_stop(tx, 501.0)


# ---------------------------------------------------------------- app users in the twin


def app_scenario(protocol: str, transport: str, **app: Any) -> Any:
    """Two public sites of three EVSEs each, 30 EVs: busy enough that app users reserve."""
    from evtwin.sim.scenario import parse_scenario

    return parse_scenario({
        "name": "app", "seed": 4, "start": "2026-06-01T06:00:00", "duration_h": 24,
        "step_s": 300, "grid": {"network": "kerber_dorfnetz", "engine": "pgm"},
        "csms": {"protocol": protocol, "meter_interval_s": 900, "heartbeat_interval_s": 900},
        "run": {"transport": transport}, "ev": {"count": 30},
        "sites": [{"name": "lot", "kind": "public", "stations": 1, "evses_per_station": 3,
                   "evse_max_kw": 22},
                  {"name": "mall", "kind": "public", "stations": 1, "evses_per_station": 3,
                   "evse_max_kw": 22}],
        "app": {"share": 0.6, "reserve_when_occupancy_above": 0.3, "no_show_share": 0.3,
                **app},
    })


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_app_users_reserve_in_the_twin_and_the_kpis_count_what_happened(
        version: str, tmp_path: Path) -> None:
    from evtwin.sim.runner import Twin

    twin = Twin(app_scenario(version, "websocket"), database=tmp_path / "csms.db")
    result = twin.run()
    k = result.kpis
    table = result.tables["reservations"]
    made = table[table["state"].isin(["reserved", "honoured", "expired"])]
    assert k["reservations_made"] == len(made) >= 4
    assert k["reservations_honoured"] >= 1 and k["reservations_expired"] >= 1
    assert k["reservations_honoured"] + k["reservations_expired"] + (
        made["state"] == "reserved").sum() == k["reservations_made"]
    # Every driver who did not come left their reservation to expire.
    assert set(made[made["no_show"]]["state"]) <= {"expired", "reserved"}
    assert k["app_no_shows"] == int(made["no_show"].sum())
    # The CSMS learned each outcome from the station over OCPP: used by the
    # reserving token's transaction, or expired (2.x ReservationStatusUpdate,
    # 1.6 the connector Available at the expiry).
    assert k["csms_reservations_used"] == k["reservations_honoured"]
    assert k["csms_reservations_expired"] == k["reservations_expired"]
    sessions = result.sessions.dropna(subset=["plugged_s"])
    for b in made.itertuples():
        key = (b.station_id, int(b.evse_id))
        at_key = sessions[(sessions["station_id"] == key[0]) & (sessions["evse_id"] == key[1])]
        end = b.expiry_s if b.state == "expired" else b.arrival_s
        # Nobody else plugged in there while it was held for them.
        others = at_key[(at_key["ev_id"] != b.ev_id) & (at_key["plugged_s"] >= b.decided_s)
                        & (at_key["plugged_s"] < end)]
        assert others.empty, (b, others)
        if b.state == "honoured":  # they took the EVSE held for them on arrival
            mine = at_key[(at_key["ev_id"] == b.ev_id)
                          & ((at_key["plugged_s"] - b.arrival_s).abs() < 1e-6)]
            assert len(mine) == 1, b
            assert mine.iloc[0]["outcome"] in ("served", "open")


@pytest.mark.slow
def test_app_users_give_the_same_run_on_every_transport() -> None:
    from evtwin.sim.runner import Twin

    runs = [Twin(app_scenario("2.0.1", t)).run() for t in ("direct", "memory")]
    keys = [k for k in runs[0].kpis if "reserv" in k or k.startswith("app_")]
    assert len(keys) >= 8
    assert {k: runs[0].kpis[k] for k in keys} == {k: runs[1].kpis[k] for k in keys}
    assert runs[0].tables["reservations"].equals(runs[1].tables["reservations"])


def test_app_settings_are_checked_and_need_the_csms_in_process() -> None:
    from evtwin.sim.exceptions import ScenarioError
    from evtwin.sim.runner import Twin

    with pytest.raises(ScenarioError, match=r"app\.no_show_share"):
        app_scenario("2.0.1", "direct", no_show_share=1.5)
    sc = app_scenario("2.0.1", "websocket")
    sc = sc.model_copy(update={"run": sc.run.model_copy(update={"csms_process": True})})
    with pytest.raises(ScenarioError, match="app"):
        Twin(sc)


@pytest.mark.slow
def test_app_users_who_reserve_are_turned_away_less_than_the_others() -> None:
    """Three busy days: drivers who see free EVSEs and reserve them are turned away less
    often than those who just drive up; with everybody coming, every reservation is used."""
    from evtwin.sim.runner import Twin

    sc = app_scenario("2.0.1", "direct", share=0.5, no_show_share=0.0,
                      reserve_when_occupancy_above=0.0)
    result = Twin(sc.model_copy(update={"duration_h": 72})).run()
    k = result.kpis
    assert k["reservations_made"] >= 10
    assert k["reservations_honoured"] == k["reservations_made"] == k["csms_reservations_used"]
    assert k["reservations_expired"] == k["app_no_shows"] == 0
    assert k["app_site_switches"] >= 1  # the app sent some to the other site
    assert k["turned_away_percent_app"] < k["turned_away_percent_other"] - 10.0


# --------------------------------------------------------------------------- every path
def test_reservations_from_any_path_are_in_the_book_and_the_dashboard(tmp_path: Path) -> None:
    """ReserveNow and CancelReservation sent by anyone (here straight through the shell,
    as the operator API and OCPI do) are recorded; the dashboard shows what is in force
    (not an accepted one past its expiry) and a Reserved EVSE the book does not know."""
    from evtwin.csms.dashboard import Dashboard, new_user

    async def main() -> None:
        async with rig("2.0.1", tmp_path) as r:
            book = r.core.reservations
            assert (await r.shell.reserve_now(21, "TOK1", r.at(1800), evse_id=1)
                    )["status"] == "Accepted"
            assert book.by_id[21].status == "Accepted" and book.by_id[21].station_id == "CS1"
            assert (await r.shell.reserve_now(22, "TOK2", r.at(1800), evse_id=1)
                    )["status"] == "Occupied"
            assert book.by_id[22].status == "Occupied" and book.by_id[22].ended_at is not None
            await r.settle(10)
            dash = Dashboard(r.server, users=[new_user("ada")[0]])
            shown = dash.snapshot()["reservations"]
            assert [(x["reservation_id"], x["evse_id"], x["status"]) for x in shown] == [
                (21, 1, "Accepted")]
            assert shown[0]["id_token"].startswith("pid-")  # never the raw token
            # A reservation the book does not know (made before a restart): by its status.
            r.core.on_status("CS1", 2, "Reserved", "2026-06-01T08:00:20Z")
            shown = dash.snapshot()["reservations"]
            assert {"station_id": "CS1", "evse_id": 2, "status": "Reserved"} in shown
            # An accepted one whose expiry passed (the station said nothing yet): no longer
            # in force; only what the station's status says is shown.
            r.clock[0] = 1900.0
            assert [(x.get("reservation_id"), x["evse_id"], x["status"])
                    for x in dash.snapshot()["reservations"]] == [
                (None, 1, "Reserved"), (None, 2, "Reserved")]
            r.clock[0] = 20.0
            # A cancellation through the shell ends it in the book.
            assert (await r.shell.cancel_reservation(21))["status"] == "Accepted"
            assert book.by_id[21].status == "Cancelled"
            assert (await r.shell.cancel_reservation(21))["status"] == "Rejected"
            assert book.by_id[21].status == "Cancelled"
            assert book.in_force(r.at(30)) == []

    asyncio.run(main())


def test_the_book_drops_ended_reservations_after_a_day_and_keeps_counting_them() -> None:
    from evtwin.csms.reservations import ReservationBook

    book = ReservationBook()
    t0 = START
    for i in range(50):
        book.requested(i, f"CS{i % 5}", 1, f"T{i}", t0 + timedelta(minutes=15), t0)
        book.answered(i, "Accepted", t0)
        book.on_status(f"CS{i % 5}", 1, "Available", t0 + timedelta(minutes=20))  # expired
    book.requested(100, "CS0", 2, "LIVE", t0 + timedelta(days=3), t0)
    book.answered(100, "Accepted", t0)
    assert book.counts() == {"Expired": 50, "Accepted": 1}
    # Indexed by station: a station's status or start looks at its own reservations only.
    assert len(book._station("CS0")) == 1 and book._station("CS3") == []
    assert book.holding("CS0", 2, t0 + timedelta(hours=1)) is book.by_id[100]
    later = t0 + timedelta(days=1, hours=1)
    book.requested(101, "CS1", 1, "NEW", later + timedelta(minutes=15), later)
    assert set(book.by_id) == {100, 101}  # the ended ones are gone, those in force stay
    assert book.counts() == {"Expired": 50, "Accepted": 1, "Requested": 1}
    assert book.of_token("T3") == []


def test_a_failed_reserve_now_refuses_the_booking_and_gives_the_evse_back() -> None:
    """An app user's ReserveNow that ends in a CALLERROR, a bad answer, a timeout or a
    closed link refuses that booking (the run goes on) and the EVSE returns to its pool;
    the CSMS's book says Failed."""
    from types import SimpleNamespace

    import simpy

    from evtwin.csms.direct import DirectShell
    from evtwin.csms.shell import CallFailed, InvalidCallResult
    from evtwin.sim.appusers import AppUsers, Booking, attach
    from evtwin.sim.scenario import AppSettings

    config = CSMSConfig(stations=(StationSpec("CS1", "site", (EvseSpec(1, 11e3),)),),
                        id_tokens=frozenset({"TOK1"}))
    core = CSMSCore(config, Store(":memory:"), clock=lambda: START)
    shell = DirectShell("CS1", core, "2.0.1")
    env = simpy.Environment()
    pool = simpy.Store(env)
    station = SimpleNamespace(evses={1: object()}, down=lambda evse: False)
    twin = SimpleNamespace(env=env, model=SimpleNamespace(evs=[SimpleNamespace(
        ev_id="EV1", id_token="TOK1")]), in_use=set(), free={"site": pool},
        pool_of={("CS1", 1): "site"}, station_by_id={"CS1": station})
    app = AppUsers(twin, AppSettings(share=1.0), seed=1)
    attach(app, SimpleNamespace(core=core, connections={}, direct={"CS1": shell}))
    for exc, said in ((CallFailed("ReserveNow", "InternalError", "boom"), "Error"),
                      (InvalidCallResult("ReserveNow", "FormatViolation", "bad"), "Error"),
                      (TimeoutError(), "Offline"), (ConnectionError("link closed"), "Offline")):
        def peer(request: Any, exc: BaseException = exc) -> Any:
            raise exc

        shell.peer = peer
        booking = Booking("EV1", "site", "site", 0.0, 600.0, state="requested",
                          station_id="CS1", evse_id=1)
        app.bookings.append(booking)
        app.pending.append(booking)
        asyncio.run(app.exchange())  # no exception leaves it
        assert (booking.state, booking.station_status) == ("refused", said), exc
        assert pool.items == [("CS1", 1)]
        pool.items.clear()
    assert set(core.reservations.counts()) == {"Failed"}
    assert core.reservations.counts()["Failed"] == 4


def test_a_reservation_id_in_force_at_one_station_is_refused_at_another() -> None:
    from datetime import UTC, datetime, timedelta

    from evtwin.csms.reservations import ReservationBook

    book = ReservationBook()
    now = datetime(2026, 6, 1, 8, tzinfo=UTC)
    book.requested(7, "CS1", 1, "ALICE", now + timedelta(minutes=15), now)
    book.answered(7, "Accepted", now)
    with pytest.raises(ValueError, match="in force at station CS1"):
        book.requested(7, "CS2", 1, "BOB", now + timedelta(minutes=15), now)
    assert [r.id_token for r in book.in_force(now)] == ["ALICE"]
    # The same station may replace its own reservation (OCPP ReserveNow with its id).
    book.requested(7, "CS1", 2, "ALICE", now + timedelta(minutes=30), now)
    assert book.by_id[7].evse_id == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_change_availability_takes_an_evse_out_and_back(version: str, tmp_path: Path) -> None:
    """ChangeAvailability (what the dashboard's admin sends): a free EVSE goes
    Unavailable at once and cannot be reserved; one with a session is Scheduled and
    goes Unavailable when the EV leaves; Operative brings both back; the twin's pool
    is told both ways; an unknown EVSE is Rejected."""
    async def main() -> None:
        async with rig(version, tmp_path) as r:
            told: list[tuple[list[int], bool]] = []
            r.station.on_availability = lambda evses, out: told.append((evses, out))
            assert (await r.shell.change_availability(2, False))["status"] == "Accepted"
            await r.settle(1)
            assert r.evse_status(2) == "Unavailable" and r.station.down(r.station.evses[2])
            assert (await r.shell.reserve_now(21, "TOK1", r.at(3600), evse_id=2)
                    )["status"] == "Unavailable"
            r.station.plug(1, r.ev("TOK1"), 2.0)
            await r.settle(3)
            assert (await r.shell.change_availability(1, False))["status"] == "Scheduled"
            await r.settle(4)
            assert r.evse_status(1) != "Unavailable"  # the session goes on
            r.station.unplug(1, 5.0)
            await r.settle(6)
            assert r.evse_status(1) == "Unavailable"
            for evse_id in (1, 2):
                assert (await r.shell.change_availability(evse_id, True)
                        )["status"] == "Accepted"
            await r.settle(7)
            assert (r.evse_status(1), r.evse_status(2)) == ("Available", "Available")
            assert told == [([2], True), ([1], True), ([1], False), ([2], False)]
            assert r.station.set_availability(9, False, 8.0) == "Rejected"

    asyncio.run(main())


def test_the_twins_pool_follows_change_availability() -> None:
    from evtwin.sim.runner import Twin

    twin = Twin(app_scenario("2.0.1", "memory"))
    twin._setup_events()  # the pools of free EVSEs, as a run makes them
    st = twin.model.stations[0]
    key = (st.station_id, 1)
    pool = twin.free[twin.pool_of[key]]
    assert key in pool.items
    assert st.set_availability(1, False, 0.0) == "Accepted"
    assert key not in pool.items  # no driver gets it
    assert st.set_availability(1, True, 1.0) == "Accepted"
    assert key in pool.items
