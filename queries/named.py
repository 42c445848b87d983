"""Named queries: the forensic questions asked of every search, as SQL over the views.

Each takes ``$search`` (a search id, or NULL for every search). Run them with
:func:`run_named` or ``arl query NAME [--search S]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from arl.ledger.searches import SearchRef, UnknownSearch, pick_search
from arl.queries.errors import QueryError
from arl.queries.table import Table, run_sql

_IN_SEARCH = "($search IS NULL OR t.search = $search)"
#: Labels of trials that ran legally; everything else but baseline is a failure of some kind.
_LEGAL = "('baseline', 'keep', 'discard')"
_NOT_CHARGED = "('baseline', 'duplicate', 'infra_error')"


@dataclass(frozen=True)
class NamedQuery:
    name: str
    summary: str
    sql: str
    #: Run on the connection first (e.g. load a table the query joins that is not in the ledger).
    prepare: Callable[[duckdb.DuckDBPyConnection], None] | None = None


_LEADERBOARD = f"""
SELECT s.name AS search_name, rank() OVER w AS rank, t.seq, t.source_id, t.agent, t.label,
       t.score, t.delta_vs_best, t.hypothesis, t.trial_id, t.search
FROM trials t JOIN searches s USING (search)
WHERE t.label IN {_LEGAL} AND t.score IS NOT NULL AND {_IN_SEARCH}
WINDOW w AS (PARTITION BY t.search
             ORDER BY CASE WHEN s.direction = 'max' THEN -t.score ELSE t.score END, t.seq)
QUALIFY rank() OVER w <= 10
ORDER BY search_name, t.search, rank
"""

# The chain follows each trial's first parent from the best back to the root, over
# integer keys (the TrialProposed notification id) and only the trials that are
# someone's parent: each recursion step then scans a small table.
_BEST_PATH = f"""
WITH RECURSIVE best AS (
    SELECT t.search,
           arg_min(t.pid, CASE WHEN s.direction = 'max' THEN -t.score ELSE t.score END) AS pid
    FROM log.trials t JOIN searches s USING (search)
    WHERE t.label IN ('baseline', 'keep') AND t.score IS NOT NULL AND {_IN_SEARCH}
    GROUP BY t.search
), edges AS MATERIALIZED (
    SELECT pid, parent_pid FROM log.trials
    WHERE parent_pid IS NOT NULL
      AND (pid IN (SELECT parent_pid FROM log.trials) OR pid IN (SELECT pid FROM best))
), chain(search, pid, hops) AS (
    SELECT search, pid, 0 FROM best
    UNION ALL
    SELECT c.search, e.parent_pid, c.hops + 1
    FROM chain c JOIN edges e ON e.pid = c.pid
    WHERE c.hops <= (SELECT count(*) FROM edges)  -- a cycle in damaged data cannot spin forever
)
SELECT s.name AS search_name,
       row_number() OVER w - 1 AS step, t.seq, t.source_id, t.agent, t.label, t.score,
       t.score - lag(t.score) OVER w AS delta, t.hypothesis, t.trial_id, c.search
FROM chain c JOIN log.trials t ON t.pid = c.pid JOIN searches s ON s.search = c.search
WINDOW w AS (PARTITION BY c.search ORDER BY c.hops DESC)
ORDER BY search_name, c.search, step
"""

_LABEL_MIX = f"""
SELECT s.name AS search_name, t.label, count(*) AS trials,
       round(count(*) / sum(count(*)) OVER (PARTITION BY t.search), 4) AS share, t.search
FROM trials t JOIN searches s USING (search)
WHERE t.label IS NOT NULL AND t.label <> 'baseline' AND {_IN_SEARCH}
GROUP BY s.name, t.search, t.label
ORDER BY search_name, t.search, trials DESC, t.label
"""

# Quartiles of the search in proposal order, baseline excluded (as the paper counts them).
_LABEL_MIX_QUARTILES = f"""
WITH q AS (
    SELECT t.search, t.label, ntile(4) OVER (PARTITION BY t.search ORDER BY t.seq) AS quartile
    FROM trials t
    WHERE t.label IS NOT NULL AND t.label <> 'baseline' AND {_IN_SEARCH}
)
SELECT s.name AS search_name, q.quartile, q.label, count(*) AS trials,
       round(count(*) / sum(count(*)) OVER (PARTITION BY q.search, q.quartile), 4) AS share,
       q.search
