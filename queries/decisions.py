"""A keep's or a discard's evidence as a person reads it (``arl show``, the report)."""

from __future__ import annotations

from typing import Any

import msgspec

from arl.ledger.events import Evidence


def evidence_of(raw: Any) -> Evidence | None:
    """An :class:`Evidence` from what the ledger or DuckDB hands back (a struct, JSON text, a dict)."""
    if raw is None or isinstance(raw, Evidence):
        return raw
    try:
        if isinstance(raw, (str, bytes)):
            return msgspec.json.decode(raw, type=Evidence)
        return msgspec.convert(raw, Evidence, strict=False)
    except msgspec.ValidationError:
        return None


def _seeds(scores: dict[int, float]) -> str:
    return ", ".join(f"seed {s}: {v:.6g}" for s, v in sorted(scores.items())) or "—"


def evidence_lines(e: Evidence) -> list[str]:
    """The rule, both sides' per-seed scores, the test and the floor, one fact a line."""
    lines = [f"rule: {e.rule}", f"candidate: {_seeds(e.seeds)}"]
    if e.best is not None:
        who = f"trial {e.best_trial[:8]}" if e.best_trial else "the best"
        lines.append(f"compared with {who} ({e.best:.6g}): {_seeds(e.best_seeds) if e.best_seeds else 'one score'}")
    if e.gain is not None:
        lines.append(f"gain {e.gain:+.4g} against the noise floor {e.noise_floor:g} ({e.floor_source})"
                     + ("; confirmed on re-runs" if e.confirmed else "")
                     + (f"; {e.screen_gain:+.4g} on the first seeds sent it to re-runs"
                        if e.screen_gain is not None else ""))
    if e.test == "welch_t":
        stat = f"t = {e.statistic:.3g}, p = {e.p_value:.3g}" if e.statistic is not None else "no spread on either side"
        lines.append(f"Welch's t: {stat}" + (f"; 95% bootstrap interval of the gain "
                                             f"[{e.interval[0]:+.4g}, {e.interval[1]:+.4g}]" if e.interval else ""))
    elif e.test == "bootstrap" and e.interval:
        lines.append(f"95% bootstrap interval of the gain [{e.interval[0]:+.4g}, {e.interval[1]:+.4g}]")
    elif e.best is not None:
        lines.append("test: none (one score on each side)")
    if e.measured_floor is not None:
        lines.append(f"noise floor measured: {e.measured_floor:.4g} over {len(e.seeds)} seeds "
                     f"(manifest: {e.declared_floor:g})")
    if e.note:
        lines.append(e.note)
    return lines
