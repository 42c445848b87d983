"""Replay and fork: projections verified, trials re-run, agents re-driven, searches forked."""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import pytest

from arl.ledger import Ledger, events as ev
from arl.ledger.programs import get_program, read_folder
from arl.ledger.projections import PROJECTION_VERSION, Projector, rebuild
from arl.runners import replay
from arl.runners.search import SearchConfig, run_search
from arl.runners.trials import start_search, submit
from arl.runners.worker import Worker
from arl.tasks.manifest import load_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "tasks" / "tiny"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))


def _every_label_search(ledger) -> str:
    task = load_task(TINY)
    base = read_folder(task.recipe_dir)

    def edit(**constants):
        program = dict(base)
        src = program["train.py"].decode()
        for name, value in constants.items():
            src = re.sub(rf"^{name} = .*$", f"{name} = {value!r}", src, flags=re.M)
        program["train.py"] = src.encode()
        return program

    search = start_search(ledger, task, name="labels")
    submit(ledger, task, search, 0, agent="baseline", surface="", program=base)
    cases = [dict(SHRINK=1.0), dict(SHRINK=0.9), dict(MODE="crash"), dict(MODE="oom"), dict(MODE="nan"),
             dict(SLEEP_S=3.0), dict(EVAL_SLEEP_S=3.0), dict(PAD_BYTES=5000), dict(SHRINK=0.3),
             dict(SHRINK=1.0)]
    for seq, constants in enumerate(cases, 1):
        submit(ledger, task, search, seq, agent="t", surface="fit", program=edit(**constants),
               parent_program=base, parents=(ev.trial_id(search, 0),))
    broken = dict(base, **{"train.py": base["train.py"].replace(b"def main():", b"def main(:")})
    submit(ledger, task, search, 11, agent="t", surface="fit", program=broken, parent_program=base)
    submit(ledger, task, search, 12, agent="t", surface="notes", program=edit(SHRINK=0.95), parent_program=base)
    Worker(ledger, name="w").run(exit_when_idle=True)
    return search


