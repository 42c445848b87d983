"""The SQL views over the loaded ledger (see README, "Forensics").

Views, not tables: they read the ``log`` tables that :mod:`queries.load`
appends to, so an incremental refresh needs no recomputation here. Where a
trial has several events of one type (a re-run after a lost lease, a
re-evaluation), the latest one counts.
"""

from __future__ import annotations

import duckdb

#: Statuses a trial moves through, by the type of its latest event.
_STATE = """CASE e.type
    WHEN 'TrialProposed' THEN 'proposed' WHEN 'EditRejected' THEN 'rejected'
    WHEN 'TrialSubmitted' THEN 'submitted' WHEN 'TrialClaimed' THEN 'claimed'
    WHEN 'LeaseExpired' THEN 'requeued' WHEN 'RunFinished' THEN 'finished'
    WHEN 'TrialEvaluated' THEN 'evaluated' WHEN 'TrialLabeled' THEN 'labeled' END"""

VIEWS: dict[str, str] = {
    "events": """
SELECT id, stream, version, type, "at", search_id, payload::JSON AS payload
FROM log.events
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
    "trials": f"""
SELECT p.search_id AS search, p.seq, p.stream AS trial_id, p.agent, p.surface, p.backend,
       p.parents, p.hypothesis, p.expected_delta,
       lab.label, coalesce(lab.score, evl.score) AS score, lab.improvement,
       lab.delta_vs_parent, lab.delta_vs_best, coalesce(lab.reason, rej.reason) AS reason,
       evl.metrics, run.wall_s, run.exit_code, run.runner,
       p.at AS proposed_at, cl.at AS claimed_at, run.at AS finished_at, lab.at AS labeled_at,
       {_STATE} AS state,
       p.edit_digest, p.agent_call_digest,
       p.source->>'id' AS source_id, p.source->>'status' AS source_status,
       p.source->>'salvaged' AS salvaged, p.source
FROM log.trial_proposed p
LEFT JOIN (SELECT DISTINCT ON (stream) * FROM log.trial_labeled ORDER BY stream, id DESC) lab
       USING (stream)
LEFT JOIN (SELECT DISTINCT ON (stream) * FROM log.trial_evaluated ORDER BY stream, id DESC) evl
       USING (stream)
LEFT JOIN (SELECT DISTINCT ON (stream) * FROM log.run_finished ORDER BY stream, id DESC) run
       USING (stream)
LEFT JOIN (SELECT DISTINCT ON (stream) * FROM log.trial_claimed ORDER BY stream, id DESC) cl
       USING (stream)
LEFT JOIN (SELECT DISTINCT ON (stream) * FROM log.edit_rejected ORDER BY stream, id DESC) rej
       USING (stream)
LEFT JOIN (SELECT DISTINCT ON (stream) stream, type FROM log.events
           WHERE type NOT IN ('SearchStarted', 'SearchStopped')
           ORDER BY stream, id DESC) e USING (stream)
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
