"""Bring trajectories recorded by other tools into the ledger, one search each.

Two sources:

* ``recipes``: a blackboard folder of the Auto-Research-Recipes release
  (``results.tsv``, optionally ``tree.tsv`` and ``best.json``);
* ``autoresearch``: a karpathy/autoresearch ``results.tsv``
  (``commit val_bpb memory_gb status description``).

Every row becomes a trial with its original id, parent, specialist,
hypothesis, score and timestamps; the original status stays in the trial's
``source`` and is mapped to an arl label. Rows are never silently dropped: a
row whose fields can be recovered (unquoted tabs or line breaks, an
unterminated quote, a truncated tail, a field that is not a number) is
*salvaged* — imported, flagged, its raw text kept — and one that cannot is
*quarantined*: recorded with its raw text and the reason in the search's
``SearchStopped`` summary. The whole import is one append, so it lands
completely or not at all, and the search id is derived from the folder and
the files' digests, so importing the same folder again adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from arl.ledger import ArlError, Ledger
from arl.ledger import events as ev
from arl.ledger.events import Check, Label

_NAMESPACE = uuid.UUID("6d1c5c1e-7a0b-4f0e-9d2a-61726c696d70")  # "arl imp"


class SourceError(ArlError):
    """A trajectory to import cannot be read: missing folder or file, no usable header."""


# --- results ------------------------------------------------------------------------


@dataclass(frozen=True)
class Flagged:
    """A row that was salvaged or quarantined: where it was, why, and its raw text."""

    line: int
    reason: str
    raw: str
    id: str | None = None


@dataclass
class ImportResult:
    search_id: str
    name: str
    source: str
    rows: int = 0
    trials: int = 0
    salvaged: list[Flagged] = field(default_factory=list)
    quarantined: list[Flagged] = field(default_factory=list)
    already: bool = False

    def summary(self) -> str:
        if self.already:
            return (
                f"{self.source} is already imported as search {self.search_id} "
                f"({self.name!r}, {self.trials} trials); nothing added"
            )
        lines = [
            f"imported {self.source} as search {self.search_id} ({self.name!r}): "
            f"{self.rows} rows → {self.trials} trials; "
            f"{len(self.salvaged)} salvaged, {len(self.quarantined)} quarantined"
        ]
        lines += [f"  salvaged    line {f.line}: {f.reason}" for f in self.salvaged]
        lines += [f"  quarantined line {f.line}: {f.reason}" for f in self.quarantined]
        return "\n".join(lines)


# --- TSV reading with recovery ---------------------------------------------------------


@dataclass
class _Record:
    line: int
    raw: str
    fields: list[str]
    problems: list[str] = field(default_factory=list)


def _tokenize(text: str, row_start: re.Pattern[str], first_line: int) -> list[_Record]:
    """Split TSV text into records, CSV-quoting aware (``"…"`` may hold tabs and newlines).

    A quoted field that runs past a line starting a new row (an unterminated
    quote) is closed at that line break instead of swallowing the rest of the file.
    """
    records: list[_Record] = []
    i, n, line = 0, len(text), first_line
    delim = re.compile(r"[\t\n]")
    while i < n:
        start, start_line, fields, problems = i, line, [], []
        while True:
            if i < n and text[i] == '"':
                value, i, closed = _quoted(text, i + 1, row_start)
                if not closed:
                    # The quote was a stray character: its line splits on tabs as usual.
                    problems.append("unterminated quote closed at the end of its line")
                    fields += value.split("\t")
                    i = min(i + 1, n)  # past the newline
                    break
                m = delim.search(text, i)
                end = m.start() if m else n
                value += text[i:end].rstrip("\r")  # text after a closing quote, as csv does
                fields.append(value)
                i = end
            else:
                m = delim.search(text, i)
                end = m.start() if m else n
                fields.append(text[i:end].rstrip("\r"))
                i = end
            if i < n and text[i] == "\t":
                i += 1
                continue
            i = min(i + 1, n)  # past the newline
            break
        raw = text[start:i].rstrip("\n").rstrip("\r")
        records.append(_Record(start_line, raw, fields, problems))
        line += text.count("\n", start, i)
    return records


def _quoted(text: str, i: int, row_start: re.Pattern[str]) -> tuple[str, int, bool]:
    """A quoted field's value from just after its opening quote: (value, next index, closed)."""
    parts: list[str] = []
    while True:
        j = text.find('"', i)
        stop = len(text) if j < 0 else j
        k = text.find("\n", i, stop)
        while k >= 0:
            if row_start.match(text, k + 1):
                parts.append(text[i:k].rstrip("\r"))
                return "".join(parts), k, False
            k = text.find("\n", k + 1, stop)
        if j < 0:
            parts.append(text[i:].rstrip("\n"))
            return "".join(parts), len(text), False
        if text.startswith('""', j):
            parts.append(text[i : j + 1])
            i = j + 2
            continue
        parts.append(text[i:j])
        return "".join(parts), j + 1, True


