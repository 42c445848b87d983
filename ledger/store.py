"""The ledger store: events and blobs in one SQLite file or one PostgreSQL database.

Built on the ``eventsourcing`` library's datastores and recorders. Two things
are added, both inside the same transactions the library already uses:

* every inserted event also gets a row in ``arl_chain`` holding a running
  sha256 over the log in notification order (see ``ledger.verify``);
* a content-addressed blob table with its own running chain.

Events, blobs, chain and meta rows are append-only: triggers refuse UPDATE,
DELETE (and TRUNCATE on PostgreSQL). Projection checkpoints and lease
heartbeats and claim hints are the only mutable rows; they are derived or operational state.

On PostgreSQL the store can be split between two roles: the owner of the
tables, who creates and migrates them (:func:`migrate`), and a writer for
workers and drivers that may only insert and read the record
(:func:`grant_writer`); the writer cannot lift the triggers, since only a
table's owner may. Read commands open a ledger read-only (``read_only=True``):
nothing is written, and a ledger on a read-only file or filesystem opens.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import re
import os
import socket
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import msgspec
from eventsourcing.persistence import (
    EventStore,
    InfrastructureFactory,
    IntegrityError,
    JSONTranscoder,
    Mapper,
    PersistenceError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import Environment, resolve_topic

from arl.ledger import events as ev
from arl.ledger.errors import BlobError, ConflictError, StoreError

DEFAULT_PATH = Path(".arl") / "ledger.db"
_SQLITE_MAGIC = b"SQLite format 3\x00"
GENESIS = b"\x00" * 32
_SCHEMA_LOCK_KEY = 0x61726C  # "arl"
#: Bump when the DDL below changes. The owner records ``ddl/<N>`` in arl_meta when it
#: applies it, so a writer role (which may not run DDL) knows the tables are current.
DDL_VERSION = 3  # 2: append locks through owner-defined functions (two-role PostgreSQL); 3: claim hints
#: How long a command waits for another process's write lock on an SQLite ledger.
SQLITE_LOCK_WAIT_S = 30
#: How long opening waits for it: a command that cannot start says so within seconds.
SQLITE_OPEN_WAIT_S = 3


#: The help text of the one ``--store URL`` option every command takes.
STORE_HELP = (
    "ledger to use: sqlite:///path/ledger.db or postgresql://user@host:port/db "
    "(default: $ARL_STORE, else .arl/ledger.db in the working directory)"
)


def default_store_url() -> str:
    """``ARL_STORE`` if set, else the embedded SQLite file under the working directory."""
    return os.environ.get("ARL_STORE") or f"sqlite:///{(Path.cwd() / DEFAULT_PATH)}"


# --- hashing shared by writer and verifier ------------------------------------


def record_digest(
    prev: bytes, notification_id: int, originator_id: Any, version: int, topic: str, state: bytes
) -> bytes:
    """Next link of the event chain: sha256 over the previous link and one stored event."""
    # eventsourcing stores a UUID object's id as its hex text; hash what is stored.
    oid = originator_id.hex if isinstance(originator_id, uuid.UUID) else originator_id
    return _sha256(
        b"".join(
            (prev, _pack(notification_id, version), oid.encode(), b"\x00", topic.encode(), b"\x00", state)
        )
    ).digest()


_sha256 = hashlib.sha256
_pack = struct.Struct(">qq").pack


def blob_link(prev: bytes, digest: str) -> bytes:
    """Next link of the blob chain."""
    return hashlib.sha256(prev + bytes.fromhex(digest)).digest()


# --- the mapper: msgspec structs straight to bytes -----------------------------


class StructMapper(Mapper):
    """Stores msgspec event structs as their JSON encoding, and decodes by topic.

    eventsourcing's default mapper goes through ``vars(event)``, which msgspec
    structs do not have; this one encodes the struct itself, so nothing is lost.
    """

    def __init__(self) -> None:
        super().__init__(transcoder=JSONTranscoder())
        self._decoders: dict[str, msgspec.json.Decoder] = {}

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=ev.topic(type(domain_event)),
            state=ev.encode(domain_event),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        decoder = self._decoders.get(stored_event.topic)
        if decoder is None:
            try:
                cls = resolve_topic(stored_event.topic)
            except Exception as e:
                raise StoreError(
                    f"the ledger holds an event of unknown type {stored_event.topic!r}; "
                    "it was written by a newer arl: upgrade arl to read it"
                ) from e
            decoder = self._decoders[stored_event.topic] = msgspec.json.Decoder(cls)
        return decoder.decode(stored_event.state)


# --- recorders: eventsourcing's, plus the chain row in the same transaction -----


class ChainedSQLiteRecorder(SQLiteApplicationRecorder):
    """SQLite application recorder that extends the hash chain as it inserts."""

    def _insert_events(self, c: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        ids = super()._insert_events(c, stored_events, **kwargs)
        if ids:
            c.execute("SELECT digest FROM arl_chain ORDER BY notification_id DESC LIMIT 1")
            row = c.fetchone()
            prev = bytes(row[0]) if row else GENESIS
            links = []
            for nid, s in zip(ids, stored_events, strict=True):
                prev = record_digest(
                    prev, nid, s.originator_id, s.originator_version, s.topic, s.state
                )
                links.append((nid, prev))
            c.executemany("INSERT INTO arl_chain (notification_id, digest) VALUES (?, ?)", links)
        return ids


class ChainedPostgresRecorder(PostgresApplicationRecorder):
    """PostgreSQL application recorder that extends the hash chain as it inserts.

    The library holds an EXCLUSIVE lock on the events table while inserting, so
    reading the last link and writing the next ones cannot interleave. The lock
    is taken through ``arl_lock_events()``, a function of the tables' owner:
    PostgreSQL lets only a role with UPDATE, DELETE or TRUNCATE rights lock a
    table that way, and the writer role has none of them.
    """

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        from psycopg.sql import SQL, Identifier

        self.lock_table_statements = [
            statement for statement in self.lock_table_statements
            if not statement.as_string().startswith("LOCK TABLE")
        ] + [SQL("SELECT {0}.arl_lock_events()").format(Identifier(datastore.schema))]

    def _fetch_ids_after_insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Any:
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        if ids:
            curs.execute("SELECT digest FROM arl_chain ORDER BY notification_id DESC LIMIT 1")
            row = curs.fetchone()
            prev = bytes(row["digest"]) if row else GENESIS
            links = []
            for nid, s in zip(ids, stored_events, strict=True):
                prev = record_digest(
                    prev, nid, s.originator_id, s.originator_version, s.topic, s.state
                )
                links.append((nid, prev))
            curs.executemany(
                "INSERT INTO arl_chain (notification_id, digest) VALUES (%s, %s)", links
            )
        return ids


# --- schema ------------------------------------------------------------------------

_APPEND_ONLY = ("events", "arl_chain", "arl_blobs", "arl_meta")
#: The unique keys of each append-only SQLite table (rowid included: a REPLACE may name it).
_KEYS = {
    "events": (("rowid",), ("originator_id", "originator_version")),
    "arl_chain": (("notification_id",),),
    "arl_blobs": (("seq",), ("digest",)),
    "arl_meta": (("rowid",), ("key",)),
}

_SQLITE_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS arl_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS arl_chain "
    "(notification_id INTEGER PRIMARY KEY, digest BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS arl_blobs (seq INTEGER PRIMARY KEY, "
    "digest TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, data BLOB NOT NULL, "
    "chain BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS arl_projections (name TEXT PRIMARY KEY, "
    "position INTEGER NOT NULL, digest TEXT NOT NULL, state BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS arl_leases (trial TEXT PRIMARY KEY, runner TEXT NOT NULL, "
    "expires_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS arl_claim_hints (trial TEXT PRIMARY KEY, version INTEGER NOT NULL, "
    "runner TEXT NOT NULL, expires_at REAL NOT NULL)",
]

_PG_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS arl_meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS arl_chain "
    "(notification_id bigint PRIMARY KEY, digest bytea NOT NULL)",
    "CREATE TABLE IF NOT EXISTS arl_blobs (seq bigserial PRIMARY KEY, "
    "digest text NOT NULL UNIQUE, size bigint NOT NULL, data bytea NOT NULL, "
    "chain bytea NOT NULL)",
    "CREATE TABLE IF NOT EXISTS arl_projections (name text PRIMARY KEY, "
    "position bigint NOT NULL, digest text NOT NULL, state bytea NOT NULL)",
    "CREATE TABLE IF NOT EXISTS arl_leases (trial text PRIMARY KEY, runner text NOT NULL, "
    "expires_at double precision NOT NULL)",
    "CREATE TABLE IF NOT EXISTS arl_claim_hints (trial text PRIMARY KEY, version bigint NOT NULL, "
    "runner text NOT NULL, expires_at double precision NOT NULL)",
    "CREATE OR REPLACE FUNCTION arl_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'arl: % on % refused: the ledger is append-only', "
    "TG_OP, TG_TABLE_NAME; END $$",
]

#: Tables a writer role may read and insert into, and those it may also update
#: (derived checkpoints, lease heartbeats and claim hints), on PostgreSQL.
_WRITER_INSERTS = ("arl_events", "arl_chain", "arl_blobs")
_WRITER_UPDATES = ("arl_projections", "arl_leases", "arl_claim_hints")
_WRITER_READS = ("arl_meta",)
_LOCK_FUNCTIONS = {"arl_lock_events": "arl_events", "arl_lock_blobs": "arl_blobs"}


class _Backend:
    """What differs between SQLite and PostgreSQL, kept to SQL text and locking."""

    kind: str
    events_table: str

    def __init__(self, datastore: Any) -> None:
        self.datastore = datastore

    def sql(self, statement: str) -> str:
        return statement

    @contextmanager
    def write(self) -> Iterator[Any]:
        raise NotImplementedError

    @contextmanager
    def read(self) -> Iterator[Any]:
        with self.datastore.transaction(commit=False) as c:
            yield c

    @contextmanager
    def schema_lock(self) -> Iterator[None]:
        yield


class _SQLiteBackend(_Backend):
    kind = "sqlite"
    events_table = "stored_events"

    @contextmanager
    def write(self) -> Iterator[Any]:
        # BEGIN IMMEDIATE takes the write lock up front, so a read-then-write
        # transaction cannot fail half-way when another process commits first.
        with self.datastore.get_connection(commit=True) as conn:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def schema(self) -> list[str]:
        out = list(_SQLITE_SCHEMA)
        for table in _APPEND_ONLY:
            name = self.events_table if table == "events" else table
            for op in ("UPDATE", "DELETE"):
                out.append(
                    f"CREATE TRIGGER IF NOT EXISTS {name}_no_{op.lower()} BEFORE {op} ON {name} "
                    f"BEGIN SELECT RAISE(ABORT, 'arl: {op} on {name} refused: "
                    "the ledger is append-only'); END"
                )
            # INSERT OR REPLACE deletes the row it collides with without firing DELETE triggers
            # (unless the writer's own connection turns recursive triggers on): refuse any
            # insert that names a key already there, before SQLite resolves the conflict.
            keys = " OR ".join(f"({' AND '.join(f'{c} = NEW.{c}' for c in key)})" for key in _KEYS[table])
            out.append(
                f"CREATE TRIGGER IF NOT EXISTS {name}_no_replace BEFORE INSERT ON {name} "
                f"WHEN EXISTS (SELECT 1 FROM {name} WHERE {keys}) "
                f"BEGIN SELECT RAISE(ABORT, 'arl: INSERT over an existing row of {name} refused: "
                "the ledger is append-only'); END"
            )
        return out


class _PostgresBackend(_Backend):
    kind = "postgresql"
    events_table = "arl_events"

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    @contextmanager
    def write(self) -> Iterator[Any]:
        with self.datastore.transaction(commit=True) as c:
            yield c

    @contextmanager
    def schema_lock(self) -> Iterator[None]:
        # Concurrent CREATE OR REPLACE of one function fails ("tuple concurrently
        # updated"): processes opening the store at once take turns.
        with self.datastore.get_connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK_KEY,))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK_KEY,))

    def schema(self) -> list[str]:
        out = list(_PG_SCHEMA)
        schema = _quote_ident(self.datastore.schema)
        for function, table in _LOCK_FUNCTIONS.items():
            # SECURITY DEFINER: the lock is taken with the owner's rights, for the caller's transaction.
            out.append(
                f"CREATE OR REPLACE FUNCTION {schema}.{function}() RETURNS void LANGUAGE plpgsql "
                f"SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ "
                f"BEGIN LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; END $$"
            )
            out.append(f"REVOKE ALL ON FUNCTION {schema}.{function}() FROM PUBLIC")
        for table in _APPEND_ONLY:
            name = self.events_table if table == "events" else table
            out.append(
                f"CREATE OR REPLACE TRIGGER {name}_append_only BEFORE UPDATE OR DELETE "
                f"ON {name} FOR EACH ROW EXECUTE FUNCTION arl_refuse_change()"
            )
            out.append(
                f"CREATE OR REPLACE TRIGGER {name}_no_truncate BEFORE TRUNCATE "
                f"ON {name} FOR EACH STATEMENT EXECUTE FUNCTION arl_refuse_change()"
            )
        return out


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- URL handling ----------------------------------------------------------------------


class StoreURL(msgspec.Struct, frozen=True):
    kind: str  # "sqlite" | "postgresql"
    path: str = ""  # SQLite file
    host: str = ""
    port: int = 5432
    user: str = ""
    password: str = ""
    dbname: str = ""

    @classmethod
    def parse(cls, url: str) -> StoreURL:
        """``sqlite:///abs/path.db``, ``sqlite:rel/path.db``, a bare path, or ``postgresql://…``."""
        if "://" not in url and not url.startswith("sqlite:"):
            if ":" in url.split("/")[0] and not Path(url).exists():
                raise StoreError(
                    f"store URL {url!r} has an unknown scheme; "
                    "use sqlite:///path/to/ledger.db or postgresql://user@host:port/dbname"
                )
            return cls(kind="sqlite", path=str(Path(url).expanduser().resolve()))
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "sqlite":
            raw = unquote(url[len("sqlite:") :])
            if raw.startswith("//"):
                raw = raw[2:]
            if not raw:
                raise StoreError(
                    f"store URL {url!r} names no file; use sqlite:///path/to/ledger.db"
                )
            return cls(kind="sqlite", path=str(Path(raw).expanduser().resolve()))
        if scheme in ("postgresql", "postgres"):
            dbname = parts.path.lstrip("/")
            if not dbname:
                raise StoreError(
                    f"store URL {_redact(url)!r} names no database; "
                    "use postgresql://user@host:port/dbname"
                )
            try:
                port = parts.port or 5432
            except ValueError:
                raise StoreError(
                    f"store URL {_redact(url)!r} has a bad port; use a number, e.g. :5432"
                ) from None
            return cls(
                kind="postgresql",
                host=parts.hostname or "127.0.0.1",
                port=port,
                user=unquote(parts.username or "") or getpass.getuser(),
                password=unquote(parts.password or ""),
                dbname=unquote(dbname),
            )
        raise StoreError(
            f"store URL {_redact(url)!r} has an unknown scheme {scheme!r}; "
            "use sqlite:///path/to/ledger.db or postgresql://user@host:port/dbname"
        )

    def display(self) -> str:
        """The URL without its password, for messages and logs."""
        if self.kind == "sqlite":
            return f"sqlite://{self.path}"
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


