"""Run one recipe process under budgets enforced from outside it.

* own session / process group: a kill takes every child with it;
* wallclock: killed at ``timeout_s`` (``killed_for="wallclock"``);
* memory: resident set of the whole group sampled every 50 ms, killed above
  ``memory_mb`` (``killed_for="memory"``);
* threads: OMP/MKL/OpenBLAS/torch thread counts set to ``threads``;
* environment: only what a recipe needs — no store URL, no credentials, no keys;
* bubblewrap when installed: no network; of the host only the system folders
  (``/usr``, ``/etc``, ``/sys`` and the ``/bin``, ``/lib`` … links), the Python that
  runs the recipe and the folders given — no home folder, no checkout, no cache of
  any task, no ledger; ``/tmp`` empty; writable only the workspace and the folders
  given; held-out data and the ledger also hidden behind empty tmpfs (or, for a
  file, an empty one bound over it) where they lie inside a visible folder.

Peak memory and CPU time come from ``wait4`` on the child, not from the recipe.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from arl.tasks.evaluation import Process

#: Environment variables passed through to recipes (everything else is dropped).
_PASS_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TERM")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "ARL_THREADS")


def bwrap_path() -> str | None:
    """The bubblewrap binary if present and usable here (set ARL_SANDBOX=none to disable)."""
    if os.environ.get("ARL_SANDBOX", "").lower() == "none":
        return None
    path = shutil.which("bwrap")
    if path is None:
        return None
    return path if _bwrap_works(path) else None


_bwrap_checked: dict[str, bool] = {}


def _bwrap_works(path: str) -> bool:
    if path not in _bwrap_checked:
        try:
            probe = subprocess.run(
                [path, "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-net", "true"],
                capture_output=True, timeout=10,
            )
            _bwrap_checked[path] = probe.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _bwrap_checked[path] = False
    return _bwrap_checked[path]


def recipe_env(threads: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    env["HOME"] = "/tmp"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    for var in _THREAD_VARS:
        env[var] = str(threads)
    env.update(extra or {})
    return env


def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    timeout_s: float,
    memory_mb: int,
    threads: int = 1,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    writable: Sequence[Path] = (),
    readable: Sequence[Path] = (),
    hidden: Sequence[Path] = (),
    tail_bytes: int = 8192,
    cancel: threading.Event | None = None,
    devices: bool = False,
) -> Process:
    """Run ``argv`` in ``cwd`` (which is writable) and measure it from outside.

    ``readable`` folders are re-exposed read-only inside ``hidden`` ones (e.g. the
    training split inside a hidden data cache).
    """
    argv = [sys.executable if a == "{python}" else a for a in argv]
    bwrap = bwrap_path()
    sandbox = "none"
    if bwrap is not None:
        argv = _bwrap_argv(bwrap, argv, cwd, writable, readable, hidden, devices=devices)
        sandbox = "bwrap"
    started = time.monotonic()
    # Output goes to anonymous files outside the workspace: the recipe cannot see them.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=recipe_env(threads, env), stdout=out, stderr=err,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            start_new_session=True,
        )
        spawned_at = time.time()
        if stdin is not None:
            threading.Thread(target=_feed, args=(proc, stdin), daemon=True).start()
        killed_for, peak_sampled = _watch(proc, started + timeout_s, memory_mb, cancel)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        result = Process(
            exit_code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            peak_rss_mb=max(usage.ru_maxrss / 1024, peak_sampled),
            killed_for=killed_for,
            stdout_tail=_tail(out, tail_bytes),
            stderr_tail=_tail(err, tail_bytes),
            sandbox=sandbox,
            started_at=spawned_at,
        )
    return result


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass  # the process stopped reading: its exit status says why


def _watch(proc: subprocess.Popen, deadline: float, memory_mb: int,
           cancel: threading.Event | None) -> tuple[str | None, float]:
    """Poll until exit; kill the group at the deadline, above the memory limit, or on cancel."""
    peak = 0.0
    started = time.monotonic()
    polls = 0
    while True:
        try:
            exited = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return None, peak
        if exited is not None and exited.si_pid:
            return None, peak
        polls += 1
        # Memory is sampled every few polls: scanning /proc costs the recipe CPU.
        rss = _group_rss_mb(proc.pid) if polls % 4 == 1 else 0.0
        peak = max(peak, rss)
        if rss > memory_mb:
            _kill_group(proc.pid)
            return "memory", peak
        if time.monotonic() >= deadline:
            _kill_group(proc.pid)
            return "wallclock", peak
        if cancel is not None and cancel.is_set():
            _kill_group(proc.pid)
            return "cancelled", peak
        # Poll fast at first (short runs end soon), then every 50 ms.
        time.sleep(0.005 if time.monotonic() - started < 0.5 else 0.05)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in the group (the recipe and its children)."""
    total = 0
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 (pgrp) counted after the comm
                continue
            with open(f"/proc/{entry.name}/statm", "rb") as f:
                total += int(f.read().split()[1]) * page_kb
        except (OSError, IndexError, ValueError):
            continue
    return total / 1024


