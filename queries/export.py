"""Export: every view as Parquet, or every event as NDJSON, written by DuckDB itself."""

from __future__ import annotations

from pathlib import Path

import duckdb

from arl.queries.errors import QueryError
from arl.queries.views import VIEWS

FORMATS = ("parquet", "ndjson")


def export(con: duckdb.DuckDBPyConnection, fmt: str, folder: str | Path) -> list[tuple[Path, int]]:
    """Write ``<view>.parquet`` for every view, or ``events.ndjson`` (one event a line, in log order).

    NDJSON lines are ``{"id", "stream", "version", "type", "at", "search_id",
    "payload"}`` with the payload exactly as stored. Returns (file, rows) pairs.
    """
    if fmt not in FORMATS:
        raise QueryError(f"unknown export format {fmt!r}; use parquet or ndjson")
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


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(con.execute(sql).fetchall()[0][0])
