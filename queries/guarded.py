"""Guarded SQL: someone else's query (an MCP client, a web console) over a throwaway DuckDB.

A :class:`GuardedDuckDB` holds copies of the rows the caller may see — never
the ledger, never a file — and runs one read-only ``SELECT`` at a time under
explicit limits (:class:`SqlLimits`): a statement timeout (DuckDB has none of
its own, so a timer interrupts the statement), a memory limit, a thread limit,
a cap on the temporary space a query may spill to (in a private folder,
removed on close), and caps on the page size and on how far a page may start.
File access, extension loading and every setting are locked before the
caller's SQL runs, so a query can change none of them.

    with GuardedDuckDB.copy_of(con, {"trials": ("search = $s", {"s": sid})}) as db:
        page = db.page("SELECT seq, label FROM trials ORDER BY seq", offset=0, limit=50)

``arl mcp``'s ``sql`` tool and ``arl serve``'s SQL console use this one class.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Mapping
from typing import Any

import duckdb
import msgspec

from arl.queries.errors import QueryError


class SqlLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What one guarded query may use. Sizes are DuckDB size strings ("256MB")."""

    #: Longest a statement runs (execution and fetching its page), seconds.
    timeout_s: float = 5.0
    memory: str = "256MB"
    threads: int = 1
    #: Temporary space a query may spill to; "0B" forbids spilling.
    temp_space: str = "256MB"
    #: Largest page, and the furthest row a page may start at.
    max_rows: int = 200
    max_offset: int = 10_000


class SqlPage(msgspec.Struct, kw_only=True):
    columns: list[str]
    rows: list[tuple[Any, ...]]
    offset: int
    #: Where the next page starts, None when this one is the last.
    next_offset: int | None


class GuardedDuckDB:
    """An in-memory DuckDB of copied tables that runs one guarded SELECT at a time."""

    def __init__(self, tables: Mapping[str, Any], limits: SqlLimits | None = None) -> None:
        """``tables``: name → Arrow table (or anything DuckDB can scan) to copy in."""
        self.limits = limits or SqlLimits()
        self._temp = tempfile.mkdtemp(prefix="arl-sql-")
        self._lock = threading.Lock()
        try:
            self.con = duckdb.connect(":memory:", config={
                "autoinstall_known_extensions": "false", "autoload_known_extensions": "false",
                "memory_limit": self.limits.memory, "threads": str(self.limits.threads),
                "temp_directory": self._temp, "max_temp_directory_size": self.limits.temp_space,
            })
            self.con.execute("SET TimeZone = 'UTC'")
            self.con.execute("SET enable_progress_bar = false")
            for name, table in tables.items():
                self.con.register("_rows", table)
                self.con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _rows')
                self.con.unregister("_rows")
            self.con.execute("SET enable_external_access = false")
            self.con.execute("SET lock_configuration = true")
        except BaseException:
            self.close()
            raise

    @classmethod
    def copy_of(cls, source: duckdb.DuckDBPyConnection, views: Mapping[str, tuple[str, Mapping[str, Any]]],
                limits: SqlLimits | None = None) -> GuardedDuckDB:
        """The rows of ``source``'s views that match each one's ``(where, params)``, as tables."""
        tables = {view: source.sql(f'SELECT * FROM "{view}" WHERE {where}', params=dict(params)).to_arrow_table()
                  for view, (where, params) in views.items()}
        return cls(tables, limits)

    def page(self, query: str, offset: int = 0, limit: int = 50) -> SqlPage:
        """One page of rows of one SELECT; anything else, or a limit reached, is a :class:`QueryError`."""
        statement = one_select(query)
        limits = self.limits
        if offset < 0 or offset > limits.max_offset:
            raise QueryError(f"offset {offset} is past the furthest a page may start ({limits.max_offset}); "
                             "narrow the query with WHERE or ORDER BY … LIMIT instead")
        limit = max(1, min(limit, limits.max_rows))
        with self._lock:
            timer = threading.Timer(limits.timeout_s, self.con.interrupt)
            timer.start()
            try:
                result = self.con.execute(statement)
                columns = [d[0] for d in result.description or []]
                if offset:
                    result.fetchmany(offset)
                rows = result.fetchmany(limit + 1)
            except duckdb.InterruptException:
                raise QueryError(f"SQL stopped at the statement timeout ({limits.timeout_s:g} s); "
                                 "narrow the query (WHERE, LIMIT, fewer joins)") from None
            except duckdb.OutOfMemoryException as e:
                why = "temporary space" if "temp" in str(e) else "memory"
                raise QueryError(f"SQL stopped at its {why} limit ({limits.memory} memory, "
                                 f"{limits.temp_space} temporary space); narrow the query") from None
            except duckdb.Error as e:
                raise QueryError(f"SQL failed: {' '.join(str(e).split())[:300]}") from None
            finally:
                timer.cancel()
        more = len(rows) > limit
        return SqlPage(columns=columns, rows=rows[:limit], offset=offset,
                       next_offset=offset + limit if more else None)

    def close(self) -> None:
        con = getattr(self, "con", None)
        if con is not None:
            con.close()
        shutil.rmtree(self._temp, ignore_errors=True)

    def __enter__(self) -> GuardedDuckDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def one_select(query: str) -> str:
    """The query, if it is exactly one read-only SELECT; else a :class:`QueryError` saying so."""
    if not query or not query.strip():
        raise QueryError("give a query, e.g. SELECT seq, label, score FROM trials ORDER BY seq")
    parser = duckdb.connect(":memory:")
    try:
        statements = parser.extract_statements(query)
    except duckdb.Error as e:
        raise QueryError(f"SQL does not parse: {' '.join(str(e).split())[:300]}") from None
    finally:
        parser.close()
    if len(statements) != 1:
        raise QueryError(f"give exactly one statement ({len(statements)} given)")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT (or WITH … SELECT) is allowed, not {statements[0].type.name}")
    return statements[0].query.strip().rstrip(";")
