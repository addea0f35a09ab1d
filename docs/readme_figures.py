"""Regenerate the README's quoted results and ``docs/figures/*.png`` from the runs.

Every number the README quotes from a deterministic run (a twin run, a comparison of
strategies, a planning study) lives between two HTML comments, invisible on GitHub::

    <!-- readme-figures: NAME -->...<!-- /readme-figures -->

and is written by the generator registered under NAME in :data:`GENERATORS`: a small
function that runs what it quotes (through the library, as the command the README
shows would) and returns the region's new text. A region is either inline (the
markers inside a line or a table cell) or a block (each marker on a line of its own).
Words that make a claim ("stays inside every limit") are checked by the generator,
which fails rather than print a sentence the run contradicts.

    .venv/bin/python docs/readme_figures.py                 # rewrite README.md and figures
    .venv/bin/python docs/readme_figures.py --check         # exit 1 and a diff when stale
    .venv/bin/python docs/readme_figures.py --only overload,feeder_stress

``make readme-figures`` runs the first. Twin runs use ``run.transport = "direct"``:
its results are identical to the websocket's by design (``tests/test_transports.py``)
and it is faster. Speed figures (``make bench``) are measurements, not regenerated.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import math
import re
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the heavy imports happen in the generators, when they run
    from evtwin.sim.compare import StrategyRun
    from evtwin.sim.planning import HostingStudy, PenetrationStudy
    from evtwin.sim.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FIGURES = ROOT / "docs" / "figures"

START = "<!-- readme-figures: {name} -->"
END = "<!-- /readme-figures -->"
_MARKER = re.compile(r"<!-- (?:readme-figures: (?P<name>[a-z0-9_]+)|(?P<end>/readme-figures)) -->")

#: Twin runs in this script: identical results to the websocket transport, faster.
TRANSPORT = {"run.transport": "direct"}


class ReadmeFiguresError(Exception):
    """Markers that do not pair up, an unknown region, or a claim a run contradicts."""


@dataclass(frozen=True)
class Region:
    """One marked region of the README: ``text[start:end]`` is its content."""

    name: str
    start: int
    end: int
    line: int
    """Line number (1-based) of the opening marker, for error messages."""

    def is_block(self, text: str) -> bool:
        """Whether the markers stand on lines of their own (else the region is inline)."""
        return text[self.start:self.end].startswith("\n")


def find_regions(text: str, source: str = "README.md") -> list[Region]:
    """Every marked region of ``text`` in order; markers must pair up, names be unique."""
    regions: list[Region] = []
    opened: tuple[str, int, int] | None = None  # name, content start, line
    for m in _MARKER.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        if m.group("name"):
            if opened is not None:
                raise ReadmeFiguresError(f"{source}:{line}: region {m.group('name')!r} opens "
                                         f"inside region {opened[0]!r} (line {opened[2]})")
            opened = (m.group("name"), m.end(), line)
        else:
            if opened is None:
                raise ReadmeFiguresError(f"{source}:{line}: {END} closes no region")
            regions.append(Region(opened[0], opened[1], m.start(), opened[2]))
            opened = None
    if opened is not None:
        raise ReadmeFiguresError(f"{source}:{opened[2]}: region {opened[0]!r} is never "
                                 f"closed with {END}")
    seen: dict[str, int] = {}
    for r in regions:
        if r.name in seen:
            raise ReadmeFiguresError(f"{source}:{r.line}: region {r.name!r} is marked twice "
                                     f"(first at line {seen[r.name]})")
        seen[r.name] = r.line
    return regions


# --- what the generators share -----------------------------------------------------------


@dataclass
class Context:
    """What a generator gets: where figures go (``None`` in ``--check``: write nothing),
    the number of worker processes for comparisons, and a cache of runs, so regions
    that quote the same run share it."""

    figures: Path | None
    workers: int | None = None
    _runs: dict[tuple[str, str, tuple[tuple[str, Any], ...]], StrategyRun] = field(
        default_factory=dict)
    _memo: dict[Any, Any] = field(default_factory=dict)

    def runs(self, path: str, strategies: Sequence[str],
             overrides: dict[str, Any] | None = None) -> dict[str, StrategyRun]:
        """``path`` under each strategy (``evtwin compare``), runs not yet made in parallel."""
        from evtwin.sim.compare import compare

        given = {**TRANSPORT, **(overrides or {})}
        key = tuple(sorted(given.items()))
        missing = [s for s in strategies if (path, s, key) not in self._runs]
        if missing:
            for run in compare(str(ROOT / path), missing, overrides=given,
                               workers=self.workers):
                self._runs[(path, run.strategy, key)] = run
        return {s: self._runs[(path, s, key)] for s in strategies}

    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` once per ``key`` (a study two regions quote)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def figure(self, name: str, write: Callable[[Path], Any]) -> None:
        """Let ``write(path)`` draw ``docs/figures/<name>``, unless checking."""
        if self.figures is not None:
            self.figures.mkdir(parents=True, exist_ok=True)
            write(self.figures / name)


Generator = Callable[[Context], str]

#: Region name -> the function that writes its text (and its figures).
GENERATORS: dict[str, Generator] = {}


def region(name: str) -> Callable[[Generator], Generator]:
    """Register the generator of the README region ``name``."""
    def add(fn: Generator) -> Generator:
        if name in GENERATORS:
            raise ValueError(f"region {name!r} registered twice")
        GENERATORS[name] = fn
        return fn
    return add


def claim(holds: bool, region_name: str, says: str, found: str) -> None:
    """Fail when a run contradicts what the region's words say."""
    if not holds:
        raise ReadmeFiguresError(f"region {region_name!r} says {says}, but {found}: "
                                 "change the sentence in docs/readme_figures.py")


