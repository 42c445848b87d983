"""Worker latency and overhead on SQLite, plus the built-in tasks' base programs.

    python benchmarks/worker.py [--trials 20] [--skip-builtin]

Prints: median (and p90) latency from TrialSubmitted to the recipe's first
line running, with the worker in its own process waiting on the log (target
<= 100 ms); the worker's overhead as a share of a 10-second trial's wallclock
(target <= 3 %); then, for each built-in task, the base program's score,
wallclock and every gate value (one real run through a worker).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arl.ledger import Ledger, events as ev  # noqa: E402
from arl.ledger.programs import read_folder  # noqa: E402
from arl.runners.trials import start_search, submit  # noqa: E402
from arl.tasks.manifest import load_task  # noqa: E402

TASK = """
name = "probe"
description = "Records when it starts and sleeps; scores nothing."
[run]
command = ["{python}", "probe.py"]
[objective]
metric = "sleep_s"
direction = "min"
[budgets]
train_s = 60
eval_s = 10
wallclock_s = 60
memory_mb = 500
[[surfaces]]
name = "sleep"
description = "how long to sleep"
files = ["probe.py"]
"""

PROBE = """
import os, time
STARTED = time.time()  # the first thing the recipe does
SLEEP_S = {sleep}
open(os.path.join(os.environ["ARL_OUT"], "started"), "w").write(repr(STARTED))
time.sleep(SLEEP_S)
open(os.path.join(os.environ["ARL_OUT"], "finished"), "w").write(repr(time.time()))
"""

EVALUATOR = """
from pathlib import Path
from arl.tasks.evaluation import Evaluation
VERSION = "1"
def evaluate(ctx):
    out = Path(ctx.runs[0].out)
    started, finished = float((out / "started").read_text()), float((out / "finished").read_text())
    return Evaluation(score=finished - started, metrics={"started": started, "finished": finished})
"""


def make_probe_task(folder: Path, sleep: float) -> Path:
    (folder / "recipe").mkdir(parents=True)
    (folder / "task.toml").write_text(TASK)
    (folder / "recipe" / "probe.py").write_text(PROBE.format(sleep=sleep))
    (folder / "evaluator.py").write_text(EVALUATOR)
    (folder / "data.py").write_text("MISSING_HELP = ''\ndef prepare(cache):\n    pass\n")
    return folder


def measure(url: str, task_dir: Path, trials: int) -> list[dict[str, float]]:
    """Submit trials one at a time to a waiting worker process; time each from the record."""
    task = load_task(task_dir)
    program = read_folder(task.recipe_dir)
    worker = subprocess.Popen([sys.executable, "-m", "arl.runners.cli", "worker", "--store", url],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    rows = []
    try:
        with Ledger.open(url) as ledger:
            search = start_search(ledger, task, name="probe")
            for seq in range(trials):
                time.sleep(0.3)  # the worker is idle, waiting on the log
                trial = submit(ledger, task, search, seq, agent="probe", surface="sleep",
                               program=dict(program, **{"probe.py": program["probe.py"] + f"# {seq}\n".encode()}))
                while not isinstance((stream := ledger.stream(trial))[-1], ev.TrialLabeled):
                    ledger.wait(ledger.head(), 1.0)
                by_type = {type(e).__name__: e for e in stream}
                metrics = by_type["TrialEvaluated"].metrics
                submitted = by_type["TrialSubmitted"].at.timestamp()
                labeled = by_type["TrialLabeled"].at.timestamp()
                rows.append({
                    "spawn_s": by_type["RunFinished"].started_at - submitted,
                    "latency_s": metrics["started"] - submitted,
                    "total_s": labeled - submitted,
                    "recipe_s": metrics["finished"] - metrics["started"],
                    "sandbox": by_type["RunFinished"].sandbox,
                })
    finally:
        worker.terminate()
        worker.wait()
    return rows


def builtin_report(devices: str | None = None) -> None:
    """Each built-in task's base program through a worker; adapter tasks (the paper's GPU recipes)
    only where their checkout and data are found (option-less: ARL_RECIPE_FROM_<TASK> /
    ARL_DATA_<TASK> or arl.toml), on ``devices`` (default: the visible GPUs)."""
    from arl.ledger.errors import ArlError
    from arl.runners.taskcheck import check_task
    from arl.tasks.adapters import locate
    from arl.tasks.registry import BUILTIN

    for folder in sorted(BUILTIN.glob("*/task.toml")):
        t0 = time.perf_counter()
        name = folder.parent.name
        task = load_task(folder.parent)
        if task.source is not None and (locate(name, "recipe_from") is None or locate(name, "data") is None):
            print(f"\n{name}: adapter task, skipped: set ARL_RECIPE_FROM_{name.upper().replace('-', '_')} and "
                  f"ARL_DATA_{name.upper().replace('-', '_')} (or arl.toml) to your checkout and data to include it")
            continue
        try:
            task, report = check_task(str(folder.parent), devices=devices if task.needs.gpus else None)
        except ArlError as e:
            print(f"\n{name}: not run: {e}")
            continue
        print(f"\n{task.name}: base program → {report.label}, {task.objective.metric} = "
              f"{report.score:.4f}" if report.score is not None else f"\n{task.name}: {report.label}")
        print(f"  run wallclock {report.wall_s:.1f} s over seeds {task.seeds}; "
              f"check took {time.perf_counter() - t0:.0f} s in all" if report.wall_s is not None else
              f"  no run: {report.reason}")
        for c in report.checks:
            limit = f"limit {c.limit:g}" if c.limit is not None else ""
            value = f"{c.value:.6g}" if c.value is not None else "-"
            print(f"  {'pass' if c.passed else 'FAIL'}  {c.name:18} {value:>12}  {limit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--skip-builtin", action="store_true")
    parser.add_argument("--devices", help="devices for the adapter tasks' base programs (e.g. 0-7, cpu:8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="arl-bench-worker-") as d:
        d = Path(d)
        fast = measure(f"sqlite:///{d / 'fast.db'}", make_probe_task(d / "fast", 0.0), args.trials)
        sandboxes = sorted({r["sandbox"] for r in fast})
        print(f"sandbox: {', '.join(sandboxes)} (bubblewrap with its own PID namespace when 'bwrap'; "
              f"limits on processes, bytes written and every descendant's memory)")
        spawn = sorted(r["spawn_s"] * 1000 for r in fast)
        lat = sorted(r["latency_s"] * 1000 for r in fast)
        print(f"submit → recipe process spawned, SQLite, {len(spawn)} trials: median "
              f"{statistics.median(spawn):.0f} ms, p90 {spawn[int(0.9 * (len(spawn) - 1))]:.0f} ms "
              f"(target median <= 100 ms)")
        print(f"submit → recipe's first line (adds sandbox + interpreter start-up): median "
              f"{statistics.median(lat):.0f} ms, p90 {lat[int(0.9 * (len(lat) - 1))]:.0f} ms")
        slow = measure(f"sqlite:///{d / 'slow.db'}", make_probe_task(d / "slow", 10.0), 3)
        shares = [(r["total_s"] - r["recipe_s"]) / r["total_s"] for r in slow]
        print(f"worker overhead on a 10 s trial: {statistics.median(shares):.1%} of its wallclock "
              f"(submit → labelled {statistics.median(r['total_s'] for r in slow):.2f} s; "
              f"recipe {statistics.median(r['recipe_s'] for r in slow):.2f} s; target <= 3 %)")
    if not args.skip_builtin:
        builtin_report(args.devices)


if __name__ == "__main__":
    main()
