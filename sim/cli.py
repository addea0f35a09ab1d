"""The ``evtwin`` command line: thin, one clear line per user error, exit 2."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# Exceptions only, from their own modules: ``evtwin csms serve`` must start
# without importing the twin (agents, grid model, pandas, scipy).
from evtwin.csms.exceptions import ConfigError, PersonalDataError
from evtwin.grid.exceptions import BusMappingError, GridError, PowerFlowError

from .exceptions import (
    ExternalCSMSError,
    RunFolderError,
    ScenarioError,
    SimError,
    SweepError,
)
from .overrides import parse_overrides

EXIT_USER_ERROR = 2


def kpi_table(kpis: dict[str, float], performance: dict[str, float], title: str,
              currency: str = "EUR") -> Table:
    """The short KPI table printed after a run."""
    from .kpis import KPI_LABELS, display_unit, format_kpi

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("KPI")
    table.add_column("value", justify="right")
    table.add_column("unit")
    for key, (label, unit) in KPI_LABELS.items():
        if key in kpis:
            table.add_row(label, format_kpi(kpis[key], unit), display_unit(unit, currency))
    table.add_row("Wall time", f"{performance['wall_time_s']:.1f}", "s")
    table.add_row("Speed-up over real time", f"{performance['speedup_vs_real_time']:.0f}", "x")
    return table


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    """``evtwin run SCENARIO``: run, print KPIs, write the result folder."""
    from .results import new_run_dir
    from .runner import Twin
    from .scenario import load_scenario

    overrides = parse_overrides(args.set, args.scenario)
    if args.strategy:
        overrides["control.strategy"] = args.strategy
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.transport:
        overrides["run.transport"] = args.transport
    scenario = load_scenario(args.scenario, overrides)
    users = _dashboard_users(args, scenario)  # before a result folder exists
    out = new_run_dir(args.out, scenario.name)
    db = ":memory:" if scenario.csms.database == "memory" else out / "csms.sqlite"
    twin = Twin(scenario, database=db)
    twin.pace = args.pace
    if users is not None:
        from .twin_dashboard import TwinDashboard

        def say(text: str) -> None:
            _say(console, escape(text))
            sys.stdout.flush()  # a script waiting for the address reads it now

        twin.companions.append(TwinDashboard(twin, users=users, port=args.dashboard, say=say))
    return _run_and_report(twin, args, console, out,
                           f"{scenario.name} ({scenario.duration_h:g} h simulated)",
                           f"{scenario.name} - strategy {scenario.control.strategy}")


def _dashboard_users(args: argparse.Namespace, scenario: Any) -> list[Any] | None:
    """Who may log in to ``--dashboard`` (None: no dashboard): ``--dashboard-users``, or
    one admin for this run, whose token and TOTP secret are printed here."""
    if args.dashboard is None:
        if args.dashboard_users is not None:
            raise ConfigError("--dashboard-users", "only with --dashboard PORT")
        return None
    from evtwin.csms.server import check_port

    check_port(args.dashboard, "--dashboard")
    if scenario.run.csms_process:
        raise ConfigError("--dashboard", "the dashboard runs on the twin's in-process CSMS: "
                                         "set run.csms_process = false")
    from .twin_dashboard import read_users, run_admin

    if args.dashboard_users is not None:
        return read_users(args.dashboard_users)
    user, lines = run_admin()
    for line in lines:
        print(line)  # plain: the secret must not be wrapped
    sys.stdout.flush()
    return [user]


def _run_and_report(twin: Any, args: argparse.Namespace, console: Console, out: Path,
                    description: str, title: str) -> int:
    """Run with a progress bar, write the result folder, print the KPI table."""
    from .results import write_results

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>5.1f}%"), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=args.quiet) as progress:
        task = progress.add_task(description, total=1)

        def on_step(done: int, total: int) -> None:
            if done % 10 == 0 or done == total:
                progress.update(task, completed=done, total=total)

        twin.progress = on_step
        result = twin.run()
    write_results(result, out, Path(args.scenario).read_text(encoding="utf-8"))
    console.print(kpi_table(result.kpis, result.performance, title,
                            twin.sc.prices.currency))
    console.print(f"results written to [bold]{out}[/bold]")
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    """``evtwin compare SCENARIO --strategies a,b,c``: side by side, in parallel processes."""
    from .compare import compare, comparison_table, plot_comparison
    from .kpis import KPI_LABELS
    from .results import new_run_dir
    from .scenario import load_scenario

    strategies = list(dict.fromkeys(s.strip() for s in args.strategies.split(",")
                                    if s.strip()))
    if not strategies:
        raise ScenarioError(args.scenario, [("--strategies", "name at least one, e.g. "
                                                             "uncontrolled,equal_share")])
    overrides = parse_overrides(args.set, args.scenario)
    scenario = load_scenario(args.scenario, overrides)
    with console.status(f"running {len(strategies)} strategies on {scenario.name} ..."):
        runs = compare(args.scenario, strategies, overrides=overrides, workers=args.workers)
    out = new_run_dir(args.out, f"{scenario.name}-compare")
    table = comparison_table(runs)
    table.to_csv(out / "compare.csv")
    plot_comparison(scenario, runs, out)
    from .kpis import display_unit, format_kpi

    # escape(): rich would take "[kWh]" for a style tag and drop it.
    shown = Table(title=f"{scenario.name}: strategies compared", header_style="bold")
    shown.add_column(escape("KPI [unit]"))
    for s in strategies:
        shown.add_column(s, justify="right")
    for key, (label, unit) in KPI_LABELS.items():
        if key in table.columns:
            shown_unit = display_unit(unit, scenario.prices.currency)
            shown.add_row(escape(f"{label} [{shown_unit}]" if unit else label),
                          *(format_kpi(float(table.loc[s, key]), unit) for s in strategies))
    console.print(shown)
    console.print(f"results written to [bold]{out}[/bold]")
    return 0


def _say(console: Console, text: str) -> None:
    """One line of output, not wrapped into the terminal's width (scripts grep it)."""
    console.print(text, soft_wrap=True, highlight=False)


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    """``evtwin sweep SCENARIO --set k=a,b --seeds N``: many runs, one table, resumable."""
    from .sweep import DEFAULT_FIGURE_KPIS, plan_sweep, run_sweep

    plan = plan_sweep(args.scenario, args.set or [], seeds=args.seeds, sample=args.sample,
                      command=["evtwin", *sys.argv[1:]])
    from .kpis import KPI_LABELS

    kpis = ([k.strip() for k in args.kpis.split(",") if k.strip()] if args.kpis
            else list(DEFAULT_FIGURE_KPIS))
    unknown = [k for k in kpis if k not in KPI_LABELS]
    if unknown:
        raise SweepError(f"--kpis: unknown KPI {', '.join(unknown)}; known: "
                         f"{', '.join(KPI_LABELS)}")
    out = Path(args.out) if args.out else plan.default_out()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} done"),
                  TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=console,
                  disable=args.quiet) as progress:
        task = progress.add_task(f"sweep {plan.name}", total=len(plan.runs), failed=0)

        def on_progress(done: int, failed: int, total: int) -> None:
            progress.update(task, completed=done, total=total, failed=failed)

        def on_start(backend: str) -> None:
            progress.update(task, description=f"sweep {plan.name} on {backend}")

        outcome = run_sweep(plan, out, workers=args.workers, scheduler=args.scheduler,
                            retry_failed=args.retry_failed, kpis=kpis, progress=on_progress,
                            on_start=on_start)
    ok = len(outcome.table) - outcome.failed
    _say(console, f"{len(outcome.table)}/{outcome.planned} runs done ({ok} ok, "
                  f"{outcome.failed} failed; {outcome.resumed} found done and not run again) "
                  f"in {outcome.wall_time_s:.0f} s"
                  + (f" on {outcome.backend}" if outcome.backend else ""))
    if len(outcome.table):
        _say(console, f"table and figures in [bold]{out}[/bold] (sweep.parquet, sweep.csv)")
    if outcome.interrupted:
        _say(console, "[yellow]interrupted:[/yellow] run the same command again to resume")
        return 130
    if outcome.failed:
        for _, row in outcome.table[outcome.table["status"] != "ok"].head(5).iterrows():
            _say(console, f"[red]failed[/red] {row['run_id']}: {row['error']}")
        return 1
    return 0


