"""Forensics speed: load a synthetic ledger into DuckDB and time every named query.

    python benchmarks/queries.py [--trials 100000] [--store URL]

Builds a synthetic search of ``--trials`` trials (6 events each, ≈1M events for
100,000) in a temporary SQLite ledger (or uses ``--store``), then prints the
load time into DuckDB (in memory; then an incremental refresh of a cache file
after 1,000 more trials) and the time of each named query after the load, each
beside its target: load ≤ 10 s, each named query ≤ 1 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arl.ledger import Ledger  # noqa: E402
from arl.queries.load import connect_with_stats  # noqa: E402
from arl.queries.named import NAMED, run_named  # noqa: E402
from tests.factories import synthetic_search  # noqa: E402

LOAD_TARGET_S = 10.0
QUERY_TARGET_S = 1.0


def build(ledger: Ledger, trials: int, *, seed: int, batch: int = 5_000) -> int:
    events = synthetic_search(trials, seed=seed, agents=8)
    for i in range(0, len(events), batch):
        ledger.append(*events[i : i + batch])
    return len(events)


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _verdict(seconds: float, target: float) -> str:
    return "ok" if seconds <= target else "OVER TARGET"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--store", help="an existing ledger to load instead of a synthetic one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="arl-bench-queries-") as d:
        url = args.store or f"sqlite:///{Path(d) / 'ledger.db'}"
        with Ledger.open(url) as ledger:
            if not args.store:
                t0 = time.perf_counter()
                n = build(ledger, args.trials, seed=1)
                print(f"built a synthetic ledger: {args.trials:,} trials, {n:,} events "
                      f"in {time.perf_counter() - t0:.1f} s ({ledger.url.kind})\n")

            print(f"machine: {os.cpu_count()} cores, load average {_load():.1f} "
                  "(other work on the machine slows every wall-clock figure below)\n")
            cpu0 = time.process_time()
            con, stats = connect_with_stats(ledger)
            cpu = time.process_time() - cpu0
            trials = con.execute("SELECT count(*) FROM trials").fetchall()[0][0]
            print(f"{'load into DuckDB (memory)':<34}{stats.seconds:8.2f} s   target ≤ {LOAD_TARGET_S:.0f} s   "
                  f"{_verdict(stats.seconds, LOAD_TARGET_S)}   "
                  f"({stats.events:,} events, {trials:,} trials, "
                  f"{stats.events / stats.seconds:,.0f} events/s; {cpu:.1f} CPU-s in all threads)")

            cache = Path(d) / "cache.duckdb"
            cached, full = connect_with_stats(ledger, cache)
            cached.close()
            if not args.store:
                build(ledger, 1_000, seed=2)
            cached, inc = connect_with_stats(ledger, cache)
            cached.close()
            print(f"{'load into a cache file':<34}{full.seconds:8.2f} s   target ≤ {LOAD_TARGET_S:.0f} s   "
                  f"{_verdict(full.seconds, LOAD_TARGET_S)}")
            print(f"{'refresh cache (+' + format(inc.events, ',') + ' events)':<34}{inc.seconds:8.2f} s\n")

            for name in NAMED:
                for quartiles in ((False, True) if name == "label_mix" else (False,)):
                    t0 = time.perf_counter()
                    table = run_named(con, name, quartiles=quartiles)
                    dt = time.perf_counter() - t0
                    label = name + (" --quartiles" if quartiles else "")
                    print(f"{'query ' + label:<34}{dt:8.3f} s   target ≤ {QUERY_TARGET_S:.0f} s   "
                          f"{_verdict(dt, QUERY_TARGET_S)}   ({len(table.rows):,} rows)")
            con.close()


if __name__ == "__main__":
    main()