FROM q JOIN searches s USING (search)
GROUP BY s.name, q.search, q.quartile, q.label
ORDER BY search_name, q.search, q.quartile, trials DESC, q.label
"""

_FAILURE_TO_FIX = f"""
WITH RECURSIVE edges AS (
    SELECT l.parent, l.child, coalesce(t.source_id, t.seq::VARCHAR) AS child_ref
    FROM lineage l JOIN trials t ON t.trial_id = l.child
), failed AS (
    SELECT c.search, c.trial AS failure, c."check", c.value, c."limit"
    FROM checks c JOIN trials t ON t.trial_id = c.trial
    WHERE NOT c.passed AND {_IN_SEARCH}
), walk(search, failure, "check", trial, path, hops) AS (
    SELECT f.search, f.failure, f."check", e.child, [e.child_ref], 1
    FROM failed f JOIN edges e ON e.parent = f.failure
    UNION ALL
    SELECT w.search, w.failure, w."check", e.child, list_append(w.path, e.child_ref), w.hops + 1
    FROM walk w JOIN edges e ON e.parent = w.trial
    WHERE w.hops < 64
), fixes AS (
    SELECT w.*, c.value AS fix_value
    FROM walk w JOIN checks c ON c.trial = w.trial AND c."check" = w."check" AND c.passed
    QUALIFY row_number() OVER (PARTITION BY w.failure, w."check" ORDER BY w.hops, w.trial) = 1
)
SELECT s.name AS search_name, ft.seq AS failure_seq, ft.source_id AS failure_id,
       ft.label AS failure_label, x."check", f.value AS failed_value, f."limit",
       xt.seq AS fix_seq, xt.source_id AS fix_id, xt.label AS fix_label, x.fix_value,
       x.hops, x.path[1:len(x.path) - 1] AS between, x.failure, x.trial AS fix, x.search
FROM fixes x
JOIN failed f ON f.failure = x.failure AND f."check" = x."check"
JOIN trials ft ON ft.trial_id = x.failure
JOIN trials xt ON xt.trial_id = x.trial
JOIN searches s ON s.search = x.search
ORDER BY search_name, x.search, failure_seq, x."check"
"""

_AGENT_YIELD = f"""
SELECT s.name AS search_name, t.agent, count(*) AS trials,
       count(*) FILTER (WHERE t.label = 'keep') AS keeps,
       count(*) FILTER (WHERE t.label = 'discard') AS discards,
       count(*) FILTER (WHERE t.label NOT IN {_LEGAL} AND t.label NOT IN {_NOT_CHARGED}) AS failures,
       count(*) FILTER (WHERE t.label = 'infra_error') AS infra_errors,
       round(count(*) FILTER (WHERE t.label = 'keep') / count(*), 4) AS keep_rate,
       avg(t.delta_vs_best) AS mean_delta,
       CASE WHEN s.direction = 'max' THEN max(t.delta_vs_best) ELSE min(t.delta_vs_best) END
           AS best_delta,
       t.search
FROM trials t JOIN searches s USING (search)
WHERE t.label IS NOT NULL AND t.label <> 'baseline' AND {_IN_SEARCH}
GROUP BY s.name, s.direction, t.search, t.agent
ORDER BY search_name, t.search, keeps DESC, trials DESC, t.agent
"""

# Legal trials only (a failure's score is not comparable). Observed: the delta the label
# recorded, else the score against the first parent's.
_CALIBRATION = f"""
WITH o AS (
    SELECT t.search, t.agent, t.expected_delta,
           coalesce(t.delta_vs_parent, t.delta_vs_best, t.score - p.score) AS observed
    FROM trials t LEFT JOIN trials p ON p.trial_id = t.parents[1]
    WHERE t.expected_delta IS NOT NULL AND t.label IN ('keep', 'discard') AND {_IN_SEARCH}
)
SELECT s.name AS search_name, coalesce(o.agent, '(all)') AS agent, count(*) AS trials,
       avg(o.expected_delta) AS mean_expected, avg(o.observed) AS mean_observed,
       corr(o.expected_delta, o.observed) AS correlation,
       round(avg((sign(o.expected_delta) = sign(o.observed))::INTEGER), 4) AS sign_agreement,
       avg(abs(o.observed - o.expected_delta)) AS mean_abs_error, o.search
