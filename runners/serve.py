"""``arl serve``: the live dashboard of searches, read-only over the ledger, in the browser.

The server loads the ledger into a DuckDB file of its own (memory-limited,
in a private temporary folder) once, then follows the log: each time the
ledger's ``wait`` says it grew, only the new events are loaded
(:func:`arl.queries.load.refresh`) and every open page is told by a
server-sent event which searches changed; a page then fetches its view again
(aggregated in DuckDB, bounded in size: :mod:`arl.queries.dashboard`).

Pages: ``/`` (every search), ``/search/<id>``, ``/trial/<id>``,
``/compare?a=&b=``, ``/sql`` (the guarded DuckDB of the MCP ``sql`` tool).
Each has a JSON twin under ``/api/``; ``/events`` is the event stream.

Safe by default: it listens on loopback; any other address needs a bearer
token (:mod:`arl.runners.tokens`, the scheme of ``arl mcp --transport http``),
sent as ``Authorization: Bearer …``, or once as ``?token=…``, which a browser
trades for an HttpOnly, SameSite=Strict cookie. Only the Host headers of
:func:`allowed_hosts` are answered (DNS rebinding), and every response forbids
framing, sniffing and any script not served by this server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import msgspec

from arl.ledger import ArlError, Ledger
from arl.queries.dashboard import (
    DASHBOARD_JS,
    UUID,
    compare_view,
    overview,
    page,
    search_view,
    trial_view,
)
from arl.queries.errors import QueryError
from arl.queries.guarded import GuardedDuckDB, SqlLimits, rows_of
from arl.queries.load import connect, refresh
from arl.queries.named import resolve_search
from arl.runners.tokens import TokenGate, allowed_hosts, bearer_token, is_loopback, server_gate

#: The cookie a browser keeps the token in after ``?token=``.
COOKIE = "arl_token"
#: Seconds between comments on an idle event stream (keeps proxies and browsers from closing it).
KEEP_ALIVE_S = 15.0
#: The views the SQL console may read (copies, refreshed when the log moved).
SQL_VIEWS = ("searches", "trials", "checks", "lineage", "agent_calls")
_SEARCH_REF = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HEADERS = [
    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
                                 b"connect-src 'self'; img-src 'self' data:; form-action 'self'; "
                                 b"base-uri 'none'; frame-ancestors 'none'"),
]


class ServeAccess(msgspec.Struct, frozen=True, kw_only=True):
    """Where the dashboard listens and who may read it."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: The token file (None: ``runners.tokens.default_token_file()``).
    token_file: str | None = None
    #: Ask for a token on loopback too (any other address always does).
    require_token: bool = False
    #: More Host header values to answer.
    allow_hosts: tuple[str, ...] = ()


