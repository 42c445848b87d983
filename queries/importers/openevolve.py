"""OpenEvolve: checkpoint folders (``metadata.json`` and ``programs/<id>.json``).

Each program has ``id``, ``code``, ``language``, ``parent_id``,
``generation``, ``iteration_found``, ``timestamp``, ``metrics`` and
``metadata`` (``island``, ``changes``). A checkpoint holds the population of
its iteration only, so given the output folder every checkpoint is read and
their programs united: a program dropped from the population between
checkpoints is still found in an earlier one.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from arl.ledger import Ledger
from arl.ledger.events import Label
from arl.queries.importers.core import (
    Flagged,
    ImportResult,
    Record,
    SourceError,
    already,
    digest_file,
    last_line,
    metrics_of,
    not_finite,
    number,
    rank,
    record_import,
    search_id_for,
    unix_time,
)

_EXT = {"python": ".py", "javascript": ".js", "typescript": ".ts", "rust": ".rs", "cpp": ".cpp", "c": ".c",
        "go": ".go", "java": ".java", "julia": ".jl", "r": ".R", "text": ".txt", "verilog": ".v"}
#: A program file larger than this is not a program record.
PROGRAM_JSON_BYTES = 32 << 20


def find_checkpoints(path: str | Path) -> tuple[Path, list[Path]]:
    """(the folder given, its checkpoint folders oldest first) for a checkpoint or an output folder."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise SourceError(f"no folder at {p}; give an OpenEvolve checkpoint folder or its openevolve_output")
    if (p / "programs").is_dir():
        return p, [p]
    for root in (p, p / "checkpoints", p / "openevolve_output" / "checkpoints"):
        found = [c for c in root.glob("checkpoint_*") if (c / "programs").is_dir()] if root.is_dir() else []
        if found:
            return p, sorted(found, key=_iteration)
    raise SourceError(f"{p} holds no OpenEvolve checkpoint (a folder with programs/ and metadata.json); "
                      "give a checkpoint_N folder or the openevolve_output folder")


def _iteration(folder: Path) -> int:
    m = re.search(r"(\d+)$", folder.name)
    return int(m.group(1)) if m else -1


def import_openevolve(ledger: Ledger, path: str | Path, *, name: str | None = None,
                      score: str | None = None) -> ImportResult:
    """Import OpenEvolve checkpoints as a search: one trial per program, its code as the program.

    ``score``: the metric to rank by (default ``combined_score``; without one,
    the mean of the numeric metrics, as OpenEvolve itself ranks).
    """
    root, checkpoints = find_checkpoints(path)
    files = sorted(f for c in checkpoints for f in [c / "metadata.json", *(c / "programs").glob("*.json")]
                   if f.is_file())
    digests = {str(f.relative_to(root)): digest_file(f) for f in files}
    default = root.parent.name if root.name in ("openevolve_output", "checkpoints") else root.name
    result = ImportResult(search_id_for(root, "openevolve", digests), name or default, str(root), "openevolve")
    if (done := already(ledger, result)) is not None:
        return done
    programs: dict[str, tuple[Path, dict[str, Any]]] = {}
    quarantined: list[Flagged] = []
    position: dict[str, int] = {}
    for checkpoint in checkpoints:  # later checkpoints win: a program's metrics may have been updated
        for f in sorted((checkpoint / "programs").glob("*.json")):
            position.setdefault(str(f.relative_to(root)), len(position) + 1)
            line = position[str(f.relative_to(root))]
            program = _read_program(f, line, quarantined)
            if program is not None:
                programs[program["id"]] = (f, program)
    quarantined = _distinct(quarantined)
    meta = _metadata(checkpoints[-1])
    records = [_record(position[str(f.relative_to(root))], f, p) for f, p in programs.values()]
    raw = {pid: p.get("metrics") if isinstance(p.get("metrics"), dict) else {} for pid, (_, p) in programs.items()}
    # Creation time orders them: a migrant copy carries iteration 0 whenever it was made.
    records.sort(key=lambda r: (r.at.timestamp() if r.at else math.inf, r.extra.get("iteration_found", 0), r.line))
    score_name = score or _score_name(records)
    for r in records:
        r.score = _score(r, score_name)
        not_finite(r, raw.get(r.source_id, {}).get(score_name))
        if r.score is None and r.label is Label.KEEP:
            r.label, r.reason = Label.CRASH, f"no {score_name} recorded"
    baseline = next((r for r in records if r.parent is None and r.label is Label.KEEP
                     and r.extra.get("generation", 0) == 0), None)
    if baseline is not None:
        baseline.label, baseline.status = Label.BASELINE, "initial program"
    rank(records, "max", lambda r: r.label is Label.KEEP)
    result.notes.append(f"{len(checkpoints)} checkpoint(s) read; programs ranked by {score_name}")
    config = {"format": "openevolve", "source": str(root), "files": digests, "score": score_name,
              "best_program_id": meta.get("best_program_id"), "last_iteration": meta.get("last_iteration")}
    return record_import(ledger, result, records, quarantined, task="openevolve", direction="max", config=config,
                         summary_extra={"checkpoints": [c.name for c in checkpoints]})


