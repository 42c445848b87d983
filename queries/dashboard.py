"""The dashboard's pages: what each shows, aggregated in DuckDB, and their HTML.

One rendering code for ``arl serve`` (live pages) and ``arl report`` (a
snapshot: the same search page, its data embedded, nothing fetched). Each
view is a plain dict of JSON-ready values, computed by SQL over the loaded
ledger, so the browser gets a bounded payload whatever the search's size:
up to :data:`MAX_MARKS` trials are sent one by one; beyond that, the score
plot and the lineage tree are sent as bins (counts, score range, commonest
label) plus the trials that set a new best, and drawn on a canvas.

Every value a person or model wrote (hypotheses, logs, names) reaches the
page as JSON read by ``textContent`` or as ``html.escape``d text: never as
markup.
"""

from __future__ import annotations

import html
import json
import re
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from arl.ledger import ArlError, Ledger
from arl.ledger.programs import get_program, unified_diff
from arl.queries.decisions import evidence_lines, evidence_of
from arl.queries.errors import QueryError
from arl.queries.named import run_named

#: Trials drawn one mark each; a larger search is drawn as bins.
MAX_MARKS = 4000
#: Bins along the trial index when a search is drawn binned.
BINS = 600
#: Depth rows of the binned lineage tree.
DEPTH_BINS = 80
#: Time buckets of the throughput plot.
TIME_BUCKETS = 48
#: The newest keeps listed under the plots of a live page (the report lists every one).
LIVE_KEEPS = 50
#: Longest log tail or transcript a trial page shows, characters.
TEXT_CAP = 200_000

#: One colour per label; failures in warm colours, the ones not charged in greys.
LABEL_COLOURS = {
    "baseline": "#1f77b4",
    "keep": "#2ca02c",
    "discard": "#9aa0a6",
    "crash": "#d62728",
    "oom": "#8c2d04",
    "diverged": "#e377c2",
    "train_budget_overrun": "#ff7f0e",
    "eval_budget_overrun": "#fdae6b",
    "size_violation": "#9467bd",
    "gate_miss": "#bcbd22",
    "invalid_edit": "#8c564b",
    "out_of_surface": "#17becf",
    "illegal_edit": "#000000",
    "duplicate": "#c7c7c7",
    "infra_error": "#636363",
    "pending": "#dadce0",
}
_BEST_ORDER = "CASE WHEN $dir = 'max' THEN -score ELSE score END"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _iso(v: Any) -> str | None:
    return v.isoformat() if isinstance(v, datetime) else (None if v is None else str(v))


# --- /: every search ------------------------------------------------------------------


