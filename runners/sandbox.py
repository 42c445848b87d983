"""Run one recipe process under budgets enforced from outside it.

* its processes end with it: under bubblewrap a PID namespace of its own
  (``--unshare-pid``, the recipe its pid 1: when the recipe exits, or is killed, the
  kernel kills every process left in it, a ``setsid`` double-forked daemon included) and
  ``--die-with-parent``; without it, every descendant seen is killed at the end;
* wallclock: killed at ``timeout_s`` (``killed_for="wallclock"``);
* memory: resident set of every descendant (not only its process group: a child in
  its own session counts too) sampled every 20–200 ms, killed above ``memory_mb``
  (``killed_for="memory"``);
* processes: killed with more than ``pids_max`` descendants (``killed_for="processes"``);
* bytes written: the writable folders plus stdout and stderr, killed above
  ``write_mb`` (``killed_for="disk"``), and no single file larger (``RLIMIT_FSIZE``);
* threads: OMP/MKL/OpenBLAS/torch thread counts set to ``threads``;
* environment: only what a recipe needs — no store URL, no credentials, no keys;
* bubblewrap when installed: no network; of the host only the system folders
  (``/usr``, ``/etc``, ``/sys`` and the ``/bin``, ``/lib`` … links), the Python that
  runs the recipe and the folders given — no home folder, no checkout, no cache of
  any task, no ledger; ``/tmp`` empty; writable only the workspace and the folders
  given; held-out data and the ledger also hidden behind empty tmpfs (or, for a
  file, an empty one bound over it) where they lie inside a visible folder.

Peak memory and CPU time come from ``wait4`` on the child and from sampling its
process tree in ``/proc`` (the larger of each), never from the recipe.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
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
                [path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net",
                 "--unshare-pid", "--die-with-parent", "--as-pid-1", "true"],
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
    pids_max: int | None = None,
    write_mb: float | None = None,
    writable_cwd: bool = True,
) -> Process:
    """Run ``argv`` in ``cwd`` (writable unless ``writable_cwd`` is False) and measure it from outside.

    ``readable`` folders are re-exposed read-only inside ``hidden`` ones (e.g. the
    training split inside a hidden data cache).
    """
    argv = [sys.executable if a == "{python}" else a for a in argv]
    bwrap = bwrap_path()
    sandbox = "none"
    written = [*([cwd] if writable_cwd else []), *writable]
    if bwrap is not None:
        argv = _bwrap_argv(bwrap, argv, cwd, writable, readable, hidden, devices=devices,
                           writable_cwd=writable_cwd)
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
        if write_mb is not None:  # no single file beyond the limit (inherited by every child)
            limit = int(write_mb * 2**20)
            try:
                resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
            except (OSError, ValueError):
                pass  # it already exited; the watcher's count still bounds what it wrote
        if stdin is not None:
            threading.Thread(target=_feed, args=(proc, stdin), daemon=True).start()
        watch = _Watch(proc.pid, memory_mb=memory_mb, pids_max=pids_max, write_mb=write_mb,
                       written=written, logs=(out, err), sandboxed=sandbox == "bwrap")
        killed_for, peak_sampled = watch.run(started + timeout_s, cancel)
        _, status, usage = os.wait4(proc.pid, 0)
        watch.end()
        if killed_for is None and write_mb is not None and watch.written_mb() >= write_mb:
            killed_for = "disk"  # stopped by the file size limit: it reached the limit all the same
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if killed_for is not None and sandbox == "bwrap" and code == 128 + signal.SIGKILL:
            code = -signal.SIGKILL  # the recipe killed here, which bubblewrap reaped and reports as 128+9
        wall = time.monotonic() - started
        result = Process(
            exit_code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            wall_s=wall,
            cpu_s=max(usage.ru_utime + usage.ru_stime, watch.cpu_seen()),
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


class _Watch:
    """Polls one process tree until its root exits; kills the tree at a limit or on cancel."""

    def __init__(self, pid: int, *, memory_mb: int, pids_max: int | None, write_mb: float | None,
                 written: Sequence[Path], logs: tuple[BinaryIO, BinaryIO], sandboxed: bool = False) -> None:
        self.pid = pid
        self.sandboxed = sandboxed
        self.memory_mb = memory_mb
        self.pids_max = pids_max
        self.write_mb = write_mb
        self.written = [Path(p) for p in written]
        self.logs = logs
        #: Every descendant seen, pid -> start time (a pid reused later is not ours).
        self.seen: dict[int, int] = {}
        #: CPU clock ticks (user + system) of every process of the tree, last seen: (pid, start) -> ticks.
        self.ticks: dict[tuple[int, int], int] = {}

    def run(self, deadline: float, cancel: threading.Event | None) -> tuple[str | None, float]:
        peak = 0.0
        started = time.monotonic()
        polls = 0
        while True:
            if self._exited():
                return None, peak
            polls += 1
            killed_for = None
            # The tree is sampled every few polls: scanning /proc costs the recipe CPU.
            if polls % 4 == 1:
                rss, count = self._sample()
                peak = max(peak, rss)
                if self.pids_max is not None and count > self.pids_max:
                    killed_for = "processes"
                elif rss > self.memory_mb:
                    killed_for = "memory"
            if killed_for is None and self.write_mb is not None and polls % 8 == 1 \
                    and self.written_mb() > self.write_mb:
                killed_for = "disk"
            if killed_for is None and time.monotonic() >= deadline:
                killed_for = "wallclock"
            if killed_for is None and cancel is not None and cancel.is_set():
                killed_for = "cancelled"
            if killed_for is not None:
                peak = max(peak, self._sample()[0])  # the CPU it used up to now, before it goes
                self.kill()
                return killed_for, peak
            # Poll fast at first (short runs end soon), then every 50 ms.
            time.sleep(0.005 if time.monotonic() - started < 0.5 else 0.05)

    def _exited(self) -> bool:
        """Whether the root has exited (left for ``wait4`` to reap) or is already reaped."""
        try:
            exited = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return exited is not None and bool(exited.si_pid)

    def _sample(self) -> tuple[float, int]:
        """Resident MB and number of every live descendant of the root (whatever its session)."""
        parent: dict[int, int] = {}
        info: dict[int, tuple[int, int, int]] = {}  # pid -> (start time, resident pages, cpu ticks)
        for pid, fields in _processes():
            try:
                parent[pid] = int(fields[1])  # field 4 (ppid) counted after the comm
                info[pid] = (int(fields[19]), int(fields[21]),  # starttime, rss (pages)
                             int(fields[11]) + int(fields[12]))  # utime + stime (ticks)
            except (IndexError, ValueError):
                continue
        children: dict[int, list[int]] = {}
        for pid, ppid in parent.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, [])
        pages = 0
        for pid in tree:
            if pid in info:
                pages += info[pid][1]
                self.ticks[(pid, info[pid][0])] = info[pid][2]
                if pid != self.pid:
                    self.seen.setdefault(pid, info[pid][0])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20, len(tree)

    def cpu_seen(self) -> float:
        """CPU seconds of the tree as sampled: a floor where wait4 cannot count a process (a
        recipe killed with its sandbox, whose bubblewrap never reaped it)."""
        return sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")

    def written_mb(self) -> float:
        total = sum(os.fstat(f.fileno()).st_size for f in self.logs)
        for folder in self.written:
            for root, dirs, names in os.walk(folder):
                for name in names:
                    try:
                        total += os.lstat(os.path.join(root, name)).st_size
                    except OSError:
                        continue
        return total / 2**20

    def kill(self) -> None:
        """The root's group, then every descendant seen that is still the same process.

        In a sandbox, the recipe first (bubblewrap's child, pid 1 of its namespace: the kernel
        takes the whole namespace with it), so that bubblewrap reaps it and ``wait4`` counts the
        CPU of the recipe and of every child it reaped — short-lived children end between two
        samples of /proc, and would be missing from the sampled figure."""
        if self.sandboxed and not self._exited():  # once reaped, its pid may be another's
            for pid, fields in _processes():
                if fields[1:2] == [str(self.pid).encode()]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        continue
            deadline = time.monotonic() + 2.0
            while not self._exited() and time.monotonic() < deadline:
                time.sleep(0.01)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._kill_seen()

    def end(self) -> None:
        """After the root exited: nothing it started may go on (in a PID namespace the kernel
        has already seen to that; without one, the group and every descendant seen go)."""
        self.kill()

    def _kill_seen(self) -> None:
        for pid, start in self.seen.items():
            fields = _stat(pid)
            try:
                if fields is None or int(fields[19]) != start:
                    continue
                os.kill(pid, signal.SIGKILL)
            except (OSError, IndexError, ValueError):
                continue


def _stat(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 on), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _processes() -> Iterator[tuple[int, list[bytes]]]:
    """Every process there is now, with its ``_stat`` fields."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat(entry.name)) is not None:
            yield int(entry.name), fields


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
    writable_cwd: bool = True,
) -> list[str]:
    # A minimal /dev hides GPUs; with devices the host's /dev is bound (CUDA_VISIBLE_DEVICES
    # still limits the recipe to its slot's GPUs).
    dev = ["--dev-bind", "/dev", "/dev"] if devices else ["--dev", "/dev"]
    args = [bwrap, *_system_binds(), *dev, "--proc", "/proc",
            "--tmpfs", "/tmp", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-pid", "--die-with-parent",
            # The recipe is the namespace's pid 1, bubblewrap's direct child: bubblewrap's own
            # init would report the recipe's exit and be left unreaped, and wait4 would count
            # none of the recipe's CPU (measured: 0.002 s for a recipe that used 5.9 s).
            "--as-pid-1"]
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
    if not writable_cwd:
        args += ["--ro-bind", str(cwd), str(cwd)]
    for path in (cwd, *writable) if writable_cwd else writable:
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
    return args + _private_masks("/etc")


