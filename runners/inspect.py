"""`arl show`: one trial as a person reads it."""

from __future__ import annotations

from arl.ledger import events as ev
from arl.ledger.errors import ArlError
from arl.ledger.searches import find_search
from arl.ledger.store import Ledger
from arl.queries.decisions import evidence_lines


def find_trial(ledger: Ledger, ref: str) -> str:
    """A trial by id prefix, ``SEARCH#SEQ`` or ``#SEQ`` (latest search)."""
    if "#" in ref:
        search_ref, seq = ref.split("#", 1)
        if not seq.isdigit():
            raise ArlError(f"{ref!r}: the part after # must be a trial number, e.g. #12")
        return ev.trial_id(find_search(ledger, search_ref or None), int(seq))
    matches = set()
    after = 0
    while batch := ledger.read(after, 20_000):
        for _, e in batch:
            if isinstance(e, ev.TrialProposed) and e.originator_id.startswith(ref):
                matches.add(e.originator_id)
        after = batch[-1][0]
    if len(matches) == 1:
        return matches.pop()
    if not matches:
        raise ArlError(f"no trial {ref!r} in {ledger.url.display()}; try SEARCH#SEQ")
    raise ArlError(f"{ref!r} matches {len(matches)} trials; give more of the id")


def render_trial(ledger: Ledger, ref: str) -> str:
    trial = find_trial(ledger, ref)
    events = ledger.stream(trial)
    if not events:
        raise ArlError(f"trial {ref!r} has no events in {ledger.url.display()}")
    out: list[str] = []
    for e in events:
        if isinstance(e, ev.TrialProposed):
            parents = ", ".join(p[:8] for p in e.parents) or "none"
            out += [f"trial #{e.seq} [{trial}] of search {e.search_id[:8]}",
                    f"by {e.agent} ({e.backend or 'manual'}) on surface {e.surface or '-'}; parents {parents}",
                    f"hypothesis: {e.hypothesis or '-'}"
                    + (f" (expected Δ {e.expected_delta:+.4g})" if e.expected_delta is not None else "")]
            if e.source is not None:
                out += _imported(e)
            if e.edit_digest:
                out += ["", "diff:", ledger.get_blob(e.edit_digest).decode(errors="replace").rstrip()]
        elif isinstance(e, ev.EditRejected):
            out.append(f"rejected at {e.check}: {e.reason}")
        elif isinstance(e, ev.TrialClaimed):
            out.append(f"claimed by {e.runner} on {e.host} (attempt {e.attempt})")
        elif isinstance(e, ev.LeaseExpired):
            out.append(f"lease expired: {e.reason}")
        elif isinstance(e, ev.RunFinished):
            how = f"exit {e.exit_code}" if e.exit_code is not None else f"signal {e.signal}"
            out += ["", f"run: {how}, {e.wall_s:.2f} s wall, {e.cpu_s:.2f} s cpu, "
                        f"peak {e.peak_rss_mb:.0f} MB, sandbox {e.sandbox}"
                        + (f", killed at the {e.timed_out} limit" if e.timed_out else "")]
            if e.stderr_tail.strip():
                out += ["stderr (tail):", e.stderr_tail.rstrip()[-800:]]
        elif isinstance(e, ev.TrialEvaluated):
            out.append(f"evaluation ({e.evaluator} v{e.evaluator_version}): score {e.score}"
                       + (" — from the recipe's log, not verified" if e.verified is False else ""))
            for c in e.checks:
                value = f"{c.value:.6g}" if c.value is not None else "-"
                limit = f" / limit {c.limit:.6g}" if c.limit is not None else ""
                out.append(f"  {'pass' if c.passed else 'FAIL'} {c.name}: {value}{limit}"
                           + (f" ({c.detail})" if c.detail else ""))
        elif isinstance(e, ev.TrialLabeled):
            delta = f", Δbest {e.delta_vs_best:+.4g}" if e.delta_vs_best is not None else ""
            out += ["", f"label: {e.label.value}{delta} — {e.reason}"]
            if e.evidence is not None:
                out += [f"  {line}" for line in evidence_lines(e.evidence)]
    return "\n".join(out)


def _imported(e: ev.TrialProposed) -> list[str]:
    """Where an imported trial came from, and what the import had to repair or could not link."""
    src = e.source or {}
    out = [f"imported ({e.backend.removeprefix('import:')}): {src.get('id')} [{src.get('status')}], "
           f"line {src.get('line')} of the source"
           + (f"; its parent there: {src['parent']}" if src.get("parent") else "")]
    out += [f"{key}: {src[key]}" for key in ("salvaged", "lineage") if src.get(key)]
    if e.source_digest:
        out.append(f"clipped here; the whole record is blob {e.source_digest}")
    return out