def _group(records: list[_Record], row_start: re.Pattern[str]) -> list[_Record]:
    """Join records split by an unquoted line break back onto the row they continue."""
    out: list[_Record] = []
    for r in records:
        if not r.raw.strip():
            continue  # blank line: not a row
        if out and not row_start.match(r.raw + "\n"):
            prev = out[-1]
            prev.fields[-1] += "\n" + r.fields[0]
            prev.fields += r.fields[1:]
            prev.raw += "\n" + r.raw
            prev.problems += r.problems
            if "unquoted line break re-joined" not in prev.problems:
                prev.problems.append("unquoted line break re-joined")
            continue
        out.append(r)
    return out


# --- one row, recovered into typed fields -------------------------------------------------


@dataclass
class _Row:
    line: int
    raw: str
    values: dict[str, str | None]
    problems: list[str]


class _Format:
    """What differs between sources: header, row start, which columns are text, how rows map."""

    name: str
    row_start: re.Pattern[str]
    text_columns: frozenset[str]
    free_text: tuple[str, ...]  # where an unquoted tab most likely sits
    required: frozenset[str]

    def fatal(self, values: dict[str, str | None]) -> str | None:
        raise NotImplementedError


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _recover(rec: _Record, header: list[str], fmt: _Format) -> _Row | Flagged:
    """Fit a record's fields to the header, or say why it cannot be done."""
    width = len(header)
    candidates: list[tuple[list[str | None], str | None]] = []
    fields: list[str | None] = list(rec.fields)
    if len(fields) == width:
        candidates.append((fields, None))
    elif len(fields) > width:
        extra = len(fields) - width
        for col in fmt.free_text:
            if col not in header:
                continue
            at = header.index(col)
            joined = fields[:at] + ["\t".join(rec.fields[at : at + extra + 1])] + fields[at + extra + 1 :]
            candidates.append((joined, f"{extra} unquoted tab(s) in {col} re-joined"))
    else:
        padded = fields + [None] * (width - len(fields))
        candidates.append(
            (padded, f"row has {len(fields)} of {width} fields (truncated); the rest left empty")
        )
    # Of the readings that keep the row's id and status sensible, take the one with
    # the fewest measured fields that are not numbers (a misaligned reading has many).
    best: tuple[int, dict[str, str | None], str | None] | None = None
    first_problem = None
    for values_list, note in candidates:
        values = dict(zip(header, values_list, strict=True))
        problem = fmt.fatal(values)
        if problem is not None:
            first_problem = first_problem or problem
            continue
        bad = sum(1 for c, v in values.items() if v and c not in fmt.text_columns and not _is_number(v))
        if best is None or bad < best[0]:
            best = (bad, values, note)
    if best is None:
        if len(fields) != width:
            first_problem = f"{first_problem} (row has {len(fields)} fields, header {width})"
        return Flagged(rec.line, first_problem or "unreadable row", rec.raw, _first_field(rec))
    _, values, note = best
    problems = list(rec.problems) + ([note] if note else [])
    for col, v in values.items():
        if v and col not in fmt.text_columns and not _is_number(v):
            problems.append(f"{col}={v[:20]!r} is not a number; left empty")
            values[col] = None
    return _Row(rec.line, rec.raw, values, problems)


def _first_field(rec: _Record) -> str | None:
    return rec.fields[0] if rec.fields and rec.fields[0] else None


