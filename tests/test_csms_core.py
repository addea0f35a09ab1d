"""Tests for the CSMS core without networking: sessions, store, strategies, control."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evtwin.csms import (
    ConfigError,
    ControlView,
    CSMSConfig,
    CSMSCore,
    CSMSError,
    EvseSpec,
    SessionView,
    SiteSpec,
    SiteView,
    StationSpec,
    Store,
    UnknownStationError,
    UnknownStrategyError,
    get_strategy,
    iso,
    strategy_names,
)
from evtwin.csms.auth import TokenInfo
from evtwin.csms.core import ProfileCommand
from evtwin.csms.store import SCHEMA_VERSION
from evtwin.csms.strategies import equal_share, uncontrolled, water_fill

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ENERGY = "Energy.Active.Import.Register"
SITE = "site"
TOKEN = "TOKEN1"


class FakeClock:
    """A settable clock: the core reads time only from it."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_config(**kw: Any) -> CSMSConfig:
    stations = (
        StationSpec("CS1", SITE, (EvseSpec(1, 11_000.0), EvseSpec(2, 11_000.0))),
        StationSpec("CS2", SITE, (EvseSpec(1, 7_400.0, phases=1),)),
        StationSpec("CS3", "free", (EvseSpec(1, 22_000.0),)),
    )
    base: dict[str, Any] = {
        "stations": stations,
        "sites": (SiteSpec(SITE, limit_kw=20.0), SiteSpec("free")),
        "id_tokens": frozenset({TOKEN}),
        "strategy": "equal_share",
    }
    base.update(kw)
    return CSMSConfig(**base)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store(":memory:")
    yield s
    s.close()


@pytest.fixture
def core(store: Store, clock: FakeClock) -> CSMSCore:
    return CSMSCore(make_config(), store, clock=clock)


