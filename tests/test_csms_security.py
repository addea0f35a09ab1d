"""Tests for OCPP security profiles 1-3 on the CSMS websocket server.

A session fixture makes a CA, server certificates (ECDSA and RSA, SAN
127.0.0.1), station certificates and a second, untrusted CA with
``cryptography``. Servers run in-process on 127.0.0.1 port 0. Timeouts scale
with EVTWIN_TEST_TIMEOUT_SCALE.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.typing import Subprotocol

from evtwin.csms import ConfigError, CSMSConfig, CSMSCore, CSMSServer, EvseSpec, StationSpec, Store
from evtwin.csms.config import FileConfigError, load_config
from evtwin.csms.security import (
    TLS12_CIPHERS,
    SecurityConfig,
    generate_password,
    hash_password,
    hash_password_command,
    server_ssl_context,
    verify_password,
)
from tests.pki import PKI, Cert, client_ctx, tls11_client

TIMEOUT_S = 5.0 * float(os.environ.get("EVTWIN_TEST_TIMEOUT_SCALE", "1"))
OCPP201 = [Subprotocol("ocpp2.0.1")]
T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
PASSWORDS = {"CS1": "correct-horse-battery-1", "CS2": "another-station-pw-22"}
HEARTBEAT = json.dumps([2, "hb", "Heartbeat", {}])


def legacy_scrypt_hash(password: str) -> str:
    """A hash in the old ``scrypt$N$r$p$salt$hash`` format operators still have."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return (f"scrypt$16384$8$1${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


@pytest.fixture(scope="session")
def password_hashes() -> dict[str, str]:
    return {sid: hash_password(pw) for sid, pw in PASSWORDS.items()}


# --------------------------------------------------------------------------- harness
def make_core() -> CSMSCore:
    # CS3 is provisioned but has no password hash.
    config = CSMSConfig(stations=tuple(StationSpec(sid, "site", (EvseSpec(1, 11_000.0),))
                                       for sid in ("CS1", "CS2", "CS3")))
    return CSMSCore(config, Store(":memory:"), clock=lambda: T0)


def run(security: SecurityConfig,
        scenario: Callable[[CSMSServer], Awaitable[None]]) -> list[dict[str, Any]]:
    """Start a server with ``security`` on 127.0.0.1:0, run ``scenario``, stop it.

    Returns the security events the server recorded.
    """

    async def main() -> list[dict[str, Any]]:
        async with CSMSServer(make_core(), host="127.0.0.1", port=0, security=security) as server:
            try:
                await asyncio.wait_for(scenario(server), 4 * TIMEOUT_S)
            finally:
                events = server.core.store.security_events()
        server.core.store.close()
        return events

    return asyncio.run(main())


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def heartbeat_ok(ws: ClientConnection) -> None:
    await ws.send(HEARTBEAT)
    reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
    assert reply[0] == 3 and reply[1] == "hb"


async def connect_ok(server: CSMSServer, identity: str = "CS1", **kw: Any) -> None:
    """A station that does everything right gets in and is served."""
    async with connect(f"{server.url}/{identity}", subprotocols=OCPP201,
                       open_timeout=TIMEOUT_S, **kw) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
        await heartbeat_ok(ws)


async def refused_status(server: CSMSServer, identity: str = "CS1", **kw: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"{server.url}/{identity}", subprotocols=OCPP201,
                           open_timeout=TIMEOUT_S, **kw):
            pass
    return info.value


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in events]


# --------------------------------------------------------------------------- passwords
def test_hash_is_salted_and_is_not_the_password() -> None:
    pw = PASSWORDS["CS1"]
    first, second = hash_password(pw), hash_password(pw)
    assert first != second  # a random salt per hash
    assert pw not in first
    assert first.startswith("sha256$")
    assert verify_password(pw, first) and verify_password(pw, second)
    assert not verify_password(pw + "x", first)
    assert not verify_password(pw.upper(), first)


def test_legacy_scrypt_hashes_still_verify() -> None:
    pw = PASSWORDS["CS1"]
    legacy = legacy_scrypt_hash(pw)
    assert legacy.startswith("scrypt$16384$8$1$")
    assert verify_password(pw, legacy)
    assert not verify_password(pw + "x", legacy)
    SecurityConfig(profile=1, password_hashes={"CS1": legacy})  # still a valid config


