"""``arl serve`` at scale: how fast a 100,000-trial search page is interactive, and the server's memory.

    python benchmarks/serve.py [--trials 100000] [--reference 100] [--ledger FILE]

Builds a synthetic ledger (tests.factories.synthetic_search, 6 events a trial)
holding one search of ``--trials`` trials and a reference search of
``--reference`` trials, starts ``arl serve`` on it, and opens both search pages
in the system Chromium (DevTools protocol, tests.browser). Prints, for each:
the server's time for the page's data (/api/search; wall and CPU), the
payload's size, and the time from navigation until the page's script has drawn
every plot and bound its handlers (``body[data-ready=1]``) — target ≤ 2 s for
the large one — with the page's own split (HTML received, then drawn).
Then a trial is labelled in the large search and the time until the open page
redraws with it is printed (target ≤ 2 s). The server's resident memory
(current and peak) is read from /proc.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from arl.ledger import Ledger  # noqa: E402
from arl.ledger import events as ev  # noqa: E402
from arl.ledger.events import Label  # noqa: E402
from tests.browser import Browser  # noqa: E402
from tests.factories import synthetic_search  # noqa: E402

TARGET_S = 2.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of a process, MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _in_page(b: Browser) -> tuple[float, float]:
    """As the page measured itself: seconds from navigation to its HTML received, and from then until drawn."""
    received = b.eval("performance.getEntriesByType('navigation')[0].responseEnd") / 1000
    return received, int(b.eval("document.body.dataset.readyMs")) / 1000 - received


def _build(ledger: Ledger, trials: int, search: str, seed: int) -> None:
    events = synthetic_search(trials, search=search, agents=8, seed=seed)
    for i in range(0, len(events), 5_000):
        ledger.append(*events[i: i + 5_000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--reference", type=int, default=100)
    parser.add_argument("--ledger", metavar="FILE", help="build the synthetic ledger here and keep it; "
                        "reuse it when it is already there (building 100,000 trials takes minutes)")
    args = parser.parse_args()
    large, small = "eeee0000-0000-4000-8000-000000000001", "eeee0000-0000-4000-8000-000000000002"
    with tempfile.TemporaryDirectory(prefix="arl-bench-serve-") as d:
        path = Path(args.ledger).resolve() if args.ledger else Path(d) / "ledger.db"
        url = f"sqlite:///{path}"
        t0 = time.perf_counter()
        reuse = path.exists()
        with Ledger.open(url) as ledger:
            if not reuse:
                _build(ledger, args.reference, small, seed=2)
                _build(ledger, args.trials, large, seed=1)
            head = ledger.head()
        print(f"{'reused' if reuse else 'built'} a synthetic ledger: {args.trials:,} + {args.reference:,} trials, "
              f"{head:,} events in {time.perf_counter() - t0:.1f} s")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
              "(other work on the machine slows every wall-clock figure)\n")
        port = _port()
        base = f"http://127.0.0.1:{port}"
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "arl.runners.cli", "serve", "--store", url, "--port", str(port)],
                                cwd=ROOT, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    if httpx.get(base + "/api/searches", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    raise SystemExit("arl serve exited")
                time.sleep(0.2)
            print(f"{'server start (load into DuckDB)':<44}{time.perf_counter() - t0:8.2f} s   "
                  f"({_cpu_s(proc.pid):.1f} CPU-s)")
            rss, peak = _memory_mb(proc.pid)
            print(f"{'server memory after start':<44}{rss:8.0f} MB resident, peak {peak:.0f} MB\n")
            with Browser(Path(d) / "profile", width=1200, height=900) as b:
                b.open(base + "/")  # a warm browser: the figures are the page's, not Chromium's start
                rows = {}
                for name, sid in (("reference", small), ("large", large)):
                    api, cpu = [], []
                    for _ in range(3):
                        t1, c1 = time.perf_counter(), _cpu_s(proc.pid)
                        r = httpx.get(base + f"/api/search/{sid}", timeout=120)
                        api.append(time.perf_counter() - t1)
                        cpu.append(_cpu_s(proc.pid) - c1)
                    pages, busy = [], []
                    for _ in range(3):
                        pages.append(b.open(base + f"/search/{sid}", timeout=300))
                        busy.append(_in_page(b))
                    n = r.json()["view"]["trials"]  # a kept ledger holds the trials earlier runs added too
                    drawn = b.eval("+document.getElementById('progress-0').dataset.drawn")
                    assert drawn == n, (drawn, n)
                    rows[name] = (n, min(api), min(cpu), len(r.content), min(pages), max(pages), min(busy))
                    assert not b.errors, b.errors
                for name, (n, api, cpu, size, best, worst, (received, drawing)) in rows.items():
                    verdict = "" if name == "reference" else (
                        f"   target ≤ {TARGET_S:.0f} s   {'ok' if worst <= TARGET_S else 'OVER TARGET'}")
                    print(f"{'search page, ' + format(n, ',') + ' trials':<44}{best:8.2f} s interactive "
                          f"(wall, best of 3; worst {worst:.2f} s){verdict}")
                    print(f"{'':<44}  data: {api:.2f} s wall, {cpu:.2f} CPU-s in the server, {size / 1e6:.2f} MB; "
                          f"page (its own clock): HTML in {received:.2f} s, then drawn in {drawing:.2f} s")
                # live: label one more trial of the large search while its page is open
                b.open(base + f"/search/{large}")
                seq = rows["large"][0]  # seqs run 0 … n − 1
                tid = ev.trial_id(large, seq)
                common = {"originator_id": tid, "search_id": large}
                with Ledger.open(url) as ledger:
                    t1 = time.perf_counter()
                    ledger.append(
                        ev.TrialProposed(originator_id=tid, originator_version=1, search_id=large, seq=seq,
                                         agent="agent1", surface="agent1", hypothesis="one more"),
                        ev.TrialEvaluated(**common, originator_version=2, evaluator="golf-mini", score=9.0),
                        ev.TrialLabeled(**common, originator_version=3, label=Label.DISCARD, score=9.0))
                    new_head = ledger.head()
                b.wait_for(f"+document.body.dataset.head >= {new_head} && "
                           f"+document.getElementById('progress-0').dataset.drawn === {seq + 1}", 120)
                live = time.perf_counter() - t1
                print(f"{'label → redrawn on the open large page':<44}{live:8.2f} s   target ≤ {TARGET_S:.0f} s   "
                      f"{'ok' if live <= TARGET_S else 'OVER TARGET'}")
            rss, peak = _memory_mb(proc.pid)
            print(f"{'server memory at the end':<44}{rss:8.0f} MB resident, peak {peak:.0f} MB")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
