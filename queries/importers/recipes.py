"""The paper's release (Auto-Research-Recipes): a blackboard folder with ``results.tsv``.

``tree.tsv`` fills a parent a results row lost, ``best.json`` names the score
column and the direction, and ``snapshots/<id>_<domain>/`` (the release keeps
one per kept trial) becomes that trial's program.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.ledger.events import Check, Label
from arl.queries.importers.core import (
    MAX_SECONDS,
    ImportResult,
    Record,
    SourceError,
    already,
    digest_file,
    iso_time,
    number,
    read_json,
    record_import,
    not_finite,
    search_id_for,
)
from arl.queries.importers.tsv import TsvFormat, TsvRow, group, read_rows, tokenize

#: The reference paper's statuses → arl labels (preflight_crash: see :func:`recipes_label`).
RECIPES_LABELS: dict[str, Label] = {
    "baseline": Label.BASELINE,
    "keep": Label.KEEP,
    "discard": Label.DISCARD,
    "crash": Label.CRASH,
    "oom": Label.OOM,
    "diverged": Label.DIVERGED,
    "train_budget_overrun": Label.TRAIN_BUDGET_OVERRUN,
    "eval_budget_overrun": Label.EVAL_BUDGET_OVERRUN,
    "size_blocked": Label.SIZE_VIOLATION,
    "disqualified": Label.GATE_MISS,
    "preflight_crash": Label.INVALID_EDIT,
    "harness_abort": Label.INFRA_ERROR,
    "duplicate": Label.DUPLICATE,
}

#: Which measured column a failing status is about: it becomes a failed check.
_FAILED_CHECK = {
    "size_blocked": "artifact_bytes",
    "eval_budget_overrun": "eval_s",
    "train_budget_overrun": "train_s",
    "disqualified": "accuracy",
}

_INFRA = re.compile(r"infrastructure|\binfra\b|harness", re.IGNORECASE)
#: Columns that are bookkeeping of the release, not measurements.
_NOT_METRICS = frozenset({"expected_delta", "delta_vs_best", "n_seeds"})
_ID = re.compile(r"(?:exp[_-]?)?(\d+)", re.IGNORECASE)
#: A snapshot larger than this is not read (a checkpoint left in it, not code).
SNAPSHOT_BYTES = 64 << 20


class RecipesFormat(TsvFormat):
    name = "recipes"
    row_start = re.compile(r"(?:exp[_-]?)?\d+\t", re.IGNORECASE)
    text_columns = frozenset(
        {"exp_id", "timestamp", "specialist", "parent_exp", "baseline_exp", "domain",
         "hypothesis", "status", "job_name", "snapshot_path", "notes"}
    )
    free_text = ("notes", "hypothesis")
    required = frozenset({"exp_id", "status", "hypothesis"})
    statuses = frozenset(RECIPES_LABELS)

    def fatal(self, values: dict[str, str | None]) -> str | None:
        exp_id = (values.get("exp_id") or "").strip()
        if not _ID.fullmatch(exp_id):
            return f"exp_id {exp_id[:20]!r} is not a number"
        status = (values.get("status") or "").strip()
        if status not in RECIPES_LABELS:
            return f"status {status[:30]!r} of exp {exp_id} is unknown (known: {', '.join(RECIPES_LABELS)})"
        return None


def recipe_key(ref: str) -> str:
    """One spelling of an experiment id: ``exp_017``, ``17`` and ``017`` are the same row."""
    text = ref.strip()
    m = _ID.fullmatch(text)
    return str(int(m.group(1))) if m else text


def recipes_label(status: str, notes: str) -> Label:
    if status == "preflight_crash" and _INFRA.search(notes):
        return Label.INFRA_ERROR
    return RECIPES_LABELS[status]


def locate(path: str | Path, kind: str) -> tuple[Path, Path]:
    """(folder, results.tsv) from a folder or a results.tsv path."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        results = p / "results.tsv"
        if not results.is_file():
            raise SourceError(
                f"{p} has no results.tsv; give the folder of one {kind} run or its results.tsv"
            )
        return p, results
    if p.is_file():
        return p.parent, p
    raise SourceError(f"no folder or file at {p}; give the folder of one {kind} run or its results.tsv")