def _read_rows(path: Path, fmt: _Format) -> tuple[list[str], list[_Row], list[Flagged]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"no {path.name} in {path.parent}; give the folder of one run") from None
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror}; check the path and permissions") from e
    try:
        text = data.decode("utf-8")
        bad = None
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        bad = "bytes that are not UTF-8 replaced by \ufffd"
    text = text.replace("\r\n", "\n")
    first_nl = text.find("\n")
    header_text = text if first_nl < 0 else text[:first_nl]
    header = [h.strip() for h in header_text.split("\t")]
    missing = fmt.required - set(header)
    if missing:
        raise SourceError(
            f"{path} does not look like a {fmt.name} results.tsv: its header lacks "
            f"{', '.join(sorted(missing))}; check the format (arl import recipes|autoresearch)"
        )
    body = "" if first_nl < 0 else text[first_nl + 1 :]
    rows: list[_Row] = []
    quarantined: list[Flagged] = []
    for rec in _group(_tokenize(body, fmt.row_start, 2), fmt.row_start):
        got = _recover(rec, header, fmt)
        if isinstance(got, Flagged):
            quarantined.append(got)
        else:
            if bad and "\ufffd" in got.raw:
                got.problems.append(bad)
            rows.append(got)
    return header, rows, quarantined


# --- the two formats ----------------------------------------------------------------------


class _Recipes(_Format):
    name = "recipes"
    row_start = re.compile(r"\d+\t")
    text_columns = frozenset(
        {"exp_id", "timestamp", "specialist", "parent_exp", "baseline_exp", "domain",
         "hypothesis", "status", "job_name", "snapshot_path", "notes"}
    )
    free_text = ("notes", "hypothesis")
    required = frozenset({"exp_id", "status", "hypothesis"})

    def fatal(self, values: dict[str, str | None]) -> str | None:
        exp_id = values.get("exp_id") or ""
        if not re.fullmatch(r"\d+", exp_id):
            return f"exp_id {exp_id[:20]!r} is not a number"
        status = (values.get("status") or "").strip()
        if status not in RECIPES_LABELS:
            return f"status {status[:30]!r} of exp {exp_id} is unknown (known: {', '.join(RECIPES_LABELS)})"
        return None


class _Autoresearch(_Format):
    name = "autoresearch"
    row_start = re.compile(r"[0-9a-fA-F]{4,40}\t")
    text_columns = frozenset({"commit", "status", "description"})
    free_text = ("description",)
    required = frozenset({"commit", "val_bpb", "status", "description"})

    def fatal(self, values: dict[str, str | None]) -> str | None:
        commit = values.get("commit") or ""
        if not re.fullmatch(r"[0-9a-fA-F]{4,40}", commit):
            return f"commit {commit[:20]!r} is not a git hash"
        status = (values.get("status") or "").strip()
        if status not in AUTORESEARCH_LABELS:
            return f"status {status[:30]!r} of commit {commit} is unknown (known: keep, discard, crash)"
        return None


#: The reference paper's statuses → arl labels (preflight_crash: see _recipes_label).
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

