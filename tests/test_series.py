"""Time series spooled to disk: what comes back is what went in, in pandas' CSV format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evtwin.sim.series import Spool, SpoolDir


def test_spool_round_trips_rows_across_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(1001, 4))
    values[3, 2] = np.nan
    spool = Spool(tmp_path / "x.f64", ["t_s", "a", "b", "c"], chunk_rows=64)
    for row in values:
        spool.append(row)
    # Only the part of the last chunk not yet written is held in memory.
    assert (tmp_path / "x.f64").stat().st_size == 8 * 4 * (1001 // 64) * 64
    frame = spool.frame()
    assert frame.shape == (1001, 4) and list(frame.columns) == ["t_s", "a", "b", "c"]
    assert np.array_equal(frame.to_numpy(), values, equal_nan=True)
    spool.to_csv(tmp_path / "x.csv")
    expected = tmp_path / "expected.csv"
    pd.DataFrame(values, columns=spool.columns).to_csv(expected, index=False)
    assert (tmp_path / "x.csv").read_text() == expected.read_text()


def test_empty_spool_writes_a_header(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "x.f64", ["t_s", "a"])
    assert spool.frame().empty
    spool.to_csv(tmp_path / "x.csv")
    assert (tmp_path / "x.csv").read_text().strip() == "t_s,a"


def test_spool_folder_is_removed_when_closed() -> None:
    folder = SpoolDir()
    spool = folder.spool("power", ["t_s"])
    spool.append([1.0])
    spool.flush()
    assert spool.path.exists()
    folder.close()
    assert not folder.path.exists()


@pytest.mark.slow
def test_a_copied_spool_owns_its_own_rows(tmp_path: Path) -> None:
    import copy
    import gc
    import pickle

    folder = SpoolDir()
    spool = folder.spool("power", ["t_s", "a"])
    spool.keep = folder
    for k in range(5):
        spool.append([float(k), 2.0 * k])
    for twin in (copy.deepcopy(spool), pickle.loads(pickle.dumps(spool))):
        assert twin.path != spool.path
        assert twin.frame().equals(spool.frame())
        del twin
        gc.collect()
        assert spool.frame()["a"].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
