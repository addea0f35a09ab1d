"""The CSMS's typed front door for non-OCPP inputs (evtwin.csms.inputs): prices,
PV forecasts, grid-operator limits and the feeder view go in through one checked
method each, refuse bad input naming the field without changing anything, and
reach the strategies' view."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from evtwin.csms.core import CSMSCore
from evtwin.csms.exceptions import InputError
from evtwin.csms.store import Store
from tests.test_csms_core import SITE, T0, FakeClock, make_config, start


@pytest.fixture
def core() -> CSMSCore:
    return CSMSCore(make_config(), Store(":memory:"), clock=FakeClock())


def steps(*values: float, start: datetime = T0) -> list[tuple[datetime, float]]:
    return [(start + timedelta(hours=i), v) for i, v in enumerate(values)]


def test_prices_and_pv_reach_the_view(core: CSMSCore) -> None:
    core.inputs.set_prices(steps(0.30, 0.10), steps(0.05, 0.05))
    core.inputs.set_pv_forecast(steps(0.0, 12.5), site=SITE)
    core.inputs.set_pv_forecast(steps(1.0, 2.0), site="free")
    view = core.control_view()
    assert view.prices == tuple(steps(0.30, 0.10))
    assert view.export_prices == tuple(steps(0.05, 0.05))
    assert {s.name: s.pv_forecast_kw for s in view.sites}[SITE] == tuple(steps(0.0, 12.5))
    assert view.pv_forecast_kw == tuple(steps(1.0, 14.5))  # the sites' sum


@pytest.mark.parametrize(("call", "field"), [
    (lambda c: c.inputs.set_prices([(datetime(2026, 6, 1, 12), 0.3)]), "prices[0]"),
    (lambda c: c.inputs.set_prices(steps(0.3, float("nan"))), "prices[1]"),
    (lambda c: c.inputs.set_prices(steps(0.3, 0.2)[::-1]), "prices[1]"),
    (lambda c: c.inputs.set_prices(steps(0.3), [("noon", 0.1)]), "export_prices[0]"),
    (lambda c: c.inputs.set_pv_forecast(steps(-1.0), site=SITE),
     f"site_pv_forecast_kw.{SITE}[0]"),
    (lambda c: c.inputs.set_pv_forecast(steps(1.0), site="atlantis"), "site"),
    (lambda c: c.inputs.set_grid_limit("atlantis", 10.0), "site"),
    (lambda c: c.inputs.set_grid_limit(SITE, float("inf")), "limit_kw"),
    (lambda c: c.inputs.set_grid_limit(SITE, -1.0), "limit_kw"),
])
def test_bad_input_is_refused_naming_the_field_and_changes_nothing(
        core: CSMSCore, call: object, field: str) -> None:
    core.inputs.set_prices(steps(0.25))
    before = (core.inputs.prices, core.inputs.export_prices, dict(core.inputs.grid_limits_kw),
              dict(core.inputs.site_pv_forecast_kw))
    with pytest.raises(InputError) as err:
        call(core)  # type: ignore[operator]
    assert err.value.field == field
    assert (core.inputs.prices, core.inputs.export_prices, dict(core.inputs.grid_limits_kw),
            dict(core.inputs.site_pv_forecast_kw)) == before


def test_a_grid_limit_binds_at_once_and_is_released(core: CSMSCore) -> None:
    start(core, "CS1", 1, "tx1")
    start(core, "CS1", 2, "tx2")
    core.control_commands()  # the site's own 20 kW, shared
    assert not core.sessions_changed
    core.inputs.set_grid_limit(SITE, 8.0)
    assert core.sessions_changed  # control is due now, not at the next interval
    assert core.effective_site_limit_kw(SITE) == 8.0
    limits = {c.evse_id: c.limit_w for c in core.control_commands()}
    assert sum(limits.values()) == pytest.approx(8000.0)
    core.inputs.set_grid_limit(SITE, None)
    assert core.effective_site_limit_kw(SITE) == 20.0
