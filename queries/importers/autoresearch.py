"""karpathy/autoresearch: ``results.tsv`` with ``commit val_bpb memory_gb status description``."""

from __future__ import annotations

import re
from pathlib import Path

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.ledger.events import Label
from arl.queries.importers.core import (
    Flagged,
    ImportResult,
    Record,
    already,
    digest_file,
    not_finite,
    number,
    record_import,
    search_id_for,
)
from arl.queries.importers.recipes import locate
from arl.queries.importers.tsv import TsvFormat, read_rows

AUTORESEARCH_LABELS: dict[str, Label] = {
    "keep": Label.KEEP,
    "discard": Label.DISCARD,
    "crash": Label.CRASH,
}


class AutoresearchFormat(TsvFormat):
    name = "autoresearch"
    row_start = re.compile(r"[0-9a-fA-F]{4,40}\t")
    text_columns = frozenset({"commit", "status", "description"})
    free_text = ("description",)
    required = frozenset({"commit", "val_bpb", "status", "description"})
    statuses = frozenset(AUTORESEARCH_LABELS)

    def fatal(self, values: dict[str, str | None]) -> str | None:
        commit = values.get("commit") or ""
        if not re.fullmatch(r"[0-9a-fA-F]{4,40}", commit):
            return f"commit {commit[:20]!r} is not a git hash"
        status = (values.get("status") or "").strip()
        if status not in AUTORESEARCH_LABELS:
            return f"status {status[:30]!r} of commit {commit} is unknown (known: keep, discard, crash)"
        return None


def import_autoresearch(ledger: Ledger, path: str | Path, *, name: str | None = None) -> ImportResult:
    """Import a karpathy/autoresearch ``results.tsv`` as a search.

    Its first row is the baseline; each experiment starts from the latest
    kept commit (the branch it was made on), which becomes its parent.
    Crashed rows log ``val_bpb`` 0: their score is left empty.
    """
    folder, results = locate(path, "autoresearch")
    fmt = AutoresearchFormat()
    digests = {"results.tsv": digest_file(results)}
    result = ImportResult(search_id_for(results, fmt.name, digests), name or folder.name, str(results), fmt.name)
    if (done := already(ledger, result)) is not None:
        return done
    header, rows, quarantined = read_rows(results, fmt)
    now = ev.now()
    records: list[Record] = []
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
        label = Label.BASELINE if not records else AUTORESEARCH_LABELS[status]
        bpb = number(v.get("val_bpb"), "val_bpb", row.problems)
        score = None if label is Label.CRASH or not bpb else bpb
        memory = number(v.get("memory_gb"), "memory_gb", row.problems)
        metrics = {c: x for c, x in (("val_bpb", bpb), ("memory_gb", memory)) if x is not None and score is not None}
        record = Record(
            line=row.line, raw=row.raw, source_id=commit, status=status, label=label, agent="agent",
            surface="train.py", hypothesis=v.get("description") or "", parent=best_commit, score=score,
            metrics=metrics, at=now, problems=row.problems,
        )
        not_finite(record, v.get("val_bpb"))
        records.append(record)
        if record.label in (Label.BASELINE, Label.KEEP):
            best_commit = commit
    _fill_deltas(records)
    config = {"format": fmt.name, "source": str(results), "files": digests, "score": "val_bpb"}
    return record_import(ledger, result, records, quarantined, task="autoresearch", direction="min", config=config)


def _fill_deltas(records: list[Record]) -> None:
    """autoresearch logs no deltas: compute each scored trial's delta vs the best before it."""
    best: float | None = None
    for t in records:
        if t.score is not None and best is not None:
            t.delta_vs_best = t.score - best
        if t.score is not None and t.label in (Label.BASELINE, Label.KEEP):
            best = t.score if best is None else min(best, t.score)
