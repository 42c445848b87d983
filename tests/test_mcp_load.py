"""The load benchmark, small: 20 MCP clients over two servers submit and wait against one search on
PostgreSQL. Every acknowledged submission is one trial, no trial number is taken twice, every client
gets its label, and sql answers (without error) while waits are pending. No timing thresholds here:
`benchmarks/mcp_load.py` prints the figures."""

from __future__ import annotations

from benchmarks.mcp_load import measure
from tests.conftest import PG_HOST, PG_PORT, PG_USER, require_postgres


def test_twenty_clients_one_search_every_submission_one_trial(tmp_path):
    require_postgres()
    r = measure(f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres", clients=20, rounds=1, servers=2,
                slots=2, sleep=0.1, tmp=tmp_path)
    assert r.refused == [] and len(r.acknowledged) == 20
    assert sorted(r.proposed) == sorted(r.acknowledged)  # every submission one trial, none lost or extra
    assert len(r.seqs) == 21 and sorted(r.seqs) == list(range(21))  # no number twice (baseline is 0)
    assert r.labelled == 20
    assert r.sql_errors == [] and r.sql_busy_ms and max(r.waits_pending) >= 2  # sql ran while waits pended


def test_two_servers_never_submit_past_the_trial_budget_between_them(tmp_path):
    # Each server checked the budget against what it had read, then recorded: twenty clients
    # at once over two servers got past a budget of 6. The check and the submission now hold
    # a lock every process on the ledger takes (a PostgreSQL advisory lock here).
    require_postgres()
    r = measure(f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres", clients=20, rounds=1, servers=2,
                slots=2, sleep=0.5, tmp=tmp_path, budget=6)
    assert len(r.acknowledged) == 6 and sorted(r.proposed) == sorted(r.acknowledged)
    assert len(r.refused) == 14 and all("trial budget is spent" in t for t in r.refused), r.refused[:2]
    assert sorted(r.seqs) == list(range(7)) and r.labelled == 6
