"""``arl report``: one self-contained HTML file per ledger (or per search).

The report is a snapshot of ``arl serve``'s search page (:mod:`queries.dashboard`
renders both): for each search, every trial against its index coloured by
label with the best-so-far line, the lineage tree of every trial, the label
mix per specialist and by quartile, throughput, tokens and cost, and a table
of keeps with hypothesis, delta and diff. No network: the data is embedded as
JSON and drawn by the inlined script. Each plot sets ``data-drawn`` to the
number of trials or bars it drew, so a headless browser can prove that the
page rendered.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from arl.ledger import Ledger
from arl.queries.dashboard import page, search_view
from arl.queries.errors import QueryError
from arl.queries.named import resolve_search



def write_report(
    con: duckdb.DuckDBPyConnection,
    output: str | Path,
    *,
    search: str | None = None,
    ledger: Ledger | None = None,
) -> str:
    """Write the report; returns a one-line summary. ``ledger`` supplies diffs of keeps."""
    sid = resolve_search(con, search) if search else None
    ids = [r[0] for r in con.execute(
        "SELECT search FROM searches WHERE $s IS NULL OR search = $s ORDER BY started_at, search",
        {"s": sid}).fetchall()]
    if not ids:
        raise QueryError("the ledger holds no search to report on; run or import one first")
    sections = [search_view(con, s, keeps=None, ledger=ledger) for s in ids]
    names = [s["name"] for s in sections]
    title = "arl report — " + ", ".join(names[:3]) + (" …" if len(names) > 3 else "")
    text = page("report", {"sections": sections}, title=title, live=False)
    path = Path(output).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise QueryError(f"cannot write {path}: {e.strerror}; choose a writable -o path") from e
    trials = sum(s["trials"] for s in sections)
    return f"wrote {path} ({len(sections)} search(es), {trials:,} trials, {len(text) / 1e6:.1f} MB)"
