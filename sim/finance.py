"""The operator's business case: a run (or a year of representative weeks) as yearly
cash flows, with NPV, IRR, payback and a tornado chart of the inputs that move NPV most.

How a year is made: a run's volumes (sessions, energy, energy cost, a run's maintenance
cost) are scaled to a year. One run covers ``8760 h / its duration``; representative
weeks are runs each with a weight in weeks (the weights sum to 52): each run's volumes
are scaled to one week (``168 h / its duration``) and weighted. Drivers' plan fees are
counted per driver and year, not scaled; a site's peak import (for demand charges) is
the highest any run shows.

Year 1 is that year; year ``t`` scales volumes by ``(1 + demand_growth)^(t-1)`` (a
site's peak no higher than its connection) and prices by their escalation. Year 0 holds
the capex less subsidies. NPV and IRR come from ``numpy_financial`` (year 0 undiscounted);
payback is given both ways: simple (cumulative undiscounted cash flow) and discounted
(cumulative discounted cash flow), each the year, interpolated within it, at which the
cumulative sum reaches 0 (None: not within the lifetime).

Pure functions on pandas frames and the pydantic settings (evtwin.sim.finance_config);
the only I/O is :func:`read_run_part` (a run folder) and :func:`write_finance`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy_financial as npf
import pandas as pd

from .exceptions import RunFolderError, ScenarioError
from .finance_config import FinanceSettings, TariffPlan

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .runner import RunResult
    from .scenario import Scenario, Site

#: Random stream of the drivers' plan assignment: ``default_rng([seed, PLAN_STREAM])``.
PLAN_STREAM = 40
HOURS_PER_YEAR = 8760.0
HOURS_PER_WEEK = 168.0
WEEKS_PER_YEAR = 52.0
#: Sessions that charged: the visit was plugged in (ended or still plugged at the end).
CHARGED = ("served", "open", "interrupted")  # interrupted: billed up to the failure


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class RunPart:
    """One run's tables for the business case, and its weight in the year."""

    label: str
    duration_h: float
    sessions: pd.DataFrame
    timeseries: pd.DataFrame
    kpis: dict[str, float]
    weeks: float | None = None
    """Weight in weeks when the year is assembled from representative weeks."""
    sites: dict[str, dict[str, Any]] | None = None
    """The run's sites as its scenario gave them (:data:`SITE_HARDWARE` fields), when
    known: the business case refuses a run whose hardware differs from the scenario's."""


#: The site fields the capex and the runs' volumes depend on.
SITE_HARDWARE = ("stations", "evses_per_station", "evse_max_kw", "limit_kw")


def _hardware_of(sites: Sequence[Any]) -> dict[str, dict[str, Any]]:
    return {s["name"] if isinstance(s, dict) else s.name:
            {k: (s.get(k) if isinstance(s, dict) else getattr(s, k)) for k in SITE_HARDWARE}
            for s in sites}


def part_from_result(result: RunResult, label: str, weeks: float | None = None) -> RunPart:
    """A finished run (:func:`evtwin.sim.runner.run_scenario`) as a :class:`RunPart`."""
    return RunPart(label=label, duration_h=result.scenario.duration_h,
                   sessions=result.sessions, timeseries=result.timeseries,
                   kpis=dict(result.kpis), weeks=weeks,
                   sites=_hardware_of(result.scenario.sites))