class Dashboard:
    """The ledger as the pages see it: a DuckDB kept up to the log's head by following it."""

    def __init__(self, ledger: Ledger, *, memory: str = "2GB", sql_limits: SqlLimits | None = None) -> None:
        self.ledger = ledger
        self.lock = threading.Lock()
        self.folder = tempfile.mkdtemp(prefix="arl-serve-")
        self.con = connect(ledger, Path(self.folder) / "ledger.duckdb")
        self.con.execute(f"SET memory_limit = '{memory}'")
        self.con.execute(f"SET temp_directory = '{self.folder}'")
        self.head = int(dict(self.con.execute("SELECT key, value FROM log.meta").fetchall())["position"])
        self.sql_limits = sql_limits or SqlLimits()
        self._guarded: GuardedDuckDB | None = None
        self._guarded_at = -1
        self._listeners: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="arl-serve-follow", daemon=True)
        self._thread.start()

    # -- following the log -------------------------------------------------------------------

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.ledger.wait(self.head, timeout=1.0, poll=0.25):
                    continue
                change = self.catch_up()
            except Exception as e:  # the store went away for a moment: say so, try again
                print(f"arl serve: could not read the ledger ({e}); retrying", file=sys.stderr, flush=True)
                self._stop.wait(1.0)
                continue
            if change:
                self._publish(change)

    def catch_up(self) -> dict[str, Any] | None:
        """Load the events recorded since the last call; which searches they touched."""
        with self.lock:
            before = self.head
            stats = refresh(self.con, self.ledger)
            self.head = stats.position
            if self.head <= before and not stats.rebuilt:
                return None
            touched = [r[0] for r in self.con.execute(
                "SELECT DISTINCT coalesce(json_extract_string(payload, '$.search_id'), stream) "
                "FROM log.events WHERE id > $p", {"p": 0 if stats.rebuilt else before}).fetchall()]
        return {"head": self.head, "searches": touched}

    def _publish(self, change: dict[str, Any]) -> None:
        for loop, queue in list(self._listeners):
            loop.call_soon_threadsafe(_offer, queue, change)

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of each change from now on, for one event stream (a slow reader skips to the latest).

        A queue, not an async generator: waiting on it with a timeout (the keep-alive)
        cancels only that wait, never the subscription."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=8)
        entry = (asyncio.get_running_loop(), queue)
        self._listeners.add(entry)
        try:
            yield queue
        finally:
            self._listeners.discard(entry)

    # -- what the pages read -----------------------------------------------------------------

    def searches(self) -> dict[str, Any]:
        with self.lock:
            return {"searches": overview(self.con), "head": self.head}

    def search(self, ref: str) -> dict[str, Any]:
        with self.lock:
            sid = ref if UUID.fullmatch(ref) else resolve_search(self.con, ref)
            return {"view": search_view(self.con, sid), "head": self.head}

    def trial(self, trial: str) -> dict[str, Any]:
        with self.lock:
            return {"view": trial_view(self.con, self.ledger, trial), "head": self.head}

    def compare(self, a: str, b: str) -> dict[str, Any]:
        with self.lock:
            return {"view": compare_view(self.con, self.ledger, a, b), "head": self.head}

    def sql(self, query: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        with self.lock:
            views = {v: ("true", {}) for v in SQL_VIEWS}
            if self._guarded is None:
                self._guarded = GuardedDuckDB.copy_of(self.con, views, self.sql_limits)
            elif self._guarded_at != self.head:
                self._guarded.load(rows_of(self.con, views))
            self._guarded_at = self.head
            guarded = self._guarded
        result = guarded.page(query, offset, limit)
        return {"columns": result.columns, "rows": [[_cell(v) for v in r] for r in result.rows],
                "offset": result.offset, "next_offset": result.next_offset}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self.lock:
            if self._guarded is not None:
                self._guarded.close()
            self.con.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _offer(queue: asyncio.Queue[dict[str, Any]], change: dict[str, Any]) -> None:
    if queue.full():  # the page refetches everything anyway: only the latest change matters
        queue.get_nowait()
    queue.put_nowait(change)


def _cell(v: Any) -> Any:
    return v if v is None or isinstance(v, (int, float, str, bool)) else str(v)


# --- the web application ----------------------------------------------------------------------


def app(dashboard: Dashboard, access: ServeAccess, gate: TokenGate | None) -> Any:
    """The ASGI app: the pages behind the Host check and (unless ``gate`` is None) the token check."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def refused(status: int, message: str, request: Request) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return HTMLResponse(page("error", {"message": message}, title="arl serve", live=True), status_code=status)

    async def answer(request: Request, work: Callable[[], dict[str, Any]],
                     render: Callable[[dict[str, Any]], str] | None) -> Response:
        try:
            data = await run_in_threadpool(work)
        except (QueryError, ArlError) as e:
            return refused(404 if str(e).startswith("no ") else 400, str(e), request)
        if render is None:
            return JSONResponse(data)
        return HTMLResponse(render(data))

    def live(kind: str, data: dict[str, Any], title: str, api: str, watch: str | None = None) -> str:
        return page(kind, {**data, "api": api, "events": "/events", "watch": watch}, title=title, live=True)

    async def index(request: Request) -> Response:
        return await answer(request, dashboard.searches,
                            lambda d: live("index", d, "arl — searches", "/api/searches"))

    async def api_searches(request: Request) -> Response:
        return await answer(request, dashboard.searches, None)

    def as_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    async def search(request: Request) -> Response:
        """/search/<ref> and /api/search/<ref>: ref is an id, id prefix or name, looked up, never opened."""
        ref = request.path_params["ref"]
        if not _SEARCH_REF.fullmatch(ref):
            return refused(404, "no such search: give a search id from /", request)
        return await answer(request, lambda: dashboard.search(ref), None if as_json(request) else lambda d: live(
            "search", d, f"arl — {d['view']['name']}", f"/api/search/{d['view']['search']}", d["view"]["search"]))

    async def trial(request: Request) -> Response:
        """/trial/<id> and /api/trial/<id>: id is a trial's UUID."""
        tid = request.path_params["trial"]
        if not UUID.fullmatch(tid):
            return refused(404, "no such trial: a trial id is a UUID (its search page links it)", request)
        return await answer(request, lambda: dashboard.trial(tid), None if as_json(request) else lambda d: live(
            "trial", d, f"arl — trial #{d['view']['seq']}", f"/api/trial/{tid}", d["view"]["search"]))

    async def compare(request: Request) -> Response:
        a, b = request.query_params.get("a", "").strip(), request.query_params.get("b", "").strip()
        if not (UUID.fullmatch(a) and UUID.fullmatch(b)):
            return refused(400, "compare two trials by id: /compare?a=TRIAL&b=TRIAL (UUIDs, from their pages)",
                           request)
        return await answer(request, lambda: dashboard.compare(a, b), lambda d: page(
            "compare", d, title="arl — compare", live=True))

    async def sql_page(request: Request) -> Response:
        return HTMLResponse(page("sql", {"tables": list(SQL_VIEWS), "query": request.query_params.get("q", "")},
                                 title="arl — SQL", live=True))

    async def api_sql(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": 'send JSON: {"query": "SELECT …"}'}, status_code=415)
        try:
            body = json.loads(await request.body())
            query, offset = str(body["query"]), int(body.get("offset", 0))
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'send JSON: {"query": "SELECT …", "offset": 0}'}, status_code=400)
        try:
            return JSONResponse(await run_in_threadpool(dashboard.sql, query, offset))
        except QueryError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            async with dashboard.listening() as queue:
                yield f"event: hello\ndata: {json.dumps({'head': dashboard.head})}\n\n".encode()
                while True:
                    try:
                        change = await asyncio.wait_for(queue.get(), timeout=KEEP_ALIVE_S)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield f"event: change\ndata: {json.dumps(change)}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    async def script(request: Request) -> Response:
        return Response(DASHBOARD_JS, media_type="text/javascript; charset=utf-8")

    routes = [
        Route("/", index), Route("/search/{ref}", search), Route("/trial/{trial}", trial),
        Route("/compare", compare), Route("/sql", sql_page), Route("/events", events),
        Route("/static/dashboard.js", script),
        Route("/api/searches", api_searches),
        Route("/api/search/{ref}", search), Route("/api/trial/{trial}", trial),
        Route("/api/sql", api_sql, methods=["POST"]),
    ]
    return Guard(Starlette(routes=routes), gate, allowed_hosts(access.host, access.allow_hosts))


