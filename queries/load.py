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
import json
import queue
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import numpy as np
import pyarrow as pa

from arl.ledger import ArlError, Ledger
from arl.ledger import events as ev
from arl.queries.errors import QueryError
from arl.queries.views import create_views, refresh_trials, table_name, trial_rows_sql

#: Bump when the layout of the ``log`` tables changes in a way fields do not show.
LOAD_VERSION = 1
PAGE = 100_000

@dataclass(frozen=True)
class LoadStats:
    """What one load did: events read now, the log position reached, seconds taken."""

    events: int
    position: int
    seconds: float
    rebuilt: bool


# --- columns derived from the event structs -------------------------------------
#
# DuckDB parses the stored JSON itself (``from_json`` with a structure derived
# from each struct): far faster than decoding a million events in Python, and
# an event type this arl does not know still lands in ``log.events``.


def _duck_type(hint: Any) -> str:
    """The DuckDB type of a struct field; nested values stay JSON."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _duck_type(args[0])
    if hint is str or origin is typing.Literal:
        return "VARCHAR"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "VARCHAR"
    if hint is bool:
        return "BOOLEAN"
    if hint is int:
        return "BIGINT"
    if hint is float:
        return "DOUBLE"
    if hint is datetime:
        return "TIMESTAMPTZ"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in (str, int, float):
        return _duck_type(args[0]) + "[]"
    return "JSON"


def _structure(cls: type, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, _duck_type(hints[f.name])) for f in msgspec.structs.fields(cls) if f.name not in skip]


def _json_structure(columns: list[tuple[str, str]]) -> str:
    def one(t: str) -> Any:
        return [t[:-2]] if t.endswith("[]") else t

    return json.dumps({name: one(t) for name, t in columns})


class _Table:
    """One event type's table: a column per struct field, plus where it sits in the log."""

    def __init__(self, cls: type[ev.Event]) -> None:
        self.type = cls.__name__
        self.name = table_name(cls)
        self.columns = _structure(cls, skip=("originator_id", "originator_version"))

    def ddl(self) -> str:
        cols = ", ".join(f'"{n}" {t}' for n, t in self.columns)
        return f'CREATE TABLE log."{self.name}" (id BIGINT, stream VARCHAR, version BIGINT, {cols})'

    def insert(self) -> str:
        return (
            f'INSERT INTO log."{self.name}" SELECT id, stream, version, '
            f"unnest(from_json(payload, '{_json_structure(self.columns)}')) "
            f"FROM log.events WHERE id > $after AND type = '{self.type}'"
        )


_TABLES = {cls: _Table(cls) for cls in ev.EVENT_TYPES}
_CHECK = _structure(ev.Check)

# Each payload is parsed once, into its type's table; the ``events`` view takes
# ``at`` and ``search_id`` from there instead of parsing every payload twice.
_EVENTS_DDL = (
    "CREATE TABLE log.events (id BIGINT, stream VARCHAR, version BIGINT, type VARCHAR, "
    "payload VARCHAR)"
)
_EVENTS_INSERT = (
    "INSERT INTO log.events SELECT id, stream, version, split_part(topic, ':', 2), payload FROM page"
)
_CHECKS_DDL = "CREATE TABLE log.checks (id BIGINT, stream VARCHAR, search_id VARCHAR, " + ", ".join(
    f'"{n}" {t}' for n, t in _CHECK
) + ")"
_CHECKS_INSERT = (
    "INSERT INTO log.checks SELECT id, stream, search_id, unnest(c, recursive := true) "
    f"FROM (SELECT id, stream, search_id, unnest(from_json(checks, '[{_json_structure(_CHECK)}]')) AS c "
    "FROM log.trial_evaluated WHERE id > $after)"
)
_AGENT_CALLS_DDL = (
    "CREATE TABLE log.agent_calls (digest VARCHAR PRIMARY KEY, bytes BIGINT, "
    "prompt_tokens BIGINT, completion_tokens BIGINT, total_tokens BIGINT, model VARCHAR)"
)


