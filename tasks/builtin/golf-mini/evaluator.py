"""golf-mini evaluator: validation bits per byte, computed here from the model's distributions.

For each seed's run: the harness (task code, run in the sandbox) loads the trained
weights through the program's ``load`` and writes ``log_probs`` over the held-out
works; this module checks those rows are normalised distributions, that earlier
predictions ignore later bytes, and scores bits per byte. The artifact is every file
of the program plus every file the run wrote to ARL_OUT.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np

from arl.tasks.evaluation import Check, EvalContext, Evaluation, Label

VERSION = "1"
HARNESS = Path(__file__).with_name("harness.py")
#: A row's probabilities must sum to 1 within this.
NORM_TOL = 1e-3
#: Predictions for the probe's first half may differ by this much when its second half changes.
CAUSAL_TOL = 1e-4
#: The harness is killed at this multiple of the eval budget (the check fails long before).
EVAL_KILL_FACTOR = 3.0


def evaluate(ctx: EvalContext) -> Evaluation:
    budgets, gates = ctx.task.budgets, ctx.task.gates
    train_s = max(r.process.wall_s for r in ctx.runs)
    checks = [Check(name="train_s", passed=train_s <= budgets.train_s, value=round(train_s, 3),
                    limit=budgets.train_s, fails_as=Label.TRAIN_BUDGET_OVERRUN)]
    metrics: dict[str, float] = {"train_s": train_s}
    if not all(r.process.ok for r in ctx.runs):
        return Evaluation(score=None, metrics=metrics, checks=checks)

    val_file = ctx.scratch / "val.bin"
    shutil.copyfile(ctx.heldout / "val.txt", val_file)
    val = np.fromfile(val_file, dtype=np.uint8)
    per_seed: dict[int, float] = {}
    worst: dict[str, tuple[float, str]] = {}  # check name -> (worst value, detail)

    def note(name: str, value: float, detail: str) -> None:
        if name not in worst or value > worst[name][0]:
            worst[name] = (value, detail)

    for run in ctx.runs:
        workspace, out = Path(run.workspace), Path(run.out)
        code = sum(p.stat().st_size for p in _files(workspace))
        weights = sum(p.stat().st_size for p in _files(out))
        note("artifact_bytes", code + weights, f"seed {run.seed}: code {code} + weights {weights} bytes")
        # The sandbox shows the harness the workspace and the scratch folder only.
        result = ctx.scratch / f"seed-{run.seed}"
        shutil.copytree(out, result / "out")
        proc = ctx.run([sys.executable, str(HARNESS), str(result / "out"), str(val_file), str(result)],
                       cwd=workspace, timeout_s=budgets.eval_s * EVAL_KILL_FACTOR, env={})
        note("eval_s", proc.wall_s, f"seed {run.seed}")
        if not proc.ok:
            tail = (proc.stderr_tail.strip().splitlines() or [f"killed for {proc.killed_for}"])[-1]
            note("harness", 1.0, f"seed {run.seed}: evaluation failed: {tail[-300:]}")
            continue
        try:
            lp = np.load(result / "log_probs.npy", mmap_mode="r")
            probe = np.load(result / "causal.npz")
            same, changed = probe["same"], probe["changed"]
        except (OSError, ValueError, KeyError) as e:
            note("harness", 1.0, f"seed {run.seed}: unreadable harness output ({e})")
            continue
        if lp.shape != (len(val), 256) or same.shape != changed.shape or same.ndim != 2:
            note("harness", 1.0, f"seed {run.seed}: log_probs has shape {lp.shape}, "
                 f"expected ({len(val)}, 256)")
            continue
        note("harness", 0.0, "")
        bits, norm_err, finite = _score(lp, val)
        note("finite", 0.0 if finite else 1.0, f"seed {run.seed}")
        note("normalised", norm_err, f"seed {run.seed}: largest |sum(p) - 1| over {len(val)} rows")
        half = same.shape[0] // 2 + 1
        diff = float(np.nan_to_num(np.abs(same[:half] - changed[:half]), nan=np.inf).max())
        note("causal", diff, f"seed {run.seed}: largest change of an earlier prediction")
        if finite:
            per_seed[run.seed] = bits

    checks += [
        _check(worst, "eval_s", budgets.eval_s, Label.EVAL_BUDGET_OVERRUN),
        _check(worst, "harness", 0.0, Label.CRASH),
        _check(worst, "finite", 0.0, Label.DIVERGED),
        _check(worst, "normalised", NORM_TOL, Label.GATE_MISS),
        _check(worst, "causal", CAUSAL_TOL, Label.GATE_MISS),
    ]
    if gates.artifact_bytes is not None:
        checks.append(_check(worst, "artifact_bytes", gates.artifact_bytes, Label.SIZE_VIOLATION))
    checks = [c for c in checks if c is not None]
    for name, (value, _) in worst.items():
        metrics[name] = value
    score = None
    if per_seed and len(per_seed) == len(ctx.runs):
        score = float(np.mean(list(per_seed.values())))
        metrics["val_bpb"] = score
    return Evaluation(score=score, metrics=metrics, checks=checks, per_seed=per_seed)


def _score(lp: np.ndarray, val: np.ndarray, rows: int = 16384) -> tuple[float, float, bool]:
    """Bits per byte, largest normalisation error and finiteness, in chunks (lp may be 300 MB)."""
    nll, norm_err = 0.0, 0.0
    for i in range(0, len(val), rows):
        block = np.asarray(lp[i: i + rows], dtype=np.float64)
        if not np.isfinite(block).all():
            return math.inf, math.inf, False
        norm_err = max(norm_err, float(np.abs(np.exp(block).sum(axis=1) - 1).max()))
        nll -= float(block[np.arange(len(block)), val[i: i + rows]].sum())
    return nll / len(val) / math.log(2), norm_err, True


def _check(worst: dict[str, tuple[float, str]], name: str, limit: float, fails_as: Label) -> Check | None:
    if name not in worst:
        return None
    value, detail = worst[name]
    value = float(value)
    return Check(name=name, passed=value <= limit, value=round(value, 6) if math.isfinite(value) else value,
                 limit=limit, detail=detail, fails_as=fails_as)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
