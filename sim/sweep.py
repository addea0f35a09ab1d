"""``evtwin sweep``: many whole twin runs over a grid or a Latin hypercube of parameters.

A sweep is planned up front: every ``--set`` parameter's values (a list, a
stepped range, or for a Latin hypercube a ``low:high`` range), their cartesian
product (or an LHS sample) times the seeds. Each run gets a stable id, a hash
of the scenario file's content, its overrides and its seed, so an interrupted
sweep resumes exactly: runs already in the journal are not run again.

Runs execute on a local process pool (spawned processes) or, with a scheduler
address, on a Dask distributed cluster. A run is a task: the worker gets the
exact validated scenario (not a path), runs the twin with the CSMS database in
memory and returns its KPIs, or its error; a failed run is recorded and the
sweep goes on. The main process alone appends each finished run to
``journal.jsonl`` (flushed and fsync'd), so killing the sweep loses nothing
that finished. At the end ``sweep.parquet`` and ``sweep.csv`` hold one row per
run, in plan order, and one figure per chosen KPI plots it against each swept
parameter with the spread across seeds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import socket
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import as_completed as futures_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .exceptions import RunError, ScenarioError, SweepError
from .overrides import parse_value
from .scenario import Scenario, load_scenario

#: KPIs plotted when none are chosen.
DEFAULT_FIGURE_KPIS = ("peak_trafo_loading_percent", "v_min_pu", "energy_unmet_percent")

#: Table columns that depend on where and how fast a run ran, not on what it computed:
#: drop them to compare two sweeps of the same plan.
VOLATILE_COLUMNS = ("wall_time_s", "worker")

JOURNAL = "journal.jsonl"
PLAN = "plan.json"

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*:\s*({_NUMBER})\s*(?::\s*({_NUMBER})\s*)?$")


# -- plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parameter:
    """One swept scenario field: a list of values, or a ``low..high`` range (LHS only)."""

    path: str
    """Dotted scenario path, as in ``--set`` (``ev.count``, ``sites.0.limit_kw``)."""
    values: tuple[Any, ...] = ()
    """The values to take; empty for a range."""
    low: float | None = None
    high: float | None = None
    integer: bool = False
    """A range of whole numbers (both bounds written as integers)."""

    @property
    def is_range(self) -> bool:
        """True for a ``low:high`` range without a step (sampled, never enumerated)."""
        return self.low is not None

    def describe(self) -> str:
        """The parameter as the user wrote it, for messages and the plan file."""
        if self.is_range:
            return f"{self.path}={self.low:g}:{self.high:g}"
        return f"{self.path}={','.join(_show(v) for v in self.values)}"


def _show(value: Any) -> str:
    return f"[{', '.join(map(str, value))}]" if isinstance(value, list) else str(value)


def _split_values(text: str) -> list[str]:
    """``a,b,c`` split at the commas outside brackets and quotes (``[1,2],[3,4]`` is
    two values of a list field, ``"a,b"`` one value)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quote = ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def parse_parameter(item: str) -> Parameter:
    """Parse one ``--set`` item: ``k=a,b,c``, ``k=low:high`` or ``k=low:high:step``.

    A stepped range is enumerated (both ends included when the step lands on
    them); a range without a step is only for ``--sample lhs:N``. Ranges are
    numbers; list values stay text (see :func:`evtwin.sim.overrides.parse_value`)
    for the scenario model to coerce by the field's type.

    Raises:
        SweepError: the item is not ``KEY=VALUE...``, a range is empty or its step is not > 0.
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SweepError(f"--set: expected KEY=VALUE[,VALUE...] or KEY=LOW:HIGH, got {item!r}")
    if key == "seed":
        raise SweepError("--set seed=...: give seeds with --seeds (a count or a list)")
    m = _RANGE.match(text)
    if m is not None:
        lo_text, hi_text, step_text = m.groups()
        integer = all(t is None or re.fullmatch(r"[-+]?\d+", t.strip())
                      for t in (lo_text, hi_text, step_text))
        cast: Callable[[str], float] = int if integer else float
        lo, hi = cast(lo_text), cast(hi_text)
        if hi < lo:
            raise SweepError(f"--set {key}: range {text!r} has high < low")
        if step_text is None:
            return Parameter(key, low=lo, high=hi, integer=integer)
        step = cast(step_text)
        if step <= 0:
            raise SweepError(f"--set {key}: the step of {text!r} must be > 0")
        n = math.floor((hi - lo) / step + 1e-9) + 1
        values = tuple(lo + i * step if integer else round(lo + i * step, 12) for i in range(n))
        return Parameter(key, values=values)
    given = tuple(parse_value(v) for v in _split_values(text))
    if any(v == "" for v in given):
        raise SweepError(f"--set {key}: empty value in {text!r}")
    return Parameter(key, values=given)


def parse_seeds(text: str | int | None, base_seed: int) -> list[int]:
    """``--seeds``: a count N (seeds ``base, base+1, ...``) or a comma-separated list."""
    if text is None:
        return [base_seed]
    raw = str(text).strip()
    try:
        if "," in raw:
            seeds = [int(s) for s in raw.split(",") if s.strip()]
        else:
            n = int(raw)
            if n <= 0:
                raise SweepError(f"--seeds: a count must be > 0, got {n}")
            seeds = [base_seed + i for i in range(n)]
    except ValueError:
        raise SweepError(f"--seeds: expected a count or a list of integers, got {raw!r}") from None
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds: repeated seeds in {raw!r}")
    return seeds


def parse_sample(text: str | None) -> tuple[int, int] | None:
    """``--sample lhs:N[:SEED]`` -> ``(N, SEED)``; None for the cartesian product."""
    if text is None:
        return None
    m = re.fullmatch(r"lhs:(\d+)(?::(\d+))?", text.strip())
    if m is None:
        raise SweepError(f"--sample: expected lhs:N or lhs:N:SEED, got {text!r}")
    n = int(m.group(1))
    if n <= 0:
        raise SweepError("--sample: the sample size must be > 0")
    return n, int(m.group(2) or 0)


def latin_hypercube(parameters: Sequence[Parameter], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` points, one value per parameter, stratified per dimension (scipy's LHS, seeded).

    A range gives a float in ``[low, high]`` (an integer range: each whole
    number equally likely); a list gives one of its values, each taking an
    equal share of the strata.
    """
    from scipy.stats import qmc

    dims = [p for p in parameters if p.is_range or len(p.values) > 1]
    fixed = {p.path: p.values[0] for p in parameters if p not in dims}
    if not dims:
        return [dict(fixed)]
    unit = qmc.LatinHypercube(d=len(dims), seed=np.random.default_rng(seed)).random(n)
    points = []
    for row in unit:
        point = dict(fixed)
        for p, u in zip(dims, row, strict=True):
            if p.is_range:
                assert p.low is not None and p.high is not None
                if p.integer:
                    span = int(p.high) - int(p.low) + 1
                    point[p.path] = int(p.low) + min(int(u * span), span - 1)
                else:
                    point[p.path] = float(p.low + u * (p.high - p.low))
            else:
                point[p.path] = p.values[min(int(u * len(p.values)), len(p.values) - 1)]
        points.append(point)
    return points