def schema_fingerprint() -> str:
    """Changes whenever an event struct gains a field: a cache built before is rebuilt."""
    parts = [str(LOAD_VERSION), _EVENTS_DDL, _CHECKS_DDL, _CHECKS_INSERT, _AGENT_CALLS_DDL]
    parts += [t.ddl() + t.insert() for t in _TABLES.values()]
    parts.append(trial_rows_sql())
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
        return _utc(duckdb.connect(":memory:", config=config))
    path = Path(cache).expanduser()
    if path.is_dir():
        raise QueryError(f"cache {path} is a folder; give a file, e.g. {path / 'ledger.duckdb'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _utc(duckdb.connect(str(path), config=config))
    except (duckdb.Error, OSError) as e:
        raise QueryError(
            f"cannot open the query cache {path}: {str(e).splitlines()[0]}; "
            "delete it or choose another --cache file (one writer at a time)"
        ) from e


def _utc(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    # Times in UTC whatever the machine's zone: the same output and exports everywhere.
    con.execute("SET TimeZone = 'UTC'")
    return con


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
    start, loaded = position, 0
    con.execute("BEGIN")
    try:
        for rows in _pages(ledger, position, PAGE):
            _load_page(con, ledger, rows)
            position = rows[-1][0]
            loaded += len(rows)
            if progress:
                progress(loaded)
        if loaded or rebuilt:
            refresh_trials(con, start)
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


def _pages(ledger: Ledger, after: int, size: int) -> Iterator[list[tuple]]:
    """Pages of raw log rows; the next page is read from the store while DuckDB parses this one."""
    ready: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def read() -> None:
        position = after
        try:
            while not stop.is_set() and (rows := ledger.read_raw(position, size)):
                ready.put(rows)
                position = rows[-1][0]
            ready.put(None)
        except BaseException as e:  # handed to the loading thread, which raises it
            ready.put(e)

    reader = threading.Thread(target=read, name="arl-query-load", daemon=True)
    reader.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting to hand over a page
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass
        reader.join()


def _load_page(con: duckdb.DuckDBPyConnection, ledger: Ledger, rows: Sequence[tuple]) -> None:
    after = rows[0][0] - 1
    ids, streams, versions, topics, states = zip(*rows, strict=True)
    con.register("page", _page_table(ids, streams, versions, topics, states))
    try:
        con.execute(_EVENTS_INSERT)
        con.unregister("page")
        for table in _TABLES.values():
            con.execute(table.insert(), {"after": after})
    except duckdb.Error as e:
        raise QueryError(
            f"events between notification ids {rows[0][0]} and {rows[-1][0]} cannot be read "
            f"({' '.join(str(e).split())[:200]}); run `arl verify`"
        ) from e
    con.execute(_CHECKS_INSERT, {"after": after})
    digests = con.execute(
        "SELECT DISTINCT agent_call_digest FROM log.trial_proposed "
        "WHERE id > $after AND agent_call_digest IS NOT NULL",
        {"after": after},
    ).fetchall()
    _load_agent_calls(con, ledger, [d[0] for d in digests])


def _page_table(
    ids: Sequence[int],
    streams: Sequence[Any],
    versions: Sequence[int],
    topics: Sequence[str],
    states: Sequence[bytes],
) -> pa.Table:
    """The raw rows as Arrow columns; the payloads go in as one buffer, not a million strings."""
    n = len(ids)
    lengths = np.fromiter(map(len, states), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    payload = pa.Array.from_buffers(
        pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(states))]
    )
    return pa.Table.from_arrays(
        [
            pa.array(np.fromiter(ids, dtype=np.int64, count=n)),
            _strings(streams),
            pa.array(np.fromiter(versions, dtype=np.int64, count=n)),
            pa.array(topics, pa.string()),
            payload,
        ],
        names=["id", "stream", "version", "topic", "payload"],
    )


def _strings(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # stream ids stored as UUID objects
        return pa.array([str(v) for v in values], pa.string())


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
