"""``arl report``: one self-contained HTML file per ledger (or per search).

No network: the data is embedded as JSON and drawn into inline SVG by inline
JavaScript. For each search: every trial against its index coloured by label
with the best-so-far line, the lineage tree of kept trials, the label mix per
specialist, and a table of keeps with hypothesis, delta and diff. Each plot
sets ``data-drawn`` to the number of marks it drew, so a headless browser can
prove that the page rendered.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from arl.ledger import ArlError, Ledger
from arl.queries.decisions import evidence_lines, evidence_of
from arl.queries.errors import QueryError
from arl.queries.named import resolve_search

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
}
_LEGAL = ("baseline", "keep", "discard")


def write_report(
    con: duckdb.DuckDBPyConnection,
    output: str | Path,
    *,
    search: str | None = None,
    ledger: Ledger | None = None,
) -> str:
    """Write the report; returns a one-line summary. ``ledger`` supplies diffs of keeps."""
    sid = resolve_search(con, search) if search else None
    searches = con.execute(
        "SELECT search, name, task, kind, direction, config->>'score' AS score_name, started_at "
        "FROM searches WHERE $s IS NULL OR search = $s ORDER BY started_at, search",
        {"s": sid},
    ).fetchall()
    if not searches:
        raise QueryError("the ledger holds no search to report on; run or import one first")
    sections = [_search_data(con, row, ledger) for row in searches]
    page = _page(sections)
    path = Path(output).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise QueryError(f"cannot write {path}: {e.strerror}; choose a writable -o path") from e
    trials = sum(len(s["trials"]) for s in sections)
    return f"wrote {path} ({len(sections)} search(es), {trials:,} trials, {len(page) / 1e6:.1f} MB)"


def _search_data(con: duckdb.DuckDBPyConnection, row: tuple, ledger: Ledger | None) -> dict[str, Any]:
    search, name, task, kind, direction, score_name, started = row
    rows = con.execute(
        "SELECT seq, trial_id, coalesce(source_id, seq::VARCHAR), agent, label, score, delta_vs_best, "
        "hypothesis, parents, edit_digest, source->>'snapshot_path', reason, evidence "
        "FROM log.trials WHERE search = $s ORDER BY seq",
        {"s": search},
    ).fetchall()
    index = {r[1]: i for i, r in enumerate(rows)}
    trials = [
        {
            "i": i,
            "seq": r[0],
            "id": r[2],
            "agent": r[3],
            "label": r[4] or "pending",
            "score": r[5],
            "delta": r[6],
            "parent": index.get(r[8][0]) if r[8] else None,
        }
        for i, r in enumerate(rows)
    ]
    keeps = []
    for i, r in enumerate(rows):
        if r[4] not in ("keep", "baseline"):
            continue
        keeps.append(
            {
                "i": i,
                "seq": r[0],
                "id": r[2],
                "agent": r[3],
                "label": r[4],
                "score": r[5],
                "delta": r[6],
                "hypothesis": r[7] or "",
                "diff": _diff(ledger, r[9]),
                "snapshot": r[10],
                "evidence": evidence_lines(e) if (e := evidence_of(r[12])) is not None else [],
            }
        )
    return {
        "search": search,
        "name": name,
        "task": task,
        "kind": kind,
        "direction": direction,
        "score_name": score_name or "score",
        "started": started.isoformat() if isinstance(started, datetime) else str(started),
        "trials": trials,
        "keeps": keeps,
    }


def _diff(ledger: Ledger | None, digest: str | None) -> str | None:
    if ledger is None or not digest:
        return None
    try:
        return ledger.get_blob(digest).decode("utf-8", errors="replace")
    except ArlError as e:
        return f"(diff unavailable: {e})"


def _keeps_table(section: dict[str, Any], n: int) -> str:
    rows = []
    for k in section["keeps"]:
        if k["diff"]:
            diff = f"<details><summary>diff</summary><pre>{html.escape(k['diff'])}</pre></details>"
        elif k["snapshot"]:
            diff = f"<span class=muted>snapshot {html.escape(k['snapshot'])}</span>"
        else:
            diff = "<span class=muted>no diff recorded</span>"
        score = "" if k["score"] is None else f"{k['score']:.6g}"
        delta = "" if k["delta"] is None else f"{k['delta']:+.6g}"
        evidence = (f"<details><summary>{html.escape(k['evidence'][0])}</summary><pre>"
                    f"{html.escape(chr(10).join(k['evidence'][1:]))}</pre></details>"
                    if k["evidence"] else "<span class=muted>not recorded</span>")
        rows.append(
            f"<tr><td>{k['seq']}</td><td>{html.escape(k['id'])}</td><td>{html.escape(k['agent'])}</td>"
            f"<td><span class=chip style='background:{LABEL_COLOURS.get(k['label'], '#999')}'></span>"
            f"{k['label']}</td><td class=num>{score}</td><td class=num>{delta}</td>"
            f"<td class=hyp>{html.escape(k['hypothesis'])}</td><td>{diff}</td><td>{evidence}</td></tr>"
        )
    return (
        f"<table id='keeps-{n}' class=keeps><thead><tr><th>seq</th><th>id</th><th>agent</th>"
        "<th>label</th><th>score</th><th>Δ vs best</th><th>hypothesis</th><th>diff</th><th>evidence</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _page(sections: list[dict[str, Any]]) -> str:
    body = []
    for n, s in enumerate(sections):
        counts: dict[str, int] = {}
        for t in s["trials"]:
            counts[t["label"]] = counts.get(t["label"], 0) + 1
        mix = ", ".join(f"{label} {c}" for label, c in sorted(counts.items(), key=lambda x: -x[1]))
        body.append(
            f"<section class=search data-search='{html.escape(s['search'])}'>"
            f"<h2>{html.escape(s['name'])} <small>{html.escape(s['search'])} · task "
            f"{html.escape(s['task'])} · {s['kind']} · {s['score_name']} "
            f"({'lower' if s['direction'] == 'min' else 'higher'} is better)</small></h2>"
            f"<p class=muted>{len(s['trials'])} trials: {html.escape(mix)}</p>"
            f"<h3>Trials by index, coloured by label, with the best so far</h3>"
            f"<svg class=plot id='progress-{n}' data-kind=progress data-section='{n}' "
            f"width=960 height=360 data-drawn=0></svg>"
            f"<h3>Lineage of kept trials</h3>"
            f"<svg class=plot id='tree-{n}' data-kind=tree data-section='{n}' width=960 "
            f"height=300 data-drawn=0></svg>"
            f"<h3>Label mix per specialist</h3>"
            f"<svg class=plot id='mix-{n}' data-kind=mix data-section='{n}' width=960 "
            f"height=200 data-drawn=0></svg>"
            f"<h3>Keeps</h3>{_keeps_table(s, n)}</section>"
        )
    data = json.dumps(
        {"sections": [{k: v for k, v in s.items() if k != "keeps"} | {"keeps": [k["i"] for k in s["keeps"]]}
                      for s in sections], "colours": LABEL_COLOURS},
        separators=(",", ":"),
        default=str,
    ).replace("</", "<\\/")
    title = "arl report — " + ", ".join(s["name"] for s in sections[:3]) + (" …" if len(sections) > 3 else "")
    return _TEMPLATE.replace("__TITLE__", html.escape(title)).replace(
        "__BODY__", "\n".join(body)
    ).replace("__DATA__", data)


_TEMPLATE = """<!doctype html>
<html lang=en><head><meta charset=utf-8>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#202124}
h2 small{font-weight:normal;color:#5f6368;font-size:12px}
.muted{color:#5f6368}.plot{border:1px solid #dadce0;display:block;margin:6px 0 18px}
table.keeps{border-collapse:collapse;width:100%;font-size:13px}
table.keeps td,table.keeps th{border-top:1px solid #e0e0e0;padding:4px 6px;vertical-align:top;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.hyp{max-width:520px}
.chip{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
pre{white-space:pre-wrap;font-size:12px;background:#f8f9fa;padding:6px}
section.search{margin-bottom:48px}
</style></head>
<body data-ready=0>
<h1>arl report</h1>
__BODY__
<script type="application/json" id=arl-data>__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("arl-data").textContent);
const NS = "http://www.w3.org/2000/svg";
function el(parent, name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}
function colour(label) { return DATA.colours[label] || "#999"; }
function fmt(v) { return v === null || v === undefined ? "–" : Number(v).toPrecision(6); }
function ticks(lo, hi, n) {
  const out = [];
  for (let k = 0; k <= n; k++) out.push(lo + (hi - lo) * k / n);
  return out;
}

function drawProgress(svg, s) {
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  const m = {l: 70, r: 16, t: 12, b: 48}, strip = 14;
  const trials = s.trials, n = Math.max(trials.length - 1, 1);
  const legal = trials.filter(t => ["baseline", "keep", "discard"].includes(t.label) && t.score !== null);
  const scored = legal.length ? legal : trials.filter(t => t.score !== null);
  // a loop, not Math.min(...xs): spreading 100,000 arguments overflows the stack
  let lo = Infinity, hi = -Infinity;
  for (const t of scored) { lo = Math.min(lo, t.score); hi = Math.max(hi, t.score); }
  if (!isFinite(lo)) { lo = 0; hi = 1; }
  if (lo === hi) { lo -= 1e-9 + Math.abs(lo) * 0.01; hi += 1e-9 + Math.abs(hi) * 0.01; }
  const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
  const x = i => m.l + (W - m.l - m.r) * i / n;
  const yTop = m.t, yBot = H - m.b - strip - 6;
  // lower-is-better puts the best at the bottom, as the autoresearch plots do
  const y = v => s.direction === "min"
      ? yTop + (yBot - yTop) * (hi - v) / (hi - lo) : yBot - (yBot - yTop) * (v - lo) / (hi - lo);
  let drawn = 0;
  el(svg, "line", {x1: m.l, y1: yBot, x2: W - m.r, y2: yBot, stroke: "#999"});
  el(svg, "line", {x1: m.l, y1: yTop, x2: m.l, y2: yBot, stroke: "#999"});
  for (const v of ticks(lo, hi, 4)) {
    el(svg, "text", {x: m.l - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11}, v.toPrecision(5));
  }
  for (const i of ticks(0, n, Math.min(8, n))) {
    el(svg, "text", {x: x(i), y: H - m.b + 16, "text-anchor": "middle", "font-size": 11}, Math.round(i));
  }
  el(svg, "text", {x: (W + m.l) / 2, y: H - 8, "text-anchor": "middle", "font-size": 12}, "trial index");
  el(svg, "text", {x: 14, y: (yTop + yBot) / 2, "text-anchor": "middle", "font-size": 12,
      transform: `rotate(-90 14 ${(yTop + yBot) / 2})`}, s.score_name);
  const g = el(svg, "g", {class: "marks"});
  for (const t of trials) {
    if (t.score === null) {  // no score (crashes, rejected edits …): a tick on the strip below
      el(g, "rect", {x: x(t.i) - 1.5, y: H - m.b - strip, width: 3, height: strip,
          fill: colour(t.label), class: "mark unscored"})
        .appendChild(document.createElementNS(NS, "title")).textContent =
          `#${t.seq} ${t.id} ${t.agent}: ${t.label}`;
      drawn++;
      continue;
    }
    const clipped = t.score < lo || t.score > hi;
    const c = el(g, "circle", {cx: x(t.i), cy: y(Math.min(hi, Math.max(lo, t.score))),
        r: t.label === "keep" || t.label === "baseline" ? 4.5 : 3,
        fill: clipped ? "none" : colour(t.label), stroke: colour(t.label), class: "mark"});
    el(c, "title", {}, `#${t.seq} ${t.id} ${t.agent}: ${t.label} ${fmt(t.score)}`);
    drawn++;
  }
  // best so far: baseline and keeps only, respecting the direction
  let best = null, path = "";
  for (const t of trials) {
    if ((t.label === "baseline" || t.label === "keep") && t.score !== null &&
        (best === null || (s.direction === "min" ? t.score < best : t.score > best))) {
      path += (best === null ? `M${x(t.i)},${y(t.score)}` : `H${x(t.i)}V${y(t.score)}`);
      best = t.score;
    }
  }
  if (best !== null) {
    path += `H${x(n)}`;
    el(svg, "path", {d: path, fill: "none", stroke: colour("keep"), "stroke-width": 2,
        class: "best-line"});
  }
  svg.setAttribute("data-drawn", drawn);
}

function drawTree(svg, s) {
  const kept = new Set(s.keeps);
  const trials = s.trials;
  // parent in the tree: the nearest kept ancestor (first parents)
  const keptParent = i => {
    let p = trials[i].parent, guard = 0;
    while (p !== null && p !== undefined && !kept.has(p) && guard++ < trials.length) p = trials[p].parent;
    return kept.has(p) ? p : null;
  };
  const depth = new Map();
  let maxDepth = 0;
  for (const i of s.keeps) {
    const p = keptParent(i);
    const d = p === null ? 0 : (depth.get(p) ?? 0) + 1;
    depth.set(i, d);
    maxDepth = Math.max(maxDepth, d);
  }
  const W = +svg.getAttribute("width");
  const H = Math.max(120, 40 + 28 * (maxDepth + 1));
  svg.setAttribute("height", H);
  const n = Math.max(trials.length - 1, 1), m = {l: 30, r: 30};
  const x = i => m.l + (W - m.l - m.r) * i / n, y = d => 24 + 28 * d;
  let drawn = 0;
  for (const i of s.keeps) {
    const p = keptParent(i);
    if (p !== null) {
      el(svg, "path", {d: `M${x(p)},${y(depth.get(p))}V${y(depth.get(i))}H${x(i)}`, fill: "none",
          stroke: "#9aa0a6", class: "edge"});
    }
  }
  for (const i of s.keeps) {
    const t = trials[i];
    const c = el(svg, "circle", {cx: x(i), cy: y(depth.get(i)), r: 6, fill: colour(t.label),
        class: "node"});
    el(c, "title", {}, `#${t.seq} ${t.id} ${t.agent} ${fmt(t.score)} Δ ${fmt(t.delta)}`);
    el(svg, "text", {x: x(i), y: y(depth.get(i)) - 9, "text-anchor": "middle", "font-size": 10},
        t.id);
    drawn++;
  }
  svg.setAttribute("data-drawn", drawn);
}

function drawMix(svg, s) {
  const by = new Map();
  for (const t of s.trials) {
    if (t.label === "baseline") continue;
    if (!by.has(t.agent)) by.set(t.agent, new Map());
    const m = by.get(t.agent);
    m.set(t.label, (m.get(t.label) || 0) + 1);
  }
  const agents = [...by.keys()].sort();
  const labels = Object.keys(DATA.colours).filter(l => agents.some(a => by.get(a).has(l)));
  const W = +svg.getAttribute("width"), row = 22, m = {l: 110, r: 200, t: 10};
  const H = Math.max(60, m.t * 2 + row * agents.length);
  svg.setAttribute("height", Math.max(H, 20 + 16 * labels.length));
  const max = Math.max(1, ...agents.map(a => [...by.get(a).values()].reduce((p, q) => p + q, 0)));
  let drawn = 0;
  agents.forEach((a, k) => {
    let x0 = m.l;
    const yy = m.t + k * row;
    el(svg, "text", {x: m.l - 6, y: yy + 14, "text-anchor": "end", "font-size": 12}, a);
    for (const l of labels) {
      const c = by.get(a).get(l) || 0;
      if (!c) continue;
      const w = (W - m.l - m.r) * c / max;
      const r = el(svg, "rect", {x: x0, y: yy + 2, width: w, height: row - 6, fill: colour(l),
          class: "bar"});
      el(r, "title", {}, `${a}: ${l} ${c}`);
      x0 += w;
      drawn++;
    }
  });
  labels.forEach((l, k) => {
    el(svg, "rect", {x: W - m.r + 16, y: 8 + 16 * k, width: 10, height: 10, fill: colour(l)});
    el(svg, "text", {x: W - m.r + 32, y: 17 + 16 * k, "font-size": 11}, l);
  });
  svg.setAttribute("data-drawn", drawn);
}

const DRAW = {progress: drawProgress, tree: drawTree, mix: drawMix};
for (const svg of document.querySelectorAll("svg.plot")) {
  DRAW[svg.dataset.kind](svg, DATA.sections[+svg.dataset.section]);
}
document.body.setAttribute("data-ready", "1");
</script>
</body></html>
"""
