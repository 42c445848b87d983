"""Query results and how they are printed: an aligned table, CSV, or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import duckdb

from arl.queries.errors import QueryError
from arl.queries.views import VIEWS

FORMATS = ("table", "csv", "json")
_CELL = 60  # table cells are cut to this width; csv and json are never cut


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]


def run_sql(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None
) -> Table:
    """Run one statement and fetch all of its rows; a bad statement is a :class:`QueryError`."""
    try:
        result = con.execute(sql, params) if params else con.execute(sql)
        columns = [d[0] for d in result.description] if result.description else []
        rows = result.fetchall() if columns else []
    except duckdb.Error as e:
        message = " ".join(str(e).split())
        raise QueryError(
            f"SQL failed: {message[:300]}; fix the statement "
            f"(views: {', '.join(VIEWS)})"
        ) from None
    return Table(columns, rows)


def render(table: Table, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(table.records(), default=_jsonable, ensure_ascii=False, indent=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([spreadsheet_safe(c) for c in table.columns])
        writer.writerows([csv_cell(v) for v in row] for row in table.rows)
        return out.getvalue().rstrip("\n")
    if fmt == "table":
        return _aligned(table)
    raise QueryError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


#: A cell starting with one of these is a formula to a spreadsheet (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def spreadsheet_safe(text: str) -> str:
    """Text a spreadsheet shows as text: one that would start a formula gets a leading quote (OWASP)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_cell(value: Any) -> str:
    """A value as a CSV cell: numbers as they are, text made safe to open in a spreadsheet."""
    text = _text(value)
    return spreadsheet_safe(text) if isinstance(value, str) else text


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, default=_jsonable, ensure_ascii=False)
    return str(value)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = _text(value) if value is not None else "NULL"
    text = text.replace("\n", "⏎").replace("\t", " ")
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def _aligned(table: Table) -> str:
    cells = [[_cell(v) for v in row] for row in table.rows]
    widths = [len(c) for c in table.columns]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        all(isinstance(row[i], int | float | Decimal) or row[i] is None for row in table.rows)
        for i in range(len(table.columns))
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(table.columns), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    n = len(table.rows)
    out.append(f"({n} row{'s' if n != 1 else ''})")
    return "\n".join(out)
