"""The trial worker, for real: purpose-built recipes through a real worker produce every label."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from arl.ledger import Ledger, events as ev
from arl.ledger.events import Label
from arl.ledger.programs import put_program, read_folder
from arl.ledger.projections import rebuild
from arl.runners.sandbox import bwrap_path
from arl.runners.trials import start_search, submit
from arl.runners.worker import Worker
from arl.tasks.manifest import load_task
from tests.needs import require

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "tasks" / "tiny"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def task():
    return load_task(TINY)


def edited(task, **constants) -> dict[str, bytes]:
    program = read_folder(task.recipe_dir)
    src = program["train.py"].decode()
    for name, value in constants.items():
        src, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", src, flags=re.M)
        assert n == 1, name
    program["train.py"] = src.encode()
    return program


def labels_of(ledger, search) -> dict[int, ev.TrialLabeled]:
    out = {}
    for _, e in ledger.iter_events():
        if isinstance(e, ev.TrialLabeled) and e.search_id == search:
            seq = next(p.seq for p in ledger.stream(e.originator_id) if isinstance(p, ev.TrialProposed))
            assert seq not in out, f"trial {seq} labelled twice"
            out[seq] = e
    return out


def test_every_label_from_real_runs(task, sqlite_url):
    base = read_folder(task.recipe_dir)
    cases = {
        1: ("keep", dict(SHRINK=1.0)),
        2: ("discard", dict(SHRINK=0.9)),
        3: ("crash", dict(MODE="crash")),
        4: ("oom", dict(MODE="oom")),
        5: ("diverged", dict(MODE="nan")),
        6: ("train_budget_overrun", dict(SLEEP_S=3.0)),
        7: ("train_budget_overrun", dict(SLEEP_S=30.0)),
        8: ("eval_budget_overrun", dict(EVAL_SLEEP_S=3.0)),
        9: ("size_violation", dict(PAD_BYTES=5000)),
        10: ("gate_miss", dict(SHRINK=0.3)),
        11: ("duplicate", dict(SHRINK=1.0)),
    }
    with Ledger.open(sqlite_url) as ledger:
        search = start_search(ledger, task, name="labels")
        submit(ledger, task, search, 0, agent="baseline", surface="", program=base)
        for seq, (_, constants) in cases.items():
            submit(ledger, task, search, seq, agent="tuner", surface="fit",
                   program=edited(task, **constants), parent_program=base,
                   parents=(ev.trial_id(search, 0),), hypothesis=str(constants))
        # An edit that does not compile, one outside the surface, one of a protected file.
        broken = dict(base, **{"train.py": base["train.py"].replace(b"def main():", b"def main(:")})
        submit(ledger, task, search, 12, agent="tuner", surface="fit", program=broken, parent_program=base)
        submit(ledger, task, search, 13, agent="notes", surface="notes",
               program=edited(task, SHRINK=0.95), parent_program=base)
        protected = dict(base, **{"data_spec.py": b'TRAIN_FILE = "test.json"\n'})
        submit(ledger, task, search, 14, agent="tuner", surface="fit", program=protected, parent_program=base)
        # The same protected change, smuggled past the submitter: the worker's preflight catches it.
        t15 = ev.trial_id(search, 15)
        ledger.append(
            ev.TrialProposed(originator_id=t15, originator_version=1, search_id=search, seq=15,
                             agent="inbox", surface="fit"),
            ev.TrialSubmitted(originator_id=t15, originator_version=2, search_id=search,
                              program_digest=put_program(ledger, protected), seeds=(0,)),
        )

        worker = Worker(ledger, name="w1")
        ran = worker.run(exit_when_idle=True)
        labels = labels_of(ledger, search)

    assert ran == 14  # 0–12 and 15 reach the worker; 13 and 14 were rejected at submission
    assert labels[0].label is Label.BASELINE and labels[0].score > 0
    for seq, (expected, _) in cases.items():
        assert labels[seq].label.value == expected, (seq, labels[seq].reason)
    assert labels[12].label is Label.INVALID_EDIT and "SyntaxError" in labels[12].reason
    assert labels[13].label is Label.OUT_OF_SURFACE and "train.py" in labels[13].reason
    assert labels[14].label is Label.ILLEGAL_EDIT and "data_spec.py" in labels[14].reason
    assert labels[15].label is Label.ILLEGAL_EDIT and "protected file data_spec.py" in labels[15].reason
    # Reasons say what happened and by how much.
    assert "ValueError: boom: the learning rate is negative" in labels[3].reason
    assert "MB limit" in labels[4].reason
    assert "check train_s failed" in labels[6].reason and "over by" in labels[6].reason
    assert "hard limit" in labels[7].reason
    assert "check artifact_bytes failed" in labels[9].reason
    assert "check accuracy failed" in labels[10].reason and "under by" in labels[10].reason
    assert "same program as trial 1" in labels[11].reason
    assert labels[1].improvement and labels[1].delta_vs_best < 0
    # Every run is on the record: RunFinished with measured resources, checks with limits.
    with Ledger.open(sqlite_url) as ledger:
        state = rebuild(ledger)
        finished = [e for _, e in ledger.iter_events() if isinstance(e, ev.RunFinished)]
        evaluated = [e for _, e in ledger.iter_events() if isinstance(e, ev.TrialEvaluated)]
        assert state.searches[search].best_trial == ev.trial_id(search, 1)
        crash = next(e for e in finished if e.originator_id == ev.trial_id(search, 3))
        assert crash.exit_code == 1 and "Traceback" in crash.stderr_tail and crash.wall_s > 0
        assert all(e.log_digest and ledger.get_blob(e.log_digest) for e in finished)
        check = {c.name: c for c in next(e for e in evaluated if e.originator_id == ev.trial_id(search, 9)).checks}
        assert check["artifact_bytes"].limit == 4000 and check["artifact_bytes"].value > 4000
        assert not state.queue


def test_a_keep_within_the_noise_floor_is_confirmed_on_unseen_seeds(task, sqlite_url):
    base = read_folder(task.recipe_dir)
    with Ledger.open(sqlite_url) as ledger:
        search = start_search(ledger, task, name="confirm")
        submit(ledger, task, search, 0, agent="baseline", surface="", program=base)
        submit(ledger, task, search, 1, agent="t", surface="fit", program=edited(task, SHRINK=1.0), parent_program=base)
        submit(ledger, task, search, 2, agent="t", surface="fit", program=edited(task, SHRINK=0.99), parent_program=base)
        Worker(ledger).run(exit_when_idle=True)
        labels = labels_of(ledger, search)
        evaluated = [e for e in ledger.stream(ev.trial_id(search, 2)) if isinstance(e, ev.TrialEvaluated)]
    assert labels[1].label is Label.KEEP and "confirmed" not in labels[1].reason
    assert labels[2].label is Label.KEEP and "confirmed on unseen seeds" in labels[2].reason
    assert evaluated[0].seeds == (0, 1, 100, 101)


WORKER = textwrap.dedent(
    """
    import sys
    from arl.ledger import Ledger
    from arl.runners.worker import Worker
    with Ledger.open(sys.argv[1]) as ledger:
        Worker(ledger, name=sys.argv[2], lease_s=float(sys.argv[3])).run(max_trials=1)
    """
)


@pytest.mark.parametrize("max_attempts, expected", [(2, Label.BASELINE), (1, Label.INFRA_ERROR)])
def test_a_killed_worker_loses_its_lease_and_nothing_is_lost(task, store_url, max_attempts, expected):
    slow = edited(task, SLEEP_S=1.5)
    with Ledger.open(store_url) as ledger:
        search = start_search(ledger, task, name="kill")
        trial = submit(ledger, task, search, 0, agent="baseline", surface="", program=slow, seeds=(0,))
    doomed = subprocess.Popen([sys.executable, "-c", WORKER, store_url, "doomed", "2"], cwd=ROOT,
                              env={**os.environ})
    with Ledger.open(store_url) as ledger:
        deadline = time.monotonic() + 30
        while not any(isinstance(e, ev.TrialClaimed) for e in ledger.stream(trial)):
            assert time.monotonic() < deadline, "the first worker never claimed the trial"
            time.sleep(0.05)
        time.sleep(0.5)  # the recipe is running now
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
        time.sleep(2.1)  # let the 2 s lease run out
        Worker(ledger, name="rescuer", max_attempts=max_attempts).run(exit_when_idle=True)
        stream = ledger.stream(trial)
    kinds = [type(e).__name__ for e in stream]
    assert kinds.count("TrialLabeled") == 1
    assert isinstance(stream[-1], ev.TrialLabeled) and stream[-1].label is expected
    assert kinds[:4] == ["TrialProposed", "TrialSubmitted", "TrialClaimed", "LeaseExpired"]
    if expected is Label.BASELINE:
        assert kinds.count("TrialClaimed") == 2 and kinds.count("RunFinished") == 1
        assert stream[4].runner == "rescuer" and stream[4].attempt == 2
    else:
        assert "runner lost 1 time(s)" in stream[-1].reason


def test_a_recipe_cannot_cheat_its_way_to_a_better_outcome(task, sqlite_url):
    require("sandbox", None if bwrap_path() else "bubblewrap is missing or unusable here (apt-get install bubblewrap; user namespaces must be allowed)")
    evaluator = TINY / "evaluator.py"
    before = evaluator.read_bytes()
    base = read_folder(task.recipe_dir)
    cheat = edited(task, MODE="cheat")
    cheat["train.py"] = cheat["train.py"].replace(
        b'os.environ["CHEAT_EVALUATOR"]', repr(str(evaluator)).encode())
    with Ledger.open(sqlite_url) as ledger:
        search = start_search(ledger, task, name="cheat")
        submit(ledger, task, search, 0, agent="baseline", surface="", program=base)
        submit(ledger, task, search, 1, agent="t", surface="fit", program=cheat, parent_program=base)
        Worker(ledger).run(exit_when_idle=True)
        labels = labels_of(ledger, search)
        run = [e for e in ledger.stream(ev.trial_id(search, 1)) if isinstance(e, ev.RunFinished)][0]
    assert evaluator.read_bytes() == before
    assert run.sandbox == "bwrap"
    assert "cannot peek" in run.stdout_tail and "cannot rewrite evaluator" in run.stdout_tail
    # Same constants as the baseline → the same score, whatever the recipe claimed.
    assert labels[1].label is Label.DISCARD
    assert labels[1].score == pytest.approx(labels[0].score)


def test_gpu_trials_go_to_a_slot_with_that_many_devices(tmp_path, sqlite_url):
    import shutil

    folder = tmp_path / "gpu-tiny"
    shutil.copytree(TINY, folder)
    manifest = folder / "task.toml"
    manifest.write_text(manifest.read_text().replace("[run]", "[needs]\ngpus = 2\n\n[run]", 1))
    recipe = folder / "recipe" / "train.py"
    recipe.write_text(recipe.read_text().replace(
        "    print(f\"fitted w={w:.4f}\")",
        "    print(f\"fitted w={w:.4f}\")\n    print('devices', os.environ.get('CUDA_VISIBLE_DEVICES'))"))
    task = load_task(folder)
    with Ledger.open(sqlite_url) as ledger:
        search = start_search(ledger, task, name="gpu")
        trial = submit(ledger, task, search, 0, agent="baseline", surface="",
                       program=read_folder(task.recipe_dir), seeds=(0,))
        assert Worker(ledger, name="cpu-only").run(exit_when_idle=True) == 0
        assert Worker(ledger, name="one-gpu", devices=["3"]).run(exit_when_idle=True) == 0
        assert Worker(ledger, name="two-gpus", devices=["4", "5"]).run(exit_when_idle=True) == 1
        run = next(e for e in ledger.stream(trial) if isinstance(e, ev.RunFinished))
        claim = next(e for e in ledger.stream(trial) if isinstance(e, ev.TrialClaimed))
    assert claim.runner == "two-gpus" and "devices 4,5" in run.stdout_tail
