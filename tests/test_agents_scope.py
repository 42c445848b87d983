"""Scope is enforced, not prompted: files outside the surface, and knobs of other surfaces."""

from __future__ import annotations

from arl.tasks import legality
from arl.tasks.knobs import set_constant
from arl.ledger.events import Label
from arl.tasks.manifest import load_task


def scope_violation(task, surface, parent, child, also=()):
    """legality.scope as (label, reason), None when the edit is in scope."""
    found = legality.scope(task, surface, parent, child, also=also)
    return None if found.passed else (found.label, found.detail)

RECIPE = b"EPOCHS = 10\nLR = 0.01\n\ndef train():\n    return EPOCHS * LR\n"

TASK = """
name = "shared"
description = "two surfaces share one file"
protected = ["data.txt"]
[run]
command = ["{python}", "train.py"]
[objective]
metric = "loss"
direction = "min"
[budgets]
train_s = 10
eval_s = 5
wallclock_s = 20
[[surfaces]]
name = "sched"
description = "schedule"
files = ["train.py"]
knobs = [{ name = "EPOCHS", file = "train.py", type = "int", min = 1, max = 40 }]
[[surfaces]]
name = "opt"
description = "optimiser"
files = ["train.py"]
knobs = [{ name = "LR", file = "train.py", type = "float", min = 0.0001, max = 1.0, log = true }]
techniques = [{ name = "long_run", set = { EPOCHS = 30, LR = 0.005 } }]
[[surfaces]]
name = "docs"
description = "notes"
files = ["NOTES.md"]
"""


def _task(tmp_path):
    folder = tmp_path / "shared"
    (folder / "recipe").mkdir(parents=True)
    (folder / "task.toml").write_text(TASK)
    (folder / "recipe" / "train.py").write_bytes(RECIPE)
    (folder / "recipe" / "NOTES.md").write_text("notes\n")
    (folder / "recipe" / "data.txt").write_text("data\n")
    (folder / "evaluator.py").write_text("def evaluate(ctx): ...\n")
    (folder / "data.py").write_text("def prepare(cache): ...\n")
    return load_task(folder)


def test_knobs_decide_ownership_inside_a_shared_file(tmp_path):
    task = _task(tmp_path)
    base = {"train.py": RECIPE, "NOTES.md": b"notes\n", "data.txt": b"data\n"}
    own = dict(base, **{"train.py": set_constant(RECIPE, "LR", 0.02)})
    assert scope_violation(task, "opt", base, own) is None
    foreign = dict(base, **{"train.py": set_constant(RECIPE, "LR", 0.02)})
    label, reason = scope_violation(task, "sched", base, foreign)
    assert label is Label.OUT_OF_SURFACE and "LR (owned by surface opt)" in reason
    # A technique the surface declares may set another surface's knob: the task allowed it.
    technique = dict(base, **{"train.py": set_constant(set_constant(RECIPE, "EPOCHS", 30), "LR", 0.005)})
    assert scope_violation(task, "opt", base, technique) is None
    assert scope_violation(task, "sched", base, technique)[0] is Label.OUT_OF_SURFACE
    # A merge of both surfaces' keeps may touch both.
    both = dict(base, **{"train.py": set_constant(set_constant(RECIPE, "EPOCHS", 20), "LR", 0.02)})
    assert scope_violation(task, "sched", base, both)[0] is Label.OUT_OF_SURFACE
    assert scope_violation(task, "sched", base, both, also=("opt",)) is None


def test_other_files_and_protected_files(tmp_path):
    task = _task(tmp_path)
    base = {"train.py": RECIPE, "NOTES.md": b"notes\n", "data.txt": b"data\n"}
    label, reason = scope_violation(task, "docs", base, dict(base, **{"train.py": b"x = 1\n"}))
    assert label is Label.OUT_OF_SURFACE and "train.py" in reason
    label, reason = scope_violation(task, "docs", base, dict(base, **{"data.txt": b"poison\n"}))
    assert label is Label.ILLEGAL_EDIT and "data.txt" in reason
    label, _ = scope_violation(task, "docs", base, dict(base, **{"new.py": b"x = 1\n"}))
    assert label is Label.OUT_OF_SURFACE


def test_a_merge_may_touch_every_surface_on_the_way_to_the_merged_keep():
    # #5 (artifact) merged #1 (arch) into #3 (data); merging #5 into another best carries
    # arch's change too, so arch is allowed alongside artifact and data (the seen bug:
    # "the edit changes D_MODEL (owned by surface arch)").
    from types import SimpleNamespace

    from arl.tasks.legality import merged_surfaces

    rows = {"t0": ("", ()), "t1": ("arch", ("t0",)), "t3": ("data", ("t0",)),
            "t5": ("artifact", ("t3", "t1")), "t6": ("arch", ("t0",))}
    trials = {k: SimpleNamespace(surface=s, parents=p) for k, (s, p) in rows.items()}

    state = SimpleNamespace(trials=trials)
    assert merged_surfaces(state, ("t6", "t5")) == ("arch", "artifact", "data")
    # Only what the merged-in line brought: merging #6 into #5 brings arch alone
    # (#5's own ancestry is where the merge starts, so data and artifact are not added).
    assert merged_surfaces(state, ("t5", "t6")) == ("arch",)
    assert merged_surfaces(state, ("t5",)) == ()
