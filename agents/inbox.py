"""The ``inbox`` backend: proposals dropped as files into a watched folder.

Any external agent, tool or person can take part in a search by writing a
proposal file (``*.json`` or ``*.toml``) into the folder::

    specialist = "fit"                # a surface of the task
    hypothesis = "fit the slope honestly"
    parent = "best"                   # or a trial id of the search
    expected_delta = -0.3             # optional, in the objective's units
    diff = '''
    --- a/train.py
    +++ b/train.py
    @@ ...
    '''
    # or instead of diff: edits = [{file = "train.py", search = "SHRINK = 0.8", replace = "SHRINK = 1.0"}]

Write the file under another name first (``x.json.tmp`` or a dot-file) and
rename it into place: a rename is atomic, so the inbox never reads half a file.
A proposal must be a regular file with one name: a symbolic link (or a second
hard link to a file elsewhere) is rejected unread, so a link cannot make arl
record a file it was not handed. Markers are written through a new temporary
file (``O_EXCL|O_NOFOLLOW``) renamed into place, so a link planted where a
marker or its temporary file will go is replaced, never followed.

A file that cannot be read as a proposal (bad syntax, missing keys, unknown
specialist or parent) gets ``<file>.rejected`` saying why, and is never
retried while that file exists. A well-formed proposal whose edit does not
apply is recorded as an ``invalid_edit`` trial (it gets ``.rejected`` too);
every other one becomes a trial, and ``<file>.accepted`` names it. The file's
bytes are the proposal's agent-call blob: a file whose digest the ledger
already holds is skipped, so a restarted search ingests nothing twice.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import watchfiles

from arl.agents.base import Proposal, SearchSeat
from arl.agents.edits import EditError, apply_search_replace, apply_unified_diff
from arl.agents.lineage import LineageView, TrialLine, build_view
from arl.ledger import events as ev
from arl.ledger.errors import ArlError
from arl.ledger.events import Label
from arl.ledger.store import Ledger
from arl.tasks.manifest import Surface, Task

SUFFIXES = (".json", ".toml")
#: Bigger files are refused: a proposal is a hypothesis and an edit, not a data set.
MAX_FILE_BYTES = 1 << 20

#: ``view_for(specialist, parent)``: the specialist's lineage view whose ``best`` and
#: ``best_program`` are the trial to edit — the current best when ``parent`` is None.
ViewFor = Callable[[str, str | None], LineageView]


class InboxError(ArlError):
    """The inbox folder cannot be used; the message names it and the fix."""


class _Edit(msgspec.Struct, forbid_unknown_fields=True):
    file: str
    replace: str
    search: str = ""


class ProposalFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The schema of a proposal file."""

    specialist: str
    hypothesis: str
    parent: str = "best"
    expected_delta: float | None = None
    diff: str | None = None
    edits: list[_Edit] | None = None


class _Invalid(Exception):
    """The file is not a usable proposal; args[0] is the one-line reason."""