def cartesian(parameters: Sequence[Parameter]) -> list[dict[str, Any]]:
    """Every combination of the parameters' values, the first parameter varying slowest."""
    for p in parameters:
        if p.is_range:
            raise SweepError(f"--set {p.describe()}: a range needs a step (low:high:step) or "
                             "--sample lhs:N")
    return [dict(zip([p.path for p in parameters], combo, strict=True))
            for combo in itertools.product(*(p.values for p in parameters))]


def input_files(sc: Scenario) -> list[str]:
    """Files a scenario reads besides itself: network JSON, price and PV profiles."""
    files = [sc.grid.network] if sc.grid.network.endswith(".json") else []
    files += [sc.prices.csv] if sc.prices.kind == "csv" and sc.prices.csv else []
    files += [p.csv for p in sc.pv if p.profile == "csv" and p.csv]
    return files


def _files_sha256(paths: list[str], cache: dict[str, str]) -> str:
    """One hash over the contents of ``paths`` (a missing file hashes as missing)."""
    digest = hashlib.sha256()
    for path in paths:
        if path not in cache:
            try:
                cache[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError:
                cache[path] = "missing"
        digest.update(f"{path}\0{cache[path]}\0".encode())
    return digest.hexdigest()


def run_id(source_sha256: str, overrides: dict[str, Any], seed: int) -> str:
    """Stable id of a run: a hash of the scenario file's content (and of the
    files it reads, folded into ``source_sha256``), its overrides and seed."""
    text = json.dumps({"source": source_sha256, "overrides": overrides, "seed": seed},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: the validated scenario a worker runs.

    Files the scenario names (a network JSON, price or PV CSV files) are read
    where the run runs: Dask workers need them at the same paths.
    """

    run_id: str
    index: int
    """Position in the plan: the table's row order."""
    params: dict[str, Any]
    """The swept overrides (dotted path -> value)."""
    seed: int
    scenario: dict[str, Any]
    """The exact validated scenario (JSON mode), seed included."""
    source_sha256: str
    command: tuple[str, ...] = ()


def plan_id_of(run_ids: Iterable[str]) -> str:
    """The id of a plan of these runs (order does not matter): 8 hex digits."""
    return hashlib.sha256("\n".join(sorted(run_ids)).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep runs."""

    scenario_path: str
    source_sha256: str
    name: str
    parameters: tuple[Parameter, ...]
    seeds: tuple[int, ...]
    sample: tuple[int, int] | None
    runs: tuple[RunSpec, ...]

    @property
    def plan_id(self) -> str:
        """Short hash of the set of runs (each run's id covers the scenario's content,
        the files it reads, its overrides and seed): the same command gives the same
        id, any other parameters, seeds or edit of the scenario another."""
        return plan_id_of(r.run_id for r in self.runs)

    def default_out(self) -> Path:
        """The sweep folder when none is given: ``results/<scenario>-sweep-<plan_id>``,
        one per plan, so a different sweep of the same scenario lands elsewhere."""
        return Path("results") / f"{self.name}-sweep-{self.plan_id}"

    def to_json(self) -> dict[str, Any]:
        """The plan as written to ``plan.json``."""
        return {
            "plan_id": self.plan_id,
            "scenario": self.scenario_path,
            "source_sha256": self.source_sha256,
            "parameters": [p.describe() for p in self.parameters],
            "seeds": list(self.seeds),
            "sample": None if self.sample is None else f"lhs:{self.sample[0]}:{self.sample[1]}",
            "runs": [{"run_id": r.run_id, "params": r.params, "seed": r.seed}
                     for r in self.runs],
        }


def plan_sweep(scenario_path: str | Path, sets: Sequence[str], *, seeds: str | int | None = None,
               sample: str | None = None, command: Sequence[str] = ()) -> SweepPlan:
    """Plan a sweep and validate every run's scenario before anything starts.

    Args:
        scenario_path: the base scenario TOML file.
        sets: ``--set`` items (see :func:`parse_parameter`); a single value is a fixed override.
        seeds: ``--seeds``: a count (from the scenario's seed on) or a comma-separated list.
        sample: ``--sample lhs:N[:SEED]`` for a Latin hypercube instead of the product.
        command: the command line, kept in each run's record.

    Raises:
        SweepError: a bad ``--set``, ``--seeds`` or ``--sample``.
        ScenarioError: a run's scenario does not validate (names the file and field).
    """
    path = Path(scenario_path)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ScenarioError(str(scenario_path), [("", "file not found")]) from None
    except OSError as exc:
        raise ScenarioError(str(scenario_path), [("", f"cannot read the file: {exc}")]) from None
    source_sha = hashlib.sha256(content).hexdigest()
    parameters = [parse_parameter(item) for item in sets]
    paths = [p.path for p in parameters]
    dupes = sorted({p for p in paths if paths.count(p) > 1})
    if dupes:
        raise SweepError(f"--set: {', '.join(dupes)} given more than once")
    lhs = parse_sample(sample)
    if lhs is not None and not any(p.is_range for p in parameters):
        raise SweepError(f"--sample {sample}: a Latin hypercube samples KEY=LOW:HIGH ranges "
                         "and no --set gives one (lists and stepped ranges run as a "
                         "product): drop --sample or give a range")
    points = cartesian(parameters) if lhs is None else latin_hypercube(parameters, *lhs)
    # The base seed (for --seeds N) is the scenario's own, after the fixed overrides.
    fixed = {p.path: p.values[0] for p in parameters if not p.is_range and len(p.values) == 1}
    base = load_scenario(path, fixed)
    seed_list = parse_seeds(seeds, base.seed)
    runs: list[RunSpec] = []
    seen: set[str] = set()
    file_shas: dict[str, str] = {}
    for point in points:
        for seed in seed_list:
            sc = load_scenario(path, {**point, "seed": seed})
            # Editing a file the scenario reads makes it a different run.
            files = input_files(sc)
            inputs_sha = (source_sha if not files else hashlib.sha256(
                (source_sha + _files_sha256(files, file_shas)).encode()).hexdigest())
            dumped = sc.model_dump(mode="json")
            params = {key: _typed(value, dumped, key) for key, value in point.items()}
            rid = run_id(inputs_sha, params, seed)
            if rid in seen:  # an LHS over a few discrete values can draw a point twice
                continue
            seen.add(rid)
            runs.append(RunSpec(rid, len(runs), params, seed, dumped, inputs_sha,
                                tuple(command)))
    return SweepPlan(str(path), source_sha, base.name, tuple(parameters), tuple(seed_list), lhs,
                     tuple(runs))


def _typed(given: Any, scenario: dict[str, Any], dotted: str) -> Any:
    """A swept value as the table keeps it: the number (or bool) the scenario model
    made of it where the field is one, so a swept ``ev.count`` column is numeric;
    otherwise the value as given (``"1.6"``, a strategy, a path)."""
    node: Any = scenario
    for key in dotted.split("."):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return given
    return node if isinstance(node, bool | int | float) else given


# -- one run (in a worker) ---------------------------------------------------------------
def execute_run(spec: RunSpec) -> dict[str, Any]:
    """Run one sweep run where it lands (worker process) and return its journal record.

    Never raises for a failing run: the error is in the record (``status``
    ``"failed"``, ``error``) so the sweep goes on. The scenario is rebuilt from
    the spec alone; networks are built once per worker process (see
    :func:`evtwin.grid.load_network`).
    """
    from .records import current_versions as versions
    from .records import run_record
    from .runner import Twin

    t0 = time.perf_counter()
    record: dict[str, Any] = {"run_id": spec.run_id, "params": spec.params, "seed": spec.seed,
                              "source_sha256": spec.source_sha256,
                              "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        sc = Scenario.model_validate(spec.scenario)
        result = Twin(sc, database=":memory:").run()
    except Exception as exc:  # any failure of one run is that run's result, not the sweep's
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}".strip(),
                      traceback=traceback.format_exc(limit=8), kpis={},
                      wall_time_s=time.perf_counter() - t0)
        return record
    record.update(status="ok", error=None, kpis=result.kpis,
                  wall_time_s=time.perf_counter() - t0,
                  record=run_record(sc, result.kpis, command=list(spec.command),
                                    versions=versions(),
                                    extra={"sweep_run_id": spec.run_id,
                                           "sweep_params": spec.params}))
    return record


def _failed_record(spec: RunSpec, error: str) -> dict[str, Any]:
    """A record for a run whose task itself failed (its worker died, the cluster lost it)."""
    return {"run_id": spec.run_id, "params": spec.params, "seed": spec.seed,
            "source_sha256": spec.source_sha256, "worker": None, "status": "failed",
            "error": error, "kpis": {}, "wall_time_s": float("nan")}


# -- executors ----------------------------------------------------------------------------
class Backend(ABC):
    """Where runs execute (sweep, check and compare all use one): submit work, get
    finished futures back in completion order."""

    description = ""

    def submit(self, spec: RunSpec) -> Any:
        """Start ``execute_run(spec)``; returns a future with ``.result()``."""
        return self.submit_call(execute_run, spec, key=f"evtwin-run-{spec.run_id}")

    @abstractmethod
    def submit_call(self, fn: Callable[..., Any], *args: Any, key: str | None = None) -> Any:
        """Start ``fn(*args)`` (a module-level function: it is pickled to a worker);
        returns a future with ``.result()``. ``key`` names the task where the
        backend keeps names (Dask)."""

    @abstractmethod
    def as_completed(self, futures: list[Any]) -> Iterator[Any]:
        """The futures as they finish."""

    @abstractmethod
    def close(self, *, interrupted: bool = False) -> None:
        """Stop what was started; pending runs are cancelled, running ones too if interrupted."""


def _ignore_sigint() -> None:
    """Pool worker initializer: Ctrl-C is for the main process, which stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalBackend(Backend):
    """A pool of spawned processes on this machine (safe with threads and asyncio)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.description = f"{workers} local worker{'s' if workers != 1 else ''}"
        self.pool = ProcessPoolExecutor(max_workers=workers,
                                        mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_ignore_sigint)

    def submit_call(self, fn: Callable[..., Any], *args: Any,
                    key: str | None = None) -> Future[Any]:
        # Workers are spawned here: they start with Ctrl-C blocked (a terminal sends it to
        # the whole process group; the command stops its workers itself).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return self.pool.submit(fn, *args)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def as_completed(self, futures: list[Any]) -> Iterator[Any]:
        return futures_completed(futures)

    def close(self, *, interrupted: bool = False) -> None:
        if interrupted:
            # A run can take minutes: do not wait for the ones in flight.
            for proc in multiprocessing.active_children():
                proc.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)


_SCHEDULER_HINT = ("give a Dask scheduler's address, e.g. tcp://10.0.0.5:8786 (start one "
                   "with `dask scheduler`)")


def probe_scheduler(address: str, *, timeout_s: float = 5.0) -> None:
    """SweepError naming ``address`` unless a Dask scheduler answers there within
    ``timeout_s`` (tcp:// only; other transports are left to Dask's client).

    Dask's client waits for a listener's first message without a deadline and
    takes its first 8 bytes for a length: a web server kept it waiting forever,
    anything else that answered made it allocate exabytes. A scheduler sends its
    handshake as soon as it accepts: an 8-byte length, then as many bytes that
    start with the number of frames (8 bytes) and their lengths.
    """
    import struct

    from distributed.comm import registry
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in registry.backends:
            raise ValueError(f"unknown scheme {scheme}://")
        if scheme != "tcp":
            return
        host, port = parse_host_port(location, 8786)
    except ValueError as exc:
        raise SweepError(f"--scheduler {address}: not a Dask address ({exc}); "
                         f"{_SCHEDULER_HINT}") from None
    deadline = time.monotonic() + timeout_s
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except socket.gaierror as exc:
        raise SweepError(f"--scheduler {address}: unknown host {host} ({exc.strerror}); "
                         f"{_SCHEDULER_HINT}") from None
    except ConnectionRefusedError:
        raise SweepError(f"--scheduler {address}: nothing listens there (connection "
                         f"refused); {_SCHEDULER_HINT}") from None
    except TimeoutError:
        raise SweepError(f"--scheduler {address}: no answer within {timeout_s:g} s "
                         "(a firewall, or a host that is down?)") from None
    except OSError as exc:
        raise SweepError(f"--scheduler {address}: cannot connect ({exc.strerror or exc}); "
                         f"{_SCHEDULER_HINT}") from None

    quiet = f"it said nothing within {timeout_s:g} s"

    def receive(n: int) -> bytes | str:
        """``n`` bytes, or why not (the peer hung up or went quiet until the deadline)."""
        data = b""
        while len(data) < n:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = sock.recv(n - len(data))
            except TimeoutError:
                return quiet
            except OSError as exc:
                return f"the connection broke: {exc.strerror or exc}"
            if not chunk:
                return "it hung up"
            data += chunk
        return data

    with sock:
        header = receive(8)
        if isinstance(header, str):
            why = header
        else:
            (length,) = struct.unpack("Q", header)
            body = receive(length) if 16 <= length <= 2**20 else b""
            if isinstance(body, str):
                why = body
            else:
                frames = struct.unpack_from("Q", body)[0] if len(body) >= 8 else 0
                why = ("" if 1 <= frames <= 64 and 8 * (1 + frames) <= length
                       else "what it sent is not Dask's protocol")
    if why:
        raise SweepError(f"--scheduler {address}: something listens there, but not a Dask "
                         f"scheduler ({why}); {_SCHEDULER_HINT}")


class DaskBackend(Backend):
    """An existing Dask distributed cluster, by its scheduler address."""

    def __init__(self, address: str, *, timeout_s: float = 5.0) -> None:
        from distributed import Client

        # Before Dask's client, which would hang or allocate exabytes on a non-scheduler.
        probe_scheduler(address, timeout_s=timeout_s)
        try:
            self.client = Client(address, timeout=f"{max(timeout_s, 20.0):g}s")
        except Exception as exc:  # any failure to connect is the address's
            raise SweepError(f"--scheduler {address}: could not connect as a Dask client "
                             f"({type(exc).__name__}: {exc}); {_SCHEDULER_HINT}") from None
        info = self.client.scheduler_info()
        if info.get("type") != "Scheduler":  # a worker or nanny speaks the same protocol
            self.client.close()
            raise SweepError(f"--scheduler {address}: answers as a {info.get('type')}, not a "
                             f"scheduler; {_SCHEDULER_HINT}")
        n = len(info.get("workers", {}))
        self.description = f"Dask cluster {address} ({n} worker{'s' if n != 1 else ''})"

    def submit_call(self, fn: Callable[..., Any], *args: Any, key: str | None = None) -> Any:
        # pure=False: a run is never taken from another client's cache.
        extra = {"key": key} if key is not None else {}
        return self.client.submit(fn, *args, pure=False, **extra)

    def as_completed(self, futures: list[Any]) -> Iterator[Any]:
        from distributed import as_completed

        return iter(as_completed(futures))

    def close(self, *, interrupted: bool = False) -> None:
        # The scheduler drops the tasks no client wants any more.
        self.client.close()


def check_backend_args(*, workers: int | None = None, scheduler: str | None = None) -> None:
    """SweepError for a bad combination of ``--workers`` and ``--scheduler``."""
    if scheduler and workers is not None:
        raise SweepError("--workers and --scheduler: the cluster decides how many workers")
    if workers is not None and workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")


def make_backend(*, workers: int | None = None, scheduler: str | None = None) -> Backend:
    """A Dask backend for ``scheduler``, else a local pool of ``workers`` (default: CPUs)."""
    check_backend_args(workers=workers, scheduler=scheduler)
    if scheduler:
        return DaskBackend(scheduler)
    return LocalBackend(workers if workers is not None else (os.cpu_count() or 1))


# -- journal ------------------------------------------------------------------------------
def read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """Records by run id (the last record of a run wins); a torn last line is ignored."""
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return records
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # the sweep was killed while writing this line
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "run_id" in rec:
                records[rec["run_id"]] = rec
    return records


class Journal:
    """Append-only JSON lines, one per finished run, each flushed and fsync'd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            # Cut a torn last line (killed mid-write) so the next record starts on its own line.
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                with path.open("r+b") as fh:
                    fh.truncate(end)
        self.fh = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (after this returns, a SIGKILL does not lose it)."""
        self.fh.write(json.dumps(record, default=str) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        """Close the file."""
        self.fh.close()


# -- running ------------------------------------------------------------------------------
#: ``progress(done, failed, total)``, called once at the start and after every finished run.
ProgressFn = Callable[[int, int, int], None]


@dataclass
class SweepOutcome:
    """What a sweep did and wrote."""

    out: Path
    table: pd.DataFrame
    planned: int
    resumed: int
    """Runs found finished in the journal and not run again."""
    ran: int
    failed: int
    """Failed runs in the table (this time or before)."""
    interrupted: bool = False
    backend: str = ""
    wall_time_s: float = 0.0
    written: list[Path] = field(default_factory=list)


def check_sweep_folder(plan: SweepPlan, out: Path) -> None:
    """SweepError unless ``out`` is new, empty, or a folder of this same plan (which is
    resumed): a different plan's runs are never mixed into a folder, nor its table
    overwritten."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SweepError(f"sweep folder {out}: is a file, not a folder")
    plan_file = out / PLAN
    if not plan_file.exists():
        if any(out.iterdir()):
            raise SweepError(f"sweep folder {out}: holds files but no sweep ({PLAN}); "
                             "pass another --out or delete it")
        return
    try:
        earlier = json.loads(plan_file.read_text(encoding="utf-8"))
        ids = [str(r["run_id"]) for r in earlier["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SweepError(f"sweep folder {out}: cannot read its {PLAN} ({exc}); pass "
                         "another --out or delete the folder") from None
    if plan_id_of(ids) != plan.plan_id:
        raise SweepError(f"sweep folder {out}: holds another sweep plan (other "
                         "parameters, seeds or scenario content); pass --out for a new "
                         "folder or delete it")


def run_sweep(plan: SweepPlan, out: str | Path | None = None, *,
              workers: int | None = None,
              scheduler: str | None = None, retry_failed: bool = False,
              kpis: Sequence[str] = DEFAULT_FIGURE_KPIS, figures: bool = True,
              progress: ProgressFn | None = None,
              on_start: Callable[[str], None] | None = None) -> SweepOutcome:
    """Run a planned sweep into ``out``, resuming what its journal already holds.

    Args:
        plan: from :func:`plan_sweep`.
        out: the sweep folder (created; an existing one of the same plan is resumed,
            one of another plan refused); default :meth:`SweepPlan.default_out`.
        workers: local processes (default: one per CPU); not with ``scheduler``.
        scheduler: a Dask scheduler address (``tcp://host:8786``).
        retry_failed: run again runs that failed before (default: they count as done).
        kpis: KPIs to plot against the swept parameters.
        figures: write the figures.
        progress: called with (done, failed, total) as runs finish.
        on_start: called with the backend's description once it is up.
    """
    t0 = time.perf_counter()
    check_backend_args(workers=workers, scheduler=scheduler)
    out = plan.default_out() if out is None else Path(out)
    check_sweep_folder(plan, out)
    new_folder = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    (out / PLAN).write_text(json.dumps(plan.to_json(), indent=2, default=str))
    journal_path = out / JOURNAL
    done = read_journal(journal_path)
    planned_ids = {r.run_id for r in plan.runs}

    def finished(rec: dict[str, Any] | None) -> bool:
        return rec is not None and (rec.get("status") == "ok" or not retry_failed)

    todo = [r for r in plan.runs if not finished(done.get(r.run_id))]
    resumed = len(plan.runs) - len(todo)
    failed = sum(1 for rid, rec in done.items()
                 if rid in planned_ids and finished(rec) and rec.get("status") != "ok")
    n_done = resumed
    if progress:
        progress(n_done, failed, len(plan.runs))
    journal = Journal(journal_path)
    interrupted = False
    ran = 0
    description = ""
    try:
        if todo:
            try:
                backend = make_backend(workers=workers, scheduler=scheduler)
            except SweepError:  # a wrong --scheduler address leaves no folder behind
                if new_folder:
                    shutil.rmtree(out, ignore_errors=True)
                raise
            description = backend.description
            if on_start:
                on_start(description)
            try:
                futures = {}
                for spec in todo:
                    futures[backend.submit(spec)] = spec
                for fut in backend.as_completed(list(futures)):
                    spec = futures[fut]
                    try:
                        rec = fut.result()
                    except BrokenProcessPool as exc:
                        # Which run took its worker down is unknown: stop, keep the journal.
                        raise RunError(
                            "a worker process died (killed, or out of memory?); finished "
                            "runs are kept: run the same command again to resume") from exc
                    except Exception as exc:  # the task, not the run, failed (lost worker)
                        rec = _failed_record(spec, f"{type(exc).__name__}: {exc}")
                    journal.append(rec)
                    done[spec.run_id] = rec
                    ran += 1
                    n_done += 1
                    if rec.get("status") != "ok":
                        failed += 1
                    if progress:
                        progress(n_done, failed, len(plan.runs))
            except KeyboardInterrupt:
                interrupted = True
            finally:
                try:
                    backend.close(interrupted=interrupted)
                except KeyboardInterrupt:  # a second Ctrl-C, or one while shutting down
                    interrupted = True
                    backend.close(interrupted=True)
    finally:
        journal.close()
    table = sweep_table(plan, done)
    written = write_table(table, out)
    if figures and not table.empty:
        written += plot_sweep(table, plan.parameters, kpis, out, title=plan.name)
    return SweepOutcome(out, table, len(plan.runs), resumed, ran,
                        int((table["status"] != "ok").sum()) if not table.empty else 0,
                        interrupted, description, time.perf_counter() - t0, written)


# -- the table ----------------------------------------------------------------------------
def sweep_table(plan: SweepPlan, records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per finished run of the plan, in plan order: parameters, seed, status, KPIs.

    Identical for the same plan whatever ran it (local pool, Dask) but for
    :data:`VOLATILE_COLUMNS`.
    """
    from .kpis import KPI_LABELS

    param_cols = [p.path for p in plan.parameters]
    rows = []
    kpi_names: set[str] = set()
    for spec in plan.runs:
        rec = records.get(spec.run_id)
        if rec is None:
            continue
        kpis = rec.get("kpis") or {}
        kpi_names.update(kpis)
        versions = (rec.get("record") or {}).get("versions") or {}
        rows.append({"run_index": spec.index, "run_id": spec.run_id,
                     **{c: spec.params.get(c) for c in param_cols}, "seed": spec.seed,
                     "status": rec.get("status", "failed"), "error": rec.get("error"),
                     **{f"kpi:{k}": v for k, v in kpis.items()},
                     "wall_time_s": rec.get("wall_time_s"), "worker": rec.get("worker"),
                     "evtwin_version": versions.get("evtwin"),
                     "source_sha256": spec.source_sha256})
    order = [k for k in KPI_LABELS if k in kpi_names] + sorted(kpi_names - set(KPI_LABELS))
    columns = ["run_index", "run_id", *param_cols, "seed", "status", "error", *order,
               "wall_time_s", "worker", "evtwin_version", "source_sha256"]
    table = pd.DataFrame(rows).rename(columns=lambda c: c[4:] if c.startswith("kpi:") else c)
    if table.empty:
        return pd.DataFrame(columns=columns)
    for k in order:
        table[k] = pd.to_numeric(table[k], errors="coerce").astype("float64")
    table["wall_time_s"] = pd.to_numeric(table["wall_time_s"], errors="coerce")
    table["error"] = table["error"].astype("string")
    return table[columns].reset_index(drop=True)


def write_table(table: pd.DataFrame, out: Path) -> list[Path]:
    """``sweep.parquet`` and ``sweep.csv`` (written whole, then renamed into place)."""
    written = []
    for name, write in (("sweep.parquet", lambda p: table.to_parquet(p, index=False)),
                        ("sweep.csv", lambda p: table.to_csv(p, index=False))):
        final = out / name
        tmp = out / f".{name}.tmp"
        write(tmp)
        os.replace(tmp, final)
        written.append(final)
    return written


# -- figures ------------------------------------------------------------------------------
def _group_parameter(table: pd.DataFrame, swept: list[str]) -> str | None:
    """The categorical swept parameter to draw one line per value of (e.g. the strategy)."""
    for p in swept:
        if not pd.api.types.is_numeric_dtype(table[p]) or pd.api.types.is_bool_dtype(table[p]):
            return p
    return None


def plot_sweep(table: pd.DataFrame, parameters: Sequence[Parameter], kpis: Sequence[str],
               out: Path, *, title: str = "sweep") -> list[Path]:
    """One figure per KPI: one panel per swept parameter, KPI against it.

    Lines are the mean over seeds (and over the other parameters), bands the
    min-max across them; a categorical parameter (e.g. ``control.strategy``)
    gives one line per value. With many distinct values (a Latin hypercube)
    every run is a dot instead.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .kpis import KPI_LABELS, display_unit

    def label_of(kpi: str) -> str:
        return KPI_LABELS.get(kpi, (kpi, ""))[0].strip()

    def unit_of(kpi: str) -> str:  # a sweep may mix scenarios: no one currency to name
        return display_unit(KPI_LABELS.get(kpi, ("", ""))[1], "currency")

    ok = table[table["status"] == "ok"]
    swept = [p.path for p in parameters if table[p.path].nunique(dropna=True) > 1]
    if ok.empty:
        return []
    if not swept:
        swept = ["seed"]
    group = _group_parameter(ok, swept)
    axes_params = [p for p in swept if p != group] or swept
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    written = []
    for kpi in kpis:
        if kpi not in ok.columns:
            continue
        fig, axes = plt.subplots(1, len(axes_params), figsize=(5.5 * len(axes_params), 4),
                                 squeeze=False)
        for ax, x in zip(axes[0], axes_params, strict=True):
            groups = (list(ok.groupby(group, sort=True)) if group and group != x
                      else [(None, ok)])
            categorical = not pd.api.types.is_numeric_dtype(ok[x])
            for i, (name, part) in enumerate(groups):
                colour = colours[i % len(colours)]
                label = None if name is None else str(name)
                if part[x].nunique() > 12 and not categorical:
                    ax.scatter(part[x], part[kpi], s=12, alpha=0.7, color=colour, label=label)
                    continue
                stats = part.groupby(x, sort=True)[kpi].agg(["mean", "min", "max"])
                xs = (np.arange(len(stats)) if categorical
                      else stats.index.to_numpy(dtype=float))
                ax.plot(xs, stats["mean"], marker="o", color=colour, label=label)
                ax.fill_between(xs, stats["min"], stats["max"], color=colour, alpha=0.2)
                if categorical:
                    ax.set_xticks(xs, [str(v) for v in stats.index], rotation=20)
            ax.set_xlabel(x)
            ax.set_ylabel(f"{label_of(kpi)} [{unit_of(kpi)}]" if unit_of(kpi) else label_of(kpi))
            ax.grid(True, alpha=0.3)
            if group and group != x:
                ax.legend(title=group, fontsize=8)
        n_seeds = ok["seed"].nunique()
        fig.suptitle(f"{title}: {kpi}\nmean, band min-max over {n_seeds} seed"
                     f"{'s' if n_seeds != 1 else ''} (and the other parameters)", fontsize=10)
        fig.tight_layout()
        path = out / f"sweep_{kpi}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


__all__ = ["DEFAULT_FIGURE_KPIS", "VOLATILE_COLUMNS", "Backend", "DaskBackend", "LocalBackend",
           "Parameter", "RunSpec", "SweepOutcome", "SweepPlan", "cartesian", "check_backend_args",
           "check_sweep_folder", "execute_run",
           "latin_hypercube", "make_backend", "parse_parameter", "parse_sample", "parse_seeds",
           "plan_id_of", "plan_sweep", "plot_sweep", "read_journal", "run_id", "run_sweep",
           "sweep_table", "write_table"]
