"""golf-mini evaluator: validation bits per byte, computed here from the model's distributions.

For each seed's run the harness (task code, run in the sandbox) loads the trained
weights through the program's ``load`` and writes ``log_probs`` rows — and it does so
twice, in two sandboxes that share nothing writable, in random order:

* on the held-out text ``val`` — the **scored call**: bits per byte come from it;
* on ``alt``, the same text with single bytes replaced at secret random positions
  ``P`` (at least ``GAP`` bytes apart, drawn fresh for every evaluation; the new bytes
  are drawn from the text itself, so nothing marks them).

A row may depend on the bytes before it, never on its own byte or later ones. Every
row whose last ``CONTEXT_LIMIT`` bytes are the same in both inputs — each ``p`` in
``P`` among them, whose own byte differs — must come out the same in both calls
(check ``causal``). So a program that reads the byte it is scored on, or anything
after it (directly, or by memorising its input in ``load()`` or in ``log_probs``), is
caught on the very call that is scored whenever it does so at a position of ``P``:
cheating on a fraction f of the bytes escapes with probability about (1 - f)^|P|
(|P| is about 130 on the 206 KB held-out text). The threats each part closes:

* the scored byte or later bytes used by the scored call → ``causal`` at ``P``;
* a probe told apart from the scored call (the 1 KiB probe of evaluator v1 was) →
  both calls are full length and look alike; which one is scored is secret;
* the calls comparing notes (one leaves its input where the other reads it) → each
  call gets its own fresh folder with its own copy of the program and the model, and
  nothing else writable;
* links, pipes and sockets in the outputs → never copied or read (check ``outputs``,
  ``illegal_edit``); results are read without following links.

A program's predictions may use at most the last ``CONTEXT_LIMIT`` bytes exactly (the
base recipe uses 128); a longer memory may fail ``causal``. The artifact is every
file of the program plus every file the run wrote to ARL_OUT.
"""

from __future__ import annotations

import math
import secrets
import sys
from pathlib import Path

import numpy as np

from arl.tasks.evaluation import Check, EvalContext, Evaluation, Label
from arl.tasks.outputs import OutputError, call_folder, files, open_file
from arl.tasks.outputs import check as outputs_check

