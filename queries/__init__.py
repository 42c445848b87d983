"""arl forensics: the ledger in DuckDB, named queries, reports, export and import.

    from arl.ledger import Ledger
    from arl.queries import connect, run_named, run_sql

    with Ledger.open("sqlite:///runs/ledger.db", create=False) as ledger:
        con = connect(ledger)               # or connect(ledger, "cache.duckdb")
    print(run_named(con, "leaderboard").records())
"""

from arl.queries.errors import QueryError
from arl.queries.export import export
from arl.queries.importers import ImportResult, SourceError, import_autoresearch, import_recipes
from arl.queries.load import LoadStats, connect, connect_with_stats, refresh
from arl.queries.named import NAMED, resolve_search, run_named
from arl.queries.report import write_report
from arl.queries.table import Table, render, run_sql
from arl.queries.views import VIEWS

__all__ = [
    "NAMED",
    "VIEWS",
    "ImportResult",
    "LoadStats",
    "QueryError",
    "SourceError",
    "Table",
    "connect",
    "connect_with_stats",
    "export",
    "import_autoresearch",
    "import_recipes",
    "refresh",
    "render",
    "resolve_search",
    "run_named",
    "run_sql",
    "write_report",
]