# --- the ledger ----------------------------------------------------------------------


class Ledger:
    """The append-only record of every search: events, blobs and projection checkpoints.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    """

    def __init__(self, url: StoreURL, factory: InfrastructureFactory, backend: _Backend) -> None:
        self.url = url
        self._factory = factory
        self._backend = backend
        self.kind = backend.kind
        self.events_table = backend.events_table
        if backend.kind == "sqlite":
            self._recorder: Any = ChainedSQLiteRecorder(factory.datastore)
        else:
            self._recorder = ChainedPostgresRecorder(
                factory.datastore, events_table_name=backend.events_table
            )
        self._store = EventStore(mapper=StructMapper(), recorder=self._recorder)
        self._changed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._held = threading.local()  # the exclusive locks this thread holds (see exclusive)
        self._stop = threading.Event()
        #: Opened for reading only: every write is refused (and none is attempted).
        self.read_only = False

    @property
    def recorder(self) -> Any:
        """The eventsourcing application recorder underneath (for tools and tests)."""
        return self._recorder

    # -- opening ------------------------------------------------------------------

    @classmethod
    def open(cls, url: str | None = None, *, create: bool = True, read_only: bool = False) -> Ledger:
        """Open the ledger at ``url`` (default: ``ARL_STORE`` or ``.arl/ledger.db``).

        With ``create=False`` a missing ledger is an error instead of a new one.
        With ``read_only=True`` (implies ``create=False``) nothing is ever written,
        not even the schema of this arl version, so a ledger on a read-only file
        or filesystem opens. Nothing is written unless the store is, or can
        become, an arl ledger.
        """
        parsed = StoreURL.parse(url or default_store_url())
        create = create and not read_only
        if parsed.kind == "sqlite":
            factory, backend = _open_sqlite(parsed, create=create, read_only=read_only)
        else:
            factory, backend = _open_postgres(parsed)
        ledger = cls(parsed, factory, backend)
        ledger.read_only = read_only
        try:
            ledger._prepare(create=create)
        except BaseException:
            ledger.close()
            raise
        return ledger

    def _prepare(self, *, create: bool) -> None:
        if "arl_meta" not in self._table_names():
            # A process creating this ledger holds the schema lock until its arl_meta row is
            # in (PostgreSQL makes its tables in several transactions; SQLite makes them all
            # in one): look again under the lock, so a ledger being created this moment is
            # neither taken for a foreign store nor created twice.
            with self._backend.schema_lock():
                tables = self._table_names()
                if "arl_meta" not in tables:
                    self._refuse_foreign(tables, create=create)
                    self._create_schema_locked()
                    return
        version = int(self.meta("schema") or 0)
        if version > ev.SCHEMA_VERSION:
            raise StoreError(
                f"{self.url.display()} was written by a newer arl (ledger schema {version}, "
                f"this arl reads up to {ev.SCHEMA_VERSION}); upgrade arl to open it"
            )
        if self.read_only:
            return
        if self.kind == "postgresql" and not self._owns_tables():
            # A writer role: it may not run DDL, so the owner must have brought the tables in.
            if self.meta(f"ddl/{DDL_VERSION}") is None:
                raise StoreError(
                    f"the ledger at {self.url.display()} lacks the schema of this arl version, and "
                    f"{self.url.user} does not own its tables; run `arl store migrate --store "
                    "postgresql://OWNER@…` as the owner role, then retry"
                )
            return
        # Bring triggers and tables of this version in (idempotent).
        self._create_schema()

    def _refuse_foreign(self, tables: set[str], *, create: bool) -> None:
        """Refuse a store that is not an arl ledger, or a missing one where none may be made."""
        if self.events_table in tables:
            raise StoreError(
                f"{self.url.display()} holds an event store that is not an arl ledger "
                "(no arl_meta table); point --store at a new file or database"
            )
        if self.kind == "sqlite" and tables:
            raise StoreError(
                f"{self.url.path} is an SQLite database but not an arl ledger "
                f"(it has tables {', '.join(sorted(tables)[:5])}); "
                "point --store at a new file"
            )
        if not create:
            raise StoreError(
                f"no arl ledger at {self.url.display()}; "
                "check --store / ARL_STORE, or run a search to create one"
            )

    def meta(self, key: str) -> str | None:
        """A value of the ledger's arl_meta table (``schema``, ``created_at``, ``ledger_id``, …)."""
        with self._backend.read() as c:
            c.execute(self._backend.sql("SELECT value FROM arl_meta WHERE key = ?"), (key,))
            row = c.fetchone()
        return str(_col(row, "value")) if row else None

    def ledger_id(self) -> str:
        """The id this ledger was given when it was created (anchors name it)."""
        return self.meta("ledger_id") or ""

    def _owns_tables(self) -> bool:
        with self._backend.read() as c:
            c.execute(
                "SELECT pg_has_role(current_user, tableowner, 'USAGE') AS owner FROM pg_tables "
                "WHERE schemaname = current_schema() AND tablename = %s",
                (self.events_table,),
            )
            row = c.fetchone()
        return row is None or bool(row["owner"])

    def _table_names(self) -> set[str]:
        with self._backend.read() as c:
            if self.kind == "sqlite":
                c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                return {r[0] for r in c.fetchall() if not r[0].startswith("sqlite_")}
            c.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
            return {r["table_name"] for r in c.fetchall()}

    def _create_schema(self) -> None:
        with self._backend.schema_lock():
            self._create_schema_locked()

    def _create_schema_locked(self) -> None:
        if self.kind == "postgresql":
            # eventsourcing makes its composite types in transactions of their own; the
            # schema lock keeps others from looking before arl_meta is in.
            self._recorder.create_table()
            own: list[str] = []
        else:
            # One transaction (SQLite's DDL is transactional, and it has no schema lock):
            # another process sees no ledger or a whole one, never stored_events alone.
            own = list(self._recorder.create_table_statements)
        with self._backend.write() as c:
            for statement in [*own, *self._backend.schema()]:
                c.execute(statement)
            for key, value in (
                ("schema", str(ev.SCHEMA_VERSION)),
                ("created_at", ev.now().isoformat()),
                ("ledger_id", uuid.uuid4().hex),
                (f"ddl/{DDL_VERSION}", ev.now().isoformat()),
            ):
                c.execute(  # never over an existing key: that insert is refused (append-only)
                    self._backend.sql(
                        "INSERT INTO arl_meta (key, value) SELECT ?, ? "
                        "WHERE NOT EXISTS (SELECT 1 FROM arl_meta WHERE key = ?)"
                    ),
                    (key, value, key),
                )

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold the lock ``name`` against every process and thread using this ledger.

        For a check and the write it guards (e.g. "is the trial budget spent?" and the
        submission), which an append's conflict alone does not cover. PostgreSQL: a session
        advisory lock (two-key form, arl's class, a hash of ``name``); SQLite: ``flock`` on a
        file beside the database (``<file>-lock``), never SQLite's own file, whose POSIX locks
        one close would drop. Either is released if the process dies.
        """
        if self.read_only:
            raise StoreError("this ledger was opened read-only; it takes no locks (nothing is written)")
        # Re-entrant in the thread that holds it: a nested take would wait on itself (a second
        # flock of this process, or another pooled PostgreSQL session) for ever.
        key = name if self.kind == "postgresql" else ""  # SQLite: one lock for every name
        held = self._held.__dict__.setdefault("keys", set())
        if key in held:
            yield
            return
        held.add(key)
        try:
            with self._exclusive(name):
                yield
        finally:
            held.discard(key)

    @contextmanager
    def _exclusive(self, name: str) -> Iterator[None]:
        if self.kind == "postgresql":
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)
            with self._backend.datastore.get_connection() as conn:
                try:  # an interrupt once it is granted still unlocks (unlocking one not held is a no-op)
                    conn.execute("SELECT pg_advisory_lock(%s, %s)", (_SCHEMA_LOCK_KEY, key))
                    yield
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_SCHEMA_LOCK_KEY, key))
            return
        fd = _open_lock_file(Path(self.url.path))
        try:
            # One lock for every name: a ledger file has few writers, and they hold it briefly.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the flock

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        self._factory.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- events ------------------------------------------------------------------------

    def append(self, *events: ev.Event) -> list[int]:
        """Write events in one transaction; returns their notification ids.

        Raises :class:`ConflictError` if any stream position is already taken,
        in which case nothing of the batch is written.
        """
        self._writable()
        try:
            recordings = self._store.put(list(events))
        except IntegrityError as e:
            first = events[0]
            raise ConflictError(
                f"stream {first.originator_id} already has an event at version "
                f"{first.originator_version} (another writer got there first); "
                "re-read the stream and decide again"
            ) from e
        except PersistenceError as e:
            raise store_failure(e, self.url, "could not write to") from e
        return [r.notification.id for r in recordings]

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.url.display()} was opened read-only; this command may not write to it")

    def stream(self, originator_id: str, after: int = 0) -> list[ev.Event]:
        """Every event of one stream, in version order (versions > ``after``)."""
        return list(self._store.get(originator_id, gt=after or None))

    def version(self, originator_id: str) -> int:
        """The last version of a stream, 0 if it has none."""
        last = self._recorder.select_events(originator_id, desc=True, limit=1)
        return last[0].originator_version if last else 0

    def head(self) -> int:
        """The highest notification id, 0 for an empty ledger."""
        return self._recorder.max_notification_id() or 0

    def read_raw(self, after: int = 0, limit: int = 10_000) -> list[tuple[int, Any, int, str, bytes]]:
        """Rows ``(notification_id, originator_id, version, topic, state)`` after a position."""
        return self._select_log(
            "originator_id, originator_version, topic, state", after, limit
        )

    def read_states(self, after: int = 0, limit: int = 10_000) -> list[tuple[int, bytes]]:
        """Rows ``(notification_id, state)`` after a position: the fast path for folding."""
        return self._select_log("state", after, limit)

    def _select_log(self, columns: str, after: int, limit: int) -> list[Any]:
        table = self.events_table
        with self._backend.read() as c:
            if self.kind == "sqlite":
                # Plain tuples, not sqlite3.Row; CAST keeps a hand-edited TEXT state as bytes.
                cur = c.sqlite_cursor
                cur.row_factory = None
                cur.execute(
                    f"SELECT rowid, {columns.replace('state', 'CAST(state AS BLOB)')} "
                    f"FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (after, limit),
                )
                return cur.fetchall()
            names = ["notification_id", *(n.strip() for n in columns.split(","))]
            c.execute(
                f"SELECT {', '.join(names)} FROM {table} "
                "WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
                (after, limit),
            )
            return [
                tuple(bytes(r[n]) if n == "state" else r[n] for n in names)
                for r in c.fetchall()
            ]

    def read(self, after: int = 0, limit: int = 10_000) -> list[tuple[int, ev.Event]]:
        """Decoded events after a position, in notification order."""
        rows = self.read_states(after, limit)
        if not rows:
            return []
        decoded = decode_states([r[1] for r in rows])
        return [(r[0], e) for r, e in zip(rows, decoded, strict=True)]

    def iter_events(self, after: int = 0, page: int = 20_000) -> Iterator[tuple[int, ev.Event]]:
        """Every event after a position, paging through the log."""
        while batch := self.read(after, page):
            yield from batch
            after = batch[-1][0]

    # -- blobs ----------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        """Store bytes once; returns their sha256 hex digest."""
        digest = hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            self.put_blobs([data])
        return digest

    def put_blobs(self, items: Sequence[bytes]) -> list[str]:
        """Store many blobs in one transaction; returns their digests in order."""
        self._writable()
        digests = [hashlib.sha256(data).hexdigest() for data in items]
        b = self._backend
        try:
            with b.write() as c:
                if b.kind == "postgresql":
                    c.execute(f"SELECT {_quote_ident(b.datastore.schema)}.arl_lock_blobs()")
                c.execute("SELECT chain FROM arl_blobs ORDER BY seq DESC LIMIT 1")
                row = c.fetchone()
                prev = bytes(_col(row, "chain")) if row else GENESIS
                new: dict[str, bytes] = {}
                for digest, data in zip(digests, items, strict=True):
                    if digest in new:
                        continue
                    c.execute(b.sql("SELECT 1 FROM arl_blobs WHERE digest = ?"), (digest,))
                    if c.fetchone() is None:
                        new[digest] = data
                rows = []
                for digest, data in new.items():
                    prev = blob_link(prev, digest)
                    rows.append((digest, len(data), data, prev))
                c.executemany(
                    b.sql("INSERT INTO arl_blobs (digest, size, data, chain) VALUES (?, ?, ?, ?)"),
                    rows,
                )
        except (PersistenceError, sqlite3.Error) as e:
            raise store_failure(e, self.url, "could not write blobs to") from e
        return digests

    def has_blob(self, digest: str) -> bool:
        with self._backend.read() as c:
            c.execute(self._backend.sql("SELECT 1 FROM arl_blobs WHERE digest = ?"), (digest,))
            return c.fetchone() is not None

    def get_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        """Many blobs in one query, each checked against its digest."""
        wanted = sorted(set(digests))
        if not wanted:
            return {}
        marks = ", ".join("?" * len(wanted))
        with self._backend.read() as c:
            c.execute(self._backend.sql(f"SELECT digest, data FROM arl_blobs WHERE digest IN ({marks})"), wanted)
            found = {_col(r, "digest"): bytes(_col(r, "data")) for r in c.fetchall()}
        for digest in wanted:
            data = found.get(digest)
            if data is None:
                raise BlobError(f"blob {digest[:16]}… is not in {self.url.display()}; run `arl verify`")
            if hashlib.sha256(data).hexdigest() != digest:
                raise BlobError(f"blob {digest[:16]}… was altered in {self.url.display()}; run `arl verify`")
        return found

    def get_blob(self, digest: str) -> bytes:
        """The bytes stored under ``digest``, checked against it on the way out."""
        with self._backend.read() as c:
            c.execute(self._backend.sql("SELECT data FROM arl_blobs WHERE digest = ?"), (digest,))
            row = c.fetchone()
        if row is None:
            raise BlobError(f"blob {digest[:16]}… is not in {self.url.display()}; run `arl verify`")
        data = bytes(_col(row, "data"))
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobError(
                f"blob {digest[:16]}… was altered in {self.url.display()}; run `arl verify`"
            )
        return data

    # -- raw access for verification --------------------------------------------------------

    def read_chain(self, after: int = 0, limit: int = 10_000, stop: int | None = None) -> list[tuple[int, bytes]]:
        """Chain rows ``(notification_id, link)`` after a position (and up to ``stop``)."""
        where = "notification_id > ?" + ("" if stop is None else " AND notification_id <= ?")
        params = (after,) if stop is None else (after, stop)
        with self._backend.read() as c:
            statement = self._backend.sql(
                f"SELECT notification_id, digest FROM arl_chain WHERE {where} "
                "ORDER BY notification_id LIMIT ?"
            )
            if self.kind == "sqlite":
                cur = c.sqlite_cursor
                cur.row_factory = None
                cur.execute(statement, (*params, limit))
                return cur.fetchall()
            c.execute(statement, (*params, limit))
            return [(r["notification_id"], bytes(r["digest"])) for r in c.fetchall()]

    def chain_link(self, position: int) -> bytes | None:
        """The stored chain link of the event at ``position`` (GENESIS at 0; None if no such event)."""
        if position == 0:
            return GENESIS
        rows = self.read_chain(position - 1, 1, stop=position)
        return rows[0][1] if rows and rows[0][0] == position else None

    def read_blob_rows(self, after: int = 0, limit: int = 1_000) -> list[tuple[int, str, bytes, bytes]]:
        """Rows ``(seq, digest, data, chain)`` of the blob table after a position."""
        with self._backend.read() as c:
            c.execute(
                self._backend.sql(
                    "SELECT seq, digest, data, chain FROM arl_blobs WHERE seq > ? ORDER BY seq LIMIT ?"
                ),
                (after, limit),
            )
            return [
                (_col(r, "seq"), _col(r, "digest"), bytes(_col(r, "data")), bytes(_col(r, "chain")))
                for r in c.fetchall()
            ]

    # -- projection checkpoints (derived, mutable) -----------------------------------------

    def save_checkpoint(self, name: str, position: int, digest: str, state: bytes) -> None:
        """Store a projection's state at a log position, unless a later one is stored."""
        self._writable()
        with self._backend.write() as c:
            c.execute(
                self._backend.sql(
                    "INSERT INTO arl_projections (name, position, digest, state) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "position = excluded.position, digest = excluded.digest, "
                    "state = excluded.state WHERE arl_projections.position < excluded.position"
                ),
                (name, position, digest, state),
            )

    def drop_checkpoints(self) -> int:
        """Remove every projection checkpoint (derived state); returns how many there were."""
        self._writable()
        with self._backend.write() as c:
            c.execute("SELECT count(*) AS n FROM arl_projections")
            n = int(_col(c.fetchone(), "n"))
            c.execute("DELETE FROM arl_projections")
        return n

    def checkpoint_positions(self) -> list[tuple[str, int]]:
        """``(name, position)`` of every stored checkpoint, the furthest first."""
        with self._backend.read() as c:
            c.execute("SELECT name, position FROM arl_projections ORDER BY position DESC, name")
            return [(_col(r, "name"), int(_col(r, "position"))) for r in c.fetchall()]

    def checkpoint_names(self) -> list[str]:
        with self._backend.read() as c:
            c.execute("SELECT name FROM arl_projections ORDER BY name")
            return [_col(r, "name") for r in c.fetchall()]

    def load_checkpoint(self, name: str) -> tuple[int, str, bytes] | None:
        with self._backend.read() as c:
            c.execute(
                self._backend.sql(
                    "SELECT position, digest, state FROM arl_projections WHERE name = ?"
                ),
                (name,),
            )
            row = c.fetchone()
        if row is None:
            return None
        return (_col(row, "position"), _col(row, "digest"), bytes(_col(row, "state")))

    # -- lease heartbeats (operational, mutable: not part of the record) -------------------

    def renew_lease(self, trial: str, runner: str, expires_at: float) -> None:
        """Extend ``runner``'s hold on a trial to ``expires_at`` (unix seconds)."""
        self._writable()
        with self._backend.write() as c:
            c.execute(
                self._backend.sql(
                    "INSERT INTO arl_leases (trial, runner, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (trial) DO UPDATE SET runner = excluded.runner, "
                    "expires_at = excluded.expires_at"
                ),
                (trial, runner, expires_at),
            )

    def lease_expiries(self, trials: Sequence[str]) -> dict[str, tuple[str, float]]:
        """The last heartbeat of each of ``trials`` that has one: ``{trial: (runner, expires_at)}``, in one query."""
        out: dict[str, tuple[str, float]] = {}
        trials = list(trials)
        for i in range(0, len(trials), 500):
            chunk = trials[i:i + 500]
            with self._backend.read() as c:
                c.execute(self._backend.sql(
                    f"SELECT trial, runner, expires_at FROM arl_leases WHERE trial IN ({', '.join('?' * len(chunk))})"),
                    tuple(chunk))
                for row in c.fetchall():
                    out[_col(row, "trial")] = (_col(row, "runner"), float(_col(row, "expires_at")))
        return out

    # -- claim hints (operational, mutable: not part of the record) -----------------------

    def hint_claim(self, trial: str, version: int, runner: str, hold_s: float) -> bool:
        """Take the hint to claim ``trial`` at stream ``version`` for ``hold_s`` seconds; False if
        another runner holds it for that version (or a later one) and its hold has not run out.

        One atomic upsert: of the idle workers woken by one submission, one gets the hint and
        the others move on without reading the trial's stream or trying an append. A hint is
        only advice: the claim itself is still decided by the stream version.
        """
        self._writable()
        now = time.time()
        with self._backend.write() as c:
            c.execute(
                self._backend.sql(
                    "INSERT INTO arl_claim_hints (trial, version, runner, expires_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (trial) DO UPDATE SET version = excluded.version, runner = excluded.runner, "
                    "expires_at = excluded.expires_at "
                    "WHERE arl_claim_hints.version < excluded.version OR arl_claim_hints.expires_at < ? "
                    "RETURNING runner"
                ),
                (trial, version, runner, now + hold_s, now),
            )
            return c.fetchone() is not None

    # -- following the log ----------------------------------------------------------------

    def wait(self, after: int, timeout: float, *, poll: float = 0.5) -> bool:
        """Block until the log grows past ``after`` or ``timeout`` passes.

        SQLite: woken by changes to the database files (watchfiles), polling
        every ``poll`` seconds as a fallback. PostgreSQL: woken by LISTEN/NOTIFY.
        """
        deadline = time.monotonic() + timeout
        self._ensure_watcher()
        while True:
            self._changed.clear()
            if self.head() > after:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.wait(min(poll, remaining))

    def follow(
        self, after: int = 0, stop: threading.Event | None = None, *, page: int = 10_000
    ) -> Iterator[tuple[int, ev.Event]]:
        """Every event after ``after``, then each new one as it is recorded, until ``stop``."""
        stop = stop or threading.Event()
        while not stop.is_set():
            batch = self.read(after, page)
            if batch:
                yield from batch
                after = batch[-1][0]
                continue
            self.wait(after, timeout=0.5)

    def _ensure_watcher(self) -> None:
        if self._watcher is not None:
            return
        target = self._watch_sqlite if self.kind == "sqlite" else self._listen_postgres
        self._watcher = threading.Thread(target=target, name="arl-ledger-watch", daemon=True)
        self._watcher.start()

    def _watch_sqlite(self) -> None:
        try:
            import watchfiles
        except ImportError:  # polling alone still works
            return
        folder = Path(self.url.path).parent
        names = {Path(self.url.path).name + suffix for suffix in ("", "-wal", "-shm")}
        try:
            for changes in watchfiles.watch(
                folder,
                watch_filter=lambda _change, path: Path(path).name in names,
                debounce=5,
                step=5,
                stop_event=self._stop,
                rust_timeout=500,
                yield_on_timeout=True,
                recursive=False,
            ):
                if changes:
                    self._changed.set()
        except Exception:  # the watcher is an accelerator; polling remains
            return

    def _listen_postgres(self) -> None:
        import psycopg

        u = self.url
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    host=u.host, port=u.port, user=u.user, password=u.password,
                    dbname=u.dbname, autocommit=True, connect_timeout=5,
                ) as conn:
                    conn.execute(f"LISTEN {self._recorder.channel_name}")
                    self._changed.set()  # anything missed while (re)connecting
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.25, stop_after=1):
                            self._changed.set()
            except Exception:
                if self._stop.wait(1.0):
                    return


