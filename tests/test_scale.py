"""Scale-out on the real PostgreSQL server: several worker processes, one ledger, nothing lost."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from arl.ledger import Ledger, events as ev
from arl.ledger.programs import read_folder
from arl.ledger.projections import rebuild
from arl.runners.trials import start_search, submit
from arl.runners.worker import Worker
from arl.tasks.manifest import load_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "tasks" / "tiny"
ARL = [sys.executable, "-m", "arl.runners.cli"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    return {**os.environ, "ARL_CACHE": str(tmp_path / "cache")}


@pytest.fixture
def task():
    return load_task(TINY)


def edited(task, **constants):
    program = read_folder(task.recipe_dir)
    src = program["train.py"].decode()
    for name, value in constants.items():
        src = re.sub(rf"^{name} = .*$", f"{name} = {value!r}", src, flags=re.M)
    program["train.py"] = src.encode()
    return program


def wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def labels(ledger, search):
    out: dict[str, list] = {}
    for _, e in ledger.iter_events():
        if isinstance(e, ev.TrialLabeled) and e.search_id == search:
            out.setdefault(e.originator_id, []).append(e)
    return out


def start_workers(url, env, n, name="w"):
    return [subprocess.Popen([*ARL, "worker", "--store", url, "--name", f"{name}{i}"], cwd=ROOT, env=env,
                             stderr=subprocess.PIPE, text=True) for i in range(n)]


def stop_workers(procs):
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()


def test_several_workers_share_one_queue_and_label_each_trial_once(pg_url, env, task):
    procs = start_workers(pg_url, env, 3)
    try:
        with Ledger.open(pg_url) as ledger:
            search = start_search(ledger, task, name="many")
            base = read_folder(task.recipe_dir)
            submit(ledger, task, search, 0, agent="baseline", surface="", program=base)
            for seq in range(1, 12):
                submit(ledger, task, search, seq, agent="t", surface="fit", parent_program=base,
                       program=edited(task, SHRINK=round(0.5 + seq * 0.05, 2), SLEEP_S=0.3))
            wait_for(lambda: len(labels(ledger, search)) == 12, what="12 labels")
            got = labels(ledger, search)
            runners = {e.runner for _, e in ledger.iter_events() if isinstance(e, ev.TrialClaimed)}
    finally:
        stop_workers(procs)
    assert all(len(v) == 1 for v in got.values())
    assert len(runners) >= 2  # the work was shared


def test_sigterm_gives_the_running_trial_back(pg_url, env, task):
    [doomed] = start_workers(pg_url, env, 1, name="doomed")
    with Ledger.open(pg_url) as ledger:
        search = start_search(ledger, task, name="term")
        trial = submit(ledger, task, search, 0, agent="baseline", surface="",
                       program=edited(task, SLEEP_S=2.0), seeds=(0,))
        wait_for(lambda: any(isinstance(e, ev.TrialClaimed) for e in ledger.stream(trial)), what="claim")
        time.sleep(0.5)
        t0 = time.monotonic()
        doomed.send_signal(signal.SIGTERM)
        assert doomed.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 2.0  # it did not wait for the recipe to finish
        Worker(ledger, name="rescuer").run(exit_when_idle=True)
        kinds = [type(e).__name__ for e in ledger.stream(trial)]
        released = [e for e in ledger.stream(trial) if isinstance(e, ev.LeaseExpired)]
    assert kinds == ["TrialProposed", "TrialSubmitted", "TrialClaimed", "LeaseExpired", "TrialClaimed",
                     "RunFinished", "TrialEvaluated", "TrialLabeled"]
    assert "released by doomed0" in released[0].reason


def test_a_late_result_is_refused_recorded_and_not_labelled(store_url, env, task):
    with Ledger.open(store_url) as ledger:
        search = start_search(ledger, task, name="late")
        trial = submit(ledger, task, search, 0, agent="baseline", surface="",
                       program=edited(task, SLEEP_S=1.6), seeds=(0,))
        # A runner that stops heartbeating (a partition): its 1 s lease runs out mid-trial.
        partitioned = Worker(ledger, name="partitioned", lease_s=1.0, heartbeat_s=None)
        t = threading.Thread(target=partitioned.run, kwargs={"max_trials": 1})
        t.start()
        wait_for(lambda: any(isinstance(e, ev.TrialClaimed) for e in ledger.stream(trial)), what="claim")
        time.sleep(1.2)
        Worker(ledger, name="healthy").run(exit_when_idle=True)
        t.join(timeout=60)
        stream = ledger.stream(trial)
        state = rebuild(ledger)
    finished = [e for e in stream if isinstance(e, ev.RunFinished)]
    assert sum(isinstance(e, ev.TrialLabeled) for e in stream) == 1
    assert [e.runner for e in finished if e.refused] == ["partitioned"]
    assert [e.runner for e in finished if not e.refused] == ["healthy"]
    assert "stale lease" in next(e.refused for e in finished if e.refused)
    assert state.trials[trial].label.value == "baseline"


def test_a_killed_search_driver_resumes(pg_url, env):
    [worker] = start_workers(pg_url, env, 1)
    try:
        driver = subprocess.Popen([*ARL, "run", str(TINY), "--workers", "0", "--trials", "6",
                                   "--store", pg_url, "--name", "phoenix"], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with Ledger.open(pg_url) as ledger:
            wait_for(lambda: sum(isinstance(e, ev.TrialLabeled) for _, e in ledger.read(0, 10_000)) >= 3,
                     what="3 labels")
            driver.kill()
            driver.wait()
            resumed = subprocess.run([*ARL, "run", "--resume", "phoenix", "--workers", "0", "--store", pg_url],
                                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
            assert resumed.returncode == 0, resumed.stderr
            search = next(e for _, e in ledger.read() if isinstance(e, ev.SearchStarted))
            state = rebuild(ledger)
            got = labels(ledger, search.originator_id)
    finally:
        stop_workers([worker])
    assert state.searches[search.originator_id].charged == 6
    assert all(len(v) == 1 for v in got.values())
    assert "6/6 trials, stopped (trial budget spent)" in resumed.stdout