def scenario(path: str, overrides: dict[str, Any] | None = None) -> Scenario:
    """The scenario at ``path`` (relative to the repository) with ``overrides``."""
    from evtwin.sim.scenario import load_scenario

    return load_scenario(ROOT / path, {**TRANSPORT, **(overrides or {})})


def kpi_table(runs: dict[str, StrategyRun], keys: Sequence[str], currency: str, *,
              bold_lowest: Sequence[str] = ()) -> str:
    """A Markdown table, one row per KPI, one column per strategy, formatted as
    ``evtwin compare`` prints it; the lowest value of each ``bold_lowest`` KPI in bold."""
    from evtwin.sim.kpis import KPI_LABELS, display_unit, format_kpi

    lines = ["| KPI | " + " | ".join(runs) + " |",
             "|---|" + "---:|" * len(runs)]
    for key in keys:
        label, unit = KPI_LABELS[key]
        shown = display_unit(unit, currency)
        values = [r.kpis[key] for r in runs.values()]
        cells = [format_kpi(v, unit) for v in values]
        if key in bold_lowest:
            low = min(values)
            cells = [f"**{c}**" if v == low else c for c, v in zip(cells, values, strict=True)]
        lines.append(f"| {label}{f' [{shown}]' if shown else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_figures(ctx: Context, sc: Scenario, runs: dict[str, StrategyRun],
                       names: dict[str, str]) -> None:
    """``evtwin compare``'s figures, copied to docs/figures as ``names`` (theirs -> ours)."""
    from evtwin.sim.compare import plot_comparison

    def draw(path: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            plot_comparison(sc, list(runs.values()), Path(tmp))
            for theirs, ours in names.items():
                shutil.copyfile(Path(tmp) / theirs, path.parent / ours)

    ctx.figure(next(iter(names.values())), draw)


def paragraph(text: str) -> str:
    """``text`` wrapped as the README's prose is (a block region's paragraph)."""
    return textwrap.fill(" ".join(text.split()), width=WIDTH, break_long_words=False,
                         break_on_hyphens=False)


def pct(value: float, decimals: int = 0) -> str:
    """A percentage for prose: ``12 %`` (``decimals`` after the point)."""
    return f"{value:.{decimals}f} %"


def small_pct(value: float, digits: int = 1) -> str:
    """A small percentage for prose to ``digits`` significant digits: ``0.008 %``."""
    if value == 0:
        return "0 %"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return pct(value, decimals)


def share_pct(share: float) -> str:
    """A share (0..1) as a whole percentage for prose: ``60 %``."""
    return pct(100.0 * share)


# --- the regions ----------------------------------------------------------------------------

OVERLOAD = "scenarios/overload.toml"


@region("overload")
def overload(ctx: Context) -> str:
    """The scenario table's overload.toml line."""
    runs = ctx.runs(OVERLOAD, ["uncontrolled", "equal_share"])
    un, eq = runs["uncontrolled"].kpis, runs["equal_share"].kpis
    sc = scenario(OVERLOAD)
    limit = sc.sites[0].limit_kw
    claim(limit is not None, "overload", "equal_share keeps a street limit",
          f"{OVERLOAD} sets no limit_kw on {sc.sites[0].name}")
    claim(eq["peak_trafo_loading_percent"] < un["peak_trafo_loading_percent"], "overload",
          "equal_share lowers the peak", "it does not")
    return (f"`uncontrolled` loads the transformer to {pct(un['peak_trafo_loading_percent'])}, "
            f"`equal_share` ({limit:g} kW street limit) keeps it at "
            f"{pct(eq['peak_trafo_loading_percent'])} and still delivers all but "
            f"{small_pct(eq['energy_unmet_percent'])} of the energy")


FEEDER_STRESS = "scenarios/feeder_stress.toml"


@region("feeder_stress")
def feeder_stress(ctx: Context) -> str:
    """uncontrolled against feeder_aware on feeder_stress.toml."""
    runs = ctx.runs(FEEDER_STRESS, ["uncontrolled", "feeder_aware"])
    un, fa = runs["uncontrolled"].kpis, runs["feeder_aware"].kpis
    limit = scenario(FEEDER_STRESS).grid.trafo_loading_max_percent
    claim(un["peak_trafo_loading_percent"] > limit, "feeder_stress",
          "uncontrolled overloads the transformer",
          f"its peak is {un['peak_trafo_loading_percent']:.1f} %")
    outside = fa["minutes_voltage_violation"] + fa["minutes_thermal_violation"]
    inside = ("stays inside every limit at every step" if outside == 0
              else f"is outside a limit for {outside:.0f} minutes")
    delivered_un = 100.0 - un["energy_unmet_percent"]
    delivered_fa = 100.0 - fa["energy_unmet_percent"]
    same = f"{delivered_un:.2f}" == f"{delivered_fa:.2f}"
    delivers = (f"the same {pct(delivered_fa, 2)}" if same
                else f"{pct(delivered_fa, 2)} (`uncontrolled` {pct(delivered_un, 2)})")
    return paragraph(
        f"On `{FEEDER_STRESS}` (no V2G), `uncontrolled` overloads the transformer "
        f"({pct(un['peak_trafo_loading_percent'], 1)}, "
        f"{un['minutes_thermal_violation']:.0f} minutes over) while `feeder_aware` {inside} "
        f"({pct(fa['peak_trafo_loading_percent'], 1)}) and delivers {delivers} of the "
        "requested energy.")


PV_STORAGE = "scenarios/pv_storage.toml"


@region("pv_storage")
def pv_storage(ctx: Context) -> str:
    """pv_self_consumption against equal_share on pv_storage.toml."""
    runs = ctx.runs(PV_STORAGE, ["equal_share", "pv_self_consumption"])
    eq, pv = runs["equal_share"].kpis, runs["pv_self_consumption"].kpis
    currency = scenario(PV_STORAGE).prices.currency
    claim(pv["energy_cost"] < eq["energy_cost"], "pv_storage",
          "pv_self_consumption cuts the energy cost", "it does not")
    claim(pv["energy_unmet_percent"] > eq["energy_unmet_percent"], "pv_storage",
          "pv_self_consumption delivers less", "it does not")
    return (f"`pv_self_consumption` uses {pct(pv['pv_used_on_site_share'])} of the carport's "
            f"output at the site against {pct(eq['pv_used_on_site_share'])} under "
            f"`equal_share` and cuts the energy cost from {eq['energy_cost']:.1f} to "
            f"{pv['energy_cost']:.1f} {currency}, at a price: it delivers "
            f"{pct(100.0 - pv['energy_unmet_percent'], 1)} of the requested energy "
            f"({pct(100.0 - eq['energy_unmet_percent'], 1)} under `equal_share`)")


V2G = "scenarios/v2g.toml"
V2G_STRATEGIES = ["uncontrolled", "equal_share", "edf", "feeder_aware", "v2g_peak_shaving"]
V2G_OVERRIDES = {"sites.0.limit_kw": 150}


@region("v2g_compare")
def v2g_compare(ctx: Context) -> str:
    """The README's `evtwin compare scenarios/v2g.toml` table and its two figures."""
    runs = ctx.runs(V2G, V2G_STRATEGIES, V2G_OVERRIDES)
    sc = scenario(V2G, V2G_OVERRIDES)
    comparison_figures(ctx, sc, runs, {"compare_kpis.png": "compare_kpis.png",
                                       "compare_grid.png": "compare_grid.png"})
    table = kpi_table(runs, [
        "peak_trafo_loading_percent", "v_min_pu", "minutes_thermal_violation",
        "minutes_site_limit_exceeded", "energy_unmet_percent", "energy_discharged_kwh",
        "evs_below_min_soc", "max_equivalent_full_cycles", "energy_cost", "v2g_revenue",
        "net_energy_cost", "profiles_received"], sc.prices.currency)
    return (f"{table}\n\n"
            "![KPIs compared](docs/figures/compare_kpis.png)\n"
            "![Transformer loading and minimum voltage under each strategy]"
            "(docs/figures/compare_grid.png)")


@region("v2g_shaving_unmet")
def v2g_shaving_unmet(ctx: Context) -> str:
    """What shaving the peak leaves undelivered on v2g.toml."""
    shaving = ctx.runs(V2G, ["v2g_peak_shaving"], V2G_OVERRIDES)["v2g_peak_shaving"].kpis
    return pct(shaving["energy_unmet_percent"], 1)


V2G_PRICE = "scenarios/v2g_price.toml"


@region("v2g_price")
def v2g_price(ctx: Context) -> str:
    """The README's `evtwin compare scenarios/v2g_price.toml` table and its figure."""
    runs = ctx.runs(V2G_PRICE, ["price", "v2g_peak_shaving", "v2g_price"])
    sc = scenario(V2G_PRICE)
    comparison_figures(ctx, sc, runs, {"compare_kpis.png": "compare_v2g_price_kpis.png"})
    table = kpi_table(runs, [
        "energy_cost", "v2g_revenue", "net_energy_cost", "energy_discharged_kwh",
        "max_equivalent_full_cycles", "energy_unmet_percent", "evs_below_min_soc",
        "peak_trafo_loading_percent"], sc.prices.currency, bold_lowest=["net_energy_cost"])
    return (f"{table}\n\n![v2g_price against price and v2g_peak_shaving]"
            "(docs/figures/compare_v2g_price_kpis.png)")


PLANNING = "scenarios/planning.toml"
LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0)  # `evtwin hosting-capacity`'s default --penetration


