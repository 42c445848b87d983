"""Starting searches and putting trials into them: the writer side of the queue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agents.edits import scope_violation, unified_diff
from ledger import source_version
from ledger import events as ev
from ledger.programs import put_program
from ledger.store import Ledger, hostname
from tasks.adapters import bind
from tasks.manifest import Task, TaskError
from tasks.registry import resolve


def task_of(started: ev.SearchStarted, *, need_recipe: bool = True) -> Task:
    """The task a search runs, bound to its recorded checkout and data, checked unchanged."""
    task = bind(resolve(started.config.get("task_path") or started.task), recorded=started.config,
                need_recipe=need_recipe)
    if task.digest() != started.task_digest:
        raise TaskError(
            f"task {task.name} at {task.root} changed since search {started.originator_id[:8]} started "
            f"(digest {task.digest()[:12]}…, recorded {started.task_digest[:12]}…); "
            "restore the task folder or start a new search"
        )
    return task


def start_search(
    ledger: Ledger,
    task: Task,
    *,
    name: str,
    config: Mapping[str, Any] | None = None,
    kind: str = "search",
    origin_search: str | None = None,
    origin_trial: str | None = None,
) -> str:
    """Record SearchStarted; returns the new search id."""
    search = ev.new_search_id()
    ledger.append(
        ev.SearchStarted(
            originator_id=search, originator_version=1, name=name, task=task.name,
            task_digest=task.digest(), direction=task.objective.direction,
            noise_floor=task.objective.noise_floor,
            config={"task_path": task.root, **(config or {})},
            arl_version=source_version(), host=hostname(), kind=kind,
            origin_search=origin_search, origin_trial=origin_trial,
        )
    )
    return search


def merged_surfaces(state, parents: tuple[str, ...]) -> tuple[str, ...]:
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


def submit(
    ledger: Ledger,
    task: Task,
    search: str,
    seq: int,
    *,
    agent: str,
    surface: str,
    program: Mapping[str, bytes],
    parent_program: Mapping[str, bytes] | None = None,
    parents: tuple[str, ...] = (),
    hypothesis: str = "",
    expected_delta: float | None = None,
    backend: str = "",
    agent_call_digest: str | None = None,
    seeds: tuple[int, ...] | None = None,
    also_surfaces: tuple[str, ...] = (),
    seen_position: int | None = None,
) -> str:
    """Record a proposal; submit it for running, or reject it if it breaks scope.

    Seq 0 is the search's baseline: the base program, with no parent and no surface.
    """
    trial = ev.trial_id(search, seq)
    parent_program = parent_program if parent_program is not None else program
    diff = unified_diff(parent_program, program)
    edit_digest = ledger.put_blob(diff.encode()) if diff else None
    proposed = ev.TrialProposed(
        originator_id=trial, originator_version=1, search_id=search, seq=seq, agent=agent,
        surface=surface, parents=parents, hypothesis=hypothesis, expected_delta=expected_delta,
        backend=backend, edit_digest=edit_digest, agent_call_digest=agent_call_digest,
        seen_position=seen_position,
    )
    violation = (
        scope_violation(task, surface, parent_program, program, also=also_surfaces) if seq != 0 else None
    )
    if violation is not None:
        label, reason = violation
        ledger.append(
            proposed,
            ev.EditRejected(originator_id=trial, originator_version=2, search_id=search,
                            check="scope", reason=reason),
            ev.TrialLabeled(originator_id=trial, originator_version=3, search_id=search,
                            label=label, reason=reason),
        )
        return trial
    ledger.append(
        proposed,
        ev.TrialSubmitted(
            originator_id=trial, originator_version=2, search_id=search,
            program_digest=put_program(ledger, program), budget=task.budget(),
            seeds=tuple(seeds if seeds is not None else task.seeds),
        ),
    )
    return trial


def record_rejection(
    ledger: Ledger,
    search: str,
    seq: int,
    *,
    agent: str,
    surface: str,
    label: ev.Label,
    reason: str,
    parents: tuple[str, ...] = (),
    hypothesis: str = "",
    expected_delta: float | None = None,
    backend: str = "",
    agent_call_digest: str | None = None,
    check: str = "edit",
    seen_position: int | None = None,
) -> str:
    """Record a proposal whose output never became a program, with its label and reason."""
    trial = ev.trial_id(search, seq)
    ledger.append(
        ev.TrialProposed(
            originator_id=trial, originator_version=1, search_id=search, seq=seq, agent=agent,
            surface=surface, parents=parents, hypothesis=hypothesis, expected_delta=expected_delta,
            backend=backend, agent_call_digest=agent_call_digest, seen_position=seen_position,
        ),
        ev.EditRejected(originator_id=trial, originator_version=2, search_id=search,
                        check=check, reason=reason),
        ev.TrialLabeled(originator_id=trial, originator_version=3, search_id=search,
                        label=label, reason=reason),
    )
    return trial