def _read_program(f: Path, line: int, quarantined: list[Flagged]) -> dict[str, Any] | None:
    try:
        if f.is_symlink() or f.stat().st_size > PROGRAM_JSON_BYTES:
            quarantined.append(Flagged(line, f"{f.name} is a link or over {PROGRAM_JSON_BYTES >> 20} MiB; not read",
                                       "", f.stem))
            return None
        text = f.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        quarantined.append(Flagged(line, f"{f.name} cannot be read ({e.strerror})", "", f.stem))
        return None
    try:
        data = json.loads(text)
    except ValueError as e:
        quarantined.append(Flagged(line, f"{f.name} is not JSON ({str(e)[:80]})", text[:2000], f.stem))
        return None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"].strip():
        quarantined.append(Flagged(line, f"{f.name} has no program id", text[:2000], f.stem))
        return None
    return data


def _distinct(flags: list[Flagged]) -> list[Flagged]:
    """A broken file seen in several checkpoints is one quarantined row."""
    seen: dict[tuple[str | None, str], Flagged] = {}
    for f in flags:
        seen.setdefault((f.id, f.reason), f)
    return list(seen.values())


def _metadata(checkpoint: Path) -> dict[str, Any]:
    try:
        data = json.loads((checkpoint / "metadata.json").read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record(line: int, f: Path, p: dict[str, Any]) -> Record:
    problems: list[str] = []
    raw_metrics = p.get("metrics") if isinstance(p.get("metrics"), dict) else {}
    metrics = metrics_of(raw_metrics, problems)
    meta = p.get("metadata") if isinstance(p.get("metadata"), dict) else {}
    island = meta.get("island")
    where = f"island{island}" if isinstance(island, int) else "population"
    code = p.get("code")
    language = str(p.get("language") or "python")
    label, status, reason = Label.KEEP, "evaluated", ""
    error = raw_metrics.get("error")
    if meta.get("migrant") is True:
        label, status = Label.DUPLICATE, "migrant"
        reason = f"a copy of {str(p.get('parent_id'))[:8]} moved to {where}: not a new evaluation"
    elif raw_metrics.get("timeout") is True:
        label, status, reason = Label.EVAL_BUDGET_OVERRUN, "timeout", "the evaluation timed out"
    elif "error" in raw_metrics:
        label, status = Label.CRASH, "error"
        reason = last_line(str(error)) if isinstance(error, str) else "the evaluator reported an error"
    iteration = p.get("iteration_found")
    generation = p.get("generation")
    changes = meta.get("changes") if isinstance(meta.get("changes"), str) else ""
    return Record(
        line=line, raw=f.name, source_id=p["id"].strip(), status=status, label=label, agent=where, surface=where,
        hypothesis=changes, parent=p.get("parent_id") if isinstance(p.get("parent_id"), str) else None,
        metrics=metrics, at=unix_time(p.get("timestamp"), "timestamp", problems), reason=reason,
        program={f"program{_EXT.get(language.lower(), '.' + re.sub(r'[^a-z0-9]', '', language.lower())[:8])}":
                 code.encode()} if isinstance(code, str) and code else None,
        extra={k: v for k, v in (("generation", generation), ("iteration_found", iteration), ("island", island),
                                 ("error", error if isinstance(error, str) else None)) if v is not None},
        problems=problems,
    )


def _score_name(records: list[Record]) -> str:
    if any("combined_score" in r.metrics for r in records):
        return "combined_score"
    return "mean of numeric metrics"


def _score(r: Record, name: str) -> float | None:
    if name == "mean of numeric metrics":
        values = [v for k, v in r.metrics.items() if k not in ("error", "timeout")]
        return sum(values) / len(values) if values else None
    return number(r.metrics.get(name), name, r.problems)
