"""Sessions in (issue 13, part 1): sessions files, their formats, and runs driven by them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from evtwin.agents import ChargingModel, SiteConfig, behaviour_for
from evtwin.agents.behaviour import EFFICIENCY, TAPER_SOC
from evtwin.sim import ScenarioError, load_scenario
from evtwin.sim.cli import main
from evtwin.sim.runner import Twin, build_model
from evtwin.sim.scenario import behaviour_overrides
from evtwin.sim.sessions import COLUMNS, given_evs, read_sessions

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).with_name("data")
SAMPLE = ROOT / "scenarios" / "data" / "sessions_sample.csv"

FILES = {"evtwin": "sessions_evtwin.csv", "acn": "sessions_acn.json",
         "elaad": "sessions_elaad.csv", "ocpi_cdr": "sessions_ocpi.json"}


def write(tmp_path: Path, text: str, name: str = "s.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", ["acn", "elaad", "ocpi_cdr"])
def test_each_format_maps_to_the_same_canonical_rows(fmt: str) -> None:
    ours = read_sessions(DATA / FILES["evtwin"])
    theirs = read_sessions(DATA / FILES[fmt], format=fmt)
    assert list(theirs.columns) == list(COLUMNS)
    assert str(theirs["arrival"].dt.tz) == "UTC"
    for col in ("session_id", "station_id", "ev_id", "energy_kwh"):
        assert theirs[col].tolist() == ours[col].tolist(), col
    for col in ("arrival", "departure"):
        gap = (theirs[col] - ours[col]).dt.total_seconds().abs()
        assert gap.max() < 1e-3, col


def test_what_the_energy_is_is_recorded() -> None:
    acn = read_sessions(DATA / FILES["acn"], format="acn")
    # A2 has driver inputs: the last one's kWhRequested, not the 7.61 kWh delivered.
    assert acn["energy_source"].tolist() == ["delivered", "requested", "delivered", "delivered"]
    assert acn.loc[1, "energy_kwh"] == 8.0
    for fmt in ("elaad", "ocpi_cdr"):
        assert set(read_sessions(DATA / FILES[fmt], format=fmt)["energy_source"]) == {
            "delivered"}
    elaad = read_sessions(DATA / FILES["elaad"], format="elaad")
    assert elaad["max_power_kw"].tolist() == [11.04, 11.04, 11.04, 3.7]


def test_naive_local_times_across_a_dst_change(tmp_path: Path) -> None:
    # Europe/Amsterdam goes from +01:00 to +02:00 at 02:00 on 29 March 2026.
    path = write(tmp_path, "arrival,departure,energy_kwh\n"
                 "2026-03-28T20:00:00,2026-03-29T08:00:00,10\n"
                 "2026-03-29T09:00:00+02:00,2026-03-29T10:00:00Z,2\n")
    rows = read_sessions(path, timezone="Europe/Amsterdam")
    assert rows.loc[0, "arrival"] == pd.Timestamp("2026-03-28T19:00:00Z")
    assert rows.loc[0, "departure"] == pd.Timestamp("2026-03-29T06:00:00Z")
    stay_h = (rows.loc[0, "departure"] - rows.loc[0, "arrival"]).total_seconds() / 3600
    assert stay_h == 11.0  # 12 hours on the wall clock, one of them skipped
    # Times with an offset are converted, whatever the zone option says.
    assert rows.loc[1, "arrival"] == pd.Timestamp("2026-03-29T07:00:00Z")
    assert rows.loc[1, "departure"] == pd.Timestamp("2026-03-29T10:00:00Z")
    assert rows["session_id"].tolist() == ["line2", "line3"]


def test_naive_times_without_a_zone_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "arrival,departure,energy_kwh\n"
                 "2026-03-28T20:00:00,2026-03-29T08:00:00Z,10\n")
    with pytest.raises(ScenarioError) as info:
        read_sessions(path)
    assert str(info.value).startswith(f"{path}: line 2, column arrival: ")
    assert "timezone" in str(info.value)


def test_bad_rows_name_the_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "arrival,departure,energy_kwh,soc_arrival\n"
                 "2026-06-01T08:00Z,2026-06-01T09:00Z,5,\n"
                 "2026-06-01T08:00Z,2026-06-01T09:00Z,lots,\n"
                 "2026-06-01T08:00Z,2026-06-01T07:00Z,5,\n"
                 "yesterday,2026-06-01T09:00Z,5,45\n")
    with pytest.raises(ScenarioError) as info:
        read_sessions(path)
    lines = str(info.value).splitlines()
    assert lines == [
        f"{path}: line 3, column energy_kwh: not a number: 'lots'",
        f"{path}: line 4, column departure: not after the arrival",
        f"{path}: line 5, column arrival: not a time: 'yesterday' (ISO 8601 or RFC 1123)",
    ]


@pytest.mark.parametrize(("fmt", "text", "expected"), [
    ("ocpi_cdr", '[{"id": "x", "start_date_time": "2026-06-01T08:00:00Z", '
     '"end_date_time": "2026-06-01T09:00:00Z"}]', "item 1, column total_energy: missing"),
    ("acn", '{"_items": [{"connectionTime": "Mon, 01 Jun 2026 08:00:00 GMT", '
     '"disconnectTime": "Mon, 01 Jun 2026 07:00:00 GMT", "kWhDelivered": 3}]}',
     "item 1, column disconnectTime: not after the arrival"),
    ("evtwin", "arrival,departure,energy_kwh,colour\n", "line 1: unknown columns ['colour']"),
    ("elaad", "ChargePoint;TotalEnergy\nCP;3\n", "line 1: no column UTCTransactionStart"),
])
def test_bad_files_of_each_format(tmp_path: Path, fmt: str, text: str, expected: str) -> None:
    path = write(tmp_path, text, "s.json" if text.startswith(("[", "{")) else "s.csv")
    with pytest.raises(ScenarioError) as info:
        read_sessions(path, format=fmt)
    assert str(info.value).startswith(f"{path}: {expected}")


def test_a_bad_sessions_file_is_one_line_and_exit_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "arrival,departure,energy_kwh\n2026-06-01T08:00Z,later,5\n")
    scenario = write(tmp_path, '[ev]\n[[sites]]\nname = "p"\nkind = "public"\nstations = 2\n'
                     'sessions = "s.csv"\n', "sc.toml")
    code = main(["run", str(scenario), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{tmp_path / 's.csv'}: line 2, column departure: not a time: 'later'" in err
    assert "Traceback" not in err


# -------------------------------------------------------------------------- scenarios
def test_scenario_fields_and_their_errors(tmp_path: Path) -> None:
    write(tmp_path, SAMPLE.read_text(), "sample.csv")
    path = write(tmp_path, '[ev]\n[[sites]]\nname = "p"\nstations = 2\nkind = "public"\n'
                 'sessions = "sample.csv"\n', "sc.toml")
    sc = load_scenario(path)
    assert sc.sites[0].sessions is not None
    assert sc.sites[0].sessions.file == str(tmp_path / "sample.csv")
    assert sc.sites[0].sessions.format == "evtwin"
    assert sc.ev_counts() == {"p": 0}
    bad = write(tmp_path, '[ev]\n[[sites]]\nname = "p"\nstations = 2\n'
                'sessions = {file = "x.csv", format = "excel", timezone = "Mars/Olympus"}\n'
                '[[sites]]\nname = "q"\nstations = 1\n', "bad.toml")
    with pytest.raises(ScenarioError) as info:
        load_scenario(bad)
    found = dict(info.value.problems)
    assert "sites.0.sessions.format" in found
    assert "unknown time zone 'Mars/Olympus'" in found["sites.0.sessions.timezone"]
    assert found["ev.count"].startswith("give the number of EVs")
    extra = write(tmp_path, '[ev]\ncount = 3\n[sessions]\nfile = "s.csv"\nsite = "z"\n'
                  '[[sites]]\nname = "p"\nstations = 2\n', "extra.toml")
    with pytest.raises(ScenarioError) as info:
        load_scenario(extra)
    found = dict(info.value.problems)
    assert found["ev.count"] == "every site takes its EVs from sessions: drop ev.count"
    assert found["sessions.site"] == "no site 'z'"


def test_fleet_sessions_go_to_the_sites_their_rows_name(tmp_path: Path) -> None:
    write(tmp_path, "arrival,departure,energy_kwh,site,station_id\n"
          "2026-06-01T08:00Z,2026-06-01T12:00Z,5,,home-002\n"
          "2026-06-01T09:00Z,2026-06-01T12:00Z,6,work,\n"
          "2026-06-01T10:00Z,2026-06-01T12:00Z,7,,elsewhere\n"
          "2026-06-03T10:00Z,2026-06-03T12:00Z,7,,\n", "fleet.csv")
    path = write(tmp_path, 'start = 2026-06-01T06:00:00Z\nduration_h = 24\n[ev]\n'
                 '[sessions]\nfile = "fleet.csv"\nsite = "work"\n'
                 '[[sites]]\nname = "home"\nstations = 3\n'
                 '[[sites]]\nname = "work"\nkind = "workplace"\nstations = 2\n', "sc.toml")
    sc = load_scenario(path)
    plan = given_evs(sc, {"home": 900.0, "work": 900.0})
    assert plan.outside == 1  # 3 June is after the day the run lasts
    assert {k: len(v) for k, v in plan.evs.items()} == {"home": 1, "work": 2}
    model = build_model(sc)
    home_ev = next(e for e in model.evs if e.site == "home")
    assert home_ev.charger == ("home-002", 1)  # its own charger, as the file says
    assert [e.site for e in model.evs] == ["home", "work", "work"]


def _old_build_model(path: Path) -> ChargingModel:
    """build_model as it was before sessions: the synthetic path's reference."""
    sc = load_scenario(path)
    counts = sc.ev_counts()
    sites = [SiteConfig(name=s.name, kind=s.kind, stations=s.stations,
                        evses_per_station=s.evses_per_station, evse_max_kw=s.evse_max_kw,
                        phases=s.phases, behaviour=behaviour_for(s.kind, **behaviour_overrides(s)),
                        ev_count=counts[s.name], bidirectional=s.bidirectional,
                        private=s.private, visitors_from=s.visitors_from,
                        visitor_share=s.visitor_share)
             for s in sc.sites]
    start_hour = sc.start.hour + sc.start.minute / 60.0 + sc.start.second / 3600.0
    return ChargingModel(sites, seed=sc.seed, duration_s=sc.duration_s, start_hour=start_hour,
                         iso15118_share=sc.ev.iso15118_share, v2g_share=sc.ev.v2g_share,
                         min_soc=sc.ev.min_soc, start_weekday=sc.start.weekday())


