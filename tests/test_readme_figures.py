"""docs/readme_figures.py: the README's quoted results come from the runs, not by hand.

The fast tests check the markers and the rendering; the slow one runs a few cheap
regions in ``--check`` mode, so a README number that drifts from what the runs give
fails the suite.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "readme_figures.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_figures", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rf = _load()


def test_every_marker_has_a_generator_and_every_generator_a_marker() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    regions = rf.find_regions(text)  # raises on unbalanced, nested or repeated markers
    marked = [r.name for r in regions]
    assert sorted(marked) == sorted(rf.GENERATORS)
    # Every opening marker is closed: as many closing markers as regions.
    assert text.count(rf.END) == len(regions)
    assert text.count("<!-- readme-figures: ") == len(regions)


def test_no_inline_marker_starts_a_line() -> None:
    """A line that starts with ``<!--`` is an HTML block: it would cut its paragraph."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for r in rf.find_regions(text):
        if not r.is_block(text):
            line_start = text.rfind("\n", 0, r.start) + 1
            assert not text[line_start:r.start].startswith("<!--"), r.name


@pytest.mark.parametrize(("text", "says"), [
    ("a <!-- readme-figures: x -->1", "never closed"),
    ("a <!-- /readme-figures --> b", "closes no region"),
    ("<!-- readme-figures: x -->1<!-- readme-figures: y -->2<!-- /readme-figures -->",
     "opens inside region 'x'"),
    ("<!-- readme-figures: x -->1<!-- /readme-figures -->\n"
     "<!-- readme-figures: x -->2<!-- /readme-figures -->", "marked twice"),
])
def test_bad_markers_name_the_line(text: str, says: str) -> None:
    with pytest.raises(rf.ReadmeFiguresError, match=says) as err:
        rf.find_regions(text, "R.md")
    assert str(err.value).startswith("R.md:")


def _readme(tmp_path: Path) -> Path:
    path = tmp_path / "README.md"
    path.write_text(
        "# t\n\nThe peak is <!-- readme-figures: peak -->99 %<!-- /readme-figures -->"
        " today.\n\n<!-- readme-figures: table -->\n| a | b |\n|---|---|\n| 1 | 2 |\n"
        "<!-- /readme-figures -->\n\nUnmarked 99 % stays.\n", encoding="utf-8")
    return path


def _fake(peak: float) -> dict[str, object]:
    return {"peak": lambda ctx: f"{peak:.0f} %",
            "table": lambda ctx: f"| a | b |\n|---|---|\n| {peak:.0f} | 2 |"}


def test_render_replaces_only_marked_regions_and_is_idempotent(tmp_path: Path) -> None:
    text = _readme(tmp_path).read_text(encoding="utf-8")
    ctx = rf.Context(figures=None)
    new = rf.render(text, _fake(104.6), ctx)
    assert "<!-- readme-figures: peak -->105 %<!-- /readme-figures --> today." in new
    assert "\n| 105 | 2 |\n<!-- /readme-figures -->" in new
    assert "Unmarked 99 % stays." in new
    assert rf.render(new, _fake(104.6), ctx) == new
    only = rf.render(text, _fake(104.6), ctx, only=["peak"])
    assert "| 1 | 2 |" in only and "105 %" in only


def test_a_generator_without_markers_or_markers_without_one_fail(tmp_path: Path) -> None:
    text = _readme(tmp_path).read_text(encoding="utf-8")
    ctx = rf.Context(figures=None)
    with pytest.raises(rf.ReadmeFiguresError, match=r"no markers for region.*extra"):
        rf.render(text, {**_fake(1.0), "extra": lambda ctx: ""}, ctx)
    with pytest.raises(rf.ReadmeFiguresError, match=r"no generator for region.*table"):
        rf.render(text, {"peak": _fake(1.0)["peak"]}, ctx)


def test_inline_regions_wrap_like_the_prose_around_them() -> None:
    text = "Before, " + "x" * 60 + " <!-- readme-figures: s -->old<!-- /readme-figures -->.\n"
    long = " ".join(["word 12 % `trafo 0 loading`"] * 12)
    new = rf.render(text, {"s": lambda ctx: long}, rf.Context(figures=None))
    lines = new.splitlines()
    assert len(lines) > 3 and all(len(line) <= rf.WIDTH for line in lines[1:-1])
    assert len(lines[-1]) <= rf.WIDTH + 1  # the closing marker, then the text's "."
    assert " ".join(new.split()).count("word 12 % `trafo 0 loading`") == 12
    # A number keeps its unit, a code span its words.
    assert not any(line.startswith(("%", "0 loading`")) for line in lines)
    assert rf.render(new, {"s": lambda ctx: long}, rf.Context(figures=None)) == new


def test_check_exits_1_with_a_diff_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    readme = _readme(tmp_path)
    before = readme.read_text(encoding="utf-8")
    monkeypatch.setattr(rf, "GENERATORS", _fake(104.6))
    figures = tmp_path / "figures"
    assert rf.main(["--check", "--readme", str(readme), "--figures", str(figures)]) == 1
    out = capsys.readouterr().out
    assert "-The peak is <!-- readme-figures: peak -->99 %" in out
    assert "+The peak is <!-- readme-figures: peak -->105 %" in out
    assert readme.read_text(encoding="utf-8") == before
    assert not figures.exists()
    # Written, then checked: up to date.
    assert rf.main(["--readme", str(readme), "--figures", str(figures)]) == 0
    assert rf.main(["--check", "--readme", str(readme)]) == 0
    assert "105 %" in readme.read_text(encoding="utf-8")


def test_edits_made_while_the_runs_ran_are_kept(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    readme = _readme(tmp_path)
    fake = _fake(104.6)
    slow_peak = fake["peak"]

    def peak_while_someone_edits(ctx: object) -> str:
        text = readme.read_text(encoding="utf-8")
        readme.write_text(text.replace("Unmarked 99 % stays.", "Edited meanwhile."),
                          encoding="utf-8")
        return slow_peak(ctx)  # type: ignore[operator]

    monkeypatch.setattr(rf, "GENERATORS", {**fake, "peak": peak_while_someone_edits})
    assert rf.main(["--readme", str(readme), "--figures", str(tmp_path / "f")]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "Edited meanwhile." in text and "105 %" in text and "| 105 | 2 |" in text


def test_unknown_only_region_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert rf.main(["--check", "--only", "overload,nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nonsense" in err and "overload" in err


def test_claims_a_run_contradicts_fail() -> None:
    with pytest.raises(rf.ReadmeFiguresError, match=r"feeder_stress.*overloads"):
        rf.claim(False, "feeder_stress", "uncontrolled overloads the transformer",
                 "its peak is 90 %")


@pytest.mark.slow
def test_cheap_regions_match_the_runs() -> None:
    """The README's overload line, feeder_stress paragraph and planning numbers are what
    the runs give today (``make readme-figures`` rewrites them when they change)."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--workers", "1", "--only",
         "overload,feeder_stress,hosting_range,penetration_breaks"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in done.stdout
    assert time.perf_counter() - began < 120  # about 40 s on a busy 2-core machine
