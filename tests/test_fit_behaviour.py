"""fit-behaviour recovers the parameters of synthetic sessions drawn with them."""

from __future__ import annotations

import csv
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from evtwin.agents.behaviour import Behaviour, Vehicle, behaviour_for, draw_visit, plugs_in
from evtwin.sim.cli import main
from evtwin.sim.fit import block_toml, fit_behaviour, read_sessions
from evtwin.sim.scenario import behaviour_overrides, parse_scenario

# Known parameters: two well-separated weekday components (morning commuters with a
# working-day stay, evening arrivals staying the night) and a weekend of their own.
TRUE = Behaviour(
    arrival_mean_h=14.0, arrival_std_h=5.0, arrival_min_h=0.0, arrival_max_h=23.99,
    dwell_median_h=8.0, dwell_sigma=0.3, dwell_min_h=0.05, dwell_max_h=60.0,
    energy_median_kwh=15.0, energy_sigma=0.5, energy_min_kwh=0.01, energy_max_kwh=500.0,
    arrival_weights=(0.35, 0.65), arrival_means_h=(8.0, 18.5), arrival_stds_h=(1.0, 1.5),
    dwell_medians_h=(8.0, 12.0),
    weekend_arrival_weights=(0.5, 0.5), weekend_arrival_means_h=(11.0, 19.0),
    weekend_arrival_stds_h=(1.5, 1.2), weekend_dwell_medians_h=(3.0, 10.0),
    dwell_energy_corr=0.5, plugin_share=0.7, weekend_share=0.8)
BIG = Vehicle(capacity_kwh=1000.0, max_power_kw=11.0, phases=3)  # never full: energy exact
MONDAY = datetime(2024, 1, 1, tzinfo=UTC)

# Tolerances for about 4,000 weekday and 1,300 weekend sessions.
TOL_WEIGHT, TOL_MEAN_H, TOL_STD_H = 0.04, 0.25, 0.2
TOL_MEDIAN_REL, TOL_SIGMA, TOL_CORR, TOL_SHARE = 0.08, 0.04, 0.07, 0.03


def synthetic_sessions(path: Path, *, evs: int = 200, days: int = 42, seed: int = 1) -> int:
    """Sessions drawn with TRUE, as an evtwin sessions CSV; returns how many."""
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(evs):
        for d in range(days):
            weekend = (MONDAY + timedelta(days=d)).weekday() >= 5
            v = draw_visit(rng, TRUE, BIG, d * 86400.0, 0.0, weekend=weekend)
            if not plugs_in(TRUE, float(rng.random()), weekend):
                continue
            rows.append({"ev_id": f"EV{e}",
                         "arrival": (MONDAY + timedelta(seconds=v.arrival_s)).isoformat(),
                         "departure": (MONDAY + timedelta(seconds=v.departure_s)).isoformat(),
                         "energy_kwh": f"{(v.target_soc - v.soc_initial) * BIG.capacity_kwh:.4f}"})
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["ev_id", "arrival", "departure", "energy_kwh"])
        w.writeheader()
        w.writerows(rows)
    return len(rows)


@pytest.fixture(scope="module")
def sessions_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fit") / "sessions.csv"
    synthetic_sessions(path)
    return path


def check_recovered(block: dict[str, object]) -> None:
    for prefix in ("", "weekend_"):
        weights = getattr(TRUE, f"{prefix}arrival_weights")
        assert block[f"{prefix}arrival_weights"] == pytest.approx(weights, abs=TOL_WEIGHT)
        assert block[f"{prefix}arrival_means_h"] == pytest.approx(
            getattr(TRUE, f"{prefix}arrival_means_h"), abs=TOL_MEAN_H)
        assert block[f"{prefix}arrival_stds_h"] == pytest.approx(
            getattr(TRUE, f"{prefix}arrival_stds_h"), abs=TOL_STD_H)
        assert block[f"{prefix}dwell_medians_h"] == pytest.approx(
            getattr(TRUE, f"{prefix}dwell_medians_h"), rel=TOL_MEDIAN_REL)
    assert block["dwell_sigma"] == pytest.approx(TRUE.dwell_sigma, abs=TOL_SIGMA)
    assert block["energy_median_kwh"] == pytest.approx(TRUE.energy_median_kwh,
                                                       rel=TOL_MEDIAN_REL)
    assert block["energy_sigma"] == pytest.approx(TRUE.energy_sigma, abs=TOL_SIGMA)
    assert block["dwell_energy_corr"] == pytest.approx(TRUE.dwell_energy_corr, abs=TOL_CORR)
    assert block["plugin_share"] == pytest.approx(TRUE.plugin_share, abs=TOL_SHARE)
    assert block["weekend_share"] == pytest.approx(TRUE.weekend_share, abs=0.08)


