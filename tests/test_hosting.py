"""Hosting capacity (grid/hosting.py) against pandapower: a brute-force bisection of
single ``pp.runpp`` calls per bus, and what a radial feeder must show."""

from __future__ import annotations

import copy
import itertools

import networkx as nx
import numpy as np
import pandapower as pp
import pandapower.topology as top
import pytest

from evtwin.grid import (
    BaseLoadProfile,
    Feeder,
    GridLimits,
    distance_from_source_km,
    hosting_capacity,
    load_buses,
    load_cases,
    load_network,
)

LIMITS = GridLimits(v_min_pu=0.95, line_loading_max_percent=100.0)
NAME = "cigre_lv"


def feeder(name: str, scale: float, buses: list[int] | None = None,
           limits: GridLimits = LIMITS) -> Feeder:
    net = load_network(name)
    buses = load_buses(net) if buses is None else buses
    return Feeder(net, n_stations=len(buses), station_buses=buses, limits=limits,
                  base_profile=BaseLoadProfile(scale=scale))


def brute_force_kw(name: str, f: Feeder, household_p_mw: np.ndarray,
                   household_q_mvar: np.ndarray, bus: int, *, max_kw: float = 500.0,
                   tol_kw: float = 0.05) -> float:
    """Bisection with one pandapower power flow per step on a plain copy of the network:
    the households at the case's powers, one extra load at ``bus``, limits checked on
    pandapower's own results."""
    net = copy.deepcopy(load_network(name))
    net.load["p_mw"] = household_p_mw
    net.load["q_mvar"] = household_q_mvar
    net.load["scaling"] = 1.0
    extra = pp.create_load(net, bus, p_mw=0.0, q_mvar=0.0)
    supplied = [int(b) for b in f.bus_index[f.monitored_bus_rows]]
    lim = f.limits

    def holds(kw: float) -> bool:
        net.load.at[extra, "p_mw"] = kw / 1000.0
        try:
            pp.runpp(net, numba=False, trafo_loading="power")
        except pp.LoadflowNotConverged:
            return False
        vm = net.res_bus.loc[supplied, "vm_pu"]
        return bool(vm.min() >= lim.v_min_pu and vm.max() <= lim.v_max_pu
                    and np.nanmax(net.res_line["loading_percent"]) <= lim.line_loading_max_percent
                    and np.nanmax(net.res_trafo["loading_percent"])
                    <= lim.trafo_loading_max_percent)

    lo, hi = 0.0, max_kw
    if not holds(lo):
        return 0.0
    if holds(hi):
        return hi
    while hi - lo > tol_kw:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return lo


@pytest.mark.slow
def test_capacity_per_bus_agrees_with_pandapower_bisection() -> None:
    """On CIGRE LV (voltage binds at some buses, the transformer at others), every
    bus's capacity agrees with single pandapower power flows within 2 %."""
    f = feeder(NAME, 1.0, limits=GridLimits())
    p, q, _ = load_cases(f)
    results = hosting_capacity(f, p, q, tol_kw=0.05)
    assert {r.binding.split()[0] for r in results} >= {"bus", "trafo"}
    for r in results:
        reference = brute_force_kw(NAME, f, p[0], q[0], r.bus)
        assert r.capacity_kw == pytest.approx(reference, rel=0.02, abs=0.1), r


def test_capacity_falls_with_distance_along_a_radial_branch() -> None:
    """Along one branch of the Kerber village feeder, from the transformer outwards,
    each bus takes no more than the one before it (voltage binding: v_min 0.97)."""
    net = load_network("kerber_dorfnetz")
    distance = distance_from_source_km(net)
    # The branch: the path from the transformer's LV bus to the farthest load bus.
    graph = top.create_nxgraph(net)
    far = max(load_buses(net), key=lambda b: distance[b])
    lv_bus = int(net.trafo.lv_bus.iloc[0])
    path = [int(b) for b in nx.shortest_path(graph, lv_bus, far)]
    on_path = path[1:]  # every bus of the branch beyond the transformer's LV bus
    assert len(on_path) >= 5
    f = feeder("kerber_dorfnetz", 0.5, on_path, GridLimits(v_min_pu=0.97))
    p, q, _ = load_cases(f)
    results = hosting_capacity(f, p, q, tol_kw=0.05)
    caps = [r.capacity_kw for r in results]
    dists = [r.distance_km for r in results]
    assert dists == sorted(dists)
    assert all(b <= a + 0.1 for a, b in itertools.pairwise(caps)), caps
    assert caps[0] > 1.5 * caps[-1]  # distance costs capacity


def test_a_day_study_binds_at_the_worst_hour_and_names_it() -> None:
    """Over a day the capacity is the worst hour's, and that hour is named (with the
    residential profile's evening peak, 20 h)."""
    f = feeder(NAME, 1.0, limits=GridLimits())
    p, q, hours = load_cases(f, range(24))
    day = hosting_capacity(f, p, q)
    pw, qw, worst = load_cases(f)
    peak = hosting_capacity(f, pw, qw)
    for d, w in zip(day, peak, strict=True):
        assert d.capacity_kw == pytest.approx(w.capacity_kw, abs=0.2)
        assert hours[d.case] == worst[0]


def test_a_limit_broken_without_any_charger_gives_zero() -> None:
    f = feeder(NAME, 1.0, limits=GridLimits(v_min_pu=1.0))  # impossible band
    p, q, _ = load_cases(f)
    results = hosting_capacity(f, p, q)
    assert all(r.capacity_kw == 0.0 and r.binding.startswith("bus") for r in results)
