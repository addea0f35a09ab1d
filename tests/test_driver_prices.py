"""Driver prices (issue 15, part 4): the CSMS's tariff policies, what reaches stations
over OCPP, and how drivers answer prices in the twin.

Costs are checked against numbers worked out by hand in each test's docstring; the
OCPP checks validate what the CSMS sends against the ``ocpp`` package's copies of the
specification's JSON schemas (not evtwin's own validator); twin runs compare a tariff
against the flat one with the same seed.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from evtwin.agents.behaviour import Vehicle, Visit
from evtwin.agents.pricing import (
    Driver,
    PriceResponse,
    SiteInfo,
    reduced_target_soc,
    respond,
)
from evtwin.csms import CSMSConfig, CSMSCore, CSMSServer, EvseSpec, SiteSpec, StationSpec, Store
from evtwin.csms import iso as iso_ts
from evtwin.csms.model import Tariff
from evtwin.csms.tariffs import (
    energy_cost,
    idle_fee,
    session_cost,
    surcharged_at_start,
    tariff_21,
)
from evtwin.sim import ScenarioError, load_scenario, parse_scenario
from evtwin.sim.runner import Twin, run_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
TIMEOUT_S = 5.0 * float(os.environ.get("EVTWIN_TEST_TIMEOUT_SCALE", "1"))
T0 = datetime(2026, 6, 2, 0, 0, tzinfo=UTC)
TOU = ((0.0, 0.20), (17.0, 0.50), (21.0, 0.20))


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# ------------------------------------------------------------------ tariff arithmetic
def test_tou_energy_is_split_over_the_bands_by_the_meter_readings() -> None:
    """16:00 at 0 Wh, 18:00 at 20 kWh: 10 kWh fall before 17:00 (0.20) and 10 after
    (0.50): 2.00 + 5.00 = 7.00; with a 1.00 session fee, 8.00."""
    t = Tariff(session_fee=1.0, kind="tou", bands=TOU)
    cost, kwh = energy_cost(t, [(at(16), 0.0), (at(18), 20_000.0)])
    assert kwh == pytest.approx(20.0)
    assert cost == pytest.approx(7.0)
    parts = session_cost(t, [(at(16), 0.0), (at(18), 20_000.0)], started_at=at(16),
                         ended_at=at(18))
    assert parts.total == pytest.approx(8.0)


def test_tou_bands_follow_the_local_clock() -> None:
    """In +02:00 the 17 h band starts at 15:00 UTC: 15:00-16:00 UTC is all peak."""
    t = Tariff(kind="tou", bands=TOU, timezone="+02:00")
    cost, _ = energy_cost(t, [(at(15), 0.0), (at(16), 10_000.0)])
    assert cost == pytest.approx(10 * 0.50)


def test_idle_fee_counts_from_when_charging_stopped_beyond_the_grace_and_is_capped() -> None:
    """Full at 13:00 (the register stops rising), unplugged at 15:00, grace 30 min:
    90 idle minutes at 0.10 = 9.00; capped at 5.00 it is 5.00; under a 3 h grace, 0."""
    readings = [(at(12), 0.0), (at(13), 10_000.0), (at(14), 10_000.0)]
    t = Tariff(idle_fee_per_min=0.10, idle_grace_min=30)
    assert idle_fee(t, readings, at(15)) == pytest.approx(9.0)
    assert idle_fee(Tariff(idle_fee_per_min=0.10, idle_grace_min=30, idle_fee_cap=5.0),
                    readings, at(15)) == pytest.approx(5.0)
    assert idle_fee(Tariff(idle_fee_per_min=0.10, idle_grace_min=180), readings,
                    at(15)) == 0.0
    whole = session_cost(t, readings, started_at=at(12), ended_at=at(15))
    assert whole.total == pytest.approx(10 * 0.30 + 9.0)


def test_occupancy_surcharge_applies_from_the_threshold_at_the_start() -> None:
    """3 of 4 EVSEs busy at the start is 75 %: surcharged at a 0.75 threshold, not at
    0.8; the surcharge is 0.15/kWh on all 10 kWh: 10 x (0.30 + 0.15) = 4.50."""
    t = Tariff(kind="occupancy", occupancy_threshold=0.75, occupancy_surcharge_per_kwh=0.15)
    assert surcharged_at_start(t, 3, 4)
    assert not surcharged_at_start(t, 2, 4)
    assert not surcharged_at_start(Tariff(kind="flat", occupancy_threshold=0.75,
                                          occupancy_surcharge_per_kwh=0.15), 4, 4)
    parts = session_cost(t, [(at(9), 0.0), (at(10), 10_000.0)], started_at=at(9),
                         ended_at=at(10), surcharged=True)
    assert parts.total == pytest.approx(4.5)
    assert parts.surcharge == pytest.approx(1.5)


# ------------------------------------------------------------------ OCPP
def _schema(version: str, name: str) -> dict[str, Any]:
    path = resources.files("ocpp") / version / "schemas" / f"{name}.json"
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _core(tariff: Tariff) -> tuple[CSMSCore, list[datetime]]:
    now = [at(16.5)]
    config = CSMSConfig(stations=(StationSpec("CS1", "site", (EvseSpec(1, 11_000.0),)),),
                        sites=(SiteSpec("site"),), id_tokens=frozenset({"TOKEN1"}),
                        tariff=tariff)
    return CSMSCore(config, Store(":memory:"), clock=lambda: now[0]), now


def _tx(kind: str, seq: int, when: datetime, wh: float) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "eventType": kind, "timestamp": iso_ts(when), "seqNo": seq,
        "triggerReason": {"Started": "Authorized", "Updated": "MeterValuePeriodic",
                          "Ended": "EVDeparted"}[kind],
        "transactionInfo": {"transactionId": "tx-1"},
        "meterValue": [{"timestamp": iso_ts(when), "sampledValue": [{
            "value": wh, "measurand": "Energy.Active.Import.Register",
            "unitOfMeasure": {"unit": "Wh"}}]}]}
    if kind == "Started":
        payload["evse"] = {"id": 1, "connectorId": 1}
        payload["idToken"] = {"idToken": "TOKEN1", "type": "ISO14443"}
    if kind == "Ended":
        payload["transactionInfo"]["stoppedReason"] = "EVDisconnected"
    return payload


async def _recv(ws: ClientConnection) -> list[Any]:
    msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
    assert isinstance(msg, list)
    return msg


def test_tou_cost_reaches_a_201_station_in_cost_updated_and_total_cost() -> None:
    """Over a real OCPP 2.0.1 websocket: Started 16:30 at 0 Wh, Updated 17:30 at 10 kWh
    (5 kWh before 17:00 at 0.20, 5 after at 0.50: 3.50 in CostUpdated), Ended 18:00 at
    15 kWh (5 more at 0.50): totalCost 6.00. Both checked against the 2.0.1 schemas."""
    core, now = _core(Tariff(kind="tou", bands=TOU, cost_updated_interval_s=60.0))
    cost_schema = _schema("v201", "CostUpdatedRequest")
    answer_schema = _schema("v201", "TransactionEventResponse")

    async def main() -> None:
        async with CSMSServer(core, host="127.0.0.1", port=0) as server, connect(
                f"{server.url}/CS1", subprotocols=[Subprotocol("ocpp2.0.1")],
                open_timeout=TIMEOUT_S) as ws:
            await ws.send(json.dumps([2, "s", "TransactionEvent",
                                      _tx("Started", 0, at(16.5), 0.0)]))
            assert (await _recv(ws))[0] == 3
            now[0] = at(17.5)
            await ws.send(json.dumps([2, "u", "TransactionEvent",
                                      _tx("Updated", 1, at(17.5), 10_000.0)]))
            frames = [await _recv(ws), await _recv(ws)]
            call = next(f for f in frames if f[0] == 2)
            assert call[2] == "CostUpdated"
            jsonschema.validate(call[3], cost_schema)
            assert call[3] == {"transactionId": "tx-1", "totalCost": pytest.approx(3.5)}
            await ws.send(json.dumps([3, call[1], {}]))
            now[0] = at(18)
            await ws.send(json.dumps([2, "e", "TransactionEvent",
                                      _tx("Ended", 2, at(18), 15_000.0)]))
            reply = await _recv(ws)
            jsonschema.validate(reply[2], answer_schema)
            assert reply[2]["totalCost"] == pytest.approx(6.0)

    asyncio.run(main())
    core.store.close()


def test_a_21_station_is_sent_a_schema_valid_tou_tariff_with_the_idle_fee() -> None:
    """SetDefaultTariff over a real OCPP 2.1 websocket: the bands as local-time
    conditions, the site's offset in every price, the idle fee after the grace."""
    tariff = Tariff(kind="tou", bands=TOU, idle_fee_per_min=0.10, idle_grace_min=30,
                    idle_fee_cap=12.0, site_offsets_per_kwh=(("site", -0.05),))
    core, _ = _core(tariff)
    schema = _schema("v21", "SetDefaultTariffRequest")
    sent: list[dict[str, Any]] = []

    async def main() -> None:
        async with CSMSServer(core, host="127.0.0.1", port=0) as server, connect(
                f"{server.url}/CS1", subprotocols=[Subprotocol("ocpp2.1")],
                open_timeout=TIMEOUT_S) as ws:
            await ws.send(json.dumps([2, "h", "Heartbeat", {}]))
            assert (await _recv(ws))[0] == 3
            shell = server.connections["CS1"]
            task = asyncio.create_task(shell.set_default_tariff(0))
            call = await _recv(ws)
            assert call[2] == "SetDefaultTariff"
            sent.append(call[3])
            await ws.send(json.dumps([3, call[1], {"status": "Accepted"}]))
            assert (await asyncio.wait_for(task, TIMEOUT_S))["status"] == "Accepted"

    asyncio.run(main())
    core.store.close()
    jsonschema.validate(sent[0], schema)
    prices = sent[0]["tariff"]["energy"]["prices"]
    assert prices == [
        {"priceKwh": pytest.approx(0.15), "conditions": {"startTimeOfDay": "00:00",
                                                         "endTimeOfDay": "17:00"}},
        {"priceKwh": pytest.approx(0.45), "conditions": {"startTimeOfDay": "17:00",
                                                         "endTimeOfDay": "21:00"}},
        {"priceKwh": pytest.approx(0.15), "conditions": {"startTimeOfDay": "21:00",
                                                         "endTimeOfDay": "00:00"}}]
    assert sent[0]["tariff"]["idleTime"]["prices"] == [
        {"priceMinute": pytest.approx(0.10), "conditions": {"minIdleTime": 1800}}]
    assert tariff_21(Tariff(), "x") == {"tariffId": "x", "currency": "EUR",
                                        "energy": {"prices": [{"priceKwh": 0.3}]}}


