"""Tests for scenario files: loading, error reports, overrides, EV split."""

from __future__ import annotations

import math
import re
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from evtwin.csms import strategy_names
from evtwin.grid import NETWORKS
from evtwin.sim import ScenarioError, load_scenario, parse_scenario
from evtwin.sim.scenario import Scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"

VALID = """\
seed = 3
step_s = 60

[control]
strategy = "equal_share"
interval_s = 300

[ev]
count = 10

[[sites]]
name = "street"
stations = 4
limit_kw = 30
"""


def write(tmp_path: Path, text: str, name: str = "case.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, overrides: dict[str, Any] | None = None) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, overrides)
    return info.value


def assert_lines_name_the_file(err: ScenarioError, path: Path) -> None:
    lines = str(err).splitlines()
    assert len(lines) == len(err.problems)
    for line, (field, message) in zip(lines, err.problems, strict=True):
        assert line == (f"{path}: {field}: {message}" if field else f"{path}: {message}")


# --------------------------------------------------------------------------- shipped files
@pytest.mark.parametrize("name", ["demo.toml", "overload.toml"])
def test_shipped_scenarios_load(name: str) -> None:
    sc = load_scenario(SCENARIOS / name)
    assert sc.name == Path(name).stem
    assert sc.sites
    assert sc.control.strategy in strategy_names()
    assert sc.grid.network in NETWORKS
    assert sc.start.tzinfo is not None and sc.start.utcoffset() == UTC.utcoffset(None)
    assert sc.control.interval_s % sc.step_s == 0
    assert sum(sc.ev_counts().values()) == sc.ev.count


def test_naive_start_is_taken_as_utc(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, "start = 2026-01-15T18:30:00\n" + VALID))
    assert sc.start.tzinfo == UTC
    assert (sc.start.hour, sc.start.minute) == (18, 30)


def test_offset_start_keeps_local_time_of_day(tmp_path: Path) -> None:
    """Arrivals and household load follow local time at the feeder; the instant is kept."""
    sc = load_scenario(write(tmp_path, "start = 2026-01-15T18:30:00+02:00\n" + VALID))
    assert sc.start.hour == 18
    assert sc.start.astimezone(UTC).hour == 16


# --------------------------------------------------------------------------- error reports
def test_every_field_error_is_reported_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, """\
bogus = 1
step_s = 60

[control]
strategy = "fastest"

[ev]
count = 0

[[sites]]
name = "a"
stations = 2
buses = [1]

[[sites]]
name = "b"
stations = 1
colour = "red"
""")
    err = problems_of(path)
    found = dict(err.problems)
    assert found["ev.count"] == "must be > 0"
    assert found["bogus"] == "unknown field"
    assert found["sites.1.colour"] == "unknown field"
    assert found["control.strategy"].startswith("unknown strategy 'fastest'; known: ")
    for name in strategy_names():
        assert name in found["control.strategy"]
    assert re.fullmatch(r"has 1 entries for 2 stations", found["sites.0.buses"])
    # Site "b" has no buses while "a" has: stations are placed all by hand or all by rule.
    assert found["sites"] == "give buses for every site or for none"
    assert len(err.problems) == 6
    assert err.source == str(path)
    assert_lines_name_the_file(err, path)


@pytest.mark.parametrize(("snippet", "field", "pattern"), [
    ('[grid]\nnetwork = "atlantis"\n', "grid.network",
     r"unknown network 'atlantis'; known: .*kerber_dorfnetz.* or a pandapower \.json file"),
    ("[csms]\nmeter_interval_s = 90\n", "csms.meter_interval_s",
     r"must be a multiple of step_s \(60\)"),
    ("[csms]\naligned_interval_s = 61\n", "csms.aligned_interval_s",
     r"must be a multiple of step_s \(60\)"),
    ("[[sites]]\nname = \"street\"\nstations = 1\n", "sites",
     r"duplicate site names \['street'\]"),
])
def test_cross_field_errors_name_their_field(tmp_path: Path, snippet: str, field: str,
                                             pattern: str) -> None:
    path = write(tmp_path, VALID + snippet)
    err = problems_of(path)
    assert len(err.problems) == 1
    got_field, message = err.problems[0]
    assert got_field == field
    assert re.fullmatch(pattern, message), message
    assert_lines_name_the_file(err, path)


