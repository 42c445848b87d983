"""`arl evaluate parameter-golf` over Parameter Golf record folders, against what each claims.

    python benchmarks/golf_records.py [RECORDS_DIR ...]

Each RECORDS_DIR is one record set (e.g. a checkout's ``records/track_10min_16mb``
or ``records/track_non_record_16mb``); the default is the shared fixture's March
records. Prints one Markdown row per record — the val_bpb it claims, the val_bpb
arl computes from its logs (mean over the distinct logs), the difference, the
closest single log, the largest artifact the logs state, the label — and per set
how many claims are reproduced within 0.001: by the mean of the logs, or by one
log (a record that claims its best seed, or holds logs of other experiments).

The claim is the record's ``submission*.json`` ``val_bpb`` (or ``mean_val_bpb``,
``val_bpb_mean``, one level down under any key), else the first ``val_bpb`` number in
its README. The logs are the folder's ``*.log`` / ``*.txt`` files that read as a run
of the challenge (they mention ``val_bpb`` or ``train_time``; a requirements.txt does not).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

# Run as a script: the repository root, not benchmarks/ (whose ledger.py shadows the package), comes first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arl.ledger.errors import ArlError  # noqa: E402
from arl.runners.evaluate import LOG_SUFFIXES, evaluate_folder  # noqa: E402

_SHARED = [Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")]
DEFAULT = next((r for r in _SHARED if r.is_dir()), _SHARED[0]) / "fixtures" / "parameter-golf-records" / "track_10min_16mb"
WITHIN = 0.001
_KEYS = ("val_bpb", "mean_val_bpb", "val_bpb_mean")
#: A README's claim: ``val_bpb: 1.2345``, ``val_bpb = 1.2345``, ``**val_bpb 1.2345**`` on one line (not a table).
_README_BPB = re.compile(r"val_bpb\**\s*[:=]?\s*\**\s*(\d\.\d{3,})", re.I)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def claimed(folder: Path) -> tuple[float | None, str]:
    """The record's claimed val_bpb and where it was found."""
    for submission in sorted(folder.glob("submission*.json")):
        try:
            data = json.loads(submission.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        for key in _KEYS:
            if (value := _number(data.get(key))) is not None:
                return value, f"{submission.name} {key}"
        for outer, inner in data.items():
            if isinstance(inner, dict):
                for key in _KEYS:
                    if (value := _number(inner.get(key))) is not None:
                        return value, f"{submission.name} {outer}.{key}"
    readme = folder / "README.md"
    if readme.is_file():
        m = _README_BPB.search(readme.read_text(errors="replace"))
        if m:
            return float(m[1]), "README.md"
    return None, ""


def _stage(folder: Path, into: Path) -> int:
    """Copy the folder's run logs into ``into``; returns how many files were left out."""
    left = 0
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix not in LOG_SUFFIXES:
            continue
        text = path.read_text(errors="replace")
        if "val_bpb" in text or "train_time" in text:
            shutil.copyfile(path, into / path.name)
        else:
            left += 1
    return left


def run_set(root: Path) -> tuple[int, int, int, int]:
    """Print one record set's table; returns (claims, by mean, by one log, either)."""
    print(f"\n### {root}\n")
    print("| record | logs | claimed val_bpb | computed (mean) | diff | closest log | diff | max artifact bytes "
          "| train s | eval s | label |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    claims = by_mean = by_log = either = 0
    nologs: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        claim, _where = claimed(folder)
        with tempfile.TemporaryDirectory() as tmp:
            _stage(folder, Path(tmp))
            try:
                result = evaluate_folder("parameter-golf", tmp)
            except ArlError:
                nologs.append(folder.name)
                continue
        checks = {c.name: c for c in result.checks}
        scores = [r.score for r in result.runs if r.score is not None] or (
            [result.score] if result.score is not None and len(result.runs) == 1 else [])
        mean_diff = None if claim is None or result.score is None else abs(result.score - claim)
        closest = min(scores, key=lambda s: abs(s - claim)) if claim is not None and scores else None
        log_diff = None if closest is None else abs(closest - claim)
        if claim is not None:
            claims += 1
            m = mean_diff is not None and mean_diff <= WITHIN
            one = log_diff is not None and log_diff <= WITHIN
            by_mean += m
            by_log += one
            either += m or one
        size = checks.get("artifact_bytes")

        def value(name: str) -> float | None:
            return checks[name].value if name in checks else None

        def num(x: float | None, spec: str) -> str:
            return "-" if x is None else format(x, spec)

        logs = sum(1 + len(r.copies) for r in result.runs)
        print(f"| {folder.name} | {logs} ({len(result.runs)} distinct) | {num(claim, '')} | {num(result.score, '.8f')} "
              f"| {num(mean_diff, '.5f')} | {num(closest, '.8f')} | {num(log_diff, '.5f')} "
              f"| {num(size.value if size else None, ',.0f')} | {num(value('train_s'), '')} "
              f"| {num(value('eval_s'), '')} | {result.label} |")
        if result.label == "crash":
            print(f"|  ↳ {result.reason[:300]} |||||||||||")
    print(f"\n{either} of {claims} records with a claimed val_bpb reproduce it within {WITHIN} "
          f"({by_mean} by the mean of their logs, {by_log} by one log)")
    if nologs:
        print(f"{len(nologs)} record(s) hold no run log arl can read: {', '.join(nologs)}")
    return claims, by_mean, by_log, either


def main(roots: list[Path]) -> None:
    for root in roots:
        run_set(root)


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]] or [DEFAULT])
