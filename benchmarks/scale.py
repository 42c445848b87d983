"""Throughput and latency of no-op trials with 1, 2 and 4 workers, on PostgreSQL and SQLite.

    python benchmarks/scale.py [--trials 40] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Each worker is its own `arl worker` process. A no-op trial's recipe only records
when it started, so the figures are the loop's own cost: claim, materialize,
sandboxed process start, evaluation, recording. Submit → start latency is the
time from TrialSubmitted to the recipe's first line. Targets: p50 <= 50 ms on
PostgreSQL; throughput grows with workers until the cores are saturated.
A fresh database is created (and dropped) for each PostgreSQL measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from benchmarks.worker import make_probe_task  # noqa: E402
from arl.ledger import Ledger, events as ev  # noqa: E402
from arl.ledger.programs import read_folder  # noqa: E402
from arl.ledger.store import StoreURL  # noqa: E402
from arl.runners.trials import start_search, submit  # noqa: E402
from arl.tasks.manifest import load_task  # noqa: E402


def run(url: str, task_dir: Path, workers: int, trials: int) -> tuple[float, list[float], list[float]]:
    """trials/s over a burst; submit → process spawn and submit → recipe's first line (ms)
    of trials sent one at a time to idle workers."""
    task = load_task(task_dir)
    program = read_folder(task.recipe_dir)
    with Ledger.open(url) as ledger:
        search = start_search(ledger, task, name=f"scale {workers}")
        procs = [subprocess.Popen([sys.executable, "-m", "arl.runners.cli", "worker", "--store", url,
                                   "--name", f"w{i}"], cwd=ROOT, stderr=subprocess.DEVNULL)
                 for i in range(workers)]
        def probe(seq: int) -> dict[str, bytes]:
            return dict(program, **{"probe.py": program["probe.py"] + f"# {seq}\n".encode()})

        def labelled() -> int:
            return sum(1 for _, e in ledger.iter_events() if isinstance(e, ev.TrialLabeled))

        try:
            time.sleep(2.0)  # workers up and waiting on the log
            # Latency: one trial at a time, submitted to idle workers.
            for seq in range(trials // 2):
                submit(ledger, task, search, seq, agent="probe", surface="sleep", program=probe(seq))
                while labelled() < seq + 1:
                    ledger.wait(ledger.head(), 1.0)
            spawn, first_line = [], []
            submitted: dict[str, float] = {}
            for _, e in ledger.iter_events():
                if isinstance(e, ev.TrialSubmitted):
                    submitted[e.originator_id] = e.at.timestamp()
                elif isinstance(e, ev.RunFinished) and not e.refused:
                    spawn.append((e.started_at - submitted[e.originator_id]) * 1000)
                elif isinstance(e, ev.TrialEvaluated):
                    first_line.append((e.metrics["started"] - submitted[e.originator_id]) * 1000)
            # Throughput: a burst of trials, all queued at once.
            first = trials // 2
            t0 = time.time()
            for seq in range(first, first + trials):
                submit(ledger, task, search, seq, agent="probe", surface="sleep", program=probe(seq))
            while labelled() < first + trials:
                ledger.wait(ledger.head(), 1.0)
            elapsed = time.time() - t0
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
    return trials / elapsed, sorted(spawn), sorted(first_line)


def _pg_database(admin_url: str) -> tuple[str, str]:
    u = StoreURL.parse(admin_url)
    name = f"arl_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(host=u.host, port=u.port, user=u.user, dbname=u.dbname, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql://{u.user}@{u.host}:{u.port}/{name}"


def _drop(admin_url: str, name: str) -> None:
    u = StoreURL.parse(admin_url)
    with psycopg.connect(host=u.host, port=u.port, user=u.user, dbname=u.dbname, autocommit=True) as c:
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL database to create the benchmark databases from")
    args = parser.parse_args()
    print(f"no-op trials, {args.trials} per run, {os.cpu_count()} cores; each worker is a process\n")
    print("latency: TrialSubmitted → recipe process spawned (→ recipe's first line, which adds\n"
          "the sandbox and Python interpreter start-up), trials sent one at a time to idle workers;\n"
          "throughput: a burst of trials queued at once\n")
    print(f"{'store':11} {'workers':>7} {'trials/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'first line p50':>15}")
    with tempfile.TemporaryDirectory(prefix="arl-bench-scale-") as d:
        task_dir = make_probe_task(Path(d) / "probe", 0.0)
        for store in ("postgresql", "sqlite"):
            for n in (int(x) for x in args.workers.split(",")):
                if store == "sqlite":
                    url, name = f"sqlite:///{Path(d) / f'scale-{n}.db'}", None
                else:
                    name, url = _pg_database(args.pg)
                try:
                    rate, lat, first = run(url, task_dir, n, args.trials)
                finally:
                    if name:
                        _drop(args.pg, name)
                p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
                print(f"{store:11} {n:7} {rate:9.2f} {statistics.median(lat):8.0f} {p99:8.0f} "
                      f"{statistics.median(first):15.0f}", flush=True)


if __name__ == "__main__":
    main()
