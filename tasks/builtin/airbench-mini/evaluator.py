"""airbench-mini evaluator: the score is the program's wallclock, legal only above the accuracy gate.

Wallclock, per seed, is the training process's wall time plus the evaluation
harness's (the program's ``load`` and ``predict``), both measured from outside,
averaged over the seeds: work moved from training into ``load()`` at evaluation time
is still on the clock. Accuracy: for each seed the harness (task code, run in the
sandbox) loads the saved model and writes logits for the unlabeled test images; this
module, which alone holds the labels, scores them. The threats each part closes:

* a link in ARL_OUT to the held-out labels (or anything outside) → outputs are
  checked (``outputs``, ``illegal_edit``) and copied without following links;
* training inside ``load()`` to shorten the timed run → the harness's time counts;
* one seed's harness writing into another's (or the evaluator's) folders → each call
  gets its own fresh folder with its own copies of the program, the model and the
  images, and nothing else writable; results are read without following links.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np

from arl.tasks.evaluation import Check, EvalContext, Evaluation, Label
from arl.tasks.outputs import OutputError, call_folder, open_file
from arl.tasks.outputs import check as outputs_check

VERSION = "2"
HARNESS = Path(__file__).with_name("harness.py")
#: The harness is killed at this multiple of the eval budget (the check fails long before).
EVAL_KILL_FACTOR = 3.0


def evaluate(ctx: EvalContext) -> Evaluation:
    budgets, gates = ctx.task.budgets, ctx.task.gates
    walls = {r.seed: r.process.wall_s for r in ctx.runs}
    train_s = max(walls.values())
    metrics: dict[str, float] = {"train_s": train_s, "mean_train_s": float(np.mean(list(walls.values())))}
    for seed, wall in walls.items():
        metrics[f"train_s_seed{seed}"] = wall
    checks = [Check(name="train_s", passed=train_s <= budgets.train_s, value=round(train_s, 3),
                    limit=budgets.train_s, detail=f"slowest of {len(walls)} seeds",
                    fails_as=Label.TRAIN_BUDGET_OVERRUN)]
    if not all(r.process.ok for r in ctx.runs):
        return Evaluation(score=None, metrics=metrics, checks=checks)

    labels = np.load(ctx.heldout / "labels.npy")
    accuracy: dict[int, float] = {}
    eval_walls: dict[int, float] = {}
    eval_s, problems, reached = 0.0, [], []
    for run in ctx.runs:
        found = outputs_check({"ARL_OUT": Path(run.out), "workspace": Path(run.workspace)})
        if not found.passed:
            reached.append(f"seed {run.seed}: {found.detail}")
            continue
        try:
            call = call_folder(ctx.scratch, Path(run.workspace), Path(run.out))
        except OutputError as e:
            reached.append(f"seed {run.seed}: {e}")
            continue
        shutil.copyfile(ctx.heldout / "images.npy", call / "images.npy")  # images only: the labels stay here
        proc = ctx.run([sys.executable, str(HARNESS), str(call / "model"), str(call / "images.npy"),
                        str(call / "logits.npy")],
                       cwd=call / "program", timeout_s=budgets.eval_s * EVAL_KILL_FACTOR, env={},
                       writable=[call])
        eval_s = max(eval_s, proc.wall_s)
        eval_walls[run.seed] = proc.wall_s
        if not proc.ok:
            tail = (proc.stderr_tail.strip().splitlines() or [f"killed for {proc.killed_for}"])[-1]
            problems.append(f"seed {run.seed}: evaluation failed: {tail[-300:]}")
            continue
        try:
            with open_file(call, "logits.npy") as f:
                logits = np.load(f, allow_pickle=False)
        except (OSError, ValueError) as e:
            problems.append(f"seed {run.seed}: unreadable logits ({e})")
            continue
        if logits.shape != (len(labels), 10):
            problems.append(f"seed {run.seed}: logits have shape {logits.shape}, expected ({len(labels)}, 10)")
            continue
        if not np.isfinite(logits).all():
            problems.append(f"seed {run.seed}: non-finite logits")
            accuracy[run.seed] = math.nan
            continue
        accuracy[run.seed] = float((logits.argmax(axis=1) == labels).mean())

    checks.append(Check(name="outputs", passed=not reached, value=float(len(reached)), limit=0.0,
                        detail="; ".join(reached)[:500], fails_as=Label.ILLEGAL_EDIT))
    if reached:
        return Evaluation(score=None, metrics=metrics, checks=checks)
    metrics["eval_s"] = eval_s
    checks.append(Check(name="eval_s", passed=eval_s <= budgets.eval_s, value=round(eval_s, 3),
                        limit=budgets.eval_s, detail="slowest seed", fails_as=Label.EVAL_BUDGET_OVERRUN))
    broken = [p for p in problems if "non-finite" not in p]
    checks.append(Check(name="harness", passed=not broken, value=float(len(broken)), limit=0.0,
                        detail="; ".join(broken)[:500], fails_as=Label.CRASH))
    finite = all(math.isfinite(a) for a in accuracy.values())
    checks.append(Check(name="finite", passed=finite, value=0.0 if finite else 1.0, limit=0.0,
                        detail="; ".join(p for p in problems if "non-finite" in p), fails_as=Label.DIVERGED))
    if broken or not finite:
        return Evaluation(score=None, metrics=metrics, checks=checks)

    for seed, acc in accuracy.items():
        metrics[f"accuracy_seed{seed}"] = acc
    mean_acc = float(np.mean(list(accuracy.values())))
    metrics["accuracy"] = mean_acc
    if gates.accuracy is not None:
        checks.append(Check(name="accuracy", passed=mean_acc >= gates.accuracy, value=round(mean_acc, 5),
                            limit=gates.accuracy, detail=f"mean test accuracy over {len(accuracy)} seeds",
                            fails_as=Label.GATE_MISS))
    per_seed = {seed: wall + eval_walls[seed] for seed, wall in walls.items()}
    for seed, eval_wall in eval_walls.items():
        metrics[f"eval_s_seed{seed}"] = eval_wall
    score = metrics["wall_s"] = float(np.mean(list(per_seed.values())))
    return Evaluation(score=score, metrics=metrics, checks=checks, per_seed=per_seed)
