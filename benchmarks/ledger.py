"""Ledger throughput on SQLite, each figure beside its reference from the same run.

    python benchmarks/ledger.py [--events 1000000] [--singles 2000]

Prints: single-event appends/s and batched appends/s, each as a ratio to plain
sqlite3 inserting the same bytes into the same table shape with the same
journal settings; projection rebuild events/s over a synthetic ledger; and
`arl verify` events/s over it (chain and blobs; then with the checkpoint compared
against a rebuild, as `arl verify` does by default). Targets (2 cores): rebuild >= 100,000 events/s,
verify >= 100,000 events/s, single appends >= 25 % of plain sqlite3.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arl.ledger import Ledger, events as ev  # noqa: E402
from arl.ledger.projections import Projector, rebuild  # noqa: E402
from arl.ledger.verify import verify  # noqa: E402
from tests.factories import program_bytes, synthetic_search  # noqa: E402


def _plain_sqlite(path: Path) -> sqlite3.Connection:
    """The reference: what eventsourcing's SQLite table looks like, with no library on top."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE stored_events (originator_id TEXT, originator_version INTEGER, "
        "topic TEXT, state BLOB, PRIMARY KEY (originator_id, originator_version))"
    )
    return conn


def _events(n: int) -> list[ev.Event]:
    search = str(uuid.uuid4())
    return [
        ev.TrialLabeled(originator_id=ev.trial_id(search, i), originator_version=1,
                        search_id=search, label=ev.Label.DISCARD, score=3.5, reason="not better")
        for i in range(n)
    ]


def bench_appends(tmp: Path, n: int, batch: int) -> tuple[float, float]:
    """(arl events/s, plain sqlite3 events/s) for transactions of ``batch`` events."""
    events = _events(n)
    rows = [(e.originator_id, 1, f"ledger.events:{type(e).__name__}", ev.encode(e)) for e in events]

    conn = _plain_sqlite(tmp / f"plain-{batch}.db")
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO stored_events VALUES (?, ?, ?, ?)", rows[i : i + batch])
        conn.execute("COMMIT")
    plain = n / (time.perf_counter() - t0)
    conn.close()

    with Ledger.open(f"sqlite:///{tmp / f'arl-{batch}.db'}") as ledger:
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            ledger.append(*events[i : i + batch])
        ours = n / (time.perf_counter() - t0)
    return ours, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="size of the synthetic ledger")
    parser.add_argument("--singles", type=int, default=2_000, help="single-event appends to time")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="arl-bench-") as d:
        tmp = Path(d)
        print(f"arl ledger benchmark (SQLite, {sqlite3.sqlite_version}); figures from this run\n")
        ours, plain = bench_appends(tmp, args.singles, 1)
        print(f"append, 1 event per transaction : {ours:10,.0f} events/s   "
              f"plain sqlite3 {plain:10,.0f}/s   ratio {ours / plain:6.1%}  (target >= 25 %)")
        ours, plain = bench_appends(tmp, 50_000, 100)
        print(f"append, 100 events per batch    : {ours:10,.0f} events/s   "
              f"plain sqlite3 {plain:10,.0f}/s   ratio {ours / plain:6.1%}")

        trials = max(1, (args.events - 1) // 6 - 1)
        print(f"\nbuilding a synthetic ledger: {trials + 1:,} trials …", file=sys.stderr)
        log = synthetic_search(trials, seed=7)
        url = f"sqlite:///{tmp / 'big.db'}"
        with Ledger.open(url) as ledger:
            ledger.put_blobs([program_bytes(seq) for seq in range(trials + 1)])
            t0 = time.perf_counter()
            for i in range(0, len(log), 5_000):
                ledger.append(*log[i : i + 5_000])
            write_s = time.perf_counter() - t0
        del log
        with Ledger.open(url, create=False) as ledger:
            n = ledger.head()
            print(f"synthetic ledger                : {n:10,} events, {trials + 1:,} trials "
                  f"(written at {n / write_s:,.0f} events/s in batches of 5,000)")
            t0 = time.perf_counter()
            state = rebuild(ledger)
            rebuild_s = time.perf_counter() - t0
            assert state.position == n
            print(f"projection rebuild from zero    : {n / rebuild_s:10,.0f} events/s   "
                  f"({rebuild_s:.2f} s; target >= 100,000/s)")
            t0 = time.perf_counter()
            projector = Projector(ledger, checkpoint_s=3600)
            projector.catch_up()
            projector.checkpoint()
            print(f"  … with a durable checkpoint   : {n / (time.perf_counter() - t0):10,.0f} events/s")
            report = verify(ledger, checkpoints=False)
            assert report.ok, report.problem
            print(f"arl verify (chain + blobs)      : {report.events / report.seconds:10,.0f} events/s   "
                  f"({report.seconds:.2f} s; target >= 100,000/s)")
            # What `arl verify` does by default: also each checkpoint against a rebuild of the
            # log up to its position (a forged checkpoint shows what the log does not record).
            t0 = time.perf_counter()
            report = verify(ledger)
            assert report.ok and report.checkpoints == 1, report.problem
            print(f"  … and the checkpoint, rebuilt : {n / (time.perf_counter() - t0):10,.0f} events/s")


if __name__ == "__main__":
    main()
