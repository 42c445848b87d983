"""The SQL views over the loaded ledger (see README, "Forensics").

Views, not tables: they read the ``log`` tables that :mod:`queries.load`
appends to, so an incremental refresh needs no recomputation here. Where a
trial has several events of one type (a re-run after a lost lease, a
re-evaluation), the latest one counts.
"""

from __future__ import annotations

import re

import duckdb

from arl.ledger import events as ev

#: Statuses a trial moves through, by the type of its latest event.
_STATE = """CASE e.type
    WHEN 'TrialProposed' THEN 'proposed' WHEN 'EditRejected' THEN 'rejected'
    WHEN 'TrialSubmitted' THEN 'submitted' WHEN 'TrialClaimed' THEN 'claimed'
    WHEN 'LeaseExpired' THEN 'requeued' WHEN 'RunFinished' THEN 'finished'
    WHEN 'TrialEvaluated' THEN 'evaluated' WHEN 'TrialLabeled' THEN 'labeled' END"""


def table_name(cls: type[ev.Event]) -> str:
    """The DuckDB table (schema ``log``) holding one event type: TrialLabeled → trial_labeled."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


#: The search streams' event types, as the events table names them.
_SEARCH_EVENTS = "(" + ", ".join(f"'{cls.__name__}'" for cls in ev.SEARCH_EVENTS) + ")"


def _latest(table: str, only: str) -> str:
    """Each stream's latest row of an event table (a semi-join: cheaper than DISTINCT ON)."""
    narrowed = only.replace("WHERE", "AND") if only else ""
    return (
        f"(SELECT * FROM log.{table} WHERE id IN "
        f"(SELECT max(id) FROM log.{table} {only} GROUP BY stream) {narrowed})"
    )


def _trial_rows(only: str) -> str:
    """One row per trial from its latest event of each type; ``only`` narrows the streams."""
    narrowed = only.replace("WHERE", "AND") if only else ""
    return f"""
SELECT p.search_id AS search, p.seq, p.stream AS trial_id, p.agent, p.surface, p.backend,
       p.parents, p.hypothesis, p.expected_delta,
       lab.label, coalesce(lab.score, evl.score) AS score, lab.improvement,
       lab.delta_vs_parent, lab.delta_vs_best, coalesce(lab.reason, rej.reason) AS reason,
       evl.metrics, evl.verified, run.wall_s, run.exit_code, run.runner,
       p.at AS proposed_at, cl.at AS claimed_at, run.at AS finished_at, lab.at AS labeled_at,
       {_STATE} AS state,
       p.edit_digest, p.agent_call_digest,
       p.source->>'id' AS source_id, p.source->>'status' AS source_status,
       p.source->>'salvaged' AS salvaged, p.source, lab.evidence,
       p.id AS pid, pp.id AS parent_pid
FROM log.trial_proposed p
LEFT JOIN {_latest("trial_labeled", only)} lab USING (stream)
LEFT JOIN {_latest("trial_evaluated", only)} evl USING (stream)
LEFT JOIN {_latest("run_finished", only)} run USING (stream)
LEFT JOIN {_latest("trial_claimed", only)} cl USING (stream)
LEFT JOIN {_latest("edit_rejected", only)} rej USING (stream)
LEFT JOIN (SELECT stream, arg_max(type, id) AS type FROM log.events
           WHERE type NOT IN {_SEARCH_EVENTS} {narrowed}
           GROUP BY stream) e USING (stream)
LEFT JOIN log.trial_proposed pp ON pp.stream = p.parents[1]
{"WHERE p.stream IN (SELECT stream FROM touched)" if only else ""}
"""


def trial_rows_sql() -> str:
    """The SQL that builds ``log.trials``: part of a cache file's fingerprint."""
    return _trial_rows("")


def refresh_trials(con: duckdb.DuckDBPyConnection, after: int) -> None:
    """Bring ``log.trials`` (one row per trial) up to date with events after ``after``.

    Kept as a table because every named query starts from it; only trials
    with new events are recomputed.
    """
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'log' AND table_name = 'trials'"
    ).fetchall()[0][0]
    if not exists or after == 0:
        con.execute(f"CREATE OR REPLACE TABLE log.trials AS {_trial_rows('')}")
        return
    con.execute(
        "CREATE OR REPLACE TEMP TABLE touched AS SELECT DISTINCT stream FROM log.events "
        f"WHERE id > $after AND type NOT IN {_SEARCH_EVENTS}",
        {"after": after},
    )
    only = "WHERE stream IN (SELECT stream FROM touched)"
    con.execute("DELETE FROM log.trials WHERE trial_id IN (SELECT stream FROM touched)")
    con.execute(f"INSERT INTO log.trials {_trial_rows(only)}")
    con.execute("DROP TABLE touched")