def _tail(f: BinaryIO, limit: int) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - limit))
    text = f.read().decode("utf-8", "replace")
    return ("…" + text) if size > limit else text


def _bwrap_argv(
    bwrap: str,
    argv: list[str],
    cwd: Path,
    writable: Sequence[Path],
    readable: Sequence[Path],
    hidden: Sequence[Path],
    *,
    devices: bool = False,
) -> list[str]:
    # A minimal /dev hides GPUs; with devices the host's /dev is bound (CUDA_VISIBLE_DEVICES
    # still limits the recipe to its slot's GPUs).
    dev = ["--dev-bind", "/dev", "/dev"] if devices else ["--dev", "/dev"]
    args = [bwrap, *_system_binds(), *dev, "--proc", "/proc",
            "--tmpfs", "/tmp", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent"]
    # The interpreter and its packages, wherever they live (a virtual environment in a
    # checkout, a CI clone under /tmp): read-only, and nothing else of their folders.
    for path in _python_paths():
        args += ["--ro-bind", path, path]
    for path in hidden:
        if path.is_dir():
            args += ["--tmpfs", str(path)]
        elif path.exists():  # a file: masked by an empty one (not /dev/null: binds are nodev)
            args += ["--ro-bind", _empty_file(), str(path)]
    for path in readable:
        args += ["--ro-bind", str(path), str(path)]
    for path in (cwd, *writable):
        args += ["--bind", str(path), str(path)]
    args += ["--chdir", str(cwd), "--"]
    return args + argv


_empty: list[str] = []


def _empty_file() -> str:
    """An empty read-only file to bind over hidden ones, made once per process."""
    if not _empty or not os.path.exists(_empty[-1]):
        fd, path = tempfile.mkstemp(prefix="arl-empty-")
        os.close(fd)
        os.chmod(path, 0o444)
        _empty.append(path)
        atexit.register(lambda: os.path.exists(path) and os.remove(path))
    return _empty[-1]


def hiding_sqlite(path: Path) -> list[Path]:
    """What to hide so a recipe cannot read the SQLite ledger at ``path``.

    Its folder, unless that folder also holds what the recipe's Python needs (a ledger
    beside a checkout with its virtual environment): then the file and its journals,
    each masked on its own.
    """
    path = path.resolve()
    if not any(Path(p).is_relative_to(path.parent) for p in _interpreter_paths()):
        return [path.parent]
    return [p for suffix in ("", "-wal", "-shm", "-journal")
            if (p := path.with_name(path.name + suffix)).exists()]


#: Host folders every sandboxed process sees, read-only: the system it runs on.
SYSTEM_FOLDERS = ("/usr", "/etc", "/sys")
#: Top-level folders that are links into /usr on a merged-/usr system (folders elsewhere).
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_FOLDERS:
        if os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in _SYSTEM_LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _interpreter_paths() -> list[str]:
    """Folders the running Python needs (prefix, executable, sys.path), resolved.

    Not a folder that holds arl's own checkout or the working directory (a sys.path entry
    only because Python was started there, as ``python -m`` and pytest do): those are
    checkouts, which a recipe must not see; their virtual environments stay."""
    root = Path(__file__).resolve().parents[1]
    checkout = root if (root / "pyproject.toml").is_file() else None
    started_in = os.path.realpath(os.getcwd())
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    entries = {os.path.realpath(p) for p in sys.path if p}
    entries = {p for p in entries
               if p != started_in and not (checkout and checkout.is_relative_to(p))}
    return sorted({os.path.realpath(p) for p in prefixes | entries if p and os.path.isdir(p)})


def _python_paths() -> list[str]:
    """Folders the running Python needs that the system folders do not already show."""
    keep = [p for p in _interpreter_paths()
            if not any(p == s or p.startswith(s + "/") for s in SYSTEM_FOLDERS)]
    # Outermost folders only: binding a parent already exposes its children.
    return [p for p in keep if not any(p != q and p.startswith(q + "/") for q in keep)]