def test_fit_recovers_known_parameters(sessions_csv: Path) -> None:
    fit = fit_behaviour(read_sessions(sessions_csv), components=2)
    check_recovered(fit.block)


def test_one_component_recovers_a_single_normal(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    b = behaviour_for("workplace", arrival_mean_h=9.0, arrival_std_h=1.2, dwell_median_h=7.0,
                      arrival_min_h=0.0, arrival_max_h=23.99, dwell_max_h=48.0)
    path = tmp_path / "s.csv"
    with path.open("w", encoding="utf-8") as fh:
        fh.write("arrival,departure,energy_kwh\n")
        for d in range(3000):
            v = draw_visit(rng, b, BIG, d * 86400.0, 0.0)
            a = MONDAY + timedelta(seconds=v.arrival_s)
            dep = a + timedelta(seconds=v.departure_s - v.arrival_s)
            fh.write(f"{a.isoformat()},{dep.isoformat()},"
                     f"{(v.target_soc - v.soc_initial) * 1000:.4f}\n")
    block = fit_behaviour(read_sessions(path), components=1).block
    assert block["arrival_weights"] == [1.0]
    assert block["arrival_means_h"][0] == pytest.approx(9.0, abs=0.1)
    assert block["arrival_stds_h"][0] == pytest.approx(1.2, abs=0.1)
    assert block["dwell_medians_h"][0] == pytest.approx(7.0, rel=0.05)
    assert "plugin_share" not in block  # the file names no EVs


@pytest.mark.slow
def test_cli_writes_a_block_that_parses_and_drives_draws(sessions_csv: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["fit-behaviour", str(sessions_csv), "--components", "2", "--kind", "home",
                 "--out", str(out)]) == 0
    [folder] = list(out.iterdir())
    assert folder.name.startswith("sessions-fit-")
    text = (folder / "sessions-behaviour.toml").read_text(encoding="utf-8")
    assert (folder / "sessions-behaviour.png").stat().st_size > 10_000
    scenario = ("seed = 1\n[ev]\ncount = 4\n[[sites]]\nname = \"street\"\nkind = \"home\"\n"
                "stations = 2\n" + text)
    sc = parse_scenario(tomllib.loads(scenario))
    check_recovered(tomllib.loads(text)["sites"]["behaviour"])
    b = behaviour_for("home", **behaviour_overrides(sc.sites[0]))
    assert b.arrival_means_h == pytest.approx(TRUE.arrival_means_h, abs=TOL_MEAN_H)
    rng = np.random.default_rng(3)
    hours = [draw_visit(rng, b, BIG, 0.0, 0.0).arrival_s / 3600 for _ in range(4000)]
    assert np.mean(np.array(hours) < 13.0) == pytest.approx(0.35, abs=0.04)
    # Run again: a second folder, the first one untouched.
    assert main(["fit-behaviour", str(sessions_csv), "--out", str(out)]) == 0
    assert len(list(out.iterdir())) == 2
    assert (folder / "sessions-behaviour.toml").read_text(encoding="utf-8") == text


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    naive = tmp_path / "naive.csv"
    naive.write_text("arrival,departure,energy_kwh\n2024-01-01T08:00,2024-01-01T17:00,9\n",
                     encoding="utf-8")
    assert main(["fit-behaviour", str(naive), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--timezone" in err and "Traceback" not in err
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival,energy_kwh\n2024-01-01T08:00Z,9\n", encoding="utf-8")
    assert main(["fit-behaviour", str(bad), "--out", str(tmp_path)]) == 2
    assert "departure" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "naive.csv"]


def test_block_toml_has_the_table_header(sessions_csv: Path) -> None:
    fit = fit_behaviour(read_sessions(sessions_csv), components=2)
    text = block_toml(fit, "x.csv", None)
    assert "[sites.behaviour]" in text and tomllib.loads(text)["sites"]["behaviour"]
