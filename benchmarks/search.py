"""Search quality: best relative improvement over the baseline, by arm, measured in one run.

    python benchmarks/search.py [--task golf-mini --trials 30 --seeds 3]
                                [--task airbench-mini --trials 20 --seeds 2] [--workers 2]

Arms: the tuner with lineage on, the tuner with lineage off (the control),
random search over the same knobs, and Optuna's TPE over the same knobs. For
each arm it prints the median (and per-seed) relative gain of the best legal
result over the baseline, the label mix, and how often a specialist failed
the same way twice in a row (the lineage-off pattern). Every search is an
ordinary search in one ledger file, kept for SQL afterwards (path printed).

Every finished search is also appended to a results file (default
benchmarks/results/search.jsonl, committed): a search already recorded there for
the same task (by digest: a changed recipe, evaluator or manifest is a new task),
arm, seed, trial count and worker count is not run again, and
finished bench searches found in --store are recorded before anything runs. So
a benchmark that needs more CPU hours than one sitting can be completed over
several, and the table is always computed from the recorded rows (with the
commits they were measured at).

A search's gain compares two single measurements (its best and its own
baseline); where the score is a time both move with the machine. The
"confirmed" column shows, where benchmarks/confirm.py has run on the search's
ledger, the median gain of the best measured again beside the base program.

Issue targets: lineage on beats lineage off and random on both tasks and is at
least level with TPE; golf-mini >= 15 % bpb, airbench-mini >= 20 % wallclock.
Defaults follow the issue (golf-mini 30 trials x 3 seeds, airbench-mini 20 x 2).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import re
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arl.ledger import Ledger  # noqa: E402
from arl.ledger.projections import State, rebuild, relative_gain  # noqa: E402
from arl.runners.search import SearchConfig, run_search  # noqa: E402
from arl.tasks.registry import resolve  # noqa: E402

ARMS = {
    "lineage-on": dict(agents="tuner", lineage=True),
    "lineage-off": dict(agents="tuner", lineage=False),
    "random": dict(agents="random", lineage=True),
    "tpe": dict(agents="tpe", lineage=True),
}
DEFAULTS = {"golf-mini": (30, 3), "airbench-mini": (20, 2)}
CONFIRMED = ROOT / "benchmarks" / "results" / "confirm.jsonl"


def repeated_failures(rows) -> int:
    """Failures that repeat the same agent's previous label."""
    last: dict[str, str] = {}
    repeats = 0
    for r in rows[1:]:
        if r.label is None:
            continue
        if not r.label.legal and last.get(r.agent) == r.label.value:
            repeats += 1
        last[r.agent] = r.label.value
    return repeats


