"""Data protection: pseudonyms in logs, exports and the operator API; one driver's
data exported and erased on request with an audit entry, the KPIs unchanged;
retention; the ``evtwin csms privacy`` commands and their errors.

The end-to-end test runs ``evtwin csms serve`` as a process (real sockets, real
SQLite), three drivers charging on a 2.0.1 and a 1.6 station at two sites, then
scans every table and column of the database, every JSON log line and the files
written for a raw id token.
"""

from __future__ import annotations

import getpass
import json
import logging
import sqlite3
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from evtwin.csms import CSMSConfig, CSMSCore, EvseSpec, SiteSpec, StationSpec, Store
from evtwin.csms.api import hash_token
from evtwin.csms.config import load_config
from evtwin.csms.exceptions import ConfigError
from evtwin.csms.privacy import (
    ERASED,
    PSEUDONYM_PREFIX,
    PseudonymFilter,
    Pseudonymiser,
    SQLiteSQL,
    audit_log,
    erase_driver,
    export_driver,
    prune_personal_data,
    pseudonymiser_for,
    record_audit,
    redact,
    stored_key,
)
from evtwin.sim.cli import main
from tests.pg import postgres_server
from tests.test_csms_standalone import TIMEOUT_S, at, boot, csms_process, energy, station

ALICE, BOB, CAROL = "ALICE-RFID-0001", "BOB-RFID-0002", "CAROL-RFID-0003"
API_TOKEN = "privacy-test-operator-token-0123456789"

CONFIG = f"""
[control]
strategy = "equal_share"
interval_s = 1

[tariff]
energy_per_kwh = 0.40
session_fee = 1.0
currency = "EUR"

[[sites]]
name = "depot"
limit_kw = 22

[[sites]]
name = "mall"
limit_kw = 22

[[stations]]
id = "CS1"
site = "depot"
evse_max_kw = [11, 11]

[[stations]]
id = "CS2"
site = "mall"

[tokens]
accepted = ["{ALICE}", "{BOB}", "{CAROL}"]

[api]
port = 0
token_hash = "{hash_token(API_TOKEN)}"

[privacy]
retention_days = 365
"""


# -- helpers --------------------------------------------------------------------------
def all_text(db_path: Path) -> list[tuple[str, str, str]]:
    """Every text value in every table and column: (table, column, value)."""
    con = sqlite3.connect(db_path)
    out = []
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for table in tables:
        cur = con.execute(f"SELECT * FROM {table}")
        names = [c[0] for c in cur.description]
        for row in cur.fetchall():
            out += [(table, n, str(v)) for n, v in zip(names, row, strict=True)
                    if isinstance(v, str | bytes)]
    con.close()
    return out


def holding(db_path: Path, token: str) -> list[tuple[str, str, str]]:
    """Where the raw ``token`` (any case) still is in the database."""
    return [t for t in all_text(db_path) if token.casefold() in t[2].casefold()]


def kpis(db_path: Path) -> dict[str, Any]:
    """Aggregates an operator reports: sessions, energy, revenue, per site."""
    con = sqlite3.connect(db_path)
    out: dict[str, Any] = {
        "sessions": con.execute("SELECT COUNT(*) FROM transactions").fetchone()[0],
        "ended": con.execute("SELECT COUNT(*) FROM transactions WHERE ended_at IS NOT NULL"
                             ).fetchone()[0],
        "cdrs": con.execute("SELECT COUNT(*), SUM(energy_wh), SUM(cost), SUM(duration_s) "
                            "FROM cdrs").fetchone(),
        "meter_values": con.execute("SELECT COUNT(*), SUM(value) FROM meter_values").fetchone(),
        "events": con.execute("SELECT COUNT(*) FROM transaction_events").fetchone()[0],
        "per_site": con.execute(
            "SELECT s.site, COUNT(*), SUM(c.energy_wh), SUM(c.cost) FROM cdrs c JOIN "
            "stations s ON s.station_id = c.station_id GROUP BY s.site ORDER BY s.site"
        ).fetchall(),
        "drivers": con.execute("SELECT COUNT(DISTINCT id_token) FROM transactions").fetchone()[0],
    }
    con.close()
    return out


