"""``evtwin sweep``: planning, the same table on 1 and 2 workers and on Dask, kill and resume."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from evtwin.sim.cli import main
from evtwin.sim.exceptions import SweepError
from evtwin.sim.sweep import (
    PLAN,
    VOLATILE_COLUMNS,
    Journal,
    cartesian,
    check_sweep_folder,
    latin_hypercube,
    parse_parameter,
    parse_seeds,
    plan_sweep,
    read_journal,
    run_sweep,
)

#: A few EVs on the 18-bus Kerber Landnetz at the evening peak: a run takes about 0.5 s.
TINY = """\
seed = 1
start = 2026-01-15T16:30:00
duration_h = 3
step_s = 60

[grid]
network = "kerber_landnetz_kabel_1"
base_load_scale = 0.5

[csms]
database = "memory"

[control]
strategy = "uncontrolled"

[ev]
count = 4

[[sites]]
name = "street"
kind = "home"
stations = 6
evse_max_kw = 11
limit_kw = 22

[sites.behaviour]
arrival_mean_h = 17.0
arrival_std_h = 0.5
"""

#: 2 fleet sizes x 2 strategies x 2 seeds = 8 runs.
SWEEP_ARGS = ["--set", "ev.count=2,5", "--set", "control.strategy=uncontrolled,equal_share",
              "--seeds", "2", "--quiet"]


def evtwin(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evtwin.sim.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def one_worker_sweep(tiny: Path) -> Path:
    """The reference sweep: 8 runs on one local worker."""
    out = tiny.parent / "sweep-1"
    proc = evtwin("sweep", str(tiny), *SWEEP_ARGS, "--workers", "1", "--out", str(out),
                  cwd=tiny.parent)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return out


def comparable(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "sweep.parquet").drop(columns=list(VOLATILE_COLUMNS))


# -- planning -----------------------------------------------------------------------------
def test_parse_lists_stepped_ranges_and_plain_ranges() -> None:
    # Lists stay text: the scenario model coerces them by the field's type.
    assert parse_parameter("ev.count=20,40,80").values == ("20", "40", "80")
    assert parse_parameter("csms.protocol=1.6,2.0.1,2.1").values == ("1.6", "2.0.1", "2.1")
    assert parse_parameter('name="a,b",c').values == ("a,b", "c")
    assert parse_parameter("sites.0.buses=[1, 2],[3,4]").values == (["1", "2"], ["3", "4"])
    assert parse_parameter("control.strategy=equal_share,edf").values == ("equal_share", "edf")
    assert parse_parameter("ev.count=20:80:20").values == (20, 40, 60, 80)
    assert parse_parameter("sites.0.limit_kw=0.5:1.0:0.25").values == (0.5, 0.75, 1.0)
    rng = parse_parameter("ev.count=20:80")
    assert rng.is_range and rng.integer and (rng.low, rng.high) == (20, 80)
    flt = parse_parameter("grid.base_load_scale=0.5:1.5")
    assert flt.is_range and not flt.integer
    # A timestamp has colons but is no range.
    assert parse_parameter("start=2026-01-15T16:00:00").values == ("2026-01-15T16:00:00",)
    for bad in ("ev.count", "=3", "ev.count=80:20", "ev.count=1:5:0", "seed=1,2", "k=1,,2"):
        with pytest.raises(SweepError):
            parse_parameter(bad)
    assert parse_seeds("3", 7) == [7, 8, 9]
    assert parse_seeds("4,2", 7) == [4, 2]
    with pytest.raises(SweepError):
        parse_seeds("2,2", 0)


@given(lo=st.integers(-1000, 1000), span=st.integers(0, 500), step=st.integers(1, 50))
def test_stepped_integer_range_is_inclusive_and_evenly_spaced(lo: int, span: int,
                                                              step: int) -> None:
    values = parse_parameter(f"k={lo}:{lo + span}:{step}").values
    assert values[0] == lo
    assert all(b - a == step for a, b in itertools.pairwise(values))
    assert values[-1] <= lo + span < values[-1] + step


def test_cartesian_product_and_range_without_step_needs_sample() -> None:
    points = cartesian([parse_parameter("a=1,2"), parse_parameter("b=x,y,z")])
    assert len(points) == 6 and points[0] == {"a": "1", "b": "x"}
    assert points[-1] == {"a": "2", "b": "z"}
    with pytest.raises(SweepError, match="a range needs a step"):
        cartesian([parse_parameter("a=1:5")])


def test_latin_hypercube_is_stratified_seeded_and_in_range() -> None:
    params = [parse_parameter("ev.count=0:79"), parse_parameter("g=0.5:1.5"),
              parse_parameter("s=a,b"), parse_parameter("fixed=3")]
    points = latin_hypercube(params, 8, seed=0)
    assert len(points) == 8
    # One point in each eighth of every range: what makes it a Latin hypercube.
    assert sorted(p["ev.count"] // 10 for p in points) == list(range(8))
    assert sorted(int((p["g"] - 0.5) * 8) for p in points) == list(range(8))
    assert sorted(p["s"] for p in points) == ["a"] * 4 + ["b"] * 4
    assert all(isinstance(p["ev.count"], int) and p["fixed"] == "3" for p in points)
    assert latin_hypercube(params, 8, seed=0) == points
    assert latin_hypercube(params, 8, seed=1) != points


def test_run_ids_are_stable_and_follow_the_file_content(tmp_path: Path, tiny: Path) -> None:
    a = plan_sweep(tiny, ["ev.count=2,3"], seeds="2")
    b = plan_sweep(tiny, ["ev.count=2,3"], seeds="2")
    assert [r.run_id for r in a.runs] == [r.run_id for r in b.runs]
    assert len({r.run_id for r in a.runs}) == 4
    assert [(r.params["ev.count"], r.seed) for r in a.runs] == [(2, 1), (2, 2), (3, 1), (3, 2)]
    # Each run carries its exact validated scenario: the seed and override are in it.
    assert a.runs[3].scenario["seed"] == 2 and a.runs[3].scenario["ev"]["count"] == 3
    edited = tmp_path / "tiny.toml"
    edited.write_text(TINY.replace("limit_kw = 22", "limit_kw = 30"))
    c = plan_sweep(edited, ["ev.count=2,3"], seeds="2")
    assert not {r.run_id for r in a.runs} & {r.run_id for r in c.runs}
    # A file the scenario reads (here a day-ahead price CSV) is part of the run too.
    prices = tmp_path / "prices.csv"
    prices.write_text("time,price_per_kwh\n2020-01-01T00:00:00Z,0.30\n")
    priced = ["ev.count=2,3", "prices.kind=csv", f"prices.csv={prices}"]
    d = plan_sweep(tiny, priced, seeds="2")
    assert [r.run_id for r in d.runs] == [r.run_id for r in plan_sweep(tiny, priced,
                                                                        seeds="2").runs]
    prices.write_text("time,price_per_kwh\n2020-01-01T00:00:00Z,0.35\n")
    e = plan_sweep(tiny, priced, seeds="2")
    assert not {r.run_id for r in d.runs} & {r.run_id for r in e.runs}
    lhs = plan_sweep(tiny, ["ev.count=2:40", "control.strategy=uncontrolled,equal_share"],
                     sample="lhs:6", seeds="2")
    assert len(lhs.runs) == 12 and all(2 <= r.params["ev.count"] <= 40 for r in lhs.runs)
    # A point drawn twice (a range narrower than the sample) is one run, not two.
    narrow = plan_sweep(tiny, ["ev.count=2:3"], sample="lhs:6")
    assert sorted(r.params["ev.count"] for r in narrow.runs) == [2, 3]


def test_any_field_can_be_swept_and_numeric_fields_stay_numbers(tiny: Path) -> None:
    plan = plan_sweep(tiny, ["csms.protocol=1.6,2.0.1,2.1", "ev.count=2,3.0",
                             "name=123", "grid.base_load_scale=1"])
    assert [r.scenario["csms"]["protocol"] for r in plan.runs] == ["1.6", "1.6", "2.0.1",
                                                                   "2.0.1", "2.1", "2.1"]
    assert all(r.scenario["name"] == "123" for r in plan.runs)
    # The table keeps what the model made of a number, text where the field is text.
    assert [r.params["ev.count"] for r in plan.runs] == [2, 3] * 3
    assert all(type(r.params["ev.count"]) is int for r in plan.runs)
    assert all(type(r.params["grid.base_load_scale"]) is float for r in plan.runs)
    assert plan.runs[0].params["name"] == "123" and plan.runs[0].params["csms.protocol"] == "1.6"
    # Numbers keep the run ids they had when values were parsed as numbers.
    before = plan_sweep(tiny, ["ev.count=2,3"])
    assert [r.params["ev.count"] for r in before.runs] == [2, 3]
    # Two texts of the same number are one run.
    assert len(plan_sweep(tiny, ["ev.count=2,2.0"]).runs) == 1


def test_sample_needs_a_range(tiny: Path) -> None:
    with pytest.raises(SweepError, match=r"--sample lhs:8: .*KEY=LOW:HIGH"):
        plan_sweep(tiny, ["ev.count=2,3", "sites.0.limit_kw=10:30:10"],
                   sample="lhs:8")


def test_each_plan_has_its_own_default_folder(tiny: Path) -> None:
    """The README's two demo sweeps: a product of lists, and a Latin hypercube."""
    lists = plan_sweep(tiny, ["ev.count=10,20,40", "control.strategy=equal_share,edf"],
                       seeds="5")
    lhs = plan_sweep(tiny, ["ev.count=10:60", "sites.0.limit_kw=22:88"], sample="lhs:64",
                     seeds="2")
    again = plan_sweep(tiny, ["control.strategy=equal_share,edf", "ev.count=10,20,40"],
                       seeds="5")
    assert lists.default_out() == Path("results") / f"tiny-sweep-{lists.plan_id}"
    assert lists.default_out() != lhs.default_out()
    assert again.plan_id == lists.plan_id  # the same runs, in another order
    assert len(lists.plan_id) == 8


