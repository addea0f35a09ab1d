"""The business case (evtwin.sim.finance, ``evtwin finance``): every figure checked
against a computation written out here by hand, not against the module's own output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evtwin.sim import ScenarioError, load_scenario
from evtwin.sim.cli import main
from evtwin.sim.finance import (
    Hardware,
    Levers,
    RunPart,
    YearBase,
    assign_plans,
    business_case,
    cash_flows,
    charged_sessions,
    metrics,
    payback_years,
    plan_revenue,
    plan_usage,
    scale_factors,
    tornado,
    year_base,
)
from evtwin.sim.finance_config import FinanceSettings, PowerClass, TariffPlan

ROOT = Path(__file__).resolve().parents[1]
BUSINESS = ROOT / "scenarios" / "business.toml"

#: No growth, no escalation, no running costs: cash flows are what a test puts in.
FLAT = dict(demand_growth=0.0, tariff_escalation=0.0, energy_price_escalation=0.0,
            opex_escalation=0.0, demand_charge_per_kw_month_cur=0.0,
            maintenance_per_evse_year_cur=0.0, communication_per_station_month_cur=0.0,
            roaming_fee_share=0.0, grid_connection_per_kw_cur=0.0)


def _ppu(price: float, fee: float = 0.0, share: float = 1.0,
         name: str = "ppu") -> TariffPlan:
    return TariffPlan(name=name, kind="pay_per_use", share=share, price_per_kwh_cur=price,
                      session_fee_cur=fee)


def _base(energy_kwh: float, sessions: float = 0.0, drivers: float = 1.0,
          energy_cost: float = 0.0, peak: dict[str, float] | None = None,
          plan: str = "ppu") -> YearBase:
    return YearBase(usage=pd.DataFrame({"sessions": [sessions], "energy_kwh": [energy_kwh]},
                                       index=[plan]),
                    drivers=pd.Series({plan: drivers}), energy_cost_cur=energy_cost,
                    peak_kw=peak or {}, maintenance_cost_cur=None, assembly="by hand")


# ----------------------------------------------------------------------------- NPV, IRR
def _irr_by_bisection(flows: list[float]) -> float:
    lo, hi = -0.99, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        npv = sum(cf / (1 + mid) ** t for t, cf in enumerate(flows))
        lo, hi = (mid, hi) if npv > 0 else (lo, mid)
    return (lo + hi) / 2


def test_npv_and_irr_agree_with_a_hand_computed_cash_flow() -> None:
    """Capex 100,000, then 5 years of +30,000 at 8 %: one 11 kW EVSE costing 100,000 and
    30,000 kWh a year sold at 1 per kWh, nothing else."""
    fs = FinanceSettings(plans=[_ppu(1.0)], lifetime_years=5, discount_rate=0.08,
                         power_classes=[PowerClass(up_to_kw=22, hardware_per_evse_cur=100_000,
                                                   installation_per_evse_cur=0)], **FLAT)
    hw = Hardware(evse_kw=[11.0], stations=1, connection_kw={"a": 11.0})
    table = cash_flows(fs, _base(30_000.0), hw)
    flows = [-100_000.0, 30_000.0, 30_000.0, 30_000.0, 30_000.0, 30_000.0]
    assert table["net_cash_flow_cur"].tolist() == pytest.approx(flows)
    # by hand: -100000 + 30000/1.08 + 30000/1.08^2 + ... + 30000/1.08^5
    npv = -100_000 + 30_000 / 1.08 + 30_000 / 1.08**2 + 30_000 / 1.08**3 \
        + 30_000 / 1.08**4 + 30_000 / 1.08**5
    assert npv == pytest.approx(19_781.30, abs=0.01)  # the annuity factor 3.99271
    m = metrics(table, 0.08)
    assert m.npv_cur == pytest.approx(npv, rel=1e-12)
    assert table["cumulative_discounted_cur"].iloc[-1] == pytest.approx(npv, rel=1e-12)
    irr = _irr_by_bisection(flows)
    assert irr == pytest.approx(0.152382, abs=1e-6)
    assert m.irr == pytest.approx(irr, abs=1e-9)
    # Simple payback: -100k, -70k, -40k, -10k, then +20k: 3 + 10/30 years.
    assert m.payback_years == pytest.approx(3 + 10_000 / 30_000)
    # Discounted: cumulative -100000, -72222.2, -46502.1, -22687.1, -636.2, +19781.3.
    d = [30_000 / 1.08**t for t in range(1, 6)]
    assert m.discounted_payback_years == pytest.approx(4 + (100_000 - sum(d[:4])) / d[4])


def test_payback_is_none_when_never_paid_back_and_zero_when_nothing_to_pay() -> None:
    assert payback_years([-100.0, 10.0, 10.0]) is None
    assert payback_years([0.0, 5.0]) == 0.0
    assert payback_years([-10.0, 4.0, 4.0, 4.0]) == pytest.approx(2.5)
    # Year 0 at 0 (a full grant) and losses after: never paid back, not "0 years".
    assert payback_years([0.0, -5.0, -5.0]) is None
    assert payback_years([10.0, -50.0, 1.0]) is None
    # Back above 0, below again, then above for good: the last crossing counts.
    assert payback_years([-10.0, 20.0, -30.0, 40.0]) == pytest.approx(2 + 20 / 40)


def test_growth_escalation_and_opex_year_by_year() -> None:
    """Year 2 with demand growth, tariff, energy-price and opex escalation, by hand."""
    fs = FinanceSettings(
        plans=[_ppu(0.5, fee=1.0)], lifetime_years=2, discount_rate=0.1,
        demand_growth=0.10, tariff_escalation=0.05, energy_price_escalation=0.03,
        opex_escalation=0.02, demand_charge_per_kw_month_cur=2.0,
        maintenance_per_evse_year_cur=100.0, communication_per_station_month_cur=5.0,
        roaming_fee_share=0.1, grid_connection_per_kw_cur=10.0, subsidy_share=0.5,
        grant_cur=100.0,
        power_classes=[PowerClass(up_to_kw=22, hardware_per_evse_cur=1000,
                                  installation_per_evse_cur=500)])
    hw = Hardware(evse_kw=[11.0, 11.0], stations=1, connection_kw={"a": 21.0})
    base = _base(energy_kwh=1000.0, sessions=100.0, energy_cost=300.0, peak={"a": 20.0})
    t = cash_flows(fs, base, hw)
    capex = 2 * 1500 + 10 * 21
    assert t.loc[0, "capex_cur"] == pytest.approx(-capex)
    assert t.loc[0, "subsidy_cur"] == pytest.approx(0.5 * capex + 100)
    # year 2: volumes x 1.1, prices x 1.05, energy x 1.03, opex x 1.02
    revenue = (1000 * 1.1 * 0.5 + 100 * 1.1 * 1.0) * 1.05
    assert t.loc[2, "revenue_cur"] == pytest.approx(revenue)
    assert t.loc[2, "energy_cost_cur"] == pytest.approx(-300 * 1.1 * 1.03)
    # the peak grows to 22 kW but the connection holds it at 21 kW
    assert t.loc[2, "demand_charges_cur"] == pytest.approx(-2.0 * 12 * 21 * 1.02)
    assert t.loc[1, "demand_charges_cur"] == pytest.approx(-2.0 * 12 * 20)
    assert t.loc[2, "maintenance_cur"] == pytest.approx(-200 * 1.02)
    assert t.loc[2, "communication_cur"] == pytest.approx(-60 * 1.02)
    assert t.loc[2, "roaming_fees_cur"] == pytest.approx(-0.1 * revenue)
    net2 = revenue - 300 * 1.1 * 1.03 - 2 * 12 * 21 * 1.02 - 200 * 1.02 - 60 * 1.02 \
        - 0.1 * revenue
    assert t.loc[2, "net_cash_flow_cur"] == pytest.approx(net2)
    assert t.loc[2, "discounted_cash_flow_cur"] == pytest.approx(net2 / 1.1**2)


# ----------------------------------------------------------------------------- plans
PLANS = [
    TariffPlan(name="adhoc", kind="pay_per_use", share=0.5, price_per_kwh_cur=0.6,
               session_fee_cur=1.0),
    TariffPlan(name="sub", kind="subscription", share=0.25, price_per_kwh_cur=0.4,
               monthly_fee_cur=10.0),
    TariffPlan(name="member", kind="membership", share=0.25, price_per_kwh_cur=0.5,
               yearly_fee_cur=50.0),
]


def test_plan_revenue_of_a_small_sessions_frame_by_hand() -> None:
    sessions = pd.DataFrame({
        "ev_id": ["A", "A", "B", "C", "D", "D"],
        "site": ["s", "s", "s", "s", "other", "s"],
        "outcome": ["served", "open", "served", "turned_away", "served", "served"],
        "energy_grid_kwh": [10.0, 5.0, 20.0, 0.0, 99.0, 8.0],
    })
    charged = charged_sessions(sessions, ["s"])
    assert sorted(charged["ev_id"]) == ["A", "A", "B", "D"]  # not C (turned away), not D@other
    usage = plan_usage(charged, {"A": "adhoc", "B": "sub", "D": "member"}, PLANS)
    revenue = plan_revenue(usage, pd.Series({"adhoc": 1, "sub": 1, "member": 1}), PLANS)
    # adhoc (A): 15 kWh x 0.6 + 2 sessions x 1.0; sub (B): 20 x 0.4 + 12 x 10;
    # member (D, its session at "s" only): 8 x 0.5 + 50
    assert revenue.loc["adhoc", "total_cur"] == pytest.approx(15 * 0.6 + 2 * 1.0)
    assert revenue.loc["sub", "total_cur"] == pytest.approx(20 * 0.4 + 120.0)
    assert revenue.loc["member", "total_cur"] == pytest.approx(8 * 0.5 + 50.0)
    assert revenue.loc["adhoc", "session_fees_cur"] == pytest.approx(2.0)
    assert revenue.loc["sub", "plan_fees_cur"] == pytest.approx(120.0)


def test_plan_assignment_is_seeded_and_split_by_largest_remainder() -> None:
    plans = [_ppu(0.5, share=0.6, name="a"),
             TariffPlan(name="b", kind="subscription", share=0.25, price_per_kwh_cur=0.4),
             TariffPlan(name="c", kind="membership", share=0.15, price_per_kwh_cur=0.45)]
    ids = [f"EV{i:02d}" for i in range(10)]
    got = assign_plans(ids, plans, seed=3)
    # 10 x (0.6, 0.25, 0.15) = 6, 2.5, 1.5: the tied remainders go to the first plan (b).
    counts = pd.Series(got).value_counts().to_dict()
    assert counts == {"a": 6, "b": 3, "c": 1}
    assert assign_plans(list(reversed(ids)), plans, seed=3) == got  # order does not matter
    again = [assign_plans(ids, plans, seed=s) for s in range(5)]
    assert len({tuple(sorted(a.items())) for a in again}) > 1  # the seed shuffles


# ----------------------------------------------------------------------------- a year
def _ts(net_kw: list[float], price: list[float], step_s: float = 3600.0) -> pd.DataFrame:
    return pd.DataFrame({"t_s": np.arange(len(net_kw)) * step_s, "price_per_kwh": price,
                         "site_a_kw": net_kw, "site_a_net_kw": net_kw})


def test_scale_factors_for_one_run_and_for_representative_weeks() -> None:
    def part(h: float, weeks: float | None = None) -> RunPart:
        return RunPart("x", h, pd.DataFrame(), pd.DataFrame(), {}, weeks)

    assert scale_factors([part(168)]) == [pytest.approx(8760 / 168)]
    assert scale_factors([part(24)]) == [pytest.approx(365)]
    assert scale_factors([part(168, 13), part(168, 13), part(168, 26)]) == \
        [pytest.approx(13), pytest.approx(13), pytest.approx(26)]
    # a day standing for 10 weeks counts 70 times
    assert scale_factors([part(24, 10), part(168, 42)]) == [pytest.approx(70),
                                                            pytest.approx(42)]
    with pytest.raises(ValueError, match="sum to 50"):
        scale_factors([part(168, 25), part(168, 25)])
    with pytest.raises(ValueError, match="weeks"):
        scale_factors([part(168), part(168)])


def test_year_from_two_weighted_weeks_by_hand() -> None:
    """Two 2-hour runs, 26 weeks each: volumes x 26 x 168 / 2, fees once, peak the max."""
    fs = FinanceSettings(plans=[_ppu(0.5, fee=1.0)], **FLAT)
    s1 = pd.DataFrame({"ev_id": ["A", "B"], "site": ["a", "a"],
                       "outcome": ["served", "served"], "energy_grid_kwh": [10.0, 6.0]})
    s2 = pd.DataFrame({"ev_id": ["A"], "site": ["a"], "outcome": ["open"],
                       "energy_grid_kwh": [4.0]})
    # run 1: import 10 kW at 0.3 then 4 kW at 0.5 -> 3 + 2 = 5; run 2: 2 kW at 0.2 (the
    # export step, -3 kW, costs nothing) -> 0.4
    p1 = RunPart("w1", 2.0, s1, _ts([0, 10, 4], [0.3, 0.3, 0.5]), {}, 26)
    p2 = RunPart("w2", 2.0, s2, _ts([0, -3, 2], [0.2, 0.2, 0.2]), {}, 26)
    base = year_base([p1, p2], fs, ["a"], seed=0)
    k = 26 * 168 / 2
    assert base.energy_cost_cur == pytest.approx((5.0 + 0.4) * k)
    assert base.usage.loc["ppu", "energy_kwh"] == pytest.approx((16 + 4) * k)
    assert base.usage.loc["ppu", "sessions"] == pytest.approx(3 * k)
    assert base.drivers["ppu"] == 2  # A and B, counted once
    assert base.peak_kw == {"a": 10.0}
    assert "26 weeks" in base.assembly


# ----------------------------------------------------------------------------- tornado
def test_tornado_puts_the_largest_npv_swing_first() -> None:
    def npv_of(lv: Levers) -> float:  # known sensitivities: tariffs 100, demand 50, capex -10
        return 100 * lv.tariffs + 50 * lv.demand - 10 * lv.capex

    tor = tornado(npv_of, 20.0, {"capex": "Capex", "demand": "Demand", "tariffs": "Tariffs"})
    assert list(tor.index) == ["Tariffs", "Demand", "Capex"]
    assert tor.loc["Tariffs", "swing_cur"] == pytest.approx(40.0)
    assert tor.loc["Capex", "npv_low_cur"] == pytest.approx(100 + 50 - 8)
    assert tor.loc["Capex", "npv_high_cur"] == pytest.approx(100 + 50 - 12)


# ----------------------------------------------------------------------------- config
SMALL = """\
name = "small"
seed = 5
step_s = 3600
duration_h = 2