def hosting(ctx: Context) -> HostingStudy:
    """`evtwin hosting-capacity scenarios/planning.toml`'s study of every house bus."""
    from evtwin.sim.planning import hosting_study

    return ctx.memo("hosting", lambda: hosting_study(scenario(PLANNING)))


def penetration(ctx: Context, overrides: dict[str, Any] | None = None) -> PenetrationStudy:
    """The penetration study `evtwin hosting-capacity` runs (100 draws per level)."""
    from evtwin.sim.planning import penetration_study

    key = ("penetration", tuple(sorted((overrides or {}).items())))
    return ctx.memo(key, lambda: penetration_study(
        scenario(PLANNING, overrides), LEVELS))


@region("hosting_range")
def hosting_range(ctx: Context) -> str:
    """The range of the planning feeder's per-house hosting capacity."""
    table = hosting(ctx).table
    claim(bool(table["binding"].str.startswith("line").all()), "hosting_range",
          "a cable binds at every house", "other limits bind at some")
    return (f"{table['capacity_kw'].min():.0f}-{table['capacity_kw'].max():.0f} kW")


@region("hosting_figure")
def hosting_figure(ctx: Context) -> str:
    """The planning feeder drawn with each bus's hosting capacity."""
    from evtwin.sim.planning import plot_hosting

    study = hosting(ctx)
    ctx.figure("hosting_capacity.png", lambda path: plot_hosting(study, path))
    return "![Hosting capacity of the planning feeder](docs/figures/hosting_capacity.png)"


