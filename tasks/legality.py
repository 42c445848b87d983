"""Is this program legal for this task? The one answer, before anything runs.

Every caller asks here — the search driver when it records a proposal, the
worker before it runs one, the agents' ``check`` tool, ``arl task check`` — and
always against the same reference: the search's base program (the program
its baseline trial ran; for the baseline itself, the task's recipe). The
checks, in the order they decide a label:

    scope      the edit (parent → program) touches protected files (illegal_edit),
               files outside the proposer's surface, or constants another surface
               owns (out_of_surface)
    protected  a protected file differs from the reference (illegal_edit)
    pinned     a line the task pins is gone or changed (illegal_edit)
    syntax     a Python file does not compile (invalid_edit)
    size       the code alone is over the artifact cap (size_violation)

``scope`` needs the proposer and the parent, so the driver applies it when a
proposal is recorded (a violation never reaches a worker); the rest are the
worker's preflight. :func:`findings` gives all of them at once, passing or not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from arl.ledger.events import Label
from arl.ledger.programs import touched
from arl.ledger.projections import State
from arl.tasks.knobs import constant_changes
from arl.tasks.manifest import Task

Program = Mapping[str, bytes]


class Finding(NamedTuple):
    """One check of a program: its name, the label a failure gives (None: passed), and why."""

    check: str
    label: Label | None
    detail: str

    @property
    def passed(self) -> bool:
        return self.label is None


def scope(task: Task, surface: str, parent: Program, program: Program, *,
          also: tuple[str, ...] = ()) -> Finding:
    """Protected files first (illegal_edit), then files or constants outside the surface.

    ``also`` names further surfaces the edit may touch (a merge of two specialists' keeps).
    """
    changed = touched(parent, program)
    protected = [p for p in changed if task.is_protected(p)]
    if protected:
        return Finding("scope", Label.ILLEGAL_EDIT, f"the edit touches protected file(s): {', '.join(protected)}")
    mine = [task.surface(name) for name in (surface, *also)]
    allowed = {f for s in mine for f in s.files}
    outside = [p for p in changed if p not in allowed]
    if outside:
        return Finding("scope", Label.OUT_OF_SURFACE,
                       f"surface {surface!r} owns {', '.join(sorted(allowed))}; the edit also touches "
                       f"{', '.join(outside)}")
    # Several surfaces may share a file; then the knobs say who owns which constant.
    # A surface owns its knobs and whatever its named techniques set.
    own = {k.name for s in mine for k in s.knobs} | {n for s in mine for t in s.techniques for n in t.set}
    owners = {k.name: s.name for s in task.surfaces for k in s.knobs if k.name not in own}
    foreign = sorted(name for name in constant_changes(parent, program) if name in owners)
    if foreign:
        return Finding("scope", Label.OUT_OF_SURFACE,
                       "the edit changes " + ", ".join(f"{n} (owned by surface {owners[n]})" for n in foreign))
    return Finding("scope", None, "in your surface")


def preflight(task: Task, program: Program, reference: Program) -> list[Finding]:
    """The worker's checks of a program against the search's base program ``reference``,
    in the order they decide (each check once, passing or not)."""
    differing = [p for p in sorted(program.keys() | reference.keys())
                 if task.is_protected(p) and program.get(p) != reference.get(p)]
    out = [Finding("protected", Label.ILLEGAL_EDIT if differing else None,
                   "; ".join(f"protected file {p} differs from the task's" for p in differing) or "untouched")]
    broken = [pin for pin in task.pins
              if len(re.findall(pin.pattern, program.get(pin.file, b"").decode("utf-8", "replace"), re.M)) != 1]
    out.append(Finding("pinned", Label.ILLEGAL_EDIT if broken else None,
                       "; ".join(f"{p.file}: the pinned line /{p.pattern}/ is gone or changed ({p.why})"
                                 for p in broken) or "pinned lines kept"))
    errors = [_syntax_error(path, data) for path, data in sorted(program.items()) if path.endswith(".py")]
    errors = [e for e in errors if e]
    out.append(Finding("syntax", Label.INVALID_EDIT if errors else None, "; ".join(errors) or "compiles"))
    cap = task.gates.artifact_bytes
    size = sum(len(d) for d in program.values())
    over = cap is not None and size > cap
    out.append(Finding("size", Label.SIZE_VIOLATION if over else None,
                       f"code alone is {size} B, over the {cap} B artifact cap" if over else
                       f"code alone is {size} B" + (f" of the {cap} B cap" if cap is not None else "")))
    return out


def findings(task: Task, surface: str, parent: Program, program: Program, reference: Program, *,
             also: tuple[str, ...] = ()) -> list[Finding]:
    """Every check a proposal would meet, in order: does the edit change anything, scope,
    then the worker's preflight — what the agents' ``check`` tool shows."""
    changed = touched(parent, program)
    return [Finding("changes", None if changed else Label.DUPLICATE,
                    f"touches {', '.join(changed)}" if changed else "the edit changes nothing"),
            scope(task, surface, parent, program, also=also),
            *preflight(task, program, reference)]


def first_failure(found: list[Finding]) -> Finding | None:
    """The finding that decides the label, if any failed."""
    return next((f for f in found if not f.passed), None)


def merged_surfaces(state: State, parents: tuple[str, ...]) -> tuple[str, ...]:
    """The surfaces a merge may touch besides its own: those of the trials that brought
    the merged-in line its changes, i.e. the ancestors of ``parents[1:]`` (through every
    parent: a keep that was itself a merge carries its own parents' changes) that are
    not ancestors of ``parents[0]``, the program the merge starts from."""

    def ancestors(trial: str) -> set[str]:
        seen, todo = set(), [trial]
        while todo:
            t = todo.pop()
            if t in seen or t not in state.trials:
                continue
            seen.add(t)
            todo.extend(state.trials[t].parents)
        return seen

    if len(parents) < 2:
        return ()
    base = ancestors(parents[0])
    brought = set().union(*(ancestors(p) for p in parents[1:])) - base
    return tuple(sorted({state.trials[t].surface for t in brought if state.trials[t].surface}))


def _syntax_error(path: str, data: bytes) -> str | None:
    try:
        compile(data, path, "exec")
    except (SyntaxError, ValueError) as e:
        line = getattr(e, "lineno", None)
        message = e.msg if isinstance(e, SyntaxError) else e
        return f"{path}{f':{line}' if line else ''}: {type(e).__name__}: {message}"
    return None
