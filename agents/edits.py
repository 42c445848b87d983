"""Edits between programs: what changed, and whether the proposer was allowed to change it."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from ledger.events import Label
from tasks.manifest import Task


def touched(parent: Mapping[str, bytes], child: Mapping[str, bytes]) -> list[str]:
    """Paths added, removed or changed from parent to child, sorted."""
    return sorted(p for p in parent.keys() | child.keys() if parent.get(p) != child.get(p))


def unified_diff(parent: Mapping[str, bytes], child: Mapping[str, bytes]) -> str:
    """A git-style unified diff of every touched file (binary files named only)."""
    out: list[str] = []
    for path in touched(parent, child):
        a, b = parent.get(path), child.get(path)
        try:
            a_lines = a.decode().splitlines(keepends=True) if a is not None else []
            b_lines = b.decode().splitlines(keepends=True) if b is not None else []
        except UnicodeDecodeError:
            out.append(f"Binary files a/{path} and b/{path} differ\n")
            continue
        out.append(f"diff --git a/{path} b/{path}\n")
        out.extend(
            difflib.unified_diff(
                a_lines, b_lines,
                fromfile=f"a/{path}" if a is not None else "/dev/null",
                tofile=f"b/{path}" if b is not None else "/dev/null",
            )
        )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in out)


def scope_violation(
    task: Task, surface: str, parent: Mapping[str, bytes], child: Mapping[str, bytes]
) -> tuple[Label, str] | None:
    """Protected files first (illegal_edit), then files outside the surface (out_of_surface)."""
    changed = touched(parent, child)
    protected = [p for p in changed if task.is_protected(p)]
    if protected:
        return Label.ILLEGAL_EDIT, f"the edit touches protected file(s): {', '.join(protected)}"
    allowed = set(task.surface(surface).files)
    outside = [p for p in changed if p not in allowed]
    if outside:
        return (
            Label.OUT_OF_SURFACE,
            f"surface {surface!r} owns {', '.join(sorted(allowed))}; the edit also touches "
            f"{', '.join(outside)}",
        )
    return None