VERSION = "2"
HARNESS = Path(__file__).with_name("harness.py")
#: A row's probabilities must sum to 1 within this.
NORM_TOL = 1e-3
#: A compared row may differ by this much (largest probability) between the two calls.
CAUSAL_TOL = 1e-4
#: Rows whose last this-many bytes agree in both inputs are compared.
CONTEXT_LIMIT = 1024
#: Altered positions lie between GAP and 2 * GAP bytes apart.
GAP = CONTEXT_LIMIT + 1
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

    val = np.fromfile(ctx.heldout / "val.txt", dtype=np.uint8)
    per_seed: dict[int, float] = {}
    worst: dict[str, tuple[float, str]] = {}  # check name -> (worst value, detail)

    def note(name: str, value: float, detail: str) -> None:
        if name not in worst or value > worst[name][0]:
            worst[name] = (value, detail)

    for run in ctx.runs:
        workspace, out = Path(run.workspace), Path(run.out)
        reached = outputs_check({"ARL_OUT": out, "workspace": workspace})
        note("outputs", reached.value, f"seed {run.seed}: {reached.detail}" if not reached.passed else "")
        if not reached.passed:
            continue
        code = sum(size for _, size in files(workspace, skip=("__pycache__",)))
        weights = sum(size for _, size in files(out))
        note("artifact_bytes", code + weights, f"seed {run.seed}: code {code} + weights {weights} bytes")
        alt, altered = _altered(val)
        rows: dict[str, np.ndarray] = {}
        # Random order: nothing about the sequence of calls says which one is scored.
        for name in sorted(("val", "alt"), key=lambda _: secrets.randbits(32)):
            lp, problem, wall = _call(ctx, run, val if name == "val" else alt)
            note("eval_s", wall, f"seed {run.seed}")
            if problem:
                note("harness", 1.0, f"seed {run.seed}: {problem}")
                break
            rows[name] = lp
        if len(rows) < 2:
            continue
        note("harness", 0.0, "")
        bits, norm_err, finite = _score(rows["val"], val)
        note("finite", 0.0 if finite else 1.0, f"seed {run.seed}")
        note("normalised", norm_err, f"seed {run.seed}: largest |sum(p) - 1| over {len(val)} rows")
        compared = _compared(len(val), altered)
        diff, at = _largest_change(rows["val"], rows["alt"], compared)
        note("causal", diff, f"seed {run.seed}: largest change of a prediction whose last {CONTEXT_LIMIT} "
             f"bytes were unchanged, over {int(compared.sum())} rows and {len(altered)} altered bytes"
             + (f" (row {at})" if diff > CAUSAL_TOL else ""))
        if finite:
            per_seed[run.seed] = bits

    checks += [
        _check(worst, "outputs", 0.0, Label.ILLEGAL_EDIT),
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


def _altered(val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``val`` with single bytes replaced at secret positions GAP..2*GAP apart,
    each by a byte drawn from the text itself that differs from the one it replaces."""
    rng = np.random.default_rng(secrets.randbits(128))
    positions, p = [], int(rng.integers(GAP, 2 * GAP))
    while p < len(val):
        positions.append(p)
        p += int(rng.integers(GAP, 2 * GAP))
    alt = val.copy()
    if len(np.unique(val)) < 2:
        return alt, np.asarray([], dtype=np.int64)
    for p in positions:
        while (b := val[int(rng.integers(0, len(val)))]) == val[p]:
            pass
        alt[p] = b
    return alt, np.asarray(positions, dtype=np.int64)


def _compared(n: int, altered: np.ndarray) -> np.ndarray:
    """Rows whose previous CONTEXT_LIMIT bytes are the same in both inputs (a row's own byte may differ)."""
    keep = np.ones(n, dtype=bool)
    for p in altered:
        keep[p + 1: p + 1 + CONTEXT_LIMIT] = False
    return keep


def _call(ctx: EvalContext, run, data: np.ndarray) -> tuple[np.ndarray | None, str, float]:
    """One harness call in a folder of its own: (rows, problem or "", wall seconds)."""
    try:
        call = call_folder(ctx.scratch, Path(run.workspace), Path(run.out))
    except OutputError as e:
        return None, str(e), 0.0
    data.tofile(call / "input.bin")
    (call / "result").mkdir()
    proc = ctx.run([sys.executable, str(HARNESS), str(call / "model"), str(call / "input.bin"),
                    str(call / "result")],
                   cwd=call / "program", timeout_s=ctx.task.budgets.eval_s * EVAL_KILL_FACTOR, env={},
                   writable=[call])
    if not proc.ok:
        tail = (proc.stderr_tail.strip().splitlines() or [f"killed for {proc.killed_for}"])[-1]
        return None, f"evaluation failed: {tail[-300:]}", proc.wall_s
    try:
        with open_file(call / "result", "log_probs.npy") as f:
            lp = np.load(f, allow_pickle=False)
    except (OSError, ValueError) as e:
        return None, f"unreadable harness output ({e})", proc.wall_s
    if lp.shape != (len(data), 256):
        return None, f"log_probs has shape {lp.shape}, expected ({len(data)}, 256)", proc.wall_s
    return lp, "", proc.wall_s


def _largest_change(a: np.ndarray, b: np.ndarray, rows: np.ndarray, chunk: int = 16384) -> tuple[float, int]:
    """Largest |p_a - p_b| over the given rows, and the row where it is."""
    worst, at = 0.0, -1
    for i in range(0, len(a), chunk):
        sel = np.flatnonzero(rows[i: i + chunk]) + i
        if not len(sel):
            continue
        d = np.abs(np.exp(a[sel].astype(np.float64)) - np.exp(b[sel].astype(np.float64)))
        d = np.nan_to_num(d, nan=np.inf).max(axis=1)
        j = int(d.argmax())
        if d[j] > worst:
            worst, at = float(d[j]), int(sel[j])
    return worst, at


def _score(lp: np.ndarray, val: np.ndarray, rows: int = 16384) -> tuple[float, float, bool]:
    """Bits per byte, largest normalisation error and finiteness, in chunks (lp may be 200 MB)."""
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
