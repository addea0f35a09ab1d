"""SimBench grids (the optional ``simbench`` extra): loading, power flow, stations on
LV only, per-load profiles, and the district scenario."""

from __future__ import annotations

import copy
import sys
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandapower as pp
import pytest

sb = pytest.importorskip("simbench")

from evtwin.grid import (  # noqa: E402  (after the importorskip)
    BusMappingError,
    Feeder,
    LoadTimeSeries,
    NetworkExtraError,
    UnknownNetworkError,
    UnknownSimbenchCodeError,
    load_buses,
    load_cases,
    load_network,
    place_stations,
)
from evtwin.sim.exceptions import ScenarioError  # noqa: E402
from evtwin.sim.scenario import load_scenario, parse_scenario  # noqa: E402

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
LV = "simbench:1-LV-semiurb4--0-sw"
MVLV = "simbench:1-MVLV-semiurb-5.220-0-sw"  # the MV grid with one LV grid in detail
DISTRICT = "simbench:1-MVLV-semiurb-all-0-sw:feeder=1"  # scenarios/district.toml's
#: A winter Wednesday; SimBench's profile year 2016 has its Wednesday on 13 January.
START = date(2026, 1, 14)
#: 19:15 on the start day: quarter hour 77.
T_S = 19 * 3600 + 15 * 60


def _lv_buses(net: pp.pandapowerNet) -> set[int]:
    return {int(b) for b in net.bus.index[net.bus["vn_kv"] <= 1.0]}


@pytest.fixture(scope="module", params=[LV, MVLV, DISTRICT])
def net(request: pytest.FixtureRequest) -> pp.pandapowerNet:
    return load_network(request.param)


@pytest.mark.slow
def test_networks_load_ready_for_the_feeder(net: pp.pandapowerNet) -> None:
    assert len(net.sgen) == 0 and len(net.storage) == 0  # dropped, see _load_simbench
    assert net.trafo["vector_group"].notna().all()
    assert net.load["profile"].notna().all()
    assert "load" in net.profiles
    # An MV grid: loads on the 20 kV side too (they stand for whole LV grids).
    assert (net.bus["vn_kv"] <= 1.0).any()


@pytest.mark.slow
def test_pgm_agrees_with_runpp_at_a_profile_step(net: pp.pandapowerNet) -> None:
    """The reference comparison: the feeder's loads at a SimBench quarter hour, solved
    by power-grid-model, against pandapower's runpp on SimBench's own absolute values."""
    series = LoadTimeSeries.from_simbench(net, START)
    stations = place_stations(net, 6)
    feeder = Feeder(net, n_stations=6, station_buses=stations, base_profile=series)
    ev_kw = np.array([11.0, 22.0, 7.4, 11.0, 3.7, 22.0])
    res = feeder.solve(T_S, ev_kw, np.random.default_rng(0))

    ref = copy.deepcopy(net)
    row = series.row(T_S)
    profile = ref.load["profile"]
    table = ref.profiles["load"]
    ref.load["p_mw"] = ref.load["p_mw"].to_numpy() * table.loc[
        row, [f"{p}_pload" for p in profile]].to_numpy(dtype=float)
    ref.load["q_mvar"] = ref.load["q_mvar"].to_numpy() * table.loc[
        row, [f"{p}_qload" for p in profile]].to_numpy(dtype=float)
    pp.create_loads(ref, buses=stations, p_mw=ev_kw / 1000.0, q_mvar=0.0)
    pp.runpp(ref, numba=False, trafo_loading="power")
    vm = ref.res_bus["vm_pu"].reindex(feeder.bus_index).to_numpy()
    assert np.nanmax(np.abs(res.bus_vm_pu - vm)) < 1e-4
    assert np.nanmax(np.abs(res.line_loadings_percent
                            - ref.res_line["loading_percent"].to_numpy())) < 0.05
    assert np.nanmax(np.abs(res.trafo_loadings_percent
                            - ref.res_trafo["loading_percent"].to_numpy())) < 0.05


