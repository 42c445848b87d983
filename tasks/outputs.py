"""Reading what a recipe wrote without following anything it made.

A recipe owns its workspace and ``ARL_OUT``; the worker and the evaluators, which run
outside the sandbox, read them afterwards. Anything there other than folders and
regular files is the recipe's way out: a symbolic link resolves outside the sandbox
(``labels.npy -> the held-out labels``, ``env -> /proc/self/environ``), a named pipe
blocks its reader, a socket is a channel to a process, a device is a device. So every
walk here uses ``lstat`` and every open ``O_NOFOLLOW`` on each path component; such
entries are never read, never copied, never stored, and :func:`check` names them so
the trial fails (``illegal_edit``: the program reached for something the task does not
give it — charged to the budget, and not a crash, since the run itself finished).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

from arl.ledger.events import Check, Label

__all__ = ["OutputError", "call_folder", "check", "copy_tree", "files", "open_file", "read_bytes", "strange"]

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 20


class OutputError(ValueError):
    """A recipe's output is not a regular file under its folder."""


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "not a regular file"


def _walk(folder: Path, rel: str = ""):
    """(relative path, lstat result) of every entry under ``folder``, links never followed."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        path = f"{rel}{entry.name}"
        st = entry.stat(follow_symlinks=False)
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(Path(entry.path), path + "/")


def files(folder: Path, *, skip: tuple[str, ...] = ()) -> list[tuple[str, int]]:
    """Every regular file under ``folder`` as (relative path, size), never through a link;
    parts named in ``skip`` (e.g. ``__pycache__``) are left out."""
    return [(path, st.st_size) for path, st in _walk(Path(folder))
            if stat.S_ISREG(st.st_mode) and not set(path.split("/")) & set(skip)]


def strange(folder: Path) -> list[str]:
    """Each entry under ``folder`` that is neither a folder nor a regular file, described."""
    return [f"{path} ({_kind(st.st_mode)})" for path, st in _walk(Path(folder))
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode))]


def check(folders: dict[str, Path]) -> Check:
    """The ``outputs`` check over named folders (e.g. ``{"ARL_OUT": out, "workspace": ws}``):
    passes when each holds only folders and regular files."""
    found = [f"{name}/{entry}" for name, folder in folders.items() for entry in strange(folder)]
    detail = ("; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
              + " — write regular files only: links, pipes, sockets and devices are never read"
              ) if found else ""
    return Check(name="outputs", passed=not found, value=float(len(found)), limit=0.0,
                 detail=detail[:500], fails_as=Label.ILLEGAL_EDIT)


def _open(root: Path, rel: str) -> int:
    """A descriptor of the regular file ``root/rel``, each component opened without following links."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise OutputError(f"{rel!r} does not name a file under {root}")
    fd = os.open(root, _OPEN_DIR)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, _OPEN_DIR, dir_fd=fd)
            except OSError as e:
                raise OutputError(f"{rel}: {part} is not a plain folder ({e.strerror})") from None
            os.close(fd)
            fd = nxt
        try:
            file_fd = os.open(parts[-1], _OPEN_FILE, dir_fd=fd)
        except OSError as e:
            raise OutputError(f"{rel}: cannot open without following links ({e.strerror})") from None
    finally:
        os.close(fd)
    mode = os.fstat(file_fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(file_fd)
        raise OutputError(f"{rel} is {_kind(mode)}")
    return file_fd


def open_file(root: Path, rel: str) -> BinaryIO:
    """The regular file ``root/rel`` opened for reading; :class:`OutputError` for anything else."""
    return os.fdopen(_open(Path(root), rel), "rb")


def read_bytes(root: Path, rel: str) -> bytes:
    """The bytes of the regular file ``root/rel``; :class:`OutputError` for anything else."""
    with open_file(root, rel) as f:
        return f.read()


def copy_tree(src: Path, dst: Path) -> None:
    """Copy the folders and regular files under ``src`` into a new folder ``dst``; anything
    else raises :class:`OutputError` naming it. ``dst`` is made here, so it cannot already be
    a link someone planted."""
    src, dst = Path(src), Path(dst)
    found = strange(src)
    if found:
        raise OutputError(f"{src.name} holds {'; '.join(found[:3])}: links, pipes, sockets and devices are never copied")
    os.mkdir(dst)
    for path, st in _walk(src):
        target = dst / path
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(target)
            continue
        fd = _open(src, path)
        with os.fdopen(fd, "rb") as f_in, open(target, "xb") as f_out:
            while chunk := f_in.read(_CHUNK):
                f_out.write(chunk)


def call_folder(scratch: Path, workspace: Path, out: Path) -> Path:
    """A fresh folder under ``scratch`` for one evaluation call of a program: ``program/`` (a copy
    of its workspace) and ``model/`` (a copy of its ARL_OUT), regular files only. Give the call
    only this folder to write: no call then sees another's inputs or leaves anything for it.
    Raises :class:`OutputError` when a copy meets anything but folders and regular files."""
    call = Path(scratch) / f"call-{secrets.token_hex(8)}"
    call.mkdir()
    copy_tree(Path(workspace), call / "program")
    copy_tree(Path(out), call / "model")
    return call
