"""Unbalanced (per-phase) power flow: power-grid-model's asymmetric calculation in the
Feeder against pandapower's three-phase power flow (``runpp_3ph``), and what a
single-phase load does that a balanced one does not."""

from __future__ import annotations

import copy

import numpy as np
import pandapower as pp
import pytest

from evtwin.grid import Feeder, GridLimits, load_network
from evtwin.grid.unbalanced import add_zero_sequence

NAME = "kerber_dorfnetz"


def reference_3ph(f: Feeder, household_p_mw: np.ndarray, household_q_mvar: np.ndarray,
                  ev_kw: list[float]) -> pp.pandapowerNet:
    """pandapower runpp_3ph on a plain copy of the network with the same per-phase loads
    (zero-sequence data filled the same way: it is input data, not the solver)."""
    net = copy.deepcopy(load_network(NAME))
    add_zero_sequence(net)
    # pandapower's runpp_3ph names the winding connection without the clock number
    # ("Dyn", not Kerber's "Dyn5"); the phase shift stays in shift_degree (150).
    net.trafo["vector_group"] = net.trafo["vector_group"].str.rstrip("0123456789")
    # pandapower asks for the HV share of the zero-sequence impedance even for Dyn (it
    # does not enter a Dyn transformer's zero-sequence model); its own example value.
    net.trafo["si0_hv_partial"] = 0.9
    buses = list(net.load.bus) + f.station_buses
    p = list(household_p_mw) + [kw / 1000.0 for kw in ev_kw]
    q = list(household_q_mvar) + [0.0] * len(ev_kw)
    net.load.drop(net.load.index, inplace=True)
    for bus, pi, qi, phase in zip(buses, p, q, f.load_phases, strict=True):
        share = np.full(3, 1 / 3) if phase < 0 else np.eye(3)[phase]
        pp.create_asymmetric_load(net, int(bus), p_a_mw=pi * share[0], p_b_mw=pi * share[1],
                                  p_c_mw=pi * share[2], q_a_mvar=qi * share[0],
                                  q_b_mvar=qi * share[1], q_c_mvar=qi * share[2])
    pp.runpp_3ph(net)
    return net


def test_asymmetric_power_flow_agrees_with_pandapower_runpp_3ph() -> None:
    net = load_network(NAME)
    f = Feeder(net, n_stations=4, unbalanced=True, station_phases=[1, 1, 3, 3],
               phase_seed=5)
    p = f.household_nominal_p_kw * 0.5 / 1000
    q = f.household_nominal_q_kvar * 0.5 / 1000
    ev = [7.4, 7.4, 11.0, 11.0]
    result = f.solve_raw(p, q, ev)
    ref = reference_3ph(f, p, q, ev)
    ref_vm = ref.res_bus_3ph[["vm_a_pu", "vm_b_pu", "vm_c_pu"]].to_numpy()
    assert result.bus_vm_phase_pu is not None
    assert np.abs(result.bus_vm_phase_pu - ref_vm).max() < 1e-3
    assert result.vm_min_pu == pytest.approx(ref_vm.min(), abs=1e-3)
    # Voltage unbalance factor and neutral current, as pandapower computes them.
    assert result.vuf_max_percent == pytest.approx(
        np.nanmax(ref.res_bus_3ph["unbalance_percent"]), abs=0.01)
    assert result.neutral_current_max_a == pytest.approx(
        np.nanmax(ref.res_line_3ph["i_n_from_ka"]) * 1000.0, rel=0.02)
    # Households are single-phase, spread evenly over L1-L3; the two 1-phase stations too.
    phases = f.load_phases[:f.n_households]
    assert sorted(np.bincount(phases)) in ([19, 19, 19],)
    assert set(f.load_phases[f.n_households:f.n_households + 2]) <= {0, 1, 2}
    assert list(f.load_phases[-2:]) == [-1, -1]


