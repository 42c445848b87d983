"""Many MCP clients against one search on PostgreSQL: no trial lost or doubled, sql stays quick.

    python benchmarks/mcp_load.py [--clients 24] [--rounds 3] [--servers 2] [--slots 4]
                                  [--pg postgresql://postgres@127.0.0.1:5432/postgres]

A fresh PostgreSQL database holds one search of a probe task (each trial sleeps
``--sleep`` s). ``--servers`` `arl mcp --transport http` processes serve it;
``--clients`` MCP clients, each with a token of its own, spread over them, each
``--rounds`` times submit a distinct edit and wait for its label, while
``--slots`` worker slots (`arl worker` processes) run the trials. Meanwhile a
probe client runs ``sql`` every 100 ms. Printed: submissions acknowledged
against trials recorded and distinct trial numbers (every submission one trial,
no number twice), and the sql latency while waits were pending beside the same
query's latency measured in the same run with no client connected (target:
p99 <= 1 s while waits are pending).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import httpx2  # noqa: E402
import msgspec  # noqa: E402
import psycopg  # noqa: E402
from mcp import ClientSession, types  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from benchmarks.worker import make_probe_task  # noqa: E402
from arl.ledger import Ledger, events as ev  # noqa: E402
from arl.ledger.programs import read_folder  # noqa: E402
from arl.ledger.store import StoreURL  # noqa: E402
from arl.runners.tokens import TokenFile  # noqa: E402
from arl.runners.trials import start_search, submit  # noqa: E402
from arl.tasks.manifest import load_task  # noqa: E402

PROBE_SQL = "SELECT state, count(*) AS n FROM trials GROUP BY state ORDER BY state"


class LoadResult(msgspec.Struct, kw_only=True):
    clients: int
    rounds: int
    servers: int
    acknowledged: list[str]  # trial ids the clients were given
    refused: list[str]  # submit errors (rate limit, budget): none expected
    proposed: list[str]  # trial ids recorded with backend mcp
    seqs: list[int]  # every trial number recorded in the search
    labelled: int  # of the acknowledged, how many got a label their client waited for
    sql_busy_ms: list[float]  # sql latency while at least one wait was pending
    sql_idle_ms: list[float]  # the same query, no client connected
    sql_errors: list[str]
    waits_pending: list[int]  # at each busy sample
    seconds: float


def measure(pg_admin: str, *, clients: int = 24, rounds: int = 3, servers: int = 2, slots: int = 4,
            sleep: float = 0.5, tmp: Path | None = None, budget: int | None = None) -> LoadResult:
    """Run the load once against a fresh database (created and dropped here).

    ``budget``: the search's trial budget (default: room for every submission); below the
    submissions, the servers must refuse the rest between them."""
    admin = StoreURL.parse(pg_admin)
    name = f"arl_mcp_load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(host=admin.host, port=admin.port, user=admin.user, password=admin.password,
                         dbname=admin.dbname, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://{admin.user}@{admin.host}:{admin.port}/{name}"
    try:
        with tempfile.TemporaryDirectory(prefix="arl-mcp-load-") as scratch:
            return _measure(url, Path(tmp or scratch), clients, rounds, servers, slots, sleep, budget)
    finally:
        with psycopg.connect(host=admin.host, port=admin.port, user=admin.user, password=admin.password,
                             dbname=admin.dbname, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                         "AND pid <> pg_backend_pid()", (name,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _measure(url: str, tmp: Path, clients: int, rounds: int, servers: int, slots: int,
             sleep: float, budget: int | None = None) -> LoadResult:
    task_dir = make_probe_task(tmp / "task", sleep)
    task = load_task(task_dir)
    with Ledger.open(url) as ledger:
        search = start_search(ledger, task, name="mcp-load",
                              config={"trials": budget or clients * rounds + 10, "lineage": True})
        submit(ledger, task, search, 0, agent="baseline", surface="", program=read_folder(task.recipe_dir))
    tokens_file = TokenFile(tmp / "tokens.jsonl")
    tokens = [tokens_file.add(f"client-{i:02d}", specialist="sleep") for i in range(clients)]
    probe_token = tokens_file.add("probe")
    env = {**os.environ, "ARL_TOKENS": str(tokens_file.path), "ARL_CACHE": str(tmp / "cache")}
    logs = open(tmp / "processes.log", "wb")
    procs = [subprocess.Popen([sys.executable, "-m", "arl.runners.cli", "worker", "--store", url,
                               "--slots", str(slots), "--name", "load-worker"],
                              cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT)]
    endpoints = []
    try:
        for _ in range(servers):
            port = _free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "arl.runners.cli", "mcp", "--store", url, "--search", search,
                 "--specialist", "sleep", "--transport", "http", "--port", str(port)],
                cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            endpoints.append(f"http://127.0.0.1:{port}/mcp")
        for endpoint in endpoints:
            _until_listening(endpoint, procs)
        started = time.monotonic()
        result = anyio.run(_drive, endpoints, tokens, probe_token, rounds)
        result["seconds"] = time.monotonic() - started
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        logs.close()
    with Ledger.open(url, read_only=True) as ledger:
        events = [e for _, e in ledger.iter_events()]
    proposed = [e for e in events if isinstance(e, ev.TrialProposed) and e.search_id == search]
    return LoadResult(clients=clients, rounds=rounds, servers=servers,
                      proposed=[e.originator_id for e in proposed if e.backend == "mcp"],
                      seqs=[e.seq for e in proposed], **result)


async def _drive(endpoints: list[str], tokens: list[str], probe_token: str, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {"acknowledged": [], "refused": [], "labelled": 0, "sql_busy_ms": [],
                           "sql_idle_ms": [], "sql_errors": [], "waits_pending": []}
    waiting = [0]
    done = anyio.Event()
    async with _session(endpoints[0], probe_token) as probe:
        for _ in range(30):  # the reference: nobody else connected
            out["sql_idle_ms"].append(await _sql_ms(probe, out))

        async def client(i: int) -> None:
            async with _session(endpoints[i % len(endpoints)], tokens[i]) as s:
                waiting[0] += 1
                await _call(s, "wait", {"trial": "baseline", "timeout_s": 300})
                waiting[0] -= 1
                for r in range(rounds):
                    edit = {"file": "probe.py", "search": "SLEEP_S = ",
                            "replace": f"CLIENT, ROUND = {i}, {r}\nSLEEP_S = "}
                    reply = await s.call_tool("submit", {"hypothesis": f"client {i} round {r}", "edits": [edit]})
                    if reply.is_error:
                        out["refused"].append(reply.content[0].text)
                        continue
                    receipt = msgspec.json.decode(reply.content[0].text)
                    out["acknowledged"].append(receipt["trial_id"])
                    waiting[0] += 1
                    try:
                        labelled = await _call(s, "wait", {"trial": receipt["trial_id"], "timeout_s": 600})
                    finally:
                        waiting[0] -= 1
                    out["labelled"] += labelled.get("label") is not None

        async def prober() -> None:
            while not done.is_set():
                pending = waiting[0]
                ms = await _sql_ms(probe, out)
                if pending and waiting[0]:
                    out["sql_busy_ms"].append(ms)
                    out["waits_pending"].append(pending)
                await anyio.sleep(0.1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(prober)
            async with anyio.create_task_group() as crowd:
                for i in range(len(tokens)):
                    crowd.start_soon(client, i)
            done.set()
    return out


async def _sql_ms(session: ClientSession, out: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    reply = await session.call_tool("sql", {"query": PROBE_SQL})
    ms = (time.perf_counter() - t0) * 1000
    if reply.is_error:
        out["sql_errors"].append(reply.content[0].text)
    return ms


async def _call(session: ClientSession, name: str, arguments: dict) -> dict:
    reply = await session.call_tool(name, arguments)
    if reply.is_error:
        raise RuntimeError(f"{name} failed: {reply.content[0].text}")
    return msgspec.json.decode(reply.content[0].text)


@asynccontextmanager
async def _session(endpoint: str, token: str):
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60, read=900)) as http:
        async with streamable_http_client(endpoint, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1],
                                     client_info=types.Implementation(name="mcp-load", version="1")) as s:
                await s.initialize()
                yield s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until_listening(endpoint: str, procs: list[subprocess.Popen]) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while True:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a server or worker process ended early; see its log")
        try:
            httpx.get(endpoint, timeout=1)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{endpoint} did not start listening") from None
            time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4, help="worker slots running the trials")
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds each probe trial sleeps")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL URL allowed to create and drop databases")
    args = parser.parse_args()
    r = measure(args.pg, clients=args.clients, rounds=args.rounds, servers=args.servers, slots=args.slots,
                sleep=args.sleep)
    load = os.getloadavg()[0]
    print(f"arl mcp load benchmark (PostgreSQL): {r.clients} clients x {r.rounds} rounds over {r.servers} "
          f"`arl mcp --transport http` servers, {args.slots} worker slots, {r.seconds:.1f} s; "
          f"machine: {os.cpu_count()} cores, load average {load:.1f}")
    print()
    distinct = len(set(r.seqs))
    print(f"submissions acknowledged   : {len(r.acknowledged):6d}   refused: {len(r.refused)}"
          + (f" ({r.refused[0][:80]})" if r.refused else ""))
    print(f"trials recorded (mcp)      : {len(r.proposed):6d}   same set as acknowledged: "
          f"{'yes' if sorted(r.proposed) == sorted(r.acknowledged) else 'NO'}")
    print(f"trial numbers              : {len(r.seqs):6d}   distinct: {distinct}"
          f"   {'ok' if distinct == len(r.seqs) else 'DUPLICATED'}")
    print(f"labels the clients waited  : {r.labelled:6d} of {len(r.acknowledged)}")
    print()
    busy_p50, busy_p99 = percentile(r.sql_busy_ms, 0.5), percentile(r.sql_busy_ms, 0.99)
    idle_p50, idle_p99 = percentile(r.sql_idle_ms, 0.5), percentile(r.sql_idle_ms, 0.99)
    print(f"sql, waits pending         : p50 {busy_p50:7.1f} ms   p99 {busy_p99:7.1f} ms   "
          f"max {max(r.sql_busy_ms, default=float('nan')):7.1f} ms   ({len(r.sql_busy_ms)} calls; "
          f"waits pending: median {statistics.median(r.waits_pending) if r.waits_pending else 0:.0f}, "
          f"max {max(r.waits_pending, default=0)})   target p99 <= 1000 ms   "
          f"{'ok' if busy_p99 <= 1000 else 'MISSED'}")
    print(f"sql, nobody else connected : p50 {idle_p50:7.1f} ms   p99 {idle_p99:7.1f} ms   "
          f"({len(r.sql_idle_ms)} calls)   busy/idle p99 ratio {busy_p99 / idle_p99:.1f}x")
    if r.sql_errors:
        print(f"sql errors                 : {len(r.sql_errors)} ({r.sql_errors[0][:100]})")


if __name__ == "__main__":
    main()
