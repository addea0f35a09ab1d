"""Authorization rules (csms/auth.py) and their place in the core: statuses, expiry,
groups, master pass, ConcurrentTx, local-list entries, and the config that sets them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from evtwin.csms import CSMSCore, Store
from evtwin.csms.auth import Authorizer, TokenInfo, TokenRecord
from evtwin.csms.config import FileConfigError, load_config
from tests.test_csms_core import T0, FakeClock, make_config, start, tx_event

LATER = T0 + timedelta(days=1)


def authorizer(**kw: object) -> Authorizer:
    return Authorizer([
        TokenRecord("OK"), TokenRecord("BLOCKED", "Blocked"),
        TokenRecord("OLD", expires_at=T0 + timedelta(hours=1)),
        TokenRecord("FLEET-A", group="FLEET"), TokenRecord("BOSS", group="MP", local=False),
    ], master_pass_group="MP", **kw)  # type: ignore[arg-type]


def test_statuses_expiry_and_groups() -> None:
    a = authorizer()
    assert a.info("OK", T0) == TokenInfo("Accepted")
    assert a.info("NOBODY", T0).status == "Invalid"
    assert a.info("BLOCKED", T0).status == "Blocked"
    assert a.info("OLD", T0).status == "Accepted"
    assert a.info("OLD", LATER).status == "Expired"
    assert a.info("FLEET-A", T0).to_2x() == {
        "status": "Accepted", "groupIdToken": {"idToken": "FLEET", "type": "Central"}}
    assert a.info("FLEET-A", T0).to_16() == {"status": "Accepted", "parentIdTag": "FLEET"}
    assert a.info("fleet-a", T0).status == "Accepted"  # CiString: case-insensitive
    # A group 1.6 cannot carry is left out, never cut to another group's name.
    assert TokenInfo("Accepted", "G" * 21).to_16() == {"status": "Accepted"}
    old = a.info("OLD", T0)
    assert old.to_2x()["cacheExpiryDateTime"].startswith("2026-06-01T13:00:00")
    assert old.to_16()["expiryDate"] == old.to_2x()["cacheExpiryDateTime"]
    # 1.6 has no NotAtThisTime: a refusal all the same.
    assert TokenInfo("NotAtThisTime").to_16() == {"status": "Invalid"}


def test_concurrent_tx_spares_the_master_pass() -> None:
    a = authorizer(allow_concurrent_tx=False)
    assert a.info("OK", T0, in_open_tx=True).status == "ConcurrentTx"
    assert a.info("BOSS", T0, in_open_tx=True).status == "Accepted"
    assert a.is_master_pass("BOSS") and not a.is_master_pass("FLEET-A")
    assert authorizer().info("OK", T0, in_open_tx=True).status == "Accepted"


def test_local_list_entries() -> None:
    a = authorizer()
    assert [e[1] for e in a.local_list(T0)] == ["OK", "BLOCKED", "OLD", "FLEET-A"]
    entries = a.local_list(T0, ["OK", "GONE"])
    assert entries[0][2] == TokenInfo("Accepted") and entries[1][0] is None
    assert entries[1][2] is None


def test_core_answers_concurrent_tx_for_a_token_in_an_open_transaction() -> None:
    clock = FakeClock()
    core = CSMSCore(make_config(allow_concurrent_tx=False), Store(":memory:"), clock=clock)
    assert start(core, "CS1", 1, "tx-1")["id_token_info"].status == "Accepted"
    # Authorize is never ConcurrentTx (the status is for a start): the driver may stop.
    assert core.authorize("TOKEN1") == "Accepted"
    assert core.authorize("token1") == "Accepted"  # id tokens are case-insensitive
    # The same transaction's own events are not "another transaction".
    r = core.on_transaction_event("CS1", tx_event("Updated", 1, "tx-1", T0, id_token="TOKEN1"))
    assert r["id_token_info"].status == "Accepted"
    r = start(core, "CS2", 1, "tx-2")
    assert r["id_token_info"].status == "ConcurrentTx"
    r = core.on_transaction_event("CS3", tx_event("Started", 0, "tx-3", T0, id_token="token1",
                                                  trigger="Authorized"))
    assert r["id_token_info"].status == "ConcurrentTx"


def test_config_tokens(tmp_path: Path) -> None:
    cfg = tmp_path / "csms.toml"
    cfg.write_text('[tokens]\naccepted = ["A"]\nmaster_pass_group = "MP"\n'
                   'allow_concurrent_tx = false\n'
                   '[[tokens.entries]]\nid = "B"\nstatus = "Blocked"\n'
                   '[[tokens.entries]]\nid = "C"\ngroup = "MP"\n'
                   'expires = 2027-01-01T00:00:00Z\n')
    config = load_config(cfg).csms_config()
    assert config.master_pass_group == "MP" and not config.allow_concurrent_tx
    assert [(t.id_token, t.status, t.group) for t in config.tokens] == [
        ("B", "Blocked", None), ("C", "Accepted", "MP")]
    cfg.write_text('[tokens]\naccepted = ["A"]\n[[tokens.entries]]\nid = "A"\n'
                   '[[tokens.entries]]\nid = "D"\nstatus = "Maybe"\n'
                   '[[tokens.entries]]\nid = "E"\nexpires = 2027-01-01T00:00:00\n')
    with pytest.raises(FileConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert "tokens.entries.0.id: token 'A' is given twice" in text
    assert "tokens.entries.1.status" in text and "tokens.entries.2.expires" in text