# --- helpers ----------------------------------------------------------------------------


def decode_states(states: Sequence[bytes]) -> list[ev.Event]:
    """Decode many stored states at once (one msgspec call over a JSON array)."""
    return _list_decoder.decode(b"[" + b",".join(states) + b"]")


_list_decoder = msgspec.json.Decoder(list[ev.AnyEvent])


def _col(row: Any, name: str) -> Any:
    """A column from a sqlite3.Row or a psycopg dict row."""
    return row[name]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def store_failure(e: BaseException, url: StoreURL, doing: str = "could not use",
                  *, waited: float = SQLITE_LOCK_WAIT_S) -> StoreError:
    """One line for a failure of the database underneath (a lock held too long, a read-only file, …)."""
    text = _one_line(e)
    if "database is locked" in text or "database table is locked" in text:
        return StoreError(
            f"{url.display()} is locked by another process (waited {waited:g} s): a long "
            "write, or an open sqlite3 shell in a transaction, holds it; retry when it is done"
        )
    if "readonly database" in text or "read-only" in text.lower():
        return StoreError(
            f"{url.display()} is read-only here ({text}); read commands (status, show, verify, sql, …) "
            "work on it, commands that record need a writable copy"
        )
    if "permission denied" in text.lower():
        return StoreError(
            f"{doing} {url.display()}: {text}; the role in the store URL lacks that right "
            "(a writer role may only insert and read: see `arl store grant`)"
        )
    return StoreError(f"{doing} {url.display()}: {text}")


