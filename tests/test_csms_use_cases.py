"""OCPP use cases against ``evtwin csms serve`` in its own process, over real websockets,
for each version a use case exists in.

One CSMS process serves the whole module (each test uses its own stations, tokens and
transactions), under security profile 2: TLS and each station's password. The
station side is written here, not taken from evtwin: a websocket client that checks
every CALL the CSMS sends against the OCPP specification's own JSON schemas (with
the ``jsonschema`` library, not evtwin's validator) and answers it as a scripted
station would. The operator side is plain HTTP to the operator API.

Covered: authorization (C01/C09/C12/C16, token statuses, groups, master pass,
ConcurrentTx, expiry), local authorization lists and the auth cache (D01-D04, C11),
UnlockConnector (F05), the device model (B05-B07 GetBaseReport / NotifyReport,
Get/SetVariables; 1.6 Get/ChangeConfiguration), firmware (L01, 1.6 UpdateFirmware and
SignedUpdateFirmware), logs and diagnostics (N01, 1.6 GetDiagnostics), reset of one
EVSE (B11-B12), every operator operation with operator-chosen profile ids,
totalCost and CostUpdated (I02-I03), GetTransactionStatus after a reboot and after a
seqNo gap (E14), 1.6 reboot reconciliation, and external charging limits (K12-K13).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from evtwin.csms.api import hash_token
from evtwin.csms.security import hash_password
from tests.pki import client_ctx, make_pki

pytestmark = pytest.mark.slow

SCALE = float(os.environ.get("EVTWIN_TEST_TIMEOUT_SCALE", "1"))
TIMEOUT_S = 20.0 * SCALE
TOKEN = "use-cases-operator-token-0123456789abcdef"[:40]
VERSIONS = ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"]
V2X = ["ocpp2.0.1", "ocpp2.1"]
EXPIRED = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
LATER = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")

CONFIG = f"""
[control]
strategy = "equal_share"
# Long: every cycle a test waits for is one an event made due at once.
interval_s = 60

[tariff]
energy_per_kwh = 0.40
session_fee = 1.0
time_per_hour = 0.0
currency = "EUR"
cost_updated_interval_s = 1

[tokens]
accepted = ["OK1", "OK2", "OK3", "CONC16", "CONC201", "CONC21"]
master_pass_group = "MASTER"
allow_concurrent_tx = false

[[tokens.entries]]
id = "BLOCKED1"
status = "Blocked"

[[tokens.entries]]
id = "OLD1"
expires = {EXPIRED}

[[tokens.entries]]
id = "SOON1"
expires = {LATER}

[[tokens.entries]]
id = "FLEET-A"
group = "FLEET"

[[tokens.entries]]
id = "BOSS"
group = "MASTER"
local = false

[api]
port = 0
token_hash = "{hash_token(TOKEN)}"
"""
STATIONS = [f"{name}-{v}" for name in ("AUTH", "LIST", "DM", "FW", "OPS", "COST", "E14",
                                        "LIM", "CONC", "CERT", "MISC", "NEEDS")
            for v in ("16", "201", "21")]
STATIONS.append("ID#1 ü")  # an identity that needs percent-encoding in the URL
# Each station a site of its own; LIM's and NEEDS's have a 7 kW limit.
CONFIG += "".join(
    f'\n[[sites]]\nname = "{s}"\n' + ("limit_kw = 7\n" if s.startswith(("LIM", "NEEDS"))
                                        else "")
    + f'\n[[stations]]\nid = "{s}"\nsite = "{s}"\nevse_max_kw = [11, 11]\n'
    for s in STATIONS)


PASSWORD = "use-cases-station-password-0123"


def basic_auth(station: str) -> dict[str, str]:
    """Security profile 2: the station's identity and password, HTTP Basic."""
    return {"Authorization": "Basic " + base64.b64encode(
        f"{station}:{PASSWORD}".encode()).decode()}


def suffix(protocol: str) -> str:
    return {"ocpp1.6": "16", "ocpp2.0.1": "201", "ocpp2.1": "21"}[protocol]


# --------------------------------------------------------------------- the CSMS process
@dataclass
class Server:
    proc: subprocess.Popen[str]
    logs: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    api_url: str = ""
    ca_paths: tuple[str, ...] = ()
    tls: ssl.SSLContext | None = None

    def wait_log(self, where: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            for entry in list(self.logs):
                if where(entry):
                    return entry
            assert self.proc.poll() is None, f"CSMS exited: {self.logs[-5:]}"
            time.sleep(0.02)
        raise AssertionError("no such log entry")

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.api_url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def op(self, station: str, operation: str, body: Any = None) -> dict[str, Any]:
        """An operator call that must succeed (200)."""
        status, out = self.api("POST", f"/stations/{station}/{operation}", body or {})
        assert status == 200, (operation, status, out)
        return dict(out)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("use_cases")
    pki = make_pki(tmp)
    # Security profile 2 (TLS and each station's password), with a station CA.
    security = (f'[security]\nprofile = 2\ntls_cert = "{pki.server_ec.cert}"\n'
                f'tls_key = "{pki.server_ec.key}"\nstation_ca_cert = "{pki.ca}"\n'
                f'station_ca_key = "{pki.ca.with_suffix(".key")}"\n\n')
    config = security + CONFIG.replace(
        "evse_max_kw = [11, 11]\n",
        f'evse_max_kw = [11, 11]\npassword_hash = "{hash_password(PASSWORD)}"\n')
    (tmp / "csms.toml").write_text(config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "evtwin.sim.cli", "csms", "serve", "--host", "127.0.0.1",
         "--port", "0", "--db", str(tmp / "csms.sqlite"), "--config", str(tmp / "csms.toml")],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    srv = Server(proc)

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                srv.logs.append(json.loads(line))
            except ValueError:
                srv.logs.append({"raw": line})

    threading.Thread(target=drain, daemon=True).start()
    try:
        listening = srv.wait_log(lambda e: e.get("event") == "listening")
        srv.port = int(listening["port"])
        srv.api_url = listening["api_url"]
        srv.ca_paths = (str(pki.ca),)
        srv.tls = client_ctx(pki)
        yield srv
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT_S)


# --------------------------------------------------------------------- the station side
_SCHEMA_DIRS = {"ocpp1.6": "v16", "ocpp2.0.1": "v201", "ocpp2.1": "v21"}


