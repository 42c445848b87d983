"""Import of recorded trajectories: the paper's fixture runs, autoresearch, damaged TSV rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.queries.importers import SourceError, import_autoresearch, import_recipes
from arl.queries.load import connect
from arl.queries.named import run_named
from arl.queries.table import run_sql
from tests.conftest import shared_fixtures, shared_path

FIXTURES = shared_path("auto-research-recipes")

# Status counts as published with the release (fixtures README), baseline row excluded.
PUBLISHED = {
    "cifar": {"disqualified": 81, "preflight_crash": 7, "discard": 5, "keep": 4},
    "nanochat_d12": {"discard": 177, "preflight_crash": 13, "keep": 5, "train_budget_overrun": 5},
    "pg_ablation_lineage_on": {
        "discard": 124, "eval_budget_overrun": 38, "keep": 16, "crash": 11, "size_blocked": 11,
    },
}
BEST = {"cifar": 25.1464, "nanochat_d12": 0.2244, "pg_ablation_lineage_on": 1.073142}

needs_fixtures = pytest.mark.shared("auto-research-recipes")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The three fixture runs imported into one SQLite ledger, and a DuckDB connection to it."""
    shared_fixtures("auto-research-recipes")
    url = f"sqlite:///{tmp_path_factory.mktemp('imported') / 'ledger.db'}"
    with Ledger.open(url) as ledger:
        results = {d: import_recipes(ledger, FIXTURES / d) for d in PUBLISHED}
        con = connect(ledger)
        yield ledger, results, con
        con.close()


def _rows(con, sql, **params):
    return run_sql(con, sql, params or None).rows


@needs_fixtures
def test_sql_reproduces_the_published_status_counts(imported):
    _, results, con = imported
    for run, counts in PUBLISHED.items():
        assert results[run].quarantined == [] and results[run].salvaged == []
        got = dict(
            _rows(
                con,
                "SELECT t.source_status, count(*) FROM trials t JOIN searches s USING (search) "
                "WHERE s.name = $n AND t.source_status <> 'baseline' GROUP BY 1",
                n=run,
            )
        )
        assert got == counts, run


@needs_fixtures
def test_statuses_map_to_arl_labels(imported):
    _, _, con = imported
    got = {
        (name, label): n
        for name, label, n in _rows(
            con,
            "SELECT s.name, t.label, count(*) FROM trials t JOIN searches s USING (search) GROUP BY ALL",
        )
    }
    # preflight crashes whose notes blame the infrastructure are infra_error, the rest invalid_edit
    assert got[("cifar", "gate_miss")] == 81
    assert got[("cifar", "infra_error")] == 2 and got[("cifar", "invalid_edit")] == 5
    assert got[("nanochat_d12", "infra_error")] == 11 and got[("nanochat_d12", "invalid_edit")] == 2
    assert got[("pg_ablation_lineage_on", "size_violation")] == 11
    assert got[("pg_ablation_lineage_on", "eval_budget_overrun")] == 38
    assert all(got[(run, "baseline")] == 1 for run in PUBLISHED)


@needs_fixtures
def test_sql_reproduces_the_best_scores(imported):
    _, _, con = imported
    best = dict(
        _rows(
            con,
            "SELECT s.name, CASE WHEN s.direction = 'min' THEN min(t.score) ELSE max(t.score) END "
            "FROM trials t JOIN searches s USING (search) WHERE t.label IN ('baseline', 'keep') "
            "GROUP BY s.name, s.direction",
        )
    )
    assert best == pytest.approx(BEST, rel=1e-9)
    # the best trial is the one best.json names
    ids = dict(_rows(con, "SELECT search_name, source_id FROM (" + _LEADER + ") WHERE rank = 1"))
    assert ids == {"cifar": "070", "nanochat_d12": "156", "pg_ablation_lineage_on": "176"}


_LEADER = "SELECT * FROM (SELECT s.name AS search_name, t.source_id, rank() OVER (PARTITION BY t.search ORDER BY CASE WHEN s.direction = 'max' THEN -t.score ELSE t.score END) AS rank FROM trials t JOIN searches s USING (search) WHERE t.label IN ('baseline', 'keep'))"


@needs_fixtures
def test_eval_budget_overrun_share_by_quartile_matches_the_paper(imported):
    _, _, con = imported
    table = run_named(con, "label_mix", search="pg_ablation_lineage_on", quartiles=True)
    shares = {
        r["quartile"]: r["share"] for r in table.records() if r["label"] == "eval_budget_overrun"
    }
    assert shares == {1: 0.40, 2: 0.12, 3: 0.16, 4: 0.08}


