"""Three-way merge of programs: combine two descendants of a common base.

File by file: a file changed on one side only takes that side; changed on both,
the line edits of each side against the base are applied together when they
touch disjoint regions, and a conflict is raised when they overlap.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from arl.ledger.errors import ArlError


class MergeConflict(ArlError):
    """Both sides changed the same lines of a file."""


def merge_programs(
    base: Mapping[str, bytes], ours: Mapping[str, bytes], theirs: Mapping[str, bytes]
) -> dict[str, bytes]:
    merged: dict[str, bytes] = {}
    for path in sorted(base.keys() | ours.keys() | theirs.keys()):
        b, o, t = base.get(path), ours.get(path), theirs.get(path)
        if o == t:
            result = o
        elif o == b:
            result = t
        elif t == b:
            result = o
        elif o is None or t is None or b is None:
            raise MergeConflict(f"{path} was removed or added differently on both sides")
        else:
            result = merge_text(path, b, o, t)
        if result is not None:
            merged[path] = result
    return merged


def _edits(base: list[str], side: list[str]) -> list[tuple[int, int, list[str]]]:
    """(start, end, replacement) over base lines for every change from base to side."""
    matcher = difflib.SequenceMatcher(a=base, b=side, autojunk=False)
    return [(i1, i2, side[j1:j2]) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def merge_text(path: str, base: bytes, ours: bytes, theirs: bytes) -> bytes:
    try:
        b, o, t = (x.decode().splitlines(keepends=True) for x in (base, ours, theirs))
    except UnicodeDecodeError:
        raise MergeConflict(f"{path} is binary and changed on both sides") from None
    edits = sorted(
        [(s, e, r, "ours") for s, e, r in _edits(b, o)] + [(s, e, r, "theirs") for s, e, r in _edits(b, t)],
        key=lambda x: (x[0], x[1]),
    )
    out: list[str] = []
    pos = 0
    last: tuple[int, int, list[str], str] | None = None
    for start, end, replacement, side in edits:
        if last is not None and start < last[1] or (last is not None and start == last[0] == last[1] == end):
            if last[0] == start and last[1] == end and last[2] == replacement:
                continue  # the same change on both sides
            raise MergeConflict(f"{path}: both sides changed line(s) {start + 1}–{max(end, start + 1)}")
        out.extend(b[pos:start])
        out.extend(replacement)
        pos = end
        last = (start, end, replacement, side)
    out.extend(b[pos:])
    return "".join(out).encode()
