"""What every importer shares: one record per row of a source, and the events they become.

An importer reads its source into :class:`Record` objects (one per row, node
or program) and :class:`Flagged` ones for rows it cannot read; :func:`record_import`
does the rest the same way for every format:

* ids are matched through the importer's ``key`` (``exp_017``, ``17`` and
  ``017`` are one row of the paper's release), and a second row with an id
  already seen is quarantined;
* every parent reference is resolved against *all* rows, not only earlier
  ones: a parent written later in the file keeps its edge; one that was
  quarantined, is unknown, names its own row or would close a cycle is a
  *lineage break*, counted by cause and noted on the child (its reference
  stays in ``source``);
* text longer than :data:`TEXT_CHARS` is clipped in the events, and the whole
  record is kept as a blob (``TrialProposed.source_digest``);
* numbers that are not finite never reach a score, a metric or a duration:
  the field is left empty and the row says why;
* code becomes a program (``TrialSubmitted``) and its diff against the
  parent's program the trial's edit.

The import is one append, so it lands completely or not at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from arl.ledger import ArlError, Ledger
from arl.ledger import events as ev
from arl.ledger.events import Check, Label
from arl.ledger.programs import put_program, unified_diff

_NAMESPACE = uuid.UUID("6d1c5c1e-7a0b-4f0e-9d2a-61726c696d70")  # "arl imp"

#: Longest text an event keeps of one field (hypothesis, notes, raw row, reason).
TEXT_CHARS = 10_000
#: Durations beyond this (about three years) are not a run's: left empty.
MAX_SECONDS = 1e8


class SourceError(ArlError):
    """A trajectory to import cannot be read: missing folder or file, no usable header."""


@dataclass(frozen=True)
class Flagged:
    """A row that was salvaged or quarantined: where it was, why, and its raw text."""

    line: int
    reason: str
    raw: str
    id: str | None = None


@dataclass
class Record:
    """One row of a source, read: what becomes one trial."""

    line: int  # line in the file, or the record's position in the source
    raw: str
    source_id: str
    status: str  # the source's own word for the outcome
    label: Label
    agent: str = "unknown"
    surface: str = "unknown"
    hypothesis: str = ""
    parent: str | None = None  # the parent as the source names it
    expected_delta: float | None = None
    score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    delta_vs_best: float | None = None
    at: datetime | None = None
    wall_s: float | None = None
    exit_code: int | None = None
    notes: str = ""
    reason: str = ""
    #: The check an edit failed before it ran (an ``EditRejected``), else None.
    rejected: str | None = None
    program: dict[str, bytes] | None = None
    #: The source's own diff against the parent, when it keeps one.
    edit: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class Lineage:
    """How many rows name a parent, how many of those were resolved, and why the rest were not."""

    named: int = 0
    resolved: int = 0
    later: int = 0  # resolved to a row written after the child: the edge is kept
    breaks: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        if not self.named:
            return "lineage: no row names a parent"
        share = 100.0 * self.resolved / self.named
        text = f"lineage: {self.resolved}/{self.named} named parents resolved ({share:.1f} %)"
        if self.later:
            text += f", {self.later} of them written after the child (edge kept)"
        if self.breaks:
            text += "; breaks: " + ", ".join(f"{n} {why}" for why, n in sorted(self.breaks.items()))
        return text

    def to_json(self) -> dict[str, Any]:
        return {"named": self.named, "resolved": self.resolved, "later": self.later,
                "breaks": dict(sorted(self.breaks.items()))}


@dataclass
class ImportResult:
    search_id: str
    name: str
    source: str
    format: str = ""
    rows: int = 0
    trials: int = 0
    salvaged: list[Flagged] = field(default_factory=list)
    quarantined: list[Flagged] = field(default_factory=list)
    lineage: Lineage = field(default_factory=Lineage)
    labels: dict[str, int] = field(default_factory=dict)
    clipped: int = 0
    programs: int = 0
    #: Things the reader should know about the whole import (an assumed direction, …).
    notes: list[str] = field(default_factory=list)
    already: bool = False

    def summary(self) -> str:
        if self.already:
            return (
                f"{self.source} is already imported as search {self.search_id} "
                f"({self.name!r}, {self.trials} trials); nothing added"
            )
        lines = [
            f"imported {self.source} ({self.format}) as search {self.search_id} ({self.name!r}): "
            f"{self.rows} rows → {self.trials} trials; "
            f"{len(self.salvaged)} salvaged, {len(self.quarantined)} quarantined",
            self.lineage.line(),
            "labels: " + (", ".join(f"{k} {v}" for k, v in sorted(self.labels.items(), key=lambda kv: -kv[1]))
                          or "none"),
        ]
        if self.programs:
            lines.append(f"code: {self.programs} trials with their program")
        if self.clipped:
            lines.append(f"clipped: {self.clipped} trials with text over {TEXT_CHARS:,} characters "
                         "(the whole text is in each one's source blob)")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"  salvaged    line {f.line}: {_short(f.reason)}" for f in self.salvaged]
        lines += [f"  quarantined line {f.line}: {_short(f.reason)}" for f in self.quarantined]
        return "\n".join(lines)


def _short(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- numbers and text from a source ----------------------------------------------------


def number(value: Any, name: str, problems: list[str]) -> float | None:
    """A finite float from a source's value; anything else is left empty, with a note when it was there."""
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    if isinstance(value, int | float):
        x = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            x = float(text)
        except ValueError:
            problems.append(f"{name}={text[:20]!r} is not a number; left empty")
            return None
    else:
        problems.append(f"{name} is a {type(value).__name__}, not a number; left empty")
        return None
    if not math.isfinite(x):
        problems.append(f"{name}={x!r} is not finite; left empty")
        return None
    return x