@pytest.mark.parametrize("length", [15, 41])
def test_hash_password_enforces_the_ocpp_length(length: int) -> None:
    with pytest.raises(ConfigError, match="16 to 40"):
        hash_password("p" * length)
    assert verify_password("p" * 16, hash_password("p" * 16))


@pytest.mark.parametrize("encoded", [
    "plaintext-password-here",
    "scrypt$16384$8$1$c2FsdA==",  # no hash
    "scrypt$1000$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # N not a power of 2
    "scrypt$16384$8$1$not base64!$aGFzaGhhc2hoYXNoaGFzaA==",
    "scrypt$1048576$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # 1 GiB per login
    "sha256$c2FsdA==$aGFzaA==",  # salt and hash too short
    "sha256$not base64!$aGFzaGhhc2hoYXNoaGFzaA==",
    "sha256$c2FsdHNhbHRzYWx0c2FsdA==",  # no hash
], ids=["plaintext", "no-hash", "bad-n", "bad-base64", "too-costly", "sha256-short",
        "sha256-bad-base64", "sha256-no-hash"])
def test_malformed_hashes_are_refused(encoded: str) -> None:
    with pytest.raises(ValueError):
        verify_password("p" * 20, encoded)
    with pytest.raises(ConfigError):
        SecurityConfig(profile=1, password_hashes={"CS1": encoded})


def test_hash_password_command() -> None:
    pw = PASSWORDS["CS1"]
    line = hash_password_command(stdin=io.StringIO(pw + "\n"))
    assert line.startswith('password_hash = "sha256$') and pw not in line
    assert verify_password(pw, line.split('"')[1])

    answers = iter([pw, pw])
    assert verify_password(pw, hash_password_command(
        prompt=lambda _: next(answers)).split('"')[1])
    answers = iter([pw, pw + "!"])
    with pytest.raises(ConfigError, match="differ"):
        hash_password_command(prompt=lambda _: next(answers))

    comment, line = hash_password_command(generate=True).splitlines()
    generated = comment.rsplit(" ", 1)[1]
    assert len(generated) == 40 and verify_password(generated, line.split('"')[1])
    assert generate_password() != generate_password()


# --------------------------------------------------------------------------- profile 1
def test_profile_1_accepts_the_right_password(password_hashes: dict[str, str]) -> None:
    async def scenario(server: CSMSServer) -> None:
        assert server.url.startswith("ws://")
        await connect_ok(server, "CS1", additional_headers=basic("CS1", PASSWORDS["CS1"]))
        await connect_ok(server, "CS2", additional_headers=basic("CS2", PASSWORDS["CS2"]))

    events = run(SecurityConfig(profile=1, password_hashes=password_hashes), scenario)
    assert kinds(events) == []


@pytest.mark.parametrize(("identity", "headers", "kind"), [
    ("CS1", {}, "auth_missing"),
    ("CS1", basic("CS1", "wrong-password-but-long"), "auth_failed"),
    ("CS1", basic("CS1", PASSWORDS["CS2"]), "auth_failed"),
    ("CS1", basic("CS2", PASSWORDS["CS2"]), "auth_identity_mismatch"),
    ("CS1", basic("CS1", "short"), "auth_password_length"),
    ("CS1", basic("CS1", "x" * 41), "auth_password_length"),
    ("CS1", {"Authorization": "Bearer abc"}, "auth_malformed"),
    ("CS1", {"Authorization": "Basic !!!"}, "auth_malformed"),
    ("CS1", {"Authorization": "Basic " + base64.b64encode(b"CS1:\xff" * 6).decode()},
     "auth_failed"),
    ("CS3", basic("CS3", "a-password-for-cs3"), "auth_not_provisioned"),
], ids=["no-header", "wrong-password", "other-station-password", "username-not-identity",
        "short-password", "long-password", "not-basic", "bad-base64", "not-utf8",
        "no-hash-configured"])