def read_run_part(folder: str | Path, weeks: float | None = None) -> RunPart:
    """A run folder's ``kpis.json``, ``sessions.csv`` and ``timeseries.csv``.

    RunFolderError naming the folder and the file that is missing or unreadable.
    """
    path = Path(folder)
    if not path.is_dir():
        raise RunFolderError(f"--run {folder}: not a run folder (no such folder)")
    try:
        kpis = json.loads((path / "kpis.json").read_text(encoding="utf-8"))["kpis"]
        sessions = pd.read_csv(path / "sessions.csv")
        ts = pd.read_csv(path / "timeseries.csv")
    except FileNotFoundError as exc:
        raise RunFolderError(f"--run {folder}: not a run folder (no "
                             f"{Path(str(exc.filename)).name})") from None
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as exc:
        raise RunFolderError(f"--run {folder}: unreadable run folder "
                             f"({type(exc).__name__}: {exc})") from None
    needed = {"t_s", "price_per_kwh"}
    if not needed <= set(ts.columns) or len(ts) < 2:
        raise RunFolderError(f"--run {folder}: timeseries.csv lacks t_s, price_per_kwh "
                             "or its steps")
    if (not {"ev_id", "site", "outcome", "energy_grid_kwh"} <= set(sessions.columns)
            and len(sessions)):
        raise RunFolderError(f"--run {folder}: sessions.csv lacks ev_id, site, outcome or "
                             "energy_grid_kwh")
    # The scenario as run (evtwin run writes it) gives its sites' hardware to check
    # against; a folder made by hand without it has none (sites stays None).
    sites = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        given = json.loads((path / "scenario.json").read_text(encoding="utf-8"))["sites"]
        sites = _hardware_of([s for s in given if isinstance(s, dict) and "name" in s])
    return RunPart(label=str(path), duration_h=float(ts["t_s"].iloc[-1]) / 3600.0,
                   sessions=sessions, timeseries=ts, kpis=kpis, weeks=weeks, sites=sites)


def finance_settings(sc: Scenario) -> FinanceSettings:
    """The scenario's ``[finance]`` section, or the defaults when it has none."""
    given = getattr(sc, "finance", None)
    return given if isinstance(given, FinanceSettings) else FinanceSettings()


def operator_sites(sc: Scenario, fs: FinanceSettings) -> list[Site]:
    """The sites in the business case; ScenarioError naming ``finance.sites`` for an
    unknown one."""
    if fs.sites is None:
        return list(sc.sites)
    by_name = {s.name: s for s in sc.sites}
    unknown = [n for n in fs.sites if n not in by_name]
    if unknown:
        raise ScenarioError(sc.source, [("finance.sites", f"no site {unknown[0]!r}; "
                                         f"sites: {', '.join(by_name)}")])
    return [by_name[n] for n in fs.sites]


# ----------------------------------------------------------------------------- drivers
def assign_plans(driver_ids: Sequence[str], plans: Sequence[TariffPlan],
                 seed: int) -> dict[str, str]:
    """Each driver's plan name: the drivers (sorted, then shuffled by the seed's own
    stream) split by the plans' shares, counts by largest remainder (deterministic)."""
    ids = sorted(set(driver_ids))
    rng = np.random.default_rng([seed, PLAN_STREAM])
    order = [ids[i] for i in rng.permutation(len(ids))]
    raw = [len(ids) * p.share for p in plans]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(len(plans)), key=lambda i: (-(raw[i] - counts[i]), i))[
            : len(ids) - sum(counts)]:
        counts[i] += 1
    out: dict[str, str] = {}
    start = 0
    for plan, n in zip(plans, counts, strict=True):
        out.update({ev: plan.name for ev in order[start:start + n]})
        start += n
    return out


def charged_sessions(sessions: pd.DataFrame, sites: Sequence[str]) -> pd.DataFrame:
    """The sessions at ``sites`` that charged (``outcome`` served or open)."""
    if sessions.empty:
        return pd.DataFrame(columns=["ev_id", "site", "energy_grid_kwh"])
    keep = sessions["site"].isin(list(sites)) & sessions["outcome"].isin(CHARGED)
    return sessions.loc[keep, ["ev_id", "site", "energy_grid_kwh"]]


def plan_usage(sessions: pd.DataFrame, assignment: dict[str, str],
               plans: Sequence[TariffPlan]) -> pd.DataFrame:
    """Per plan (index: plan name): ``sessions`` and ``energy_kwh`` (metered at the
    station, what drivers are billed) of a charged-sessions frame
    (:func:`charged_sessions`)."""
    plan_of = sessions["ev_id"].map(assignment)
    grouped = sessions.assign(plan=plan_of).groupby("plan")["energy_grid_kwh"]
    usage = pd.DataFrame({"sessions": grouped.size(), "energy_kwh": grouped.sum()})
    return usage.reindex([p.name for p in plans], fill_value=0).astype(float)