@cache
def _validator(protocol: str, action: str, request: bool) -> Any:
    name = action if protocol == "ocpp1.6" and request else \
        f"{action}{'Request' if request else 'Response'}"
    text = resources.files("ocpp").joinpath(
        _SCHEMA_DIRS[protocol], "schemas", f"{name}.json").read_text()
    schema = json.loads(text)
    return jsonschema.validators.validator_for(schema)(
        schema, format_checker=jsonschema.FormatChecker())


Reply = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]


class Station:
    """A scripted OCPP station on a real websocket.

    Every CALL from the CSMS is checked against the spec's request schema, kept in
    ``calls`` and answered from ``replies`` (a payload, or a function of the request);
    an action without a reply is answered NotSupported. Our own answers are checked
    against the response schema before they go out.
    """

    def __init__(self, ws: ClientConnection, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.replies: dict[str, Reply] = {}
        self.calls: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._results: dict[str, queue.Queue[list[Any]]] = {}
        self._n = 0
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                frame = json.loads(raw)
                if frame[0] == 2:
                    self._answer(frame)
                else:
                    self._results.setdefault(frame[1], queue.Queue()).put(frame)
        except Exception:
            return

    def _answer(self, frame: list[Any]) -> None:
        _, uid, action, payload = frame
        _validator(self.protocol, action, True).validate(payload)
        self.seen.append((action, payload))
        self.calls.put((action, payload))
        reply = self.replies.get(action)
        if reply is None:
            self.ws.send(json.dumps([4, uid, "NotSupported", f"no {action} here", {}]))
            return
        out = reply(payload) if callable(reply) else reply
        _validator(self.protocol, action, False).validate(out)
        self.ws.send(json.dumps([3, uid, out]))

    def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a CALL (checked against the schema) and return the CALLRESULT payload,
        itself checked against the response schema."""
        _validator(self.protocol, action, True).validate(payload)
        with self._lock:
            self._n += 1
            uid = f"u{self._n}"
        box = self._results.setdefault(uid, queue.Queue())
        self.ws.send(json.dumps([2, uid, action, payload]))
        frame = box.get(timeout=TIMEOUT_S)
        assert frame[0] == 3, (action, frame)
        _validator(self.protocol, action, False).validate(frame[2])
        return dict(frame[2])

    def wait_call(self, action: str, where: Callable[[dict[str, Any]], bool] | None = None
                  ) -> dict[str, Any]:
        """The next CALL ``action`` from the CSMS (matching ``where``), waiting for it."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                got, payload = self.calls.get(timeout=0.1)
            except queue.Empty:
                continue
            if got == action and (where is None or where(payload)):
                return payload
        raise AssertionError(f"no {action} from the CSMS; saw {[a for a, _ in self.seen]}")

    def boot(self, reason: str = "PowerUp") -> None:
        if self.protocol == "ocpp1.6":
            r = self.call("BootNotification", {"chargePointVendor": "test",
                                               "chargePointModel": "script"})
        else:
            r = self.call("BootNotification", {
                "chargingStation": {"vendorName": "test", "model": "script"},
                "reason": reason})
        assert r["status"] == "Accepted"


@contextmanager
def connected(server: Server, name: str, protocol: str, *, boot: bool = True,
              path: str | None = None) -> Iterator[Station]:
    url = f"wss://127.0.0.1:{server.port}{path or '/ocpp/' + name}"
    with connect(url, subprotocols=[protocol],  # type: ignore[list-item]
                 open_timeout=TIMEOUT_S, ssl=server.tls,
                 additional_headers=basic_auth(name)) as ws:
        st = Station(ws, protocol)
        if boot:
            st.boot()
        yield st


def now_iso(offset_s: float = 0.0) -> str:
    at = datetime.now(UTC) + timedelta(seconds=offset_s)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def authorize(st: Station, token: str) -> dict[str, Any]:
    """The CSMS's IdTokenInfo / IdTagInfo for ``token``."""
    if st.protocol == "ocpp1.6":
        return st.call("Authorize", {"idTag": token})["idTagInfo"]
    return st.call("Authorize", {"idToken": {"idToken": token, "type": "ISO14443"}}
                   )["idTokenInfo"]


def energy_2x(wh: float, ts: str, context: str = "Sample.Periodic") -> list[dict[str, Any]]:
    return [{"timestamp": ts, "sampledValue": [
        {"value": wh, "context": context, "measurand": "Energy.Active.Import.Register",
         "unitOfMeasure": {"unit": "Wh"}}]}]


def tx_2x(kind: str, seq: int, tx: str, wh: float, *, token: str | None = None,
          ts: str | None = None, evse: int = 1, reason: str = "EVDeparted") -> dict[str, Any]:
    ts = ts or now_iso()
    payload: dict[str, Any] = {
        "eventType": kind, "timestamp": ts, "seqNo": seq,
        "triggerReason": {"Started": "Authorized", "Updated": "MeterValuePeriodic",
                          "Ended": reason}[kind],
        "transactionInfo": {"transactionId": tx},
        "meterValue": energy_2x(wh, ts, {"Started": "Transaction.Begin",
                                         "Ended": "Transaction.End"}.get(kind,
                                                                         "Sample.Periodic"))}
    if kind == "Started":
        payload["evse"] = {"id": evse, "connectorId": 1}
        payload["transactionInfo"]["chargingState"] = "Charging"
    if token is not None:
        payload["idToken"] = {"idToken": token, "type": "ISO14443"}
    if kind == "Ended":
        payload["transactionInfo"]["stoppedReason"] = "EVDisconnected"
    return payload


def start_tx(st: Station, tx: str, token: str, wh: float = 1000.0, evse: int = 1
             ) -> tuple[str, dict[str, Any]]:
    """Start a transaction; returns its id (1.6: the CSMS's) and the token's info."""
    if st.protocol == "ocpp1.6":
        r = st.call("StartTransaction", {"connectorId": evse, "idTag": token,
                                         "meterStart": int(wh), "timestamp": now_iso()})
        return str(r["transactionId"]), r["idTagInfo"]
    r = st.call("TransactionEvent", tx_2x("Started", 0, tx, wh, token=token, evse=evse))
    return tx, r["idTokenInfo"]


def tx_limit_w(payload: dict[str, Any], tx: str) -> float | None:
    """The limit a 2.x SetChargingProfile gives transaction ``tx`` (W), else None."""
    profile = payload["chargingProfile"]
    if profile.get("transactionId") != tx:
        return None
    return float(profile["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"])


def session(server: Server, station: str, tx: str) -> dict[str, Any]:
    status, out = server.api("GET", f"/sessions?station={station}")
    assert status == 200
    [row] = [s for s in out["sessions"] if s["transaction_id"] == tx]
    return dict(row)


# --------------------------------------------------------------------- authorization
@pytest.mark.parametrize("protocol", VERSIONS)
def test_token_statuses_groups_expiry_and_master_pass(server: Server, protocol: str) -> None:
    """C01 (Accepted / Blocked / Expired / Invalid), C09 and C12 (group id tokens), C16
    (a master pass carries the master pass group); 1.6 Authorize with parentIdTag."""
    with connected(server, f"AUTH-{suffix(protocol)}", protocol) as st:
        assert authorize(st, "OK1")["status"] == "Accepted"
        assert authorize(st, "BLOCKED1")["status"] == "Blocked"
        assert authorize(st, "OLD1")["status"] == "Expired"
        assert authorize(st, "NOBODY")["status"] == "Invalid"
        soon = authorize(st, "SOON1")
        fleet = authorize(st, "FLEET-A")
        boss = authorize(st, "BOSS")
        assert soon["status"] == fleet["status"] == boss["status"] == "Accepted"
        if protocol == "ocpp1.6":
            assert soon["expiryDate"].startswith(LATER[:19])
            assert fleet["parentIdTag"] == "FLEET" and boss["parentIdTag"] == "MASTER"
        else:
            assert soon["cacheExpiryDateTime"].startswith(LATER[:19])
            assert fleet["groupIdToken"] == {"idToken": "FLEET", "type": "Central"}
            assert boss["groupIdToken"]["idToken"] == "MASTER"


@pytest.mark.parametrize("protocol", VERSIONS)
def test_a_token_in_an_open_transaction_is_concurrent_tx(server: Server,
                                                         protocol: str) -> None:
    """[tokens] allow_concurrent_tx = false: a second transaction started with the token
    of an open one is answered ConcurrentTx (in any letter case: id tokens are
    case-insensitive); Authorize is not (the driver must be able to stop)."""
    token = f"CONC{suffix(protocol)}"
    with connected(server, f"CONC-{suffix(protocol)}", protocol) as st:
        _, info = start_tx(st, f"CONC-{protocol}-1", token)
        assert info["status"] == "Accepted"
        assert authorize(st, token)["status"] == "Accepted"
        _, second = start_tx(st, f"CONC-{protocol}-2", token.lower(), evse=2)
        assert second["status"] == "ConcurrentTx"


# --------------------------------------------------------------------- local lists, cache
@pytest.mark.parametrize("protocol", VERSIONS)
def test_local_list_full_differential_version_and_clear_cache(server: Server,
                                                              protocol: str) -> None:
    """D01 (SendLocalList Full / Differential), D02 (GetLocalListVersion), C11
    (ClearCache): the list carries each token's status, group and expiry."""
    v16 = protocol == "ocpp1.6"
    name = f"LIST-{suffix(protocol)}"
    with connected(server, name, protocol) as st:
        st.replies["SendLocalList"] = {"status": "Accepted"}
        st.replies["GetLocalListVersion"] = (lambda p: {"listVersion": 1} if v16
                                             else {"versionNumber": 1})
        st.replies["ClearCache"] = {"status": "Accepted"}
        out = server.op(name, "local-list", {"update_type": "Full"})
        assert out == {"status": "Accepted", "list_version": 1}
        sent = st.wait_call("SendLocalList")
        items = sent["localAuthorizationList"]
        if v16:
            assert sent["listVersion"] == 1 and sent["updateType"] == "Full"
            by_id = {i["idTag"]: i["idTagInfo"] for i in items}
        else:
            assert sent["versionNumber"] == 1
            by_id = {i["idToken"]["idToken"]: i["idTokenInfo"] for i in items}
        assert "BOSS" not in by_id  # local = false
        assert by_id["BLOCKED1"]["status"] == "Blocked"
        assert by_id["OLD1"]["status"] == "Expired"
        assert (by_id["FLEET-A"].get("parentIdTag") or
                by_id["FLEET-A"]["groupIdToken"]["idToken"]) == "FLEET"
        assert server.op(name, "local-list-version") == {"status": "Accepted",
                                                         "list_version": 1}
        out = server.op(name, "local-list", {"update_type": "Differential",
                                             "tokens": ["OK2", "GONE"]})
        assert out["list_version"] == 2
        sent = st.wait_call("SendLocalList")
        items = sent["localAuthorizationList"]
        key = "idTag" if v16 else "idToken"
        gone = next(i for i in items if (i[key] if v16 else i[key]["idToken"]) == "GONE")
        assert ("idTagInfo" if v16 else "idTokenInfo") not in gone  # removed
        status, out = server.api("GET", f"/stations/{name}/variables")
        assert out["local_list_version"] == 2
        # A full list of unknown tokens is refused before anything is sent.
        status, problem = server.api("POST", f"/stations/{name}/local-list",
                                     {"update_type": "Full", "tokens": ["GONE"]})
        assert status == 422 and "GONE" in problem["message"]
        assert server.op(name, "clear-cache") == {"status": "Accepted"}
        st.wait_call("ClearCache")


# --------------------------------------------------------------------- device model
@pytest.mark.parametrize("protocol", VERSIONS)
def test_device_model_reports_and_variables(server: Server, protocol: str) -> None:
    """B05-B07 (Get/SetVariables, GetBaseReport answered by NotifyReport), 1.6
    GetConfiguration / ChangeConfiguration: what the station reports is kept and
    listed by GET /stations/{id}/variables."""
    v16 = protocol == "ocpp1.6"
    name = f"DM-{suffix(protocol)}"
    with connected(server, name, protocol) as st:
        if v16:
            st.replies["GetConfiguration"] = lambda p: {
                "configurationKey": [
                    {"key": k, "readonly": k == "NumberOfConnectors",
                     "value": {"HeartbeatInterval": "60", "NumberOfConnectors": "2"}[k]}
                    for k in (p.get("key") or ["HeartbeatInterval", "NumberOfConnectors"])
                    if k in ("HeartbeatInterval", "NumberOfConnectors")],
                "unknownKey": [k for k in p.get("key") or []
                               if k not in ("HeartbeatInterval", "NumberOfConnectors")]}
            st.replies["ChangeConfiguration"] = lambda p: {
                "status": "Rejected" if p["key"] == "NumberOfConnectors" else "Accepted"}
            out = server.op(name, "base-report")
            assert {v["variable"] for v in out["variables"]} == {"HeartbeatInterval",
                                                                 "NumberOfConnectors"}
            out = server.op(name, "get-variables", {"variables": [
                {"variable": "HeartbeatInterval"}, {"variable": "Nope"}]})
            assert [(v["variable"], v["status"], v.get("value")) for v in out["variables"]] \
                == [("HeartbeatInterval", "Accepted", "60"), ("Nope", "UnknownVariable", None)]
            out = server.op(name, "set-variables", {"variables": [
                {"variable": "HeartbeatInterval", "value": "30"},
                {"variable": "NumberOfConnectors", "value": "3"}]})
            assert [v["status"] for v in out["variables"]] == ["Accepted", "Rejected"]
            status, _ = server.api("POST", f"/stations/{name}/get-variables", {
                "variables": [{"component": "OCPPCommCtrlr", "variable": "X"}]})
            assert status == 422
            status, listed = server.api("GET", f"/stations/{name}/variables")
            kept = {v["variable"]: (v["value"], v["mutability"])
                    for v in listed["variables"]}
            assert kept == {"HeartbeatInterval": ("30", "ReadWrite"),
                            "NumberOfConnectors": ("2", "ReadOnly")}
            return
        st.replies["GetBaseReport"] = {"status": "Accepted"}
        # (Answered in reverse order: results are matched by what they name.)
        st.replies["GetVariables"] = lambda p: {"getVariableResult": [
            {"attributeStatus": "Accepted" if d["variable"]["name"] == "HeartbeatInterval"
             else "UnknownVariable", "component": d["component"], "variable": d["variable"],
             **({"attributeValue": "60"} if d["variable"]["name"] == "HeartbeatInterval"
                else {})} for d in reversed(p["getVariableData"])]}
        st.replies["SetVariables"] = lambda p: {"setVariableResult": [
            {"attributeStatus": "Accepted", "component": d["component"],
             "variable": d["variable"]} for d in p["setVariableData"]]}
        out = server.op(name, "base-report", {"report_base": "FullInventory"})
        request_id = out["request_id"]
        assert st.wait_call("GetBaseReport")["requestId"] == request_id
        st.call("NotifyReport", {"requestId": request_id, "generatedAt": now_iso(),
                                 "seqNo": 0, "tbc": False, "reportData": [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"},
             "variableAttribute": [{"type": "Actual", "value": "60",
                                    "mutability": "ReadWrite"}]},
            {"component": {"name": "EVSE", "evse": {"id": 1}}, "variable": {"name": "Power"},
             "variableAttribute": [{"type": "MaxSet", "value": "11000",
                                    "mutability": "ReadOnly"}]}]})
        out = server.op(name, "get-variables", {"variables": [
            {"component": "OCPPCommCtrlr", "variable": "HeartbeatInterval"},
            {"component": "OCPPCommCtrlr", "variable": "Nope"}]})
        assert [v["status"] for v in out["variables"]] == ["Accepted", "UnknownVariable"]
        out = server.op(name, "set-variables", {"variables": [
            {"component": "OCPPCommCtrlr", "variable": "HeartbeatInterval", "value": "30"}]})
        assert out["variables"][0]["status"] == "Accepted"
        status, listed = server.api("GET", f"/stations/{name}/variables")
        rows = {(v["component"], v["evse_id"], v["variable"], v["attribute_type"]):
                (v["value"], v["mutability"], v["source"]) for v in listed["variables"]}
        assert rows == {
            ("OCPPCommCtrlr", 0, "HeartbeatInterval", "Actual"):
                ("30", "ReadWrite", "SetVariables"),
            ("EVSE", 1, "Power", "MaxSet"): ("11000", "ReadOnly", "NotifyReport")}
        status, problem = server.api("POST", f"/stations/{name}/get-variables", {
            "variables": [{"component": "EVSE", "connector_id": 1, "variable": "Power"}]})
        assert status == 422 and problem["problems"][0]["path"].startswith("variables.0")
        status, one = server.api("GET", f"/stations/{name}/variables?component=EVSE")
        assert [v["variable"] for v in one["variables"]] == ["Power"]
        # The report itself is kept too.
        status, msgs = server.api("GET", f"/stations/{name}/messages?action=NotifyReport")
        assert len(msgs["messages"]) == 1


