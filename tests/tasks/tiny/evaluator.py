"""Score = held-out MSE, averaged over seeds; checks for every gate of the tiny task."""

import json
import math
from pathlib import Path

from arl.tasks.evaluation import Check, EvalContext, Evaluation, Label

VERSION = "1"
HARNESS = Path(__file__).with_name("harness.py")


def evaluate(ctx: EvalContext) -> Evaluation:
    task = ctx.task
    points = json.loads((ctx.heldout / "test.json").read_text())
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    per_seed, accuracies, eval_walls, sizes = {}, [], [], []
    for run in ctx.runs:
        model = Path(run.out) / "model.json"
        sizes.append(model.stat().st_size + sum(
            p.stat().st_size for p in Path(run.workspace).rglob("*") if p.is_file()))
        p = ctx.run(["{python}", str(HARNESS), str(model)], cwd=Path(run.workspace),
                    timeout_s=task.budgets.eval_s * 2, stdin=json.dumps(xs).encode(),
                    writable=[Path(run.out)])
        eval_walls.append(p.wall_s)
        if not p.ok:
            per_seed[run.seed] = math.inf
            accuracies.append(0.0)
            continue
        preds = json.loads(p.stdout_tail) if p.stdout_tail.startswith("[") else []
        if len(preds) != len(ys):
            raise ValueError(f"harness returned {len(preds)} predictions for {len(ys)} points")
        errors = [(a - b) ** 2 for a, b in zip(preds, ys)]
        per_seed[run.seed] = sum(errors) / len(errors)
        accuracies.append(sum(e < 1.0 for e in errors) / len(errors))
    score = sum(per_seed.values()) / len(per_seed)
    train_s = max(r.process.wall_s for r in ctx.runs)
    accuracy = sum(accuracies) / len(accuracies)
    checks = [
        Check(name="finite", passed=math.isfinite(score), value=score, fails_as=Label.DIVERGED),
        Check(name="train_s", passed=train_s <= task.budgets.train_s, value=train_s,
              limit=task.budgets.train_s, fails_as=Label.TRAIN_BUDGET_OVERRUN),
        Check(name="eval_s", passed=max(eval_walls) <= task.budgets.eval_s, value=max(eval_walls),
              limit=task.budgets.eval_s, fails_as=Label.EVAL_BUDGET_OVERRUN),
        Check(name="artifact_bytes", passed=max(sizes) <= task.gates.artifact_bytes,
              value=float(max(sizes)), limit=float(task.gates.artifact_bytes),
              fails_as=Label.SIZE_VIOLATION),
        Check(name="accuracy", passed=accuracy >= task.gates.accuracy, value=accuracy,
              limit=task.gates.accuracy, fails_as=Label.GATE_MISS),
    ]
    return Evaluation(
        score=score, per_seed=per_seed, checks=checks,
        metrics={"mse": score, "accuracy": accuracy, "train_s": train_s},
    )