def _fingerprint(model: ChargingModel) -> str:
    text = repr([(e.ev_id, e.site, e.vehicle, e.visits, e.charger, e.states_needs, e.min_soc,
                  e.id_token) for e in model.evs])
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("name", ["demo", "district", "v2g"])
def test_drawn_scenarios_are_unchanged(name: str) -> None:
    path = ROOT / "scenarios" / f"{name}.toml"
    new = build_model(load_scenario(path))
    assert not any(e.session_tags for e in new.evs)
    assert _fingerprint(new) == _fingerprint(_old_build_model(path))


# -------------------------------------------------------------------------- done when
@pytest.fixture(scope="module")
def sample_run() -> tuple[Twin, pd.DataFrame, dict[str, float]]:
    sc = load_scenario(ROOT / "scenarios" / "sessions.toml", {"run.transport": "direct"})
    twin = Twin(sc)
    result = twin.run()
    return twin, result.sessions, result.kpis


@pytest.mark.slow
def test_the_sample_scenario_serves_what_power_and_stay_allow(
        sample_run: tuple[Twin, pd.DataFrame, dict[str, float]]) -> None:
    twin, sessions, kpis = sample_run
    table = read_sessions(SAMPLE, timezone="Europe/Amsterdam")
    assert len(table) == 300
    assert sorted(sessions["session_id"]) == sorted(table["session_id"])
    assert kpis["sessions_outside_run"] == 0
    by_id = sessions.set_index("session_id")
    # Each session wants exactly the file's energy (every one fits its battery here).
    file_kwh = table.set_index("session_id")["energy_kwh"]
    assert (by_id["energy_wanted_kwh"] - file_kwh).abs().max() < 1e-9
    assert (by_id["energy_file_kwh"] - file_kwh).abs().max() < 1e-9
    assert set(by_id["energy_source"]) == {"requested"}
    ev_power = {sid: ev.vehicle.max_power_kw for ev in twin.model.evs
                for sid, _ in ev.session_tags.values()}
    evse_kw = twin.sc.sites[0].evse_max_kw
    checked = short = 0
    for sid, row in by_id.iterrows():
        if row["outcome"] in ("turned_away", "skipped"):
            assert not row["served_in_full"]
            continue
        if row["outcome"] == "open":  # still plugged at the end of the week
            continue
        assert row["outcome"] == "served"
        power = min(evse_kw, ev_power[sid])
        possible = power * EFFICIENCY * (row["departure_s"] - row["plugged_s"]) / 3600.0
        wanted = row["energy_wanted_kwh"]
        if possible >= wanted * 1.001 and row["target_soc"] <= TAPER_SOC + 1e-9:
            assert row["energy_battery_kwh"] == pytest.approx(wanted, rel=1e-3, abs=1e-3), sid
            assert row["served_in_full"], sid
            checked += 1
        elif possible < wanted * 0.999:
            assert row["energy_battery_kwh"] < wanted, sid
            assert not row["served_in_full"], sid
            short += 1
    assert checked > 250 and short > 0
    not_served = sorted(by_id.index[~by_id["served_in_full"].astype(bool)])
    assert kpis["sessions_not_served"] == len(not_served)
    turned_away = by_id[by_id["outcome"] == "turned_away"]
    assert kpis["evs_turned_away"] == len(turned_away) > 0
    assert set(turned_away.index) <= set(not_served)


