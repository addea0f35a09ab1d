"""Tests for evtwin.agents: battery physics, virtual station logic, driver behaviour."""

from __future__ import annotations

import itertools
import math
from typing import Any

import mesa
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from evtwin.agents import (
    DEFAULTS,
    EV,
    Behaviour,
    ChargingModel,
    Profile,
    ProfileRejected,
    SiteConfig,
    Vehicle,
    VirtualStation,
    Visit,
    charge,
)
from evtwin.agents.behaviour import draw_vehicle, draw_visit

EVSE_MAX_W = 11_000.0
REL = 1e-9


# --------------------------------------------------------------------------- battery
soc_st = st.floats(0.0, 0.99)
frac_st = st.floats(0.0, 1.0)
capacity_st = st.floats(10.0, 120.0)
power_st = st.floats(0.5, 50.0)
eff_st = st.floats(0.8, 1.0)
taper_st = st.floats(0.5, 0.95)
duration_st = st.floats(0.0, 24.0)


@st.composite
def charge_args(draw: st.DrawFn) -> dict[str, float]:
    soc = draw(soc_st)
    return {
        "soc": soc,
        "target_soc": soc + draw(frac_st) * (1.0 - soc),
        "capacity_kwh": draw(capacity_st),
        "limit_kw": draw(power_st),
        "ev_max_kw": draw(power_st),
        "efficiency": draw(eff_st),
        "taper_soc": draw(taper_st),
        "duration_h": draw(duration_st),
    }


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=REL)


@given(charge_args())
def test_charge_conserves_energy(args: dict[str, float]) -> None:
    r = charge(**args)
    assert _close(r.grid_kwh * args["efficiency"], r.battery_kwh)
    assert _close(r.battery_kwh, (r.soc_end - args["soc"]) * args["capacity_kwh"])


@given(charge_args())
def test_charge_soc_stays_between_start_and_target(args: dict[str, float]) -> None:
    r = charge(**args)
    assert r.soc_end >= args["soc"]
    assert r.soc_end <= args["target_soc"] + 1e-12
    assert r.battery_kwh >= 0.0


@given(charge_args())
def test_charge_bounded_by_limit_and_ev_max(args: dict[str, float]) -> None:
    r = charge(**args)
    eff, d = args["efficiency"], args["duration_h"]
    slack = 1e-9 * max(1.0, r.battery_kwh)
    assert r.battery_kwh <= args["limit_kw"] * d * eff + slack
    assert r.battery_kwh <= args["ev_max_kw"] * d * eff + slack


@given(charge_args(), st.floats(0.0, 1.0))
def test_charge_is_step_size_independent(args: dict[str, float], split: float) -> None:
    whole = charge(**args)
    first = charge(**{**args, "duration_h": args["duration_h"] * split})
    second = charge(**{**args, "soc": first.soc_end,
                       "duration_h": args["duration_h"] * (1.0 - split)})
    assert _close(second.soc_end, whole.soc_end)
    assert _close(first.grid_kwh + second.grid_kwh, whole.grid_kwh)
    assert _close(first.battery_kwh + second.battery_kwh, whole.battery_kwh)


@given(charge_args())
def test_charge_halves_equal_whole(args: dict[str, float]) -> None:
    half = args["duration_h"] / 2.0
    whole = charge(**args)
    a = charge(**{**args, "duration_h": half})
    b = charge(**{**args, "soc": a.soc_end, "duration_h": half})
    assert _close(b.soc_end, whole.soc_end)
    assert _close(a.grid_kwh + b.grid_kwh, whole.grid_kwh)


@given(charge_args())
def test_charge_zero_limit_gives_no_energy(args: dict[str, float]) -> None:
    r = charge(**{**args, "limit_kw": 0.0})
    assert r.soc_end == args["soc"]
    assert r.grid_kwh == 0.0
    assert r.battery_kwh == 0.0


