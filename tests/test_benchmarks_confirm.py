"""benchmarks/confirm.py: a search's best measured again beside its base program."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import confirm as bench
from arl.ledger import Ledger
from arl.ledger.events import Label
from arl.ledger.projections import rebuild
from arl.runners.search import SearchConfig, run_search
from arl.tasks.manifest import load_task

TINY = Path(__file__).resolve().parents[1] / "tests" / "tasks" / "tiny"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))


def test_the_best_of_each_bench_search_is_measured_again_beside_the_base(sqlite_url):
    task = load_task(TINY)
    with Ledger.open(sqlite_url) as ledger:
        searched = run_search(ledger, str(TINY), SearchConfig(trials=6, workers=2, seed=2),
                              name="bench tiny lineage-on seed 0", out=io.StringIO())
        run_search(ledger, str(TINY), SearchConfig(trials=2, workers=1, seed=2), name="not a bench search",
                   out=io.StringIO())
        origin = rebuild(ledger).searches[searched.search_id]
        assert origin.best_trial != origin.baseline_trial
        lines = bench.confirm(ledger, task, rounds=2, workers=2, out=io.StringIO())
        state = rebuild(ledger)
        replays = [s for s in state.searches.values() if s.kind == "replay"]
        again = bench.confirm(ledger, task, rounds=2, workers=2, out=io.StringIO())
        assert len([s for s in rebuild(ledger).searches.values() if s.kind == "replay"]) == 2  # resumed: nothing ran
    [line] = lines
    assert (line.arm, line.seed, line.origin.search_id) == ("lineage-on", 0, searched.search_id)
    assert len(line.rounds) == 2 == len(replays)
    best = state.trials[origin.best_trial]
    for base, again_best in line.rounds:
        assert base.label is Label.BASELINE and base.score == origin.baseline_score  # the recipe is deterministic
        assert again_best.program_digest == best.program_digest and again_best.label.legal
    gains = [bench.round_gain("min", b, t) for b, t in line.rounds]
    assert line.gain == pytest.approx(sum(gains) / 2) and line.gain > 0
    assert [x.gain for x in again] == [line.gain]
    row = bench.result_row(task, line, workers=2)
    assert json.loads(json.dumps(row))["base_scores"] == [origin.baseline_score] * 2
    assert row["searched_gain"] == pytest.approx(searched.gain)


def test_a_best_that_breaks_a_check_gains_nothing_in_that_round():
    def row(score, label):
        return SimpleNamespace(score=score, label=label)

    assert bench.round_gain("min", row(10.0, Label.BASELINE), row(7.0, Label.KEEP)) == pytest.approx(0.3)
    assert bench.round_gain("min", row(10.0, Label.BASELINE), row(11.0, Label.DISCARD)) == pytest.approx(-0.1)
    assert bench.round_gain("max", row(2.0, Label.BASELINE), row(3.0, Label.KEEP)) == pytest.approx(0.5)
    assert bench.round_gain("min", row(10.0, Label.BASELINE), row(7.0, Label.GATE_MISS)) == 0.0
    assert bench.round_gain("min", row(None, Label.CRASH), row(7.0, Label.KEEP)) is None


def test_no_bench_search_says_what_to_run_first(sqlite_url):
    with Ledger.open(sqlite_url) as ledger, pytest.raises(SystemExit, match="run benchmarks/search.py"):
        bench.confirm(ledger, load_task(TINY), rounds=1, workers=1)
