"""Tamper evidence: recompute the event chain, every blob digest and every checkpoint.

The writer stores, with each event, a link ``sha256(previous link, event)`` in
notification order (``arl_chain``), and with each blob a link over the blob
digests in insertion order. Verification recomputes both from the stored
bytes and names the first event or blob that was changed, removed or
inserted behind arl's back. A rewrite that recomputes every link after it is
only caught by comparing with a head noted outside the store: ``anchors``
(see :mod:`ledger.anchors`) give the link expected at earlier positions.
Projection checkpoints are derived state, but a forged one would show what no
event records: each is checked against the chain link of its position and
against a rebuild from the log up to it.
"""

from __future__ import annotations

import gc
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import msgspec

from arl.ledger import events as ev
from arl.ledger.anchors import Anchor, parse_expected
from arl.ledger.projections import State, checkpoint_problem, rebuild_to
from arl.ledger.store import GENESIS, Ledger, blob_link, record_digest

_refs_decoder = msgspec.json.Decoder(ev.BlobRefs)
_ARL_TOPIC = ev.TOPIC_PREFIX


class Report(msgspec.Struct, kw_only=True):
    events: int = 0
    blobs: int = 0
    head: str = ""
    #: The notification id the head is the link of (0 for an empty ledger).
    position: int = 0
    #: Anchors (expected heads at earlier positions) that matched.
    anchors: int = 0
    #: Projection checkpoints compared with a rebuild from the log.
    checkpoints: int = 0
    problem: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(
    ledger: Ledger,
    *,
    expect_head: str | Sequence[str] | None = None,
    anchors: Sequence[Anchor] = (),
    checkpoints: bool = True,
    progress: Callable[[int], None] | None = None,
    page: int = 20_000,
) -> Report:
    """Check the whole ledger; the report names the first problem found, if any.

    ``expect_head`` is ``HEX`` (the current head, as a previous verify printed it)
    or ``HEX@POSITION`` (the head at an earlier position), or several of them;
    ``anchors`` are more of the latter, e.g. from :func:`ledger.anchors.read_anchors`.
    """
    expected = list(anchors)
    current: list[str] = []
    for text in [expect_head] if isinstance(expect_head, str) else expect_head or ():
        head, position = parse_expected(text)
        if position is None:
            current.append(head)
        else:
            expected.append(Anchor(position=position, head=head))
    with _no_gc():
        return _verify(ledger, current, expected, checkpoints, progress, page)