@given(soc_st, capacity_st, power_st, power_st, eff_st, taper_st, st.floats(0.01, 0.99))
def test_charge_below_taper_and_limit_draws_min_of_limit_and_ev_max(
    soc: float, capacity: float, limit: float, ev_max: float, eff: float, taper: float,
    fraction: float,
) -> None:
    p_cc = min(limit, ev_max)
    # The SoC at which the taper would pull the power below p_cc.
    s_switch = 1.0 - (p_cc / ev_max) * (1.0 - taper)
    assume(soc < s_switch - 1e-3)
    # A duration that ends before the switch point (target above it).
    duration = fraction * (s_switch - soc) * capacity / (eff * p_cc)
    r = charge(soc=soc, target_soc=1.0, capacity_kwh=capacity, limit_kw=limit, ev_max_kw=ev_max,
               efficiency=eff, taper_soc=taper, duration_h=duration)
    assert math.isclose(r.grid_kwh / duration, p_cc, rel_tol=1e-9)


def test_charge_tapers_above_transition_soc() -> None:
    r = charge(soc=0.9, target_soc=1.0, capacity_kwh=60.0, limit_kw=11.0, ev_max_kw=11.0,
               efficiency=1.0, taper_soc=0.8, duration_h=0.25)
    # At 90 % SoC the taper allows half of P_ev at most, less as SoC rises.
    assert 0.0 < r.grid_kwh / 0.25 < 11.0 * (1.0 - 0.9) / (1.0 - 0.8)


# --------------------------------------------------------------------------- station fixtures
@pytest.fixture
def model() -> mesa.Model:
    return mesa.Model(rng=np.random.default_rng(0))


@pytest.fixture
def station(model: mesa.Model) -> VirtualStation:
    return VirtualStation(model, "CS1", "site", [EVSE_MAX_W, EVSE_MAX_W], phases=3)


def make_ev(model: mesa.Model, *, soc: float = 0.2, target: float = 0.9,
            capacity_kwh: float = 60.0, max_kw: float = 11.0, token: str = "TOKEN1") -> EV:
    vehicle = Vehicle(capacity_kwh=capacity_kwh, max_power_kw=max_kw, phases=3)
    visit = Visit(0.0, 36_000.0, soc, target, 900.0)
    ev = EV(model, f"EV-{token}", "site", vehicle, [visit], id_token=token)
    ev.begin_visit(visit)
    return ev


def make_profile(pid: int, limit: float, *, purpose: str = "TxDefaultProfile", stack: int = 0,
                 kind: str = "Absolute", unit: str = "W",
                 periods: list[tuple[float, float, int | None]] | None = None,
                 start_s: float | None = None, duration_s: float | None = None,
                 tx: str | None = None, valid_from_s: float | None = None,
                 valid_to_s: float | None = None) -> Profile:
    return Profile(
        profile_id=pid, purpose=purpose, stack_level=stack, kind=kind, unit=unit,
        periods=periods if periods is not None else [(0.0, limit, None)],
        start_s=start_s, duration_s=duration_s, transaction_id=tx,
        valid_from_s=valid_from_s, valid_to_s=valid_to_s,
    )


def plug_and_charge(station: VirtualStation, model: mesa.Model, evse_id: int = 1,
                    at_s: float = 0.0, **ev_kw: Any) -> tuple[EV, str]:
    ev = make_ev(model, **ev_kw)
    tx = station.plug(evse_id, ev, at_s)
    station.begin_charging(evse_id, tx, at_s)
    return ev, tx


# --------------------------------------------------------------------------- profiles
def test_no_profile_gives_hardware_limit(station: VirtualStation) -> None:
    assert station.limit_w(station.evses[1], 0.0) == EVSE_MAX_W


def test_tx_profile_overrides_tx_default(station: VirtualStation, model: mesa.Model) -> None:
    _, tx = plug_and_charge(station, model)
    station.set_profile(0, make_profile(1, 3_000.0, stack=5))
    station.set_profile(1, make_profile(2, 4_000.0, stack=9))
    assert station.limit_w(station.evses[1], 10.0) == 4_000.0
    # A TxProfile wins even when it allows more and has a lower stack level.
    station.set_profile(1, make_profile(3, 8_000.0, purpose="TxProfile", stack=0, tx=tx))
    assert station.limit_w(station.evses[1], 10.0) == 8_000.0
    # The other EVSE has no transaction: the TxDefault on EVSE 0 still applies there.
    assert station.limit_w(station.evses[2], 10.0) == 3_000.0


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_highest_stack_level_wins(station: VirtualStation, order: tuple[int, int]) -> None:
    limits = {1: 4_000.0, 2: 9_000.0}
    for stack in order:
        station.set_profile(0, make_profile(10 + stack, limits[stack], stack=stack))
    assert station.limit_w(station.evses[1], 0.0) == limits[2]


