"""The guarded DuckDB: someone else's SELECT over copied rows, under a timeout and resource limits."""

from __future__ import annotations

import os
import threading

import pyarrow as pa
import pytest

from arl.queries.errors import QueryError
from arl.queries.guarded import GuardedDuckDB, SqlLimits, one_select

ROWS = pa.table({"seq": list(range(30)), "label": ["keep" if i % 3 == 0 else "discard" for i in range(30)]})


@pytest.fixture
def db():
    with GuardedDuckDB({"trials": ROWS}, SqlLimits(timeout_s=1.0, memory="64MB", temp_space="16MB",
                                                  max_rows=10, max_offset=20)) as guarded:
        yield guarded


def test_pages_of_one_select(db):
    first = db.page("SELECT seq FROM trials ORDER BY seq", limit=4)
    assert first.columns == ["seq"] and [r[0] for r in first.rows] == [0, 1, 2, 3] and first.next_offset == 4
    capped = db.page("SELECT seq FROM trials ORDER BY seq", offset=20, limit=1000)
    assert len(capped.rows) == 10 and capped.next_offset is None  # rows 20..29: the last page


@pytest.mark.parametrize("query, why", [
    ("DELETE FROM trials", "only SELECT"),
    ("SELECT 1; SELECT 2", "exactly one statement"),
    ("SET memory_limit = '10GB'", "only SELECT"),
    ("SELECT * FROM read_csv('/etc/passwd')", "SQL failed"),
    ("SELECT * FROM glob('/*')", "SQL failed"),
    ("SELEC 1", "does not parse"),
    ("", "give a query"),
])
def test_anything_but_one_select_is_refused(db, query, why):
    with pytest.raises(QueryError, match=why):
        db.page(query)


def test_a_statement_that_runs_on_is_stopped_at_the_timeout(db):
    with pytest.raises(QueryError, match=r"statement timeout \(1 s\)"):
        db.page("SELECT count(*) FROM range(1000000000000::BIGINT)")
    assert db.page("SELECT count(*) FROM trials").rows == [(30,)]  # the connection is still good


def test_memory_and_temp_space_are_capped(db):
    with pytest.raises(QueryError, match="memory limit|temporary space|statement timeout"):
        db.page("SELECT max(x) FROM (SELECT list(range(i)) AS x FROM range(100000) t(i))")
    with pytest.raises(QueryError, match="limit|statement timeout"):
        db.page("SELECT i, md5(i::VARCHAR) AS h FROM range(20000000) t(i) ORDER BY h")


def test_the_limits_are_set_and_locked(db):
    settings = dict(db.page("SELECT name, value FROM duckdb_settings() WHERE name IN "
                            "('threads', 'enable_external_access', 'lock_configuration', 'memory_limit', "
                            "'max_temp_directory_size')").rows)
    assert settings == {"threads": "1", "enable_external_access": "false", "lock_configuration": "true",
                        "memory_limit": "61.0 MiB", "max_temp_directory_size": "15.2 MiB"}  # 64MB, 16MB
    with pytest.raises(QueryError, match="furthest a page may start"):
        db.page("SELECT * FROM trials", offset=21)


def test_spilled_files_go_to_a_private_folder_removed_on_close():
    db = GuardedDuckDB({"trials": ROWS})
    folder = db.temp_folder
    assert os.path.isdir(folder)
    db.close()
    assert not os.path.exists(folder)


def test_concurrent_pages_each_get_their_answer(db):
    answers: list = []
    threads = [threading.Thread(target=lambda i=i: answers.append(db.page(f"SELECT {i} AS n").rows[0][0]))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == list(range(8))


def test_one_select_returns_the_statement_without_its_semicolon():
    assert one_select("  SELECT 1;  ") == "SELECT 1"


def test_fresh_rows_replace_old_ones_while_queries_run(db):
    stop = threading.Event()
    seen: set[int] = set()
    errors: list[Exception] = []

    def query() -> None:
        while not stop.is_set():
            try:
                seen.add(db.page("SELECT count(*) FROM trials").rows[0][0])
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

    readers = [threading.Thread(target=query) for _ in range(3)]
    for t in readers:
        t.start()
    for n in (31, 32, 33):
        db.load({"trials": pa.table({"seq": list(range(n)), "label": ["keep"] * n})})
    stop.set()
    for t in readers:
        t.join()
    assert errors == [] and seen <= {30, 31, 32, 33}
    assert db.page("SELECT count(*) FROM trials").rows == [(33,)]