FROM o JOIN searches s USING (search)
WHERE o.observed IS NOT NULL
GROUP BY GROUPING SETS ((s.name, o.search, o.agent), (s.name, o.search))
ORDER BY search_name, o.search, o.agent NULLS FIRST
"""

# Busy workers: seconds of runs overlapping each hour / 3600 (mean concurrent runs).
_THROUGHPUT = f"""
WITH runs AS (
    SELECT t.search, t.runner, t.label, t.labeled_at AS done,
           coalesce(t.claimed_at, t.finished_at - to_seconds(coalesce(t.wall_s, 0))) AS started,
           t.finished_at AS ended
    FROM trials t WHERE t.labeled_at IS NOT NULL AND {_IN_SEARCH}
), hours AS (
    SELECT search,
           unnest(range(date_trunc('hour', min(least(coalesce(started, done), done))),
                        max(greatest(coalesce(ended, done), done)) + INTERVAL 1 HOUR,
                        INTERVAL 1 HOUR)) AS hour
    FROM runs GROUP BY search
), done AS (
    SELECT search, date_trunc('hour', done) AS hour, count(*) AS trials,
           count(*) FILTER (WHERE label = 'keep') AS keeps
    FROM runs GROUP BY ALL
), busy AS (
    SELECT h.search, h.hour,
           sum(epoch(least(r.ended, h.hour + INTERVAL 1 HOUR) - greatest(r.started, h.hour)))
               / 3600 AS busy_workers,
           count(DISTINCT r.runner) AS runners
    FROM hours h JOIN runs r
      ON r.search = h.search AND r.started < h.hour + INTERVAL 1 HOUR AND r.ended > h.hour
    GROUP BY ALL
)
SELECT s.name AS search_name, h.hour, coalesce(d.trials, 0) AS trials,
       coalesce(d.keeps, 0) AS keeps, round(coalesce(b.busy_workers, 0), 3) AS busy_workers,
       coalesce(b.runners, 0) AS runners, h.search
FROM hours h
LEFT JOIN done d USING (search, hour)
LEFT JOIN busy b USING (search, hour)
JOIN searches s ON s.search = h.search
ORDER BY search_name, h.search, h.hour
"""

# Tokens from each proposal's recorded call (a whole agentic session counts as one call); cost from
# the user's price table (queries/prices.py), the "*" row pricing unlisted models; NULL when unpriced.
_AGENT_COST = """
WITH calls AS (
    SELECT a.search, a.agent, a.model, t.label,
           coalesce(a.prompt_tokens, 0) AS prompt_tokens, coalesce(a.completion_tokens, 0) AS completion_tokens,
           coalesce(a.total_tokens, coalesce(a.prompt_tokens, 0) + coalesce(a.completion_tokens, 0)) AS total_tokens
    FROM agent_calls a JOIN trials t ON t.trial_id = a.trial_id
    WHERE ($search IS NULL OR a.search = $search)
), priced AS (
    SELECT c.*, (c.prompt_tokens * coalesce(p.prompt_per_mtok, d.prompt_per_mtok)
                 + c.completion_tokens * coalesce(p.completion_per_mtok, d.completion_per_mtok)) / 1e6 AS cost
    FROM calls c
    LEFT JOIN prices p ON p.model = c.model
    LEFT JOIN (SELECT * FROM prices WHERE model = '*') d ON true
)
SELECT s.name AS search_name, coalesce(x.agent, '(all)') AS agent, count(*) AS calls,
       sum(x.prompt_tokens) AS prompt_tokens, sum(x.completion_tokens) AS completion_tokens,
       sum(x.total_tokens) AS total_tokens, round(sum(x.cost), 6) AS cost,
       count(*) FILTER (WHERE x.label = 'keep') AS keeps,
       sum(x.total_tokens) // nullif(count(*) FILTER (WHERE x.label = 'keep'), 0) AS tokens_per_keep,
       round(sum(x.cost) / nullif(count(*) FILTER (WHERE x.label = 'keep'), 0), 6) AS cost_per_keep,
       x.search