@pytest.mark.slow
def test_stations_go_on_lv_buses_only(net: pp.pandapowerNet) -> None:
    lv = _lv_buses(net)
    assert set(load_buses(net)) <= lv
    assert set(place_stations(net, 40)) <= lv
    mv = sorted(set(net.bus.index) - lv)
    with pytest.raises(BusMappingError, match="low-voltage buses"):
        Feeder(net, n_stations=1, station_buses=[int(mv[-1])])


@pytest.mark.slow
def test_an_mv_grid_alone_takes_no_station() -> None:
    net = load_network("simbench:1-MV-semiurb--0-sw")
    assert load_buses(net) == []
    with pytest.raises(BusMappingError, match="no supplied LV bus"):
        place_stations(net, 1)
    # It still solves (its loads are whole LV grids) and agrees with runpp.
    feeder = Feeder(net, n_stations=0, base_profile=LoadTimeSeries.from_simbench(net, START))
    res = feeder.solve(T_S, np.zeros(0), np.random.default_rng(0))
    ref = Feeder(net, n_stations=0, engine="pandapower",
                 base_profile=LoadTimeSeries.from_simbench(net, START))
    res_ref = ref.solve(T_S, np.zeros(0), np.random.default_rng(0))
    assert np.nanmax(np.abs(res.bus_vm_pu - res_ref.bus_vm_pu)) < 1e-4


# --------------------------------------------------------------------------- profiles
def test_profiles_follow_simbench_absolute_values() -> None:
    net = load_network(LV)
    series = LoadTimeSeries.from_simbench(net, START)
    # 14 January 2026 (a Wednesday) -> 13 January 2016 (the nearest Wednesday).
    assert series.row(0) == 12 * 96
    row = series.row(T_S)
    assert row == 12 * 96 + 77
    assert series.row(T_S + 899) == row  # step-held over the quarter hour
    assert series.row(T_S + 900) == row + 1
    absolute = sb.get_absolute_values(net, profiles_instead_of_study_cases=True)
    p_pu, q_pu = series.factors(T_S)
    p_mw = net.load["p_mw"].to_numpy() * p_pu
    q_mvar = net.load["q_mvar"].to_numpy() * q_pu
    np.testing.assert_allclose(p_mw, absolute[("load", "p_mw")].loc[row].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(q_mvar, absolute[("load", "q_mvar")].loc[row].to_numpy(),
                               rtol=1e-12)
    # Per load, not one shape for all: loads of different profiles differ per unit.
    assert len(np.unique(np.round(p_pu, 9))) > 3
    # The feeder takes them as they are (no noise): its household powers.
    feeder = Feeder(net, n_stations=0, base_profile=series)
    feeder.solve(T_S, np.zeros(0), np.random.default_rng(0))
    assert feeder.sum_household_p_kw == pytest.approx(p_mw.sum() * 1000.0)


def test_noise_and_scale_on_the_series() -> None:
    net = load_network(LV)
    plain = LoadTimeSeries.from_simbench(net, START)
    noisy = LoadTimeSeries.from_simbench(net, START, scale=0.5, noise=0.1)
    p, q = noisy.sample(T_S, np.random.default_rng(1), plain.n_loads)
    p0, q0 = plain.factors(T_S)
    ratio = p / (0.5 * p0)
    assert not np.allclose(ratio, 1.0)
    has_q = q0 != 0
    # One draw per load on both P and Q.
    np.testing.assert_allclose(q[has_q] / (0.5 * q0[has_q]), ratio[has_q])
    with pytest.raises(ValueError, match="loads"):
        noisy.sample(T_S, np.random.default_rng(1), plain.n_loads + 1)
    with pytest.raises(ValueError, match="base_profile"):
        Feeder(load_network("kerber_landnetz_kabel_1"), n_stations=0, base_profile=plain)


def test_hosting_load_cases_use_the_profiles() -> None:
    net = load_network(DISTRICT)
    series = LoadTimeSeries.from_simbench(net, START)
    buses = load_buses(net)[:3]
    feeder = Feeder(net, n_stations=3, station_buses=buses, base_profile=series)
    p, _, hours = load_cases(feeder, range(24))
    assert p.shape == (24, feeder.n_households) and hours == list(range(24))
    p_pu, _ = series.factors(19 * 3600)
    np.testing.assert_allclose(p[19], feeder.household_nominal_p_kw / 1000.0 * p_pu)
    p_worst, _, (worst,) = load_cases(feeder)
    assert worst == int(np.argmax(p.sum(axis=1)))
    np.testing.assert_allclose(p_worst[0], p[worst])


# --------------------------------------------------------------------------- errors
def test_unknown_code_names_it() -> None:
    with pytest.raises(UnknownSimbenchCodeError, match="1-LV-atlantis--0-sw") as err:
        load_network("simbench:1-LV-atlantis--0-sw")
    assert isinstance(err.value, UnknownNetworkError)
    assert "collect_all_simbench_codes" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(UnknownSimbenchCodeError, match="feeder=<n>"):
        load_network("simbench:1-LV-semiurb4--0-sw:feedr=1")


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "simbench", None)  # import simbench -> ImportError
    with pytest.raises(NetworkExtraError, match=r"pip install 'evtwin\[simbench\]'"):
        load_network("simbench:1-LV-rural1--0-sw")


