"""Tests for evtwin.grid: networks, station placement, both engines, profiles."""

from __future__ import annotations

import ast
import itertools
import math
import pickle
from pathlib import Path

import numpy as np
import pandapower as pp
import pandapower.topology as top
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evtwin.grid import (
    NETWORKS,
    BaseLoadProfile,
    BusMappingError,
    Feeder,
    GridError,
    GridLimits,
    GridResult,
    NetworkFileError,
    PowerFlowError,
    UnknownNetworkError,
    load_network,
)

V_TOL_PU = 1e-4
LOADING_TOL_PERCENT = 0.1
GRID_DIR = Path(__file__).resolve().parents[1] / "grid"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dorf_net() -> pp.pandapowerNet:
    return load_network("kerber_dorfnetz")


@pytest.fixture(scope="module")
def cigre_net() -> pp.pandapowerNet:
    return load_network("cigre_lv")


@pytest.fixture(scope="module")
def dorf_pair(dorf_net: pp.pandapowerNet) -> dict[str, Feeder]:
    return {e: Feeder(dorf_net, n_stations=40, engine=e) for e in ("pgm", "pandapower")}


@pytest.fixture(scope="module")
def cigre_pair(cigre_net: pp.pandapowerNet) -> dict[str, Feeder]:
    return {e: Feeder(cigre_net, n_stations=12, engine=e) for e in ("pgm", "pandapower")}


def _load_bus_order(net: pp.pandapowerNet) -> list[int]:
    """Load buses sorted by line distance (km) from the ext_grid, ties by index."""
    dist = top.calc_distance_to_bus(net, int(net.ext_grid.bus.iloc[0]))
    return sorted({int(b) for b in net.load.bus}, key=lambda b: (float(dist[b]), b))


# --------------------------------------------------------------------------- networks
def test_named_networks_load(dorf_net: pp.pandapowerNet, cigre_net: pp.pandapowerNet) -> None:
    assert len(dorf_net.bus) == 116
    assert len(cigre_net.bus) == 44
    assert len(load_network("create_cigre_network_lv").bus) == 44
    assert {"kerber_dorfnetz", "cigre_lv", "create_cigre_network_lv"} <= set(NETWORKS)


def test_unknown_network_lists_valid_names() -> None:
    with pytest.raises(UnknownNetworkError) as info:
        load_network("kerber_metropolis")
    err = info.value
    assert isinstance(err, GridError)
    assert err.name == "kerber_metropolis"
    assert "kerber_metropolis" in str(err)
    for name in NETWORKS:
        assert name in str(err)
    assert pickle.loads(pickle.dumps(err)).valid == err.valid


@pytest.mark.slow
def test_json_round_trip(dorf_net: pp.pandapowerNet, tmp_path: Path) -> None:
    path = tmp_path / "dorf.json"
    pp.to_json(dorf_net, str(path))
    for arg in (str(path), path):
        net = load_network(arg)
        assert len(net.bus) == len(dorf_net.bus)
        assert net.load.p_mw.sum() == pytest.approx(dorf_net.load.p_mw.sum())
    result = Feeder(net, n_stations=3).solve_raw(
        net.load.p_mw.to_numpy(), net.load.q_mvar.to_numpy(), np.zeros(3)
    )
    assert 0.9 < result.vm_min_pu < 1.0


