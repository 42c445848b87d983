"""Tamper evidence: recompute the event chain and every blob digest.

The writer stores, with each event, a link ``sha256(previous link, event)`` in
notification order (``arl_chain``), and with each blob a link over the blob
digests in insertion order. Verification recomputes both from the stored
bytes and names the first event or blob that was changed, removed or
inserted behind arl's back. A rewrite of the whole tail is only caught by
comparing the head link with one recorded elsewhere (``expect_head``).
"""

from __future__ import annotations

import gc
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import msgspec

from arl.ledger import events as ev
from arl.ledger.store import GENESIS, Ledger, blob_link, record_digest

_refs_decoder = msgspec.json.Decoder(ev.BlobRefs)
_ARL_TOPIC = ev.TOPIC_PREFIX


class Report(msgspec.Struct, kw_only=True):
    events: int = 0
    blobs: int = 0
    head: str = ""
    problem: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(
    ledger: Ledger,
    *,
    expect_head: str | None = None,
    progress: Callable[[int], None] | None = None,
    page: int = 20_000,
) -> Report:
    """Check the whole ledger; the report names the first problem found, if any."""
    with _no_gc():
        return _verify(ledger, expect_head, progress, page)


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
    expect_head: str | None,
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
    if report.problem is None and expect_head and expect_head != report.head:
        report.problem = (
            f"the chain head is {report.head[:16]}…, not the expected {expect_head[:16]}…: "
            "events were removed from or rewritten at the end of the log"
        )
    report.seconds = time.perf_counter() - started
    return report


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