def test_errors_pickle() -> None:
    import pickle

    for exc in (UnknownSimbenchCodeError("simbench:x", "no SimBench code 'x'"),
                NetworkExtraError("simbench:x", "simbench")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)


# --------------------------------------------------------------------------- scenarios
def test_scenario_accepts_simbench_names_and_checks_the_profile_option() -> None:
    base = {"name": "x", "ev": {"count": 2}, "sites": [{"name": "h", "stations": 2}]}
    sc = parse_scenario({**base, "grid": {"network": LV, "base_load_profile": "simbench"}})
    assert sc.grid.network == LV
    with pytest.raises(ScenarioError, match="base_load_profile"):
        parse_scenario({**base, "grid": {"network": "kerber_dorfnetz",
                                         "base_load_profile": "simbench"}})


@pytest.mark.slow
def test_district_scenario_runs() -> None:
    from evtwin.sim.runner import run_scenario

    sc = load_scenario(SCENARIOS / "district.toml", {"duration_h": 2})
    assert sc.grid.network == DISTRICT and sc.grid.base_load_profile == "simbench"
    assert {s.kind for s in sc.sites} >= {"home", "public"}
    result = run_scenario(sc)
    kpis = result.kpis
    assert 0.9 < kpis["v_min_pu"] <= kpis["v_max_pu"] < 1.1
    assert kpis["peak_trafo_loading_percent"] > 0
    assert result.timeseries["t_s"].max() == 2 * 3600  # every step, t = 0 included
    net = load_network(DISTRICT)
    assert set(place_stations(net, sum(s.stations for s in sc.sites))) <= _lv_buses(net)


@pytest.mark.parametrize("day", [date(2026, 1, 1), date(2026, 1, 3), date(2026, 12, 31),
                                 date(2027, 12, 30), date(2028, 2, 29)])
def test_start_day_keeps_its_weekday_at_the_ends_of_the_profile_year(day: date) -> None:
    """The start maps to the same weekday in SimBench's year, also near 1 January and
    31 December, where the nearest same weekday lies outside the profile year."""
    from datetime import timedelta

    from evtwin.grid.profiles import _first_row

    first = datetime(2016, 1, 1)
    rows = 366 * 96
    row = _first_row(first, day, 900.0, rows)
    mapped = first + timedelta(seconds=row * 900.0)
    assert mapped.weekday() == day.weekday()
    assert mapped.time().hour == 0 and mapped.year == 2016
    assert abs((mapped.date() - date(2016, day.month, min(day.day, 28 if day.month == 2
                                                       else day.day))).days) <= 7
