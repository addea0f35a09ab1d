"""One smart-charging arithmetic for the stations and the CSMS (ocppj/smartcharging.py).

The station (simulated seconds) and the CSMS (aware datetimes, profiles as it
keeps them) must compute the same limit from the same profiles: checked on
random profile sets, and on the case they used to disagree on (a
ChargingStationMaxProfile over several EVSEs, OCPP 2.0.1 K01: it limits the
station as a whole).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import mesa
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evtwin.agents import EV, Vehicle, VirtualStation, Visit
from evtwin.agents.station import Profile
from evtwin.csms.profiles import ChargingProfile, Period, ProfileSet
from evtwin.ocppj.smartcharging import composite_limit

START = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)


def _station(n_evses: int = 2) -> tuple[VirtualStation, list[str]]:
    model = mesa.Model(rng=np.random.default_rng(0))
    station = VirtualStation(model, "CS1", "site", [22_000.0] * n_evses)
    txs = []
    for evse_id in range(1, n_evses + 1):
        vehicle = Vehicle(capacity_kwh=60.0, max_power_kw=22.0, phases=3)
        visit = Visit(0.0, 86_400.0, 0.2, 0.9, 900.0)
        ev = EV(model, f"EV{evse_id}", "site", vehicle, [visit], id_token=f"T{evse_id}")
        ev.begin_visit(visit)
        tx = station.plug(evse_id, ev, 0.0)
        station.begin_charging(evse_id, tx, 0.0)
        txs.append(tx)
    return station, txs


def _both(station: VirtualStation, evse_id: int, profile: ChargingProfile) -> None:
    """Install on the station (simulated seconds) and return nothing; the CSMS side is
    the caller's ProfileSet."""
    station.set_profile(evse_id, Profile(
        profile_id=profile.profile_id, purpose=profile.purpose,
        stack_level=profile.stack_level, kind=profile.kind, unit=profile.unit,
        periods=[(p.start_s, p.limit, p.phases) for p in profile.periods],
        start_s=(profile.start_schedule - START).total_seconds()
        if profile.start_schedule else None,
        duration_s=profile.duration_s, transaction_id=profile.transaction_id,
        recurrency=profile.recurrency))


def test_a_station_maximum_is_shared_by_the_charging_evses_on_both_sides() -> None:
    station, txs = _station(2)
    cap = ChargingProfile(1, 0, "ChargingStationMaxProfile", 0, "Absolute", "W",
                          (Period(0, 10_000.0),), start_schedule=START)
    csms = ProfileSet()
    csms.install(cap)
    _both(station, 0, cap)
    at = START + timedelta(hours=1)
    for evse_id, tx in zip((1, 2), txs, strict=True):
        station_w = station.limit_w(station.evses[evse_id], 3600.0)
        csms_w = csms.limit_at(at, evse_id=evse_id, unit="W", phases=3, evse_max=22_000.0,
                               transaction_id=tx, tx_start=START, sharing=2)
        assert station_w == csms_w == 5_000.0
    # One EVSE left: it may take the whole maximum, on both sides.
    station.unplug(2, 3600.0)
    assert station.limit_w(station.evses[1], 3600.0) == 10_000.0
    assert csms.limit_at(at, evse_id=1, unit="W", phases=3, evse_max=22_000.0,
                         transaction_id=txs[0], tx_start=START, sharing=1) == 10_000.0


def test_a_recurring_profile_is_not_active_before_its_first_start() -> None:
    daily = ChargingProfile(3, 0, "TxDefaultProfile", 0, "Recurring", "W",
                            (Period(0, 4_000.0),), start_schedule=START + timedelta(days=1),
                            recurrency="Daily")
    station, _txs = _station(1)
    _both(station, 0, daily)
    assert station.limit_w(station.evses[1], 3600.0) == 22_000.0  # not yet
    assert station.limit_w(station.evses[1], 86_400.0 + 60) == 4_000.0
    assert station.limit_w(station.evses[1], 3 * 86_400.0 + 60) == 4_000.0  # recurring


_profile = st.builds(
    lambda pid, purpose, stack, unit, limits, starts, start_h, duration_h, kind: (
        purpose, ChargingProfile(
            pid, 0 if purpose == "ChargingStationMaxProfile" else 1, purpose, stack, kind,
            unit, tuple(Period(s, lim) for s, lim in zip([0, *sorted(set(starts))], limits,
                                                        strict=False)),
            start_schedule=START + timedelta(hours=start_h),
            duration_s=None if duration_h is None else duration_h * 3600.0,
            recurrency="Daily" if kind == "Recurring" else None)),
    st.integers(1, 10_000),
    st.sampled_from(["TxDefaultProfile", "ChargingStationMaxProfile"]),
    st.integers(0, 3), st.sampled_from(["W", "A"]),
    st.lists(st.floats(0, 40_000), min_size=1, max_size=4),
    st.lists(st.integers(60, 20_000), max_size=3),
    st.integers(0, 30), st.one_of(st.none(), st.integers(1, 30)),
    st.sampled_from(["Absolute", "Recurring"]))


@settings(max_examples=150, deadline=None)
@given(profiles=st.lists(_profile, min_size=1, max_size=5),
       hour=st.floats(0, 72), n_charging=st.integers(1, 2))
def test_the_station_and_the_csms_agree_on_random_profiles(
        profiles: list[tuple[str, ChargingProfile]], hour: float, n_charging: int) -> None:
    station, txs = _station(2)
    if n_charging == 1:
        station.unplug(2, 0.0)
    csms = ProfileSet()
    for _, profile in profiles:
        csms.install(profile)
        _both(station, profile.evse_id, profile)
    t_s = round(hour * 3600.0, 3)
    at = START + timedelta(seconds=t_s)
    station_w = station.limit_w(station.evses[1], t_s)
    csms_w = csms.limit_at(at, evse_id=1, unit="W", phases=3, evse_max=22_000.0,
                           transaction_id=txs[0], tx_start=START, sharing=n_charging)
    assert station_w == pytest.approx(csms_w, rel=1e-12, abs=1e-9)


def test_the_rules_on_their_own() -> None:
    """K01: a TxProfile beats TxDefaultProfiles whatever their stack level; an EVSE's
    own default beats the station's at equal stack level; never negative."""
    from evtwin.ocppj.smartcharging import Profile as P
    tx = P(1, "TxProfile", 0, "Absolute", "W", [(0.0, 3_000.0, None)], 0.0, None, "T1")
    mine = P(2, "TxDefaultProfile", 5, "Absolute", "W", [(0.0, 6_000.0, None)], 0.0, None,
             None)
    station_default = P(3, "TxDefaultProfile", 5, "Absolute", "W", [(0.0, 9_000.0, None)],
                        0.0, None, None)
    negative = P(4, "ChargingStationMaxProfile", 0, "Absolute", "W", [(0.0, -5.0, None)],
                 0.0, None, None)
    both = [(1, mine), (0, station_default)]
    assert composite_limit([(1, tx), *both], 10.0, evse_id=1, unit="W", phases=3,
                           transaction_id="T1") == 3_000.0
    assert composite_limit(both, 10.0, evse_id=1, unit="W", phases=3) == 6_000.0
    assert composite_limit([(0, station_default)], 10.0, evse_id=1, unit="A",
                           phases=3) == pytest.approx(9_000.0 / 690.0)
    assert composite_limit([(0, negative)], 10.0, evse_id=1, unit="W", phases=3) == 0.0
    assert composite_limit([], 10.0, evse_id=1, unit="W", phases=3) is None