def plan_revenue(usage: pd.DataFrame, drivers: pd.Series,
                 plans: Sequence[TariffPlan]) -> pd.DataFrame:
    """Revenue per plan for a year of ``usage`` (:func:`plan_usage`) and ``drivers``
    (drivers per plan): ``energy_cur`` (kWh x price), ``session_fees_cur``,
    ``plan_fees_cur`` (12 monthly or one yearly fee per driver) and ``total_cur``."""
    rows = {}
    for p in plans:
        n = float(drivers.get(p.name, 0.0))
        energy = float(usage.loc[p.name, "energy_kwh"]) * p.price_per_kwh_cur
        fees = float(usage.loc[p.name, "sessions"]) * p.session_fee_cur
        plan_fees = n * (12.0 * p.monthly_fee_cur + p.yearly_fee_cur)
        rows[p.name] = {"drivers": n, "sessions": float(usage.loc[p.name, "sessions"]),
                        "energy_kwh": float(usage.loc[p.name, "energy_kwh"]),
                        "energy_cur": energy, "session_fees_cur": fees,
                        "plan_fees_cur": plan_fees, "total_cur": energy + fees + plan_fees}
    return pd.DataFrame.from_dict(rows, orient="index")


# ----------------------------------------------------------------------------- a year
@dataclass(frozen=True)
class YearBase:
    """Year 1 of the business case, assembled from runs: volumes before growth."""

    usage: pd.DataFrame
    """Per plan: sessions and energy_kwh in a year."""
    drivers: pd.Series
    """Drivers per plan (counted once a year, not scaled)."""
    energy_cost_cur: float
    """What the operator's sites pay for their import in a year."""
    peak_kw: dict[str, float]
    """Each site's highest import (kW) in any run."""
    maintenance_cost_cur: float | None
    """The runs' ``maintenance_cost`` KPI scaled to a year; None when they have none."""
    assembly: str
    """How the year was assembled, in words."""


def scale_factors(parts: Sequence[RunPart]) -> list[float]:
    """Each run's factor to a year: ``8760 / duration_h`` for one run without weeks,
    ``weeks x 168 / duration_h`` for representative weeks (weights summing to 52)."""
    if not parts:
        raise ValueError("no runs to assemble a year from")
    weighted = [p.weeks is not None for p in parts]
    if any(weighted) and not all(weighted):
        raise ValueError("give a weight in weeks for every run or for none")
    if not any(weighted):
        if len(parts) != 1:
            raise ValueError("several runs need their weights in weeks")
        return [HOURS_PER_YEAR / parts[0].duration_h]
    total = sum(float(p.weeks or 0.0) for p in parts)
    if abs(total - WEEKS_PER_YEAR) > 1e-6:
        raise ValueError(f"the weeks' weights sum to {total:g}, not {WEEKS_PER_YEAR:g}")
    return [float(p.weeks or 0.0) * HOURS_PER_WEEK / p.duration_h for p in parts]


def site_import(ts: pd.DataFrame, site: str) -> np.ndarray:
    """A site's import at its connection per step (kW, >= 0), steps after t = 0: its
    net power (charging + storage - PV) where the run has it, else its charging power."""
    steps = ts.iloc[1:]
    column = f"site_{site}_net_kw" if f"site_{site}_net_kw" in steps else f"site_{site}_kw"
    if column not in steps:
        raise RunFolderError(f"the run has no site {site!r} (no {column} in its time "
                             "series): run the scenario the finance section is for")
    return np.maximum(steps[column].to_numpy(dtype=float), 0.0)


def energy_cost(ts: pd.DataFrame, sites: Sequence[str]) -> float:
    """What ``sites`` pay for their import over a run: import x price, step by step
    (as the run's ``energy_cost`` KPI, for these sites only)."""
    step_h = np.diff(ts["t_s"].to_numpy(dtype=float)) / 3600.0
    price = ts["price_per_kwh"].iloc[1:].to_numpy(dtype=float)
    return float(sum((site_import(ts, s) * price * step_h).sum() for s in sites))


