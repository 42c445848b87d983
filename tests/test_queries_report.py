"""The HTML report: self-contained, and drawn by a real (headless) browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.queries.errors import QueryError
from arl.queries.load import connect
from arl.queries.report import write_report
from tests.test_queries_named import PLAN, build
from tests.conftest import shared_fixtures
from tests.needs import require

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _browser_dom(page: Path, profile: Path) -> str:
    require("browser", "chromium is not installed (apt-get install chromium); the report is not rendered"
            if CHROMIUM is None else None)
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _quartiles(rows: list) -> list:
    """(quartile, row) as DuckDB's ntile(4) splits rows in order: the first quartiles take the remainder."""
    n, out, start = len(rows), [], 0
    for q in range(4):
        size = n // 4 + (1 if q < n % 4 else 0)
        out += [(q + 1, r) for r in rows[start:start + size]]
        start += size
    return out


def _drawn(dom: str) -> dict[str, int]:
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r'<svg[^>]*\bid="([a-z]+-\d+)"[^>]*\bdata-drawn="(\d+)"', dom)
    }


@pytest.fixture
def ledger_with_search(sqlite_url):
    search = "bbbb0000-0000-4000-8000-000000000001"
    with Ledger.open(sqlite_url) as ledger:
        events = build(search, "plan")
        # the keep at seq 4 carries a diff in the blob store
        diff = "--- a/train.py\n+++ b/train.py\n-LR = 0.02\n+LR = 0.04 # <script>alert(1)</script>\n"
        digest = ledger.put_blob(diff.encode())
        events = [
            ev.TrialProposed(**{**{f: getattr(e, f) for f in e.__struct_fields__}, "edit_digest": digest})
            if isinstance(e, ev.TrialProposed) and e.seq == 4 else e
            for e in events
        ]
        ledger.append(*events)
        yield ledger, search, diff


def test_report_is_self_contained_and_drawn_in_a_browser(ledger_with_search, tmp_path):
    ledger, search, diff = ledger_with_search
    con = connect(ledger)
    page = tmp_path / "report.html"
    summary = write_report(con, page, search="plan", ledger=ledger)
    assert "1 search(es), 10 trials" in summary
    text = page.read_text()
    # nothing is fetched: no external scripts, styles, images or fonts
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', text)
    assert "@import" not in text and "url(" not in text
    # user text reaches the page as JSON that cannot close its element, and is drawn as text
    assert "<script>alert(1)</script>" not in text and "\\u003cscript\\u003ealert(1)" in text

    dom = _browser_dom(page, tmp_path / "profile")
    assert 'data-ready="1"' in dom, "the page's script did not finish"
    assert "<script>alert(1)" not in dom and "&lt;script&gt;alert(1)" in dom
    drawn = _drawn(dom)
    keeps = sum(1 for p in PLAN if p[3].value in ("keep", "baseline"))
    labels = {(p[1], p[3]) for p in PLAN if p[3].value != "baseline"}
    # the lineage tree holds every trial, failures too
    assert {k: drawn[k] for k in ("progress-0", "tree-0", "mix-0")} == {
        "progress-0": len(PLAN), "tree-0": len(PLAN), "mix-0": len(labels)}
    quartile_labels = {(q, p[3]) for q, p in _quartiles([p for p in PLAN if p[3].value != "baseline"])}
    assert drawn["quartiles-0"] == len(quartile_labels)
    # every trial is a mark: a circle if it has a score, a tick on the strip if not
    scored = sum(1 for p in PLAN if p[4] is not None)
    progress = dom[dom.index('id="progress-0"'): dom.index('id="tree-0"')]
    assert progress.count('class="mark"') == scored
    assert progress.count('class="mark unscored"') == len(PLAN) - scored
    assert 'class="best-line"' in progress
    # the keeps table shows hypothesis, delta and the diff of the keep that has one
    table = dom[dom.index('id="keeps-0"'):]
    assert table.count("<tr>") == keeps + 1
    assert "+LR = 0.04" in table and "no diff recorded" in table


def test_report_of_every_search_and_bad_requests(sqlite_url, tmp_path):
    with Ledger.open(sqlite_url) as ledger:
        con = connect(ledger)
        with pytest.raises(QueryError, match="holds no search to report on"):
            write_report(con, tmp_path / "r.html")
        ledger.append(*build(str(uuid.UUID(int=7)), "one"))
        ledger.append(*build(str(uuid.UUID(int=8)), "two"))
        con = connect(ledger)
        summary = write_report(con, tmp_path / "all.html")
        assert "2 search(es), 20 trials" in summary
        with pytest.raises(QueryError, match="no search matches 'three'"):
            write_report(con, tmp_path / "x.html", search="three")
    dom = _browser_dom(tmp_path / "all.html", tmp_path / "profile")
    drawn = _drawn(dom)
    assert set(drawn) == {f"{k}-{n}" for k in ("progress", "tree", "mix", "quartiles", "throughput")
                          for n in (0, 1)}
    assert all(v > 0 for v in drawn.values())


def test_report_of_the_papers_run_draws_every_trial(tmp_path, sqlite_url):
    from tests.test_queries_import import FIXTURES

    shared_fixtures("auto-research-recipes")
    from arl.queries.importers import import_recipes

    with Ledger.open(sqlite_url) as ledger:
        import_recipes(ledger, FIXTURES / "pg_ablation_lineage_on")
        con = connect(ledger)
        write_report(con, tmp_path / "pg.html")
    dom = _browser_dom(tmp_path / "pg.html", tmp_path / "profile")
    # 201 rows: 190 with a score as circles, the 11 crashes as ticks; every one in the tree
    drawn = _drawn(dom)
    assert drawn["progress-0"] == 201 and drawn["tree-0"] == 201
    progress = dom[dom.index('id="progress-0"'): dom.index('id="tree-0"')]
    assert progress.count('class="mark"') == 190
    assert progress.count('class="mark unscored"') == 11
