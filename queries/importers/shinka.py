"""ShinkaEvolve (SakanaAI): the run's SQLite program database (``evolution_db.sqlite``).

Its ``programs`` table has one row per evaluated program: ``id``, ``code``,
``language``, ``parent_id``, ``generation``, ``timestamp``, ``code_diff``,
``combined_score``, ``public_metrics`` / ``private_metrics`` (JSON),
``text_feedback``, ``correct``, ``metadata`` (JSON: ``patch_name``,
``patch_description``, ``model_name``, ``failure_reason``,
``evaluation_seconds``, …) and ``island_idx``. The file is read as it is (``immutable``); nothing is
written to it or beside it, not even a lock.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from arl.ledger import Ledger
from arl.ledger.events import Label
from arl.queries.importers.core import (
    Flagged,
    ImportResult,
    Record,
    SourceError,
    already,
    digest_file,
    duration,
    find_one,
    last_line,
    metrics_of,
    not_finite,
    number,
    rank,
    record_import,
    search_id_for,
    unix_time,
)

SQLITE_MAGIC = b"SQLite format 3\x00"
_NEEDED = {"id", "code", "parent_id", "generation"}
_EXT = {"python": ".py", "cpp": ".cpp", "c": ".c", "cuda": ".cu", "rust": ".rs", "go": ".go", "julia": ".jl",
        "fortran": ".f90", "verilog": ".sv", "javascript": ".js", "markdown": ".md", "wolfram": ".wl"}


def is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def import_shinka(ledger: Ledger, path: str | Path, *, name: str | None = None) -> ImportResult:
    """Import a ShinkaEvolve program database as a search: one trial per program, its code as the program."""
    db = find_one(path, "a ShinkaEvolve evolution_db.sqlite", names=("evolution_db.sqlite", "programs.sqlite"),
                  patterns=("*.sqlite", "*.db"))
    if not is_sqlite(db):
        raise SourceError(f"{db} is not an SQLite database; give ShinkaEvolve's evolution_db.sqlite")
    digests = {db.name: digest_file(db)}
    result = ImportResult(search_id_for(db, "shinka", digests), name or db.parent.name, str(db), "shinka")
    if (done := already(ledger, result)) is not None:
        return done
    rows, columns = _rows(db)
    records: list[Record] = []
    quarantined: list[Flagged] = []
    for i, row in enumerate(rows, start=1):
        raw = json.dumps({k: row[k] for k in row.keys() if k not in ("code", "embedding", "embedding_pca_2d",
                                                                        "embedding_pca_3d")}, default=str)
        pid = row["id"]
        if not isinstance(pid, str) or not pid.strip():
            quarantined.append(Flagged(i, "program has no id", raw, None))
            continue
        records.append(_record(i, row, raw, columns))
    base = next((r for r in records if r.parent is None and r.label is Label.KEEP), None)
    if base is not None:
        base.label, base.status = Label.BASELINE, "initial program"
        for r in records:  # Shinka seeds every island with a copy of the initial program
            if r is not base and r.parent is None and r.program == base.program and r.label is Label.KEEP:
                r.label, r.status = Label.DUPLICATE, "island seed"
                r.reason = f"a copy of the initial program {base.source_id[:8]} seeding {r.surface}"
    rank(records, "max", lambda r: r.label is Label.KEEP)
    config = {"format": "shinka", "source": str(db), "files": digests, "score": "combined_score"}
    return record_import(ledger, result, records, quarantined, task="shinka", direction="max", config=config)


def _rows(db: Path) -> tuple[list[sqlite3.Row], set[str]]:
    """Every program row. Nothing is written beside the file: a database with a pending write-ahead
    log (a run that is going on, or was killed) is read from a private copy of it and its log."""
    wal = db.with_name(db.name + "-wal")
    if not wal.exists():
        return _read(f"file:{quote(str(db))}?mode=ro&immutable=1", db)
    with tempfile.TemporaryDirectory(prefix="arl-shinka-") as tmp:
        copy = Path(tmp) / db.name
        for src in (db, wal, db.with_name(db.name + "-shm")):
            if src.exists():
                shutil.copyfile(src, copy.with_name(src.name))
        return _read(f"file:{quote(str(copy))}", db)


def _read(uri: str, db: Path) -> tuple[list[sqlite3.Row], set[str]]:
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise SourceError(f"cannot open {db} ({e}); check the file") from e
    con.row_factory = sqlite3.Row
    try:
        columns = {r[1] for r in con.execute("PRAGMA table_info(programs)").fetchall()}
        if not columns:
            raise SourceError(f"{db} has no programs table: it is not a ShinkaEvolve database")
        missing = _NEEDED - columns
        if missing:
            raise SourceError(f"{db}: its programs table lacks {', '.join(sorted(missing))}; "
                              "it is not a ShinkaEvolve program database")
        order = ", ".join(c for c in ("generation", "timestamp") if c in columns)
        rows = con.execute(f"SELECT * FROM programs ORDER BY {order}, rowid").fetchall()
    except sqlite3.DatabaseError as e:
        raise SourceError(f"cannot read {db} ({e}); the database is damaged or not ShinkaEvolve's") from e
    finally:
        con.close()
    return rows, columns


def _record(i: int, row: sqlite3.Row, raw: str, columns: set[str]) -> Record:
    problems: list[str] = []

    def get(col: str) -> Any:
        return row[col] if col in columns else None

    metadata = _json(get("metadata"), "metadata", problems)
    public = _json(get("public_metrics"), "public_metrics", problems)
    private = _json(get("private_metrics"), "private_metrics", problems)
    metrics = metrics_of(public, problems, where="public")
    metrics |= {f"private.{k}": v for k, v in metrics_of(private, problems, where="private").items()}
    score = number(get("combined_score"), "combined_score", problems)
    correct = get("correct")
    feedback = get("text_feedback") if isinstance(get("text_feedback"), str) else ""
    failure = metadata.get("failure_reason") if isinstance(metadata.get("failure_reason"), str) else ""
    if correct in (0, False, "0") or (correct is None and score is None):
        label, status = Label.CRASH, "incorrect"
        reason = last_line(failure) or last_line(feedback) or last_line(str(metadata.get("stderr_log") or "")) \
            or "ShinkaEvolve marked the program incorrect"
        score = None if correct is None else score
    else:
        label, status, reason = Label.KEEP, "correct", ""
    island = get("island_idx")
    where = f"island{island}" if isinstance(island, int) else "population"
    name = " — ".join(str(metadata[k]) for k in ("patch_name", "patch_description") if metadata.get(k))
    language = str(get("language") or "python").lower()
    code = get("code")
    record = Record(
        line=i, raw=raw, source_id=row["id"].strip(), status=status, label=label,
        agent=str(metadata.get("model_name") or metadata.get("llm_model") or where), surface=where,
        hypothesis=name, parent=get("parent_id") if isinstance(get("parent_id"), str) else None,
        score=score if label is Label.KEEP else None, metrics=metrics,
        at=unix_time(get("timestamp"), "timestamp", problems),
        wall_s=duration(metadata.get("evaluation_seconds"), "metadata.evaluation_seconds", problems),
        notes=feedback, reason=reason,
        program={f"main{_EXT.get(language, '.txt')}": code.encode()} if isinstance(code, str) and code else None,
        edit=get("code_diff") if isinstance(get("code_diff"), str) and get("code_diff") else None,
        extra={k: v for k, v in (("generation", get("generation")), ("patch_type", metadata.get("patch_type")),
                                 ("island", island)) if v is not None},
        problems=problems,
    )
    not_finite(record, get("combined_score"))
    return record


def _json(value: Any, name: str, problems: list[str]) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    try:
        data = json.loads(value) if isinstance(value, str | bytes) else value
    except ValueError:
        problems.append(f"{name} is not JSON; left out")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{name} is not a JSON object; left out")
        return {}
    return data
