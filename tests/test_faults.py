"""Stations that fail, what the CSMS hears of it, and the crews that repair them."""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from evtwin.agents.faults import DEFAULT_MODELS, weibull_residual_days
from evtwin.csms.health import StationHealth, fit_failure_model, precision_recall
from evtwin.sim.exceptions import ScenarioError
from evtwin.sim.runner import Twin, train_failure_model
from evtwin.sim.scenario import load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "scenarios" / "operations.toml"


def small(protocol: str = "2.0.1", *, transport: str = "direct", policy: str = "none",
          hours: float = 12.0, seed: int = 3, scale_days: float = 0.2,
          **maintenance: Any) -> Any:
    """Two stations whose connectors fail within hours (by default)."""
    return parse_scenario({
        "name": "faulty", "seed": seed, "start": "2026-06-01T06:00:00", "duration_h": hours,
        "step_s": 300, "grid": {"network": "kerber_dorfnetz", "engine": "pgm"},
        "csms": {"protocol": protocol, "meter_interval_s": 900, "heartbeat_interval_s": 900},
        "run": {"transport": transport}, "ev": {"count": 8},
        "sites": [{"name": "lot", "kind": "public", "stations": 2, "evses_per_station": 2,
                   "evse_max_kw": 22}],
        "faults": {"components": ["connector"],
                   "connector": {"scale_days": scale_days, "shape": 1.0, "precursor_share": 1.0,
                                 "precursor_days": 0.05}},
        "maintenance": {"policy": policy, **maintenance},
    })


# ---------------------------------------------------------------- failure model


def test_weibull_residual_life_matches_scipy() -> None:
    """Residual life of a part aged a: scipy's Weibull, conditioned on survival to a."""
    rng = np.random.default_rng(1)
    k, scale, age = 2.0, 100.0, 50.0
    draws = np.array([weibull_residual_days(rng, k, scale, age) for _ in range(20000)])
    dist = stats.weibull_min(k, scale=scale)
    # E[T - a | T > a] = integral of S(a + t) / S(a) dt
    t = np.linspace(0, 1000, 200001)
    expected = np.trapezoid(dist.sf(age + t) / dist.sf(age), t)
    assert draws.mean() == pytest.approx(expected, rel=0.02)
    # new part: the plain Weibull mean, scale * Gamma(1 + 1/k)
    fresh = np.array([weibull_residual_days(rng, k, scale, 0.0) for _ in range(20000)])
    assert fresh.mean() == pytest.approx(dist.mean(), rel=0.02)


def test_every_default_names_its_ocpp_words() -> None:
    """1.6 error codes from the 1.6 schema's enum; 2.x stop reasons from 2.0.1's."""
    schemas = ROOT / ".venv" / "lib"
    import ocpp
    base = Path(ocpp.__file__).parent
    codes = json.loads((base / "v16" / "schemas" / "StatusNotification.json").read_text())[
        "properties"]["errorCode"]["enum"]
    reasons = json.loads((base / "v201" / "schemas" / "TransactionEventRequest.json")
                         .read_text())["definitions"]["ReasonEnumType"]["enum"]
    for m in DEFAULT_MODELS.values():
        assert m.error_code_16 in codes
        assert m.stop_reason in reasons
    assert schemas  # (the installed package is the reference, wherever it is)


# ---------------------------------------------------------------- the CSMS's view


def _health(now: list[datetime]) -> StationHealth:
    return StationHealth({"S1": (1, 2)}, 900.0, lambda: now[0])


def test_a_silent_station_gets_an_offline_work_order() -> None:
    now = [datetime(2026, 6, 1, tzinfo=UTC)]
    h = _health(now)
    h.seen("S1", heartbeat=True)
    now[0] += timedelta(seconds=2 * 900)
    h.tick()
    assert h.new_orders() == []
    now[0] += timedelta(seconds=0.6 * 900)  # 2.6 intervals without a word
    h.tick()
    (order,) = h.new_orders()
    assert (order.station_id, order.evse_id, order.component, order.reason) == (
        "S1", 0, "DataLink", "offline")