def test_profile_1_refuses_with_401(password_hashes: dict[str, str], identity: str,
                                    headers: dict[str, str], kind: str) -> None:
    async def scenario(server: CSMSServer) -> None:
        exc = await refused_status(server, identity, additional_headers=headers)
        assert exc.response.status_code == 401
        assert exc.response.headers["WWW-Authenticate"].startswith('Basic realm="evtwin"')
        assert server.frames["in"] == 0  # no OCPP message was processed
        await connect_ok(server, "CS1", additional_headers=basic("CS1", PASSWORDS["CS1"]))

    events = run(SecurityConfig(profile=1, password_hashes=password_hashes), scenario)
    assert kinds(events) == [kind]
    assert events[0]["peer"].startswith("('127.0.0.1'")
    for pw in PASSWORDS.values():
        assert pw not in events[0]["detail"]


def test_profile_1_unknown_station_looks_like_a_wrong_password(
        password_hashes: dict[str, str]) -> None:
    # The same status, challenge and body for both: identities cannot be probed.
    async def scenario(server: CSMSServer) -> None:
        unknown = await refused_status(server, "NOPE", additional_headers=basic("NOPE", "x" * 20))
        wrong = await refused_status(server, "CS1", additional_headers=basic("CS1", "x" * 20))
        for exc in (unknown, wrong):
            assert exc.response.status_code == 401
            assert exc.response.headers["WWW-Authenticate"].startswith('Basic realm="evtwin"')
        assert unknown.response.body == wrong.response.body
        await connect_ok(server, "CS1", additional_headers=basic("CS1", PASSWORDS["CS1"]))

    events = run(SecurityConfig(profile=1, password_hashes=password_hashes), scenario)
    assert kinds(events) == ["unknown_station", "auth_failed"]


def test_profile_0_ignores_credentials() -> None:
    async def scenario(server: CSMSServer) -> None:
        await connect_ok(server, "CS1")
        await connect_ok(server, "CS3", additional_headers=basic("CS1", "whatever"))

    assert kinds(run(SecurityConfig(), scenario)) == []


# --------------------------------------------------------------------------- profile 2
def test_server_offers_the_ocpp_tls12_suites(pki: PKI) -> None:
    ctx = server_ssl_context(pki.server_ec.cert, pki.server_ec.key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    offered = {c["name"] for c in ctx.get_ciphers()}
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == set(TLS12_CIPHERS)
    assert "TLS_AES_256_GCM_SHA384" in offered  # TLS 1.3 defaults kept


def test_a_client_offering_only_tls_rsa_aes128_gcm_connects_with_both_certificates(
        pki: PKI, password_hashes: dict[str, str]) -> None:
    """OCPP 2.0.1 A00.FR.318: the CSMS supports TLS_RSA_WITH_AES_128_GCM_SHA256 (and the
    ECDHE-ECDSA suites), so it serves an RSA and an ECDSA certificate side by side."""
    security = SecurityConfig(profile=2, password_hashes=password_hashes,
                              tls_cert=pki.server_ec.cert, tls_key=pki.server_ec.key,
                              tls_cert_2=pki.server_rsa.cert, tls_key_2=pki.server_rsa.key)
    auth = basic("CS1", PASSWORDS["CS1"])

    def only(suite: str) -> ssl.SSLContext:
        ctx = client_ctx(pki)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(suite)
        return ctx

    async def scenario(server: CSMSServer) -> None:
        for suite, key_type in (("AES128-GCM-SHA256", "rsa"),
                                ("ECDHE-ECDSA-AES128-GCM-SHA256", "ec")):
            async with connect(f"{server.url}/CS1", subprotocols=OCPP201, ssl=only(suite),
                               additional_headers=auth, open_timeout=TIMEOUT_S) as ws:
                tls = ws.transport.get_extra_info("ssl_object")
                assert tls.cipher()[0] == suite
                served = ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True))
                wanted = (pki.server_rsa if key_type == "rsa" else pki.server_ec).cert
                assert served.strip() == wanted.read_text().strip()
                await heartbeat_ok(ws)

    assert kinds(run(security, scenario)) == []