def test_same_purpose_and_stack_level_replaces(station: VirtualStation) -> None:
    station.set_profile(1, make_profile(1, 4_000.0, stack=1))
    station.set_profile(1, make_profile(2, 6_000.0, stack=1))
    assert [p.profile_id for p in station.evses[1].profiles] == [2]
    assert station.limit_w(station.evses[1], 0.0) == 6_000.0


@pytest.mark.parametrize(("limit_a", "n_phases", "evse_phases"),
                         [(10.0, None, 3), (10.0, 1, 3), (16.0, None, 1), (8.0, 2, 3)])
def test_ampere_limits_convert_with_230_v_per_phase(
    model: mesa.Model, limit_a: float, n_phases: int | None, evse_phases: int,
) -> None:
    station = VirtualStation(model, "CSA", "site", [50_000.0], phases=evse_phases)
    station.set_profile(0, make_profile(1, limit_a, unit="A",
                                        periods=[(0.0, limit_a, n_phases)]))
    expected = limit_a * 230.0 * (n_phases or evse_phases)
    assert station.limit_w(station.evses[1], 0.0) == pytest.approx(expected, rel=1e-12)


def test_relative_profile_switches_periods_from_transaction_start(
    station: VirtualStation, model: mesa.Model,
) -> None:
    t0 = 500.0
    plug_and_charge(station, model, at_s=t0)
    station.set_profile(1, make_profile(1, 0.0, kind="Relative",
                                        periods=[(0.0, 3_000.0, None), (1_800.0, 6_000.0, None)]))
    evse = station.evses[1]
    assert station.limit_w(evse, t0) == 3_000.0
    assert station.limit_w(evse, t0 + 1_799.0) == 3_000.0
    assert station.limit_w(evse, t0 + 1_800.0) == 6_000.0
    assert station.limit_w(evse, t0 + 86_400.0) == 6_000.0


def test_absolute_profile_periods_and_duration(station: VirtualStation) -> None:
    start, dur = 1_000.0, 1_200.0
    station.set_profile(0, make_profile(1, 0.0, start_s=start, duration_s=dur,
                                        periods=[(0.0, 2_000.0, None), (600.0, 4_000.0, None)]))
    evse = station.evses[1]
    assert station.limit_w(evse, start - 1.0) == EVSE_MAX_W  # not started yet
    assert station.limit_w(evse, start) == 2_000.0
    assert station.limit_w(evse, start + 599.0) == 2_000.0
    assert station.limit_w(evse, start + 600.0) == 4_000.0
    assert station.limit_w(evse, start + dur - 1.0) == 4_000.0
    assert station.limit_w(evse, start + dur) == EVSE_MAX_W  # expired


def test_valid_from_and_valid_to(station: VirtualStation) -> None:
    station.set_profile(0, make_profile(1, 2_500.0, valid_from_s=100.0, valid_to_s=500.0))
    evse = station.evses[1]
    assert station.limit_w(evse, 99.0) == EVSE_MAX_W
    assert station.limit_w(evse, 100.0) == 2_500.0
    assert station.limit_w(evse, 499.0) == 2_500.0
    assert station.limit_w(evse, 500.0) == EVSE_MAX_W


def test_expired_tx_profile_falls_back_to_tx_default(
    station: VirtualStation, model: mesa.Model,
) -> None:
    _, tx = plug_and_charge(station, model)
    station.set_profile(0, make_profile(1, 3_000.0))
    station.set_profile(1, make_profile(2, 7_000.0, purpose="TxProfile", tx=tx, valid_to_s=60.0))
    assert station.limit_w(station.evses[1], 59.0) == 7_000.0
    assert station.limit_w(station.evses[1], 60.0) == 3_000.0


