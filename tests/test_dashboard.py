"""The live operator dashboard: login with token and TOTP, roles, CSRF, the event stream
(a real CSMSServer and Dashboard on 127.0.0.1, aiohttp as the client), its config and
CLI, and a real headless Chromium watching a paced twin run."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from test_csms_api import tx_event
from test_csms_operations import NOW, TIMEOUT_S, connected_station, make_core

from evtwin.csms import CSMSServer
from evtwin.csms.config import FileConfigError, load_config
from evtwin.csms.dashboard import COOKIE, Dashboard, DashboardUser, new_user, totp_step
from evtwin.csms.privacy import PSEUDONYM_PREFIX
from evtwin.sim.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
ADMIN, ADMIN_TOKEN, _ = new_user("ada", "admin")
VIEWER, VIEWER_TOKEN, _ = new_user("vic", "viewer")
T_WALL = 1_780_000_000.0  # a fixed wall clock for the TOTP codes (a step boundary + 10 s)


class Clocks:
    """The dashboard's wall clock (TOTP) and monotonic clock (sessions, throttling)."""

    def __init__(self) -> None:
        self.wall = T_WALL
        self.mono = 1000.0


def code(user: DashboardUser, wall: float, steps: int = 0) -> str:
    return pyotp.TOTP(user.totp_secret).at(wall + 30 * steps)


