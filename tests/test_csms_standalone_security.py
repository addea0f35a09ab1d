"""Security profiles on the standalone CSMS process: refused before any OCPP message."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from evtwin.csms.security import hash_password
from tests.pki import PKI, client_ctx, tls11_client
from tests.test_csms_security import PASSWORDS
from tests.test_csms_standalone import TIMEOUT_S, csms_process

pytestmark = pytest.mark.slow

BOOT = json.dumps([2, "b1", "BootNotification", {
    "reason": "PowerUp", "chargingStation": {"model": "m", "vendorName": "v"}}])


def basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def write_config(folder: Path, pki: PKI, profile: int) -> Path:
    lines = [f"[security]\nprofile = {profile}\n",
             f'tls_cert = "{pki.server_ec.cert}"\ntls_key = "{pki.server_ec.key}"\n']
    if profile == 3:
        lines.append(f'ca_cert = "{pki.ca}"\n')
    for sid, pw in PASSWORDS.items():
        lines.append(f'[[stations]]\nid = "{sid}"\n')
        if profile in (1, 2):
            lines.append(f'password_hash = "{hash_password(pw)}"\n')
    cfg = folder / "csms.toml"
    cfg.write_text("".join(lines))
    return cfg


async def boots(url: str, **kw: object) -> bool:
    async with connect(url, subprotocols=["ocpp2.0.1"], open_timeout=TIMEOUT_S,  # type: ignore[list-item]
                       **kw) as ws:  # type: ignore[arg-type]
        await ws.send(BOOT)
        reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        return bool(reply[0] == 3 and reply[2]["status"] == "Accepted")


async def refused_status(url: str, **kw: object) -> int:
    with pytest.raises(InvalidStatus) as info:
        await boots(url, **kw)
    return info.value.response.status_code


async def handshake_fails(url: str, **kw: object) -> None:
    with pytest.raises((OSError, EOFError, asyncio.TimeoutError, Exception)) as info:
        await boots(url, **kw)
    assert not isinstance(info.value, InvalidStatus | AssertionError)


def events(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    kinds = [r[0] for r in con.execute("SELECT kind FROM security_events ORDER BY rowid")]
    con.close()
    return kinds


def test_profile_2_process_refuses_each_bad_connection(tmp_path: Path, pki: PKI) -> None:
    cfg = write_config(tmp_path, pki, 2)
    with csms_process(tmp_path, config_file=cfg) as server:
        base = f"wss://127.0.0.1:{server.port}/ocpp"
        tls = client_ctx(pki)

        async def scenario() -> None:
            assert await boots(f"{base}/CS1", ssl=tls, additional_headers=basic(
                "CS1", PASSWORDS["CS1"]))
            assert await refused_status(f"{base}/CS1", ssl=tls, additional_headers=basic(
                "CS1", "wrong-password-123456")) == 401
            assert await refused_status(f"{base}/CS1", ssl=tls, additional_headers=basic(
                "CS2", PASSWORDS["CS2"])) == 401
            assert await refused_status(f"{base}/CS1", ssl=tls) == 401
            # An unknown station gets the wrong password's 401: no enumeration.
            assert await refused_status(f"{base}/CS9", ssl=tls, additional_headers=basic(
                "CS9", PASSWORDS["CS1"])) == 401
            assert await refused_status(f"{base}/CS:1", ssl=tls) == 400
            await handshake_fails(f"{base}/CS1", ssl=tls11_client(pki),
                                  additional_headers=basic("CS1", PASSWORDS["CS1"]))
            await handshake_fails(f"ws://127.0.0.1:{server.port}/ocpp/CS1",
                                  additional_headers=basic("CS1", PASSWORDS["CS1"]))
            # Still serving the good station after all that.
            assert await boots(f"{base}/CS2", ssl=tls, additional_headers=basic(
                "CS2", PASSWORDS["CS2"]))

        asyncio.run(scenario())
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=TIMEOUT_S) == 0
    kinds = events(tmp_path / "csms.sqlite")
    for kind in ("auth_failed", "auth_identity_mismatch", "auth_missing", "unknown_station",
                 "bad_identity", "tls_handshake_failed"):
        assert kind in kinds, (kind, kinds)


def test_profile_3_process_needs_the_station_certificate(tmp_path: Path, pki: PKI) -> None:
    cfg = write_config(tmp_path, pki, 3)
    with csms_process(tmp_path, config_file=cfg) as server:
        base = f"wss://127.0.0.1:{server.port}/ocpp"

        async def scenario() -> None:
            assert await boots(f"{base}/CS1", ssl=client_ctx(pki, pki.cs1))
            assert await refused_status(f"{base}/CS1", ssl=client_ctx(pki, pki.cs2)) == 403
            await handshake_fails(f"{base}/CS1", ssl=client_ctx(pki, pki.rogue_cs1))
            await handshake_fails(f"{base}/CS1", ssl=client_ctx(pki))
            assert await boots(f"{base}/CS2", ssl=client_ctx(pki, pki.cs2))

        asyncio.run(scenario())
    kinds = events(tmp_path / "csms.sqlite")
    assert "cert_identity_mismatch" in kinds
    assert kinds.count("tls_handshake_failed") >= 2