def test_tx_profile_for_another_transaction_is_rejected(
    station: VirtualStation, model: mesa.Model,
) -> None:
    _, tx = plug_and_charge(station, model)
    with pytest.raises(ProfileRejected):
        station.set_profile(1, make_profile(1, 1_000.0, purpose="TxProfile", tx=tx + "-other"))
    with pytest.raises(ProfileRejected):  # EVSE 2 has no transaction at all
        station.set_profile(2, make_profile(2, 1_000.0, purpose="TxProfile", tx=tx))
    assert station.evses[1].profiles == []
    assert station.evses[2].profiles == []


def test_tx_profile_on_evse_0_is_rejected(station: VirtualStation, model: mesa.Model) -> None:
    _, tx = plug_and_charge(station, model)
    with pytest.raises(ProfileRejected) as info:
        station.set_profile(0, make_profile(1, 1_000.0, purpose="TxProfile", tx=tx))
    assert info.value.reason
    assert station.station_profiles == []


@pytest.mark.parametrize(("evse_id", "purpose"), [
    (1, "ChargingStationMaxProfile"),        # must target EVSE 0
    (3, "TxDefaultProfile"),                 # no such EVSE
    (0, "ChargingStationExternalConstraints"),  # not supported
])
def test_invalid_profiles_are_rejected(
    station: VirtualStation, evse_id: int, purpose: str,
) -> None:
    with pytest.raises(ProfileRejected):
        station.set_profile(evse_id, make_profile(1, 1_000.0, purpose=purpose))
    assert station.station_profiles == []
    assert all(e.profiles == [] for e in station.evses.values())


def test_charging_station_max_profile_caps_each_evse(
    station: VirtualStation, model: mesa.Model,
) -> None:
    _, tx = plug_and_charge(station, model)
    station.set_profile(1, make_profile(1, 8_000.0, purpose="TxProfile", tx=tx))
    station.set_profile(0, make_profile(2, 5_000.0, purpose="ChargingStationMaxProfile"))
    assert station.limit_w(station.evses[1], 0.0) == 5_000.0
    assert station.limit_w(station.evses[2], 0.0) == 5_000.0


def test_charging_station_max_profile_caps_the_whole_station(
    station: VirtualStation, model: mesa.Model,
) -> None:
    cap_w = 11_000.0
    plug_and_charge(station, model, 1, token="T1")
    plug_and_charge(station, model, 2, token="T2")
    station.set_profile(0, make_profile(1, cap_w, purpose="ChargingStationMaxProfile"))
    mean_power_w = station.advance(3_600.0, 3_600.0)
    assert mean_power_w <= cap_w * (1 + 1e-9)


def test_profile_with_same_id_on_another_evse_replaces_it(station: VirtualStation) -> None:
    station.set_profile(1, make_profile(7, 3_000.0))
    station.set_profile(2, make_profile(7, 5_000.0))
    assert station.limit_w(station.evses[1], 0.0) == EVSE_MAX_W
    assert station.limit_w(station.evses[2], 0.0) == 5_000.0


def test_clear_profiles_by_id(station: VirtualStation) -> None:
    station.set_profile(0, make_profile(1, 3_000.0, stack=1))
    station.set_profile(1, make_profile(2, 4_000.0, stack=2))
    assert station.clear_profiles(profile_id=2) == 1
    assert station.limit_w(station.evses[1], 0.0) == 3_000.0
    assert station.clear_profiles(profile_id=2) == 0
    assert station.clear_profiles(profile_id=1) == 1
    assert station.limit_w(station.evses[1], 0.0) == EVSE_MAX_W


def test_clear_profiles_by_criteria(station: VirtualStation, model: mesa.Model) -> None:
    _, tx = plug_and_charge(station, model)
    station.set_profile(0, make_profile(1, 3_000.0, stack=0))
    station.set_profile(0, make_profile(2, 3_500.0, stack=1))
    station.set_profile(1, make_profile(3, 4_000.0, stack=1))
    station.set_profile(2, make_profile(4, 4_500.0, stack=1))
    station.set_profile(1, make_profile(5, 6_000.0, purpose="TxProfile", tx=tx))

    assert station.clear_profiles(purpose="TxProfile") == 1
    assert [p.profile_id for p in station.evses[1].profiles] == [3]
    assert station.clear_profiles(evse_id=2) == 1
    assert station.evses[2].profiles == []
    assert station.clear_profiles(evse_id=0, stack_level=1) == 1
    assert [p.profile_id for p in station.station_profiles] == [1]
    # Criteria combine with AND: nothing on EVSE 1 at stack level 0.
    assert station.clear_profiles(evse_id=1, stack_level=0) == 0
    assert station.clear_profiles() == 2
    assert station.station_profiles == [] and station.evses[1].profiles == []


