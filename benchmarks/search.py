"""Search quality: best relative improvement over the baseline, by arm, measured in one run.

    python benchmarks/search.py [--task golf-mini --trials 30 --seeds 3]
                                [--task airbench-mini --trials 20 --seeds 2] [--workers 2]

Arms: the tuner with lineage on, the tuner with lineage off (the control),
random search over the same knobs, and Optuna's TPE over the same knobs. For
each arm it prints the median (and per-seed) relative gain of the best legal
result over the baseline, the label mix, and how often a specialist failed
the same way twice in a row (the lineage-off pattern). Every search is an
ordinary search in one ledger file, kept for SQL afterwards (path printed).

Issue targets: lineage on beats lineage off and random on both tasks and is at
least level with TPE; golf-mini >= 15 % bpb, airbench-mini >= 20 % wallclock.
Defaults follow the issue (golf-mini 30 trials x 3 seeds, airbench-mini 20 x 2).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger import Ledger  # noqa: E402
from ledger.projections import rebuild  # noqa: E402
from runners.search import SearchConfig, run_search  # noqa: E402

ARMS = {
    "lineage-on": dict(agents="tuner", lineage=True),
    "lineage-off": dict(agents="tuner", lineage=False),
    "random": dict(agents="random", lineage=True),
    "tpe": dict(agents="tpe", lineage=True),
}
DEFAULTS = {"golf-mini": (30, 3), "airbench-mini": (20, 2)}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", help="task to run (repeatable; default both built-ins)")
    parser.add_argument("--trials", type=int, action="append", help="trials per search, per --task")
    parser.add_argument("--seeds", type=int, action="append", help="seeds per arm, per --task")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ",".join(ARMS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", default=f"sqlite:///{Path.cwd() / 'bench-search.db'}")
    args = parser.parse_args()
    tasks = args.task or list(DEFAULTS)
    arms = [a for a in args.arms.split(",") if a]
    results: dict[tuple[str, str], dict] = {}
    with Ledger.open(args.store) as ledger:
        for i, task in enumerate(tasks):
            trials = (args.trials[i] if args.trials and i < len(args.trials) else DEFAULTS.get(task, (20, 1))[0])
            seeds = (args.seeds[i] if args.seeds and i < len(args.seeds) else DEFAULTS.get(task, (20, 1))[1])
            # Seed-major: every arm gets seed 0 before any gets seed 1, so a run cut short
            # still compares all arms on the same seeds (the table is printed after each round).
            for seed in range(seeds):
                for arm in arms:
                    r = results.setdefault((task, arm), dict(gains=[], labels=Counter(), repeats=0, minutes=0.0))
                    t0 = time.perf_counter()
                    config = SearchConfig(trials=trials, workers=args.workers, seed=seed, **ARMS[arm])
                    summary = run_search(ledger, task, config, name=f"bench {task} {arm} seed {seed}",
                                         out=io.StringIO())
                    r["minutes"] += (time.perf_counter() - t0) / 60
                    rows = rebuild(ledger).trials_of(summary.search_id)
                    r["gains"].append(summary.gain or 0.0)
                    r["labels"].update(x.label.value for x in rows[1:] if x.label is not None)
                    r["repeats"] += repeated_failures(rows)
                    print(f"  {task} {arm} seed {seed} [{summary.search_id[:8]}]: gain {summary.gain or 0:+.1%}, "
                          f"{dict(Counter(x.label.value for x in rows[1:] if x.label))}", file=sys.stderr)
                print_table(results, args, final=(i == len(tasks) - 1 and seed == seeds - 1))


def print_table(results: dict, args, *, final: bool) -> None:
    print(f"\nsearch benchmark ({args.workers} workers; ledger {args.store})"
          + ("" if final else " — partial, more seeds to come"), flush=True)
    print(f"{'task':14} {'arm':12} {'median gain':>11}  per seed            repeated  label mix")
    for (task, arm), r in results.items():
        per_seed = " ".join(f"{g:+.1%}" for g in r["gains"])
        mix = ", ".join(f"{k} {v}" for k, v in r["labels"].most_common())
        print(f"{task:14} {arm:12} {statistics.median(r['gains']):>+10.1%}  {per_seed:18} {r['repeats']:8}  "
              f"{mix}  ({r['minutes']:.0f} min)", flush=True)

if __name__ == "__main__":
    main()
