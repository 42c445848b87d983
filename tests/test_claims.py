"""The claim path under a herd, on the real PostgreSQL server: many workers woken by the same
submissions race for them; a claim hint lets one try each, and every trial is claimed and
labelled exactly once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from arl.ledger import Ledger, events as ev
from arl.ledger.events import Label
from arl.ledger.programs import read_folder
from arl.runners.trials import TrialRecorder, claim, claim_hint, expire_leases, start_search, submit
from arl.runners.worker import Worker
from arl.tasks.manifest import load_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "tasks" / "tiny"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))


class QuickWorker(Worker):
    """The real claim path (projection, hint, claim); the trial records a discard at once."""

    def execute(self, trial: str, claimed: ev.TrialClaimed) -> None:
        TrialRecorder(self.ledger, trial, claimed).label(Label.DISCARD, "no-op trial")


def test_a_hint_goes_to_one_runner_per_queued_version(store_url):
    with Ledger.open(store_url) as ledger:
        assert claim_hint(ledger, "t1", 2, "a")
        assert not claim_hint(ledger, "t1", 2, "b")      # a holds it
        assert not claim_hint(ledger, "t1", 1, "b")      # an older queueing of the trial
        assert claim_hint(ledger, "t1", 4, "b")          # queued again (after LeaseExpired)
        assert claim_hint(ledger, "t2", 2, "a", hold_s=0.0)
        time.sleep(0.01)
        assert claim_hint(ledger, "t2", 2, "b")          # a's hold ran out: it died before claiming


def test_eight_runners_racing_for_one_hint_get_it_once(pg_url):
    ledgers = [Ledger.open(pg_url) for _ in range(8)]
    try:
        for rnd in range(3):
            gate = threading.Barrier(8)
            won: list[str] = []

            def race(i: int, rnd: int = rnd, gate: threading.Barrier = gate) -> None:
                gate.wait()
                if claim_hint(ledgers[i], f"trial-{rnd}", 2, f"runner-{i}"):
                    won.append(f"runner-{i}")

            threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(won) == 1, (rnd, won)
    finally:
        for lg in ledgers:
            lg.close()


def test_a_herd_of_workers_claims_and_labels_every_trial_exactly_once(pg_url):
    task = load_task(TINY)
    program = read_folder(task.recipe_dir)
    n_workers, n_trials = 8, 30
    ledgers = [Ledger.open(pg_url) for _ in range(n_workers)]
    stop = threading.Event()
    try:
        search = start_search(ledgers[0], task, name="herd")
        workers = [QuickWorker(lg, name=f"w{i}", heartbeat_s=None, lease_s=600.0, poll_s=0.2)
                   for i, lg in enumerate(ledgers)]
        threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
        for t in threads:
            t.start()
        # Submitted one by one while every worker is idle: each submission wakes all of them.
        for seq in range(1, n_trials + 1):
            submit(ledgers[0], task, search, seq, agent="t", surface="fit", program=program)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            labelled = sum(isinstance(e, ev.TrialLabeled) for _, e in ledgers[0].iter_events())
            if labelled >= n_trials:
                break
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        events = [e for _, e in ledgers[0].iter_events()]
    finally:
        stop.set()
        for lg in ledgers:
            lg.close()
    claims = Counter(e.originator_id for e in events if isinstance(e, ev.TrialClaimed))
    labels = Counter(e.originator_id for e in events if isinstance(e, ev.TrialLabeled))
    submitted = {e.originator_id for e in events if isinstance(e, ev.TrialSubmitted)}
    assert len(submitted) == n_trials
    assert set(claims) == submitted and set(claims.values()) == {1}
    assert set(labels) == submitted and set(labels.values()) == {1}
    assert len({e.runner for e in events if isinstance(e, ev.TrialClaimed)}) > 1  # the work was shared


def test_a_lease_is_expired_only_when_its_heartbeats_stop(pg_url):
    task = load_task(TINY)
    with Ledger.open(pg_url) as ledger:
        search = start_search(ledger, task, name="beats")
        program = read_folder(task.recipe_dir)
        alive, dead = (submit(ledger, task, search, seq, agent="t", surface="fit", program=program)
                       for seq in (1, 2))
        for trial in (alive, dead):
            claim(ledger, trial, f"runner-{trial[:4]}", lease_s=0.1)
        ledger.renew_lease(alive, f"runner-{alive[:4]}", time.time() + 60)
        ledger.renew_lease(dead, "someone-else", time.time() + 60)  # not the holder's heartbeat
        time.sleep(0.2)
        state = Worker(ledger, name="reaper").projector.catch_up()
        assert expire_leases(ledger, state, max_attempts=3) == 1
        assert isinstance(ledger.stream(dead)[-1], ev.LeaseExpired)
        assert isinstance(ledger.stream(alive)[-1], ev.TrialClaimed)
