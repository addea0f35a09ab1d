"""feeder_aware: the CSMS's linear feeder model and the strategy built on it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evtwin.csms import ControlView, SessionView, SiteView, get_strategy
from evtwin.csms.feeder import FeederModel, FeederView
from evtwin.grid import BaseLoadProfile, Feeder, load_network
from evtwin.sim import RunResult, Twin, load_scenario

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "feeder_stress.toml"
N_STATIONS = 40
NOW = datetime(2026, 1, 15, 19, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def feeder() -> Feeder:
    return Feeder(load_network("kerber_dorfnetz"), n_stations=N_STATIONS,
                  base_profile=BaseLoadProfile("residential", scale=0.6, noise=0.0))


@pytest.fixture()
def model(feeder: Feeder) -> FeederModel:
    return FeederModel.from_feeder(feeder, [f"CS{i:03d}" for i in range(N_STATIONS)])


def _households(feeder: Feeder, scale: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    return (feeder.household_nominal_p_kw / 1e3 * scale,
            feeder.household_nominal_q_kvar / 1e3 * scale)


def test_sensitivities_match_a_full_power_flow(feeder: Feeder, model: FeederModel) -> None:
    """A moderate EV addition (10 chargers at 11 kW, 110 kW) is predicted within 0.002 pu."""
    p, q = _households(feeder)
    ev0 = np.zeros(N_STATIONS)
    dv, dline, dtrafo = model.sensitivities(p, q, ev0)
    assert (dv[feeder.monitored_bus_rows] <= 1e-9).all()  # charging never raises a voltage
    rng = np.random.default_rng(3)
    ev = np.zeros(N_STATIONS)
    ev[rng.choice(N_STATIONS, 10, replace=False)] = 11.0
    before, after = feeder.solve_raw(p, q, ev0), feeder.solve_raw(p, q, ev)
    predicted = before.bus_vm_pu + dv @ ev
    assert np.abs(after.bus_vm_pu - before.bus_vm_pu).max() > 0.01  # a real change
    assert np.abs(predicted - after.bus_vm_pu).max() < 0.002
    trafo = before.trafo_loadings_percent + dtrafo @ ev
    assert np.abs(trafo - after.trafo_loadings_percent).max() < 1.0
    line = before.line_loadings_percent + dline @ ev
    assert np.abs(line - after.line_loadings_percent).max() < 1.0


def test_model_estimates_household_load_from_voltages(feeder: Feeder,
                                                      model: FeederModel) -> None:
    p, q = _households(feeder, 0.6)
    model.observe(feeder.solve_raw(p, q, np.zeros(N_STATIONS)), np.zeros(N_STATIONS))
    assert model.household_scale == pytest.approx(0.6, abs=0.05)
    assert model.linearisations == 1 and model.relinearisations == 0


def test_relinearises_only_when_the_operating_point_moves_far(feeder: Feeder,
                                                             model: FeederModel) -> None:
    p, q = _households(feeder)
    ev = np.zeros(N_STATIONS)
    model.observe(feeder.solve_raw(p, q, ev), ev)
    # A small step: the prediction holds, no re-linearisation.
    ev_small = ev.copy()
    ev_small[:3] = 11.0
    model.observe(feeder.solve_raw(p, q, ev_small), ev_small)
    assert model.relinearisations == 0
    assert model.last_error_pu < 0.003
    # Everyone at full power on a heavier evening: far from the linearisation point.
    ev_far = np.full(N_STATIONS, 11.0)
    p2, q2 = _households(feeder, 0.9)
    model.observe(feeder.solve_raw(p2, q2, ev_far), ev_far)
    assert model.last_error_pu > 0.003
    assert model.relinearisations == 1 and model.linearisations == 2
    assert model.household_scale == pytest.approx(0.9, abs=0.1)
    # The new sensitivities are steeper (lower voltages, higher currents) and predict
    # a step back from the new point within the re-linearisation threshold.
    ev_back = ev_far.copy()
    ev_back[::4] = 0.0
    predicted = model.predict_vm_pu(ev_back)
    actual = feeder.solve_raw(p2, q2, ev_back).bus_vm_pu
    assert np.abs(predicted - actual).max() < 0.003


def _session(station: str, *, remaining: float = 10.0, hours_left: float = 10.0,
             max_kw: float = 11.0) -> SessionView:
    return SessionView(station_id=station, evse_id=1, transaction_id=f"tx-{station}",
                       max_power_kw=max_kw, power_kw=0.0, energy_kwh=0.0, voltage_v=None,
                       soc_percent=None, started_at=NOW - timedelta(hours=1),
                       departure=NOW + timedelta(hours=hours_left),
                       energy_remaining_kwh=remaining)


def _view(model: FeederModel, feeder: Feeder, sessions: list[SessionView], *,
          scale: float = 0.6, site_limit_kw: float | None = None) -> ControlView:
    p, q = _households(feeder, scale)
    ev = np.zeros(N_STATIONS)
    fv = model.observe(feeder.solve_raw(p, q, ev), ev, NOW)
    return ControlView(now=NOW, sites=(SiteView("street", site_limit_kw, tuple(sessions)),),
                       feeder=fv)


def test_lp_keeps_predicted_limits_and_is_not_equal_cuts(feeder: Feeder,
                                                         model: FeederModel) -> None:
    sessions = [_session(f"CS{i:03d}") for i in range(N_STATIONS)]
    view = _view(model, feeder, sessions, scale=0.9)
    limits = get_strategy("feeder_aware")(view)
    p_station = np.array([limits[(f"CS{i:03d}", 1)] or 0.0 for i in range(N_STATIONS)])
    assert ((p_station >= -1e-9) & (p_station <= 11.0 + 1e-6)).all()
    # Check the allocation with a full power flow: inside every limit.
    p, q = _households(feeder, 0.9)
    res = feeder.solve_raw(p, q, p_station)
    assert res.vm_min_pu >= 0.90 and res.trafo_loading_percent <= 100.0
    assert res.line_loading_max_percent <= 100.0
    # It charges as much as the feeder allows: some limit is reached (within its margin
    # plus the linearisation error).
    assert p_station.sum() > 50.0
    assert (res.vm_min_pu < 0.90 + 0.008 or res.trafo_loading_percent > 96.0
            or res.line_loading_max_percent > 96.0), res
    assert len({round(x, 3) for x in p_station}) > 2  # not one equal cut for everyone


def test_lp_prefers_urgent_sessions_and_honours_site_limit(feeder: Feeder,
                                                           model: FeederModel) -> None:
    # Two sessions at the same bus, so they are equal for the grid: urgency decides.
    bus = feeder.station_buses[0]
    same = [i for i, b in enumerate(feeder.station_buses) if b == bus]
    other = next(i for i in range(N_STATIONS) if i not in same)
    relaxed = _session(f"CS{same[0]:03d}", remaining=5.0, hours_left=12.0)
    urgent = _session(f"CS{other:03d}", remaining=30.0, hours_left=3.0)
    limits = get_strategy("feeder_aware")(_view(model, feeder, [relaxed, urgent],
                                                site_limit_kw=12.0))
    assert limits[(urgent.station_id, 1)] == pytest.approx(11.0)
    assert limits[(relaxed.station_id, 1)] == pytest.approx(1.0)


def test_base_load_violation_gives_zero_not_an_error(feeder: Feeder,
                                                     model: FeederModel) -> None:
    # Households at 2.6x their nominal peak alone overload the transformer.
    sessions = [_session(f"CS{i:03d}") for i in range(5)]
    view = _view(model, feeder, sessions, scale=2.6)
    assert view.feeder.trafo_loading_percent.max() > 100.0
    limits = get_strategy("feeder_aware")(view)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in limits.values())


def test_without_a_feeder_it_is_equal_share() -> None:
    sessions = (_session("A"), _session("B"))
    view = ControlView(now=NOW, sites=(SiteView("s", 10.0, sessions),))
    assert get_strategy("feeder_aware")(view) == get_strategy("equal_share")(view)


def test_partial_knowledge_uses_station_reports(feeder: Feeder, model: FeederModel) -> None:
    """Without DSO bus voltages, the reported station voltages bound the charging."""
    p, q = _households(feeder, 0.9)
    ev = np.zeros(N_STATIONS)
    full = model.observe(feeder.solve_raw(p, q, ev), ev, NOW)
    far = int(np.argmin(full.bus_vm_pu[full.station_bus_rows]))
    vm = float(full.bus_vm_pu[full.station_bus_rows[far]])
    report = SessionView(station_id=f"CS{far:03d}", evse_id=1, transaction_id="t",
                         max_power_kw=11.0, power_kw=0.0, energy_kwh=0.0,
                         voltage_v=vm * 230.0, soc_percent=None, started_at=NOW,
                         departure=NOW + timedelta(hours=8), energy_remaining_kwh=20.0)
    fv = FeederView(**{**{f: getattr(full, f) for f in FeederView.__slots__},
                       "bus_vm_pu": None, "line_loading_percent": None,
                       "trafo_loading_percent": None})
    limit = get_strategy("feeder_aware")(ControlView(
        now=NOW, sites=(SiteView("s", None, (report,)),), feeder=fv))[(report.station_id, 1)]
    assert limit is not None
    dv = fv.dv_dp_pu_per_kw[fv.station_bus_rows[far], far]
    assert vm + dv * limit >= 0.90 + fv.v_margin_pu - 1e-6


# --------------------------------------------------------------- the shipped scenario
def _run(strategy: str) -> tuple[RunResult, Twin]:
    twin = Twin(load_scenario(SCENARIO, {"control.strategy": strategy}))
    return twin.run(), twin


@pytest.fixture(scope="module")
def uncontrolled() -> RunResult:
    return _run("uncontrolled")[0]


@pytest.fixture(scope="module")
def feeder_aware_run() -> tuple[RunResult, Twin]:
    return _run("feeder_aware")


def _violates(ts: pd.DataFrame) -> pd.Series:
    return ((ts["vm_min_pu"] < 0.90) | (ts["line_loading_max_percent"] > 100.0)
            | (ts["trafo_loading_percent"] > 100.0))


@pytest.mark.slow
def test_uncontrolled_breaks_the_feeder(uncontrolled: RunResult) -> None:
    assert _violates(uncontrolled.timeseries).any()


@pytest.mark.slow
def test_feeder_aware_keeps_limits_and_delivers(feeder_aware_run: tuple[RunResult, Twin],
                                               uncontrolled: RunResult) -> None:
    result, twin = feeder_aware_run
    ts = result.timeseries
    assert not _violates(ts).any(), ts[_violates(ts)]
    assert ts["vm_min_pu"].min() >= 0.90
    assert ts["line_loading_max_percent"].max() <= 100.0
    assert ts["trafo_loading_percent"].max() <= 100.0
    k = result.kpis
    assert k["evs_open_at_end"] == 0  # every visit ends inside the run
    assert k["energy_delivered_kwh"] >= 0.95 * k["energy_requested_kwh"]
    # It shifts charging rather than refusing it: the peak is lower than uncontrolled.
    assert k["peak_ev_power_kw"] < uncontrolled.kpis["peak_ev_power_kw"]
    assert twin.feeder_model is not None and twin.feeder_model.linearisations >= 1
