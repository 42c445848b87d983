"""Load the ledger into DuckDB: column by column through Arrow, never row by row.

Each event type gets a table in the ``log`` schema whose columns are derived
from its msgspec struct (``ledger.events``), so the writer, the reader and the
SQL views share one schema. ``log.events`` holds every event with its payload
as stored (JSON). The views over these tables live in :mod:`queries.views`.

In memory, or in a cache file that is brought up to date from the log
incrementally: the file remembers the store, the position it has read up to
and the hash-chain link at that position, so a cache of another ledger, or of
a log that changed underneath it, is rebuilt instead of trusted.
"""

from __future__ import annotations

import enum
import hashlib
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from ledger import ArlError, Ledger
from ledger import events as ev
from ledger.store import decode_states

#: Bump when the layout of the ``log`` tables changes in a way fields do not show.
LOAD_VERSION = 1
PAGE = 50_000

_json = msgspec.json.Encoder()


class QueryError(ArlError):
    """A query cannot run: bad SQL, unknown query or search, unusable cache."""


@dataclass(frozen=True)
class LoadStats:
    """What one load did: events read now, the log position reached, seconds taken."""

    events: int
    position: int
    seconds: float
    rebuilt: bool


# --- columns derived from the event structs -------------------------------------


def _arrow_type(hint: Any) -> tuple[pa.DataType, str]:
    """Arrow type and the DuckDB type of a struct field; nested values become JSON text."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _arrow_type(args[0])
    if hint is str:
        return pa.string(), "VARCHAR"
    if origin is typing.Literal:
        return pa.string(), "VARCHAR"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return pa.string(), "VARCHAR"
    if hint is bool:
        return pa.bool_(), "BOOLEAN"
    if hint is int:
        return pa.int64(), "BIGINT"
    if hint is float:
        return pa.float64(), "DOUBLE"
    if hint is datetime:
        return pa.timestamp("us", tz="UTC"), "TIMESTAMPTZ"
    if origin is tuple and args and args[0] is str:
        return pa.list_(pa.string()), "VARCHAR[]"
    return pa.string(), "JSON"


class _Column:
    __slots__ = ("name", "field", "arrow", "sql", "nested")

    def __init__(self, name: str, field: str, hint: Any) -> None:
        self.name = name
        self.field = field
        self.arrow, self.sql = _arrow_type(hint)
        self.nested = self.sql == "JSON"


class _Table:
    """One event type's table: a column per struct field, plus where it sits in the log."""

    def __init__(self, cls: type[ev.Event]) -> None:
        self.cls = cls
        self.name = _snake(cls.__name__)
        hints = typing.get_type_hints(cls)
        self.columns = [_Column("stream", "originator_id", str)]
        for f in msgspec.structs.fields(cls):
            if f.name in ("originator_id",):
                continue
            name = "version" if f.name == "originator_version" else f.name
            self.columns.append(_Column(name, f.name, hints[f.name]))

    def ddl(self) -> str:
        cols = ", ".join(f'"{c.name}" {c.sql}' for c in self.columns)
        return f'CREATE TABLE log."{self.name}" (id BIGINT, {cols})'

    def arrow(self, ids: list[int], events: list[Any]) -> pa.Table:
        arrays = [pa.array(ids, pa.int64())]
        names = ["id"]
        for c in self.columns:
            values = [getattr(e, c.field) for e in events]
            if c.nested:
                values = [None if v is None else _json.encode(v).decode() for v in values]
            elif c.arrow == pa.string():
                values = [None if v is None else str(v) for v in values]
            arrays.append(pa.array(values, c.arrow))
            names.append(c.name)
        return pa.Table.from_arrays(arrays, names=names)


def _snake(name: str) -> str:
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in name).lstrip("_")


_TABLES = {cls: _Table(cls) for cls in ev.EVENT_TYPES}
_CHECK_FIELDS = [f.name for f in msgspec.structs.fields(ev.Check)]
_CHECK_HINTS = typing.get_type_hints(ev.Check)