def year_base(parts: Sequence[RunPart], fs: FinanceSettings, sites: Sequence[str],
              seed: int) -> YearBase:
    """Year 1 from the runs (see the module's docstring); ValueError when the weeks'
    weights do not make a year."""
    factors = scale_factors(parts)
    charged = [charged_sessions(p.sessions, sites) for p in parts]
    drivers_all = sorted({str(ev) for c in charged for ev in c["ev_id"]})
    assignment = assign_plans(drivers_all, fs.plans, seed)
    usage = sum((plan_usage(c, assignment, fs.plans) * f
                 for c, f in zip(charged, factors, strict=True)),
                start=plan_usage(charged[0].iloc[0:0], assignment, fs.plans))
    drivers = pd.Series(assignment, dtype=object).value_counts().reindex(
        [p.name for p in fs.plans], fill_value=0).astype(float)
    cost = sum(energy_cost(p.timeseries, sites) * f
               for p, f in zip(parts, factors, strict=True))
    peaks = {s: max(float(site_import(p.timeseries, s).max(initial=0.0)) for p in parts)
             for s in sites}
    maint = [p.kpis.get("maintenance_cost") for p in parts]
    maintenance = (None if all(m is None for m in maint) else
                   sum(float(m or 0.0) * f for m, f in zip(maint, factors, strict=True)))
    if len(parts) == 1 and parts[0].weeks is None:
        assembly = (f"one run of {parts[0].duration_h:g} h x {factors[0]:.4g} "
                    "(8760 h a year)")
    else:
        assembly = (f"{len(parts)} representative weeks (52 weeks): " + ", ".join(
            f"{Path(p.label).name} ({p.duration_h:g} h) x {p.weeks:g} weeks" for p in parts))
    return YearBase(usage=usage, drivers=drivers, energy_cost_cur=float(cost),
                    peak_kw=peaks, maintenance_cost_cur=maintenance, assembly=assembly)


# ----------------------------------------------------------------------------- money
@dataclass(frozen=True)
class Levers:
    """Multipliers on the inputs (1: as given); the tornado chart moves one at a time."""

    tariffs: float = 1.0
    demand: float = 1.0
    energy_price: float = 1.0
    capex: float = 1.0
    maintenance: float = 1.0
    demand_charge: float = 1.0
    discount_rate: float = 1.0
    subsidy: float = 1.0


#: The tornado's inputs: lever name -> label.
TORNADO_INPUTS: dict[str, str] = {
    "tariffs": "Driver prices and fees",
    "demand": "Charging demand (sessions, energy, drivers)",
    "energy_price": "Energy price",
    "capex": "Capex (chargers, installation, grid)",
    "maintenance": "Maintenance cost",
    "demand_charge": "Demand charge",
    "discount_rate": "Discount rate",
    "subsidy": "Subsidies and grants",
}


@dataclass(frozen=True)
class Hardware:
    """What the operator's sites hold: EVSEs per power, stations, connections."""

    evse_kw: list[float]
    """Each EVSE's hardware limit (kW)."""
    stations: int
    connection_kw: dict[str, float]
    """Each site's connection: its ``limit_kw``, else its EVSEs' total power."""

    @classmethod
    def of(cls, sites: Sequence[Site]) -> Hardware:
        """The hardware of scenario sites."""
        return cls(evse_kw=[s.evse_max_kw for s in sites
                            for _ in range(s.stations * s.evses_per_station)],
                   stations=sum(s.stations for s in sites),
                   connection_kw={s.name: (s.limit_kw if s.limit_kw is not None else
                                           s.stations * s.evses_per_station * s.evse_max_kw)
                                  for s in sites})


def capex(fs: FinanceSettings, hw: Hardware) -> dict[str, float]:
    """Year-0 investment: ``chargers``, ``installation``, ``grid_connection`` (cur)."""
    hardware = installation = 0.0
    for kw in hw.evse_kw:
        cls = next((c for c in fs.power_classes if kw <= c.up_to_kw + 1e-9), None)
        if cls is None:
            raise ValueError(f"power_classes: no class covers a {kw:g} kW EVSE")
        hardware += cls.hardware_per_evse_cur
        installation += cls.installation_per_evse_cur
    grid = fs.grid_connection_per_kw_cur * sum(hw.connection_kw.values())
    return {"chargers": hardware, "installation": installation, "grid_connection": grid}