class Browserless:
    """An aiohttp client with its own cookie jar (IP hosts allowed)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.csrf = ""

    async def login(self, user: str, token: str, totp: str) -> tuple[int, str]:
        async with self.session.post(self.base + "/login", allow_redirects=False,
                                     data={"user": user, "token": token, "code": totp}) as r:
            return r.status, await r.text()

    async def me(self) -> tuple[int, Any]:
        async with self.session.get(self.base + "/api/me") as r:
            data = await r.json()
            if r.status == 200:
                self.csrf = data["csrf"]
            return r.status, data

    async def post(self, path: str, body: Any, *, csrf: str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        hdrs = {"X-CSRF-Token": self.csrf if csrf is None else csrf, **(headers or {})}
        async with self.session.post(self.base + path, json=body, headers=hdrs) as r:
            return r.status, await r.json()


@asynccontextmanager
async def running(**kw: Any) -> AsyncIterator[tuple[CSMSServer, Dashboard, Clocks]]:
    clocks = Clocks()
    async with (CSMSServer(make_core(), host="127.0.0.1", port=0) as server,
                Dashboard(server, users=[ADMIN, VIEWER], wall=lambda: clocks.wall,
                          monotonic=lambda: clocks.mono, push_interval_s=0.05, **kw)
                as dash):
        assert dash.port != 0 and dash.url.startswith("http://127.0.0.1:")
        yield server, dash, clocks


@asynccontextmanager
async def client(dash: Dashboard) -> AsyncIterator[Browserless]:
    async with aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=3 * TIMEOUT_S)) as session:
        yield Browserless(session, dash.url)


def run(scenario: Callable[..., Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with running(**kw) as (server, dash, clocks):
            await asyncio.wait_for(scenario(server, dash, clocks), 6 * TIMEOUT_S)

    asyncio.run(main())


def events(server: CSMSServer, kind: str) -> list[dict[str, Any]]:
    return [e for e in server.core.store.security_events_page(limit=1000) if e["kind"] == kind]


# --------------------------------------------------------------------------- login
def test_totp_step_accepts_one_step_either_side_and_nothing_else() -> None:
    secret = ADMIN.totp_secret
    for steps in (-1, 0, 1):
        assert totp_step(secret, code(ADMIN, T_WALL, steps), T_WALL) == int(T_WALL // 30) + steps
    for steps in (-3, -2, 2, 3):
        assert totp_step(secret, code(ADMIN, T_WALL, steps), T_WALL) is None
    assert totp_step(secret, "12345", T_WALL) is None
    assert totp_step(secret, "abcdef", T_WALL) is None


def test_login_needs_the_users_token_and_a_current_code() -> None:
    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        async with client(dash) as c:
            good = code(ADMIN, clocks.wall)
            # Wrong token (the viewer's), wrong code, unknown user: the same answer.
            for user, token, totp in (("ada", VIEWER_TOKEN, good), ("ada", ADMIN_TOKEN,
                                      code(ADMIN, clocks.wall, 2)), ("eve", ADMIN_TOKEN, good),
                                      ("ada", "", good)):
                status, page = await c.login(user, token, totp)
                assert status == 401 and "Wrong user name, token or code." in page
                assert (await c.me())[0] == 401
            failed = events(server, "dashboard_login_failed")
            assert [e["detail"] for e in failed] == [
                "user 'ada': wrong token", "user 'ada': wrong TOTP code",
                "unknown user (3 characters)", "user 'ada': wrong token"]
            # A token pasted into the User field is never recorded, not even in part.
            assert (await c.login(ADMIN_TOKEN, ADMIN_TOKEN, good))[0] == 401
            assert events(server, "dashboard_login_failed")[-1]["detail"] == (
                f"unknown user ({len(ADMIN_TOKEN)} characters)")
            failed = events(server, "dashboard_login_failed")
            stored = json.dumps(failed)
            assert ADMIN_TOKEN[:8] not in stored
            assert ADMIN_TOKEN not in stored and VIEWER_TOKEN not in stored
            assert good not in stored
            # Right token and code: a session cookie, HttpOnly, SameSite=Strict, expiring.
            async with c.session.post(c.base + "/login", allow_redirects=False, data={
                    "user": "ada", "token": ADMIN_TOKEN, "code": good}) as r:
                assert r.status == 303 and r.headers["Location"] == "/"
                cookie = r.headers["Set-Cookie"]
            assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie and "Max-Age=28800" in cookie
            assert await c.me() == (200, {"user": "ada", "role": "admin", "csrf": c.csrf})
            async with c.session.get(c.base + "/") as r:
                assert r.status == 200 and "operator dashboard" in await r.text()
                assert "default-src 'self'" in r.headers["Content-Security-Policy"]

    run(scenario)


def test_a_code_is_used_once_and_a_session_expires() -> None:
    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        async with client(dash) as first, client(dash) as second:
            totp = code(VIEWER, clocks.wall)
            assert (await first.login("vic", VIEWER_TOKEN, totp))[0] == 303
            # The same code again (someone watching the screen): refused.
            assert (await second.login("vic", VIEWER_TOKEN, totp))[0] == 401
            assert events(server, "dashboard_login_failed")[-1]["detail"] == (
                "user 'vic': TOTP code used before")
            # So is the previous step's code, though inside the window.
            assert (await second.login("vic", VIEWER_TOKEN, code(VIEWER, clocks.wall, -1))
                    )[0] == 401
            clocks.wall += 30  # the next code
            assert (await second.login("vic", VIEWER_TOKEN, code(VIEWER, clocks.wall)))[0] == 303
            assert (await first.me())[0] == 200
            clocks.mono += 8 * 3600 - 1
            assert (await first.me())[0] == 200
            clocks.mono += 2
            assert (await first.me())[0] == 401
            async with first.session.get(first.base + "/", allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/login"

    run(scenario)


def test_failed_logins_are_throttled_per_address_and_user() -> None:
    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        async with client(dash) as c:
            for _ in range(3):
                assert (await c.login("ada", "not-the-token", "000000"))[0] == 401
            # Throttled: even the right credentials wait, and say how long.
            async with c.session.post(c.base + "/login", allow_redirects=False, data={
                    "user": "ada", "token": ADMIN_TOKEN, "code": code(ADMIN, clocks.wall)}) as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) == 300
            assert len(events(server, "dashboard_login_throttled")) == 1
            # Another user from the same address is not locked out by it.
            assert (await c.login("vic", VIEWER_TOKEN, code(VIEWER, clocks.wall)))[0] == 303
            clocks.mono += 301
            assert (await c.login("ada", ADMIN_TOKEN, code(ADMIN, clocks.wall)))[0] == 303

    run(scenario, failures_per_user=3)


def test_behind_a_trusted_proxy_failures_count_per_forwarded_client() -> None:
    """All logins come from the proxy's address; with ``trusted_proxy`` the address it
    appended to X-Forwarded-For is throttled, so one client's failures do not lock the
    admin out, and a forged earlier entry is not believed."""
    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        async with client(dash) as c:
            async def login(forwarded: str, token: str) -> int:
                async with c.session.post(c.base + "/login", allow_redirects=False,
                                          headers={"X-Forwarded-For": forwarded}, data={
                        "user": "ada", "token": token, "code": code(ADMIN, clocks.wall)}) as r:
                    return r.status

            # The attacker rotates the part it controls; the proxy's entry stays its own.
            for forged in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
                assert await login(f"{forged}, 203.0.113.5", "wrong-token") in (401, 429)
            assert await login("203.0.113.5", ADMIN_TOKEN) == 429
            assert {e["peer"] for e in events(server, "dashboard_login_failed")} == {
                "203.0.113.5"}
            # The admin, forwarded from another address, is not locked out.
            assert await login("198.51.100.7", ADMIN_TOKEN) == 303

    run(scenario, failures_per_user=2, trusted_proxy="127.0.0.1")


def test_the_page_is_all_in_the_package_and_logout_ends_the_session() -> None:
    from importlib.resources import files

    static = files("evtwin.csms") / "dashboard_static"
    shipped = sorted(p.name for p in static.iterdir())
    assert shipped == ["dashboard.css", "dashboard.js", "index.html", "login.html"]
    for name in shipped:  # nothing is loaded from elsewhere (no CDN, no fonts)
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", (static / name).read_text()), name
    assert "pyotp" in (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"evtwin\.csms" = \[[^]]*"dashboard_static/\*"',
                     (ROOT / "pyproject.toml").read_text())

    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        async with client(dash) as c:
            for name, kind in (("dashboard.js", "application/javascript"),
                               ("dashboard.css", "text/css")):
                async with c.session.get(f"{c.base}/static/{name}") as r:
                    assert r.status == 200 and r.content_type == kind
            async with c.session.get(f"{c.base}/static/..%2Fdashboard.py") as r:
                assert r.status == 404
            async with c.session.get(c.base + "/api/snapshot") as r:
                assert r.status == 401
            assert (await c.login("vic", VIEWER_TOKEN, code(VIEWER, clocks.wall)))[0] == 303
            await c.me()
            async with c.session.get(c.base + "/api/snapshot") as r:
                assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
                assert r.headers["X-Frame-Options"] == "DENY"
            assert (await c.post("/logout", {}, csrf="wrong"))[0] == 403
            assert (await c.post("/logout", {})) == (200, {"status": "logged_out"})
            assert (await c.me())[0] == 401

    run(scenario)


# --------------------------------------------------------------------------- actions
def test_viewers_get_403_on_admin_actions_and_admins_reach_the_station() -> None:
    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        async with (connected_station(server, "2.0.1") as (_shell, station, wire),
                    client(dash) as admin, client(dash) as viewer):
            assert (await admin.login("ada", ADMIN_TOKEN, code(ADMIN, clocks.wall)))[0] == 303
            assert (await viewer.login("vic", VIEWER_TOKEN, code(VIEWER, clocks.wall)))[0] == 303
            await admin.me()
            await viewer.me()
            unavailable = {"station_id": "CS201", "evse_id": 2, "operative": False}
            stop = {"station_id": "CS201", "transaction_id": "tx-9"}
            for path, body in (("/api/evse/availability", unavailable),
                               ("/api/sessions/stop", stop)):
                status, answer = await viewer.post(path, body)
                assert status == 403 and answer["error"] == "forbidden", answer
            assert len(events(server, "dashboard_forbidden")) == 2
            assert wire.payloads() == []  # nothing reached the station
            # An admin without the CSRF token, or from another origin: 403 as well.
            assert (await admin.post("/api/evse/availability", unavailable, csrf=""))[0] == 403
            assert (await admin.post("/api/evse/availability", unavailable,
                                     headers={"Origin": "http://evil.example"}))[0] == 403
            assert [e["kind"] for e in server.core.store.security_events_page(limit=100)
                    ][-2:] == ["dashboard_csrf", "dashboard_cross_origin"]
            assert wire.payloads() == []
            status, answer = await admin.post("/api/evse/availability", unavailable)
            assert (status, answer) == (200, {"status": "Accepted"})
            assert wire.payloads()[-1] == ("ChangeAvailability", {
                "operationalStatus": "Inoperative", "evse": {"id": 2}})
            status, answer = await admin.post("/api/sessions/stop", stop)
            assert (status, answer) == (200, {"status": "Accepted"})
            assert wire.payloads()[-1] == ("RequestStopTransaction", {"transactionId": "tx-9"})
            # Bad bodies and unknown or absent stations.
            status, answer = await admin.post("/api/evse/availability", {**unavailable,
                                                                         "evse_id": -1})
            assert status == 422 and "evse_id" in answer["message"]
            assert (await admin.post("/api/sessions/stop", {**stop, "station_id": "NOPE"})
                    )[0] == 404
            assert (await admin.post("/api/sessions/stop", {**stop, "station_id": "CS16"})
                    )[0] == 409
            del station

    run(scenario)


# --------------------------------------------------------------------------- the stream
async def read_events(resp: aiohttp.ClientResponse, until: Callable[[dict[str, Any]], bool]
                      ) -> list[dict[str, Any]]:
    """Server-sent events' data until one satisfies ``until``."""
    seen: list[dict[str, Any]] = []
    buffer = b""
    while True:
        chunk = await resp.content.readany()
        assert chunk, "the stream ended"
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            for line in frame.decode().splitlines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if until(seen[-1]):
                        return seen