def test_control_interval_must_be_a_multiple_of_step(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("interval_s = 300", "interval_s = 90"))
    err = problems_of(path)
    assert err.problems == [("control.interval_s", "must be a multiple of step_s (60)")]
    assert str(err) == f"{path}: control.interval_s: must be a multiple of step_s (60)"


def test_unknown_network_lists_every_known_one(tmp_path: Path) -> None:
    err = problems_of(write(tmp_path, VALID + '[grid]\nnetwork = "atlantis"\n'))
    message = dict(err.problems)["grid.network"]
    for name in NETWORKS:
        assert name in message


def test_cross_field_errors_are_reported_with_field_errors(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("count = 10", "count = 0")
                 .replace("interval_s = 300", "interval_s = 90")
                 + '[grid]\nnetwork = "atlantis"\n'
                 + "[[sites]]\nname = \"street\"\nstations = 1\n")
    fields = {field for field, _ in problems_of(path).problems}
    assert fields >= {"ev.count", "control.interval_s", "grid.network", "sites"}


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "seed = = 3\n")
    err = problems_of(path)
    assert len(err.problems) == 1
    assert err.problems[0][1].startswith("TOML syntax error")
    assert str(err).startswith(f"{path}: TOML syntax error")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    err = problems_of(path)
    assert err.problems == [("", "file not found")]
    assert str(err) == f"{path}: file not found"


def test_missing_required_sections(tmp_path: Path) -> None:
    err = problems_of(write(tmp_path, "seed = 1\n"))
    found = dict(err.problems)
    assert found["ev"] == "required field is missing"
    assert found["sites"] == "required field is missing"


def test_parse_scenario_uses_the_given_source() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario({"ev": {"count": -1}, "sites": [{"name": "s", "stations": 1}]},
                       source="inline")
    assert str(info.value) == "inline: ev.count: must be > 0"


# --------------------------------------------------------------------------- models
def test_models_are_frozen(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, VALID))
    with pytest.raises(ValidationError):
        sc.seed = 4
    with pytest.raises(ValidationError):
        sc.ev.count = 1
    with pytest.raises(ValidationError):
        sc.sites[0].limit_kw = 1.0
    assert sc.seed == 3 and sc.ev.count == 10