@region("penetration_figure")
def penetration_figure(ctx: Context) -> str:
    """The probability of a broken limit against penetration, per strategy."""
    from evtwin.sim.planning import plot_penetration

    study = penetration(ctx)
    ctx.figure("hosting_probability.png", lambda path: plot_penetration(study, path))
    return ("![Probability of a broken limit against EV penetration]"
            "(docs/figures/hosting_probability.png)")


def _breaking(rows: Any) -> list[tuple[float, float]]:
    """(penetration, share of draws broken) of the levels where a draw breaks."""
    return [(float(r.penetration), float(r.p_violation)) for r in rows.itertuples()
            if r.p_violation > 0]


@region("penetration_breaks")
def penetration_breaks(ctx: Context) -> str:
    """Where uncontrolled charging breaks the planning feeder."""
    rows = penetration(ctx).table
    un = rows[rows["strategy"] == "uncontrolled"]
    breaks = _breaking(un)
    claim(bool(breaks), "penetration_breaks", "uncontrolled charging breaks a limit",
          "no draw breaks one")
    bound = un[un["p_violation"] > 0]["binding"]
    claim(bool(bound.str.startswith("trafo").all()), "penetration_breaks",
          "the transformer breaks", f"the limits binding are {sorted(set(bound))}")
    (first, p_first), *rest = breaks
    more = "".join(f" and in {share_pct(p)} at {share_pct(level)}" for level, p in rest)
    return (f"the transformer breaks in {share_pct(p_first)} of evenings at "
            f"{share_pct(first)} of houses with an EV{more} uncontrolled.")


@region("penetration_binding")
def penetration_binding(ctx: Context) -> str:
    """What binds most often where uncontrolled charging breaks."""
    from evtwin.sim.planning import what_would_fix_it

    fix = what_would_fix_it(penetration(ctx))
    claim(len(fix) > 0, "penetration_binding", "something needs fixing", "nothing breaks")
    return f"`{fix['binding'].iloc[-1]}`"