def test_direct_transport_stations_offer_no_admin_actions() -> None:
    """A station on the twin's direct transport is connected but not reached over OCPP:
    the snapshot says ``actions: false`` (the page then shows no buttons) and an action
    answers 409 no_actions, while a WebSocket station takes them."""
    from importlib.resources import files

    from evtwin.csms.direct import DirectShell

    script = (files("evtwin.csms") / "dashboard_static" / "dashboard.js").read_text()
    assert "admin && s.actions ?" in script  # the page's buttons follow the flag
    assert "admin && actionable.has(s.station_id) ?" in script

    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        server.direct["CS16"] = DirectShell("CS16", server.core, "1.6")
        async with (connected_station(server, "2.0.1") as (_shell, _station, wire),
                    client(dash) as admin):
            assert (await admin.login("ada", ADMIN_TOKEN, code(ADMIN, clocks.wall)))[0] == 303
            await admin.me()
            async with admin.session.get(admin.base + "/api/snapshot") as r:
                snap = await r.json()
            by_id = {s["id"]: s for s in snap["stations"]}
            assert by_id["CS16"]["connected"] and not by_id["CS16"]["actions"]
            assert by_id["CS201"]["connected"] and by_id["CS201"]["actions"]
            for path, body in (
                    ("/api/evse/availability",
                     {"station_id": "CS16", "evse_id": 1, "operative": False}),
                    ("/api/sessions/stop", {"station_id": "CS16", "transaction_id": "7"})):
                status, answer = await admin.post(path, body)
                assert (status, answer["error"]) == (409, "no_actions"), answer
            status, _ = await admin.post("/api/evse/availability",
                                         {"station_id": "CS201", "evse_id": 1,
                                          "operative": False})
            assert status == 200 and wire.payloads()[-1][0] == "ChangeAvailability"

    run(scenario)


