"""The inbox backend: proposal files dropped into a real folder, watched with watchfiles."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from arl.agents.inbox import Inbox, InboxError, ingested
from arl.agents.lineage import LineageView, TrialLine
from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.ledger.events import Label
from arl.ledger.programs import read_folder
from arl.ledger.projections import rebuild
from arl.runners.search import SearchConfig, run_search
from arl.runners.trials import record_next, start_search, submit
from arl.tasks.manifest import load_task

TINY = Path(__file__).resolve().parent / "tasks" / "tiny"

DIFF = """--- a/train.py
+++ b/train.py
@@ -8,3 +8,3 @@
 from data_spec import TRAIN_FILE
 
-SHRINK = 0.8        # multiplies the fitted slope (1.0 is the honest fit)
+SHRINK = 0.9        # multiplies the fitted slope (1.0 is the honest fit)
"""


def drop(folder: Path, name: str, content: str | dict, mtime: int | None = None) -> Path:
    """Write like a well-behaved tool: a hidden temp file, then an atomic rename."""
    text = json.dumps(content) if isinstance(content, dict) else content
    tmp = folder / f".{name}.tmp"
    tmp.write_text(text)
    if mtime is not None:
        os.utime(tmp, ns=(mtime, mtime))
    return tmp.replace(folder / name)


def edits_file(value: str, **extra) -> dict:
    return {"specialist": "fit", "hypothesis": f"shrink {value}", "parent": "best",
            "edits": [{"file": "train.py", "search": "SHRINK = 0.8", "replace": f"SHRINK = {value}"}],
            **extra}


def marker(path: Path, kind: str) -> str | None:
    m = path.with_name(f"{path.name}.{kind}")
    return m.read_text().strip() if m.exists() else None


@pytest.fixture
def task():
    return load_task(TINY)


@pytest.fixture
def ledger(tmp_path) -> Iterator[Ledger]:
    with Ledger.open(f"sqlite:///{tmp_path / 'l.db'}") as led:
        yield led


@pytest.fixture
def folder(tmp_path) -> Path:
    f = tmp_path / "inbox"
    f.mkdir()
    return f


@pytest.fixture
def view_for(task):
    program = read_folder(task.recipe_dir)
    other = dict(program, **{"train.py": program["train.py"].replace(b"NOISE = 0.01", b"NOISE = 0.02")})
    programs = {"t-best": program, "t-other": other}

    def view_for(specialist: str, parent: str | None) -> LineageView:
        parent = parent or "t-best"
        if parent not in programs:
            raise KeyError(f"{parent} is not a trial of this search with a program")
        best = TrialLine(seq=0, trial_id=parent, agent="baseline", surface="", hypothesis="",
                         label="baseline", score=0.5, delta_vs_best=None, reason="")
        return LineageView(search_id="s", task="tiny", metric="mse", direction="min", noise_floor=0.02,
                           specialist=specialist, surface=specialist, lineage=True, best=best,
                           best_program=programs[parent])

    return view_for


def take_all(inbox: Inbox, view_for) -> list:
    out = []
    while (p := inbox.next(view_for)) is not None:
        out.append(p)
    return out


def test_files_present_before_start_are_ingested_in_order_and_invalid_ones_rejected(
        task, ledger, folder, view_for):
    t = 1_700_000_000_000_000_000
    good_json = drop(folder, "b-good.json", edits_file("1.0", expected_delta=-0.2), mtime=t)
    good_toml = drop(folder, "a-good.toml", f'specialist = "fit"\nhypothesis = "shrink 0.9"\n'
                                            f'parent = "t-other"\ndiff = """\n{DIFF}"""\n', mtime=t + 1)
    cases = {
        "broken.json": ('{"specialist": "fit", "hypo', "not valid JSON"),
        "broken.toml": ('specialist = "fit"\nhypothesis = ', "not valid TOML"),
        "unknown.json": ({**edits_file("1.0"), "specialist": "opt"},
                         "specialist 'opt' is not a surface of task tiny; use one of fit, notes"),
        "missing.json": ({"specialist": "fit", "diff": DIFF}, "hypothesis: missing"),
        "typo.json": ({**edits_file("1.0"), "expected_detla": 1}, "expected_detla: unknown key"),
        "both.json": ({**edits_file("1.0"), "diff": DIFF}, "give exactly one of diff"),
        "orphan.json": (edits_file("1.0", parent="nope"),
                        "parent 'nope': nope is not a trial of this search with a program"),
        "empty.json": (edits_file("1.0", hypothesis="  "), "hypothesis is empty"),
    }
    for i, (name, (content, _)) in enumerate(cases.items()):
        drop(folder, name, content, mtime=t + 10 + i)
    escape = drop(folder, "escape.json", {"specialist": "fit", "hypothesis": "out", "edits": [
        {"file": "../../etc/cron.d/x", "search": "", "replace": "* * * * * root sh"}]}, mtime=t + 100)
    drop(folder, "ignored.txt", "not a proposal")
    drop(folder, "half.json.tmp", "{")

    with Inbox(folder, task, ledger.put_blob, lambda d: False) as inbox:
        proposals = take_all(inbox, view_for)

    assert [p.hypothesis for p in proposals] == ["shrink 1.0", "shrink 0.9", "out"]
    first, second, third = proposals
    assert first.program is not None and b"SHRINK = 1.0 " in first.program["train.py"]
    assert (first.agent, first.surface, first.backend, first.parents, first.expected_delta) == (
        "fit", "fit", "inbox", ("t-best",), -0.2)
    assert ledger.get_blob(first.agent_call_digest) == good_json.read_bytes()
    # The explicit parent is the one edited.
    assert second.parents == ("t-other",) and second.program is not None
    assert b"SHRINK = 0.9 " in second.program["train.py"] and b"NOISE = 0.02" in second.program["train.py"]
    assert ledger.get_blob(second.agent_call_digest) == good_toml.read_bytes()
    # A well-formed proposal whose edit cannot be made is a labelled trial-to-be, and says so.
    assert third.program is None and third.rejected is not None
    assert third.rejected[0] is Label.INVALID_EDIT and third.rejected[1].startswith("path traversal")
    assert marker(escape, "rejected").startswith("recorded as an invalid_edit trial: path traversal")

    for name, (_, why) in cases.items():
        assert why in (marker(folder / name, "rejected") or ""), name
    assert marker(good_json, "rejected") is None and marker(good_toml, "rejected") is None
    assert not (folder / "ignored.txt.rejected").exists() and not (folder / "half.json.tmp.rejected").exists()


def test_files_dropped_after_start_are_picked_up_by_the_watcher(task, ledger, folder, view_for):
    with Inbox(folder, task, ledger.put_blob, lambda d: False) as inbox:
        assert inbox.next(view_for) is None
        assert inbox.wait(0.3) is False

        late = drop(folder, "late.json", edits_file("1.1"))
        assert inbox.wait(30)
        p = inbox.next(view_for)
        assert p is not None and p.hypothesis == "shrink 1.1" and p.program is not None

        drop(folder, "late-bad.toml", "specialist = 'fit'")
        assert inbox.wait(30)
        assert inbox.next(view_for) is None
    assert "hypothesis: missing" in marker(folder / "late-bad.toml", "rejected")
    assert ledger.get_blob(p.agent_call_digest) == late.read_bytes()


def test_a_restart_ingests_nothing_twice(task, ledger, folder, view_for):
    drop(folder, "one.json", edits_file("1.0"))
    drop(folder, "bad.json", "{")
    search = start_search(ledger, task, name="inbox")
    with Inbox(folder, task, ledger.put_blob, ingested(ledger).__contains__) as inbox:
        first = take_all(inbox, view_for)
    base = read_folder(task.recipe_dir)
    for seq, p in enumerate(first, 1):  # recorded as the driver records them
        record_next(search, lambda: rebuild(ledger), lambda n, p=p: submit(
            ledger, task, search, n, agent=p.agent, surface=p.surface, program=p.program, parent_program=base,
            hypothesis=p.hypothesis, backend=p.backend, agent_call_digest=p.agent_call_digest))
    assert len(first) == 1
    # Fix the rejected file in place: its .rejected marker still stands until removed.
    drop(folder, "bad.json", edits_file("0.7"))
    # The same bytes under another name are the same proposal.
    drop(folder, "copy.json", (folder / "one.json").read_text())

    with Inbox(folder, task, ledger.put_blob, ingested(ledger).__contains__) as inbox:
        assert take_all(inbox, view_for) == []
        assert "already ingested" in marker(folder / "copy.json", "accepted")
        (folder / "bad.json.rejected").unlink()
        drop(folder, "bad.json", edits_file("0.6"))
        assert inbox.wait(30)
        again = take_all(inbox, view_for)
    assert [p.hypothesis for p in again] == ["shrink 0.6"]


def test_a_missing_folder_is_one_line_with_the_fix(task, ledger, tmp_path):
    with pytest.raises(InboxError, match="inbox folder .* does not exist; create it"):
        Inbox(tmp_path / "nope", task, ledger.put_blob, lambda d: False)


def test_arl_run_with_the_inbox_records_files_as_trials_once(task, folder, tmp_path, monkeypatch):
    """The real search driver and worker: files become labelled trials; a second search skips them."""
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    t = 1_700_000_000_000_000_000
    drop(folder, "junk.json", "[1, 2", mtime=t)
    drop(folder, "keep.json", edits_file("1.0"), mtime=t + 1)
    drop(folder, "notes.toml", 'specialist = "notes"\nhypothesis = "write it down"\n'
                               'edits = [{file = "NOTES.md", search = "", replace = "x"}]\n', mtime=t + 2)
    url = f"sqlite:///{tmp_path / 'run.db'}"
    config = SearchConfig(trials=2, agents="inbox", inbox=str(folder))

    with Ledger.open(url) as ledger:
        summary = run_search(ledger, str(TINY), config, name="inbox-1", out=io.StringIO())
        assert summary.charged == 2
        by_seq = _trials(ledger, summary.search_id)
    assert by_seq[0][1] is Label.BASELINE
    assert by_seq[1][0].hypothesis == "shrink 1.0" and by_seq[1][1] is Label.KEEP
    # NOTES.md exists: an empty search for an existing file cannot be applied.
    assert by_seq[2][0].hypothesis == "write it down" and by_seq[2][1] is Label.INVALID_EDIT
    assert marker(folder / "keep.json", "accepted").startswith("trial #1 (")
    assert "recorded as an invalid_edit trial" in marker(folder / "notes.toml", "rejected")
    assert "not valid JSON" in marker(folder / "junk.json", "rejected")
    for proposed, _ in by_seq.values():
        if proposed.backend == "inbox":
            digest = hashlib.sha256((folder / ("keep.json" if proposed.seq == 1 else "notes.toml"))
                                    .read_bytes()).hexdigest()
            assert proposed.agent_call_digest == digest

    # A new search on the same ledger and folder takes only the new file.
    def later() -> None:
        drop(folder, "new.json", edits_file("0.95"))

    timer = threading.Timer(1.0, later)
    timer.start()
    with Ledger.open(url) as ledger:
        summary = run_search(ledger, str(TINY), SearchConfig(trials=1, agents="inbox", inbox=str(folder)),
                             name="inbox-2", out=io.StringIO())
        by_seq = _trials(ledger, summary.search_id)
    timer.join()
    assert sorted(by_seq) == [0, 1]
    assert by_seq[1][0].hypothesis == "shrink 0.95" and by_seq[1][1] is not None
    # The last file of a search is marked as soon as it is a trial, not at a next call that never comes.
    assert marker(folder / "new.json", "accepted").startswith(f"trial #1 ({by_seq[1][0].originator_id})")


def _trials(ledger: Ledger, search: str) -> dict[int, tuple[ev.TrialProposed, Label | None]]:
    proposed: dict[str, ev.TrialProposed] = {}
    labels: dict[str, Label] = {}
    for _, e in ledger.iter_events():
        if isinstance(e, ev.TrialProposed) and e.search_id == search:
            proposed[e.originator_id] = e
        elif isinstance(e, ev.TrialLabeled) and e.search_id == search:
            assert e.originator_id not in labels, "a trial labelled twice"
            labels[e.originator_id] = e.label
    return {p.seq: (p, labels.get(t)) for t, p in proposed.items()}


# --- hostile folders: links where files should be -----------------------------------------


def test_a_symlinked_or_hard_linked_proposal_is_rejected_unread(task, ledger, folder, view_for, tmp_path):
    secret = tmp_path / "secret.json"  # outside the inbox, shaped like a proposal
    secret.write_text(json.dumps(edits_file("1.0")))
    (folder / "link.json").symlink_to(secret)
    os.link(secret, folder / "hard.json")
    os.mkfifo(folder / "pipe.json")  # would block a plain open() forever
    with Inbox(folder, task, ledger.put_blob, lambda d: False) as inbox:
        assert take_all(inbox, view_for) == []
    assert "symbolic link" in marker(folder / "link.json", "rejected")
    assert "2 hard links" in marker(folder / "hard.json", "rejected")
    assert marker(folder / "pipe.json", "rejected") is None  # not a file: passed over, never opened
    assert not ledger.has_blob(hashlib.sha256(secret.read_bytes()).hexdigest())  # never recorded


def test_a_link_planted_at_a_marker_or_its_temp_name_is_replaced_not_followed(
        task, ledger, folder, view_for, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    drop(folder, "bad.json", "{")
    ok = drop(folder, "ok.json", edits_file("1.0"))
    # The fixed temp name markers were written through before, and a dangling link at a marker's name.
    (folder / ".bad.json.rejected.tmp").symlink_to(victim)
    (folder / "ok.json.accepted").symlink_to(tmp_path / "created-by-arl")
    with Inbox(folder, task, ledger.put_blob, lambda d: False) as inbox:
        [proposal] = take_all(inbox, view_for)
        inbox.accepted(hashlib.sha256(ok.read_bytes()).hexdigest(), "trial #1")
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "created-by-arl").exists()
    for name, text in (("bad.json.rejected", "not valid JSON"), ("ok.json.accepted", "trial #1")):
        assert not (folder / name).is_symlink() and text in (folder / name).read_text(), name
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