_NAME = re.compile(r"^bench (?P<task>\S+) (?P<arm>\S+) seed (?P<seed>\d+)$")


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(ledger: Ledger, state: State, results: list[dict], path: Path) -> None:
    """Record every finished bench search of the ledger that the results file lacks."""
    known = {r["search_id"] for r in results}
    for search in state.searches.values():
        m = _NAME.match(search.name)
        if not m or search.search_id in known or search.stop_reason != "trial budget spent":
            continue
        started = ledger.stream(search.search_id)[0]
        config = started.config
        rows = state.trials_of(search.search_id)
        gain = relative_gain(search.direction, search.best_score, search.baseline_score)
        last = max((r.labeled_at for r in rows if r.labeled_at), default=search.stopped_at)
        row = dict(task=m["task"], arm=m["arm"], seed=int(m["seed"]), trials=config.get("trials"),
                   workers=config.get("workers"), search_id=search.search_id,
                   baseline=search.baseline_score, best=search.best_score, gain=gain or 0.0,
                   labels=dict(Counter(r.label.value for r in rows[1:] if r.label is not None)),
                   repeats=repeated_failures(rows),
                   minutes=round(((last - search.started_at).total_seconds() if last else 0) / 60, 1),
                   commit=started.arl_version.partition("+")[2] or started.arl_version,
                   task_digest=started.task_digest,
                   finished=(search.stopped_at or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds"))
        results.append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", help="task to run (repeatable; default both built-ins)")
    parser.add_argument("--trials", type=int, action="append", help="trials per search, per --task")
    parser.add_argument("--seeds", type=int, action="append", help="seeds per arm, per --task")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ",".join(ARMS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", default=f"sqlite:///{Path.cwd() / 'bench-search.db'}")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "search.jsonl",
                        help="JSON lines of finished searches (read to skip, appended to)")
    parser.add_argument("--fresh", default="", help="comma-separated arms to measure again where recorded at "
                        "another commit (e.g. after changing the tuner); the table uses the newest row")
    parser.add_argument("--table-only", action="store_true", help="print the table of recorded results, run nothing")
    args = parser.parse_args()
    tasks = args.task or list(DEFAULTS)
    arms = [a for a in args.arms.split(",") if a]
    plan = []
    for i, task in enumerate(tasks):
        trials = args.trials[i] if args.trials and i < len(args.trials) else DEFAULTS.get(task, (20, 1))[0]
        seeds = args.seeds[i] if args.seeds and i < len(args.seeds) else DEFAULTS.get(task, (20, 1))[1]
        plan.append((task, trials, seeds))
    results = load_results(args.results)
    commit = _commit()
    digests = {task: resolve(task).digest() for task, _, _ in plan}

    def recorded(task, arm, seed, trials):
        """The newest recorded row of this search on the task as it is now, if any."""
        return next((r for r in reversed(results)
                     if (r["task"], r["arm"], r["seed"], r["trials"], r["workers"], r.get("task_digest"))
                     == (task, arm, seed, trials, args.workers, digests[task])), None)

    fresh = {a for a in args.fresh.split(",") if a}
    done_now: set[tuple] = set()

    with Ledger.open(args.store) as ledger:
        collect(ledger, rebuild(ledger), results, args.results)
        for task, trials, seeds in ([] if args.table_only else plan):
            # Seed-major: every arm gets seed 0 before any gets seed 1, so a run cut short
            # still compares all arms on the same seeds (the table is printed after each round).
            for seed in range(seeds):
                for arm in arms:
                    row = recorded(task, arm, seed, trials)
                    # --fresh re-measures rows of another commit: an interrupted re-measurement resumes.
                    if row and (arm not in fresh or (task, arm, seed) in done_now or row["commit"] == f"g{commit}"):
                        continue
                    config = SearchConfig(trials=trials, workers=args.workers, seed=seed, **ARMS[arm])
                    summary = run_search(ledger, task, config, name=f"bench {task} {arm} seed {seed}",
                                         out=io.StringIO())
                    collect(ledger, rebuild(ledger), results, args.results)
                    done_now.add((task, arm, seed))
                    row = recorded(task, arm, seed, trials)
                    if row is None:  # it stopped before its budget (a failed baseline): nothing to record
                        print(f"  {task} {arm} seed {seed} [{summary.search_id[:8]}]: stopped: {summary.stopped}"
                              + (f" — {summary.problem}" if summary.problem else ""), file=sys.stderr, flush=True)
                        continue
                    print(f"  {task} {arm} seed {seed} [{summary.search_id[:8]}]: gain {row['gain']:+.1%}, "
                          f"{row['labels']} ({row['minutes']} min)", file=sys.stderr, flush=True)
                print_table(plan, arms, args, results, recorded, commit)
    if args.table_only:
        print_table(plan, arms, args, results, recorded, commit)


def print_table(plan, arms, args, results, recorded, commit) -> None:
    print(f"\nsearch benchmark ({args.workers} workers; results {args.results}; this checkout at {commit})", flush=True)
    # Gains measured again by benchmarks/confirm.py (best beside base, several rounds, one sitting).
    confirmed = {r["search_id"]: r["confirmed_gain"] for r in load_results(CONFIRMED)
                 if r.get("confirmed_gain") is not None}
    print(f"{'task':14} {'arm':12} {'median gain':>11}  {'per seed':20} {'baselines':18} {'confirmed':>13} "
          "repeated  label mix")
    commits = set()
    for task, trials, seeds in plan:
        for arm in arms:
            rows = [r for s in range(seeds) if (r := recorded(task, arm, s, trials))]
            if not rows:
                continue
            commits.update(r["commit"] for r in rows)
            gains = [r["gain"] for r in rows]
            labels = sum((Counter(r["labels"]) for r in rows), Counter())
            mix = ", ".join(f"{k} {v}" for k, v in labels.most_common())
            missing = f" (seeds {len(rows)}/{seeds})" if len(rows) < seeds else ""
            again = [confirmed[r["search_id"]] for r in rows if r["search_id"] in confirmed]
            again_text = f"{statistics.median(again):+.1%} ({len(again)})" if again else "—"
            print(f"{task:14} {arm:12} {statistics.median(gains):>+10.1%}  "
                  f"{' '.join(f'{g:+.1%}' for g in gains):20} "
                  f"{' '.join(format(r['baseline'], '.4g') for r in rows):18} {again_text:>13} "
                  f"{sum(r['repeats'] for r in rows):8}  {mix}"
                  f"  ({sum(r['minutes'] for r in rows):.0f} min){missing}", flush=True)
    if len(commits) > 1:
        print(f"measured at commits {', '.join(sorted(commits))}: compare with care", flush=True)

if __name__ == "__main__":
    main()
