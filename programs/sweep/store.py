"""The results of a sweep: one row per point in ``results.parquet`` (pyarrow), keyed by
``point_id``, with a CSV export.

Every change rewrites the Parquet file atomically: the table goes to a temporary file in the
same folder, which is flushed to disk (fsync) and then renamed over the old one (``os.replace``,
atomic on POSIX), and the folder is synced. A crash at any moment leaves either the old or the
new file, never a partial one, so a killed sweep loses at most the points that were running.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from emulator.errors import SweepError

RESULTS = "results.parquet"
CSV = "results.csv"
KEY = "point_id"
# ok: finished; error: a typed lpemu error (deterministic: not re-run); failed: the task
# itself failed (lost workers past Dask's retries, an internal error): re-run next time
DONE_STATUSES = ("ok", "error")


def _cell(v: Any) -> Any:
    """A Parquet-friendly cell: scalars as they are, lists and mappings as JSON text."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "item"):  # numpy scalar
        return v.item()
    return json.dumps(v, sort_keys=True)


def _column_type(values: list[Any]):
    import pyarrow as pa

    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.null()
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        return pa.int64()
    if kinds <= {int, float}:
        return pa.float64()
    return pa.string()


def _convert(v: Any, typ) -> Any:
    import pyarrow as pa

    if v is None:
        return None
    if typ == pa.string() and not isinstance(v, str):
        return json.dumps(v)
    if typ == pa.float64():
        return float(v)
    return v


class ResultStore:
    """The rows of one sweep folder, in memory and on disk."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RESULTS
        self.rows: dict[str, dict[str, Any]] = {}
        self.columns: list[str] = []
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(self.path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise SweepError(f"cannot read the results table: {e}", str(self.path)) from None
        if KEY not in table.column_names or "status" not in table.column_names:
            raise SweepError(f"not an lpemu results table (no {KEY!r}/'status' column)",
                             str(self.path))
        self.columns = list(table.column_names)
        for r in table.to_pylist():
            self.rows[r[KEY]] = r

    def finished(self, point_id: str, metrics: list[str],
                 nullable: tuple[str, ...] = ()) -> bool:
        """A row exists, finished (ok or a typed error), and holds every wanted metric (a
        value, or null where ``nullable`` allows: metrics count-only mode does not produce)."""
        r = self.rows.get(point_id)
        if r is None or r.get("status") not in DONE_STATUSES:
            return False
        return r["status"] == "error" or all(
            m in r and (r[m] is not None or m in nullable) for m in metrics)

    def add(self, row: dict[str, Any]) -> None:
        """Store a row (replacing the one with its point_id) and rewrite the file atomically."""
        row = {k: _cell(v) for k, v in row.items()}
        for k in row:
            if k not in self.columns:
                self.columns.append(k)
        self.rows[row[KEY]] = row
        self.write()

    def table(self):
        import pyarrow as pa

        # in the sweep's point order (rows arrive in completion order)
        rows = sorted(self.rows.values(), key=lambda r: (not isinstance(r.get("point"), int),
                                                         r.get("point") or 0))
        arrays, names = [], []
        for c in self.columns:
            values = [r.get(c) for r in rows]
            typ = _column_type(values)
            arrays.append(pa.array([_convert(v, typ) for v in values], type=typ))
            names.append(c)
        return pa.table(arrays, names=names) if names else pa.table({})

    def write(self) -> None:
        import pyarrow.parquet as pq

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{RESULTS}.{os.getpid()}.tmp"
        pq.write_table(self.table(), tmp)
        _fsync_replace(tmp, self.path)

    def export_csv(self) -> Path:
        import pyarrow.csv as pcsv

        out = self.folder / CSV
        tmp = self.folder / f".{CSV}.{os.getpid()}.tmp"
        pcsv.write_csv(self.table(), tmp)
        _fsync_replace(tmp, out)
        return out


def _fsync_replace(tmp: Path, dest: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    dfd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
