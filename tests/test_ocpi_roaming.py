"""Roaming end to end: two ``evtwin csms serve`` CPOs and an ``evtwin emsp serve`` eMSP as
separate processes on loopback, talking OCPI 2.2.1 over real HTTP.

The eMSP registers with both CPOs (credentials handshake with each CPO's one-time
token A) and pushes its drivers' tokens (whitelist NEVER: every start is asked about
in real time). A driver of the eMSP charges at CPO B over OCPP 1.6 and another at CPO A
over OCPP 2.0.1: the Authorize goes from the CPO to the eMSP while the station waits,
the session and its CDR are pushed to the eMSP, and the amounts agree on all sides
(the CPO's own CDR, the OCPI CDR the eMSP received, the CDR the eMSP pulls, the
settlement and the driver's bill). A token no eMSP knows is refused.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from evtwin.csms.ocpi.models import CDR, Session
from evtwin.csms.ocpi.transport import authorization_header
from tests.test_csms_standalone import TIMEOUT_S, ServerProcess, at, boot, csms_process, station

pytestmark = pytest.mark.slow

SITE = """
[[sites]]
name = "{site}"
display_name = "{site} car park"
address = "{site}straat 1"
city = "Utrecht"
postal_code = "3511AB"
country = "NLD"
latitude = {lat}
longitude = 5.1214
time_zone = "Europe/Amsterdam"
"""

CPO = """
[control]
interval_s = 5

[tariff]
energy_per_kwh = {price}
session_fee = {fee}
currency = "EUR"
{site_block}
[[stations]]
id = "{station}"
site = "{site}"
evse_max_kw = [22]

[tokens]
accepted = ["LOCAL-ONLY"]

[ocpi]
country_code = "NL"
party_id = "{party}"
name = "CPO {party}"
port = {ocpi_port}
registry = "ocpi.sqlite"
"""

EMSP = """
[emsp]
country_code = "NL"
party_id = "MSP"
name = "Roam Easy"
port = 0
registry = "emsp.sqlite"

[billing]
markup_percent = 10.0
fee_per_session = 0.35

[[drivers]]
id = "driver-1"
tokens = [{{ uid = "04AA11BB22CC33", contract_id = "NL-MSP-C00000001-1" }}]

[[drivers]]
id = "driver-2"
tokens = [{{ uid = "04DD44EE55FF66", contract_id = "NL-MSP-C00000002-2" }}]

[[partners]]
versions_url = "{a_url}"
token_a = "{a_token}"