@region("penetration_fits")
def penetration_fits(ctx: Context) -> str:
    """Each strategy's hosting capacity as a penetration, and what it holds back."""
    from evtwin.sim.planning import hosting_penetration

    study = penetration(ctx)
    fits = hosting_penetration(study)
    by_fit: dict[float, list[str]] = {}
    for strategy, level in fits.items():
        by_fit.setdefault(level, []).append(f"`{strategy}`")
    groups = ", ".join(
        (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0])
        + f" {share_pct(level)}" for level, names in by_fit.items())
    top = max(LEVELS)
    at = study.table[study.table["penetration"] == top].set_index("strategy")
    sc = scenario(PLANNING)
    home = next(s for s in sc.sites if s.kind == "home")
    claim(home.limit_kw is not None, "penetration_fits", "the home site has a limit",
          f"{PLANNING} sets none")
    v2g_broken = float(at.loc["v2g", "p_violation"])
    still = (f"{share_pct(v2g_broken)} of draws still break" if v2g_broken > 0
             else "no draw breaks")
    return (f"{groups}; at {share_pct(top)} `equal_share` holds back "
            f"{pct(float(at.loc['equal_share', 'curtailed_percent']))} of the peak charging "
            f"power to keep its {home.limit_kw:g} kW site limit, `feeder_aware` "
            f"{pct(float(at.loc['feeder_aware', 'curtailed_percent']), 1)} to keep the "
            f"transformer within {sc.grid.trafo_loading_max_percent:g} %, and V2G feeds back "
            f"{float(at.loc['v2g', 'v2g_kw']):.0f} kW on average ({still})")


UNBALANCED = {"grid.phases": "unbalanced", "sites.0.phases": 1}


@region("unbalanced_penetration")
def unbalanced_penetration(ctx: Context) -> str:
    """Uncontrolled single-phase home charging on the unbalanced planning feeder."""
    def uncontrolled(study: PenetrationStudy) -> list[tuple[float, float]]:
        rows = study.table
        return [(lv, p) for lv, p in _breaking(rows[rows["strategy"] == "uncontrolled"])
                if lv < max(LEVELS)]

    unbalanced = uncontrolled(penetration(ctx, UNBALANCED))
    balanced = uncontrolled(penetration(ctx))
    claim(bool(unbalanced) and bool(balanced), "unbalanced_penetration",
          "both flows break a limit below full penetration", "one does not")

    def levels(points: list[tuple[float, float]]) -> str:
        (lv, p), *rest = points
        said = [f"{share_pct(p)} of evenings at {share_pct(lv)} of houses"]
        said += [f"{share_pct(p)} at {share_pct(lv)}" for lv, p in rest]
        return ", ".join(said[:-1]) + " and " + said[-1] if len(said) > 1 else said[0]

    first = balanced[0][0]
    claim(all(lv >= first for lv, _ in balanced), "unbalanced_penetration",
          "the balanced flow breaks from one level on", "it does not")
    bal = ", ".join(f"{share_pct(p)} at {share_pct(lv)}" for lv, p in balanced)
    return (f"{levels(unbalanced)}, where the balanced flow saw none below "
            f"{share_pct(first)} and {bal}")


@region("placement_figure")
def placement_figure(ctx: Context) -> str:
    """`evtwin place scenarios/planning.toml --add 4 --set duration_h=6`'s figure."""
    from evtwin.sim.placement import place, write_placement

    def draw(path: Path) -> None:
        result = place(scenario(PLANNING, {"duration_h": 6}), add=4, workers=ctx.workers)
        with tempfile.TemporaryDirectory() as tmp:
            write_placement(result, Path(tmp))
            shutil.copyfile(Path(tmp) / "placement.png", path)

    ctx.figure("placement.png", draw)
    return "![Placement of 4 chargers on the planning feeder](docs/figures/placement.png)"


@region("fit_figure")
def fit_figure(ctx: Context) -> str:
    """`evtwin fit-behaviour` on the shipped sessions sample."""
    from evtwin.sim.fit import fit_behaviour, plot_fit, read_sessions

    def draw(path: Path) -> None:
        sessions = read_sessions(ROOT / "scenarios/data/sessions_sample.csv",
                                 "Europe/Amsterdam")
        plot_fit(fit_behaviour(sessions), path)

    ctx.figure("fit_behaviour.png", draw)
    return ("![Fitted against observed, the shipped sessions sample]"
            "(docs/figures/fit_behaviour.png)")


# --- operations: faults and crews, forecasts, driver prices, the business case ---------------

OPERATIONS = "scenarios/operations.toml"
SEEDS = (1, 2, 3, 4, 5)


def _operations_run(args: tuple[int, str, Any]) -> dict[str, Any]:
    """One month of operations.toml (a worker process): KPIs and daily availability."""
    from evtwin.sim.runner import Twin

    seed, policy, model = args
    sc = scenario(OPERATIONS, {"seed": seed, "maintenance.policy": policy})
    sc = sc.model_copy(update={"forecast": None})  # not quoted here: saves the replay
    twin = Twin(sc, failure_model=model)
    result = twin.run()
    assert twin.ops is not None
    return {"seed": seed, "policy": policy, "kpis": result.kpis,
            "daily": twin.ops.availability_by_day(sc.duration_s)}


