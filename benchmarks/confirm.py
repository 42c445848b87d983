"""Confirm the search benchmark's bests: measure each search's best program again, beside
its base program, for several rounds in one sitting.

    python benchmarks/confirm.py [--task airbench-mini] [--rounds 3] [--workers 2] [--store bench-search.db]

``benchmarks/search.py`` reports a search's gain as its best score against its
own baseline: two measurements of one run each. Where the score is a time,
both move with the machine (airbench-mini's base program measured 42–49 s in
one sitting, 20–26 s on another machine), and the best is the luckiest of many
noisy measurements. Here every finished bench search of the task in the ledger
gets ``--rounds`` re-runs: a search of kind ``replay`` whose baseline is the
base program and whose one trial is the best program (same seeds, same budgets,
judged as in the search, confirmation seeds included), run side by side as in
the search. The confirmed gain of a round compares the two runs of that round;
a best that fails a check in a round gains 0 % there (the search would not
have kept it). The printed figure is the median over rounds, and per arm the
median over seeds.

Rounds already in the ledger count, so an interrupted run resumes. Each
confirmed search is appended to benchmarks/results/confirm.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.search import _NAME, _commit, load_results  # noqa: E402
from arl.ledger import Ledger  # noqa: E402
from arl.ledger import events as ev  # noqa: E402
from arl.ledger.programs import get_program  # noqa: E402
from arl.ledger.projections import SearchRow, State, TrialRow, rebuild, relative_gain  # noqa: E402
from arl.runners.replay import drain  # noqa: E402
from arl.runners.trials import start_search, submit  # noqa: E402
from arl.tasks.manifest import Task  # noqa: E402
from arl.tasks.registry import resolve  # noqa: E402

DONE = "confirm round complete"


def bench_searches(ledger: Ledger, state: State, task: Task) -> list[tuple[SearchRow, str, int]]:
    """Finished bench searches of the task as it is now, the newest per arm and seed:
    (row, arm, seed)."""
    newest: dict[tuple[str, int], SearchRow] = {}
    for search in sorted(state.searches.values(), key=lambda s: s.started_at):
        m = _NAME.match(search.name)
        if (m and m["task"] == task.name and search.stop_reason == "trial budget spent"
                and ledger.stream(search.search_id)[0].task_digest == task.digest()):
            newest[(m["arm"], int(m["seed"]))] = search
    return [(search, arm, seed) for (arm, seed), search in newest.items()]


def rounds_of(ledger: Ledger, state: State, origin: str) -> list[tuple[TrialRow, ...]]:
    """Finished confirm rounds of one search, oldest first: the (base, best) trial rows of each."""
    out = []
    for search in sorted(state.searches.values(), key=lambda s: s.started_at):
        if search.kind != "replay" or search.stop_reason != DONE:
            continue
        started = ledger.stream(search.search_id)[0]
        if started.origin_search == origin and started.config.get("replay") == "confirm":
            out.append(tuple(state.trials_of(search.search_id)))
    return out


def seeds_of(ledger: Ledger, trial_id: str) -> tuple[int, ...] | None:
    return next((e.seeds for e in ledger.stream(trial_id) if isinstance(e, ev.TrialSubmitted)), None)


def measure_round(ledger: Ledger, task: Task, state: State, origin: SearchRow, n: int, workers: int) -> None:
    """One round: the base program as the baseline and the best program beside it."""
    base = state.trials[origin.baseline_trial]
    best = state.trials[origin.best_trial]
    base_program = get_program(ledger, base.program_digest)
    replay = start_search(ledger, task, name=f"confirm of {origin.name} round {n}", kind="replay",
                          origin_search=origin.search_id,
                          config={"replay": "confirm", "round": n, "trials": 1, "workers": workers})
    submit(ledger, task, replay, 0, agent="baseline", surface="", program=base_program,
           hypothesis="the base program, measured again", seeds=seeds_of(ledger, base.trial_id))
    # The best may carry edits of several specialists (merges): every surface is allowed.
    others = tuple(s.name for s in task.surfaces if s.name != best.surface)
    submit(ledger, task, replay, 1, agent=best.agent, surface=best.surface,
           program=get_program(ledger, best.program_digest), parent_program=base_program,
           hypothesis=f"the best of {origin.name} (trial {best.seq}), measured again",
           seeds=seeds_of(ledger, best.trial_id), also_surfaces=others)
    drain(ledger, workers)
    ledger.append(ev.SearchStopped(originator_id=replay, originator_version=ledger.version(replay) + 1,
                                   reason=DONE))


def round_gain(direction: str, base, best) -> float | None:
    """The best's relative gain over the base program in one round; 0 where the best broke a
    check; None where the base itself gave no score (the round says nothing)."""
    if base.score is None or base.label is None or not base.label.legal:
        return None
    if best.score is None or best.label is None or not best.label.legal:
        return 0.0
    return relative_gain(direction, best.score, base.score)


@dataclass
class Line:
    arm: str
    seed: int
    origin: SearchRow
    gain: float | None  # median over rounds; None: no round gave a figure (or nothing to confirm)
    rounds: list[tuple[TrialRow, ...]]


def confirm(ledger: Ledger, task: Task, *, rounds: int, workers: int, out: TextIO = sys.stderr) -> list[Line]:
    """Measure every bench search's best beside its base program until each has ``rounds`` rounds."""
    state = rebuild(ledger)
    searches = bench_searches(ledger, state, task)
    if not searches:
        raise SystemExit(f"no finished bench search of {task.name} (at digest {task.digest()[:12]}) in this "
                         "ledger: run benchmarks/search.py with the same --store first")
    lines = []
    for origin, arm, seed in searches:
        if origin.best_trial in (None, origin.baseline_trial):
            lines.append(Line(arm, seed, origin, None, []))
            continue
        for n in range(len(rounds_of(ledger, state, origin.search_id)), rounds):
            print(f"  {arm} seed {seed} [{origin.search_id[:8]}]: round {n + 1}/{rounds}", file=out, flush=True)
            measure_round(ledger, task, state, origin, n, workers)
            state = rebuild(ledger)
        done = rounds_of(ledger, state, origin.search_id)[:rounds]
        gains = [g for base, best in done if (g := round_gain(origin.direction, base, best)) is not None]
        lines.append(Line(arm, seed, origin, statistics.median(gains) if gains else None, done))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="airbench-mini")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", default=f"sqlite:///{Path.cwd() / 'bench-search.db'}")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "confirm.jsonl",
                        help="JSON lines of confirmed searches (appended to)")
    args = parser.parse_args()
    task = resolve(args.task)
    with Ledger.open(args.store) as ledger:
        lines = confirm(ledger, task, rounds=args.rounds, workers=args.workers)
    known = {r["search_id"] for r in load_results(args.results)}
    new = [line for line in lines if line.rounds and line.origin.search_id not in known]
    if new:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as f:
            for line in new:
                f.write(json.dumps(result_row(task, line, args.workers)) + "\n")
    print_table(task, args.rounds, lines)


