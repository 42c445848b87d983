"""A large cluster against one PostgreSQL ledger: 128 workers racing for no-op trials.

    python benchmarks/claims.py [--workers 128] [--procs 16] [--burst 256] [--trickle 200]
                                [--rate 20] [--trial-s 0.5] [--server postgresql://…]

Each simulated worker is a real :class:`arl.runners.worker.Worker` with its own ledger
connection and its own LISTEN wake-ups, as an `arl worker` on a cluster node would be;
only its trial is a no-op (it sleeps ``--trial-s`` and records a discard). Workers run as
``--procs`` processes of ``workers / procs`` threads each (128 Python processes do not
fit a small machine; each thread still claims through its own connections).

Two phases: a burst (``--burst`` trials submitted at once to idle workers) and a trickle
(``--trickle`` trials at ``--rate`` per second, every idle worker woken by each one).
Prints, per phase: claims per second, conflicts per claim (claims that lost the race,
``ConflictError`` from :func:`arl.runners.trials.claim`), claim hints lost per claim
(where the claim path has them: a cheap refusal before any claim is tried), and
submit → start p50 / p99 (``TrialSubmitted.at`` to ``TrialClaimed.at``). Then checks
that every trial was claimed and labelled exactly once.

Without ``--server`` it starts its own throwaway PostgreSQL (initdb in a temporary
folder, ``max_connections=800``): 128 workers hold ~3 connections each, more than a
default server's 100.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arl.ledger import Ledger, events as ev  # noqa: E402
from arl.ledger.events import Label  # noqa: E402
from arl.ledger.programs import read_folder  # noqa: E402
from arl.runners import trials as trial_protocol  # noqa: E402
from arl.runners import worker as worker_module  # noqa: E402
from arl.runners.trials import TrialRecorder, start_search, submit  # noqa: E402
from arl.runners.worker import Worker  # noqa: E402
from arl.tasks.manifest import load_task  # noqa: E402

TINY = ROOT / "tests" / "tasks" / "tiny"


class NoOpWorker(Worker):
    """The real claim path; the trial itself only waits and records a discard."""

    trial_s = 0.5

    def execute(self, trial: str, claimed: ev.TrialClaimed) -> None:
        time.sleep(self.trial_s)
        TrialRecorder(self.ledger, trial, claimed).label(Label.DISCARD, "no-op trial (benchmark)")


def _count_conflicts(counts: Counter) -> None:
    """Count lost races where the worker calls the trial protocol (measurement, not a change)."""
    real_claim = worker_module.claim

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            return real_claim(*args, **kwargs)
        except trial_protocol.ConflictError:
            counts["conflicts"] += 1
            raise

    worker_module.claim = counted
    hint = getattr(worker_module, "claim_hint", None)
    if hint is not None:
        def hinted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            got = hint(*args, **kwargs)
            counts["hints_lost" if not got else "hints_won"] += 1
            return got

        worker_module.claim_hint = hinted


def _proc(url: str, index: int, threads: int, trial_s: float, stop_at: float, ready, out) -> None:
    # Below the submitter's priority: on a small machine the simulated cluster must not starve
    # the one process that submits (its rate would then be what is measured).
    os.nice(5)
    counts: Counter = Counter()
    _count_conflicts(counts)
    NoOpWorker.trial_s = trial_s
    stop = threading.Event()
    ledgers = [Ledger.open(url) for _ in range(threads)]
    workers = [NoOpWorker(lg, name=f"sim{index:02d}.{i:02d}", heartbeat_s=None, lease_s=600.0,
                          poll_s=5.0) for i, lg in enumerate(ledgers)]
    for w in workers:
        w.projector.catch_up()
    ready.put(index)
    runs = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
    for t in runs:
        t.start()
    while time.time() < stop_at and not os.path.exists(f"/tmp/arl-claims-stop-{os.getppid()}"):
        time.sleep(0.2)
    stop.set()
    for t in runs:
        t.join()
    for lg in ledgers:
        lg.close()
    out.put(dict(counts))


def _private_server(tmp: Path, port: int) -> tuple[str, subprocess.Popen | None]:
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bins:
        raise SystemExit("no PostgreSQL binaries under /usr/lib/postgresql; pass --server URL")
    bin_dir = bins[-1]
    data = tmp / "pgdata"
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, stdout=subprocess.DEVNULL)
    server = subprocess.Popen(
        [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(tmp),
         "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=800", "-c", "fsync=off",
         "-c", "shared_buffers=128MB"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"]).returncode == 0:
            break
        time.sleep(0.1)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", server


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=128)
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--burst", type=int, default=256)
    ap.add_argument("--trickle", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0, help="trickle submissions per second")
    ap.add_argument("--trial-s", type=float, default=0.5)
    ap.add_argument("--server", help="PostgreSQL URL of a server (its database `arl_claims_bench` is "
                                     "dropped and made); default: a throwaway server of its own")
    ap.add_argument("--port", type=int, default=5499)
    ap.add_argument("--label", default="", help="a note recorded with the figures (e.g. before/after)")
    ap.add_argument("--out", help="append the figures as one JSON line to this file")
    args = ap.parse_args()

    import psycopg

    tmp = Path(tempfile.mkdtemp(prefix="arl-claims-"))
    server = None
    os.environ["ARL_CACHE"] = str(tmp / "cache")
    try:
        admin, server = (args.server, None) if args.server else _private_server(tmp, args.port)
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS arl_claims_bench")
            c.execute("CREATE DATABASE arl_claims_bench")
        url = admin.rsplit("/", 1)[0] + "/arl_claims_bench"
        task = load_task(TINY)
        program = read_folder(task.recipe_dir)
        with Ledger.open(url) as ledger:
            search = start_search(ledger, task, name="claims-bench")
        per = args.workers // args.procs
        ctx = mp.get_context("spawn")
        ready, out = ctx.Queue(), ctx.Queue()
        total = args.burst + args.trickle
        budget_s = 120 + total * args.trial_s + args.trickle / args.rate * 2
        stop_at = time.time() + budget_s
        procs = [ctx.Process(target=_proc, args=(url, i, per, args.trial_s, stop_at, ready, out))
                 for i in range(args.procs)]
        t0 = time.time()
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=600)
        print(f"{args.procs * per} workers ready in {time.time() - t0:.1f} s", file=sys.stderr)

        phases: dict[str, tuple[int, int]] = {}
        with Ledger.open(url) as ledger:
            def labelled() -> int:
                return sum(1 for _, e in ledger.iter_events() if isinstance(e, ev.TrialLabeled))

            seq = 0
            first = seq + 1
            for _ in range(args.burst):
                seq += 1
                submit(ledger, task, search, seq, agent="tuner", surface="fit", program=program)
            while labelled() < seq and time.time() < stop_at:
                time.sleep(0.5)
            phases["burst"] = (first, seq)
            first = seq + 1
            for _ in range(args.trickle):
                seq += 1
                submit(ledger, task, search, seq, agent="tuner", surface="fit", program=program)
                time.sleep(1.0 / args.rate)
            while labelled() < seq and time.time() < stop_at:
                time.sleep(0.5)
            phases["trickle"] = (first, seq)
            Path(f"/tmp/arl-claims-stop-{os.getpid()}").touch()
            counts: Counter = Counter()
            for _ in procs:
                counts.update(out.get(timeout=300))
            for p in procs:
                p.join()

            submitted: dict[str, float] = {}
            claims: dict[str, list[float]] = {}
            labels: Counter = Counter()
            seq_of: dict[str, int] = {}
            for _, e in ledger.iter_events():
                if isinstance(e, ev.TrialProposed):
                    seq_of[e.originator_id] = e.seq
                elif isinstance(e, ev.TrialSubmitted):
                    submitted[e.originator_id] = e.at.timestamp()
                elif isinstance(e, ev.TrialClaimed):
                    claims.setdefault(e.originator_id, []).append(e.at.timestamp())
                elif isinstance(e, ev.TrialLabeled):
                    labels[e.originator_id] += 1
        twice = [seq_of[t] for t, n in labels.items() if n > 1]
        claimed_twice = [seq_of[t] for t, c in claims.items() if len(c) > 1]
        unlabelled = [seq_of[t] for t in submitted if labels[t] == 0]
        result = {"label": args.label, "workers": args.procs * per, "procs": args.procs,
                  "trial_s": args.trial_s, "conflicts": counts["conflicts"],
                  "hints_lost": counts["hints_lost"], "phases": {}}
        print(f"claims benchmark {args.label}: {args.procs * per} workers ({args.procs} processes), "
              f"no-op trials of {args.trial_s} s, one PostgreSQL ledger")
        for name, (lo, hi) in phases.items():
            ids = [t for t, s in seq_of.items() if lo <= s <= hi and t in claims]
            waits = [claims[t][0] - submitted[t] for t in ids]
            starts = [claims[t][0] for t in ids]
            span = (max(starts) - min(submitted[t] for t in ids)) if ids else float("nan")
            figures = {"trials": hi - lo + 1, "claimed": len(ids),
                       "claims_per_s": round(len(ids) / span, 1) if span else None,
                       "p50_s": round(_percentile(waits, 0.5), 3), "p99_s": round(_percentile(waits, 0.99), 3)}
            result["phases"][name] = figures
            print(f"  {name:8} {figures['claimed']}/{figures['trials']} claimed, "
                  f"{figures['claims_per_s']} claims/s, submit→start p50 {figures['p50_s']:.3f} s, "
                  f"p99 {figures['p99_s']:.3f} s")
        n_claims = sum(len(c) for c in claims.values())
        result["conflicts_per_claim"] = round(counts["conflicts"] / max(1, n_claims), 2)
        result["hints_lost_per_claim"] = round(counts["hints_lost"] / max(1, n_claims), 2)
        print(f"  conflicts per claim {result['conflicts_per_claim']} ({counts['conflicts']} lost races, "
              f"{n_claims} claims); claim hints lost per claim {result['hints_lost_per_claim']}")
        print(f"  exactly once: {len(submitted) - len(unlabelled)}/{len(submitted)} labelled, "
              f"labelled twice {twice or 'none'}, claimed twice {claimed_twice or 'none'}")
        result.update(unlabelled=len(unlabelled), labelled_twice=len(twice), claimed_twice=len(claimed_twice))
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