def operations_runs(ctx: Context) -> dict[tuple[int, str], dict[str, Any]]:
    """Reactive and predictive over five seeds (the failure model trained once on the
    CSMS's 60-day history) and, for the figure, no crew on the scenario's own seed."""
    from concurrent.futures import ProcessPoolExecutor

    from evtwin.sim.runner import train_failure_model

    def make() -> dict[tuple[int, str], dict[str, Any]]:
        model = train_failure_model(scenario(OPERATIONS, {"maintenance.policy": "predictive"}))
        own = scenario(OPERATIONS).seed
        jobs = [(s, p, model if p == "predictive" else None)
                for s in SEEDS for p in ("reactive", "predictive")]
        jobs += [(own, p, model if p == "predictive" else None)
                 for p in ("none", "reactive", "predictive")]
        with ProcessPoolExecutor(ctx.workers or 2) as pool:
            return {(r["seed"], r["policy"]): r for r in pool.map(_operations_run, jobs)}
    return ctx.memo("operations", make)


def _money(value: float, currency: str = "EUR") -> str:
    return f"{value:,.0f} {currency}"


@region("operations_seeds")
def operations_seeds(ctx: Context) -> str:
    """README's reactive-against-predictive table over five seeds."""
    runs = operations_runs(ctx)
    rows = ["| seed | reactive: availability | failures | maintenance cost | predictive: "
            "availability | failures | maintenance cost | predictions right | failures "
            "predicted in time |", "|---|---|---|---|---|---|---|---|---|"]
    sums = {k: 0.0 for k in ("ra", "rf", "rc", "pa", "pf", "pc")}
    right, caught = [], []
    for seed in SEEDS:
        r, p = runs[(seed, "reactive")]["kpis"], runs[(seed, "predictive")]["kpis"]
        right.append(p["prediction_precision_percent"])
        caught.append(p["prediction_recall_percent"])
        rows.append(f"| {seed} | {r['availability_percent']:.2f} % | {r['failures']:.0f} | "
                    f"{_money(r['maintenance_cost'])} | {p['availability_percent']:.2f} % | "
                    f"{p['failures']:.0f} | {_money(p['maintenance_cost'])} | "
                    f"{p['prediction_precision_percent']:.0f} % | "
                    f"{p['prediction_recall_percent']:.0f} % |")
        for key, val in (("ra", r["availability_percent"]), ("rf", r["failures"]),
                         ("rc", r["maintenance_cost"]), ("pa", p["availability_percent"]),
                         ("pf", p["failures"]), ("pc", p["maintenance_cost"])):
            sums[key] += val / len(SEEDS)
    rows.append(f"| mean | {sums['ra']:.2f} % | {sums['rf']:.1f} | {_money(sums['rc'])} | "
                f"{sums['pa']:.2f} % | {sums['pf']:.1f} | {_money(sums['pc'])} | | |")
    ahead = sum(runs[(s, "predictive")]["kpis"]["availability_percent"]
                > runs[(s, "reactive")]["kpis"]["availability_percent"] for s in SEEDS)
    claim(sums["pa"] > sums["ra"] and ahead >= 3, "operations_seeds",
          "predictive maintenance is ahead", f"it is ahead on {ahead} of 5 seeds, "
          f"mean {sums['pa']:.2f} % against {sums['ra']:.2f} %")
    fewer = 1.0 - sums["pf"] / sums["rf"] if sums["rf"] else 0.0
    text = (f"Predictive maintenance is ahead on {ahead} of the five seeds: it prevents "
            f"{fewer * 100:.0f} % of the failures (parts swapped before they fail) and buys "
            f"{sums['pa'] - sums['ra']:.2f} points of availability for "
            f"{_money(abs(sums['pc'] - sums['rc']))} "
            f"{'more' if sums['pc'] >= sums['rc'] else 'less'} a month in parts and hours "
            "(parts swapped early against repairs after failures). The model, "
            f"trained on one 60-day history, is right on {min(right):.0f}-{max(right):.0f} % "
            f"of its predictions and catches {min(caught):.0f}-{max(caught):.0f} % of the "
            "failures in time (30-50 % of the failures, by component, show no symptoms at "
            "all in the model of `agents/faults.py`).")
    return "\n".join(rows) + "\n\n" + paragraph(text)


@region("operations_figure")
def operations_figure(ctx: Context) -> str:
    """Daily network availability on the scenario's own seed: no crew, reactive, predictive."""
    runs = operations_runs(ctx)
    own = scenario(OPERATIONS).seed
    none = runs[(own, "none")]["daily"]
    claim(none[-1] < none[0] and all(b <= a + 1e-9 for a, b in itertools.pairwise(none)),
          "operations_figure", "availability falls day by day without a crew",
          f"it goes {none[0]:.1f} -> {none[-1]:.1f} %")

    def draw(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.6))
        for policy, style in (("none", ":"), ("reactive", "-"), ("predictive", "--")):
            daily = runs[(own, policy)]["daily"]
            ax.plot(range(1, len(daily) + 1), daily, style, label=policy, lw=1.8)
        ax.set_xlabel("day of the run (March 2026, Europe/Berlin)")
        ax.set_ylabel("port availability [%]")
        ax.set_title(f"operations.toml, seed {own}: network availability per day")
        ax.legend(title="maintenance.policy")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    ctx.figure("operations_availability.png", draw)
    return ("![Daily port availability on operations.toml without a crew, reactive and "
            "predictive](docs/figures/operations_availability.png)")


