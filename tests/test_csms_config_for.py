"""``evtwin csms config-for``: the CSMS configuration for a scenario's stations and tokens.

What it writes must be what the twin's stations present (identities, EVSEs, id
tokens), load as ``evtwin csms serve`` loads it, and keep secrets private. An
end-to-end run against a CSMS started from it is in tests/test_stations_external.py.
"""

from __future__ import annotations

import ipaddress
import ssl
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import IPAddress
from cryptography.x509.verification import PolicyBuilder, Store

from evtwin.csms.config import load_config
from evtwin.csms.security import verify_password
from evtwin.sim.cli import main
from evtwin.sim.runner import Twin
from evtwin.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "scenarios" / "demo.toml")


def config_for(*args: str) -> int:
    return main(["csms", "config-for", *args])


@pytest.mark.slow
def test_the_config_holds_the_stations_and_tokens_the_twin_presents(tmp_path: Path) -> None:
    out = tmp_path / "csms.demo.toml"
    assert config_for(DEMO, "--out", str(out)) == 0
    config = load_config(out)
    twin = Twin(load_scenario(DEMO))
    assert [s.id for s in config.stations] == [st.station_id for st in twin.model.stations]
    assert sorted(config.tokens.accepted) == sorted(ev.id_token for ev in twin.model.evs)
    for spec, st in zip(config.stations, twin.model.stations, strict=True):
        assert spec.site == st.site
        assert spec.evse_max_kw == [e.max_power_w / 1000.0 for e in st.evses.values()]
        assert spec.bus == twin.bus_of[st.station_id]
        assert spec.password_hash is None
    sc = twin.sc
    assert {s.name: s.limit_kw for s in config.sites} == {s.name: s.limit_kw for s in sc.sites}
    assert config.control.strategy == sc.control.strategy
    assert config.control.interval_s == sc.control.interval_s
    assert config.security.profile == 0
    # `evtwin stations --speed` runs ahead of the wall clock by up to the duration.
    assert config.ocpp.max_event_lead_h >= sc.duration_h
    assert config.feeder is None  # equal_share needs no feeder model


def test_overrides_and_a_feeder_strategy_reach_the_config(tmp_path: Path) -> None:
    out = tmp_path / "c.toml"
    assert config_for(DEMO, "--out", str(out), "--set", "sites.0.stations=3",
                      "--set", "control.strategy=feeder_aware") == 0
    config = load_config(out)
    assert [s.id for s in config.stations if s.site == "street"] == [
        "street-001", "street-002", "street-003"]
    assert config.control.strategy == "feeder_aware"
    assert config.feeder is not None and config.feeder.network == "kerber_dorfnetz"
    assert all(s.bus is not None for s in config.stations)


def test_without_out_the_config_is_printed(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert config_for(DEMO) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "c.toml"
    assert config_for(DEMO, "--out", str(out)) == 0
    assert tomllib.loads(printed) == tomllib.loads(out.read_text())


def test_profile_1_writes_a_private_password_and_a_hash_per_station(tmp_path: Path) -> None:
    out = tmp_path / "csms.demo.toml"
    assert config_for(DEMO, "--out", str(out), "--security-profile", "1") == 0
    secret = tmp_path / "csms.demo.password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    password = secret.read_text().strip()
    assert 16 <= len(password) <= 40
    config = load_config(out)
    assert config.security.profile == 1
    hashes = [s.password_hash for s in config.stations]
    assert all(h is not None and verify_password(password, h) for h in hashes)
    assert len(set(hashes)) == len(hashes)  # salted: equal passwords, different hashes
    assert password not in out.read_text()
    # A second config gets a password of its own.
    other = tmp_path / "other.toml"
    assert config_for(DEMO, "--out", str(other), "--security-profile", "1") == 0
    assert (tmp_path / "other.password").read_text().strip() != password


def test_profile_2_adds_a_ca_and_a_server_certificate_for_loopback(tmp_path: Path) -> None:
    out = tmp_path / "p2.toml"
    assert config_for(DEMO, "--out", str(out), "--security-profile", "2") == 0
    config = load_config(out)
    assert config.security.profile == 2
    assert config.security.tls_cert == tmp_path / "p2-server.pem"
    assert stat.S_IMODE((tmp_path / "p2-server.key").stat().st_mode) == 0o600
    # A client that trusts the CA accepts the server certificate for 127.0.0.1.
    ca = x509.load_pem_x509_certificate((tmp_path / "p2-ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "p2-server.pem").read_bytes())
    verifier = (PolicyBuilder().store(Store([ca]))
                .build_server_verifier(IPAddress(ipaddress.ip_address("127.0.0.1"))))
    assert verifier.verify(cert, [])[-1] == ca
    # And the key is the certificate's (the CSMS loads them as a pair).
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tmp_path / "p2-server.pem",
                                                            tmp_path / "p2-server.key")


def test_an_existing_file_is_kept_unless_forced(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "csms.toml"
    out.write_text("# mine\n")
    assert config_for(DEMO, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out: ") and "--force" in err and "\n" not in err
    assert out.read_text() == "# mine\n"
    # A password file in the way counts too: nothing is half written.
    (tmp_path / "p.password").write_text("old\n")
    assert config_for(DEMO, "--out", str(tmp_path / "p.toml"), "--security-profile", "1") == 2
    assert not (tmp_path / "p.toml").exists()
    assert (tmp_path / "p.password").read_text() == "old\n"
    capsys.readouterr()
    assert config_for(DEMO, "--out", str(out), "--force") == 0
    assert load_config(out).stations


@pytest.mark.parametrize(("args", "names"), [
    (["--security-profile", "1"], "--out"),                 # the password needs a file
    (["--out", "no/such/folder/c.toml"], "--out"),
    (["--set", "sites.0.stations=0"], "sites.0.stations"),  # the scenario's own errors
])
def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str], names: str,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_for(DEMO, *args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and names in lines[0], lines
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []
