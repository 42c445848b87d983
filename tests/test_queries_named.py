"""Named queries against a small search whose answers are known by construction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.ledger.events import Check, Label
from arl.queries.errors import QueryError
from arl.queries.load import connect
from arl.queries.named import NAMED, resolve_search, run_named

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PLAN_ID = "aaaa1111-0000-4000-8000-000000000001"
OTHER_ID = "aaaa2222-0000-4000-8000-000000000002"

# seq, agent, parent seq, label, score, expected delta, delta vs parent, failed/passed checks
PLAN = [
    (0, "baseline", None, Label.BASELINE, 10.0, None, None, {}),
    (1, "a", 0, Label.KEEP, 9.0, -1.0, -1.0, {}),
    (2, "b", 1, Label.GATE_MISS, None, -0.2, None, {"accuracy": (False, 0.95)}),
    (3, "b", 2, Label.DISCARD, 9.5, 0.1, 0.5, {"accuracy": (True, 0.961)}),
    (4, "a", 1, Label.KEEP, 8.0, -0.5, -1.0, {}),
    (5, "c", 4, Label.CRASH, None, None, None, {}),
    (6, "a", 4, Label.KEEP, 7.5, -0.25, -0.5, {}),
    (7, "b", 6, Label.SIZE_VIOLATION, 7.4, -0.1, None, {"size": (False, 17.0)}),
    (8, "c", 7, Label.CRASH, None, None, None, {}),
    (9, "b", 8, Label.DISCARD, 8.2, -0.1, None, {"size": (True, 15.0)}),
]
LIMITS = {"accuracy": 0.96, "size": 16.0}


def _run(k: int) -> tuple[datetime, datetime, str]:
    """Trial k runs 45 minutes from T0 + 30 min × k, on alternating runners."""
    start = T0 + timedelta(minutes=30 * k)
    return start, start + timedelta(minutes=45), f"w{k % 2}"


def build(search: str, name: str = "plan") -> list[ev.Event]:
    out: list[ev.Event] = [
        ev.SearchStarted(originator_id=search, originator_version=1, at=T0, name=name,
                         task="toy", task_digest="0" * 64, direction="min")
    ]
    for seq, agent, parent, label, score, expected, dparent, checks in PLAN:
        tid = ev.trial_id(search, seq)
        start, end, runner = _run(seq)
        common = {"originator_id": tid, "search_id": search}
        out += [
            ev.TrialProposed(**common, originator_version=1, at=start, seq=seq, agent=agent,
                             surface=agent, expected_delta=expected,
                             parents=() if parent is None else (ev.trial_id(search, parent),)),
            ev.TrialClaimed(**common, originator_version=2, at=start, runner=runner),
            ev.RunFinished(**common, originator_version=3, at=end, runner=runner, wall_s=2700.0),
            ev.TrialEvaluated(**common, originator_version=4, at=end, evaluator="toy", score=score,
                              checks=tuple(Check(name=n, passed=p, value=v, limit=LIMITS[n])
                                           for n, (p, v) in checks.items())),
            ev.TrialLabeled(**common, originator_version=5, at=end, label=label, score=score,
                            delta_vs_parent=dparent,
                            delta_vs_best=None if score is None else score - 10.0),
        ]
    return out


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('named') / 'ledger.db'}"
    with Ledger.open(url) as ledger:
        ledger.append(*build(PLAN_ID, "plan"))
        ledger.append(*build(OTHER_ID, "other"))
        c = connect(ledger)
    yield c
    c.close()




def test_leaderboard_ranks_legal_trials_by_score(con):
    rows = run_named(con, "leaderboard", search="plan").records()
    assert [(r["rank"], r["seq"]) for r in rows] == [(1, 6), (2, 4), (3, 9), (4, 1), (5, 3), (6, 0)]
    both = run_named(con, "leaderboard").records()
    assert {r["search_name"] for r in both} == {"plan", "other"} and len(both) == 12


def test_best_path_walks_root_to_best(con):
    rows = run_named(con, "best_path", search=PLAN_ID).records()
    assert [(r["step"], r["seq"]) for r in rows] == [(0, 0), (1, 1), (2, 4), (3, 6)]
    assert [r["delta"] for r in rows] == [None, -1.0, -1.0, -0.5]


def test_label_mix_counts_and_shares(con):
    rows = {r["label"]: (r["trials"], r["share"]) for r in run_named(con, "label_mix", search="plan").records()}
    assert rows == {
        "keep": (3, round(3 / 9, 4)), "discard": (2, round(2 / 9, 4)), "crash": (2, round(2 / 9, 4)),
        "gate_miss": (1, round(1 / 9, 4)), "size_violation": (1, round(1 / 9, 4)),
    }
    quartiles = run_named(con, "label_mix", search="plan", quartiles=True).records()
    # 9 trials in proposal order (baseline excluded): quartiles of 3, 2, 2, 2
    by_q: dict[int, dict[str, int]] = {}
    for r in quartiles:
        by_q.setdefault(r["quartile"], {})[r["label"]] = r["trials"]
    assert by_q == {
        1: {"keep": 1, "gate_miss": 1, "discard": 1},
        2: {"keep": 1, "crash": 1},
        3: {"keep": 1, "size_violation": 1},
        4: {"crash": 1, "discard": 1},
    }
    assert all(abs(sum(r["share"] for r in quartiles if r["quartile"] == q) - 1) < 1e-3 for q in by_q)


def test_failure_to_fix_finds_the_descendant_that_passes(con):
    rows = run_named(con, "failure_to_fix", search="plan").records()
    got = [(r["failure_seq"], r["check"], r["failed_value"], r["limit"], r["fix_seq"], r["fix_value"],
            r["hops"], r["between"]) for r in rows]
    assert got == [
        (2, "accuracy", 0.95, 0.96, 3, 0.961, 1, []),
        (7, "size", 17.0, 16.0, 9, 15.0, 2, ["8"]),
    ]


def test_agent_yield_per_specialist(con):
    rows = {r["agent"]: r for r in run_named(con, "agent_yield", search="plan").records()}
    assert (rows["a"]["trials"], rows["a"]["keeps"], rows["a"]["failures"]) == (3, 3, 0)
    assert (rows["b"]["trials"], rows["b"]["keeps"], rows["b"]["discards"], rows["b"]["failures"]) == (4, 0, 2, 2)
    assert (rows["c"]["trials"], rows["c"]["failures"]) == (2, 2)
    assert rows["a"]["mean_delta"] == pytest.approx(((9 - 10) + (8 - 10) + (7.5 - 10)) / 3)
    assert rows["a"]["best_delta"] == pytest.approx(-2.5)
    assert "baseline" not in rows


def test_calibration_compares_expected_and_observed(con):
    rows = {r["agent"]: r for r in run_named(con, "calibration", search="plan").records()}
    a = rows["a"]
    assert a["trials"] == 3
    assert a["mean_expected"] == pytest.approx((-1 - 0.5 - 0.25) / 3)
    assert a["mean_observed"] == pytest.approx((-1 - 1 - 0.5) / 3)
    assert a["sign_agreement"] == 1.0 and a["mean_abs_error"] == pytest.approx(0.25)
    # b: seq 3 observed +0.5 (vs parent); seq 9 observed 8.2 − 10 (vs best): failures excluded
    assert rows["b"]["trials"] == 2
    assert rows["(all)"]["trials"] == 5


def test_throughput_matches_a_brute_force_count(con):
    rows = run_named(con, "throughput", search="plan").records()
    hours = [r["hour"] for r in rows]
    assert hours == sorted(hours) and hours[0] == T0
    for r in rows:
        h0, h1 = r["hour"], r["hour"] + timedelta(hours=1)
        done = [k for k in range(len(PLAN)) if h0 <= _run(k)[1] < h1]
        busy = sum(
            max(0.0, (min(end, h1) - max(start, h0)).total_seconds())
            for start, end, _ in map(_run, range(len(PLAN)))
        ) / 3600
        assert r["trials"] == len(done), h0
        assert r["busy_workers"] == pytest.approx(busy, abs=1e-3), h0
    assert max(r["busy_workers"] for r in rows) == pytest.approx(1.5)


def test_every_named_query_runs_on_every_search(con):
    for name in NAMED:
        assert run_named(con, name).columns, name


def test_unknown_names_are_clear_errors(con):
    with pytest.raises(QueryError, match="no named query 'leaderbord'; choose one of: leaderboard"):
        run_named(con, "leaderbord")
    with pytest.raises(QueryError, match="no search matches 'nope'"):
        run_named(con, "leaderboard", search="nope")
    with pytest.raises(QueryError, match="--quartiles applies to label_mix only"):
        run_named(con, "leaderboard", quartiles=True)
    assert resolve_search(con, "aaaa1") == PLAN_ID
    assert resolve_search(con, "other") == OTHER_ID
    with pytest.raises(QueryError, match="2 searches start with 'aaaa'"):
        resolve_search(con, "aaaa")


@pytest.fixture(scope="module")
def real_search(tmp_path_factory):
    """A real tuner search on the tiny task (real worker, real evaluator), loaded into DuckDB."""
    import io
    from pathlib import Path

    from arl.ledger.projections import rebuild
    from arl.runners.search import SearchConfig, run_search

    tmp = tmp_path_factory.mktemp("named-real")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARL_CACHE", str(tmp / "cache"))
        ledger = Ledger.open(f"sqlite:///{tmp / 'l.db'}")
        tiny = Path(__file__).resolve().parent / "tasks" / "tiny"
        summary = run_search(ledger, str(tiny), SearchConfig(trials=6, workers=2, seed=4), out=io.StringIO())
    yield connect(ledger), rebuild(ledger), summary.search_id
    ledger.close()


def test_named_queries_agree_with_the_projection_on_a_real_search(real_search):
    con, state, search = real_search
    rows = state.trials_of(search)
    best = state.trials[state.searches[search].best_trial]
    board = run_named(con, "leaderboard", search=search)
    top = dict(zip(board.columns, board.rows[0]))
    assert top["trial_id"] == best.trial_id and top["score"] == pytest.approx(best.score)
    path = run_named(con, "best_path", search=search)
    assert [r[path.columns.index("trial_id")] for r in path.rows] == state.lineage(best.trial_id)
    mix = run_named(con, "label_mix", search=search)
    counted = {r[mix.columns.index("label")]: r[mix.columns.index("trials")] for r in mix.rows}
    expected: dict[str, int] = {}
    for r in rows:
        if r.seq > 0 and r.label is not None:
            expected[r.label.value] = expected.get(r.label.value, 0) + 1
    assert counted == expected
    yield_ = run_named(con, "agent_yield", search=search)
    keeps = {r[yield_.columns.index("agent")]: r[yield_.columns.index("keeps")] for r in yield_.rows}
    assert keeps == {a: sum(1 for r in rows if r.agent == a and r.label is Label.KEEP)
                     for a in {r.agent for r in rows if r.seq > 0}}