def test_the_csms_surcharges_the_session_that_starts_at_high_occupancy() -> None:
    """A site of two EVSEs, threshold 100 %: the first session (1 of 2 busy) pays
    10 kWh x 0.30 = 3.00, the second (2 of 2) 10 x (0.30 + 0.20) = 5.00."""
    tariff = Tariff(kind="occupancy", occupancy_threshold=1.0, occupancy_surcharge_per_kwh=0.2)
    config = CSMSConfig(stations=(StationSpec("CS1", "site", (EvseSpec(1, 11_000.0),
                                                              EvseSpec(2, 11_000.0))),),
                        sites=(SiteSpec("site"),), id_tokens=frozenset({"TOKEN1"}),
                        tariff=tariff)
    now = at(10)
    core = CSMSCore(config, Store(":memory:"), clock=lambda: now)

    def event(kind: str, seq: int, tx: str, evse: int, hours: float, wh: float) -> Any:
        payload = _tx(kind, seq, at(hours), wh)
        payload["transactionInfo"]["transactionId"] = tx
        if kind == "Started":
            payload["evse"] = {"id": evse, "connectorId": 1}
        return core.on_transaction_event("CS1", payload)

    event("Started", 0, "a", 1, 9.0, 0.0)
    event("Started", 0, "b", 2, 9.5, 0.0)
    assert event("Ended", 1, "a", 1, 10.0, 10_000.0)["total_cost"] == pytest.approx(3.0)
    assert event("Ended", 1, "b", 2, 10.0, 10_000.0)["total_cost"] == pytest.approx(5.0)
    assert core.tariffs.totals()["surcharges"] == pytest.approx(2.0)
    core.store.close()