def test_the_event_stream_pushes_changes_with_units_and_pseudonyms() -> None:
    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        async with client(dash) as c:
            async with c.session.get(c.base + "/api/events") as r:
                assert r.status == 401  # no session, no stream
            assert (await c.login("vic", VIEWER_TOKEN, code(VIEWER, clocks.wall)))[0] == 303
            async with (connected_station(server, "2.0.1") as (_shell, station, _wire),
                        c.session.get(c.base + "/api/events") as r):
                assert r.status == 200
                assert r.headers["Content-Type"] == "text/event-stream"

                def evse(snap: dict[str, Any], n: int) -> dict[str, Any]:
                    cs = next(s for s in snap["stations"] if s["id"] == "CS201")
                    return dict(cs["evses"][n - 1])

                first = await read_events(r, lambda s: True)
                assert evse(first[0], 1)["status"] is None and first[0]["grid"] is None
                assert first[0]["partners"] == [] and first[0]["sessions"] == []
                await station.call_raw("StatusNotification", {
                    "timestamp": NOW, "connectorStatus": "Available", "evseId": 1,
                    "connectorId": 1})
                await read_events(r, lambda s: evse(s, 1)["status"] == "Available")
                await station.call_raw("StatusNotification", {
                    "timestamp": NOW, "connectorStatus": "Occupied", "evseId": 1,
                    "connectorId": 1})
                await station.call_raw("TransactionEvent", tx_event("Started", 0, "tx-1", 1000,
                                                                   power_w=7400))
                await station.call_raw("TransactionEvent", tx_event(
                    "Updated", 1, "tx-1", 3500, at_s=1200, power_w=7400))
                snaps = await read_events(r, lambda s: bool(s["sessions"])
                                          and s["sessions"][0]["energy_kwh"] == 2.5)
                session, = snaps[-1]["sessions"]
                assert session["power_kw"] == 7.4 and session["transaction_id"] == "tx-1"
                assert session["id_token"].startswith(PSEUDONYM_PREFIX)
                assert "TOKEN1" not in json.dumps(snaps)  # the raw id token never goes out
                assert evse(snaps[-1], 1) | {"power_kw": 7.4} == evse(snaps[-1], 1)
                site, = snaps[-1]["sites"]
                assert site == {"name": "site", "power_kw": 7.4, "limit_kw": None,
                                "evses": 6, "occupied": 1, "faulted": 0,
                                "occupancy_percent": 16.7}
                # A fault report makes a work order, shown on the station.
                await station.call_raw("NotifyEvent", {
                    "generatedAt": NOW, "seqNo": 0, "eventData": [{
                        "eventId": 1, "timestamp": NOW, "trigger": "Delta",
                        "actualValue": "true", "techCode": "ConnectorLockFailure",
                        "techInfo": "fault", "eventNotificationType": "HardWiredNotification",
                        "component": {"name": "ConnectorPlugRetentionLock",
                                      "evse": {"id": 2}},
                        "variable": {"name": "Problem"}}]})
                snaps = await read_events(r, lambda s: bool(s["work_orders"]))
                order, = snaps[-1]["work_orders"]
                assert (order["station_id"], order["evse_id"], order["component"],
                        order["reason"]) == ("CS201", 2, "ConnectorPlugRetentionLock", "fault")
                cs = next(s for s in snaps[-1]["stations"] if s["id"] == "CS201")
                assert cs["faults"][0]["component"] == "ConnectorPlugRetentionLock"
                # Nothing changes: nothing is pushed (the stream stays quiet).
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(r.content.readany(), 0.4)

    run(scenario)