def duration(value: Any, name: str, problems: list[str]) -> float | None:
    """A run's length in seconds: finite, not negative, not absurd; else empty with a note."""
    x = number(value, name, problems)
    if x is not None and not 0.0 <= x <= MAX_SECONDS:
        problems.append(f"{name}={x:g} is not a plausible duration in seconds; left empty")
        return None
    return x


def unix_time(value: Any, name: str, problems: list[str]) -> datetime | None:
    """A datetime from Unix seconds; out-of-range or non-finite values are left empty with a note."""
    x = number(value, name, problems)
    if x is None:
        return None
    try:
        return datetime.fromtimestamp(x, UTC)
    except (OverflowError, OSError, ValueError):
        problems.append(f"{name}={x:g} is not a Unix time; left empty")
        return None


def iso_time(text: str | None) -> datetime | None:
    try:
        t = datetime.fromisoformat((text or "").strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def metrics_of(values: Mapping[str, Any], problems: list[str], *, where: str = "metrics") -> dict[str, float]:
    """The numeric entries of a source's metrics (booleans as 0/1); others are skipped, non-finite ones noted."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, int | float) or value is None:
            x = number(value, f"{where}.{key}", problems)
            if x is not None:
                out[str(key)] = x
    return out


def last_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else ""


def not_finite(record: Record, value: Any) -> None:
    """A kept or discarded trial whose score is nan or inf produced no result: it diverged."""
    text = str(value).strip().lower() if value is not None else ""
    if record.score is None and record.label in (Label.KEEP, Label.DISCARD) and text.lstrip("+-") in (
            "nan", "inf", "infinity"):
        record.reason = f"score {text} is not finite (the source says {record.status})"
        record.label = Label.DIVERGED


# --- ids, sources and repeat imports ----------------------------------------------------------


def digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def search_id_for(source: Path, fmt: str, digests: Mapping[str, str]) -> str:
    """Derived from where the source is, its format and its files' digests: importing it again adds nothing."""
    key = json.dumps({"path": str(source), "format": fmt, "files": dict(digests)}, sort_keys=True)
    return str(uuid.uuid5(_NAMESPACE, key))


def already(ledger: Ledger, result: ImportResult) -> ImportResult | None:
    """The earlier import of the same source, if there was one."""
    if ledger.version(result.search_id) == 0:
        return None
    result.already = True
    for e in ledger.stream(result.search_id):
        if isinstance(e, ev.SearchStarted):
            result.name = e.name
        if isinstance(e, ev.SearchStopped):
            result.trials = int(e.summary.get("trials", 0))
    return result


def read_json(path: Path, what: str) -> Any:
    """A JSON file, or one clear error naming it. Python's reader takes NaN and Infinity as written."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror}; check the path and permissions") from e
    try:
        return json.loads(text)
    except ValueError as e:
        raise SourceError(f"{path} is not readable JSON ({str(e)[:120]}); it is not {what} as written") from None


def find_one(path: str | Path, what: str, *, names: Sequence[str] = (), patterns: Sequence[str] = ()) -> Path:
    """The file PATH means: itself, or in a folder the first of ``names`` there, else the one file
    matching ``patterns``; ``what`` names the file in messages ("an MLGym trajectory (.traj)")."""
    p = Path(path).expanduser().resolve()
    if p.is_file():
        return p
    if not p.is_dir():
        raise SourceError(f"no file or folder at {p}; give {what}")
    for name in names:
        if (p / name).is_file():
            return p / name
    found = sorted({f for pattern in patterns for f in p.glob(pattern) if f.is_file()})
    if len(found) == 1:
        return found[0]
    if found:
        shown = ", ".join(str(f.relative_to(p)) for f in found[:5])
        raise SourceError(f"{p} holds {len(found)} of them ({shown}); give one: {what}")
    raise SourceError(f"{p} holds no {what.removeprefix('an ').removeprefix('a ')}; give {what} or its folder")


def identity_key(ref: str) -> str:
    return ref.strip()


# --- building the search ------------------------------------------------------------------------


def record_import(
    ledger: Ledger,
    result: ImportResult,
    records: Sequence[Record],
    quarantined: list[Flagged],
    *,
    task: str,
    direction: str,
    config: dict[str, Any],
    key: Callable[[str], str] = identity_key,
    summary_extra: Mapping[str, Any] | None = None,
) -> ImportResult:
    """Turn the records into one search, append it in one go, and fill in ``result``."""
    trials = _unique(records, quarantined, key)
    parents = _resolve(trials, quarantined, key, result.lineage)
    result.trials = len(trials)
    result.rows = len(trials) + len(quarantined)
    result.quarantined = quarantined
    result.salvaged = [Flagged(t.line, "; ".join(t.problems), t.raw, t.source_id) for t in trials if t.problems]
    result.labels = _count(t.label.value for t in trials)
    times = [t.at for t in trials if t.at is not None]
    now = ev.now()
    started, stopped = min(times, default=now), max(times, default=now)
    search_id = result.search_id
    out: list[ev.Event] = [
        ev.SearchStarted(
            originator_id=search_id, originator_version=1, at=started, name=result.name, task=task,
            task_digest=next(iter(config.get("files", {}).values()), ""), direction=direction,
            config=config, arl_version=_arl_version(), kind="import",
        )
    ]
    programs: dict[int, dict[str, bytes]] = {}
    for seq, t in enumerate(trials):
        out += _trial_events(ledger, result, search_id, seq, t, parents[seq], programs, config["format"],
                             at=t.at or stopped)
    summary = {
        "format": config["format"],
        "rows": result.rows,
        "trials": result.trials,
        "salvaged": len(result.salvaged),
        "quarantined": [{"line": f.line, "id": f.id, "reason": f.reason, "raw": _clip(f.raw)[0]}
                        for f in quarantined],
        "labels": result.labels,
        "lineage": result.lineage.to_json(),
        "clipped": result.clipped,
        "programs": result.programs,
        **(summary_extra or {}),
    }
    if result.notes:
        summary["notes"] = list(result.notes)
    out.append(ev.SearchStopped(originator_id=search_id, originator_version=2, at=stopped,
                                reason="imported", summary=summary))
    ledger.append(*out)
    return result


def _unique(records: Sequence[Record], quarantined: list[Flagged], key: Callable[[str], str]) -> list[Record]:
    first: dict[str, Record] = {}
    out = []
    for r in records:
        k = key(r.source_id)
        if k in first:
            quarantined.append(Flagged(r.line, f"id {r.source_id[:40]!r} appears again (first at line "
                                               f"{first[k].line}); first row kept", r.raw, r.source_id))
            continue
        first[k] = r
        out.append(r)
    return out


def _resolve(trials: list[Record], quarantined: list[Flagged], key: Callable[[str], str],
             lineage: Lineage) -> list[int | None]:
    """Each trial's parent as a position among the trials, or None; breaks are counted and noted."""
    seq_of = {key(t.source_id): i for i, t in enumerate(trials)}
    lost = {key(f.id): f for f in quarantined if f.id}
    parents: list[int | None] = []
    for t in trials:
        if not t.parent or not t.parent.strip():
            parents.append(None)
            continue
        lineage.named += 1
        k = key(t.parent)
        why = None
        if k == key(t.source_id):
            why = "names its own row"
        elif k in seq_of:
            parents.append(seq_of[k])
            continue
        elif k in lost:
            why = "parent quarantined"
            t.extra["lineage"] = f"parent {t.parent[:40]!r} was quarantined (line {lost[k].line}): lineage break"
        else:
            why = "parent not in the source"
        t.extra.setdefault("lineage", f"parent {t.parent[:40]!r}: {why}; lineage break")
        lineage.breaks[why] = lineage.breaks.get(why, 0) + 1
        parents.append(None)
    _break_cycles(trials, parents, lineage)
    for i, p in enumerate(parents):
        if p is not None:
            lineage.resolved += 1
            if p > i:
                lineage.later += 1
                trials[i].extra["lineage"] = (f"parent {trials[i].parent!r} is written after this row "
                                              f"(line {trials[p].line}); edge kept")
    return parents


def _break_cycles(trials: list[Record], parents: list[int | None], lineage: Lineage) -> None:
    """Edges to later rows can close a loop (a→b→a); the edge that closes it is a lineage break."""
    state = [0] * len(parents)  # 0 unseen, 1 on the current walk, 2 done
    for start in range(len(parents)):
        walk, i = [], start
        while i is not None and state[i] == 0:
            state[i] = 1
            walk.append(i)
            i = parents[i]
        if i is not None and state[i] == 1:  # the walk came back onto itself: cut the last edge
            closing = walk[-1]
            why = "would close a cycle"
            trials[closing].extra["lineage"] = f"parent {trials[closing].parent!r} {why}; lineage break"
            lineage.breaks[why] = lineage.breaks.get(why, 0) + 1
            parents[closing] = None
        for j in walk:
            state[j] = 2


def _trial_events(
    ledger: Ledger, result: ImportResult, search_id: str, seq: int, t: Record, parent: int | None,
    programs: dict[int, dict[str, bytes]], fmt: str, *, at: datetime,
) -> list[ev.Event]:
    tid = ev.trial_id(search_id, seq)
    parent_id = ev.trial_id(search_id, parent) if parent is not None else None
    hypothesis, clipped_h = _clip(t.hypothesis)
    source: dict[str, Any] = {"id": t.source_id, "status": t.status, "line": t.line}
    whole: dict[str, Any] = {}
    clipped = clipped_h
    for name, value in (("notes", t.notes), ("raw", t.raw if t.problems else "")):
        if value:
            source[name], cut = _clip(value)
            clipped |= cut
    for k, v in t.extra.items():
        if isinstance(v, str):
            source[k], cut = _clip(v)
            clipped |= cut
        else:
            source[k] = v
    if t.parent:
        source["parent"] = t.parent[:TEXT_CHARS]
    if t.problems:
        source["salvaged"] = _clip("; ".join(t.problems))[0]
    source_digest = None
    if clipped:
        result.clipped += 1
        whole = {"format": fmt, "id": t.source_id, "hypothesis": t.hypothesis, "notes": t.notes, "raw": t.raw,
                 "reason": t.reason, "extra": t.extra}
        source_digest = ledger.put_blob(json.dumps(whole, ensure_ascii=False, default=str).encode())
        source["clipped"] = "text over the event's limit; the whole record is in the source blob"
    edit_digest = None
    program_digest = None
    if t.program:
        program_digest = put_program(ledger, t.program)
        programs[seq] = t.program
        result.programs += 1
    edit = t.edit
    if edit is None and t.program and parent is not None and parent in programs:
        edit = unified_diff(programs[parent], t.program) or None
    if edit:
        edit_digest = ledger.put_blob(edit.encode())
    wall_s = t.wall_s if t.wall_s is not None and math.isfinite(t.wall_s) else None
    proposed_at = at - timedelta(seconds=wall_s) if wall_s else at
    version = iter(range(1, 10))
    common = {"originator_id": tid, "search_id": search_id}
    out: list[ev.Event] = [
        ev.TrialProposed(
            **common, originator_version=next(version), at=proposed_at, seq=seq, agent=t.agent or "unknown",
            surface=t.surface or "unknown", parents=(parent_id,) if parent_id else (), hypothesis=hypothesis,
            expected_delta=_finite(t.expected_delta), backend=f"import:{fmt}", edit_digest=edit_digest,
            source=source, source_digest=source_digest,
        )
    ]
    reason = _clip(t.reason)[0] if t.reason else ""
    if t.rejected:
        out.append(ev.EditRejected(**common, originator_version=next(version), at=at, check=t.rejected,
                                   reason=reason or t.status))
    else:
        if program_digest:
            out.append(ev.TrialSubmitted(**common, originator_version=next(version), at=proposed_at,
                                         program_digest=program_digest))
        if wall_s is not None or t.exit_code is not None:
            exit_code = t.exit_code if t.exit_code is not None else (1 if t.label is Label.CRASH else 0)
            out.append(ev.RunFinished(**common, originator_version=next(version), at=at, runner="import",
                                      exit_code=exit_code, wall_s=wall_s or 0.0))
    score = _finite(t.score)
    if score is not None or t.metrics or t.checks:
        out.append(ev.TrialEvaluated(**common, originator_version=next(version), at=at, evaluator=f"import:{fmt}",
                                     score=score, metrics={k: _finite(v) for k, v in t.metrics.items()},
                                     checks=t.checks))
    out.append(ev.TrialLabeled(
        **common, originator_version=next(version), at=at, label=t.label,
        score=score if t.label.legal else None, improvement=t.label is Label.KEEP,
        delta_vs_best=_finite(t.delta_vs_best), reason=reason if not t.label.legal else "",
    ))
    return out


def _clip(text: str) -> tuple[str, bool]:
    if len(text) <= TEXT_CHARS:
        return text, False
    return text[:TEXT_CHARS] + f" … [clipped: {len(text):,} characters in all]", True


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _arl_version() -> str:
    from arl.ledger import __version__

    return __version__


# --- labels of ranked sources ---------------------------------------------------------------------


def rank(records: Sequence[Record], direction: str, measured: Callable[[Record], bool]) -> None:
    """Label legal trials keep or discard in order: keep when strictly better than every earlier
    baseline or keep, as arl decides; ``measured`` says which records are candidates, and each
    one's ``delta_vs_best`` is filled in."""
    best: float | None = None
    for r in records:
        if r.label is Label.BASELINE and r.score is not None:
            best = r.score if best is None or _better(direction, r.score, best) else best
            continue
        if not measured(r):
            continue
        if r.score is None:
            continue
        if best is not None:
            r.delta_vs_best = r.score - best
        if best is None or _better(direction, r.score, best):
            r.label = Label.KEEP
            best = r.score
        else:
            r.label = Label.DISCARD


def _better(direction: str, score: float, than: float) -> bool:
    return score < than if direction == "min" else score > than