def sample(measurand: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    return {"value": value, "measurand": measurand, "unitOfMeasure": {"unit": unit}, **extra}


def tx_event(event_type: str, seq_no: int, tx_id: str, at: datetime, *,
             evse_id: int | None = 1, samples: list[dict[str, Any]] | None = None,
             id_token: str | None = None, stopped_reason: str | None = None,
             trigger: str = "MeterValuePeriodic") -> dict[str, Any]:
    """A TransactionEvent request in its wire (camelCase) form."""
    info: dict[str, Any] = {"transactionId": tx_id}
    if stopped_reason is not None:
        info["stoppedReason"] = stopped_reason
    payload: dict[str, Any] = {
        "eventType": event_type, "timestamp": iso(at), "triggerReason": trigger,
        "seqNo": seq_no, "transactionInfo": info,
    }
    if evse_id is not None:
        payload["evse"] = {"id": evse_id, "connectorId": 1}
    if id_token is not None:
        payload["idToken"] = {"idToken": id_token, "type": "ISO14443"}
    if samples:
        payload["meterValue"] = [{"timestamp": iso(at), "sampledValue": samples}]
    return payload


def start(core: CSMSCore, station: str, evse: int, tx: str, energy_wh: float = 0.0,
          at: datetime = T0) -> dict[str, Any]:
    return core.on_transaction_event(station, tx_event(
        "Started", 0, tx, at, evse_id=evse, id_token=TOKEN, trigger="Authorized",
        samples=[sample(ENERGY, energy_wh, "Wh", context="Transaction.Begin")]))


def run_session(core: CSMSCore) -> None:
    """Started at 1000 Wh, Updated at 3500 Wh / 7 kW, Ended at 5000 Wh."""
    start(core, "CS1", 1, "tx-1", 1_000.0)
    core.on_transaction_event("CS1", tx_event(
        "Updated", 1, "tx-1", T0 + timedelta(minutes=20), evse_id=None, samples=[
            sample(ENERGY, 3_500.0, "Wh"), sample("Power.Active.Import", 7_000.0, "W"),
            sample("Voltage", 231.5, "V"), sample("SoC", 55.0, "Percent", location="EV")]))
    core.on_transaction_event("CS1", tx_event(
        "Ended", 2, "tx-1", T0 + timedelta(minutes=40), stopped_reason="EVDisconnected",
        trigger="EVDeparted", samples=[sample(ENERGY, 5_000.0, "Wh", context="Transaction.End")]))


# --------------------------------------------------------------------------- sessions
def test_session_tracks_energy_power_voltage_soc(core: CSMSCore) -> None:
    start(core, "CS1", 1, "tx-1", 1_000.0)
    session = core.sessions[("CS1", "tx-1")]
    assert session.is_open and session.energy_wh == 0.0
    assert session.meter_start_wh == 1_000.0
    assert session.id_token == TOKEN
    core.on_transaction_event("CS1", tx_event("Updated", 1, "tx-1", T0 + timedelta(minutes=5),
                                              evse_id=None, samples=[
        sample(ENERGY, 3.5, "kWh"), sample("Power.Active.Import", 7.2, "kW"),
        sample("Voltage", 229.0, "V"), sample("SoC", 61.5, "Percent")]))
    assert session.energy_wh == pytest.approx(2_500.0)
    assert session.power_w == pytest.approx(7_200.0)
    assert session.voltage_v == 229.0
    assert session.soc_percent == 61.5
    assert session.evse_id == 1  # kept from Started when Updated has no evse


def test_ended_session_closes_with_its_energy(core: CSMSCore) -> None:
    run_session(core)
    # An ended session leaves memory; the store has it, and rebuilds it on demand.
    assert ("CS1", "tx-1") not in core.sessions
    session = core.load_session("CS1", "tx-1")
    assert session is not None and not session.is_open
    assert session.energy_wh == pytest.approx(4_000.0)
    assert session.power_w == 0.0
    assert session.stopped_reason == "EVDisconnected"
    assert session.ended_at == T0 + timedelta(minutes=40)
    assert core.open_sessions() == []


def test_per_phase_energy_does_not_move_the_register(core: CSMSCore) -> None:
    start(core, "CS1", 1, "tx-1", 1_000.0)
    core.on_transaction_event("CS1", tx_event("Updated", 1, "tx-1", T0, evse_id=None, samples=[
        sample(ENERGY, 99_000.0, "Wh", phase="L1")]))
    assert core.sessions[("CS1", "tx-1")].energy_wh == 0.0


def test_started_and_ended_set_sessions_changed(core: CSMSCore) -> None:
    assert not core.sessions_changed
    start(core, "CS1", 1, "tx-1")
    assert core.sessions_changed
    core.control_commands()
    assert not core.sessions_changed
    core.on_transaction_event("CS1", tx_event("Updated", 1, "tx-1", T0))
    assert not core.sessions_changed
    core.on_transaction_event("CS1", tx_event("Ended", 2, "tx-1", T0))
    assert core.sessions_changed


def test_transaction_event_answers_id_token_info(core: CSMSCore) -> None:
    assert start(core, "CS1", 1, "tx-1") == {"id_token_info": TokenInfo("Accepted")}
    r = core.on_transaction_event("CS1", tx_event("Started", 0, "tx-2", T0, evse_id=2,
                                                  id_token="STRANGER"))
    assert r == {"id_token_info": TokenInfo("Invalid")}
    assert core.on_transaction_event("CS1", tx_event("Updated", 1, "tx-1", T0)) == {}


def test_authorize_against_token_list(core: CSMSCore) -> None:
    assert core.authorize(TOKEN) == "Accepted"
    assert core.authorize("TOKEN2") == "Invalid"
    assert core.authorize("") == "Invalid"


def test_unknown_station(core: CSMSCore) -> None:
    assert core.knows("CS1")
    assert not core.knows("CS9")
    with pytest.raises(UnknownStationError) as info:
        core.station("CS9")
    assert info.value.station_id == "CS9"
    assert isinstance(info.value, CSMSError)
    with pytest.raises(UnknownStationError):
        core.on_boot("CS9", "vendor", "model")
    assert "CS9" not in core.booted


def test_boot_accepts_provisioned_station(core: CSMSCore, clock: FakeClock) -> None:
    clock.now = T0 + timedelta(hours=3)
    r = core.on_boot("CS1", "evtwin", "virtual")
    assert r == {"status": "Accepted", "current_time": iso(clock.now),
                 "interval": core.config.heartbeat_interval_s}
    assert "CS1" in core.booted
    assert core.on_heartbeat("CS1") == iso(clock.now)


@pytest.mark.parametrize(("station", "evse"), [("CS1", 9), ("CS9", 1)])
def test_unprovisioned_evse_does_not_break_the_control_cycle(
    core: CSMSCore, station: str, evse: int,
) -> None:
    start(core, "CS1", 1, "tx-ok")
    with contextlib.suppress(CSMSError):  # rejecting the event is fine too
        start(core, station, evse, "tx-bad")
    commands = core.control_commands()
    assert [c.transaction_id for c in commands] == ["tx-ok"]


# --------------------------------------------------------------------------- store
def test_sessions_persist_across_reopen(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "csms.sqlite"
    store = Store(path)
    core = CSMSCore(make_config(), store, clock=clock)
    run_session(core)
    store.close()

    reopened = Store(path)
    try:
        rows = reopened.transactions()
        assert len(rows) == 1
        row = rows[0]
        assert row["transaction_id"] == "tx-1" and row["station_id"] == "CS1"
        assert row["evse_id"] == 1
        assert row["id_token"] == TOKEN
        assert row["meter_start_wh"] == 1_000.0
        assert row["meter_stop_wh"] == 5_000.0
        assert row["energy_wh"] == pytest.approx(4_000.0)
        assert row["started_at"] == iso(T0)
        assert row["ended_at"] == iso(T0 + timedelta(minutes=40))
        assert row["stopped_reason"] == "EVDisconnected"
        assert row["last_seq_no"] == 2
        assert reopened.count("transaction_events") == 3
        assert reopened.count("stations") == len(core.config.stations)
        assert reopened.schema_version == SCHEMA_VERSION
    finally:
        reopened.close()


def test_store_file_is_wal_with_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "csms.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


def test_a_version_2_database_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    from evtwin.csms.store import _MIGRATIONS

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(_MIGRATIONS[1] + _MIGRATIONS[2] + "PRAGMA user_version=2;")
    db.execute("INSERT INTO charging_profiles VALUES ('CS1', 1, 7, 'TxProfile', 0, 11000, "
               "'W', '2026-06-01T12:00:00Z', 'Accepted', 11000)")
    db.commit()
    db.close()
    store = Store(path)
    try:
        assert store.schema_version == SCHEMA_VERSION >= 7
        # v7: the pseudonymisation key and the privacy audit log.
        assert store.count("privacy_key") == store.count("privacy_audit") == 0
        assert store.max_profile_id() == 7
        assert store.installed_profiles() == {}
        store.save_installed_profiles("CS1", ["{}"])
        assert store.count("installed_profiles") == 1
        # v5: the messages stations send for the record.
        first = store.record_station_message("CS1", "NotifyEvent", "2026-06-01T12:00:00Z",
                                             {"seqNo": 0})
        assert [(m["id"], m["payload"]) for m in store.station_messages("CS1")] == [
            (first, {"seqNo": 0})]
        # v6: the device model as reported, and local list versions.
        row = {"component": "OCPPCommCtrlr", "variable": "HeartbeatInterval", "value": "60",
               "mutability": "ReadWrite"}
        store.record_variables("CS1", [row], source="NotifyReport", at="t1")
        store.record_variables("CS1", [{**row, "value": "30", "mutability": None}],
                               source="SetVariables", at="t2")
        [kept] = store.variables("CS1", "OCPPCommCtrlr")
        assert (kept["value"], kept["mutability"], kept["source"]) == (
            "30", "ReadWrite", "SetVariables")
        assert store.local_list_version("CS1") == 0
        store.record_local_list("CS1", 3, "t3")
        assert store.local_list_version("CS1") == 3
    finally:
        store.close()


def test_a_v3_database_keeps_its_open_sessions_and_a_failed_migration_changes_nothing(
        tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    import evtwin.csms.store as store_module

    path = tmp_path / "v3.sqlite"
    db = sqlite3.connect(path)
    db.executescript(store_module._MIGRATIONS[1] + store_module._MIGRATIONS[2]
                     + store_module._MIGRATIONS[3] + "PRAGMA user_version=3;")
    db.execute("INSERT INTO stations VALUES ('CS1', 'site', NULL, NULL, NULL)")
    db.execute("INSERT INTO transactions(transaction_id, station_id, evse_id, id_token, "
               "started_at, meter_start_wh, last_seq_no) VALUES ('tx-1', 'CS1', 1, 'TOKEN1', "
               "?, 1000, 1)", (iso(T0),))
    db.executemany("INSERT INTO meter_values VALUES ('CS1', 1, 'tx-1', ?, ?, NULL, ?, ?)", [
        (iso(T0), ENERGY, 1.0, "kWh"), (iso(T0 + timedelta(minutes=5)), ENERGY, 2.5, "kWh"),
        (iso(T0 + timedelta(minutes=5)), "Power.Active.Import", 7.0, "kW")])
    db.execute("INSERT INTO charging_profiles VALUES ('CS1', 1, 7, 'TxProfile', 0, 11000, "
               "'W', ?, 'Accepted', 11000)", (iso(T0),))
    db.execute("INSERT INTO transaction_events VALUES ('CS1', 'tx-1', 1, 'Updated', "
               "'MeterValuePeriodic', ?, '{}')", (iso(T0 + timedelta(minutes=5)),))
    db.commit()
    db.close()
    # A migration that fails half-way (or is killed) leaves the file at v3, openable.
    monkeypatch.setattr(store_module, "_BACKFILL_V4", "UPDATE no_such_table SET x = 1")
    with pytest.raises(sqlite3.OperationalError):
        Store(path)
    monkeypatch.undo()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == 3
    check.close()
    core = CSMSCore(make_config(), Store(path), clock=clock)
    try:
        session = core.sessions[("CS1", "tx-1")]
        assert (session.meter_last_wh, session.power_w) == (2500.0, 7000.0)
        assert session.energy_wh == pytest.approx(1500.0)
        assert session.limit_w == 11000.0
        # A re-sent event (seqNo 1, stored before the migration) changes nothing.
        core.on_transaction_event("CS1", tx_event(
            "Updated", 1, "tx-1", T0 + timedelta(minutes=5), evse_id=None,
            samples=[sample(ENERGY, 9.0, "kWh")]))
        assert core.sessions[("CS1", "tx-1")].meter_last_wh == 2500.0
        assert core.store.count("transaction_events") == 1
    finally:
        core.store.close()


def test_a_cleared_controller_limit_stays_cleared_after_a_restart(tmp_path: Path,
                                                                   clock: FakeClock) -> None:
    path = tmp_path / "csms.sqlite"
    core = CSMSCore(make_config(), Store(path), clock=clock)
    start(core, "CS1", 1, "tx-1")
    start(core, "CS1", 2, "tx-2")
    for evse, tx, limit_w in ((1, "tx-1", 10_000.0), (2, "tx-2", 9_000.0)):
        cmd = ProfileCommand("CS1", evse, tx, limit_w, "W", limit_w)
        core.profile_sent(cmd, core.next_profile_id(), "Accepted")
    assert core.effective_limit_w("CS1", 1) == 10_000.0
    # An operator clears EVSE 1's TxProfile; the station accepted.
    core.profile_set("CS1").clear(evse_id=1, purpose="TxProfile")
    core.profiles_cleared("CS1")
    assert ("CS1", 1) not in core.sent_limits_w  # the controller sends it again next cycle
    assert core.effective_limit_w("CS1", 1) == 11_000.0
    core.store.close()

    restarted = CSMSCore(make_config(), Store(path), clock=clock)
    assert restarted.effective_limit_w("CS1", 1) == 11_000.0  # still cleared
    assert ("CS1", 1) not in restarted.sent_limits_w
    assert restarted.effective_limit_w("CS1", 2) == 9_000.0  # the other one is still there
    assert restarted.sent_limits_w[("CS1", 2)] == 9_000.0
    restarted.store.close()


def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "csms.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        Store(path)


def test_repeated_seq_no_is_not_stored_twice(core: CSMSCore, store: Store) -> None:
    start(core, "CS1", 1, "tx-1", 1_000.0)
    updated = tx_event("Updated", 1, "tx-1", T0 + timedelta(minutes=5), samples=[
        sample(ENERGY, 2_000.0, "Wh"), sample("Power.Active.Import", 6_000.0, "W")])
    core.on_transaction_event("CS1", updated)
    events, samples = store.count("transaction_events"), store.count("meter_values")
    core.on_transaction_event("CS1", updated)  # re-sent after a lost CALLRESULT
    assert store.count("transaction_events") == events == 2
    assert store.count("meter_values") == samples == 3
    assert core.sessions[("CS1", "tx-1")].energy_wh == pytest.approx(1_000.0)


def test_repeated_ended_keeps_the_stored_result(core: CSMSCore, store: Store) -> None:
    run_session(core)
    ended = tx_event("Ended", 2, "tx-1", T0 + timedelta(hours=5), stopped_reason="Local",
                     samples=[sample(ENERGY, 9_999.0, "Wh")])
    core.on_transaction_event("CS1", ended)
    row = store.transactions()[0]
    assert row["meter_stop_wh"] == 5_000.0
    assert row["stopped_reason"] == "EVDisconnected"


def test_meter_values_outside_a_transaction_are_stored(core: CSMSCore, store: Store) -> None:
    core.on_meter_values("CS1", 2, [{"timestamp": iso(T0), "sampledValue": [
        sample(ENERGY, 123.0, "Wh"), sample("Voltage", 230.0, "V")]}])
    assert store.count("meter_values") == 2
    core.on_meter_values("CS1", 2, [])
    assert store.count("meter_values") == 2


# --------------------------------------------------------------------------- strategies
def _view(limit_kw: float | None, caps_kw: list[float]) -> ControlView:
    sessions = tuple(SessionView(
        station_id=f"CS{i}", evse_id=1, transaction_id=f"tx{i}", max_power_kw=cap,
        power_kw=0.0, energy_kwh=0.0, voltage_v=None, soc_percent=None, started_at=T0,
    ) for i, cap in enumerate(caps_kw))
    return ControlView(now=T0, sites=(SiteView(name=SITE, limit_kw=limit_kw, sessions=sessions),))


caps = st.lists(st.floats(0.1, 350.0), min_size=1, max_size=30)
limits = st.floats(0.1, 2_000.0)


@given(limits, caps)
def test_equal_share_respects_site_limit_and_evse_caps(limit_kw: float, caps_kw: list[float]
                                                       ) -> None:
    out = equal_share(_view(limit_kw, caps_kw))
    shares = [out[(f"CS{i}", 1)] for i in range(len(caps_kw))]
    assert all(s is not None for s in shares)
    values = [float(s) for s in shares if s is not None]
    tol = 1e-9 * max(limit_kw, 1.0)
    assert sum(values) <= limit_kw + tol
    for share, cap in zip(values, caps_kw, strict=True):
        assert 0.0 <= share <= cap + 1e-12
    # Water filling: the whole limit is used whenever the caps allow it.
    assert sum(values) >= min(limit_kw, sum(caps_kw)) - tol
    # Max-min fair: a session below its cap gets at least as much as anyone else.
    for share, cap in zip(values, caps_kw, strict=True):
        if share < cap - 1e-9:
            assert share >= max(values) - tol


@given(st.floats(-100.0, 1_000.0), caps)
def test_water_fill_never_negative(budget_kw: float, caps_kw: list[float]) -> None:
    shares = water_fill(budget_kw, caps_kw)
    assert all(s >= 0.0 for s in shares)
    assert sum(shares) <= max(budget_kw, 0.0) + 1e-9 * max(abs(budget_kw), 1.0)


def test_equal_share_splits_equally_when_uncapped() -> None:
    out = equal_share(_view(30.0, [22.0, 22.0, 22.0]))
    assert sorted(out.values()) == pytest.approx([10.0, 10.0, 10.0])


def test_equal_share_gives_capped_surplus_to_others() -> None:
    out = equal_share(_view(30.0, [3.7, 22.0, 22.0]))
    assert out[("CS0", 1)] == pytest.approx(3.7)
    assert out[("CS1", 1)] == pytest.approx((30.0 - 3.7) / 2)
    assert out[("CS2", 1)] == pytest.approx((30.0 - 3.7) / 2)


def test_equal_share_leaves_unlimited_sites_uncontrolled() -> None:
    assert set(equal_share(_view(None, [11.0, 7.4])).values()) == {None}


def test_uncontrolled_returns_none_limits() -> None:
    out = uncontrolled(_view(5.0, [11.0, 11.0]))
    assert out == {("CS0", 1): None, ("CS1", 1): None}


def test_uncontrolled_core_sends_nothing(store: Store, clock: FakeClock) -> None:
    core = CSMSCore(make_config(strategy="uncontrolled"), store, clock=clock)
    start(core, "CS1", 1, "tx-1")
    start(core, "CS2", 1, "tx-2")
    assert core.control_commands() == []


def test_unknown_strategy_lists_known_names(store: Store) -> None:
    with pytest.raises(UnknownStrategyError) as info:
        get_strategy("fastest")
    err = info.value
    assert isinstance(err, ConfigError)
    assert err.name == "fastest" and err.field == "strategy"
    assert "'fastest'" in str(err)
    for name in strategy_names():
        assert name in str(err)
    assert {"equal_share", "uncontrolled"} <= set(strategy_names())
    with pytest.raises(UnknownStrategyError):
        CSMSCore(make_config(strategy="fastest"), store)


# --------------------------------------------------------------------------- control
def accept_all(core: CSMSCore, commands: list[Any]) -> None:
    for cmd in commands:
        core.profile_sent(cmd, core.next_profile_id(), "Accepted")


def test_control_commands_split_the_site_limit(core: CSMSCore, store: Store) -> None:
    start(core, "CS1", 1, "tx-a")
    start(core, "CS1", 2, "tx-b")
    start(core, "CS3", 1, "tx-free")  # site without a limit: no command
    commands = core.control_commands()
    assert [(c.station_id, c.evse_id, c.transaction_id) for c in commands] == [
        ("CS1", 1, "tx-a"), ("CS1", 2, "tx-b")]
    for c in commands:
        assert c.unit == "W"
        assert c.limit_w == pytest.approx(10_000.0)
        assert c.limit == pytest.approx(c.limit_w)
    accept_all(core, commands)
    assert store.count("charging_profiles") == 2
    assert core.sessions[("CS1", "tx-a")].limit_w == pytest.approx(10_000.0)
    assert core.control_commands() == []  # nothing changed


def test_control_commands_deadband(core: CSMSCore) -> None:
    start(core, "CS1", 1, "tx-a")
    start(core, "CS1", 2, "tx-b")
    accept_all(core, core.control_commands())
    deadband_kw = core.config.limit_deadband_w / 1000.0

    # An increase below the deadband (per EVSE) is not sent.
    core.site_limits[SITE] = 20.0 + 2 * deadband_kw * 0.5
    assert core.control_commands() == []
    # An increase beyond the deadband is.
    core.site_limits[SITE] = 20.0 + 2 * deadband_kw * 2
    up = core.control_commands()
    assert len(up) == 2
    assert all(c.limit_w == pytest.approx(10_000.0 + 2 * deadband_kw * 1000.0) for c in up)
    accept_all(core, up)
    # A decrease smaller than the deadband still goes out.
    core.site_limits[SITE] -= 2 * deadband_kw * 0.2
    down = core.control_commands()
    assert len(down) == 2
    assert all(c.limit_w < u.limit_w for c, u in zip(down, up, strict=True))


def test_rejected_limit_is_resent(core: CSMSCore) -> None:
    start(core, "CS1", 1, "tx-a")
    first = core.control_commands()
    assert len(first) == 1
    core.profile_sent(first[0], core.next_profile_id(), "Rejected")
    assert core.control_commands() == first
    assert core.sessions[("CS1", "tx-a")].limit_w is None


def test_new_session_lowers_the_others(core: CSMSCore) -> None:
    start(core, "CS1", 1, "tx-a")
    accept_all(core, core.control_commands())
    start(core, "CS1", 2, "tx-b")
    commands = {c.transaction_id: c for c in core.control_commands()}
    assert set(commands) == {"tx-a", "tx-b"}
    assert commands["tx-a"].limit_w == pytest.approx(10_000.0)


def test_ended_session_forgets_its_sent_limit(core: CSMSCore) -> None:
    start(core, "CS1", 1, "tx-a")
    accept_all(core, core.control_commands())
    core.on_transaction_event("CS1", tx_event("Ended", 1, "tx-a", T0))
    assert ("CS1", 1) not in core.sent_limits_w
    start(core, "CS1", 1, "tx-c")
    commands = core.control_commands()
    assert [c.transaction_id for c in commands] == ["tx-c"]


def test_control_commands_in_amperes(store: Store, clock: FakeClock) -> None:
    core = CSMSCore(make_config(charging_rate_unit="A"), store, clock=clock)
    start(core, "CS1", 1, "tx-3ph-a")
    start(core, "CS1", 2, "tx-3ph-b")
    start(core, "CS2", 1, "tx-1ph")
    commands = {c.transaction_id: c for c in core.control_commands()}
    assert set(commands) == {"tx-3ph-a", "tx-3ph-b", "tx-1ph"}
    v = core.config.nominal_voltage_v
    for tx, phases in (("tx-3ph-a", 3), ("tx-3ph-b", 3), ("tx-1ph", 1)):
        c = commands[tx]
        assert c.unit == "A"
        # Rounded down to 0.1 A: on the wire never more than the share.
        assert c.limit * v * phases <= c.limit_w + 1e-6
        assert c.limit_w - c.limit * v * phases < 0.1 * v * phases
        assert round(c.limit * 10) == pytest.approx(c.limit * 10)
    # The deadband and the site limit work on W, whatever unit goes on the wire.
    assert sum(c.limit_w for c in commands.values()) == pytest.approx(20_000.0)
    # Same power, a third of the current per phase on a three-phase EVSE.
    assert commands["tx-3ph-a"].limit == pytest.approx(commands["tx-1ph"].limit / 3, abs=0.1)


def test_profile_ids_are_fresh(core: CSMSCore) -> None:
    ids = [core.next_profile_id() for _ in range(5)]
    assert len(set(ids)) == 5
    assert ids == sorted(ids)


# --------------------------------------------------------------------------- late events
def test_offline_queue_out_of_order_is_merged_and_billed_once(store: Store, clock: FakeClock
                                                              ) -> None:
    """A station back from offline sends its queue: Ended first, then the older events."""
    core = CSMSCore(make_config(), store, clock=clock)
    t = [T0 + timedelta(minutes=m) for m in (0, 30, 60)]
    core.on_transaction_event("CS1", tx_event(
        "Ended", 2, "late", t[2], samples=[sample(ENERGY, 9000, "Wh")],
        stopped_reason="EVDisconnected", trigger="EVDeparted"))
    late_update = tx_event("Updated", 1, "late", t[1], samples=[sample(ENERGY, 4000, "Wh")])
    late_update["offline"] = True
    core.on_transaction_event("CS1", late_update)
    core.on_transaction_event("CS1", tx_event(
        "Started", 0, "late", t[0], id_token=TOKEN, trigger="Authorized",
        samples=[sample(ENERGY, 1000, "Wh", context="Transaction.Begin")]))
    (cdr,) = store.cdrs()
    assert cdr["energy_wh"] == pytest.approx(8000)  # Ended's 9000 minus Started's 1000
    assert cdr["duration_s"] == pytest.approx(3600)
    (tx,) = store.transactions()
    assert (tx["meter_start_wh"], tx["meter_stop_wh"]) == (1000, 9000)
    assert tx["started_at"] == iso(t[0]) and tx["ended_at"] == iso(t[2])
    session = core.load_session("CS1", "late")
    # The older Updated did not roll the reading back.
    assert session is not None and session.meter_last_wh == 9000
    # A seqNo gap is fine; a repeated one is not applied or stored twice.
    core.on_transaction_event("CS1", late_update)
    assert store.count("transaction_events") == 3


def test_ocpp_timestamps_of_a_repeated_wall_hour_are_two_instants() -> None:
    """The formatter's cache never confuses the two 02:30 of a DST change."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from evtwin.csms.clock import iso

    berlin = ZoneInfo("Europe/Berlin")
    first = datetime(2026, 10, 25, 2, 30, tzinfo=berlin)
    second = datetime(2026, 10, 25, 2, 30, tzinfo=berlin, fold=1)
    assert iso(first) == "2026-10-25T00:30:00.000Z"
    assert iso(second) == "2026-10-25T01:30:00.000Z"


# --------------------------------------------------------------------------- one live tx per EVSE
def _tx(core: CSMSCore, kind: str, tx_id: str, seq: int, at: datetime, wh: float,
        evse: int = 1, reason: str | None = None) -> None:
    payload: dict[str, Any] = {
        "eventType": kind, "timestamp": iso(at), "seqNo": seq,
        "triggerReason": {"Started": "CablePluggedIn", "Ended": "EVDeparted"}.get(
            kind, "MeterValuePeriodic"),
        "transactionInfo": {"transactionId": tx_id, "chargingState": "Charging"},
        "evse": {"id": evse, "connectorId": 1},
        "meterValue": [{"timestamp": iso(at), "sampledValue": [
            {"value": wh, "measurand": ENERGY, "unitOfMeasure": {"unit": "Wh"}},
            {"value": 7000.0, "measurand": "Power.Active.Import",
             "unitOfMeasure": {"unit": "W"}}]}],
    }
    if kind == "Started":
        payload["idToken"] = {"idToken": TOKEN, "type": "ISO14443"}
    if reason is not None:
        payload["transactionInfo"]["stoppedReason"] = reason
    core.on_transaction_event("CS1", payload)


def test_a_new_transaction_on_an_evse_ends_the_one_its_station_never_ended(
        clock: FakeClock, store: Store) -> None:
    core = CSMSCore(make_config(), store, clock=clock)
    _tx(core, "Started", "old", 0, T0, 1000.0)
    _tx(core, "Updated", "old", 1, T0 + timedelta(minutes=30), 4500.0)
    # The Ended of "old" is lost; an hour later a new EV starts on the same EVSE.
    _tx(core, "Started", "new", 0, T0 + timedelta(hours=1), 9000.0)
    _tx(core, "Started", "other", 0, T0 + timedelta(hours=1), 0.0, evse=2)
    open_here = [s for s in core.open_sessions() if s.station_id == "CS1" and s.evse_id == 1]
    assert [s.transaction_id for s in open_here] == ["new"]
    assert len(store.open_transactions("CS1")) == 2  # "new" and EVSE 2's "other"
    old = store.transaction("CS1", "old")
    assert old is not None
    # Ended at its last sign of life, with the energy it was seen to take.
    assert old["ended_at"] == iso(T0 + timedelta(minutes=30))
    assert old["stopped_reason"] == "Other"
    cdr = {c["transaction_id"]: c for c in store.cdrs()}["old"]
    assert cdr["energy_wh"] == pytest.approx(3500.0)
    # The controller's limit goes to the live transaction.
    commands = core.control_commands()
    assert {(c.evse_id, c.transaction_id) for c in commands} <= {(1, "new"), (2, "other")}
    assert (1, "new") in {(c.evse_id, c.transaction_id) for c in commands}
    # The station's Ended for "old", late, still counts: its own time and reason.
    _tx(core, "Ended", "old", 2, T0 + timedelta(minutes=45), 5000.0, reason="EVDisconnected")
    old = store.transaction("CS1", "old")
    assert old is not None and old["ended_at"] == iso(T0 + timedelta(minutes=45))
    assert old["stopped_reason"] == "EVDisconnected"
    assert {c["transaction_id"]: c for c in store.cdrs()}["old"]["energy_wh"] == \
        pytest.approx(4000.0)
    assert [s.transaction_id for s in core.open_sessions()
            if s.station_id == "CS1" and s.evse_id == 1] == ["new"]


def test_late_or_vague_events_of_other_transactions_end_nothing(
        clock: FakeClock, store: Store) -> None:
    core = CSMSCore(make_config(), store, clock=clock)
    _tx(core, "Started", "live", 0, T0 + timedelta(hours=1), 1000.0)
    # An older transaction's Started arrives late (queued while offline): it began
    # before the live one's last sign of life, so it is not what replaced it.
    _tx(core, "Started", "older", 0, T0, 500.0)
    # An Updated of a transaction never seen, naming no EVSE.
    core.on_transaction_event("CS1", {
        "eventType": "Updated", "timestamp": iso(T0 + timedelta(hours=2)), "seqNo": 3,
        "triggerReason": "MeterValuePeriodic", "transactionInfo": {"transactionId": "vague"}})
    assert {s.transaction_id for s in core.open_sessions()} >= {"live"}
    assert store.cdrs() == []


def test_a_late_reading_of_a_closed_ghost_still_counts(clock: FakeClock, store: Store) -> None:
    core = CSMSCore(make_config(), store, clock=clock)
    _tx(core, "Started", "old", 0, T0, 1000.0)
    _tx(core, "Started", "new", 0, T0 + timedelta(hours=1), 9000.0)
    assert {c["transaction_id"]: c for c in store.cdrs()}["old"]["energy_wh"] == 0.0
    _tx(core, "Updated", "old", 1, T0 + timedelta(minutes=50), 8000.0)
    assert {c["transaction_id"]: c for c in store.cdrs()}["old"]["energy_wh"] == \
        pytest.approx(7000.0)
    assert [s.transaction_id for s in core.open_sessions()] == ["new"]


def test_a_resent_started_of_the_live_transaction_ends_nothing(
        clock: FakeClock, store: Store) -> None:
    core = CSMSCore(make_config(), store, clock=clock)
    _tx(core, "Started", "tx", 0, T0, 1000.0)
    _tx(core, "Started", "tx", 0, T0, 1000.0)  # the same message again
    assert [s.transaction_id for s in core.open_sessions()] == ["tx"]
    assert store.cdrs() == []


def test_a_16_suspended_status_is_the_sessions_charging_state_and_is_stored(
        clock: FakeClock, store: Store) -> None:
    core = CSMSCore(make_config(), store, clock=clock)
    store.upsert_station("CS1", SITE, [(1, 11_000.0), (2, 11_000.0)])
    _tx(core, "Started", "tx", 0, T0, 1000.0)
    later = iso(T0 + timedelta(minutes=5))
    core.on_status("CS1", 1, "SuspendedEV", later)
    assert core.sessions[("CS1", "tx")].charging_state == "SuspendedEV"
    row = store.transaction("CS1", "tx")
    assert row is not None and row["charging_state"] == "SuspendedEV"
    # The station holding it at 0 does not make a full EV look hungry again ...
    core.on_status("CS1", 1, "SuspendedEVSE", later)
    assert core.sessions[("CS1", "tx")].charging_state == "SuspendedEV"
    # ... and a status older than the session's last reading changes nothing.
    _tx(core, "Updated", "tx", 1, T0 + timedelta(minutes=10), 1500.0)
    core.on_status("CS1", 1, "SuspendedEV", iso(T0 + timedelta(minutes=7)))
    assert core.sessions[("CS1", "tx")].charging_state == "Charging"


def test_station_messages_are_pruned_by_age_and_count(store: Store) -> None:
    for n in range(6):
        store.record_station_message("CS1", "NotifyEvent", f"2026-06-0{n + 1}T00:00:00Z",
                                     {"n": n})
    assert store.prune_station_messages(before="2026-06-03T00:00:00Z") == 2
    assert store.prune_station_messages(max_rows=3) == 1
    assert [m["payload"]["n"] for m in store.station_messages("CS1")] == [3, 4, 5]
    assert store.count("station_messages") == 3


def test_a_v2g_cdr_has_its_export_and_credits_it(clock: FakeClock, store: Store) -> None:
    from evtwin.csms.model import Tariff

    tariff = Tariff(energy_per_kwh=0.30, session_fee=1.0, export_per_kwh=0.10)
    core = CSMSCore(make_config(tariff=tariff), store, clock=clock)

    def event(kind: str, seq: int, minutes: int, import_wh: float, export_wh: float
              ) -> dict[str, Any]:
        ts = iso(T0 + timedelta(minutes=minutes))
        payload: dict[str, Any] = {
            "eventType": kind, "timestamp": ts, "seqNo": seq,
            "triggerReason": "MeterValuePeriodic", "evse": {"id": 1, "connectorId": 1},
            "transactionInfo": {"transactionId": "v2g"},
            "meterValue": [{"timestamp": ts, "sampledValue": [
                {"value": import_wh, "measurand": ENERGY, "unitOfMeasure": {"unit": "Wh"}},
                {"value": export_wh, "measurand": "Energy.Active.Export.Register",
                 "unitOfMeasure": {"unit": "Wh"}}]}]}
        if kind == "Started":
            payload["idToken"] = {"idToken": TOKEN, "type": "ISO14443"}
        return payload

    core.on_transaction_event("CS1", event("Started", 0, 0, 1000.0, 500.0))
    core.on_transaction_event("CS1", event("Updated", 1, 60, 12_000.0, 500.0))
    answer = core.on_transaction_event("CS1", event("Ended", 2, 120, 12_000.0, 9_800.0))
    cdr = store.cdrs()[0]
    assert cdr["energy_wh"] == pytest.approx(11_000.0)
    assert cdr["exported_wh"] == pytest.approx(9_300.0)
    assert cdr["export_credit"] == pytest.approx(0.93)
    assert cdr["cost"] == pytest.approx(1.0 + 0.30 * 11.0 - 0.93)
    assert answer["total_cost"] == pytest.approx(cdr["cost"])
    # The same Ended again is answered as the first time, with its cost.
    again = core.on_transaction_event("CS1", event("Ended", 2, 120, 12_000.0, 9_800.0))
    assert again["total_cost"] == pytest.approx(cdr["cost"])
    # A station whose Started has no export register and whose later samples carry
    # its lifetime register: only what the register gains in the session counts.
    core.on_transaction_event("CS1", {**event("Started", 0, 200, 20_000.0, 0.0),
                                      "transactionInfo": {"transactionId": "plain"},
                                      "meterValue": [{"timestamp": iso(
                                          T0 + timedelta(minutes=200)), "sampledValue": [{
                                              "value": 20_000.0, "measurand": ENERGY,
                                              "unitOfMeasure": {"unit": "Wh"}}]}]})
    for seq, minutes, kind in ((1, 230, "Updated"), (2, 260, "Ended")):
        core.on_transaction_event("CS1", {**event(kind, seq, minutes, 25_000.0, 1_200_000.0),
                                          "transactionInfo": {"transactionId": "plain"}})
    plain = {c["transaction_id"]: c for c in store.cdrs()}["plain"]
    assert plain["exported_wh"] == 0.0 and plain["export_credit"] == 0.0


def test_stated_needs_make_the_control_cycle_due_at_once(clock: FakeClock,
                                                         store: Store) -> None:
    """K15-K17: the CSMS answers an EV's NotifyEVChargingNeeds with a schedule now."""
    from evtwin.csms.model import EVChargingNeeds

    core = CSMSCore(make_config(control_interval_s=900), store, clock=clock)
    _tx(core, "Started", "tx", 0, T0, 1000.0)
    core.control_commands()
    core.sessions_changed = False  # as after the cycle the Started triggered
    clock.now = T0 + timedelta(seconds=30)
    assert not core.control_due()
    core.note_ev_needs("CS1", EVChargingNeeds(evse_id=2, received_at=clock.now,
                                              energy_transfer="AC_three_phase"))
    assert not core.control_due()  # no session on EVSE 2
    core.note_ev_needs("CS1", EVChargingNeeds(
        evse_id=1, received_at=clock.now, energy_transfer="AC_three_phase",
        departure_time=T0 + timedelta(hours=2), energy_amount_wh=20_000.0))
    assert core.control_due()
    assert core.sessions[("CS1", "tx")].ev_needs is not None
    # The same needs again (a station repeating itself) do not make another cycle due.
    core.sessions_changed = False
    core.note_ev_needs("CS1", EVChargingNeeds(
        evse_id=1, received_at=clock.now + timedelta(seconds=1),
        energy_transfer="AC_three_phase", departure_time=T0 + timedelta(hours=2),
        energy_amount_wh=20_000.0))
    assert not core.control_due()


def test_the_control_cycle_steers_the_live_transaction_of_an_evse(core: CSMSCore) -> None:
    """Two open transactions on one EVSE (a late Started of an older one, whose Ended is
    still queued): the live one (latest sign of life) takes the whole share and the
    profile, whatever the ids' order; the other takes nothing."""
    start(core, "CS1", 1, "a-live", at=T0 + timedelta(minutes=30))
    start(core, "CS1", 1, "z-old", at=T0)  # late, older: not ended by the live one
    assert {s.transaction_id for s in core.open_sessions()} == {"a-live", "z-old"}
    view = core.control_view()
    [site] = [s for s in view.sites if s.name == SITE]
    assert [v.transaction_id for v in site.sessions] == ["a-live"]
    commands = core.control_commands()
    assert [(c.evse_id, c.transaction_id) for c in commands if c.station_id == "CS1"] == [
        (1, "a-live")]


def test_external_limits_follow_their_schedule_and_survive_a_restart(
        tmp_path: Path, clock: FakeClock) -> None:
    """NotifyChargingLimit schedules are evaluated when the cycle runs (a future start
    caps nothing yet, periods change, a duration ends), shared on EVSE 0, and kept in
    the store for a restarted CSMS."""
    from evtwin.csms.model import LimitSchedule

    db = tmp_path / "csms.sqlite"
    core = CSMSCore(make_config(), Store(db), clock=clock)
    later = T0 + timedelta(hours=1)
    core.note_charging_limit("CS1", 1, "EMS", (LimitSchedule(
        later, "W", ((0.0, 4000.0, None), (1800.0, 2000.0, None)), duration_s=3600.0),))
    core.note_charging_limit("CS1", 0, "SO", (LimitSchedule(T0, "A", ((0.0, 10.0, 3),)),))
    assert core.external_limit_w("CS1", 1, at=T0) == pytest.approx(6900.0)  # 10 A x 3 x 230 V
    assert core.external_limit_w("CS1", 1, 2, at=T0) == pytest.approx(3450.0)  # shared
    assert core.external_limit_w("CS1", 1, at=later) == 4000.0
    assert core.external_limit_w("CS1", 1, at=later + timedelta(minutes=45)) == 2000.0
    assert core.external_limit_w("CS1", 1, at=later + timedelta(hours=2)) == pytest.approx(
        6900.0)  # the EMS schedule is over; the station-wide one goes on
    assert core.external_limit_w("CS2", 1, at=T0) is None
    core.store.close()
    restarted = CSMSCore(make_config(), Store(db), clock=clock)
    assert restarted.external_limit_w("CS1", 1, at=later) == 4000.0
    restarted.clear_charging_limit("CS1", None, "EMS")
    restarted.clear_charging_limit("CS1", 0, "SO")
    assert restarted.external_limit_w("CS1", 1, at=later) is None
    restarted.store.close()
    assert CSMSCore(make_config(), Store(db), clock=clock).external_limits == {}
