"""The driver's app view: the page the driver API serves at /driver/app/ (its headers and
files over real HTTP), and a real headless Chromium using it against a CSMS with a
virtual station on 127.0.0.1: paste the token, find the station, reserve, start,
follow the charge, stop, see the bill."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from test_dashboard import _browser
from test_driver_api import APP1, app

from evtwin.csms.driverapi import DRIVER_APP_PREFIX
from tests.test_reservations import Rig

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "csms" / "driverapp_static"
SCALE = float(os.environ.get("EVTWIN_TEST_TIMEOUT_SCALE", "1"))
T = TypeVar("T")


def test_the_app_view_is_served_with_a_strict_policy(tmp_path: Path) -> None:
    """The page, script and style need no token, come with a CSP that allows only this
    origin, and load nothing from elsewhere; the API behind them still needs the token."""
    async def main() -> None:
        async with app("2.0.1", tmp_path) as a:
            base = a.api.app_url
            assert base.endswith(DRIVER_APP_PREFIX)
            async with a.http.get(base) as r:
                assert r.status == 200 and r.content_type == "text/html"
                page = await r.text()
                csp = r.headers["Content-Security-Policy"]
                assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
                assert r.headers["X-Frame-Options"] == "DENY"
                assert r.headers["Permissions-Policy"] == "geolocation=(self)"
            assert 'src="app.js"' in page and 'href="app.css"' in page
            assert 'name="viewport"' in page
            for name, kind in (("app.js", "application/javascript"), ("app.css", "text/css")):
                async with a.http.get(base + name) as r:
                    assert r.status == 200 and r.content_type == kind, name
                    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            async with a.http.get(base.rstrip("/"), allow_redirects=False) as r:
                assert r.status == 308 and r.headers["Location"] == DRIVER_APP_PREFIX
            for missing in ("secrets.txt", "app.py", "index.htm"):
                async with a.http.get(base + missing) as r:
                    assert r.status == 404, missing
            async with a.http.get(a.api.url + "/reservations") as r:
                assert r.status == 401  # the page is public, the data is not

    asyncio.run(main())
    shipped = files("evtwin.csms") / "driverapp_static"
    assert sorted(f.name for f in shipped.iterdir()) == ["app.css", "app.js", "index.html"]
    assert re.search(r'"evtwin\.csms" = \[[^]]*"driverapp_static/\*"',
                     (ROOT / "pyproject.toml").read_text())
    for path in STATIC.iterdir():
        text = path.read_text()
        # Nothing from the internet, and the token never goes into a URL.
        assert not re.search(r"https?://", text), path.name
    script = (STATIC / "app.js").read_text()
    assert "sessionStorage" in script and "localStorage" not in script
    assert '"Authorization": "Bearer "' in script


def test_csms_serve_logs_the_app_url_and_serves_the_page(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``csms serve`` with ``[driver_api]``: the listening line names the app view's URL,
    on the driver API's port, and the page is there."""
    from evtwin.csms.config import ServeConfig
    from evtwin.csms.security import hash_password
    from evtwin.csms.service import serve

    config = ServeConfig.model_validate({
        "stations": [{"id": "CS1", "site": "site"}],
        "sites": [{"name": "site", "latitude": 52.52, "longitude": 13.405}],
        "driver_api": {"port": 0, "drivers": [{"id_token": "TOK1",
                                               "token_hash": hash_password(APP1)}]}})

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(config, tmp_path / "csms.sqlite", port=0, stop=stop))
        listening: list[Any] = []
        for _ in range(1000):
            listening = [r for r in caplog.records if getattr(r, "event", "") == "listening"]
            if listening or task.done():
                break
            await asyncio.sleep(0.01)
        api_url, app_url = listening[0].driver_api_url, listening[0].driver_app_url
        assert app_url == api_url.removesuffix("/driver/v1") + DRIVER_APP_PREFIX
        async with aiohttp.ClientSession() as http, http.get(app_url) as r:
            assert r.status == 200 and "app.js" in await r.text()
        stop.set()
        await asyncio.wait_for(task, 10)

    with caplog.at_level(logging.INFO, logger="evtwin.csms.service"):
        asyncio.run(main())


