"""`arl run`: the closed loop end to end on the tiny task, stop and resume, status and show."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arl.ledger import Ledger, __version__, events as ev
from arl.ledger.projections import rebuild
from arl.runners.search import SearchConfig, run_search

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "tasks" / "tiny")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))


def _labels(ledger, search):
    seen = {}
    for _, e in ledger.iter_events():
        if isinstance(e, ev.TrialLabeled) and e.search_id == search:
            assert e.originator_id not in seen, "a trial was labelled twice"
            seen[e.originator_id] = e
    return seen


@pytest.mark.parametrize("lineage", [True, False])
def test_a_tuner_search_runs_to_its_budget(store_url, lineage):
    with Ledger.open(store_url) as ledger:
        out = io.StringIO()
        summary = run_search(ledger, TINY, SearchConfig(trials=8, workers=2, lineage=lineage, seed=3), out=out)
        state = rebuild(ledger)
        labels = _labels(ledger, summary.search_id)
        stops = [e for e in ledger.stream(summary.search_id) if isinstance(e, ev.SearchStopped)]
    search = state.searches[summary.search_id]
    assert summary.charged == search.charged == 8 and summary.stopped == "trial budget spent"
    assert len(stops) == 1 and stops[0].summary["charged"] == 8
    rows = state.trials_of(summary.search_id)
    assert rows[0].label.value == "baseline" and all(r.label is not None for r in rows)
    assert len(labels) == len(rows)
    assert all(r.parents for r in rows[1:]) and all(r.backend == "tuner" for r in rows[1:])
    # SHRINK 0.8 → towards 1.0 is a real improvement the tuner finds on the tiny task
    assert summary.best < summary.baseline and summary.gain is not None and summary.gain > 0
    assert "[8/8]" in out.getvalue()  # progress was shown
    started = next(e for _, e in Ledger.open(store_url).read() if isinstance(e, ev.SearchStarted))
    assert started.config["lineage"] is lineage and started.config["trials"] == 8
    # The search names the code that drove it: the version, plus the commit in a checkout.
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0:
        assert started.arl_version.startswith(f"{__version__}+g{head.stdout.strip()}")
    else:
        assert started.arl_version == __version__


def test_interrupt_then_resume_finishes_the_budget(sqlite_url, tmp_path):
    env = {**os.environ, "ARL_CACHE": str(tmp_path / "cache")}
    slow = tmp_path / "slow"
    import shutil

    shutil.copytree(TINY, slow)
    recipe = slow / "recipe" / "train.py"
    recipe.write_text(recipe.read_text().replace("SLEEP_S = 0.0", "SLEEP_S = 1.5"))
    arl = [sys.executable, "-m", "arl.runners.cli"]
    # Ctrl-C as a terminal sends it, whatever this test process inherited for SIGINT.
    proc = subprocess.Popen([*arl, "run", str(slow), "--trials", "10", "--store", sqlite_url, "--name", "stoppy"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    with Ledger.open(sqlite_url) as ledger:
        deadline = time.monotonic() + 60
        while sum(isinstance(e, ev.TrialLabeled) for _, e in ledger.read(0, 10_000)) < 3:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    with Ledger.open(sqlite_url) as ledger:
        search = next(e for _, e in ledger.read() if isinstance(e, ev.SearchStarted))
        charged_then = rebuild(ledger).searches[search.originator_id].charged
    assert charged_then < 10
    done = subprocess.run([*arl, "run", "--resume", "stoppy", "--store", sqlite_url],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "10/10 trials, stopped (trial budget spent)" in done.stdout
    with Ledger.open(sqlite_url) as ledger:
        stops = [e.reason for e in ledger.stream(search.originator_id) if isinstance(e, ev.SearchStopped)]
        assert stops == ["interrupted", "trial budget spent"]
        assert rebuild(ledger).searches[search.originator_id].charged == 10
        _labels(ledger, search.originator_id)
    status = subprocess.run([*arl, "status", "--store", sqlite_url], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert status.returncode == 0 and "stoppy" in status.stdout and "labels:" in status.stdout
    show = subprocess.run([*arl, "show", "stoppy#1", "--store", sqlite_url], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert show.returncode == 0 and "trial #1" in show.stdout and "diff --git a/train.py" in show.stdout
    assert "label:" in show.stdout and ("pass train_s" in show.stdout or "FAIL" in show.stdout)
    bad = subprocess.run([*arl, "show", "stoppy#999", "--store", sqlite_url], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("arl: error:")


@pytest.mark.parametrize("agents", ["random", "tpe"])
def test_baseline_optimisers_run_through_the_same_loop(sqlite_url, agents):
    with Ledger.open(sqlite_url) as ledger:
        summary = run_search(ledger, TINY, SearchConfig(trials=6, workers=2, agents=agents, seed=1),
                             out=io.StringIO())
        state = rebuild(ledger)
    rows = state.trials_of(summary.search_id)
    assert summary.charged == 6 and all(r.label is not None for r in rows)
    assert {r.backend for r in rows[1:]} == {agents}
    assert all(r.parents == (rows[0].trial_id,) for r in rows[1:])  # configurations of the base program
    assert all(r.label.value != "out_of_surface" for r in rows)


def test_turns_go_to_the_specialists_that_deliver():
    from types import SimpleNamespace

    from arl.ledger.events import Label
    from arl.runners.search import turn_order

    names = ["arch", "opt", "reg"]

    def row(seq, agent, label):
        return SimpleNamespace(seq=seq, agent=agent, label=Label(label) if label else None)

    # Nothing known yet: a plain rotation from the current turn.
    assert turn_order(names, [row(0, "baseline", "baseline")], 1, lineage=True) == [1, 2, 0]
    # Two turns each; arch kept twice, reg never: arch is asked first, reg last.
    rows = [row(0, "baseline", "baseline")] + [
        row(i + 1, a, lab) for i, (a, lab) in enumerate(
            [("arch", "keep"), ("opt", "discard"), ("reg", "discard"),
             ("arch", "keep"), ("opt", "keep"), ("reg", "discard")])]
    assert turn_order(names, rows, 0, lineage=True) == [0, 1, 2]
    # Running trials count as turns taken: arch with 3 in flight is no longer first.
    busy = rows + [row(7 + i, "arch", None) for i in range(5)]
    assert turn_order(names, busy, 0, lineage=True)[0] == 1
    # Two misses in a row hand the ball back: arch (2 keeps, then 2 discards) weighs 1 again.
    cold = rows + [row(7, "arch", "discard"), row(8, "arch", "discard")]
    assert turn_order(names, cold, 0, lineage=True)[-1] == 0
    # The control arm does not use the record: plain rotation whatever happened.
    assert turn_order(names, rows, 2, lineage=False) == [2, 0, 1]


def test_the_first_proposals_run_beside_the_baseline_and_are_judged_against_it(sqlite_url):
    # With two workers the baseline shares the machine with trial 1, as every later trial
    # shares it with another: measured alone it would look faster than it is.
    with Ledger.open(sqlite_url) as ledger:
        summary = run_search(ledger, TINY, SearchConfig(trials=4, workers=2, seed=5), out=io.StringIO())
        rows = rebuild(ledger).trials_of(summary.search_id)
    base, first = rows[0], rows[1]
    assert base.label.value == "baseline"
    assert first.proposed_at < base.labeled_at  # proposed while the baseline ran
    assert first.parents == (base.trial_id,)
    for row in rows[1:]:
        if row.label.legal:  # judged against the baseline or a later best, never an empty search
            assert row.delta_vs_best is not None and row.delta_vs_parent is not None, row


def test_resume_applies_a_new_trial_budget_on_the_record_and_refuses_other_changes(sqlite_url, tmp_path):
    env = {**os.environ, "ARL_CACHE": str(tmp_path / "cache")}
    arl = [sys.executable, "-m", "arl.runners.cli"]
    first = subprocess.run([*arl, "run", TINY, "--trials", "2", "--name", "short", "--store", sqlite_url],
                           env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and "2/2 trials" in first.stdout, first.stderr
    with Ledger.open(sqlite_url) as ledger:
        head = ledger.head()
    refused = subprocess.run([*arl, "run", "--resume", "short", "--agents", "random", "--store", sqlite_url],
                             env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "--agents cannot change when a search is resumed (it ran with 'tuner')" in refused.stderr
    with Ledger.open(sqlite_url) as ledger:
        assert ledger.head() == head  # nothing recorded
    more = subprocess.run([*arl, "run", "--resume", "short", "--trials", "4", "--agents", "tuner",
                           "--store", sqlite_url], env=env, capture_output=True, text=True, timeout=120)
    assert more.returncode == 0, more.stderr
    assert "4/4 trials, stopped (trial budget spent)" in more.stdout
    with Ledger.open(sqlite_url) as ledger:
        search = next(e for _, e in ledger.iter_events() if isinstance(e, ev.SearchStarted))
        resumed = [e for e in ledger.stream(search.originator_id) if isinstance(e, ev.SearchResumed)]
        assert [r.changes for r in resumed] == [{"trials": [2, 4]}]
        assert rebuild(ledger).searches[search.originator_id].charged == 4
    status = subprocess.run([*arl, "status", "short", "--store", sqlite_url], env=env, capture_output=True,
                            text=True, timeout=60)
    assert "4/4 trials" in status.stdout


@pytest.mark.parametrize("flags, says", [
    (["--agents", "llm"], "--agents llm needs --llm-url and --llm-model"),
    (["--agents", "inbox", "--inbox", "/nonexistent/inbox"], "inbox folder /nonexistent/inbox does not exist"),
    (["--agents", "agentic", "--llm-url", "http://127.0.0.1:9/v1", "--llm-model", "m", "--turns", "0"],
     "--turns must be at least 1"),
    (["--trials", "0"], "--trials must be at least 1"),
])
def test_a_run_that_cannot_start_writes_nothing(sqlite_url, tmp_path, flags, says):
    env = {**os.environ, "ARL_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "arl.runners.cli", "run", TINY, *flags, "--store", sqlite_url],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    with Ledger.open(sqlite_url) as ledger:
        assert ledger.head() == 0
