"""The forensics commands end to end, as a person runs them: `arl sql|query|export|import|report`."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.queries.load import connect
from arl.queries.views import VIEWS
from tests.factories import one_of_each, synthetic_search

ROOT = Path(__file__).resolve().parents[1]


def arl(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "arl.runners.cli", *args],
        cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )


def _storage(t: pa.DataType) -> pa.DataType:
    return t.storage_type if isinstance(t, pa.BaseExtensionType) else t


@pytest.fixture
def store(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        ledger.append(*synthetic_search(40, seed=4))
        ledger.append(*one_of_each())
    return sqlite_url


def test_sql_formats(store):
    q = "SELECT label, count(*) AS n FROM trials WHERE label IS NOT NULL GROUP BY 1 ORDER BY 1"
    as_json = arl("sql", q, "--format", "json", "--store", store)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert rows and set(rows[0]) == {"label", "n"} and sum(r["n"] for r in rows) == 42

    as_csv = arl("sql", q, "--format", "csv", "--store", store)
    table = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert table[0] == ["label", "n"]
    assert [(r[0], int(r[1])) for r in table[1:]] == [(r["label"], r["n"]) for r in rows]

    as_table = arl("sql", q, "--store", store)
    lines = as_table.stdout.splitlines()
    assert lines[0].split() == ["label", "n"] and lines[-1] == f"({len(rows)} rows)"


def test_bad_sql_and_unknown_names_are_one_line_errors(store, tmp_path):
    for args, needle in [
        (("sql", "SELEC 1"), "SQL failed: Parser Error"),
        (("sql", "SELECT nope FROM trials"), "SQL failed: Binder Error"),
        (("query", "leaderbord"), "no named query 'leaderbord'; choose one of: leaderboard"),
        (("query", "leaderboard", "--search", "zzz"), "no search matches 'zzz'"),
        (("import", "recipes", str(tmp_path / "missing")), "no folder or file at"),
    ]:
        out = arl(*args, "--store", store)
        assert out.returncode == 2, (args, out.stdout)
        assert out.stderr.startswith("arl: error: ") and needle in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    missing = arl("sql", "SELECT 1", "--store", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.returncode == 2 and "no arl ledger at" in missing.stderr


def test_query_command_prints_named_queries(store):
    out = arl("query", "label_mix", "--search", "synthetic", "--quartiles", "--format", "json", "--store", store)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {r["quartile"] for r in rows} == {1, 2, 3, 4}
    assert sum(r["trials"] for r in rows) == 40


def test_interactive_prompt_runs_statements_and_keeps_history(store, tmp_path):
    history = tmp_path / "history"
    session = "SELECT count(*) AS n\n  FROM trials;\nSELEC oops;\n.format csv\nSELECT 7 AS seven;\n.quit\n"
    out = arl("sql", "--store", store, stdin=session, env={"ARL_SQL_HISTORY": str(history)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[2] == "43"  # 41 synthetic trials + 2
    assert "error: SQL failed: Parser Error" in out.stdout  # a bad statement does not end the session
    assert out.stdout.rstrip().endswith("seven\n7")
    saved = history.read_text()
    assert "FROM trials;" in saved and "SELECT 7 AS seven;" in saved


def test_export_reads_back_unchanged_with_duckdb_and_pyarrow(store, tmp_path):
    out = arl("export", "parquet", str(tmp_path / "pq"), "--store", store)
    assert out.returncode == 0, out.stderr
    with Ledger.open(store) as ledger:
        con = connect(ledger)
    other = duckdb.connect()
    other.execute("SET TimeZone = 'UTC'")
    for view in VIEWS:
        path = tmp_path / "pq" / f"{view}.parquet"
        expected = con.sql(f'SELECT * FROM "{view}"').to_arrow_table()
        by_duckdb = other.sql(f"SELECT * FROM '{path}'").to_arrow_table()
        by_arrow = pq.read_table(path)
        assert by_duckdb.equals(expected), view
        assert by_arrow.column_names == expected.column_names, view
        assert by_arrow.to_pylist() == expected.to_pylist(), view
        # JSON columns come back as Arrow's JSON extension type over the same strings
        assert [_storage(f.type) for f in by_arrow.schema] == [f.type for f in expected.schema], view

    out = arl("export", "ndjson", str(tmp_path / "nd"), "--store", store)
    assert out.returncode == 0, out.stderr
    path = tmp_path / "nd" / "events.ndjson"
    with Ledger.open(store) as ledger:
        recorded = list(ledger.iter_events())
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == [nid for nid, _ in recorded]
    # each payload is the stored event, field for field
    assert [ev.decode(json.dumps(line["payload"]).encode()) for line in lines] == [e for _, e in recorded]
    assert pa_json.read_json(path).num_rows == len(recorded)
    assert other.execute(f"SELECT count(*), min(id), max(id) FROM read_json('{path}')").fetchall() == [
        (len(recorded), recorded[0][0], recorded[-1][0])
    ]


def test_import_then_report_from_the_command_line(tmp_path, sqlite_url):
    text = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n" + "".join(
        f"{i:07x}\t{1 - i / 100:.6f}\t44.0\t{'keep' if i % 3 == 0 else 'discard'}\tidea {i}\n"
        for i in range(1, 10)
    )
    (tmp_path / "results.tsv").write_text(text)
    first = arl("import", "autoresearch", str(tmp_path / "results.tsv"), "--name", "ar", "--store", sqlite_url)
    assert first.returncode == 0, first.stderr
    assert "9 rows → 9 trials; 0 salvaged, 0 quarantined" in first.stdout
    again = arl("import", "autoresearch", str(tmp_path), "--store", sqlite_url)
    assert again.returncode == 0 and "nothing added" in again.stdout
    report = arl("report", "--search", "ar", "-o", str(tmp_path / "r.html"), "--store", sqlite_url)
    assert report.returncode == 0, report.stderr
    assert "1 search(es), 9 trials" in report.stdout
    html = (tmp_path / "r.html").read_text()
    data = json.loads(html.split("id=arl-data>", 1)[1].split("</script>", 1)[0])
    assert data["kind"] == "report" and [s["name"] for s in data["sections"]] == ["ar"]
    assert len(data["sections"][0]["marks"]) == 9


def test_every_command_that_opens_a_ledger_takes_store():
    """The README's promise: a command that reads or writes a ledger takes --store; the ones
    that take none open no ledger."""
    import argparse
    import inspect

    from arl.runners.cli import build_parser

    def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
        for action in subs:
            for name, child in action.choices.items():
                yield from leaves(child, (*path, name))

    commands = list(leaves(build_parser()))
    assert len(commands) > 12
    for path, parser in commands:
        takes_store = any("--store" in a.option_strings for a in parser._actions)
        handler = parser.get_default("func")
        opens = "Ledger.open" in inspect.getsource(handler) or "_ledger(" in inspect.getsource(handler)
        assert takes_store == opens, f"arl {' '.join(path)}: --store {'missing' if opens else 'taken but unused'}"
