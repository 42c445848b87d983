"""Programs: a full set of recipe files, content-addressed.

A program is stored as one blob per file plus a manifest blob (JSON mapping
path → file digest, sorted); the program's digest is the manifest's digest.
Identical programs therefore have identical digests, whoever made them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from ledger.errors import BlobError
from ledger.store import Ledger

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
    import hashlib

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