def test_ecdhe_only_ciphers_refuse_static_rsa(pki: PKI, password_hashes: dict[str, str]
                                             ) -> None:
    security = SecurityConfig(profile=2, password_hashes=password_hashes,
                              tls_cert=pki.server_ec.cert, tls_key=pki.server_ec.key,
                              tls_cert_2=pki.server_rsa.cert, tls_key_2=pki.server_rsa.key,
                              tls_ciphers="ecdhe")
    client = client_ctx(pki)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("AES128-GCM-SHA256")

    async def scenario(server: CSMSServer) -> None:
        with pytest.raises(OSError):
            async with connect(f"{server.url}/CS1", subprotocols=OCPP201, ssl=client,
                               additional_headers=basic("CS1", PASSWORDS["CS1"]),
                               open_timeout=TIMEOUT_S):
                pass

    run(security, scenario)


def test_a_second_certificate_of_the_same_key_type_is_refused(pki: PKI) -> None:
    with pytest.raises(ssl.SSLError, match="other key type"):
        server_ssl_context(pki.server_ec.cert, pki.server_ec.key,
                           second=(pki.server_ec.cert, pki.server_ec.key))


@pytest.mark.parametrize("server_cert", ["server_ec", "server_rsa"])
def test_profile_2_accepts_basic_auth_over_tls(pki: PKI, password_hashes: dict[str, str],
                                               server_cert: str) -> None:
    cert: Cert = getattr(pki, server_cert)
    security = SecurityConfig(profile=2, password_hashes=password_hashes,
                              tls_cert=cert.cert, tls_key=cert.key)
    tls12_only = client_ctx(pki)
    tls12_only.maximum_version = ssl.TLSVersion.TLSv1_2

    async def scenario(server: CSMSServer) -> None:
        assert server.url.startswith("wss://")
        auth = basic("CS1", PASSWORDS["CS1"])
        async with connect(f"{server.url}/CS1", subprotocols=OCPP201, ssl=client_ctx(pki),
                           additional_headers=auth, open_timeout=TIMEOUT_S) as ws:
            assert ws.transport.get_extra_info("ssl_object").version() == "TLSv1.3"
            await heartbeat_ok(ws)
        async with connect(f"{server.url}/CS1", subprotocols=OCPP201, ssl=tls12_only,
                           additional_headers=auth, open_timeout=TIMEOUT_S) as ws:
            tls = ws.transport.get_extra_info("ssl_object")
            assert tls.version() == "TLSv1.2"
            expected = "ECDHE-ECDSA" if server_cert == "server_ec" else "ECDHE-RSA"
            assert tls.cipher()[0] in TLS12_CIPHERS and tls.cipher()[0].startswith(expected)
            await heartbeat_ok(ws)
        # TLS does not replace the password.
        exc = await refused_status(server, "CS1", ssl=client_ctx(pki),
                                   additional_headers=basic("CS1", "wrong-password-but-long"))
        assert exc.response.status_code == 401

    assert kinds(run(security, scenario)) == ["auth_failed"]


def test_profile_2_refuses_tls_below_1_2(pki: PKI, password_hashes: dict[str, str]) -> None:
    security = SecurityConfig(profile=2, password_hashes=password_hashes,
                              tls_cert=pki.server_ec.cert, tls_key=pki.server_ec.key)
    auth = basic("CS1", PASSWORDS["CS1"])

    async def scenario(server: CSMSServer) -> None:
        # asyncio drops a failed server handshake without flushing OpenSSL's
        # alert, so the client sees the connection reset, not an SSL alert;
        # the server's event below shows it was the server that refused.
        with pytest.raises(OSError):
            await connect(f"{server.url}/CS1", subprotocols=OCPP201, ssl=tls11_client(pki),
                          additional_headers=auth, open_timeout=TIMEOUT_S)
        # Plain ws:// on the TLS port fails too.
        with pytest.raises(Exception):  # noqa: B017 - how it fails is not the point
            await connect(server.url.replace("wss://", "ws://") + "/CS1",
                          subprotocols=OCPP201, additional_headers=auth,
                          open_timeout=TIMEOUT_S)
        await connect_ok(server, "CS1", ssl=client_ctx(pki), additional_headers=auth)
        assert server.frames["in"] == 1  # the good station's heartbeat only

    events = run(security, scenario)
    assert kinds(events) == ["tls_handshake_failed"] * 2
    assert "UNSUPPORTED_PROTOCOL" in events[0]["detail"]
    assert events[0]["peer"] is None  # asyncio does not tell the TLS layer who it is