def test_unplug_drops_tx_profiles_only(station: VirtualStation, model: mesa.Model) -> None:
    _, tx = plug_and_charge(station, model)
    station.set_profile(1, make_profile(1, 4_000.0))
    station.set_profile(1, make_profile(2, 6_000.0, purpose="TxProfile", tx=tx))
    station.unplug(1, 60.0)
    assert [p.profile_id for p in station.evses[1].profiles] == [1]
    assert station.limit_w(station.evses[1], 120.0) == 4_000.0


# --------------------------------------------------------------------------- metering
def test_register_grows_by_the_evs_grid_energy(station: VirtualStation, model: mesa.Model) -> None:
    ev, _ = plug_and_charge(station, model, soc=0.3, target=0.95)
    soc0 = ev.soc
    station.set_profile(0, make_profile(1, 7_000.0))
    before = station.evses[1].register_wh
    mean_w = station.advance(1_800.0, 1_800.0)
    expected = charge(soc=soc0, target_soc=0.95, capacity_kwh=60.0, limit_kw=7.0,
                      ev_max_kw=11.0, efficiency=ev.vehicle.efficiency,
                      taper_soc=ev.vehicle.taper_soc, duration_h=0.5)
    delta_wh = station.evses[1].register_wh - before
    assert delta_wh == pytest.approx(expected.grid_kwh * 1000.0, rel=1e-12)
    assert delta_wh == pytest.approx(ev.energy_grid_kwh * 1000.0, rel=1e-12)
    assert ev.soc == pytest.approx(expected.soc_end, rel=1e-12)
    assert mean_w == pytest.approx(delta_wh * 3_600.0 / 1_800.0, rel=1e-12)
    assert station.evses[1].power_w == pytest.approx(mean_w, rel=1e-12)


def test_register_accumulates_over_steps_and_is_monotone(
    station: VirtualStation, model: mesa.Model,
) -> None:
    ev, _ = plug_and_charge(station, model, soc=0.5, target=1.0)
    readings = [station.evses[1].register_wh]
    for k in range(1, 31):
        station.advance(k * 600.0, 600.0)
        readings.append(station.evses[1].register_wh)
    assert all(b >= a for a, b in itertools.pairwise(readings))
    assert readings[-1] - readings[0] == pytest.approx(ev.energy_grid_kwh * 1000.0, rel=1e-9)
    assert ev.soc <= 1.0


def test_no_power_before_begin_charging(station: VirtualStation, model: mesa.Model) -> None:
    ev = make_ev(model)
    tx = station.plug(1, ev, 0.0)
    station.advance(600.0, 600.0)
    assert station.evses[1].register_wh == 0.0
    station.begin_charging(1, tx, 600.0)
    station.advance(1_200.0, 600.0)
    grid_wh = station.evses[1].register_wh
    assert grid_wh > 0.0
    # Only the 600 s after the CSMS accepted count.
    assert grid_wh <= 11.0 * 1000.0 * 600.0 / 3_600.0 * (1 + 1e-9)


def test_begin_charging_for_a_stale_transaction_does_nothing(
    station: VirtualStation, model: mesa.Model,
) -> None:
    ev = make_ev(model)
    tx = station.plug(1, ev, 0.0)
    station.unplug(1, 30.0)
    station.begin_charging(1, tx, 60.0)
    assert not station.evses[1].charging