# --------------------------------------------------------------------- firmware and logs
@pytest.mark.parametrize("protocol", VERSIONS)
def test_firmware_update_and_log_upload_with_their_status_notifications(
        server: Server, protocol: str) -> None:
    """L01 / 1.6 UpdateFirmware and SignedUpdateFirmware, N01 GetLog / 1.6
    GetDiagnostics: the request goes out as the spec says, the station's status
    notifications are kept and listed."""
    v16 = protocol == "ocpp1.6"
    name = f"FW-{suffix(protocol)}"
    with connected(server, name, protocol) as st:
        retrieve = now_iso(60)
        if v16:
            st.replies["UpdateFirmware"] = {}
            st.replies["SignedUpdateFirmware"] = {"status": "Accepted"}
            st.replies["GetDiagnostics"] = {"fileName": "diag.zip"}
            st.replies["GetLog"] = {"status": "Accepted", "filename": "security.log"}
            assert server.op(name, "update-firmware", {
                "location": "https://fw.example/x.bin", "retrieve_at": retrieve,
                "retries": 2})["status"] == "Accepted"
            sent = st.wait_call("UpdateFirmware")
            assert sent["location"] == "https://fw.example/x.bin" and sent["retries"] == 2
            out = server.op(name, "update-firmware", {
                "location": "https://fw.example/s.bin", "retrieve_at": retrieve,
                "signing_certificate": "-----BEGIN CERTIFICATE-----",
                "signature": "c2lnbmF0dXJl"})
            signed = st.wait_call("SignedUpdateFirmware")
            assert signed["requestId"] == out["request_id"]
            st.call("FirmwareStatusNotification", {"status": "Downloading"})
            st.call("SignedFirmwareStatusNotification", {"status": "Installed",
                                                         "requestId": out["request_id"]})
            out = server.op(name, "get-log", {"location": "ftp://logs.example/",
                                              "log_type": "DiagnosticsLog"})
            assert out == {"status": "Accepted", "filename": "diag.zip"}
            assert st.wait_call("GetDiagnostics")["location"] == "ftp://logs.example/"
            st.call("DiagnosticsStatusNotification", {"status": "Uploaded"})
            out = server.op(name, "get-log", {"location": "ftp://logs.example/",
                                              "log_type": "SecurityLog"})
            assert out["filename"] == "security.log"
            st.wait_call("GetLog", lambda p: p["logType"] == "SecurityLog")
            st.call("LogStatusNotification", {"status": "Uploaded",
                                              "requestId": out["request_id"]})
            expected = ["FirmwareStatusNotification", "SignedFirmwareStatusNotification",
                        "DiagnosticsStatusNotification", "LogStatusNotification"]
        else:
            st.replies["UpdateFirmware"] = {"status": "Accepted"}
            st.replies["GetLog"] = {"status": "Accepted", "filename": "diag.log"}
            out = server.op(name, "update-firmware", {
                "location": "https://fw.example/x.bin", "retrieve_at": retrieve,
                "install_at": now_iso(120)})
            sent = st.wait_call("UpdateFirmware")
            assert sent["requestId"] == out["request_id"]
            assert sent["firmware"]["location"] == "https://fw.example/x.bin"
            for status in ("Downloading", "Downloaded", "Installing", "Installed"):
                st.call("FirmwareStatusNotification", {"status": status,
                                                       "requestId": out["request_id"]})
            out = server.op(name, "get-log", {"location": "https://logs.example/up",
                                              "log_type": "DiagnosticsLog"})
            assert out["filename"] == "diag.log"
            sent = st.wait_call("GetLog")
            assert sent["log"]["remoteLocation"] == "https://logs.example/up"
            st.call("LogStatusNotification", {"status": "Uploaded",
                                              "requestId": out["request_id"]})
            expected = ["FirmwareStatusNotification"] * 4 + ["LogStatusNotification"]
    _, msgs = server.api("GET", f"/stations/{name}/messages")
    assert [m["action"] for m in msgs["messages"]] == expected