def import_recipes(
    ledger: Ledger,
    path: str | Path,
    *,
    name: str | None = None,
    score: str | None = None,
    direction: str | None = None,
) -> ImportResult:
    """Import one run folder of the Auto-Research-Recipes release as a search.

    ``score``: the score column (default: the measured column named in
    ``best.json``, else the first column after ``status``); ``direction``:
    ``min`` or ``max`` (default: from ``best.json`` against the baseline, else
    from the sign of the keeps' ``delta_vs_best``).
    """
    folder, results = locate(path, "recipes")
    fmt = RecipesFormat()
    files = {p.name: p for p in (results, folder / "tree.tsv", folder / "best.json") if p.is_file()}
    digests = {n: digest_file(p) for n, p in files.items()}
    result = ImportResult(search_id_for(folder, fmt.name, digests), name or folder.name, str(folder), fmt.name)
    if (done := already(ledger, result)) is not None:
        return done

    header, rows, quarantined = read_rows(results, fmt)
    best = _read_best(files.get("best.json"))
    tree_parents = _read_tree_parents(files.get("tree.tsv"))
    score_col = score or _score_column(header, best)
    if score_col not in header:
        raise SourceError(f"score column {score_col!r} is not in {results}; choose one of {', '.join(header)}")
    numeric = [h for h in header if h not in fmt.text_columns]
    failing = {_FAILED_CHECK[s] for s in {r.values.get("status") for r in rows} if s in _FAILED_CHECK}
    failing &= set(header)
    direction = direction or _direction(rows, score_col, best)
    now = ev.now()
    records = [_record(row, folder, numeric, failing, score_col, tree_parents, now) for row in rows]
    config = {"format": fmt.name, "source": str(folder), "files": digests, "score": score_col, "best": best}
    return record_import(
        ledger, result, records, quarantined, task=folder.name, direction=direction, config=config,
        key=recipe_key, summary_extra={"best_json": best.get("exp_id") if best else None},
    )


def _record(row: TsvRow, folder: Path, numeric: list[str], failing: set[str], score_col: str,
            tree_parents: dict[str, str], now: Any) -> Record:
    v, problems = row.values, row.problems
    exp_id = str(v["exp_id"]).strip()
    status = str(v["status"]).strip()
    notes = v.get("notes") or ""
    metrics = {c: x for c in numeric if c not in _NOT_METRICS and (x := number(v.get(c), c, problems)) is not None}
    quiet: list[str] = []  # each value's note is made once, above
    checks = tuple(
        Check(name=c, passed=_FAILED_CHECK.get(status) != c, value=number(v.get(c), c, quiet))
        for c in sorted(failing)
        if number(v.get(c), c, quiet) is not None or _FAILED_CHECK.get(status) == c
    )
    total = metrics.get("total_s")
    if total is None and "train_s" in metrics:
        total = metrics["train_s"] + metrics.get("eval_s", 0.0)
    if total is not None and not 0.0 <= total <= MAX_SECONDS:
        problems.append(f"total_s={total:g} is not a plausible duration in seconds; no run time kept")
        total = None
    at = iso_time(v.get("timestamp"))
    if at is None:
        problems.append(f"timestamp {(v.get('timestamp') or '')[:30]!r} is not ISO 8601; import time used")
    label = recipes_label(status, notes)
    record = Record(
        line=row.line, raw=row.raw, source_id=exp_id, status=status, label=label,
        agent=(v.get("specialist") or "").strip() or "unknown",
        surface=(v.get("domain") or v.get("specialist") or "").strip() or "unknown",
        hypothesis=v.get("hypothesis") or "",
        parent=(v.get("parent_exp") or "").strip() or tree_parents.get(recipe_key(exp_id)),
        expected_delta=number(v.get("expected_delta"), "expected_delta", problems),
        score=metrics.get(score_col), metrics=metrics, checks=checks,
        delta_vs_best=number(v.get("delta_vs_best"), "delta_vs_best", quiet),
        at=at or now, wall_s=total or None, notes=notes,
        reason=_reason(notes), rejected="preflight" if status == "preflight_crash" else None,
        extra={k: v[k] for k in ("baseline_exp", "job_name", "snapshot_path") if v.get(k)},
        problems=problems,
    )
    not_finite(record, v.get(score_col))
    snapshot = (v.get("snapshot_path") or "").strip()
    if snapshot:
        record.program = _snapshot(folder, snapshot, problems)
    return record