def cash_flows(fs: FinanceSettings, base: YearBase, hw: Hardware,
               levers: Levers = Levers()) -> pd.DataFrame:
    """Yearly cash flows, years 0..lifetime (index ``year``), in the currency.

    Columns: revenue per plan (``revenue_<plan>_cur``), ``revenue_cur``, the opex
    items and ``opex_cur`` (negative), ``capex_cur`` (negative) and ``subsidy_cur``
    (year 0), ``net_cash_flow_cur``, ``discounted_cash_flow_cur`` and their cumulative
    sums. Volumes grow by ``demand_growth``; prices by their escalations.
    """
    years = np.arange(fs.lifetime_years + 1)
    rate = fs.discount_rate * levers.discount_rate
    invest = capex(fs, hw)
    capex_total = sum(invest.values()) * levers.capex
    subsidy = min(capex_total, (fs.subsidy_share * capex_total + fs.grant_cur) * levers.subsidy)
    rows = []
    for t in years:
        row: dict[str, float] = {"year": float(t)}
        if t == 0:
            row.update({"capex_chargers_cur": -invest["chargers"] * levers.capex,
                        "capex_installation_cur": -invest["installation"] * levers.capex,
                        "capex_grid_connection_cur": -invest["grid_connection"] * levers.capex,
                        "capex_cur": -capex_total, "subsidy_cur": subsidy})
            rows.append(row)
            continue
        grow = levers.demand * (1.0 + fs.demand_growth) ** (t - 1)
        tariff = levers.tariffs * (1.0 + fs.tariff_escalation) ** (t - 1)
        energy_price = levers.energy_price * (1.0 + fs.energy_price_escalation) ** (t - 1)
        opex_up = (1.0 + fs.opex_escalation) ** (t - 1)
        revenue = plan_revenue(base.usage * grow, base.drivers * grow, fs.plans) * tariff
        for name, total in revenue["total_cur"].items():
            row[f"revenue_{name}_cur"] = float(total)
        row["revenue_cur"] = float(revenue["total_cur"].sum())
        ppu = [p.name for p in fs.plans if p.kind == "pay_per_use"]
        row["energy_cost_cur"] = -base.energy_cost_cur * grow * energy_price
        peaks = sum(min(kw * grow, hw.connection_kw.get(site, math.inf))
                    for site, kw in base.peak_kw.items())
        row["demand_charges_cur"] = -(fs.demand_charge_per_kw_month_cur * 12.0 * peaks
                                      * levers.demand_charge * opex_up)
        maintenance = (base.maintenance_cost_cur if base.maintenance_cost_cur is not None
                       else fs.maintenance_per_evse_year_cur * len(hw.evse_kw))
        row["maintenance_cur"] = -maintenance * levers.maintenance * opex_up
        row["communication_cur"] = -(fs.communication_per_station_month_cur * 12.0
                                     * hw.stations * opex_up)
        row["roaming_fees_cur"] = -fs.roaming_fee_share * float(
            revenue.loc[ppu, "total_cur"].sum())
        row["opex_cur"] = sum(row[k] for k in ("energy_cost_cur", "demand_charges_cur",
                                               "maintenance_cur", "communication_cur",
                                               "roaming_fees_cur"))
        rows.append(row)
    table = pd.DataFrame(rows).fillna(0.0)
    table["year"] = table["year"].astype(int)
    table = table.set_index("year")
    table["net_cash_flow_cur"] = (table.get("revenue_cur", 0.0) + table.get("opex_cur", 0.0)
                                  + table["capex_cur"] + table["subsidy_cur"])
    table["discounted_cash_flow_cur"] = table["net_cash_flow_cur"] / (1.0 + rate) ** years
    table["cumulative_cash_flow_cur"] = table["net_cash_flow_cur"].cumsum()
    table["cumulative_discounted_cur"] = table["discounted_cash_flow_cur"].cumsum()
    return table


def payback_years(flows: Sequence[float]) -> float | None:
    """When the cumulative sum of ``flows`` (year 0 first) is back at 0 or above for
    good: the last year it crosses up from below, interpolated linearly within that
    year; 0 when it is never below 0; None when it ends below 0."""
    cum = np.cumsum(np.asarray(flows, dtype=float))
    if len(cum) == 0 or cum[-1] < 0:
        return None
    below = np.flatnonzero(cum < 0)
    if len(below) == 0:
        return 0.0
    t = int(below[-1]) + 1  # the year it comes back up for good
    before = float(cum[t - 1])
    return (t - 1) + (-before / float(flows[t]))