def test_overrides_by_dotted_path(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    sc = load_scenario(path, {"control.strategy": "uncontrolled", "ev.count": 7,
                              "grid.base_load_scale": 0.25, "seed": 99})
    assert sc.control.strategy == "uncontrolled"
    assert sc.ev.count == 7
    assert sc.grid.base_load_scale == 0.25  # a section absent from the file
    assert sc.seed == 99
    assert sc.control.interval_s == 300  # siblings untouched
    assert load_scenario(path).ev.count == 10  # the file itself is unchanged


def test_invalid_override_is_reported_like_a_file_error(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    err = problems_of(path, {"ev.count": 0, "control.strategy": "fastest"})
    assert {f for f, _ in err.problems} == {"ev.count", "control.strategy"}


def test_override_into_a_site(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, VALID), {"sites.0.limit_kw": 45.0})
    assert sc.sites[0].limit_kw == 45.0


def test_relative_network_json_is_resolved_against_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "cases"
    sub.mkdir()
    path = write(sub, VALID + '[grid]\nnetwork = "feeders/mine.json"\n')
    sc = load_scenario(path)
    assert Path(sc.grid.network) == (sub / "feeders" / "mine.json").resolve()


# --------------------------------------------------------------------------- EV split
def _scenario(count: int, sites: list[dict[str, Any]]) -> Scenario:
    return parse_scenario({"ev": {"count": count}, "sites": sites})


def test_ev_counts_follow_evse_counts_by_default() -> None:
    sc = _scenario(12, [{"name": "a", "stations": 2, "evses_per_station": 2},
                        {"name": "b", "stations": 8}])
    assert sc.ev_counts() == {"a": 4, "b": 8}


@given(
    st.integers(1, 500),
    st.lists(st.tuples(st.integers(1, 50), st.integers(1, 8),
                       st.none() | st.floats(0.01, 100.0)), min_size=1, max_size=8),
)
def test_ev_counts_split_deterministically(count: int,
                                           sites: list[tuple[int, int, float | None]]) -> None:
    spec = [{"name": f"s{i}", "stations": n, "evses_per_station": e,
             **({"ev_share": w} if w is not None else {})}
            for i, (n, e, w) in enumerate(sites)]
    sc = _scenario(count, spec)
    counts = sc.ev_counts()
    assert list(counts) == [s["name"] for s in spec]
    assert sum(counts.values()) == count
    assert counts == _scenario(count, spec).ev_counts()
    weights = [w if w is not None else n * e for n, e, w in sites]
    total = sum(weights)
    shares = [count * w / total for w in weights]
    floors = [math.floor(x) for x in shares]
    got = list(counts.values())
    # Largest remainder: each site gets its share rounded down or up ...
    assert all(c - f in (0, 1) for c, f in zip(got, floors, strict=True))
    # ... and the ones rounded up have the largest remainders.
    up = [x - f for x, f, c in zip(shares, floors, got, strict=True) if c > f]
    down = [x - f for x, f, c in zip(shares, floors, got, strict=True) if c == f]
    if up and down:
        assert min(up) >= max(down)


def test_duration_must_be_whole_steps(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, "duration_h = 1.01\n" + VALID))
    assert ("duration_h", "must be a whole number of steps (60 s)") in info.value.problems


def test_a_directory_is_a_clear_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read the file"):
        load_scenario(tmp_path)


def test_price_signals_flat_tou_and_csv(tmp_path: Path) -> None:
    from datetime import timedelta

    from evtwin.sim.prices import price_at, price_steps

    tou = load_scenario(write(tmp_path, VALID + """
[prices]
kind = "tou"
tou = [{start_h = 0, price_per_kwh = 0.20}, {start_h = 17, price_per_kwh = 0.45},
       {start_h = 21, price_per_kwh = 0.30}]
""", "tou.toml"), {"start": "2026-01-15T12:00:00", "duration_h": 24})
    steps = price_steps(tou)
    at = tou.start
    assert price_at(steps, at) == 0.20  # 12 h: still the night band from 0 h
    assert price_at(steps, at + timedelta(hours=6)) == 0.45  # 18 h
    assert price_at(steps, at + timedelta(hours=10)) == 0.30  # 22 h
    assert price_at(steps, at + timedelta(hours=13)) == 0.20  # 1 h next day
    (tmp_path / "da.csv").write_text("time,price_per_kwh\n2026-01-15T00:00:00Z,0.1\n"
                                     "2026-01-15T13:00:00Z,0.5\n")
    csv = load_scenario(write(tmp_path, VALID + '[prices]\nkind = "csv"\ncsv = "da.csv"\n',
                              "csv.toml"), {"start": "2026-01-15T12:00:00", "duration_h": 24})
    steps = price_steps(csv)
    assert price_at(steps, csv.start) == 0.1
    assert price_at(steps, csv.start + timedelta(hours=2)) == 0.5
    with pytest.raises(ScenarioError, match=r"prices\.tou"):
        load_scenario(write(tmp_path, VALID + '[prices]\nkind = "tou"\n', "bad.toml"))