# --------------------------------------------------------------------------- profile 3
def _profile3(pki: PKI) -> SecurityConfig:
    return SecurityConfig(profile=3, tls_cert=pki.server_ec.cert, tls_key=pki.server_ec.key,
                          ca_cert=pki.ca)


def test_profile_3_accepts_the_station_certificate(pki: PKI) -> None:
    async def scenario(server: CSMSServer) -> None:
        await connect_ok(server, "CS1", ssl=client_ctx(pki, pki.cs1))  # no Basic auth needed
        await connect_ok(server, "CS2", ssl=client_ctx(pki, pki.cs2))

    assert kinds(run(_profile3(pki), scenario)) == []


def test_profile_3_refuses_a_certificate_for_another_station(pki: PKI) -> None:
    async def scenario(server: CSMSServer) -> None:
        exc = await refused_status(server, "CS1", ssl=client_ctx(pki, pki.cs2),
                                   additional_headers=basic("CS1", PASSWORDS["CS1"]))
        assert exc.response.status_code == 403
        assert server.frames["in"] == 0
        await connect_ok(server, "CS1", ssl=client_ctx(pki, pki.cs1))

    events = run(_profile3(pki), scenario)
    assert kinds(events) == ["cert_identity_mismatch"]
    assert "['CS2']" in events[0]["detail"]


@pytest.mark.parametrize("which", ["no-certificate", "other-ca"])
def test_profile_3_handshake_fails_without_a_trusted_certificate(pki: PKI, which: str) -> None:
    cert = None if which == "no-certificate" else pki.rogue_cs1

    async def scenario(server: CSMSServer) -> None:
        # With TLS 1.3 the client finishes its side of the handshake before the
        # server checks its certificate; the server then drops the connection
        # (asyncio sends no alert), so the client's HTTP upgrade gets EOF.
        with pytest.raises(InvalidMessage) as info:
            await connect(f"{server.url}/CS1", subprotocols=OCPP201,
                          ssl=client_ctx(pki, cert), open_timeout=TIMEOUT_S)
        assert isinstance(info.value.__cause__, EOFError)
        assert server.frames["in"] == 0
        await connect_ok(server, "CS1", ssl=client_ctx(pki, pki.cs1))

    events = run(_profile3(pki), scenario)
    assert kinds(events) == ["tls_handshake_failed"]
    expected = ("PEER_DID_NOT_RETURN_A_CERTIFICATE" if cert is None
                else "CERTIFICATE_VERIFY_FAILED")
    assert expected in events[0]["detail"]


# --------------------------------------------------------------------------- config file
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "csms.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_config_security_section(tmp_path: Path, pki: PKI,
                                 password_hashes: dict[str, str]) -> None:
    assert load_config(None).security_config() == SecurityConfig()
    certs = tmp_path / "certs"
    certs.mkdir()
    for src in (pki.ca, pki.server_ec.cert, pki.server_ec.key):
        (certs / src.name).write_bytes(src.read_bytes())
    path = _write(tmp_path, f"""
[security]
profile = 3
tls_cert = "certs/{pki.server_ec.cert.name}"
tls_key = "certs/{pki.server_ec.key.name}"
ca_cert = "certs/{pki.ca.name}"

[[stations]]
id = "CS1"
password_hash = "{password_hashes['CS1']}"
""")
    sec = load_config(path).security_config()
    assert sec.profile == 3
    assert sec.tls_cert == (certs / pki.server_ec.cert.name).resolve()
    assert sec.ca_cert == (certs / pki.ca.name).resolve()
    assert sec.password_hashes == {"CS1": password_hashes["CS1"]}
    assert sec.ssl_context() is not None