def _read_uri(path: Path, url: StoreURL) -> str:
    """An SQLite URI that reads ``path`` without writing to it.

    ``mode=ro`` where SQLite can still keep its shared-memory file beside the
    ledger; on a read-only filesystem, where it cannot, ``immutable=1`` (nothing
    can write there either, so the file cannot change under the reader).
    """
    ro = f"file:{quote(str(path))}?mode=ro"
    try:
        conn = sqlite3.connect(ro, uri=True, timeout=SQLITE_OPEN_WAIT_S)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as e:
        if "unable to open" in str(e) or "readonly" in str(e):
            return f"file:{quote(str(path))}?immutable=1"
        if "locked" in str(e):
            raise store_failure(e, url, waited=SQLITE_OPEN_WAIT_S) from e
        raise StoreError(f"{path} cannot be read as an SQLite database ({e}); is it a ledger?") from e
    except sqlite3.Error as e:
        raise StoreError(f"{path} cannot be read as an SQLite database ({e}); is it a ledger?") from e
    return ro


def _probe_sqlite(path: Path, uri: str, url: StoreURL) -> None:
    """Refuse a foreign or too-new database before anything opens it for writing.

    (Opening it through eventsourcing switches it to WAL mode, which is a write.)
    """
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=SQLITE_OPEN_WAIT_S)
        try:
            tables = {
                r[0]
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if not r[0].startswith("sqlite_")
            }
            row = None
            if "arl_meta" in tables:
                row = conn.execute("SELECT value FROM arl_meta WHERE key = 'schema'").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e):
            raise store_failure(e, url, waited=SQLITE_OPEN_WAIT_S) from e
        raise StoreError(f"{path} cannot be read as an SQLite database ({e}); is it a ledger?") from e
    except sqlite3.Error as e:
        raise StoreError(f"{path} cannot be read as an SQLite database ({e}); is it a ledger?") from e
    if tables and "arl_meta" not in tables:
        raise StoreError(
            f"{path} is an SQLite database but not an arl ledger "
            f"(it has tables {', '.join(sorted(tables)[:5])}); point --store at a new file"
        )
    version = int(row[0]) if row else 0
    if version > ev.SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer arl (ledger schema {version}, "
            f"this arl reads up to {ev.SCHEMA_VERSION}); upgrade arl to open it"
        )


