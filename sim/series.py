"""Time series spooled to disk in chunks while a run goes.

A run's per-step rows (the feeder and site series, and every station's
power) are not kept in memory as it runs: :class:`Spool` buffers a chunk of
rows in a numpy array and appends it to a raw float64 file, so memory stays
flat however long the run. At the end the small per-step table is read back
for the KPIs; the wide per-station table is read only when asked, and written
to CSV chunk by chunk.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Rows per chunk: a day at 1-minute steps.
CHUNK_ROWS = 1440


class Spool:
    """Rows of float columns appended to ``path`` (raw float64) in chunks.

    ``columns`` fixes the layout; :meth:`append` takes one row in that order.
    """

    def __init__(self, path: Path, columns: Sequence[str], chunk_rows: int = CHUNK_ROWS) -> None:
        self.path = path
        self.columns = list(columns)
        self._buf = np.empty((chunk_rows, len(self.columns)))
        self._n = 0
        self.rows = 0
        #: Whatever must live as long as the file does (its temporary folder).
        self.keep: object = None
        path.write_bytes(b"")

    def append(self, row: Sequence[float] | np.ndarray) -> None:
        self._buf[self._n] = row
        self._n += 1
        self.rows += 1
        if self._n == len(self._buf):
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows to the file."""
        if self._n:
            with self.path.open("ab") as f:
                self._buf[:self._n].tofile(f)
            self._n = 0

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """The rows written so far, ``rows`` at a time (each chunk read on its own)."""
        self.flush()
        data = np.memmap(self.path, dtype=np.float64, mode="r",
                         shape=(self.rows, len(self.columns))) if self.rows else None
        for start in range(0, self.rows, rows):
            assert data is not None
            yield np.array(data[start:start + rows])

    def frame(self) -> pd.DataFrame:
        """Everything written, as a data frame (read into memory)."""
        parts = list(self.chunks())
        values = np.vstack(parts) if parts else np.empty((0, len(self.columns)))
        return pd.DataFrame(values, columns=self.columns)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """A copy (pickle, deepcopy) gets its own folder with the rows, never a
        second owner of this one's file."""
        return _spool_of, (self.path.stem, self.columns, self.frame().to_numpy())

    def to_csv(self, path: Path) -> None:
        """Write the rows as CSV, one chunk at a time (same format as ``DataFrame.to_csv``)."""
        first = True
        for chunk in self.chunks():
            pd.DataFrame(chunk, columns=self.columns).to_csv(
                path, index=False, mode="w" if first else "a", header=first)
            first = False
        if first:
            pd.DataFrame(columns=self.columns).to_csv(path, index=False)


class SpoolDir:
    """A temporary folder for a run's spools, removed when closed or collected."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="evtwin-series-"))

    def spool(self, name: str, columns: Sequence[str]) -> Spool:
        return Spool(self.path / f"{name}.f64", columns)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __del__(self) -> None:
        self.close()


def _spool_of(name: str, columns: list[str], rows: np.ndarray) -> Spool:
    """A new spool, in a folder of its own, holding ``rows``."""
    folder = SpoolDir()
    spool = folder.spool(name, columns)
    spool.keep = folder
    for row in rows:
        spool.append(row)
    spool.flush()
    return spool
