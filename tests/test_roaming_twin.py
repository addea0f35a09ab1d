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
    assert len(roaming_evs) >= 4
    bills = result.tables["roaming"]
    assert k["roaming_drivers"] == bills["driver"].nunique() >= 3
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


def two_operators(transport: str = "memory", whitelist: str = "NEVER") -> Any:
    sc = roaming_scenario(transport)
    data = sc.model_dump(mode="json")
    data["ev"]["count"] = 24
    data["sites"] = [{**data["sites"][0], "name": "lot"}, {**data["sites"][0], "name": "mall"}]
    data["roaming"] = {"whitelist": whitelist, "operators": [
        {"name": "Alpha", "cpo_party_id": "ALC", "emsp_party_id": "ALE", "sites": ["lot"],
         "drivers_share": 0.5},
        {"name": "Beta", "cpo_party_id": "BEC", "emsp_party_id": "BEE", "sites": ["mall"],
         "drivers_share": 0.5}]}
    from evtwin.sim.scenario import parse_scenario

    return parse_scenario(data)


@pytest.mark.parametrize("whitelist", ["NEVER", "ALWAYS"])
def test_two_operators_roam_on_each_other_and_settle_the_difference(whitelist: str,
                                                                     tmp_path: Path) -> None:
    """Two operators on the twin's CSMS platform, each a CPO for its site and an eMSP
    for its drivers: a driver at the other operator's site roams (asked about in real
    time, billed by their own eMSP, owed to the other CPO); at their own site they do
    not. The net settlement is what the CSMS's own CDRs say."""
    import sqlite3

    from evtwin.sim.runner import Twin

    twin = Twin(two_operators(whitelist=whitelist), database=tmp_path / "csms.db")
    result = twin.run()
    k = result.kpis
    assert twin.roaming is not None
    alpha, beta = twin.roaming.networks
    network = {ev.id_token: n.name for n in (alpha, beta) for ev in n.evs}
    assert len(network) == 24  # every driver belongs to one
    site_of = {st.station_id: st.site for st in twin.model.stations}
    operator_of = {"lot": "Alpha", "mall": "Beta"}
    con = sqlite3.connect(tmp_path / "csms.db")
    try:
        cdrs = pd.read_sql_query("SELECT station_id, id_token, cost FROM cdrs", con)
    finally:
        con.close()
    cdrs["cpo"] = [operator_of[site_of[s]] for s in cdrs["station_id"]]
    cdrs["home"] = [network[t] for t in cdrs["id_token"]]
    roams = cdrs[cdrs["cpo"] != cdrs["home"]]
    assert len(roams) >= 2 and (cdrs["cpo"] == cdrs["home"]).sum() >= 2
    assert k["roaming_sessions"] == len(roams)
    assert k["home_sessions"] == len(cdrs) - len(roams)
    a_to_b = roams[roams["home"] == "Alpha"]["cost"].sum()
    b_to_a = roams[roams["home"] == "Beta"]["cost"].sum()
    assert k["roaming_net_settlement"] == pytest.approx(a_to_b - b_to_a, abs=0.02)
    settlement = result.tables["settlement"]
    assert set(zip(settlement["emsp"], settlement["cpo"], strict=True)) <= {
        ("NL*ALE", "NL*BEC"), ("NL*BEE", "NL*ALC")}
    # Every session, home or roaming, was billed by the driver's own eMSP ...
    assert len(result.tables["roaming"]) == len(cdrs)
    # ... and asked about in real time (NEVER), or decided by the CPO alone (ALWAYS).
    if whitelist == "NEVER":
        assert k["roaming_authorizations"] >= len(cdrs)
    else:
        assert k["roaming_authorizations"] == 0
