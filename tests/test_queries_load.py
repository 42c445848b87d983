"""Loading the ledger into DuckDB: views and their columns, caches, PostgreSQL."""

from __future__ import annotations

import json
import uuid

import pytest

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.queries.errors import QueryError
from arl.queries.load import connect, connect_with_stats
from arl.queries.table import run_sql
from arl.queries.views import VIEWS
from tests.factories import one_of_each, synthetic_search

TRIAL_COLUMNS = {
    "search", "seq", "trial_id", "agent", "surface", "parents", "hypothesis", "expected_delta",
    "label", "score", "delta_vs_best", "metrics", "wall_s", "proposed_at", "labeled_at",
    "source_status",
}


def _fill(ledger: Ledger, trials: int = 300, seed: int = 3) -> tuple[list[ev.Event], list[ev.Event]]:
    synthetic = synthetic_search(trials, seed=seed)
    for i in range(0, len(synthetic), 500):
        ledger.append(*synthetic[i : i + 500])
    each = one_of_each()
    ledger.append(*each)
    return synthetic, each


def _columns(con, view: str) -> list[str]:
    return [r[0] for r in con.execute(f'DESCRIBE "{view}"').fetchall()]


def test_views_hold_every_event_and_trial(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        synthetic, each = _fill(ledger)
        con = connect(ledger)
    assert set(VIEWS) == {"events", "searches", "trials", "decisions", "lineage", "checks", "quarantined",
                          "agent_calls"}
    assert TRIAL_COLUMNS <= set(_columns(con, "trials"))
    assert _columns(con, "lineage") == ["search", "child", "parent"]
    assert {"trial", "check", "value", "limit", "passed"} <= set(_columns(con, "checks"))
    assert {"search", "name", "task", "config", "started_at", "stopped_at"} <= set(_columns(con, "searches"))
    assert {"search", "trial_id", "agent", "backend", "digest", "total_tokens"} <= set(
        _columns(con, "agent_calls")
    )

    all_events = synthetic + each
    count = lambda sql: con.execute(sql).fetchall()[0][0]  # noqa: E731
    assert count("SELECT count(*) FROM events") == len(all_events)
    assert count("SELECT count(*) FROM trials") == sum(isinstance(e, ev.TrialProposed) for e in all_events)
    assert count("SELECT count(*) FROM lineage") == sum(
        len(e.parents) for e in all_events if isinstance(e, ev.TrialProposed)
    )
    assert count("SELECT count(*) FROM searches") == 2
    by_type = dict(con.execute("SELECT type, count(*) FROM events GROUP BY 1").fetchall())
    assert by_type["TrialLabeled"] == sum(isinstance(e, ev.TrialLabeled) for e in all_events)

    # every event's time, search and payload as recorded
    first = run_sql(con, "SELECT * FROM events ORDER BY id LIMIT 1").records()[0]
    assert first["at"] == synthetic[0].at
    assert first["search_id"] == synthetic[0].originator_id
    assert json.loads(first["payload"]) == json.loads(ev.encode(synthetic[0]))
    last = run_sql(con, "SELECT * FROM events ORDER BY id DESC LIMIT 1").records()[0]
    assert last["type"] == "SearchStopped" and last["at"] == each[-1].at


def test_trial_rows_carry_every_stage(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        _, each = _fill(ledger, trials=5)
        con = connect(ledger)
    search = each[0].originator_id
    t1, t2 = ev.trial_id(search, 1), ev.trial_id(search, 2)
    rows = {r["trial_id"]: r for r in run_sql(con, "SELECT * FROM trials WHERE search = $s", {"s": search}).records()}
    one = rows[t1]
    assert one["seq"] == 1 and one["agent"] == "opt" and len(one["parents"]) == 2
    assert one["label"] == "size_violation" and one["score"] == 2.91
    assert one["delta_vs_best"] == -0.05 and one["expected_delta"] == -0.02
    assert json.loads(one["metrics"]) == {"val_bpb": 2.91, "bytes": 410000.0}
    assert one["wall_s"] == 31.5 and one["runner"] == "w2" and one["state"] == "labeled"
    assert one["source_id"] == "exp_042" and one["source_status"] == "size_blocked"
    assert one["proposed_at"] == each[1].at and one["labeled_at"] == each[7].at
    two = rows[t2]
    assert two["state"] == "rejected" and two["reason"] == "touches evaluator.py"
    assert two["label"] is None
    checks = run_sql(con, 'SELECT "check", passed, value, "limit" FROM checks WHERE trial = $t ORDER BY 1', {"t": t1}).rows
    assert checks == [("artifact_bytes", False, 600000.0, 524288.0), ("normalised", True, None, None)]
    searches = run_sql(con, "SELECT * FROM searches WHERE search = $s", {"s": search}).records()[0]
    assert searches["stop_reason"] == "budget spent" and searches["kind"] == "fork"
    assert json.loads(searches["config"])["nested"] == {"a": [1, 2.5]}


def test_agent_calls_show_token_usage_from_the_stored_call(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        search = str(uuid.uuid4())
        call = {"request": {"model": "m"}, "response": {"model": "smol", "usage": {
            "prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}}}
        digest = ledger.put_blob(json.dumps(call).encode())
        ledger.append(
            ev.SearchStarted(originator_id=search, originator_version=1, name="s", task="t",
                             task_digest="0" * 64, direction="min"),
            ev.TrialProposed(originator_id=ev.trial_id(search, 1), originator_version=1,
                             search_id=search, seq=1, agent="opt", surface="opt", backend="llm",
                             agent_call_digest=digest),
            ev.TrialProposed(originator_id=ev.trial_id(search, 2), originator_version=1,
                             search_id=search, seq=2, agent="opt", surface="opt", backend="tuner"),
        )
        con = connect(ledger)
    rows = run_sql(con, "SELECT seq, backend, digest, model, prompt_tokens, completion_tokens, total_tokens FROM agent_calls").rows
    assert rows == [(1, "llm", digest, "smol", 120, 30, 150)]


def test_no_extension_is_ever_downloaded(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        con = connect(ledger)
    settings = con.execute(
        "SELECT current_setting('autoinstall_known_extensions'), "
        "current_setting('autoload_known_extensions')"
    ).fetchall()
    assert settings == [(False, False)]
    with pytest.raises(QueryError, match="SQL failed"):
        run_sql(con, "SELECT * FROM sqlite_scan('x.db', 't')")


def test_cache_file_is_refreshed_incrementally_and_matches_a_fresh_load(sqlite_url, tmp_path):
    cache = tmp_path / "cache" / "ledger.duckdb"
    with Ledger.open(sqlite_url) as ledger:
        synthetic, _ = _fill(ledger, trials=50)
        con, first = connect_with_stats(ledger, cache)
        con.close()
        assert first.rebuilt and first.events == ledger.head()

        con, again = connect_with_stats(ledger, cache)
        con.close()
        assert not again.rebuilt and again.events == 0

        more = synthetic_search(20, seed=9)
        ledger.append(*more)
        # a trial of the earlier search gets a later event: its row must change
        old_search = synthetic[0].originator_id
        tid = ev.trial_id(old_search, 1)
        ledger.append(ev.TrialLabeled(originator_id=tid, originator_version=7, search_id=old_search,
                                      label=ev.Label.INFRA_ERROR, reason="relabelled"))
        con, inc = connect_with_stats(ledger, cache)
        assert not inc.rebuilt and inc.events == len(more) + 1
        fresh = connect(ledger)
        for view in VIEWS:
            q = f'SELECT * FROM "{view}" ORDER BY ALL'
            assert con.execute(q).fetchall() == fresh.execute(q).fetchall(), view
        assert run_sql(con, "SELECT label, reason FROM trials WHERE trial_id = $t", {"t": tid}).rows == [
            ("infra_error", "relabelled")
        ]
        con.close()


def test_cache_of_another_ledger_is_rebuilt_not_trusted(tmp_path):
    cache = tmp_path / "cache.duckdb"
    with Ledger.open(f"sqlite:///{tmp_path / 'a.db'}") as a:
        _fill(a, trials=10, seed=1)
        con, _ = connect_with_stats(a, cache)
        con.close()
    with Ledger.open(f"sqlite:///{tmp_path / 'b.db'}") as b:
        b.append(*synthetic_search(3, seed=2))
        con, stats = connect_with_stats(b, cache)
        assert stats.rebuilt
        assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == b.head()
        con.close()


def test_cache_that_is_a_folder_is_a_clear_error(sqlite_url, tmp_path):
    with Ledger.open(sqlite_url) as ledger, pytest.raises(QueryError, match="is a folder; give a file"):
        connect(ledger, tmp_path)


@pytest.mark.postgres
def test_loads_from_postgresql_the_same_as_from_sqlite(pg_url, sqlite_url):
    synthetic = synthetic_search(40, seed=5)
    each = one_of_each()
    views = {}
    for url in (sqlite_url, pg_url):
        with Ledger.open(url) as ledger:
            ledger.append(*synthetic)
            ledger.append(*each)
            con = connect(ledger)
            views[url] = {
                v: con.execute(f'SELECT * EXCLUDE ({"id" if v == "events" else "search"}) FROM "{v}" ORDER BY ALL').fetchall()
                for v in VIEWS
            }
            con.close()
    assert views[sqlite_url] == views[pg_url]
    assert len(views[pg_url]["trials"]) == 43