def test_transport_from_the_environment_where_the_scenario_chooses_none(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from evtwin.sim.scenario import TRANSPORT_ENV

    demo = SCENARIOS / "demo.toml"

    monkeypatch.setenv(TRANSPORT_ENV, "direct")
    assert load_scenario(demo).run.transport == "direct"
    # A choice in the overrides (or the file) wins.
    assert load_scenario(demo, {"run.transport": "memory"}).run.transport == "memory"
    assert load_scenario(demo, {"run.csms_process": True}).run.transport == "websocket"
    monkeypatch.setenv(TRANSPORT_ENV, "pigeon")
    with pytest.raises(ScenarioError, match="EVTWIN_TRANSPORT='pigeon'"):
        load_scenario(demo)


def test_a_default_interval_that_does_not_fit_step_s_is_named() -> None:
    """The model's own validator objects to defaults the raw mapping does not show."""
    from evtwin.sim.exceptions import ScenarioError

    with pytest.raises(ScenarioError) as info:
        parse_scenario({"name": "x", "step_s": 3600, "ev": {"count": 1},
                        "sites": [{"name": "a", "stations": 1}]},
                       "x.toml")
    assert "x.toml: csms.aligned_interval_s: must be a multiple of step_s (3600)" in str(
        info.value)


# --------------------------------------------------------------------------- model validators
@pytest.mark.parametrize(("snippet", "field", "words"), [
    ("[grid]\nv_min_pu = 1.1\nv_max_pu = 1.0\n", "grid", "v_min_pu must be below v_max_pu"),
    ('[grid]\nphases = "unbalanced"\nengine = "pandapower"\n', "grid.engine", "pgm"),
    ('[run]\ncsms_process = true\ntransport = "memory"\n', "run", "needs transport"),
    ('[prices]\nkind = "tou"\n', "prices.tou", "at least one band"),
    ('[[pv]]\nname = "roof"\npeak_kw = 10\n', "pv.0", "give site or buses"),
    ('[[storage]]\nname = "b"\nsite = "street"\ncapacity_kwh = 10\npower_kw = 5\n'
     "soc_min = 0.9\nsoc_max = 0.5\n", "storage.0", "soc_min must be below soc_max"),
])
def test_every_model_validator_says_what_is_wrong_in_one_line(
        tmp_path: Path, snippet: str, field: str, words: str) -> None:
    path = write(tmp_path, VALID + snippet)
    err = problems_of(path)
    assert_lines_name_the_file(err, path)
    assert (field, ) == tuple({p for p, m in err.problems if words in m}), err.problems
    assert all(m.strip() for _, m in err.problems)


def test_a_behaviour_validator_reports_each_field_on_its_own_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "[sites.behaviour]\narrival_weights = [1.0]\n"
                 "arrival_stds_h = [1.0]\n")
    err = problems_of(path)
    assert_lines_name_the_file(err, path)
    assert dict(err.problems) == {
        "sites.0.behaviour.arrival_weights": "give arrival_means_h with it",
        "sites.0.behaviour.arrival_stds_h": "give arrival_means_h with it"}


def test_step_of_an_hour_names_every_interval_that_does_not_fit(tmp_path: Path) -> None:
    """The demo sets two intervals; the third is a default the file does not show."""
    err = problems_of(SCENARIOS / "demo.toml", {"step_s": "3600"})
    fields = [p for p, _ in err.problems]
    assert fields == ["control.interval_s", "csms.meter_interval_s",
                      "csms.aligned_interval_s"]
    assert dict(err.problems)["csms.aligned_interval_s"] == (
        "must be a multiple of step_s (3600) (default 900)")
    assert_lines_name_the_file(err, SCENARIOS / "demo.toml")


def test_no_error_without_a_message(tmp_path: Path) -> None:
    from evtwin.sim.cli import main

    code = main(["run", str(SCENARIOS / "demo.toml"), "--set", "step_s=3600", "--quiet",
                 "--out", str(tmp_path)])
    assert code == 2
    assert not any(tmp_path.iterdir())


def test_a_negative_seed_is_refused(tmp_path: Path) -> None:
    err = problems_of(write(tmp_path, "seed = -1\n" + VALID.replace("seed = 3\n", "")))
    assert err.problems == [("seed", "must be >= 0")]