def _open_sqlite(url: StoreURL, *, create: bool, read_only: bool = False) -> tuple[InfrastructureFactory, _Backend]:
    path = Path(url.path)
    if path.is_dir():
        raise StoreError(f"{path} is a folder; give the ledger file, e.g. {path / 'ledger.db'}")
    dbname = str(path)
    if path.exists():
        try:
            with path.open("rb") as f:
                head = f.read(16)
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror}; check its permissions") from e
        if head and head != _SQLITE_MAGIC:
            raise StoreError(
                f"{path} is not an arl ledger (not an SQLite database); "
                "point --store at a ledger file or a new path"
            )
        if head:
            uri = _read_uri(path, url)
            _probe_sqlite(path, uri, url)
            if read_only:
                dbname = uri
        elif read_only:
            raise StoreError(f"{path} is empty, not an arl ledger; check --store / ARL_STORE")
    elif not create:
        raise StoreError(
            f"no arl ledger at {path}; check --store / ARL_STORE, or run a search to create one"
        )
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {path.parent}: {e.strerror}; choose a writable path") from e
    env = Environment(
        "arl",
        {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": dbname,
            "SQLITE_LOCK_TIMEOUT": str(SQLITE_LOCK_WAIT_S),
            "CREATE_TABLE": "false",
            "ORIGINATOR_ID_TYPE": "text",
        },
    )
    if not read_only:
        _switch_to_wal(path, url)
    try:
        factory = InfrastructureFactory.construct(env)
    except Exception as e:
        raise StoreError(f"cannot open {path}: {_one_line(e)}") from e
    # eventsourcing switches a file to WAL mode on its first connection, once, without
    # retrying; here that is done (_switch_to_wal), or not wanted (reading needs no journal
    # mode change, and changing it is a write), so tell the pool it is done.
    factory.datastore.pool.is_journal_mode_wal = True
    return factory, _SQLiteBackend(factory.datastore)


