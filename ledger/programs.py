"""Programs: a full set of recipe files, content-addressed.

A program is stored as one blob per file plus a manifest blob (JSON mapping
path → file digest, sorted); the program's digest is the manifest's digest.
Identical programs therefore have identical digests, whoever made them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from arl.ledger.errors import BlobError
from arl.ledger.store import Ledger

Program = dict[str, bytes]


def check_path(path: str) -> str:
    """A program path must stay inside the program: relative, no '..', no empty parts."""
    p = PurePosixPath(path)
    if p.is_absolute() or not p.parts or any(part in ("..", "", ".") for part in p.parts):
        raise ValueError(f"program path {path!r} is not a relative path inside the program")
    return str(p)


def manifest_bytes(digests: Mapping[str, str]) -> bytes:
    return json.dumps({"files": dict(sorted(digests.items()))}, separators=(",", ":")).encode()


def put_program(ledger: Ledger, files: Mapping[str, bytes]) -> str:
    """Store every file and the manifest; returns the program digest."""
    paths = [check_path(p) for p in files]
    contents = [files[p] for p in files]
    digests = ledger.put_blobs(contents) if contents else []
    manifest = manifest_bytes(dict(zip(paths, digests, strict=True)))
    return ledger.put_blob(manifest)


def program_digest(files: Mapping[str, bytes]) -> str:
    """The digest a program would get, computed without a store."""
    digests = {check_path(p): hashlib.sha256(b).hexdigest() for p, b in files.items()}
    return hashlib.sha256(manifest_bytes(digests)).hexdigest()


def get_program(ledger: Ledger, digest: str) -> Program:
    """Every file of a program, each checked against its digest."""
    try:
        manifest = json.loads(ledger.get_blob(digest))["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise BlobError(f"blob {digest[:16]}… is not a program manifest") from e
    blobs = ledger.get_blobs(list(manifest.values()))
    return {path: blobs[file_digest] for path, file_digest in manifest.items()}


def read_folder(folder: Path) -> Program:
    """A program from a folder on disk (caches and hidden files left out)."""
    out: Program = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and "__pycache__" not in rel.parts and not rel.name.startswith("."):
            out[rel.as_posix()] = path.read_bytes()
    return out


def write_folder(files: Mapping[str, bytes], folder: Path) -> None:
    """Materialize a program into an (empty) folder."""
    for path, data in files.items():
        target = folder / check_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


class ProgramCache:
    """Programs read from one ledger, by digest, the most recent ``size`` kept (thread-safe).

    Programs never change once recorded, so a cached one is always right; every
    reader of programs (driver, worker, tools) goes through one of these.
    """

    def __init__(self, ledger: Ledger, size: int = 256) -> None:
        self.ledger = ledger
        self.size = size
        self._programs: OrderedDict[str, Program] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> Program:
        with self._lock:
            program = self._programs.get(digest)
            if program is not None:
                self._programs.move_to_end(digest)
                return program
        program = get_program(self.ledger, digest)
        with self._lock:
            self._programs[digest] = program
            while len(self._programs) > self.size:
                self._programs.popitem(last=False)
        return program


# --- comparing programs -----------------------------------------------------------


def touched(parent: Mapping[str, bytes], child: Mapping[str, bytes]) -> list[str]:
    """Paths added, removed or changed from parent to child, sorted."""
    return sorted(p for p in parent.keys() | child.keys() if parent.get(p) != child.get(p))


def unified_diff(parent: Mapping[str, bytes], child: Mapping[str, bytes]) -> str:
    """A git-style unified diff of every touched file (binary files named only)."""
    out: list[str] = []
    for path in touched(parent, child):
        a, b = parent.get(path), child.get(path)
        try:
            a_lines = a.decode().splitlines(keepends=True) if a is not None else []
            b_lines = b.decode().splitlines(keepends=True) if b is not None else []
        except UnicodeDecodeError:
            out.append(f"Binary files a/{path} and b/{path} differ\n")
            continue
        out.append(f"diff --git a/{path} b/{path}\n")
        if a is None or b is None:  # lets an empty file's creation or deletion round-trip
            out.append(f"{'new' if a is None else 'deleted'} file mode 100644\n")
        out.extend(
            difflib.unified_diff(
                a_lines, b_lines,
                fromfile=f"a/{path}" if a is not None else "/dev/null",
                tofile=f"b/{path}" if b is not None else "/dev/null",
            )
        )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in out)