@needs_fixtures
def test_rows_keep_their_ids_parents_times_and_checks(imported):
    _, _, con = imported
    row = run_sql(
        con,
        "SELECT t.*, p.source_id AS parent_source FROM trials t JOIN searches s USING (search) "
        "LEFT JOIN trials p ON p.trial_id = t.parents[1] "
        "WHERE s.name = 'pg_ablation_lineage_on' AND t.source_id = '004'",
    ).records()[0]
    assert row["agent"] == "arch" and row["parent_source"] == "000"
    assert row["label"] == "size_violation" and row["source_status"] == "size_blocked"
    assert row["hypothesis"].startswith("ResFormer value-residual")
    assert row["expected_delta"] == -0.005
    assert row["labeled_at"].isoformat() == "2026-05-01T04:26:35+00:00"
    assert row["wall_s"] == 1473.0
    checks = dict(
        _rows(con, 'SELECT "check", passed FROM checks WHERE trial = $t', t=row["trial_id"])
    )
    assert checks == {"artifact_bytes": False, "eval_s": True}
    # a preflight crash never ran: its edit was rejected
    state = _rows(
        con,
        "SELECT t.state, t.reason FROM trials t JOIN searches s USING (search) "
        "WHERE s.name = 'cifar' AND t.source_id = '055'",
    )[0]
    assert state[0] == "labeled" and "Unrecognized key: mixup_alpha" in state[1]


@needs_fixtures
def test_reimporting_the_same_folder_adds_nothing(imported):
    ledger, results, _ = imported
    head = ledger.head()
    again = import_recipes(ledger, FIXTURES / "cifar" / "results.tsv")
    assert again.already and again.search_id == results["cifar"].search_id
    assert again.trials == 98
    assert ledger.head() == head
    assert "nothing added" in again.summary()