def test_a_bad_csms_tariff_names_its_field(tmp_path: Path) -> None:
    from evtwin.csms.config import load_config
    from evtwin.csms.exceptions import ConfigError

    path = tmp_path / "csms.toml"
    path.write_text('[tariff]\nkind = "tou"\ntimezone = "Mars/Base"\n'
                    'bands = [{start_h = 0, price_per_kwh = 0.2}]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tariff\.timezone: unknown time zone 'Mars/Base'"):
        load_config(path)


# ------------------------------------------------------------------ driver response
EV = Vehicle(capacity_kwh=50.0, max_power_kw=11.0, phases=3, efficiency=1.0)


def _visit(arrival_h: float, **kw: Any) -> Visit:
    fields: dict[str, Any] = {"arrival_s": arrival_h * 3600.0,
                              "departure_s": (arrival_h + 4) * 3600.0, "soc_initial": 0.2,
                              "target_soc": 0.6, "patience_s": 600.0} | kw
    return Visit(**fields)


def _driver(flexible: bool = True, threshold: float = 0.05) -> Driver:
    return Driver("a", EV, flexible, threshold, True)


def test_elasticity_takes_less_energy_by_the_constant_elasticity() -> None:
    """20 kWh wanted at 0.45 against a 0.30 reference, elasticity -0.2:
    20 x 1.5 ** -0.2 = 18.443 kWh, so 1.557 kWh less; at or below the reference, none."""
    v = _visit(10)
    target = reduced_target_soc(v, 0.45, 0.30, -0.2)
    assert (v.target_soc - target) * 50.0 == pytest.approx(20.0 - 20.0 * 1.5 ** -0.2)
    assert (v.target_soc - target) * 50.0 == pytest.approx(1.557, abs=1e-3)
    assert reduced_target_soc(v, 0.30, 0.30, -0.2) == v.target_soc
    assert reduced_target_soc(v, 0.20, 0.30, -0.2) == v.target_soc


def test_cheaper_public_site_is_chosen_only_when_it_beats_the_detour() -> None:
    """20 kWh: site b is 0.10/kWh cheaper, 2.00 a visit, more than a 1.00 detour: go;
    with a 3.00 detour, stay. A home (not public) site never sends anyone away."""
    sites = {"a": SiteInfo("public", 11.0, True), "b": SiteInfo("public", 11.0, True),
             "c": SiteInfo("public", 11.0, True)}

    def price(site: str, t_s: float) -> float:
        return {"a": 0.40, "b": 0.30, "c": 0.38}[site]

    kw = {"price": price, "sites": sites, "reference_per_kwh": 0.30, "duration_s": 86400.0}
    params = PriceResponse(detour_cost=1.0, energy_elasticity=0.0)
    moved, response = respond(_visit(10), _driver(False), params=params, **kw)
    assert moved.site == "b" and response.site_switched_from == "a"
    stayed, response = respond(_visit(10), _driver(False),
                               params=PriceResponse(detour_cost=3.0, energy_elasticity=0.0),
                               **kw)
    assert stayed.site is None and response.site_switched_from is None
    home = {"a": SiteInfo("home", 11.0, False), "b": SiteInfo("public", 11.0, True),
            "c": SiteInfo("public", 11.0, True)}
    kept, _ = respond(_visit(10), _driver(False), params=params, price=price, sites=home,
                      reference_per_kwh=0.30, duration_s=86400.0)
    assert kept.site is None


def test_a_flexible_driver_shifts_out_of_the_peak_band_and_an_inflexible_one_does_not() -> None:
    """Arrival 17:30 for 20 kWh at 11 kW (1.818 h, priced at 22 points 297.5 s apart)
    under 0.20 with 0.50 from 17 to 21 h, here all at 0.50. Two hours earlier (15:30)
    only the last 0.32 h are peak; two hours later (19:30) the last 4 of 22 points are
    after 21 h: (18 x 0.50 + 4 x 0.20) / 22 = 0.4455, a saving of 0.0545 > 0.05. The
    earliest worth-while move is -2 h, the latest +2 h; the draw picks between them."""
    sites = {"a": SiteInfo("public", 11.0, True)}

    def price(site: str, t_s: float) -> float:
        hour = (t_s / 3600.0) % 24
        return 0.50 if 17 <= hour < 21 else 0.20

    kw = {"price": price, "sites": sites, "reference_per_kwh": 0.20, "duration_s": 86400.0,
          "params": PriceResponse(shift_window_h=2.0, energy_elasticity=0.0)}
    earliest, response = respond(_visit(17.5), _driver(True), pick=0.0, **kw)
    assert response.price_shifted_s == -7200.0
    assert earliest.arrival_s == 15.5 * 3600.0
    assert earliest.departure_s - earliest.arrival_s == 4 * 3600.0
    latest, response = respond(_visit(17.5), _driver(True), pick=0.999, **kw)
    assert response.price_shifted_s == 7200.0 and latest.arrival_s == 19.5 * 3600.0
    # A threshold of 0.06 leaves the +2 h move (0.0545) out: the latest is earlier.
    _, response = respond(_visit(17.5), _driver(True, threshold=0.06), pick=0.999, **kw)
    assert response.price_shifted_s < 0
    kept, response = respond(_visit(17.5), _driver(False), pick=0.5, **kw)
    assert kept.arrival_s == 17.5 * 3600.0 and response.price_shifted_s == 0.0
    # A saving below the driver's threshold moves no one.
    kept, _ = respond(_visit(17.5), _driver(True, threshold=1.0), **kw)
    assert kept.arrival_s == 17.5 * 3600.0


# ------------------------------------------------------------------ twin runs
def _scenario(tariff: dict[str, Any] | None, **site: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "prices", "seed": 3, "start": "2026-06-02T00:00:00", "duration_h": 24,
        "step_s": 900, "run": {"transport": "direct"},
        "grid": {"network": "kerber_dorfnetz", "engine": "pgm"},
        "csms": {"meter_interval_s": 900, "aligned_interval_s": 900},
        "control": {"strategy": "uncontrolled", "interval_s": 900}, "ev": {"count": 30},
        "sites": [{"name": "square", "kind": "public", "stations": 15,
                   "evses_per_station": 2, "evse_max_kw": 11,
                   "behaviour": {"arrival_mean_h": 18.0, "arrival_std_h": 1.0} | site}]}
    if tariff is not None:
        data["tariff"] = tariff
    return data


BANDS = [{"start_h": 0, "price_per_kwh": 0.25}, {"start_h": 16, "price_per_kwh": 0.60},
         {"start_h": 21, "price_per_kwh": 0.25}]


@pytest.mark.slow
def test_under_a_peak_band_flexible_drivers_shift_and_the_site_peak_falls() -> None:
    """Evening arrivals at a public site, ToU peak 16-21 h at 0.60 against 0.25: with
    every driver flexible (3 h window) the peak import falls below the flat tariff's
    (same seed, same drivers); with none flexible nobody moves."""
    flat = run_scenario(parse_scenario(_scenario({"kind": "flat", "energy_per_kwh": 0.25})))
    flex = run_scenario(parse_scenario(_scenario({
        "kind": "tou", "energy_per_kwh": 0.25, "tou": BANDS,
        "response": {"flexible_share": 1.0, "shift_window_h": 3}})))
    rigid = run_scenario(parse_scenario(_scenario({
        "kind": "tou", "energy_per_kwh": 0.25, "tou": BANDS,
        "response": {"flexible_share": 0.0, "energy_elasticity": 0.0}})))
    assert flat.kpis["sessions_price_shifted"] == 0
    assert flex.kpis["sessions_price_shifted"] > 10
    assert flex.kpis["peak_site_import_kw"] < 0.95 * flat.kpis["peak_site_import_kw"]

    def in_peak(r: Any) -> int:
        hour = (r.sessions["arrival_s"] / 3600.0) % 24
        return int(((hour >= 16.0) & (hour < 21.0)).sum())
    assert in_peak(flex) <= in_peak(flat) - 10
    assert rigid.kpis["sessions_price_shifted"] == 0
    assert list(rigid.sessions["arrival_s"]) == list(flat.sessions["arrival_s"])
    # Same energy, dearer hours: the rigid drivers pay more than under the flat tariff.
    assert rigid.kpis["driver_revenue"] > flat.kpis["driver_revenue"]


def _meter_idle_fees(db: Path, rate: float, grace_min: float, cap: float) -> float:
    """Idle fees worked out from the CSMS's stored readings, independently of
    evtwin.csms.tariffs: per ended transaction, minutes from the first reading that
    shows the final register to the end, less the grace, times the rate, capped."""
    import sqlite3

    con = sqlite3.connect(db)
    total = 0.0
    for tx_id, ended, stop in con.execute(
            "SELECT transaction_id, ended_at, meter_stop_wh FROM transactions "
            "WHERE ended_at IS NOT NULL"):
        rows = con.execute(
            "SELECT timestamp, value FROM meter_values WHERE transaction_id = ? AND "
            "measurand = 'Energy.Active.Import.Register' AND phase IS NULL", (tx_id,)).fetchall()
        readings = sorted((datetime.fromisoformat(t.replace("Z", "+00:00")), v)
                          for t, v in rows)
        end = datetime.fromisoformat(ended.replace("Z", "+00:00"))
        final = max([v for _, v in readings] + [stop])
        full_at = min([t for t, v in readings if v >= final] + [end])
        minutes = max((end - full_at).total_seconds() / 60.0 - grace_min, 0.0)
        total += min(minutes * rate, cap)
    con.close()
    return total


@pytest.mark.slow
def test_idle_fee_makes_drivers_leave_sooner_and_its_revenue_matches_the_readings(
        tmp_path: Path) -> None:
    """A 0.10/min idle fee after 15 min, capped at 12: drivers who answer it (all of
    them) unplug sooner than drivers who ignore it (none), and the idle-fee revenue of
    each run is what the stored meter readings give by hand."""
    fee = {"kind": "flat", "energy_per_kwh": 0.30, "idle_fee_per_min": 0.10,
           "idle_grace_min": 15, "idle_fee_cap": 12.0}
    site = {"dwell_median_h": 6.0, "energy_median_kwh": 8.0}
    runs = {}
    for share in (0.0, 1.0):
        twin = Twin(parse_scenario(_scenario(fee | {"response": {"idle_response_share": share}},
                                             **site)), database=tmp_path / f"{share}.sqlite")
        runs[share] = twin.run()
        hand = _meter_idle_fees(tmp_path / f"{share}.sqlite", 0.10, 15.0, 12.0)
        assert runs[share].kpis["idle_fee_revenue"] == pytest.approx(hand, abs=1e-6)
    ignore, answer = runs[0.0], runs[1.0]
    assert ignore.kpis["sessions_left_for_idle_fee"] == 0
    assert answer.kpis["sessions_left_for_idle_fee"] > 5
    assert ignore.kpis["idle_fee_revenue"] > 10 * max(answer.kpis["idle_fee_revenue"], 0.1)

    def plugged_h(r: Any) -> float:
        s = r.sessions[r.sessions["outcome"] == "served"]
        return float((s["unplugged_s"] - s["plugged_s"]).mean() / 3600.0)
    assert plugged_h(answer) < plugged_h(ignore) - 1.0
    assert answer.kpis["evse_utilisation_percent"] < ignore.kpis["evse_utilisation_percent"]


# ------------------------------------------------------------------ scenario files
def test_tariff_errors_name_the_field() -> None:
    data = _scenario({"kind": "tou"})
    with pytest.raises(ScenarioError, match=r"tariff.*tou.*at least one band"):
        parse_scenario(data)
    with pytest.raises(ScenarioError, match=r"tariff\.site_offsets_per_kwh\.nowhere"):
        parse_scenario(_scenario({"site_offsets_per_kwh": {"nowhere": -0.1}}))
    with pytest.raises(ScenarioError, match=r"tariff\.response\.flexible_shares"):
        parse_scenario(_scenario({"response": {"flexible_shares": 0.5}}))
    with pytest.raises(ScenarioError, match=r"tariff\.occupancy_surcharge_per_kwh"):
        parse_scenario(_scenario({"kind": "occupancy"}))
    with pytest.raises(ScenarioError) as err:
        parse_scenario(_scenario({"kind": "tou"}))
    for line in str(err.value).splitlines():
        assert line.startswith("<scenario>: tariff")


@pytest.mark.parametrize("kind", ["flat", "tou", "occupancy"])
def test_the_shipped_prices_scenario_takes_each_kind_as_an_override(kind: str) -> None:
    sc = load_scenario(SCENARIOS / "prices.toml", {"tariff.kind": kind})
    assert sc.tariff is not None and sc.tariff.kind == kind


@pytest.mark.slow
def test_a_scenario_without_tariff_gives_the_kpis_it_gave_before() -> None:
    """demo.toml as it is, and with an explicit flat tariff equal to the CSMS's default
    (drivers answering it): every KPI the plain run has is the same."""
    plain = load_scenario(SCENARIOS / "demo.toml", {"run.transport": "direct"})
    flat = plain.model_copy(update={"tariff": parse_scenario(
        _scenario({"kind": "flat", "energy_per_kwh": 0.30})).tariff})
    a, b = run_scenario(plain), run_scenario(flat)
    assert "driver_revenue" not in a.kpis
    assert {k: a.kpis[k] for k in a.kpis} == {k: b.kpis[k] for k in a.kpis}
    assert b.kpis["driver_revenue"] == pytest.approx(0.30 * a.kpis["energy_billed_kwh"])
    assert np.isclose(b.kpis["sessions_price_shifted"], 0.0)


@pytest.mark.parametrize("transport", ["websocket", "direct"])
def test_virtual_21_stations_get_and_keep_the_tariff_they_show(transport: str) -> None:
    """A 2.1 twin run with [tariff]: every station is sent SetDefaultTariff after it
    boots, accepts it, and holds the TOU prices as the 2.1 schema has them."""
    from evtwin.sim.runner import Twin

    sc = load_scenario(SCENARIOS / "prices.toml",
                       {"csms.protocol": "2.1", "duration_h": "1", "run.transport": transport})
    twin = Twin(sc)
    twin.run()
    schema = _schema("v21", "SetDefaultTariffRequest")
    for st in twin.model.stations:
        shown = st.tariffs[0]
        jsonschema.validate({"evseId": 0, "tariff": shown}, schema)
        prices = [p["priceKwh"] for p in shown["energy"]["prices"]]
        offset = sc.tariff.site_offsets_per_kwh.get(st.site, 0.0)
        assert sorted(prices) == pytest.approx(sorted(
            b.price_per_kwh + offset for b in sc.tariff.tou))
        assert set(st.tariffs) == {0, *st.evses}


def test_a_201_station_shows_the_running_cost_it_is_sent() -> None:
    from evtwin.sim.runner import Twin

    sc = load_scenario(SCENARIOS / "prices.toml",
                       {"start": "2026-06-02T08:00:00", "duration_h": "4",
                        "tariff.cost_updated_interval_s": "300",
                        "run.transport": "websocket"})
    twin = Twin(sc)
    result = twin.run()
    shown = {tx: cost for st in twin.model.stations for tx, cost in st.running_cost.items()}
    assert shown, "CostUpdated reached the stations"
    final = {t["transaction_id"]: t for t in result.transactions}
    for tx, cost in shown.items():  # a running cost never exceeds what was finally billed
        if tx in final and final[tx].get("total_cost") is not None:
            assert cost <= final[tx]["total_cost"] + 1e-9