[control]
interval_s = 3600

[csms]
meter_interval_s = 3600
aligned_interval_s = 3600

[ev]
count = 4

[[sites]]
name = "a"
kind = "public"
stations = 1
evses_per_station = 2
evse_max_kw = 11
limit_kw = 20
"""

SMALL_FINANCE = """
[finance]
lifetime_years = 3
discount_rate = 0.1
demand_growth = 0
tariff_escalation = 0
energy_price_escalation = 0
opex_escalation = 0
demand_charge_per_kw_month_cur = 2
maintenance_per_evse_year_cur = 100
communication_per_station_month_cur = 0
roaming_fee_share = 0
grid_connection_per_kw_cur = 10
power_classes = [{up_to_kw = 22, hardware_per_evse_cur = 1000, installation_per_evse_cur = 500}]

[[finance.plans]]
name = "adhoc"
kind = "pay_per_use"
share = 1
price_per_kwh_cur = 0.5
session_fee_cur = 1.0
"""


def _problems(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "case.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return dict(info.value.problems)


def test_a_scenario_without_finance_has_none(tmp_path: Path) -> None:
    path = tmp_path / "case.toml"
    path.write_text(SMALL, encoding="utf-8")
    assert load_scenario(path).finance is None


@pytest.mark.parametrize(("change", "field", "words"), [
    (("share = 1", "share = 0.9"), "finance.plans", "sum to 0.9"),
    (("discount_rate = 0.1", "discount_rat = 0.1"), "finance.discount_rat", ""),
    (("session_fee_cur = 1.0", "monthly_fee_cur = 9.0"), "finance.plans.0.monthly_fee_cur",
     "pay_per_use"),
    (("lifetime_years = 3", "lifetime_years = 0"), "finance.lifetime_years", ""),
    (('kind = "pay_per_use"', 'kind = "flatrate"'), "finance.plans.0.kind", ""),
])
def test_finance_config_errors_name_the_field(tmp_path: Path, change: tuple[str, str],
                                              field: str, words: str) -> None:
    problems = _problems(tmp_path, SMALL + SMALL_FINANCE.replace(*change))
    assert field in problems, problems
    assert words in problems[field]


def test_an_unknown_finance_site_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "case.toml"
    path.write_text(SMALL + SMALL_FINANCE.replace("[finance]\n", '[finance]\nsites = ["b"]\n'),
                    encoding="utf-8")
    sc = load_scenario(path)
    with pytest.raises(ScenarioError) as info:
        business_case(sc, [RunPart("x", 2.0, pd.DataFrame(), _ts([0, 1, 1], [0.3] * 3), {})])
    assert info.value.problems[0][0] == "finance.sites"


# ----------------------------------------------------------------------------- the CLI
def _run_folder(folder: Path, net_kw: list[float], price: list[float],
                sessions: pd.DataFrame) -> Path:
    folder.mkdir(parents=True)
    (folder / "kpis.json").write_text(json.dumps({"kpis": {"energy_cost": 0.0}}))
    sessions.to_csv(folder / "sessions.csv", index=False)
    _ts(net_kw, price).to_csv(folder / "timeseries.csv", index=False)
    return folder


SESSIONS = pd.DataFrame({"ev_id": ["EV1", "EV2", "EV3", "EV1"], "site": ["a"] * 4,
                         "outcome": ["served", "open", "turned_away", "served"],
                         "energy_grid_kwh": [10.0, 4.0, 0.0, 6.0]})


def test_cli_on_a_run_folder_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL + SMALL_FINANCE, encoding="utf-8")
    run = _run_folder(tmp_path / "run", [0, 10, 4], [0.3, 0.3, 0.5], SESSIONS)
    code = main(["finance", str(scenario), "--run", str(run), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    (folder,) = (tmp_path / "out").iterdir()
    table = pd.read_csv(folder / "finance.csv", index_col="year")
    k = 8760 / 2  # a 2-hour run stands for a year
    revenue = (20 * 0.5 + 3 * 1.0) * k  # 20 kWh and 3 charged sessions per run
    energy = (10 * 0.3 + 4 * 0.5) * k
    net = revenue - energy - 2 * 12 * 10 - 2 * 100  # demand charge on 10 kW; 2 EVSEs
    assert table.loc[0, "net_cash_flow_cur"] == pytest.approx(-(2 * 1500 + 10 * 20))
    assert table.loc[1, "revenue_cur"] == pytest.approx(revenue)
    assert table.loc[1, "energy_cost_cur"] == pytest.approx(-energy)
    assert table.loc[3, "net_cash_flow_cur"] == pytest.approx(net)
    doc = json.loads((folder / "finance.json").read_text())
    npv = -3200 + net / 1.1 + net / 1.1**2 + net / 1.1**3
    assert doc["npv_cur"] == pytest.approx(npv)
    assert doc["year_assembly"].startswith("one run of 2 h")
    assert (folder / "tornado.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "NPV at 10 %" in out and "payback" in out


def test_cli_weeks_of_run_folders_must_sum_to_52(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL + SMALL_FINANCE, encoding="utf-8")
    w1 = _run_folder(tmp_path / "w1", [0, 10, 4], [0.3, 0.3, 0.5], SESSIONS)
    w2 = _run_folder(tmp_path / "w2", [0, 2, 2], [0.3, 0.3, 0.3], SESSIONS.iloc[:1])
    out = tmp_path / "out"
    code = main(["finance", str(scenario), "--weeks", f"{w1}:26,{w2}:20", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--weeks" in err[0] and "46" in err[0], err
    assert not out.exists() or not any(out.iterdir())
    assert main(["finance", str(scenario), "--weeks", f"{w1}:26,{w2}:26",
                 "--out", str(out)]) == 0
    (folder,) = out.iterdir()
    table = pd.read_csv(folder / "finance.csv", index_col="year")
    k = 26 * 168 / 2
    assert table.loc[1, "revenue_cur"] == pytest.approx(
        ((20 * 0.5 + 3) + (10 * 0.5 + 1)) * k)


@pytest.mark.parametrize("make", ["missing", "empty", "no_timeseries"])
def test_cli_bad_run_folder_is_one_line_exit_2(tmp_path: Path, make: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL + SMALL_FINANCE, encoding="utf-8")
    run = tmp_path / "run"
    if make == "empty":
        run.mkdir()
    elif make == "no_timeseries":
        _run_folder(run, [0, 1, 1], [0.3] * 3, SESSIONS)
        (run / "timeseries.csv").unlink()
    out = tmp_path / "out"
    code = main(["finance", str(scenario), "--run", str(run), "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: --run") and str(run) in err[0], err
    if make == "no_timeseries":
        assert "timeseries.csv" in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_cli_run_folder_of_another_scenario_is_one_line_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL + SMALL_FINANCE, encoding="utf-8")
    run = _run_folder(tmp_path / "run", [0, 1, 1], [0.3] * 3, SESSIONS)
    ts = pd.read_csv(run / "timeseries.csv").rename(columns={"site_a_kw": "site_z_kw",
                                                             "site_a_net_kw": "site_z_net_kw"})
    ts.to_csv(run / "timeseries.csv", index=False)
    code = main(["finance", str(scenario), "--run", str(run), "--out", str(tmp_path / "o")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "'a'" in err[0], err


@pytest.mark.slow
def test_cli_end_to_end_on_business_toml(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Runs the shipped scenario, then checks the capex against its sites by hand and
    the NPV against the CSV's cash flows discounted here."""
    sc = load_scenario(BUSINESS)
    assert sc.finance is not None
    assert {p.kind for p in sc.finance.plans} == {"pay_per_use", "subscription", "membership"}
    assert sc.finance.subsidy_share > 0 or sc.finance.grant_cur > 0
    code = main(["finance", str(BUSINESS), "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    (folder,) = tmp_path.iterdir()
    assert {p.name for p in folder.iterdir()} == {"finance.csv", "finance.json", "tornado.png"}
    table = pd.read_csv(folder / "finance.csv", index_col="year")
    doc = json.loads((folder / "finance.json").read_text())
    fs = sc.finance
    capex = 0.0
    for site in sc.sites:
        cls = next(c for c in fs.power_classes if site.evse_max_kw <= c.up_to_kw)
        n = site.stations * site.evses_per_station
        capex += n * (cls.hardware_per_evse_cur + cls.installation_per_evse_cur)
        capex += fs.grid_connection_per_kw_cur * (site.limit_kw or 0.0)
    assert table.loc[0, "capex_cur"] == pytest.approx(-capex)
    assert table.loc[0, "subsidy_cur"] == pytest.approx(fs.subsidy_share * capex + fs.grant_cur)
    assert len(table) == fs.lifetime_years + 1
    flows = table["net_cash_flow_cur"].tolist()
    npv = sum(cf / (1 + fs.discount_rate) ** t for t, cf in enumerate(flows))
    assert doc["npv_cur"] == pytest.approx(npv, rel=1e-9)
    assert doc["irr"] is None or abs(sum(cf / (1 + doc["irr"]) ** t
                                         for t, cf in enumerate(flows))) < 1e-3
    assert table.loc[1, "revenue_cur"] > 0 and table.loc[1, "energy_cost_cur"] < 0
    swings = [v["swing_cur"] for v in doc["tornado"].values()]
    assert swings == sorted(swings, reverse=True)
    assert "one run of 168 h" in doc["year_assembly"]


def test_cli_power_class_misfit_fails_before_the_run(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """No class covers the 11 kW EVSEs: one line naming the field, and no run (fast)."""
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL + SMALL_FINANCE.replace("up_to_kw = 22", "up_to_kw = 7.4"),
                        encoding="utf-8")
    code = main(["finance", str(scenario), "--out", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "finance.power_classes" in err[0] and "11 kW" in err[0]


def test_cli_weeks_from_scenario_files_runs_each(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Two scenario files (a day each, 26 weeks each) are run, one after the other, and
    the year says how it was assembled; a run folder may stand beside them."""
    day = SMALL.replace("duration_h = 2", "duration_h = 24").replace(
        "[ev]", '[run]\ntransport = "direct"\n\n[ev]')
    (tmp_path / "small.toml").write_text(day + SMALL_FINANCE, encoding="utf-8")
    (tmp_path / "other.toml").write_text(day.replace("seed = 5", "seed = 6"), encoding="utf-8")
    out = tmp_path / "out"
    code = main(["finance", str(tmp_path / "small.toml"), "--weeks",
                 f"{tmp_path / 'small.toml'}:26,{tmp_path / 'other.toml'}:26",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    (folder,) = out.iterdir()
    doc = json.loads((folder / "finance.json").read_text())
    assert doc["year_assembly"].startswith("2 representative weeks")
    assert "small.toml (24 h) x 26 weeks" in doc["year_assembly"]
    assert [r["weeks"] for r in doc["inputs"]["runs"]] == [26, 26]


def test_energy_cost_matches_the_runs_own_kpi(tmp_path: Path) -> None:
    """The finance's energy cost of all sites is the run's energy_cost KPI (computed by
    evtwin.sim.kpis), on a real day's run with a time-of-use price."""
    from evtwin.sim.finance import energy_cost
    from evtwin.sim.runner import run_scenario

    day = SMALL.replace("duration_h = 2", "duration_h = 24").replace(
        "[ev]", '[run]\ntransport = "direct"\n\n[prices]\nkind = "tou"\n'
                'tou = [{start_h = 0, price_per_kwh = 0.2}, {start_h = 7, price_per_kwh = 0.4}]'
                '\n\n[ev]')
    path = tmp_path / "day.toml"
    path.write_text(day, encoding="utf-8")
    result = run_scenario(load_scenario(path))
    assert result.kpis["energy_cost"] > 0
    assert energy_cost(result.timeseries, ["a"]) == pytest.approx(result.kpis["energy_cost"],
                                                                   rel=1e-9)


def test_a_runs_maintenance_cost_kpi_replaces_the_per_evse_default() -> None:
    fs = FinanceSettings(plans=[_ppu(0.5)], **{**FLAT, "maintenance_per_evse_year_cur": 999.0})
    sessions = pd.DataFrame({"ev_id": ["A"], "site": ["a"], "outcome": ["served"],
                             "energy_grid_kwh": [1.0]})
    part = RunPart("w", 24.0, sessions, _ts([0, 1, 1], [0.3] * 3),
                   {"maintenance_cost": 12.0})
    base = year_base([part], fs, ["a"], seed=0)
    assert base.maintenance_cost_cur == pytest.approx(12.0 * 365)
    hw = Hardware(evse_kw=[11.0] * 4, stations=2, connection_kw={"a": 44.0})
    assert cash_flows(fs, base, hw).loc[1, "maintenance_cur"] == pytest.approx(-12.0 * 365)
    without = year_base([replace_kpis(part, {})], fs, ["a"], seed=0)
    assert cash_flows(fs, without, hw).loc[1, "maintenance_cur"] == pytest.approx(-999.0 * 4)


def replace_kpis(part: RunPart, kpis: dict[str, float]) -> RunPart:
    from dataclasses import replace

    return replace(part, kpis=kpis)


def test_cli_run_folder_with_other_hardware_is_one_line_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The run's scenario.json says the site had 3 stations; the scenario says 1."""
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL + SMALL_FINANCE, encoding="utf-8")
    run = _run_folder(tmp_path / "run", [0, 1, 1], [0.3] * 3, SESSIONS)
    (run / "scenario.json").write_text(json.dumps({"sites": [
        {"name": "a", "stations": 3, "evses_per_station": 2, "evse_max_kw": 11.0,
         "limit_kw": 20.0}]}))
    code = main(["finance", str(scenario), "--run", str(run), "--out", str(tmp_path / "o")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "'a'" in err[0] and "stations 3" in err[0], err


@pytest.mark.slow
def test_finance_of_a_run_folder_equals_finance_of_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``evtwin run`` then ``finance --run`` gives the NPV of ``finance`` running it:
    reading the folder's CSVs loses nothing."""
    assert main(["run", str(BUSINESS), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert main(["finance", str(BUSINESS), "--run", str(run), "--out", str(tmp_path / "a")]) == 0
    assert main(["finance", str(BUSINESS), "--out", str(tmp_path / "b")]) == 0
    (a,), (b,) = (tmp_path / "a").iterdir(), (tmp_path / "b").iterdir()
    npv_a = json.loads((a / "finance.json").read_text())["npv_cur"]
    npv_b = json.loads((b / "finance.json").read_text())["npv_cur"]
    assert npv_a == pytest.approx(npv_b, rel=1e-9)
    pd.testing.assert_frame_equal(pd.read_csv(a / "finance.csv"), pd.read_csv(b / "finance.csv"),
                                  rtol=1e-9)