def test_fault_reports_raise_one_order_and_late_reports_after_repair_none() -> None:
    now = [datetime(2026, 6, 1, tzinfo=UTC)]
    h = _health(now)
    t0 = now[0]
    h.on_problem("S1", 2, "", "ConnectorLockFailure", "warning", t0)  # 1.6: code only
    assert h.new_orders() == []
    h.on_problem("S1", 2, "ConnectorPlugRetentionLock", "X", "fault", t0)
    h.on_problem("S1", 2, "ConnectorPlugRetentionLock", "X", "fault", t0)  # re-sent
    (order,) = h.new_orders()
    assert (order.evse_id, order.reason) == (2, "fault")
    now[0] += timedelta(hours=3)
    h.complete(order.order_id)
    # A report from before the repair (a station that was offline) raises nothing.
    assert h.on_problem("S1", 2, "ConnectorPlugRetentionLock", "X", "fault", t0) is None
    # The reader is the station's: a report on either EVSE is one order on EVSE 0.
    h.on_problem("S1", 1, "", "ReaderFailure", "fault", now[0])
    h.on_problem("S1", 2, "TokenReader", "ReaderFailure", "fault", now[0])
    assert [(o.evse_id, o.component) for o in h.new_orders()] == [(0, "TokenReader")]


def test_training_labels_look_ahead_and_features_do_not() -> None:
    now = [datetime(2026, 6, 1, tzinfo=UTC)]
    h = _health(now)
    h.seen("S1")
    start = now[0]
    k = ("S1", 1, "PowerContactor")
    for hours in (90, 100, 110):  # symptoms before a failure at day 5
        h.on_problem(*k[:2], k[2], "HighTemperature", "warning", start + timedelta(hours=hours))
    h.on_problem(*k[:2], k[2], "HighTemperature", "fault", start + timedelta(days=5))
    feats = h.features(k, start + timedelta(hours=100))
    assert feats[:3] == [2.0, 2.0, 2.0]  # the warning at 110 h is not known at 100 h
    now[0] = start + timedelta(days=20)
    _x, y = h.training_table(horizon_days=2.0, every_s=86400.0)
    # Rows at days 1..18 for 6 components; the PowerContactor of EVSE 1 is labelled
    # 1 at days 3 and 4 (fails within 2 days), not after it failed (not repaired).
    assert y.sum() == 2
    assert len(y) == 18 * 6 - 14


def test_precision_recall_against_a_hand_count() -> None:
    t = datetime(2026, 6, 1, tzinfo=UTC)
    a, b, c = ("S", 1, "A"), ("S", 2, "A"), ("S", 0, "B")
    predicted = [(a, t), (b, t), (c, t + timedelta(days=1))]
    failures = [(a, t + timedelta(hours=30)), (c, t + timedelta(days=9)),
                (b, t + timedelta(days=1))]
    out = precision_recall(predicted, failures, horizon_days=2)
    assert out["precision_percent"] == pytest.approx(200 / 3)  # a and b right, c too early
    assert out["recall_percent"] == pytest.approx(200 / 3)
    assert out["lead_time_h"] == pytest.approx((30 + 24) / 2)


def test_fit_refuses_a_history_without_failures() -> None:
    with pytest.raises(ValueError, match="no failures"):
        fit_failure_model(np.zeros((5, 5)), np.zeros(5, dtype=int), horizon_days=5, seed=0)


# ---------------------------------------------------------------- over the wire