[[partners]]
versions_url = "{b_url}"
token_a = "{b_token}"
"""


def cpo_dir(tmp_path: Path, party: str, station_id: str, site: str, price: float,
            fee: float, lat: float) -> Path:
    d = tmp_path / party
    d.mkdir()
    (d / "csms.toml").write_text(CPO.format(
        price=price, fee=fee, station=station_id, site=site, party=party,
        site_block=SITE.format(site=site, lat=lat), ocpi_port=free_port()))
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token_a(config: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "evtwin.sim.cli", "csms", "ocpi-token",
                          "--config", str(config)], capture_output=True, text=True,
                         timeout=TIMEOUT_S, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("# give the partner both") and "/ocpi/versions" in lines[0]
    return lines[1]


@contextmanager
def emsp_process(config: Path) -> Iterator[ServerProcess]:
    proc = subprocess.Popen([sys.executable, "-m", "evtwin.sim.cli", "emsp", "serve",
                             str(config)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    server = ServerProcess(proc)

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                server.logs.append(json.loads(line))
            except ValueError:
                server.logs.append({"raw": line})

    threading.Thread(target=drain, daemon=True).start()
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(timeout=TIMEOUT_S)


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def wait_rows(db: Path, sql: str, n: int, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    deadline = time.monotonic() + TIMEOUT_S
    rows: list[sqlite3.Row] = []
    while time.monotonic() < deadline:
        if db.exists():
            try:
                rows = query(db, sql, params)
            except sqlite3.OperationalError:  # table not made yet
                rows = []
            if len(rows) >= n:
                return rows
        time.sleep(0.05)
    raise AssertionError(f"{sql}: {len(rows)} rows, wanted {n}")


def test_a_roaming_session_end_to_end_across_two_cpos_and_an_emsp(tmp_path: Path) -> None:
    a = cpo_dir(tmp_path, "CPA", "A1", "centrum", 0.30, 0.0, 52.0907)
    b = cpo_dir(tmp_path, "CPB", "B1", "station", 0.45, 1.0, 52.0894)
    token_a_a, token_a_b = token_a(a / "csms.toml"), token_a(b / "csms.toml")
    with csms_process(a, a / "csms.toml") as cpo_a, csms_process(b, b / "csms.toml") as cpo_b:
        a_url = cpo_a.event("listening")["ocpi_url"]
        b_url = cpo_b.event("listening")["ocpi_url"]
        assert a_url.startswith("http://127.0.0.1:") and a_url.endswith("/ocpi/versions")
        e = tmp_path / "emsp"
        e.mkdir()
        (e / "emsp.toml").write_text(EMSP.format(a_url=a_url, a_token=token_a_a, b_url=b_url,
                                                 b_token=token_a_b))
        with emsp_process(e / "emsp.toml") as emsp:
            emsp.event("listening")
            # Registered with both CPOs (credentials handshake), tokens pushed to each.
            wait_rows(e / "emsp.sqlite", "SELECT * FROM parties WHERE status = 'registered'", 2)
            for d in (a, b):
                wait_rows(d / "ocpi.sqlite", "SELECT * FROM objects WHERE kind = 'token'", 2)
                assert len(query(d / "ocpi.sqlite", "SELECT * FROM parties "
                                 "WHERE status = 'registered'")) == 1
            # Token A is used up by the registration (tests/test_ocpi_endpoints.py shows
            # a second registration with it refused).
            assert query(a / "ocpi.sqlite", "SELECT used_at FROM token_a")[0]["used_at"]

            # Driver 1 at CPO B, OCPP 1.6.
            with station(cpo_b, "B1", "ocpp1.6") as st:
                boot(st, "ocpp1.6")
                st.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                               "status": "Available", "timestamp": at("07:59")})
                r = st.call("Authorize", {"idTag": "04AA11BB22CC33"})
                assert r[2]["idTagInfo"]["status"] == "Accepted"
                # ... because the eMSP said so, in real time, for this location.
                auths = wait_rows(e / "emsp.sqlite", "SELECT * FROM authorizations", 1)
                assert auths[0]["allowed"] == "ALLOWED" and auths[0]["location"] == "station"
                r = st.call("StartTransaction", {"connectorId": 1, "idTag": "04AA11BB22CC33",
                                                 "meterStart": 1000, "timestamp": at("08:00")})
                assert r[2]["idTagInfo"]["status"] == "Accepted"
                tx = r[2]["transactionId"]
                st.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                               "status": "Charging", "timestamp": at("08:00")})
                st.call("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
                    {"timestamp": at("09:00"), "sampledValue": [
                        {"value": "11000", "measurand": "Energy.Active.Import.Register",
                         "unit": "Wh"}]}]})
                st.call("StopTransaction", {"transactionId": tx, "meterStop": 21000,
                                            "timestamp": at("10:00"), "reason": "Local"})
                # A token nobody knows: every eMSP answers 2004, the station gets Invalid.
                r = st.call("Authorize", {"idTag": "DEADBEEF"})
                assert r[2]["idTagInfo"]["status"] == "Invalid"

            # Driver 2 at CPO A, OCPP 2.0.1.
            with station(cpo_a, "A1", "ocpp2.0.1") as st:
                boot(st, "ocpp2.0.1")
                id_token = {"idToken": "04DD44EE55FF66", "type": "ISO14443"}
                r = st.call("Authorize", {"idToken": id_token})
                assert r[2]["idTokenInfo"]["status"] == "Accepted"
                meter = [{"timestamp": at("12:00"), "sampledValue": [
                    {"value": 5000.0, "measurand": "Energy.Active.Import.Register"}]}]
                st.call("TransactionEvent", {
                    "eventType": "Started", "timestamp": at("12:00"), "triggerReason": "Authorized",
                    "seqNo": 0, "transactionInfo": {"transactionId": "tx-a1"},
                    "idToken": id_token, "evse": {"id": 1, "connectorId": 1},
                    "meterValue": meter})
                meter = [{"timestamp": at("12:30"), "sampledValue": [
                    {"value": 12500.0, "measurand": "Energy.Active.Import.Register"}]}]
                st.call("TransactionEvent", {
                    "eventType": "Ended", "timestamp": at("12:30"),
                    "triggerReason": "StopAuthorized", "seqNo": 1,
                    "transactionInfo": {"transactionId": "tx-a1", "stoppedReason": "Local"},
                    "meterValue": meter})

            bills = wait_rows(e / "emsp.sqlite", "SELECT * FROM bills ORDER BY cpo", 2)
            # The CPOs' own CDRs (their OCPP stores) ...
            cdr_b = query(b / "csms.sqlite", "SELECT * FROM cdrs")[0]
            cdr_a = query(a / "csms.sqlite", "SELECT * FROM cdrs")[0]
            assert cdr_b["cost"] == pytest.approx(1.0 + 0.45 * 20.0)
            assert cdr_a["cost"] == pytest.approx(0.30 * 7.5)
            # ... the OCPI CDRs the eMSP received, valid against the 2.2.1 CDR object ...
            received = {r["party_id"]: CDR.model_validate(json.loads(r["data"])) for r in
                        query(e / "emsp.sqlite", "SELECT * FROM objects WHERE kind = 'cdr'")}
            assert received["CPB"].total_cost.excl_vat == pytest.approx(cdr_b["cost"])
            assert received["CPA"].total_cost.excl_vat == pytest.approx(cdr_a["cost"])
            assert received["CPB"].total_energy == pytest.approx(20.0)
            assert received["CPB"].cdr_token.uid == "04AA11BB22CC33"
            assert received["CPB"].cdr_location.id == "station"
            assert received["CPB"].total_time == pytest.approx(2.0)
            # ... the CDR the eMSP pulls from CPO B (GET cdrs, its own token) ...
            party_b = next(r for r in query(e / "emsp.sqlite", "SELECT * FROM parties")
                       if "CPB" in r["roles"])
            cdrs_url = next(x["url"] for x in json.loads(party_b["endpoints"])
                            if x["identifier"] == "cdrs")
            req = urllib.request.Request(cdrs_url, headers={
                "Authorization": authorization_header(party_b["their_token"])})
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                pulled = json.loads(resp.read())
                assert resp.headers["X-Total-Count"] == "1"
            (pulled_cdr,) = [CDR.model_validate(x) for x in pulled["data"]]
            assert pulled_cdr.total_cost.excl_vat == pytest.approx(cdr_b["cost"])
            # ... the sessions pushed to the eMSP, completed ...
            sessions = {r["party_id"]: Session.model_validate(json.loads(r["data"])) for r in
                        query(e / "emsp.sqlite", "SELECT * FROM objects WHERE kind = 'session'")}
            assert sessions["CPB"].status == "COMPLETED" and sessions["CPB"].kwh == 20.0
            assert sessions["CPA"].status == "COMPLETED" and sessions["CPA"].kwh == 7.5
            # ... and the bills and the settlement.
            by_cpo = {r["cpo"]: r for r in bills}
            assert by_cpo["NL*CPB"]["cpo_cost"] == pytest.approx(cdr_b["cost"])
            assert by_cpo["NL*CPB"]["driver"] == "driver-1"
            assert by_cpo["NL*CPB"]["driver_amount"] == pytest.approx(
                round(cdr_b["cost"] * 1.10 + 0.35, 2))
            assert by_cpo["NL*CPA"]["driver"] == "driver-2"
            report = json.loads(subprocess.run(
                [sys.executable, "-m", "evtwin.sim.cli", "emsp", "report", str(e / "emsp.toml"),
                 "--json"], capture_output=True, text=True, check=True,
                timeout=TIMEOUT_S).stdout)
            assert report["roaming_sessions"] == 2
            assert report["cpos"]["NL*CPB"]["owed"] == pytest.approx(cdr_b["cost"])
            assert report["cpos"]["NL*CPA"]["owed"] == pytest.approx(cdr_a["cost"])
            assert report["owed_to_cpos"] == pytest.approx(cdr_a["cost"] + cdr_b["cost"])
            assert report["drivers"]["driver-1"]["paid"] == pytest.approx(
                by_cpo["NL*CPB"]["driver_amount"])
            # The eMSP's log never carries a raw token uid.
            assert "04AA11BB22CC33" not in json.dumps(emsp.logs)

            # GDPR erasure at CPO B covers its OCPI objects too; amounts stay.
            erased = subprocess.run(
                [sys.executable, "-m", "evtwin.sim.cli", "csms", "privacy", "erase", "--db",
                 str(b / "csms.sqlite"), "--id-token", "04AA11BB22CC33", "--actor", "dpo",
                 "--reason", "request 1", "--config", str(b / "csms.toml")],
                capture_output=True, text=True, timeout=TIMEOUT_S)
            assert erased.returncode == 0, erased.stderr
            assert "OCPI objects" in erased.stdout
            for db in (b / "ocpi.sqlite", b / "csms.sqlite"):
                con = sqlite3.connect(db)
                try:
                    dump = "\n".join(con.iterdump())
                finally:
                    con.close()
                assert "04AA11BB22CC33" not in dump and "NL-MSP-C00000001-1" not in dump, db
            (kept,) = [CDR.model_validate(json.loads(r["data"])) for r in query(
                b / "ocpi.sqlite", "SELECT * FROM objects WHERE kind = 'cdr'")]
            assert kept.cdr_token.uid == "(erased)"
            assert kept.total_cost.excl_vat == pytest.approx(cdr_b["cost"])
            audit = subprocess.run(
                [sys.executable, "-m", "evtwin.sim.cli", "csms", "privacy", "audit", "--db",
                 str(b / "csms.sqlite")], capture_output=True, text=True, timeout=TIMEOUT_S)
            rows = [line.split("\t") for line in audit.stdout.splitlines()[1:]]
            assert [r[3] for r in rows] == ["erase", "erase"]  # the store, then OCPI
            assert "OCPI objects" in rows[1][6] and int(rows[1][5]) >= 3