def _open_lock_file(path: Path) -> int:
    """The file beside an SQLite ledger that its writers ``flock``: made with the ledger's own
    permission bits (a ledger shared by a group is locked by each of its users), opened
    read-only where this user may not write it (``flock`` needs no write access), never
    through a link."""
    lock = path.with_name(f"{path.name}-lock")
    try:
        mode = os.stat(path).st_mode & 0o666
    except OSError:
        mode = 0o600
    flags = os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | flags, mode)
        except PermissionError:  # another user's: flock needs no write access
            return os.open(lock, os.O_RDONLY | flags)
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, mode)  # the umask does not narrow it
        return fd
    except OSError as e:
        raise StoreError(f"cannot open the lock file {lock}: {e.strerror}; it must be a file (not a link) "
                         "that this user can read, in the ledger's folder") from e


def _switch_to_wal(path: Path, url: StoreURL) -> None:
    """Put the ledger file in WAL mode, waiting up to SQLITE_OPEN_WAIT_S for other processes.

    Changing the journal mode needs the file to itself, and SQLite answers "database is
    locked" at once, without its busy wait, when another connection is writing (it would
    deadlock otherwise): workers opening a new ledger together hit that (measured: 2 of 10
    rounds of 8 processes lost one of them). The mode is kept in the file, so once one
    process has switched it the others find it switched.
    """
    deadline = time.monotonic() + SQLITE_OPEN_WAIT_S
    delay = 0.005
    while True:
        try:
            conn = sqlite3.connect(str(path), timeout=max(0.0, deadline - time.monotonic()))
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.OperationalError as e:
            if "locked" in str(e) and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
                continue
            raise store_failure(e, url, "could not open", waited=SQLITE_OPEN_WAIT_S) from e
        if str(mode).lower() != "wal":
            # a file on a filesystem without shared memory, or in another process's
            # exclusive locking mode: eventsourcing would carry on in the old mode
            raise StoreError(
                f"{path} could not be put in WAL mode (SQLite kept it in {mode!r} mode); "
                "put the ledger on a local filesystem"
            )
        return