@pytest.mark.slow
def test_what_was_assumed_is_recorded_per_session(
        sample_run: tuple[Twin, pd.DataFrame, dict[str, float]]) -> None:
    _, sessions, _ = sample_run
    table = read_sessions(SAMPLE, timezone="Europe/Amsterdam").set_index("session_id")
    by_id = sessions.set_index("session_id")
    for sid, row in table.iterrows():
        assumed = set(filter(None, by_id.loc[sid, "assumed"].split(",")))
        if pd.isna(row["soc_arrival"]):
            assert "soc" in assumed
        else:
            assert "soc" not in assumed
            assert by_id.loc[sid, "soc_initial"] == pytest.approx(row["soc_arrival"])
        if row["ev_id"] is None:  # one EV per session: its own figures
            assert ("capacity" in assumed) == pd.isna(row["capacity_kwh"])
            assert ("max_power" in assumed) == pd.isna(row["max_power_kw"])


def test_assumptions_are_seeded() -> None:
    sc = load_scenario(ROOT / "scenarios" / "sessions.toml")
    a, b = (given_evs(sc, {"carpark": 900.0}) for _ in range(2))
    assert a.evs == b.evs
    other = given_evs(sc.model_copy(update={"seed": 4}), {"carpark": 900.0})
    assert other.evs != a.evs


def test_the_sample_is_what_its_script_writes(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_sessions_sample", ROOT / "scenarios" / "data" / "make_sessions_sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path / "sample.csv")
    module.main()
    assert (tmp_path / "sample.csv").read_text() == SAMPLE.read_text()


def test_start_window_in_utc() -> None:
    sc = load_scenario(ROOT / "scenarios" / "sessions.toml", {"duration_h": 24})
    plan = given_evs(sc, {"carpark": 900.0})
    first = min(v.arrival_s for evs in plan.evs.values() for e in evs for v in e.visits)
    # The first sample session arrives on Monday 06:29 local (+02:00), the run at 00:00.
    assert first == (datetime(2026, 6, 1, 4, 29, tzinfo=UTC)
                     - datetime(2026, 5, 31, 22, 0, tzinfo=UTC)).total_seconds()
    assert plan.outside == 300 - 48
