"""Per-line limits: single-phase EVSEs on known lines share a site's limit per phase."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from evtwin.csms.model import ControlView, SessionView, SiteView
from evtwin.csms.strategies import equal_share, water_fill, water_fill_lines

T0 = datetime(2026, 1, 5, 18, 0, tzinfo=UTC)
THIRD = (1 / 3, 1 / 3, 1 / 3)


def _view(limit_kw: float, evses: list[tuple[float, int, int | None]]) -> ControlView:
    """``evses``: (cap kW, phases, line) per session."""
    sessions = tuple(SessionView(
        station_id=f"CS{i}", evse_id=1, transaction_id=f"tx{i}", max_power_kw=cap,
        power_kw=0.0, energy_kwh=0.0, voltage_v=None, soc_percent=None, started_at=T0,
        phases=phases, line=line) for i, (cap, phases, line) in enumerate(evses))
    return ControlView(now=T0, sites=(SiteView(name="s", limit_kw=limit_kw,
                                               sessions=sessions),))


caps = st.lists(st.floats(0.1, 50.0), min_size=1, max_size=20)


@given(st.floats(0.1, 500.0), caps)
def test_three_phase_only_fills_as_before(budget_kw: float, caps_kw: list[float]) -> None:
    by_lines = water_fill_lines([budget_kw / 3] * 3, caps_kw, [THIRD] * len(caps_kw))
    assert by_lines == pytest.approx(water_fill(budget_kw, caps_kw), rel=1e-9, abs=1e-9)


@given(st.floats(1.0, 300.0),
       st.lists(st.tuples(st.floats(0.5, 22.0), st.sampled_from([(1, 1), (1, 2), (1, 3),
                                                                 (3, None)])),
                min_size=1, max_size=24))
def test_each_line_keeps_its_third_and_shares_are_max_min_fair(
        limit_kw: float, evses: list[tuple[float, tuple[int, int | None]]]) -> None:
    view = _view(limit_kw, [(cap, ph, line) for cap, (ph, line) in evses])
    out = equal_share(view)
    shares = [float(out[(f"CS{i}", 1)] or 0.0) for i in range(len(evses))]
    per_line = [0.0, 0.0, 0.0]
    for share, (_, (ph, line)) in zip(shares, evses, strict=True):
        for k in range(3):
            per_line[k] += share if ph == 1 and line == k + 1 else (share / 3 if ph == 3 else 0)
    tol = 1e-7 * max(limit_kw, 1.0)
    assert max(per_line) <= limit_kw / 3 + tol
    full = [load >= limit_kw / 3 - tol for load in per_line]
    for share, (cap, (ph, line)) in zip(shares, evses, strict=True):
        assert -1e-12 <= share <= cap + 1e-9
        on = [line - 1] if ph == 1 and line else [0, 1, 2]
        # Below its cap only when a line it draws on is full, and then it got at least
        # as much as anyone else on that line (max-min fair).
        if share < cap - 1e-6:
            assert any(full[k] for k in on)
            # ... and on one of its full lines nobody got more (max-min fair).
            def on_line(k: int) -> list[float]:
                return [sh for sh, (_, (p2, l2)) in zip(shares, evses, strict=True)
                        if k in ([l2 - 1] if p2 == 1 and l2 else [0, 1, 2])]
            assert any(share >= max(on_line(k)) - 1e-6 for k in on if full[k])


def test_a_crowded_line_does_not_take_the_others_budget() -> None:
    """Six 7.4 kW single-phase EVs on L1, one on L2, a 33 kW site (11 kW a line): the L1
    cars share 11 kW, the L2 car takes its full 7.4 kW; pooled over the site they would
    have had 33 kW / 7, and L1 would carry 28 kW."""
    evses = [(7.4, 1, 1)] * 6 + [(7.4, 1, 2)]
    out = equal_share(_view(33.0, evses))
    l1 = [out[(f"CS{i}", 1)] or 0.0 for i in range(6)]
    assert sum(l1) == pytest.approx(11.0)
    assert l1 == pytest.approx([11.0 / 6] * 6)
    assert out[("CS6", 1)] == pytest.approx(7.4)
    unknown = equal_share(_view(33.0, [(7.4, 1, None)] * 6 + [(7.4, 1, None)]))
    assert sum(v or 0.0 for v in unknown.values()) == pytest.approx(33.0)


def _scenario(limit_kw: float) -> Any:
    from evtwin.sim.scenario import parse_scenario

    return parse_scenario({
        "name": "phases", "seed": 2, "start": "2026-01-12T16:00:00", "duration_h": 8,
        "step_s": 60,
        "grid": {"network": "kerber_dorfnetz", "phases": "unbalanced"},
        "control": {"strategy": "equal_share", "interval_s": 60},
        "ev": {"count": 24},
        "sites": [{"name": "street", "kind": "home", "stations": 24, "phases": 1,
                   "evse_max_kw": 7.4, "limit_kw": limit_kw}],
    }, "phases")


def _line_peaks_kw(result: Any) -> pd.Series:
    """The highest mean power per step on each line of the site, from the run's own
    tables (stations.csv's connection, station_power_kw)."""
    power = result.station_power_kw.set_index("t_s")
    line_of = result.stations.set_index("station_id")["connection"]
    per_line = power.T.groupby(line_of).sum().T
    return per_line.iloc[1:].max()


@pytest.mark.slow
def test_twin_keeps_each_phase_of_the_site_within_a_third(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """An unbalanced feeder with 24 single-phase home chargers under a 45 kW site limit
    (15 kW a line): told each station's line, the CSMS keeps every line within its
    third (after the first control step of an arrival); pooled over the site, at least
    one line goes well over it."""
    from evtwin.sim import runner

    aware = runner.Twin(_scenario(45.0)).run()
    peaks = _line_peaks_kw(aware)
    assert set(peaks.index) == {"L1", "L2", "L3"}
    assert peaks.max() <= 15.0 * 1.02
    assert aware.kpis["energy_delivered_kwh"] > 100
    # The profiles tell the single-phase EVSEs so (OCPP numberPhases; default 3).
    assert len(aware.profiles) > 0 and (aware.profiles["number_phases"] == 1).all()

    real = runner.csms_config
    monkeypatch.setattr(runner, "csms_config", lambda sc, model, lines=None: real(sc, model))
    blind = runner.Twin(_scenario(45.0)).run()
    assert _line_peaks_kw(blind).max() > 15.0 * 1.1


def test_csms_config_takes_a_line_for_single_phase_stations_only(tmp_path: Any) -> None:
    from evtwin.csms.config import load_config
    from evtwin.csms.exceptions import ConfigError

    cfg = tmp_path / "csms.toml"
    cfg.write_text('[[sites]]\nname = "s"\nlimit_kw = 22\n'
                   '[[stations]]\nid = "CS1"\nsite = "s"\nphases = 1\nline = 2\n'
                   '[[stations]]\nid = "CS2"\nsite = "s"\n')
    config = load_config(cfg).csms_config()
    [one, three] = config.stations
    assert one.evses[0].line == 2 and three.evses[0].line is None
    cfg.write_text('[[stations]]\nid = "CS1"\nline = 2\n')
    with pytest.raises(ConfigError, match=r"stations\.0\.line: a line only for a single-phase"):
        load_config(cfg)


@pytest.mark.slow
def test_feeder_aware_models_the_phases_of_an_unbalanced_feeder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """30 single-phase 7.4 kW home chargers on the unbalanced village feeder, a 0.92 pu
    floor: the CSMS's feeder model with each load on its phase keeps the lowest phase
    voltage below the floor for fewer minutes, and delivers more, than the same
    strategy on a balanced model of the feeder (which sees neither the low phase nor
    why its predictions miss)."""
    import copy

    from evtwin.csms import feeder as csms_feeder
    from evtwin.grid.feeder import Feeder
    from evtwin.sim import runner
    from evtwin.sim.scenario import parse_scenario

    sc = parse_scenario({
        "name": "fa", "seed": 4, "start": "2026-01-12T16:00:00", "duration_h": 6,
        "step_s": 60,
        "grid": {"network": "kerber_dorfnetz", "phases": "unbalanced", "v_min_pu": 0.92},
        "control": {"strategy": "feeder_aware", "interval_s": 60},
        "ev": {"count": 30},
        "sites": [{"name": "street", "kind": "home", "stations": 30, "phases": 1,
                   "evse_max_kw": 7.4}],
    }, "fa")

    def low_minutes(result: Any) -> int:
        ts = result.timeseries.iloc[1:]
        low = ts[["vm_min_l1_pu", "vm_min_l2_pu", "vm_min_l3_pu"]].min(axis=1)
        return int((low < 0.92).sum())

    aware = runner.Twin(sc).run()

    def balanced(cls: Any, feeder: Any, ids: Any, **kw: Any) -> Any:
        net = copy.deepcopy(feeder.net)
        net.load = net.load.iloc[:feeder.n_households]
        return cls(Feeder(net, n_stations=feeder.n_stations,
                          station_buses=feeder.station_buses, limits=feeder.limits), ids, **kw)

    monkeypatch.setattr(csms_feeder.FeederModel, "from_feeder", classmethod(balanced))
    blind = runner.Twin(sc).run()
    assert low_minutes(aware) < 0.75 * low_minutes(blind)
    assert aware.kpis["energy_delivered_kwh"] > 1.3 * blind.kpis["energy_delivered_kwh"]