@pytest.mark.parametrize("protocol", ["1.6", "2.0.1", "2.1"])
def test_faulted_reaches_the_csms_over_each_ocpp_version(protocol: str, tmp_path: Path) -> None:
    db = tmp_path / "csms.db"
    twin = Twin(small(protocol, transport="websocket"), database=db)
    result = twin.run()
    assert twin.ops is not None and twin.core is not None
    failed = {(k[0], k[1]) for k, _t in twin.ops.failures}
    assert failed, "the connectors were meant to fail within the run"
    # Every failed EVSE is Faulted in the CSMS's store, from what came over the wire.
    with sqlite3.connect(db) as con:
        status = {(s, e): st for s, e, st in con.execute(
            "SELECT station_id, evse_id, status FROM evses")}
        events = [json.loads(p) for (p,) in con.execute(
            "SELECT payload FROM station_messages WHERE action = 'NotifyEvent'")]
    for key in failed:
        assert status[key] == "Faulted", key
    # One fault order per failed EVSE, on the connector, and nothing else (no order
    # for a Faulted status an unplugging driver reports, none for a false alarm).
    orders = [(o.station_id, o.evse_id, o.component, o.reason)
              for o in twin.core.health.orders]
    assert sorted(orders) == sorted((s, e, "ConnectorPlugRetentionLock", "fault")
                                    for s, e in failed)
    if protocol == "1.6":
        assert events == []  # 1.6 says it in StatusNotification's errorCode
    else:
        faults = [e for p in events for e in p["eventData"] if e["techInfo"] == "fault"]
        assert {(e["component"]["name"], e["techCode"]) for e in faults} == {
            ("ConnectorPlugRetentionLock", "ConnectorLockFailure")}
    # A session the failure ended is marked; its transaction is closed in the CSMS.
    interrupted = result.sessions[result.sessions["fault"] == "interrupted"]
    closed = {t["transaction_id"] for t in result.transactions if t["ended_at"]}
    assert set(interrupted["transaction_id"]) <= closed
    assert result.kpis["failures"] == len(twin.ops.failures)


def test_a_faulted_evse_is_never_assigned(tmp_path: Path) -> None:
    # Ports fail about daily and a contractor repairs them within 3 h: many outages,
    # many sessions.
    twin = Twin(small("2.0.1", hours=72, seed=5, scale_days=1.0, policy="reactive",
                      crew="contract", contract={"response_h": 3.0}))
    result = twin.run()
    assert twin.ops is not None
    outages = twin.ops.outages
    assert len(outages) >= 4
    plugged = result.sessions.dropna(subset=["plugged_s"])
    assert len(plugged) > 10
    for row in plugged.itertuples():
        for o in outages:
            if o.station_id == row.station_id and o.evse_id in (0, row.evse_id):
                end = o.end_s if o.end_s is not None else math.inf
                assert not (o.start_s <= row.plugged_s < end), (row, o)
    # Interrupted sessions ended at the failure of their own EVSE.
    interrupted = result.sessions[result.sessions["fault"] == "interrupted"]
    assert len(interrupted) > 0
    for row in interrupted.itertuples():
        assert any(o.station_id == row.station_id and o.evse_id == row.evse_id
                   and o.start_s == pytest.approx(row.unplugged_s) for o in outages)


def test_repairs_bring_ports_back() -> None:
    twin = Twin(small("2.0.1", hours=48, seed=5, policy="reactive", crew="contract",
                      contract={"response_h": 2.0}))
    result = twin.run()
    assert twin.ops is not None
    repaired = [o for o in twin.ops.outages if o.end_s is not None]
    assert repaired
    jobs = result.tables["work_orders"]
    assert (jobs["reason"] == "fault").sum() >= len(repaired)
    # The contractor arrives within its promise, every time.
    assert ((jobs["arrived_s"] - jobs["raised_s"]) <= 2.0 * 3600 + 1e-6).all()
    assert result.kpis["mttr_h"] > 0
    assert result.kpis["maintenance_cost"] > 0


# ---------------------------------------------------------------- operations.toml


@pytest.mark.slow
def test_without_crews_availability_falls_over_the_month() -> None:
    sc = load_scenario(OPERATIONS, {"maintenance.policy": "none", "forecast": None})
    twin = Twin(sc)
    result = twin.run()
    assert twin.ops is not None
    daily = twin.ops.availability_by_day(sc.duration_s)
    # Nothing is repaired: each day's availability is at most the day before's...
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(daily))
    # ... and it falls: the last week well below the first.
    assert np.mean(daily[-7:]) < np.mean(daily[:7]) - 2.0
    assert result.kpis["outages_open_at_end"] == result.kpis["failures"] > 0