# --------------------------------------------------------------------------- the browser
class Background:
    """An asyncio loop in a thread holding the CSMS, the station and the driver API open,
    while the test (the main thread) drives the browser."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.tmp_path = tmp_path
        self.rig: Rig | None = None
        self.app_url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to the test by start()/call()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with app("2.0.1", self.tmp_path) as a:
            self.rig, self.app_url = a.rig, a.api.app_url
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(30 * SCALE), "the CSMS did not start"
        if self._error is not None:
            raise self._error

    def call(self, fn: Callable[[Rig], Coroutine[Any, Any, T]]) -> T:
        """Run ``fn(rig)`` on the loop and wait for its result."""
        assert self.rig is not None
        future = asyncio.run_coroutine_threadsafe(fn(self.rig), self.loop)
        return future.result(timeout=30 * SCALE)

    def close(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30 * SCALE)
        self.loop.close()


@contextmanager
def background(tmp_path: Path) -> Iterator[Background]:
    bg = Background(tmp_path)
    bg.start()
    try:
        yield bg
    finally:
        bg.close()


def _wait(what: str, check: Callable[[], T], timeout_s: float = 15.0) -> T:
    deadline = time.monotonic() + timeout_s * SCALE
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _text(driver: Any, selector: str) -> str:
    return str(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
        selector))


def _evses(driver: Any) -> dict[str, str]:
    # In one script: the page redraws its elements on every poll.
    return dict(driver.execute_script(
        "return Array.from(document.querySelectorAll('.evse'))"
        ".map(e => [e.dataset.station + '/' + e.dataset.evse, e.dataset.status]);"))


def _click(driver: Any, selector: str) -> None:
    # By script, in one go: a found element may be replaced before a separate click.
    clicked = driver.execute_script(
        "const e = document.querySelector(arguments[0]); if (!e) return false;"
        "e.click(); return true;", selector)
    assert clicked, f"nothing to click at {selector}"


@pytest.mark.slow
def test_a_driver_reserves_charges_and_pays_in_a_browser(tmp_path: Path) -> None:
    """Headless Chromium on the app view: a wrong token is refused in one line; with the
    right one the driver finds CS1 near Alexanderplatz (Available, 0.30 EUR/kWh),
    reserves EVSE 2 (the station gets ReserveNow), starts, follows power, energy and
    cost, stops and sees the bill; the README's screenshot is taken."""
    driver = _browser()
    driver.set_window_size(430, 1100)  # a phone's width
    try:
        with background(tmp_path) as bg:
            driver.get(bg.app_url)
            assert driver.find_element("id", "app").get_attribute("hidden") is not None
            # A wrong token: one line, and the token form again.
            driver.find_element("id", "token").send_keys("not-the-token-" * 3)
            _click(driver, "#save-token")
            assert _wait("the error line", lambda: _text(driver, "#error")) == \
                "invalid app token"
            assert driver.find_element("id", "login").is_displayed()
            # The right one: kept in the tab's sessionStorage, not in the URL.
            driver.find_element("id", "token").send_keys(APP1)
            _click(driver, "#save-token")
            _wait("the app", lambda: driver.find_element("id", "app").is_displayed())
            assert driver.execute_script(
                "return sessionStorage.getItem('evtwin-driver-app-token');") == APP1
            assert APP1 not in driver.current_url
            assert _text(driver, "#error") == ""

            # "Use my location" (the phone is at Potsdam: allowed, and emulated), then a
            # search near Alexanderplatz typed in: CS1 at Mitte, 0.6 km, both Available.
            driver.execute_cdp_cmd("Browser.grantPermissions", {
                "origin": bg.app_url.removesuffix(DRIVER_APP_PREFIX),
                "permissions": ["geolocation"]})
            driver.execute_cdp_cmd("Emulation.setGeolocationOverride", {
                "latitude": 52.3906, "longitude": 13.0645, "accuracy": 10})
            _click(driver, "#locate")
            _wait("the station", lambda: _text(driver, ".station .distance") == "27 km")
            assert driver.find_element("id", "lat").get_attribute("value") == "52.39060"
            for name, value in (("lat", "52.5219"), ("lon", "13.4132")):
                box = driver.find_element("id", name)
                box.clear()
                box.send_keys(value)
            _click(driver, "#search")
            _wait("the station", lambda: "0.6 km" in _text(driver, ".station .distance"))
            assert _evses(driver) == {"CS1/1": "Available", "CS1/2": "Available"}
            card = _text(driver, ".station[data-station='CS1']")
            assert "0.6 km" in card and "Now: 0.30 EUR/kWh" in card
            assert "Mitte, Unter den Linden 1, Berlin" in card

            async def settle(r: Rig, t_s: float, evse_id: int = 2) -> str:
                await r.settle(t_s)
                return r.station.evses[evse_id].status

            # Longer than the operator allows: the API's refusal, in one line.
            minutes = driver.find_element("id", "minutes")
            minutes.clear()
            minutes.send_keys("90")
            _click(driver, ".evse[data-evse='1'] button[data-action='reserve']")
            assert _wait("the error", lambda: _text(driver, "#error")) == (
                "the request has invalid fields: minutes: at most 60")
            # Reserve EVSE 1, and cancel it: CancelReservation frees it at the station.
            minutes.clear()
            minutes.send_keys("15")
            _click(driver, ".evse[data-evse='1'] button[data-action='reserve']")
            _wait("the reservation", lambda: _text(driver, "#reservation-text"))
            assert _text(driver, "#error") == ""
            assert bg.call(lambda r: settle(r, 10, 1)) == "Reserved"
            assert _evses(driver)["CS1/1"] == "Reserved"
            assert not driver.execute_script(  # one reservation at a time
                "return document.querySelector(\"[data-action='reserve']\") !== null;")
            _click(driver, "#cancel")
            _wait("the cancel", lambda: "Reservation cancelled." in _text(driver, "#notice"))
            assert bg.call(lambda r: settle(r, 20, 1)) == "Available"
            assert not driver.find_element("id", "reservation-panel").is_displayed()
            _click(driver, "#search")  # the list refreshes itself every 10 s; or at once
            _wait("EVSE 1 free", lambda: _evses(driver)["CS1/1"] == "Available")

            # Reserve EVSE 2 for 20 minutes: ReserveNow reaches the station.
            minutes.clear()
            minutes.send_keys("20")
            _click(driver, ".evse[data-evse='2'] button[data-action='reserve']")
            _wait("the reservation", lambda: _text(driver, "#reservation-text"))
            assert _text(driver, "#reservation-text").startswith("CS1, EVSE 2: held for you")

            assert bg.call(lambda r: settle(r, 30)) == "Reserved"
            cancelled, held = bg.call(lambda r: _async(
                lambda: sorted(r.core.reservations.by_id.values(),
                               key=lambda x: x.reservation_id)))
            assert cancelled.evse_id == 1 and cancelled.status == "Cancelled"
            assert held.evse_id == 2 and held.id_token == "TOK1" and held.status == "Accepted"
            assert (held.expiry - held.created_at).total_seconds() == pytest.approx(1200, abs=1)
            assert _evses(driver)["CS1/2"] == "Reserved"
            assert "Reserved for you" in _text(driver, ".evse[data-evse='2']")

            # The driver arrives and plugs in, then starts from the app.
            def plug(r: Rig) -> Coroutine[Any, Any, str]:
                r.station.plug_waiting(2, r.ev("TOK1"), 600.0)
                return settle(r, 600)

            bg.call(plug)
            _click(driver, ".evse[data-evse='2'] button[data-action='start']")
            _wait("the start accepted", lambda: "Waiting for CS1" in _text(driver, "#session"))
            bg.call(lambda r: settle(r, 601))
            _wait("the session", lambda: "Charging at CS1, EVSE 2" in _text(driver, "#session"))
            # The reservation was used by the session: no longer shown.
            assert not driver.find_element("id", "reservation-panel").is_displayed()

            # Half an hour of charging at 11 kW: the page follows it.
            async def charge(r: Rig) -> None:
                r.clock[0] = 2400.0
                r.station.advance(2400.0, 1799.0)
                await r.link.flush(2400.0, sample=True, aligned=False, heartbeat=False)

            bg.call(charge)
            _wait("the power", lambda: _text(driver, "#power") == "11.0 kW")
            energy_kwh = 11.0 * 1799 / 3600
            assert _text(driver, "#energy") == f"{energy_kwh:.2f} kWh"
            assert _text(driver, "#cost") == f"{0.3 * energy_kwh:.2f} EUR"
            assert re.fullmatch(r"\d+ %", _text(driver, "#soc"))
            assert "Cost so far" in _text(driver, "#session")
            assert _evses(driver) == {"CS1/1": "Available", "CS1/2": "Occupied"}
            assert not driver.execute_script(
                "return document.querySelector(\".evse button\") !== null;")  # busy charging

            # The README's screenshot, of the charge being followed: written when missing
            # or asked for (not on every run, which would leave the work tree changed).
            driver.execute_script("window.scrollTo(0, 0);")
            shot = tmp_path / "driver_app.png"
            assert driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
            figure = ROOT / "docs" / "figures" / "driver_app.png"
            if not figure.exists() or os.environ.get("EVTWIN_UPDATE_FIGURES") == "1":
                shutil.copyfile(shot, figure)

            # Stop from the app; the station ends it; the bill appears.
            _click(driver, "#stop")
            _wait("the stop accepted", lambda: "Stop accepted" in _text(driver, "#notice"))
            bg.call(lambda r: settle(r, 2401))
            _wait("the bill", lambda: _text(driver, "#bill"))
            assert _text(driver, "#bill-energy") == f"{energy_kwh:.2f} kWh"
            assert _text(driver, "#bill-cost") == f"{0.3 * energy_kwh:.2f} EUR"
            assert _text(driver, "#bill-duration") == "30 min"
            assert _text(driver, "#bill-power") == "11.0 kW"
            assert _text(driver, "#error") == ""
            # No driver identifier on the page.
            assert "TOK1" not in driver.execute_script("return document.body.innerText;")
            # The list followed: the EV is still plugged in, no longer reserved; "Done"
            # puts the buttons back.
            assert _evses(driver)["CS1/2"] == "Occupied"
            _click(driver, "#dismiss")
            _wait("the buttons", lambda: driver.execute_script(
                "return document.querySelectorAll(\".evse button[data-action='reserve']\")"
                ".length;") == 1)
    finally:
        driver.quit()


async def _async(fn: Callable[[], T]) -> T:
    """``fn()`` on the loop's thread (the CSMS's objects belong to it)."""
    return fn()