def cmd_check(args: argparse.Namespace, console: Console) -> int:
    """``evtwin check SCENARIO...``: exit 0 only when every limit holds (CI gate)."""
    from .check import load_baseline, load_limits, run_checks, write_baseline, write_junit

    if args.update_baseline and not args.baseline:
        raise ScenarioError("--update-baseline", [("", "give the file with --baseline FILE")])
    overrides = parse_overrides(args.set, args.scenarios[0])
    if args.strategy:
        overrides["control.strategy"] = args.strategy
    if args.transport:
        overrides["run.transport"] = args.transport
    limits = load_limits(args.limits)
    baseline = (load_baseline(args.baseline)
                if args.baseline and not args.update_baseline else None)
    with console.status(f"running {len(args.scenarios)} scenario(s) ..."):
        checks = run_checks(args.scenarios, overrides=overrides, limits=limits,
                            baseline=baseline, workers=args.workers)
    for check in checks:
        table = Table(title=f"{check.key} ({check.path})", header_style="bold")
        table.add_column("limit")
        table.add_column("result")
        table.add_column("detail")
        if check.error is not None:
            table.add_row("run", "[red]ERROR[/red]", check.error)
        for r in check.results:
            if r.passed and r.name.startswith("baseline.") and not args.verbose:
                continue  # dozens of KPIs: show the ones that moved
            table.add_row(r.name, "[green]ok[/green]" if r.passed else "[red]FAIL[/red]",
                          r.message)
        console.print(table)
    if args.junit:
        _say(console, f"JUnit report: [bold]{write_junit(checks, args.junit)}[/bold]")
    if args.update_baseline:
        _say(console, f"baseline recorded: [bold]{write_baseline(args.baseline, checks)}[/bold]")
    failed = [c for c in checks if not c.passed]
    n_limits = sum(len(c.results) for c in checks)
    n_bad = sum(1 for c in checks for r in c.results if not r.passed)
    if failed:
        _say(console, f"[red]check failed:[/red] {n_bad} of {n_limits} limits broken in "
                      f"{', '.join(c.key for c in failed)}")
        return 1
    _say(console, f"[green]all {n_limits} limits hold[/green] in {len(checks)} scenario(s)")
    return 0


