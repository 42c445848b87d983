"""Edits between programs: what changed, and whether the proposer was allowed to change it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from arl.ledger.errors import ArlError
from arl.ledger.programs import check_path


# --- applying edits ------------------------------------------------------------


class EditError(ArlError):
    """An edit cannot be applied; the message names the file, the block or hunk, and why."""


def _path(path: str) -> str:
    try:
        return check_path(path.strip())
    except ValueError:
        raise EditError(f"path traversal: {path!r} is not a relative path inside the program") from None


def _text(program: Mapping[str, bytes], path: str) -> str:
    try:
        return program[path].decode()
    except UnicodeDecodeError:
        raise EditError(f"{path} is not UTF-8 text; it cannot be edited as text") from None


def apply_search_replace(
    program: Mapping[str, bytes], blocks: Sequence[tuple[str, str, str]]
) -> dict[str, bytes]:
    """Apply (file, search, replace) blocks in order; returns the new program.

    ``search`` must occur exactly once in the file (trailing whitespace of each
    line is forgiven when the exact text is absent). An empty ``search`` for a
    file that does not exist creates it with ``replace``.
    """
    out = dict(program)
    for n, (file, search, replace) in enumerate(blocks, 1):
        path = _path(file)
        if path not in out:
            if search:
                raise EditError(f"block {n}: {path} is not a file of the program; "
                                "to create it, give an empty search text")
            out[path] = replace.encode()
            continue
        if not search:
            raise EditError(f"block {n}: empty search text for the existing file {path}; "
                            "give the exact text to replace")
        text = _text(out, path)
        out[path] = _replace_once(text, search, replace, f"block {n} of {path}").encode()
    return out


def _replace_once(text: str, search: str, replace: str, where: str) -> str:
    count = text.count(search)
    if count == 1:
        return text.replace(search, replace, 1)
    if count > 1:
        raise EditError(f"{where}: the search text occurs {count} times; "
                        "include more surrounding lines so it occurs once")
    # Models often get trailing spaces or the final newline wrong: match line by line, rstripped.
    lines = text.split("\n")
    want = search.strip("\n").split("\n")
    hits = _find_lines(lines, want, fuzzy=True)
    if len(hits) != 1:
        problem = "not found" if not hits else f"found {len(hits)} times"
        raise EditError(f"{where}: the search text is {problem}; copy it exactly from the file")
    start = hits[0]
    new = replace.strip("\n").split("\n") if replace.strip("\n") else []
    return "\n".join(lines[:start] + new + lines[start + len(want):])


def _find_lines(lines: Sequence[str], want: Sequence[str], *, fuzzy: bool) -> list[int]:
    if not want:
        return []
    norm = (lambda s: s.rstrip()) if fuzzy else (lambda s: s)
    first = norm(want[0])
    target = [norm(w) for w in want]
    return [
        i for i in range(len(lines) - len(want) + 1)
        if norm(lines[i]) == first and [norm(x) for x in lines[i:i + len(want)]] == target
    ]


class _Line(NamedTuple):
    op: str            # " ", "-" or "+"
    text: str
    no_newline: bool   # followed by "\\ No newline at end of file"
    bare: bool         # an empty line without its leading space (models drop it)


class _Hunk:
    def __init__(self, old_start: int | None) -> None:
        self.old_start = old_start
        self.lines: list[_Line] = []

    def side(self, ops: str) -> list[str]:
        return [ln.text for ln in self.lines if ln.op in ops]

    def no_newline(self, ops: str) -> bool:
        """Whether the last line of this side carries a "No newline at end of file" marker."""
        mine = [ln for ln in self.lines if ln.op in ops]
        return bool(mine) and mine[-1].no_newline


class _FilePatch:
    def __init__(self, old: str | None, new: str | None) -> None:
        self.old, self.new = old, new
        self.hunks: list[_Hunk] = []


_HUNK = re.compile(r"^@@+ *-(\d+)(?:,(\d+))? +\+(\d+)(?:,(\d+))? *@@")


def apply_unified_diff(program: Mapping[str, bytes], diff_text: str) -> dict[str, bytes]:
    """Apply a unified diff (git-style or plain ``---``/``+++``, any number of files).

    Hunks are located by their context, not by the line numbers in their
    headers (models get the counts wrong), searching nearest to the header's
    line first. Raises :class:`EditError` naming the hunk and file that fail.
    """
    patches = _parse_diff(diff_text, program)
    if not patches:
        raise EditError("the diff has no file changes; expected '--- a/FILE' and '+++ b/FILE' "
                        "headers followed by '@@' hunks")
    out = dict(program)
    for patch in patches:
        if patch.new is None:
            if patch.old not in out:
                raise EditError(f"the diff deletes {patch.old}, which is not a file of the program")
            del out[patch.old]
            continue
        if patch.old is None:
            if patch.new in out:
                raise EditError(f"the diff creates {patch.new}, which already exists; "
                                "diff against the existing file instead")
            lines: list[str] = []
            eol = True
        else:
            if patch.old not in out:
                raise EditError(f"the diff edits {patch.old}, which is not a file of the program")
            lines = _text(out, patch.old).split("\n")
            eol = lines[-1] == ""
            if eol:
                lines.pop()
        lines, eol = _apply_hunks(lines, eol, patch)
        if patch.old is not None:
            del out[patch.old]  # a rename writes the new path below
        out[patch.new] = ("\n".join(lines) + ("\n" if eol and lines else "")).encode()
    return out


def _apply_hunks(lines: list[str], eol: bool, patch: _FilePatch) -> tuple[list[str], bool]:
    name = patch.new or patch.old
    offset = 0  # how far earlier hunks moved the file's lines
    floor = 0   # hunks apply in order: never before the previous hunk's end
    for n, hunk in enumerate(patch.hunks, 1):
        old, new = hunk.side(" -"), hunk.side(" +")
        if not old:
            # A pure insertion: the header's line number is all there is to go on.
            at = min(max((hunk.old_start or 0) + offset, floor), len(lines))
        else:
            hint = max((hunk.old_start or 1) - 1 + offset, floor)
            found = _locate(lines, old, hint, floor)
            if found is None:
                raise EditError(f"hunk {n} of {name} does not apply: its context and removed "
                                f"lines (from {old[0].strip()[:60]!r}) are not in the file")
            at = found
        touches_end = at + len(old) >= len(lines)
        lines = lines[:at] + new + lines[at + len(old):]
        if touches_end:
            if hunk.no_newline(" +"):
                eol = False
            elif hunk.no_newline(" -"):
                eol = True
        offset += len(new) - len(old)
        floor = at + len(new)
    return lines, eol


def _locate(lines: Sequence[str], old: Sequence[str], hint: int, floor: int) -> int | None:
    for fuzzy in (False, True):
        hits = [i for i in _find_lines(lines, old, fuzzy=fuzzy) if i >= floor]
        if hits:
            return min(hits, key=lambda i: (abs(i - hint), i))
    return None


def _parse_diff(diff_text: str, program: Mapping[str, bytes]) -> list[_FilePatch]:
    lines = diff_text.replace("\r\n", "\n").split("\n")
    patches: list[_FilePatch] = []
    current: _FilePatch | None = None
    hunk: _Hunk | None = None
    # A git section ("diff --git") that may end without ---/+++ headers: an empty file made or deleted.
    git: tuple[str, str] | None = None
    git_mode = ""

    def close_git_section() -> None:
        if git is not None and current is None and git_mode:
            old, new = git
            patches.append(_FilePatch(None, _path(new)) if git_mode == "new" else _FilePatch(_path(old), None))

    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.startswith("--- ") and nxt.startswith("+++ "):
            current = _FilePatch(*_header_paths(line[4:], nxt[4:], program))
            patches.append(current)
            hunk, git, git_mode = None, None, ""
            i += 2
            continue
        if line.startswith("diff --git "):
            close_git_section()
            hunk, current, git_mode = None, None, ""
            git = _git_paths(line[len("diff --git "):])
        elif line.startswith(("Binary files ", "GIT binary patch")):
            raise EditError(f"the diff has a binary change ({line.strip()[:80]}); "
                            "binary files cannot be edited by a diff")
        elif git is not None and line.startswith("new file mode"):
            git_mode = "new"
        elif git is not None and line.startswith("deleted file mode"):
            git_mode = "deleted"
        elif line.startswith("@@"):
            if current is None:
                raise EditError(f"a hunk ({line.strip()[:40]}) comes before any '--- a/FILE' and "
                                "'+++ b/FILE' headers; say which file it edits")
            m = _HUNK.match(line)
            hunk = _Hunk(int(m.group(1)) if m else None)
            current.hunks.append(hunk)
        elif hunk is not None:
            if line[:1] in (" ", "-", "+"):
                hunk.lines.append(_Line(line[0], line[1:], False, False))
            elif line.startswith("\\"):
                if hunk.lines:
                    hunk.lines[-1] = hunk.lines[-1]._replace(no_newline=True)
            elif line == "":
                hunk.lines.append(_Line(" ", "", False, True))
            else:
                hunk = None  # prose between or after hunks
        i += 1
    close_git_section()
    for patch in patches:
        for h in patch.hunks:
            while h.lines and h.lines[-1].bare:  # blank lines closing a diff are not context
                h.lines.pop()
        patch.hunks = [h for h in patch.hunks if h.lines]
    return patches


def _strip_prefix(path: str, prefix: str, program: Mapping[str, bytes], git_style: bool) -> str:
    """Drop git's a/ or b/ unless the prefixed path is itself a file of the program."""
    if path.startswith(prefix) and path not in program and (git_style or path[2:] in program):
        return path[len(prefix):]
    return path


def _header_path(raw: str) -> str | None:
    # Plain diff puts a tab and a timestamp after the name; some tools quote names.
    path = raw.split("\t", 1)[0].strip()
    if len(path) >= 2 and path[0] == path[-1] == '"':
        path = path[1:-1]
    return None if path == "/dev/null" else path


def _header_paths(old_raw: str, new_raw: str, program: Mapping[str, bytes]) -> tuple[str | None, str | None]:
    old, new = _header_path(old_raw), _header_path(new_raw)
    if old is None and new is None:
        raise EditError("a file header says /dev/null on both sides; name the file")
    git_style = (old is None or old.startswith("a/")) and (new is None or new.startswith("b/"))
    if old is not None:
        old = _strip_prefix(old, "a/", program, git_style)
    if new is not None:
        new = _strip_prefix(new, "b/", program, git_style)
    return (_path(old) if old is not None else None), (_path(new) if new is not None else None)


def _git_paths(rest: str) -> tuple[str, str]:
    parts = rest.strip().split(" ")
    old = parts[0][2:] if parts[0].startswith("a/") else parts[0]
    new = parts[-1][2:] if parts[-1].startswith("b/") else parts[-1]
    return old, new