def test_verify_on_a_search_with_every_label(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        search = _every_label_search(ledger)
        live = Projector(ledger, name="live", checkpoint_s=0.0)
        live.catch_up()
        labels = {r.label.value for r in rebuild(ledger).trials_of(search)}
        assert {"baseline", "keep", "discard", "crash", "oom", "diverged", "train_budget_overrun",
                "eval_budget_overrun", "size_violation", "gate_miss", "duplicate", "invalid_edit",
                "out_of_surface"} <= labels
        checks = replay.verify(ledger, search)
        assert checks and all(c.same for c in checks)
        assert {c.projection for c in checks} >= {f"live/v{PROJECTION_VERSION}"}
        # A live projection that drifted from the log is caught, view by view.
        live.state.trials[ev.trial_id(search, 3)].reason = "edited behind the log's back"
        drifted = Projector(ledger, name="drifted", checkpoint_s=0.0)
        drifted.state = live.state
        drifted.checkpoint()
        bad = [c for c in replay.verify(ledger, search) if not c.same]
    assert [(c.projection, c.view) for c in bad] == [(f"drifted/v{PROJECTION_VERSION}", "trials")]


def test_rerun_reproduces_labels_and_reports_drift(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        summary = run_search(ledger, str(TINY), SearchConfig(trials=6, workers=2, seed=2), out=io.StringIO())
        report = replay.rerun(ledger, summary.search_id, workers=1, out=io.StringIO())
        started = ledger.stream(report.replay)[0]
        stopped = ledger.stream(report.replay)[-1]
    assert started.kind == "replay" and started.origin_search == summary.search_id
    assert report.trials == 7 and report.same_label == 7 == report.same_outcome and not report.disagreements
    assert len(report.score_diffs) >= 5 and max(report.score_diffs) < 1e-9  # deterministic recipe
    assert "identical labels: 7/7 (100%)" in report.render()
    assert stopped.summary["agreement"]["same_label"] == 7


def test_rerun_of_a_range_and_a_bad_range(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        summary = run_search(ledger, str(TINY), SearchConfig(trials=4, workers=1), out=io.StringIO())
        report = replay.rerun(ledger, summary.search_id, trials="0..2", out=io.StringIO())
        assert report.trials == 3
        with pytest.raises(replay.ReplayError, match="range of trial numbers"):
            replay.rerun(ledger, summary.search_id, trials="two..five", out=io.StringIO())


@pytest.mark.parametrize("agents", ["tuner", "random"])
def test_redrive_reproduces_every_proposal(sqlite_url, agents):
    with Ledger.open(sqlite_url) as ledger:
        summary = run_search(ledger, str(TINY), SearchConfig(trials=8, workers=2, agents=agents, seed=4),
                             out=io.StringIO())
        report = replay.redrive(ledger, summary.search_id)
    assert report.proposals >= 8 and report.identical == report.proposals, report.render()
    assert report.skipped == 0


def test_fork_continues_from_the_chosen_trial(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        first = run_search(ledger, str(TINY), SearchConfig(trials=5, workers=1, seed=1), out=io.StringIO())
        state = rebuild(ledger)
        origin = next(r for r in state.trials_of(first.search_id) if r.label.value == "keep")
        summary = replay.fork(ledger, f"{first.search_id[:8]}#{origin.seq}",
                              SearchConfig(trials=3, workers=1, seed=9), out=io.StringIO())
        state = rebuild(ledger)
        started = ledger.stream(summary.search_id)[0]
        fork_baseline = state.trials[ev.trial_id(summary.search_id, 0)]
        forked_program = get_program(ledger, fork_baseline.program_digest)
        original_program = get_program(ledger, origin.program_digest)
    assert started.kind == "fork" and started.origin_trial == origin.trial_id
    assert started.origin_search == first.search_id
    assert forked_program == original_program
    assert fork_baseline.label.value == "baseline" and summary.charged == 3
    assert state.searches[summary.search_id].baseline_score == pytest.approx(origin.score)




def _no_network(*args, **kwargs):
    raise AssertionError("re-driving must not call the model")


def test_redrive_with_recorded_llm_replies(sqlite_url, llama_server, monkeypatch):
    with Ledger.open(sqlite_url) as ledger:
        config = SearchConfig(trials=2, workers=1, agents="llm", llm_url=llama_server.url,
                              llm_model=llama_server.model, llm_max_tokens=160, seed=0)
        summary = run_search(ledger, str(TINY), config, out=io.StringIO())
        monkeypatch.setattr(httpx.Client, "send", _no_network)
        report = replay.redrive(ledger, summary.search_id)
        calls = [e.agent_call_digest for _, e in ledger.iter_events()
                 if isinstance(e, ev.TrialProposed) and e.search_id == summary.search_id and e.seq > 0]
    assert all(calls) and report.proposals == len(calls)
    assert report.identical == report.proposals, report.render()



def test_the_agreement_report_names_every_trial_that_did_not_reproduce():
    from types import SimpleNamespace

    from arl.ledger.events import Label

    def row(seq, label, score, reason=""):
        return SimpleNamespace(seq=seq, label=Label(label), score=score, reason=reason)

    original = [row(0, "baseline", 3.60), row(1, "keep", 3.50), row(2, "discard", 3.55),
                row(3, "size_violation", 3.40, "check artifact_bytes failed"), row(4, "discard", 3.70)]
    replayed = {0: row(0, "baseline", 3.61), 1: row(1, "discard", 3.62), 2: row(2, "discard", 3.56),
                3: row(3, "size_violation", 3.41, "check artifact_bytes failed"),
                4: row(4, "train_budget_overrun", None, "check train_s failed: 31.2 vs limit 30")}
    report = replay.agreement("a", "b", original, replayed, noise_floor=0.03)
    assert (report.trials, report.same_label, report.same_outcome) == (5, 3, 4)
    assert [(d.seq, d.original, d.replayed) for d in report.disagreements] == [
        (1, "keep", "discard"), (4, "discard", "train_budget_overrun")]
    assert "4.0 × the noise floor" in report.disagreements[0].why
    assert report.disagreements[1].why == "check train_s failed: 31.2 vs limit 30"
    text = report.render()
    assert "identical labels: 3/5 (60%); same outcome (legal, or the same failure): 4/5" in text
    assert "#1: keep → discard" in text and "#4: discard → train_budget_overrun" in text
    assert len(report.score_diffs) == 4
    # Signed: +0.01 +0.12 +0.01 +0.01 → a common shift of +0.01, one trial 0.11 away from it.
    assert "of which common to all trials (median signed Δ): +0.01; around it:" in text
    assert "max 0.11 (0.00 and 3.67 × the noise floor)" in text