def test_json_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(NetworkFileError, match=r"nope\.json"):
        load_network(str(missing))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{ not json")
    with pytest.raises(NetworkFileError, match=r"garbage\.json") as info:
        load_network(str(garbage))
    assert info.value.path == str(garbage)


# --------------------------------------------------------------------------- stations
def test_station_rule_spreads_near_to_far(dorf_net: pp.pandapowerNet) -> None:
    order = _load_bus_order(dorf_net)
    n = len(order)
    feeder = Feeder(dorf_net, n_stations=4)
    assert feeder.station_buses == [order[0], order[n // 4], order[n // 2], order[3 * n // 4]]
    assert feeder.station_buses == Feeder(dorf_net, n_stations=4).station_buses  # deterministic

    every = Feeder(dorf_net, n_stations=n, engine="pandapower")
    assert every.station_buses == order  # one station per load bus, nearest first


def test_more_stations_than_load_buses_share(cigre_net: pp.pandapowerNet) -> None:
    order = _load_bus_order(cigre_net)
    feeder = Feeder(cigre_net, n_stations=40)
    assert feeder.station_buses == [order[i * len(order) // 40] for i in range(40)]
    assert set(feeder.station_buses) == set(order)


def test_station_loads_are_separate_elements(dorf_net: pp.pandapowerNet) -> None:
    n_loads = len(dorf_net.load)
    feeder = Feeder(dorf_net, n_stations=5, engine="pandapower")
    assert len(dorf_net.load) == n_loads  # the caller's net is not modified
    ev = feeder.net.load.iloc[n_loads:]
    assert list(ev.name) == [f"ev_station_{i}" for i in range(5)]
    assert list(ev.bus) == feeder.station_buses
    assert (ev.p_mw == 0).all()
    assert feeder.n_households == n_loads
    assert feeder.household_nominal_p_kw == pytest.approx(dorf_net.load.p_mw.to_numpy() * 1e3)
    assert feeder.bus_count == 116
    assert feeder.trafo_rating_kva == pytest.approx(400.0)
    assert math.isnan(feeder.sum_household_p_kw)


def test_explicit_station_buses_validated(dorf_net: pp.pandapowerNet) -> None:
    feeder = Feeder(dorf_net, n_stations=3, station_buses=[5, 7, 5], engine="pandapower")
    assert feeder.station_buses == [5, 7, 5]
    with pytest.raises(BusMappingError, match="9999") as info:
        Feeder(dorf_net, n_stations=2, station_buses=[5, 9999])
    assert info.value.bus == 9999
    with pytest.raises(BusMappingError) as count_info:
        Feeder(dorf_net, n_stations=3, station_buses=[5, 7])
    assert count_info.value.bus is None
    with pytest.raises(BusMappingError):
        Feeder(dorf_net, n_stations=1, station_buses=[2.5])
    with pytest.raises(ValueError, match="engine"):
        Feeder(dorf_net, n_stations=1, engine="matpower")


# --------------------------------------------------------------------------- engines
def _assert_engines_agree(
    pair: dict[str, Feeder], seed: int, load_pu: float, ev_max_kw: float
) -> None:
    rng = np.random.default_rng(seed)
    feeder = pair["pgm"]
    factor = load_pu * rng.uniform(0.2, 1.0, feeder.n_households)
    p_mw = feeder.household_nominal_p_kw * 1e-3 * factor
    q_mvar = feeder.net.load.q_mvar.to_numpy()[: feeder.n_households] * factor
    ev_p_kw = rng.uniform(0.0, ev_max_kw, len(feeder.station_buses))
    fast = pair["pgm"].solve_raw(p_mw, q_mvar, ev_p_kw)
    ref = pair["pandapower"].solve_raw(p_mw, q_mvar, ev_p_kw)
    np.testing.assert_allclose(fast.bus_vm_pu, ref.bus_vm_pu, rtol=0, atol=V_TOL_PU)
    np.testing.assert_allclose(fast.station_vm_pu, ref.station_vm_pu, rtol=0, atol=V_TOL_PU)
    np.testing.assert_allclose(
        fast.line_loadings_percent, ref.line_loadings_percent, rtol=0, atol=LOADING_TOL_PERCENT
    )
    np.testing.assert_allclose(
        fast.trafo_loadings_percent, ref.trafo_loadings_percent, rtol=0, atol=LOADING_TOL_PERCENT
    )
    assert fast.vm_min_pu == pytest.approx(ref.vm_min_pu, abs=V_TOL_PU)
    assert fast.trafo_loading_percent == pytest.approx(ref.trafo_loading_percent, abs=0.1)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    load_pu=st.floats(0.0, 1.2),
    ev_max_kw=st.sampled_from([0.0, 3.7, 11.0, 22.0]),
)
def test_engines_agree_kerber_dorfnetz(
    dorf_pair: dict[str, Feeder], seed: int, load_pu: float, ev_max_kw: float
) -> None:
    _assert_engines_agree(dorf_pair, seed, load_pu, ev_max_kw)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    load_pu=st.floats(0.0, 1.0),
    ev_max_kw=st.sampled_from([0.0, 11.0, 22.0]),
)
def test_engines_agree_cigre_lv(
    cigre_pair: dict[str, Feeder], seed: int, load_pu: float, ev_max_kw: float
) -> None:
    _assert_engines_agree(cigre_pair, seed, load_pu, ev_max_kw)


@pytest.mark.parametrize("engine", ["pgm", "pandapower"])
def test_more_ev_power_lowers_voltage_and_raises_trafo_loading(
    dorf_pair: dict[str, Feeder], engine: str
) -> None:
    feeder = dorf_pair[engine]
    p_mw = feeder.household_nominal_p_kw * 0.5e-3
    q_mvar = np.zeros(feeder.n_households)
    results = [feeder.solve_raw(p_mw, q_mvar, np.full(40, kw)) for kw in (0.0, 2.0, 4.0, 8.0)]
    vm_min = [r.vm_min_pu for r in results]
    trafo = [r.trafo_loading_percent for r in results]
    assert all(a > b for a, b in itertools.pairwise(vm_min))
    assert all(a < b for a, b in itertools.pairwise(trafo))
    assert all(np.all(a.station_vm_pu > b.station_vm_pu) for a, b in itertools.pairwise(results))


def test_solve_is_seeded_and_tracks_base_load(dorf_pair: dict[str, Feeder]) -> None:
    feeder = dorf_pair["pgm"]
    ev = np.full(40, 3.7)
    a = feeder.solve(19 * 3600.0, ev, np.random.default_rng(7))
    base_a = feeder.sum_household_p_kw
    b = feeder.solve(19 * 3600.0, ev, np.random.default_rng(7))
    assert a.vm_min_pu == b.vm_min_pu
    np.testing.assert_array_equal(a.bus_vm_pu, b.bus_vm_pu)
    assert feeder.sum_household_p_kw == base_a
    night = feeder.solve(3 * 3600.0, ev, np.random.default_rng(7))
    assert feeder.sum_household_p_kw < base_a
    assert night.vm_min_pu > a.vm_min_pu
    with pytest.raises(ValueError):
        a.bus_vm_pu[0] = 1.0  # results are read-only
    with pytest.raises(ValueError, match="ev_p_kw"):
        feeder.solve(0.0, np.zeros(39), np.random.default_rng(0))


def test_violations_on_a_hard_loaded_feeder(dorf_pair: dict[str, Feeder]) -> None:
    feeder = dorf_pair["pgm"]
    hard = feeder.solve(20 * 3600.0, np.full(40, 22.0), np.random.default_rng(1))
    assert "undervoltage" in hard.violations(GridLimits())
    assert "trafo_overload" in feeder.violations(hard)
    light = feeder.solve(3 * 3600.0, np.zeros(40), np.random.default_rng(1))
    assert light.violations() == []
    assert light.violations(GridLimits(v_min_pu=0.9999)) == ["undervoltage"]


def test_violation_names() -> None:
    empty = np.empty(0)
    result = GridResult(
        vm_min_pu=0.85,
        vm_max_pu=1.12,
        line_loading_max_percent=120.0,
        trafo_loading_percent=101.0,
        station_vm_pu=empty,
        bus_vm_pu=empty,
        line_loadings_percent=empty,
        trafo_loadings_percent=empty,
    )
    assert result.violations() == ["undervoltage", "overvoltage", "line_overload", "trafo_overload"]
    assert result.violations(GridLimits(0.8, 1.2, 150.0, 150.0)) == []


@pytest.mark.parametrize("engine", ["pgm", "pandapower"])
def test_non_convergence_raises_power_flow_error(dorf_pair: dict[str, Feeder], engine: str) -> None:
    feeder = dorf_pair[engine]
    with pytest.raises(PowerFlowError) as info:
        feeder.solve(3600.0, np.full(40, 1000.0), np.random.default_rng(0))
    assert info.value.t_s == 3600.0
    assert "t=3600" in str(info.value)
    assert pickle.loads(pickle.dumps(info.value)).engine == engine
    # The feeder still works afterwards.
    assert feeder.solve(3600.0, np.zeros(40), np.random.default_rng(0)).vm_min_pu > 0.9


# --------------------------------------------------------------------------- profiles
def test_profile_is_deterministic_per_seed() -> None:
    profile = BaseLoadProfile(noise=0.1)
    a = profile.sample(12 * 3600.0, np.random.default_rng(3), 50)
    b = profile.sample(12 * 3600.0, np.random.default_rng(3), 50)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (50,)
    assert len(np.unique(a)) == 50  # one independent draw per household


def test_profile_shape_evening_peak_over_night_trough() -> None:
    profile = BaseLoadProfile(noise=0.0)
    hours = np.arange(0, 24, 0.25)
    shape = profile.shape_pu(hours * 3600.0)
    assert shape.max() == pytest.approx(1.0)
    evening = profile.shape_pu(20 * 3600.0)
    night = profile.shape_pu(3.5 * 3600.0)
    assert evening > 2 * night
    assert 17 <= hours[np.argmax(shape)] <= 21
    assert 1 <= hours[np.argmin(shape)] <= 5
    # Periodic over days and continuous across midnight.
    assert profile.shape_pu(86_400.0 + 20 * 3600.0) == pytest.approx(evening)
    assert profile.shape_pu(86_399.0) == pytest.approx(profile.shape_pu(0.0), abs=1e-3)


def test_profile_noise_and_flat_shape() -> None:
    flat = BaseLoadProfile(shape="flat", scale=0.5, noise=0.0)
    np.testing.assert_array_equal(flat.sample(1234.0, np.random.default_rng(0), 4), np.full(4, 0.5))
    noisy = BaseLoadProfile(shape="flat", noise=0.2).sample(0.0, np.random.default_rng(0), 20_000)
    assert noisy.mean() == pytest.approx(1.0, abs=0.01)
    assert noisy.std() == pytest.approx(0.2, rel=0.1)
    assert (noisy > 0).all()
    with pytest.raises(ValueError, match="shape"):
        BaseLoadProfile(shape="industrial")
    with pytest.raises(ValueError, match="noise"):
        BaseLoadProfile(noise=-0.1)


# --------------------------------------------------------------------------- layering
def test_grid_imports_no_other_evtwin_package() -> None:
    forbidden = ("evtwin.sim", "evtwin.agents", "evtwin.csms")
    for path in GRID_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"


def test_named_networks_are_the_same_on_every_load() -> None:
    """Kerber factories draw line types at random; load_network pins them."""
    import random

    random.seed(123)
    before = random.random()
    random.seed(123)
    a = load_network("kerber_dorfnetz")
    after = random.random()
    b = load_network("kerber_dorfnetz")
    assert a.line["std_type"].tolist() == b.line["std_type"].tolist()
    assert before == after  # the caller's random stream is left where it was


def test_csv_times_without_an_offset_are_local_in_the_scenarios_zone() -> None:
    """PV and price files: naive times are the feeder's clock, which changes offset on
    29 March 2026 in Berlin; times with an offset are kept; no zone means UTC."""
    from zoneinfo import ZoneInfo

    import pandas as pd

    from evtwin.grid import csv_times

    raw = pd.Series(["2026-03-28 12:00", "2026-03-29 12:00"])
    berlin = csv_times(raw, ZoneInfo("Europe/Berlin"))
    assert [t.hour for t in berlin] == [11, 10]  # CET, then CEST
    assert [t.hour for t in csv_times(raw, None)] == [12, 12]
    given = csv_times(pd.Series(["2026-03-28T12:00:00+01:00", "2026-03-29T12:00:00+02:00"]),
                      ZoneInfo("UTC"))
    assert [t.hour for t in given] == [11, 10]
    skipped = csv_times(pd.Series(["2026-03-29 02:30"]), ZoneInfo("Europe/Berlin"))
    assert skipped.iloc[0].hour == 1  # 03:00 CEST: the skipped half hour moves forward