def test_config_security_problems_reported_together(tmp_path: Path, pki: PKI) -> None:
    path = _write(tmp_path, """
[security]
profile = 2
tls_cert = "missing.pem"

[[stations]]
id = "CS1"

[[stations]]
id = "CS2"
password_hash = "hunter2"
""")
    with pytest.raises(FileConfigError) as info:
        load_config(path)
    assert {p for p, _ in info.value.problems} == {
        "stations.1.password_hash", "security.tls_key", "stations.0.password_hash"}

    path = _write(tmp_path, f"""
[security]
profile = 3
tls_cert = "missing.pem"
tls_key = "{pki.server_ec.key}"
ca_cert = "{pki.cs1.cert}"
""")
    with pytest.raises(FileConfigError) as info:
        load_config(path)
    assert info.value.problems == [("security.tls_cert",
                                    f"file not found: {tmp_path / 'missing.pem'}")]

    path = _write(tmp_path, f"""
[security]
profile = 2
tls_cert = "{pki.server_rsa.cert}"
tls_key = "{pki.server_ec.key}"
""")
    with pytest.raises(FileConfigError, match=r"security\.tls_key: cannot load"):
        load_config(path)


def test_security_config_needs_its_files() -> None:
    with pytest.raises(ConfigError, match="tls_cert"):
        SecurityConfig(profile=2)
    with pytest.raises(ConfigError, match="ca_cert"):
        SecurityConfig(profile=3, tls_cert=Path("a"), tls_key=Path("b"))


def test_config_takes_a_second_certificate_and_names_its_problems(tmp_path: Path,
                                                                  pki: PKI) -> None:
    path = _write(tmp_path, f"""
[security]
profile = 2
tls_cert = "{pki.server_ec.cert}"
tls_key = "{pki.server_ec.key}"
tls_cert_2 = "{pki.server_rsa.cert}"
tls_key_2 = "{pki.server_rsa.key}"
tls_ciphers = "ecdhe"
""")
    sec = load_config(path).security_config()
    assert (sec.tls_cert_2, sec.tls_ciphers) == (pki.server_rsa.cert, "ecdhe")
    assert sec.ssl_context() is not None
    path = _write(tmp_path, f"""
[security]
profile = 2
tls_cert = "{pki.server_ec.cert}"
tls_key = "{pki.server_ec.key}"
tls_cert_2 = "{pki.cs1.cert}"
tls_key_2 = "{pki.cs1.key}"
""")
    with pytest.raises(FileConfigError, match=r"security\.tls_key_2: .*other key type"):
        load_config(path)
    path = _write(tmp_path, f"""
[security]
profile = 2
tls_cert = "{pki.server_ec.cert}"
tls_key = "{pki.server_ec.key}"
tls_cert_2 = "{pki.server_rsa.cert}"
""")
    with pytest.raises(FileConfigError, match=r"security\.tls_key_2: .*go together"):
        load_config(path)


def test_config_takes_a_station_ca_and_names_its_problems(tmp_path: Path, pki: PKI) -> None:
    ca_key = pki.ca.with_suffix(".key")
    tls = (f'[security]\nprofile = 3\ntls_cert = "{pki.server_ec.cert}"\n'
           f'tls_key = "{pki.server_ec.key}"\nca_cert = "{pki.ca}"\n')
    path = _write(tmp_path, tls + f'station_ca_cert = "{pki.ca}"\n'
                                  f'station_ca_key = "{ca_key}"\nstation_cert_days = 30\n')
    ca = load_config(path).security.station_ca()
    assert ca is not None and ca.validity_days == 30
    path = _write(tmp_path, tls + f'station_ca_cert = "{pki.ca}"\n')
    with pytest.raises(FileConfigError, match=r"security\.station_ca_key: .*go together"):
        load_config(path)
    path = _write(tmp_path, tls + f'station_ca_cert = "{pki.ca}"\n'
                                  f'station_ca_key = "{pki.cs1.key}"\n')
    with pytest.raises(FileConfigError, match=r"security\.station_ca_key: .*does not belong"):
        load_config(path)
    path = _write(tmp_path, tls + f'station_ca_cert = "{tmp_path / "nope.pem"}"\n'
                                  f'station_ca_key = "{ca_key}"\n')
    with pytest.raises(FileConfigError, match=r"security\.station_ca_cert: file not found"):
        load_config(path)
    # Without TLS and station authentication anyone could ask for a station's certificate.
    path = _write(tmp_path, f'[security]\nstation_ca_cert = "{pki.ca}"\n'
                            f'station_ca_key = "{ca_key}"\n')
    with pytest.raises(FileConfigError, match=r"security\.station_ca_cert: .*profile 2 or 3"):
        load_config(path)
