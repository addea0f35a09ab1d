"""Roaming in the twin ([roaming], evtwin.sim.roaming): the twin's CSMS is an OCPI CPO,
an eMSP on loopback issues a share of the drivers' tokens. Their starts are authorized
by the eMSP over HTTP in real time, their CDRs reach it and it bills them: the KPIs'
settlement equals what the CSMS itself billed those drivers, the other drivers never
touch the eMSP, and the same seed gives the same run on both transports that carry
OCPP messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def roaming_scenario(transport: str, **roaming: Any) -> Any:
    from evtwin.sim.scenario import parse_scenario

    return parse_scenario({
        "name": "roam", "seed": 7, "start": "2026-06-01T06:00:00", "duration_h": 12,
        "step_s": 300, "grid": {"network": "kerber_dorfnetz", "engine": "pgm"},
        "csms": {"protocol": "2.0.1", "meter_interval_s": 900, "heartbeat_interval_s": 900},
        "run": {"transport": transport}, "ev": {"count": 16},
        "tariff": {"energy_per_kwh": 0.40, "session_fee": 0.50},
        "sites": [{"name": "lot", "kind": "public", "stations": 2, "evses_per_station": 2,
                   "evse_max_kw": 22}],
        "roaming": {"share": 0.5, "markup_percent": 10.0, "fee_per_session": 0.35,
                    **roaming},
    })


def test_roaming_drivers_are_authorized_by_the_emsp_and_settled(tmp_path: Path) -> None:
    import sqlite3

    from evtwin.sim.runner import Twin

    twin = Twin(roaming_scenario("websocket"), database=tmp_path / "csms.db")
    result = twin.run()
    k = result.kpis
    assert twin.roaming is not None
    roaming_evs = {ev.ev_id for ev in twin.roaming.evs}
    assert k["roaming_drivers"] == len(roaming_evs) >= 4
    bills = result.tables["roaming"]
    assert k["roaming_sessions"] == len(bills) >= 3
    assert k["roaming_authorizations"] >= k["roaming_sessions"]  # each start asked
    assert set(bills["driver"]) <= roaming_evs  # only the eMSP's customers
    # What the CSMS billed for those drivers' ended sessions is what the eMSP owes.
    con = sqlite3.connect(tmp_path / "csms.db")
    try:
        cdrs = pd.read_sql_query("SELECT id_token, cost, energy_wh FROM cdrs", con)
    finally:
        con.close()
    tokens = {ev.id_token for ev in twin.roaming.evs}
    theirs = cdrs[cdrs["id_token"].isin(tokens)]
    assert len(theirs) == k["roaming_sessions"]
    assert k["roaming_owed_to_cpo"] == pytest.approx(theirs["cost"].sum(), abs=0.01)
    assert k["roaming_energy_kwh"] == pytest.approx(theirs["energy_wh"].sum() / 1000, abs=1e-3)
    assert k["roaming_paid_by_drivers"] == pytest.approx(
        sum(round(c * 1.10 + 0.35, 2) for c in theirs["cost"]), abs=0.01)
    # Roaming drivers charged: their sessions were served, not refused for an
    # unknown token.
    served = result.sessions[result.sessions["ev_id"].isin(roaming_evs)
                             & (result.sessions["outcome"] == "served")]
    assert len(served) >= k["roaming_sessions"] - 1
    assert not any(t in bills.to_csv() for t in tokens)  # the table names no raw token


def test_always_whitelisted_tokens_are_authorized_by_the_cpo_alone(tmp_path: Path) -> None:
    """Tokens the eMSP pushed as ALWAYS: the CPO decides without asking (no real-time
    call), over the memory transport; the sessions still reach the eMSP and settle."""
    from evtwin.sim.runner import Twin

    never = Twin(roaming_scenario("memory"), database=tmp_path / "a.db").run().kpis
    always = Twin(roaming_scenario("memory", whitelist="ALWAYS"),
                  database=tmp_path / "b.db").run().kpis
    assert never["roaming_authorizations"] >= never["roaming_sessions"] >= 3
    assert always["roaming_authorizations"] == 0
    # The same drivers and visits: the same sessions and money either way.
    for key in ("roaming_sessions", "roaming_energy_kwh", "roaming_owed_to_cpo"):
        assert always[key] == pytest.approx(never[key]), key


def test_roaming_needs_ocpp_messages_and_the_csms_in_process() -> None:
    from evtwin.sim.exceptions import ScenarioError
    from evtwin.sim.runner import Twin

    with pytest.raises(ScenarioError, match="roaming"):
        Twin(roaming_scenario("direct"))


def test_the_twin_dashboard_lists_the_emsp_as_a_roaming_partner(tmp_path: Path) -> None:
    """With [roaming] and --dashboard, the dashboard's partners are the CPO's: the eMSP."""
    from evtwin.csms.dashboard import new_user
    from evtwin.sim.runner import Twin
    from evtwin.sim.twin_dashboard import TwinDashboard

    seen: list[list[dict[str, Any]]] = []

    class Peek:
        async def start(self, server: Any) -> None:
            assert dash.dashboard is not None
            seen.append(dash.dashboard.snapshot()["partners"])

        async def stop(self) -> None:
            pass

    twin = Twin(roaming_scenario("memory").model_copy(update={"duration_h": 1}),
                database=tmp_path / "csms.db")
    dash = TwinDashboard(twin, users=[new_user("ada")[0]], port=0, say=lambda _line: None)
    twin.companions += [dash, Peek()]
    twin.run()
    (partners,) = seen
    assert [p["roles"] for p in partners] == [["EMSP"]]
    assert "NL*MSP" in partners[0]["name"]