#: Where each event type's ``at`` and search id are (its own table), for the events view.
_HEADS = " UNION ALL ".join(
    f'SELECT id, "at", {"stream" if cls in ev.SEARCH_EVENTS else "search_id"} AS search_id '
    f"FROM log.{table_name(cls)}"
    for cls in ev.EVENT_TYPES
)

VIEWS: dict[str, str] = {
    "events": f"""
SELECT e.id, e.stream, e.version, e.type,
       coalesce(h.at, (e.payload->>'at')::TIMESTAMPTZ) AS "at",
       coalesce(h.search_id, e.payload->>'search_id', e.stream) AS search_id,
       e.payload::JSON AS payload
FROM log.events e LEFT JOIN ({_HEADS}) h USING (id)
""",
    "searches": """
SELECT s.stream AS search, s.name, s.task, s.kind, s.direction, s.noise_floor,
       s.config, s.origin_search, s.origin_trial, s.host, s.arl_version,
       s.at AS started_at, st.at AS stopped_at, st.reason AS stop_reason, st.summary,
       coalesce(n.trials, 0) AS trials
FROM log.search_started s
LEFT JOIN (SELECT DISTINCT ON (stream) stream, "at", reason, summary
           FROM log.search_stopped ORDER BY stream, id DESC) st USING (stream)
LEFT JOIN (SELECT search_id AS stream, count(*) AS trials
           FROM log.trial_proposed GROUP BY ALL) n USING (stream)
""",
    "trials": "SELECT * EXCLUDE (pid, parent_pid, evidence) FROM log.trials",
    # Every keep, discard and baseline with what it stood on (TrialLabeled.evidence; older
    # and imported decisions have none: their evidence columns are null).
    "decisions": """
SELECT s.name AS search_name, t.seq, t.agent, t.label, t.score, t.delta_vs_best,
       t.evidence->>'rule' AS rule,
       (t.evidence->>'gain')::DOUBLE AS gain,
       (t.evidence->>'screen_gain')::DOUBLE AS screen_gain,
       (t.evidence->>'noise_floor')::DOUBLE AS noise_floor,
       t.evidence->>'floor_source' AS floor_source,
       (t.evidence->>'confirmed')::BOOLEAN AS confirmed,
       t.evidence->>'test' AS test,
       (t.evidence->>'statistic')::DOUBLE AS statistic,
       (t.evidence->>'p_value')::DOUBLE AS p_value,
       (t.evidence->'interval'->>0)::DOUBLE AS interval_low,
       (t.evidence->'interval'->>1)::DOUBLE AS interval_high,
       t.evidence->'seeds' AS seeds,
       t.evidence->>'best_trial' AS best_trial,
       (t.evidence->>'best')::DOUBLE AS best,
       t.evidence->'best_seeds' AS best_seeds,
       (t.evidence->>'measured_floor')::DOUBLE AS measured_floor,
       (t.evidence->>'declared_floor')::DOUBLE AS declared_floor,
       t.evidence->>'note' AS note,
       t.trial_id, t.search
FROM log.trials t JOIN searches s USING (search)
WHERE t.label IN ('baseline', 'keep', 'discard')
""",
    "lineage": """
SELECT search_id AS search, stream AS child, unnest(parents) AS parent
FROM log.trial_proposed
""",
    "checks": """
SELECT c.search_id AS search, c.stream AS trial, c.name AS "check", c.value, c."limit",
       c.passed, c.detail, c.id AS event_id
FROM log.checks c
JOIN (SELECT stream, max(id) AS id FROM log.trial_evaluated GROUP BY stream) latest
  USING (stream, id)
""",
    "quarantined": """
SELECT stream AS search, q.line, q.id AS source_id, q.reason, q.raw
FROM (SELECT stream, unnest(from_json(summary->'quarantined',
        '[{"line": "BIGINT", "id": "VARCHAR", "reason": "VARCHAR", "raw": "VARCHAR"}]')) AS q
      FROM log.search_stopped WHERE (summary->'quarantined') IS NOT NULL)
""",
    "agent_calls": """
SELECT p.search_id AS search, p.stream AS trial_id, p.seq, p.agent, p.backend,
       p.agent_call_digest AS digest, a.model, a.prompt_tokens, a.completion_tokens,
       a.total_tokens, a.bytes, p.at AS called_at
FROM log.trial_proposed p
LEFT JOIN log.agent_calls a ON a.digest = p.agent_call_digest
WHERE p.agent_call_digest IS NOT NULL
""",
}


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    for name, sql in VIEWS.items():
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {sql}')


def view_names() -> list[str]:
    return list(VIEWS)
