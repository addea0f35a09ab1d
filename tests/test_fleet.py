"""The vectorised fleet step against the per-EV closed form it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from evtwin.agents import ChargingModel, SiteConfig, behaviour_for, charge
from evtwin.agents.fleet import Fleet, apply_charge, charge_rows


def test_fleet_rows_charge_like_the_scalar_closed_form() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    fleet = Fleet(8)  # grows while rows are added
    rows = np.array([fleet.add() for _ in range(n)], dtype=np.intp)
    soc = rng.uniform(0.0, 1.0, n)
    target = np.clip(soc + rng.uniform(-0.2, 0.8, n), 0.0, 1.0)
    cap = rng.choice([40.0, 58.0, 77.0, 100.0], n)
    ev_max = rng.choice([0.0, 3.7, 7.4, 11.0, 22.0], n)
    eff = rng.uniform(0.85, 0.95, n)
    taper = rng.uniform(0.5, 0.95, n)
    limit = rng.choice([0.0, 1.4, 4.2, 11.0, 50.0], n)
    hours = rng.choice([0.0, 1 / 60, 0.25, 1.0, 6.0, 14.0], n)
    for name, values in (("soc", soc), ("target_soc", target), ("capacity_kwh", cap),
                         ("max_power_kw", ev_max), ("efficiency", eff), ("taper_soc", taper)):
        fleet.column(name)[:] = values
    result = charge_rows(fleet, rows, limit, hours)
    for i in range(n):
        one = charge(soc=soc[i], target_soc=target[i], capacity_kwh=cap[i], limit_kw=limit[i],
                     ev_max_kw=ev_max[i], efficiency=eff[i], taper_soc=taper[i],
                     duration_h=hours[i])
        assert result.soc_end[i] == pytest.approx(one.soc_end, rel=1e-12, abs=1e-15)
        assert result.battery_kwh[i] == pytest.approx(one.battery_kwh, rel=1e-9, abs=1e-12)
        assert result.grid_kwh[i] == pytest.approx(one.grid_kwh, rel=1e-9, abs=1e-12)
    apply_charge(fleet, rows, result)
    assert np.array_equal(fleet.column("soc"), result.soc_end)
    assert np.allclose(fleet.column("throughput_kwh"), np.abs(result.battery_kwh))
    assert (fleet.column("energy_grid_kwh") >= fleet.column("energy_battery_kwh") - 1e-12).all()


def _model() -> ChargingModel:
    site = SiteConfig(name="street", kind="home", stations=30, evses_per_station=2,
                      evse_max_kw=11.0, phases=3, ev_count=60,
                      behaviour=behaviour_for("home", plugin_share=1.0))  # every EV visits
    return ChargingModel([site], seed=3, duration_s=86400.0, start_hour=12.0)


def test_model_step_matches_station_by_station_integration() -> None:
    """The fleet step and each station's own piecewise integration agree, with
    profiles that change limits inside a step (those EVSEs take the piecewise path)."""
    from evtwin.ocppj.smartcharging import Profile

    results = []
    for vector in (True, False):
        model = _model()
        pairs = zip(model.stations, model.evs[::2], strict=False)
        for plugged, (st, ev) in enumerate(pairs):
            evse_id = 1 + plugged % 2
            ev.begin_visit(ev.visits[0])
            tx = st.plug(evse_id, ev, 0.0)
            st.begin_charging(evse_id, tx, 0.0)
            if plugged % 3 == 0:  # a limit that drops 10 minutes into the third step
                st.set_profile(evse_id, Profile(
                    profile_id=plugged + 1, purpose="TxProfile", stack_level=0,
                    kind="Absolute", unit="W",
                    periods=((0.0, 11_000.0, None), (2400.0, 3_000.0, None)),
                    start_s=0.0, duration_s=None, transaction_id=tx))
        for k in range(1, 12):
            if vector:
                model.step(k * 900.0, 900.0)
            else:
                for st in model.stations:
                    st.advance(k * 900.0, 900.0)
        results.append((model.fleet.column("soc").copy(),
                        [e.register_wh for st in model.stations for e in st.evses.values()],
                        [e.power_w for st in model.stations for e in st.evses.values()]))
    (soc_v, reg_v, p_v), (soc_s, reg_s, p_s) = results
    assert np.allclose(soc_v, soc_s, rtol=1e-12, atol=0)
    assert reg_v == pytest.approx(reg_s, rel=1e-12)
    assert p_v == pytest.approx(p_s, rel=1e-9)
    assert max(reg_v) > 0