@region("forecast_skill")
def forecast_skill(ctx: Context) -> str:
    """`evtwin run scenarios/operations.toml`'s forecast KPIs."""
    from evtwin.sim.runner import run_scenario

    k = ctx.memo("operations_forecast", lambda: run_scenario(scenario(OPERATIONS)).kpis)
    claim(k["forecast_mae_kwh"] < k["forecast_naive_mae_kwh"], "forecast_skill",
          "the learned forecast beats the seasonal-naive one",
          f"MAE {k['forecast_mae_kwh']:.2f} against {k['forecast_naive_mae_kwh']:.2f} kWh")
    return (f"on `operations.toml` the learned forecast's energy MAE per site-hour is "
            f"{k['forecast_mae_kwh']:.2f} kWh against the seasonal-naive "
            f"{k['forecast_naive_mae_kwh']:.2f} kWh (skill {k['forecast_skill_percent']:.0f} "
            f"%), pinball loss {k['forecast_pinball_kwh']:.2f} against "
            f"{k['forecast_naive_pinball_kwh']:.2f} kWh; imbalance cost "
            f"{_money(k['imbalance_cost'])} on {_money(k['day_ahead_cost'])} bought "
            "day-ahead")


@region("prices_table")
def prices_table(ctx: Context) -> str:
    """`evtwin sweep scenarios/prices.toml --set tariff.kind=flat,tou,occupancy`."""
    from evtwin.sim.runner import run_scenario

    kinds = ("flat", "tou", "occupancy")
    runs = {k: ctx.memo(("prices", k), lambda k=k: run_scenario(
        scenario("scenarios/prices.toml", {"tariff.kind": k})).kpis) for k in kinds}
    claim(runs["tou"]["peak_site_import_kw"] < runs["flat"]["peak_site_import_kw"],
          "prices_table", "the peak falls under the time-of-use tariff",
          f"{runs['tou']['peak_site_import_kw']:.1f} kW against "
          f"{runs['flat']['peak_site_import_kw']:.1f} kW flat")
    rows = ["| KPI | flat | tou | occupancy |", "|---|---|---|---|"]
    for key, label, fmt in (
            ("driver_revenue", "Driver revenue [EUR]", "{:,.1f}"),
            ("idle_fee_revenue", "  of it: idle fees [EUR]", "{:,.1f}"),
            ("driver_revenue_per_kwh", "Revenue per kWh [EUR]", "{:.3f}"),
            ("peak_site_import_kw", "Peak site import [kW]", "{:.1f}"),
            ("evse_utilisation_percent", "EVSE utilisation [%]", "{:.1f}"),
            ("sessions_price_shifted", "Visits shifted", "{:.0f}"),
            ("sessions_site_switched", "Visits to a cheaper site", "{:.0f}"),
            ("sessions_energy_reduced", "Visits that took less", "{:.0f}"),
            ("sessions_left_for_idle_fee", "Visits ended for the idle fee", "{:.0f}")):
        rows.append(f"| {label} | " + " | ".join(fmt.format(runs[k][key]) for k in kinds)
                    + " |")
    return "\n".join(rows)


@region("finance_summary")
def finance_summary(ctx: Context) -> str:
    """`evtwin finance scenarios/business.toml`: NPV, IRR, paybacks and the tornado."""
    from evtwin.sim.finance import business_case, part_from_result, tornado_figure
    from evtwin.sim.runner import run_scenario

    sc = scenario("scenarios/business.toml")
    result = business_case(sc, [part_from_result(run_scenario(sc), sc.name)])
    m = result.metrics

    def draw(path: Path) -> None:
        fig = tornado_figure(result)
        fig.savefig(path, dpi=110)

    ctx.figure("tornado.png", draw)
    irr = "none" if m.irr is None else f"{m.irr * 100:.1f} %"
    pay = "never" if m.payback_years is None else f"{m.payback_years:.1f} years"
    dpay = ("never" if m.discounted_payback_years is None
            else f"{m.discounted_payback_years:.1f} years")
    top = result.tornado.index[0]
    text = (f"On `business.toml` (a week scaled to a year): NPV {_money(m.npv_cur)}, IRR "
            f"{irr}, payback {pay} (discounted {dpay}); the input that moves NPV most is "
            f"{top.strip().lower()}.")
    return paragraph(text) + ("\n\n![Tornado: NPV at each input 20 % down and up]"
                             "(docs/figures/tornado.png)")


# --- rendering and the command line ---------------------------------------------------------