def _snapshot(folder: Path, rel: str, problems: list[str]) -> dict[str, bytes] | None:
    """The files of a snapshot folder inside the run folder; a link or a path leaving it is not followed."""
    target = folder / rel
    try:
        resolved = target.resolve()
    except (OSError, RuntimeError):
        problems.append(f"snapshot {rel[:60]!r} cannot be resolved; no program kept")
        return None
    if not target.exists():
        return None  # the release keeps snapshots only in some copies of a run
    if target.is_symlink() or not resolved.is_relative_to(folder) or not resolved.is_dir():
        problems.append(f"snapshot {rel[:60]!r} is a link or leaves the run folder; not read")
        return None
    files: dict[str, bytes] = {}
    size = 0
    for p in sorted(resolved.rglob("*")):
        relpath = p.relative_to(resolved)
        if p.is_symlink():
            problems.append(f"snapshot {rel[:40]}: {relpath} is a link; skipped")
            continue
        if not p.is_file() or "__pycache__" in relpath.parts or relpath.name.startswith("."):
            continue
        size += p.stat().st_size
        if size > SNAPSHOT_BYTES:
            problems.append(f"snapshot {rel[:40]} holds over {SNAPSHOT_BYTES >> 20} MiB; no program kept")
            return None
        files[relpath.as_posix()] = p.read_bytes()
    return files or None


def _reason(notes: str) -> str:
    """The error excerpt the release appends to notes after ' | ', else the notes' last line."""
    text = notes.rsplit(" | ", 1)[-1].strip()
    return text.splitlines()[-1][:300] if text else ""


def _read_best(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    data = read_json(path, "a best.json")
    return data if isinstance(data, dict) else {}


def _read_tree_parents(path: Path | None) -> dict[str, str]:
    """exp_id (its key) → parent_exp from tree.tsv: a fallback where a results row lost its parent."""
    if path is None:
        return {}
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    head, _, body = text.partition("\n")
    header = head.split("\t")
    if "exp_id" not in header or "parent_exp" not in header:
        return {}
    out = {}
    for rec in group(tokenize(body, RecipesFormat.row_start, 2), RecipesFormat.row_start):
        values = dict(zip(header, rec.fields, strict=False))
        if values.get("exp_id") and values.get("parent_exp"):
            out[recipe_key(values["exp_id"])] = values["parent_exp"].strip()
    return out


def _score_column(header: list[str], best: dict[str, Any]) -> str:
    measured = [h for h in header if h not in RecipesFormat.text_columns and h not in _NOT_METRICS]
    for h in measured:
        if h in best:
            return h
    after = header.index("status") + 1
    if after < len(header):
        return header[after]
    raise SourceError("cannot tell the score column; pass --score COLUMN")


def _direction(rows: list[TsvRow], score_col: str, best: dict[str, Any]) -> str:
    quiet: list[str] = []
    base = next((number(r.values.get(score_col), score_col, quiet) for r in rows
                 if r.values.get("status") == "baseline"), None)
    best_score = number(best.get(score_col), score_col, quiet) if score_col in best else None
    if base is not None and best_score is not None and best_score != base:
        return "min" if best_score < base else "max"
    keeps = [number(r.values.get("delta_vs_best"), "", quiet) for r in rows if r.values.get("status") == "keep"]
    signs = [d for d in keeps if d]
    if signs:
        return "min" if sum(d < 0 for d in signs) >= len(signs) / 2 else "max"
    return "min" if re.search(r"loss|bpb|_s$|time|err", score_col) else "max"