# --------------------------------------------------------------------------- time zones
def test_timezone_is_checked_by_name(tmp_path: Path) -> None:
    err = problems_of(write(tmp_path, 'timezone = "Europe/Atlantis"\n' + VALID))
    assert len(err.problems) == 1 and err.problems[0][0] == "timezone"
    assert "unknown time zone 'Europe/Atlantis'" in err.problems[0][1]


@pytest.mark.parametrize(("start", "utc_hour", "offset_h"), [
    ("2026-01-15T18:30:00", 17, 1),         # CET
    ("2026-07-15T18:30:00", 16, 2),         # CEST
    ("2026-07-15T18:30:00+00:00", 18, 2),   # an offset keeps the instant
])
def test_start_without_offset_is_local_time_in_the_zone(tmp_path: Path, start: str,
                                                         utc_hour: int, offset_h: int) -> None:
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    sc = load_scenario(write(tmp_path, f'timezone = "Europe/Berlin"\nstart = {start}\n' + VALID))
    assert sc.start.astimezone(UTC).hour == utc_hour
    assert sc.start.utcoffset() == timedelta(hours=offset_h)
    assert sc.local_zone() == ZoneInfo("Europe/Berlin")


def test_a_start_the_clocks_skip_is_refused(tmp_path: Path) -> None:
    err = problems_of(write(tmp_path, 'timezone = "Europe/Berlin"\n'
                                      "start = 2026-03-29T02:30:00\n" + VALID))
    assert [p for p, _ in err.problems] == ["start"]
    assert "does not exist in Europe/Berlin" in err.problems[0][1]


def test_without_timezone_local_clocks_keep_the_start_offset(tmp_path: Path) -> None:
    demo = load_scenario(SCENARIOS / "demo.toml")
    assert demo.timezone is None and demo.local_zone() == UTC
    assert demo.clock_shift_s(200 * 86400.0) == 0.0
    fixed = load_scenario(write(tmp_path, "start = 2026-03-28T00:00:00+01:00\n" + VALID))
    assert fixed.local_zone() == fixed.start.tzinfo
    assert fixed.seconds_at_clock(86400.0 + 3600.0) == 86400.0 + 3600.0


def test_local_clocks_follow_daylight_saving(tmp_path: Path) -> None:
    spring = load_scenario(write(tmp_path, 'timezone = "Europe/Berlin"\n'
                                           "start = 2026-03-28T00:00:00\n" + VALID))
    # Clocks go forward at 02:00 on 29 March: from then on they read an hour more.
    assert spring.clock_shift_s(24 * 3600.0) == 0.0
    assert spring.clock_shift_s(27 * 3600.0) == 3600.0
    # 20:00 on the 29th is 43 h after the start, not 44.
    assert spring.seconds_at_clock(44 * 3600.0) == 43 * 3600.0
    autumn = load_scenario(write(tmp_path, 'timezone = "Europe/Berlin"\n'
                                           "start = 2026-10-24T00:00:00\n" + VALID))
    assert autumn.clock_shift_s(27 * 3600.0) == -3600.0
    assert autumn.seconds_at_clock(44 * 3600.0) == 45 * 3600.0


def _evening_peaks_utc(start: str, timezone: str | None) -> list[tuple[str, int]]:
    """(local date, UTC hour) of the household base load's daily maximum, from a run."""
    import pandas as pd

    from evtwin.sim.runner import Twin

    data: dict[str, Any] = {
        "name": "dst", "seed": 1, "start": start, "duration_h": 48, "step_s": 900,
        "grid": {"network": "kerber_landnetz_kabel_1", "base_load_noise": 0.0},
        "csms": {"database": "memory", "meter_interval_s": 900, "aligned_interval_s": 900},
        "control": {"strategy": "uncontrolled", "interval_s": 900},
        "run": {"transport": "direct"},
        "ev": {"count": 2},
        "sites": [{"name": "a", "stations": 2, "behaviour": {
            "arrival_mean_h": 18.0, "arrival_std_h": 0.0, "plugin_share": 1.0,
            "weekend_share": 1.0}}]}
    if timezone is not None:
        data["timezone"] = timezone
    sc = parse_scenario(data)
    result = Twin(sc).run()
    ts = result.timeseries
    when = pd.to_datetime(sc.start) + pd.to_timedelta(ts["t_s"], unit="s")
    base = pd.Series(ts["base_kw"].to_numpy(), index=pd.DatetimeIndex(when))
    local_days = base.index.tz_convert(sc.local_zone()).date
    peaks = []
    for day in sorted(set(local_days)):
        part = base[local_days == day]
        if len(part) >= 92:  # whole local days (23 h on the spring change) only
            peaks.append((str(day), part.idxmax().tz_convert(UTC).hour))
    # Drivers arrive at 18:00 local time each day.
    arrivals = pd.to_datetime(sc.start) + pd.to_timedelta(
        result.sessions["arrival_s"].drop_duplicates(), unit="s")
    assert {t.tz_convert(sc.local_zone()).hour for t in arrivals} == {18}
    return peaks


