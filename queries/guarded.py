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
        db.load(rows_of(con, {"trials": ("search = $s", {"s": sid})}))   # later: fresher rows

``arl mcp``'s ``sql`` tool and ``arl serve``'s SQL console use this one class.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
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
    """An in-memory DuckDB of copied tables that runs guarded SELECTs, several at once.

    Keep one and :meth:`load` fresh rows into it as the source moves: opening a
    DuckDB costs far more than a query. Each :meth:`page` runs on a cursor of its
    own, so one query's timeout interrupts only that query.
    """

    def __init__(self, tables: Mapping[str, Any] | None = None, limits: SqlLimits | None = None) -> None:
        """``tables``: name → Arrow table (or anything DuckDB can scan) to copy in."""
        self.limits = limits or SqlLimits()
        #: Where a query may spill (at most ``limits.temp_space``); removed on close.
        self.temp_folder = tempfile.mkdtemp(prefix="arl-sql-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.temp_folder, True)
        self._lock = threading.Lock()
        self.con: duckdb.DuckDBPyConnection | None = None
        try:
            self.con = duckdb.connect(":memory:", config={
                "autoinstall_known_extensions": "false", "autoload_known_extensions": "false",
                "memory_limit": self.limits.memory, "threads": str(self.limits.threads),
                "temp_directory": self.temp_folder, "max_temp_directory_size": self.limits.temp_space,
            })
            self.con.execute("SET TimeZone = 'UTC'")
            self.con.execute("SET enable_progress_bar = false")
            self.con.execute("SET enable_external_access = false")
            self.con.execute("SET lock_configuration = true")
            self.load(tables or {})
        except BaseException:
            self.close()
            raise

    @classmethod
    def copy_of(cls, source: duckdb.DuckDBPyConnection, views: Mapping[str, tuple[str, Mapping[str, Any]]],
                limits: SqlLimits | None = None) -> GuardedDuckDB:
        """A new one holding the rows of ``source``'s views that match each one's ``(where, params)``."""
        return cls(rows_of(source, views), limits)

    def load(self, tables: Mapping[str, Any]) -> None:
        """Replace (or add) tables with fresh rows; queries running meanwhile see the old ones."""
        assert self.con is not None
        with self._lock:
            for name, table in tables.items():
                # An explicit registration is not file access: allowed with external access off.
                self.con.register("_rows", table)
                try:
                    self.con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM _rows')
                finally:
                    self.con.unregister("_rows")

    def page(self, query: str, offset: int = 0, limit: int = 50) -> SqlPage:
        """One page of rows of one SELECT; anything else, or a limit reached, is a :class:`QueryError`."""
        statement = one_select(query)
        limits = self.limits
        if offset < 0 or offset > limits.max_offset:
            raise QueryError(f"offset {offset} is past the furthest a page may start ({limits.max_offset}); "
                             "narrow the query with WHERE or ORDER BY … LIMIT instead")
        limit = max(1, min(limit, limits.max_rows))
        assert self.con is not None
        with self._lock:
            cursor = self.con.cursor()
        timer = threading.Timer(limits.timeout_s, cursor.interrupt)
        timer.start()
        try:
            result = cursor.execute(statement)
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
            cursor.close()
        more = len(rows) > limit
        return SqlPage(columns=columns, rows=rows[:limit], offset=offset,
                       next_offset=offset + limit if more else None)

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None
        self._cleanup()

    def __enter__(self) -> GuardedDuckDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rows_of(source: duckdb.DuckDBPyConnection,
            views: Mapping[str, tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The rows of ``source``'s views that match each one's ``(where, params)``, as Arrow tables."""
    return {view: source.sql(f'SELECT * FROM "{view}" WHERE {where}', params=dict(params)).to_arrow_table()
            for view, (where, params) in views.items()}


_parser = duckdb.connect(":memory:")
_parser_lock = threading.Lock()


def one_select(query: str) -> str:
    """The query, if it is exactly one read-only SELECT; else a :class:`QueryError` saying so."""
    if not query or not query.strip():
        raise QueryError("give a query, e.g. SELECT seq, label, score FROM trials ORDER BY seq")
    try:
        with _parser_lock:  # one connection only parses: opening one per query costs ~50 ms
            statements = _parser.extract_statements(query)
    except duckdb.Error as e:
        raise QueryError(f"SQL does not parse: {' '.join(str(e).split())[:300]}") from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one statement ({len(statements)} given)")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT (or WITH … SELECT) is allowed, not {statements[0].type.name}")
    return statements[0].query.strip().rstrip(";")