def test_missing_folder_is_one_clear_error(tmp_path, sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        with pytest.raises(SourceError, match="no folder or file at .*give the folder"):
            import_recipes(ledger, tmp_path / "nope")
        (tmp_path / "empty").mkdir()
        with pytest.raises(SourceError, match="has no results.tsv"):
            import_recipes(ledger, tmp_path / "empty")
        (tmp_path / "other.tsv").write_text("a\tb\n1\t2\n")
        with pytest.raises(SourceError, match="header lacks"):
            import_autoresearch(ledger, tmp_path / "other.tsv")
        assert ledger.head() == 0


# --- damaged rows -----------------------------------------------------------------------

HEADER = [
    "exp_id", "timestamp", "specialist", "parent_exp", "baseline_exp", "domain", "hypothesis",
    "expected_delta", "status", "val_bpb", "delta_vs_best", "total_s", "notes",
]


def _row(exp: str, status: str, bpb: str, hyp: str, notes: str = "", parent: str = "000") -> str:
    ts = f"2026-05-01T04:{int(exp) % 60:02d}:00Z"
    return "\t".join(
        [exp, ts, "opt", "" if exp == "000" else parent, "000", "opt", hyp, "-0.001", status,
         bpb, "", "600", notes]
    )


def test_damaged_rows_are_salvaged_or_quarantined_never_dropped(tmp_path, sqlite_url):
    lines = [
        "\t".join(HEADER),
        # not a row at all (a line that does not start a row later on continues the one before)
        "@@@ garbage line that is not a row",
        _row("000", "baseline", "1.10", "seed"),
        # quoted fields holding a tab, a newline and a doubled quote: ordinary, not damage
        _row("001", "keep", "1.09", '"raise lr\tto 0.04\nand ""warm"" up"', '"multi\nline notes"'),
        # an unquoted tab inside the hypothesis: re-joined
        _row("002", "discard", "1.095", "try a\tb split"),
        # an unquoted line break inside the notes: re-joined
        _row("003", "discard", "1.097", "linebreak", "first half") + "\nsecond half",
        # a field that is not a number: imported with that field empty
        _row("004", "discard", "not-a-number", "bad score"),
        # a status nobody knows: cannot be mapped, quarantined
        _row("005", "exploded", "1.2", "mystery"),
        # an id and nothing else
        "777\tgarbage",
        # an unterminated quote: closed at the end of its line, the next rows survive
        _row("006", "discard", "1.096", '"unterminated hypothesis'),
        _row("007", "keep", "1.085", "after the broken quote", parent="001"),
        # a truncated tail (the writer died mid-row)
        "008\t2026-05-01T04:08:00Z\topt\t007\t000\topt\tcut short\t-0.001\tdiscard",
        # a time that is not a time
        _row("009", "discard", "1.099", "late", parent="007").replace("2026-05-01T04:09:00Z", "yesterday"),
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with Ledger.open(sqlite_url) as ledger:
        result = import_recipes(ledger, run, name="damaged", direction="min")
        salvaged = {f.id: f.reason for f in result.salvaged}
        quarantined = {f.line: f for f in result.quarantined}
        assert result.trials == 9 and result.rows == 12
        assert set(salvaged) == {"002", "003", "004", "006", "008", "009"}
        assert "unquoted tab" in salvaged["002"]
        assert "line break" in salvaged["003"]
        assert "val_bpb='not-a-number' is not a number" in salvaged["004"]
        assert "unterminated quote" in salvaged["006"]
        assert "truncated" in salvaged["008"]
        assert "timestamp 'yesterday' is not ISO 8601; import time used" in salvaged["009"]
        assert sorted(quarantined) == [2, 11, 12]  # file lines (quoted newlines count)
        assert "exp_id '@@@ garbage line tha' is not a number" in quarantined[2].reason
        assert "status 'exploded' of exp 005 is unknown" in quarantined[11].reason
        assert "status '' of exp 777 is unknown" in quarantined[12].reason
        assert "row has 2 fields, header 13" in quarantined[12].reason
        summary = result.summary()
        assert "12 rows → 9 trials; 6 salvaged, 3 quarantined" in summary

        con = connect(ledger)
        t = {r["source_id"]: r for r in run_sql(con, "SELECT * FROM trials ORDER BY seq").records()}
        assert t["001"]["hypothesis"] == 'raise lr\tto 0.04\nand "warm" up'
        assert t["001"]["salvaged"] is None
        assert t["002"]["hypothesis"] == "try a\tb split" and t["002"]["label"] == "discard"
        assert json.loads(t["003"]["source"])["notes"] == "first half\nsecond half"
        assert t["004"]["score"] is None and t["004"]["salvaged"]
        assert t["006"]["hypothesis"] == "unterminated hypothesis"
        assert t["007"]["label"] == "keep" and t["007"]["score"] == 1.085
        assert t["008"]["label"] == "discard"
        assert json.loads(t["008"]["source"])["raw"].startswith("008\t")
        # quarantined rows are kept, raw text and reason, in the search's record
        stopped = con.execute("SELECT summary FROM searches").fetchall()[0][0]
        summary = json.loads(stopped)
        assert [q["raw"] for q in summary["quarantined"]] == [
            "@@@ garbage line that is not a row",
            _row("005", "exploded", "1.2", "mystery"),
            "777\tgarbage",
        ]
        assert summary["salvaged"] == 6 and summary["trials"] == 9
        view = run_sql(con, "SELECT line, source_id, reason, raw FROM quarantined ORDER BY line").rows
        assert [(r[0], r[1], r[3]) for r in view] == [
            (q["line"], q["id"], q["raw"]) for q in summary["quarantined"]
        ]
        assert view[1][2] == quarantined[11].reason


def test_autoresearch_results_become_a_search(tmp_path, sqlite_url):
    text = (
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
        "b2c3d4e\t0.993200\t44.2\tkeep\tincrease LR to 0.04\n"
        "c3d4e5f\t1.005000\t44.0\tdiscard\tswitch to GeLU activation\n"
        "d4e5f6a\t0.000000\t0.0\tcrash\tdouble model width (OOM)\n"
        "e5f6a7b\t0.990100\t44.3\tkeep\t\"warmup 5%, then cosine\"\n"
        "f6a7b8c\t0.991000\t44.1\tdiscard\tlonger warmdown\n"
    )
    path = tmp_path / "results.tsv"
    path.write_text(text)
    with Ledger.open(sqlite_url) as ledger:
        result = import_autoresearch(ledger, path, name="ar")
        assert result.trials == 6 and not result.salvaged and not result.quarantined
        head = ledger.head()
        assert import_autoresearch(ledger, tmp_path).already
        assert ledger.head() == head
        con = connect(ledger)
        rows = run_sql(
            con,
            "SELECT t.seq, t.source_id, t.label, t.score, t.source_status, p.source_id AS parent, "
            "t.delta_vs_best FROM trials t LEFT JOIN trials p ON p.trial_id = t.parents[1] ORDER BY t.seq",
        ).rows
        assert [r[1:6] for r in rows] == [
            ("a1b2c3d", "baseline", 0.9979, "keep", None),
            ("b2c3d4e", "keep", 0.9932, "keep", "a1b2c3d"),
            ("c3d4e5f", "discard", 1.005, "discard", "b2c3d4e"),
            ("d4e5f6a", "crash", None, "crash", "b2c3d4e"),
            ("e5f6a7b", "keep", 0.9901, "keep", "b2c3d4e"),
            ("f6a7b8c", "discard", 0.991, "discard", "e5f6a7b"),
        ]
        assert rows[2][6] == pytest.approx(1.005 - 0.9932)
        path_rows = run_named(con, "best_path").records()
        assert [r["source_id"] for r in path_rows] == ["a1b2c3d", "b2c3d4e", "e5f6a7b"]
        kinds = con.execute("SELECT kind, direction, name FROM searches").fetchall()
        assert kinds == [("import", "min", "ar")]
        assert ledger.stream(result.search_id)[0].kind == "import"
        assert isinstance(ledger.stream(result.search_id)[-1], ev.SearchStopped)


# --- swallowed columns, lineage and numeric edges (issue 20) -------------------------------

FRAGMENT = '</hypothesis> <parameter name="notes">'


def _swallow(src: Path, out: Path, every: int, *, style: str) -> dict[str, dict[str, str]]:
    """Copy a fixture run with every ``every``-th row damaged the way a leaked tool call damages it:
    the hypothesis field holds the fragment, the notes and then, joined, every column after the
    hypothesis; the row ends there. ``style``: ``collapsed`` (empty columns leave no trace),
    ``kept`` (one space per column, empty or not), ``lines`` (a line break before the tail, tabs in
    it). Returns the damaged rows as they were."""
    import csv
    import io

    rows = list(csv.reader(io.StringIO(src.read_text(encoding="utf-8")), delimiter="\t"))
    header, body = rows[0], rows[1:]
    h, n = header.index("hypothesis"), header.index("notes")
    damaged = {}
    for i in range(1, len(body), every):
        row = body[i]
        damaged[row[0]] = dict(zip(header, row, strict=True))
        tail = [x for x in row[h + 1 : n] if x or style == "kept"]
        joint, before = ("\t", "\n") if style == "lines" else (" ", " ")
        row[h] = row[h] + FRAGMENT.replace("> <", ">\n<" if style == "lines" else "> <") + row[n] + before \
            + joint.join(tail)
        body[i] = row[: h + 1]
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerows([header, *body])
    out.mkdir(parents=True)
    (out / "results.tsv").write_text(buf.getvalue(), encoding="utf-8")
    for extra in ("best.json", "tree.tsv"):
        (out / extra).write_bytes((src.parent / extra).read_bytes())
    return damaged


@needs_fixtures
@pytest.mark.parametrize("run", sorted(PUBLISHED))
@pytest.mark.parametrize("style", ["collapsed", "kept", "lines"])
def test_columns_swallowed_by_a_tool_call_fragment_are_recovered_exactly(run, style, tmp_path, sqlite_url):
    damaged = _swallow(FIXTURES / run / "results.tsv", tmp_path / run, 3, style=style)
    with Ledger.open(sqlite_url) as ledger:
        result = import_recipes(ledger, tmp_path / run)
        assert result.quarantined == [] and result.trials == sum(PUBLISHED[run].values()) + 1
        assert {f.id for f in result.salvaged} == set(damaged)
        con = connect(ledger)
        got = {r["source_id"]: r for r in run_sql(con, "SELECT * FROM trials").records()}
        counts = dict(_rows(con, "SELECT source_status, count(*) FROM trials WHERE source_status <> 'baseline' "
                                 "GROUP BY 1"))
    assert counts == PUBLISHED[run]  # every row a trial, every status where it was
    wrong = []
    for exp, original in damaged.items():
        t = got[exp]
        source = json.loads(t["source"])
        metrics = json.loads(t["metrics"] or "{}")
        assert "swallowed columns recovered from the tail of hypothesis" in t["salvaged"]
        assert source["raw"].startswith(exp + "\t")  # the damaged text is kept
        if t["hypothesis"] != original["hypothesis"] or source.get("notes", "").strip() != original["notes"].strip():
            wrong.append((exp, "text"))
        for col in ("status", "job_name", "snapshot_path"):
            have = t["source_status"] if col == "status" else source.get(col)
            if (have or "") != original[col]:
                wrong.append((exp, col))
        for col, value in original.items():
            if col in metrics or (value and col in ("val_bpb", "core_metric", "accuracy", "train_s", "total_s")):
                if metrics.get(col) != (float(value) if value else None):
                    wrong.append((exp, col))
    # One row of nanochat is ambiguous once its empty columns are collapsed: a preflight crash
    # whose train_s equals its total_s, with four numeric columns it could be read as.
    assert len(wrong) <= (2 if run == "nanochat_d12" and style != "kept" else 0), wrong


def _tsv(tmp_path, rows, header=HEADER, name="run"):
    run = tmp_path / name
    run.mkdir()
    (run / "results.tsv").write_text("\n".join(["\t".join(header), *rows]) + "\n", encoding="utf-8")
    return run


def test_parents_are_matched_however_they_are_spelled_and_wherever_they_are(tmp_path, sqlite_url):
    rows = [
        _row("000", "baseline", "1.10", "seed"),
        _row("001", "keep", "1.09", "first", parent="exp_000"),       # prefixed
        _row("002", "discard", "1.095", "second", parent="1"),         # zero padding dropped
        _row("003", "discard", "1.095", "written before its parent", parent="004"),
        _row("004", "keep", "1.08", "the later parent", parent="exp_001"),
        _row("005", "discard", "1.2", "child of a quarantined row", parent="006"),
        _row("006", "exploded", "1.2", "unknown status: quarantined"),
        _row("007", "discard", "1.2", "child of nobody", parent="999"),
        _row("008", "discard", "1.2", "its own parent", parent="008"),
        _row("009", "discard", "1.2", "a loop", parent="010"),
        _row("010", "discard", "1.2", "the loop back", parent="009"),
    ]
    with Ledger.open(sqlite_url) as ledger:
        result = import_recipes(ledger, _tsv(tmp_path, rows), direction="min")
        lineage = result.lineage
        assert (lineage.named, lineage.resolved, lineage.later) == (9, 5, 2)
        assert lineage.breaks == {"names its own row": 1, "parent not in the source": 1,
                                  "parent quarantined": 1, "would close a cycle": 1}
        assert "lineage: 5/9 named parents resolved (55.6 %)" in result.summary()
        con = connect(ledger)
        edges = dict(_rows(con, "SELECT t.source_id, p.source_id FROM trials t "
                                "LEFT JOIN trials p ON p.trial_id = t.parents[1]"))
        sources = {r[0]: json.loads(r[1]) for r in _rows(con, "SELECT source_id, source FROM trials")}
        stopped = json.loads(con.execute("SELECT summary FROM searches").fetchall()[0][0])
    assert edges["001"] == "000" and edges["002"] == "001" and edges["004"] == "001"
    assert edges["003"] == "004" and "written after this row" in sources["003"]["lineage"]
    assert edges["005"] is None and "was quarantined (line" in sources["005"]["lineage"]
    assert sources["005"]["parent"] == "006"  # the reference itself is never lost
    assert edges["007"] is None and edges["008"] is None
    assert [edges["009"], edges["010"]].count(None) == 1  # one edge of the loop is cut
    assert stopped["lineage"]["breaks"]["parent quarantined"] == 1


def test_non_finite_numbers_and_huge_text_never_reach_the_events_raw(tmp_path, sqlite_url):
    from arl.ledger.verify import verify
    from arl.queries.importers.core import TEXT_CHARS

    huge = "x" * (3 * 1024 * 1024) + " tail"
    rows = [
        _row("000", "baseline", "1.10", "seed"),
        _row("001", "keep", "nan", "a keep whose score is nan"),
        _row("002", "discard", "1.09", "a time that is not finite").replace("\t600\t", "\tinf\t"),
        _row("003", "discard", "1.09", "a negative time").replace("\t600\t", "\t-5\t"),
        _row("004", "discard", "1.09", huge, notes="=HYPERLINK(\"http://evil\")"),
        _row("005", "keep", "-inf", "minus infinity"),
        _row("006", "discard", "1.2", "=HYPERLINK(\"http://evil\",\"x\")"),
        _row("007", "discard", "1.2", "@SUM(A1:A9)"),
    ]
    with Ledger.open(sqlite_url) as ledger:
        result = import_recipes(ledger, _tsv(tmp_path, rows), direction="min")
        assert result.trials == 8 and not result.quarantined
        con = connect(ledger)
        t = {r["source_id"]: r for r in run_sql(con, "SELECT * FROM trials").records()}
        assert t["001"]["label"] == "diverged" and t["001"]["score"] is None
        assert "val_bpb=nan is not finite; left empty" in t["001"]["salvaged"]
        assert "score nan is not finite (the source says keep)" in t["001"]["reason"]
        assert t["005"]["label"] == "diverged"
        assert t["002"]["wall_s"] is None and "total_s=inf is not finite" in t["002"]["salvaged"]
        assert t["003"]["wall_s"] is None and "not a plausible duration" in t["003"]["salvaged"]
        assert len(t["004"]["hypothesis"]) < TEXT_CHARS + 100 and "clipped" in t["004"]["hypothesis"]
        proposed = ledger.stream(t["004"]["trial_id"])[0]
        whole = json.loads(ledger.get_blob(proposed.source_digest))
        assert whole["hypothesis"] == huge and whole["notes"].startswith("=HYPERLINK")
        assert result.clipped == 1 and "clipped: 1 trials" in result.summary()
        assert verify(ledger).ok  # the blob is referenced like every other
        out = tmp_path / "csv"
        from arl.queries.export import export

        written = dict(export(con, "csv", out))
        text = (out / "trials.csv").read_text(encoding="utf-8")
        assert written[out / "trials.csv"] == 8
        import csv

        cells = [c for row in csv.reader(text.splitlines()) for c in row]
        assert "'=HYPERLINK(\"http://evil\",\"x\")" in cells and "'@SUM(A1:A9)" in cells
        assert not [c for c in cells if c[:1] in ("=", "+", "@")]
        assert "-0.001" in cells  # numbers stay numbers
        from arl.queries.table import render

        table = run_sql(con, "SELECT source_id, source->>'notes' AS notes, expected_delta FROM trials "
                             "WHERE source_id = '004'")
        assert render(table, "csv").splitlines()[1] == "004,\"'=HYPERLINK(\"\"http://evil\"\")\",-0.001"
        assert render(table, "json").count("=HYPERLINK") == 1  # JSON is data, not a spreadsheet: as it is


def test_snapshot_folders_become_programs_and_links_are_not_followed(tmp_path, sqlite_url):
    rows = [
        _row("000", "baseline", "1.10", "seed"),
        _row("001", "keep", "1.09", "kept, with its snapshot"),
        _row("002", "keep", "1.08", "a snapshot that is a link", parent="001"),
    ]
    header = [*HEADER[:-1], "snapshot_path", "notes"]
    rows = [r.rsplit("\t", 1)[0] + f"\tsnapshots/{r[:3]}_opt\t" + r.rsplit("\t", 1)[1] for r in rows]
    run = _tsv(tmp_path, rows, header)
    (run / "snapshots" / "000_opt").mkdir(parents=True)
    (run / "snapshots" / "000_opt" / "train.py").write_text("lr = 0.1\n")
    (run / "snapshots" / "001_opt").mkdir()
    (run / "snapshots" / "001_opt" / "train.py").write_text("lr = 0.2\n")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("do not read")
    (run / "snapshots" / "002_opt").symlink_to(tmp_path / "secret")
    with Ledger.open(sqlite_url) as ledger:
        result = import_recipes(ledger, run, direction="min")
        assert result.programs == 2
        con = connect(ledger)
        t = {r["source_id"]: r for r in run_sql(con, "SELECT * FROM trials").records()}
        diff = ledger.get_blob(t["001"]["edit_digest"]).decode()
        assert "-lr = 0.1" in diff and "+lr = 0.2" in diff
        assert "is a link or leaves the run folder; not read" in t["002"]["salvaged"]
        assert t["002"]["edit_digest"] is None


def test_detect_names_the_format_or_lists_the_formats_it_knows(tmp_path):
    from arl.queries.importers import FORMATS, SourceError, detect

    if FIXTURES.is_dir():
        assert detect(FIXTURES / "cifar") == "recipes" and detect(FIXTURES / "cifar" / "results.tsv") == "recipes"
    ar = tmp_path / "ar.tsv"
    ar.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n")
    assert detect(ar) == "autoresearch"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError) as e:
        detect(tmp_path / "notes.txt")
    assert all(name in str(e.value) for name in FORMATS) and "arl import FORMAT PATH" in str(e.value)
    with pytest.raises(SourceError, match="no folder or file at"):
        detect(tmp_path / "missing")