def cmd_hosting_capacity(args: argparse.Namespace, console: Console) -> int:
    """``evtwin hosting-capacity SCENARIO``: how much charging power each bus takes."""
    from .planning import (
        FIT_P_VIOLATION,
        hosting_penetration,
        hosting_study,
        penetration_study,
        what_would_fix_it,
        write_hosting,
    )
    from .results import new_run_dir
    from .scenario import load_scenario

    scenario = load_scenario(args.scenario, parse_overrides(args.set, args.scenario))
    buses = None
    if args.buses is not None:
        buses = _bus_list(args.buses, "--buses", args.scenario)
    levels = _shares(args.penetration, "--penetration", args.scenario)
    strategies = list(dict.fromkeys(st.strip() for st in args.strategies.split(",")
                                    if st.strip()))
    if not strategies:
        raise ScenarioError(args.scenario, [("--strategies", "name at least one: uncontrolled"
                                                             ", equal_share, feeder_aware, v2g")])
    with console.status("batched power flows ..."), _bus_option("--buses", args.scenario):
        study = hosting_study(scenario, buses=buses, day=args.day, max_kw=args.max_kw)
        penetration = (penetration_study(scenario, levels, draws=args.draws,
                                         strategies=strategies) if args.draws else None)
    out = new_run_dir(args.out, f"{scenario.name}-hosting")
    paths = write_hosting(study, out, penetration)
    table = Table(title=f"{scenario.name}: hosting capacity ({scenario.grid.network})",
                  header_style="bold")
    for col, justify in (("bus", "right"), ("capacity (kW)", "right"), ("binding", "left"),
                         ("hour", "right"), ("distance (km)", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    rows = study.table
    shown = rows if len(rows) <= 20 or args.all else rows.nsmallest(10, "capacity_kw")
    for r in shown.itertuples():
        table.add_row(str(r.bus), f"{r.capacity_kw:.1f}", str(r.binding), f"{r.hour}:00",
                      f"{r.distance_km:.3f}")
    console.print(table)
    if len(shown) < len(rows):
        console.print(f"the {len(shown)} weakest of {len(rows)} buses (--all lists every one)")
    if penetration is not None:
        pt = Table(title=f"probability of a broken limit at {penetration.hour}:00 "
                         f"({args.draws} draws)", header_style="bold")
        for col in ("strategy", "houses with an EV", "EVs (mean)", "draws broken",
                    "power held back", "fed back (kW)", "most often binding"):
            pt.add_column(col)
        for r in penetration.table.itertuples():
            pt.add_row(str(r.strategy), f"{r.penetration:.0%}", f"{r.evs_mean:.1f}",
                       f"{r.p_violation:.0%}", f"{r.curtailed_percent:.1f} %",
                       f"{r.v2g_kw:.1f}" if r.strategy == "v2g" else "-",
                       str(r.binding) or "-")
        console.print(pt)
        fits = hosting_penetration(penetration)
        console.print("hosting capacity (houses with an EV, at most "
                      f"{FIT_P_VIOLATION:.0%} of draws broken): "
                      + ", ".join(f"{k} {v:.0%}" for k, v in fits.items()))
        for r in what_would_fix_it(penetration).itertuples():
            console.print(f"what would fix it at {r.penetration:.0%}: {r.binding} binds; "
                          f"fixed by {r.fixed_by}")
    console.print(f"written: {', '.join(str(p) for p in paths)}")
    return 0


@contextmanager
def _bus_option(option: str, source: str) -> Iterator[None]:
    """A bus the feeder refuses (missing, not supplied, MV) named as the option's error."""
    try:
        yield
    except BusMappingError as exc:
        raise ScenarioError(source, [(option, str(exc))]) from None


def _bus_list(text: str, option: str, source: str) -> list[int]:
    """A comma-separated list of bus numbers, at least one (ScenarioError naming ``option``)."""
    try:
        buses = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        buses = []
    if not buses:
        raise ScenarioError(source, [(option, f"give bus numbers, e.g. 12,40: {text!r}")])
    return buses


def _shares(text: str, option: str, source: str) -> list[float]:
    """A comma-separated list of shares between 0 and 1 (ScenarioError naming ``option``)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise ScenarioError(source, [(option, f"give shares between 0 and 1, e.g. "
                                              f"0.2,0.4: {text!r}")])
    return values


def cmd_place(args: argparse.Namespace, console: Console) -> int:
    """``evtwin place SCENARIO --add N``: where N new chargers go."""
    import pandas as pd

    from .placement import place, write_placement
    from .results import new_run_dir
    from .scenario import load_scenario

    overrides = parse_overrides(args.set, args.scenario)
    if args.strategy is not None:
        overrides["control.strategy"] = args.strategy
    scenario = load_scenario(args.scenario, overrides)
    candidates = None
    if args.candidates is not None:
        candidates = _bus_list(args.candidates, "--candidates", args.scenario)
    with (console.status(f"screening buses, then {args.top} twin runs ..."),
          _bus_option("--candidates", args.scenario)):
        placement = place(scenario, add=args.add, kw=args.kw, candidates=candidates,
                          top=args.top, workers=args.workers,
                          **({} if args.demand_radius_km is None
                             else {"radius_km": args.demand_radius_km}))
    out = new_run_dir(args.out, f"{scenario.name}-place")
    paths = write_placement(placement, out)
    table = Table(title=f"{scenario.name}: {args.add} chargers of {args.kw:g} kW",
                  header_style="bold")
    for col in ("rank", "bus", "headroom (kW)", "demand (kWh)", "binding",
                "grid limit broken (min)",
                "unmet (%)", "delivered (kWh)", "peak trafo (%)"):
        table.add_column(col, justify="left" if col == "binding" else "right")
    for r in placement.table.head(max(args.top, 10)).itertuples():
        ran = bool(pd.notna(r.rank))
        table.add_row(f"{int(r.rank)}" if ran else f"({r.screen_rank})", str(r.bus),
                      f"{r.headroom_kw:.1f}", f"{r.demand_kwh:.1f}", str(r.binding),
                      f"{r.violation_min:.0f}" if ran else "",
                      f"{r.energy_unmet_percent:.1f}" if ran else "",
                      f"{r.energy_delivered_kwh:.0f}" if ran else "",
                      f"{r.peak_trafo_loading_percent:.0f}" if ran else "")
    console.print(table)
    console.print("rank: after twin runs; (n): place in the power-flow screen only")
    console.print(f"written: {', '.join(str(p) for p in paths)}")
    return 0


def cmd_fit_behaviour(args: argparse.Namespace, console: Console) -> int:
    """``evtwin fit-behaviour SESSIONS.csv``: a ``[sites.behaviour]`` block and its plot."""
    from .fit import block_toml, fit_behaviour, plot_fit, read_sessions
    from .results import new_run_dir

    stem = Path(args.sessions).stem
    sessions = read_sessions(args.sessions, args.timezone)
    fit = fit_behaviour(sessions, components=args.components)
    # A new folder each time (as every command's results): nothing is overwritten, and
    # bad input leaves no folder behind.
    out = new_run_dir(args.out, f"{stem}-fit")
    toml_path, png_path = out / f"{stem}-behaviour.toml", out / f"{stem}-behaviour.png"
    text = block_toml(fit, args.sessions, args.kind)
    try:
        toml_path.write_text(text, encoding="utf-8")
        plot_fit(fit, png_path)
    except BaseException:  # a failed or interrupted write leaves no half folder
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        raise
    console.print(text, highlight=False, markup=False)
    console.print(f"written: {toml_path}, {png_path}")
    return 0


def cmd_reproduce(args: argparse.Namespace, console: Console) -> int:
    """``evtwin reproduce RUN_DIR``: run a recorded run again; exit 0 when KPIs are identical."""
    from .reproduce import load_record, reproduce

    record, source = load_record(args.record, args.run)
    with console.status(f"running {source} again ..."):
        rep = reproduce(record, source)
    for pkg, (old, new) in rep.version_changes.items():
        _say(console, f"[yellow]version differs:[/yellow] {pkg} recorded {old}, now {new}")
    if rep.identical:
        _say(console, f"[green]reproduced:[/green] all {len(rep.kpis_now)} KPIs identical "
                      f"(within 1e-9 relative) to {source}")
        return 0
    table = Table(title=f"KPIs that differ from {source}", header_style="bold")
    table.add_column("KPI")
    table.add_column("recorded", justify="right")
    table.add_column("now", justify="right")
    for key, (old_v, new_v) in rep.differing.items():
        table.add_row(key, f"{old_v:.10g}", f"{new_v:.10g}")
    console.print(table)
    _say(console, f"[red]not reproduced:[/red] {len(rep.differing)} KPI(s) differ")
    return 1


def cmd_export_pf(args: argparse.Namespace, console: Console) -> int:
    """``evtwin export-pf RUN_DIR``: a run's power-flow cases as pandapower networks."""
    from .replay import export_pf

    run_dir = Path(args.run_dir)
    steps: list[int] | None = None
    if args.step is not None:
        try:
            steps = [int(k) for k in args.step.split(",") if k.strip()]
        except ValueError:
            steps = []
        if not steps:
            raise RunFolderError(f"--step: give step numbers, e.g. 0,12: {args.step!r}")
    out = Path(args.out) if args.out is not None else run_dir / "pf"
    paths = export_pf(run_dir, out, steps)
    _say(console, f"written: {', '.join(str(p) for p in paths)} (solve with "
                  "pandapower.runpp(net, trafo_loading=\"power\"))")
    return 0


def _finance_weeks(text: str, source: str) -> list[tuple[str, float]]:
    """``--weeks W1.toml:13,W2:13``: (scenario file or run folder, weight in weeks)."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        path, _, weeks = item.rpartition(":")
        try:
            weight = float(weeks)
        except ValueError:
            weight = -1.0
        if not path or not (weight > 0):
            raise ScenarioError(source, [("--weeks", f"expected FILE:WEEKS (weeks > 0), "
                                                     f"got {item!r}")])
        out.append((path, weight))
    return out


def cmd_finance(args: argparse.Namespace, console: Console) -> int:
    """``evtwin finance SCENARIO``: the operator's business case of a run (or of a year of
    representative weeks): yearly cash flows, NPV, IRR, payback, revenue per plan."""
    from .finance import (
        RunPart,
        business_case,
        check_finance,
        part_from_result,
        read_run_part,
        write_finance,
    )
    from .results import new_run_dir
    from .runner import run_scenario
    from .scenario import load_scenario

    overrides = parse_overrides(args.set, args.scenario)
    scenario = load_scenario(args.scenario, overrides)
    check_finance(scenario)  # a misfit fails before any run
    if args.run is not None and args.weeks is not None:
        raise ScenarioError(args.scenario, [("--weeks", "give --run or --weeks, not both")])
    parts: list[RunPart] = []
    if args.run is not None:
        parts.append(read_run_part(args.run))
    else:
        runs = ([(args.scenario, None)] if args.weeks is None
                else _finance_weeks(args.weeks, args.scenario))
        for path, weeks in runs:
            if Path(path).is_dir():
                parts.append(read_run_part(path, weeks))
                continue
            sc = scenario if weeks is None else load_scenario(path, overrides)
            with console.status(f"running {path} ({sc.duration_h:g} h simulated) ..."):
                parts.append(part_from_result(run_scenario(sc), path, weeks))
    try:
        result = business_case(scenario, parts)
    except ValueError as exc:  # the weeks' weights do not make a year
        raise ScenarioError(args.scenario, [("--weeks", str(exc))]) from None
    out = new_run_dir(args.out, f"{scenario.name}-finance")
    paths = write_finance(result, out)
    cur, m = result.currency, result.metrics
    flows = Table(title=f"{scenario.name}: yearly cash flows [{cur}]", header_style="bold",
                  caption=f"year 1: {result.assembly}")
    for col in ("year", "revenue", "opex", "capex - subsidy", "net", "cumulative",
                "cumulative discounted"):
        flows.add_column(col, justify="right")
    for year, r in result.table.iterrows():
        flows.add_row(str(year), f"{r.get('revenue_cur', 0.0):,.0f}",
                      f"{r.get('opex_cur', 0.0):,.0f}",
                      f"{r['capex_cur'] + r['subsidy_cur']:,.0f}",
                      f"{r['net_cash_flow_cur']:,.0f}", f"{r['cumulative_cash_flow_cur']:,.0f}",
                      f"{r['cumulative_discounted_cur']:,.0f}")
    console.print(flows)
    plans = Table(title=f"year 1 per plan [{cur}]", header_style="bold")
    for col in ("plan", "kind", "drivers", "sessions", "energy (kWh)", "energy", "fees",
                "total"):
        plans.add_column(col, justify="left" if col in ("plan", "kind") else "right")
    for name, r in result.per_plan.iterrows():
        plans.add_row(str(name), str(r["kind"]), f"{r['drivers']:.0f}", f"{r['sessions']:,.0f}",
                      f"{r['energy_kwh']:,.0f}", f"{r['energy_cur']:,.0f}",
                      f"{r['session_fees_cur'] + r['plan_fees_cur']:,.0f}",
                      f"{r['total_cur']:,.0f}")
    console.print(plans)

    def years(value: float | None) -> str:
        return "not within the lifetime" if value is None else f"{value:.1f} years"

    fs = result.inputs["finance"]
    _say(console, f"NPV at {100 * fs['discount_rate']:g} %: {m.npv_cur:,.0f} {cur}; "
                  f"IRR: {'none' if m.irr is None else f'{100 * m.irr:.1f} %'}; "
                  f"payback {years(m.payback_years)} (simple), "
                  f"{years(m.discounted_payback_years)} (discounted)")
    top = result.tornado.iloc[0]
    _say(console, f"moves NPV most: {result.tornado.index[0]} "
                  f"({top['npv_low_cur']:,.0f} to {top['npv_high_cur']:,.0f} {cur})")
    _say(console, f"written: {', '.join(str(p) for p in paths)}")
    return 0


def cmd_csms_serve(args: argparse.Namespace, console: Console) -> int:
    """``evtwin csms serve``: the CSMS alone, on the wall clock, until stopped (SIGTERM:
    exit 0; Ctrl-C: exit 130)."""
    import asyncio
    import signal

    from evtwin.csms.config import load_config
    from evtwin.csms.gcpolicy import GCPolicy
    from evtwin.csms.server import check_port
    from evtwin.csms.service import serve, setup_json_logging

    # The options before anything is opened: a typo leaves no database file behind.
    if args.port is not None:
        check_port(args.port, "--port")
    if args.api_port is not None:
        check_port(args.api_port, "--api-port")
    config = load_config(args.config)
    if args.api_port is not None and config.api.token_hash is None:
        raise ConfigError("--api-port", "the operator API needs token_hash in the api table "
                                        "of the --config file; make one with `evtwin csms "
                                        "api-token`")
    setup_json_logging(logging.DEBUG if args.debug else logging.INFO)

    async def main() -> signal.Signals | None:
        policy: asyncio.Task[None] | None = None

        def start_policy() -> None:
            # Process-wide, so set here and not in serve(): full collections over the
            # connections' objects would stall every station (see csms.gcpolicy).
            # Once listening: a start that fails logs nothing before its error line.
            nonlocal policy
            policy = asyncio.create_task(GCPolicy().run())

        try:
            return await serve(
                config, args.db, host=args.host, port=args.port,
                api_port=config.api.port if args.api_port is None else args.api_port,
                api_token_hash=config.api.token_hash, api_host=config.api.host,
                on_listening=start_policy)
        finally:
            if policy is not None:
                policy.cancel()

    return 130 if asyncio.run(main()) == signal.SIGINT else 0


def cmd_stations(args: argparse.Namespace, console: Console) -> int:
    """``evtwin stations``: virtual stations and EVs against an external CSMS, wall clock."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from .exceptions import ExternalCSMSError
    from .results import new_run_dir
    from .runner import ExternalCSMS, Twin, build_model
    from .scenario import load_scenario

    password = args.password
    if args.password_file is not None:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            why = getattr(exc, "strerror", None) or ("empty" if isinstance(exc, IndexError)
                                                     else str(exc))
            raise ExternalCSMSError(f"--password-file {args.password_file}: {why}") from None
    external = ExternalCSMS(url=args.csms, password=password, ca_file=args.ca,
                            speed=args.speed, cert_dir=args.cert_dir)
    # Everything about the CSMS that can fail, before a result folder exists.
    external.check()
    overrides: dict[str, Any] = {"csms.protocol": args.version}
    if args.duration_h is not None:
        overrides["duration_h"] = args.duration_h
    if args.count is not None:
        overrides["sites.0.stations"] = args.count
    overrides.update(parse_overrides(args.set, args.scenario))
    scenario = load_scenario(args.scenario, overrides)
    external.probe([st.station_id for st in build_model(scenario).stations], args.version)
    # The scenario keeps its simulated start (and so its visits' times of day); the
    # timestamps the CSMS sees are shifted so that the run begins now.
    now = datetime.now(UTC).replace(microsecond=0)
    external = replace(external, clock_offset=now - scenario.start)
    _say(console, external.clock_line(scenario.start))
    out = new_run_dir(args.out, f"{scenario.name}-stations")
    return _run_and_report(Twin(scenario, external=external), args, console, out,
                           f"{len(scenario.sites)} site(s) against {args.csms}",
                           f"{scenario.name} against {args.csms} (OCPP {args.version})")


def cmd_csms_config_for(args: argparse.Namespace, console: Console) -> int:
    """``evtwin csms config-for SCENARIO``: the CSMS configuration for its stations and tokens."""
    from .csmsconfig import write_csms_config
    from .scenario import load_scenario

    scenario = load_scenario(args.scenario, parse_overrides(args.set, args.scenario))
    written = write_csms_config(scenario, None if args.out is None else Path(args.out),
                                source=args.scenario, security_profile=args.security_profile,
                                force=args.force)
    if written.config is None:
        print(written.text, end="")  # plain: a file to redirect, not console output
        return 0
    _say(console, f"written: {written.config} ({written.stations} stations, {written.tokens} "
                  f"id tokens, security profile {args.security_profile}); start it with "
                  f"evtwin csms serve --config {written.config}")
    if written.password_file is not None:
        ca = f" --ca {written.ca_cert}" if written.ca_cert is not None else ""
        _say(console, f"the stations' password (one for all, mode 0600): "
                      f"{written.password_file}; use evtwin stations --password-file "
                      f"{written.password_file}{ca}")
    return 0


def cmd_csms_hash_password(args: argparse.Namespace, console: Console) -> int:
    """``evtwin csms hash-password``: a password_hash line for csms.toml."""
    import io

    from evtwin.csms.security import hash_password_command

    # A closed stdin (``<&-``) is None: as empty as one at its end.
    stdin = (sys.stdin or io.StringIO()) if args.stdin else None
    # Plain print: rich could wrap the long hash line.
    print(hash_password_command(generate=args.generate, stdin=stdin))
    return 0


def cmd_csms_ocpi_token(args: argparse.Namespace, console: Console) -> int:
    """``evtwin csms ocpi-token --config F``: a one-time OCPI registration token
    (CREDENTIALS_TOKEN_A) for a partner, kept hashed in the [ocpi] registry."""
    from evtwin.csms.config import load_config
    from evtwin.csms.ocpi.registry import Registry

    config = load_config(args.config)
    if config.ocpi is None:
        raise ConfigError(f"{args.config}: ocpi", "no [ocpi] table: OCPI is off")
    o = config.ocpi
    if o.public_url is None and (o.port == 0 or o.host in ("0.0.0.0", "::", "")):
        raise ConfigError("ocpi.public_url", f"needed to tell a partner where to reach this "
                                             f"CPO (host {o.host!r}, port {o.port})")
    try:
        registry = Registry(o.registry)
    except Exception as exc:  # sqlite3.Error, OSError
        raise ConfigError("ocpi.registry", f"{o.registry}: cannot open: {exc}") from None
    try:
        token = registry.add_token_a()
    finally:
        registry.close()
    url = (o.public_url or f"http://{o.host}:{o.port}") + "/ocpi/versions"
    # Plain print: a partner copies both lines.
    print(f"# give the partner both, out of band; the token works once: {url}")
    print(token)
    return 0


def cmd_emsp_serve(args: argparse.Namespace, console: Console) -> int:
    """``evtwin emsp serve EMSP.toml``: the eMSP on its own, until stopped."""
    import asyncio
    import signal

    from evtwin.csms.ocpi.emsp import load_emsp_config, serve_emsp
    from evtwin.csms.service import setup_json_logging

    config = load_emsp_config(args.config)
    if args.port is not None:
        from evtwin.csms.server import check_port

        check_port(args.port, "--port")
        config = config.model_copy(update={"emsp": config.emsp.model_copy(
            update={"port": args.port})})
    setup_json_logging(logging.DEBUG if args.debug else logging.INFO)
    return 130 if asyncio.run(serve_emsp(config)) == signal.SIGINT else 0


def cmd_emsp_report(args: argparse.Namespace, console: Console) -> int:
    """``evtwin emsp report EMSP.toml``: roaming sessions, settlement per CPO, what
    each driver paid."""
    import json

    from evtwin.csms.ocpi.emsp import load_emsp_config, settlement
    from evtwin.csms.ocpi.registry import Registry

    config = load_emsp_config(args.config)
    path = config.emsp.registry
    if not path.exists():
        raise ConfigError("emsp.registry", f"{path}: no such file (has the eMSP run?)")
    try:
        registry = Registry(path)
        try:
            report = settlement(registry)
        finally:
            registry.close()
    except Exception as exc:  # sqlite3.Error: not an eMSP's registry
        raise ConfigError("emsp.registry", f"{path}: not an eMSP registry: {exc}") from None
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    from rich.table import Table

    _say(console, f"{report['roaming_sessions']} roaming session(s), "
                  f"{report['energy_kwh']:.2f} kWh; drivers paid {report['paid_by_drivers']:.2f}, "
                  f"owed to CPOs {report['owed_to_cpos']:.2f}, margin {report['margin']:.2f}")
    t = Table(title="settlement with each CPO")
    for col in ("CPO", "sessions", "energy (kWh)", "owed"):
        t.add_column(col, justify="left" if col == "CPO" else "right")
    for cpo, v in sorted(report["cpos"].items()):
        t.add_row(cpo, str(v["sessions"]), f"{v['energy_kwh']:.2f}",
                  f"{v['owed']:.2f} {v['currency']}")
    console.print(t)
    d = Table(title="what each driver paid")
    for col in ("driver", "sessions", "energy (kWh)", "paid"):
        d.add_column(col, justify="left" if col == "driver" else "right")
    for driver, v in sorted(report["drivers"].items()):
        d.add_row(driver, str(v["sessions"]), f"{v['energy_kwh']:.2f}",
                  f"{v['paid']:.2f} {v['currency']}")
    console.print(d)
    return 0


def cmd_csms_api_token(args: argparse.Namespace, console: Console) -> int:
    """``evtwin csms api-token``: a new bearer token and the hash for [api] token_hash."""
    from evtwin.csms.api import generate_token, hash_token

    token = generate_token()
    print(f"# bearer token (keep it secret): {token}")
    print(f'token_hash = "{hash_token(token)}"')
    return 0


def cmd_csms_privacy(args: argparse.Namespace, console: Console) -> int:
    """``evtwin csms privacy export|erase|prune|audit``: one driver's data (GDPR access
    and erasure), the retention period once, and the audit log of all of them."""
    import getpass
    import json
    import os

    from evtwin.csms import privacy
    from evtwin.csms.clock import wall_clock

    if args.privacy_command == "prune" and args.retention_days is not None \
            and not 0 < args.retention_days <= privacy.MAX_RETENTION_DAYS:  # also NaN
        raise ConfigError("--retention-days", f"must be above 0 and at most "
                                              f"{privacy.MAX_RETENTION_DAYS}, not "
                                              f"{args.retention_days}")
    settings = None
    ocpi_registry = None
    if args.config is not None:
        from evtwin.csms.config import load_config

        full = load_config(args.config)
        settings = full.privacy
        if full.ocpi is not None and full.ocpi.registry.exists():
            # The OCPI objects exchanged with roaming partners name drivers too.
            from evtwin.csms.ocpi.registry import Registry

            try:
                ocpi_registry = Registry(full.ocpi.registry)
                ocpi_registry.objects("token")  # a registry, not just any file
            except Exception as exc:  # sqlite3.Error
                raise ConfigError("ocpi.registry", f"{full.ocpi.registry}: not an OCPI "
                                                   f"registry: {exc}") from None
    store = privacy.open_store(args.db)
    try:
        if settings is not None and settings.key_file is not None:
            # The pseudonyms csms serve writes with this config (audit log, messages).
            privacy.pseudonymiser_for(store, key_file=settings.key_file)
        now = wall_clock()
        # Who: the declared --actor next to the OS user running the command.
        declared = getattr(args, "actor", None)  # audit takes none
        actor = "" if declared is None or not declared.strip() else \
            privacy.on_behalf(declared, f"os user {getpass.getuser()}")
        if args.privacy_command == "prune" and not actor:
            actor = f"os user {getpass.getuser()}"
        if args.privacy_command == "export":
            if args.out is None:
                data = privacy.export_driver(store, args.id_token, actor=actor, now=now)
                if ocpi_registry is not None:
                    data["ocpi_objects"] = ocpi_registry.objects_of(
                        ocpi_registry.identifiers_of(args.id_token.strip()))
                print(json.dumps(data, indent=2))  # plain: a file to redirect
                return 0
            try:  # personal data: readable by the owner only, never over another file
                fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                raise ConfigError("--out", f"{args.out} exists; give a new file") from None
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                try:
                    data = privacy.export_driver(store, args.id_token, actor=actor, now=now)
                    if ocpi_registry is not None:
                        data["ocpi_objects"] = ocpi_registry.objects_of(
                            ocpi_registry.identifiers_of(args.id_token.strip()))
                    out.write(json.dumps(data, indent=2) + "\n")
                except BaseException:
                    Path(args.out).unlink()
                    raise
            rows = sum(len(data[k]) for k in ("sessions", "cdrs", "transaction_events",
                                              "meter_values", "other_messages"))
            _say(console, f"exported {rows} rows of {data['pseudonym']} to {args.out}")
        elif args.privacy_command == "erase":
            missing: PersonalDataError | None = None
            try:  # first the store: 'still charging' refuses before anything changes
                counts = privacy.erase_driver(store, args.id_token, actor=actor,
                                              reason=args.reason, now=now)
            except PersonalDataError as exc:
                if exc.reason != "unknown" or ocpi_registry is None:
                    raise
                missing = exc
                counts = {"transactions": 0, "cdrs": 0, "messages": 0}
            ocpi_part = ""
            if ocpi_registry is not None:
                from evtwin.csms.ocpi.registry import erase_roaming_data

                erased_ocpi = erase_roaming_data(ocpi_registry, store, args.id_token.strip(),
                                                 actor=actor, now=now)
                if missing is not None and not erased_ocpi:
                    raise missing
                ocpi_part = f", {erased_ocpi} OCPI objects"
            pseudonym = privacy.pseudonymiser_for(store)(args.id_token.strip())
            _say(console, escape(f"erased {pseudonym}: {counts['transactions']} transactions, "
                                 f"{counts['cdrs']} CDRs, {counts['messages']} messages"
                                 f"{ocpi_part}; a "
                                 "token configured in the CSMS config's [tokens] stays "
                                 "there: remove it and send the stations a new local list"))
        elif args.privacy_command == "prune":
            days = args.retention_days
            if days is None:
                days = (settings or privacy.PrivacySection()).retention_days
            if days is None:
                _say(console, escape("[privacy] retention_days is 0 in the config: nothing "
                                     "pruned"))
                return 0
            total = 0
            while changed := privacy.prune_personal_data(
                    store, retention_days=days, now=now, actor=actor):
                total += changed
            if ocpi_registry is not None:
                from datetime import timedelta

                total += ocpi_registry.prune_before(now - timedelta(days=days))
            _say(console, f"erased the id tokens of transactions that ended more than "
                          f"{days:g} days ago: {total} rows")
        else:  # one tab-separated line per entry (plain: never wrapped, for grep and cut)
            print("\t".join(("id", "at_utc", "actor", "operation", "driver", "rows", "detail")))
            for e in privacy.audit_log(store):
                print("\t".join(" ".join(str(v).split()) for v in (
                    e.id, e.at, e.actor, e.operation, e.subject or "-", e.row_count,
                    e.detail or "")))
    finally:
        store.close()
        if ocpi_registry is not None:
            ocpi_registry.close()
    return 0


def cmd_csms_driver_token(args: argparse.Namespace, console: Console) -> int:
    """``evtwin csms driver-token ID_TOKEN``: a driver's app token and the
    [[driver_api.drivers]] entry that binds its hash to the id token."""
    from evtwin.csms.driverapi import driver_token_lines

    secret, *entry = driver_token_lines(args.id_token)
    # The secret to stderr, only the entry to stdout: `... >> csms.toml` keeps the token
    # out of the config.
    print(secret, file=sys.stderr)
    print("\n".join(entry))
    return 0


def cmd_csms_dashboard_user(args: argparse.Namespace, console: Console) -> int:
    """``evtwin csms dashboard-user NAME``: a dashboard login (token, TOTP secret) and the
    [[dashboard.users]] entry for the CSMS config."""
    import re

    from evtwin.csms.dashboard import new_user

    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", args.name):
        raise ConfigError("NAME", f"{args.name!r}: give 1 to 64 letters, digits or . _ @ -")
    user, token, uri = new_user(args.name, args.role)
    # Plain print: rich could wrap the long lines.
    print(f"# dashboard user {user.name} ({user.role})")
    # The secrets to stderr, only the entry to stdout (`... >> csms.toml` is safe).
    print(f"# token (keep it secret): {token}", file=sys.stderr)
    print(f"# authenticator app (scan as a QR code, or type the secret): {uri}",
          file=sys.stderr)
    print("[[dashboard.users]]")
    print(f'name = "{user.name}"')
    print(f'token_hash = "{user.token_hash}"')
    print(f'totp_secret = "{user.totp_secret}"')
    print(f'role = "{user.role}"')
    return 0


def _positive_float(text: str) -> float:
    """An argparse type: a finite number above 0 (argparse names the option on error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with one line of error naming the command (usage under --help), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = _Parser(
        prog="evtwin", description="Digital twin and V2G testbed for EV charging networks.")
    parser.add_argument("--debug", action="store_true", help="full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one scenario and write its results")
    run.add_argument("scenario", help="scenario TOML file")
    run.add_argument("--out", default="results", help="folder for run folders (default: results)")
    run.add_argument("--strategy", help="override control.strategy")
    run.add_argument("--seed", type=int, help="override the scenario's seed")
    run.add_argument("--transport", choices=["websocket", "memory", "direct"],
                     help="how the stations reach evtwin's CSMS (overrides run.transport): "
                          "websocket (loopback sockets), memory (in-process pipe) or direct "
                          "(direct calls, no OCPP-J frames)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a scenario field by dotted path, e.g. ev.count=20")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--pace", type=_positive_float, metavar="X",
                     help="simulated seconds per wall-clock second, to watch the run "
                          "(default: as fast as possible)")
    run.add_argument("--dashboard", type=_non_negative_int, metavar="PORT",
                     help="serve the live operator dashboard on 127.0.0.1:PORT while the "
                          "run lasts (0: a free port; the address is printed)")
    run.add_argument("--dashboard-users", metavar="FILE",
                     help="who may log in: the [[dashboard.users]] of FILE (as in a CSMS "
                          "config); default: one admin for this run, its token and TOTP "
                          "secret printed")
    run.set_defaults(func=cmd_run)

    st = sub.add_parser("stations", help="virtual stations and EVs against an external CSMS")
    st.add_argument("--csms", required=True, metavar="URL",
                    help="websocket base URL, e.g. ws://127.0.0.1:9000/ocpp (identity appended)")
    st.add_argument("--scenario", default="scenarios/demo.toml",
                    help="scenario for stations, EVs and feeder (default scenarios/demo.toml)")
    st.add_argument("--count", type=int, help="number of stations at the first site")
    st.add_argument("--version", choices=["1.6", "2.0.1", "2.1"], default="2.0.1")
    secret = st.add_mutually_exclusive_group()
    secret.add_argument("--password", help="Basic auth password (security profiles 1 and 2)")
    secret.add_argument("--password-file", metavar="FILE",
                        help="read the password from the first line of FILE (as "
                             "evtwin csms config-for writes it)")
    st.add_argument("--ca", help="CA file to verify a wss:// CSMS")
    st.add_argument("--cert-dir", help="client certificates <station id>.pem/.key (profile 3)")
    st.add_argument("--speed", type=_positive_float, default=1.0,
                    help="simulated seconds per wall second, where the CSMS allows (default 1)")
    st.add_argument("--duration-h", type=float, help="override the scenario's duration")
    st.add_argument("--set", action="append", metavar="KEY=VALUE", help="scenario override")
    st.add_argument("--out", default="results", help="folder for run folders")
    st.add_argument("--quiet", action="store_true", help="no progress bar")
    st.set_defaults(func=cmd_stations)

    cmp = sub.add_parser("compare", help="run one scenario under several strategies")
    cmp.add_argument("scenario", help="scenario TOML file")
    cmp.add_argument("--strategies", required=True,
                     help="comma-separated, e.g. uncontrolled,equal_share,edf")
    cmp.add_argument("--workers", type=int, help="parallel processes (default: one per CPU)")
    cmp.add_argument("--set", action="append", metavar="KEY=VALUE", help="scenario override")
    cmp.add_argument("--out", default="results", help="folder for result folders")
    cmp.set_defaults(func=cmd_compare)

    sw = sub.add_parser("sweep", help="many runs over parameters and seeds into one table")
    sw.add_argument("scenario", help="base scenario TOML file")
    sw.add_argument("--set", action="append", metavar="KEY=VALUES",
                    help="a swept field: a,b,c (list), low:high:step, or low:high "
                         "(range, with --sample); one value is a fixed override")
    sw.add_argument("--seeds", metavar="N|a,b,c",
                    help="runs per point: N seeds from the scenario's seed on, or a list")
    sw.add_argument("--sample", metavar="lhs:N[:SEED]",
                    help="a Latin hypercube of N points over the ranges, not the product")
    sw.add_argument("--workers", type=int, help="local processes (default: one per CPU)")
    sw.add_argument("--scheduler", metavar="ADDRESS",
                    help="run on a Dask distributed cluster, e.g. tcp://10.0.0.5:8786")
    sw.add_argument("--kpis", help="KPIs to plot (comma-separated; default "
                                   "peak_trafo_loading_percent,v_min_pu,energy_unmet_percent)")
    sw.add_argument("--out", help="sweep folder; one of the same plan is resumed, one of "
                                  "another plan refused (default "
                                  "results/<scenario>-sweep-<plan id>)")
    sw.add_argument("--retry-failed", action="store_true",
                    help="on resume, run again the runs that failed")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)

    ck = sub.add_parser("check", help="run scenarios and fail unless every grid limit holds")
    ck.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="scenario TOML files")
    ck.add_argument("--limits", help="limits TOML (default: each scenario's grid limits, "
                                     "1 %% unmet energy)")
    ck.add_argument("--baseline", metavar="FILE",
                    help="also fail when a KPI moved beyond its tolerance from this baseline")
    ck.add_argument("--update-baseline", action="store_true",
                    help="record the runs' KPIs into --baseline instead of comparing")
    ck.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")
    ck.add_argument("--strategy", help="override control.strategy")
    ck.add_argument("--transport", choices=["websocket", "memory", "direct"],
                    help="how the stations reach evtwin's CSMS (overrides run.transport): "
                         "websocket (loopback sockets), memory (in-process pipe) or direct "
                         "(direct calls, no OCPP-J frames)")
    ck.add_argument("--set", action="append", metavar="KEY=VALUE", help="scenario override")
    ck.add_argument("--workers", type=int, default=1, help="scenarios run in parallel")
    ck.add_argument("--verbose", action="store_true", help="list baseline KPIs that held too")
    ck.set_defaults(func=cmd_check)

    hc = sub.add_parser("hosting-capacity",
                        help="how much charging power each bus of the feeder takes")
    hc.add_argument("scenario", help="scenario TOML file (its grid, base load and limits)")
    hc.add_argument("--buses", metavar="B1,B2,...",
                    help="candidate buses (default: every bus with a household)")
    hc.add_argument("--day", action="store_true",
                    help="every hour of a day, not only the base load's worst hour")
    hc.add_argument("--max-kw", type=_positive_float, default=500.0,
                    help="largest power tried per bus (default 500)")
    hc.add_argument("--penetration", default="0.2,0.4,0.6,0.8,1.0", metavar="S1,S2,...",
                    help="shares of houses with an EV for the probability of a broken "
                         "limit (default 0.2,0.4,0.6,0.8,1.0)")
    hc.add_argument("--draws", type=_non_negative_int, default=100,
                    help="seeded draws per share (default 100; 0: no penetration study)")
    hc.add_argument("--strategies", default="uncontrolled,equal_share,feeder_aware,v2g",
                    help="strategies of the penetration study (default: all of uncontrolled, "
                         "equal_share, feeder_aware, v2g; v2g with the scenario's "
                         "ev.v2g_share of bidirectional EVs)")
    hc.add_argument("--out", default="results", help="folder for the results folder")
    hc.add_argument("--all", action="store_true", help="list every bus, not the 10 weakest")
    hc.add_argument("--set", action="append", metavar="KEY=VALUE", help="scenario override")
    hc.set_defaults(func=cmd_hosting_capacity)

    pl = sub.add_parser("place", help="rank buses for new chargers: a power-flow screen, "
                                      "then twin runs of the best")
    pl.add_argument("scenario", help="scenario TOML file")
    pl.add_argument("--add", type=_positive_int, required=True, help="new chargers (one site)")
    pl.add_argument("--kw", type=_positive_float, default=22.0,
                    help="power of each new charger (default 22)")
    pl.add_argument("--candidates", metavar="B1,B2,...",
                    help="candidate buses (default: every bus with a household)")
    pl.add_argument("--top", type=_non_negative_int, default=3,
                    help="placements run in the twin (default 3; 0: the screen only)")
    pl.add_argument("--strategy", help="control strategy of the twin runs (default: the "
                                       "scenario's; same as --set control.strategy=...)")
    pl.add_argument("--demand-radius-km", type=_positive_float,
                    help="how far drivers go to a public charger: demand near a bus weighs "
                         "exp(-km / radius) (default 0.3)")
    pl.add_argument("--workers", type=_positive_int, help="parallel processes (default: CPUs)")
    pl.add_argument("--out", default="results", help="folder for the results folder")
    pl.add_argument("--set", action="append", metavar="KEY=VALUE", help="scenario override")
    pl.set_defaults(func=cmd_place)

    fb = sub.add_parser("fit-behaviour", help="fit a site's driver behaviour (arrival "
                                              "mixture, stay, energy) from a sessions file")
    fb.add_argument("sessions", metavar="SESSIONS.csv",
                    help="CSV with arrival, departure (ISO times), energy_kwh[, ev_id]")
    fb.add_argument("--kind", choices=("home", "workplace", "public"),
                    help="site kind the sessions come from (noted in the block)")
    fb.add_argument("--components", type=_positive_int, default=3,
                    help="arrival mixture components (default 3)")
    fb.add_argument("--timezone", help="IANA zone of times without an offset "
                                       "(e.g. Europe/Amsterdam)")
    fb.add_argument("--out", default="results",
                    help="folder for the results folder (default: results)")
    fb.set_defaults(func=cmd_fit_behaviour)

    rp = sub.add_parser("reproduce", help="run a recorded run again and compare its KPIs")
    rp.add_argument("record", metavar="RUN_DIR",
                    help="a run folder (run.json), a run.json, or a sweep folder with --run")
    rp.add_argument("--run", metavar="RUN_ID", help="which run of a sweep folder")
    rp.set_defaults(func=cmd_reproduce)

    xp = sub.add_parser("export-pf", help="write a run's power-flow cases as pandapower "
                                          "networks (plain pandapower solves them)")
    xp.add_argument("run_dir", metavar="RUN_DIR", help="a run folder")
    xp.add_argument("--step", metavar="K1,K2,...",
                    help="steps (rows of timeseries.csv; default: the lowest voltage)")
    xp.add_argument("--out", help="folder for the files (default RUN_DIR/pf)")
    xp.set_defaults(func=cmd_export_pf)

    fi = sub.add_parser("finance", help="the operator's business case: yearly cash flows, "
                                        "NPV, IRR, payback and a tornado chart")
    fi.add_argument("scenario", help="scenario TOML file (its [finance] section and sites)")
    fi.add_argument("--run", metavar="RUN_DIR",
                    help="use this run folder (evtwin run's) instead of running the scenario")
    fi.add_argument("--weeks", metavar="W1.toml:13,W2.toml:13,...",
                    help="a year of representative weeks: scenario files or run folders, "
                         "each with its weight in weeks (summing to 52)")
    fi.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="scenario override, e.g. finance.discount_rate=0.05")
    fi.add_argument("--out", default="results", help="folder for the results folder")
    fi.set_defaults(func=cmd_finance)

    em = sub.add_parser("emsp", help="an OCPI eMSP: drivers' tokens, roaming, billing")
    em_sub = em.add_subparsers(dest="emsp_command", required=True)
    es = em_sub.add_parser("serve", help="run the eMSP's OCPI server and register with "
                                         "its partner CPOs")
    es.add_argument("config", metavar="EMSP.toml", help="eMSP config (drivers, partners)")
    es.add_argument("--port", type=int, help="port (0 picks a free one; default from config)")
    es.set_defaults(func=cmd_emsp_serve)
    er = em_sub.add_parser("report", help="roaming sessions, settlement per CPO and what "
                                          "each driver paid")
    er.add_argument("config", metavar="EMSP.toml", help="eMSP config (its registry file)")
    er.add_argument("--json", action="store_true", help="print the report as JSON")
    er.set_defaults(func=cmd_emsp_report)

    csms = sub.add_parser("csms", help="the CSMS on its own")
    csms_sub = csms.add_subparsers(dest="csms_command", required=True)
    srv = csms_sub.add_parser("serve", help="run the CSMS server on the wall clock")
    srv.add_argument("--host", help="address to bind (default from config: 127.0.0.1)")
    srv.add_argument("--port", type=int, help="port (0 picks a free one; default 9000)")
    srv.add_argument("--db", default="csms.sqlite",
                     help="SQLite file (default csms.sqlite), or a postgresql:// URL "
                          "that several csms serve processes share")
    srv.add_argument("--config", help="CSMS config TOML (stations, tokens, strategy, tariff)")
    srv.add_argument("--api-port", type=int,
                     help="operator HTTP API port (0: a free one; needs [api] token_hash)")
    srv.set_defaults(func=cmd_csms_serve)
    hp = csms_sub.add_parser("hash-password",
                             help="hash a station password for csms.toml (security profiles 1-2)")
    hp.add_argument("--generate", action="store_true",
                    help="make a random 40-character password and print it too")
    hp.add_argument("--stdin", action="store_true",
                    help="read the password from the first line of stdin")
    hp.set_defaults(func=cmd_csms_hash_password)
    cf = csms_sub.add_parser("config-for", help="write the CSMS configuration for a "
                                                "scenario's stations and id tokens")
    cf.add_argument("scenario", help="scenario TOML file (the one evtwin stations runs)")
    cf.add_argument("--out", metavar="FILE",
                    help="configuration file to write (default: print it; required with "
                         "--security-profile 1 or 2)")
    cf.add_argument("--security-profile", type=int, choices=(0, 1, 2), default=0,
                    help="0 none; 1 Basic auth (a generated password, its hash per station, "
                         "the password in FILE.password); 2 also TLS (a CA and a server "
                         "certificate for 127.0.0.1 beside FILE)")
    cf.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="scenario override, as given to evtwin stations")
    cf.add_argument("--force", action="store_true", help="overwrite existing files")
    cf.set_defaults(func=cmd_csms_config_for)
    tok = csms_sub.add_parser("api-token", help="make an operator API token and its hash")
    tok.set_defaults(func=cmd_csms_api_token)
    ot = csms_sub.add_parser("ocpi-token", help="make a one-time OCPI registration token "
                                                "(token A) for a roaming partner")
    ot.add_argument("--config", required=True, help="CSMS config TOML with an [ocpi] table")
    ot.set_defaults(func=cmd_csms_ocpi_token)
    du = csms_sub.add_parser("dashboard-user", help="make a dashboard login: token, TOTP "
                                                    "secret and its [[dashboard.users]] entry")
    du.add_argument("name", metavar="NAME", help="the user's name (letters, digits, . _ @ -)")
    du.add_argument("--role", choices=("viewer", "admin"), default="viewer",
                    help="viewer: read only (default); admin: may also make EVSEs "
                         "(un)available and stop sessions")
    du.set_defaults(func=cmd_csms_dashboard_user)
    dtok = csms_sub.add_parser("driver-token",
                               help="make a driver's app token for the driver API and its hash")
    dtok.add_argument("id_token", metavar="ID_TOKEN", help="the driver's id token")
    dtok.set_defaults(func=cmd_csms_driver_token)
    pv = csms_sub.add_parser("privacy", help="drivers' personal data: export or erase one "
                                             "driver's, prune old, show the audit log")
    pv_sub = pv.add_subparsers(dest="privacy_command", required=True)
    db_help = "the CSMS's SQLite file, or its postgresql:// URL"
    for name, text in (("export", "write all of one driver's data as JSON (GDPR access)"),
                       ("erase", "erase one driver's id token everywhere (GDPR erasure); "
                                 "sessions, energy and cost stay")):
        cmd = pv_sub.add_parser(name, help=text)
        cmd.add_argument("--db", required=True, help=db_help)
        cmd.add_argument("--id-token", required=True, help="the driver's id token")
        cmd.add_argument("--actor", required=True,
                         help="who does it (written to the audit log)")
        cmd.add_argument("--config", help="CSMS config TOML (its [privacy] key_file)")
        if name == "export":
            cmd.add_argument("--out", metavar="FILE",
                             help="new file to write (mode 0600; default: print it)")
        else:
            cmd.add_argument("--reason", required=True,
                             help="why (e.g. the request's reference; in the audit log)")
        cmd.set_defaults(func=cmd_csms_privacy)
    pr = pv_sub.add_parser("prune", help="erase the id tokens of transactions that ended "
                                         "longer ago than the retention period, once")
    pr.add_argument("--db", required=True, help=db_help)
    pr.add_argument("--retention-days", type=float,
                    help="default: [privacy] retention_days of --config, else 365")
    pr.add_argument("--config", help="CSMS config TOML (its [privacy] retention_days and "
                                     "key_file)")
    pr.add_argument("--actor", help="who does it (default: the user name)")
    pr.set_defaults(func=cmd_csms_privacy)
    au = pv_sub.add_parser("audit", help="list the audit log: who exported, erased or "
                                         "pruned whose data, when")
    au.add_argument("--db", required=True, help=db_help)
    au.add_argument("--config", help=argparse.SUPPRESS)  # audit names no one new
    au.set_defaults(func=cmd_csms_privacy)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``evtwin`` console script."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while Python is still starting the command
        print("interrupted", file=sys.stderr)
        return 130
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.debug:
        # The ocpp library logs every frame at INFO and CALLERRORs with tracebacks.
        logging.getLogger("ocpp").setLevel(logging.CRITICAL)
    console = Console()
    err = Console(stderr=True, soft_wrap=True)
    try:
        code, message = int(args.func(args, console)), None
    except PowerFlowError as exc:
        if args.debug:
            raise
        code, message = 1, f"[red]run failed:[/red] {escape(str(exc))}"
    except (ScenarioError, GridError, ConfigError, SweepError, RunFolderError,
            ExternalCSMSError) as exc:
        if args.debug:
            raise
        code, message = EXIT_USER_ERROR, f"[red]error:[/red] {escape(str(exc))}"
    except SimError as exc:
        if args.debug:
            raise
        code, message = 1, f"[red]run failed:[/red] {escape(str(exc))}"
    except KeyboardInterrupt:  # Ctrl-C before a command installs its own handling
        if args.debug:
            raise
        # Stopping: a second Ctrl-C (or one still pending from the event loop) must not
        # turn the clean exit into a KeyboardInterrupt at interpreter shutdown.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        code, message = 130, "interrupted"
    except OSError as exc:
        if args.debug:
            raise
        if exc.filename is not None:  # a file or folder: unreadable, unwritable, disk full
            text = escape(f"{exc.filename}: {exc.strerror or exc}")
            code, message = EXIT_USER_ERROR, f"[red]error:[/red] {text}"
        else:  # a connection reset, a broken pipe: not the user's input
            code, message = 1, f"[red]run failed:[/red] {escape(str(exc))}"
    except Exception as exc:  # a bug: one line here, the traceback with --debug
        if args.debug:
            raise
        code, message = 1, (f"[red]internal error:[/red] {escape(f'{type(exc).__name__}: {exc}')} "
                            "(a bug in evtwin; run again with --debug for the traceback)")
    # Only when a command made result folders (csms serve never imports the twin).
    results = sys.modules.get(f"{__package__}.results")
    if message is None:
        if results is not None:
            results.keep_new_run_dirs()
    else:
        if results is not None:  # a complete result folder or none
            results.discard_new_run_dirs()
        err.print(message, highlight=False)
    if code == 130:
        # Stop at once: the interpreter's last collections over a twin's objects (pandas,
        # pandapower) take a second or two at exit; frozen objects are skipped.
        import gc

        gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(main())
