"""Deadline-, price- and PV-aware strategies, and equal_share's taper-aware caps."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evtwin.csms.model import ControlView, SessionView, SiteView
from evtwin.csms.scheduling import (
    edf,
    greedy_fill,
    laxity_h,
    llf,
    price,
    pv_self_consumption,
    step_value,
)
from evtwin.csms.strategies import (
    Limits,
    Strategy,
    equal_share,
    get_strategy,
    hardware_cap_kw,
    strategy_names,
)

T0 = datetime(2026, 6, 1, 17, 0, tzinfo=UTC)
H = timedelta(hours=1)
STRATEGIES: dict[str, Strategy] = {
    "equal_share": equal_share, "edf": edf, "llf": llf, "price": price,
    "pv_self_consumption": pv_self_consumption,
}


def ev(name: str, *, departs_h: float | None = 4.0, need_kwh: float | None = 10.0,
       evse_kw: float = 11.0, ev_max_kw: float | None = None, power_kw: float = 0.0,
       limit_kw: float | None = None, stated: bool = True) -> SessionView:
    """One session at T0 on station ``name``, EVSE 1."""
    return SessionView(
        station_id=name, evse_id=1, transaction_id=f"tx-{name}", max_power_kw=evse_kw,
        power_kw=power_kw, energy_kwh=0.0, voltage_v=None, soc_percent=None, started_at=T0,
        departure=None if departs_h is None else T0 + departs_h * H,
        energy_remaining_kwh=need_kwh, needs_stated=stated, ev_max_kw=ev_max_kw,
        limit_kw=limit_kw)


def view(*sessions: SessionView, limit_kw: float | None = 11.0, now: datetime = T0,
         prices: tuple[tuple[datetime, float], ...] = (),
         pv: tuple[tuple[datetime, float], ...] = ()) -> ControlView:
    """A one-site view."""
    return ControlView(now=now, sites=(SiteView("site", limit_kw, tuple(sessions)),),
                       prices=prices, pv_forecast_kw=pv)


def k(name: str) -> tuple[str, int]:
    return (name, 1)


# --------------------------------------------------------------------------- properties
@st.composite
def session_views(draw: st.DrawFn, name: str) -> SessionView:
    evse_kw = draw(st.sampled_from([3.7, 7.4, 11.0, 22.0, 50.0]))
    limit = draw(st.one_of(st.none(), st.floats(0.0, 60.0)))
    return ev(name, evse_kw=evse_kw,
              departs_h=draw(st.one_of(st.none(), st.floats(-2.0, 30.0))),
              need_kwh=draw(st.one_of(st.none(), st.just(0.0), st.floats(0.0, 80.0))),
              ev_max_kw=draw(st.one_of(st.none(), st.floats(0.0, 60.0))),
              power_kw=draw(st.floats(0.0, 60.0)), limit_kw=limit,
              stated=draw(st.booleans()))


@st.composite
def control_views(draw: st.DrawFn) -> ControlView:
    sites = []
    for j in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 5))
        sessions = tuple(draw(session_views(f"S{j}-{i}")) for i in range(n))
        sites.append(SiteView(f"site{j}", draw(st.one_of(st.none(), st.floats(0.0, 100.0))),
                              sessions))
    steps = st.lists(st.tuples(st.floats(-4.0, 30.0), st.floats(-0.2, 1.0)), max_size=6)
    prices = tuple(sorted((T0 + h * H, p) for h, p in draw(steps)))
    pv = tuple(sorted((T0 + h * H, 40 * p) for h, p in draw(steps)))
    return ControlView(now=T0, sites=tuple(sites), prices=prices, pv_forecast_kw=pv)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@settings(max_examples=60, deadline=None)
@given(v=control_views())
@pytest.mark.slow
def test_strategies_respect_site_limits_caps_and_sign(name: str, v: ControlView) -> None:
    out = STRATEGIES[name](v)
    for site in v.sites:
        assert {(s.station_id, s.evse_id) for s in site.sessions} <= set(out)
        values = [out[(s.station_id, s.evse_id)] for s in site.sessions]
        if site.limit_kw is not None:
            assert None not in values
            assert sum(p or 0.0 for p in values) <= site.limit_kw + 1e-6
        for s, p in zip(site.sessions, values, strict=True):
            if p is not None:
                assert 0.0 <= p <= hardware_cap_kw(s) + 1e-6
                if s.needs_stated and s.energy_remaining_kwh == 0.0:
                    assert p == 0.0


def test_strategies_are_registered() -> None:
    for name, fn in STRATEGIES.items():
        assert name in strategy_names()
        assert get_strategy(name) is fn


# --------------------------------------------------------------------------- fleet loop
@dataclass
class _EV:
    name: str
    departs_h: float
    need_kwh: float
    ev_max_kw: float
    evse_kw: float = 11.0
    delivered_kwh: float = 0.0
    power_kw: float = 0.0
    limit_kw: float | None = None


def simulate(strategy: Strategy, fleet: list[_EV], *, limit_kw: float, hours: float,
             step_h: float = 0.25, pv_kw: float | None = None) -> float:
    """Run ``strategy`` on a tiny fleet; return the energy delivered before departures (kWh).

    Each step the EV draws min(limit, its own max, what it still needs); it
    leaves at its departure.
    """
    evs = [replace(e) for e in fleet]
    t = 0.0
    while t < hours - 1e-9:
        now = T0 + t * H
        here = [e for e in evs if e.departs_h > t + 1e-9]
        sessions = tuple(SessionView(
            station_id=e.name, evse_id=1, transaction_id=e.name, max_power_kw=e.evse_kw,
            power_kw=e.power_kw, energy_kwh=e.delivered_kwh, voltage_v=None, soc_percent=None,
            started_at=T0, departure=T0 + e.departs_h * H,
            energy_remaining_kwh=max(0.0, e.need_kwh - e.delivered_kwh), needs_stated=True,
            limit_kw=e.limit_kw) for e in here)
        pv = () if pv_kw is None else ((T0, pv_kw),)
        out = strategy(ControlView(now=now, sites=(SiteView("site", limit_kw, sessions),),
                                   pv_forecast_kw=pv))
        assert sum(p or 0.0 for p in out.values()) <= limit_kw + 1e-6
        for e in here:
            lim = out[(e.name, 1)]
            e.limit_kw = lim
            dt = min(step_h, e.departs_h - t)
            want = max(0.0, e.need_kwh - e.delivered_kwh) / dt
            e.power_kw = min(e.evse_kw if lim is None else lim, e.ev_max_kw, want)
            e.delivered_kwh += e.power_kw * dt
        t += step_h
    return sum(min(e.delivered_kwh, e.need_kwh) for e in evs)


SHORT_AND_LONG = [_EV("short", departs_h=1.0, need_kwh=10.0, ev_max_kw=11.0),
                  _EV("long", departs_h=4.0, need_kwh=20.0, ev_max_kw=11.0)]


def test_edf_serves_the_earliest_deadline_first() -> None:
    out = edf(view(ev("late", departs_h=6.0), ev("soon", departs_h=1.0),
                   ev("mid", departs_h=3.0), limit_kw=15.0))
    assert out == {k("soon"): 11.0, k("mid"): 4.0, k("late"): 0.0}


def test_edf_delivers_more_before_departure_than_equal_share() -> None:
    requested = sum(e.need_kwh for e in SHORT_AND_LONG)
    by_edf = simulate(edf, SHORT_AND_LONG, limit_kw=11.0, hours=4.0)
    by_share = simulate(equal_share, SHORT_AND_LONG, limit_kw=11.0, hours=4.0)
    assert by_edf == pytest.approx(requested)
    assert by_share < by_edf - 3.0  # the short stay leaves with about half


def test_stated_and_done_gets_nothing_assumed_and_done_gets_leftovers() -> None:
    v = view(ev("done", need_kwh=0.0, departs_h=0.5),
             ev("guess", need_kwh=0.0, departs_h=0.5, stated=False),
             ev("busy", departs_h=2.0, need_kwh=10.0), limit_kw=15.0)
    for fn in (edf, llf, equal_share):
        out = fn(v)
        assert out[k("done")] == 0.0
    assert edf(v)[k("busy")] == 11.0 and edf(v)[k("guess")] == pytest.approx(4.0)


def test_unlimited_site_is_left_uncontrolled() -> None:
    v = view(ev("a"), ev("b"), limit_kw=None)
    assert set(edf(v).values()) == set(llf(v).values()) == {None}


def test_ev_max_caps_the_allocation() -> None:
    out = edf(view(ev("small", departs_h=1.0, ev_max_kw=3.7), ev("big"), limit_kw=11.0))
    assert out == {k("small"): 3.7, k("big"): pytest.approx(7.3)}


# --------------------------------------------------------------------------- LLF
def test_llf_prefers_low_laxity_over_early_deadline() -> None:
    # "easy" leaves first but needs little; "tight" leaves later but can barely finish.
    easy = ev("easy", departs_h=2.0, need_kwh=2.0)      # laxity 2 - 2/11 ≈ 1.8 h
    tight = ev("tight", departs_h=3.0, need_kwh=30.0)   # laxity 3 - 30/11 ≈ 0.27 h
    assert laxity_h(tight, T0) < laxity_h(easy, T0)
    assert llf(view(easy, tight))[k("tight")] == 11.0
    assert llf(view(easy, tight))[k("easy")] == 0.0
    assert edf(view(easy, tight))[k("easy")] == 11.0


def test_llf_meets_both_deadlines_where_edf_misses_one() -> None:
    # 16 kW for two 11 kW EVs: EDF gives "soon" its full 11 kW although 5 would do,
    # starving "tight", which has no slack at all.
    fleet = [_EV("soon", departs_h=1.0, need_kwh=5.0, ev_max_kw=11.0),
             _EV("tight", departs_h=2.0, need_kwh=22.0, ev_max_kw=11.0)]
    assert simulate(llf, fleet, limit_kw=16.0, hours=2.0) == pytest.approx(27.0)
    assert simulate(edf, fleet, limit_kw=16.0, hours=2.0) < 26.0


# --------------------------------------------------------------------------- price
TWO_LEVEL = ((T0, 0.40), (T0 + 4 * H, 0.10))


def test_price_waits_for_the_cheap_slot_when_there_is_time() -> None:
    out = price(view(ev("a", departs_h=8.0, need_kwh=10.0), prices=TWO_LEVEL))
    assert out[k("a")] == pytest.approx(0.0, abs=1e-6)


def test_price_charges_fully_when_the_cheap_slot_comes_too_late() -> None:
    # Leaves before the cheap slot, or needs more than the cheap hours can give.
    assert price(view(ev("a", departs_h=2.0), prices=TWO_LEVEL))[k("a")] == pytest.approx(11.0)
    out = price(view(ev("b", departs_h=5.0, need_kwh=20.0), prices=TWO_LEVEL))
    assert out[k("b")] == pytest.approx(11.0)


def test_price_charges_now_when_now_is_cheap() -> None:
    cheap_first = ((T0, 0.10), (T0 + 1 * H, 0.40))
    assert price(view(ev("a", departs_h=8.0), prices=cheap_first))[k("a")] == pytest.approx(11.0)


def test_price_shares_a_tight_limit_without_failing() -> None:
    # Together they need more than the limit can give: the LP must still answer.
    v = view(ev("a", departs_h=1.0, need_kwh=11.0), ev("b", departs_h=1.0, need_kwh=11.0),
             limit_kw=11.0, prices=TWO_LEVEL)
    out = price(v)
    assert sum(p or 0.0 for p in out.values()) == pytest.approx(11.0, abs=1e-4)


def test_price_without_prices_is_edf() -> None:
    v = view(ev("late", departs_h=6.0), ev("soon", departs_h=1.0), limit_kw=15.0)
    assert price(v) == edf(v)


def test_price_optimises_unlimited_sites_too() -> None:
    out = price(view(ev("a", departs_h=8.0), limit_kw=None, prices=TWO_LEVEL))
    assert out[k("a")] == pytest.approx(0.0, abs=1e-6)


def test_step_value() -> None:
    steps = ((T0, 1.0), (T0 + H, 2.0))
    assert step_value(steps, T0 - H) == 1.0
    assert step_value(steps, T0 + H) == 2.0
    assert step_value((), T0, default=7.0) == 7.0


# --------------------------------------------------------------------------- PV
def test_pv_follows_the_surplus() -> None:
    sessions = (ev("a", departs_h=8.0), ev("b", departs_h=9.0))
    for surplus, expected in [(0.0, (0.0, 0.0)), (6.0, (6.0, 0.0)), (15.0, (11.0, 4.0)),
                              (40.0, (11.0, 11.0))]:
        out = pv_self_consumption(view(*sessions, limit_kw=None, pv=((T0, surplus),)))
        assert (out[k("a")], out[k("b")]) == pytest.approx(expected)


def test_pv_surplus_is_capped_by_the_site_limit() -> None:
    out = pv_self_consumption(view(ev("a"), ev("b"), limit_kw=8.0, pv=((T0, 30.0),)))
    assert sum(p or 0.0 for p in out.values()) == pytest.approx(8.0)


def test_pv_uses_the_grid_only_for_a_session_about_to_miss_its_departure() -> None:
    relaxed = ev("relaxed", departs_h=8.0, need_kwh=10.0)
    due = ev("due", departs_h=1.0, need_kwh=11.0)   # laxity 0: must charge at full power
    out = pv_self_consumption(view(relaxed, due, limit_kw=None, pv=((T0, 2.0),)))
    assert out[k("due")] == pytest.approx(11.0)
    assert out[k("relaxed")] == 0.0  # the 2 kW of PV went into "due"'s 11 kW


def test_pv_per_site_each_site_follows_its_own_pv_and_sites_without_pv_charge() -> None:
    sunny = SiteView("carport", None, (ev("a", departs_h=8.0), ev("b", departs_h=9.0)),
                     pv_forecast_kw=((T0, 15.0),))
    dark = SiteView("street", 11.0, (ev("c", departs_h=8.0), ev("d", departs_h=9.0)))
    # The CSMS-wide figure is ignored once sites report their own PV.
    out = pv_self_consumption(ControlView(now=T0, sites=(sunny, dark),
                                          pv_forecast_kw=((T0, 100.0),)))
    assert (out[("a", 1)], out[("b", 1)]) == pytest.approx((11.0, 4.0))
    # No PV at the street: earliest deadline first within its 11 kW limit.
    assert (out[("c", 1)], out[("d", 1)]) == pytest.approx((11.0, 0.0))


def test_pv_charges_more_as_the_sun_rises() -> None:
    fleet = [_EV("a", departs_h=8.0, need_kwh=30.0, ev_max_kw=11.0)]
    dim = simulate(pv_self_consumption, fleet, limit_kw=50.0, hours=2.0, pv_kw=2.0)
    bright = simulate(pv_self_consumption, fleet, limit_kw=50.0, hours=2.0, pv_kw=8.0)
    assert dim == pytest.approx(4.0) and bright == pytest.approx(16.0)


# --------------------------------------------------------------------------- equal_share
def test_equal_share_gives_a_tapering_evs_unused_share_to_the_others() -> None:
    tapering = ev("taper", evse_kw=22.0, power_kw=3.0, limit_kw=11.0)
    other = ev("other", evse_kw=22.0, power_kw=11.0, limit_kw=11.0)
    out = equal_share(view(tapering, other, limit_kw=22.0))
    assert out[k("taper")] == pytest.approx(3.0 + 2.2)   # draw + 10 % of 22 kW
    assert out[k("other")] == pytest.approx(22.0 - 5.2)


def test_equal_share_caps_at_the_evs_stated_maximum_and_skips_full_evs() -> None:
    out = equal_share(view(ev("small", ev_max_kw=7.4), ev("big", evse_kw=22.0),
                           ev("full", need_kwh=0.0), limit_kw=22.0))
    assert out == {k("small"): 7.4, k("big"): pytest.approx(14.6), k("full"): 0.0}


def test_equal_share_keeps_a_session_that_uses_its_limit() -> None:
    out = equal_share(view(ev("a", power_kw=5.3, limit_kw=5.5),
                           ev("b", power_kw=5.5, limit_kw=5.5), limit_kw=11.0))
    assert out == {k("a"): 5.5, k("b"): 5.5}


def test_equal_share_serves_more_with_a_small_car_on_a_big_evse() -> None:
    # A 3.7 kW car on an 11 kW EVSE that does not state its maximum: the taper rule
    # notices it from the meter and hands its unused share to the other EV.
    fleet = [_EV("small", departs_h=4.0, need_kwh=40.0, ev_max_kw=3.7),
             _EV("big", departs_h=2.0, need_kwh=20.0, ev_max_kw=11.0)]
    delivered = simulate(equal_share, fleet, limit_kw=14.0, hours=2.0)
    blind = simulate(_equal_share_without_taper, fleet, limit_kw=14.0, hours=2.0)
    assert delivered > blind + 2.0


def _equal_share_without_taper(v: ControlView) -> Limits:
    plain = ControlView(now=v.now, sites=tuple(SiteView(site.name, site.limit_kw, tuple(
        replace(s, limit_kw=None) for s in site.sessions)) for site in v.sites))
    return equal_share(plain)


def test_greedy_fill() -> None:
    assert greedy_fill(10.0, [4.0, 4.0, 4.0]) == [4.0, 4.0, 2.0]
    assert greedy_fill(-1.0, [4.0]) == [0.0]
    assert greedy_fill(float("inf"), [4.0, 1.0]) == [4.0, 1.0]


def test_equal_share_takes_a_zero_reading_as_no_evidence() -> None:
    # Before its first power reading (or on a station that meters energy only)
    # a session shows 0 kW: that must not cap it.
    out = equal_share(view(ev("new", power_kw=0.0, limit_kw=11.0),
                           ev("old", power_kw=11.0, limit_kw=11.0), limit_kw=22.0))
    assert out == {k("new"): 11.0, k("old"): 11.0}
