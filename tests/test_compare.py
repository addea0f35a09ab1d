"""KPI formatting by magnitude, and the tables that print it (run and compare)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from evtwin.sim import compare as compare_module
from evtwin.sim.cli import kpi_table, main
from evtwin.sim.compare import StrategyRun
from evtwin.sim.kpis import KPI_LABELS, display_unit, format_kpi

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("value", "unit", "text"), [
    (0.28, "", "0.28"),             # battery cycles: not 0
    (0.36, "", "0.36"),
    (0.004, "%", "0.004"),          # an unmet share: not 0.0
    (15100.0, "kWh", "15,100"),     # not 1.51e+04
    (15100.3, "kWh", "15,100"),
    (3.0, "", "3"),                 # integers stay integers
    (692.0, "", "692"),
    (0.0, "%", "0"),
    (-0.0, "cur", "0"),
    (0.98793, "pu", "0.9879"),
    (47.93, "cur", "47.93"),
    (-12.5, "cur", "-12.5"),
    (99.998, "%", "99.998"),        # a share just below 100 % does not read as 100
    (100.023, "%", "100.02"),       # a transformer just over its limit does not read as 100
    (141.96, "EUR", "142.0"),       # a rounded value keeps its zero: 142 would read as exact
    (2.4817, "%", "2.482"),
])
def test_format_kpi_by_magnitude(value: float, unit: str, text: str) -> None:
    assert format_kpi(value, unit) == text


@pytest.mark.parametrize("exponent", range(-6, 15))
@pytest.mark.parametrize("mantissa", [1.0, 1.2345678, 9.87654321, -3.3333333])
def test_format_kpi_keeps_four_digits_without_scientific_notation(exponent: int,
                                                                  mantissa: float) -> None:
    value = mantissa * 10.0 ** exponent
    text = format_kpi(value, "kWh")
    assert "e" not in text.lower()
    shown = float(text.replace(",", ""))
    assert math.isclose(shown, value, rel_tol=5e-4), (value, text)


def test_format_kpi_of_what_is_not_a_number() -> None:
    assert format_kpi(float("nan"), "kWh") == "n/a"
    assert format_kpi(float("inf"), "kWh") == "inf"


def test_display_unit_puts_in_the_currency() -> None:
    assert display_unit("cur", "CHF") == "CHF"
    assert display_unit("kWh", "CHF") == "kWh"


def test_metered_and_billed_say_which_energy_they_count() -> None:
    # With V2G the CSMS bills the import register and the stations meter the net:
    # the labels must say so, or billed > metered looks like an error.
    assert "net" in KPI_LABELS["energy_metered_kwh"][0]
    assert "import" in KPI_LABELS["energy_billed_kwh"][0]


def _printed(table: object) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_run_table_prints_small_values_and_the_currency() -> None:
    kpis = {"max_equivalent_full_cycles": 0.28, "energy_unmet_percent": 0.004,
            "energy_delivered_kwh": 15100.0, "net_energy_cost": 47.9, "evs_served": 12.0}
    text = _printed(kpi_table(kpis, {"wall_time_s": 1.0, "speedup_vs_real_time": 100.0},
                              "t", "CHF"))
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert "0.28" in rows[KPI_LABELS["max_equivalent_full_cycles"][0]]
    assert "0.004" in rows[KPI_LABELS["energy_unmet_percent"][0]]
    assert "15,100" in rows[KPI_LABELS["energy_delivered_kwh"][0]]
    assert "47.9" in rows[KPI_LABELS["net_energy_cost"][0]]
    assert "CHF" in rows[KPI_LABELS["net_energy_cost"][0]]
    assert "12 " in rows[KPI_LABELS["evs_served"][0]]


@pytest.mark.slow
def test_compare_table_has_units_and_values_by_magnitude(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ts = pd.DataFrame({"t_s": [0.0, 60.0], "trafo_loading_percent": [10.0, 12.0],
                       "vm_min_pu": [1.0, 0.99]})
    kpis = {"energy_delivered_kwh": 15100.3, "max_equivalent_full_cycles": 0.28,
            "energy_unmet_percent": 0.004, "energy_cost": 99.4, "net_energy_cost": 47.9,
            "peak_trafo_loading_percent": 12.0, "v_min_pu": 0.99,
            "minutes_voltage_violation": 0.0, "minutes_thermal_violation": 0.0}

    def fake_compare(path: str, strategies: list[str], **_: object) -> list[StrategyRun]:
        return [StrategyRun(s, kpis, {"wall_time_s": 1.0}, ts) for s in strategies]

    # The table's formatting is under test, not the runs (test_plots.py makes real ones).
    monkeypatch.setattr(compare_module, "compare", fake_compare)
    monkeypatch.setenv("COLUMNS", "200")
    code = main(["compare", str(ROOT / "scenarios" / "v2g_price.toml"), "--strategies",
                 "price,v2g_price", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "e+" not in out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    assert "15,100" in lines[f"{KPI_LABELS['energy_delivered_kwh'][0]} [kWh]"]
    assert "0.28" in lines[KPI_LABELS["max_equivalent_full_cycles"][0]]
    assert "0.004" in lines[f"{KPI_LABELS['energy_unmet_percent'][0]} [%]"]
    assert "47.9" in lines[f"{KPI_LABELS['net_energy_cost'][0]} [EUR]"]
    assert f"{KPI_LABELS['v_min_pu'][0]} [pu]" in lines  # rich must not eat "[pu]"
    assert "KPI [unit]" in out  # the header row
    assert not any("[cur]" in label for label in lines)
    (folder,) = tmp_path.iterdir()
    assert (folder / "compare_kpis.png").stat().st_size > 10_000