def test_recent_cdrs_come_from_a_limited_query_not_the_whole_table() -> None:
    """The dashboard reads the newest CDRs with LIMIT, only when a transaction ended since
    (never COUNT(*) or every CDR on each push)."""
    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        store = server.core.store

        def whole_table(*_: Any) -> Any:
            raise AssertionError("a full-table read")

        async with connected_station(server, "2.0.1") as (_shell, station, _wire):
            for i in range(12):
                await station.call_raw("TransactionEvent", tx_event(
                    "Started", 0, f"tx-{i}", 1000, at_s=600 * i + 1))
                await station.call_raw("TransactionEvent", tx_event(
                    "Ended", 1, f"tx-{i}", 2000 + i, at_s=600 * i + 300))
            store.count = whole_table  # type: ignore[method-assign]
            store.cdrs = whole_table  # type: ignore[method-assign]
            reads: list[int] = []
            recent = store.recent_cdrs

            def counted(limit: int) -> list[dict[str, Any]]:
                reads.append(limit)
                return recent(limit)

            store.recent_cdrs = counted  # type: ignore[method-assign]
            cdrs = dash.snapshot()["cdrs"]
            assert [c["transaction_id"] for c in cdrs] == [f"tx-{i}" for i in range(11, 1, -1)]
            assert all(c["id_token"].startswith(PSEUDONYM_PREFIX) for c in cdrs)
            dash.snapshot()
            assert reads == [10]  # nothing ended since: not read again
            await station.call_raw("TransactionEvent", tx_event(
                "Started", 0, "tx-new", 1000, at_s=9000))
            await station.call_raw("TransactionEvent", tx_event(
                "Ended", 1, "tx-new", 4000, at_s=9300))
            assert dash.snapshot()["cdrs"][0]["transaction_id"] == "tx-new"
            assert reads == [10, 10]

    run(scenario)


def test_the_stream_ends_when_the_session_expires() -> None:
    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        async with client(dash) as c:
            assert (await c.login("vic", VIEWER_TOKEN, code(VIEWER, clocks.wall)))[0] == 303
            async with c.session.get(c.base + "/api/events") as r:
                await read_events(r, lambda s: True)
                clocks.mono += 9 * 3600
                text = (await asyncio.wait_for(r.content.read(), TIMEOUT_S)).decode()
                assert "event: expired" in text

    run(scenario)


def test_feeder_view_and_partners_come_from_their_providers() -> None:
    grid = {"source": "test", "at": None, "buses": [{"name": "b1", "vm_pu": 0.97}],
            "lines": [], "trafos": [], "line_count": 0, "vm_min_pu": 0.97,
            "vm_max_pu": 0.97, "limits": {}}

    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        snap = dash.snapshot()
        assert snap["grid"] == grid
        assert snap["partners"] == [{"name": "emsp-1", "role": "EMSP"}]

    run(scenario, grid=lambda: grid, partners=lambda: [{"name": "emsp-1", "role": "EMSP"}])


# --------------------------------------------------------------------------- config, CLI
def test_csms_serve_runs_the_dashboard_on_its_own_port(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from evtwin.csms.config import ServeConfig
    from evtwin.csms.service import serve

    config = ServeConfig.model_validate({"stations": [{"id": "CS1"}], "dashboard": {
        "port": 0, "users": [{"name": "vic", "token_hash": VIEWER.token_hash,
                              "totp_secret": VIEWER.totp_secret}]}})

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(config, tmp_path / "csms.sqlite", port=0, stop=stop))
        listening: list[Any] = []
        for _ in range(int(TIMEOUT_S / 0.01)):
            listening = [r for r in caplog.records if getattr(r, "event", "") == "listening"]
            if listening:
                break
            await asyncio.sleep(0.01)
        url = listening[0].dashboard_url
        assert url.startswith("http://127.0.0.1:") and url != listening[0].url
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            c = Browserless(s, url)
            assert (await c.login("vic", VIEWER_TOKEN, pyotp.TOTP(VIEWER.totp_secret).now())
                    )[0] == 303
            async with s.get(url + "api/snapshot") as r:
                snap = await r.json()
            assert [st["id"] for st in snap["stations"]] == ["CS1"]
            assert snap["grid"] is None  # no [feeder]: the page says "no feeder"
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)

    with caplog.at_level(logging.INFO, logger="evtwin.csms.service"):
        asyncio.run(main())