AUTORESEARCH_LABELS: dict[str, Label] = {
    "keep": Label.KEEP,
    "discard": Label.DISCARD,
    "crash": Label.CRASH,
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


def _recipes_label(status: str, notes: str) -> Label:
    if status == "preflight_crash" and _INFRA.search(notes):
        return Label.INFRA_ERROR
    return RECIPES_LABELS[status]


def _parse_time(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _num(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        return None


# --- building events --------------------------------------------------------------------


@dataclass
class _Trial:
    """One row, ready to become events."""

    row: _Row
    source_id: str
    status: str
    label: Label
    agent: str
    surface: str
    hypothesis: str
    parent_id: str | None
    expected_delta: float | None
    score: float | None
    metrics: dict[str, float]
    checks: tuple[Check, ...]
    delta_vs_best: float | None
    at: datetime
    wall_s: float | None
    notes: str
    extra: dict[str, Any]


def _search_id(folder: Path, fmt: str, digests: dict[str, str]) -> str:
    key = json.dumps({"path": str(folder), "format": fmt, "files": digests}, sort_keys=True)
    return str(uuid.uuid5(_NAMESPACE, key))


def _events_for(
    search_id: str,
    trials: Sequence[_Trial],
    *,
    name: str,
    task: str,
    direction: str,
    config: dict[str, Any],
    summary: dict[str, Any],
    started: datetime,
    stopped: datetime,
) -> list[ev.Event]:
    out: list[ev.Event] = [
        ev.SearchStarted(
            originator_id=search_id, originator_version=1, at=started, name=name, task=task,
            task_digest=config["files"].get("results.tsv", ""), direction=direction,
            config=config, arl_version=_arl_version(), kind="import",
        )
    ]
    ids: dict[str, str] = {}  # only earlier rows: a parent always precedes its child
    for seq, t in enumerate(trials):
        tid = ev.trial_id(search_id, seq)
        source = {"id": t.source_id, "status": t.status, "line": t.row.line, **t.extra}
        if t.notes:
            source["notes"] = t.notes
        if t.parent_id:
            source["parent"] = t.parent_id
        if t.row.problems:
            source["salvaged"] = "; ".join(t.row.problems)
            source["raw"] = t.row.raw
        parent = ids.get(t.parent_id) if t.parent_id else None
        ids[t.source_id] = tid
        proposed_at = t.at - timedelta(seconds=t.wall_s) if t.wall_s else t.at
        version = iter(range(1, 10))
        common = {"originator_id": tid, "search_id": search_id}
        out.append(
            ev.TrialProposed(
                **common, originator_version=next(version), at=proposed_at, seq=seq,
                agent=t.agent, surface=t.surface, parents=(parent,) if parent else (),
                hypothesis=t.hypothesis, expected_delta=t.expected_delta,
                backend=f"import:{config['format']}", source=source,
            )
        )
        if t.status == "preflight_crash":
            out.append(
                ev.EditRejected(
                    **common, originator_version=next(version), at=t.at, check="preflight",
                    reason=_reason(t.notes) or t.status,
                )
            )
        elif t.wall_s is not None:
            out.append(
                ev.RunFinished(
                    **common, originator_version=next(version), at=t.at, runner="import",
                    exit_code=1 if t.label is Label.CRASH else 0, wall_s=t.wall_s,
                )
            )
        if t.score is not None or t.metrics or t.checks:
            out.append(
                ev.TrialEvaluated(
                    **common, originator_version=next(version), at=t.at,
                    evaluator=f"import:{config['format']}", score=t.score, metrics=t.metrics,
                    checks=t.checks,
                )
            )
        out.append(
            ev.TrialLabeled(
                **common, originator_version=next(version), at=t.at, label=t.label,
                score=t.score if t.label.legal else None, improvement=t.label is Label.KEEP,
                delta_vs_best=t.delta_vs_best,
                reason=_reason(t.notes) if not t.label.legal else "",
            )
        )
    out.append(
        ev.SearchStopped(
            originator_id=search_id, originator_version=2, at=stopped, reason="imported",
            summary=summary,
        )
    )
    return out


def _reason(notes: str) -> str:
    """The error excerpt the release appends to notes after ' | ', else the notes' last line."""
    text = notes.rsplit(" | ", 1)[-1].strip()
    return text.splitlines()[-1][:300] if text else ""


def _arl_version() -> str:
    from arl.ledger import __version__

    return __version__


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _locate(path: str | Path, kind: str) -> tuple[Path, Path]:
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


def _flag_summary(flags: Sequence[Flagged]) -> list[dict[str, Any]]:
    return [{"line": f.line, "id": f.id, "reason": f.reason, "raw": f.raw} for f in flags]


def _record(
    ledger: Ledger,
    result: ImportResult,
    trials: list[_Trial],
    quarantined: list[Flagged],
    **kwargs: Any,
) -> ImportResult:
    result.trials = len(trials)
    result.salvaged = [Flagged(t.row.line, "; ".join(t.row.problems), t.row.raw, t.source_id)
                       for t in trials if t.row.problems]
    result.quarantined = quarantined
    result.rows = len(trials) + len(quarantined)
    summary = {
        "rows": result.rows,
        "trials": result.trials,
        "salvaged": len(result.salvaged),
        "quarantined": _flag_summary(quarantined),
        "labels": _count(t.label.value for t in trials),
        **kwargs.pop("summary_extra", {}),
    }
    times = [t.at for t in trials]
    now = ev.now()
    events = _events_for(
        result.search_id, trials, summary=summary,
        started=min(times, default=now), stopped=max(times, default=now), **kwargs,
    )
    ledger.append(*events)
    return result


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _already(ledger: Ledger, search_id: str, result: ImportResult) -> ImportResult | None:
    if ledger.version(search_id) == 0:
        return None
    started = ledger.stream(search_id)
    result.already = True
    for e in started:
        if isinstance(e, ev.SearchStarted):
            result.name = e.name
        if isinstance(e, ev.SearchStopped):
            result.trials = int(e.summary.get("trials", 0))
    return result


# --- recipes --------------------------------------------------------------------------------


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
    folder, results = _locate(path, "recipes")
    fmt = _Recipes()
    files = {p.name: p for p in (results, folder / "tree.tsv", folder / "best.json") if p.is_file()}
    digests = {n: _digest(p) for n, p in files.items()}
    search_id = _search_id(folder, fmt.name, digests)
    result = ImportResult(search_id, name or folder.name, str(folder))
    if (done := _already(ledger, search_id, result)) is not None:
        return done

    header, rows, quarantined = _read_rows(results, fmt)
    best = _read_best(files.get("best.json"))
    tree_parents = _read_tree_parents(files.get("tree.tsv"))
    score_col = score or _score_column(header, best)
    if score_col not in header:
        raise SourceError(f"score column {score_col!r} is not in {results}; choose one of {', '.join(header)}")
    numeric = [h for h in header if h not in fmt.text_columns]
    failing = {_FAILED_CHECK[s] for s in {r.values.get("status") for r in rows} if s in _FAILED_CHECK}
    failing &= set(header)
    direction = direction or _direction(rows, score_col, best)

    trials: list[_Trial] = []
    seen: set[str] = set()
    for row in rows:
        v = row.values
        exp_id = str(v["exp_id"])
        if exp_id in seen:
            quarantined.append(Flagged(row.line, f"exp_id {exp_id} appears again; first row kept", row.raw, exp_id))
            continue
        status = str(v["status"]).strip()
        notes = v.get("notes") or ""
        metrics = {c: x for c in numeric if c not in _NOT_METRICS and (x := _num(v.get(c))) is not None}
        checks = tuple(
            Check(name=c, passed=_FAILED_CHECK.get(status) != c, value=_num(v.get(c)))
            for c in sorted(failing)
            if _num(v.get(c)) is not None or _FAILED_CHECK.get(status) == c
        )
        total = _num(v.get("total_s"))
        if total is None and (t_s := _num(v.get("train_s"))) is not None:
            total = t_s + (_num(v.get("eval_s")) or 0.0)
        at = _parse_time(v.get("timestamp") or "")
        if at is None:
            row.problems.append(f"timestamp {(v.get('timestamp') or '')[:30]!r} is not ISO 8601; import time used")
        parent = (v.get("parent_exp") or "").strip() or tree_parents.get(exp_id)
        if parent and parent not in seen:
            row.problems.append(f"parent {parent[:20]!r} is not an earlier row; imported without parent")
            parent = None
        seen.add(exp_id)
        trials.append(
            _Trial(
                row=row, source_id=exp_id, status=status, label=_recipes_label(status, notes),
                agent=(v.get("specialist") or "").strip() or "unknown",
                surface=(v.get("domain") or v.get("specialist") or "").strip() or "unknown",
                hypothesis=v.get("hypothesis") or "", parent_id=parent or None,
                expected_delta=_num(v.get("expected_delta")), score=_num(v.get(score_col)),
                metrics=metrics, checks=checks, delta_vs_best=_num(v.get("delta_vs_best")),
                at=at or ev.now(),
                wall_s=total if total else None, notes=notes,
                extra={k: v[k] for k in ("baseline_exp", "job_name", "snapshot_path") if v.get(k)},
            )
        )
    config = {
        "format": fmt.name,
        "source": str(folder),
        "files": digests,
        "score": score_col,
        "best": best,
    }
    return _record(
        ledger, result, trials, quarantined, name=result.name, task=folder.name,
        direction=direction, config=config,
        summary_extra={"best_json": best.get("exp_id") if best else None},
    )


def _read_best(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(f"{path} is not readable JSON ({e}); fix or remove it and import again") from e
    return data if isinstance(data, dict) else {}


def _read_tree_parents(path: Path | None) -> dict[str, str]:
    """exp_id → parent_exp from tree.tsv: a fallback where a results row lost its parent."""
    if path is None:
        return {}
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    head, _, body = text.partition("\n")
    header = head.split("\t")
    if "exp_id" not in header or "parent_exp" not in header:
        return {}
    out = {}
    for rec in _group(_tokenize(body, _Recipes.row_start, 2), _Recipes.row_start):
        values = dict(zip(header, rec.fields, strict=False))
        if values.get("exp_id") and values.get("parent_exp"):
            out[values["exp_id"]] = values["parent_exp"]
    return out


def _score_column(header: list[str], best: dict[str, Any]) -> str:
    measured = [h for h in header if h not in _Recipes.text_columns and h not in _NOT_METRICS]
    for h in measured:
        if h in best:
            return h
    after = header.index("status") + 1
    if after < len(header):
        return header[after]
    raise SourceError("cannot tell the score column; pass --score COLUMN")


def _direction(rows: list[_Row], score_col: str, best: dict[str, Any]) -> str:
    base = next((_num(r.values.get(score_col)) for r in rows if r.values.get("status") == "baseline"), None)
    best_score = _num(str(best.get(score_col))) if score_col in best else None
    if base is not None and best_score is not None and best_score != base:
        return "min" if best_score < base else "max"
    keeps = [_num(r.values.get("delta_vs_best")) for r in rows if r.values.get("status") == "keep"]
    signs = [d for d in keeps if d]
    if signs:
        return "min" if sum(d < 0 for d in signs) >= len(signs) / 2 else "max"
    return "min" if re.search(r"loss|bpb|_s$|time|err", score_col) else "max"


# --- autoresearch --------------------------------------------------------------------------


def import_autoresearch(ledger: Ledger, path: str | Path, *, name: str | None = None) -> ImportResult:
    """Import a karpathy/autoresearch ``results.tsv`` as a search.

    Its first row is the baseline; each experiment starts from the latest
    kept commit (the branch it was made on), which becomes its parent.
    Crashed rows log ``val_bpb`` 0: their score is left empty.
    """
    folder, results = _locate(path, "autoresearch")
    fmt = _Autoresearch()
    digests = {"results.tsv": _digest(results)}
    search_id = _search_id(results, fmt.name, digests)
    result = ImportResult(search_id, name or folder.name, str(results))
    if (done := _already(ledger, search_id, result)) is not None:
        return done
    header, rows, quarantined = _read_rows(results, fmt)
    now = ev.now()
    trials: list[_Trial] = []
    best_commit: str | None = None
    seen: set[str] = set()
    for row in rows:
        v = row.values
        commit = str(v["commit"])
        status = str(v["status"]).strip()
        if commit in seen:
            quarantined.append(Flagged(row.line, f"commit {commit} appears again; first row kept", row.raw, commit))
            continue
        seen.add(commit)
        label = Label.BASELINE if not trials else AUTORESEARCH_LABELS[status]
        bpb = _num(v.get("val_bpb"))
        score = None if label is Label.CRASH or not bpb else bpb
        metrics = {c: x for c in ("val_bpb", "memory_gb") if (x := _num(v.get(c))) is not None and score is not None}
        trials.append(
            _Trial(
                row=row, source_id=commit, status=status, label=label, agent="agent",
                surface="train.py", hypothesis=v.get("description") or "",
                parent_id=best_commit, expected_delta=None, score=score, metrics=metrics,
                checks=(), delta_vs_best=None, at=now, wall_s=None, notes="", extra={},
            )
        )
        if label in (Label.BASELINE, Label.KEEP):
            best_commit = commit
    _fill_deltas(trials)
    config = {"format": fmt.name, "source": str(results), "files": digests, "score": "val_bpb"}
    return _record(
        ledger, result, trials, quarantined, name=result.name, task="autoresearch",
        direction="min", config=config,
    )


def _fill_deltas(trials: list[_Trial]) -> None:
    """autoresearch logs no deltas: compute each scored trial's delta vs the best before it."""
    best: float | None = None
    for t in trials:
        if t.score is not None and best is not None:
            t.delta_vs_best = t.score - best
        if t.score is not None and t.label in (Label.BASELINE, Label.KEEP):
            best = t.score if best is None else min(best, t.score)


IMPORTERS: dict[str, Callable[..., ImportResult]] = {
    "recipes": import_recipes,
    "autoresearch": import_autoresearch,
}