def test_one_phase_loads_on_one_phase_unbalance_more_than_spread() -> None:
    """Six 7.4 kW single-phase chargers on one branch: all on L1 give a higher voltage
    unbalance factor and a lower minimum voltage than the same chargers spread over
    L1, L2, L3, which in turn are worse than the same power drawn on three phases."""
    net = load_network(NAME)
    far = [69, 67, 65, 93, 61, 63]
    zero = np.zeros(57)

    def solve(connections: list[int]) -> tuple[float, float]:
        f = Feeder(net, n_stations=6, station_buses=far, unbalanced=True,
                   station_connections=connections, limits=GridLimits())
        r = f.solve_raw(zero, zero, [7.4] * 6)
        assert r.vuf_max_percent is not None
        return r.vuf_max_percent, r.vm_min_pu

    one = solve([0] * 6)
    spread = solve([0, 1, 2, 0, 1, 2])
    three = solve([-1] * 6)
    assert one[0] > spread[0] > three[0] - 1e-9
    assert one[1] < spread[1] <= three[1] + 1e-9
    assert one[0] > 2.0 * max(spread[0], 0.01)  # several times the unbalance


def test_unbalance_beyond_en_50160_is_a_violation() -> None:
    net = load_network(NAME)
    f = Feeder(net, n_stations=6, station_buses=[69, 67, 65, 93, 61, 63], unbalanced=True,
               station_connections=[0] * 6, limits=GridLimits(vuf_max_percent=0.5))
    r = f.solve_raw(np.zeros(57), np.zeros(57), [7.4] * 6)
    assert "unbalance" in f.violations(r)


@pytest.mark.slow
def test_a_twin_run_on_an_unbalanced_feeder_reports_per_phase() -> None:
    """grid.phases = "unbalanced": the run's steps carry each phase's lowest voltage, the
    unbalance factor and the neutral current, its KPIs the worst of them; single-phase
    households make the lowest voltage lower than the balanced run's."""
    from pathlib import Path

    from evtwin.sim import Twin, load_scenario

    demo = Path(__file__).resolve().parents[1] / "scenarios" / "demo.toml"
    overrides = {"duration_h": 4, "ev.count": 6}
    unb = Twin(load_scenario(demo, {**overrides, "grid.phases": "unbalanced"})).run()
    bal = Twin(load_scenario(demo, overrides)).run()
    ts = unb.timeseries
    for col in ("vm_min_l1_pu", "vm_min_l2_pu", "vm_min_l3_pu", "vuf_max_percent",
                "neutral_current_max_a"):
        assert col in ts and ts[col].notna().all(), col
    lowest = ts[["vm_min_l1_pu", "vm_min_l2_pu", "vm_min_l3_pu"]].min(axis=1)
    assert np.allclose(lowest, ts["vm_min_pu"])
    assert unb.kpis["vuf_max_percent"] == pytest.approx(ts["vuf_max_percent"].max())
    assert 0 < unb.kpis["vuf_max_percent"] < 2.0
    assert unb.kpis["neutral_current_max_a"] > 0
    assert unb.kpis["v_min_pu"] < bal.kpis["v_min_pu"]
    assert "vuf_max_percent" not in bal.kpis and "vuf_max_percent" not in bal.timeseries


def test_loadings_per_phase_agree_with_pandapower() -> None:
    """Six single-phase chargers on L1: the transformer's and the lines' loading on their
    most loaded phase, as pandapower's runpp_3ph gives it (power-grid-model's own
    asymmetric transformer loading sums the phases and would show 15 % for 38 %)."""
    net = load_network(NAME)
    f = Feeder(net, n_stations=6, station_buses=[69, 67, 65, 93, 61, 63], unbalanced=True,
               station_connections=[0] * 6)
    zero = np.zeros(57)
    r = f.solve_raw(zero, zero, [7.4] * 6)
    ref = reference_3ph(f, zero, zero, [7.4] * 6)
    assert r.trafo_loading_percent == pytest.approx(
        float(ref.res_trafo_3ph["loading_percent"].max()), rel=0.01)
    assert r.line_loading_max_percent == pytest.approx(
        float(np.nanmax(ref.res_line_3ph["loading_percent"])), rel=0.01)
    # The batch gives the same figures (lowest phase, highest phase kept aside).
    bus, line, trafo = f.solve_batch(zero[None], zero[None], np.array([[7.4] * 6]))
    assert line.max() == pytest.approx(r.line_loading_max_percent)
    assert bus.min() == pytest.approx(r.vm_min_pu)
    assert f.batch_vm_high_pu is not None
    assert f.batch_vm_high_pu.max() == pytest.approx(r.vm_max_pu)
    assert trafo.max() == pytest.approx(r.trafo_loading_percent)