def overview(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """One row per search: name, task, kind, state, trials done / budget, best vs baseline, workers busy."""
    rows = con.execute("""
        WITH t AS (
            SELECT search,
                   count(*) FILTER (WHERE label IS NOT NULL AND label <> 'baseline') AS done,
                   count(*) FILTER (WHERE label IS NULL) AS open,
                   count(*) FILTER (WHERE state = 'claimed') AS busy,
                   min(score) FILTER (WHERE label IN ('baseline', 'keep')) AS lo,
                   max(score) FILTER (WHERE label IN ('baseline', 'keep')) AS hi,
                   min(score) FILTER (WHERE label = 'baseline') AS baseline,
                   max(coalesce(labeled_at, proposed_at)) AS last_at
            FROM log.trials GROUP BY search
        )
        SELECT s.search, s.name, s.task, s.kind, s.direction, s.started_at, s.stopped_at, s.stop_reason,
               TRY_CAST(s.config->>'trials' AS BIGINT) AS budget, TRY_CAST(s.config->>'workers' AS BIGINT),
               coalesce(t.done, 0), coalesce(t.open, 0), coalesce(t.busy, 0),
               CASE WHEN s.direction = 'max' THEN t.hi ELSE t.lo END AS best, t.baseline, t.last_at,
               coalesce(s.config->>'score', 'score')
        FROM searches s LEFT JOIN t USING (search)
        ORDER BY s.started_at, s.search
    """).fetchall()
    out = []
    for r in rows:
        stopped = r[6] is not None
        out.append({
            "search": r[0], "name": r[1], "task": r[2], "kind": r[3], "direction": r[4],
            "started": _iso(r[5]), "state": f"stopped: {r[7]}" if stopped else "running",
            "budget": r[8], "workers": r[9], "done": r[10], "open": r[11], "busy": r[12],
            "best": r[13], "baseline": r[14], "last": _iso(r[15]), "score_name": r[16],
        })
    return out


# --- /search/<id> ---------------------------------------------------------------------


def search_view(con: duckdb.DuckDBPyConnection, search: str, *, keeps: int | None = LIVE_KEEPS,
                ledger: Ledger | None = None) -> dict[str, Any]:
    """Everything the search page draws, aggregated in DuckDB. ``keeps``: newest keeps listed
    (None: all, as the report lists them); ``ledger`` adds each listed keep's diff."""
    head = [r for r in overview(con) if r["search"] == search]
    if not head:
        raise QueryError(f"no search {search!r} in the ledger; `/` lists them")
    s = head[0]
    p = {"s": search, "dir": s["direction"]}
    n = con.execute("SELECT count(*) FROM log.trials WHERE search = $s", {"s": search}).fetchall()[0][0]
    view: dict[str, Any] = {**s, "trials": n, "binned": n > MAX_MARKS}
    # the trial index is the rank by seq: imported runs may skip numbers
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _view AS
        SELECT (row_number() OVER (ORDER BY seq) - 1)::INTEGER AS i, seq, trial_id,
               coalesce(source_id, seq::VARCHAR) AS id, agent, coalesce(label, 'pending') AS label,
               score, delta_vs_best, parents, pid, parent_pid, claimed_at, finished_at, labeled_at, wall_s
        FROM log.trials WHERE search = $s
    """, {"s": search})
    try:
        view["best_line"] = _best_line(con, p)
        view["labels"] = dict(con.execute(
            "SELECT label, count(*) FROM _view GROUP BY label ORDER BY count(*) DESC").fetchall())
        if view["binned"]:
            # the best line at the bins' resolution: each bin's last new best (what a pixel can show)
            width = max(1, -(-n // BINS))
            last: dict[int, list[Any]] = {}
            for step in view["best_line"]:
                last[step[0] // width] = step
            view["best_line"] = list(last.values())
            view["bins"] = _score_bins(con, n)
            view["tree_bins"] = _tree(con, binned=True, n=n)
        else:
            view["marks"] = [list(r) for r in con.execute(
                "SELECT i, seq, trial_id, id, agent, label, score FROM _view ORDER BY i").fetchall()]
            view["tree"] = _tree(con, binned=False, n=n)
        view["mix"] = [list(r) for r in con.execute(
            "SELECT agent, label, count(*) FROM _view WHERE label <> 'baseline' GROUP BY ALL ORDER BY ALL"
        ).fetchall()]
        view["quartiles"] = [list(r) for r in con.execute("""
            SELECT q, label, count(*) FROM (
                SELECT ntile(4) OVER (ORDER BY i) AS q, label FROM _view WHERE label <> 'baseline')
            GROUP BY ALL ORDER BY ALL""").fetchall()]
        view["throughput"] = _throughput(con)
        view["keeps"] = _keeps(con, keeps, ledger)
    finally:
        con.execute("DROP TABLE IF EXISTS _view")
    view["cost"] = _cost(con, search)
    return view


def _best_line(con: duckdb.DuckDBPyConnection, p: dict[str, Any]) -> list[list[Any]]:
    """The trials (index, score, trial id) that set a new best: baseline and keeps only."""
    rows = con.execute(f"""
        SELECT i, score, trial_id FROM (
            SELECT i, score, trial_id, {_BEST_ORDER} AS o,
                   min({_BEST_ORDER}) OVER (ORDER BY i ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev
            FROM _view WHERE label IN ('baseline', 'keep') AND score IS NOT NULL)
        WHERE prev IS NULL OR o < prev ORDER BY i""", {"dir": p["dir"]}).fetchall()
    return [list(r) for r in rows]


def _score_bins(con: duckdb.DuckDBPyConnection, n: int) -> list[list[Any]]:
    """Per bin of trial index and label: count, lowest and highest score (None: unscored)."""
    width = max(1, -(-n // BINS))
    rows = con.execute("""
        SELECT i // $w AS b, label, count(*), min(score), max(score), count(score)
        FROM _view GROUP BY ALL ORDER BY ALL""", {"w": width}).fetchall()
    return [[r[0] * width, min(width, n - r[0] * width), r[1], r[2], r[3], r[4], r[5]] for r in rows]


def _tree(con: duckdb.DuckDBPyConnection, *, binned: bool, n: int) -> Any:
    """The lineage of every trial: depth along first parents, by trial index.

    One mark per trial (index, parent index, depth) when small; else bins of
    (index bin, depth bin) with their count and commonest label, plus the keeps' chain.
    """
    rows = con.execute("""
        SELECT v.i, p.i, v.label FROM _view v LEFT JOIN _view p ON p.trial_id = v.parents[1] ORDER BY v.i
    """).fetchall()
    parent = [r[1] for r in rows]
    depth = [0] * len(rows)
    done = [False] * len(rows)
    for i in range(len(rows)):  # iterative, and a parent may come later (imports) or loop
        chain, seen, j = [], set(), i
        while j is not None and not done[j] and j not in seen:
            seen.add(j)
            chain.append(j)
            j = parent[j]
        d = depth[j] if j is not None and done[j] else -1
        for k in reversed(chain):
            d += 1
            depth[k] = d
            done[k] = True
    if not binned:
        return [[i, parent[i], depth[i]] for i in range(len(rows))]
    max_depth = max(depth, default=0)
    width = max(1, -(-n // BINS))
    dwidth = max(1, -(-(max_depth + 1) // DEPTH_BINS))
    con.register("_d", pa.table({"i": pa.array(range(len(rows)), pa.int32()), "d": pa.array(depth, pa.int32())}))
    try:
        cells = con.execute("""
            SELECT d.i // $w, d.d // $dw, count(*), mode(v.label)
            FROM _d d JOIN _view v USING (i) GROUP BY ALL ORDER BY ALL""",
                            {"w": width, "dw": dwidth}).fetchall()
    finally:
        con.unregister("_d")
    return {"width": width, "dwidth": dwidth, "max_depth": max_depth,
            "cells": [list(c) for c in cells]}


def _throughput(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Trials labelled and busy workers (mean runs in flight) per time bucket."""
    span = con.execute("""
        SELECT min(coalesce(claimed_at, labeled_at)), max(coalesce(labeled_at, finished_at))
        FROM _view WHERE labeled_at IS NOT NULL OR claimed_at IS NOT NULL""").fetchall()[0]
    if span[0] is None or span[1] is None or span[1] <= span[0]:
        return {"start": _iso(span[0]), "bucket_s": 0, "done": [], "busy": []}
    t0, t1 = span
    bucket = max(1.0, (t1 - t0).total_seconds() / TIME_BUCKETS)
    p = {"t0": t0, "w": bucket, "k": TIME_BUCKETS}
    done = dict(con.execute("""
        SELECT least($k - 1, (epoch(labeled_at - $t0::TIMESTAMPTZ) // $w)::INTEGER) AS b, count(*)
        FROM _view WHERE labeled_at IS NOT NULL GROUP BY b""", p).fetchall())
    busy = dict(con.execute("""
        WITH runs AS (
            SELECT epoch(claimed_at - $t0::TIMESTAMPTZ) AS a,
                   epoch(coalesce(finished_at, labeled_at) - $t0::TIMESTAMPTZ) AS z
            FROM _view WHERE claimed_at IS NOT NULL AND coalesce(finished_at, labeled_at) IS NOT NULL),
        b AS (SELECT unnest(range($k)) AS b)
        SELECT b.b, sum(least(z, (b.b + 1) * $w) - greatest(a, b.b * $w)) / $w
        FROM b JOIN runs ON runs.a < (b.b + 1) * $w AND runs.z > b.b * $w GROUP BY b.b""", p).fetchall())
    return {"start": _iso(t0), "bucket_s": bucket,
            "done": [done.get(k, 0) for k in range(TIME_BUCKETS)],
            "busy": [round(busy.get(k, 0.0), 3) for k in range(TIME_BUCKETS)]}


def _keeps(con: duckdb.DuckDBPyConnection, limit: int | None, ledger: Ledger | None) -> list[dict[str, Any]]:
    rows = con.execute("""
        SELECT v.i, v.seq, v.trial_id, v.id, v.agent, v.label, v.score, v.delta_vs_best, t.hypothesis,
               t.edit_digest, t.source->>'snapshot_path', t.evidence, t.verified
        FROM _view v JOIN log.trials t USING (trial_id)
        WHERE v.label IN ('keep', 'baseline') ORDER BY v.i DESC LIMIT $n""",
                       {"n": limit if limit is not None else 2**62}).fetchall()
    out = []
    for r in reversed(rows):
        out.append({"i": r[0], "seq": r[1], "trial": r[2], "id": r[3], "agent": r[4], "label": r[5],
                    "score": r[6], "delta": r[7], "hypothesis": r[8] or "",
                    "diff": _blob_text(ledger, r[9]) if ledger is not None else None, "snapshot": r[10],
                    "evidence": evidence_lines(e) if (e := evidence_of(r[11])) is not None else [],
                    "verified": r[12]})
    return out


def _cost(con: duckdb.DuckDBPyConnection, search: str) -> list[dict[str, Any]]:
    try:
        rows = run_named(con, "agent_cost", search=search).records()
    except (QueryError, duckdb.Error):
        return []
    return [{k: r.get(k) for k in ("agent", "calls", "prompt_tokens", "completion_tokens", "total_tokens",
                                   "cost", "keeps", "tokens_per_keep")} for r in rows]


def _blob_text(ledger: Ledger | None, digest: str | None, cap: int = TEXT_CAP) -> str | None:
    if ledger is None or not digest:
        return None
    try:
        text = ledger.get_blob(digest).decode("utf-8", errors="replace")
    except ArlError as e:
        return f"(unavailable: {e})"
    return text if len(text) <= cap else text[:cap] + f"\n… ({len(text) - cap:,} more characters)"


# --- /trial/<id> ----------------------------------------------------------------------


def trial_view(con: duckdb.DuckDBPyConnection, ledger: Ledger, trial: str) -> dict[str, Any]:
    """One trial as the trial page shows it."""
    rows = con.execute("""
        SELECT t.trial_id, t.search, s.name, t.seq, coalesce(t.source_id, t.seq::VARCHAR), t.agent, t.surface,
               t.backend, t.parents, t.hypothesis, t.expected_delta, t.label, t.score, t.delta_vs_parent,
               t.delta_vs_best, t.reason, t.metrics, t.wall_s, t.exit_code, t.runner, t.state,
               t.edit_digest, t.agent_call_digest, t.proposed_at, t.labeled_at, s.direction,
               t.source->>'snapshot_path', t.source->>'status', pt.score, t.verified
        FROM log.trials t JOIN searches s USING (search) LEFT JOIN log.trials pt ON pt.trial_id = t.parents[1]
        WHERE t.trial_id = $t""", {"t": trial}).fetchall()
    if not rows:
        raise QueryError(f"no trial {trial!r} in the ledger")
    r = rows[0]
    keys = ("trial", "search", "search_name", "seq", "id", "agent", "surface", "backend", "parents",
            "hypothesis", "expected_delta", "label", "score", "delta_vs_parent", "delta_vs_best", "reason",
            "metrics", "wall_s", "exit_code", "runner", "state", "edit_digest", "agent_call_digest",
            "proposed_at", "labeled_at", "direction", "snapshot", "source_status", "parent_score", "verified")
    t = {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in zip(keys, r)}
    t["metrics"] = json.loads(t["metrics"]) if isinstance(t["metrics"], str) else (t["metrics"] or {})
    t["parents"] = list(t["parents"] or [])
    t["checks"] = [dict(zip(("name", "value", "limit", "passed", "detail"), c)) for c in con.execute(
        'SELECT "check", value, "limit", passed, detail FROM checks WHERE trial = $t ORDER BY "check"',
        {"t": trial}).fetchall()]
    run = con.execute("""SELECT stdout_tail, stderr_tail, cpu_s, peak_rss_mb, timed_out, sandbox, signal
        FROM log.run_finished WHERE stream = $t ORDER BY id DESC LIMIT 1""", {"t": trial}).fetchall()
    t["run"] = dict(zip(("stdout", "stderr", "cpu_s", "peak_rss_mb", "timed_out", "sandbox", "signal"),
                        run[0])) if run else None
    programs = dict(con.execute("""SELECT stream, arg_max(program_digest, id) FROM log.trial_submitted
        WHERE stream IN (SELECT unnest($ids::VARCHAR[])) GROUP BY stream""",
                                {"ids": [trial, *t["parents"]]}).fetchall())
    t["program"] = programs.get(trial)
    names = dict(con.execute("SELECT trial_id, coalesce(source_id, seq::VARCHAR) FROM log.trials "
                             "WHERE trial_id IN (SELECT unnest($ids::VARCHAR[]))",
                             {"ids": t["parents"]}).fetchall())
    t["diffs"] = []
    for k, parent in enumerate(t["parents"]):
        diff = _program_diff(ledger, programs.get(parent), programs.get(trial))
        if diff is None and k == 0:  # no programs kept (an import): the recorded edit
            diff = _blob_text(ledger, t["edit_digest"])
        t["diffs"].append({"parent": parent, "parent_id": names.get(parent, parent[:8]), "diff": diff})
    if not t["parents"] and t["edit_digest"]:
        t["diffs"].append({"parent": None, "parent_id": None, "diff": _blob_text(ledger, t["edit_digest"])})
    t["transcript"] = _blob_text(ledger, t["agent_call_digest"])
    if t["transcript"]:
        try:
            t["transcript"] = json.dumps(json.loads(t["transcript"]), indent=1)[:TEXT_CAP]
        except ValueError:
            pass
    ref = f"{t['search'][:8]}#{t['seq']}"
    t["commands"] = [f"arl show {ref}", f"arl fork {ref} --trials 30",
                     f"arl replay {t['search'][:8]} --rerun --trials {t['seq']}..{t['seq']}"]
    observed = t["delta_vs_parent"]
    if observed is None and t["score"] is not None and t["parent_score"] is not None:
        observed = t["score"] - t["parent_score"]  # an import records no delta: the scores give it
    t["expected_vs_observed"] = {"expected": t["expected_delta"], "observed": observed}
    return t


def _program_diff(ledger: Ledger, parent: str | None, child: str | None) -> str | None:
    if not parent or not child:
        return None
    try:
        text = unified_diff(get_program(ledger, parent), get_program(ledger, child))
    except ArlError:
        return None
    return (text or "(no change)")[:TEXT_CAP]


def compare_view(con: duckdb.DuckDBPyConnection, ledger: Ledger, a: str, b: str) -> dict[str, Any]:
    """Two trials side by side: their metrics and checks, and the program diff from a to b."""
    left, right = trial_view(con, ledger, a), trial_view(con, ledger, b)
    diff = _program_diff(ledger, left["program"], right["program"])
    metrics = sorted(set(left["metrics"]) | set(right["metrics"]))
    return {"a": _brief(left), "b": _brief(right), "diff": diff,
            "metrics": [[m, left["metrics"].get(m), right["metrics"].get(m)] for m in metrics]}


def _brief(t: dict[str, Any]) -> dict[str, Any]:
    return {k: t[k] for k in ("trial", "search", "search_name", "seq", "id", "agent", "label", "score",
                              "delta_vs_parent", "hypothesis", "wall_s", "checks", "diffs")}


# --- HTML -----------------------------------------------------------------------------


def json_for_html(data: Any) -> str:
    """JSON that cannot end its <script> element or open a comment in it."""
    return json.dumps(data, separators=(",", ":"), default=str).replace("<", "\\u003c").replace(
        ">", "\\u003e").replace("&", "\\u0026")


def page(kind: str, data: dict[str, Any], *, title: str, live: bool, script: str | None = None) -> str:
    """A dashboard page: ``kind`` is index, search, trial, compare, sql or report.

    ``live``: the script comes from ``/static/dashboard.js`` and updates arrive by
    server-sent events; otherwise (the report) the script is inlined and the page
    is a snapshot that fetches nothing.
    """
    payload = json_for_html({"kind": kind, "live": live, "colours": LABEL_COLOURS, **data})
    if live:
        csp = ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
               "img-src 'self' data:; form-action 'self'; base-uri 'none'")
        tag = "<script src=/static/dashboard.js></script>"
        nav = ("<nav><a href=/>searches</a> · <a href=/sql>SQL console</a>"
               " <span id=live class=muted></span></nav>")
    else:
        csp = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
        tag = f"<script>{script or DASHBOARD_JS}</script>"
        nav = ""
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<link rel=icon href='data:,'><title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body data-ready=0 data-kind={kind}>{nav}<main id=main></main>"
        f"<script type=application/json id=arl-data>{payload}</script>{tag}</body></html>"
    )


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:20px;color:#202124}
nav{margin-bottom:12px}h1 small,h2 small{font-weight:normal;color:#5f6368;font-size:12px}
.muted{color:#5f6368}.plot{border:1px solid #dadce0;display:block;margin:6px 0 18px}
table{border-collapse:collapse;font-size:13px}td,th{border-top:1px solid #e0e0e0;padding:3px 6px;
vertical-align:top;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.chip{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
pre{white-space:pre-wrap;font-size:12px;background:#f8f9fa;padding:6px;max-height:480px;overflow:auto}
section{margin-bottom:32px}.cols{display:flex;gap:24px}.cols>div{flex:1;min-width:0}
.fail{color:#d62728}.pass{color:#188038}textarea{width:100%;font:13px monospace}
svg .mark,svg .node{cursor:pointer}.add{color:#188038}.del{color:#d62728}
"""

# The page's script: plain DOM and SVG (canvas for binned searches); no library, no build step.
DASHBOARD_JS = r"""
"use strict";
(function () {
const DATA = JSON.parse(document.getElementById("arl-data").textContent);
const NS = "http://www.w3.org/2000/svg";
const main = document.getElementById("main");
function el(parent, name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}
function h(parent, name, attrs, text) {
  const e = document.createElement(name);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (parent) parent.appendChild(e);
  return e;
}
function colour(label) { return DATA.colours[label] || "#999"; }
function fmt(v) { return v === null || v === undefined ? "–" : Number(v).toPrecision(6); }
function signed(v) { return v === null || v === undefined ? "–" : (v >= 0 ? "+" : "") + Number(v).toPrecision(4); }
function trialHref(id) { return "/trial/" + encodeURIComponent(id); }
function open(id) { if (DATA.live && id) window.location.href = trialHref(id); }
function chip(parent, label) {
  const s = h(parent, "span", {class: "chip"}); s.style.background = colour(label);
  parent.appendChild(document.createTextNode(label));
}
function link(parent, href, text) {
  const a = h(parent, DATA.live ? "a" : "span", DATA.live ? {href: href} : {}, text); return a;
}
function table(parent, heads, rows, attrs) {
  const t = h(parent, "table", attrs || {});
  const tr = h(h(t, "thead"), "tr");
  for (const x of heads) h(tr, "th", {}, x);
  const body = h(t, "tbody");
  for (const r of rows) {
    const row = h(body, "tr");
    for (const c of r) {
      const td = h(row, "td");
      if (typeof c === "function") c(td);
      else { td.textContent = c === null || c === undefined ? "" : String(c);
             if (typeof c === "number") td.className = "num"; }
    }
  }
  return t;
}
function diffPre(parent, text) {
  const pre = h(parent, "pre", {class: "diff"});
  for (const line of String(text).split("\n")) {
    const cls = line.startsWith("+") && !line.startsWith("+++") ? "add"
      : line.startsWith("-") && !line.startsWith("---") ? "del" : "";
    h(pre, "span", cls ? {class: cls} : {}, line + "\n");
  }
  return pre;
}

// --- plots -----------------------------------------------------------------------------
function axes(svg, W, H, m, lo, hi, n, y, x, yname, labelY) {
  el(svg, "line", {x1: m.l, y1: H - m.b, x2: W - m.r, y2: H - m.b, stroke: "#999"});
  el(svg, "line", {x1: m.l, y1: m.t, x2: m.l, y2: H - m.b, stroke: "#999"});
  for (let k = 0; k <= 4; k++) {
    const v = lo + (hi - lo) * k / 4;
    el(svg, "text", {x: m.l - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11}, v.toPrecision(5));
  }
  const nt = Math.min(8, Math.max(1, n));
  for (let k = 0; k <= nt; k++) {
    const i = n * k / nt;
    el(svg, "text", {x: x(i), y: labelY || H - m.b + 14, "text-anchor": "middle", "font-size": 11}, Math.round(i));
  }
  el(svg, "text", {x: 14, y: (m.t + H - m.b) / 2, "text-anchor": "middle", "font-size": 12,
      transform: `rotate(-90 14 ${(m.t + H - m.b) / 2})`}, yname);
}
function scoreRange(s, values) {
  let lo = Infinity, hi = -Infinity;   // a loop: Math.min(...xs) overflows the stack on 100,000
  for (const v of values) if (v !== null && v !== undefined) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (!isFinite(lo)) { lo = 0; hi = 1; }
  if (lo === hi) { lo -= 1e-9 + Math.abs(lo) * 0.01; hi += 1e-9 + Math.abs(hi) * 0.01; }
  const pad = (hi - lo) * 0.05; return [lo - pad, hi + pad];
}
const LEGAL = new Set(["baseline", "keep", "discard"]);

function drawProgress(box, s) {
  const W = 960, H = 360, m = {l: 70, r: 16, t: 12, b: 58}, strip = 14;
  const n = Math.max(s.trials - 1, 1);
  const x = i => m.l + (W - m.l - m.r) * i / n;
  const yBot = H - m.b - strip - 6;
  let values = [];
  if (s.binned) { for (const b of s.bins) if (LEGAL.has(b[2])) values.push(b[4], b[5]); }
  else { for (const t of s.marks) if (LEGAL.has(t[5])) values.push(t[6]); }
  if (!values.some(v => v !== null)) values = s.binned ? s.bins.flatMap(b => [b[4], b[5]]) : s.marks.map(t => t[6]);
  const [lo, hi] = scoreRange(s, values);
  // lower-is-better puts the best at the bottom, as the autoresearch plots do
  const y = v => s.direction === "min" ? m.t + (yBot - m.t) * (hi - v) / (hi - lo)
                                       : yBot - (yBot - m.t) * (v - lo) / (hi - lo);
  const clamp = v => y(Math.min(hi, Math.max(lo, v)));
  const svg = el(box, "svg", {class: "plot", id: "progress-0", width: W, height: H, "data-drawn": 0});
  axes(svg, W, H, {l: m.l, r: m.r, t: m.t, b: m.b + strip + 6}, lo, hi, n, y, x, s.score_name, H - m.b + 16);
  el(svg, "text", {x: (W + m.l) / 2, y: H - 6, "text-anchor": "middle", "font-size": 12},
     "trial index (unscored trials on the strip below the axis)");
  let drawn = 0;
  const g = el(svg, "g", {class: "marks"});
  if (!s.binned) {
    for (const t of s.marks) {
      const [i, seq, trial, id, agent, label, score] = t;
      let c;
      if (score === null) {
        c = el(g, "rect", {x: x(i) - 1.5, y: H - m.b - strip + 2, width: 3, height: strip, fill: colour(label),
            class: "mark unscored", "data-trial": trial});
        el(c, "title", {}, `#${seq} ${id} ${agent}: ${label}`);
      } else {
        const clipped = score < lo || score > hi;
        c = el(g, "circle", {cx: x(i), cy: clamp(score), r: label === "keep" || label === "baseline" ? 4.5 : 3,
            fill: clipped ? "none" : colour(label), stroke: colour(label), class: "mark", "data-trial": trial});
        el(c, "title", {}, `#${seq} ${id} ${agent}: ${label} ${fmt(score)}`);
      }
      drawn++;
    }
  } else {
    // binned: a canvas under the SVG, one bar per (bin, label) spanning its score range
    const fo = el(svg, "foreignObject", {x: 0, y: 0, width: W, height: H});
    const cv = h(fo, "canvas", {width: W, height: H, class: "bins"});
    const ctx = cv.getContext("2d");
    const bw = Math.max(1, (W - m.l - m.r) / 600);
    for (const b of s.bins) {
      const [start, width, label, count, lo_, hi_, scored] = b;
      ctx.fillStyle = colour(label);
      if (scored) {
        const y1 = clamp(hi_), y2 = clamp(lo_);
        ctx.fillRect(x(start), Math.min(y1, y2), bw, Math.max(2, Math.abs(y2 - y1)));
      }
      if (count > scored) ctx.fillRect(x(start), H - m.b - strip + 2, bw, strip);
      drawn += count;
    }
    svg.addEventListener("click", ev => {   // the nearest trial that set a new best
      const r = svg.getBoundingClientRect(), px = ev.clientX - r.left;
      let best = null, d = Infinity;
      for (const p of s.best_line) { const dd = Math.abs(x(p[0]) - px); if (dd < d) { d = dd; best = p; } }
      if (best) open(best[2]);
    });
  }
  let path = "";
  for (const [i, score, trial] of s.best_line) {
    path += path ? `H${x(i)}V${clamp(score)}` : `M${x(i)},${clamp(score)}`;
    if (s.binned) { const c = el(g, "circle", {cx: x(i), cy: clamp(score), r: 2.5, fill: colour("keep"),
        class: "mark best", "data-trial": trial}); el(c, "title", {}, `new best ${fmt(score)}`); }
  }
  if (path) el(svg, "path", {d: path + `H${x(n)}`, fill: "none", stroke: colour("keep"), "stroke-width": 2,
      class: "best-line", "pointer-events": "none"});
  g.addEventListener("click", ev => { const t = ev.target.getAttribute("data-trial"); if (t) open(t); });
  svg.setAttribute("data-drawn", drawn);
}

function drawTree(box, s) {
  const W = 960, m = {l: 40, r: 16, t: 16, b: 24};
  const n = Math.max(s.trials - 1, 1);
  const x = i => m.l + (W - m.l - m.r) * i / n;
  let drawn = 0;
  if (!s.binned) {
    let maxD = 0; for (const t of s.tree) maxD = Math.max(maxD, t[2]);
    const row = Math.max(3, Math.min(22, 480 / (maxD + 1)));
    const H = m.t + m.b + row * (maxD + 1);
    const y = d => m.t + row * d;
    const svg = el(box, "svg", {class: "plot", id: "tree-0", width: W, height: H, "data-drawn": 0});
    const edges = el(svg, "g", {class: "edges"}), nodes = el(svg, "g", {class: "nodes"});
    for (const [i, p, d] of s.tree) {
      if (p !== null) el(edges, "path", {d: `M${x(p)},${y(d - 1)}V${y(d)}H${x(i)}`, fill: "none",
          stroke: "#c0c4c8", class: "edge", "pointer-events": "none"});
    }
    for (const [i, p, d] of s.tree) {
      const t = s.marks[i], label = t[5];
      const c = el(nodes, "circle", {cx: x(i), cy: y(d), r: label === "keep" || label === "baseline" ? 4.5 : 2.5,
          fill: colour(label), class: "node", "data-trial": t[2]});
      el(c, "title", {}, `#${t[1]} ${t[3]} ${t[4]}: ${label} ${fmt(t[6])}`);
      drawn++;
    }
    nodes.addEventListener("click", ev => { const t = ev.target.getAttribute("data-trial"); if (t) open(t); });
    svg.setAttribute("data-drawn", drawn);
    return;
  }
  const tb = s.tree_bins, rows = Math.ceil((tb.max_depth + 1) / tb.dwidth);
  const row = Math.max(3, Math.min(12, 480 / rows)), H = m.t + m.b + row * rows;
  const cv = h(box, "canvas", {class: "plot", id: "tree-0", width: W, height: H, "data-drawn": 0});
  const ctx = cv.getContext("2d");
  const cw = Math.max(1, (W - m.l - m.r) / 600);
  for (const [bx, by, count, label] of tb.cells) {
    ctx.fillStyle = colour(label);
    ctx.fillRect(x(bx * tb.width), m.t + by * row, cw, Math.max(2, row - 1));
    drawn += count;
  }
  cv.setAttribute("data-drawn", drawn);
}

function stacked(box, id, rows, keyName) {
  // rows: [key, label, count] → one bar per key, segments per label
  const by = new Map(), labels = new Set();
  for (const [k, l, c] of rows) { if (!by.has(k)) by.set(k, new Map()); by.get(k).set(l, c); labels.add(l); }
  const keys = [...by.keys()];
  const order = Object.keys(DATA.colours).filter(l => labels.has(l));
  const W = 960, row = 22, m = {l: 130, r: 210, t: 10};
  const H = Math.max(60, m.t * 2 + row * keys.length, 20 + 16 * order.length);
  const svg = el(box, "svg", {class: "plot", id: id, width: W, height: H, "data-drawn": 0});
  let drawn = 0;
  keys.forEach((k, n) => {
    const total = [...by.get(k).values()].reduce((p, q) => p + q, 0);
    let x0 = m.l; const yy = m.t + n * row;
    el(svg, "text", {x: m.l - 6, y: yy + 14, "text-anchor": "end", "font-size": 12}, keyName(k));
    for (const l of order) {
      const c = by.get(k).get(l) || 0; if (!c) continue;
      const w = (W - m.l - m.r) * c / total;
      const r = el(svg, "rect", {x: x0, y: yy + 2, width: w, height: row - 6, fill: colour(l), class: "bar"});
      el(r, "title", {}, `${keyName(k)}: ${l} ${c} (${(100 * c / total).toFixed(1)} %)`);
      x0 += w; drawn++;
    }
  });
  order.forEach((l, k) => {
    el(svg, "rect", {x: W - m.r + 16, y: 8 + 16 * k, width: 10, height: 10, fill: colour(l)});
    el(svg, "text", {x: W - m.r + 32, y: 17 + 16 * k, "font-size": 11}, l);
  });
  svg.setAttribute("data-drawn", drawn);
}

function drawThroughput(box, tp) {
  const W = 960, H = 180, m = {l: 70, r: 70, t: 12, b: 30};
  const svg = el(box, "svg", {class: "plot", id: "throughput-0", width: W, height: H, "data-drawn": 0});
  const k = tp.done.length;
  if (!k) { el(svg, "text", {x: 20, y: 30, "font-size": 12}, "no run times recorded"); return; }
  const maxDone = Math.max(1, ...tp.done), maxBusy = Math.max(1, ...tp.busy);
  const bw = (W - m.l - m.r) / k, yd = v => H - m.b - (H - m.b - m.t) * v / maxDone;
  const yb = v => H - m.b - (H - m.b - m.t) * v / maxBusy;
  let path = "";
  tp.done.forEach((v, i) => {
    const r = el(svg, "rect", {x: m.l + i * bw, y: yd(v), width: Math.max(1, bw - 1), height: H - m.b - yd(v),
        fill: "#aecbfa", class: "bar"});
    el(r, "title", {}, `${v} trials labelled`);
    path += (i ? "L" : "M") + `${m.l + (i + 0.5) * bw},${yb(tp.busy[i])}`;
  });
  el(svg, "path", {d: path, fill: "none", stroke: "#d93025", "stroke-width": 2, class: "busy-line"});
  el(svg, "text", {x: m.l - 6, y: m.t + 10, "text-anchor": "end", "font-size": 11, fill: "#1a73e8"}, maxDone);
  el(svg, "text", {x: W - m.r + 6, y: m.t + 10, "font-size": 11, fill: "#d93025"}, maxBusy.toFixed(1));
  el(svg, "text", {x: m.l, y: H - 8, "font-size": 11},
     `${tp.start} + ${(tp.bucket_s / 60).toFixed(1)} min buckets: trials labelled (bars), busy workers (line)`);
  svg.setAttribute("data-drawn", k);
}

// --- pages -----------------------------------------------------------------------------
function renderIndex(d) {
  main.replaceChildren();
  h(main, "h1", {}, "arl — searches");
  const rows = d.searches.map(s => [
    td => link(td, "/search/" + encodeURIComponent(s.search), s.name), s.task, s.kind, s.state,
    `${s.done}${s.budget ? " / " + s.budget : ""}`, fmt(s.best), fmt(s.baseline),
    s.best !== null && s.baseline !== null ? signed(s.best - s.baseline) : "–",
    s.started || "", s.busy]);
  table(main, ["search", "task", "kind", "state", "trials done / budget", "best", "baseline", "best − baseline",
               "started", "workers busy"], rows, {id: "searches"});
  document.body.setAttribute("data-searches", d.searches.length);
}

function renderSearch(s, box) {
  box = box || main;
  box.replaceChildren();
  const h1 = h(box, "h1", {}, s.name + " ");
  h(h1, "small", {}, `${s.search} · task ${s.task} · ${s.kind} · ${s.state} · ${s.score_name} (` +
    `${s.direction === "min" ? "lower" : "higher"} is better)`);
  const labels = Object.entries(s.labels).map(([l, c]) => `${l} ${c}`).join(", ");
  h(box, "p", {id: "summary"}, `${s.trials} trials (${s.done} labelled${s.budget ? " of a budget of " + s.budget : ""}` +
    `, ${s.busy} running): best ${fmt(s.best)}, baseline ${fmt(s.baseline)}. ${labels}`);
  h(box, "h3", {}, "Score by trial, coloured by label, with the best so far" + (s.binned ? " (binned)" : ""));
  drawProgress(box, s);
  h(box, "h3", {}, "Lineage of every trial (depth along first parents; failures are leaves)");
  drawTree(box, s);
  h(box, "h3", {}, "Label mix per specialist");
  stacked(box, "mix-0", s.mix, k => k);
  h(box, "h3", {}, "Label mix by quartile of the search");
  stacked(box, "quartiles-0", s.quartiles, k => "quartile " + k);
  h(box, "h3", {}, "Throughput and busy workers over time");
  drawThroughput(box, s.throughput);
  h(box, "h3", {}, "Tokens and cost");
  if (s.cost.length) table(box, ["agent", "calls", "prompt", "completion", "total", "cost", "keeps", "tokens / keep"],
      s.cost.map(c => [c.agent, c.calls, c.prompt_tokens, c.completion_tokens, c.total_tokens, c.cost, c.keeps,
                       c.tokens_per_keep]), {id: "cost"});
  else h(box, "p", {class: "muted"}, "no model calls recorded");
  h(box, "h3", {}, "Keeps");
  table(box, ["seq", "id", "agent", "label", "score", "Δ vs best", "hypothesis", "diff", "evidence"], s.keeps.map(k => [
    k.seq, td => link(td, trialHref(k.trial), k.id), k.agent, td => chip(td, k.label), fmt(k.score) + (k.verified === false ? " (from the recipe's log)" : ""), signed(k.delta),
    k.hypothesis, td => {
      if (k.diff) { const det = h(td, "details"); h(det, "summary", {}, "diff"); diffPre(det, k.diff); }
      else if (k.snapshot) h(td, "span", {class: "muted"}, "snapshot " + k.snapshot);
      else h(td, "span", {class: "muted"}, DATA.live ? "on the trial page" : "no diff recorded");
    }, td => {
      if (!k.evidence || !k.evidence.length) { h(td, "span", {class: "muted"}, "not recorded"); return; }
      const det = h(td, "details"); h(det, "summary", {}, k.evidence[0]); h(det, "pre", {}, k.evidence.slice(1).join("\n"));
    }]), {class: "keeps", id: "keeps-0"});
}

function renderTrial(t) {
  main.replaceChildren();
  const h1 = h(main, "h1", {}, `trial #${t.seq} `);
  h(h1, "small", {}, `${t.id} · ${t.trial} · search `);
  link(h1.lastChild, "/search/" + encodeURIComponent(t.search), t.search_name);
  const p = h(main, "p", {id: "verdict"}); chip(p, t.label || t.state);
  p.appendChild(document.createTextNode(` score ${fmt(t.score)}${t.verified === false ? " (from the recipe's log: the program's own claim, not measured by the evaluator)" : ""} · by ${t.agent} (${t.backend || "manual"}) on ${t.surface || "–"}` +
    ` · ${t.wall_s === null ? "" : t.wall_s.toFixed(1) + " s"}${t.runner ? " on " + t.runner : ""} ${t.reason ? "· " + t.reason : ""}`));
  h(main, "h3", {}, "Hypothesis");
  h(main, "p", {id: "hypothesis"}, t.hypothesis || "–");
  table(main, ["expected Δ", "observed Δ vs parent", "Δ vs best at label time"],
        [[signed(t.expected_vs_observed.expected), signed(t.expected_vs_observed.observed), signed(t.delta_vs_best)]],
        {id: "deltas"});
  h(main, "h3", {}, "Diff against each parent");
  if (!t.diffs.length) h(main, "p", {class: "muted"}, "no parent and no recorded edit (a baseline)");
  for (const d of t.diffs) {
    const det = h(main, "details", {open: ""});
    const sum = h(det, "summary");
    if (d.parent) { sum.appendChild(document.createTextNode("against parent ")); link(sum, trialHref(d.parent), d.parent_id);
      sum.appendChild(document.createTextNode(" · ")); link(sum, `/compare?a=${encodeURIComponent(d.parent)}&b=${encodeURIComponent(t.trial)}`, "compare side by side"); }
    else sum.textContent = "the recorded edit";
    if (d.diff) diffPre(det, d.diff);
    else h(det, "p", {class: "muted"}, t.snapshot ? `imported: the source kept this program as ${t.snapshot}`
                                                  : "no programs kept for this pair");
  }
  h(main, "h3", {}, "Checks");
  table(main, ["check", "value", "limit", "", "detail"], t.checks.map(c => [c.name, fmt(c.value), fmt(c.limit),
        td => { td.textContent = c.passed ? "pass" : "FAIL"; td.className = c.passed ? "pass" : "fail"; }, c.detail]),
        {id: "checks"});
  h(main, "h3", {}, "Metrics");
  table(main, ["metric", "value"], Object.entries(t.metrics).map(([k, v]) => [k, fmt(v)]), {id: "metrics"});
  h(main, "h3", {}, "Run");
  if (t.run) {
    h(main, "p", {}, `exit ${t.exit_code === null ? "–" : t.exit_code}, ${fmt(t.run.cpu_s)} cpu-s, ` +
      `peak ${fmt(t.run.peak_rss_mb)} MB, sandbox ${t.run.sandbox}${t.run.timed_out ? ", killed at the " + t.run.timed_out + " limit" : ""}`);
    h(main, "h4", {}, "stdout (tail)"); h(main, "pre", {id: "stdout"}, t.run.stdout || "");
    h(main, "h4", {}, "stderr (tail)"); h(main, "pre", {id: "stderr"}, t.run.stderr || "");
  } else h(main, "p", {class: "muted"}, "no run recorded");
  h(main, "h3", {}, "Agent call or session");
  if (t.transcript) { const det = h(main, "details"); h(det, "summary", {}, "transcript"); h(det, "pre", {id: "transcript"}, t.transcript); }
  else h(main, "p", {class: "muted"}, "no transcript recorded");
  h(main, "h3", {}, "Commands");
  h(main, "pre", {id: "commands"}, t.commands.join("\n"));
  const form = h(main, "form", {action: "/compare", method: "get"});
  h(form, "input", {type: "hidden", name: "a", value: t.trial});
  form.appendChild(document.createTextNode("compare with trial id "));
  h(form, "input", {name: "b", size: 40}); h(form, "button", {}, "compare");
}

function renderCompare(c) {
  main.replaceChildren();
  h(main, "h1", {}, `#${c.a.seq} ${c.a.id} vs #${c.b.seq} ${c.b.id}`);
  const cols = h(main, "div", {class: "cols"});
  for (const t of [c.a, c.b]) {
    const d = h(cols, "div");
    const hh = h(d, "h3"); link(hh, trialHref(t.trial), `#${t.seq} ${t.id} (${t.search_name})`);
    const p = h(d, "p"); chip(p, t.label || "pending");
    p.appendChild(document.createTextNode(` score ${fmt(t.score)}, Δ vs parent ${signed(t.delta_vs_parent)}, by ${t.agent}`));
    h(d, "p", {class: "hyp"}, t.hypothesis || "–");
    table(d, ["check", "value", "limit", ""], t.checks.map(k => [k.name, fmt(k.value), fmt(k.limit), k.passed ? "pass" : "FAIL"]));
  }
  h(main, "h3", {}, "Metrics");
  table(main, ["metric", "a", "b", "b − a"], c.metrics.map(([k, a, b]) => [k, fmt(a), fmt(b),
        a === null || b === null || a === undefined || b === undefined ? "–" : signed(b - a)]), {id: "metrics"});
  h(main, "h3", {}, "Program diff a → b");
  if (c.diff) diffPre(main, c.diff); else h(main, "p", {class: "muted"}, "no programs kept for these trials");
}

function renderSql(d) {
  main.replaceChildren();
  h(main, "h1", {}, "SQL console (read-only)");
  h(main, "p", {class: "muted"}, "One SELECT over copies of the views " + d.tables.join(", ") +
    " — the same guarded DuckDB as the MCP sql tool: no files, no settings, no writes; a timeout and a page limit.");
  const form = h(main, "form", {id: "sql-form"});
  const ta = h(form, "textarea", {name: "q", rows: 5, id: "sql-q"});
  ta.value = d.query || "SELECT label, count(*) AS n FROM trials GROUP BY label ORDER BY n DESC";
  h(form, "button", {type: "submit"}, "run");
  const out = h(main, "div", {id: "sql-out"});
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    out.replaceChildren(h(null, "p", {class: "muted"}, "running…"));
    const r = await fetch("/api/sql", {method: "POST", headers: {"content-type": "application/json"},
                                       body: JSON.stringify({query: ta.value})});
    const j = await r.json();
    out.replaceChildren();
    if (!r.ok) { h(out, "p", {class: "fail", id: "sql-error"}, j.error); return; }
    table(out, j.columns, j.rows, {id: "sql-result"});
    if (j.next_offset !== null) h(out, "p", {class: "muted"}, `first ${j.rows.length} rows shown`);
  });
}

// --- live updates ------------------------------------------------------------------------
let drawnAt = 0;
function ready() {  // when the plots are drawn and bound (ms since navigation began): benchmarks read it
  document.body.setAttribute("data-ready-ms", Math.round(performance.now()));
  document.body.setAttribute("data-ready", "1");
}
function redraw(d) {
  if (DATA.kind === "index") renderIndex(d);
  else if (DATA.kind === "search") renderSearch(d.view);
  else if (DATA.kind === "trial") renderTrial(d.view);
}
if (DATA.kind === "report") {
  for (const [n, s] of DATA.sections.entries()) {
    const sec = h(main, "section", {class: "search", "data-search": s.search});
    renderSearch(s, sec);
    for (const e of sec.querySelectorAll("[id$='-0']")) e.id = e.id.replace(/-0$/, "-" + n);
  }
  ready();
} else {
  if (DATA.kind === "error") h(main, "p", {class: "fail", id: "error"}, DATA.message);
  else if (DATA.kind === "compare") renderCompare(DATA.view);
  else if (DATA.kind === "sql") renderSql(DATA);
  else redraw(DATA);
  ready();
}
if (DATA.live && DATA.api) {
  const status = document.getElementById("live");
  status.textContent = "connecting…";
  let pending = false, again = false;
  async function refetch() {
    if (pending) { again = true; return; }
    pending = true;
    try {
      const r = await fetch(DATA.api, {cache: "no-store"});
      if (r.ok) { const d = await r.json(); redraw(d); drawnAt = d.head;
                  document.body.setAttribute("data-head", d.head); }
    } finally { pending = false; if (again) { again = false; refetch(); } }
  }
  document.body.setAttribute("data-head", DATA.head);
  drawnAt = DATA.head;
  const es = new EventSource(DATA.events);
  es.addEventListener("change", ev => {
    const c = JSON.parse(ev.data);
    status.textContent = `live · log position ${c.head}`;
    if (c.head > drawnAt && (!DATA.watch || c.searches.includes(DATA.watch))) refetch();
  });
  es.addEventListener("open", () => { status.textContent = "live"; });
  window.addEventListener("pagehide", () => es.close());  // leaving: end the stream, not cut it
  es.addEventListener("error", () => { status.textContent = "reconnecting…"; });
}
})();
"""