def test_plug_and_unplug_events_are_queued_in_order(
    station: VirtualStation, model: mesa.Model,
) -> None:
    ev1 = make_ev(model, soc=0.25, token="T1")
    ev2 = make_ev(model, soc=0.4, token="T2")
    tx1 = station.plug(1, ev1, 10.0)
    station.begin_charging(1, tx1, 10.0)
    tx2 = station.plug(2, ev2, 20.0)
    assert tx1 != tx2
    station.advance(600.0, 600.0)
    seq = [station.next_seq_no(1), station.next_seq_no(1)]
    register_before_unplug = station.evses[1].register_wh
    station.unplug(1, 900.0)
    charged_until_unplug = station.evses[1].register_wh
    assert charged_until_unplug > register_before_unplug > 0.0

    events = list(station.events)
    assert [(e.kind, e.evse_id, e.at_s) for e in events] == [
        ("plug", 1, 10.0), ("plug", 2, 20.0), ("unplug", 1, 900.0)]
    plug1, plug2, unplug1 = events
    assert plug1.payload == {"transaction_id": tx1, "register_wh": 0.0, "id_token": "T1",
                             "soc": 0.25, "needs": None}
    assert plug2.payload["transaction_id"] == tx2
    assert plug2.payload["id_token"] == "T2"
    assert unplug1.payload["transaction_id"] == tx1
    assert unplug1.payload["register_wh"] == charged_until_unplug
    assert unplug1.payload["seq_no"] == seq[-1] + 1
    assert unplug1.payload["soc"] == ev1.soc
    evse = station.evses[1]
    assert evse.transaction_id is None and evse.ev is None and evse.status == "Available"


def test_plug_reports_the_register_at_plug_time(station: VirtualStation, model: mesa.Model) -> None:
    plug_and_charge(station, model, token="T1")
    station.unplug(1, 1_800.0)
    register = station.evses[1].register_wh
    assert register > 0.0
    ev2 = make_ev(model, token="T2")
    station.plug(1, ev2, 2_000.0)
    assert station.events[-1].payload["register_wh"] == register
    assert station.evses[1].seq_no == 0


def test_station_energy_does_not_depend_on_step_size_across_a_period_switch(
    model: mesa.Model,
) -> None:
    periods: list[tuple[float, float, int | None]] = [(0.0, 3_000.0, None),
                                                     (1_800.0, 9_000.0, None)]
    registers = []
    for steps in ([3_600.0], [1_800.0, 3_600.0]):
        station = VirtualStation(model, f"CS{len(steps)}", "site", [EVSE_MAX_W])
        plug_and_charge(station, model, soc=0.2, target=0.9)
        station.set_profile(0, make_profile(1, 0.0, start_s=0.0, periods=periods))
        last = 0.0
        for t in steps:
            station.advance(t, t - last)
            last = t
        registers.append(station.evses[1].register_wh)
    assert registers[0] == pytest.approx(registers[1], rel=1e-9)


# --------------------------------------------------------------------------- behaviour
kinds = st.sampled_from(sorted(DEFAULTS))
seeds = st.integers(0, 2**32 - 1)
start_hours = st.floats(0.0, 23.99)


def _draw(seed: int, kind: str, start_hour: float, day: int) -> tuple[Vehicle, Visit]:
    rng = np.random.default_rng(seed)
    vehicle = draw_vehicle(rng)
    return vehicle, draw_visit(rng, DEFAULTS[kind], vehicle, day * 86_400.0, start_hour)


@given(seeds, kinds, start_hours)
def test_draws_are_deterministic_per_seed(seed: int, kind: str, start_hour: float) -> None:
    assert _draw(seed, kind, start_hour, 0) == _draw(seed, kind, start_hour, 0)


@given(seeds, kinds, start_hours, st.integers(0, 30))
@settings(max_examples=200)
def test_visit_draws_respect_configured_bounds(
    seed: int, kind: str, start_hour: float, day: int,
) -> None:
    b: Behaviour = DEFAULTS[kind]
    vehicle, visit = _draw(seed, kind, start_hour, day)
    day_start = day * 86_400.0
    offset_h = (visit.arrival_s - day_start) / 3_600.0
    assert 0.0 <= offset_h < 24.0
    hour = (start_hour + offset_h) % 24.0
    assert b.arrival_min_h - 1e-9 <= hour <= b.arrival_max_h + 1e-9
    dwell_h = (visit.departure_s - visit.arrival_s) / 3_600.0
    assert visit.departure_s > visit.arrival_s
    assert b.dwell_min_h - 1e-9 <= dwell_h <= b.dwell_max_h + 1e-9
    assert 0.0 < visit.soc_initial <= visit.target_soc <= 1.0
    wanted_kwh = (visit.target_soc - visit.soc_initial) * vehicle.capacity_kwh
    assert wanted_kwh <= b.energy_max_kwh + 1e-9
    assert visit.patience_s == b.patience_min * 60.0


