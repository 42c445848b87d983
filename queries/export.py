"""Export: every view as Parquet or CSV, or every event as NDJSON.

Parquet and NDJSON are written by DuckDB itself; CSV row by row, so that no
text cell reaches a spreadsheet as a formula (``=…``, ``+…``, ``-…``, ``@…``
get a leading quote).
"""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb

from arl.queries.errors import QueryError
from arl.queries.table import csv_cell, spreadsheet_safe
from arl.queries.views import VIEWS

FORMATS = ("parquet", "ndjson", "csv")
#: Rows fetched from DuckDB at a time while writing CSV.
CSV_BATCH = 10_000


def export(con: duckdb.DuckDBPyConnection, fmt: str, folder: str | Path) -> list[tuple[Path, int]]:
    """Write ``<view>.parquet`` or ``<view>.csv`` for every view, or ``events.ndjson`` (one event a line, in log order).

    NDJSON lines are ``{"id", "stream", "version", "type", "at", "search_id",
    "payload"}`` with the payload exactly as stored. Returns (file, rows) pairs.
    """
    if fmt not in FORMATS:
        raise QueryError(f"unknown export format {fmt!r}; use parquet, csv or ndjson")
    out = Path(folder).expanduser()
    if out.exists() and not out.is_dir():
        raise QueryError(f"{out} is a file; give a folder to export into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QueryError(f"cannot create {out}: {e.strerror}; choose a writable folder") from e
    written = []
    if fmt == "parquet":
        for name in VIEWS:
            path = out / f"{name}.parquet"
            _copy(con, f'SELECT * FROM "{name}"', path, "(FORMAT parquet, COMPRESSION zstd)")
            written.append((path, _count(con, f'SELECT count(*) FROM "{name}"')))
    elif fmt == "csv":
        for name in VIEWS:
            path = out / f"{name}.csv"
            written.append((path, _write_csv(con, f'SELECT * FROM "{name}"', path)))
    else:
        path = out / "events.ndjson"
        _copy(
            con,
            'SELECT id, stream, version, type, "at", search_id, payload::JSON AS payload '
            "FROM events ORDER BY id",
            path,
            "(FORMAT json)",
        )
        written.append((path, _count(con, "SELECT count(*) FROM events")))
    return written


def _copy(con: duckdb.DuckDBPyConnection, select: str, path: Path, options: str) -> None:
    target = str(path).replace("'", "''")
    try:
        con.execute(f"COPY ({select}) TO '{target}' {options}")
    except duckdb.Error as e:
        raise QueryError(f"cannot write {path}: {' '.join(str(e).split())[:200]}") from e


def _write_csv(con: duckdb.DuckDBPyConnection, select: str, path: Path) -> int:
    rows = 0
    try:
        result = con.execute(select)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow([spreadsheet_safe(d[0]) for d in result.description or []])
            while batch := result.fetchmany(CSV_BATCH):
                writer.writerows([csv_cell(v) for v in row] for row in batch)
                rows += len(batch)
    except duckdb.Error as e:
        raise QueryError(f"cannot export {path.stem}: {' '.join(str(e).split())[:200]}") from e
    except OSError as e:
        raise QueryError(f"cannot write {path}: {e.strerror}; choose a writable folder") from e
    return rows


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(con.execute(sql).fetchall()[0][0])
