"""``--set KEY=VALUE``: values reach the scenario model as text and are coerced there."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evtwin.sim.cli import main
from evtwin.sim.exceptions import ScenarioError
from evtwin.sim.overrides import parse_overrides, parse_value
from evtwin.sim.scenario import TRANSPORT_ENV, Scenario, load_scenario

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scenarios" / "demo.toml"


def load(*items: str) -> Scenario:
    return load_scenario(DEMO, parse_overrides(list(items), str(DEMO)))


# -- the parser ---------------------------------------------------------------------------
def test_values_stay_text_quotes_dropped_brackets_are_lists() -> None:
    assert parse_value("1.6") == "1.6"
    assert parse_value(" 20 ") == "20"
    assert parse_value("true") == "true"
    assert parse_value('"2.0.1"') == "2.0.1"
    assert parse_value("'a b'") == "a b"
    assert parse_value("[3, 5]") == ["3", "5"]
    assert parse_value('["a", b]') == ["a", "b"]
    assert parse_value("[]") == []
    assert parse_overrides(["csms.protocol=1.6", "name==x"], "f") == {
        "csms.protocol": "1.6", "name": "=x"}
    for bad in ("ev.count", "=3"):
        with pytest.raises(ScenarioError, match="--set: expected KEY=VALUE"):
            parse_overrides([bad], "f")


@given(st.text(alphabet=st.characters(blacklist_characters="[]\"'",
                                      blacklist_categories=("Cs",)), max_size=30))
def test_any_plain_value_reaches_the_model_as_the_text_given(text: str) -> None:
    assert parse_value(text) == text.strip()


# -- coercion by the model ----------------------------------------------------------------
@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1", '"2.0.1"'])
def test_the_protocol_version_is_text(version: str) -> None:
    assert load(f"csms.protocol={version}").csms.protocol == version.strip('"')


def test_each_field_takes_its_type_from_the_text() -> None:
    sc = load("name=123", "ev.count=20", "grid.base_load_scale=0.75", "sites.1.bidirectional=true",
              "sites.0.phases=1", "start=2026-01-15T16:30:00", "duration_h=2",
              "sites.1.behaviour.arrival_means_h=[8, 9.5]",
              "sites.1.behaviour.arrival_stds_h=[1,1]")
    assert sc.name == "123"
    assert sc.ev.count == 20 and isinstance(sc.ev.count, int)
    assert sc.grid.base_load_scale == 0.75
    assert sc.sites[1].bidirectional is True
    assert sc.sites[0].phases == 1
    assert sc.start == datetime(2026, 1, 15, 16, 30, tzinfo=UTC)
    assert sc.sites[1].behaviour.arrival_means_h == (8.0, 9.5)
    assert load("sites.1.bidirectional=false").sites[1].bidirectional is False


def test_a_list_field_from_brackets(tmp_path: Path) -> None:
    path = tmp_path / "two.toml"
    path.write_text('[ev]\ncount = 2\n[[sites]]\nname = "a"\nstations = 2\n')
    sc = load_scenario(path, parse_overrides(["sites.0.buses=[3, 5]"], str(path)))
    assert sc.sites[0].buses == [3, 5]


@pytest.mark.parametrize(("item", "field", "given"), [
    ("ev.count=abc", "ev.count", "'abc'"),
    ("csms.protocol=1.7", "csms.protocol", "'1.7'"),
    ("ev.count=0", "ev.count", "'0'"),
    ("sites.0.phases=2", "sites.0.phases", "'2'"),
    ("run.transport=pigeon", "run.transport", "'pigeon'"),
])
def test_errors_name_the_field_and_the_value_given(item: str, field: str, given: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load(item)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{DEMO}: {field}: ")
    assert line.endswith(f"(given {given})")


def test_a_false_csms_process_text_does_not_block_the_environment_transport(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRANSPORT_ENV, "direct")
    sc = load("run.csms_process=false")
    assert sc.run.csms_process is False and sc.run.transport == "direct"
    assert load("run.csms_process=true").run.transport == "websocket"


# -- the command line ---------------------------------------------------------------------
@pytest.mark.parametrize("version", ["1.6", "2.1"])
@pytest.mark.slow
def test_run_with_a_protocol_override(tmp_path: Path, version: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(DEMO), "--set", f"csms.protocol={version}", "--set",
                 "duration_h=1", "--set", "run.transport=direct", "--quiet",
                 "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    (run_dir,) = list(tmp_path.iterdir())
    scenario = json.loads((run_dir / "scenario.json").read_text())
    assert scenario["csms"]["protocol"] == version
    assert json.loads((run_dir / "kpis.json").read_text())["kpis"]["ocpp_messages"] > 0


def test_a_negative_seed_is_one_line_naming_seed(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--seed", "-1"], ["--set", "seed=-1"]):
        code = main(["run", str(DEMO), *args, "--quiet", "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert err.splitlines() == [f"error: {DEMO}: seed: must be >= 0 (given "
                                    f"{-1 if args[0] == '--seed' else repr('-1')})"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