def test_hosting_capacity_on_an_unbalanced_feeder_matches_single_power_flows() -> None:
    """A single-phase charger at the far end with an asymmetric band (0.90-1.03 pu: a low
    phase can hide a high one): at the capacity no limit breaks in a single power flow,
    1 kW above it one does."""
    from evtwin.grid import hosting_capacity

    net = load_network(NAME)
    limits = GridLimits(v_min_pu=0.90, v_max_pu=1.03)
    f = Feeder(net, n_stations=1, station_buses=[69], unbalanced=True,
               station_connections=[0], limits=limits)
    p = f.household_nominal_p_kw * 0.3 / 1000
    q = f.household_nominal_q_kvar * 0.3 / 1000
    [result] = hosting_capacity(f, p[None], q[None], tol_kw=0.05)
    assert 0 < result.capacity_kw < 500
    assert f.violations(f.solve_raw(p, q, [result.capacity_kw])) == []
    assert f.violations(f.solve_raw(p, q, [result.capacity_kw + 1.0])) != []


@pytest.mark.slow
def test_ieee_european_lv_feeder_with_its_own_zero_sequence_data() -> None:
    """The IEEE European LV test feeder (906 buses, 55 single-phase houses) as pandapower
    ships it, with its own zero-sequence line and transformer data (nothing filled):
    the Feeder's asymmetric flow with each house as a single-phase load on its own
    phase agrees with pandapower's runpp_3ph on the original network within 1e-3 pu."""
    import pandapower.networks as pn

    ref = pn.ieee_european_lv_asymmetric()
    loads = ref.asymmetric_load
    phases = np.argmax(loads[["p_a_mw", "p_b_mw", "p_c_mw"]].to_numpy() > 0, axis=1)
    p_kw = loads[["p_a_mw", "p_b_mw", "p_c_mw"]].sum(axis=1).to_numpy() * 1000.0
    # The Feeder's stations draw active power only: the reference at unity power factor.
    for col in ("q_a_mvar", "q_b_mvar", "q_c_mvar"):
        ref.asymmetric_load[col] = 0.0
    pp.runpp_3ph(ref)
    net = copy.deepcopy(ref)
    net.asymmetric_load.drop(net.asymmetric_load.index, inplace=True)
    f = Feeder(net, n_stations=len(loads), station_buses=[int(b) for b in loads.bus],
               unbalanced=True, station_connections=[int(k) for k in phases])
    # Lines and the transformer come with their own r0/x0 and vk0: only g0 (absent, 0)
    # and the source's short-circuit data are the model's to fill.
    assert not any(c.startswith(("line.r0", "line.x0", "line.c0", "trafo."))
                   for c in f.zero_sequence_filled), f.zero_sequence_filled
    result = f.solve_raw(np.zeros(0), np.zeros(0), p_kw.tolist())
    ref_vm = ref.res_bus_3ph.loc[f.bus_index, ["vm_a_pu", "vm_b_pu", "vm_c_pu"]].to_numpy()
    assert result.bus_vm_phase_pu is not None
    assert np.abs(result.bus_vm_phase_pu - ref_vm).max() < 1e-3
    assert result.vm_min_pu == pytest.approx(np.nanmin(ref_vm), abs=1e-3)