FROM priced x JOIN searches s ON s.search = x.search
GROUP BY GROUPING SETS ((s.name, x.search, x.agent), (s.name, x.search))
ORDER BY search_name, x.search, x.agent NULLS FIRST
"""


# A keep's gain over the best at the time it was decided: from its evidence where recorded,
# else from its stored delta_vs_best (score minus that best, signed; imports carry the
# source's own). The noise is the one given, else the floor measured on the search's
# starting program, else the manifest's. "Within" is the side arl re-runs: gain <= noise
# (the tolerance absorbs decimal representation, e.g. 1.081 - 1.080), judged on the gain
# that decided whether to re-run (a confirmed keep's screen_gain; its gain over every seed
# may have grown past the noise on the re-runs).
_NOISE_AUDIT = """
WITH ordered AS (
    SELECT t.search, t.seq, t.label, t.score, t.delta_vs_best, t.evidence, s.direction,
           -- the best before this trial, where neither the evidence nor the delta says it
           CASE WHEN s.direction = 'min'
                THEN min(t.score) FILTER (WHERE t.label IN ('baseline', 'keep')) OVER w
                ELSE max(t.score) FILTER (WHERE t.label IN ('baseline', 'keep')) OVER w END AS best_before
    FROM log.trials t JOIN searches s USING (search)
    WHERE $search IS NULL OR t.search = $search
    WINDOW w AS (PARTITION BY t.search ORDER BY t.seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
), keeps AS (
    SELECT search,
           coalesce((evidence->>'gain')::DOUBLE,
                    CASE WHEN direction = 'min' THEN -delta_vs_best ELSE delta_vs_best END,
                    CASE WHEN direction = 'min' THEN best_before - score ELSE score - best_before END) AS gain,
           (evidence->>'screen_gain')::DOUBLE AS screen_gain,
           coalesce((evidence->>'confirmed')::BOOLEAN, false) AS confirmed
    FROM ordered
    WHERE label = 'keep'
), measured AS (
    SELECT search, arg_max((evidence->>'noise_floor')::DOUBLE, seq) AS floor
    FROM log.trials
    WHERE label = 'baseline' AND evidence->>'floor_source' = 'measured'
    GROUP BY search
), judged AS (
    SELECT s.name AS search_name, s.search,
           coalesce($noise::DOUBLE, m.floor, s.noise_floor) AS noise,
           CASE WHEN $noise IS NOT NULL THEN 'given' WHEN m.floor IS NOT NULL THEN 'measured'
                ELSE 'manifest' END AS noise_from
    FROM searches s LEFT JOIN measured m USING (search)
    WHERE $search IS NULL OR s.search = $search
)
SELECT j.search_name, j.noise, j.noise_from,
       count(k.search) AS keeps,
       count(k.search) FILTER (WHERE coalesce(k.screen_gain, k.gain) <= j.noise + 1e-12) AS within_noise,
       count(k.search) FILTER (WHERE coalesce(k.screen_gain, k.gain) <= j.noise + 1e-12 AND k.confirmed) AS confirmed,
       count(k.search) FILTER (WHERE k.gain IS NULL) AS no_reference,
       round(median(k.gain), 6) AS median_gain,
       j.search
FROM judged j LEFT JOIN keeps k USING (search)
GROUP BY ALL
ORDER BY j.search_name, j.search
"""


def _prices(con: duckdb.DuckDBPyConnection) -> None:
    from arl.queries.prices import register_prices

    register_prices(con)


NAMED: dict[str, NamedQuery] = {
    q.name: q
    for q in (
        NamedQuery("leaderboard", "the 10 best legal trials of each search", _LEADERBOARD),
        NamedQuery("best_path", "root → best chain of first parents, with each step's delta", _BEST_PATH),
        NamedQuery("label_mix", "label counts and shares per search (--quartiles: per quartile)", _LABEL_MIX),
        NamedQuery(
            "failure_to_fix",
            "failed checks that pass in a later descendant, with the trials between",
            _FAILURE_TO_FIX,
        ),
        NamedQuery("agent_yield", "keeps, failures and mean delta per specialist", _AGENT_YIELD),
        NamedQuery("calibration", "expected vs observed delta per specialist", _CALIBRATION),
        NamedQuery("throughput", "trials per hour and busy workers over time", _THROUGHPUT),
        NamedQuery("noise_audit", "per search: keeps, those whose gain over the best at the time was within "
                   "the noise (--noise X, else the search's floor), and how many re-runs confirmed",
                   _NOISE_AUDIT),
        NamedQuery("agent_cost", "model tokens and cost per specialist and per keep (prices: ARL_PRICES)",
                   _AGENT_COST, prepare=_prices),
    )
}


def run_named(
    con: duckdb.DuckDBPyConnection,
    name: str,
    *,
    search: str | None = None,
    quartiles: bool = False,
    noise: float | None = None,
) -> Table:
    """Run a named query; ``search`` is an id, id prefix or name (see :func:`resolve_search`)."""
    query = NAMED.get(name)
    if query is None:
        raise QueryError(f"no named query {name!r}; choose one of: {', '.join(NAMED)}")
    if quartiles and name != "label_mix":
        raise QueryError(f"--quartiles applies to label_mix only, not {name}; drop it")
    if noise is not None and name != "noise_audit":
        raise QueryError(f"--noise applies to noise_audit only, not {name}; drop it")
    if noise is not None and not (noise >= 0 and noise < float("inf")):
        raise QueryError(f"--noise {noise}: give the run-to-run noise as a finite number >= 0, e.g. 0.001")
    sql = _LABEL_MIX_QUARTILES if quartiles else query.sql
    if query.prepare is not None:
        query.prepare(con)
    sid = resolve_search(con, search) if search else None
    params: dict[str, object] = {"search": sid}
    if name == "noise_audit":
        params["noise"] = noise
    return run_sql(con, sql, params)


def resolve_search(con: duckdb.DuckDBPyConnection, text: str) -> str:
    """A search id by the rule every arl command uses (:func:`arl.ledger.searches.pick_search`)."""
    rows = con.execute("SELECT search, name FROM searches ORDER BY started_at, search").fetchall()
    try:
        return pick_search([SearchRef(sid, name) for sid, name in rows], text, where="the ledger")
    except UnknownSearch as e:
        raise QueryError(str(e)) from None