@pytest.mark.slow
def test_run_dashboard_options_are_checked_before_any_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = str(ROOT / "scenarios" / "demo.toml")
    out = tmp_path / "results"
    cases = [
        (["--dashboard-users", "users.toml"], "--dashboard-users: only with --dashboard"),
        (["--dashboard", "70000"], "--dashboard: 70000 is not a port"),
        (["--dashboard", "0", "--set", "run.csms_process=true"],
         "--dashboard: the dashboard runs on the twin's in-process CSMS"),
        (["--dashboard", "0", "--dashboard-users", str(tmp_path / "none.toml")],
         "none.toml: file not found"),
    ]
    (tmp_path / "bad.toml").write_text('[[dashboard.users]]\nname = "x"\n')
    cases.append((["--dashboard", "0", "--dashboard-users", str(tmp_path / "bad.toml")],
                  "bad.toml: dashboard.users.0.token_hash: required field is missing"))
    for extra, message in cases:
        assert cli_main(["run", demo, "--out", str(out), "--quiet", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir())  # no result folder left


def test_dashboard_config_errors_name_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "csms.toml"
    cfg.write_text(f"""
[dashboard]
port = 0
[[dashboard.users]]
name = "ada"
token_hash = "{ADMIN.token_hash}"
totp_secret = "not base32!"
role = "root"
""")
    with pytest.raises(FileConfigError) as err:
        load_config(cfg)
    fields = {p for p, _ in err.value.problems}
    assert fields == {"dashboard.users.0.totp_secret", "dashboard.users.0.role"}
    cfg.write_text(f"""
[[dashboard.users]]
name = "ada"
token_hash = "{ADMIN.token_hash}"
totp_secret = "{ADMIN.totp_secret}"
role = "admin"
""")
    config = load_config(cfg)
    assert config.dashboard is not None and config.dashboard.port == 8080
    assert config.dashboard.users[0].role == "admin"
    assert config.dashboard.public_url is None and config.dashboard.trusted_proxy is None
    # Only sha256$ token hashes (a scrypt check may be refused when busy), and a
    # public_url that is an origin.
    from test_csms_security import legacy_scrypt_hash

    scrypt = legacy_scrypt_hash("x" * 40)
    cfg.write_text(f"""
[dashboard]
public_url = "dash.example.org"
trusted_proxy = "proxy.local"
[[dashboard.users]]
name = "ada"
token_hash = "{scrypt}"
totp_secret = "{ADMIN.totp_secret}"
""")
    with pytest.raises(FileConfigError) as err:
        load_config(cfg)
    assert {p for p, _ in err.value.problems} == {
        "dashboard.public_url", "dashboard.trusted_proxy", "dashboard.users.0.token_hash"}
    assert "sha256$" in str(err.value)


def test_behind_a_tls_proxy_logins_come_from_the_public_url() -> None:
    """A TLS proxy forwards as http with its upstream Host; the browser's Origin is the
    public address. With ``public_url`` set, that origin (and only it) is accepted and
    the cookie is Secure."""
    proxy = {"Host": "127.0.0.1:8080"}

    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        async with client(dash) as c:
            for origin, status in (("https://evil.example", 403),
                                   ("http://dash.example.org", 403),
                                   ("https://dash.example.org", 303)):
                async with c.session.post(c.base + "/login", allow_redirects=False,
                                          headers={**proxy, "Origin": origin}, data={
                        "user": "ada", "token": ADMIN_TOKEN,
                        "code": code(ADMIN, clocks.wall)}) as r:
                    assert r.status == status, origin
                    if status == 303:
                        cookie = r.headers["Set-Cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie
            sid = cookie.split(";")[0].split("=", 1)[1]
            c.session.cookie_jar.update_cookies({COOKIE: sid})
            await c.me()
            assert c.csrf
            body = {"station_id": "CS201", "evse_id": 1, "operative": False}
            # Admin actions: the Referer of the public page passes the origin check
            # (then 409: no station connected), the upstream's own origin does not.
            status, _ = await c.post("/api/evse/availability", body, headers={
                **proxy, "Referer": "https://dash.example.org/"})
            assert status == 409
            status, _ = await c.post("/api/evse/availability", body, headers={
                **proxy, "Origin": "http://127.0.0.1:8080"})
            assert status == 403

    run(scenario, public_url="https://dash.example.org/")

    # Without public_url, the same proxied login is refused (the finding's symptom).
    async def unset(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        login = {"user": "ada", "token": ADMIN_TOKEN, "code": code(ADMIN, clocks.wall)}
        async with (client(dash) as c,
                    c.session.post(c.base + "/login", allow_redirects=False, data=login,
                                   headers={**proxy, "Origin": "https://dash.example.org"})
                    as r):
            assert r.status == 403

    run(unset)


def test_dashboard_user_command_prints_working_credentials(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["csms", "dashboard-user", "ada", "--role", "admin"]) == 0
    printed = capsys.readouterr()
    out, err = printed.out, printed.err
    # The secrets on stderr, only the entry on stdout (`>> csms.toml` stays clean).
    token = re.search(r"token \(keep it secret\): (\S+)", err)
    secret = re.search(r'totp_secret = "([A-Z2-7]+)"', out)
    token_hash = re.search(r'token_hash = "(\S+)"', out)
    assert token and secret and token_hash, out
    assert token[1] not in out and "otpauth://" not in out
    assert 'name = "ada"' in out and 'role = "admin"' in out
    assert f"otpauth://totp/evtwin%20dashboard:ada?secret={secret[1]}" in err
    user = DashboardUser("ada", token_hash[1], secret[1], "admin")

    async def scenario(server: CSMSServer, dash: Dashboard, clocks: Clocks) -> None:
        async with client(dash) as c:
            assert (await c.login("ada", token[1], pyotp.TOTP(secret[1]).now()))[0] == 303

    async def main() -> None:
        async with (CSMSServer(make_core(), host="127.0.0.1", port=0) as server,
                    Dashboard(server, users=[user]) as dash):
            await scenario(server, dash, Clocks())

    asyncio.run(main())
    assert cli_main(["csms", "dashboard-user", "bad name!"]) == 2


# --------------------------------------------------------------------------- the browser
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCALE = float(os.environ.get("EVTWIN_TEST_TIMEOUT_SCALE", "1"))
BROWSER_SCENARIO = """
# The dashboard's browser test: one public car park of two stations whose connectors
# fail within hours (seed 1: the first EV arrives about 3 h in, a connector fails at
# about 3.3 h). Paced by the test, so a browser sees it happen.
name = "dashboard"
seed = 1
start = 2026-06-01T06:00:00
duration_h = 4.5
step_s = 300

[grid]
network = "kerber_dorfnetz"
engine = "pgm"

[csms]
protocol = "2.0.1"
meter_interval_s = 300
heartbeat_interval_s = 900

[run]
transport = "websocket"

[ev]
count = 8

[[sites]]
name = "lot"
kind = "public"
stations = 2
evses_per_station = 2
evse_max_kw = 22
limit_kw = 60

[faults]
components = ["connector"]
connector = { scale_days = 0.25, shape = 1.0, precursor_share = 1.0, precursor_days = 0.05 }

[maintenance]
policy = "none"
"""


def _browser() -> Any:
    required = os.environ.get("EVTWIN_REQUIRE_BROWSER") == "1"
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        if required:
            pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing (EVTWIN_REQUIRE_BROWSER=1): "
                        "apt-get install chromium chromium-driver")
        pytest.skip("no Chromium (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if required:
            raise
        pytest.skip("selenium is not installed (pip install -e '.[test]')")

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1400,1250"):
        options.add_argument(arg)
    # The distribution's driver: nothing is downloaded.
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _evse_states(driver: Any) -> dict[str, str]:
    # In one script: the page replaces its elements on every update.
    return dict(driver.execute_script(
        "return Array.from(document.querySelectorAll('.evse'))"
        ".map(e => [e.id, e.dataset.status]);"))


def _text(driver: Any, selector: str) -> str:
    return str(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
        selector))


@pytest.mark.slow
def test_a_browser_logs_in_and_watches_a_station_charge_and_fail(tmp_path: Path) -> None:
    """Chromium logs in with token and TOTP to a paced twin run's dashboard, sees an EVSE
    go from Available to Charging and a connector fault appear, and takes the README's
    screenshot."""
    driver = _browser()
    scenario = tmp_path / "dashboard.toml"
    scenario.write_text(BROWSER_SCENARIO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "evtwin.sim.cli", "run", str(scenario), "--out",
         str(tmp_path / "results"), "--quiet", "--dashboard", "0",
         "--pace", f"{1200 / SCALE:g}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        said: dict[str, str] = {}
        deadline = time.monotonic() + 60 * SCALE
        while "dashboard" not in said:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, f"no dashboard address: {said}"
            key, sep, value = line.strip().partition(": ")
            if sep and key.startswith("dashboard"):
                said[key.removeprefix("dashboard").strip() or "dashboard"] = value
        url, token, secret = said["dashboard"], said["token"], said["TOTP secret"]
        assert url.startswith("http://127.0.0.1:")

        driver.get(url)  # not logged in: the login page
        assert driver.current_url == url + "login"
        driver.find_element("id", "user").send_keys("admin")
        driver.find_element("id", "token").send_keys(token)
        driver.find_element("id", "code").send_keys(pyotp.TOTP(secret).now())
        driver.find_element("id", "login").click()

        seen: dict[str, list[str]] = {}
        charged = faulted = None
        deadline = time.monotonic() + 50 * SCALE
        while (charged is None or faulted is None) and time.monotonic() < deadline:
            for evse, state in _evse_states(driver).items():
                history = seen.setdefault(evse, [])
                if not history or history[-1] != state:
                    history.append(state)
                if charged is None and "Available" in history and "Charging" in history[
                        history.index("Available"):]:
                    charged = evse
            orders = _text(driver, "#faults tbody")
            if faulted is None and orders and "Faulted" in _evse_states(driver).values():
                faulted = orders
            time.sleep(0.1)
        assert _text(driver, "#who") == "admin (admin)"
        assert charged is not None, f"no EVSE went Available -> Charging: {seen}"
        assert faulted is not None and "ConnectorPlugRetentionLock" in faulted, seen
        # The session shows pseudonymised, with its units; the feeder is drawn.
        sessions = _text(driver, "#sessions")
        assert "pid-" in sessions and " kW" in sessions and " kWh" in sessions
        assert "p.u." in _text(driver, "#grid") and _text(driver, "#bus-chart") == ""
        assert driver.execute_script("return !!document.getElementById('bus-chart');")
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
        # The README's screenshot: written when missing or asked for (not on every run,
        # which would leave the work tree changed).
        figure = ROOT / "docs" / "figures" / "dashboard.png"
        if not figure.exists() or os.environ.get("EVTWIN_UPDATE_FIGURES") == "1":
            shutil.copyfile(shot, figure)
        assert proc.wait(timeout=60 * SCALE) == 0
    finally:
        driver.quit()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_paced_twin_run_serves_the_dashboard_with_its_power_flow() -> None:
    """``Twin.pace`` holds the run to simulated seconds per wall second; the dashboard
    companion starts on the twin's CSMS, shows its power flow and the run, and stops."""
    from evtwin.sim.runner import Twin
    from evtwin.sim.scenario import load_scenario
    from evtwin.sim.twin_dashboard import TwinDashboard

    sc = load_scenario(ROOT / "scenarios" / "demo.toml", {
        "duration_h": 1, "run.transport": "direct", "step_s": 300})
    twin = Twin(sc)
    twin.pace = 3600 / 0.8  # the hour in 0.8 s
    said: list[str] = []
    companion = TwinDashboard(twin, users=[VIEWER], say=said.append)
    twin.companions.append(companion)
    seen: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        if done == total // 2 and companion.dashboard is not None:
            seen["mid"] = companion.dashboard.snapshot()

    twin.progress = progress
    t0 = time.monotonic()
    twin.run()
    assert time.monotonic() - t0 >= 0.8 * 11 / 12  # the last step starts at 55 min
    assert said and said[0].startswith("dashboard: http://127.0.0.1:")
    snap = seen["mid"]
    assert snap["run"]["scenario"] == "demo" and 0 < snap["run"]["progress_percent"] < 100
    grid = snap["grid"]
    assert grid["source"] == "twin power flow" and len(grid["buses"]) > 100
    assert 0.9 < grid["vm_min_pu"] <= grid["vm_max_pu"] < 1.1
    assert grid["trafos"][0]["loading_percent"] > 0
    assert len(snap["stations"]) == 10 and {s["name"] for s in snap["sites"]} == {
        "street", "office"}
    assert companion.dashboard is not None and companion.dashboard._runner is None  # stopped


@pytest.mark.slow
def test_csms_serve_shows_its_feeder_estimate() -> None:
    """With a [feeder] monitor the grid view is the CSMS's estimate of every bus voltage
    and line and transformer loading; without one it is None ("no feeder")."""
    from evtwin.csms.dashboard import feeder_grid
    from evtwin.csms.feeder import FeederMonitor, build_feeder_model
    from evtwin.grid import GridLimits

    server = CSMSServer(make_core(), host="127.0.0.1", port=0)
    view = feeder_grid(server)
    assert view() is None
    model = build_feeder_model("kerber_dorfnetz", [("CS201", 20)], GridLimits())
    server.feeder_monitor = FeederMonitor(model)
    assert view()["buses"] == []  # nothing measured yet
    server.core.inputs.observe_feeder(server.feeder_monitor.update([]))
    grid = view()
    assert grid is not None and grid["source"] == "csms estimate"
    assert len(grid["buses"]) == len(model.feeder.net.bus) and grid["trafos"]
    assert 0.9 < grid["vm_min_pu"] <= grid["vm_max_pu"] <= 1.1
    assert grid["limits"]["v_min_pu"] == 0.9 and grid["line_count"] > 10
    assert all(isinstance(b["name"], str) for b in grid["buses"])
