"""Task manifests: typed, and every mistake is one line naming the key and what is expected."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arl.tasks.manifest import TaskError, load_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "tasks" / "tiny"


@pytest.fixture
def tiny_copy(tmp_path) -> Path:
    folder = tmp_path / "tiny"
    shutil.copytree(TINY, folder)
    return folder


def _rewrite(folder: Path, old: str, new: str) -> None:
    manifest = folder / "task.toml"
    text = manifest.read_text()
    assert old in text, old
    manifest.write_text(text.replace(old, new, 1))


def test_the_tiny_task_loads_typed(tiny_copy):
    task = load_task(tiny_copy)
    assert task.objective.direction == "min" and task.budgets.train_s == 2.5
    assert task.surface("fit").knobs[0].name == "SHRINK"
    assert task.is_protected("data_spec.py") and not task.is_protected("train.py")
    assert task.budget().memory_mb == 200 and task.seeds == [0, 1]
    before = task.digest()
    (tiny_copy / "recipe" / "NOTES.md").write_text("changed")
    assert load_task(tiny_copy).digest() != before  # the digest covers the recipe


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("train_s = 2.5", 'train_s = "fast"', "budgets.train_s: expected float, got str"),
        ("train_s = 2.5", "train_seconds = 2.5", "budgets: unknown key train_seconds; check its spelling"),
        ('metric = "mse"\n', "", "objective.metric: missing; this key is required"),
        ('direction = "min"', 'direction = "down"', "objective.direction: expected one of 'min', 'max'"),
        ('files = ["train.py"]', 'files = ["model.py"]', "surfaces.fit.files: model.py is not a file of recipe/"),
        ('name = "SHRINK"', 'name = "SHRINKAGE"', "surfaces.fit.knobs.SHRINKAGE: no line `SHRINKAGE = …` in train.py"),
        ("confirm_seeds = [100, 101]", "confirm_seeds = [1, 100]", "confirm_seeds: must be disjoint from seeds"),
        ("wallclock_s = 6", "wallclock_s = 1", "budgets.wallclock_s: must be at least budgets.train_s"),
        ('files = ["NOTES.md"]', 'files = ["data_spec.py"]', "surfaces.notes.files: data_spec.py is protected"),
        ("[run]", "[run\n", "not valid TOML"),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(tiny_copy, old, new, message):
    _rewrite(tiny_copy, old, new)
    with pytest.raises(TaskError) as info:
        load_task(tiny_copy)
    text = str(info.value)
    assert message.lower() in text.lower(), text
    assert "\n" not in text and text.startswith(str(tiny_copy / "task.toml"))


def test_missing_pieces_of_a_task_folder(tiny_copy):
    (tiny_copy / "evaluator.py").unlink()
    with pytest.raises(TaskError, match="evaluator.py is missing"):
        load_task(tiny_copy)
    with pytest.raises(TaskError, match="has no task.toml"):
        load_task(tiny_copy / "recipe")


def test_cli_lists_tasks_and_checks_a_folder(tiny_copy, tmp_path):
    env = {"ARL_CACHE": str(tmp_path / "cache"), "ARL_TASK_PATH": str(tiny_copy.parent),
           "PATH": "/usr/bin:/bin"}
    arl = [sys.executable, "-m", "arl.runners.cli"]
    listed = subprocess.run([*arl, "tasks"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert listed.returncode == 0 and (listed.stdout.startswith("tiny") or "\ntiny" in listed.stdout)
    ok = subprocess.run([*arl, "task", "check", "tiny"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "base program: baseline, mse = " in ok.stdout and "pass  accuracy" in ok.stdout
    _rewrite(tiny_copy, "train_s = 2.5", "train_s = 0.001\nwallclock_s_ = 1")
    bad = subprocess.run([*arl, "task", "check", str(tiny_copy)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "budgets: unknown key wallclock_s_" in bad.stderr and "Traceback" not in bad.stderr


def test_threads_loading_one_evaluator_at_once_all_get_it_whole(tiny_copy):
    # In-process workers load the evaluator from several threads; a slow import used to
    # hand the second thread a half-executed module ("defines no evaluate(ctx)").
    import threading

    from arl.tasks.code import load_evaluator

    evaluator = tiny_copy / "evaluator.py"
    evaluator.write_text("import time\ntime.sleep(0.3)\n" + evaluator.read_text())
    task = load_task(tiny_copy)
    results, barrier = [], threading.Barrier(4)

    def load():
        barrier.wait()
        try:
            results.append(load_evaluator(task).digest)
        except Exception as e:  # noqa: BLE001 — the assertion below names it
            results.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and isinstance(results[0], str), results
