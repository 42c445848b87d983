"""The system Chromium, driven over the DevTools protocol on a pipe (no driver to download).

    with Browser(tmp_path / "profile") as b:
        b.open("http://127.0.0.1:8123/")          # waits for body[data-ready=1]
        b.eval("document.title"); b.click("svg .mark"); b.screenshot(path)
        assert not b.errors                        # console errors and uncaught exceptions

``--remote-debugging-pipe``: the browser reads commands from fd 3 and writes
replies and events to fd 4, each a JSON message ended by a NUL byte.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.needs import require

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    def __init__(self, profile: Path, *, width: int = 1100, height: int = 900) -> None:
        require("browser", "chromium is not installed (apt-get install chromium)" if CHROMIUM is None else None)
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()

        def plumb() -> None:  # the browser's fd 3 and 4 (moved up first: a pipe may already be 3 or 4)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_r, replies_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=plumb, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_r)
        os.close(replies_w)
        self._next = 0
        self._lock = threading.Lock()
        self._replies_by_id: dict[int, dict[str, Any]] = {}
        self._arrived = threading.Condition()
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=self.session)
        self.call("Emulation.setDeviceMetricsOverride", session=self.session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._replies, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                with self._arrived:
                    if "id" in message:
                        self._replies_by_id[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._arrived.notify_all()

    def call(self, method: str, *, session: str | None = None, timeout: float = 30.0, **params: Any) -> Any:
        with self._lock:
            self._next += 1
            n = self._next
        message: dict[str, Any] = {"id": n, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._arrived:
            while n not in self._replies_by_id:
                if not self._arrived.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{method}: no reply in {timeout} s")
            reply = self._replies_by_id.pop(n)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    # -- the page ------------------------------------------------------------------------

    def eval(self, expression: str, timeout: float = 30.0) -> Any:
        result = self.call("Runtime.evaluate", session=self.session, expression=expression, returnByValue=True,
                           awaitPromise=True, timeout=timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll until ``expression`` is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.eval(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still false after {timeout} s")
            time.sleep(0.05)

    def open(self, url: str, *, ready: bool = True, timeout: float = 30.0) -> float:
        """Navigate and wait for the page's script to finish; seconds until it did."""
        t0 = time.monotonic()
        self.call("Page.navigate", session=self.session, url=url)
        if ready:
            self.wait_for(f"location.href.startsWith({json.dumps(url.split('?')[0])}) && "
                          "document.body && document.body.dataset.ready === '1'", timeout)
        return time.monotonic() - t0

    def click(self, selector: str, nth: int = 0) -> None:
        """A real mouse click at the middle of the element (pressed and released)."""
        box = self.eval(f"(() => {{ const e = document.querySelectorAll({json.dumps(selector)})[{nth}]; "
                        "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                        "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=self.session, type=kind, x=box[0], y=box[1],
                      button="left" if kind != "mouseMoved" else "none", clickCount=1)

    def screenshot(self, path: Path, *, whole: bool = True) -> None:
        """A PNG of the whole page (or of the viewport only)."""
        data = self.call("Page.captureScreenshot", session=self.session, format="png",
                         captureBeyondViewport=whole)["data"]
        Path(path).write_bytes(base64.b64decode(data))

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (CSP refusals among them)."""
        out = []
        with self._arrived:
            events = list(self.events)
        for e in events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._commands)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