@dataclass(frozen=True)
class Metrics:
    """NPV (cur), IRR (a fraction; None when the flows have none) and payback (years)."""

    npv_cur: float
    irr: float | None
    payback_years: float | None
    """From the cumulative undiscounted cash flow."""
    discounted_payback_years: float | None
    """From the cumulative discounted cash flow."""


def metrics(table: pd.DataFrame, rate: float) -> Metrics:
    """NPV and IRR (``numpy_financial``) and both paybacks of a :func:`cash_flows` table."""
    flows = table["net_cash_flow_cur"].to_numpy(dtype=float)
    irr = float(npf.irr(flows))
    return Metrics(npv_cur=float(npf.npv(rate, flows)),
                   irr=irr if math.isfinite(irr) else None,
                   payback_years=payback_years(flows),
                   discounted_payback_years=payback_years(
                       table["discounted_cash_flow_cur"].to_numpy(dtype=float)))


def tornado(npv_of: Callable[[Levers], float], percent: float,
            inputs: dict[str, str] | None = None) -> pd.DataFrame:
    """NPV with each input moved ``percent`` down (``low``) and up (``high``), the others
    as given; index: the input's label, columns ``npv_low_cur``, ``npv_high_cur``,
    ``swing_cur`` (|high - low|), sorted by swing, the largest first."""
    rows = {}
    for name, label in (inputs or TORNADO_INPUTS).items():
        low = npv_of(replace(Levers(), **{name: 1.0 - percent / 100.0}))
        high = npv_of(replace(Levers(), **{name: 1.0 + percent / 100.0}))
        rows[label] = {"lever": name, "npv_low_cur": low, "npv_high_cur": high,
                       "swing_cur": abs(high - low)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    return table.sort_values("swing_cur", ascending=False, kind="stable")


# ----------------------------------------------------------------------------- the case
@dataclass(frozen=True)
class FinanceResult:
    """A business case: the cash flow table, its metrics, revenue per plan, tornado."""

    table: pd.DataFrame
    metrics: Metrics
    per_plan: pd.DataFrame
    """Year 1 per plan: drivers, sessions, energy_kwh and revenue."""
    tornado: pd.DataFrame
    capex: dict[str, float]
    assembly: str
    currency: str
    inputs: dict[str, Any] = field(default_factory=dict)


def check_finance(sc: Scenario) -> tuple[FinanceSettings, list[Site], Hardware]:
    """The finance settings, the operator's sites and their hardware, checked against
    the scenario (before a run, so a misfit fails at once): ScenarioError naming
    ``finance.sites`` or ``finance.power_classes`` when they do not fit its sites."""
    fs = finance_settings(sc)
    sites = operator_sites(sc, fs)
    hw = Hardware.of(sites)
    try:
        capex(fs, hw)
    except ValueError as exc:
        path, _, msg = str(exc).partition(": ")
        raise ScenarioError(sc.source, [(f"finance.{path}", msg)]) from None
    return fs, sites, hw


def business_case(sc: Scenario, parts: Sequence[RunPart]) -> FinanceResult:
    """The business case of the scenario's ``[finance]`` section (or its defaults) from
    its runs. ScenarioError naming the field for a site or power class that does not
    fit the scenario (see :func:`check_finance`); ValueError for weeks' weights that do
    not make a year."""
    fs, sites, hw = check_finance(sc)
    names = [s.name for s in sites]
    mine = _hardware_of(sites)
    for part in parts:
        for name, fields in mine.items():
            theirs = (part.sites or {}).get(name, fields) if part.sites is not None else fields
            diff = [f"{k} {theirs.get(k)} here, {v} in {sc.source}"
                    for k, v in fields.items() if theirs.get(k) != v]
            if diff:
                raise RunFolderError(f"{part.label}: site {name!r} differs from the "
                                     f"scenario's: {', '.join(diff)}")
    base = year_base(parts, fs, names, sc.seed)
    table = cash_flows(fs, base, hw)
    result_metrics = metrics(table, fs.discount_rate)

    def npv_of(levers: Levers) -> float:
        flows = cash_flows(fs, base, hw, levers)
        return float(npf.npv(fs.discount_rate * levers.discount_rate,
                             flows["net_cash_flow_cur"].to_numpy(dtype=float)))

    per_plan = plan_revenue(base.usage, base.drivers, fs.plans)
    per_plan.insert(0, "kind", [p.kind for p in fs.plans])
    return FinanceResult(
        table=table, metrics=result_metrics, per_plan=per_plan,
        tornado=tornado(npv_of, fs.sensitivity_percent), capex=capex(fs, hw),
        assembly=base.assembly, currency=sc.prices.currency,
        inputs={"scenario": sc.name, "seed": sc.seed, "sites": names,
                "finance": fs.model_dump(mode="json"),
                "year_1": {"energy_cost_cur": base.energy_cost_cur,
                           "peak_import_kw": base.peak_kw,
                           "maintenance_cost_from_run_cur": base.maintenance_cost_cur},
                "runs": [{"label": p.label, "duration_h": p.duration_h, "weeks": p.weeks}
                         for p in parts]})


# ----------------------------------------------------------------------------- output
def tornado_figure(result: FinanceResult) -> Figure:
    """Horizontal bars of NPV at each input's low and high value around the NPV as
    given, the input that moves NPV most on top."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    tor = result.tornado
    base = result.metrics.npv_cur
    cur = result.currency
    fig = Figure(figsize=(9, 0.55 * len(tor) + 1.8))
    ax = fig.subplots()
    labels = list(tor.index)[::-1]  # barh draws the first row at the bottom
    low = tor["npv_low_cur"].to_numpy()[::-1]
    high = tor["npv_high_cur"].to_numpy()[::-1]
    y = np.arange(len(labels))
    pct = result.inputs.get("finance", {}).get("sensitivity_percent", 20.0)
    ax.barh(y, low - base, left=base, color="#d62728", label=f"input -{pct:g} %")
    ax.barh(y, high - base, left=base, color="#2ca02c", label=f"input +{pct:g} %")
    ax.axvline(base, color="black", lw=1)
    ax.set_yticks(y, labels, fontsize=9)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel(f"Net present value [{cur}]")
    ax.set_title(f"NPV {base:,.0f} {cur}: each input {pct:g} % down and up", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()  # room for the inputs' names on the left
    return fig


def write_finance(result: FinanceResult, out: str | Path) -> list[Path]:
    """Write ``finance.csv`` (the yearly cash flows), ``finance.json`` (NPV, IRR,
    paybacks, revenue per plan, tornado, inputs) and ``tornado.png`` into ``out``."""
    from .plots import save_figure

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / "finance.csv", folder / "finance.json"
    result.table.to_csv(csv_path)
    m = result.metrics
    doc = {"currency": result.currency, "npv_cur": m.npv_cur, "irr": m.irr,
           "payback_years": m.payback_years,
           "discounted_payback_years": m.discounted_payback_years,
           "payback_note": "payback_years: cumulative undiscounted cash flow reaches 0; "
                           "discounted_payback_years: cumulative discounted cash flow",
           "year_assembly": result.assembly, "capex_cur": result.capex,
           "revenue_per_plan_year_1": json.loads(result.per_plan.to_json(orient="index")),
           "tornado": json.loads(result.tornado.to_json(orient="index")),
           "inputs": result.inputs}
    json_path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    png = save_figure(tornado_figure(result), folder / "tornado.png")
    return [csv_path, json_path, png]


__all__ = [
    "PLAN_STREAM",
    "SITE_HARDWARE",
    "TORNADO_INPUTS",
    "FinanceResult",
    "Hardware",
    "Levers",
    "Metrics",
    "RunPart",
    "YearBase",
    "assign_plans",
    "business_case",
    "capex",
    "cash_flows",
    "charged_sessions",
    "check_finance",
    "energy_cost",
    "finance_settings",
    "metrics",
    "part_from_result",
    "payback_years",
    "plan_revenue",
    "plan_usage",
    "read_run_part",
    "scale_factors",
    "tornado",
    "tornado_figure",
    "write_finance",
    "year_base",
]