# --------------------------------------------------------------------- operations
@pytest.mark.parametrize("protocol", VERSIONS)
def test_every_operator_operation_reaches_the_station(server: Server, protocol: str) -> None:
    """ChangeAvailability (G03/G04), ClearChargingProfile (K10), GetCompositeSchedule
    (K08), GetChargingProfiles (K09, 2.x), ReserveNow / CancelReservation (H01/H02),
    UnlockConnector (F05), Reset of the station and (2.x) one EVSE (B11/B12), and a
    charging profile under the operator's own id, replaced by the next with that id."""
    v16 = protocol == "ocpp1.6"
    name = f"OPS-{suffix(protocol)}"
    with connected(server, name, protocol) as st:
        for action in ("ChangeAvailability", "ClearChargingProfile", "ReserveNow",
                       "CancelReservation", "Reset", "SetChargingProfile"):
            st.replies[action] = {"status": "Accepted"}
        st.replies["UnlockConnector"] = {"status": "Unlocked"}
        st.replies["GetCompositeSchedule"] = {"status": "Rejected"}
        st.replies["GetChargingProfiles"] = {"status": "NoProfiles"}
        assert server.op(name, "change-availability", {"evse_id": 2, "operative": False}
                         )["status"] == "Accepted"
        sent = st.wait_call("ChangeAvailability")
        assert (sent["connectorId"] if v16 else sent["evse"]["id"]) == 2
        profile = {"purpose": "TxDefaultProfile", "stack_level": 1, "unit": "W",
                   "periods": [{"start_s": 0, "limit": 5000}]}
        out = server.op(name, "charging-profile", {"evse_id": 1, "profile": profile,
                                                   "profile_id": 9001})
        assert out["profile_id"] == 9001
        sent = st.wait_call("SetChargingProfile")
        wire = sent["csChargingProfiles"] if v16 else sent["chargingProfile"]
        assert (wire["chargingProfileId"] if v16 else wire["id"]) == 9001
        # The CSMS's own ids continue after the operator's.
        auto = server.op(name, "charging-profile", {"evse_id": 1, "profile": {
            **profile, "stack_level": 2}})
        assert auto["profile_id"] > 9001
        assert server.op(name, "clear-charging-profile", {"profile_id": 9001}
                         )["status"] == "Accepted"
        sent = st.wait_call("ClearChargingProfile")
        assert (sent["id"] if v16 else sent["chargingProfileId"]) == 9001
        assert server.op(name, "composite-schedule", {"evse_id": 1, "duration_s": 3600}
                         )["status"] == "Rejected"
        st.wait_call("GetCompositeSchedule")
        out = server.op(name, "reserve-now", {"id_token": "OK1", "expiry": now_iso(900),
                                              "evse_id": 1})
        sent = st.wait_call("ReserveNow")
        assert (sent["reservationId"] if v16 else sent["id"]) == out["reservation_id"]
        assert server.op(name, "cancel-reservation",
                         {"reservation_id": out["reservation_id"]})["status"] == "Accepted"
        st.wait_call("CancelReservation")
        assert server.op(name, "unlock-connector", {"evse_id": 1})["status"] == "Unlocked"
        st.wait_call("UnlockConnector")
        if v16:
            status, problem = server.api("POST", f"/stations/{name}/charging-profiles", {})
            assert status == 422
            status, problem = server.api("POST", f"/stations/{name}/reset",
                                         {"hard": True, "evse_id": 1})
            assert status == 422 and "evse_id" in json.dumps(problem)
            status, problem = server.api("POST", f"/stations/{name}/transaction-status", {})
            assert status == 422
        else:
            assert server.op(name, "charging-profiles", {"evse_id": 1}
                             )["status"] == "NoProfiles"
            st.wait_call("GetChargingProfiles")
            assert server.op(name, "reset", {"hard": False, "evse_id": 2}
                             )["status"] == "Accepted"
            assert st.wait_call("Reset") == {"type": "OnIdle", "evseId": 2}
        assert server.op(name, "reset", {"hard": True})["status"] == "Accepted"
        assert st.wait_call("Reset")["type"] == ("Hard" if v16 else "Immediate")


