"""Projections: the views, rebuild == live, resume after kill -9, following the log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import msgspec
import pytest

from arl.ledger import Ledger, events as ev
from arl.ledger.events import Label
from arl.agents.lineage import TrialLine
from arl.ledger.projections import Projector, State, rebuild
from tests.factories import synthetic_search

ROOT = Path(__file__).resolve().parents[1]


def _trial(search, seq, *, parents=(), agent="opt"):
    return ev.TrialProposed(originator_id=ev.trial_id(search, seq), originator_version=1,
                            search_id=search, seq=seq, agent=agent, surface=agent + "-s",
                            parents=parents)


def _steps(search, seq, label, score, start=2):
    tid = ev.trial_id(search, seq)
    c = {"originator_id": tid, "search_id": search}
    return [
        ev.TrialSubmitted(**c, originator_version=start, program_digest=f"{seq:064x}"),
        ev.TrialClaimed(**c, originator_version=start + 1, runner="w"),
        ev.RunFinished(**c, originator_version=start + 2, runner="w"),
        ev.TrialEvaluated(**c, originator_version=start + 3, evaluator="e", score=score),
        ev.TrialLabeled(**c, originator_version=start + 4, label=label, score=score),
    ]


@pytest.mark.parametrize("direction, best_seq", [("min", 2), ("max", 0)])
def test_views_of_a_small_search(direction, best_seq):
    s = str(uuid.uuid4())
    t = lambda i: ev.trial_id(s, i)  # noqa: E731
    log = [ev.SearchStarted(originator_id=s, originator_version=1, name="n", task="k",
                            task_digest="d", direction=direction)]
    log += [_trial(s, 0, agent="baseline"), *_steps(s, 0, Label.BASELINE, 3.0)]
    log += [_trial(s, 1, parents=(t(0),)), *_steps(s, 1, Label.CRASH, None)]
    keep_score = 2.5 if direction == "min" else 2.0  # a keep that is worse never becomes best
    log += [_trial(s, 2, parents=(t(0),), agent="arch"), *_steps(s, 2, Label.KEEP, keep_score)]
    log += [_trial(s, 3, parents=(t(2), t(1)), agent="arch"), *_steps(s, 3, Label.DUPLICATE, 2.5)[:1]]
    state = State()
    for i, e in enumerate(log, 1):
        state.apply(i, e)

    search = state.searches[s]
    assert search.best_trial == t(best_seq) and search.baseline_score == 3.0
    assert (search.proposed, search.labeled, search.charged) == (4, 3, 2)
    assert state.children[t(0)] == [t(1), t(2)] and state.children[t(1)] == [t(3)]
    assert state.trials[t(3)].parents == (t(2), t(1))
    assert state.lineage(t(3)) == [t(0), t(2), t(3)]
    assert state.by_agent[f"{s}/opt"] == {"crash": 1}
    assert state.by_surface[f"{s}/arch-s"] == {"keep": 1}
    assert list(state.queue) == [t(3)]  # submitted, not yet claimed
    assert state.trials[t(1)].label is Label.CRASH and state.trials[t(1)].score is None
    # A lost lease puts the trial back in the queue; the next claim takes it out.
    state.apply(100, ev.TrialClaimed(originator_id=t(3), originator_version=3, search_id=s, runner="a"))
    assert not state.queue
    state.apply(101, ev.LeaseExpired(originator_id=t(3), originator_version=4, search_id=s, runner="a"))
    assert list(state.queue) == [t(3)] and state.trials[t(3)].status == "submitted"


def test_a_failed_check_says_how_far_it_missed():
    s = str(uuid.uuid4())
    log = [ev.SearchStarted(originator_id=s, originator_version=1, name="n", task="k", task_digest="d",
                            direction="min"),
           _trial(s, 0, agent="baseline"), *_steps(s, 0, Label.BASELINE, 30.0), _trial(s, 1)]
    steps = _steps(s, 1, Label.GATE_MISS, 24.0)
    steps[3] = msgspec.structs.replace(steps[3], checks=(
        ev.Check(name="train_s", passed=True, value=25.0, limit=150.0, fails_as=Label.TRAIN_BUDGET_OVERRUN),
        ev.Check(name="accuracy", passed=False, value=0.5586, limit=0.57, fails_as=Label.GATE_MISS)))
    state = State()
    for i, e in enumerate(log + steps, 1):
        state.apply(i, e)
    row = state.trials[ev.trial_id(s, 1)]
    assert row.shortfalls == {"gate_miss": pytest.approx(0.02)}  # passed checks are not listed
    assert TrialLine.of(row).shortfall == pytest.approx(0.02)
    assert TrialLine.of(state.trials[ev.trial_id(s, 0)]).shortfall is None


def test_rebuild_equals_live_state(store_url):
    log = synthetic_search(300, seed=1) + synthetic_search(200, seed=2)
    with Ledger.open(store_url) as ledger:
        live = Projector(ledger, checkpoint_s=0.0)
        for i in range(0, len(log), 97):  # the live one follows the writes chunk by chunk
            ledger.append(*log[i : i + 97])
            live.catch_up(page=64)
        from_zero = rebuild(ledger)
        assert from_zero.position == ledger.head() == len(log)
        assert live.state.digests() == from_zero.digests()
        # A new projector starts from the stored checkpoint and agrees too.
        resumed = Projector(ledger)
        assert resumed.state.position == ledger.head()
        assert resumed.state.digest() == from_zero.digest()
    assert len(from_zero.trials) == 502 and len(from_zero.searches) == 2


def test_a_corrupt_checkpoint_is_ignored_and_rebuilt(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        ledger.append(*synthetic_search(20))
        ledger.save_checkpoint("state/v1", ledger.head(), "0" * 64, b"\x93garbage")
        p = Projector(ledger)
        assert p.state.position == 0
        assert p.catch_up().digest() == rebuild(ledger).digest()


PROJECTOR = textwrap.dedent(
    """
    import sys, time
    from arl.ledger import Ledger
    from arl.ledger.projections import Projector

    class Slow(Projector):
        def checkpoint(self):
            super().checkpoint()
            print(self.state.position, flush=True)
            time.sleep(0.05)

    with Ledger.open(sys.argv[1]) as ledger:
        Slow(ledger, checkpoint_s=0.0).catch_up(page=500)
    """
)


def test_projection_resumes_after_kill_9(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        ledger.append(*synthetic_search(2_000, seed=3))
        head = ledger.head()
    proc = subprocess.Popen([sys.executable, "-c", PROJECTOR, sqlite_url], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    positions = [int(proc.stdout.readline()) for _ in range(5)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    with Ledger.open(sqlite_url) as ledger:
        p = Projector(ledger)
        assert positions[-1] <= p.state.position < head  # resumed mid-log, not from zero
        assert p.catch_up().position == head
        assert p.state.digests() == rebuild(ledger).digests()


WRITER = textwrap.dedent(
    """
    import sys, time, uuid
    from arl.ledger import Ledger, events as ev
    with Ledger.open(sys.argv[1]) as ledger:
        time.sleep(float(sys.argv[2]))
        s = str(uuid.uuid4())
        ledger.append(ev.SearchStarted(originator_id=s, originator_version=1, name="late",
                                       task="t", task_digest="d", direction="min"))
    """
)


def test_followers_wake_on_writes_from_another_process(store_url):
    with Ledger.open(store_url) as ledger:
        ledger.append(*synthetic_search(1))
        head = ledger.head()
        ledger.wait(head, timeout=0.2)  # start the watcher before the write
        writer = subprocess.Popen([sys.executable, "-c", WRITER, store_url, "1.0"], cwd=ROOT)
        started = time.monotonic()
        # Polling is set far beyond the timeout: only a real wake-up (file watch
        # on SQLite, LISTEN/NOTIFY on PostgreSQL) can return True here.
        woke = ledger.wait(head, timeout=30, poll=60)
        waited = time.monotonic() - started
        writer.wait(timeout=30)
        assert woke, f"no wake-up after {waited:.1f} s"
        got = [e for _, e in ledger.read(head)]
        assert [e.name for e in got] == ["late"]


def test_follow_yields_history_then_new_events(sqlite_url):
    import threading

    with Ledger.open(sqlite_url) as ledger:
        ledger.append(*synthetic_search(2))
        stop = threading.Event()
        seen = []
        # A follower that never sees the late event must fail the test, not hang the suite.
        watchdog = threading.Timer(60.0, stop.set)
        watchdog.start()
        subprocess.Popen([sys.executable, "-c", WRITER, sqlite_url, "0.5"], cwd=ROOT)
        for nid, event in ledger.follow(0, stop):
            seen.append(nid)
            if isinstance(event, ev.SearchStarted) and event.name == "late":
                stop.set()
        watchdog.cancel()
        assert seen == list(range(1, len(seen) + 1)) and len(seen) == 1 + 3 * 6 + 1