def test_a_folder_takes_only_its_own_plan(tmp_path: Path, tiny: Path) -> None:
    first = plan_sweep(tiny, ["ev.count=2,3"])
    other = plan_sweep(tiny, ["ev.count=2,4"])
    out = tmp_path / "sweep"
    check_sweep_folder(first, out)  # new
    out.mkdir()
    check_sweep_folder(first, out)  # empty
    (out / PLAN).write_text(json.dumps(first.to_json()))
    check_sweep_folder(first, out)  # the same plan: resumed
    with pytest.raises(SweepError) as info:
        check_sweep_folder(other, out)
    assert str(out) in str(info.value) and "--out" in str(info.value)
    assert "delete" in str(info.value)
    # run_sweep refuses before it writes anything.
    plan_text = (out / PLAN).read_text()
    with pytest.raises(SweepError):
        run_sweep(other, out, workers=1, figures=False)
    assert (out / PLAN).read_text() == plan_text and not (out / "journal.jsonl").exists()
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(SweepError, match="holds files but no sweep"):
        check_sweep_folder(first, stray)
    (tmp_path / "file").write_text("")
    with pytest.raises(SweepError, match="is a file"):
        check_sweep_folder(first, tmp_path / "file")


def test_journal_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text('{"run_id": "a", "status": "ok"}\n{"run_id": "b", "sta')
    assert set(read_journal(path)) == {"a"}
    journal = Journal(path)
    journal.append({"run_id": "c", "status": "failed", "error": "boom"})
    journal.close()
    records = read_journal(path)
    assert set(records) == {"a", "c"} and records["c"]["error"] == "boom"
    assert path.read_text().count("\n") == 2


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, tiny: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in (
        (["--set", "ev.count=2:9"], "a range needs a step"),
        (["--set", "ev.count=0,2"], "ev.count: must be > 0"),
        (["--sample", "lhs:x"], "--sample: expected lhs:N"),
        (["--kpis", "happiness"], "--kpis: unknown KPI happiness"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--set", "ev.count=2,3", "--sample", "lhs:4"], "--sample lhs:4: a Latin hypercube"),
        (["--set", "csms.protocol=1.6,1.7"], "csms.protocol: Input should be"),
    ):
        code = main(["sweep", str(tiny), *args, "--quiet", "--out", str(tmp_path / "out")])
        err = " ".join(capsys.readouterr().err.split())
        assert code == 2, (args, err)
        assert message in err
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- running ------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_writes_table_figures_and_records(one_worker_sweep: Path) -> None:
    table = pd.read_parquet(one_worker_sweep / "sweep.parquet")
    assert len(table) == 8 and table["run_id"].is_unique
    assert list(table["run_index"]) == list(range(8))
    assert (table["status"] == "ok").all()
    assert {"ev.count", "control.strategy", "seed", "peak_trafo_loading_percent",
            "v_min_pu", "energy_unmet_percent", "ocpp_messages"} <= set(table.columns)
    # The swept parameters really changed the runs.
    by_count = table.groupby("ev.count")["energy_requested_kwh"].mean()
    assert by_count[5] > by_count[2] > 0
    by_strategy = table.groupby("control.strategy")["minutes_site_limit_exceeded"].max()
    assert by_strategy["uncontrolled"] > 0 and by_strategy["equal_share"] == 0
    csv = pd.read_csv(one_worker_sweep / "sweep.csv")
    assert list(csv.columns) == list(table.columns)
    pd.testing.assert_series_equal(csv["v_min_pu"], table["v_min_pu"])
    for kpi in ("peak_trafo_loading_percent", "v_min_pu", "energy_unmet_percent"):
        png = one_worker_sweep / f"sweep_{kpi}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # Every run's record holds its exact scenario, seed and versions.
    records = read_journal(one_worker_sweep / "journal.jsonl")
    rec = records[table["run_id"][3]]["record"]
    assert rec["seed"] == table["seed"][3] and rec["versions"]["evtwin"]
    assert rec["scenario"]["control"]["strategy"] == table["control.strategy"][3]


@pytest.mark.slow
def test_two_local_workers_give_the_same_table_as_one(tiny: Path,
                                                      one_worker_sweep: Path) -> None:
    out = tiny.parent / "sweep-2"
    proc = evtwin("sweep", str(tiny), *SWEEP_ARGS, "--workers", "2", "--out", str(out),
                  cwd=tiny.parent)
    assert proc.returncode == 0, proc.stderr
    two = pd.read_parquet(out / "sweep.parquet")
    assert two["worker"].nunique() == 2  # both workers really ran runs
    pd.testing.assert_frame_equal(comparable(out), comparable(one_worker_sweep))


@pytest.mark.slow
def test_dask_cluster_gives_the_same_table(tiny: Path, one_worker_sweep: Path) -> None:
    from distributed import LocalCluster

    out = tiny.parent / "sweep-dask"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        proc = evtwin("sweep", str(tiny), *SWEEP_ARGS, "--scheduler",
                      cluster.scheduler_address, "--out", str(out), cwd=tiny.parent)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "on Dask cluster tcp://127.0.0.1:" in proc.stdout
    table = pd.read_parquet(out / "sweep.parquet")
    # The runs ran in the cluster's worker processes, not in the sweep's.
    workers = set(table["worker"])
    assert len(workers) == 2
    pd.testing.assert_frame_equal(comparable(out), comparable(one_worker_sweep))


@pytest.mark.slow
def test_reproduce_a_sweep_run(one_worker_sweep: Path) -> None:
    table = pd.read_parquet(one_worker_sweep / "sweep.parquet")
    run_id = str(table["run_id"][5])
    proc = evtwin("reproduce", str(one_worker_sweep), "--run", run_id,
                  cwd=one_worker_sweep.parent)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "reproduced" in proc.stdout


@pytest.mark.slow
def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path: Path, tiny: Path
                                                            ) -> None:
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "evtwin.sim.cli", "sweep", str(tiny), "--set",
            "ev.count=2,3,4,5", "--seeds", "2", "--workers", "1", "--quiet",
            "--out", str(out)]
    journal = out / "journal.jsonl"
    # Own process group: SIGKILL reaches the sweep and its worker processes at once.
    proc = subprocess.Popen(args, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count('"status": "ok"') >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    before = journal.read_bytes()
    finished_before = before.count(b"\n")
    planned = len(json.loads((out / "plan.json").read_text())["runs"])
    assert planned == 8
    assert 1 <= finished_before < planned
    assert not (out / "sweep.parquet").exists()  # it really died mid-sweep

    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{finished_before} found done and not run again" in again.stdout
    after = journal.read_bytes()
    # The finished runs' records are untouched and none of them was run again:
    # the journal gained exactly one line per run that was still to do.
    assert after.startswith(before)
    lines = [json.loads(line) for line in after.decode().splitlines()]
    assert len(lines) == planned
    assert len({rec["run_id"] for rec in lines}) == planned
    table = pd.read_parquet(out / "sweep.parquet")
    plan_ids = [r["run_id"] for r in json.loads((out / "plan.json").read_text())["runs"]]
    assert list(table["run_id"]) == plan_ids
    assert (table["status"] == "ok").all()


@pytest.mark.slow
def test_sweep_over_the_protocol_then_resume_and_refuse_another_plan(tmp_path: Path,
                                                                     tiny: Path) -> None:
    out = tmp_path / "protocols"
    args = ["sweep", str(tiny), "--set", "csms.protocol=1.6,2.0.1,2.1", "--set",
            "ev.count=2,3", "--set", "duration_h=1", "--workers", "1", "--quiet",
            "--out", str(out)]
    proc = evtwin(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    table = pd.read_parquet(out / "sweep.parquet")
    assert list(table["csms.protocol"]) == ["1.6", "1.6", "2.0.1", "2.0.1", "2.1", "2.1"]
    assert (table["status"] == "ok").all()
    assert pd.api.types.is_integer_dtype(table["ev.count"])  # it still plots as a number
    assert (out / "sweep_v_min_pu.png").exists()
    again = evtwin(*args, cwd=tmp_path)
    assert again.returncode == 0 and "6 found done and not run again" in again.stdout
    other = evtwin(*[a.replace("ev.count=2,3", "ev.count=2,4") for a in args], cwd=tmp_path)
    assert other.returncode == 2
    assert other.stderr.strip().startswith(f"error: sweep folder {out}: holds another")
    assert "Traceback" not in other.stderr
    assert len(read_journal(out / "journal.jsonl")) == 6


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path, tiny: Path) -> None:
    # Valid as a scenario, fails when the run loads the network.
    args = ["sweep", str(tiny), "--set",
            f"grid.network=kerber_landnetz_kabel_1,{tmp_path / 'missing.json'}",
            "--workers", "1", "--quiet", "--out", str(tmp_path / "out")]
    proc = evtwin(*args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "1 ok, 1 failed" in proc.stdout
    table = pd.read_parquet(tmp_path / "out" / "sweep.parquet")
    assert list(table["status"]) == ["ok", "failed"]
    assert "missing.json" in table["error"][1] and "NetworkFileError" in table["error"][1]
    assert pd.isna(table["v_min_pu"][1]) and table["v_min_pu"][0] > 0.9
    # Resuming does not retry a failed run unless asked to.
    plan = plan_sweep(tiny, [args[3]])
    again = run_sweep(plan, tmp_path / "out", workers=1, figures=False)
    assert (again.resumed, again.ran, again.failed) == (2, 0, 1)
    retried = run_sweep(plan, tmp_path / "out", workers=1, retry_failed=True, figures=False)
    assert (retried.resumed, retried.ran, retried.failed) == (1, 1, 1)
    journal = (tmp_path / "out" / "journal.jsonl").read_text().splitlines()
    assert len(journal) == 3
    assert len(pd.read_parquet(tmp_path / "out" / "sweep.parquet")) == 2