@contextmanager
def _no_gc() -> Iterator[None]:
    """Bulk passes allocate millions of acyclic objects; cyclic GC only slows them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _verify(
    ledger: Ledger,
    current: list[str],
    anchors: list[Anchor],
    checkpoints: bool,
    progress: Callable[[int], None] | None,
    page: int,
) -> Report:
    started = time.perf_counter()
    report = Report()
    refs: dict[str, int] = {}
    report.problem = _verify_events(ledger, report, refs, progress, page)
    blob_digests: set[str] = set()
    if report.problem is None:
        report.problem = _verify_blobs(ledger, report, blob_digests)
    if report.problem is None:
        missing = sorted((nid, d) for d, nid in refs.items() if d not in blob_digests)
        if missing:
            nid, digest = missing[0]
            report.problem = (
                f"event #{nid} names blob {digest[:16]}… which is not in the store "
                f"(removed, or never written); {len(missing)} such reference(s) in all"
            )
    wrong = next((h for h in current if h != report.head), None)
    if report.problem is None and wrong:
        report.problem = (
            f"the chain head is {report.head[:16]}…, not the expected {wrong[:16]}…: "
            "events were removed from or rewritten at the end of the log"
        )
    if report.problem is None:
        report.problem = _verify_anchors(ledger, report, anchors)
    if report.problem is None and checkpoints:
        report.problem = _verify_checkpoints(ledger, report)
    report.seconds = time.perf_counter() - started
    return report


def _verify_anchors(ledger: Ledger, report: Report, anchors: list[Anchor]) -> str | None:
    """Each anchored head against the (already recomputed and matching) link at its position."""
    ledger_id = ledger.ledger_id()
    for anchor in sorted(anchors, key=lambda a: a.position):
        if anchor.ledger and anchor.ledger != ledger_id:
            return (
                f"the anchor of #{anchor.position} was noted for ledger {anchor.ledger[:12]}, and this "
                f"ledger's id is {ledger_id[:12]}: another ledger, or its identity was rewritten"
            )
        if anchor.position > report.position:
            return (
                f"the log ends at #{report.position}, before the anchored #{anchor.position} "
                f"({anchor.at or 'noted earlier'}): events were removed from its end"
            )
        link = ledger.chain_link(anchor.position)
        if link is None:
            return (
                f"event #{anchor.position}, anchored {anchor.at or 'earlier'}, is not in the log: "
                "it was removed"
            )
        if link.hex() != anchor.head:
            return (
                f"the chain at #{anchor.position} is {link.hex()[:16]}…, not the anchored "
                f"{anchor.head[:16]}… ({anchor.at or 'noted earlier'}): events at or before "
                f"#{anchor.position} were rewritten and the chain recomputed"
            )
        report.anchors += 1
    return None


def _verify_checkpoints(ledger: Ledger, report: Report) -> str | None:
    """Every current projection checkpoint: its link, its bytes, and its state against a rebuild."""
    stored = []
    for name in ledger.checkpoint_names():
        row = ledger.load_checkpoint(name)
        if row is None:
            continue
        position, digest, data = row
        problem, state = checkpoint_problem(ledger, name, position, digest, data)
        if problem is not None:
            return f"projection checkpoint {name!r}: {problem}"
        if state is not None:  # (None: a layout of another arl version, never loaded)
            stored.append((position, name, state))
    rebuilt = State()
    for position, name, state in sorted(stored, key=lambda x: x[0]):
        rebuild_to(ledger, rebuilt, position)
        theirs, ours = state.digests(), rebuilt.digests()
        differ = [view for view in ours if theirs[view] != ours[view]]
        if differ:
            return (
                f"projection checkpoint {name!r} at #{position} shows what the log does not record "
                f"(its {', '.join(differ)} differ from a rebuild): it was forged or altered; "
                "`arl store drop-checkpoints` removes checkpoints (they are rebuilt from the log)"
            )
        report.checkpoints += 1
    return None


def _pages(fetch: Callable[[int, int], list], key: Callable, page: int) -> Iterator:
    after = 0
    while rows := fetch(after, page):
        yield from rows
        after = key(rows[-1])


def _verify_events(
    ledger: Ledger,
    report: Report,
    refs: dict[str, int],
    progress: Callable[[int], None] | None,
    page: int,
) -> str | None:
    """Walk the log page by page beside the chain rows covering the same ids."""
    prev = GENESIS
    after = 0
    refs_of = _refs_decoder.decode
    while True:
        events = ledger.read_raw(after, page)
        # The chain rows for the same id range; past the last event, any leftover one.
        chain = ledger.read_chain(after, page + 1, stop=events[-1][0] if events else None)
        if not events and not chain:
            break
        if [e[0] for e in events] != [c[0] for c in chain]:
            return _first_gap(events, chain)
        for (nid, oid, version, topic, state), (_, link) in zip(events, chain):
            prev = record_digest(prev, nid, oid, version, topic, state)
            if prev != link:
                return (
                    f"event #{nid} ({_short_topic(topic)} of stream {oid} v{version}) "
                    "was changed after it was recorded: its bytes do not match the chain"
                )
            # Cheap byte test first: only events with a digest-holding key need decoding.
            if (b'_digest":"' in state or b'"artifacts":{"' in state) and topic.startswith(_ARL_TOPIC):
                try:
                    named = refs_of(state).digests()
                except msgspec.DecodeError as e:
                    return f"event #{nid} ({_short_topic(topic)}) cannot be decoded: {e}"
                for digest in named:
                    refs.setdefault(digest, nid)
        before = report.events
        report.events += len(events)
        if progress and report.events // 100_000 != before // 100_000:
            progress(report.events)
        after = events[-1][0]
    report.head = prev.hex()
    report.position = after
    return None


def _first_gap(events: list, chain: list) -> str:
    """Name the first id present in only one of the two (sorted) lists."""
    event_ids = {e[0]: e for e in events}
    chain_ids = {c[0] for c in chain}
    for nid in sorted(event_ids.keys() | chain_ids):
        if nid not in chain_ids:
            _, oid, version, topic, _ = event_ids[nid]
            return (
                f"event #{nid} ({_short_topic(topic)} of stream {oid} v{version}) "
                "was inserted outside arl: it has no link in the chain"
            )
        if nid not in event_ids:
            return f"event #{nid} was removed: its chain link exists but the event does not"
    raise AssertionError("lists differ but no id is missing")  # pragma: no cover


def _verify_blobs(ledger: Ledger, report: Report, seen: set[str]) -> str | None:
    prev = GENESIS
    rows = _pages(ledger.read_blob_rows, lambda r: r[0], 1_000)
    for seq, digest, data, chain in rows:
        if hashlib.sha256(data).hexdigest() != digest:
            return f"blob {digest[:16]}… (#{seq}) was changed: its bytes no longer match its digest"
        link = blob_link(prev, digest)
        if link != chain:
            return (
                f"blob {digest[:16]}… (#{seq}) does not link to the blob before it: "
                "it was inserted outside arl, or a blob before it was removed"
            )
        prev = link
        seen.add(digest)
        report.blobs += 1
    return None


def _short_topic(topic: str) -> str:
    return topic.rsplit(":", 1)[-1]
