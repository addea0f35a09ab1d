"""Smart-charging semantics of the CSMS (csms/profiles.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evtwin.csms.profiles import ChargingProfile, Period, ProfileError, ProfileSet, to_unit

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def prof(pid: int, purpose: str, limit: float | list[tuple[float, float]], *, evse: int = 1,
         stack: int = 0, kind: str = "Absolute", unit: str = "W", start: datetime | None = T0,
         tx: str | None = None, **kw: object) -> ChargingProfile:
    periods = ((Period(0, limit),) if isinstance(limit, int | float)
               else tuple(Period(s, v) for s, v in limit))
    return ChargingProfile(pid, evse, purpose, stack, kind, unit, periods,  # type: ignore[arg-type]
                           start_schedule=start, transaction_id=tx, **kw)  # type: ignore[arg-type]


def limit(ps: ProfileSet, at: datetime, **kw: object) -> float | None:
    args = {"evse_id": 1, "unit": "W", "phases": 3, **kw}
    return ps.limit_at(at, **args)  # type: ignore[arg-type]


def test_tx_profile_overrides_tx_default_only_for_its_transaction() -> None:
    ps = ProfileSet()
    ps.install(prof(1, "TxDefaultProfile", 7000, evse=0))
    ps.install(prof(2, "TxProfile", 3000, tx="T1"))
    assert limit(ps, T0, transaction_id="T1") == 3000
    assert limit(ps, T0, transaction_id="T2") == 7000
    ps.end_transaction("T1")
    assert limit(ps, T0, transaction_id="T1") == 7000


def test_highest_stack_level_wins_and_evse_specific_beats_station_wide_on_ties() -> None:
    ps = ProfileSet()
    ps.install(prof(1, "TxDefaultProfile", 5000, evse=0, stack=1))
    ps.install(prof(2, "TxDefaultProfile", 6000, evse=1, stack=1))
    ps.install(prof(3, "TxDefaultProfile", 9000, evse=1, stack=0))
    assert limit(ps, T0) == 6000
    ps.install(prof(4, "TxDefaultProfile", 4000, evse=0, stack=2))
    assert limit(ps, T0) == 4000


def test_station_max_and_external_constraints_cap_everything() -> None:
    ps = ProfileSet()
    ps.install(prof(1, "TxProfile", 11000, tx="T"))
    ps.install(prof(2, "ChargingStationMaxProfile", 8000, evse=0))
    assert limit(ps, T0, transaction_id="T") == 8000
    ps.install(prof(3, "ChargingStationExternalConstraints", 6000, evse=0))
    assert limit(ps, T0, transaction_id="T") == 6000
    assert limit(ps, T0, transaction_id="T", evse_max=5000) == 5000


def test_relative_profile_counts_from_the_transaction_start() -> None:
    ps = ProfileSet()
    ps.install(prof(1, "TxProfile", [(0, 2000), (1800, 9000)], kind="Relative", start=None,
                    tx="T"))
    tx_start = T0 + timedelta(hours=1)
    assert limit(ps, tx_start + timedelta(minutes=10), transaction_id="T",
                 tx_start=tx_start) == 2000
    assert limit(ps, tx_start + timedelta(minutes=40), transaction_id="T",
                 tx_start=tx_start) == 9000


def test_recurring_daily_profile_repeats_and_validity_ends_it() -> None:
    ps = ProfileSet()
    night = prof(1, "TxDefaultProfile", [(0, 11000), (12 * 3600, 3000)], kind="Recurring",
                 evse=0, recurrency="Daily", valid_to=T0 + timedelta(days=2))
    ps.install(night)
    assert limit(ps, T0 + timedelta(hours=1)) == 11000
    assert limit(ps, T0 + timedelta(hours=13)) == 3000
    assert limit(ps, T0 + timedelta(days=1, hours=1)) == 11000
    assert limit(ps, T0 + timedelta(days=1, hours=13)) == 3000
    assert limit(ps, T0 + timedelta(days=2, hours=1)) is None


def test_limits_in_amperes_convert_with_phases() -> None:
    ps = ProfileSet()
    ps.install(prof(1, "TxDefaultProfile", 16, unit="A"))
    assert limit(ps, T0) == pytest.approx(16 * 230 * 3)
    assert limit(ps, T0, phases=1) == pytest.approx(16 * 230)
    assert limit(ps, T0, unit="A") == pytest.approx(16)
    assert to_unit(to_unit(7400, "W", "A", 1), "A", "W", 1) == pytest.approx(7400)


def test_composite_schedule_merges_and_cuts_at_every_change() -> None:
    ps = ProfileSet()
    ps.install(prof(1, "TxDefaultProfile", [(0, 11000), (3600, 7000)], evse=0))
    ps.install(prof(2, "TxProfile", [(0, 4000), (600, 7000)], tx="T",
                    start=T0 + timedelta(minutes=30), duration_s=1800))
    sched = ps.composite_schedule(T0, 3 * 3600, evse_id=1, unit="W", phases=3,
                                  evse_max=11000, transaction_id="T")
    assert [(p.start_s, p.limit) for p in sched] == [
        (0, 11000), (1800, 4000), (2400, 7000)]  # 3600: TxDefault's 7000 = merged


def test_install_replaces_same_id_and_same_purpose_stack_evse() -> None:
    ps = ProfileSet()
    ps.install(prof(1, "TxDefaultProfile", 5000, evse=1))
    ps.install(prof(1, "TxDefaultProfile", 6000, evse=2))  # id 1 moves to EVSE 2
    ps.install(prof(2, "TxDefaultProfile", 7000, evse=2))  # same purpose/stack on EVSE 2
    assert [(p.profile_id, p.evse_id, p.periods[0].limit) for p in ps.profiles] == [
        (2, 2, 7000)]
    assert ps.clear(purpose="TxDefaultProfile") == 1
    assert ps.profiles == []


@pytest.mark.parametrize(("bad", "message"), [
    (prof(1, "TxProfile", 1000, evse=0, tx="T"), "EVSE id > 0"),
    (prof(1, "ChargingStationMaxProfile", 1000, evse=1), "must target EVSE 0"),
    (prof(1, "TxDefaultProfile", [(10, 1000)]), "first period must start at 0"),
    (prof(1, "TxDefaultProfile", [(0, 1000), (0, 2000)]), "must increase"),
    (prof(1, "TxDefaultProfile", 1000, kind="Recurring"), "recurrency"),
    (prof(1, "TxDefaultProfile", 1000, start=None), "start_schedule"),
])
def test_invalid_profiles_are_refused_with_the_rule(bad: ChargingProfile, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        ProfileSet().install(bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.floats(0, 22000),
                          st.integers(0, 7200)), min_size=1, max_size=6))
def test_composite_schedule_equals_the_pointwise_limit(specs: list[tuple[int, int, float, int]]
                                                       ) -> None:
    """Property: the composite schedule says, at every instant, what limit_at says."""
    ps = ProfileSet()
    purposes = ["TxDefaultProfile", "TxDefaultProfile", "TxProfile", "ChargingStationMaxProfile"]
    for i, (purpose_i, stack, value, offset) in enumerate(specs):
        purpose = purposes[purpose_i]
        evse = 0 if purpose == "ChargingStationMaxProfile" else 1
        ps.install(prof(i + 1, purpose, [(0, value), (900, value / 2)], evse=evse, stack=stack,
                        start=T0 + timedelta(seconds=offset), duration_s=3600,
                        tx="T" if purpose == "TxProfile" else None))
    sched = ps.composite_schedule(T0, 4 * 3600, evse_id=1, unit="W", phases=3,
                                  evse_max=22000, transaction_id="T")
    for probe in range(0, 4 * 3600, 97):
        at = T0 + timedelta(seconds=probe)
        expected = limit(ps, at, transaction_id="T", evse_max=22000)
        current = [p for p in sched if p.start_s <= probe][-1]
        assert current.limit == expected