#: Prose lines are wrapped at this width (table rows never are).
WIDTH = 84


def wrap_inline(text: str, start: int, new: str) -> str:
    """``new``, an inline region's text starting at ``text[start]``, wrapped as the prose
    around it is: its first line continues the marker's line. A table row stays one line."""
    line_start = text.rfind("\n", 0, start) + 1
    if text[line_start:start].lstrip().startswith("|"):
        return new
    column = start - line_start
    pad = "\x00" * column  # stands for the line before the region; never breaks inside
    # A number keeps its unit and a code span its words on one line.
    glued = _UNIT.sub("\x01", _CODE.sub(lambda m: m.group().replace(" ", "\x01"),
                                          " ".join(new.split())))
    # The closing marker ends the last line: leave it room.
    wrapped = textwrap.fill(pad + glued + "\x00" * len(END), width=WIDTH,
                            break_long_words=False, break_on_hyphens=False)
    return wrapped[column:-len(END)].replace("\x01", " ")


_CODE = re.compile(r"`[^`]*`")
_UNIT = re.compile(r"(?<=\d) (?=%|kW|kWh|EUR|pu|min|h\b)")


def render(text: str, generators: dict[str, Generator], ctx: Context, *,
           only: Sequence[str] | None = None, source: str = "README.md",
           timing: Callable[[str, float], None] | None = None,
           generated: dict[str, str] | None = None) -> str:
    """``text`` with every region (or those in ``only``) written by its generator;
    each region's new text also goes into ``generated`` when given."""
    regions = find_regions(text, source)
    marked = {r.name for r in regions}
    unmarked = sorted(set(generators) - marked)
    if unmarked:
        raise ReadmeFiguresError(f"{source}: no markers for region(s) {', '.join(unmarked)}")
    unknown = sorted(marked - set(generators))
    if unknown:
        raise ReadmeFiguresError(f"{source}: no generator for region(s) {', '.join(unknown)}")
    wanted = set(only) if only is not None else marked
    out, at = [], 0
    for r in regions:
        out.append(text[at:r.start])
        if r.name in wanted:
            began = time.perf_counter()
            new = generators[r.name](ctx).strip("\n")
            if generated is not None:
                generated[r.name] = new
            if timing is not None:
                timing(r.name, time.perf_counter() - began)
            if r.is_block(text):
                new = f"\n{new}\n"
            elif "\n" in new:
                raise ReadmeFiguresError(f"{source}:{r.line}: inline region {r.name!r} got "
                                         "a line break: mark it as a block")
            else:
                new = wrap_inline(text, r.start, new)
            out.append(new)
        else:
            out.append(text[r.start:r.end])
        at = r.end
    out.append(text[at:])
    return "".join(out)


def _given(text: str) -> Generator:
    """A generator of text already generated."""
    def given(_: Context) -> str:
        return text
    return given


def main(argv: list[str] | None = None) -> int:
    """Regenerate (or ``--check``) the README's regions; exit 1 on a stale one in
    ``--check``, 2 on bad markers or options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and print a diff if README.md differs")
    parser.add_argument("--only", help="comma-separated region names (default: all)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for the comparisons (default one per CPU)")
    parser.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    parser.add_argument("--figures", type=Path, default=FIGURES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = None
    if args.only is not None:
        only = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in only if n not in GENERATORS]
        if unknown or not only:
            print(f"error: --only: unknown region(s) {', '.join(unknown) or repr(args.only)}; "
                  f"known: {', '.join(GENERATORS)}", file=sys.stderr)
            return 2
    try:
        text = args.readme.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"error: {args.readme}: {exc.strerror}", file=sys.stderr)
        return 2
    ctx = Context(figures=None if args.check else args.figures, workers=args.workers)

    def timing(name: str, seconds: float) -> None:
        print(f"{name}: {seconds:.1f} s", flush=True)

    generated: dict[str, str] = {}
    try:
        new = render(text, GENERATORS, ctx, only=only, source=str(args.readme), timing=timing,
                     generated=generated)
        if not args.check:
            # The runs take minutes: put their text into the README as it is now, not as
            # it was when they started (others may have edited other parts meanwhile).
            now = args.readme.read_text(encoding="utf-8")
            if now != text:
                text = now
                new = render(now, {**GENERATORS, **{name: _given(value) for name, value
                                                     in generated.items()}},
                             ctx, only=list(generated), source=str(args.readme))
    except ReadmeFiguresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if new == text:
        print(f"{args.readme}: up to date")
        return 0
    if args.check:
        sys.stdout.writelines(difflib.unified_diff(
            text.splitlines(keepends=True), new.splitlines(keepends=True),
            f"{args.readme} (now)", f"{args.readme} (from the runs)"))
        print(f"{args.readme}: differs from what the runs give "
              "(run `make readme-figures`)", file=sys.stderr)
        return 1
    args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme}: regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