# --------------------------------------------------------------------- costs
@pytest.mark.parametrize("protocol", V2X)
def test_running_cost_and_total_cost(server: Server, protocol: str) -> None:
    """I02 (CostUpdated while charging) and I03 (totalCost in the Ended answer), from the
    tariff: 1.00 EUR a session and 0.40 EUR/kWh."""
    name = f"COST-{suffix(protocol)}"
    tx = f"COST-{protocol}"
    with connected(server, name, protocol) as st:
        st.replies["SetChargingProfile"] = {"status": "Accepted"}
        st.replies["CostUpdated"] = {}
        st.replies["SetDefaultTariff"] = {"status": "Accepted"}
        st.replies["ClearTariffs"] = {"clearTariffsResult": [{"status": "Accepted"}]}
        if protocol == "ocpp2.1":  # 2.1 tariffs: the tariff itself, on the wire
            assert server.op(name, "default-tariff", {"evse_id": 0}) == {
                "status": "Accepted", "tariff_id": "evtwin-default"}
            sent = st.wait_call("SetDefaultTariff")
            assert sent["tariff"]["energy"]["prices"] == [{"priceKwh": 0.4}]
            assert sent["tariff"]["fixedFee"]["prices"] == [{"priceFixed": 1.0}]
            assert server.op(name, "clear-tariffs", {"tariff_ids": ["evtwin-default"]}
                             )["status"] == "Accepted"
        else:
            assert server.api("POST", f"/stations/{name}/default-tariff", {})[0] == 422
        start_tx(st, tx, "OK1", 10_000.0)
        st.call("TransactionEvent", tx_2x("Updated", 1, tx, 15_000.0))
        sent = st.wait_call("CostUpdated")
        assert sent == {"transactionId": tx, "totalCost": pytest.approx(1.0 + 0.4 * 5)}
        r = st.call("TransactionEvent", tx_2x("Ended", 2, tx, 20_000.0))
        assert r["totalCost"] == pytest.approx(1.0 + 0.4 * 10)