def api_get(base: str, path: str) -> Any:
    request = urllib.request.Request(base + path,
                                     headers={"Authorization": f"Bearer {API_TOKEN}"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
        return json.loads(answer.read())


def ev201(kind: str, seq: int, tx: str, wh: float, ts: str, *, token: str | None = None,
          evse: int = 1) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "eventType": kind, "timestamp": ts, "seqNo": seq,
        "triggerReason": {"Started": "Authorized", "Updated": "MeterValuePeriodic",
                          "Ended": "StopAuthorized"}[kind],
        "transactionInfo": {"transactionId": tx},
        "meterValue": energy(wh, ts, "Sample.Periodic", False)}
    if kind == "Started":
        payload["evse"] = {"id": evse, "connectorId": 1}
    if token is not None:
        payload["idToken"] = {"idToken": token, "type": "ISO14443"}
    if kind == "Ended":
        payload["transactionInfo"]["stoppedReason"] = "Local"
    return payload


def run_network(tmp_path: Path) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    """``csms serve`` with three drivers' sessions; returns the database, the JSON log
    lines and what the operator API answered for sessions and CDRs."""
    cfg = tmp_path / "csms.toml"
    cfg.write_text(CONFIG)
    with csms_process(tmp_path, cfg) as server:
        with station(server, "CS1", "ocpp2.0.1") as st:
            boot(st, "ocpp2.0.1")
            # Alice twice, Bob once; Bob's session is stopped with Alice's card.
            for tx, token, stopper, t0, t1, evse in (
                    ("A-1", ALICE, ALICE, "08:00", "09:00", 1),
                    ("B-1", BOB, ALICE, "08:10", "09:10", 2),
                    ("A-2", ALICE, ALICE, "10:00", "11:00", 1)):
                r = st.call("TransactionEvent", ev201("Started", 0, tx, 1000, at(t0),
                                                      token=token, evse=evse))
                assert r[2]["idTokenInfo"]["status"] == "Accepted", r
                st.call("TransactionEvent", ev201("Updated", 1, tx, 3000, at(t0[:3] + "30")))
                r = st.call("TransactionEvent", ev201("Ended", 2, tx, 5000, at(t1),
                                                      token=stopper))
                assert r[0] == 3, r
        with station(server, "CS2", "ocpp1.6") as st:
            boot(st, "ocpp1.6")
            for token, t0, t1 in ((CAROL, "12:00", "13:00"), (ALICE, "14:00", "15:00")):
                assert st.call("Authorize", {"idTag": token})[2]["idTagInfo"]["status"] \
                    == "Accepted"
                r = st.call("StartTransaction", {"connectorId": 1, "idTag": token,
                                                 "meterStart": 0, "timestamp": at(t0)})
                tx_id = r[2]["transactionId"]
                st.call("MeterValues", {"connectorId": 1, "transactionId": tx_id,
                                        "meterValue": energy(2000, at(t0[:3] + "30"),
                                                             "Sample.Periodic", True)})
                r = st.call("StopTransaction", {"meterStop": 4000, "timestamp": at(t1),
                                                "transactionId": tx_id, "idTag": token,
                                                "reason": "Local"})
                assert r[0] == 3, r
            # A station's free text naming a driver is kept as received, too.
            st.call("DataTransfer", {"vendorId": "acme", "messageId": "note",
                                     "data": f"card {ALICE} read twice"})
        base = server.event("listening")["api_url"]
        answers = {"sessions": api_get(base, "/sessions"), "cdrs": api_get(base, "/cdrs"),
                   "messages": api_get(base, "/stations/CS2/messages?action=DataTransfer")}
        server.proc.terminate()
        assert server.proc.wait(timeout=TIMEOUT_S) == 0
        server.event("stopped")
    return tmp_path / "csms.sqlite", server.logs, answers


# -- the end-to-end case ----------------------------------------------------------------
@pytest.mark.slow
def test_a_driver_is_erased_on_request_and_the_kpis_stay(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, logs, answers = run_network(tmp_path)
    store = Store(db)
    pseudo = pseudonymiser_for(store)
    store.close()
    assert holding(db, ALICE) and holding(db, BOB) and holding(db, CAROL)  # they charged

    # The operator API and the JSON logs show pseudonyms only.
    shown = {s["id_token"] for s in answers["sessions"]["sessions"]}
    assert shown == {pseudo(ALICE), pseudo(BOB), pseudo(CAROL)}
    assert {c["id_token"] for c in answers["cdrs"]["cdrs"]} == shown
    assert all(t is not None and t.startswith(PSEUDONYM_PREFIX) for t in shown)
    (note,) = answers["messages"]["messages"]
    assert note["payload"]["data"] == f"card {pseudo(ALICE)} read twice"
    log_text = json.dumps(logs).casefold()
    assert "transaction_ended" in log_text and "listening" in log_text  # they were captured
    for token in (ALICE, BOB, CAROL):
        assert token.casefold() not in log_text
        assert json.dumps(answers).casefold().count(token.casefold()) == 0

    before = kpis(db)
    assert before["sessions"] == before["ended"] == 5 and before["drivers"] == 3
    # GDPR access: Bob's data, which names nobody else (Alice stopped his session).
    out = tmp_path / "bob.json"
    assert main(["csms", "privacy", "export", "--db", str(db), "--id-token", BOB,
                 "--actor", "dpo@example.org", "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    exported = json.loads(out.read_text())
    assert [s["transaction_id"] for s in exported["sessions"]] == ["B-1"]
    assert len(exported["cdrs"]) == 1 and len(exported["transaction_events"]) == 3
    assert len(exported["meter_values"]) == 3
    assert exported["pseudonym"] == pseudo(BOB)
    text = out.read_text().casefold()
    assert BOB.casefold() in text
    assert ALICE.casefold() not in text and CAROL.casefold() not in text

    # GDPR erasure: Alice everywhere.
    capsys.readouterr()
    assert main(["csms", "privacy", "erase", "--db", str(db), "--id-token", ALICE.lower(),
                 "--actor", "dpo@example.org", "--reason", "request #4711"]) == 0
    said = capsys.readouterr().out
    assert f"erased {pseudo(ALICE)}: 3 transactions, 3 CDRs" in said
    assert holding(db, ALICE) == []  # every table, every column
    assert holding(db, BOB) and holding(db, CAROL)  # the others keep theirs
    after = kpis(db)
    assert after == {**before, "drivers": 3}  # Alice's sessions now share one marker
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM transactions WHERE id_token = ?",
                       (ERASED,)).fetchone()[0] == 3
    bob_ended = json.loads(con.execute(
        "SELECT payload FROM transaction_events WHERE transaction_id = 'B-1' AND "
        "event_type = 'Ended'").fetchone()[0])
    con.close()
    assert bob_ended["idToken"] == {"idToken": ERASED, "type": "ISO14443"}

    # The audit log: who, when, what, whose (pseudonym), how many; never the raw id.
    store = Store(db)
    entries = audit_log(store)
    store.close()
    # The declared actor, next to who ran the command (the OS user).
    who = f"dpo@example.org (os user {getpass.getuser()})"
    assert [(e.actor, e.operation, e.subject) for e in entries] == [
        (who, "export", pseudo(BOB)), (who, "erase", pseudo(ALICE))]
    assert entries[0].row_count == 1 + 1 + 3 + 3
    assert entries[1].row_count >= 3 + 3 + 6 and entries[1].detail == "request #4711"
    assert datetime.fromisoformat(entries[1].at.replace("Z", "+00:00")) > \
        datetime.now(UTC) - timedelta(minutes=5)
    capsys.readouterr()
    assert main(["csms", "privacy", "audit", "--db", str(db)]) == 0
    listing = capsys.readouterr().out
    assert pseudo(ALICE) in listing and "erase" in listing and "export" in listing
    assert ALICE.casefold() not in listing.casefold() and BOB.casefold() not in listing.casefold()

    # Erased is erased: a second request finds nothing, an export neither.
    with pytest.raises(ConfigError, match="no data of this id token"):
        store = Store(db)
        try:
            export_driver(store, ALICE, actor="dpo", now=datetime.now(UTC))
        finally:
            store.close()


# -- retention -----------------------------------------------------------------------
def _core(store: Store, clock: list[datetime], tokens: tuple[str, ...] = (ALICE, BOB)
          ) -> CSMSCore:
    config = CSMSConfig(stations=(StationSpec("CS1", "depot", (EvseSpec(1, 11000.0),)),),
                        sites=(SiteSpec("depot", 22000.0),), id_tokens=frozenset(tokens))
    return CSMSCore(config, store, clock=lambda: clock[0])


def _session(core: CSMSCore, tx: str, token: str, start: datetime, hours: float) -> None:
    from evtwin.csms import iso

    end = start + timedelta(hours=hours)
    for kind, seq, ts, wh in (("Started", 0, start, 0.0), ("Ended", 1, end, 7000.0)):
        core.on_transaction_event("CS1", ev201(kind, seq, tx, wh, iso(ts), token=token))


def test_retention_erases_only_transactions_ended_before_the_period(tmp_path: Path) -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    clock = [now - timedelta(days=400)]
    store = Store(tmp_path / "csms.sqlite")
    core = _core(store, clock)
    _session(core, "OLD", ALICE, clock[0], 2)
    clock[0] = now - timedelta(days=10)
    _session(core, "NEW", BOB, clock[0], 2)
    clock[0] = now - timedelta(days=364)  # ended 364 days ago: kept
    _session(core, "EDGE", ALICE, clock[0], 1)
    clock[0] = now
    store.close()
    before = kpis(tmp_path / "csms.sqlite")

    store = Store(tmp_path / "csms.sqlite")
    changed = prune_personal_data(store, retention_days=365, now=now)
    assert changed == 1 + 1 + 2  # the row, its CDR, its two events
    assert prune_personal_data(store, retention_days=365, now=now) == 0  # done already
    tokens = {r["transaction_id"]: r["id_token"] for r in store.transactions()}
    cdr_tokens = {r["transaction_id"]: r["id_token"] for r in store.cdrs()}
    entries = audit_log(store)
    store.close()
    assert tokens == cdr_tokens == {"OLD": ERASED, "NEW": BOB, "EDGE": ALICE}
    assert {**before, "drivers": 3} == kpis(tmp_path / "csms.sqlite")  # + the marker
    assert [(e.operation, e.actor, e.subject, e.row_count) for e in entries] == [
        ("prune", "retention", None, 4)]
    assert entries[0].detail == "ended before 2025-06-01T12:00:00.000Z"
    old = [t for t in all_text(tmp_path / "csms.sqlite") if ALICE in t[2]]
    assert old and all("EDGE" in str(t) or t[0] != "transaction_events" for t in old)


def test_the_prune_command_and_the_serve_housekeeping_use_retention_days(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC)
    clock = [now - timedelta(days=40)]
    store = Store(tmp_path / "csms.sqlite")
    core = _core(store, clock)
    _session(core, "T40", ALICE, clock[0], 1)
    clock[0] = now - timedelta(days=5)
    _session(core, "T5", BOB, clock[0], 1)
    store.close()
    cfg = tmp_path / "csms.toml"
    cfg.write_text("[privacy]\nretention_days = 30\n")
    assert main(["csms", "privacy", "prune", "--db", str(tmp_path / "csms.sqlite"),
                 "--config", str(cfg), "--actor", "cron"]) == 0
    assert "more than 30 days ago: 4 rows" in capsys.readouterr().out
    assert main(["csms", "privacy", "prune", "--db", str(tmp_path / "csms.sqlite"),
                 "--retention-days", "1"]) == 0
    store = Store(tmp_path / "csms.sqlite")
    assert {r["transaction_id"]: r["id_token"] for r in store.transactions()} == {
        "T40": ERASED, "T5": ERASED}
    assert audit_log(store)[0].actor == f"cron (os user {getpass.getuser()})"
    assert audit_log(store)[1].actor == f"os user {getpass.getuser()}"
    store.close()
    # Retention beyond 100 years (or inf, or NaN) is refused in the config and the CLI.
    for bad in ("inf", "nan", "1e7", "36501"):
        cfg.write_text(f"[privacy]\nretention_days = {bad}\n")
        with pytest.raises(ConfigError, match=r"privacy\.retention_days"):
            load_config(cfg)
        capsys.readouterr()
        assert main(["csms", "privacy", "prune", "--db", str(tmp_path / "csms.sqlite"),
                     "--retention-days", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--retention-days: must be above 0 and at most " \
            "36500" in err and "Traceback" not in err, err
    cfg.write_text("[privacy]\nretention_days = 36500\n")
    assert load_config(cfg).privacy.retention_days == 36500


def test_serve_runs_retention_at_start(tmp_path: Path) -> None:
    import asyncio

    from evtwin.csms.privacy import retention_housekeeping

    now = datetime.now(UTC)
    clock = [now - timedelta(days=800)]
    store = Store(tmp_path / "csms.sqlite")
    _session(_core(store, clock), "OLD", ALICE, clock[0], 1)

    async def run() -> None:
        task = asyncio.create_task(retention_housekeeping(
            store, retention_days=365, clock=lambda: now, prune_s=3600))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if store.transactions()[0]["id_token"] == ERASED:
                break
        task.cancel()

    asyncio.run(run())
    assert store.transactions()[0]["id_token"] == ERASED
    assert [e.operation for e in audit_log(store)] == ["prune"]
    store.close()


# -- the command line: bad input is one line, exit 2 -----------------------------------
@pytest.fixture
def small_db(tmp_path: Path) -> Iterator[Path]:
    clock = [datetime.now(UTC) - timedelta(days=2)]
    store = Store(tmp_path / "csms.sqlite")
    core = _core(store, clock)
    _session(core, "T1", ALICE, clock[0], 1)
    clock[0] = datetime.now(UTC) - timedelta(hours=1)
    core.on_transaction_event("CS1", ev201("Started", 0, "OPEN", 0.0,
                                           at_iso(clock[0]), token=BOB))
    pseudonymiser_for(store)  # the key, made on first use
    store.close()
    yield tmp_path / "csms.sqlite"


def at_iso(ts: datetime) -> str:
    from evtwin.csms import iso

    return iso(ts)


@pytest.mark.parametrize(("argv", "message"), [
    (["export", "--db", "{missing}", "--id-token", ALICE, "--actor", "x"],
     "--db: {missing}: no such file"),
    (["export", "--db", "{db}", "--id-token", "NOBODY-AT-ALL", "--actor", "x"],
     "--id-token: no data of this id token (pid-"),
    (["erase", "--db", "{db}", "--id-token", "NOBODY-AT-ALL", "--actor", "x", "--reason", "r"],
     "--id-token: no data of this id token (pid-"),
    (["erase", "--db", "{db}", "--id-token", BOB, "--actor", "x", "--reason", "r"],
     "has 1 open transaction(s) (CS1/OPEN); erase after they end"),
    (["erase", "--db", "{db}", "--id-token", ALICE, "--actor", " ", "--reason", "r"],
     "--actor: name who does it"),
    (["erase", "--db", "{db}", "--id-token", ALICE, "--actor", "x", "--reason", ""],
     "--reason: say why"),
    (["export", "--db", "{db}", "--id-token", "pid-0123456789abcdef", "--actor", "x"],
     "--id-token: give the driver's raw id token"),
    (["export", "--db", "{notdb}", "--id-token", ALICE, "--actor", "x"],
     "not a CSMS database"),
    (["export", "--db", "{garbage}", "--id-token", ALICE, "--actor", "x"],
     "not a SQLite database"),
    (["export", "--db", "{db}", "--id-token", ALICE, "--actor", "x", "--out", "{db}"],
     "--out: {db} exists; give a new file"),
    (["prune", "--db", "{db}", "--retention-days", "-3"], "--retention-days: must be above 0"),
])
def test_bad_input_is_one_line_and_exit_2(small_db: Path, argv: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    notdb = small_db.parent / "other.sqlite"
    sqlite3.connect(notdb).execute("CREATE TABLE t (x)").connection.commit()
    garbage = small_db.parent / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all, certainly not" * 100)
    names = {"missing": str(small_db.parent / "nope.sqlite"), "db": str(small_db),
             "notdb": str(notdb), "garbage": str(garbage)}
    before = all_text(small_db)
    capsys.readouterr()
    assert main(["csms", "privacy", *(a.format(**names) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert message.format(**names) in " ".join(err.split()), err
    assert ALICE not in err and BOB not in err
    assert all_text(small_db) == before  # nothing changed, no audit entry
    assert not (small_db.parent / "nope.sqlite").exists()


def test_a_bad_privacy_section_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "csms.toml"
    cfg.write_text("[privacy]\nretention_days = -1\n")
    with pytest.raises(ConfigError, match=r"privacy\.retention_days"):
        load_config(cfg)
    cfg.write_text("[privacy]\nkey_file = 'missing.key'\n")
    with pytest.raises(ConfigError, match=r"privacy\.key_file.*missing\.key"):
        load_config(cfg)
    (tmp_path / "short.key").write_text("abcd\n")
    cfg.write_text("[privacy]\nkey_file = 'short.key'\n")
    with pytest.raises(ConfigError, match="64 hex digits"):
        load_config(cfg)
    cfg.write_text("[privacy]\nretention_days = 0\nkey_file = 'good.key'\n")
    (tmp_path / "good.key").write_text("ab" * 32 + "\n")
    config = load_config(cfg)
    assert config.privacy.retention_days is None
    assert config.privacy.key_file == tmp_path / "good.key"


# -- the pieces ------------------------------------------------------------------------
def test_the_key_is_made_once_per_database_and_a_key_file_wins(tmp_path: Path) -> None:
    first = Store(tmp_path / "a.sqlite")
    p1 = pseudonymiser_for(first)(ALICE)
    first.close()
    again = Store(tmp_path / "a.sqlite")
    assert pseudonymiser_for(again)(ALICE) == p1  # kept in the database
    key_file = tmp_path / "privacy.key"
    key_file.write_text("11" * 32)
    assert pseudonymiser_for(again, key_file=key_file)(ALICE) == \
        Pseudonymiser(bytes.fromhex("11" * 32))(ALICE) != p1
    assert pseudonymiser_for(again)(ALICE) != p1  # the file's key from then on
    again.close()
    other = Store(tmp_path / "b.sqlite")
    assert pseudonymiser_for(other)(ALICE) != p1  # another database, another key
    other.close()


def test_redact_erases_identifiers_and_keeps_the_rest() -> None:
    payload = {"idToken": {"idToken": ALICE, "type": "ISO14443",
                           "additionalInfo": [{"additionalIdToken": "X9", "type": "a"}]},
               "groupIdToken": {"idToken": "G1", "type": "Central"},
               "transactionInfo": {"transactionId": "T1"}, "seqNo": 3,
               "data": f"card {ALICE.lower()} read", "note": "AB"}
    out = redact(payload, tokens=[ALICE])
    assert out == {"idToken": {"idToken": ERASED, "type": "ISO14443",
                               "additionalInfo": [{"additionalIdToken": ERASED, "type": "a"}]},
                   "groupIdToken": {"idToken": ERASED, "type": "Central"},
                   "transactionInfo": {"transactionId": "T1"}, "seqNo": 3,
                   "data": f"card {ERASED} read", "note": "AB"}
    assert payload["idToken"]["idToken"] == ALICE  # a copy
    assert redact({"idTag": BOB, "parentIdTag": "G"}, keep=BOB.lower()) == {
        "idTag": BOB, "parentIdTag": ERASED}
    # A short token is matched as a whole string only, never inside text.
    assert redact({"a": "AB", "b": "CABLE"}, tokens=["ab"]) == {"a": ERASED, "b": "CABLE"}


def test_the_log_filter_pseudonymises_fields_payloads_and_known_tokens() -> None:
    pseudo = Pseudonymiser(b"k" * 32)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(PseudonymFilter(pseudo, known=[ALICE]))
    logger = logging.getLogger("evtwin.test.privacy")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("token %s refused", ALICE.lower(), extra={
            "id_token": BOB, "payload": {"idToken": {"idToken": CAROL, "type": "ISO14443"}}})
    finally:
        logger.removeHandler(handler)
    (r,) = records
    assert r.getMessage() == f"token {pseudo(ALICE)} refused"
    assert r.id_token == pseudo(BOB)  # type: ignore[attr-defined]
    assert r.payload == {  # type: ignore[attr-defined]
        "idToken": {"idToken": pseudo(CAROL), "type": "ISO14443"}}


def test_the_audit_log_shape_works_on_a_store_of_its_own() -> None:
    """What the eMSP's SQLite file uses: the same key and audit tables."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    sql = SQLiteSQL(db)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    key = stored_key(sql, now=now)
    assert len(key) == 32 and stored_key(sql, now=now) == key
    subject = Pseudonymiser(key)("NL-EMS-C12345678-X")
    with sql.atomic():
        record_audit(sql, at=now, actor="emsp-admin", operation="erase", subject=subject,
                     row_count=4, detail="request 1")
    with pytest.raises(ValueError, match="pseudonym only"):
        record_audit(sql, at=now, actor="a", operation="export", subject="NL-EMS-C1",
                     row_count=1)
    (entry,) = audit_log(sql)
    assert entry.as_dict() == {"id": 1, "at": "2026-06-01T00:00:00.000Z", "actor": "emsp-admin",
                               "operation": "erase", "subject": subject, "row_count": 4,
                               "detail": "request 1"}


@pytest.mark.slow
def test_erase_and_prune_on_postgresql() -> None:
    with postgres_server() as url:
        now = datetime.now(UTC)
        clock = [now - timedelta(days=500)]
        store = Store(url)
        core = _core(store, clock)
        _session(core, "OLD", BOB, clock[0], 1)
        clock[0] = now - timedelta(days=3)
        _session(core, "A1", ALICE, clock[0], 1)
        _session(core, "B1", BOB, clock[0] + timedelta(hours=2), 1)
        totals = (len(store.transactions()), sum(c["energy_wh"] for c in store.cdrs()))
        key = pseudonymiser_for(store)(ALICE)
        counts = erase_driver(store, ALICE.lower(), actor="dpo", reason="r",
                              now=now)
        assert counts["transactions"] == counts["cdrs"] == 1 and counts["messages"] == 2
        assert prune_personal_data(store, retention_days=365, now=now) == 4
        rows = store.query("SELECT transaction_id, id_token FROM transactions ORDER BY "
                           "transaction_id")
        assert [(r["transaction_id"], r["id_token"]) for r in rows] == [
            ("A1", ERASED), ("B1", BOB), ("OLD", ERASED)]
        events = " ".join(r["payload"] for r in store.query(
            "SELECT payload FROM transaction_events"))
        assert ALICE not in events and events.count(BOB) == 2
        assert (len(store.transactions()), sum(c["energy_wh"] for c in store.cdrs())) == totals
        assert [(e.operation, e.subject) for e in audit_log(store)] == [
            ("erase", key), ("prune", None)]
        store.close()
        # Another process on the same database gets the same pseudonyms.
        again = Store(url)
        assert pseudonymiser_for(again)(ALICE) == key
        again.close()
        assert main(["csms", "privacy", "erase", "--db", url, "--id-token", BOB,
                     "--actor", "dpo", "--reason", "r"]) == 0
        again = Store(url)
        assert {r["id_token"] for r in again.transactions()} == {ERASED}
        assert [e.operation for e in audit_log(again)] == ["erase", "prune", "erase"]
        again.close()


def test_the_commands_name_drivers_with_the_config_key_file(
        small_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = small_db.parent / "privacy.key"
    key.write_text("5a" * 32 + "\n")
    cfg = small_db.parent / "csms.toml"
    cfg.write_text('[privacy]\nkey_file = "privacy.key"\n')
    assert main(["csms", "privacy", "erase", "--db", str(small_db), "--id-token", ALICE,
                 "--actor", "dpo", "--reason", "r", "--config", str(cfg)]) == 0
    expected = Pseudonymiser(bytes.fromhex("5a" * 32))(ALICE)
    assert f"erased {expected}:" in capsys.readouterr().out
    assert main(["csms", "privacy", "audit", "--db", str(small_db)]) == 0
    assert expected in capsys.readouterr().out


@pytest.mark.slow
def test_a_twin_run_writes_no_id_token_outside_its_database_and_erases_like_serve(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO, logger="evtwin")
    assert main(["run", str(Path(__file__).parents[1] / "scenarios" / "demo.toml"),
                 "--set", "duration_h=12", "--set", "run.transport=memory",
                 "--out", str(tmp_path)]) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    db = run_dir / "csms.sqlite"
    con = sqlite3.connect(db)
    tokens = sorted({r[0] for r in con.execute("SELECT id_token FROM transactions")})
    # A driver whose sessions all ended (one still charging cannot be erased yet).
    done = con.execute("SELECT id_token FROM transactions GROUP BY id_token HAVING "
                       "COUNT(ended_at) = COUNT(*) ORDER BY id_token").fetchone()[0]
    con.close()
    assert len(tokens) >= 3 and all(t.startswith("TOKEN") for t in tokens)
    files = [p for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith("csms.sqlite")]
    assert {p.name for p in files} >= {"sessions.csv", "kpis.json", "run.json", "timeseries.csv"}
    for path in files:
        content = path.read_bytes()
        assert not any(t.encode() in content for t in tokens), path
    captured = capsys.readouterr()
    for text in (caplog.text, captured.out, captured.err):
        assert not any(t in text for t in tokens)
    assert "transaction" in caplog.text  # the CSMS's log lines were captured

    before = kpis(db)
    assert main(["csms", "privacy", "erase", "--db", str(db), "--id-token", done,
                 "--actor", "twin-operator", "--reason", "test"]) == 0
    assert holding(db, done) == []
    assert all(holding(db, t) for t in tokens if t != done)
    assert kpis(db) == before  # the marker stands in for the one driver


def test_the_operator_api_exports_erases_and_lists_the_audit_log() -> None:
    """Admin endpoints (the API's bearer token): the id token only ever in a body."""
    import asyncio

    from tests.test_csms_api import api_running
    from tests.test_csms_api import tx_event as api_tx

    async def scenario() -> None:
        async with api_running() as (server, _api, client):
            core = server.core
            core.on_transaction_event("CS201", api_tx("Started", 0, "T1", 0.0))
            core.on_transaction_event("CS201", api_tx("Ended", 1, "T1", 5000.0, at_s=3600))
            core.on_transaction_event("CS201", api_tx("Started", 0, "T2", 0.0, evse=2))
            pseudonym = pseudonymiser_for(core.store)("TOKEN1")
            status, sessions, _ = await client("GET", "/sessions")
            assert status == 200
            assert {s["id_token"] for s in sessions["sessions"]} == {pseudonym}
            who = {"id_token": "token1", "actor": "ops-admin"}

            status, data, _ = await client("POST", "/privacy/export", body=who)
            assert status == 200 and data["pseudonym"] == pseudonym
            assert [s["transaction_id"] for s in data["sessions"]] == ["T1", "T2"]
            status, data, _ = await client("POST", "/privacy/erase",
                                           body={**who, "reason": "ticket 9"})
            assert (status, data["error"]) == (409, "driver_charging")
            assert data["problems"] == [{"path": "id_token", "message": data["problems"][0][
                "message"]}] and "T2" in data["message"]
            core.on_transaction_event("CS201", api_tx("Ended", 1, "T2", 2000.0, at_s=1800,
                                                      evse=2))
            status, data, _ = await client("POST", "/privacy/erase",
                                           body={**who, "reason": "ticket 9"})
            assert status == 200, data
            assert data == {"pseudonym": pseudonym, "transactions": 2, "cdrs": 2,
                            "messages": 2, "ocpi_objects": 0}
            status, data, _ = await client("POST", "/privacy/erase",
                                           body={**who, "reason": "again"})
            assert (status, data["error"]) == (404, "not_found")
            status, data, _ = await client("POST", "/privacy/export",
                                           body={"id_token": "TOKEN1"})
            assert status == 422 and data["problems"][0]["path"] == "actor"
            status, data, _ = await client("GET", "/privacy/audit")
            assert [(e["operation"], e["actor"], e["subject"]) for e in data["entries"]] == [
                ("export", "ops-admin (api token, peer 127.0.0.1)", pseudonym),
                ("erase", "ops-admin (api token, peer 127.0.0.1)", pseudonym)]
            status, data, _ = await client("GET", "/privacy/audit", token="wrong" * 8)
            assert status == 401
            assert all(t["id_token"] == ERASED for t in core.store.transactions())

    asyncio.run(scenario())


@pytest.mark.slow
def test_csms_serve_erases_old_personal_data_at_start(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    clock = [now - timedelta(days=40)]
    store = Store(tmp_path / "csms.sqlite")
    core = _core(store, clock)
    _session(core, "OLD", ALICE, clock[0], 1)
    clock[0] = now - timedelta(days=2)
    _session(core, "NEW", BOB, clock[0], 1)
    store.close()
    cfg = tmp_path / "csms.toml"
    cfg.write_text('[[sites]]\nname = "depot"\n\n[[stations]]\nid = "CS1"\nsite = "depot"\n\n'
                   "[privacy]\nretention_days = 30\n")
    with csms_process(tmp_path, cfg) as server:
        pruned = server.event("personal_data_pruned")
        server.proc.terminate()
        assert server.proc.wait(timeout=TIMEOUT_S) == 0
    assert pruned["rows"] == 4
    assert ALICE not in json.dumps(server.logs)
    assert holding(tmp_path / "csms.sqlite", ALICE) == []
    assert holding(tmp_path / "csms.sqlite", BOB)