def _open_postgres(url: StoreURL) -> tuple[InfrastructureFactory, _Backend]:
    import psycopg

    try:
        psycopg.connect(
            host=url.host, port=url.port, user=url.user, password=url.password,
            dbname=url.dbname, connect_timeout=5,
        ).close()
    except psycopg.Error as e:
        raise StoreError(
            f"cannot reach PostgreSQL at {url.display()}: {_one_line(e)}; "
            "check that the server runs and the URL in --store / ARL_STORE is right"
        ) from e
    env = Environment(
        "arl",
        {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": url.dbname,
            "POSTGRES_HOST": url.host,
            "POSTGRES_PORT": str(url.port),
            "POSTGRES_USER": url.user,
            "POSTGRES_PASSWORD": url.password,
            "POSTGRES_CONNECT_TIMEOUT": "5",
            "POSTGRES_POOL_SIZE": "2",
            "POSTGRES_MAX_OVERFLOW": "8",
            "CREATE_TABLE": "false",
            "ORIGINATOR_ID_TYPE": "text",
        },
    )
    factory = InfrastructureFactory.construct(env)
    return factory, _PostgresBackend(factory.datastore)


def hostname() -> str:
    return socket.gethostname()


# --- two roles on PostgreSQL ------------------------------------------------------------------