# --------------------------------------------------------------------- E14, reboots
@pytest.mark.parametrize("protocol", V2X)
def test_transaction_status_after_a_reboot_and_after_a_seq_no_gap(server: Server,
                                                                  protocol: str) -> None:
    """E14: after a reboot the CSMS asks about each transaction still open there; one
    the station says is over, nothing queued, is ended (PowerLoss after PowerUp), one
    still ongoing stays open; a seqNo gap makes the CSMS ask too."""
    name = f"E14-{suffix(protocol)}"
    over, going = f"E14-over-{protocol}", f"E14-going-{protocol}"
    with connected(server, name, protocol) as st:
        st.replies["SetChargingProfile"] = {"status": "Accepted"}
        start_tx(st, over, "OK1", 1000.0, evse=1)
        start_tx(st, going, "OK2", 5000.0, evse=2)
        st.call("TransactionEvent", tx_2x("Updated", 1, over, 3000.0))
    with connected(server, name, protocol, boot=False) as st:
        st.replies["SetChargingProfile"] = {"status": "Accepted"}
        st.replies["GetTransactionStatus"] = lambda p: (
            {"ongoingIndicator": False, "messagesInQueue": False}
            if p["transactionId"] == over else
            {"ongoingIndicator": True, "messagesInQueue": False})
        st.boot("PowerUp")
        asked = {st.wait_call("GetTransactionStatus")["transactionId"] for _ in range(2)}
        assert asked == {over, going}
        server.wait_log(lambda e: e.get("event") == "transaction_closed_stale"
                        and e.get("transaction") == over)
        ended = session(server, name, over)
        assert not ended["open"] and ended["stopped_reason"] == "PowerLoss"
        assert ended["energy_wh"] == pytest.approx(2000.0)
        assert session(server, name, going)["open"]
        # Events 2 and 3 of the live one never came: the CSMS asks about it.
        st.call("TransactionEvent", tx_2x("Updated", 4, going, 6000.0))
        assert st.wait_call("GetTransactionStatus")["transactionId"] == going
        deadline = time.monotonic() + TIMEOUT_S  # its answer handled: asked twice now
        while len([e for e in list(server.logs) if e.get("event") == "transaction_status"
                   and e.get("transaction") == going]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert session(server, name, going)["open"]
    _status, cdrs = server.api("GET", "/cdrs")
    assert [c["energy_wh"] for c in cdrs["cdrs"] if c["transaction_id"] == over] == [2000.0]


def test_a_16_connector_available_after_a_reboot_ends_its_transaction(server: Server
                                                                      ) -> None:
    """OCPP 1.6 has no GetTransactionStatus: a connector that reports Available after the
    reboot has no transaction going on (a 1.6 transaction needs its EV plugged in)."""
    name = "E14-16"
    with connected(server, name, "ocpp1.6") as st:
        st.replies["SetChargingProfile"] = {"status": "Accepted"}
        tx1, _ = start_tx(st, "", "OK1", 1000.0, evse=1)
        tx2, _ = start_tx(st, "", "OK2", 1000.0, evse=2)
        st.call("MeterValues", {"connectorId": 1, "transactionId": int(tx1), "meterValue": [
            {"timestamp": now_iso(), "sampledValue": [
                {"value": "4000", "measurand": "Energy.Active.Import.Register",
                 "unit": "Wh"}]}]})
    with connected(server, name, "ocpp1.6") as st:
        st.replies["SetChargingProfile"] = {"status": "Accepted"}
        for connector, status in ((1, "Available"), (2, "Charging")):
            st.call("StatusNotification", {"connectorId": connector, "errorCode": "NoError",
                                           "status": status, "timestamp": now_iso()})
        ended = session(server, name, tx1)
        assert not ended["open"] and ended["stopped_reason"] == "Reboot"
        assert ended["energy_wh"] == pytest.approx(3000.0)
        assert session(server, name, tx2)["open"]


# --------------------------------------------------------------------- external limits
@pytest.mark.parametrize("protocol", V2X)
def test_external_charging_limit_caps_the_evse_until_cleared(server: Server,
                                                             protocol: str) -> None:
    """K12/K13: a limit the station reports from an EMS caps what the CSMS gives the
    EVSE until the station reports it cleared (site limit 7 kW); K15-K17: the EV's own
    schedule is accepted within the limit, rejected (and the limit sent again) above."""
    name = f"LIM-{suffix(protocol)}"
    tx = f"LIM-{protocol}"

    def limit(p: dict[str, Any]) -> float | None:
        return tx_limit_w(p, tx)

    with connected(server, name, protocol) as st:
        st.replies["SetChargingProfile"] = {"status": "Accepted"}
        start_tx(st, tx, "OK3", 1000.0)
        st.wait_call("SetChargingProfile", lambda p: limit(p) == 7000.0)
        # K17: an EV planning above its limit is Rejected and the limit sent again.
        def ev_schedule(watts: float) -> dict[str, Any]:
            return {"timeBase": now_iso(), "evseId": 1, "chargingSchedule": {
                "id": 1, "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": watts}]}}
        deadline = time.monotonic() + TIMEOUT_S  # the CSMS has noted the accepted limit
        while session(server, name, tx)["limit_w"] != 7000.0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        reply = st.call("NotifyEVChargingSchedule", ev_schedule(11_000.0))
        assert reply["status"] == "Rejected"
        st.wait_call("SetChargingProfile", lambda p: limit(p) == 7000.0)
        assert st.call("NotifyEVChargingSchedule", ev_schedule(6_500.0)) == {
            "status": "Accepted"}
        st.call("NotifyChargingLimit", {
            "evseId": 1, "chargingLimit": {"chargingLimitSource": "EMS"},
            "chargingSchedule": [{"id": 1, "chargingRateUnit": "W",
                                  "chargingSchedulePeriod": [{"startPeriod": 0,
                                                              "limit": 3000.0}]}]})
        st.wait_call("SetChargingProfile", lambda p: limit(p) == 3000.0)
        _status, detail = server.api("GET", f"/stations/{name}")
        assert detail["evses"][0]["external_limit_w"] == 3000.0
        st.call("ClearedChargingLimit", {"chargingLimitSource": "EMS", "evseId": 1})
        st.wait_call("SetChargingProfile", lambda p: limit(p) == 7000.0)


