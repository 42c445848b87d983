"""Anchors: chain heads noted outside the store, so tamper evidence survives the store's owner.

The hash chain catches any change behind arl's back *unless* whoever changed
the log also recomputed every link after it — which the owner of an SQLite
file or of the PostgreSQL tables can do. What they cannot do is change a head
that was copied somewhere they do not control. An anchor is one line,

    arl-anchor ledger=<ledger id> head=<64 hex>@<position> at=<UTC time>

that ``arl anchor`` prints (to publish: a commit, a chat message, a mail) and
appends to a file; ``arl verify --anchors FILE`` (or ``--expect-head
HEX@POSITION``) then checks that the link at that position is still that head.
A rewrite at or before an anchored position, or the removal of the anchored
event, fails verification. Any text holding anchor lines can be read back:
lines that are not anchors are skipped, so a saved chat log works as a file.

Heads are not signed: a signature by a key on the owner's machine proves
nothing against the owner; a copy of the line held by someone else does.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from arl.ledger.errors import ArlError

_LINE = re.compile(r"arl-anchor ledger=([0-9a-f]{1,64}) head=([0-9a-f]{64})@(\d+)(?: at=(\S+))?")
_EXPECT = re.compile(r"([0-9a-fA-F]{64})(?:@(\d+))?")


class AnchorError(ArlError):
    """An anchor or an expected head cannot be read."""


class Anchor(msgspec.Struct, frozen=True, kw_only=True):
    """The chain head of one ledger at one position (a notification id)."""

    position: int
    head: str
    ledger: str = ""  # the ledger's id (arl_meta ledger_id); "" when given by hand
    at: str = ""

    def line(self) -> str:
        """The anchor as one line to publish and to keep."""
        return f"arl-anchor ledger={self.ledger} head={self.head}@{self.position} at={self.at}"


def anchor_now(ledger_id: str, position: int, head: str) -> Anchor:
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Anchor(position=position, head=head, ledger=ledger_id, at=at)


def parse_expected(text: str) -> tuple[str, int | None]:
    """``HEX@POSITION`` (the head at that position) or ``HEX`` (the current head)."""
    match = _EXPECT.fullmatch(text.strip())
    if match is None:
        raise AnchorError(
            f"--expect-head {text!r}: give the 64-hex chain head, optionally @POSITION "
            "(as `arl verify` and `arl anchor` print it), e.g. 2873b017…a44@42"
        )
    return match.group(1).lower(), int(match.group(2)) if match.group(2) is not None else None


def read_anchors(path: Path) -> list[Anchor]:
    """Every anchor line in a file (other lines are skipped); a file without one is an error."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        raise AnchorError(f"cannot read anchors from {path}: {e.strerror}; give the file `arl anchor --to` wrote") from e
    anchors = [Anchor(ledger=m.group(1), head=m.group(2), position=int(m.group(3)), at=m.group(4) or "")
               for m in _LINE.finditer(text)]
    if not anchors:
        raise AnchorError(f"{path} holds no anchor line (arl-anchor ledger=… head=…@N); "
                          "`arl anchor --to FILE` writes them")
    return anchors


def append_anchor(path: Path, anchor: Anchor) -> None:
    """Add one anchor line to ``path`` (created if missing; never through a symbolic link)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise AnchorError(f"cannot append to {path}: {e.strerror}; give a regular file you can write") from e
    with os.fdopen(fd, "a") as f:
        f.write(anchor.line() + "\n")