_EVENTS_DDL = (
    "CREATE TABLE log.events (id BIGINT, stream VARCHAR, version BIGINT, type VARCHAR, "
    '"at" TIMESTAMPTZ, search_id VARCHAR, payload VARCHAR)'
)
_CHECKS_COLUMNS = [
    ("id", pa.int64(), "BIGINT"),
    ("stream", pa.string(), "VARCHAR"),
    ("search_id", pa.string(), "VARCHAR"),
    ("position", pa.int64(), "BIGINT"),
    *((n, *_arrow_type(_CHECK_HINTS[n])) for n in _CHECK_FIELDS),
]
_CHECKS_DDL = "CREATE TABLE log.checks (" + ", ".join(
    f'"{n}" {sql}' for n, _, sql in _CHECKS_COLUMNS
) + ")"
_AGENT_CALLS_DDL = (
    "CREATE TABLE log.agent_calls (digest VARCHAR PRIMARY KEY, bytes BIGINT, "
    "prompt_tokens BIGINT, completion_tokens BIGINT, total_tokens BIGINT, model VARCHAR)"
)


def schema_fingerprint() -> str:
    """Changes whenever an event struct gains a field: a cache built before is rebuilt."""
    parts = [str(LOAD_VERSION), _EVENTS_DDL, _CHECKS_DDL, _AGENT_CALLS_DDL]
    parts += [t.ddl() for t in _TABLES.values()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# --- connecting -----------------------------------------------------------------------


def connect(
    ledger: Ledger,
    cache: str | Path | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection holding the ledger and its views, up to the log's head.

    ``cache``: a DuckDB file kept between calls and refreshed incrementally;
    ``None`` loads into memory.
    """
    con, _ = connect_with_stats(ledger, cache, progress=progress)
    return con


def connect_with_stats(
    ledger: Ledger,
    cache: str | Path | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[duckdb.DuckDBPyConnection, LoadStats]:
    from queries.views import create_views

    con = _open_duckdb(cache)
    try:
        stats = refresh(con, ledger, progress=progress)
        create_views(con)
    except BaseException:
        con.close()
        raise
    return con, stats


def _open_duckdb(cache: str | Path | None) -> duckdb.DuckDBPyConnection:
    # No extension downloads, ever: a query that needs one fails at once.
    config = {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}
    if cache is None:
        return duckdb.connect(":memory:", config=config)
    path = Path(cache).expanduser()
    if path.is_dir():
        raise QueryError(f"cache {path} is a folder; give a file, e.g. {path / 'ledger.duckdb'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(path), config=config)
    except (duckdb.Error, OSError) as e:
        raise QueryError(
            f"cannot open the query cache {path}: {str(e).splitlines()[0]}; "
            "delete it or choose another --cache file (one writer at a time)"
        ) from e


def _meta(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'log' "
        "AND table_name = 'meta'"
    ).fetchall()[0][0]
    if not exists:
        return {}
    return dict(con.execute("SELECT key, value FROM log.meta").fetchall())


def _link_at(ledger: Ledger, position: int) -> str:
    if position <= 0:
        return ""
    rows = ledger.read_chain(after=position - 1, limit=1)
    return rows[0][1].hex() if rows and rows[0][0] == position else ""


def _create_log_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("DROP SCHEMA IF EXISTS log CASCADE")
    con.execute("CREATE SCHEMA log")
    con.execute("CREATE TABLE log.meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute(_EVENTS_DDL)
    con.execute(_CHECKS_DDL)
    con.execute(_AGENT_CALLS_DDL)
    for table in _TABLES.values():
        con.execute(table.ddl())


def refresh(
    con: duckdb.DuckDBPyConnection,
    ledger: Ledger,
    *,
    progress: Callable[[int], None] | None = None,
) -> LoadStats:
    """Bring the ``log`` tables in ``con`` up to the ledger's head; rebuild if they are not its prefix."""
    t0 = time.perf_counter()
    meta = _meta(con)
    position = int(meta.get("position", 0))
    store = ledger.url.display()
    valid = (
        meta.get("store") == store
        and meta.get("schema") == schema_fingerprint()
        and position <= ledger.head()
        and meta.get("link", "") == _link_at(ledger, position)
    )
    rebuilt = not valid
    if rebuilt:
        _create_log_schema(con)
        position = 0
    loaded = 0
    con.execute("BEGIN")
    try:
        while rows := ledger.read_raw(position, PAGE):
            _load_page(con, ledger, rows)
            position = rows[-1][0]
            loaded += len(rows)
            if progress:
                progress(loaded)
        con.executemany(
            "INSERT OR REPLACE INTO log.meta VALUES (?, ?)",
            [
                ("store", store),
                ("schema", schema_fingerprint()),
                ("position", str(position)),
                ("link", _link_at(ledger, position)),
            ],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return LoadStats(loaded, position, time.perf_counter() - t0, rebuilt)


def _load_page(con: duckdb.DuckDBPyConnection, ledger: Ledger, rows: Sequence[tuple]) -> None:
    states = [r[4] for r in rows]
    try:
        events = decode_states(states)
    except msgspec.DecodeError as e:
        raise QueryError(
            f"an event between notification ids {rows[0][0]} and {rows[-1][0]} cannot be decoded "
            f"({e}); run `arl verify`, or upgrade arl if the ledger is newer"
        ) from e
    ids = [r[0] for r in rows]
    log_events = pa.Table.from_arrays(
        [
            pa.array(ids, pa.int64()),
            pa.array([str(r[1]) for r in rows], pa.string()),
            pa.array([r[2] for r in rows], pa.int64()),
            pa.array([type(e).__name__ for e in events], pa.string()),
            pa.array([e.at for e in events], pa.timestamp("us", tz="UTC")),
            pa.array([getattr(e, "search_id", e.originator_id) for e in events], pa.string()),
            pa.array([s.decode() for s in states], pa.string()),
        ],
        names=["id", "stream", "version", "type", "at", "search_id", "payload"],
    )
    con.register("page_events", log_events)
    con.execute("INSERT INTO log.events SELECT * FROM page_events")
    con.unregister("page_events")

    by_type: dict[type, tuple[list[int], list[Any]]] = {}
    for nid, e in zip(ids, events, strict=True):
        slot = by_type.get(type(e))
        if slot is None:
            slot = by_type[type(e)] = ([], [])
        slot[0].append(nid)
        slot[1].append(e)
    for cls, (type_ids, type_events) in by_type.items():
        table = _TABLES[cls]
        con.register("page_type", table.arrow(type_ids, type_events))
        con.execute(f'INSERT INTO log."{table.name}" SELECT * FROM page_type')
        con.unregister("page_type")

    evaluated = by_type.get(ev.TrialEvaluated)
    if evaluated:
        _load_checks(con, *evaluated)
    proposed = by_type.get(ev.TrialProposed)
    if proposed:
        _load_agent_calls(con, ledger, [e.agent_call_digest for e in proposed[1] if e.agent_call_digest])


def _load_checks(con: duckdb.DuckDBPyConnection, ids: list[int], events: list[Any]) -> None:
    cols: dict[str, list[Any]] = {name: [] for name, _, _ in _CHECKS_COLUMNS}
    for nid, e in zip(ids, events, strict=True):
        for i, check in enumerate(e.checks):
            cols["id"].append(nid)
            cols["stream"].append(e.originator_id)
            cols["search_id"].append(e.search_id)
            cols["position"].append(i)
            for name in _CHECK_FIELDS:
                v = getattr(check, name)
                cols[name].append(str(v) if isinstance(v, enum.Enum) else v)
    if not cols["id"]:
        return
    table = pa.Table.from_arrays(
        [pa.array(cols[n], t) for n, t, _ in _CHECKS_COLUMNS], names=[n for n, _, _ in _CHECKS_COLUMNS]
    )
    con.register("page_checks", table)
    con.execute("INSERT INTO log.checks SELECT * FROM page_checks")
    con.unregister("page_checks")


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class _Response(msgspec.Struct):
    usage: _Usage | None = None
    model: str | None = None


class _AgentCall(msgspec.Struct):
    """The parts of a stored agent call the view shows: ``usage`` at the top or in ``response``."""

    usage: _Usage | None = None
    model: str | None = None
    response: _Response | None = None


_agent_call_decoder = msgspec.json.Decoder(_AgentCall)


def _load_agent_calls(con: duckdb.DuckDBPyConnection, ledger: Ledger, digests: list[str]) -> None:
    if not digests:
        return
    known = {
        r[0]
        for r in con.execute(
            "SELECT digest FROM log.agent_calls WHERE digest IN (SELECT unnest($d))", {"d": digests}
        ).fetchall()
    }
    rows = []
    for digest in dict.fromkeys(digests):
        if digest in known:
            continue
        try:
            data = ledger.get_blob(digest)
        except ArlError:
            rows.append((digest, None, None, None, None, None))  # verify reports it
            continue
        try:
            call = _agent_call_decoder.decode(data)
        except msgspec.DecodeError:
            call = _AgentCall()  # not JSON, or another shape: show size only
        response = call.response or _Response()
        u = call.usage or response.usage or _Usage()
        model = call.model or response.model
        rows.append((digest, len(data), u.prompt_tokens, u.completion_tokens, u.total_tokens, model))
    if rows:
        con.executemany("INSERT INTO log.agent_calls VALUES (?, ?, ?, ?, ?, ?)", rows)
