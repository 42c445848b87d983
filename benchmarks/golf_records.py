"""`arl evaluate parameter-golf` over every Parameter Golf record folder, against what each claims.

    python benchmarks/golf_records.py [RECORDS_DIR]

RECORDS_DIR defaults to the shared fixture (26 records of openai/parameter-golf's
records/track_10min_16mb). Prints one Markdown row per record: the val_bpb its
submission.json claims, the val_bpb arl computes from the logs (mean over the
distinct logs), the difference, the largest artifact the logs state, and the label.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Run as a script: the repository root, not benchmarks/ (whose ledger.py shadows the package), comes first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arl.runners.evaluate import evaluate_folder  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parameter-golf-records" / "track_10min_16mb"


def claimed(folder: Path) -> float | None:
    submission = next(iter(sorted(folder.glob("submission*.json"))), None)
    if submission is None:
        return None
    data = json.loads(submission.read_text())
    value = data.get("val_bpb", data.get("mean_val_bpb"))
    return None if value is None else float(value)


def main(root: Path) -> None:
    print("| record | logs | claimed val_bpb | computed val_bpb | diff | max artifact bytes | train s | eval s | label |")
    print("|---|---|---|---|---|---|---|---|---|")
    within = total = 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        result = evaluate_folder("parameter-golf", folder)
        checks = {c.name: c for c in result.checks}
        claim = claimed(folder)
        diff = "-" if claim is None or result.score is None else f"{abs(result.score - claim):.5f}"
        if diff != "-":
            total += 1
            within += float(diff) <= 0.001
        logs = sum(1 + len(r.copies) for r in result.runs)
        size = checks.get("artifact_bytes")
        print(f"| {folder.name} | {logs} ({len(result.runs)} distinct) | {claim if claim is not None else '-'} | "
              f"{result.score:.8f} | {diff} | {size.value:,.0f} | {checks['train_s'].value} | "
              f"{checks['eval_s'].value} | {result.label} |")
    print(f"\n{within} of {total} records with a claimed val_bpb reproduce it within 0.001")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