def migrate(url: str) -> Ledger:
    """Create or bring up to date the ledger's tables, triggers and functions, as their owner."""
    ledger = Ledger.open(url, create=True)
    if ledger.kind == "postgresql" and not ledger._owns_tables():
        ledger.close()
        raise StoreError(
            f"{ledger.url.user} does not own the ledger's tables in {ledger.url.display()}; "
            "run `arl store migrate` with the owner role in the URL"
        )
    return ledger


def grant_writer(ledger: Ledger, role: str) -> list[str]:
    """Let ``role`` record (INSERT and SELECT on the record, UPDATE on checkpoints and leases
    only); returns the statements run. The caller is the tables' owner; the role must exist."""
    if ledger.kind != "postgresql":
        raise StoreError("roles exist on PostgreSQL only; an SQLite ledger is guarded by its file's permissions")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", role):
        raise StoreError(f"{role!r} is not a plain PostgreSQL role name; use letters, digits and _")
    if not ledger._owns_tables():
        raise StoreError(f"{ledger.url.user} does not own the ledger's tables; run `arl store grant` as the owner")
    schema = _quote_ident(ledger._backend.datastore.schema)
    who = _quote_ident(role)
    statements = [f"GRANT USAGE ON SCHEMA {schema} TO {who}"]
    statements += [f"GRANT SELECT, INSERT ON {schema}.{t} TO {who}" for t in _WRITER_INSERTS]
    statements += [f"GRANT SELECT, INSERT, UPDATE ON {schema}.{t} TO {who}" for t in _WRITER_UPDATES]
    statements += [f"GRANT SELECT ON {schema}.{t} TO {who}" for t in _WRITER_READS]
    statements += [f"GRANT EXECUTE ON FUNCTION {schema}.{f}() TO {who}" for f in _LOCK_FUNCTIONS]
    try:
        with ledger._backend.write() as c:
            c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            if c.fetchone() is None:
                raise StoreError(f"no role {role!r} in {ledger.url.display()}; create it first "
                                 f"(`createuser {role}`, or CREATE ROLE {role} LOGIN PASSWORD '…')")
            for table, column in (("arl_events", "notification_id"), ("arl_blobs", "seq")):
                c.execute("SELECT pg_get_serial_sequence(%s, %s) AS seq", (f"{schema}.{table}", column))
                sequence = c.fetchone()["seq"]
                if sequence:
                    statements.append(f"GRANT USAGE ON SEQUENCE {sequence} TO {who}")
            for statement in statements:
                c.execute(statement)
    except PersistenceError as e:
        raise store_failure(e, ledger.url, "could not grant on") from e
    return statements