@pytest.mark.slow
def test_a_run_across_daylight_saving_shifts_on_the_right_day() -> None:
    """The evening peak is at 20:00 local time: 19:00 UTC in winter, 18:00 in summer."""
    assert _evening_peaks_utc("2026-03-28T00:00:00", "Europe/Berlin") == [
        ("2026-03-28", 19), ("2026-03-29", 18)]
    assert _evening_peaks_utc("2026-10-24T00:00:00", "Europe/Berlin") == [
        ("2026-10-24", 18), ("2026-10-25", 19)]
    # A fixed offset (no timezone, as before): the same UTC hour on both days.
    assert _evening_peaks_utc("2026-03-28T00:00:00+01:00", None) == [
        ("2026-03-28", 19), ("2026-03-29", 19)]


# --------------------------------------------------------------------------- charger buses
BUSES = """\
seed = 1
duration_h = 1
grid.network = "kerber_landnetz_kabel_1"

[ev]
count = 2

[[sites]]
name = "street"
stations = 3
buses = [0, 999, 2]

[[sites]]
name = "office"
stations = 1
buses = [-4]
"""


def test_chargers_go_on_low_voltage_buses_every_bad_one_named(tmp_path: Path) -> None:
    from evtwin.sim.runner import Twin

    path = write(tmp_path, BUSES)
    with pytest.raises(ScenarioError) as info:
        Twin(load_scenario(path))
    err = info.value
    assert err.source == str(path)  # the file, not the scenario's name
    assert [p for p, _ in err.problems] == ["sites.0.buses.0", "sites.0.buses.1",
                                            "sites.1.buses.0"]
    found = dict(err.problems)
    assert "10 kV bus" in found["sites.0.buses.0"] and "low-voltage" in found["sites.0.buses.0"]
    assert found["sites.0.buses.1"] == "bus 999: no such bus in the network"
    assert_lines_name_the_file(err, path)


def test_bad_buses_are_a_user_error_of_the_command(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from evtwin.sim.cli import main

    path = write(tmp_path, BUSES)
    code = main(["run", str(path), "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{path}: sites.0.buses.0:" in err and f"{path}: sites.1.buses.0:" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_time_of_use_bands_follow_the_local_clock_across_daylight_saving() -> None:
    """The 17 h peak band starts at 16:00 UTC on Saturday 28 March 2026 (CET) and at
    15:00 UTC on Sunday 29 March (CEST) in Europe/Berlin; without a zone it stays put."""
    from datetime import UTC, datetime

    from evtwin.sim.prices import price_steps

    def peak_starts(overrides: dict[str, object]) -> list[datetime]:
        sc = load_scenario(SCENARIOS / "v2g_price.toml",
                           {"start": "2026-03-28T00:00:00", "duration_h": 48, **overrides})
        peak = max(band.price_per_kwh for band in sc.prices.tou)
        return [t.astimezone(UTC) for t, price in price_steps(sc) if price == peak]

    berlin = peak_starts({"timezone": "Europe/Berlin"})
    assert [t.hour for t in berlin] == [16, 15]
    fixed = peak_starts({})
    assert [t.hour for t in fixed] == [17, 17]