def _private_masks(top: str) -> list[str]:
    """Masks over what only privileged users may read under ``top`` (``/etc/shadow``, a munge
    key, TLS private keys, pg_hba.conf): a recipe sees the system as any unprivileged user
    would, even when arl runs as root (without the capabilities it drops, root still reads
    files root owns). A folder others may not read and enter gets an empty tmpfs; a file
    others may not read, an empty file bound over it. Scanned for every run (about 10 ms for
    /etc's 150 folders here): a scan kept for later would miss a key made meanwhile, and name
    a lock file gone meanwhile, where bubblewrap cannot make a mount point and the run fails."""
    args: list[str] = []
    for root, dirs, files in os.walk(top):
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(root, name)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                if mode & 0o005 != 0o005:
                    args += ["--tmpfs", path]
                    dirs.remove(name)  # masked whole: nothing under it to look at
            elif stat.S_ISREG(mode) and not mode & 0o004:
                args += ["--ro-bind", _empty_file(), path]
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


#: Environment variables that hold secrets (keys, tokens, passwords, store URLs).
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|^ARL_STORE$|^DATABASE_URL$|^PG", re.I)
_SECRETS_FD = "ARL_SECRETS_FD"


def is_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def take_back_secrets() -> bool:
    """In a process :func:`keep_secrets_out_of_environ` started again: its secrets back into
    ``os.environ``; True if there were. Call before anything reads the environment."""
    fd = os.environ.pop(_SECRETS_FD, None)
    if fd is None:
        return False
    with os.fdopen(int(fd), "rb") as pipe:
        os.environ.update(json.loads(pipe.read() or b"{}"))
    return True


def keep_secrets_out_of_environ(argv: Sequence[str]) -> None:
    """Make this process's environment block (``/proc/PID/environ``) hold no secret.

    A recipe that runs without the sandbox's PID namespace can read its parent's
    ``/proc/PPID/environ``. That file is the block the process was started with, which
    ``os.environ`` changes do not touch; so when secrets are in it, the process starts
    itself again (``execve``, same PID) without them and takes them back, into
    ``os.environ`` only, through a pipe. Call it first thing, from the command line only.
    """
    if take_back_secrets():
        return
    secrets = {k: v for k, v in os.environ.items() if is_secret(k)}
    if not secrets:
        return
    payload = json.dumps(secrets).encode()
    read, write = os.pipe()
    if len(payload) >= 60_000:  # more than a pipe holds before exec: leave the block as it is
        os.close(read)
        os.close(write)
        return
    os.write(write, payload)
    os.close(write)
    os.set_inheritable(read, True)
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    env[_SECRETS_FD] = str(read)
    os.execve(sys.executable, [sys.executable, "-m", "arl.runners.cli", *argv], env)