def _site(ev_count: int) -> SiteConfig:
    return SiteConfig(name="street", kind="home", stations=3, evses_per_station=1,
                      evse_max_kw=11.0, phases=3, behaviour=DEFAULTS["home"], ev_count=ev_count)


def _fingerprint(m: ChargingModel) -> list[tuple[object, ...]]:
    return [(ev.ev_id, ev.id_token, ev.vehicle, tuple(ev.visits)) for ev in m.evs]


def test_model_replays_exactly_from_its_seed() -> None:
    kw = {"duration_s": 3 * 86_400.0, "start_hour": 12.0}
    a = ChargingModel([_site(6)], seed=42, **kw)
    b = ChargingModel([_site(6)], seed=42, **kw)
    c = ChargingModel([_site(6)], seed=43, **kw)
    assert _fingerprint(a) == _fingerprint(b)
    assert _fingerprint(a) != _fingerprint(c)
    assert [s.station_id for s in a.stations] == ["street-001", "street-002", "street-003"]


def test_model_visits_fall_inside_the_run_and_leave_after_arriving() -> None:
    duration_s = 2 * 86_400.0
    m = ChargingModel([_site(10)], seed=3, duration_s=duration_s, start_hour=6.0)
    assert len(m.evs) == 10
    for ev in m.evs:
        assert ev.visits, ev.ev_id
        for visit in ev.visits:
            assert 0.0 <= visit.arrival_s < duration_s
            assert visit.departure_s > visit.arrival_s
        arrivals = [v.arrival_s for v in ev.visits]
        assert arrivals == sorted(arrivals)


# --------------------------------------------------------------------------- weekdays
def _week(kind: str, *, start_weekday: int = 0, **overrides: float) -> ChargingModel:
    from dataclasses import replace

    site = SiteConfig(name=kind, kind=kind, stations=40, evses_per_station=1, evse_max_kw=11.0,
                      phases=3, behaviour=replace(DEFAULTS[kind], **overrides), ev_count=40)
    return ChargingModel([site], seed=5, duration_s=14 * 86400.0, start_hour=0.0,
                         start_weekday=start_weekday)


def _visits_by_weekday(m: ChargingModel, start_weekday: int = 0) -> np.ndarray:
    from evtwin.agents.model import weekday

    counts = np.zeros(7)
    for ev in m.evs:
        for v in ev.visits:
            counts[weekday(v.arrival_s, 0.0, start_weekday)] += 1
    return counts


def test_workplace_chargers_are_quiet_at_weekends_and_homes_are_not() -> None:
    work = _visits_by_weekday(_week("workplace"))
    home = _visits_by_weekday(_week("home"))
    assert work[:5].min() == 80  # 40 drivers, every weekday of two weeks
    assert work[5:].sum() < 0.25 * work[:2].sum()  # about 10 % come in at weekends
    assert home[5:].mean() > 0.75 * home[:5].mean()  # about 90 % charge at home


def test_weekend_share_leaves_weekday_visits_alone() -> None:
    def weekday_visits(m: ChargingModel) -> list[float]:
        from evtwin.agents.model import weekday

        return [v.arrival_s for ev in m.evs for v in ev.visits
                if weekday(v.arrival_s, 0.0, 0) < 5]

    none, all_ = _week("public", weekend_share=0.0), _week("public", weekend_share=1.0)
    assert _visits_by_weekday(none)[5:].sum() == 0
    assert _visits_by_weekday(all_)[5:].min() == 80
    assert weekday_visits(none) == weekday_visits(all_)


def test_the_calendar_follows_the_start_day() -> None:
    # Starting on a Saturday: the first two days are the weekend.
    work = _visits_by_weekday(_week("workplace", start_weekday=5), start_weekday=5)
    assert work[5:].sum() < 20 and work[:5].min() == 80
