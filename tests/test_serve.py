"""``arl serve``: hostile clients first, then the pages in the system Chromium, live."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.ledger.events import Check, Label
from arl.ledger.programs import put_program
from arl.runners.serve import Dashboard, ServeAccess, app, host_name, serve_gate
from arl.runners.tokens import TokenError
from tests.browser import Browser
from tests.conftest import shared_fixtures

SEARCH = "cccc0000-0000-4000-8000-000000000001"
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
HOSTILE_HYPOTHESIS = "<img src=x onerror=alert(1)> try </script><script>alert(2)</script> LR 0.04"
HOSTILE_LOG = "Traceback </pre><script>alert(3)</script> & <b>boom</b>"


def tid(seq: int) -> str:
    return ev.trial_id(SEARCH, seq)


def small_search(ledger: Ledger, trials: int = 6) -> None:
    """A baseline and ``trials`` children with programs, checks, logs and one transcript; the last one
    claimed but not finished (a worker busy on it)."""
    base = {"train.py": b"LR = 0.02\nEPOCHS = 10\n"}
    digests = [put_program(ledger, base)]
    call = ledger.put_blob(json.dumps({"model": "m", "messages": [{"role": "user", "content": "<b>hi</b>"}],
                                       "usage": {"prompt_tokens": 10, "completion_tokens": 5}}).encode())
    events: list[ev.Event] = [ev.SearchStarted(originator_id=SEARCH, originator_version=1, at=T0, name="live",
                                               task="toy", task_digest="0" * 64, direction="min",
                                               config={"trials": trials, "workers": 2})]
    score = 10.0
    for seq in range(trials + 1):
        at = T0 + timedelta(minutes=seq)
        files = {"train.py": f"LR = {0.02 + seq / 100:.2f}\nEPOCHS = 10\n".encode()}
        digest = put_program(ledger, files) if seq else digests[0]
        digests.append(digest)
        common = {"originator_id": tid(seq), "search_id": SEARCH}
        label = Label.BASELINE if seq == 0 else (Label.KEEP if seq % 2 else Label.CRASH)
        s = None if label is Label.CRASH else score - seq * 0.1
        events += [
            ev.TrialProposed(**common, originator_version=1, at=at, seq=seq, agent="base" if not seq else "opt",
                             surface="opt", parents=() if not seq else (tid(seq - 1 if seq % 2 else seq - 2),),
                             hypothesis=HOSTILE_HYPOTHESIS if seq == 1 else f"variant {seq}",
                             expected_delta=-0.1, agent_call_digest=call if seq == 1 else None),
            ev.TrialSubmitted(**common, originator_version=2, at=at, program_digest=digest),
            ev.TrialClaimed(**common, originator_version=3, at=at, runner=f"w{seq % 2}"),
        ]
        if seq == trials:
            break  # still running
        events += [
            ev.RunFinished(**common, originator_version=4, at=at + timedelta(seconds=50), runner=f"w{seq % 2}",
                           exit_code=0 if s is not None else 1, wall_s=50.0, stdout_tail=f"step {seq} ok",
                           stderr_tail=HOSTILE_LOG if seq == 2 else ""),
            ev.TrialEvaluated(**common, originator_version=5, at=at + timedelta(seconds=55), evaluator="toy",
                              score=s, metrics={"loss": s}, checks=(
                                  Check(name="train_s", passed=True, value=49.0, limit=60.0),
                                  Check(name="size_mb", passed=s is not None, value=15.0, limit=16.0))),
            ev.TrialLabeled(**common, originator_version=6, at=at + timedelta(seconds=56), label=label, score=s,
                            delta_vs_parent=None if s is None else -0.1, delta_vs_best=None if s is None else -0.1,
                            reason="" if s is not None else "exit 1"),
        ]
    ledger.append(*events)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(url: str, access: ServeAccess | None = None, gate=None) -> Iterator[tuple[str, Dashboard]]:
    """The dashboard app under a real uvicorn on 127.0.0.1, in a thread of this process."""
    import uvicorn

    access = access or ServeAccess()
    port = free_port()
    with Ledger.open(url, read_only=True) as ledger:
        dashboard = Dashboard(ledger)
        server = uvicorn.Server(uvicorn.Config(app(dashboard, access, gate), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}", dashboard
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            dashboard.close()


def raw_get(base: str, path: str) -> tuple[int, str]:
    """GET a path exactly as given (httpx would resolve its dot segments first)."""
    import http.client

    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    try:
        conn.request("GET", path.replace(" ", "%20"))
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.fixture
def live_ledger(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        small_search(ledger)
    return sqlite_url


# --- hostile clients -------------------------------------------------------------------------


def test_host_header_attacks_are_refused(live_ledger):
    with served(live_ledger) as (base, _):
        for host in ("evil.example", "127.0.0.1.evil.example", "evil.example:8000", "localhost.evil", "",
                     "[::2]:80"):
            r = httpx.get(base + "/", headers={"host": host})
            assert r.status_code == 421, host
            assert "does not answer for Host" in r.text and "--allow-host" in r.text
        for host in ("127.0.0.1", "localhost:1234", "[::1]:8000"):
            assert httpx.get(base + "/api/searches", headers={"host": host}).status_code == 200, host
    assert host_name("[::1]:8000") == "[::1]" and host_name("LOCALHOST:80") == "localhost"


def test_ids_from_the_address_are_looked_up_never_opened(live_ledger):
    with served(live_ledger) as (base, _):
        for path in ("/trial/../../etc/passwd", "/trial/..%2F..%2Fetc%2Fpasswd", "/trial/%2e%2e",
                     "/api/trial/x' OR 1=1 --", "/search/..", "/search/%2e%2e%2f%2e%2e",
                     "/api/search/a;DROP TABLE trials", "/trial/" + str(uuid.uuid4()), "/static/../ledger.db"):
            status, text = raw_get(base, path)
            assert status in (400, 404), (path, status)
            assert "root:" not in text and "SQLite format" not in text
        r = httpx.get(base + "/api/trial/" + str(uuid.uuid4()))
        assert r.status_code == 404 and r.json()["error"].startswith("no trial")
        assert httpx.get(base + "/compare?a=../x&b=y").status_code == 400


def test_the_sql_console_reads_and_refuses_everything_else(live_ledger, tmp_path):
    target = tmp_path / "out.csv"
    with served(live_ledger) as (base, _):
        def sql(query: str) -> httpx.Response:
            return httpx.post(base + "/api/sql", json={"query": query})

        ok = sql("SELECT label, count(*) AS n FROM trials GROUP BY label ORDER BY n DESC, label")
        assert ok.status_code == 200, ok.text
        assert ok.json()["columns"] == ["label", "n"]
        assert ["crash", 2] in ok.json()["rows"] and ["keep", 3] in ok.json()["rows"]
        for query, why in [
            ("CREATE TABLE x AS SELECT 1", "only SELECT"),
            ("INSERT INTO trials SELECT * FROM trials", "only SELECT"),
            ("DELETE FROM trials", "only SELECT"),
            (f"ATTACH '{tmp_path / 'x.db'}' AS x", "only SELECT"),
            (f"COPY trials TO '{target}'", "only SELECT"),
            ("SET memory_limit = '100GB'", "only SELECT"),
            ("SELECT 1; DROP TABLE trials", "exactly one statement"),
            ("SELECT * FROM read_csv('/etc/passwd')", "SQL failed"),
            (f"SELECT * FROM '{live_ledger.removeprefix('sqlite:///')}'", "SQL failed"),
            ("SELECT * FROM log.events", "SQL failed"),
        ]:
            r = sql(query)
            assert r.status_code == 400, query
            assert why in r.json()["error"], (query, r.json())
        assert not target.exists() and not (tmp_path / "x.db").exists()
        assert httpx.post(base + "/api/sql", content="SELECT 1", headers={"content-type": "text/plain"}
                          ).status_code == 415
        assert httpx.get(base + "/api/sql").status_code == 405
        # nothing was changed
        again = sql("SELECT count(*) FROM trials")
        assert again.json()["rows"] == [[7]]


def test_a_non_loopback_bind_requires_a_token(live_ledger, tmp_path):
    tokens = tmp_path / "tokens.jsonl"
    shown: list[str] = []
    access = ServeAccess(host="0.0.0.0", token_file=str(tokens))
    gate = serve_gate(access, announce=shown.append)
    assert gate is not None and len(gate) == 1 and len(shown) == 1
    token = shown[0].split("?token=")[1].strip()
    assert token.startswith("arl_") and token not in tokens.read_text()
    # loopback needs none unless asked; a second start makes no second token
    assert serve_gate(ServeAccess(token_file=str(tokens)), announce=shown.append) is None
    assert serve_gate(ServeAccess(token_file=str(tokens), require_token=True), announce=shown.append) is not None
    assert len(shown) == 1
    with served(live_ledger, access, gate) as (base, _):
        for headers in ({}, {"authorization": "Bearer arl_wrong"}, {"authorization": f"Basic {token}"},
                        {"cookie": "arl_token=arl_wrong"}, {"authorization": "Bearer " + token[:-1]}):
            for path in ("/", "/api/searches", "/events", "/static/dashboard.js", "/api/trial/" + tid(1)):
                r = httpx.get(base + path, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert "a valid token is required" in r.text and "live" not in r.text
        assert httpx.post(base + "/api/sql", json={"query": "SELECT 1"}).status_code == 401
        assert httpx.get(base + "/?token=arl_wrong").status_code == 401
        ok = httpx.get(base + "/api/searches", headers={"authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["searches"][0]["name"] == "live"
        # a browser trades ?token= for a cookie, and the address loses the token
        r = httpx.get(base + f"/search/live?token={token}&x=1")
        assert r.status_code == 303 and r.headers["location"] == "/search/live?x=1"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and token in cookie
        page = httpx.get(base + "/search/live", headers={"cookie": f"arl_token={token}"})
        assert page.status_code == 200 and "arl-data" in page.text
        # the token never reaches a page
        assert token not in page.text
        # revoked with the CLI while the server runs: refused from the next request, no restart;
        # a token added the same way is let in
        env = {**os.environ, "ARL_TOKEN": ""}
        name = json.loads(tokens.read_text().splitlines()[0])["name"]
        subprocess.run([sys.executable, "-m", "arl.runners.cli", "token", "revoke", name, "--token-file",
                        str(tokens)], check=True, capture_output=True, env=env, timeout=60)
        assert httpx.get(base + "/api/searches", headers={"authorization": f"Bearer {token}"}).status_code == 401
        assert httpx.get(base + "/search/live", headers={"cookie": f"arl_token={token}"}).status_code == 401
        added = subprocess.run([sys.executable, "-m", "arl.runners.cli", "token", "add", "carol", "--token-file",
                                str(tokens)], check=True, capture_output=True, text=True, env=env, timeout=60)
        fresh = added.stdout.strip()
        assert httpx.get(base + "/api/searches", headers={"authorization": f"Bearer {fresh}"}).status_code == 200


def test_user_text_is_never_markup(live_ledger, tmp_path):
    with served(live_ledger) as (base, _):
        for path in ("/search/live", f"/trial/{tid(1)}", f"/trial/{tid(2)}", f"/compare?a={tid(1)}&b={tid(2)}"):
            r = httpx.get(base + path)
            assert r.status_code == 200, path
            assert "<img src=x" not in r.text and "<script>alert" not in r.text and "<b>" not in r.text
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
            assert "script-src 'self'" in r.headers["content-security-policy"]
        with Browser(tmp_path / "profile") as b:
            for path in (f"/trial/{tid(1)}", f"/trial/{tid(2)}"):
                b.open(base + path)
                assert b.eval("document.querySelectorAll('main img, main script, main b').length") == 0
            b.open(base + f"/trial/{tid(1)}")
            assert b.eval("document.getElementById('hypothesis').textContent") == HOSTILE_HYPOTHESIS
            assert " on w1" in b.eval("document.body.textContent")  # the runner that ran it
            assert "<b>hi</b>" in b.eval("document.getElementById('transcript').textContent")
            b.open(base + f"/trial/{tid(2)}")
            assert b.eval("document.getElementById('stderr').textContent") == HOSTILE_LOG
            dialogs = [e for e in b.events if e.get("method") == "Page.javascriptDialogOpening"]
            assert dialogs == [] and b.errors == []


# --- the pages, in the browser ------------------------------------------------------------------


def test_trial_page_shows_what_the_trial_did(live_ledger):
    with served(live_ledger) as (base, _):
        t = httpx.get(base + f"/api/trial/{tid(3)}").json()["view"]
        assert t["hypothesis"] == "variant 3" and t["label"] == "keep"
        assert t["expected_vs_observed"] == {"expected": -0.1, "observed": pytest.approx(-0.1)}
        # its parent is #2's sibling line: #2 (seq 3 → parent 2)
        assert [d["parent"] for d in t["diffs"]] == [tid(2)]
        assert "-LR = 0.04\n+LR = 0.05" in t["diffs"][0]["diff"]
        assert {c["name"]: (c["value"], c["limit"], c["passed"]) for c in t["checks"]} == {
            "size_mb": (15.0, 16.0, True), "train_s": (49.0, 60.0, True)}
        assert t["run"]["stdout"] == "step 3 ok"
        assert t["commands"][0] == f"arl show {SEARCH[:8]}#3" and "arl fork" in t["commands"][1]
        c = httpx.get(base + f"/compare?a={tid(1)}&b={tid(5)}")
        assert c.status_code == 200
        view = json.loads(c.text.split("id=arl-data>")[1].split("</script>")[0])["view"]
        assert "-LR = 0.03\n+LR = 0.07" in view["diff"]
        assert view["metrics"] == [["loss", pytest.approx(9.9), pytest.approx(9.5)]]


def test_pages_draw_click_through_and_update_live(live_ledger, tmp_path):
    with served(live_ledger) as (base, dashboard), Browser(tmp_path / "profile") as b:
        b.open(base + "/")
        assert b.eval("document.body.dataset.searches") == "1"
        assert "live" in b.eval("document.getElementById('searches').textContent")
        b.open(base + f"/search/{SEARCH}")
        drawn = b.eval("Object.fromEntries([...document.querySelectorAll('[data-drawn]')]"
                       ".map(e => [e.id, +e.dataset.drawn]))")
        assert drawn["progress-0"] == 7 and drawn["tree-0"] == 7 and drawn["mix-0"] == 3
        assert drawn["throughput-0"] > 0
        assert b.eval("document.querySelectorAll('#progress-0 .mark.unscored').length") == 3  # 2 crashes, 1 running
        assert b.eval("document.querySelector('.best-line') !== null")
        summary = b.eval("document.getElementById('summary').textContent")
        assert "7 trials (5 labelled of a budget of 6, 1 running)" in summary, summary
        # live: the running trial is labelled while the page is open, and a new trial is proposed
        b.wait_for("document.getElementById('live').textContent.startsWith('live')")
        b.eval("window.notReloaded = true")
        at = T0 + timedelta(minutes=30)
        common = {"originator_id": tid(6), "search_id": SEARCH}
        with Ledger.open(live_ledger) as writer:
            t0 = time.monotonic()
            writer.append(
                ev.RunFinished(**common, originator_version=4, at=at, runner="w0", exit_code=0, wall_s=50.0),
                ev.TrialEvaluated(**common, originator_version=5, at=at, evaluator="toy", score=8.0),
                ev.TrialLabeled(**common, originator_version=6, at=at, label=Label.KEEP, score=8.0,
                                delta_vs_best=-1.5))
            b.wait_for(f"document.querySelector('#progress-0 circle.mark[data-trial=\"{tid(6)}\"]')"
                       f"?.getAttribute('fill') === {json.dumps('#2ca02c')}", timeout=20)
            seen = time.monotonic() - t0
        print(f"labelled trial drawn {seen:.2f} s after it was recorded")
        assert b.eval("window.notReloaded") is True
        assert "6 labelled" in b.eval("document.getElementById('summary').textContent")
        assert b.errors == []
        # clicking a point opens its trial
        b.click(f"#progress-0 circle.mark[data-trial=\"{tid(3)}\"]")
        b.wait_for("location.pathname.startsWith('/trial/') && document.body.dataset.ready === '1'")
        assert b.eval("location.pathname") == f"/trial/{tid(3)}"
        assert b.eval("document.getElementById('hypothesis').textContent") == "variant 3"
        # and a node of the lineage tree too
        b.open(base + f"/search/{SEARCH}")
        b.click(f"#tree-0 circle.node[data-trial=\"{tid(4)}\"]")
        b.wait_for(f"location.pathname === '/trial/{tid(4)}' && document.body.dataset.ready === '1'")
        # the SQL console, typed into like a person would
        b.open(base + "/sql")
        b.eval("document.getElementById('sql-q').value = 'SELECT seq, label FROM trials ORDER BY seq'")
        b.click("#sql-form button")
        b.wait_for("!!document.getElementById('sql-result')")
        assert b.eval("document.querySelectorAll('#sql-result tbody tr').length") == 7
        assert b.errors == []
        b.eval("document.getElementById('sql-q').value = \"COPY trials TO '/tmp/x.csv'\"")
        b.click("#sql-form button")
        assert "only SELECT" in b.wait_for("document.getElementById('sql-error')?.textContent")
        assert [e for e in b.errors if "/api/sql" not in e] == []  # the refusal's 400 is logged, nothing else


def test_arl_serve_shows_the_papers_two_runs(tmp_path):
    from tests.test_queries_import import FIXTURES

    shared_fixtures("auto-research-recipes")
    from arl.queries.importers import import_recipes

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.open(url) as ledger:
        cifar = import_recipes(ledger, FIXTURES / "cifar")
        import_recipes(ledger, FIXTURES / "pg_ablation_lineage_on")
    cifar_id = cifar.search_id
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "arl.runners.cli", "serve", "--store", url, "--port", str(port)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "ARL_TOKEN": ""})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/api/searches").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        shots = Path(os.environ["ARL_SCREENSHOTS"]) if os.environ.get("ARL_SCREENSHOTS") else None
        with Browser(tmp_path / "profile") as b:
            b.open(base + "/")
            rows = b.eval("[...document.querySelectorAll('#searches tbody tr')].map(r => r.cells[0].textContent)")
            assert rows == ["cifar", "pg_ablation_lineage_on"]
            if shots:
                b.screenshot(shots / "22-index.png")
            b.click("#searches tbody tr a")  # cifar
            b.wait_for("location.pathname.startsWith('/search/') && document.body.dataset.ready === '1'")
            assert b.eval("location.pathname") == f"/search/{cifar_id}"
            summary = b.eval("document.getElementById('summary').textContent")
            assert summary.startswith("98 trials") and "best 25.1464" in summary, summary
            assert b.eval("+document.getElementById('progress-0').dataset.drawn") == 98
            assert b.eval("+document.getElementById('tree-0').dataset.drawn") == 98
            if shots:
                b.screenshot(shots / "22-search-cifar.png")
            b.click("#progress-0 circle.mark.best, #progress-0 circle.mark[fill='#2ca02c']")
            b.wait_for("location.pathname.startsWith('/trial/') && document.body.dataset.ready === '1'")
            assert b.eval("document.getElementById('hypothesis').textContent").startswith("train_epochs 45→46")
            # an import records no delta: the page gives score − parent's score (26.1313 − 26.356)
            assert b.eval("document.querySelector('#deltas tbody td:nth-child(2)').textContent") == "-0.2247"
            assert "snapshots/007_aug" in b.eval("document.getElementById('main').textContent")
            if shots:
                b.screenshot(shots / "22-trial-cifar.png")
            assert b.errors == []
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_refuses_tokens_it_cannot_trust(tmp_path):
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text("")
    tokens.chmod(0o666)
    with pytest.raises(TokenError, match="can be written by others"):
        serve_gate(ServeAccess(host="0.0.0.0", token_file=str(tokens)), announce=print)


def test_the_event_stream_outlives_its_keep_alives_and_tells_each_change(live_ledger, monkeypatch):
    import arl.runners.serve as serve_module

    monkeypatch.setattr(serve_module, "KEEP_ALIVE_S", 0.1)
    with served(live_ledger) as (base, dashboard):
        with httpx.stream("GET", base + "/events", timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            assert next(lines) == "event: hello"
            keep_alives = 0
            while keep_alives < 5:  # idle: comments, and the stream stays open
                keep_alives += next(lines) == ": keep-alive"
            with Ledger.open(live_ledger) as writer:
                writer.append(ev.TrialEvaluated(originator_id=tid(6), originator_version=4, search_id=SEARCH,
                                                evaluator="toy", score=7.0))
                head = writer.head()
            for line in lines:
                if line.startswith("data: ") and '"searches"' in line:
                    change = json.loads(line.removeprefix("data: "))
                    break
            assert change == {"head": head, "searches": [SEARCH]}


def test_a_large_search_is_drawn_binned_and_still_opens_trials(live_ledger, tmp_path, monkeypatch):
    import arl.queries.dashboard as dashboard_module

    monkeypatch.setattr(dashboard_module, "MAX_MARKS", 3)  # the 7-trial search counts as large
    with served(live_ledger) as (base, _), Browser(tmp_path / "profile") as b:
        view = httpx.get(base + f"/api/search/{SEARCH}").json()["view"]
        assert view["binned"] and "marks" not in view and "tree" not in view
        # every trial is in a bin once; the best line holds the trials that set a new best
        assert sum(row[3] for row in view["bins"]) == 7
        assert [step[2] for step in view["best_line"]] == [tid(0), tid(1), tid(3), tid(5)]
        b.open(base + f"/search/{SEARCH}")
        assert b.eval("document.querySelector('#progress-0 canvas.bins') !== null")
        assert b.eval("document.getElementById('tree-0').tagName") == "CANVAS"
        assert b.eval("+document.getElementById('progress-0').dataset.drawn") == 7
        assert b.eval("+document.getElementById('tree-0').dataset.drawn") == 7
        assert b.eval("document.querySelectorAll('#progress-0 circle.mark.best').length") == 4
        b.click(f"#progress-0 circle.mark.best[data-trial=\"{tid(5)}\"]")
        b.wait_for(f"location.pathname === '/trial/{tid(5)}' && document.body.dataset.ready === '1'")
        assert b.errors == []