class Guard:
    """ASGI middleware: only known Host headers; a valid token unless ``gate`` is None; safe headers."""

    def __init__(self, app: Any, gate: TokenGate | None, hosts: list[str]) -> None:
        self.app = app
        self.gate = gate
        self.hosts = {h.lower() for h in hosts}

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_safe(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_HEADERS]}
            await send(message)

        headers = scope.get("headers") or []
        host = next((v.decode("latin-1") for k, v in headers if k.lower() == b"host"), "")
        if host_name(host) not in self.hosts:
            await _plain(send_safe, 421, f"this server does not answer for Host {host[:100]!r}; open it as "
                         "http://127.0.0.1:PORT/ or start it with --allow-host NAME")
            return
        if self.gate is None:
            await self.app(scope, receive, send_safe)
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        from_query = query.get("token")
        presented = bearer_token(headers) or from_query or _cookie(headers)
        if self.gate.authenticate(presented) is None:
            await _plain(send_safe, 401, "a valid token is required: open the address `arl serve` printed "
                         "(…/?token=arl_…) or send Authorization: Bearer arl_…; `arl token add NAME` makes one",
                         extra=[(b"www-authenticate", b'Bearer realm="arl serve"')])
            return
        if from_query and scope["method"] == "GET":  # keep it in a cookie, out of the address bar and history
            rest = urlencode([(k, v) for k, v in query.items() if k != "token"])
            location = scope["path"] + (f"?{rest}" if rest else "")
            cookie = f"{COOKIE}={from_query}; HttpOnly; SameSite=Strict; Path=/"
            await _plain(send_safe, 303, "signed in", extra=[(b"location", location.encode()),
                                                             (b"set-cookie", cookie.encode())])
            return
        await self.app(scope, receive, send_safe)


def host_name(host: str) -> str:
    """A Host header without its port: 127.0.0.1:8000 → 127.0.0.1, [::1]:8000 → [::1]."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie(headers: list[tuple[bytes, bytes]]) -> str | None:
    for k, v in headers:
        if k.lower() == b"cookie":
            jar = SimpleCookie()
            try:
                jar.load(v.decode("latin-1"))
            except Exception:  # a malformed cookie header is no token
                return None
            if COOKIE in jar:
                return jar[COOKIE].value
    return None


async def _plain(send: Callable, status: int, text: str, *, extra: list[tuple[bytes, bytes]] = ()) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


def serve_gate(access: ServeAccess, *, announce: Callable[[str], None]) -> TokenGate | None:
    """No token on loopback (unless asked for); elsewhere the token file's, one made on first start."""
    def first_start(token: str, path: Path) -> None:
        announce(f"arl serve: no token yet; made token 'dashboard' (shown once; {path} keeps only its hash). "
                 f"Open:\n  http://{_reachable(access.host)}:{access.port}/?token={token}")

    loopback_only = is_loopback(access.host) and not access.require_token
    return server_gate(access.host, token_file=access.token_file, no_auth=loopback_only,
                       first_token="dashboard", announce=first_start)


def _reachable(host: str) -> str:
    import socket

    return socket.gethostname() if host in ("0.0.0.0", "::", "") else host


def serve(ledger: Ledger, access: ServeAccess) -> None:
    """Serve until the process is stopped."""
    import uvicorn

    gate = serve_gate(access, announce=lambda text: print(text, file=sys.stderr, flush=True))
    dashboard = Dashboard(ledger)
    try:
        auth = "a bearer token required" if gate is not None else "no token (loopback)"
        print(f"arl serve: {ledger.url.display()} on http://{access.host}:{access.port}/ ({auth}; "
              f"log position {dashboard.head}); Ctrl-C stops", file=sys.stderr, flush=True)
        uvicorn.Server(uvicorn.Config(app(dashboard, access, gate), host=access.host, port=access.port,
                                      log_level="warning", timeout_graceful_shutdown=2)).run()
    finally:
        dashboard.close()
