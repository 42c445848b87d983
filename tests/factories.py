"""Builders of realistic events for tests and benchmarks."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

from arl.ledger import events as ev
from arl.ledger.events import Budget, Check, Label

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def one_of_each(search: str | None = None) -> list[ev.Event]:
    """Every event type once, every field set away from its default."""
    search = search or str(uuid.uuid4())
    t1 = ev.trial_id(search, 1)
    t2 = ev.trial_id(search, 2)
    at = iter(T0 + timedelta(seconds=i) for i in range(100))
    return [
        ev.SearchStarted(
            originator_id=search, originator_version=1, at=next(at), name="golf run",
            task="golf-mini", task_digest="d" * 64, direction="min", noise_floor=0.05,
            config={"agents": "tuner", "trials": 30, "lineage": True, "nested": {"a": [1, 2.5]}},
            arl_version="0.1.0", host="box", kind="fork", origin_search=str(uuid.uuid4()),
            origin_trial=str(uuid.uuid4()),
        ),
        ev.TrialProposed(
            originator_id=t1, originator_version=1, at=next(at), search_id=search, seq=1,
            agent="opt", surface="opt", parents=(str(uuid.uuid4()), str(uuid.uuid4())),
            hypothesis="raise lr — ünïcode ok", expected_delta=-0.02, backend="tuner",
            edit_digest="e" * 64, agent_call_digest="a" * 64,
            source={"id": "exp_042", "status": "size_blocked", "raw": "a\tb\nc"},
        ),
        ev.TrialSubmitted(
            originator_id=t1, originator_version=2, at=next(at), search_id=search,
            program_digest="p" * 64,
            budget=Budget(train_s=30.0, eval_s=10.0, wallclock_s=90.0, memory_mb=2048, threads=2),
            seeds=(1, 2, 3),
        ),
        ev.TrialClaimed(
            originator_id=t1, originator_version=3, at=next(at), search_id=search,
            runner="w1", host="box", lease_s=30.0, attempt=2,
        ),
        ev.LeaseExpired(
            originator_id=t1, originator_version=4, at=next(at), search_id=search,
            runner="w1", attempt=2, reason="no heartbeat for 31 s",
        ),
        ev.RunFinished(
            originator_id=t1, originator_version=5, at=next(at), search_id=search, runner="w2",
            exit_code=-9, signal=9, wall_s=31.5, cpu_s=30.1, peak_rss_mb=812.5,
            timed_out="train", stdout_tail="step 100\n", stderr_tail="Traceback…",
            artifacts={"model.bin": "m" * 64}, log_digest="l" * 64, sandbox="bwrap",
        ),
        ev.TrialEvaluated(
            originator_id=t1, originator_version=6, at=next(at), search_id=search,
            evaluator="golf-mini", evaluator_version="3", score=2.91,
            metrics={"val_bpb": 2.91, "bytes": 410000.0},
            checks=(
                Check(name="artifact_bytes", passed=False, value=600000.0, limit=524288.0,
                      detail="over by 75712"),
                Check(name="normalised", passed=True),
            ),
            seeds=(1, 2),
        ),
        ev.TrialLabeled(
            originator_id=t1, originator_version=7, at=next(at), search_id=search,
            label=Label.SIZE_VIOLATION, score=2.91, improvement=True, delta_vs_parent=-0.1,
            delta_vs_best=-0.05, reason="artifact 600000 B > cap 524288 B",
        ),
        ev.TrialProposed(
            originator_id=t2, originator_version=1, at=next(at), search_id=search, seq=2,
            agent="arch", surface="arch", parents=(t1,), hypothesis="h",
        ),
        ev.EditRejected(
            originator_id=t2, originator_version=2, at=next(at), search_id=search,
            check="surface", reason="touches evaluator.py",
        ),
        ev.SearchStopped(
            originator_id=search, originator_version=2, at=next(at), reason="budget spent",
            summary={"best": 2.91, "labels": {"keep": 3}},
        ),
    ]


def every_event(search: str | None = None) -> list[ev.Event]:
    """:func:`one_of_each`, plus the events that came later (a resume of the search)."""
    events = one_of_each(search)
    return [*events, ev.SearchResumed(
        originator_id=events[0].originator_id, originator_version=3, at=events[-1].at + timedelta(seconds=1),
        changes={"trials": [30, 50]}, arl_version="0.1.0", host="box",
    )]


def program_bytes(seq: int) -> bytes:
    """The (fake) program of a synthetic trial; its digest is what TrialSubmitted names."""
    return f"LR = {seq}\n".encode()


def synthetic_search(
    trials: int, *, search: str | None = None, agents: int = 5, seed: int = 0
) -> list[ev.Event]:
    """A plausible search: baseline, then trials of 6 events each (proposed → labeled)."""
    import random

    rng = random.Random(seed)
    search = search or str(uuid.UUID(int=rng.getrandbits(128)))
    out: list[ev.Event] = [
        ev.SearchStarted(
            originator_id=search, originator_version=1, name="synthetic", task="golf-mini",
            task_digest="0" * 64, direction="min", noise_floor=0.01,
        )
    ]
    labels = [Label.KEEP, Label.DISCARD, Label.DISCARD, Label.CRASH, Label.GATE_MISS,
              Label.TRAIN_BUDGET_OVERRUN, Label.DISCARD, Label.SIZE_VIOLATION]
    best = 3.7
    kept = [ev.trial_id(search, 0)]
    for seq in range(trials + 1):
        tid = ev.trial_id(search, seq)
        agent = "baseline" if seq == 0 else f"agent{seq % agents}"
        parents = () if seq == 0 else (rng.choice(kept[-5:]),)
        label = Label.BASELINE if seq == 0 else rng.choice(labels)
        score = best + rng.uniform(-0.05, 0.2) if label is not Label.CRASH else None
        if label is Label.KEEP:
            score = best - rng.uniform(0.001, 0.02)
            best = score
            kept.append(tid)
        common = {"originator_id": tid, "search_id": search}
        out += [
            ev.TrialProposed(originator_id=tid, originator_version=1, search_id=search,
                             seq=seq, agent=agent, surface=agent, parents=parents,
                             hypothesis=f"try variant {seq}", expected_delta=-0.01),
            ev.TrialSubmitted(**common, originator_version=2, program_digest=hashlib.sha256(program_bytes(seq)).hexdigest(),
                              budget=Budget(train_s=30, eval_s=10)),
            ev.TrialClaimed(**common, originator_version=3, runner="w1", host="box"),
            ev.RunFinished(**common, originator_version=4, runner="w1",
                           exit_code=1 if score is None else 0, wall_s=31.0, cpu_s=30.0,
                           stderr_tail="Traceback: boom" if score is None else ""),
            ev.TrialEvaluated(**common, originator_version=5, evaluator="golf-mini",
                              score=score, metrics={"val_bpb": score or 0.0},
                              checks=(Check(name="train_s", passed=True, value=29.0, limit=30.0),)),
            ev.TrialLabeled(**common, originator_version=6, label=label, score=score,
                            improvement=label is Label.KEEP, reason=""),
        ]
    return out


# --- an MLGym trajectory, written here (format of MLGym's `*.traj` files and results.json) ----

_MLGYM_FILE = '''import random


# The function signature is fixed by the task; its body is what the agent improves.
def row_strategy(history):
    """Split 120 soldiers over 6 battlefields at random."""
    total = 120
    fields = 6
    cuts = sorted(random.sample(range(1, total), fields - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]
'''
_MLGYM_EDITS = [
    ("even split", '''def row_strategy(history):
    """Split 120 soldiers evenly over 6 battlefields."""
    allocation = [120 // 6] * 6
    return allocation
'''),
    ("answer the opponent's last move", '''def row_strategy(history):
    """Beat the opponent's last split on four battlefields."""
    last = history[-1][1] if history else [20] * 6
    order = sorted(range(6), key=lambda i: last[i])
    allocation = [0] * 6
    for i in order[:4]:
        allocation[i] = last[i] + 1
    allocation[order[4]] += 120 - sum(allocation)
    return allocation
