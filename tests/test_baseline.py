"""A baseline that fails: never charged, the search stops at once saying why, --resume measures again.

The task is the tiny one with a recipe that overruns its budget while the training data
holds a file named ``busy`` — a machine too busy for the budget, reproduced on demand
(the task itself, and so its digest, stays the same).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arl.ledger import Ledger, events as ev
from arl.ledger.projections import rebuild
from arl.runners.search import SearchConfig, run_search

ROOT = Path(__file__).resolve().parents[1]
ARL = [sys.executable, "-m", "arl.runners.cli"]


@pytest.fixture
def busy_task(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    task = tmp_path / "busy-task"
    shutil.copytree(ROOT / "tests" / "tasks" / "tiny", task)
    recipe = task / "recipe" / "train.py"
    recipe.write_text(recipe.read_text().replace(
        "def main():\n",
        "def main():\n    if os.path.exists(os.path.join(os.environ['ARL_DATA'], 'busy')):\n"
        "        time.sleep(30)  # past the 6 s hard limit\n", 1))
    return task


def _train_dir(tmp_path: Path) -> Path:
    (train,) = {p.parent for p in (tmp_path / "cache").rglob("train.json")}
    return train


def _labels(ledger: Ledger, search: str) -> dict[int, ev.Label]:
    seqs = {e.originator_id: e.seq for _, e in ledger.iter_events()
            if isinstance(e, ev.TrialProposed) and e.search_id == search}
    labels: dict[int, ev.Label] = {}
    for _, e in ledger.iter_events():
        if isinstance(e, ev.TrialLabeled) and e.search_id == search:
            assert seqs[e.originator_id] not in labels, "a trial labelled twice"
            labels[seqs[e.originator_id]] = e.label
    return labels


def test_an_overrunning_baseline_stops_the_search_uncharged_and_resume_measures_it_again(
        busy_task, tmp_path, sqlite_url):
    env = {**os.environ}
    check = subprocess.run([*ARL, "task", "check", str(busy_task)], env=env, capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stderr  # prepares the data; the base program passes when idle
    (_train_dir(tmp_path) / "busy").write_text("1")

    first = subprocess.run([*ARL, "run", str(busy_task), "--trials", "3", "--workers", "2", "--name", "busy",
                            "--store", sqlite_url], env=env, capture_output=True, text=True, timeout=180)
    assert first.returncode == 1, first.stderr
    assert "the base program did not pass (trial #0): train_budget_overrun" in first.stderr
    assert "6 s hard limit" in first.stderr and "the machine looks busy" in first.stderr
    assert "no proposal was charged; `arl run --resume" in first.stderr
    assert "0/3 trials, stopped (baseline failed: train_budget_overrun)" in first.stdout
    with Ledger.open(sqlite_url) as ledger:
        search = next(e.originator_id for _, e in ledger.iter_events() if isinstance(e, ev.SearchStarted))
        state = rebuild(ledger)
        assert state.searches[search].charged == 0
        assert _labels(ledger, search) == {0: ev.Label.TRAIN_BUDGET_OVERRUN}
        # What was proposed beside the baseline went back to the queue, unlabelled.
        released = [e for _, e in ledger.iter_events() if isinstance(e, ev.LeaseExpired)]
        assert all("baseline" in e.reason for e in released)
        assert all(state.trials[t].label is None for t in state.queue)

    (_train_dir(tmp_path) / "busy").unlink()
    again = subprocess.run([*ARL, "run", "--resume", "busy", "--store", sqlite_url], env=env,
                           capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert "3/3 trials, stopped (trial budget spent)" in again.stdout
    with Ledger.open(sqlite_url) as ledger:
        state = rebuild(ledger)
        labels = _labels(ledger, search)
        rows = {r.seq: r for r in state.trials_of(search)}
        remeasure = next(r for r in rows.values() if r.seq > 0 and r.agent == "baseline")
        stops = [e.reason for e in ledger.stream(search) if isinstance(e, ev.SearchStopped)]
    assert labels[remeasure.seq] is ev.Label.BASELINE and "measured again" in remeasure.hypothesis
    assert state.searches[search].baseline_trial == remeasure.trial_id
    assert state.searches[search].charged == 3 and all(r.label is not None for r in rows.values())
    assert stops == ["baseline failed: train_budget_overrun", "trial budget spent"]


def test_a_crashing_baseline_with_no_workers_stops_as_soon_as_an_outside_worker_labels_it(
        tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    task = tmp_path / "crashy"
    shutil.copytree(ROOT / "tests" / "tasks" / "tiny", task)
    recipe = task / "recipe" / "train.py"
    recipe.write_text(recipe.read_text().replace('MODE = "ok"', 'MODE = "crash"'))
    worker = subprocess.Popen([*ARL, "worker", "--store", sqlite_url], env=os.environ.copy(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Ledger.open(sqlite_url) as ledger:
            out = io.StringIO()
            summary = run_search(ledger, str(task), SearchConfig(trials=2, workers=0), out=out)
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
    assert summary.charged == 0 and summary.stopped == "baseline failed: crash"
    assert "boom: the learning rate is negative" in summary.problem
    assert f"arl task check {task}" in summary.problem


def test_a_log_file_gets_one_line_per_label(tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    out = io.StringIO()
    with Ledger.open(sqlite_url) as ledger:
        summary = run_search(ledger, str(ROOT / "tests" / "tasks" / "tiny"),
                             SearchConfig(trials=4, workers=2, seed=1), out=out)
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("[")]
    labelled = sum(summary.labels.values())
    # one line at the start, then at most one per label; never the same state twice
    assert len(lines) <= labelled + 1
    states = [ln.split(" | ", 1)[1] for ln in lines]
    assert len(set(zip([ln.split("]")[0] for ln in lines], states))) == len(lines)
    assert lines[-1].startswith("[4/4]")


def test_a_rerun_whose_baseline_fails_stops_with_the_reason_and_judges_nothing(busy_task, tmp_path, sqlite_url):
    env = {**os.environ}
    done = subprocess.run([*ARL, "run", str(busy_task), "--trials", "2", "--name", "calm", "--store", sqlite_url],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    (_train_dir(tmp_path) / "busy").write_text("1")
    rerun = subprocess.run([*ARL, "replay", "calm", "--rerun", "--store", sqlite_url], env=env,
                           capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 2, rerun.stderr
    assert "the base program did not pass (trial #0): train_budget_overrun" in rerun.stderr
    assert "--rerun` measures it again" in rerun.stderr
    with Ledger.open(sqlite_url) as ledger:
        state = rebuild(ledger)
        replay = next(s for s in state.searches.values() if s.kind == "replay")
        labels = _labels(ledger, replay.search_id)
    assert labels == {0: ev.Label.TRAIN_BUDGET_OVERRUN} and replay.charged == 0
    assert replay.stop_reason == "baseline failed: train_budget_overrun"