# --------------------------------------------------------------------- certificates
def _csr(cn: str) -> tuple[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CPO"),
                                    x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


@pytest.mark.parametrize("protocol", VERSIONS)
def test_station_certificate_signed_on_request(server: Server, protocol: str) -> None:
    """A02/A03 (and the 1.6 security whitepaper): asked to (TriggerMessage, 1.6
    ExtendedTriggerMessage) or of its own accord, the station sends a CSR; it is checked and its
    certificate, issued by the station CA, comes back in CertificateSigned; a CSR for
    another identity is Rejected, and so (2.x) is a V2G certificate request."""
    v16 = protocol == "ocpp1.6"
    name = f"CERT-{suffix(protocol)}"
    with connected(server, name, protocol) as st:
        st.replies["CertificateSigned"] = {"status": "Accepted"}
        # A02: the operator asks the station to renew its certificate.
        st.replies["ExtendedTriggerMessage" if v16 else "TriggerMessage"] = {
            "status": "Accepted"}
        assert server.op(name, "trigger-message", {
            "message": "SignChargingStationCertificate"})["status"] == "Accepted"
        if v16:
            assert st.wait_call("ExtendedTriggerMessage") == {
                "requestedMessage": "SignChargePointCertificate"}
        else:
            assert st.wait_call("TriggerMessage") == {
                "requestedMessage": "SignChargingStationCertificate"}
        csr, key = _csr(name)
        request: dict[str, Any] = {"csr": csr}
        if not v16:
            request["certificateType"] = "ChargingStationCertificate"
        if protocol == "ocpp2.1":
            request["requestId"] = 77
        assert st.call("SignCertificate", request) == {"status": "Accepted"}
        sent = st.wait_call("CertificateSigned")
        if protocol == "ocpp2.1":
            assert sent["requestId"] == 77  # 2.1: the request it answers
        certs = x509.load_pem_x509_certificates(sent["certificateChain"].encode())
        ca = x509.load_pem_x509_certificate(
            next(Path(p) for p in server.ca_paths).read_bytes())
        assert certs[-1] == ca
        certs[0].verify_directly_issued_by(ca)
        assert certs[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert certs[0].public_key() == key.public_key()
        server.wait_log(lambda e: e.get("event") == "certificate_signed"
                        and e.get("station") == name)
        assert certs[0].subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value \
            == "evtwin test"  # the CA's organisation, not the request's "CPO"
        wrong, _ = _csr("SOMEONE-ELSE")
        refused = st.call("SignCertificate", {**request, "csr": wrong})
        assert refused["status"] == "Rejected"
        if not v16:
            assert refused["statusInfo"]["reasonCode"] == "InvalidCSR"
            v2g = st.call("SignCertificate", {"csr": csr, "certificateType": "V2GCertificate"})
            assert v2g["status"] == "Rejected"
        # Nothing else is signed: after the refusals, a Heartbeat's round trip, and
        # still the one CertificateSigned.
        for reason in ["InvalidCSR"] + ([] if v16 else ["UnsupportedType"]):
            server.wait_log(lambda e, r=reason: e.get("event") == "certificate_request_refused"
                            and e.get("station") == name and e.get("reason") == r)
        st.call("Heartbeat", {})
        assert [a for a, _ in st.seen].count("CertificateSigned") == 1


# --------------------------------------------------------------------- the rest of 2.x
@pytest.mark.parametrize("protocol", V2X)
def test_certificate_services_without_a_v2g_pki_answer_failed(server: Server,
                                                              protocol: str) -> None:
    """M06 (GetCertificateStatus) and M01/M02 (Get15118EVCertificate) need an OCSP
    responder and a contract certificate pool: answered Failed, as the spec allows."""
    with connected(server, f"MISC-{suffix(protocol)}", protocol) as st:
        ocsp = st.call("GetCertificateStatus", {"ocspRequestData": {
            "hashAlgorithm": "SHA256", "issuerNameHash": "a" * 64, "issuerKeyHash": "b" * 64,
            "serialNumber": "01", "responderURL": "http://ocsp.example"}})
        assert ocsp["status"] == "Failed"
        ev = st.call("Get15118EVCertificate", {"iso15118SchemaVersion": "urn:iso:15118:2:2013",
                                               "action": "Install", "exiRequest": "AAAA"})
        assert ev["status"] == "Failed"


def test_ocpp21_station_messages_are_answered_and_kept(server: Server) -> None:
    """OCPP 2.1's own station messages (DER, battery swap, payment, priority charging,
    periodic streams, certificate chains): each answered as its schema says and kept."""
    name = "MISC-21"
    now = now_iso()
    token = {"idToken": "OK1", "type": "ISO14443"}
    hash_data = {"hashAlgorithm": "SHA256", "issuerNameHash": "a" * 64,
                 "issuerKeyHash": "b" * 64, "serialNumber": "01"}
    messages: list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
        ("NotifyDERAlarm", {"controlType": "FreqDroop", "timestamp": now}, lambda r: r == {}),
        ("NotifyDERStartStop", {"controlId": "c1", "started": True, "timestamp": now},
         lambda r: r == {}),
        ("ReportDERControl", {"requestId": 1}, lambda r: r == {}),
        ("BatterySwap", {"eventType": "BatteryIn", "requestId": 1, "idToken": token,
                         "batteryData": [{"evseId": 1, "serialNumber": "B1", "soC": 80,
                                          "soH": 95}]}, lambda r: r == {}),
        ("NotifyPriorityCharging", {"transactionId": "T1", "activated": True},
         lambda r: r == {}),
        ("NotifySettlement", {"pspRef": "p1", "status": "Settled", "settlementAmount": 5.0,
                              "settlementTime": now}, lambda r: "receiptUrl" not in r),
        ("NotifyWebPaymentStarted", {"evseId": 1, "timeout": 60}, lambda r: r == {}),
        ("OpenPeriodicEventStream", {"constantStreamData": {
            "id": 1, "variableMonitoringId": 1, "params": {"interval": 60, "values": 1}}},
         lambda r: r["status"] == "Rejected"),
        ("ClosePeriodicEventStream", {"id": 1}, lambda r: r == {}),
        ("PullDynamicScheduleUpdate", {"chargingProfileId": 1},
         lambda r: r["status"] == "Rejected"),
        ("VatNumberValidation", {"vatNumber": "NL123", "evseId": 1},
         lambda r: r["vatNumber"] == "NL123" and r["status"] == "Rejected"),
        ("GetCertificateChainStatus", {"certificateStatusRequests": [
            {"certificateHashData": hash_data, "source": "OCSP",
             "urls": ["http://ocsp.example"]}]},
         lambda r: r["certificateStatus"][0]["status"] == "Failed"),
    ]
    with connected(server, name, "ocpp2.1") as st:
        for action, payload, ok in messages:
            assert ok(st.call(action, payload)), action
    _, kept = server.api("GET", f"/stations/{name}/messages?limit=100")
    # (After the certificate-service messages of the test before, on the same station.)
    actions = [m["action"] for m in kept["messages"]]
    assert actions[-len(messages):] == [a for a, _, _ in messages]


def test_security_events_are_listed_by_kind_and_page(server: Server) -> None:
    """An unknown station is refused before any OCPP message; the refusal is a security
    event the operator API lists (by kind, a page at a time)."""
    for n in range(3):
        with pytest.raises(InvalidStatus):
            connect(f"wss://127.0.0.1:{server.port}/ocpp/STRANGER{n}", ssl=server.tls,
                    additional_headers=basic_auth(f"STRANGER{n}"),
                    subprotocols=["ocpp2.0.1"], open_timeout=TIMEOUT_S)  # type: ignore[list-item]
    status, first = server.api("GET", "/security-events?kind=unknown_station&limit=2")
    assert status == 200 and len(first["events"]) == 2
    status, rest = server.api("GET", "/security-events?kind=unknown_station&limit=2"
                                     f"&after={first['next_after']}")
    events = first["events"] + rest["events"]
    assert [e["kind"] for e in events] == ["unknown_station"] * 3
    assert all("STRANGER" in (e["detail"] or "") for e in events)
    assert server.api("GET", "/security-events?kind=no%20such")[0] == 422


@pytest.mark.parametrize("protocol", V2X)
def test_ev_charging_needs_are_answered_with_a_profile_at_once(server: Server,
                                                               protocol: str) -> None:
    """K15/K16: the CSMS answers an EV's needs with a schedule right away, not at its next
    cycle (60 s away here): an EV that can take only 4 kW gets a 4 kW TxProfile."""
    name = f"NEEDS-{suffix(protocol)}"
    tx = f"NEEDS-{protocol}"

    def limit(p: dict[str, Any]) -> float | None:
        return tx_limit_w(p, tx)

    with connected(server, name, protocol) as st:
        st.replies["SetChargingProfile"] = {"status": "Accepted"}
        start_tx(st, tx, "OK2", 1000.0)
        st.wait_call("SetChargingProfile", lambda p: limit(p) == 7000.0)
        needs = {"requestedEnergyTransfer": "DC", "dcChargingParameters": {
            "evMaxCurrent": 100, "evMaxVoltage": 400, "evMaxPower": 4000}}
        assert st.call("NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": needs}
                       )["status"] == "Accepted"
        st.wait_call("SetChargingProfile", lambda p: limit(p) == 4000.0)



def test_identities_are_percent_decoded_and_paths_checked(server: Server) -> None:
    """OCPP-J's URL scheme: the identity is the last path segment, percent-decoded; a
    query string is not part of it; another path is refused before any OCPP message."""
    name = "ID#1 ü"
    with connected(server, name, "ocpp2.0.1", path="/ocpp/ID%231%20%C3%BC?site=x") as st:
        assert authorize(st, "OK1")["status"] == "Accepted"
    status, detail = server.api("GET", "/stations/ID%231%20%C3%BC")
    assert status == 200 and detail["booted_at"] is not None
    with (pytest.raises(InvalidStatus) as refused,
          connected(server, name, "ocpp2.0.1", path="/elsewhere/ID%231%20%C3%BC")):
        pass
    assert refused.value.response.status_code == 404