'''),
    ("guard against an empty history", '''def row_strategy(history):
    """Beat the opponent's last split on four battlefields (even split to start)."""
    if not history:
        return [20] * 6
    last = history[-1][1]
    order = sorted(range(6), key=lambda i: last[i])
    allocation = [0] * 6
    for i in order[:4]:
        allocation[i] = min(last[i] + 1, 120 - sum(allocation))
    allocation[order[4]] += 120 - sum(allocation)
    return allocation
'''),
]


def _mlgym_view(path: str, text: str) -> str:
    lines = text.splitlines()
    numbered = "\n".join(f"{n}:{line}" for n, line in enumerate(lines, 1))
    return f"[File: {path} ({len(lines)} lines total)]\n{numbered}"


def mlgym_trajectory() -> tuple[str, str]:
    """A Colonel-Blotto run in MLGym's trajectory format: (``run.traj`` text, ``results.json`` text).

    Nine steps as MLGym records them (ls, open, edit, validate, edit, a validation whose
    evaluation script failed, edit, validate, submit); scores as its validate command prints
    them; ``info`` with the graded submissions. Written for arl's tests (MLGym's own published
    trajectories are CC BY-NC and are not copied here).
    """
    path = "/home/agent/workspace/strategy.py"
    base_scores, scores = {"Score": -0.24797001481056213}, [-0.006530000362545252, 0.02345000021159649]
    header = _MLGYM_FILE.split("def row_strategy")[0]

    def step(action: str, observation: str, thought: str) -> dict:
        return {"action": action, "observation": observation, "response": thought, "thought": thought,
                "state": json.dumps({"open_file": path, "working_dir": "/home/agent/workspace"}),
                "execution_time": "0.8"}

    def valid(score: float) -> str:
        return (f"Your code produced a valid submission artefact at /home/agent/workspace/target.py.\n"
                f"Baseline Score: {base_scores!r}\nEvaluation Score: {{'Score': {score!r}}}")

    steps = [
        step("ls -a\n", "./\n../\nevaluate.py*\nstrategy.py\ntarget.py", "DISCUSSION\nLook at the workspace first."),
        step(f'open "strategy.py"\n', _mlgym_view(path, _MLGYM_FILE), "DISCUSSION\nRead the baseline strategy."),
    ]
    for n, (why, body) in enumerate(_MLGYM_EDITS):
        text = header + body
        steps.append(step(f"edit 5:{len(_MLGYM_FILE.splitlines())}\n{body}end_of_edit\n",
                          _mlgym_view(path, text) + "\nFile updated. Please review the changes.",
                          f"DISCUSSION\nTry an {why}." if n == 0 else f"DISCUSSION\nNow {why}."))
        if n == 0:
            steps.append(step("validate\n", valid(scores[0]), "DISCUSSION\nValidate the even split."))
        elif n == 1:
            steps.append(step("validate\n", "Failed to decode metrics from evaluation script. Output:\n---\n"
                              "Traceback (most recent call last):\n  File \"/home/agent/workspace/evaluate.py\", "
                              "line 80, in <module>\n    evaluate()\nIndexError: list index out of range\n---",
                              "DISCUSSION\nValidate the answering strategy."))
        else:
            steps.append(step("validate\n", valid(scores[1]), "DISCUSSION\nValidate the guarded version."))
    steps.append(step("submit\n", "", "DISCUSSION\nSubmit the best strategy."))
    graded = [{"Score": s} for s in (*scores, 0.024290001019835472)]
    traj = {"environment": "mlgym_main", "trajectory": steps,
            "history": [{"role": "system", "content": "SETTING: an autonomous ML researcher."}],
            "info": {"model_stats": {"total_cost": 0.2, "tokens_sent": 40000, "tokens_received": 1200,
                                     "api_calls": 10},
                     "exit_status": "submitted", "submission": "/home/agent/workspace/target.py",
                     "score": graded, "summarizer": {}}}
    return json.dumps(traj, indent=2), json.dumps({"agent": graded, "baseline": base_scores})
