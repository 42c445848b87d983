"""Decisions with their evidence, a measured noise floor, the noise audit, and exact reruns.

The tiny task drives real searches with real workers; the noise audit runs on the
paper release's own run records (imported as they are); golf-mini, with a smaller
data budget and its held-out text cut short, is re-run trial by trial.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from arl.ledger import Ledger, events as ev
from arl.ledger.projections import rebuild
from arl.queries.load import connect
from arl.queries.named import run_named
from arl.queries.errors import QueryError
from arl.runners import replay
from arl.runners.evidence import compare, student_t_two_sided
from arl.runners.labels import Best, Floor, decide
from arl.runners.search import SearchConfig, run_search
from arl.tasks.evaluation import Evaluation
from arl.tasks.manifest import load_task
from tests.conftest import shared_fixtures
from tests.needs import require

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "tasks" / "tiny"
GOLF = ROOT / "tasks" / "builtin" / "golf-mini"
ARL = [sys.executable, "-m", "arl.runners.cli"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- the statistics ---------------------------------------------------------------------


def test_welch_p_values_match_the_t_distribution():
    # Two-sided p of Student's t, from tables: t = 2.228 at 10 df is the 5 % point.
    assert student_t_two_sided(2.228, 10) == pytest.approx(0.05, abs=2e-4)
    assert student_t_two_sided(0.0, 4) == pytest.approx(1.0)
    result = compare([3.5, 3.6, 3.55], [3.7, 3.65], "min")  # lower is better: a gain of ~0.125
    assert result.test == "welch_t" and result.statistic > 0 and 0 < result.p_value < 0.1
    lo, hi = result.interval
    assert 0 < lo < 0.125 < hi
    assert compare([3.5], [3.7], "min").test == "none"
    one_side = compare([3.5, 3.6], [3.7], "min")
    assert one_side.test == "bootstrap" and one_side.statistic is None and one_side.interval[0] > 0


# --- decide: what is recorded for each rule ---------------------------------------------


def _evaluation(per_seed: dict[int, float]) -> Evaluation:
    return Evaluation(score=sum(per_seed.values()) / len(per_seed), per_seed=per_seed)


def test_each_rule_records_its_evidence():
    task = load_task(TINY)  # min; noise floor 0.02; confirmation seeds [100, 101]
    best = Best(score=1.0, trial_id="b" * 36, seeds={0: 0.99, 1: 1.01})
    never = lambda: pytest.fail("a clear keep or a discard is never re-run")  # noqa: E731

    label, _, _, e = decide(task, _evaluation({0: 0.9, 1: 0.92}), baseline=False, best_now=lambda: best,
                            confirm=never)
    assert label is ev.Label.KEEP and not e.confirmed and "kept without re-runs" in e.rule
    assert e.seeds == {0: 0.9, 1: 0.92} and e.best_seeds == best.seeds and e.best_trial == best.trial_id
    assert e.gain == pytest.approx(0.09) and e.test == "welch_t" and e.p_value < 0.05
    assert e.noise_floor == 0.02 and e.floor_source == "manifest"

    label, _, _, e = decide(task, _evaluation({0: 1.1, 1: 1.2}), baseline=False, best_now=lambda: best,
                            confirm=never)
    assert label is ev.Label.DISCARD and e.gain < 0 and "not better" in e.rule

    combined = _evaluation({0: 0.99, 1: 0.99, 100: 0.985, 101: 0.995})
    label, _, used, e = decide(task, _evaluation({0: 0.99, 1: 0.99}), baseline=False,
                               best_now=lambda: best, confirm=lambda: (combined, [0, 1, 100, 101]))
    assert label is ev.Label.KEEP and e.confirmed and used is combined
    assert set(e.seeds) == {0, 1, 100, 101} and "re-run on seeds [100, 101]" in e.rule
    assert e.test == "welch_t" and e.p_value > 0.05  # kept by the rule; the test says it is weak

    # A measured floor is the one judged by: 0.01 better is now beyond it.
    label, _, _, e = decide(task, _evaluation({0: 0.99, 1: 0.99}), baseline=False, best_now=lambda: best,
                            confirm=never, floor=Floor(value=0.005, source="measured"))
    assert label is ev.Label.KEEP and e.floor_source == "measured" and "0.005 (measured)" in e.rule

    _, _, _, e = decide(task, _evaluation({0: 1.0, 1: 1.02}), baseline=True, best_now=never, confirm=never)
    assert e.floor_source == "manifest" and e.measured_floor is None  # not asked to measure
    label, _, _, e = decide(task, _evaluation({0: 1.0, 1: 1.02, 2: 1.01}), baseline=True,
                            best_now=never, confirm=never, measure_floor=True)
    assert label is ev.Label.BASELINE and e.measured_floor == pytest.approx(0.01)
    assert e.declared_floor == 0.02 and e.note == ""  # within a factor 2 of the manifest
    _, _, _, e = decide(task, _evaluation({0: 1.0, 1: 1.3}), baseline=True, best_now=never, confirm=never,
                        measure_floor=True)
    assert "noise floor 0.02 is contradicted" in e.note and e.noise_floor == pytest.approx(0.2121, abs=1e-4)


def test_a_baseline_measured_on_more_seeds_is_scored_on_the_tasks_own():
    # tiny's seeds are [0, 1]; measured on six, the baseline's extra seeds measure the floor
    # and must not move the score a candidate is compared with (an unchanged program would
    # beat its own baseline by the difference of the means).
    task = load_task(TINY)
    never = lambda: pytest.fail("not re-run")  # noqa: E731
    six = {0: 0.58, 1: 0.59, 100: 0.60, 101: 0.61, 2: 0.62, 3: 0.63}
    label, _, used, e = decide(task, _evaluation(six), baseline=True, best_now=never, confirm=never,
                               measure_floor=True)
    assert label is ev.Label.BASELINE and used.score == pytest.approx(0.585)
    assert e.seeds == six and e.measured_floor == pytest.approx(0.018708, abs=1e-6)  # all six measure it
    baseline = Best(score=used.score, trial_id="b" * 36, seeds=six)
    label, _, _, _ = decide(task, _evaluation({0: 0.58, 1: 0.59}), baseline=False, best_now=lambda: baseline,
                            confirm=never, floor=Floor(value=e.measured_floor, source="measured"))
    assert label is ev.Label.DISCARD  # the same program, the same seeds: no better

    # Re-run on the confirmation seeds, it is compared with the baseline on those very seeds:
    # 0.5925 over seeds 0, 1, 100, 101 against the baseline's 0.595 there is a keep, against
    # its six-seed mean (0.605) it would have been one for the wrong reason, and 0.5975 is not.
    for confirmed_at, expected in ((0.5925, ev.Label.KEEP), (0.5975, ev.Label.DISCARD)):
        rest = 4 * confirmed_at - 0.575 - 0.585
        combined = _evaluation({0: 0.575, 1: 0.585, 100: rest / 2, 101: rest / 2})
        label, why, _, e = decide(task, _evaluation({0: 0.575, 1: 0.585}), baseline=False,
                                  best_now=lambda: baseline, confirm=lambda: (combined, [0, 1, 100, 101]),
                                  floor=Floor(value=0.02, source="measured"))
        assert label is expected, why
        assert "the best's 0.595 on the same seeds" in why and e.gain == pytest.approx(0.595 - confirmed_at)
        assert e.screen_gain == pytest.approx(0.005)  # the gain that sent it to re-runs


def test_statistics_of_extreme_scores_are_no_crash():
    for a, b in (([1e-160, 2e-160], [3e-160, 4e-160]), ([1e200, -1e200], [1e200, -1e200])):
        result = compare(a, b, "min")
        assert result.test in ("welch_t", "bootstrap", "none")
        assert all(x is None or x == x for x in (result.statistic, result.p_value))  # no NaN


# --- a real search: evidence in the ledger, the view, arl show -------------------------


def test_a_search_with_a_measured_floor_records_every_decision(cache, sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        out = io.StringIO()
        summary = run_search(ledger, str(TINY), SearchConfig(trials=5, workers=1, baseline_seeds=3), out=out)
        report = replay.rerun(ledger, summary.search_id, workers=1, out=io.StringIO())
        state = rebuild(ledger)
        labeled = {e.originator_id: e for _, e in ledger.iter_events() if isinstance(e, ev.TrialLabeled)}
    search = state.searches[summary.search_id]
    base = state.baseline_of(summary.search_id)
    evidence = labeled[base.trial_id].evidence
    assert sorted(evidence.seeds) == [0, 1, 100] and evidence.floor_source == "measured"
    assert search.floor_source == "measured" and search.noise_floor == evidence.measured_floor
    assert "noise floor measured on the starting program" in out.getvalue()
    # The rerun measures its floor the same way, and so decides the same way.
    assert state.searches[report.replay].floor_source == "measured"
    assert state.searches[report.replay].noise_floor == search.noise_floor
    assert report.same_label == report.same_score == report.trials, report.render()
    legal = [labeled[r.trial_id] for r in state.trials_of(summary.search_id)
             if r.label in (ev.Label.KEEP, ev.Label.DISCARD)]
    assert legal, "the search decided nothing"
    for e in legal:
        assert e.evidence is not None and e.evidence.rule and e.evidence.seeds
        assert e.evidence.noise_floor == search.noise_floor and e.evidence.best is not None

    with Ledger.open(sqlite_url, read_only=True) as ledger:
        con = connect(ledger)
    rows = con.execute("SELECT label, rule, floor_source, noise_floor FROM decisions "
                       "WHERE search = ? ORDER BY seq", [summary.search_id]).fetchall()
    assert rows[0][0] == "baseline" and rows[0][2] == "measured"
    assert all(r[1] for r in rows) and len(rows) == 1 + len(legal)

    shown = subprocess.run([*ARL, "show", f"{summary.search_id[:8]}#0", "--store", sqlite_url],
                           capture_output=True, text=True, timeout=120, env=os.environ)
    assert shown.returncode == 0, shown.stderr
    assert "rule: the starting program on 3 seeds" in shown.stdout and "noise floor measured" in shown.stdout


def test_baseline_seeds_below_two_is_refused_before_anything_is_recorded(cache, sqlite_url):
    for k, said in (("1", "--baseline-seeds 1: a spread needs at least 2 seeds"),
                    ("1000000000", "--baseline-seeds 1000000000: at most 100")):
        done = subprocess.run([*ARL, "run", str(TINY), "--baseline-seeds", k, "--trials", "2",
                               "--store", sqlite_url], capture_output=True, text=True, timeout=120, env=os.environ)
        assert done.returncode != 0 and said in done.stderr, done.stderr
        assert done.stderr.strip().count("\n") == 0
    with Ledger.open(sqlite_url) as ledger:
        assert not list(ledger.iter_events())


# --- the noise audit on the paper's own records ----------------------------------------


@pytest.fixture(scope="module")
def recipes_con(tmp_path_factory) -> duckdb.DuckDBPyConnection:
    recipes = shared_fixtures("auto-research-recipes")
    url = f"sqlite:///{tmp_path_factory.mktemp('recipes') / 'l.db'}"
    for run in ("pg_ablation_lineage_on", "nanochat_d12", "cifar"):
        done = subprocess.run([*ARL, "import", str(recipes / run), "--store", url], capture_output=True,
                              text=True, timeout=300, env=os.environ)
        assert done.returncode == 0, done.stderr
    with Ledger.open(url, read_only=True) as ledger:
        return connect(ledger)


def _audit(con, **kwargs) -> dict[str, dict]:
    table = run_named(con, "noise_audit", **kwargs)
    return {row[table.columns.index("search_name")]: dict(zip(table.columns, row)) for row in table.rows}


def test_noise_audit_gives_back_the_papers_pattern(recipes_con):
    audit = _audit(recipes_con, noise=0.001)
    # Parameter Golf: 16 keeps, 12 of them gained at most 0.001 bpb over the best at the time.
    pg = audit["pg_ablation_lineage_on"]
    assert (pg["keeps"], pg["within_noise"], pg["confirmed"], pg["noise_from"]) == (16, 12, 0, "given")
    assert (audit["nanochat_d12"]["keeps"], audit["nanochat_d12"]["within_noise"]) == (5, 1)
    assert (audit["cifar"]["keeps"], audit["cifar"]["within_noise"]) == (4, 0)
    # The imports state no floor: judged by 0, no keep is within it.
    assert _audit(recipes_con, search="pg_ablation_lineage_on")["pg_ablation_lineage_on"]["within_noise"] == 0


def test_a_keep_confirmed_past_the_noise_counts_as_within_it_and_confirmed(sqlite_url):
    # Its first seeds gained 0.015 (within 0.02: re-run); over every seed 0.025. The audit
    # asks which keeps were within the noise when decided, and how many re-runs confirmed.
    import msgspec

    from tests.factories import synthetic_search

    evidence = ev.Evidence(rule="gain 0.015 <= noise floor 0.02 (manifest); re-run", gain=0.025,
                           screen_gain=0.015, confirmed=True, noise_floor=0.02)
    events = [msgspec.structs.replace(e, evidence=evidence)
              if isinstance(e, ev.TrialLabeled) and e.label is ev.Label.KEEP else e
              for e in synthetic_search(12, seed=0)]
    keeps = sum(isinstance(e, ev.TrialLabeled) and e.label is ev.Label.KEEP for e in events)
    assert keeps >= 2
    with Ledger.open(sqlite_url) as ledger:
        ledger.append(*events)
    with Ledger.open(sqlite_url, read_only=True) as ledger:
        con = connect(ledger)
    row = _audit(con, noise=0.02)["synthetic"]
    assert (row["keeps"], row["within_noise"], row["confirmed"]) == (keeps, keeps, keeps)
    assert row["median_gain"] == pytest.approx(0.025)
    assert _audit(con, noise=0.01)["synthetic"]["within_noise"] == 0  # 0.015 is beyond 0.01
    screened = con.execute("SELECT DISTINCT screen_gain FROM decisions WHERE label = 'keep'").fetchall()
    assert screened == [(0.015,)]


def test_noise_audit_refuses_a_bad_noise(recipes_con):
    with pytest.raises(QueryError, match="--noise applies to noise_audit only"):
        run_named(recipes_con, "leaderboard", noise=0.1)
    with pytest.raises(QueryError, match="finite number >= 0"):
        run_named(recipes_con, "noise_audit", noise=-1.0)
    with pytest.raises(QueryError, match="finite number >= 0"):
        run_named(recipes_con, "noise_audit", noise=float("nan"))


# --- golf-mini: a rerun gives every trial the same label and score ----------------------


@pytest.fixture
def small_golf(tmp_path, monkeypatch) -> Path:
    """golf-mini with 8 KiB of training bytes, generous caps and 6 KB of held-out text."""
    require("torch", None if importlib.util.find_spec("torch") else "torch is not installed (the [tasks] extra)")
    real = Path(os.environ.get("ARL_CACHE") or Path.home() / ".cache" / "arl") / "golf-mini"
    data = _module(GOLF / "data.py")
    try:
        data.prepare(real)
    except Exception as e:  # noqa: BLE001 — no network and no archive: say so
        require("golf_data", f"golf-mini data cannot be prepared: {e}")
    cache = tmp_path / "cache" / "golf-mini"
    (cache / "train").mkdir(parents=True)
    (cache / "heldout").mkdir()
    shutil.copyfile(real / "train" / "train.txt", cache / "train" / "train.txt")
    (cache / "heldout" / "val.txt").write_bytes((real / "heldout" / "val.txt").read_bytes()[:6000])
    (cache / ".prepared").write_text(data.LAYOUT)
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    task = tmp_path / "golf-mini"
    shutil.copytree(GOLF, task)
    toml = task / "task.toml"
    text = toml.read_text()
    for key, value in (("train_tokens", 8192), ("train_s", 400), ("eval_s", 400), ("wallclock_s", 500)):
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
        assert n == 1, key
    toml.write_text(text)
    return task


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_decisions_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_golf_mini_search_reruns_with_the_same_labels_and_scores(small_golf, sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        summary = run_search(ledger, str(small_golf), SearchConfig(trials=3, workers=1), out=io.StringIO())
        report = replay.rerun(ledger, summary.search_id, workers=1, out=io.StringIO())
        state = rebuild(ledger)
    original = {r.seq: (r.label, r.score) for r in state.trials_of(summary.search_id)}
    rerun = {r.seq: (r.label, r.score) for r in state.trials_of(report.replay)}
    assert len(original) == 4 and any(score is not None for _, score in original.values())
    assert rerun == original, report.render()
    assert report.same_label == report.same_score == report.trials == 4
    print(report.render())  # shown with pytest -s
    assert "identical scores: 4/4" in report.render()