def _availability(args: tuple[int, str, Any]) -> tuple[int, str, float]:
    seed, policy, model = args
    sc = load_scenario(OPERATIONS, {"seed": seed, "maintenance.policy": policy})
    sc = sc.model_copy(update={"forecast": None})
    return seed, policy, Twin(sc, failure_model=model).run().kpis["availability_percent"]


@pytest.mark.slow
def test_predictive_beats_reactive_on_operations_over_five_seeds() -> None:
    """Same crew (one, in-house), five seeds: the CSMS's failure model, trained once on
    60 days of its own history, buys availability on average."""
    sc = load_scenario(OPERATIONS, {"maintenance.policy": "predictive"})
    model = train_failure_model(sc)
    jobs = [(s, p, model if p == "predictive" else None)
            for s in range(1, 6) for p in ("reactive", "predictive")]
    with ProcessPoolExecutor(2) as pool:
        got = {(s, p): a for s, p, a in pool.map(_availability, jobs)}
    reactive = np.array([got[(s, "reactive")] for s in range(1, 6)])
    predictive = np.array([got[(s, "predictive")] for s in range(1, 6)])
    assert predictive.mean() > reactive.mean()
    assert (predictive > reactive).sum() >= 3


def test_maintenance_errors_name_the_field() -> None:
    data = {"ev": {"count": 1}, "sites": [{"name": "a", "stations": 1}],
            "faults": {}, "maintenance": {"shift_start_h": 18, "shift_end_h": 8}}
    with pytest.raises(ScenarioError, match=r"maintenance.*shift_end_h"):
        parse_scenario(data)
    data["maintenance"] = {"crews": 0}
    with pytest.raises(ScenarioError, match=r"maintenance.*crews"):
        parse_scenario(data)
    data["maintenance"] = {"policy": "sometimes"}
    with pytest.raises(ScenarioError, match=r"maintenance.policy"):
        parse_scenario(data)
    del data["faults"]
    data["maintenance"] = {}
    with pytest.raises(ScenarioError, match=r"maintenance: needs \[faults\]"):
        parse_scenario(data)
    data["faults"] = {}
    data["run"] = {"csms_process": True}
    with pytest.raises(ScenarioError, match=r"maintenance: crews take the work orders"):
        parse_scenario(data)
    del data["run"]
    data["faults"] = {"connector": {"scale_days": -1}}
    with pytest.raises(ScenarioError, match=r"faults.connector.scale_days"):
        parse_scenario(data)


@pytest.mark.parametrize("transport", ["websocket", "memory"])
def test_a_failed_modem_drops_the_connection_and_the_station_comes_back(
        transport: str) -> None:
    """Communication fails: the station's connection closes, its heartbeats stop, the
    CSMS raises an offline work order; once repaired it connects again (no reboot) and
    what it kept (the Faulted/Available statuses, meter values) arrives."""
    data = small("2.0.1", transport=transport, hours=24, seed=2, policy="reactive",
                 crew="contract", contract={"response_h": 3.0}).model_dump(mode="json")
    data["faults"] = {"components": ["communication"],
                      "communication": {"scale_days": 0.3, "precursor_share": 0.0}}
    twin = Twin(parse_scenario(data))
    result = twin.run()
    assert twin.ops is not None and twin.core is not None
    outages = [o for o in twin.ops.outages if o.component == "DataLink"]
    assert outages and any(o.end_s is not None for o in outages)
    offline = [o for o in twin.core.health.orders if o.reason == "offline"]
    assert {o.station_id for o in offline} >= {o.station_id for o in outages
                                                if o.end_s is not None}
    # Each failure closed the station's connection; the repairs opened new ones.
    assert twin.connections_dropped == len(outages)
    assert result.kpis["ocpp_messages"] > 0
    assert all(not st.offline for st in twin.model.stations
               if all(o.end_s is not None for o in outages if o.station_id == st.station_id))