def result_row(task: Task, line: Line, workers: int) -> dict:
    return dict(task=task.name, arm=line.arm, seed=line.seed, search_id=line.origin.search_id,
                task_digest=task.digest(), searched_gain=searched_gain(line.origin), confirmed_gain=line.gain,
                base_scores=[b.score for b, _ in line.rounds], best_scores=[t.score for _, t in line.rounds],
                best_labels=[t.label.value if t.label else None for _, t in line.rounds],
                rounds=len(line.rounds), workers=workers, commit=_commit(),
                finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


def searched_gain(origin: SearchRow) -> float:
    """The gain the search itself reported: its best against its own baseline."""
    return relative_gain(origin.direction, origin.best_score, origin.baseline_score) or 0.0


def print_table(task: Task, rounds: int, lines: list[Line]) -> None:
    bases = [b.score for line in lines for b, _ in line.rounds if b.score is not None]
    print(f"\nconfirmed gains: {task.name}, {rounds} rounds per search, {task.objective.metric} "
          f"({task.objective.direction})")
    if bases:
        print(f"base program measured {len(bases)} times in this sitting: median {statistics.median(bases):.4g} "
              f"(range {min(bases):.4g}–{max(bases):.4g})")
    print(f"{'arm':12} {'seed':>4}  {'search':8}  {'searched gain':>13}  {'confirmed':>9}  per round (base → best, label)")
    by_arm: dict[str, list[float]] = {}
    for line in lines:
        by_arm.setdefault(line.arm, []).append(line.gain or 0.0)
        detail = "; ".join(f"{_num(b.score)} → {_num(t.score)} {t.label.value if t.label else '—'}"
                           for b, t in line.rounds)
        print(f"{line.arm:12} {line.seed:>4}  {line.origin.search_id[:8]}  {searched_gain(line.origin):>+12.1%}  "
              f"{'—' if line.gain is None else format(line.gain, '+.1%'):>9}  {detail or 'the best is the baseline'}")
    print("median confirmed gain by arm: "
          + ", ".join(f"{arm} {statistics.median(g):+.1%} ({len(g)} seeds)" for arm, g in by_arm.items()))


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


if __name__ == "__main__":
    main()