class Inbox:
    """A watched folder of proposal files. Use as a context manager (or start()/close())."""

    backend = "inbox"

    def __init__(
        self,
        folder: Path,
        task: Task,
        put_blob: Callable[[bytes], str],
        seen: Callable[[str], bool],
        *,
        debounce_ms: int = 50,
        force_polling: bool | None = None,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InboxError(f"inbox folder {self.folder} does not exist; create it (mkdir -p) or "
                             "pass another --inbox")
        self.task = task
        self.put_blob = put_blob
        self.seen = seen
        self.debounce_ms = debounce_ms
        self.force_polling = force_polling
        self._pending: list[Path] = []
        #: Digests of the files taken by this process.
        self._used: set[str] = set()
        #: Digest → file of proposals handed out and not yet confirmed as recorded.
        self.handed: dict[str, Path] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Inbox:
        """Start watching, then take the files already there (nothing falls in between)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name=f"inbox {self.folder}", daemon=True)
            self._thread.start()
            self._ready.wait(10)
            existing = sorted((p for p in self.folder.iterdir() if _candidate(p)),
                              key=lambda p: (p.stat().st_mtime_ns, p.name))
            self._add(existing)
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Inbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _watch(self) -> None:
        try:
            for changes in watchfiles.watch(
                self.folder, watch_filter=lambda _change, path: _candidate(Path(path)),
                debounce=self.debounce_ms, step=20, rust_timeout=200, yield_on_timeout=True,
                stop_event=self._stop, recursive=False, force_polling=self.force_polling,
            ):
                self._ready.set()  # the first (possibly empty) batch: the watcher is live
                arrived = sorted({Path(p) for change, p in changes if change != watchfiles.Change.deleted},
                                 key=lambda p: p.name)
                self._add([p for p in arrived if p.is_file()])
        except BaseException as e:  # noqa: BLE001 - reported by wait()/next() in the caller's thread
            self._failure = e
            self._ready.set()
            with self._cond:
                self._cond.notify_all()

    def _add(self, paths: list[Path]) -> None:
        with self._cond:
            for p in paths:
                if p not in self._pending:
                    self._pending.append(p)
            if paths:
                self._cond.notify_all()

    def _check_watcher(self) -> None:
        if self._failure is not None:
            raise InboxError(f"watching {self.folder} failed ({self._failure}); "
                             "on a network filesystem pass force_polling") from self._failure

    # -- taking proposals ---------------------------------------------------------------------

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a file is pending (True) or ``timeout`` seconds pass (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._failure is not None, timeout)
            self._check_watcher()
            return bool(self._pending)

    def next(self, view_for: ViewFor, *, specialist: str | None = None) -> Proposal | None:
        """The next pending proposal (of ``specialist`` if given), or None when none is pending."""
        self._check_watcher()
        with self._cond:
            queue = list(self._pending)
        for path in queue:
            result = self._take(path, view_for, specialist)
            if result is not None:
                return result
        return None

    def _take(self, path: Path, view_for: ViewFor, specialist: str | None) -> Proposal | None:
        def finish() -> None:
            with self._cond:
                if path in self._pending:
                    self._pending.remove(path)

        if not path.is_file() or _marker(path, "rejected").exists() or _marker(path, "accepted").exists():
            finish()
            return None
        try:
            data = _read_proposal(path)
        except _Invalid as e:
            finish()
            _write_marker(path, "rejected", str(e.args[0]))
            return None
        except OSError as e:
            finish()
            _write_marker(path, "rejected", f"cannot read the file: {e}")
            return None
        digest = hashlib.sha256(data).hexdigest()
        if digest in self._used or self.seen(digest):
            finish()
            if self.handed.get(digest) != path:  # (that one is marked once the driver records it)
                _write_marker(path, "accepted", "already ingested: a proposal with these exact bytes "
                              "was taken before")
            return None
        try:
            spec = self._parse(path, data)
        except _Invalid as e:
            finish()
            _write_marker(path, "rejected", str(e.args[0]))
            return None
        if specialist is not None and spec.specialist != specialist:
            return None  # another specialist's: stays pending
        try:
            view = view_for(spec.specialist, None if spec.parent == "best" else spec.parent)
        except (ArlError, KeyError) as e:
            finish()
            why = e.args[0] if isinstance(e, KeyError) and e.args else e
            _write_marker(path, "rejected", f"parent {spec.parent!r}: {_one_line(why)}")
            return None
        if view.best is None or not view.best_program:
            if spec.parent != "best":
                finish()
                _write_marker(path, "rejected", f"parent {spec.parent!r} is not a trial of this search "
                              "with a program; use a trial id from `arl status` or \"best\"")
            return None  # no best yet: stays pending until the baseline is measured
        finish()
        self._used.add(digest)
        self.handed[digest] = path
        proposal = Proposal(
            agent=spec.specialist, surface=spec.specialist, hypothesis=spec.hypothesis.strip(),
            expected_delta=spec.expected_delta, parents=(view.best.trial_id,), backend=self.backend,
            agent_call_digest=self.put_blob(data),
        )
        try:
            if spec.edits is not None:
                proposal.program = apply_search_replace(
                    view.best_program, [(e.file, e.search, e.replace) for e in spec.edits])
            else:
                proposal.program = apply_unified_diff(view.best_program, spec.diff or "")
        except EditError as e:
            proposal.rejected = (Label.INVALID_EDIT, str(e))
            _write_marker(path, "rejected", f"recorded as an invalid_edit trial: {e}")
        return proposal

    def _parse(self, path: Path, data: bytes) -> ProposalFile:
        if len(data) > MAX_FILE_BYTES:
            raise _Invalid(f"the file is over {MAX_FILE_BYTES} bytes; a proposal is a hypothesis and an edit")
        try:
            if path.suffix == ".toml":
                raw: Any = tomllib.loads(data.decode())
            else:
                raw = msgspec.json.decode(data)
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, msgspec.DecodeError) as e:
            kind = "TOML" if path.suffix == ".toml" else "JSON"
            raise _Invalid(f"not valid {kind} ({_one_line(e)}); write the file whole, then rename it "
                           "into the folder") from None
        try:
            spec = msgspec.convert(raw, ProposalFile)
        except msgspec.ValidationError as e:
            raise _Invalid(f"{_explain(e)}; keys: specialist, hypothesis, parent, expected_delta, "
                           "diff or edits") from None
        surfaces = [s.name for s in self.task.surfaces]
        if spec.specialist not in surfaces:
            raise _Invalid(f"specialist {spec.specialist!r} is not a surface of task {self.task.name}; "
                           f"use one of {', '.join(surfaces)}")
        if not spec.hypothesis.strip():
            raise _Invalid("hypothesis is empty; say what the edit should do and why")
        if (spec.diff is None) == (spec.edits is None):
            raise _Invalid("give exactly one of diff (a unified diff) or edits "
                           "(a list of {file, search, replace})")
        return spec

    def accepted(self, digest: str, note: str) -> None:
        """Mark a handed-out proposal's file as recorded (``note``: which trial it became)."""
        path = self.handed.pop(digest, None)
        if path is not None and not _marker(path, "rejected").exists():
            _write_marker(path, "accepted", note)


def _candidate(path: Path) -> bool:
    return path.suffix in SUFFIXES and not path.name.startswith(".")


def _marker(path: Path, kind: str) -> Path:
    return path.with_name(f"{path.name}.{kind}")


def _read_proposal(path: Path) -> bytes:
    """The bytes of a proposal file, opened without following a link; _Invalid if it is not one plain file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _Invalid("the file is a symbolic link; write the proposal itself into the folder "
                           "(links are not followed)") from None
        raise
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _Invalid("not a regular file; write the proposal as a plain file")
        if info.st_nlink != 1:
            raise _Invalid(f"the file has {info.st_nlink} hard links; write the proposal as a file of its "
                           "own (a link to a file elsewhere is not read)")
        return f.read(MAX_FILE_BYTES + 1)


def _write_marker(path: Path, kind: str, text: str) -> None:
    target = _marker(path, kind)
    # A fresh, unguessable temporary name, created only if nothing (no planted link) is there.
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError:
        return  # a read-only inbox still works; the ledger is the record
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_one_line(text) + "\n")
        os.replace(tmp, target)  # replaces a link at the marker's name; never writes through it
    except OSError:
        tmp.unlink(missing_ok=True)


def _one_line(e: object) -> str:
    return " ".join(str(e).split())


def _explain(e: msgspec.ValidationError) -> str:
    """msgspec's "Expected `str`, got `int` - at `$.hypothesis`" as "hypothesis: expected str, got int"."""
    text = str(e).replace("`", "")
    problem, _, where = text.partition(" - at $")
    where = where.lstrip(".")
    if problem.startswith("Object missing required field"):
        field = problem.split()[-1]
        return f"{where + '.' if where else ''}{field}: missing"
    if problem.startswith("Object contains unknown field"):
        return f"{where + '.' if where else ''}{problem.split()[-1]}: unknown key"
    return f"{where or 'the file'}: {problem[:1].lower()}{problem[1:]}"


# --- the inbox as the search driver's team -------------------------------------------------------


class InboxSpecialist:
    """One surface's share of the inbox, for the search driver's round robin.

    ``propose`` returns this surface's next pending file. When nothing at all is
    pending it first waits (up to ``wait_s``; None: until a file arrives or the
    search is interrupted) so the search does not end while the inbox is quiet.
    """

    backend = "inbox"

    def __init__(self, inbox: Inbox, surface: Surface, view_for: ViewFor, *, search_id: str = "",
                 wait_s: float | None = None) -> None:
        self.inbox = inbox
        self.surface = surface
        self.name = surface.name
        self.view_for = view_for
        self.search_id = search_id
        self.wait_s = wait_s

    def recorded(self, proposal: Proposal, trial_id: str, seq: int) -> None:
        """The driver recorded this proposal as a trial: its file's marker names the trial now,
        not at the next call (the last file of a search is marked too)."""
        if proposal.agent_call_digest:
            where = f" of search {self.search_id}" if self.search_id else ""
            self.inbox.accepted(proposal.agent_call_digest, f"trial #{seq} ({trial_id}){where}")

    def propose(self, view: LineageView) -> Proposal | None:
        if not self.inbox.pending():
            # Wake at least every second so Ctrl-C reaches the main thread promptly.
            waited = 0.0
            while not self.inbox.wait(1.0):
                waited += 1.0
                if self.wait_s is not None and waited >= self.wait_s:
                    return None

        def view_for(specialist: str, parent: str | None) -> LineageView:
            # The driver's view is this surface's, with the best as parent: reuse it.
            return view if (specialist, parent) == (self.name, None) else self.view_for(specialist, parent)

        return self.inbox.next(view_for, specialist=self.name)


def ingested(ledger: Ledger) -> set[str]:
    """The digests of every inbox file the ledger already holds as a proposal (any search)."""
    return {e.agent_call_digest for _, e in ledger.iter_events()
            if isinstance(e, ev.TrialProposed) and e.backend == "inbox" and e.agent_call_digest}


class InboxTeam:
    """Builds the inbox specialists of a search (``arl run --agents inbox --inbox FOLDER``)."""

    @staticmethod
    def build(task: Task, folder: Path, search: SearchSeat, *, wait_s: float | None = None) -> list[InboxSpecialist]:
        ledger = search.ledger
        inbox = Inbox(folder, task, ledger.put_blob, ingested(ledger).__contains__).start()

        def view_for(specialist: str, parent: str | None) -> LineageView:
            state = search.projector.catch_up()
            view = build_view(state, search.search_id, specialist=specialist, surface=specialist,
                              metric=task.objective.metric, program_of=search.program_of,
                              lineage=search.lineage)
            if parent is None:
                return view
            row = state.trials.get(parent)
            if row is None or row.search_id != search.search_id or row.program_digest is None:
                raise KeyError(f"{parent} is not a trial of this search with a program")
            view.best = TrialLine.of(row)
            view.best_program = search.program_of(parent)
            return view

        return [InboxSpecialist(inbox, s, view_for, search_id=search.search_id, wait_s=wait_s)
                for s in task.surfaces]
